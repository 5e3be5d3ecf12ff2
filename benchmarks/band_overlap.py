"""Does post-processing in a thread of its own, overlapping the network, make ``segment`` faster?

Three ways to get instance labels from the same image, interleaved in one run (medians):

* ``thread``: ``segment()`` with its bands split in a background thread while the network
  runs (what it does when torch leaves CPU cores free, or on a GPU);
* ``inline``: the bands split between rows of tiles, in the calling thread (a
  :class:`~napari_minenet.bands.BandLabeller` fed by ``predict_tiled``: what ``segment()``
  does when torch uses every core and the maps are streamed, above ``LARGE_IMAGE_PIXELS``);
* ``after``: ``predict_tiled`` then ``labels_for`` on the finished maps (what ``segment()``
  does when torch uses every core and the maps are kept: the inline bands were 4-8 % slower).

    python benchmarks/band_overlap.py --mosaic ../shared/data/monuseg/train --threads 2
    python benchmarks/band_overlap.py --threads 1   # synthetic image, torch on one core
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import add_common_arguments, configure_threads, load_benchmark_model, synthetic_he, write_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--mosaic", help="folder with images/ (e.g. ../shared/data/monuseg/train): a mosaic of them")
    add_common_arguments(p)
    args = p.parse_args(argv)
    threads = configure_threads(args.threads)

    import napari_minenet.segmentation as segmentation
    from napari_minenet.bands import BandLabeller
    from napari_minenet.inference import predict_tiled

    model = load_benchmark_model().model
    card = model.card
    if args.mosaic:
        from cpu_paths import mosaic_image

        image = mosaic_image(args.mosaic, args.size, card.metrics.get("validation", {}).get("ids", []))[0]
    else:
        image = synthetic_he(args.size)
    spare = segmentation._cores_to_spare

    def in_thread():
        segmentation._cores_to_spare = lambda device: True  # (benchmark-only: force the choice)
        try:
            return segmentation.segment(image, model, device=args.device).labels
        finally:
            segmentation._cores_to_spare = spare

    def inline():
        labeller = BandLabeller(image.shape[:2], threshold=card.default_threshold, min_size=card.min_size,
                                use_contour=card.has_contours, contour_threshold=card.contour_threshold,
                                fill_holes=card.fill_holes, background=False)
        try:
            predict_tiled(image, model, device=args.device, rows_done=labeller.rows_done)
            return labeller.finish()
        finally:
            labeller.close()

    def after():
        probs = predict_tiled(image, model, device=args.device)
        return segmentation.labels_for(probs[0], probs[1] if card.has_contours else None, card,
                                       card.default_threshold, card.instances, card.min_size)

    variants = {"thread": in_thread, "inline": inline, "after": after}
    counts = {name: int(fn().max()) for name, fn in variants.items()}  # warm-up, and the same objects
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    pixels = image.shape[0] * image.shape[1]
    print(f"{args.size}^2 {'mosaic' if args.mosaic else 'synthetic'}, torch {threads} threads, "
          f"{args.repeats} interleaved repeats")
    print("| variant | median s | min s | Mpx/s | objects |\n|---|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {np.median(ts):.3f} | {min(ts):.3f} | {pixels / 1e6 / np.median(ts):.2f} | {counts[name]} |")
    write_json(args.json, {"size": args.size, "threads": threads, "mosaic": args.mosaic, "times": times,
                           "objects": counts})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
