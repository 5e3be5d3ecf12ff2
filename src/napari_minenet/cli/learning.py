"""``napari-minenet train`` and ``finetune``: learning from a dataset folder."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..data import MAX_TILE_SIZE, MAX_WORKING_LONG_SIDE
from ..tasks import TASK_TABLE
from .common import EXIT_CODES, ConfigDefault, LazyProgress, config_value, int_in, number

__all__ = ["add_train_parser", "add_finetune_parser"]


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, run_to_end, train

    cfg = TrainConfig(
        task=args.task, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, patch_size=args.patch_size,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, patience=args.patience,
        seed=args.seed, device=args.device, max_minutes=args.max_minutes, contours=args.contours,
        val_fraction=args.val_fraction, threads=args.threads, architecture=args.architecture,
        working_long_side=args.working_long_side if args.working_long_side is not None else -1,
        workers=args.workers, stain=args.stain_jitter, scale_range=args.scale_range, pixel_size_um=args.pixel_size,
    )
    command = "napari-minenet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    gen = train(args.data, args.output, cfg, val_data=args.val_data, hold_out=args.hold_out, exclude=args.exclude,
                name=args.name, resume=args.resume, command=command, licence=args.licence)
    total = cfg.epochs * cfg.steps_per_epoch
    bar = LazyProgress("training", "step")  # starts with the first record: data errors come first

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


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ..finetuning import FinetuneConfig, finetune
    from ..training import run_to_end

    if args.output is not None:  # refuse before the work, not after it
        out = Path(args.output)
        weights = out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")
        if weights.exists():
            raise FileExistsError(f"a model already exists at {weights}; choose another -o")
    cfg = FinetuneConfig(max_seconds=config_value(args.max_seconds), lr=config_value(args.lr), l2sp=config_value(args.l2sp),
                         seed=args.seed, train=config_value(args.train), device=args.device,
                         patch_size=config_value(args.patch_size), batch_size=config_value(args.batch_size))
    gen = finetune(args.model, args.data, cfg, output=args.output)
    total = max(1, int(cfg.max_seconds))
    bar = LazyProgress("fine-tuning", "s")  # starts with the first record: data errors come first

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


def add_train_parser(sub) -> None:
    """The ``train`` subcommand (``sub``: the parser's subparsers)."""
    p = sub.add_parser("train", help="train a new model on a dataset folder")
    p.add_argument("--data", required=True, nargs="+", metavar="FOLDER",
                   help="folder(s) with images/ and masks/ (optional labels/, fov/); ids must not repeat")
    p.add_argument("--val-data", nargs="+", metavar="FOLDER",
                   help="separate validation folder(s) (default: hold out --val-fraction)")
    p.add_argument("--val-fraction", type=number(lo=0.0, hi=0.9), default=0.2)
    p.add_argument("--hold-out", nargs="+", default=[], metavar="PATTERN",
                   help="validate on the images whose id matches a pattern (shell style: 'tnbc_07_*')")
    p.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                   help="leave out the images whose id matches a pattern (kept unseen for other benchmarks)")
    p.add_argument("--task", choices=list(TASK_TABLE), default="custom")
    p.add_argument("-o", "--output", required=True, help="output weights path (…/name[.safetensors])")
    p.add_argument("--name", help="model name (default: output file name)")
    p.add_argument("--epochs", type=int_in(1), default=100)
    p.add_argument("--steps-per-epoch", type=int_in(1), default=100)
    p.add_argument("--patch-size", type=int_in(32, MAX_TILE_SIZE), default=None)
    p.add_argument("--batch-size", type=int_in(1, 256), default=8)
    p.add_argument("--lr", type=number(positive=True), default=1e-4, help="initial learning rate (paper: 1e-4)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--patience", type=int_in(1), default=4, help="early-stopping patience in epochs (paper: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int_in(1), default=None, help="CPU threads for torch")
    p.add_argument("--max-minutes", type=number(positive=True), default=None,
                   help="stop after this much training time")
    p.add_argument("--contours", action=argparse.BooleanOptionalAction, default=None,
                   help="second output channel for object contours (default: on for nuclei)")
    p.add_argument("--working-long-side", type=int_in(16, MAX_WORKING_LONG_SIDE), default=None,
                   help="resize images so their long side is this many pixels (lesion default: 256)")
    p.add_argument("--workers", type=int_in(0, 64), default=0,
                   help="processes that prepare training patches (useful with a GPU; default 0)")
    p.add_argument("--stain-jitter", type=number(lo=0.0, hi=1.0), default=None,
                   help="H&E stain augmentation amplitude (default: the task's, nuclei 0.05)")
    p.add_argument("--scale-range", type=number(lo=0.1, hi=10.0), nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="random patch rescaling range (default 0.75 1.33)")
    p.add_argument("--pixel-size", type=number(lo=0.02, hi=50.0), default=None, metavar="UM",
                   help="pixel size of the training images in micrometres, recorded in the model card")
    p.add_argument("--resume", help="checkpoint to continue from (<output>.ckpt)")
    p.add_argument("--licence", default="", help="licence of the training data, recorded in the model card")
    p.add_argument("--architecture", choices=["MiniNet", "UNet"], default="MiniNet",
                   help="UNet = MONAI BasicUNet, the benchmarks' reference (needs monai)")
    p.set_defaults(func=_cmd_train)


def add_finetune_parser(sub) -> None:
    """The ``finetune`` subcommand (``sub``: the parser's subparsers)."""
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("finetune", help="fine-tune a model on corrected examples (same folder layout as train)",
                       epilog=EXIT_CODES, formatter_class=raw,
                       description="Fine-tune a model on corrected examples. The new version is kept only if it "
                                   "beats the current model on a held-out part of the examples: exit code 0 when "
                                   "it is kept, 3 when it is not.")
    p.add_argument("--model", required=True, help="parent model name or path")
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (optional labels/)")
    p.add_argument("-o", "--output", help="output weights path (default: a new version in the user models folder)")
    # the defaults live in one place (FinetuneConfig), read only when needed: it imports torch
    p.add_argument("--max-seconds", type=number(positive=True), default=ConfigDefault("max_seconds"),
                   help="time budget in seconds, > 0 (default %(default)s)")
    p.add_argument("--train", choices=["norm", "all"], default=ConfigDefault("train"),
                   help="which weights learn: BatchNorm + classifier only (default, safe) or all")
    p.add_argument("--lr", type=number(positive=True), default=ConfigDefault("lr"),
                   help="learning rate, > 0 (default %(default)s; ~3e-4 with --train all)")
    p.add_argument("--l2sp", type=number(lo=0.0), default=ConfigDefault("l2sp"),
                   help="pull towards the parent's weights, >= 0 (0 = off; default %(default)s)")
    p.add_argument("--patch-size", type=int_in(32, MAX_TILE_SIZE), default=ConfigDefault("patch_size"),
                   help="training patch size in pixels (default %(default)s)")
    p.add_argument("--batch-size", type=int_in(1, 256), default=ConfigDefault("batch_size"),
                   help="patches per step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_finetune)
