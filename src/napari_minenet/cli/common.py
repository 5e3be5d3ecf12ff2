"""What every command of the command line shares: progress bars, argument types, the parser
class, the exit codes. Imports no torch (``--help`` stays instant)."""

from __future__ import annotations

import argparse
import math

from ..data import MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV, MAX_TILE_SIZE

__all__ = ["EXIT_CODES", "LazyProgress", "progress_bar", "int_in", "number", "pixel_size_arg", "Parser",
           "ConfigDefault", "config_value", "one_line"]

EXIT_CODES = f"""exit codes:
  0    success
  1    segment: some images failed (the others were written); bench: a benchmark failed
  2    usage error, or an input / model / file error (one line on stderr)
  3    finetune: the new version did not beat the current model and was not kept
  130  interrupted (Ctrl+C)

limits: images over {MAX_IMAGE_PIXELS:,} pixels (all planes together) are refused before
decoding (environment variable {MAX_IMAGE_PIXELS_ENV} changes it); tiles are 32 to
{MAX_TILE_SIZE} px. Set NAPARI_MINENET_DEBUG=1 to see the traceback behind an error and the
log of every fallback taken (unreadable metadata, a slide run that cannot resume, ...)."""


def progress_bar(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


class LazyProgress:
    """A ``progress(done, total)`` callback whose bar starts at the first call, when the
    total is known: its first line already reads ``0/12 [00:00<?, ...]``, never ``0tile``."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, self.desc, self.unit)
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


def int_in(lo: int, hi: int | None = None):
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


def number(*, positive: bool = False, lo: float | None = None, hi: float | None = None):
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


def pixel_size_arg(text: str):
    """argparse type: 'auto' or a pixel size in um (within the plausible range)."""
    from ..pixel_size import PIXEL_SIZE_RANGE

    if text.strip().lower() == "auto":
        return "auto"
    return number(lo=PIXEL_SIZE_RANGE[0], hi=PIXEL_SIZE_RANGE[1])(text)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (``napari-minenet segment: error: ... (see --help)``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class ConfigDefault:
    """A default that lives in ``FinetuneConfig`` (which imports torch), read only when it
    is needed: when ``finetune`` runs, or ``finetune --help`` prints it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def value(self):
        from ..finetuning import FinetuneConfig

        return getattr(FinetuneConfig(), self.name)

    def __str__(self) -> str:
        return str(self.value())


def config_value(v):
    return v.value() if isinstance(v, ConfigDefault) else v


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (no traceback, no multi-line library text)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
