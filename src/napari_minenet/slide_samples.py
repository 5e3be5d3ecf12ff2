"""Test slides: real-looking tissue tiles laid out on white glass, written as a pyramidal
tiled TIFF with its pixel size, tile by tile (a 40,000 x 40,000 slide never exists in memory).

Used by the tests (scikit-image's bundled IHC sample) and the slide benchmark (MoNuSeg
tiles); any list of RGB uint8 images works as tissue.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TissueLayout", "tissue_layout", "write_slide_tiff", "write_svs", "GLASS"]

#: the colour of empty glass in a bright-field scan
GLASS = (242, 241, 239)


@dataclass
class TissueLayout:
    """Where each tissue tile sits on the slide (level-0 pixels)."""

    shape: tuple[int, int]
    sources: list[np.ndarray]  # RGB uint8 tiles
    cells: list[tuple[int, int, int]]  # (y0, x0, index into sources)
    _grid: np.ndarray | None = None  # (y0, x0, y1, x1) per cell, built on first use

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) of every embedded tile."""
        return [(y, y + self.sources[k].shape[0], x, x + self.sources[k].shape[1]) for y, x, k in self.cells]

    @property
    def tissue_fraction(self) -> float:
        return sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in self.boxes()) / (self.shape[0] * self.shape[1])

    def region(self, y0: int, y1: int, x0: int, x1: int, step: int = 1) -> np.ndarray:
        """Pixels of a box sampled every ``step`` level-0 pixels (a pyramid level's box is the
        level-0 box of its pixels: level pixel (Y, X) is level-0 pixel (Y * step, X * step))."""
        ys = np.arange(y0, y1) * step
        xs = np.arange(x0, x1) * step
        out = np.empty((ys.size, xs.size, 3), np.uint8)
        out[...] = GLASS
        if self._grid is None:
            self._grid = np.array([(cy, cx, cy + self.sources[k].shape[0], cx + self.sources[k].shape[1])
                                   for cy, cx, k in self.cells]).reshape(-1, 4)
        g = self._grid
        near = np.nonzero((g[:, 0] <= ys[-1]) & (g[:, 2] > ys[0]) & (g[:, 1] <= xs[-1]) & (g[:, 3] > xs[0]))[0]
        for i in near:
            cy, cx, k = self.cells[i]
            src = self.sources[k]
            iy = np.nonzero((ys >= cy) & (ys < cy + src.shape[0]))[0]
            ix = np.nonzero((xs >= cx) & (xs < cx + src.shape[1]))[0]
            if iy.size and ix.size:
                out[iy[0] : iy[-1] + 1, ix[0] : ix[-1] + 1] = src[ys[iy] - cy][:, xs[ix] - cx]
        return out


def tissue_layout(shape: tuple[int, int], sources: Sequence[np.ndarray], tissue_fraction: float = 0.4, *,
                  origin: tuple[int, int] | None = None, gap: int = 0, seed: int = 0) -> TissueLayout:
    """A block of tissue tiles (``sources`` in random order, as they are) covering about ``tissue_fraction`` of the slide, the rest glass. ``origin`` places the
    first tile (default: a margin of 1/10 of the slide); ``gap`` leaves glass between tiles."""
    # tiles are used as they are, never flipped or turned: the per-slide normalisation
    # statistics of a slide of turned copies differ from those of the tile itself (measured:
    # pixel F1 0.90, AJI 0.65 between the IHC sample segmented with its own statistics and
    # with those of its 90-degree turn), which would hide what the engine itself changes
    rng = np.random.default_rng(seed)
    variants = [np.ascontiguousarray(np.asarray(src)[..., :3]) for src in sources]
    th = max(v.shape[0] for v in variants) + gap
    tw = max(v.shape[1] for v in variants) + gap
    h, w = shape
    y0, x0 = origin if origin is not None else (h // 10, w // 10)
    area = tissue_fraction * h * w
    n = max(1, int(round(area / (th * tw))))
    cols = max(1, min((w - x0) // tw, int(math.ceil(math.sqrt(n * w / h)))))
    rows = max(1, min((h - y0) // th, int(math.ceil(n / cols))))
    cells = []
    for i in range(rows):
        for j in range(cols):
            if len(cells) < n:
                cells.append((y0 + i * th, x0 + j * tw, int(rng.integers(len(variants)))))
    return TissueLayout((h, w), variants, cells)


def _tiles(layout: TissueLayout, step: int, tile: int) -> Iterator[np.ndarray]:
    h, w = (math.ceil(layout.shape[0] / step), math.ceil(layout.shape[1] / step))
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            part = layout.region(y, min(h, y + tile), x, min(w, x + tile), step)
            if part.shape[:2] != (tile, tile):
                part = np.pad(part, ((0, tile - part.shape[0]), (0, tile - part.shape[1]), (0, 0)),
                              constant_values=GLASS[0])
            yield part


def write_slide_tiff(path: str | Path, layout: TissueLayout, *, mpp: float = 0.25, tile: int = 256,
                     min_level_side: int = 512, compression: str = "zlib") -> Path:
    """A pyramidal tiled BigTIFF (full resolution plus 2x reductions as SubIFDs, down to a
    long side of ``min_level_side``), pixel size ``mpp`` um as a centimetre resolution;
    written tile by tile. ``compression="jpeg"`` (as in most scanners) needs imagecodecs."""
    import tifffile

    path = Path(path)
    h, w = layout.shape
    n_levels = 1
    while max(h, w) / 2 ** n_levels >= min_level_side:
        n_levels += 1
    per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level in range(n_levels):
            step = 2 ** level
            shape = (math.ceil(h / step), math.ceil(w / step), 3)
            options = dict(shape=shape, dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                           compression=compression, resolution=(per_cm / step, per_cm / step),
                           resolutionunit="CENTIMETER")
            if level == 0:
                tw.write(_tiles(layout, step, tile), subifds=n_levels - 1, **options)
            else:
                tw.write(_tiles(layout, step, tile), subfiletype=1, **options)
    return path


def write_svs(path: str | Path, layout: TissueLayout, *, mpp: float = 0.25, tile: int = 256,
              min_level_side: int = 512, compression: str = "zlib") -> Path:
    """The same slide in Aperio's SVS layout: the tiled baseline with an ``Aperio Image
    Library`` description holding ``MPP``, a stripped thumbnail, then the reduced levels
    (4x each, as Aperio scanners write them) as further tiled pages."""
    import tifffile

    path = Path(path)
    h, w = layout.shape
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile})"
    kw = dict(photometric="rgb", compression=compression, metadata=None)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(_tiles(layout, 1, tile), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                 description=f"{head} RGB|AppMag = 40|MPP = {mpp:.4f}", **kw)
        step = max(1, int(2 ** math.ceil(math.log2(max(h, w) / 256))))
        tw.write(layout.region(0, math.ceil(h / step), 0, math.ceil(w / step), step),
                 description=f"{head} -> {math.ceil(w / step)}x{math.ceil(h / step)} - |", **kw)
        step = 4
        while max(h, w) / step >= min_level_side:
            shape = (math.ceil(h / step), math.ceil(w / step), 3)
            tw.write(_tiles(layout, step, tile), shape=shape, dtype=np.uint8, tile=(tile, tile),
                     description=f"{head} -> {shape[1]}x{shape[0]} RGB", **kw)
            step *= 4
    return path
