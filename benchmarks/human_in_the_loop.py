"""Simulated human-in-the-loop: fine-tune a built-in model on K corrected crops, score the rest.

For each K (default 1, 2, 4): K images of a dataset with ground truth play the user's
corrected examples (a centred crop of at most --crop pixels from each, their ground truth
as the correction); the model is fine-tuned with the widget's default settings and time
budget on the CPU; F1 / Jaccard (and AJI when the dataset has instance labels and the
model does instances) are measured on all the *other* images before and after. Several
seeds draw different example images. The fine-tuned version is only kept when it beats
the parent on the held-out part of the corrections (as in the widget): "kept" is what the
user ends up with.

A random-forest pixel classifier (ilastik style: skimage multiscale features + sklearn
RandomForest) is trained on the same crops as a reference.

Usage:
    python benchmarks/human_in_the_loop.py --data ../shared/data/drive/test --model vessels
    python benchmarks/human_in_the_loop.py --data ../shared/data/ph2/test --model lesion --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_minenet.data import TrainingExample, load_dataset, working_scale
from napari_minenet.evaluation import evaluate_examples
from napari_minenet.finetuning import FinetuneConfig, finetune
from napari_minenet.metrics import mean_metrics, pixel_metrics
from napari_minenet.training import run_to_end
from napari_minenet.zoo import load_model

KEYS = ("f1", "jaccard", "aji")


def centre_crop(ex: TrainingExample, size: int, long_side: int | None) -> TrainingExample:
    """The centre of an image, remembering the whole image's working scale."""
    h, w = ex.mask.shape
    ch, cw = min(size, h), min(size, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    return TrainingExample(ex.id, ex.image[sl], ex.mask[sl], None if ex.labels is None else ex.labels[sl],
                           None if ex.fov is None else ex.fov[sl], ex.source,
                           scale=working_scale(ex.image.shape, long_side) if long_side else None)


def random_forest_reference(crops: list[TrainingExample], test: list[TrainingExample], seed: int) -> dict:
    """ilastik-style pixel classifier trained on the same corrected crops."""
    from functools import partial

    from skimage.feature import multiscale_basic_features
    from skimage.future import predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    features = partial(multiscale_basic_features, intensity=True, edges=True, texture=True, sigma_min=1,
                       sigma_max=16, channel_axis=-1)
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for ex in crops:
        f = features(ex.image)
        lab = np.where(ex.mask, 2, 1)
        keep = rng.random(lab.shape) < min(1.0, 20000 / lab.size)  # sparse "scribbles"
        sparse = np.where(keep, lab, 0)
        feats.append(f)
        labels.append(sparse)
    clf = RandomForestClassifier(n_estimators=50, max_depth=12, n_jobs=-1, random_state=seed)
    # fit on all crops at once: stack their labelled pixels
    X = np.concatenate([f[lab > 0] for f, lab in zip(feats, labels)])
    y = np.concatenate([lab[lab > 0] for lab in labels])
    t0 = time.perf_counter()
    clf.fit(X, y)
    fit_s = time.perf_counter() - t0
    rows = []
    t0 = time.perf_counter()
    for ex in test:
        pred = predict_segmenter(features(ex.image), clf) == 2
        rows.append(pixel_metrics(pred, ex.mask, fov=ex.fov))
    return {**{k: v for k, v in mean_metrics(rows).items() if k in ("f1", "jaccard")},
            "fit_s": fit_s, "predict_s": time.perf_counter() - t0}


def run(data: str, model_name: str, ks: list[int], seconds: float, crop: int, seeds: list[int], rf: bool,
        threads: int | None, ids: list[str] | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model = load_model(model_name)
    if ids == ["validation"]:  # the images the model card says were held out in training
        ids = model.card.metrics["validation"]["ids"]
    examples = load_dataset(data, ids=ids)
    print(f"{model.card.name} on {data}: {len(examples)} images; budget {seconds:.0f} s; crops <= {crop} px")
    t0 = time.perf_counter()
    _, before_rows = evaluate_examples(examples, model, device="cpu")
    print(f"parent model scored on every image in {time.perf_counter() - t0:.0f} s")
    before_by_id = {r["id"]: r for r in before_rows}
    rows = []
    for k in ks:
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(examples))
            tune = [centre_crop(examples[i], crop, model.card.working_long_side) for i in order[:k]]
            rest = [examples[i] for i in order[k:]]
            before = mean_metrics([{m: before_by_id[ex.id][m] for m in KEYS if m in before_by_id[ex.id]}
                                   for ex in rest])
            cfg = FinetuneConfig(max_seconds=seconds, device="cpu", seed=seed)
            start = time.perf_counter()
            gen = finetune(model, tune, cfg, output=Path("/tmp") / f"hitl-{model.card.name}-{k}-{seed}")
            result = run_to_end(gen)
            wall = time.perf_counter() - start
            after, _ = evaluate_examples(rest, result.model, device="cpu")
            after = {m: after[m] for m in KEYS if m in after}
            kept = after if result.accepted else before
            row = {"k": k, "seed": seed, "tune_ids": [ex.id for ex in tune], "n_test": len(rest),
                   "before": before, "candidate": after, "kept": kept, "accepted": result.accepted,
                   "steps": result.steps, "finetune_s": round(result.seconds, 1), "wall_s": round(wall, 1),
                   "held_out_before": result.before, "held_out_after": result.after, "reason": result.reason}
            if rf:
                row["random_forest"] = random_forest_reference(tune, rest, seed)
            rows.append(row)
            print(f"K={k} seed={seed}: F1 {before.get('f1', float('nan')):.4f} -> candidate "
                  f"{after.get('f1', float('nan')):.4f} ({'kept' if result.accepted else 'rejected'}), "
                  f"{result.steps} steps, {wall:.0f} s wall"
                  + (f"; RF F1 {row['random_forest']['f1']:.4f}" if rf else ""))
    return {"model": model.card.name, "data": data + (f" ({len(examples)} images: {', '.join(ids)})" if ids else ""),
            "seconds": seconds, "crop": crop, "seeds": seeds,
            "config": dataclasses.asdict(FinetuneConfig(max_seconds=seconds, device="cpu")),
            "torch_threads": torch.get_num_threads(), "rows": rows}


def summarize(report: dict) -> str:
    lines = [f"**{report['model']}** on `{report['data']}`, {report['seconds']:.0f} s budget, CPU "
             f"({report['torch_threads']} threads), crops <= {report['crop']} px, seeds {report['seeds']}", "",
             "| K | test images | F1 before | F1 after (candidate) | F1 kept | kept versions | fine-tune wall s | RF F1 (same crops) |",
             "|---|---|---|---|---|---|---|---|"]
    for k in sorted({r["k"] for r in report["rows"]}):
        rs = [r for r in report["rows"] if r["k"] == k]

        def mean(path):
            vals = [r[path[0]].get(path[1]) for r in rs if r.get(path[0]) and path[1] in r[path[0]]]
            return f"{np.mean(vals):.4f}" if vals else "-"

        lines.append(f"| {k} | {rs[0]['n_test']} | {mean(('before', 'f1'))} | {mean(('candidate', 'f1'))} | "
                     f"{mean(('kept', 'f1'))} | {sum(r['accepted'] for r in rs)}/{len(rs)} | "
                     f"{np.mean([r['wall_s'] for r in rs]):.0f} | {mean(('random_forest', 'f1'))} |")
    if any("aji" in r["before"] for r in report["rows"]):
        lines += ["", "| K | AJI before | AJI after (candidate) | AJI kept |", "|---|---|---|---|"]
        for k in sorted({r["k"] for r in report["rows"]}):
            rs = [r for r in report["rows"] if r["k"] == k]
            vals = lambda key: f"{np.mean([r[key].get('aji', np.nan) for r in rs]):.4f}"  # noqa: E731
            lines.append(f"| {k} | {vals('before')} | {vals('candidate')} | {vals('kept')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--no-rf", action="store_true", help="skip the random-forest reference")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ids", nargs="+", help="only these images; 'validation' = the model card's held-out images")
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args()
    report = run(args.data, args.model, args.k, args.seconds, args.crop, args.seeds, not args.no_rf, args.threads,
                 args.ids)
    text = summarize(report)
    print()
    print(text)
    if args.json:
        report["markdown"] = text
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
