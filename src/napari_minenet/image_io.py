"""Reading image files: TIFF (incl. OME-TIFF and stacks), PNG, JPEG, BMP, with a pixel limit
checked from the header before anything is decoded. Re-exported by ``data``, where the
rest of the image handling (checking, normalising, datasets) lives."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["read_image", "max_image_pixels", "MAX_IMAGE_PIXELS", "MAX_IMAGE_PIXELS_ENV", "IMAGE_SUFFIXES", "MIN_SIDE"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
#: smallest side of an image (or of a stack's planes) that can be segmented
MIN_SIDE = 16

#: images (all planes of a stack together) with more pixels than this are refused before
#: their pixels are decoded (a small compressed file can claim 100,000 x 100,000 pixels and
#: fill the memory). Override with the ``NAPARI_MINENET_MAX_IMAGE_PIXELS`` environment
#: variable or ``read_image(..., max_pixels=...)``.
MAX_IMAGE_PIXELS = 1_000_000_000
MAX_IMAGE_PIXELS_ENV = "NAPARI_MINENET_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit in force: ``NAPARI_MINENET_MAX_IMAGE_PIXELS`` or :data:`MAX_IMAGE_PIXELS`."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(f"{MAX_IMAGE_PIXELS_ENV}={text!r} is not a number of pixels") from None
    if value <= 0:
        raise InputError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive number of pixels, not {text}")
    return value



def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a TIFF (incl. OME-TIFF and multi-page stacks), PNG, JPEG or BMP.

    Returns the pixels as stored: (H, W), (H, W, C) or a stack (Z, H, W[, C]). RGBA loses
    its alpha channel. Raises :class:`InputError` with the reason when the file is
    missing or unreadable, or when its header claims more than ``max_pixels`` pixels
    (default :func:`max_image_pixels`); that check runs before any pixel is decoded.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"file not found: {p}")
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an image")
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    suffix = p.suffix.lower()
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror or exc}") from exc
    if size == 0:
        raise InputError(f"cannot read {p}: the file is empty (0 bytes), not an image")
    try:
        if suffix in (".tif", ".tiff"):
            data = _read_tiff(p, limit)
        else:
            _check_pixels_before_decoding(p, limit)
            import imageio.v3 as iio

            data = iio.imread(p)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error means the same to the user
        raise InputError(f"cannot read {p}: {_reader_error(p, exc)}") from exc
    data = np.asarray(data)
    if data.ndim >= 3 and data.shape[-1] == 4:
        data = data[..., :3]
    if data.ndim >= 3 and data.shape[-1] == 2:  # grey + alpha
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] not in (1, 3) and data.shape[-1] < MIN_SIDE <= min(data.shape[:2]):
        # e.g. a (64, 64, 5) multi-channel image, which would otherwise become 64 planes of 64 x 5
        raise InputError(
            f"{p} has shape {data.shape}: an image with {data.shape[-1]} channels (or {data.shape[0]} planes of "
            f"{data.shape[1]} x {data.shape[2]} pixels); expected grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4), "
            f"or a stack (Z, H, W[, 3]) of planes of at least {MIN_SIDE} x {MIN_SIDE} pixels"
        )
    return data


def _too_many_pixels(p: Path, shape: tuple[int, ...], pixels: int, limit: int) -> InputError:
    return InputError(
        f"{p} claims {' x '.join(map(str, shape))} = {pixels:,} pixels, more than the limit of {limit:,} "
        f"(set {MAX_IMAGE_PIXELS_ENV} to raise it); it was not decoded"
    )


def _check_pixels_before_decoding(p: Path, limit: int) -> None:
    """Refuse a PNG / JPEG / BMP whose header claims more than ``limit`` pixels."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                frames = int(getattr(im, "n_frames", 1) or 1)
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read {p}: {exc}; convert it to TIFF to read it") from exc
    except Exception:  # noqa: BLE001 - not a PIL image: the decoder below gives the error
        return
    pixels = w * h * frames
    if pixels > limit:
        raise _too_many_pixels(p, ((frames,) if frames > 1 else ()) + (h, w), pixels, limit)


def _reader_error(p: Path, exc: Exception) -> str:
    """A one-line reason that does not send the user to install video plug-ins."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if p.suffix.lower() in (".tif", ".tiff"):
        return f"not a readable TIFF image ({text})"
    kind = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}.get(p.suffix.lower(), "image")
    return f"the file is not a readable {kind} image (damaged, or not an image despite its name)"


def _read_tiff(path: Path, limit: int | None = None) -> np.ndarray:
    """TIFF / OME-TIFF with colour samples last; planes (Z, T, or C that is not RGB) first.

    A colour axis is recognised from the file's own description (``S`` samples, or a
    3/4-long ``C`` axis of an RGB photometric image), never from the shape alone, so a grey
    stack of 3 or 4 planes stays a stack.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = tuple(int(n) for n in series.shape)
        pixels = math.prod(n for n, axis in zip(shape, series.axes) if axis != "S")
        if limit is not None and pixels > limit:  # decided from the header, before decoding
            raise _too_many_pixels(path, shape, pixels, limit)
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
