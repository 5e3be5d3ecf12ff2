"""Probability maps to label images: thresholding and instance splitting.

``labels_from_probability`` is the one place where probabilities become labels; the CLI,
the widget's live threshold slider and evaluation all call it.

Instances: connected components of the thresholded foreground are split where the
network sees several objects. Seeds are the h-maxima of the distance transform of each
object's interior (h-maxima, so shallow necks do not over-split); with a contour channel
the interior excludes the predicted contours (foreground - contour > contour threshold),
which separates touching nuclei a binary mask cannot. Each component is split on its own crop
(as if alone), but the crops of many components are packed into one array (an atlas) so
that every step is one call over thousands of objects instead of one Python call per
object; the dynamics of the maxima (which maxima are h-maxima) come from one watershed and
a union-find over maxima. Memory is the output plus one atlas (at most ~1 Mpx: a component
whose box is larger is no object and is left whole), and components with a single seed are
left untouched.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = ["threshold_mask", "labels_from_probability", "split_instances", "remove_small"]


def threshold_mask(prob: np.ndarray, threshold: float = 0.5, *, fill_holes: bool = False,
                   keep_largest: bool = False) -> np.ndarray:
    """Boolean foreground: ``prob > threshold``, optionally with holes filled and only the
    largest connected component kept (skin lesions)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    mask = prob > threshold
    if keep_largest and mask.any():
        cc, n = ndi.label(mask)
        if n > 1:
            sizes = np.bincount(cc.ravel())
            sizes[0] = 0
            mask = cc == int(np.argmax(sizes))
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    return mask


_CHUNK_ROWS = 1024  # rows per chunk for whole-image passes (bounded temporaries)


def _chunks(n_rows: int):
    for r0 in range(0, n_rows, _CHUNK_ROWS):
        yield slice(r0, min(n_rows, r0 + _CHUNK_ROWS))


def _area_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """np.bincount(labels) without an int64 copy of the whole image."""
    counts = np.zeros(n + 1, np.int64)
    for rows in _chunks(labels.shape[0]):
        counts += np.bincount(labels[rows].ravel(), minlength=n + 1)[: n + 1]
    return counts


def _apply_lut(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """labels = lut[labels], in place, chunk by chunk."""
    for rows in _chunks(labels.shape[0]):
        labels[rows] = lut[labels[rows]]
    return labels


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` pixels and renumber 1..N (uint32, a new array)."""
    out = np.array(labels, dtype=np.uint32, copy=True)
    if out.size == 0:
        return out
    return _renumber(out, max(1, min_size))


def _renumber(labels: np.ndarray, min_size: int) -> np.ndarray:
    """In place: remove objects below ``min_size`` px and number the rest 1..N."""
    n = int(labels.max(initial=0))
    if n == 0:
        return labels
    sizes = _area_counts(labels, n)
    keep = sizes >= min_size
    keep[0] = False
    lut = np.zeros(n + 1, np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return _apply_lut(labels, lut)


#: zero pixels between two crops in an atlas (and around the atlas): the 4-pixel radius of the Gaussian (sigma 1,
#: truncated at 4 sigma), so no crop's smoothed distance reaches another's even when a crop has no margin of its
#: own (objects on the image's edge, or on a band's first row): then the split of an object does not depend on
#: where it is packed (with 2, objects on the edge could change the split of their neighbours in the atlas)
_GAP = 4
#: pixels per atlas: bounds its float64 maps to 4 MiB each whatever the image size; smaller atlases are
#: also faster (2048^2 H&E mosaic: 0.64 s with 4 Mpx atlases, 0.48 s with 1 Mpx, 0.47 s with 0.5 Mpx)
_ATLAS_PIXELS = 1 << 19
#: components whose box is larger than this are left whole (not split, holes kept): no object the split is made
#: for is that large (a 40x nucleus is ~20 px across, a cell a few hundred), but a black border, a pen mark or
#: a fold thresholded as one foreground region is, and splitting it cost temporaries in proportion to it
#: (a 4.5 Mpx black region of a 10,000^2 image: +1.1 GB and +33 s)
_LARGEST_SPLIT_BOX = 1 << 20


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
                 contour_threshold: float, h: float, fill_holes: bool, seedable: np.ndarray, next_id: int,
                 occupied: np.ndarray | None = None) -> int:
    """Split the objects ``boxes`` (id, crop) of ``labels`` in place, many at a time: their
    crops are packed into one array (an atlas), so every step (holes, distance transform,
    seeds, watershed) is one call for all of them; the steps that need only a few objects
    (dynamics of their maxima, the watershed) run on a smaller atlas of just those. Only
    objects marked in ``seedable`` (by id) get seeds. Returns the next free id."""
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
    if chosen:
        (f, d, o, w), sub_pos = _repack([smooth, dist, obj, owner], pos, shapes, chosen)
        sub_shapes = [shapes[i] for i in chosen]  # 4-connected seeds, as ndi.label(h_maxima(...)):
        seeds, _ = ndi.label(_dynamic_maxima(f, h, _tie_order(f.shape, sub_pos, sub_shapes)) & o)
        count, seed_owner = _per_object(seeds, w, n)
        multi = count >= 2
        multi[0] = False
        split_boxes = [k for k, i in enumerate(chosen) if multi[boxes[i][0]]]
        if split_boxes:
            # the first seed of an object (raster order of its crop) keeps the object's id, the others get new ones
            n_seeds = len(seed_owner) - 1
            ids = np.arange(1, n_seeds + 1)
            so = seed_owner[1:]
            order = np.lexsort((ids, so))
            so_sorted = so[order]
            extra = np.r_[False, so_sorted[1:] == so_sorted[:-1]] & multi[so_sorted]
            new_id = np.zeros(n_seeds + 1, np.int64)
            new_id[ids[order]] = so_sorted
            new_id[ids[order][extra]] = next_id - 1 + np.cumsum(extra)[extra]
            next_id += int(extra.sum())
            (d, o, seeds), fin_pos = _repack([d, o & multi[w], seeds], sub_pos, sub_shapes, split_boxes)
            order = _tie_order(d.shape, fin_pos, [sub_shapes[k] for k in split_boxes])
            split = watershed(np.where(seeds > 0, order, 0) - d, np.where(o, seeds, 0), mask=o)
            for k, (y, x) in zip(split_boxes, fin_pos):
                index, sl = boxes[chosen[k]]
                hh, ww = shapes[chosen[k]]
                mine = o[y:y + hh, x:x + ww]
                parts = split[y:y + hh, x:x + ww][mine]
                labels[sl][mine] = np.where(parts > 0, new_id[parts], index)  # (no seed reached: keeps the id)
    if holes is not None:
        for (index, sl), (y, x), (hh, ww) in zip(boxes, pos, shapes):
            if not multi[index]:
                filled = holes[y:y + hh, x:x + ww]
                if filled.any():
                    labels[sl][filled] = index
    return next_id


def _bounding_boxes(labels: np.ndarray, wanted: np.ndarray) -> list[tuple[int, tuple[slice, slice]]]:
    """(id, (rows, cols)) of the objects with ``wanted[id]``, in id order: ``ndi.find_objects`` for them, but
    find_objects builds a Python slice per label in one call that holds the GIL (0.3 s on the speckle of an
    untrained model: a frozen window). Here only the wanted objects are numbered, chunk by chunk of rows."""
    ids = np.flatnonzero(wanted)
    ids = ids[ids > 0]
    if ids.size == 0:
        return []
    m = int(ids.size)
    lut = np.zeros(len(wanted), np.uint32)
    lut[ids] = np.arange(1, m + 1, dtype=np.uint32)
    lo = np.full((m, 2), np.iinfo(np.int64).max, np.int64)
    hi = np.full((m, 2), -1, np.int64)
    for rows in _chunks(labels.shape[0]):
        found = [(k, sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
                 for k, sl in enumerate(ndi.find_objects(lut[labels[rows]], max_label=m)) if sl is not None]
        if found:
            f = np.array(found, np.int64)
            f[:, [1, 3]] += rows.start
            k = f[:, 0]
            lo[k] = np.minimum(lo[k], f[:, 1:3])
            hi[k] = np.maximum(hi[k], f[:, 3:5])
    return [(int(i), (slice(int(a), int(c)), slice(int(b), int(d))))
            for i, (a, b), (c, d) in zip(ids, lo.tolist(), hi.tolist()) if c >= 0]


def split_instances(
    mask: np.ndarray,
    contour: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    *,
    contour_threshold: float = 0.5,
    h: float = 2.0,
    min_size: int = 0,
    fill_holes: bool = False,
    occupied: np.ndarray | None = None,
) -> np.ndarray:
    """Split a boolean foreground into instances; uint32 labels 1..N (0 = background).

    Seeds are the h-maxima of the (Gaussian-smoothed) distance transform of each object's
    interior: with a contour map (and the foreground ``probability``), the interior is
    where ``probability - contour > contour_threshold``, so touching objects separated by a
    predicted contour get their own seeds; without one it is the whole object. An object
    with two or more seeds is split by a watershed of its distance transform.

    Connected components are labelled once; components big enough to hold two objects
    (>= 16 px and >= ``min_size``; without contours, seeds only from 30 px) are examined, each on
    its own crop (holes filled there when ``fill_holes``), but many crops at a time: they
    are packed into one array (an atlas of at most ~0.5 Mpx) and every step is one call over
    it. Memory is the output plus one atlas. Components whose box exceeds ~1 Mpx are no
    object (a black border, a fold) and are left whole. Objects smaller than ``min_size`` pixels are
    removed. ``occupied`` (boolean, optional) marks pixels outside ``mask`` that belong to
    objects found elsewhere (:mod:`napari_minenet.bands`): they are never filled as holes.
    """
    labels = np.zeros(mask.shape, np.uint32)
    n = int(ndi.label(mask, output=labels))
    del mask  # (a caller that passes a temporary mask gets its memory back here)
    if n == 0:
        return labels
    min_keep = max(1, int(min_size))
    min_area = max(min_keep, 2 * 8)
    sizes = _area_counts(labels, n)
    # without contours, an object needs 30 px for the distance transform alone to split it (its holes are
    # still filled from 16 px)
    seedable = np.ones(n + 1, bool) if contour is not None else sizes >= 30
    boxes, batch, batch_area = [], [], 0
    for index, sl in _bounding_boxes(labels, sizes >= min_area):  # smaller ones cannot hold two objects
        sl = tuple(slice(max(0, s.start - 1), min(dim, s.stop + 1)) for s, dim in zip(sl, labels.shape))
        a = (sl[0].stop - sl[0].start + _GAP) * (sl[1].stop - sl[1].start + _GAP)
        if a > _LARGEST_SPLIT_BOX:
            continue
        if batch and batch_area + a > _ATLAS_PIXELS:
            boxes.append(batch)
            batch, batch_area = [], 0
        batch.append((index, sl))
        batch_area += a
    if batch:
        boxes.append(batch)
    next_id = n + 1
    for batch in boxes:
        next_id = _split_atlas(labels, batch, contour, probability, contour_threshold, h, fill_holes, seedable,
                               next_id, occupied)
    return _renumber(labels, min_keep)


def labels_from_probability(
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    contour: np.ndarray | None = None,
    contour_threshold: float = 0.5,
    instances: bool = False,
    min_size: int = 0,
    fill_holes: bool = False,
    keep_largest: bool = False,
) -> np.ndarray:
    """uint32 labels from a foreground probability map (and an optional contour map).

    ``instances=False`` gives 0/1 labels; ``instances=True`` gives one id per object,
    numbered 1..N. Objects smaller than ``min_size`` pixels are removed.
    """
    if probability.ndim != 2:
        raise ValueError(f"probability must be 2-D (H, W), got shape {probability.shape}")
    if contour is not None and contour.shape != probability.shape:
        raise ValueError(f"contour {contour.shape} and probability {probability.shape} differ in shape")
    if instances:  # holes are filled object by object (bounded memory); the mask is freed once labelled
        return split_instances(threshold_mask(probability, threshold, keep_largest=keep_largest), contour,
                               probability if contour is not None else None, contour_threshold=contour_threshold,
                               min_size=min_size, fill_holes=fill_holes)
    mask = threshold_mask(probability, threshold, fill_holes=fill_holes, keep_largest=keep_largest)
    if min_size > 0:
        cc = np.zeros(mask.shape, np.uint32)
        ndi.label(mask, output=cc)
        mask = _renumber(cc, min_size) > 0
    return mask.astype(np.uint32)
