"""Simulated user: segment, make k person-like corrections, fine-tune, score the other images.

For each seed, number of images n and number of corrections k: n images of a dataset with
ground truth are segmented by the model; a simulated user (napari_minenet.simulated_user)
corrects k objects on each, the way a person does (paints the largest missed objects,
erases the most confident false ones, splits a few merges); each corrected image becomes a
training example that keeps the labels before the edit, exactly as the widget's "Add as
training example" stores it; the model is fine-tuned with the widget's defaults
(FinetuneConfig(), 60 s of optimisation); then both the parent and the candidate are scored
on the dataset's other images (other slides for TNBC, other images elsewhere). "kept" is
the judge's decision: what the user ends up with.

Usage:
    python benchmarks/simulated_user.py --data ../shared/data/tnbc/train --model nuclei \\
        --k 5 10 20 --images 1 2 --seeds 0 1 2 --json docs/quality/simulated_user_tnbc.json
    python benchmarks/simulated_user.py --data ../shared/data/stare/all --model vessels --group-by image
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from napari_minenet.data import InputError, TrainingExample, load_dataset
from napari_minenet.evaluation import evaluate_examples
from napari_minenet.finetuning import FinetuneConfig, finetune
from napari_minenet.segmentation import segment
from napari_minenet.simulated_user import simulate_corrections
from napari_minenet.training import run_to_end
from napari_minenet.zoo import load_model

KEYS = ("f1", "aji", "pq", "jaccard")


def group_of(ident: str, group_by: str) -> str:
    """The slide / patient an image belongs to: 'tnbc_04_1' -> 'tnbc_04' (group_by='slide')."""
    if group_by == "image":
        return ident
    match = re.match(r"(.*)_\d+$", ident)
    return match.group(1) if match else ident


def corrected_example(ex: TrainingExample, model, k: int, full: bool = False,
                      pixel_size: str | float | None = None) -> tuple[TrainingExample, list[str], float]:
    """The example the widget would store after a person made k corrections on ``ex``;
    with ``full`` the whole ground truth, without a "before" (a fully labelled example, as
    ``napari-minenet finetune --data`` reads from a folder). ``pixel_size`` segments as the
    widget's Pixel size control does ("auto": the automatic size estimate); the example then
    keeps the scale the network saw, as the widget stores it."""
    t0 = time.perf_counter()
    if full:
        return dataclasses.replace(ex, before=None), ["full"], time.perf_counter() - t0
    if pixel_size is None:
        result = segment(ex.image, model, scale=ex.scale)
    else:
        result = segment(ex.image, model, pixel_size=pixel_size)
        if abs(result.scale - 1.0) > 1e-3:
            ex = dataclasses.replace(ex, scale=result.scale)
    truth = ex.labels if (ex.labels is not None and result.instances) else ex.mask.astype(np.uint32)
    corrected, kinds = simulate_corrections(result.labels, truth, k, prob=result.probability,
                                            instances=result.instances)
    example = TrainingExample(ex.id, ex.image, corrected > 0, corrected if result.instances else None, ex.fov,
                              ex.source, scale=ex.scale, before=result.labels)
    return example, kinds, time.perf_counter() - t0


def choose_images(examples: list[TrainingExample], n: int, seed: int, group_by: str, min_objects: int):
    """n images from n different groups (slides), each with enough objects to correct."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[TrainingExample]] = {}
    for ex in examples:
        groups.setdefault(group_of(ex.id, group_by), []).append(ex)
    names = sorted(groups)
    rng.shuffle(names)
    chosen = []
    for name in names:
        usable = [ex for ex in groups[name]
                  if ex.labels is None or len(np.unique(ex.labels)) - 1 >= min_objects]
        if usable:
            chosen.append(usable[int(rng.integers(len(usable)))])
        if len(chosen) == n:
            break
    used = {group_of(ex.id, group_by) for ex in chosen}
    rest = [ex for ex in examples if group_of(ex.id, group_by) not in used]
    return chosen, rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset folder (images/, masks/, optional labels/)")
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="corrections per image")
    ap.add_argument("--images", type=int, nargs="+", default=[2], help="corrected images per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--group-by", choices=("slide", "image"), default="slide",
                    help="hold out whole slides (ids <slide>_<n>) or single images")
    ap.add_argument("--ids", nargs="+", default=None,
                    help="only these images (e.g. a model's validation images, to test on data like its training set)")
    ap.add_argument("--max-seconds", type=float, default=None, help="fine-tuning budget (default: the widget's)")
    ap.add_argument("--max-eval", type=int, default=0, help="score at most this many other images (0: all)")
    ap.add_argument("--config", default="{}", help="JSON of FinetuneConfig fields to override (experiments)")
    ap.add_argument("--full-labels", action="store_true",
                    help="fine-tune on the chosen images' full ground truth instead of k corrections")
    ap.add_argument("--pixel-size", default=None,
                    help="segment with this pixel size (um) or 'auto' (the widget's default), as the widget does")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    parent = load_model(args.model)
    examples = load_dataset(args.data, ids=args.ids)
    overrides = json.loads(args.config)
    cfg = dataclasses.replace(FinetuneConfig(), **overrides)
    if args.max_seconds is not None:
        cfg.max_seconds = args.max_seconds
    rows, parent_scores = [], {}
    for seed in args.seeds:
        for n in args.images:
            chosen, rest = choose_images(examples, n, seed, args.group_by, min_objects=max(args.k))
            if args.max_eval:
                rest = rest[: args.max_eval]
            key = tuple(ex.id for ex in chosen)
            if key not in parent_scores:
                parent_scores[key] = evaluate_examples(rest, parent)[0]
            before = parent_scores[key]
            for k in args.k:
                pixel_size = None if args.pixel_size in (None, "auto") else float(args.pixel_size)
                made = [corrected_example(ex, parent, k, args.full_labels,
                                          "auto" if args.pixel_size == "auto" else pixel_size) for ex in chosen]
                edited = [m[0] for m in made]
                kinds = [kind for m in made for kind in m[1]]
                t0 = time.perf_counter()
                try:
                    result = run_to_end(_finetune_without_saving(parent, edited, cfg, seed))
                except InputError as exc:  # e.g. too few corrections: the widget says so and trains nothing
                    result = _Refused(parent, f"refused before training: {exc}")
                wall = time.perf_counter() - t0
                after = evaluate_examples(rest, result.model)[0] if result.steps else before
                kept = after if result.accepted else before
                row = {
                    "seed": seed, "images": [ex.id for ex in chosen], "k": k, "corrections": len(kinds),
                    "added": kinds.count("added"), "removed": kinds.count("removed"), "split": kinds.count("split"),
                    "accepted": result.accepted, "reason": result.reason, "steps": result.steps,
                    "train_s": round(result.seconds, 1), "wall_s": round(wall, 1),
                    "eval_images": len(rest),
                    "judged": None if result.corrections is None else dataclasses.asdict(result.corrections),
                    **{f"{m}_before": before.get(m) for m in KEYS if m in before},
                    **{f"{m}_candidate": after.get(m) for m in KEYS if m in after},
                    **{f"{m}_kept": kept.get(m) for m in KEYS if m in kept},
                }
                rows.append(row)
                print(f"seed {seed} n {n} k {k:3d}: {len(kinds)} edits, {result.steps} steps, "
                      f"{'KEPT' if result.accepted else 'not kept'}; F1 {before['f1']:.4f} -> {after['f1']:.4f}"
                      + (f", AJI {before['aji']:.4f} -> {after['aji']:.4f}" if "aji" in before else "")
                      + _judge_line(result.corrections) + f"  | {result.reason}", flush=True)
    summary = {"model": args.model, "data": args.data, "full_labels": args.full_labels, "pixel_size": args.pixel_size,
               "config": dataclasses.asdict(cfg), "runs": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")


def _judge_line(scores) -> str:
    if scores is None:
        return ""
    return (f"; judge: held-out BCE {scores.parent_edited_loss:.3f} -> {scores.edited_loss:.3f}, agreement "
            f"{scores.parent_edited_agreement:.2f} -> {scores.edited_agreement:.2f}, rest changed "
            f"{100 * scores.rest_changed_fraction:.2f} %")


@dataclasses.dataclass
class _Refused:
    """What the user gets when fine-tuning refuses the examples: the parent, unchanged."""

    model: object
    reason: str
    accepted: bool = False
    steps: int = 0
    seconds: float = 0.0
    corrections: object = None


def _finetune_without_saving(parent, examples, cfg, seed):
    """finetune() with a throwaway output folder: the benchmark never adds versions to the
    user's models folder."""
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="minenet-sim-")) / "candidate"
    return finetune(parent, examples, dataclasses.replace(cfg, seed=seed), output=out)


if __name__ == "__main__":
    main()
