"""``napari-minenet``: the command line. Argument parsing, progress bars and files only;
every subcommand calls the same core functions as the napari widget.

One module per group of commands: ``segment`` (segment, demo), ``learning`` (train,
finetune), ``models`` (models, evaluate, export, bench); ``common`` holds what they share.
Building the parser imports neither torch nor the core modules that need it, so
``--help`` is instant; each subcommand imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from . import learning, models, segment
from .common import EXIT_CODES, Parser, one_line

__all__ = ["main", "build_parser", "EXIT_CODES"]


def build_parser() -> argparse.ArgumentParser:
    """The parser; building it imports no torch (``--help`` is instant)."""
    parser = Parser(
        prog="napari-minenet",
        description="Mini-Net segmentation of nuclei, retinal vessels and skin lesions (headless tools).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (segment.add_segment_parser, models.add_models_parser, models.add_evaluate_parser,
                learning.add_finetune_parser, models.add_export_parser, models.add_bench_parser,
                segment.add_demo_parser, learning.add_train_parser):
        add(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see :data:`EXIT_CODES`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if os.environ.get("NAPARI_MINENET_DEBUG"):  # the modules' loggers say which fallbacks were taken
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
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
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2

