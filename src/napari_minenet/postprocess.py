"""Probability maps to label images: thresholding and instance splitting.

``labels_from_probability`` is the one place where probabilities become labels; the CLI,
the widget's live threshold slider and evaluation all call it.

Instances: connected components of the thresholded foreground are split where the
network sees several objects. With a contour channel, seeds are the foreground minus
predicted contours; without it, seeds are the maxima of the distance transform (h-maxima,
so shallow necks do not over-split). Each component is split on its own crop, so memory
and time scale with the objects, not the image, and components with a single seed are
left untouched.
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


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` pixels and renumber 1..N (uint32)."""
    if labels.size == 0:
        return labels.astype(np.uint32)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(1, min_size)
    keep[0] = False
    lut = np.zeros(sizes.size, np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[labels]


def _seeds_from_distance(mask: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    from skimage.morphology import h_maxima

    dist = ndi.distance_transform_edt(mask)
    dist = ndi.gaussian_filter(dist, 1.0) * mask
    peaks = h_maxima(dist, h) & mask
    seeds, _ = ndi.label(peaks)
    return seeds, -dist


def split_instances(
    mask: np.ndarray,
    contour: np.ndarray | None = None,
    *,
    contour_threshold: float = 0.5,
    h: float = 2.0,
) -> np.ndarray:
    """Split a boolean foreground into instances; returns int32/uint32 labels (0 = background)."""
    from skimage.segmentation import watershed

    cc, n = ndi.label(mask, output=np.int32 if mask.size < 2**31 else np.int64)
    if n == 0:
        return cc
    slices = ndi.find_objects(cc)
    out = np.zeros(mask.shape, np.uint32)
    next_id = 1
    pad = 1
    for index, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - pad), min(dim, s.stop + pad)) for s, dim in zip(sl, mask.shape))
        obj = cc[sl] == index
        if contour is not None:
            core = obj & (contour[sl] < contour_threshold)
            seeds, ns = ndi.label(core)
            if ns > 1:
                # drop seed fragments much smaller than the largest one (contour noise)
                sizes = np.bincount(seeds.ravel())
                sizes[0] = 0
                small = sizes < max(4, 0.05 * sizes.max())
                small[0] = False
                if small.any():
                    seeds[small[seeds]] = 0
                    seeds, ns = ndi.label(seeds > 0)
            elevation = contour[sl]
        else:
            if obj.sum() < 30:
                ns = 1
            else:
                seeds, elevation = _seeds_from_distance(obj, h)
                ns = int(seeds.max())
        region = out[sl]
        if ns <= 1:
            region[obj] = next_id
            next_id += 1
            continue
        split = watershed(elevation, seeds, mask=obj)
        # pixels of the object not reached by any seed stay with their nearest seed
        if (obj & (split == 0)).any():
            _, (iy, ix) = ndi.distance_transform_edt(split == 0, return_indices=True)
            split = np.where(obj, split[iy, ix], 0)
        region[obj] = split[obj].astype(np.uint32) + (next_id - 1)
        next_id += int(split.max())
    return out


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
    mask = threshold_mask(probability, threshold, fill_holes=fill_holes, keep_largest=keep_largest)
    if instances:
        labels = split_instances(mask, contour, contour_threshold=contour_threshold)
        return remove_small(labels, min_size) if min_size > 0 else labels.astype(np.uint32, copy=False)
    if min_size > 0:
        cc, _ = ndi.label(mask)
        mask = remove_small(cc, min_size) > 0
    return mask.astype(np.uint32)
