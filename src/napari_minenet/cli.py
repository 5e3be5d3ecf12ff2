"""``napari-minenet``: the command line. Argument parsing, progress bars and files only;
every subcommand calls the same core functions as the napari widget.

Building the parser imports neither torch nor the core modules that need it, so
``--help`` is instant; each subcommand imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import warnings
from pathlib import Path

from .data import MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV, MAX_TILE_SIZE, MAX_WORKING_LONG_SIDE
from .samples import SAMPLES
from .tasks import TASK_TABLE

__all__ = ["main", "build_parser", "EXIT_CODES"]

EXIT_CODES = f"""exit codes:
  0    success
  1    segment: some images failed (the others were written); bench: a benchmark failed
  2    usage error, or an input / model / file error (one line on stderr)
  3    finetune: the new version did not beat the current model and was not kept
  130  interrupted (Ctrl+C)

limits: images over {MAX_IMAGE_PIXELS:,} pixels (all planes together) are refused before
decoding (environment variable {MAX_IMAGE_PIXELS_ENV} changes it); tiles are 32 to
{MAX_TILE_SIZE} px. Set NAPARI_MINENET_DEBUG=1 to see the traceback behind an error."""


def _progress_bar(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class _LazyProgress:
    """A ``progress(done, total)`` callback whose bar starts at the first call, when the
    total is known: its first line already reads ``0/12 [00:00<?, ...]``, never ``0tile``."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = _progress_bar(total, self.desc, self.unit)
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def write(self, text: str) -> None:
        if self.bar is None:
            print(text)
        else:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- argument types


def _int_in(lo: int, hi: int | None = None):
    """argparse type: an integer from lo to hi (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: use {lo} to {hi}" if hi is not None else f"{value} is below {lo}")
        return value

    return parse


def _number(*, positive: bool = False, lo: float | None = None, hi: float | None = None):
    """argparse type: a finite number (> 0 with ``positive``; within [lo, hi])."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"{text} is below {lo:g}" if hi is None else
                                             f"{text} is out of range: use {lo:g} to {hi:g}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range: use {lo if lo is not None else '-inf'} "
                                             f"to {hi:g}")
        return value

    return parse


def _pixel_size(text: str):
    """argparse type: 'auto' or a pixel size in um (within the plausible range)."""
    from .pixel_size import PIXEL_SIZE_RANGE

    if text.strip().lower() == "auto":
        return "auto"
    return _number(lo=PIXEL_SIZE_RANGE[0], hi=PIXEL_SIZE_RANGE[1])(text)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``napari-minenet segment: error: ... (see --help)``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _ConfigDefault:
    """A default that lives in ``FinetuneConfig`` (which imports torch), read only when it
    is needed: when ``finetune`` runs, or ``finetune --help`` prints it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def value(self):
        from .finetuning import FinetuneConfig

        return getattr(FinetuneConfig(), self.name)

    def __str__(self) -> str:
        return str(self.value())


def _value(v):
    return v.value() if isinstance(v, _ConfigDefault) else v


# --------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, run_to_end, train

    cfg = TrainConfig(
        task=args.task, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, patch_size=args.patch_size,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, patience=args.patience,
        seed=args.seed, device=args.device, max_minutes=args.max_minutes, contours=args.contours,
        val_fraction=args.val_fraction, threads=args.threads, architecture=args.architecture,
        working_long_side=args.working_long_side if args.working_long_side is not None else -1,
    )
    command = "napari-minenet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    gen = train(args.data, args.output, cfg, val_data=args.val_data, name=args.name, resume=args.resume,
                command=command, licence=args.licence)
    total = cfg.epochs * cfg.steps_per_epoch
    bar = _LazyProgress("training", "step")  # starts with the first record: data errors come first

    def show(rec) -> None:
        if rec.kind == "step":
            bar(rec.step, total)
            bar.bar.set_postfix(epoch=rec.epoch, loss=f"{rec.loss:.4f}", lr=f"{rec.lr:.1e}", refresh=True)
        elif rec.kind == "validation":
            extra = " ".join(f"{k}={v:.4f}" for k, v in rec.val_metrics.items() if k in ("f1", "aji", "auc"))
            bar.write(f"epoch {rec.epoch:3d}  step {rec.step:6d}  {rec.elapsed / 60:6.1f} min  "
                      f"val_loss={rec.val_loss:.4f} {extra}{'  *' if rec.improved else ''}")
        elif rec.kind == "done":
            bar.write(rec.message)

    try:
        result = run_to_end(gen, show)
    finally:
        bar.close()
    out = Path(args.output)
    print(f"saved {out.with_suffix('.safetensors') if out.suffix != '.safetensors' else out} "
          f"({result.elapsed / 60:.1f} min, {result.steps} steps, stopped: {result.stopped})")
    for key, value in result.val_metrics.items():
        print(f"  validation {key}: {value:.4f}")
    return 0


# --------------------------------------------------------------------------- segment


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
    from .files import write_png, write_tiff

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
        from .visualize import outline_overlay

        path = out_dir / f"{stem}_overlay.png"
        replaced |= path.exists()
        write_png(path, outline_overlay(image, labels))
        written.append(path)
    return written, replaced


def _segment_files(paths, out_dir: Path, args) -> int:
    from .data import GreyImageWarning, read_image
    from .files import remove_stale_temp_files
    from .pixel_size import describe_pixel_size, read_pixel_size
    from .segmentation import save_measurements, segment, segment_stack, split_planes, summarize
    from .zoo import load_model

    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"the output {out_dir} is a file, not a folder; give a folder for -o")
    model = load_model(args.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    instances = args.instances
    failures = 0
    for path, stem in _output_stems([Path(p) for p in paths]):
        try:
            if not getattr(args, "no_slide", False) and _is_slide(path):
                _segment_slide_file(path, out_dir, stem, model, args)
                continue
            image = read_image(path)
            lead, _ = split_planes(image)
            bar = _LazyProgress(path.name, "plane" if lead else "tile")
            pixel_size = args.pixel_size if args.pixel_size != "auto" else (read_pixel_size(path) or "auto")
            try:
                kwargs = dict(instances=instances, threshold=args.threshold, min_size=args.min_size,
                              device=args.device, tile_size=args.tile, batch_size=args.batch_size,
                              pixel_size=pixel_size)
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
            failures += 1
            print(f"error: {path}: {exc} (--allow-grey segments it anyway)", file=sys.stderr)
        except (ValueError, OSError, RuntimeError) as exc:
            failures += 1
            print(f"error: {path}: {_one_line(exc)}", file=sys.stderr)
    return 1 if failures else 0


def _is_slide(path: Path) -> bool:
    from .slides import looks_like_slide

    return looks_like_slide(path)


def _segment_slide_file(path: Path, out_dir: Path, stem: str, model, args) -> None:
    """A pyramid or a very large image: blocks over the full resolution, written as they are
    done (OME-Zarr labels, GeoJSON, CSV); a rerun resumes."""
    from .slide_engine import SlideOptions, segment_slide

    options = SlideOptions(threshold=args.threshold, min_size=args.min_size, instances=args.instances,
                           device=args.device, tile_size=args.tile, batch_size=args.batch_size,
                           workers=args.workers)
    if args.block_size is not None:
        options.block_size = args.block_size
    stem = stem.removesuffix(".ome")  # x.ome.tif -> x.zarr, not x.ome.zarr
    zarr_path = out_dir / f"{stem}.zarr"
    name = model.card.object_name
    bar = _LazyProgress(f"{path.name} (tissue blocks)", "block")
    try:
        result = segment_slide(path, model, zarr_path, options=options,
                               geojson=out_dir / f"{stem}_{name}.geojson",
                               csv=out_dir / f"{stem}_measurements.csv", progress=bar)
    finally:
        bar.close()
    how = (f"resumed {result.blocks_resumed} finished blocks, " if result.blocks_resumed and result.blocks_computed
           else "already segmented, " if not result.blocks_computed else "")
    mpp = f", {result.mpp:g} um/px" if result.mpp else ", pixel size unknown"
    print(f"{path.name}: {result.count} {name} in {result.shape[0]} x {result.shape[1]} px{mpp} "
          f"({result.tissue_fraction:.0%} tissue, {result.blocks_tissue} of {result.blocks_total} blocks, "
          f"{how}{result.seconds:.0f} s) -> {', '.join(str(p) for p in result.outputs)}")
    from .auto_size import unresampled_slide_note

    note = unresampled_slide_note(model.card, result.mpp)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if result.oversized:
        print(f"note: {result.oversized} objects reached the edge of their block's halo and may be cut; "
              "a larger --block-size keeps them whole", file=sys.stderr)


def _cmd_segment(args: argparse.Namespace) -> int:
    return _segment_files(args.images, Path(args.output), args)


# --------------------------------------------------------------------------- models / evaluate


def _cmd_models(args: argparse.Namespace) -> int:
    from .zoo import list_models, user_models_dir

    models = list_models()
    if not models:
        print("no models found")
        return 1
    print(f"{'name':<28} {'task':<8} {'source':<8} {'metrics':<44} parent")
    for m in models:
        metrics = ""
        splits = sorted((m.metrics or {}).items(), key=lambda kv: not kv[0].startswith("test"))
        for split, values in splits:
            if isinstance(values, dict):
                shown = " ".join(f"{k}={values[k]:.3f}" for k in ("f1", "aji", "auc", "jaccard")
                                 if isinstance(values.get(k), (int, float)) and not isinstance(values[k], bool))
                metrics = f"{split.split(':')[0].split(',')[0]}: {shown}"
                break
        print(f"{m.name:<28} {m.task:<8} {m.source:<8} {metrics:<44} {m.parent or ''}")
    print(f"\nuser models folder: {user_models_dir()}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:

    from .evaluation import METRIC_KEYS, evaluate
    from .zoo import atomic_write_json

    bar = _LazyProgress("evaluating", "image")
    try:
        report = evaluate(args.data, args.model, device=args.device, threshold=args.threshold,
                          use_contours=not args.ignore_contours, ids=args.ids, progress=bar)
    finally:
        bar.close()
    keys = [k for k in METRIC_KEYS if k in report["mean"]]
    print(f"model {report['model']} on {report['data']} (threshold {report['threshold']:.2f})")
    print(f"{'id':<28}" + "".join(f"{k:>9}" for k in keys))
    for row in report["per_image"]:
        print(f"{row['id']:<28}" + "".join(f"{row[k]:>9.4f}" if k in row else f"{'-':>9}" for k in keys))
    print(f"{'mean':<28}" + "".join(f"{report['mean'][k]:>9.4f}" for k in keys))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.record:
        from .zoo import load_model, save_model

        model = load_model(args.model)
        key = args.record if args.record != "auto" else f"test: {args.data}"
        model.card.metrics[key] = {"data": str(args.data), "command": "napari-minenet " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]), "threshold": report["threshold"], **report["mean"]}
        save_model(model, model.path, overwrite=True)  # the same model, its card updated
        print(f"recorded in the model card of {model.card.name} as {key!r}")
    return 0


# --------------------------------------------------------------------------- finetune


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetuning import FinetuneConfig, finetune
    from .training import run_to_end

    if args.output is not None:  # refuse before the work, not after it
        out = Path(args.output)
        weights = out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")
        if weights.exists():
            raise FileExistsError(f"a model already exists at {weights}; choose another -o")
    cfg = FinetuneConfig(max_seconds=_value(args.max_seconds), lr=_value(args.lr), l2sp=_value(args.l2sp),
                         seed=args.seed, train=_value(args.train), device=args.device,
                         patch_size=_value(args.patch_size), batch_size=_value(args.batch_size))
    gen = finetune(args.model, args.data, cfg, output=args.output)
    total = max(1, int(cfg.max_seconds))
    bar = _LazyProgress("fine-tuning", "s")  # starts with the first record: data errors come first

    def show(rec) -> None:
        bar(min(int(rec.elapsed), total), total)
        if rec.kind == "step":
            bar.bar.set_postfix(step=rec.step, loss=f"{rec.loss:.4f}", refresh=True)
        elif rec.kind == "validation" and rec.val_loss is not None:
            bar.write(f"{rec.elapsed:6.1f} s  step {rec.step:5d}  held-out loss {rec.val_loss:.4f}"
                      + (f"  F1 {rec.val_score:.4f}" if rec.val_score is not None else "")
                      + ("  *" if rec.improved else "") + (f"  ({rec.message})" if rec.message else ""))

    try:
        result = run_to_end(gen, show)
    finally:
        bar.close()
    print(("accepted: " if result.accepted else "rejected: ") + result.reason)
    print(f"{result.steps} steps in {result.seconds:.1f} s")
    if result.saved_to:
        print(f"saved {result.saved_to}")
    return 0 if result.accepted else 3


# --------------------------------------------------------------------------- export / bench


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    path = export_onnx(args.model, args.output, opset=args.opset)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"
    if not script.is_file():
        print("error: the benchmarks ship with the source repository (benchmarks/run_all.py), "
              "not with the installed package", file=sys.stderr)
        return 2
    env = dict(os.environ, NAPARI_MINENET_BENCH_PROG="napari-minenet bench")
    return subprocess.call([sys.executable, str(script), *args.bench_args], env=env)


# --------------------------------------------------------------------------- demo


def _has_display() -> bool:
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .samples import load_sample, sample_path

    if not args.headless and _has_display():
        from ._demo import run_gui_demo

        return run_gui_demo(args.sample)
    print(f"no display: segmenting the bundled sample {sample_path(args.sample).name} headlessly")
    load_sample(args.sample)  # fail early with a clear message if the sample is missing
    args.images = [str(sample_path(args.sample))]
    args.model = args.model or SAMPLES[args.sample][2]  # the built-in model made for the sample
    return _segment_files(args.images, Path(args.output), args)


def _add_segment_options(p: argparse.ArgumentParser, model_default: str | None = "nuclei") -> None:
    p.add_argument("--model", default=model_default, help="model name (see `models`) or path to .safetensors")
    p.add_argument("--instances", action=argparse.BooleanOptionalAction, default=None,
                   help="one label per object (default: from the model: nuclei yes, vessels/lesion no)")
    p.add_argument("--threshold", type=_number(lo=0.0, hi=1.0), default=None,
                   help="foreground threshold, 0 to 1 (default: model's)")
    p.add_argument("--min-size", type=_int_in(0), default=None, help="remove objects smaller than this (pixels)")
    p.add_argument("--pixel-size", type=_pixel_size, default="auto", metavar="UM",
                   help="micrometres per pixel of the images, or 'auto' (default): read from the file (OME-TIFF, "
                        "Aperio, ImageJ, TIFF resolution tags), else estimated from the objects' size; images are "
                        "resampled to the model's pixel size (nuclei: 0.25) and measurements get um columns")
    p.add_argument("--measurements", action="store_true",
                   help="also write <name>_measurements.csv (one row per object; um and um^2 columns when the "
                        "pixel size is known)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--tile", type=_int_in(32, MAX_TILE_SIZE), default=None,
                   help=f"tile size in pixels, 32 to {MAX_TILE_SIZE} (default: model's, 1024 for the built-ins)")
    p.add_argument("--batch-size", type=_int_in(1, 64), default=1, help="tiles per batch, 1 to 64")
    p.add_argument("--save-probability", action="store_true", help="also write the probability map")
    p.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True,
                   help="write a PNG with the outlines drawn on the image")
    p.add_argument("--allow-grey", "--allow-gray", action="store_true",
                   help="segment grey images with a colour model anyway (refused by default: the result is "
                        "unreliable)")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The parser; building it imports no torch (``--help`` is instant)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="napari-minenet",
        description="Mini-Net segmentation of nuclei, retinal vessels and skin lesions (headless tools).",
        epilog=EXIT_CODES, formatter_class=raw,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images and write label TIFFs", epilog=EXIT_CODES, formatter_class=raw,
                       description="Segment images and write <name>_labels.tif (+ overlay / probability) to the "
                                   "output folder. Inputs with the same name get unique outputs (a.png a.tif -> "
                                   "a_png_labels.tif, a_tif_labels.tif).")
    p.add_argument("images", nargs="+", help="TIFF / PNG / JPEG files (stacks are segmented plane by plane); "
                                             "whole slides (.svs, .ndpi, pyramidal or very large TIFF, OME-TIFF, "
                                             "OME-Zarr) are segmented block by block")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_segment_options(p)
    slides = p.add_argument_group(
        "whole slides", "A pyramid, or an image over 64 Mpx, gives OUT/<name>.zarr (OME-Zarr, labels under "
                        "labels/nuclei), OUT/<name>_nuclei.geojson (QuPath) and OUT/<name>_measurements.csv; glass "
                        "is skipped; an interrupted run resumes when run again.")
    slides.add_argument("--block-size", type=_int_in(256, 8192), default=None,
                        help="px per block (default 2048; up to 1024, or a multiple of 1024)")
    slides.add_argument("--workers", type=_int_in(1, 64), default=1,
                        help="blocks computed at once (default 1; memory grows with it)")
    slides.add_argument("--no-slide", action="store_true",
                        help="read large images whole as before instead of block by block")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("models", help="list built-in and user models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("evaluate", help="score a model on a dataset folder (images/, masks/, ...)")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=_number(lo=0.0, hi=1.0), default=None)
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--ids", nargs="+", help="only these image ids (e.g. the validation images in a model card)")
    p.add_argument("--record", nargs="?", const="auto", metavar="KEY",
                   help="also store the mean metrics in the model's card (under KEY, default 'test: DATA')")
    p.add_argument("--ignore-contours", action="store_true",
                   help="split instances without the contour channel (to measure what it gains)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("finetune", help="fine-tune a model on corrected examples (same folder layout as train)",
                       epilog=EXIT_CODES, formatter_class=raw,
                       description="Fine-tune a model on corrected examples. The new version is kept only if it "
                                   "beats the current model on a held-out part of the examples: exit code 0 when "
                                   "it is kept, 3 when it is not.")
    p.add_argument("--model", required=True, help="parent model name or path")
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (optional labels/)")
    p.add_argument("-o", "--output", help="output weights path (default: a new version in the user models folder)")
    # the defaults live in one place (FinetuneConfig), read only when needed: it imports torch
    p.add_argument("--max-seconds", type=_number(positive=True), default=_ConfigDefault("max_seconds"),
                   help="time budget in seconds, > 0 (default %(default)s)")
    p.add_argument("--train", choices=["norm", "all"], default=_ConfigDefault("train"),
                   help="which weights learn: BatchNorm + classifier only (default, safe) or all")
    p.add_argument("--lr", type=_number(positive=True), default=_ConfigDefault("lr"),
                   help="learning rate, > 0 (default %(default)s; ~3e-4 with --train all)")
    p.add_argument("--l2sp", type=_number(lo=0.0), default=_ConfigDefault("l2sp"),
                   help="pull towards the parent's weights, >= 0 (0 = off; default %(default)s)")
    p.add_argument("--patch-size", type=_int_in(32, MAX_TILE_SIZE), default=_ConfigDefault("patch_size"),
                   help="training patch size in pixels (default %(default)s)")
    p.add_argument("--batch-size", type=_int_in(1, 256), default=_ConfigDefault("batch_size"),
                   help="patches per step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("--model", required=True, help="model name or path")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--opset", type=_int_in(7, 99), default=17)
    p.set_defaults(func=_cmd_export)

    # every option goes to benchmarks/run_all.py, whose --help lists them (main passes them on)
    p = sub.add_parser("bench", add_help=False,
                       help="speed / memory benchmarks (benchmarks/run_all.py): --quick, --only NAME..., "
                            "--out-dir DIR, --threads N, --device D, --sizes N..., --report-only; "
                            "`bench --help` lists them all")
    p.set_defaults(func=_cmd_bench, bench_args=[])

    p = sub.add_parser("demo", help="open napari on the bundled sample and segment it (headless without a display)")
    p.add_argument("--sample", choices=list(SAMPLES), default="ihc")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("-o", "--output", default="minenet-demo", help="output folder for the headless demo")
    _add_segment_options(p, model_default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a new model on a dataset folder")
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (optional labels/, fov/)")
    p.add_argument("--val-data", help="separate validation folder (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=_number(lo=0.0, hi=0.9), default=0.2)
    p.add_argument("--task", choices=list(TASK_TABLE), default="custom")
    p.add_argument("-o", "--output", required=True, help="output weights path (…/name[.safetensors])")
    p.add_argument("--name", help="model name (default: output file name)")
    p.add_argument("--epochs", type=_int_in(1), default=100)
    p.add_argument("--steps-per-epoch", type=_int_in(1), default=100)
    p.add_argument("--patch-size", type=_int_in(32, MAX_TILE_SIZE), default=None)
    p.add_argument("--batch-size", type=_int_in(1, 256), default=8)
    p.add_argument("--lr", type=_number(positive=True), default=1e-4, help="initial learning rate (paper: 1e-4)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--patience", type=_int_in(1), default=4, help="early-stopping patience in epochs (paper: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=_int_in(1), default=None, help="CPU threads for torch")
    p.add_argument("--max-minutes", type=_number(positive=True), default=None,
                   help="stop after this much training time")
    p.add_argument("--contours", action=argparse.BooleanOptionalAction, default=None,
                   help="second output channel for object contours (default: on for nuclei)")
    p.add_argument("--working-long-side", type=_int_in(16, MAX_WORKING_LONG_SIDE), default=None,
                   help="resize images so their long side is this many pixels (lesion default: 256)")
    p.add_argument("--resume", help="checkpoint to continue from (<output>.ckpt)")
    p.add_argument("--licence", default="", help="licence of the training data, recorded in the model card")
    p.add_argument("--architecture", choices=["MiniNet", "UNet"], default="MiniNet",
                   help="UNet = MONAI BasicUNet, the benchmarks' reference (needs monai)")
    p.set_defaults(func=_cmd_train)
    return parser


def _one_line(exc: BaseException) -> str:
    """The first line of an error's message (no traceback, no multi-line library text)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see :data:`EXIT_CODES`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = [a for a in extra if a != "--"]  # `bench -- --quick` works too
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line each: "warning: ..."
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (OSError, ValueError, RuntimeError, Warning) as exc:
            # the project's errors are ValueError (InputError, bad values) and RuntimeError
            # (ModelLoadError, devices); files give OSError
            if os.environ.get("NAPARI_MINENET_DEBUG"):
                raise
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
