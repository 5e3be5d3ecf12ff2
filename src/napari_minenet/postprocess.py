"""Probability maps to label images: thresholding and instance splitting.

``labels_from_probability`` is the one place where probabilities become labels; the CLI,
the widget's live threshold slider and evaluation all call it.

Instances: connected components of the thresholded foreground are split where the
network sees several objects. Seeds are the h-maxima of the distance transform of each
object's interior (h-maxima, so shallow necks do not over-split); with a contour channel
the interior excludes the predicted contours (foreground - contour > contour threshold),
which separates touching nuclei a binary mask cannot. Each component is split on its own crop, in place in
the output array, so memory is the output plus one crop, time scales with the objects,
and components with a single seed are left untouched.
"""

from __future__ import annotations

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


def _seeds_from_distance(region: np.ndarray, obj: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeds at the h-maxima of the (smoothed) distance transform of ``region``, inside
    ``obj``; returns (seeds, elevation for the watershed)."""
    from skimage.morphology import h_maxima

    dist = ndi.distance_transform_edt(region)
    smooth = ndi.gaussian_filter(dist, 1.0) * region
    seeds, _ = ndi.label(h_maxima(smooth, h) & obj)
    return seeds, -dist


def split_instances(
    mask: np.ndarray,
    contour: np.ndarray | None = None,
    probability: np.ndarray | None = None,
    *,
    contour_threshold: float = 0.5,
    h: float = 2.0,
    min_size: int = 0,
    fill_holes: bool = False,
) -> np.ndarray:
    """Split a boolean foreground into instances; uint32 labels 1..N (0 = background).

    Seeds are the h-maxima of the distance transform of the object's interior: with a
    contour map (and the foreground ``probability``), the interior is where
    ``probability - contour > contour_threshold``, so touching objects separated by a
    predicted contour get their own seeds; without one it is the whole object.

    Works in place in the output array: connected components are labelled once, then only
    components big enough to hold two objects are examined on their own crop (holes
    filled there when ``fill_holes``), so memory stays at the output plus one crop.
    Objects smaller than ``min_size`` pixels are removed.
    """
    from skimage.segmentation import watershed

    labels = np.zeros(mask.shape, np.uint32)
    n = int(ndi.label(mask, output=labels))
    if n == 0:
        return labels
    min_keep = max(1, int(min_size))
    sizes = _area_counts(labels, n)
    next_id = n + 1
    for index, sl in enumerate(ndi.find_objects(labels), start=1):
        area = int(sizes[index])
        if sl is None or area < max(min_keep, 2 * 8):
            continue  # too small to hold two objects; tiny ones are removed at the end
        sl = tuple(slice(max(0, s.start - 1), min(dim, s.stop + 1)) for s, dim in zip(sl, mask.shape))
        region = labels[sl]
        obj = region == index
        if fill_holes:
            holes = ndi.binary_fill_holes(obj) & (region == 0)
            if holes.any():
                region[holes] = index
                obj |= holes
        if contour is not None:
            interior = obj & ((probability[sl] - contour[sl]) > contour_threshold)
            seeds, elevation = _seeds_from_distance(interior, obj, h)
        elif area >= 30:
            seeds, elevation = _seeds_from_distance(obj, obj, h)
        else:
            continue
        ns = int(seeds.max())
        if ns <= 1:
            continue
        split = watershed(elevation, seeds, mask=obj)
        if (obj & (split == 0)).any():  # pixels no seed reached go to the nearest seed
            _, (iy, ix) = ndi.distance_transform_edt(split == 0, return_indices=True)
            split = np.where(obj, split[iy, ix], 0)
        parts = split[obj].astype(np.uint32)
        region[obj] = np.where(parts == 1, index, parts - 2 + next_id)  # the first part keeps the id
        next_id += ns - 1
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
    if instances:  # holes are filled object by object (bounded memory)
        mask = threshold_mask(probability, threshold, keep_largest=keep_largest)
        return split_instances(mask, contour, probability if contour is not None else None,
                               contour_threshold=contour_threshold, min_size=min_size, fill_holes=fill_holes)
    mask = threshold_mask(probability, threshold, fill_holes=fill_holes, keep_largest=keep_largest)
    if min_size > 0:
        cc = np.zeros(mask.shape, np.uint32)
        ndi.label(mask, output=cc)
        mask = _renumber(cc, min_size) > 0
    return mask.astype(np.uint32)
