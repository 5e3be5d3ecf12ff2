"""Images in, network input out: reading files, checking and normalising pixels, datasets.

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
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MIN_SIDE = 16


class InputError(ValueError):
    """The image or data given cannot be segmented as it is; the message says why."""


# --------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF (incl. OME-TIFF and multi-page stacks), PNG, JPEG or BMP.

    Returns the pixels as stored: (H, W), (H, W, C) or a stack (Z, H, W[, C]). RGBA loses
    its alpha channel. Raises :class:`InputError` with the reason when the file is
    missing or unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"file not found: {p}")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an image")
    suffix = p.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            data = _read_tiff(p)
        else:
            import imageio.v3 as iio

            data = iio.imread(p)
    except Exception as exc:  # noqa: BLE001 - every reader error means the same to the user
        raise InputError(f"cannot read {p}: {exc}") from exc
    data = np.asarray(data)
    if data.ndim >= 3 and data.shape[-1] == 4:
        data = data[..., :3]
    if data.ndim >= 3 and data.shape[-1] == 2:  # grey + alpha
        data = data[..., 0]
    return data


def _read_tiff(path: Path) -> np.ndarray:
    """TIFF / OME-TIFF with colour samples last; planes (Z, T, or C that is not RGB) first.

    A colour axis is recognised from the file's own description (``S`` samples, or a
    3/4-long ``C`` axis of an RGB photometric image), never from the shape alone, so a grey
    stack of 3 or 4 planes stays a stack.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        photometric = getattr(tif.pages[0], "photometric", None)
    rgb_photometric = photometric is not None and getattr(photometric, "name", str(photometric)) == "RGB"
    for colour_axis in ("S", "C"):
        if colour_axis in axes and data.shape[axes.index(colour_axis)] in (3, 4):
            if colour_axis == "C" and not rgb_photometric:
                continue
            data = np.moveaxis(data, axes.index(colour_axis), -1)
            break
    return data


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

    @classmethod
    def for_image(cls, image: np.ndarray, normalization: dict, in_channels: int) -> Normalizer:
        mean = np.asarray(normalization.get("mean", [0.0] * in_channels), dtype=np.float32)
        std = np.asarray(normalization.get("std", [1.0] * in_channels), dtype=np.float32)
        mean = np.broadcast_to(mean[:in_channels] if mean.size >= in_channels else mean[:1], (in_channels,))
        std = np.broadcast_to(std[:in_channels] if std.size >= in_channels else std[:1], (in_channels,))
        if image.dtype == np.uint8:
            lo, hi = 0.0, 255.0
        else:
            sample = _sampled(image).astype(np.float32)
            lo, hi = np.percentile(sample, [0.5, 99.5])
            if hi <= lo:
                lo, hi = float(sample.min()), float(sample.max())
            if hi <= lo:
                hi = lo + 1.0
        unit_scale = 1.0 / (hi - lo)
        scale = (unit_scale / std).astype(np.float32)
        offset = ((-lo * unit_scale - mean) / std).astype(np.float32)
        return cls(scale, offset)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w[, C]) raw pixels -> (C, h, w) float32."""
        x = pixels.astype(np.float32, copy=False)
        if x.ndim == 2:
            x = x[None]
        else:
            x = np.moveaxis(x, -1, 0)
        return x * self.scale[:, None, None] + self.offset[:, None, None]


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
        labels = read_image(label_path) if label_path else None
        if mask_path is not None:
            mask_raw = read_image(mask_path)
            mask = (mask_raw[..., 0] if mask_raw.ndim == 3 else mask_raw) > 0
        elif labels is not None:
            mask = labels > 0
        else:
            mask = np.zeros(image.shape[:2], bool)
        fov = read_image(extras["fov"][ident]) > 0 if ident in extras["fov"] else None
        if fov is not None and fov.ndim == 3:
            fov = fov[..., 0]
        examples.append(TrainingExample(ident, image, mask, labels, fov, source=str(path)))
    return examples
