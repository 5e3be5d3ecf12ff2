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
a union-find over maxima. Atlases are split in threads (``instance_atlas``). Memory is the
output plus one atlas per thread (a component whose box is over ~1 Mpx is no object and is
left whole), and components with a single seed are left untouched.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .instance_atlas import _ATLAS_PIXELS, _GAP, _split_atlas

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


#: components whose box is larger than this are left whole (not split, holes kept): no object the split is made
#: for is that large (a 40x nucleus is ~20 px across, a cell a few hundred), but a black border, a pen mark or
#: a fold thresholded as one foreground region is, and splitting it cost temporaries in proportion to it
#: (a 4.5 Mpx black region of a 10,000^2 image: +1.1 GB and +33 s)
_LARGEST_SPLIT_BOX = 1 << 20


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
    workers: int | None = None,
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
    it. Memory is the output plus one atlas per worker. Components whose box exceeds ~1 Mpx are no
    object (a black border, a fold) and are left whole. Objects smaller than ``min_size`` pixels are
    removed. ``occupied`` (boolean, optional) marks pixels outside ``mask`` that belong to
    objects found elsewhere (:mod:`napari_minenet.bands`): they are never filled as holes.
    Atlases are split ``workers`` at a time in threads (default :func:`split_workers`), one
    atlas per thread; the labels are those of one worker except where an object lies in a hole
    of another object of the same wave of atlases (which of the two fills that hole then
    depends on the wave).
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
    next_id, workers = n + 1, split_workers() if workers is None else max(1, int(workers))

    def split(batch):
        return _split_atlas(labels, batch, contour, probability, contour_threshold, h, fill_holes, seedable, occupied)

    if workers == 1 or len(boxes) <= 1:
        for batch in boxes:
            next_id = split(batch).write(labels, next_id)
    else:  # waves of atlases in threads, each wave read from the same labels, written in order
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(workers, len(boxes)), thread_name_prefix="minenet-split") as pool:
            for start in range(0, len(boxes), workers):
                for result in list(pool.map(split, boxes[start:start + workers])):
                    next_id = result.write(labels, next_id)
    return _renumber(labels, min_keep)


def split_workers() -> int:
    """Threads for the instance split: the CPU cores this process may use, at most 4 (each
    holds one ~0.5 Mpx atlas; scipy's and scikit-image's steps release the GIL)."""
    from .devices import usable_cores  # (torch is loaded by then wherever maps come from a network)

    return max(1, min(4, usable_cores()))


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
