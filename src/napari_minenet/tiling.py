"""Tiling geometry: where tiles start and end, how their outputs blend, and the dihedral
views of test-time augmentation. Pure numpy; ``inference.predict_tiled`` runs the network
on these tiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import nn

__all__ = ["GRID", "network_grid", "tile_ranges", "tile_starts", "blend_weights"]


#: tiles start on multiples of the network's total stride, so every tile sees the same
#: sampling grid as the whole image: the network's ``size_multiple`` (Mini-Net 4, the
#: reference U-Net 16); GRID is Mini-Net's, the default for networks that do not say
GRID = 4


def network_grid(network: nn.Module) -> int:
    """The multiple tile sizes and starts keep to for ``network`` (its ``size_multiple``)."""
    return int(getattr(network, "size_multiple", GRID))


def tile_ranges(length: int, tile: int, overlap: int, grid: int = GRID) -> list[tuple[int, int]]:
    """(start, stop) of the fewest tiles of at most ``tile`` pixels (+ up to ``grid`` - 1 for
    the last one) that cover ``length`` with at least ``overlap`` overlap.

    Tiles are made as short as that number of tiles allows (less overlap work than
    fixed-size tiles), start on multiples of ``grid`` (the network's size multiple) and are
    spread evenly; the last tile ends at ``length``.
    """
    if length <= tile:
        return [(0, length)]
    if overlap >= tile:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile size ({tile})")
    n = max(2, math.ceil((length - overlap) / (tile - overlap)))
    while True:
        size = math.ceil((length + (n - 1) * overlap) / n)
        size += (-size) % grid
        last = (length - size) // grid * grid
        starts = sorted({int(round(v / grid)) * grid for v in np.linspace(0, last, n)})
        if all(b - a <= size - overlap for a, b in zip(starts, starts[1:])) and length - starts[-1] <= tile + grid:
            break
        n += 1
    ranges = [(s, s + size) for s in starts]
    ranges[-1] = (starts[-1], length)
    return ranges


def tile_starts(length: int, tile: int, overlap: int, grid: int = GRID) -> list[int]:
    """Start offsets of :func:`tile_ranges` (kept for callers that only need starts)."""
    return [start for start, _ in tile_ranges(length, tile, overlap, grid)]


def blend_weights(length: int, ranges: Sequence[tuple[int, int]], overlap: int) -> list[np.ndarray]:
    """Per-tile 1-D weights that sum to exactly 1 at every position along the axis.

    Inside a tile the weight is 0 within ``overlap / 2 - ramp`` pixels of an edge shared
    with another tile (where the zero padding at the tile edge changes the network's
    output), rises as a squared sine over ``ramp = max(4, overlap / 8)`` pixels, and is 1
    beyond. Edges on the image border keep weight 1. Every pixel's value therefore comes
    from tiles in which it lies at least ``overlap / 2 - ramp`` pixels from an inner edge.
    """
    ramp = max(1, min(overlap // 2, max(4, overlap // 8)))
    margin = max(0, overlap // 2 - ramp)
    raw = []
    total = np.zeros(length, np.float64)
    for i, (start, stop) in enumerate(ranges):
        x = np.arange(stop - start, dtype=np.float64)
        d = np.full(x.shape, np.inf)
        if i > 0:
            d = np.minimum(d, x)
        if i < len(ranges) - 1:
            d = np.minimum(d, x[-1] - x)
        r = np.clip((d - margin + 1) / ramp, 0.0, 1.0)
        r = np.sin(0.5 * np.pi * r) ** 2
        raw.append(r)
        total[start:stop] += r
    if np.any(total <= 0):  # only with a degenerate overlap; fall back to uniform averaging
        raw = [np.ones(stop - start) for start, stop in ranges]
        total = np.zeros(length)
        for start, stop in ranges:
            total[start:stop] += 1.0
    return [(r / total[start:stop]).astype(np.float32) for r, (start, stop) in zip(raw, ranges)]


def _sample_boxes(h: int, w: int, max_pixels: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Boxes (y0, y1, x0, x1) used for BN statistics: the whole image if small, else a
    regular grid of tiles spread over it."""
    if h * w <= max_pixels:
        return [(0, h, 0, w)]
    th, tw = min(tile, h), min(tile, w)
    n = max(1, max_pixels // (th * tw))
    rows = max(1, min(int(round(math.sqrt(n * h / w))), math.ceil(h / th)))
    cols = max(1, min(n // rows, math.ceil(w / tw)))
    ys = np.round(np.linspace(0, h - th, rows)).astype(int)
    xs = np.round(np.linspace(0, w - tw, cols)).astype(int)
    return [(int(y), int(y) + th, int(x), int(x) + tw) for y in ys for x in xs]


#: the 8 views of test-time augmentation: (quarter turns, flip)
_DIHEDRAL = [(0, False), (0, True), (2, False), (2, True), (1, False), (3, False), (1, True), (3, True)]


def _check_views(n: int) -> int:
    if n not in (1, 2, 4, 8):
        raise ValueError(f"test-time augmentation takes 1, 2, 4 or 8 views, not {n}")
    return n


def _transform(array: np.ndarray, k: int, flip: bool, *, inverse: bool = False,
               channels_first: bool = False) -> np.ndarray:
    """Rotate by k quarter turns then flip left-right (or undo it); returns a view."""
    axes = (1, 2) if channels_first else (0, 1)
    if not inverse:
        out = np.rot90(array, k, axes=axes)
        return np.flip(out, axis=axes[1]) if flip else out
    out = np.flip(array, axis=axes[1]) if flip else array
    return np.rot90(out, -k, axes=axes)
