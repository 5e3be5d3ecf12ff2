"""The C allocator: where freed buffers go between tiles, and between blocks of a slide.

glibc's malloc serves large buffers with ``mmap`` and returns them to the system on
``free``; buffers under its (dynamic, at most 32 MiB) threshold come from its heap, whose
free top is given back above a trim threshold (64 MiB once the threshold has risen). A
1024^2 tile's activations are buffers of 8-16 MiB, ~100 MiB at a time, so every tile gave
its pages back and touched new ones: 30,000-200,000 page faults per ``segment()`` of a 2048^2
image. :func:`keep_freed_buffers` fixes both thresholds (32 MiB and 256 MiB), once per process;
the faults drop to a few hundred (docs/benchmarks.md, "Page faults"). It is process-wide, so
inside napari other plugins get the same allocator (more of their freed memory stays with the
process too, up to 256 MiB of heap top); ``NAPARI_MINENET_MALLOC=default`` turns it off, and
it is never applied where the user set glibc's malloc tunables in the environment.

:func:`release_memory` is the opposite, for the slide engine between blocks.
Both are no-ops where the C library is not glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_buffers", "release_memory"]

try:  # glibc (Linux)
    _LIBC = ctypes.CDLL("libc.so.6")
    _MALLOC_TRIM, _MALLOPT = _LIBC.malloc_trim, _LIBC.mallopt
except (OSError, AttributeError):
    _MALLOC_TRIM = _MALLOPT = None

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest dynamic threshold on 64-bit systems
TRIM_THRESHOLD = 256 << 20
#: environment variables by which a user tunes glibc's malloc: then it is theirs
_USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX")
_applied: bool | None = None


def keep_freed_buffers() -> bool:
    """Keep freed buffers up to 32 MiB on glibc's heap, and up to 256 MiB of free heap top,
    instead of giving them back to the system after every tile. Both thresholds are set
    together: setting either one turns glibc's dynamic threshold off (mallopt(3)), and the
    128 KiB default would then map every large buffer afresh. Applied once per process;
    returns whether it is in effect."""
    global _applied
    if _applied is None:
        opted_out = os.environ.get("NAPARI_MINENET_MALLOC", "").strip().lower() == "default"
        if _MALLOPT is None or opted_out or any(k in os.environ for k in _USER_SETTINGS):
            _applied = False
        else:
            _applied = bool(_MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                _MALLOPT(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def release_memory() -> None:
    """Give what a finished block freed back to the system (glibc's ``malloc_trim``, as
    dask.distributed does for its workers): else the freed buffers stay in pieces and where
    the next block's land decides the peak (one 20,000^2 slide: 877-1,007 MB in five
    runs, 829-877 MB in three with it, ~5 % more time per block; docs/benchmarks.md, "Whole slides")."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
