"""Re-pick a trained model's thresholds and re-score it on its validation images with the
current code, then re-save it in the current format (card inside the weights file).

Used for weights trained by an older version of the package (the weights are unchanged):
    python scripts/recalibrate_model.py weights/nuclei
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file

from napari_minenet.data import load_dataset
from napari_minenet.inference import select_device
from napari_minenet.losses import MiniNetLoss
from napari_minenet.validation import calibrate_and_score
from napari_minenet.zoo import ModelCard, SegmentationModel, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="path without suffix, e.g. weights/nuclei")
    parser.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--licence", help="licence of the training data, for the card")
    parser.add_argument("--bn-prior", type=float, default=None,
                        help="weight of the training statistics in each image's BatchNorm statistics (card bn_prior)")
    args = parser.parse_args()
    base = Path(args.model)
    card = ModelCard.from_dict(json.loads(base.with_suffix(".json").read_text()))
    card = dataclasses.replace(card, weights_sha256="", package_version="")
    if args.fill_holes is not None:
        card.fill_holes = args.fill_holes
    if args.licence:
        card.licence = args.licence
    if args.bn_prior is not None:
        card.bn_prior = args.bn_prior
    network = card.build_network()
    network.load_state_dict(load_file(str(base.with_suffix(".safetensors"))))
    model = SegmentationModel(network.eval(), card)
    data, ids = card.training["data"], card.training["val_ids"]
    val = load_dataset(data, ids=ids)
    vloss, metrics = calibrate_and_score(model, val, MiniNetLoss(alpha=card.training["config"]["alpha"]),
                                         select_device("cpu"), data)
    card.training["recalibrated"] = "thresholds and validation metrics recomputed by scripts/recalibrate_model.py"
    save_model(model, base, overwrite=True)  # recalibrating replaces the model in place
    print(json.dumps(card.metrics, indent=2))


if __name__ == "__main__":
    main()
