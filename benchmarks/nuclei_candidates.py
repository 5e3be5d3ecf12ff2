"""Compare nuclei models on the validation sets of issue 12: the 6 MoNuSeg training images the
built-in model holds out, TNBC slides 07-08 (validation of the TNBC-trained candidates) and TNBC
slides 09-11 (never used for training or model selection; the learning-loop benchmark's data).

    python benchmarks/nuclei_candidates.py nuclei runs/gpu/mono.safetensors runs/gpu/mix.safetensors
    python benchmarks/nuclei_candidates.py nuclei --bn-prior 0 0.1 0.2   # the card's bn_prior swept

Prints one JSON line per model: mean pixel F1, AJI and PQ of ``segment()`` (native scale, the
card's thresholds) on each set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from napari_minenet.data import load_dataset
from napari_minenet.evaluation import evaluate_examples
from napari_minenet.zoo import load_model

SETS = {"monuseg6": None, "tnbc01-08": tuple(f"tnbc_{i:02d}" for i in range(1, 9)),
        "tnbc07-08": ("tnbc_07", "tnbc_08"), "tnbc09-11": ("tnbc_09", "tnbc_10", "tnbc_11")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model names or .safetensors paths")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bn-prior", type=float, nargs="+", help="score each model with these card bn_prior values")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    val_ids = load_model("nuclei").card.training["val_ids"]
    tnbc = load_dataset(f"{args.data}/tnbc/train")
    examples = {"monuseg6": load_dataset(f"{args.data}/monuseg/train", val_ids)}
    for name, slides in SETS.items():
        if slides:
            examples[name] = [ex for ex in tnbc if ex.id.rsplit("_", 1)[0] in slides]
    for model_name in args.models:
        model = load_model(model_name)
        for prior in args.bn_prior or [None]:
            variant = model if prior is None else dataclasses.replace(
                model, card=dataclasses.replace(model.card, bn_prior=prior))
            row = {}
            for name, exs in examples.items():
                mean, _ = evaluate_examples(exs, variant, device="cpu")
                row[name] = {k: round(mean[k], 4) for k in ("f1", "aji", "pq")}
            label = model_name if prior is None else f"{model_name} bn_prior={prior:g}"
            print(label, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
