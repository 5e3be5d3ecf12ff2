"""Whole slides: peak memory and time of ``napari-minenet segment SLIDE -o OUT`` against slide
size and tissue area.

Builds pyramidal tiled TIFFs (JPEG tiles, 0.25 um/px) of MoNuSeg training tiles laid out on
white glass (``--tiles``, default ``../shared/data/monuseg/train/images``; scikit-image's IHC
sample when that folder is missing), then runs the CLI on each in its own process under
``/usr/bin/time -v`` and reports wall time, peak RSS and the tissue it found:

    python benchmarks/slide_memory.py --out /tmp/minenet-slides [--cases 20000:0.3 40000:0.075] [--repeats 3]

Peak RSS of the same run on the same slide varies from run to run by more than 10 % (877,
979 and 1,111 MB for one 20,000^2 slide on one machine: where glibc's allocator places
torch's and numpy's large buffers), so ``--repeats N`` runs the cases round-robin N times
and reports each case's median with its range. The slides are written once and reused
(they are large: ~0.5 GB per 40,000^2 slide).
MoNuSeg files are read, never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TILES = REPO.parent / "shared" / "data" / "monuseg" / "train" / "images"


def _sources(folder: Path) -> list[np.ndarray]:
    from napari_minenet.data import read_image

    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
        return [read_image(p)[..., :3] for p in files]
    import skimage.data

    return [skimage.data.immunohistochemistry()]


def build(path: Path, side: int, tissue: float, sources) -> dict:
    from napari_minenet.slide_samples import tissue_layout, write_slide_tiff

    layout = tissue_layout((side, side), sources, tissue, seed=side)
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_name(path.name + ".part")
        write_slide_tiff(tmp, layout, mpp=0.25, compression="jpeg")
        tmp.replace(path)
        print(f"built {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"side": side, "tissue_fraction": round(layout.tissue_fraction, 3),
            "tissue_mpx": round(layout.tissue_fraction * side * side / 1e6, 1)}


def run(slide: Path, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(f".{out.name}.work"), ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "napari_minenet.cli", "segment", str(slide), "-o", str(out),
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([0-9.]+)", proc.stderr).group(1))
              for kind in ("User", "System"))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(slide.name)][-1]
    count = int(re.search(r": (\d+) nuclei", line).group(1))
    blocks = re.search(r"(\d+) of (\d+) blocks", line)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(rss / 1024), "nuclei": count,
            "tissue_blocks": int(blocks.group(1)), "blocks": int(blocks.group(2)), "summary": line}


def _median_row(done: list[dict]) -> dict:
    """One case's runs as one row: medians of time and peak RSS, every run's peak kept."""
    row = dict(done[-1])
    for key in ("wall_s", "cpu_s", "peak_rss_mb"):
        row[key] = float(np.median([d[key] for d in done]))
    row["peak_rss_runs_mb"] = [d["peak_rss_mb"] for d in done]
    if len({d["nuclei"] for d in done}) != 1:
        raise RuntimeError(f"runs of one slide found different nuclei: {[d['nuclei'] for d in done]}")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/minenet-slides"))
    parser.add_argument("--tiles", type=Path, default=DEFAULT_TILES)
    parser.add_argument("--cases", nargs="+", default=["20000:0.3", "40000:0.075", "40000:0.3"],
                        help="SIDE:TISSUE_FRACTION per slide")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per slide, round-robin over the cases; the table shows medians")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("cli_args", nargs="*", help="passed to `napari-minenet segment` (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sources = _sources(args.tiles)
    slides = []
    for case in args.cases:
        side, tissue = int(case.split(":")[0]), float(case.split(":")[1])
        slide = args.out / f"slide_{side}_{int(tissue * 1000):03d}.tif"
        slides.append((slide, args.out / f"out_{side}_{int(tissue * 1000):03d}", build(slide, side, tissue, sources)))
    runs: list[list[dict]] = [[] for _ in slides]
    for _ in range(max(1, args.repeats)):  # round-robin: slow drifts of the machine hit every case alike
        for (slide, out, info), done in zip(slides, runs):
            result = {**info, **run(slide, out, args.cli_args), "load_average": [round(v, 2) for v in os.getloadavg()]}
            print(json.dumps(result), flush=True)
            done.append(result)
    rows = [_median_row(done) for done in runs]
    print("\n| slide (px) | tissue | tissue Mpx | tissue blocks / blocks | nuclei | wall time | CPU time | peak RSS "
          "(median) | peak RSS (range) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']:,}^2 | {r['tissue_fraction']:.1%} | {r['tissue_mpx']:.0f} | {r['tissue_blocks']} / "
              f"{r['blocks']} | {r['nuclei']:,} | {r['wall_s'] / 60:.1f} min | {r['cpu_s'] / 60:.1f} min | "
              f"{r['peak_rss_mb']:,.0f} MB | {min(r['peak_rss_runs_mb']):,}-{max(r['peak_rss_runs_mb']):,} MB |")
    if len(rows) > 1:
        peaks = [r["peak_rss_mb"] for r in rows]
        print(f"\nmedian peaks: largest / smallest = {max(peaks) / min(peaks):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": [d for done in runs for d in done], "medians": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
