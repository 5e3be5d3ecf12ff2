"""``napari-minenet``: the command line. Argument parsing, progress bars and files only;
every subcommand calls the same core functions as the napari widget."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _progress_bar(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


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
    bar = _progress_bar(cfg.epochs * cfg.steps_per_epoch, "training", "step")

    def show(rec) -> None:
        if rec.kind == "step":
            bar.n = rec.step
            bar.set_postfix(epoch=rec.epoch, loss=f"{rec.loss:.4f}", lr=f"{rec.lr:.1e}", refresh=False)
            bar.refresh()
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


def _tile_progress(bar):
    def callback(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return callback


def _write_outputs(out_dir: Path, stem: str, labels, prob, image, *, save_probability: bool, overlay: bool) -> list[Path]:
    from .files import write_png, write_tiff

    written = []
    path = out_dir / f"{stem}_labels.tif"
    write_tiff(path, labels)
    written.append(path)
    if save_probability:
        path = out_dir / f"{stem}_probability.tif"
        write_tiff(path, prob.astype("float32"))
        written.append(path)
    if overlay and labels.ndim == 2:
        from .visualize import outline_overlay

        path = out_dir / f"{stem}_overlay.png"
        write_png(path, outline_overlay(image, labels))
        written.append(path)
    return written


def _segment_files(paths, out_dir: Path, args) -> int:
    from .data import read_image
    from .segmentation import segment, segment_stack, split_planes, summarize
    from .zoo import load_model

    model = load_model(args.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    instances = args.instances
    failures = 0
    for path in paths:
        path = Path(path)
        try:
            image = read_image(path)
            lead, _ = split_planes(image)
            bar = _progress_bar(0, path.name, "tile")
            try:
                kwargs = dict(instances=instances, threshold=args.threshold, min_size=args.min_size,
                              device=args.device, tile_size=args.tile, batch_size=args.batch_size)
                if lead:
                    stack = segment_stack(image, model, progress=_tile_progress(bar), **kwargs)
                    labels, prob = stack.labels, stack.probability
                    summary = f"{len(stack.planes)} planes, " + summarize(labels, model.card.object_name,
                                                                          stack.instances)
                else:
                    result = segment(image, model, progress=_tile_progress(bar), **kwargs)
                    labels, prob = result.labels, result.probability
                    summary = summarize(labels, model.card.object_name, result.instances)
            finally:
                bar.close()
            written = _write_outputs(out_dir, path.stem, labels, prob, image,
                                     save_probability=args.save_probability, overlay=args.overlay)
            print(f"{path.name}: {summary} -> {', '.join(str(w) for w in written)}")
        except (ValueError, OSError, RuntimeError) as exc:
            failures += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
    return 1 if failures else 0


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
                shown = " ".join(f"{k}={values[k]:.3f}" for k in ("f1", "aji", "auc", "jaccard") if k in values)
                metrics = f"{split.split(':')[0].split(',')[0]}: {shown}"
                break
        print(f"{m.name:<28} {m.task:<8} {m.source:<8} {metrics:<44} {m.parent or ''}")
    print(f"\nuser models folder: {user_models_dir()}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:

    from .evaluation import METRIC_KEYS, evaluate
    from .zoo import atomic_write_json

    bar = _progress_bar(0, "evaluating", "image")
    try:
        report = evaluate(args.data, args.model, device=args.device, threshold=args.threshold,
                          use_contours=not args.ignore_contours, ids=args.ids, progress=_tile_progress(bar))
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
        save_model(model, model.path)
        print(f"recorded in the model card of {model.card.name} as {key!r}")
    return 0



# --------------------------------------------------------------------------- finetune


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetuning import FinetuneConfig, finetune
    from .training import run_to_end

    cfg = FinetuneConfig(max_seconds=args.max_seconds, lr=args.lr, l2sp=args.l2sp, seed=args.seed,
                         train=args.train, device=args.device, patch_size=args.patch_size,
                         batch_size=args.batch_size)
    gen = finetune(args.model, args.data, cfg, output=args.output)
    bar = _progress_bar(int(cfg.max_seconds), "fine-tuning", "s")

    def show(rec) -> None:
        bar.n = min(int(rec.elapsed), bar.total)
        if rec.kind == "step":
            bar.set_postfix(step=rec.step, loss=f"{rec.loss:.4f}", refresh=False)
        elif rec.kind == "validation" and rec.val_loss is not None:
            bar.write(f"{rec.elapsed:6.1f} s  step {rec.step:5d}  held-out loss {rec.val_loss:.4f}"
                      + (f"  F1 {rec.val_score:.4f}" if rec.val_score is not None else "")
                      + ("  *" if rec.improved else "") + (f"  ({rec.message})" if rec.message else ""))
        bar.refresh()

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
    return subprocess.call([sys.executable, str(script), *args.bench_args])


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
    args.model = args.model or ("nuclei" if args.sample == "ihc" else "vessels")
    return _segment_files(args.images, Path(args.output), args)


def _add_segment_options(p: argparse.ArgumentParser, model_default: str | None = "nuclei") -> None:
    p.add_argument("--model", default=model_default, help="model name (see `models`) or path to .safetensors")
    p.add_argument("--instances", action=argparse.BooleanOptionalAction, default=None,
                   help="one label per object (default: from the model: nuclei yes, vessels/lesion no)")
    p.add_argument("--threshold", type=float, default=None, help="foreground threshold (default: model's)")
    p.add_argument("--min-size", type=int, default=None, help="remove objects smaller than this (pixels)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--tile", type=int, default=None, help="tile size in pixels (default: model's)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per batch")
    p.add_argument("--save-probability", action="store_true", help="also write the probability map")
    p.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True,
                   help="write a PNG with the outlines drawn on the image")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-minenet",
        description="Mini-Net segmentation of nuclei, retinal vessels and skin lesions (headless tools).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images and write label TIFFs")
    p.add_argument("images", nargs="+", help="TIFF / PNG / JPEG files (stacks are segmented plane by plane)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_segment_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("models", help="list built-in and user models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("evaluate", help="score a model on a dataset folder (images/, masks/, ...)")
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--ids", nargs="+", help="only these image ids (e.g. the validation images in a model card)")
    p.add_argument("--record", nargs="?", const="auto", metavar="KEY",
                   help="also store the mean metrics in the model's card (under KEY, default 'test: DATA')")
    p.add_argument("--ignore-contours", action="store_true",
                   help="split instances without the contour channel (to measure what it gains)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("finetune", help="fine-tune a model on corrected examples (same folder layout as train)")
    p.add_argument("--model", required=True, help="parent model name or path")
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (optional labels/)")
    p.add_argument("-o", "--output", help="output weights path (default: a new version in the user models folder)")
    from .finetuning import FinetuneConfig  # the defaults live in one place

    ft = FinetuneConfig()
    p.add_argument("--max-seconds", type=float, default=ft.max_seconds, help="time budget (default %(default)s s)")
    p.add_argument("--train", choices=["norm", "all"], default=ft.train,
                   help="which weights learn: BatchNorm + classifier only (default, safe) or all")
    p.add_argument("--lr", type=float, default=ft.lr, help="learning rate (default %(default)s; ~3e-4 with --train all)")
    p.add_argument("--l2sp", type=float, default=ft.l2sp, help="pull towards the parent's weights (0 = off)")
    p.add_argument("--patch-size", type=int, default=ft.patch_size)
    p.add_argument("--batch-size", type=int, default=ft.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("--model", required=True, help="model name or path")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="run the speed / memory benchmarks (benchmarks/run_all.py)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to benchmarks/run_all.py")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="open napari on the bundled sample and segment it (headless without a display)")
    p.add_argument("--sample", choices=["ihc", "retina"], default="ihc")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("-o", "--output", default="minenet-demo", help="output folder for the headless demo")
    _add_segment_options(p, model_default=None)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a new model on a dataset folder")
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (optional labels/, fov/)")
    p.add_argument("--val-data", help="separate validation folder (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--task", choices=["nuclei", "vessels", "lesion", "custom"], default="custom")
    p.add_argument("-o", "--output", required=True, help="output weights path (…/name[.safetensors])")
    p.add_argument("--name", help="model name (default: output file name)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="initial learning rate (paper: 1e-4)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--patience", type=int, default=4, help="early-stopping patience in epochs (paper: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    p.add_argument("--contours", action=argparse.BooleanOptionalAction, default=None,
                   help="second output channel for object contours (default: on for nuclei)")
    p.add_argument("--working-long-side", type=int, default=None,
                   help="resize images so their long side is this many pixels (lesion default: 256)")
    p.add_argument("--resume", help="checkpoint to continue from (<output>.ckpt)")
    p.add_argument("--licence", default="", help="licence of the training data, recorded in the model card")
    p.add_argument("--architecture", choices=["MiniNet", "UNet"], default="MiniNet",
                   help="UNet = MONAI BasicUNet, the benchmarks' reference (needs monai)")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import InputError
    from .zoo import ModelLoadError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (InputError, ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
