"""What the automatic size estimate sees, per image and scale: the raw material for its rule.

For each image, each magnification k (the image resized by k: 0.5 = as if scanned at 20x)
and each resample factor f the estimate could choose (f = 0.25 ... 4, limited to passes of
at most ``--max-side`` px), one ``segment(image_k, scale=f)`` pass records:

* the mean object width on the pass's foreground (``auto_size.object_width`` at
  ``SIZE_LEVEL``), relative to the card's reference width;
* the pass's uncertain share (``auto_size.uncertain_share``);
* pixel F1 and AJI against the labels resized by k.

Any rule on (width, uncertainty) can then be replayed offline without running the network
again (``--replay``), and its choices scored against the best factor per image. Needs
``../shared`` data; calibrate on training images, check on the card's validation images.

    python benchmarks/auto_size_calibration.py --data ../shared/data/monuseg/train --split train --json cal.json
    python benchmarks/auto_size_calibration.py --replay cal.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import add_common_arguments, configure_threads, write_json

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def measure(args) -> dict:
    from napari_minenet.auto_size import SIZE_LEVEL, object_width, reference_width, uncertain_share
    from napari_minenet.data import load_dataset, rescale_image
    from napari_minenet.metrics import instance_metrics, pixel_metrics
    from napari_minenet.segmentation import segment
    from napari_minenet.zoo import load_model

    model = load_model(args.model)
    card = model.card
    val = set((card.training or {}).get("val_ids") or [])
    examples = load_dataset(args.data)
    if args.split == "train":
        examples = [e for e in examples if e.id not in val]
    elif args.split == "val":
        examples = [e for e in examples if e.id in val]
    examples = examples[: args.limit] if args.limit else examples
    rows = []
    for ex in examples:
        for k in args.scales:
            image = rescale_image(ex.image, k)
            truth = rescale_image(ex.labels, k, labels=True)
            for f in FACTORS:
                if max(image.shape[:2]) * f > args.max_side or k * f < args.min_total or k * f > args.max_total:
                    continue
                t0 = time.perf_counter()
                result = segment(image, model, scale=f)
                grid = result.work[0] if result.work is not None else result.probability
                width = object_width(np.asarray(grid) > SIZE_LEVEL)
                m = pixel_metrics(result.labels > 0, truth > 0)
                m.update(instance_metrics(result.labels, truth))
                rows.append({"id": ex.id, "k": k, "f": f, "width": width, "uncertain": uncertain_share(result),
                             "f1": float(m["f1"]), "aji": float(m["aji"]), "seconds": time.perf_counter() - t0})
                print(f"{ex.id} k={k:g} f={f:g} width {width if width is None else round(width, 1)} "
                      f"uncertain {rows[-1]['uncertain']:.3f} F1 {m['f1']:.3f} AJI {m['aji']:.3f}", flush=True)
    return {"model": card.name, "reference": reference_width(card), "data": args.data, "split": args.split,
            "rows": rows}


def shipped_rule(passes: dict[float, dict], reference: float) -> float:
    """The shipped rule (``auto_size.estimate_and_segment`` itself) replayed on recorded
    passes: ``run`` returns the recorded pass, ``measure`` its numbers."""
    from types import SimpleNamespace

    from napari_minenet.auto_size import estimate_and_segment

    def run(image, factor):
        if factor not in passes:
            raise KeyError(factor)
        return passes[factor]

    try:
        _, estimate = estimate_and_segment(np.zeros((8, 8)), SimpleNamespace(object_width_px=reference), run,
                                           measure=lambda p: (p["width"], p["uncertain"]))
    except KeyError as missing:  # a pass that was not recorded
        return float(missing.args[0])
    return estimate.scale


def replay(data: dict, rule=shipped_rule) -> None:
    rows, reference = data["rows"], data["reference"]
    groups: dict[tuple, dict[float, dict]] = {}
    for r in rows:
        groups.setdefault((r["id"], r["k"]), {})[r["f"]] = r
    by_k: dict[float, list] = {}
    for (image_id, k), passes in sorted(groups.items()):
        chosen = rule(passes, reference)
        best = max(passes.values(), key=lambda r: r["aji"])
        native = passes.get(1.0 / k)
        got = passes.get(chosen)  # (None: the rule wanted a pass that was not recorded)
        by_k.setdefault(k, []).append((got, best, native))
        ratios = " ".join(f"f{f:g}:w{(p['width'] or 0) / reference:.2f}/u{p['uncertain']:.2f}/a{p['aji']:.2f}"
                          for f, p in sorted(passes.items()))
        print(f"{image_id[:24]:24s} k={k:<4g} chose x{chosen:<5g} best x{best['f']:<5g} {ratios}")
    for k, items in sorted(by_k.items()):
        got = [g["aji"] if g else float("nan") for g, _, _ in items]
        native = [n["aji"] for _, _, n in items if n]
        best = [b["aji"] for _, b, _ in items]
        missing = sum(g is None for g, _, _ in items)
        note = f" ({missing} chose a pass that was not recorded: left out of the mean)" if missing else ""
        print(f"k={k:g}: {len(items)} images, AJI chosen {np.nanmean(got):.4f}, at the native-equivalent factor "
              f"{np.mean(native) if native else float('nan'):.4f}, best factor {np.mean(best):.4f}{note}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/monuseg/train")
    p.add_argument("--model", default="nuclei")
    p.add_argument("--split", choices=["train", "val", "all"], default="train",
                   help="the card's validation ids, the other images, or all")
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--max-side", type=int, default=4096, help="skip passes larger than this")
    p.add_argument("--min-total", type=float, default=0.24, help="skip passes below this total scale k*f")
    p.add_argument("--max-total", type=float, default=4.1, help="skip passes above this total scale k*f")
    p.add_argument("--replay", metavar="JSON", help="replay the shipped rule on recorded passes")
    add_common_arguments(p)
    args = p.parse_args(argv)
    if args.replay:
        with open(args.replay, encoding="utf-8") as fh:
            replay(json.load(fh))
        return 0
    configure_threads(args.threads)
    data = measure(args)
    write_json(args.json, data)
    replay(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
