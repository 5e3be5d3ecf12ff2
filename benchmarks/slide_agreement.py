"""Whole slides on real H&E: do the slide engine's labels agree with ``segment()`` on each tile
alone, and how do both score against the ground truth (issue 14)?

Lays held-out tiles with ground truth out on white glass as a pyramidal TIFF (each tile once, in
a grid, with glass around the block of tissue; ``--gap`` puts glass between the tiles too, so each is
a piece of tissue of its own, like the cores of a tissue microarray), runs ``segment_slide`` with its
defaults (blocks of 2,048 px, normalisation statistics per piece of tissue; ``--statistics slide``:
one set for the whole slide), and for every tile reports

* agreement with ``segment()`` on the tile alone: pixel F1 and AJI in the tile's interior
  (``--margin`` px in from its edge, where ``segment()`` on the tile alone sees zero padding
  instead of the neighbouring tissue or glass), and
* F1 / AJI / PQ of the slide's labels and of ``segment()``'s against the tile's ground truth.

    python benchmarks/slide_agreement.py --out /tmp/minenet-agreement --json docs/quality/slide_agreement_he.json

Sets: the nuclei model's 6 MoNuSeg validation images (1000 px) and TNBC slides 09-11 (512 px tiles
neither the shipped model nor any learning-loop default was chosen on). Files under ``../shared``
are read, never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def _layout(examples, glass: int, gap: int = 0):
    from napari_minenet.slide_samples import TissueLayout

    th = max(e.image.shape[0] for e in examples) + gap
    tw = max(e.image.shape[1] for e in examples) + gap
    cols = int(math.ceil(math.sqrt(len(examples))))
    rows = int(math.ceil(len(examples) / cols))
    shape = (rows * th - gap + 2 * glass, cols * tw - gap + 2 * glass)
    cells = [(glass + (i // cols) * th, glass + (i % cols) * tw, i) for i in range(len(examples))]
    return TissueLayout(shape, [np.ascontiguousarray(e.image[..., :3]) for e in examples], cells)


def _f1(a: np.ndarray, b: np.ndarray) -> float:
    from napari_minenet.metrics import pixel_metrics

    return float(pixel_metrics(a > 0, b > 0)["f1"])


def _sequential(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0]


def run_set(name: str, examples, out: Path, margin: int, glass: int, block: int, gap: int = 0,
            statistics: str = "piece", segment_precision: str = "auto") -> dict:
    import zarr

    from napari_minenet.metrics import aggregated_jaccard_index, instance_metrics, mean_metrics
    from napari_minenet.segmentation import segment
    from napari_minenet.slide_engine import SlideOptions, segment_slide
    from napari_minenet.slide_samples import write_slide_tiff

    layout = _layout(examples, glass, gap)
    path = out / (f"{name}.tif" if not gap else f"{name}_gap{gap}.tif")
    if not path.exists():
        write_slide_tiff(path, layout, mpp=0.25, min_level_side=512)
    t0 = time.perf_counter()
    result = segment_slide(path, "nuclei", out / f"{path.stem}_{statistics}.zarr",
                           options=SlideOptions(block_size=block, statistics=statistics))
    slide_seconds = time.perf_counter() - t0
    labels = zarr.open_array(str(result.labels_url / "0"), mode="r")
    rows = []
    for ex, (y0, y1, x0, x1) in zip(examples, layout.boxes()):
        got = np.asarray(labels[y0:y1, x0:x1])
        ref = segment(ex.image[..., :3], "nuclei", precision=segment_precision).labels
        inner = (slice(margin, -margin), slice(margin, -margin))
        row = {"id": ex.id,
               "interior_f1": _f1(ref[inner], got[inner]),
               "interior_aji": aggregated_jaccard_index(_sequential(got[inner]), _sequential(ref[inner]))}
        for who, lab in (("slide", got), ("segment", ref)):
            m = instance_metrics(_sequential(lab), ex.labels)
            row[f"{who}_truth"] = {"f1": _f1(lab, ex.labels), "aji": m["aji"], "pq": m["pq"]}
        rows.append(row)
        print(name, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                if not isinstance(v, dict)}),
              "slide vs truth", {k: round(v, 4) for k, v in row["slide_truth"].items()},
              "segment vs truth", {k: round(v, 4) for k, v in row["segment_truth"].items()}, flush=True)
    summary = {
        "tiles": len(rows), "slide_shape": list(layout.shape), "tissue_fraction": round(layout.tissue_fraction, 3),
        "block_size": block, "gap": gap, "statistics": statistics, "segment_precision": segment_precision,
        "slide_seconds": round(slide_seconds, 1), "nuclei": result.count,
        "interior_f1_min": min(r["interior_f1"] for r in rows),
        "interior_f1_mean": float(np.mean([r["interior_f1"] for r in rows])),
        "interior_aji_min": min(r["interior_aji"] for r in rows),
        "interior_aji_mean": float(np.mean([r["interior_aji"] for r in rows])),
        "slide_vs_truth": mean_metrics([r["slide_truth"] for r in rows]),
        "segment_vs_truth": mean_metrics([r["segment_truth"] for r in rows]),
        "per_tile": rows,
    }
    print(name, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()
                            if k != "per_tile"}), flush=True)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="/tmp/minenet-agreement", help="slides and labels are written here")
    ap.add_argument("--margin", type=int, default=32)
    ap.add_argument("--glass", type=int, default=1024, help="px of glass around the block of tissue")
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--gap", type=int, default=0, help="px of glass between tiles (0: the tiles touch, one piece "
                                                       "of tissue; 256: each tile is a piece of its own)")
    ap.add_argument("--statistics", choices=("piece", "slide"), default="piece")
    ap.add_argument("--segment-precision", default="auto",
                    help="precision of the per-tile segment() reference (the engine runs fp32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", nargs="+", default=["monuseg6", "tnbc09-11"])
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    from napari_minenet.data import load_dataset
    from napari_minenet.zoo import load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {}
    if "monuseg6" in args.sets:
        sets["monuseg6"] = load_dataset(f"{args.data}/monuseg/train", load_model("nuclei").card.training["val_ids"])
    if "tnbc09-11" in args.sets:
        sets["tnbc09-11"] = [e for e in load_dataset(f"{args.data}/tnbc/train")
                             if e.id.rsplit("_", 1)[0] in ("tnbc_09", "tnbc_10", "tnbc_11")]
    report = {name: run_set(name, exs, out, args.margin, args.glass, args.block, args.gap, args.statistics,
                            args.segment_precision) for name, exs in sets.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
