"""napari reader: whole slides (.svs, .ndpi, pyramidal or very large TIFF, OME-TIFF, OME-Zarr)
as lazy multiscale layers, with the pixel size as the layer's scale (um).

A small TIFF that records its pixel size (OME PhysicalSizeX, Aperio MPP, ImageJ unit,
resolution tags in cm or inch; :func:`napari_minenet.pixel_size.read_pixel_size`) opens
with that pixel size as its scale in um (``units`` um, ``metadata["mpp"]``); other small
TIFFs are left to napari's own reader (``get_reader`` returns None). A folder written by
the slide engine (``<name>.zarr`` with ``labels/nuclei``) opens as a multiscale Labels
layer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .pixel_size import read_pixel_size
from .slides import SLIDE_MIN_PIXELS, is_slide_path, looks_like_slide, open_slide

logger = logging.getLogger(__name__)


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    if not is_slide_path(p):
        return None
    if p.is_dir():
        if _labels_group(p) is None and not (p / ".zattrs").exists() and not (p / "zarr.json").exists():
            return None
        return read_slide
    if looks_like_slide(p):
        return read_slide
    if p.suffix.lower() in (".tif", ".tiff") and read_pixel_size(p) is not None:
        return read_image_with_pixel_size
    return None


def read_image_with_pixel_size(path):
    """An ordinary (small) TIFF with its pixel size as the layer's scale, in um."""
    from .data import read_image

    p = Path(str(path[0] if isinstance(path, list) else path))
    data = read_image(p)
    size = read_pixel_size(p)
    rgb = data.ndim >= 3 and data.shape[-1] in (3, 4)
    lead = data.ndim - (3 if rgb else 2)
    kwargs = {"name": p.name.split(".")[0] or p.stem, "rgb": rgb, "metadata": {"mpp": size}}
    if size:
        kwargs["scale"] = (1.0,) * lead + (size, size)
        kwargs["units"] = ("pixel",) * lead + ("um", "um")
    return [(data, kwargs, "image")]


def _labels_group(p: Path):
    """(group path, attrs) of the first OME-Zarr labels image in ``p``, or None."""
    import zarr

    try:
        root = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001
        logger.debug("%s is not an OME-Zarr group (%s)", p, exc)
        return None
    if "multiscales" in root.attrs and "image-label" in root.attrs:
        return p
    try:
        labels = root["labels"]
        names = labels.attrs.get("labels") or []
    except (KeyError, FileNotFoundError):
        return None
    return p / "labels" / names[0] if names else None


def _scale(mpp):
    return (mpp, mpp) if mpp else (1.0, 1.0)


def read_slide(path):
    p = Path(str(path[0] if isinstance(path, list) else path))
    layers = []
    if p.is_dir():
        labels_path = _labels_group(p)
        try:
            slide = open_slide(p)
        except Exception as exc:  # noqa: BLE001 - a labels-only OME-Zarr has no image at its root
            logger.debug("no image at the root of %s (%s)", p, exc)
            slide = None
        if slide is not None:
            layers.append(_image_layer(slide))
        if labels_path is not None:
            layers.append(_labels_layer(labels_path))
        return layers or None
    return [_image_layer(open_slide(p))]


def _image_layer(slide):
    meta = {"mpp": slide.mpp, "minenet_slide": str(slide.path) if slide.path else "", **slide.metadata}
    kwargs = {"name": slide.name, "multiscale": len(slide.levels) > 1, "rgb": slide.rgb,
              "scale": _scale(slide.mpp), "metadata": meta}
    if slide.mpp:
        kwargs["units"] = ("um", "um")
    levels = list(slide.levels)
    if len(levels) == 1 and slide.shape[0] * slide.shape[1] > SLIDE_MIN_PIXELS:
        # a very large image without a pyramid: lazy reductions, so zooming out never loads
        # the full resolution at once (the first view of a reduction reads its file once)
        import dask.array as da

        full = da.from_zarr(levels[0]) if hasattr(levels[0], "store") else da.asarray(levels[0])
        step = 2
        while max(slide.shape) / step >= 1024:
            levels.append(full[::step, ::step])
            step *= 2
        kwargs["multiscale"] = len(levels) > 1
    data = levels if len(levels) > 1 else levels[0]
    return data, kwargs, "image"


def _labels_layer(labels_path: Path):
    import zarr

    group = zarr.open_group(str(labels_path), mode="r")
    ms = group.attrs["multiscales"][0]
    arrays = [group[d["path"]] for d in ms["datasets"]]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    unit = ms["axes"][-1].get("unit") if isinstance(ms["axes"][-1], dict) else None
    kwargs = {"name": f"{labels_path.parents[1].name.removesuffix('.zarr')} {labels_path.name}",
              "multiscale": len(arrays) > 1, "scale": tuple(scale),
              "metadata": {"minenet_zarr": str(labels_path)}}
    if unit == "micrometer":
        kwargs["units"] = ("um", "um")
    return (arrays if len(arrays) > 1 else arrays[0]), kwargs, "labels"
