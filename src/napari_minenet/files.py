"""Writing files so that a crash never leaves half a file: temporary file, fsync, rename."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "write_tiff", "write_png",
           "remove_stale_temp_files", "STALE_TEMP_SECONDS"]

#: a temporary file of :func:`atomic_write` older than this is left over from a crash
STALE_TEMP_SECONDS = 3600.0


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    If the block raises (or the process dies), ``path`` keeps its previous content and
    the temporary file is removed (or, after a hard crash, left as ``.<name>.*.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes owner-only files; keep the target's mode, or the usual rw-r--r--
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str | os.PathLike, max_age_s: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that :func:`atomic_write` left in ``folder`` after a hard
    crash, when they are older than ``max_age_s`` (a younger one may belong to a write in
    progress). Returns the files removed; errors (e.g. a read-only folder) are ignored."""
    removed = []
    now = time.time()
    try:
        candidates = list(Path(folder).glob(".?*.*.tmp"))
    except OSError as exc:
        logger.debug("cannot look for stale temporary files in %s (%s)", folder, exc)
        return removed
    for path in candidates:
        try:
            if path.is_file() and now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except OSError as exc:
            logger.info("cannot remove the stale temporary file %s (%s)", path, exc)
            continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def write_tiff(path: str | os.PathLike, array: np.ndarray, *, pixel_size: float | None = None, **kwargs: Any) -> None:
    """zlib-compressed TIFF, written atomically. With ``pixel_size`` (um per pixel) the
    resolution tags record it (pixels per centimetre), so the file keeps its pixel size
    (:func:`napari_minenet.pixel_size.read_pixel_size` reads it back)."""
    import tifffile

    if pixel_size:
        kwargs.setdefault("resolution", (1e4 / pixel_size, 1e4 / pixel_size))
        kwargs.setdefault("resolutionunit", "CENTIMETER")
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, compression="zlib", **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """PNG (uint8 grey or RGB), written atomically."""
    import imageio.v3 as iio

    atomic_write_bytes(path, iio.imwrite("<bytes>", array, extension=".png"))
