"""Segmenting at the model's scale: resampling plans and the automatic size estimate.

**Pixel size known.** A model card may record the pixel size it was trained at
(``pixel_size_um``). An image with a known pixel size is resampled by
``image pixel size / model pixel size`` before the network runs, post-processed on that
grid (so the minimum size, the split markers and the contour width mean what they meant
in training) and the labels are mapped back to the image's grid (nearest neighbour); the
probabilities are resized back bilinearly.

**Pixel size unknown ("auto").** In the spirit of Cellpose's size model, a first pass
measures how large the objects are and the image is rescaled when they are clearly off
the training size. The measure is the *mean object width*: 6 x the mean distance to the
background over the pass's foreground, which is the diameter of a round object and does
not depend on how touching objects were split (the network over-splits nuclei that are
too large: on a 2x enlarged image the median diameter of the *instances* it finds was
only 0.9-1.4x larger, ~1.2x on average). Rule:

* ``width < WIDTH_LOW x reference``: objects too small, enlarge the image 2x;
* ``width > WIDTH_HIGH x reference``: objects too large, shrink it 2x;
* otherwise keep the scale. After a rescale the width is measured again on the new pass
  (at most ``MAX_STEPS`` rescales, so the scale stays within 1/4 ... 4).
* An enlargement stands only if the network is clearly surer of itself on the enlarged
  pass: its *uncertain share* (pixels with probability 0.2-0.8 per foreground pixel) must
  fall below ``CERTAINTY_GAIN`` (0.8) x the previous pass's, else the previous scale is kept.
  Width alone cannot tell small nuclei at the model's magnification from ordinary nuclei
  at half of it: breast H&E at 40x (TNBC) measures 0.61-0.95 x the reference, like MoNuSeg
  at 20x (0.56-0.67), but enlarging it lowered AJI on all 50 TNBC tiles. Enlarged MoNuSeg
  20x images lower the uncertain share to 0.59-0.78 of the first pass; TNBC tiles mostly
  stay above 0.8 (docs/results.md).
* When the first pass's width is in range, a pass at half the size (a quarter of the
  pixels) is run too, and kept when its uncertain share is below the first pass's
  (``SHRINK_GAIN`` = 1): on an image enlarged 2x (80x) the network splits the large nuclei
  into pieces of about its training size, so the width stays in range, but it is not surer
  of them than at half the size (ratios 0.69-0.97 on 24 MoNuSeg training images; 1.05-1.93
  at native size and at 20x, where shrinking costs AJI 0.1-0.5).

The reference is the card's ``object_width_px`` (the same statistic on the training
labels; nuclei: 27.7 px), else its ``object_diameter_px``. Steps are factors of 2
because magnifications come in factors of 2 (10x, 20x, 40x) and a size estimate cannot
do better: at one magnification, MoNuSeg's median nucleus diameter ranges from 11 to 33 px
between organs, and the network's response to scale is compressed (a 2x enlarged image
measured ~1.25x wider), so the estimate tells 20x from 40x, not 0.7x from 1x. The
thresholds (0.74, 1.14) sit halfway (geometrically) between the widths measured on six
MoNuSeg *training* images at 0.5x, 1x and 2x (docs/results.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = ["WIDTH_LOW", "WIDTH_HIGH", "CERTAINTY_GAIN", "SHRINK_GAIN", "MAX_STEPS", "uncertain_share", "SAMPLE_SIDE",
           "measure_pass",
           "SizeEstimate", "object_width", "reference_width", "size_step", "plan_scale", "post_processes_at_model_scale", "labels_to_shape",
           "probabilities_to_shape", "estimate_and_segment", "unresampled_slide_note"]

WIDTH_LOW = 0.74
WIDTH_HIGH = 1.14
#: an enlargement is kept only when the network is clearly more certain on the enlarged pass:
#: its uncertain share (pixels with probability 0.2-0.8 per foreground pixel) must drop
#: below this fraction of the previous pass's
CERTAINTY_GAIN = 0.8
MAX_STEPS = 2
#: when the width keeps the scale, a pass at half the size is run too and kept when its uncertain share is
#: below this multiple of the first pass's (the network is at least as sure at half the size): 0.69-0.97 on 24
#: MoNuSeg training images enlarged 2x (where shrinking restores the native scale), 1.25-1.93 on the same
#: images at native size and 1.13-1.93 at half size; 1.05 on one validation image at half size
SHRINK_GAIN = 1.0
#: the first pass runs on the whole image up to this side, else on a central crop of it
SAMPLE_SIDE = 2048
#: fewer foreground pixels than this: no estimate (the scale is kept)
MIN_FOREGROUND_PIXELS = 400
#: the probability level whose foreground the width (and the uncertain share) is measured on: fixed, not the
#: card's threshold, because WIDTH_LOW / WIDTH_HIGH were calibrated at 0.5 and a higher threshold makes the
#: predicted nuclei thinner (with 0.55 one MoNuSeg validation image measured 20 px at native size, was enlarged
#: and lost 0.09 AJI)
SIZE_LEVEL = 0.5


def object_width(mask: np.ndarray) -> float | None:
    """Mean object width in pixels: 6 x the mean distance to the background over the
    foreground (the diameter of a disc); None when there is too little foreground."""
    mask = np.asarray(mask, bool)
    if int(mask.sum()) < MIN_FOREGROUND_PIXELS:
        return None
    dist = ndi.distance_transform_edt(np.pad(mask, 1, constant_values=False))[1:-1, 1:-1]
    return float(6.0 * dist[mask].mean())


def reference_width(card) -> float | None:
    return getattr(card, "object_width_px", None) or getattr(card, "object_diameter_px", None)


def size_step(width: float | None, reference: float | None) -> int:
    """+1: enlarge 2x (objects too small); -1: shrink 2x; 0: keep."""
    if not width or not reference:
        return 0
    ratio = width / reference
    return 1 if ratio < WIDTH_LOW else -1 if ratio > WIDTH_HIGH else 0


def post_processes_at_model_scale(card) -> bool:
    """Whether a resampled image is post-processed on the model's grid: models whose
    pixel settings belong to a physical scale (a pixel size or a typical object size)."""
    return card.pixel_size_um is not None or reference_width(card) is not None


def plan_scale(card, pixel_size, scale: float | None) -> tuple[float | None, float | None, bool]:
    """(resample factor or None, the image's pixel size in um or None, whether to estimate
    the size automatically) for ``segment(pixel_size=..., scale=...)``.

    ``scale`` wins when given. A number is the image's pixel size: the image is resampled to
    the card's pixel size (when the card has one). ``"auto"`` estimates the size when the
    card has a typical object size. ``None``: as before (no resampling).
    """
    from .pixel_size import PIXEL_SIZE_RANGE, checked_pixel_size

    auto = isinstance(pixel_size, str)
    if auto and pixel_size.strip().lower() != "auto":
        raise ValueError(f"pixel size must be a number of micrometres per pixel or 'auto', not {pixel_size!r}")
    size = None
    if pixel_size is not None and not auto:
        size = checked_pixel_size(pixel_size)
        if size is None or isinstance(pixel_size, bool):
            lo, hi = PIXEL_SIZE_RANGE
            raise ValueError(f"pixel size must be from {lo:g} to {hi:g} um per pixel, not {pixel_size!r}")
    if scale is not None:
        scale = float(scale)
        if not (math.isfinite(scale) and 1 / 64 <= scale <= 64):
            raise ValueError(f"scale must be a number from 1/64 to 64, not {scale!r}")
        return scale, size, False
    if size is not None and card.pixel_size_um:
        return size / card.pixel_size_um, size, False
    return None, size, bool(auto and reference_width(card) is not None)


def labels_to_shape(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (ids kept; pixel centres aligned)."""
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.intp), w - 1)
    return np.ascontiguousarray(labels[rows[:, None], cols[None, :]])


def probabilities_to_shape(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, H, W) probability maps; the dtype is kept (one channel at a
    time, so a float16 map of a large image is never whole in float32 twice)."""
    if probs.shape[1:] == tuple(shape):
        return probs
    import torch

    out = np.empty((probs.shape[0], *shape), probs.dtype)
    for c in range(probs.shape[0]):
        t = torch.from_numpy(np.ascontiguousarray(probs[c], dtype=np.float32))[None, None]
        out[c] = torch.nn.functional.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0]
    return out


@dataclass
class SizeEstimate:
    """What the automatic size estimate measured and chose."""

    scale: float = 1.0
    reference: float | None = None
    widths: list[tuple[float, float | None]] = field(default_factory=list)  # (scale tried, width found)
    #: an enlargement was tried and declined (the network was not surer at the larger scale)
    declined: bool = False
    #: the width was in range but the network was as sure at half the size: shrunk
    shrunk: bool = False

    def describe(self) -> str:
        if not self.widths or self.widths[0][1] is None:
            return "size: too few objects to estimate, kept as is"
        width = self.widths[0][1]
        if self.scale == 1.0:
            why = "; enlarging did not make the model surer" if self.declined else ""
            return f"size: objects {width:.0f} px wide (model {self.reference:.0f}), kept as is{why}"
        why = " (the model was as sure at half the size)" if self.shrunk else ""
        return f"size: objects {width:.0f} px wide (model {self.reference:.0f}), resampled x{self.scale:g}{why}"


def _foreground_on_model_grid(result) -> np.ndarray:
    """The pass's foreground (probability above :data:`SIZE_LEVEL`) on the grid the network saw."""
    probability = result.work[0] if getattr(result, "work", None) is not None else result.probability
    return np.asarray(probability) > SIZE_LEVEL


def uncertain_share(result) -> float:
    """Pixels the pass is unsure about (probability 0.2-0.8) per foreground pixel, on the
    grid the network saw: lower when the objects are at a size the network knows."""
    probability = np.asarray(result.work[0] if getattr(result, "work", None) is not None else result.probability)
    foreground = int((probability > SIZE_LEVEL).sum())
    return float(((probability > 0.2) & (probability < 0.8)).sum()) / max(1, foreground)


def _sample(image: np.ndarray) -> tuple[np.ndarray, bool]:
    h, w = image.shape[:2]
    if max(h, w) <= SAMPLE_SIDE:
        return image, True
    y0, x0 = max(0, (h - SAMPLE_SIDE) // 2), max(0, (w - SAMPLE_SIDE) // 2)
    return image[y0 : y0 + SAMPLE_SIDE, x0 : x0 + SAMPLE_SIDE], False


def measure_pass(result) -> tuple[float | None, float]:
    """(mean object width on the grid the network saw, uncertain share) of one pass."""
    return object_width(_foreground_on_model_grid(result)), uncertain_share(result)


def estimate_and_segment(image: np.ndarray, card, run: Callable[[np.ndarray, float], object],
                         measure: Callable[[object], tuple[float | None, float]] = measure_pass):
    """Segment ``image`` at the scale the automatic size estimate chooses.

    ``run(image, scale)`` segments (``segment`` with that ``scale``) and returns a result
    with ``labels``. Returns (result on the whole image, :class:`SizeEstimate`). The first
    pass uses the whole image when it is at most ``SAMPLE_SIDE`` px a side (and is reused
    when no rescale is needed), else a central crop. ``measure`` is :func:`measure_pass`
    (``benchmarks/auto_size_calibration.py`` replays the rule on recorded passes with it).
    """
    sample, whole = _sample(image)
    estimate = SizeEstimate(reference=reference_width(card))
    scale, previous, kept_first = 1.0, None, False
    for _ in range(MAX_STEPS + 1):
        result = run(sample, scale)
        width, uncertain = measure(result)
        if previous is not None and scale > previous[0] and uncertain > CERTAINTY_GAIN * previous[2]:
            # enlarged, but the network is not clearly surer of itself: small objects at the
            # model's own magnification (breast H&E at 40x measures like MoNuSeg at 20x, and
            # enlarging it lowers AJI on every tile), so keep the previous scale
            scale, result = previous[0], previous[1]
            estimate.declined = True
            break
        estimate.widths.append((scale, None if width is None else width / scale))
        step = size_step(width, estimate.reference)
        kept_first = step == 0 and previous is None and width is not None
        following = scale * 2.0 ** step
        if step == 0 or len(estimate.widths) > MAX_STEPS or any(abs(s - following) < 1e-9 for s, _ in estimate.widths):
            break  # in range, out of steps, or back and forth between two scales (keep the later one)
        previous = (scale, result, uncertain)
        scale = following
    if kept_first:
        # the width cannot tell an enlarged image from a native one (the network splits large nuclei into
        # pieces of its training size): shrinking stands when the network is about as sure at half the size
        smaller = run(sample, scale / 2)
        small_width, small_uncertain = measure(smaller)
        if small_width is not None and small_uncertain < SHRINK_GAIN * uncertain:  # (objects must remain)
            scale, result = scale / 2, smaller
            estimate.shrunk = True
    estimate.scale = scale
    if not whole:
        result = run(image, scale)
    return result, estimate


def unresampled_slide_note(card, mpp: float | None) -> str | None:
    """A warning when a whole slide's pixel size is far (over 1.4x) from the model's: the
    slide engine segments slides at their own scale (it does not resample yet)."""
    if not mpp or not card.pixel_size_um or abs(math.log(mpp / card.pixel_size_um)) <= math.log(1.4):
        return None
    return (f"this slide has {mpp:.3g} um per pixel and model {card.name!r} was trained at {card.pixel_size_um:.3g}: "
            "whole slides are segmented at their own scale (not resampled), so expect poorer results; "
            "segment regions with segment() / the Whole image option, which resample")
