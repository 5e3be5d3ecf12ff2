"""The atlas behind :func:`napari_minenet.postprocess.split_instances`: the crops of many
objects packed into one array, so that every step of the instance split (holes, distance
transform, seeds, the dynamics of their maxima, the watershed) is one call over thousands of
objects instead of one Python call per object.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: zero pixels between two crops in an atlas (and around the atlas): the 4-pixel radius of the Gaussian (sigma 1,
#: truncated at 4 sigma), so no crop's smoothed distance reaches another's even when a crop has no margin of its
#: own (objects on the image's edge, or on a band's first row): then the split of an object does not depend on
#: where it is packed (with 2, objects on the edge could change the split of their neighbours in the atlas)
_GAP = 4
#: pixels per atlas: bounds its float64 maps to 4 MiB each whatever the image size; smaller atlases are
#: also faster (2048^2 H&E mosaic: 0.64 s with 4 Mpx atlases, 0.48 s with 1 Mpx, 0.47 s with 0.5 Mpx)
_ATLAS_PIXELS = 1 << 19


def _pack(shapes: list[tuple[int, int]], width: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Shelf packing: (y, x) of every (h, w) box in one array of ``width`` columns, with
    :data:`_GAP` zero pixels around each box; returns (positions, atlas shape)."""
    order = sorted(range(len(shapes)), key=lambda i: -shapes[i][0])
    pos: list[tuple[int, int]] = [(0, 0)] * len(shapes)
    x = y = _GAP
    shelf = 0
    for i in order:
        h, w = shapes[i]
        if x + w + _GAP > width and x > _GAP:
            y, x, shelf = y + shelf + _GAP, _GAP, 0
        pos[i] = (y, x)
        x += w + _GAP
        shelf = max(shelf, h)
    return pos, (y + shelf + _GAP, width)


def _atlas(shapes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Positions and shape of a roughly square atlas holding boxes of these shapes."""
    area = sum((hh + _GAP) * (ww + _GAP) for hh, ww in shapes)
    width = max(max(ww for _, ww in shapes) + 2 * _GAP, int(math.sqrt(area) * 1.1) + 2 * _GAP)
    return _pack(shapes, width)


def _repack(arrays: list[np.ndarray], pos: list[tuple[int, int]], shapes: list[tuple[int, int]],
            keep: list[int]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """The boxes ``keep`` (indices into ``pos`` / ``shapes``) of every array, packed into a
    smaller atlas (most of scikit-image's watershed costs the whole array, not the mask)."""
    sub_shapes = [shapes[i] for i in keep]
    sub_pos, shape = _atlas(sub_shapes)
    out = [np.zeros(shape, a.dtype) for a in arrays]
    for i, (y, x) in zip(keep, sub_pos):
        (y0, x0), (hh, ww) = pos[i], shapes[i]
        for src, dst in zip(arrays, out):
            dst[y:y + hh, x:x + ww] = src[y0:y0 + hh, x0:x0 + ww]
    return out, sub_pos


def _dynamic_maxima(f: np.ndarray, h: float, ties: np.ndarray | None = None) -> np.ndarray:
    """``skimage.morphology.h_maxima(f, h)`` of every object of ``f`` on its own (objects are
    the parts of ``f > 0``, kept apart by zeros), all at once.

    A regional maximum of height p is an h-maximum when no higher maximum of its object can
    be reached along a path that stays above p - h (its dynamic is >= h); a maximum below h
    never is one (h_maxima of one object's crop, whose minimum is 0). Dynamics come from
    the basins of a watershed flooded from every regional maximum and the highest pass
    between adjacent basins, merged in decreasing pass order (union-find over maxima, not
    pixels). ``ties`` orders the markers' ties (see :func:`_tie_order`).
    """
    from skimage.segmentation import watershed

    positive = f > 0
    plateaus, n = ndi.label((f == ndi.maximum_filter(f, 3)) & positive, structure=np.ones((3, 3), bool))
    flat = plateaus.ravel()
    nz = np.flatnonzero(flat)
    peak = np.zeros(n + 1)
    peak[flat[nz]] = f.ravel()[nz]
    basins = watershed(-f if ties is None else np.where(plateaus > 0, ties, 0) - f, plateaus, mask=positive,
                       connectivity=2)
    a_parts, b_parts, s_parts = [], [], []
    rows, cols = f.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # every 8-neighbour pair once
        src = (slice(0, rows - dy), slice(max(0, -dx), cols - max(0, dx)))
        dst = (slice(dy, rows), slice(max(0, dx), cols + min(0, dx)))
        b1, b2 = basins[src], basins[dst]
        m = (b1 != b2) & (b1 > 0) & (b2 > 0)
        if m.any():
            a_parts.append(b1[m])
            b_parts.append(b2[m])
            s_parts.append(np.minimum(f[src][m], f[dst][m]))
    alive = (peak >= h).tolist()
    alive[0] = False
    if a_parts:
        a = np.concatenate(a_parts).astype(np.int64)
        b = np.concatenate(b_parts).astype(np.int64)
        s = np.concatenate(s_parts)
        key = np.minimum(a, b) * (n + 1) + np.maximum(a, b)
        order = np.lexsort((-s, key))  # per pair of basins, its highest pass first
        key, s = key[order], s[order]
        first = np.r_[True, key[1:] != key[:-1]]
        key, s = key[first], s[first]
        order = np.argsort(-s, kind="stable")
        ea, eb, es = (key // (n + 1))[order].tolist(), (key % (n + 1))[order].tolist(), s[order].tolist()
        parent = list(range(n + 1))
        height = peak.tolist()
        pending = [[i] for i in range(n + 1)]  # maxima at the top of each component, fate undecided

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for u, v, level in zip(ea, eb, es):
            ru, rv = find(u), find(v)
            if ru == rv:
                continue
            if height[ru] < height[rv]:
                ru, rv = rv, ru
            if height[rv] < height[ru]:  # rv's maxima meet a higher one here: their dynamic is now known
                if height[rv] - level < h:
                    for m in pending[rv]:
                        alive[m] = False
            else:  # equal heights: both stay candidates (as in h_maxima)
                pending[ru].extend(pending[rv])
            pending[rv] = []
            parent[rv] = ru
    return np.asarray(alive, bool)[plateaus]


def _per_object(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """How many labelled parts of ``values`` (a label image) each object of ``owner`` holds,
    and which object each part belongs to: (counts by object id, object id by part)."""
    flat = values.ravel()
    nz = np.flatnonzero(flat)
    part_owner = np.zeros(int(flat.max(initial=0)) + 1, np.int64)
    part_owner[flat[nz]] = owner.ravel()[nz]
    return np.bincount(part_owner[1:], minlength=n + 1), part_owner


#: the tie-breaking ramp's step: far below the smallest difference of two distances (~0.02 at 600 px)
_TIE_STEP = 1e-9


def _tie_order(shape: tuple[int, int], pos: list[tuple[int, int]], shapes: list[tuple[int, int]]) -> np.ndarray:
    """A tiny ramp that rises in raster order within every crop of an atlas, added to a
    watershed's *marker* pixels: scikit-image queues all markers at the same age, so markers
    of equal value leave its heap in an order that depends on everything else in the array,
    and the split of an object (a contour line at equal distance from two seeds) changed
    with where the object was packed and what was packed with it. With the ramp the markers
    leave in raster order within their crop; the flooding itself keeps scikit-image's
    first-in-first-out ties (a ramp on every pixel made the splits lopsided: MoNuSeg
    validation AJI -0.007)."""
    ramp = np.zeros(shape)
    for (y, x), (hh, ww) in zip(pos, shapes):
        ramp[y:y + hh, x:x + ww] = np.arange(hh * ww, dtype=np.float64).reshape(hh, ww) * _TIE_STEP
    return ramp


def _fill_holes(obj: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(obj)`` by one labelling of the background instead of dilations iterated from
    the border: identical, 5x faster on atlases (2048^2 H&E: 0.067 -> 0.013 s); int32 labels: not for images."""
    background, n = ndi.label(~obj)
    outside = np.zeros(n + 1, bool)
    outside[np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])] = True
    outside[0] = False
    return ~outside[background]


def _split_atlas(labels: np.ndarray, boxes: list[tuple[int, tuple[slice, slice]]], contour, probability,
                 contour_threshold: float, h: float, fill_holes: bool, seedable: np.ndarray,
                 occupied: np.ndarray | None = None) -> AtlasSplit:
    """How to split the objects ``boxes`` (id, crop) of ``labels``, many at a time: their
    crops are packed into one array (an atlas), so every step (holes, distance transform,
    seeds, watershed) is one call for all of them; the steps that need only a few objects
    (dynamics of their maxima, the watershed) run on a smaller atlas of just those. Only
    objects marked in ``seedable`` (by id) get seeds. ``labels`` is only read (the work releases
    the GIL, so atlases can be split in threads); :meth:`AtlasSplit.write` writes the result."""
    from skimage.segmentation import watershed

    n = len(seedable) - 1
    shapes = [(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) for _, sl in boxes]
    pos, shape = _atlas(shapes)
    crop = np.zeros(shape, labels.dtype)
    owner = np.zeros(shape, np.uint32)
    inner = np.zeros(shape, bool) if contour is not None else None
    for (index, sl), (y, x), (hh, ww) in zip(boxes, pos, shapes):
        at = (slice(y, y + hh), slice(x, x + ww))
        crop[at] = labels[sl] if occupied is None else np.where(occupied[sl], np.iinfo(crop.dtype).max, labels[sl])
        owner[at] = index  # (an occupied pixel is another object's: never a hole)
        if inner is not None:
            inner[at] = (probability[sl] - contour[sl]) > contour_threshold
    obj = (crop == owner) & (owner > 0)
    holes = None
    if fill_holes:  # per object: only its own enclosed background (the gaps keep objects apart)
        holes = _fill_holes(obj) & (crop == 0)
        obj |= holes
    del crop
    region = obj & inner if inner is not None else obj
    del inner
    region &= seedable[owner]
    dist = ndi.distance_transform_edt(region)
    smooth = ndi.gaussian_filter(dist, 1.0)
    smooth *= region
    del region
    # an object with at most one (4-connected) plateau of regional maxima >= h has at most one seed:
    # only the others need the dynamics of their maxima
    high, _ = ndi.label((smooth == ndi.maximum_filter(smooth, 3)) & (smooth >= h))
    several = _per_object(high, owner, n)[0] >= 2
    del high
    several[0] = False
    chosen = [i for i, (index, _) in enumerate(boxes) if several[index]]
    multi = np.zeros(n + 1, bool)
    result = AtlasSplit()
    if chosen:
        (f, d, o, w), sub_pos = _repack([smooth, dist, obj, owner], pos, shapes, chosen)
        sub_shapes = [shapes[i] for i in chosen]  # 4-connected seeds, as ndi.label(h_maxima(...)):
        seeds, _ = ndi.label(_dynamic_maxima(f, h, _tie_order(f.shape, sub_pos, sub_shapes)) & o)
        count, seed_owner = _per_object(seeds, w, n)
        multi = count >= 2
        multi[0] = False
        split_boxes = [k for k, i in enumerate(chosen) if multi[boxes[i][0]]]
        if split_boxes:
            # the first seed of an object (raster order of its crop) keeps the object's id, the others get new
            # ones, numbered in this order from the next free id when written
            n_seeds = len(seed_owner) - 1
            ids = np.arange(1, n_seeds + 1)
            so = seed_owner[1:]
            order = np.lexsort((ids, so))
            so_sorted = so[order]
            extra = np.r_[False, so_sorted[1:] == so_sorted[:-1]] & multi[so_sorted]
            result.new_id = np.zeros(n_seeds + 1, np.int64)
            result.new_id[ids[order]] = so_sorted
            result.extra_seeds = ids[order][extra]
            (d, o, seeds), fin_pos = _repack([d, o & multi[w], seeds], sub_pos, sub_shapes, split_boxes)
            order = _tie_order(d.shape, fin_pos, [sub_shapes[k] for k in split_boxes])
            split = watershed(np.where(seeds > 0, order, 0) - d, np.where(o, seeds, 0), mask=o)
            for k, (y, x) in zip(split_boxes, fin_pos):
                index, sl = boxes[chosen[k]]
                hh, ww = shapes[chosen[k]]
                mine = o[y:y + hh, x:x + ww]
                result.parts.append((index, sl, mine, split[y:y + hh, x:x + ww][mine]))
    if holes is not None:
        for (index, sl), (y, x), (hh, ww) in zip(boxes, pos, shapes):
            if not multi[index]:
                filled = holes[y:y + hh, x:x + ww]
                if filled.any():
                    result.holes.append((index, sl, filled))
    return result


class AtlasSplit:
    """What :func:`_split_atlas` found: the split objects' new parts and the filled holes,
    to be written into the labels in the atlases' order (so new ids do not depend on which
    atlas finished first)."""

    def __init__(self) -> None:
        self.new_id: np.ndarray | None = None  # seed -> id (the object's own; new ones set when written)
        self.extra_seeds = np.zeros(0, np.int64)  # seeds that get new ids, in the order they get them
        self.parts: list[tuple[int, tuple[slice, slice], np.ndarray, np.ndarray]] = []
        self.holes: list[tuple[int, tuple[slice, slice], np.ndarray]] = []

    def write(self, labels: np.ndarray, next_id: int) -> int:
        """Write into ``labels``; new ids from ``next_id`` on. Returns the next free id."""
        if self.parts:
            new_id = self.new_id
            new_id[self.extra_seeds] = next_id + np.arange(len(self.extra_seeds))
            next_id += len(self.extra_seeds)
            for index, sl, mine, parts in self.parts:
                labels[sl][mine] = np.where(parts > 0, new_id[parts], index)  # (no seed reached: keeps the id)
        for index, sl, filled in self.holes:
            labels[sl][filled] = index
        return next_id
