"""StarDist, trained here on the same data as the built-in nuclei model, scored side by side (issue 12).

StarDist is what pathologists use in napari for H&E nuclei. Its published weights
(``2D_versatile_he``) need the internet, so this script trains the same architecture
(32 rays, grid 2 x 2, depth-3 U-Net with 32 base filters, RGB input) **from scratch** on the
24 MoNuSeg training images the built-in ``nuclei`` model was trained on, validates on the 6 it
held out, and scores both models with this package's metrics on the same images. It is a
benchmark only: StarDist and TensorFlow come with the ``bench`` extra, never with the plugin.

    pip install -e ".[bench]"          # stardist, tensorflow-cpu
    python benchmarks/stardist_peer.py train --minutes 80 --threads 2 -o runs/stardist
    python benchmarks/stardist_peer.py evaluate runs/stardist/monuseg --json docs/quality/stardist_vs_minenet.json

``train`` follows StarDist's own H&E example (percentile normalisation of all channels
together, flips / 90-degree turns and intensity jitter, its default loss, learning rate and
plateau schedule, best weights by validation loss) and stops at a wall-clock budget, like
``napari-minenet train --max-minutes``; it then tunes StarDist's probability and NMS
thresholds on the validation images, as StarDist's workflow does (the built-in model's
thresholds were also tuned on them: scripts/recalibrate_model.py).

``evaluate`` runs ``predict_instances`` (StarDist) and ``segment()`` (Mini-Net, the card's
settings) on the validation images and on TNBC (50 breast H&E tiles neither model saw) and
prints mean pixel F1, AJI and PQ per set, parameters, and the seconds each model took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_minenet.data import load_dataset
from napari_minenet.metrics import instance_metrics, mean_metrics, pixel_metrics

SETS = ("monuseg6", "tnbc09-11", "tnbc50")
CONFIG = dict(n_rays=32, grid=(2, 2), n_channel_in=3, train_patch_size=(256, 256))


def _split() -> tuple[list[str], list[str]]:
    """The built-in nuclei model's training / validation ids (its card)."""
    from napari_minenet.zoo import load_model

    training = load_model("nuclei").card.training
    return list(training["train_ids"]), list(training["val_ids"])


def _normalize(image: np.ndarray) -> np.ndarray:
    from csbdeep.utils import normalize

    return normalize(image, 1, 99.8, axis=(0, 1, 2)).astype(np.float32)


def _tensorflow(threads: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """StarDist's example augmenter: a random flip / 90-degree turn, intensity scale and shift, noise."""
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    x = x * rng.uniform(0.6, 2.0) + rng.uniform(-0.2, 0.2)
    x = x + rng.normal(0, 0.02, x.shape).astype(np.float32) if rng.random() < 0.5 else x
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def train(args: argparse.Namespace) -> None:
    tf = _tensorflow(args.threads)
    import stardist
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    train_ids, val_ids = _split()
    folder = f"{args.data}/monuseg/train"
    t0 = time.perf_counter()
    train_ex, val_ex = load_dataset(folder, train_ids), load_dataset(folder, val_ids)
    X = [_normalize(e.image) for e in train_ex]
    Y = [fill_label_holes(e.labels.astype(np.int32)) for e in train_ex]
    Xv = [_normalize(e.image) for e in val_ex]
    Yv = [fill_label_holes(e.labels.astype(np.int32)) for e in val_ex]
    print(f"{len(X)} training and {len(Xv)} validation images ({time.perf_counter() - t0:.1f} s)", flush=True)

    rng = np.random.default_rng(args.seed)
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    config = Config2D(**CONFIG, train_batch_size=args.batch_size, train_epochs=args.epochs,
                      train_steps_per_epoch=args.steps_per_epoch, train_tensorboard=False)
    out = Path(args.out)
    model = StarDist2D(config, name=args.name, basedir=str(out))
    model.prepare_for_training()
    budget = args.minutes * 60.0
    state = {"steps": 0, "epochs": 0, "start": None}

    class TimeBudget(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            state["start"] = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            state["steps"] += 1
            if time.perf_counter() - state["start"] > budget:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            state["epochs"] = epoch + 1
            logs = logs or {}
            print(f"epoch {epoch + 1}: {state['steps']} steps, {time.perf_counter() - state['start']:.0f} s, "
                  f"loss {logs.get('loss', float('nan')):.4f} val_loss {logs.get('val_loss', float('nan')):.4f}",
                  flush=True)

    model.callbacks.append(TimeBudget())
    history = model.train(X, Y, validation_data=(Xv, Yv), augmenter=lambda x, y: _augment(x, y, rng), seed=args.seed)
    seconds = time.perf_counter() - state["start"]
    val_loss = [float(v) for v in history.history.get("val_loss", [])]
    model.load_weights("weights_best.h5")
    t1 = time.perf_counter()
    thresholds = model.optimize_thresholds(Xv, Yv)
    record = {
        "stardist": stardist.__version__, "tensorflow": tf.__version__,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in CONFIG.items()},
        "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
        "budget_minutes": args.minutes, "train_seconds": round(seconds, 1), "steps": state["steps"],
        "epochs": state["epochs"], "best_epoch": int(np.argmin(val_loss)) + 1 if val_loss else None,
        "val_loss": val_loss, "thresholds": {k: float(v) for k, v in thresholds.items()},
        "threshold_seconds": round(time.perf_counter() - t1, 1),
        "parameters": int(model.keras_model.count_params()),
        "train_ids": train_ids, "val_ids": val_ids,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "weights": "trained from scratch here (the published 2D_versatile_he weights need the internet)",
    }
    (out / args.name / "minenet_peer.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k not in ("train_ids", "val_ids", "val_loss")}), flush=True)


def _examples(data: str) -> dict[str, list]:
    _, val_ids = _split()
    tnbc = load_dataset(f"{data}/tnbc/train")
    return {
        "monuseg6": load_dataset(f"{data}/monuseg/train", val_ids),
        "tnbc09-11": [e for e in tnbc if e.id.rsplit("_", 1)[0] in ("tnbc_09", "tnbc_10", "tnbc_11")],
        "tnbc50": tnbc,
    }


def _score(labels: np.ndarray, example) -> dict[str, float]:
    m = pixel_metrics(labels > 0, example.mask)
    m.update(instance_metrics(labels, example.labels))
    return {k: float(m[k]) for k in ("f1", "aji", "pq")}


def evaluate(args: argparse.Namespace) -> None:
    _tensorflow(args.threads)
    import torch
    from stardist.models import StarDist2D

    from napari_minenet.segmentation import segment
    from napari_minenet.zoo import load_model

    torch.set_num_threads(args.threads)
    folder = Path(args.model)
    peer = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
    record = json.loads((folder / "minenet_peer.json").read_text()) if (folder / "minenet_peer.json").exists() else {}
    mini = load_model("nuclei")
    report: dict = {"stardist": {"record": {k: v for k, v in record.items() if k not in ("train_ids", "val_ids")},
                                 "parameters": int(peer.keras_model.count_params())},
                    "minenet": {"model": "nuclei (built in)",
                                "parameters": int(sum(p.numel() for p in mini.network.parameters()))},
                    "sets": {}}
    for name, examples in _examples(args.data).items():
        rows = {"stardist": [], "minenet": []}
        seconds = {"stardist": 0.0, "minenet": 0.0}
        for ex in examples:
            t = time.perf_counter()
            labels, _ = peer.predict_instances(_normalize(ex.image), n_tiles=peer._guess_n_tiles(ex.image),
                                               show_tile_progress=False, verbose=False)
            seconds["stardist"] += time.perf_counter() - t
            rows["stardist"].append(_score(labels, ex))
            t = time.perf_counter()
            result = segment(ex.image, mini, device="cpu")
            seconds["minenet"] += time.perf_counter() - t
            rows["minenet"].append(_score(result.labels, ex))
        report["sets"][name] = {
            "images": len(examples),
            **{m: {**{k: round(v, 4) for k, v in mean_metrics(r).items()}, "seconds": round(seconds[m], 1)}
               for m, r in rows.items()},
        }
        print(name, json.dumps(report["sets"][name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train StarDist from scratch on the built-in model's MoNuSeg split")
    t.add_argument("--data", default="../shared/data")
    t.add_argument("-o", "--out", default="runs/stardist")
    t.add_argument("--name", default="monuseg")
    t.add_argument("--minutes", type=float, default=80.0, help="wall-clock budget (the built-in model had 80)")
    t.add_argument("--epochs", type=int, default=400)
    t.add_argument("--steps-per-epoch", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="score a trained StarDist and the built-in model on the same images")
    e.add_argument("model", help="the folder train wrote (runs/stardist/monuseg)")
    e.add_argument("--data", default="../shared/data")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    {"train": train, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    main()
