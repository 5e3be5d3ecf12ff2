"""Does a cheaper inference path change validation quality? F1 / AJI / PQ per setting.

For every built-in model on its validation data (``../shared``; nuclei: the 6 MoNuSeg
training images its card holds out, vessels: DRIVE test, lesion: PH2 test), ``segment()``
runs with each AdaBN sample size (``BN_SAMPLE_PIXELS``) and precision given, and the
means of the metrics ``napari-minenet evaluate`` reports are printed side by side with
their change from the reference (the first sample size, fp32). The decision rule of
issue 13: a faster path may become the default only where every model changes by
<= 0.002.

Example::

    python benchmarks/precision_quality.py --samples 1048576 262144 --precisions fp32 bf16 --json q.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402

DATA = {"nuclei": ("../shared/data/monuseg/train", "validation"), "vessels": ("../shared/data/drive/test", None),
        "lesion": ("../shared/data/ph2/test", None)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DATA))
    p.add_argument("--samples", type=int, nargs="+", default=[1 << 20, 1 << 18])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--sample-tiles", type=int, nargs="+", default=[256],
                   help="side of the AdaBN sample tiles (BN_SAMPLE_TILE), each value in turn")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per dataset")
    p.add_argument("--ids", nargs="+", default=None,
                   help="image ids instead of the card's validation ids (nuclei; e.g. training images for a second "
                        "mosaic: in-domain, so only differences between settings mean anything)")
    p.add_argument("--mosaic", action="store_true",
                   help="nuclei: segment ONE image made of its validation images side by side (3 per row), the "
                        "case where the AdaBN sample is smaller than the image, and score every validation image's "
                        "block of it against that image's truth")
    p.add_argument("--tile-size", type=int, default=None,
                   help="network tile side for segment() (default: the card's); smaller than the images, every "
                        "image is tiled, so the tiles run through the inference graph, not only the AdaBN pass")
    common.add_common_arguments(p, device=False)
    return p.parse_args(argv)


def _mosaic(examples, per_row: int = 3):
    """One example made of ``examples`` side by side (same-size images), with ``blocks``: the
    slices of each original image in it."""
    from types import SimpleNamespace

    h, w = examples[0].image.shape[:2]
    rows = -(-len(examples) // per_row)
    image = np.zeros((rows * h, per_row * w, 3), np.uint8)
    labels = np.zeros((rows * h, per_row * w), np.int64)
    blocks, offset = [], 0
    for k, ex in enumerate(examples):
        sl = (slice(k // per_row * h, k // per_row * h + h), slice(k % per_row * w, k % per_row * w + w))
        image[sl] = ex.image[..., :3]
        labels[sl] = np.where(ex.labels > 0, ex.labels + offset, 0)
        offset += int(ex.labels.max())
        blocks.append(sl)
    return SimpleNamespace(id="mosaic", image=image, mask=labels > 0, labels=labels, fov=None, scale=None,
                           blocks=blocks)


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = common.configure_threads(args.threads)
    import napari_minenet.inference as inference
    from napari_minenet.data import load_dataset
    from napari_minenet.metrics import instance_metrics, pixel_metrics
    from napari_minenet.segmentation import segment
    from napari_minenet.zoo import load_model

    info = common.machine_info()
    common.print_machine(info)
    default_sample, default_tile = inference.BN_SAMPLE_PIXELS, inference.BN_SAMPLE_TILE
    results = []
    for name in args.models:
        model = load_model(name)
        folder, split = DATA[name]
        ids = model.card.metrics[split]["ids"] if split else None
        if args.ids and name == "nuclei":
            ids = args.ids
        examples = load_dataset(folder, ids)[: args.limit]
        if args.mosaic:
            if name != "nuclei":
                continue
            examples = [_mosaic(examples)]
        ref = None
        settings = [(sample, tile, precision) for sample in args.samples for tile in args.sample_tiles
                    for precision in args.precisions]
        for sample, tile, precision in settings:
            if True:
                inference.BN_SAMPLE_PIXELS, inference.BN_SAMPLE_TILE = sample, tile
                rows, t0 = [], time.perf_counter()
                try:
                    for ex in examples:
                        r = segment(ex.image, model, device="cpu", precision=precision, scale=ex.scale,
                                    tile_size=args.tile_size)
                        blocks = getattr(ex, "blocks", None) or [(slice(None), slice(None))]
                        for sl in blocks:
                            m = pixel_metrics(r.labels[sl] > 0, ex.mask[sl], prob=r.probability[sl],
                                              fov=None if ex.fov is None else ex.fov[sl])
                            if ex.labels is not None and r.instances:
                                m.update(instance_metrics(r.labels[sl], ex.labels[sl]))
                            rows.append({k: float(m[k]) for k in ("f1", "aji", "pq", "auc") if k in m})
                finally:
                    inference.BN_SAMPLE_PIXELS, inference.BN_SAMPLE_TILE = default_sample, default_tile
                mean = {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
                res = {"model": name, "data": folder, "images": len(rows), "sample_pixels": sample, "sample_tile": tile,
                       "tile_size": args.tile_size, "precision": precision, "seconds": time.perf_counter() - t0, **mean}
                if ref is None:
                    ref = res
                res["delta"] = {k: mean[k] - ref[k] for k in mean}
                results.append(res)
                print(f"{name:8s} sample {sample:>9,} tile {tile:4d} {precision:5s} " + " ".join(
                    f"{k} {mean[k]:.4f} ({res['delta'][k]:+.4f})" for k in mean) + f"  [{res['seconds']:.0f} s]",
                    flush=True)
    data = {"script": "precision_quality", "machine": info, "threads": threads, "results": results}
    common.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
