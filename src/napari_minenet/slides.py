"""Whole slides: open pyramids lazily and find the tissue on them.

A slide is a list of resolution levels, full resolution first, each an array-like that is
read only where it is sliced (tifffile's zarr store for TIFF-based formats, zarr for
OME-Zarr). Nothing here reads the full-resolution level whole.

* :func:`open_slide` opens Aperio ``.svs``, Hamamatsu ``.ndpi``, tiled (pyramidal) TIFF,
  OME-TIFF and OME-Zarr, with the pixel size in micrometres where the file records it.
* :func:`tissue_mask` finds tissue on a low-resolution level (glass is bright and grey),
  so the segmentation engine (:mod:`napari_minenet.slide_engine`) never computes glass.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .data import InputError
from .pixel_size import checked_pixel_size, ome_zarr_pixel_size, tiff_pixel_size

logger = logging.getLogger(__name__)

__all__ = ["Slide", "open_slide", "slide_from_levels", "is_slide_path", "looks_like_slide", "SLIDE_SUFFIXES",
           "SLIDE_MIN_PIXELS", "tissue_mask", "tissue_pixels", "glass_pixels", "TissueMask", "thumbnail"]

#: file names the slide reader claims (``.tif`` / ``.tiff`` only when pyramidal or large)
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".zarr", ".scn", ".bif")
#: a single-level image with more pixels than this is treated as a slide (blocks, not ``segment``)
SLIDE_MIN_PIXELS = 64_000_000


@dataclass
class Slide:
    """A lazily read 2-D image pyramid: ``levels[0]`` is full resolution, (H, W) or (H, W, C)."""

    levels: list
    mpp: float | None = None  # micrometres per pixel at level 0
    name: str = "slide"
    path: Path | None = None
    metadata: dict = field(default_factory=dict)
    _handle: object = None  # the open TiffFile, closed by :meth:`close`

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.levels[0].shape[:2])  # type: ignore[return-value]

    @property
    def rgb(self) -> bool:
        return len(self.levels[0].shape) == 3

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].dtype)

    @property
    def downsamples(self) -> list[float]:
        h, w = self.shape
        return [0.5 * (h / lv.shape[0] + w / lv.shape[1]) for lv in self.levels]

    @property
    def multiscale(self) -> bool:
        return len(self.levels) > 1

    def read(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        """Pixels of a box of one level as a numpy array (RGB: alpha dropped)."""
        data = np.asarray(self.levels[level][y0:y1, x0:x1])
        if data.ndim == 3 and data.shape[-1] == 4:
            data = data[..., :3]
        return data

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # a worker process reopens the file (dask.distributed)
        if self.path is None:
            return self.__dict__
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        if set(state) == {"path"}:
            self.__dict__.update(open_slide(state["path"]).__dict__)
        else:
            self.__dict__.update(state)


def slide_from_levels(levels: Sequence, mpp: float | None = None, name: str = "slide",
                      path: Path | None = None) -> Slide:
    """A slide from array-likes (a napari multiscale layer's data, zarr or dask arrays)."""
    levels = list(levels)
    if not levels:
        raise InputError("a slide needs at least one level")
    first = levels[0]
    if len(first.shape) not in (2, 3) or (len(first.shape) == 3 and first.shape[-1] not in (3, 4)):
        raise InputError(f"a slide is a 2-D grey or RGB image; this one has shape {tuple(first.shape)}")
    return Slide(levels, _checked_mpp(mpp), name, path)


def is_slide_path(path: str | Path) -> bool:
    name = str(path).lower().rstrip("/\\")
    return name.endswith(SLIDE_SUFFIXES)


def looks_like_slide(path: str | Path, min_pixels: int | None = None) -> bool:
    """Whether ``path`` should go through the slide engine: a pyramid (.svs, .ndpi, tiled
    TIFF with reduced levels, OME-Zarr), or a TIFF with more than ``min_pixels`` pixels.
    Reads only the file's header."""
    p = Path(path)
    if not is_slide_path(p):
        return False
    if p.suffix.lower() in (".svs", ".ndpi", ".scn", ".bif") or p.is_dir():
        return True
    try:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            if len(series.levels) > 1:
                return True
            shape = series.shape
            axes = series.axes
    except Exception as exc:  # noqa: BLE001 - not a TIFF we can read: let the ordinary reader try
        logger.debug("%s is not a slide: not a readable TIFF (%s)", p, exc)
        return False
    h = shape[axes.index("Y")] if "Y" in axes else 0
    w = shape[axes.index("X")] if "X" in axes else 0
    return h * w > (SLIDE_MIN_PIXELS if min_pixels is None else min_pixels)


def open_slide(path: str | Path) -> Slide:
    """Open a slide lazily; raises :class:`InputError` for files that are not 2-D slides."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such slide: {p}")
    if p.is_dir():
        return _open_zarr(p)
    return _open_tiff(p)


_checked_mpp = checked_pixel_size  # one definition of a plausible pixel size (pixel_size.py)


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _open_tiff(p: Path) -> Slide:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(p)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {p.name} as a TIFF-based slide: {exc}") from None
    try:
        series = tif.series[0]
        axes = series.axes
        if axes not in ("YX", "YXS"):
            raise InputError(f"{p.name} has axes {axes!r}: the slide reader opens 2-D grey or RGB slides (YX, YXS)")
        store = tif.aszarr(series=0)
        opened = zarr.open(store, mode="r")
        if hasattr(opened, "shape"):
            levels = [opened]
        else:
            levels = [opened[str(i)] for i in range(len(series.levels))]
        mpp = tiff_pixel_size(tif)
    except BaseException:
        tif.close()
        raise
    meta = {"format": "svs" if tif.is_svs else "ndpi" if tif.is_ndpi else "ome-tiff" if tif.is_ome else "tiff"}
    slide = slide_from_levels(levels, mpp, _stem(p), p)
    slide.metadata, slide._handle = meta, tif
    return slide


def _open_zarr(p: Path) -> Slide:
    """An OME-Zarr image group (multiscales with y, x and optionally c axes)."""
    import dask.array as da
    import zarr

    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {p.name} as OME-Zarr: {exc}") from None
    multiscales = group.attrs.get("multiscales") or group.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise InputError(f"{p.name} has no OME-Zarr 'multiscales' image at its root")
    ms = multiscales[0]
    names = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])] or ["y", "x"]
    levels = []
    for ds in ms["datasets"]:
        arr = group[ds["path"]]
        if len(names) != arr.ndim:
            raise InputError(f"{p.name}: axes {names} do not match the array's shape {arr.shape}")
        lead = [i for i, n in enumerate(names) if n not in ("y", "x", "c")]
        if any(arr.shape[i] != 1 for i in lead):
            raise InputError(f"{p.name} has axes {names}: the slide reader opens 2-D grey or RGB images")
        d = da.from_zarr(arr)
        d = d[tuple(0 if i in lead else slice(None) for i in range(arr.ndim))]
        kept = [n for n in names if n in ("y", "x", "c")]
        order = [kept.index(n) for n in ("y", "x", "c") if n in kept]
        d = d.transpose(order)
        if d.ndim == 3 and d.shape[-1] == 1:
            d = d[..., 0]
        levels.append(d)
    return slide_from_levels(levels, ome_zarr_pixel_size(ms), _stem(p), p)


# --------------------------------------------------------------------------- tissue


#: a mask pixel covers about this many full-resolution pixels along each side
MASK_DOWNSAMPLE = 32
#: RGB: tissue is where the colour spread (max - min channel) or the darkness exceeds these
TISSUE_MIN_SPREAD = 18
TISSUE_MAX_BRIGHTNESS = 210
#: below this every channel is black: a scanner's fill outside the scanned area, not tissue
BLACK_FILL = 12
#: glass is brighter than this (mean of R, G, B) and nearly colourless
GLASS_MIN_BRIGHTNESS = 235


@dataclass
class TissueMask:
    mask: np.ndarray  # bool, one pixel per ``downsample`` full-resolution pixels
    downsample: float

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, y0: int, y1: int, x0: int, x1: int, margin: int = 0) -> bool:
        """Whether there is tissue within ``margin`` px of a full-resolution box."""
        d = self.downsample
        my0, mx0 = max(0, int((y0 - margin) // d)), max(0, int((x0 - margin) // d))
        my1, mx1 = int(math.ceil((y1 + margin) / d)), int(math.ceil((x1 + margin) / d))
        return bool(self.mask[my0:my1, mx0:mx1].any())

    def to_json(self) -> str:
        return json.dumps({"downsample": self.downsample, "shape": list(self.mask.shape),
                           "fraction": self.fraction})


def thumbnail(slide: Slide, target_downsample: float = MASK_DOWNSAMPLE, block: int = 2048) -> tuple[np.ndarray, float]:
    """A low-resolution view of the slide, about ``target_downsample`` times smaller, read from
    the coarsest level that is at least that fine, block by block (bounded memory)."""
    downs = slide.downsamples
    candidates = [i for i, d in enumerate(downs) if d <= target_downsample * 1.01]
    level = max(candidates, key=lambda i: downs[i]) if candidates else 0
    step = max(1, int(round(target_downsample / downs[level])))
    arr = slide.levels[level]
    h, w = int(arr.shape[0]), int(arr.shape[1])
    block = max(step, block // step * step)
    rows = []
    for y in range(0, h, block):
        row = []
        for x in range(0, w, block):
            part = np.asarray(arr[y : min(h, y + block), x : min(w, x + block)])
            row.append(part[::step, ::step])
        rows.append(np.concatenate(row, axis=1))
    thumb = np.concatenate(rows, axis=0)
    if thumb.ndim == 3 and thumb.shape[-1] == 4:
        thumb = thumb[..., :3]
    return thumb, downs[level] * step


def tissue_pixels(pixels: np.ndarray, background: float | None = None) -> np.ndarray:
    """Boolean: which pixels are tissue (RGB: coloured or darker than glass, not a black
    fill; grey: darker than the bright ``background``, by default the 95th percentile)."""
    if pixels.dtype != np.uint8:
        lo, hi = np.percentile(pixels, [0.5, 99.5])
        pixels = np.clip((pixels.astype(np.float32) - lo) * (255.0 / max(1e-6, hi - lo)), 0, 255).astype(np.uint8)
    if pixels.ndim == 3:
        t = pixels[..., :3].astype(np.int16)
        spread = t.max(axis=-1) - t.min(axis=-1)
        mask = (spread > TISSUE_MIN_SPREAD) | (t.mean(axis=-1) < TISSUE_MAX_BRIGHTNESS)
        return mask & (t.max(axis=-1) > BLACK_FILL)
    background = float(np.percentile(pixels, 95)) if background is None else background
    return pixels.astype(np.float32) < background - 20


def glass_pixels(pixels: np.ndarray) -> np.ndarray:
    """Boolean: pixels that look like empty glass (bright and colourless; grey images: within
    a few grey levels of the brightest). Stricter than ``~tissue_pixels``: pale tissue and
    lumen inside tissue are rarely this bright."""
    if pixels.ndim == 3:
        t = pixels[..., :3].astype(np.int16) if pixels.dtype == np.uint8 else None
        if t is not None:
            return (t.mean(axis=-1) > GLASS_MIN_BRIGHTNESS) & (t.max(axis=-1) - t.min(axis=-1) < 15)
        pixels = pixels[..., :3].mean(axis=-1)
    return ~tissue_pixels(pixels)


def tissue_mask(slide: Slide, *, downsample: float = MASK_DOWNSAMPLE) -> TissueMask:
    """Tissue at low resolution: pixels that are coloured or darker than glass, cleaned of
    specks and with small holes closed. Grey slides: darker than the bright background."""
    thumb, ds = thumbnail(slide, downsample)
    mask = tissue_pixels(thumb)
    mask = ndi.binary_closing(mask, iterations=2, border_value=0)
    mask = ndi.binary_opening(mask, iterations=1)
    mask = ndi.binary_fill_holes(mask)
    return TissueMask(np.ascontiguousarray(mask), float(ds))
