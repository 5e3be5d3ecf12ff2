"""Whole slides on dask.distributed: a LocalCluster of 1 and of 2 worker processes (one thread
each) segmenting the same cohort of synthetic slides, as `napari-minenet segment FOLDER
--scheduler local --workers N` does (the slides one after another through one client).

The slides are pyramidal tiled TIFFs of scikit-image's IHC sample laid out on white glass
(``napari_minenet.slide_samples``); they are written once into ``--out`` and reused. Each
cohort run starts from empty outputs (no resume). Reported: the median wall time per
worker count over ``--repeats`` runs, split into the block phase (first to last block, on
the workers) and the rest (tissue mask, normalisation statistics, ids, pyramid, GeoJSON /
CSV: in the client process), the speed-up, the cluster's start-up (not in the times), and
the load average (the machine may be shared; the runs alternate between the clusters so a
neighbour's load falls on both alike)::

    python benchmarks/distributed_speed.py [--side 4096] [--slides 4] [--block-size 1024] [--repeats 3]

The workers import torch before the first run (a cold worker's imports are not counted);
loading each slide's network on each worker is (once per slide and worker).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path


def build_slides(out: Path, n: int, side: int, tissue: float) -> list[Path]:
    import skimage.data

    from napari_minenet.slide_samples import tissue_layout, write_slide_tiff

    ihc = skimage.data.immunohistochemistry()
    paths = []
    for i in range(n):
        path = out / f"slide{i}_{side}.tif"
        if not path.exists():
            origin = (side // 10 + 97 * i, side // 10 + 131 * i)  # the same tissue, elsewhere on each slide
            write_slide_tiff(path, tissue_layout((side, side), [ihc], tissue, origin=origin), mpp=0.25)
        paths.append(path)
    return paths


def run_cohort(client, slides: list[Path], out: Path, block_size: int) -> dict:
    """All slides, one after another, on ``client``'s cluster: wall time, block-phase time, labels digest."""
    import hashlib

    import numpy as np
    import zarr

    from napari_minenet.slide_engine import SlideOptions, segment_slide

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    blocks_s, digest, tissue_blocks, nuclei = 0.0, hashlib.sha256(), 0, 0
    t0 = time.perf_counter()
    for slide in slides:
        marks = []
        result = segment_slide(slide, "nuclei", out / f"{slide.stem}.zarr", options=SlideOptions(block_size=block_size),
                               geojson=out / f"{slide.stem}_nuclei.geojson", csv=out / f"{slide.stem}.csv",
                               scheduler=client, progress=lambda done, total: marks.append(time.perf_counter()))
        blocks_s += marks[-1] - marks[0]  # the first report comes after planning, the last with the last block
        tissue_blocks += result.blocks_tissue
        nuclei += result.count
        digest.update(np.ascontiguousarray(zarr.open_array(str(result.labels_url / "0"), mode="r")[...]).tobytes())
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "blocks_s": blocks_s, "tissue_blocks": tissue_blocks, "nuclei": nuclei,
            "labels_sha256": digest.hexdigest()[:16], "load_average": [round(v, 2) for v in os.getloadavg()]}


def _import_engine() -> None:
    import napari_minenet.slide_blocks  # noqa: F401 - torch and the engine, as a block's unpickling would


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    import distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/minenet-distributed"))
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--side", type=int, default=4096, help="px per slide side")
    parser.add_argument("--tissue", type=float, default=0.4, help="tissue fraction of each slide")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    slides = build_slides(args.out, args.slides, args.side, args.tissue)
    print(f"{len(slides)} slides of {args.side:,}^2 px ({args.tissue:.0%} tissue), blocks of {args.block_size} px; "
          f"{_cpu()}, {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    with contextlib.ExitStack() as stack:
        clients = {}
        for n in args.workers:  # every cluster up first, then the runs interleaved (1, 2, 1, 2, ...)
            t0 = time.perf_counter()
            cluster = stack.enter_context(distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                                   dashboard_address=":0"))
            clients[n] = stack.enter_context(distributed.Client(cluster))
            clients[n].wait_for_workers(n)
            clients[n].run(_import_engine)
            results[n] = {"startup_s": round(time.perf_counter() - t0, 1), "runs": []}
        for r in range(args.repeats):  # interleaved, so a neighbour's load falls on both alike
            for n in args.workers:
                results[n]["runs"].append(run_cohort(clients[n], slides, args.out / f"out_{n}", args.block_size))
                print(json.dumps({"workers": n, "run": r, **{k: (round(v, 1) if isinstance(v, float) else v)
                                                             for k, v in results[n]["runs"][-1].items()}}), flush=True)
    for r in results.values():
        r["wall_s"] = statistics.median(x["wall_s"] for x in r["runs"])
        r["blocks_s"] = statistics.median(x["blocks_s"] for x in r["runs"])
    digests = {x["labels_sha256"] for r in results.values() for x in r["runs"]}
    base = results[args.workers[0]]
    print(f"\nlabels identical in every run: {len(digests) == 1}")
    print("\n| workers | cluster start-up | cohort wall time (median) | of which blocks | rest (client) | speed-up | "
          "load average during runs |")
    print("|---|---|---|---|---|---|---|")
    for n, r in results.items():
        loads = [x["load_average"][0] for x in r["runs"]]
        print(f"| {n} | {r['startup_s']:.1f} s | {r['wall_s']:.1f} s | {r['blocks_s']:.1f} s | "
              f"{r['wall_s'] - r['blocks_s']:.1f} s | {base['wall_s'] / r['wall_s']:.2f}x "
              f"(blocks {base['blocks_s'] / r['blocks_s']:.2f}x) | {min(loads):.2f}-{max(loads):.2f} |")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
