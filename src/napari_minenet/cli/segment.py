"""``napari-minenet segment`` and ``demo``: images (and whole slides) in, label files out."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

from ..data import MAX_TILE_SIZE
from ..samples import SAMPLES
from .common import EXIT_CODES, LazyProgress, int_in, number, one_line, pixel_size_arg

__all__ = ["add_segment_parser", "add_demo_parser", "add_segment_options", "segment_files", "expand_folders"]


def _output_stems(paths: list[Path]) -> list[tuple[Path, str]]:
    """(input, output stem) with stems unique in the run: ``a.png a.tif`` -> ``a_png``,
    ``a_tif``; the same name in two folders -> ``a``, ``a-2``. A file given twice is
    segmented once."""
    unique, seen = [], set()
    for path in paths:
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            print(f"note: {path} was given twice; segmenting it once", file=sys.stderr)
            continue
        seen.add(key)
        unique.append(path)
    counts: dict[str, int] = {}
    for path in unique:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    stems, used = [], set()
    for path in unique:
        stem = path.stem if counts[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower() or 'noext'}"
        candidate, n = stem, 1
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate)
        stems.append((path, candidate))
    return stems


def _write_outputs(out_dir: Path, stem: str, labels, prob, image, *, save_probability: bool,
                   overlay: bool, pixel_size: float | None = None) -> tuple[list[Path], bool]:
    """Write the outputs of one image; returns (paths, whether an earlier output was replaced)."""
    from ..files import write_png, write_tiff

    written, replaced = [], False
    path = out_dir / f"{stem}_labels.tif"
    replaced |= path.exists()
    write_tiff(path, labels, pixel_size=pixel_size)
    written.append(path)
    if save_probability:
        path = out_dir / f"{stem}_probability.tif"
        replaced |= path.exists()
        write_tiff(path, prob.astype("float32"), pixel_size=pixel_size)
        written.append(path)
    if overlay and labels.ndim == 2:
        from ..visualize import outline_overlay

        path = out_dir / f"{stem}_overlay.png"
        replaced |= path.exists()
        write_png(path, outline_overlay(image, labels))
        written.append(path)
    return written, replaced


def segment_files(paths, out_dir: Path, args) -> int:
    from ..files import remove_stale_temp_files
    from ..zoo import load_model

    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"the output {out_dir} is a file, not a folder; give a folder for -o")
    model = load_model(args.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    failures = 0
    stems = _output_stems([Path(p) for p in paths])
    slides = {path for path, _ in stems if not getattr(args, "no_slide", False) and _is_slide(path)}
    with _cluster(args, bool(slides)) as client:
        for path, stem in stems:
            try:
                if path in slides:
                    _segment_slide_file(path, out_dir, stem, model, args, client)
                else:
                    failures += _segment_image_file(path, out_dir, stem, model, args)
            except (ValueError, OSError, RuntimeError) as exc:
                failures += 1
                print(f"error: {path}: {one_line(exc)}", file=sys.stderr)
    return 1 if failures else 0


def _segment_image_file(path: Path, out_dir: Path, stem: str, model, args) -> int:
    """One ordinary image (or stack): segment() whole, label TIFF (+ overlay, probability, CSV).
    Returns 1 for a grey image refused by a colour model (said on stderr), else 0."""
    from ..data import GreyImageWarning, read_image
    from ..pixel_size import describe_pixel_size, read_pixel_size
    from ..segmentation import save_measurements, segment, segment_stack, split_planes, summarize

    instances = args.instances
    try:
        image = read_image(path)
        lead, _ = split_planes(image)
        bar = LazyProgress(path.name, "plane" if lead else "tile")
        pixel_size = args.pixel_size if args.pixel_size != "auto" else (read_pixel_size(path) or "auto")
        try:
            kwargs = dict(instances=instances, threshold=args.threshold, min_size=args.min_size,
                          device=args.device, tile_size=args.tile, batch_size=args.batch_size,
                          pixel_size=pixel_size, keep_maps=True if args.save_probability else None)
            if args.precision is not None:
                kwargs["precision"] = args.precision
            with warnings.catch_warnings():
                if not args.allow_grey:  # a grey image on a colour model: refuse (one line) unless asked
                    warnings.simplefilter("error", GreyImageWarning)
                if lead:
                    stack = segment_stack(image, model, progress=bar, **kwargs)
                    labels, prob = stack.labels, stack.probability
                    summary = f"{len(stack.planes)} planes, " + summarize(labels, model.card.object_name,
                                                                          stack.instances, stack.pixel_size)
                    result = stack.planes[0]
                else:
                    result = segment(image, model, progress=bar, **kwargs)
                    labels, prob = result.labels, result.probability
                    summary = summarize(labels, model.card.object_name, result.instances, result.pixel_size)
        finally:
            bar.close()
        summary += f" [{describe_pixel_size(result.pixel_size)}{'; ' + result.size_note if result.size_note else ''}]"
        written, replaced = _write_outputs(out_dir, stem, labels, prob, image,
                                           save_probability=args.save_probability, overlay=args.overlay,
                                           pixel_size=result.pixel_size)
        if args.measurements and labels.ndim == 2:
            written.append(out_dir / f"{stem}_measurements.csv")
            replaced |= written[-1].exists()
            save_measurements(written[-1], labels, image, result.pixel_size)
        print(f"{path.name}: {summary} -> {', '.join(str(w) for w in written)}"
              + (" (replaced the earlier output)" if replaced else ""))
    except GreyImageWarning as exc:
        print(f"error: {path}: {exc} (--allow-grey segments it anyway)", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _cluster(args, any_slide: bool):
    """The dask.distributed client for ``--scheduler`` (one for all the slides of the run),
    or None: dask's threads in this process."""
    scheduler = getattr(args, "scheduler", None)
    if scheduler is None:
        yield None
        return
    if not any_slide:
        print("note: --scheduler is for whole slides; these images are segmented in this process", file=sys.stderr)
        yield None
        return
    from ..slide_cluster import connect

    with connect(scheduler, args.workers) as client:
        workers = len(client.scheduler_info().get("workers", {}))
        print(f"dask scheduler {client.scheduler.address}: {workers} workers", file=sys.stderr)
        yield client


def expand_folders(inputs) -> list[str]:
    """Folders become the slides inside them (sorted; not recursive); an OME-Zarr folder is
    a slide itself. A folder without slides is reported and skipped."""
    from ..slides import is_slide_path, looks_like_slide

    paths = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir() or is_slide_path(path):
            paths.append(str(item))
            continue
        found = [str(p) for p in sorted(path.iterdir()) if not p.name.startswith(".") and looks_like_slide(p)]
        if not found:
            print(f"note: {path} holds no whole slides (.svs, .ndpi, pyramidal TIFF, OME-Zarr)", file=sys.stderr)
        paths += found
    if not paths:
        raise ValueError("nothing to segment: the folders given hold no whole slides")
    return paths


def _is_slide(path: Path) -> bool:
    from ..slides import looks_like_slide

    return looks_like_slide(path)


def _segment_slide_file(path: Path, out_dir: Path, stem: str, model, args, client=None) -> None:
    """A pyramid or a very large image: blocks over the full resolution, written as they are
    done (OME-Zarr labels, GeoJSON, CSV); a rerun resumes."""
    from ..slide_engine import SlideOptions, segment_slide

    options = SlideOptions(threshold=args.threshold, min_size=args.min_size, instances=args.instances,
                           device=args.device, tile_size=args.tile, batch_size=args.batch_size,
                           workers=args.workers, statistics=args.statistics)
    if args.precision is not None:
        options.precision = args.precision
    if args.block_size is not None:
        options.block_size = args.block_size
    stem = stem.removesuffix(".ome")  # x.ome.tif -> x.zarr, not x.ome.zarr
    zarr_path = out_dir / f"{stem}.zarr"
    name = model.card.object_name
    bar = LazyProgress(f"{path.name} (tissue blocks)", "block")
    try:
        result = segment_slide(path, model, zarr_path, options=options,
                               geojson=out_dir / f"{stem}_{name}.geojson",
                               csv=out_dir / f"{stem}_measurements.csv", progress=bar, scheduler=client)
    finally:
        bar.close()
    how = (f"resumed {result.blocks_resumed} finished blocks, " if result.blocks_resumed and result.blocks_computed
           else "already segmented, " if not result.blocks_computed else "")
    mpp = f", {result.mpp:g} um/px" if result.mpp else ", pixel size unknown"
    print(f"{path.name}: {result.count} {name} in {result.shape[0]} x {result.shape[1]} px{mpp} "
          f"({result.tissue_fraction:.0%} tissue, {result.blocks_tissue} of {result.blocks_total} blocks, "
          f"{how}{result.seconds:.0f} s) -> {', '.join(str(p) for p in result.outputs)}")
    from ..auto_size import unresampled_slide_note

    note = unresampled_slide_note(model.card, result.mpp)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if result.oversized:
        print(f"note: {result.oversized} objects reached the edge of their block's halo and may be cut; "
              "a larger --block-size keeps them whole", file=sys.stderr)


def _cmd_segment(args: argparse.Namespace) -> int:
    return segment_files(expand_folders(args.images), Path(args.output), args)


def _has_display() -> bool:
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..samples import load_sample, sample_path

    if not args.headless and _has_display():
        from .._demo import run_gui_demo

        return run_gui_demo(args.sample)
    print(f"no display: segmenting the bundled sample {sample_path(args.sample).name} headlessly")
    load_sample(args.sample)  # fail early with a clear message if the sample is missing
    args.images = [str(sample_path(args.sample))]
    args.model = args.model or SAMPLES[args.sample][2]  # the built-in model made for the sample
    return segment_files(args.images, Path(args.output), args)


def add_segment_options(p: argparse.ArgumentParser, model_default: str | None = "nuclei") -> None:
    p.add_argument("--model", default=model_default, help="model name (see `models`) or path to .safetensors")
    p.add_argument("--instances", action=argparse.BooleanOptionalAction, default=None,
                   help="one label per object (default: from the model: nuclei yes, vessels/lesion no)")
    p.add_argument("--threshold", type=number(lo=0.0, hi=1.0), default=None,
                   help="foreground threshold, 0 to 1 (default: model's)")
    p.add_argument("--min-size", type=int_in(0), default=None, help="remove objects smaller than this (pixels)")
    p.add_argument("--pixel-size", type=pixel_size_arg, default="auto", metavar="UM",
                   help="micrometres per pixel of the images, or 'auto' (default): read from the file (OME-TIFF, "
                        "Aperio, ImageJ, TIFF resolution tags), else estimated from the objects' size; images are "
                        "resampled to the model's pixel size (nuclei: 0.25) and measurements get um columns")
    p.add_argument("--measurements", action="store_true",
                   help="also write <name>_measurements.csv (one row per object; um and um^2 columns when the "
                        "pixel size is known)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--tile", type=int_in(32, MAX_TILE_SIZE), default=None,
                   help=f"tile size in pixels, 32 to {MAX_TILE_SIZE} (default: model's, 1024 for the built-ins)")
    p.add_argument("--batch-size", type=int_in(1, 64), default=1, help="tiles per batch, 1 to 64")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                   help="network precision (default: auto = bf16 on a CPU with native bf16, else fp32; whole "
                        "slides: fp32); fp32 forces full precision")
    p.add_argument("--save-probability", action="store_true", help="also write the probability map")
    p.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True,
                   help="write a PNG with the outlines drawn on the image")
    p.add_argument("--allow-grey", "--allow-gray", action="store_true",
                   help="segment grey images with a colour model anyway (refused by default: the result is "
                        "unreliable)")


def add_segment_parser(sub) -> None:
    """The ``segment`` subcommand (``sub``: the parser's subparsers)."""
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("segment", help="segment images and write label TIFFs", epilog=EXIT_CODES, formatter_class=raw,
                       description="Segment images and write <name>_labels.tif (+ overlay / probability) to the "
                                   "output folder. Inputs with the same name get unique outputs (a.png a.tif -> "
                                   "a_png_labels.tif, a_tif_labels.tif).")
    p.add_argument("images", nargs="+", help="TIFF / PNG / JPEG files (stacks are segmented plane by plane); "
                                             "whole slides (.svs, .ndpi, pyramidal or very large TIFF, OME-TIFF, "
                                             "OME-Zarr) are segmented block by block; a folder: the slides in it")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_segment_options(p)
    slides = p.add_argument_group(
        "whole slides", "A pyramid, or an image over 64 Mpx, gives OUT/<name>.zarr (OME-Zarr, labels under "
                        "labels/nuclei), OUT/<name>_nuclei.geojson (QuPath) and OUT/<name>_measurements.csv; glass "
                        "is skipped; an interrupted run resumes when run again.")
    slides.add_argument("--block-size", type=int_in(256, 8192), default=None,
                        help="px per block (default 2048; up to 1024, or a multiple of 1024)")
    slides.add_argument("--statistics", choices=("piece", "slide"), default="piece",
                        help="normalisation statistics: 'piece' (default) gives every separate piece of tissue "
                             "(TMA cores, sections) its own, as if it were segmented alone; 'slide' one set for all")
    slides.add_argument("--workers", type=int_in(1, 64), default=1,
                        help="blocks computed at once (default 1; memory grows with it); with --scheduler local, "
                             "the number of worker processes")
    slides.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                        help="compute the blocks on dask.distributed: 'local' (a LocalCluster of --workers "
                             "processes on this machine) or the address of a running scheduler (tcp://host:8786; "
                             "its workers must see the slides and -o). Default: threads in this process")
    slides.add_argument("--no-slide", action="store_true",
                        help="read large images whole as before instead of block by block")
    p.set_defaults(func=_cmd_segment)


def add_demo_parser(sub) -> None:
    """The ``demo`` subcommand (``sub``: the parser's subparsers)."""
    p = sub.add_parser("demo", help="open napari on the bundled sample and segment it (headless without a display)")
    p.add_argument("--sample", choices=list(SAMPLES), default="ihc")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("-o", "--output", default="minenet-demo", help="output folder for the headless demo")
    add_segment_options(p, model_default=None)
    p.set_defaults(func=_cmd_demo)
