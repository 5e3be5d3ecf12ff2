"""Which pixels of a napari Image layer to segment, and where the labels go.

Widget-side helpers (they know napari layers, not models): the current slice or every
slice of a stack, the whole image or only the part visible on the canvas, the
full-resolution level of a multiscale image.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from .data import InputError

logger = logging.getLogger(__name__)


def warm_up_labels_layers() -> threading.Thread:
    """Build and drop a tiny napari Labels layer on a background thread.

    napari's first Labels layer in a process pays for imports and for loading its numba
    colormap kernels (1.2 s of the 1.26 s the first result took to show here, on the GUI
    thread, freezing the window at the end of the first segmentation). Paying it while the
    user picks an image and a model keeps that first result as quick as the next ones.
    """

    def build() -> None:
        try:
            from napari.layers import Labels

            Labels(np.zeros((4, 4), np.uint32))
        except Exception:  # noqa: BLE001 - only a warm-up: the real layer reports real errors
            logger.debug("warming up napari's Labels layer failed", exc_info=True)

    thread = threading.Thread(target=build, name="minenet-labels-warm-up", daemon=True)
    thread.start()
    return thread


#: above this many pixels per plane, "whole image" refuses and suggests the visible region
MAX_WHOLE_PIXELS = 400_000_000


@dataclass
class ImageRegion:
    #: pixels to segment: (H, W[, 3]) or a stack (..., H, W[, 3]); a lazy slice (dask, zarr)
    #: for lazy layers, so reading happens in the worker (see :meth:`load`)
    data: np.ndarray
    rgb: bool
    lead_index: tuple[int, ...] | None  # the plane segmented (None = every plane)
    offset: tuple[int, int]  # (y, x) of the region in full-resolution data coordinates
    lead_shape: tuple[int, ...]  # non-spatial shape of the layer
    description: str

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(self.data.shape[-3:-1] if self.rgb else self.data.shape[-2:])  # type: ignore[return-value]

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return self.lead_shape + self.plane_shape

    def load(self) -> np.ndarray:
        """Read the pixels into memory (slow for lazy data: call it off the GUI thread)."""
        self.data = np.asarray(self.data)
        return self.data


def layer_lead_shape(layer) -> tuple[int, ...]:
    full = layer.data[0] if layer.multiscale else layer.data
    spatial = 3 if layer.rgb else 2
    return tuple(full.shape[: full.ndim - spatial])


def image_region(layer, viewer, *, all_slices: bool = False, visible_only: bool = False) -> ImageRegion:
    """Pixels to segment from ``layer`` (full resolution), as chosen in the widget."""
    full = layer.data[0] if layer.multiscale else layer.data
    rgb = bool(layer.rgb)
    spatial = 3 if rgb else 2
    if full.ndim < spatial:
        raise InputError(f"layer '{layer.name}' has shape {full.shape}: it is not an image")
    if rgb and full.shape[-1] not in (3, 4):
        raise InputError(f"layer '{layer.name}' has {full.shape[-1]} colour channels; Mini-Net needs grey or RGB")
    lead_shape = tuple(full.shape[: full.ndim - spatial])
    h, w = full.shape[len(lead_shape) : len(lead_shape) + 2]

    y0, y1, x0, x1 = 0, h, 0, w
    if visible_only:
        y0, y1, x0, x1 = visible_box(layer, h, w)
    elif h * w > MAX_WHOLE_PIXELS:
        raise InputError(
            f"'{layer.name}' is {h:,} x {w:,} pixels per plane: too large to segment whole here. "
            "Choose 'Visible region' and zoom to the area of interest."
        )

    if lead_shape and not all_slices:
        step = tuple(int(s) for s in viewer.dims.current_step[: len(lead_shape)])
        lead_index: tuple[int, ...] | None = tuple(min(max(0, s), n - 1) for s, n in zip(step, lead_shape))
        data = full[lead_index + (slice(y0, y1), slice(x0, x1))]
        where = f"slice {', '.join(str(i) for i in lead_index)}"
    else:
        lead_index = None if lead_shape else ()
        data = full[(Ellipsis, slice(y0, y1), slice(x0, x1)) + ((slice(None),) if rgb else ())]
        where = f"{int(np.prod(lead_shape))} slices" if lead_shape else ""
    if visible_only:
        level = " of the full-resolution level" if layer.multiscale else ""
        region = f"visible region {y1 - y0} x {x1 - x0} px at (y {y0}, x {x0}){level}"
        where = f"{where}, {region}" if where else region
    else:
        whole = f"whole {'plane' if lead_shape else 'image'} {h} x {w} px"
        where = f"{where}, {whole}" if where else whole
    if rgb and data.shape[-1] == 4:
        data = data[..., :3]
    return ImageRegion(data, rgb, lead_index, (y0, x0), lead_shape, where)


def visible_box(layer, h: int, w: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the part of the layer's full-resolution plane on the canvas."""
    corners = np.asarray(layer.corner_pixels, dtype=float)  # (2, ndim) in the displayed level
    if layer.multiscale:
        factors = np.asarray(layer.downsample_factors[layer.data_level], dtype=float)
        corners = corners * factors[: corners.shape[1]]
    (ya, xa), (yb, xb) = corners[0, -2:], corners[1, -2:]
    y0, y1 = int(max(0, np.floor(min(ya, yb)))), int(min(h, np.ceil(max(ya, yb)) + 1))
    x0, x1 = int(max(0, np.floor(min(xa, xb)))), int(min(w, np.ceil(max(xa, xb)) + 1))
    if y1 - y0 < 16 or x1 - x0 < 16:
        raise InputError("the visible region is smaller than 16 x 16 pixels: zoom out, or segment the whole image")
    return y0, y1, x0, x1


def full_plane(region: ImageRegion, plane: np.ndarray, dtype) -> np.ndarray:
    """Labels for the whole layer shape, with ``plane`` in the segmented slice."""
    if region.lead_index is None or not region.lead_shape:
        return plane.astype(dtype, copy=True)  # the layer is edited; the prediction stays as it was
    full = np.zeros(region.labels_shape, dtype)
    full[region.lead_index] = plane
    return full


def placement(layer, region: ImageRegion) -> dict:
    """Scale, translate (and units) that put a region's labels over the image layer."""
    scale = np.asarray(layer.scale)[-len(region.labels_shape):] if layer.scale is not None else None
    translate = np.asarray(layer.translate, dtype=float)[-len(region.labels_shape):].copy()
    if scale is not None:
        translate[-2:] += np.asarray(region.offset) * scale[-2:]
    out = {"scale": scale, "translate": translate}
    units = getattr(layer, "units", None)  # um for slides: napari renders in units only when all agree
    if units is not None:
        out["units"] = tuple(units)[-len(region.labels_shape):]
    return out
