"""Accuracy at other magnifications: the nuclei validation images rescaled 0.5x and 2x,
segmented with the pixel size given and with the automatic size estimate.

For each scale factor k (1 = native 40x, ~0.25 um/px; 0.5 = as if scanned at 20x; 2 = 80x)
the image is resized by k (bilinear, anti-aliased) and its instance labels by nearest
neighbour; pixel F1 and AJI are computed on the rescaled grid, against the rescaled
labels. "given" passes ``pixel_size = 0.25 / k``; "auto" passes ``pixel_size="auto"``
(a first pass estimates the object size, see :mod:`napari_minenet.auto_size`); "none"
(``--modes none``) segments the image as it comes.

Needs the MoNuSeg training data (``--data``, default ``../shared/data/monuseg/train``);
the validation ids come from the model card. Prints a Markdown table (means over the
images, then per image); ``--json`` writes it all.

    python benchmarks/pixel_size_accuracy.py --threads 2
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
from common import add_common_arguments, configure_threads, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" /
                                                   "monuseg" / "train"))
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 2.0])
    parser.add_argument("--modes", nargs="+", default=["given", "auto"], choices=["given", "auto", "none"])
    parser.add_argument("--ids", nargs="+", help="image ids (default: the card's validation ids)")
    parser.add_argument("--precision", default=None, help="fp32, bf16 or auto (default: segment()'s default)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    threads = configure_threads(args.threads)

    from napari_minenet.data import load_dataset, rescale_image
    from napari_minenet.metrics import instance_metrics, pixel_metrics
    from napari_minenet.segmentation import segment
    from napari_minenet.zoo import load_model

    model = load_model(args.model)
    card = model.card
    if not card.pixel_size_um:
        parser.error(f"model {card.name!r} records no pixel size")
    ids = args.ids or (card.training or {}).get("val_ids")
    examples = load_dataset(args.data, ids=ids)
    rows = []
    for ex in examples:
        for k in args.scales:
            image = rescale_image(ex.image, k)
            truth = rescale_image(ex.labels, k, labels=True)
            for mode in args.modes:
                pixel_size = {"given": card.pixel_size_um / k, "auto": "auto", "none": None}[mode]
                t0 = time.perf_counter()
                options = {"precision": args.precision} if args.precision else {}
                result = segment(image, model, pixel_size=pixel_size, device=args.device, **options)
                seconds = time.perf_counter() - t0
                m = pixel_metrics(result.labels > 0, truth > 0)
                m.update(instance_metrics(result.labels, truth))
                rows.append({"id": ex.id, "k": k, "mode": mode, "f1": float(m["f1"]), "aji": float(m["aji"]),
                             "pq": float(m["pq"]), "scale": result.scale, "seconds": round(seconds, 2),
                             "note": result.size_note})
                print(f"{ex.id} k={k:g} {mode:<5} F1 {m['f1']:.4f} AJI {m['aji']:.4f} resampled x{result.scale:g} "
                      f"{seconds:.1f} s {result.size_note}", flush=True)

    precision = args.precision or inspect.signature(segment).parameters["precision"].default
    print(f"\n{card.name}, {len(examples)} images, {threads} threads, precision {precision}; "
          "F1 / AJI (mean over images)\n")
    titles = {"given": "pixel size given", "auto": "auto size", "none": "as it comes"}
    print("| image scale | " + " | ".join(titles[m] for m in args.modes) + " | auto: resampled (per image) |")
    print("|---|" + "---|" * len(args.modes) + "---|")
    means = {}
    for k in args.scales:
        cells = []
        for mode in args.modes:
            sel = [r for r in rows if r["k"] == k and r["mode"] == mode]
            means[(k, mode)] = (float(np.mean([r["f1"] for r in sel])), float(np.mean([r["aji"] for r in sel])))
            cells.append(f"{means[(k, mode)][0]:.4f} / {means[(k, mode)][1]:.4f}")
        auto_scales = " ".join(f"x{r['scale']:g}" for r in rows if r["k"] == k and r["mode"] == "auto")
        print(f"| {k:g}x ({card.pixel_size_um / k:.3g} um/px) | " + " | ".join(cells) + f" | {auto_scales} |")
    if (1.0, "given") in means:
        f1_0, aji_0 = means[(1.0, "given")]
        print("\ndifference from native (pixel size given): F1 / AJI")
        for (k, mode), (f1, aji) in means.items():
            print(f"  {k:g}x {mode}: {f1 - f1_0:+.4f} / {aji - aji_0:+.4f}")
    write_json(args.json, {"model": card.name, "data": args.data, "threads": threads, "precision": precision,
                           "rows": rows,
                           "means": {f"{k:g}x {mode}": v for (k, mode), v in means.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
