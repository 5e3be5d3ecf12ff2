"""Images in, network input out: reading files (image_io, re-exported here), checking and normalising pixels, datasets.

Dataset layout (the same for train, evaluate, finetune and the benchmarks)::

    <dir>/images/<id>.png|tif|jpg   grey or RGB
    <dir>/masks/<id>.png            0 / 255 (any nonzero = foreground)
    <dir>/labels/<id>.tif           optional, instance ids (nuclei)
    <dir>/fov/<id>.png              optional, field of view (retina)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .image_io import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_PIXELS_ENV,
    MIN_SIDE,
    max_image_pixels,
    read_image,
)

__all__ = [
    "InputError",
    "read_image",
    "check_image",
    "as_rgb_or_grey",
    "Normalizer",
    "TrainingExample",
    "load_dataset",
    "IMAGE_SUFFIXES",
    "working_scale",
    "rescale_image",
    "GreyImageWarning",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_PIXELS_ENV",
    "MIN_SIDE",
    "MAX_TILE_SIZE",
    "MAX_WORKING_LONG_SIDE",
    "max_image_pixels",
]

#: largest tile a prediction may use (a 4096 px tile already needs ~1 GB of activations)
MAX_TILE_SIZE = 4096
#: largest working size a model card may ask for
MAX_WORKING_LONG_SIDE = 4096


class GreyImageWarning(UserWarning):
    """A grey image was given to a model trained on colour images: the result is unreliable."""


# --------------------------------------------------------------------------- checking


def check_image(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Validate a single 2-D image, grey (H, W) or colour (H, W, C<=4); return (H, W[, 3]).

    Raises :class:`InputError` for wrong dimensions, too few pixels, non-numeric dtypes,
    NaN / infinity and constant images.
    """
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    if image.dtype == object or np.issubdtype(image.dtype, np.complexfloating) or not (
        np.issubdtype(image.dtype, np.number) or image.dtype == bool
    ):
        raise InputError(f"{name} has dtype {image.dtype}; expected integer or floating point pixels")
    if image.size == 0:
        raise InputError(f"{name} is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        if image.shape[-1] == 1:
            image = image[..., 0]
        elif image.shape[-1] == 4:
            image = image[..., :3]
    elif image.ndim != 2:
        raise InputError(
            f"{name} has shape {image.shape}: expected a 2-D grey image (H, W) or colour (H, W, 3); "
            "segment stacks slice by slice"
        )
    h, w = image.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"{name} is {h} x {w} pixels; Mini-Net needs at least {MIN_SIDE} x {MIN_SIDE}")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        finite = _sampled(image)
        if not np.isfinite(finite).all() or not np.isfinite(image).all():
            raise InputError(f"{name} contains NaN or infinite values")
    sample = _sampled(image)
    if sample.min() == sample.max() and image.min() == image.max():
        raise InputError(f"{name} is constant (every pixel is {image.flat[0]}): there is nothing to segment")
    return image


def _sampled(image: np.ndarray, max_pixels: int = 1 << 20) -> np.ndarray:
    """A strided view with at most ~max_pixels pixels (cheap statistics on huge images)."""
    h, w = image.shape[:2]
    step = max(1, int(math.ceil(math.sqrt(h * w / max_pixels))))
    return image[::step, ::step]


def as_rgb_or_grey(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Match the model's channels: grey -> RGB repeats; RGB -> grey uses luminance."""
    if in_channels == 3 and image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if in_channels == 1 and image.ndim == 3:
        weights = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
        return (image.astype(np.float32) @ weights).astype(np.float32)
    return image


# --------------------------------------------------------------------------- working size


def working_scale(shape: tuple[int, ...], long_side: int | None, scale: float | None = None) -> float:
    """Resize factor that brings an image to the model's working size.

    ``scale`` (when known) wins: a crop must be resized like the whole image it was cut
    from. Otherwise the image is taken to be whole: its long side becomes ``long_side``.
    """
    if scale is not None:
        return float(scale)
    if not long_side:
        return 1.0
    return long_side / max(shape[:2])


def rescale_image(image: np.ndarray, scale: float, *, labels: bool = False) -> np.ndarray:
    """Resize by ``scale`` (bilinear with anti-aliasing; nearest for labels); dtype kept for uint8."""
    if abs(scale - 1.0) < 1e-3:
        return image
    from skimage.transform import resize

    h, w = image.shape[:2]
    shape = (max(16, round(h * scale)), max(16, round(w * scale))) + image.shape[2:]
    if labels:
        return resize(image, shape, order=0, preserve_range=True, anti_aliasing=False).astype(image.dtype)
    resized = resize(image, shape, order=1, preserve_range=True, anti_aliasing=scale < 1)
    if image.dtype == np.uint8:
        return np.clip(resized + 0.5, 0, 255).astype(np.uint8)
    return resized.astype(np.float32)


# --------------------------------------------------------------------------- normalising


@dataclass(frozen=True)
class Normalizer:
    """Maps raw pixels of one image to network input: ``(x * scale + offset)`` per channel.

    Built once per image from the whole image (so every tile of it is normalised the same
    way), applied tile by tile so huge images never exist as float32 in full.
    uint8 images are divided by 255; other dtypes are stretched between their 0.5 and
    99.5 percentiles (sampled). The card's mean / std are then applied.
    """

    scale: np.ndarray  # (C,) float32
    offset: np.ndarray  # (C,) float32
    #: float images far from unit range (|values| > 1e20 or < 1e-20, e.g. 1e308) are first
    #: multiplied by this power of two in float64 (exact), so float32 never overflows
    prescale: float = 1.0

    @classmethod
    def for_image(cls, image: np.ndarray, normalization: dict, in_channels: int) -> Normalizer:
        mean, std = _card_statistics(normalization, in_channels)
        prescale = 1.0
        if image.dtype == np.uint8:
            lo, hi = 0.0, 255.0
        else:
            sample = _sampled(image)
            if np.issubdtype(sample.dtype, np.floating) and sample.size:
                amax = float(np.max(np.abs(sample.astype(np.float64))))
                if np.isfinite(amax) and amax > 0 and not 1e-20 <= amax <= 1e20:
                    prescale = float(2.0 ** -math.floor(math.log2(amax)))
            sample = sample.astype(np.float64) * prescale
            lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
            if hi <= lo:
                lo, hi = float(sample.min()), float(sample.max())
            if hi <= lo:
                hi = lo + 1.0
        unit_scale = 1.0 / (hi - lo)
        scale = (unit_scale / std).astype(np.float32)
        offset = ((-lo * unit_scale - mean) / std).astype(np.float32)
        if not (np.isfinite(scale).all() and np.isfinite(offset).all() and (scale != 0).all()):
            raise InputError(f"the image's pixel values (between {lo:g} and {hi:g}) cannot be normalised; "
                             "rescale the image to a usual range (e.g. 0..1 or 0..65535)")
        return cls(scale, offset, prescale)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w[, C]) raw pixels -> (C, h, w) float32."""
        if self.prescale != 1.0:
            x = (pixels.astype(np.float64) * self.prescale).astype(np.float32)
        else:
            x = pixels.astype(np.float32, copy=False)
        if x.ndim == 2:
            x = x[None]
        else:
            x = np.moveaxis(x, -1, 0)
        return x * self.scale[:, None, None] + self.offset[:, None, None]


def _card_statistics(normalization: dict, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per input channel from a card's ``normalization``; std must be > 0."""
    if not isinstance(normalization, dict):
        raise ValueError(f"normalization must be a mapping with 'mean' and 'std', not {normalization!r}")
    out = []
    for key, default in (("mean", 0.0), ("std", 1.0)):
        values = normalization.get(key, [default] * in_channels)
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"normalization {key} must be a list of numbers, not {values!r}") from None
        if arr.size == 0 or not np.isfinite(arr).all():
            raise ValueError(f"normalization {key} must be finite numbers, not {values!r}")
        out.append(np.broadcast_to(arr[:in_channels] if arr.size >= in_channels else arr[:1], (in_channels,)))
    mean, std = out
    if (std <= 0).any():
        raise ValueError(f"normalization std must be positive, not {list(normalization.get('std'))}")
    return mean, std


# --------------------------------------------------------------------------- datasets


@dataclass
class TrainingExample:
    """One image with its ground truth, as used by train / finetune / evaluate."""

    id: str
    image: np.ndarray  # (H, W) or (H, W, 3), as read
    mask: np.ndarray  # (H, W) bool
    labels: np.ndarray | None = None  # (H, W) instance ids
    fov: np.ndarray | None = None  # (H, W) bool
    source: str = ""
    #: resize factor to the model's working size when this is a crop of a larger image
    #: (None: the example is a whole image)
    scale: float | None = None
    #: (H, W) labels the model predicted when the user started correcting: where they differ
    #: from ``labels``/``mask`` the user edited (None: every pixel is ground truth)
    before: np.ndarray | None = None

    def __post_init__(self) -> None:
        hw = self.image.shape[:2]
        for name in ("mask", "labels", "fov", "before"):
            arr = getattr(self, name)
            if arr is not None and arr.shape[:2] != hw:
                raise InputError(f"example {self.id!r}: {name} is {arr.shape[:2]} but the image is {hw}")


def _find_images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def load_dataset(directory: str | os.PathLike, ids: Sequence[str] | None = None, *, need_masks: bool = True) -> list[TrainingExample]:
    """Load ``<dir>/images`` with their ``masks`` (and ``labels`` / ``fov`` when present)."""
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise InputError(f"{root} has no images/ folder (expected {root}/images/<id>.png and {root}/masks/<id>.png)")
    images = _find_images(image_dir)
    if not images:
        raise InputError(f"no images in {image_dir}")
    if ids is not None:
        missing = [i for i in ids if i not in images]
        if missing:
            raise InputError(f"ids not found in {image_dir}: {', '.join(missing)}")
        images = {i: images[i] for i in ids}
    extras = {name: _find_images(root / name) if (root / name).is_dir() else {} for name in ("masks", "labels", "fov")}
    examples = []
    for ident, path in images.items():
        mask_path = extras["masks"].get(ident)
        label_path = extras["labels"].get(ident)
        if mask_path is None and label_path is None and need_masks:
            raise InputError(f"image {ident!r} has no mask: expected {root / 'masks' / (ident + '.png')}")
        image = read_image(path)
        labels = _check_labels(read_image(label_path), label_path) if label_path else None
        if mask_path is not None:
            mask = _binary(read_image(mask_path), mask_path, "mask")
        elif labels is not None:
            mask = labels > 0
        else:
            mask = np.zeros(image.shape[:2], bool)
        fov = _binary(read_image(extras["fov"][ident]), extras["fov"][ident], "field of view") \
            if ident in extras["fov"] else None
        examples.append(TrainingExample(ident, image, mask, labels, fov, source=str(path)))
    return examples


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """Instance labels must be one 2-D plane of non-negative integers."""
    if labels.ndim != 2:
        raise InputError(f"labels {path} have shape {labels.shape}: expected one 2-D plane (H, W) of instance ids "
                         "(an RGB or multi-page file is not a label image)")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"labels {path} have dtype {labels.dtype}: expected integers (0 = background, "
                         "1, 2, ... = one id per object)")
    if labels.dtype != bool and np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise InputError(f"labels {path} contain negative ids; expected 0 = background, 1, 2, ... per object")
    return labels


def _binary(raw: np.ndarray, path: Path, what: str) -> np.ndarray:
    """A 0 / nonzero mask (first channel of a colour file) as bool; NaN and complex are refused."""
    if raw.dtype == object or np.issubdtype(raw.dtype, np.complexfloating) or not (
        np.issubdtype(raw.dtype, np.number) or raw.dtype == bool
    ):
        raise InputError(f"{what} {path} has dtype {raw.dtype}; expected 0 / 255 (or 0 / 1) pixels")
    if raw.ndim == 3:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise InputError(f"{what} {path} has shape {raw.shape}; expected one 2-D plane (H, W)")
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise InputError(f"{what} {path} contains NaN or infinite values; expected 0 / 255 (or 0 / 1) pixels")
    return raw > 0
