"""Normalisation statistics of a slide, one set per piece of tissue.

Mini-Net normalises with statistics estimated on the image it segments (AdaBN, with the
card's ``bn_prior``). On a slide that holds several separate pieces of tissue (a tissue
microarray, serial sections, biopsies from different blocks) the pieces can differ in
stain and scanner as much as two images do, and statistics pooled over all of them fit
none (measured on a slide made of held-out H&E tiles: docs/slides.md). So every piece of
tissue large enough to estimate them (:data:`MIN_PIECE_PIXELS`) gets statistics of its own,
estimated on that piece alone; specks and small fragments share the slide-wide statistics.

Which statistics a full-resolution pixel uses is decided on the low-resolution tissue mask
(:class:`TissuePieces`): every mask pixel, glass included, belongs to the nearest piece,
so the borders between pieces run through glass, and every block that sees a pixel
computes it with the same network (the anchor stitching of ``slide_engine`` needs exactly
that). Pieces are connected components of the mask, whose closing already joins tissue
separated by less than ~4 mask pixels (128 px at 32x): tissue that touches is one piece.
A piece is estimated the way ``segment()`` estimates an image: on its whole box when that
is at most 1 Mpx (:data:`WHOLE_PIECE_PIXELS`), else on 512 px tiles spread over its tissue,
and predicted on a tile grid that starts at its box, so a piece on glass gets the labels
``segment()`` gives on that piece cropped. A slide of one large piece is estimated on tiles
as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .data import Normalizer
from .inference import adapt_to_tiles
from .slides import Slide, TissueMask, glass_pixels
from .zoo import SegmentationModel

__all__ = ["TissuePieces", "tissue_pieces", "piece_box", "sample_tiles", "estimate_statistics", "MIN_PIECE_PIXELS",
           "MAX_PIECES", "WHOLE_PIECE_PIXELS", "SLIDE_SAMPLE_TILE", "SLIDE_SAMPLE_PIXELS"]

#: pieces with less tissue than this (full-resolution pixels) share the slide-wide statistics
MIN_PIECE_PIXELS = 256 * 256
#: at most this many pieces get statistics of their own (the largest); the rest share
MAX_PIECES = 255
#: a piece whose box is at most this large is estimated on its whole box, as ``segment()``
#: does for an image of that size (``inference.BN_WHOLE_IMAGE_PIXELS``); larger ones on tiles
WHOLE_PIECE_PIXELS = 1 << 20


@dataclass
class TissuePieces:
    """For every pixel of the low-resolution tissue mask, which statistics its
    full-resolution pixels use: 0 the slide-wide ones, k >= 1 those of piece k."""

    owner: np.ndarray  # uint8, the tissue mask's shape
    downsample: float
    tissue: np.ndarray  # uint8, the tissue mask's shape: piece k's own tissue pixels are k
    #: (count + 1, 2) int64, level-0 (y, x) where piece k's network grid starts (row 0: the
    #: slide's origin, for the slide-wide statistics); :func:`estimate_statistics` sets row k
    #: to the piece's box, so a piece is predicted on the grid ``segment()`` uses on its box
    origins: np.ndarray

    def origin(self, k: int) -> tuple[int, int]:
        return int(self.origins[k, 0]), int(self.origins[k, 1])

    @property
    def count(self) -> int:
        """Pieces with statistics of their own."""
        return int(self.owner.max(initial=0))

    def owners_in(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The owner of every full-resolution pixel of a box (that of its mask pixel)."""
        d = self.downsample
        h, w = self.owner.shape
        iy = np.minimum((np.arange(y0, y1) // d).astype(np.intp), h - 1)
        ix = np.minimum((np.arange(x0, x1) // d).astype(np.intp), w - 1)
        return self.owner[np.ix_(iy, ix)]

    def save(self, path: Path) -> None:
        """Write to ``path`` (.npz) atomically."""
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, owner=self.owner, tissue=self.tissue, downsample=self.downsample, origins=self.origins)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TissuePieces | None:
        """What :meth:`save` wrote, or None where nothing was (a slide of one piece)."""
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return cls(data["owner"], float(data["downsample"]), data["tissue"], data["origins"])

    def mask_of(self, k: int) -> TissueMask:
        """Piece ``k``'s own tissue as a tissue mask (for sampling its statistics tiles)."""
        return TissueMask(self.tissue == k, self.downsample)


def tissue_pieces(mask: TissueMask, *, min_pixels: int = MIN_PIECE_PIXELS,
                  max_pieces: int = MAX_PIECES) -> TissuePieces | None:
    """The pieces of tissue of ``mask`` that get statistics of their own, or None when none
    does (no tissue, or only fragments: then the slide-wide statistics serve everything)."""
    labels, n = ndi.label(mask.mask, structure=np.ones((3, 3), bool))
    if n < 1:
        return None
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:] * mask.downsample ** 2
    order = np.argsort(-areas, kind="stable")
    kept = [int(i) + 1 for i in order[: max(0, max_pieces)] if areas[i] >= min_pixels]
    if not kept:
        return None
    kept.sort()  # number pieces in the order ndi.label found them (raster order of first pixel)
    relabel = np.zeros(n + 1, np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1)
    small = len(kept) + 1  # fragments: tissue that shares the slide-wide statistics
    relabel[1:][relabel[1:] == 0] = small
    seeds = relabel[labels]
    seeds[labels == 0] = 0
    # every glass pixel takes the nearest tissue pixel's owner (ties: scipy's order, fixed)
    iy, ix = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    owner = seeds[iy, ix]
    owner[owner == small] = 0
    tissue = np.where(seeds == small, 0, seeds)
    return TissuePieces(np.ascontiguousarray(owner.astype(np.uint8)), float(mask.downsample),
                        np.ascontiguousarray(tissue.astype(np.uint8)), np.zeros((len(kept) + 1, 2), np.int64))


def piece_box(slide: Slide, pieces: TissuePieces, k: int) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
    """The full-resolution box (y0, y1, x0, x1) of piece ``k``'s tissue and its pixels: the
    mask box grown by one mask pixel, then cut to the rows and columns where more than 5 %
    of the pixels are not glass (read at full resolution, so the box follows the tissue's
    real edge, not the mask's grid). Boxes above 4 Mpx are not read (such a piece is
    sampled in tiles): their pixels are None."""
    d = pieces.downsample
    h, w = slide.shape
    ys, xs = np.nonzero(pieces.tissue == k)
    y0, y1 = max(0, int((ys.min() - 1) * d)), min(h, int(np.ceil((ys.max() + 2) * d)))
    x0, x1 = max(0, int((xs.min() - 1) * d)), min(w, int(np.ceil((xs.max() + 2) * d)))
    if (y1 - y0) * (x1 - x0) > 4 * WHOLE_PIECE_PIXELS:
        return (y0, y1, x0, x1), None
    pixels = slide.read(y0, y1, x0, x1)
    tissue = ~glass_pixels(pixels)
    rows = np.nonzero(tissue.mean(axis=1) > 0.05)[0]
    cols = np.nonzero(tissue.mean(axis=0) > 0.05)[0]
    if rows.size == 0 or cols.size == 0:
        return (y0, y1, x0, x1), pixels
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (y0 + r0, y0 + r1, x0 + c0, x0 + c1), np.ascontiguousarray(pixels[r0:r1, c0:c1])


# --------------------------------------------------------------------------- sampling and estimating


#: the normalisation statistics of a slide come from this many pixels of tissue, in tiles of
#: this size: statistics from small tiles differ from those of a whole image (zero padding at
#: every tile edge); measured against ``segment()`` on a 512 px tile, statistics from 16
#: tiles of 256 px gave pixel F1 0.94 / AJI 0.78, from 4 or 8 tiles of 512 px 0.99 / 0.97
#: and 1.00 / 1.00. 8 x 512^2 px peak at ~0.9 GB during that one pass.
SLIDE_SAMPLE_TILE = 512
SLIDE_SAMPLE_PIXELS = 8 * 512 * 512


def sample_tiles(slide: Slide, mask: TissueMask, tile: int = SLIDE_SAMPLE_TILE,
                  max_pixels: int = SLIDE_SAMPLE_PIXELS) -> list[np.ndarray]:
    """Tiles for the normalisation statistics: ``tile``-px squares on tissue, spread evenly
    over it (deterministic). Four times as many candidates as needed are read; the tiles are
    spread evenly over the candidates that are mostly tissue (:func:`glass_pixels` < 50 %),
    since glass in the sample shifts the statistics (measured: pixel F1 0.83 against 0.98
    between a tile segmented with and without 128 px of glass around it), but not chosen
    by how much tissue they hold, which biases them towards dense regions (F1 0.90)."""
    h, w = slide.shape
    t = min(tile, h, w)
    n = max(1, max_pixels // (t * t))
    radius = int(math.ceil(t / 2 / mask.downsample))
    inner = ndi.binary_erosion(mask.mask, iterations=radius) if radius else mask.mask
    ys, xs = np.nonzero(inner if inner.any() else mask.mask)
    if ys.size == 0:
        return []
    picks = np.unique(np.round(np.linspace(0, ys.size - 1, min(4 * n, ys.size))).astype(int))
    candidates = []
    for i in picks:
        cy, cx = (ys[i] + 0.5) * mask.downsample, (xs[i] + 0.5) * mask.downsample
        y0 = int(min(max(0, cy - t // 2), h - t))
        x0 = int(min(max(0, cx - t // 2), w - t))
        pixels = slide.read(y0, y0 + t, x0, x0 + t)
        candidates.append((float(glass_pixels(pixels).mean()), pixels))
    full = [c for c in candidates if c[0] < 0.05]
    if len(full) < n:  # not enough: those with the least glass, in their order on the slide
        order = sorted(range(len(candidates)), key=lambda i: (candidates[i][0], i))[:n]
        return [candidates[i][1] for i in sorted(order)]
    keep = np.unique(np.round(np.linspace(0, len(full) - 1, n)).astype(int))
    return [full[i][1] for i in keep]



def estimate_statistics(slide: Slide, mask: TissueMask, model: SegmentationModel, device, *, per_piece: bool = True,
                        statistics_tiles: list[np.ndarray] | None = None
                        ) -> tuple[TissuePieces | None, list[tuple[object, Normalizer]]]:
    """(pieces, [(network, normaliser), ...]): entry 0 holds the slide-wide statistics (from
    tissue tiles spread over the whole slide, or ``statistics_tiles``), entry k those of
    piece k (``per_piece``; none with ``statistics_tiles``). The networks are adapted (AdaBN
    with the card's prior), not folded. A piece whose box is at most
    :data:`WHOLE_PIECE_PIXELS` is estimated on that whole box, like ``segment()`` on it; a
    larger one on tiles spread over its own tissue. Entry 0 is only estimated where some
    pixel uses it (fragments, glass nearest to them); otherwise it is piece 1's."""
    card = model.card

    def adapted(tiles: list[np.ndarray]) -> tuple[object, Normalizer]:
        sample = np.concatenate(tiles, axis=0) if tiles else slide.read(0, min(256, slide.shape[0]), 0,
                                                                          min(256, slide.shape[1]))
        normalizer = Normalizer.for_image(sample, card.normalization, card.in_channels)
        return (adapt_to_tiles(model, tiles, normalizer, device) if tiles else model.network), normalizer

    pieces = tissue_pieces(mask) if per_piece and statistics_tiles is None else None
    estimates: list = [None]
    if pieces is not None:
        for k in range(1, pieces.count + 1):
            (y0, y1, x0, x1), pixels = piece_box(slide, pieces, k)
            pieces.origins[k] = (y0, x0)
            whole = pixels is not None and (y1 - y0) * (x1 - x0) <= WHOLE_PIECE_PIXELS
            estimates.append(adapted([pixels] if whole else sample_tiles(slide, pieces.mask_of(k))))
        if not (pieces.owner == 0).any():
            estimates[0] = estimates[1]
    if estimates[0] is None:
        estimates[0] = adapted(sample_tiles(slide, mask) if statistics_tiles is None else list(statistics_tiles))
    return pieces, estimates
