"""Pixel size: the one place that reads how many micrometres a pixel spans.

Where a pixel size comes from, in the order it is looked for:

* OME-TIFF: ``Pixels/@PhysicalSizeX`` with ``PhysicalSizeXUnit`` (default um);
* Aperio (``.svs`` and other TIFFs whose description starts with "Aperio"): ``MPP = 0.2520``
  in the ImageDescription;
* ImageJ TIFF: ``unit=micron`` (or nm, mm, ...) in the description with ``XResolution``
  in pixels per unit;
* any TIFF: ``XResolution`` with ``ResolutionUnit`` centimetre or inch (or the
  millimetre / micrometre values some writers use);
* OME-Zarr: the ``scale`` of the first dataset of ``multiscales`` with the x axis' unit;
* PNG / JPEG: the dpi (pHYs / JFIF density) when it is a microscope's, not a screen's;
* a napari layer: ``layer.scale`` when ``layer.units`` are a length (napari >= 0.6), or
  ``metadata["mpp"]`` written by this plugin's reader.

A value outside :data:`PIXEL_SIZE_RANGE` is treated as unknown: 72 dpi (353 um) and the
like are screen defaults, not a measurement. Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["PIXEL_SIZE_RANGE", "checked_pixel_size", "unit_to_um", "read_pixel_size", "tiff_pixel_size",
           "ome_zarr_pixel_size", "layer_pixel_size", "describe_pixel_size"]

#: plausible pixel sizes in micrometres (outside: a meaningless default such as 72 dpi)
PIXEL_SIZE_RANGE = (0.02, 50.0)

_UNITS_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "micrometers": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6, "inch": 25400.0, "in": 25400.0,
}


def checked_pixel_size(value: Any) -> float | None:
    """``value`` as a float when it is a plausible pixel size in um, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or not PIXEL_SIZE_RANGE[0] <= number <= PIXEL_SIZE_RANGE[1]:
        return None
    return number


def unit_to_um(unit: Any) -> float | None:
    """Micrometres per ``unit`` ("um", "micrometer", "nm", a pint unit ...); None when it is
    not a length (pixels, seconds, unknown)."""
    if unit is None:
        return None
    text = str(unit).strip().lower().replace("\\u00b5", "µ")
    return _UNITS_UM.get(text)


def describe_pixel_size(value: float | None) -> str:
    return f"{value:.4g} um/px" if value else "pixel size unknown"


# --------------------------------------------------------------------------- files


def read_pixel_size(path: str | Path) -> float | None:
    """The pixel size in um recorded in an image file (TIFF family, OME-Zarr, PNG, JPEG),
    or None when the file records none (or an implausible one). Reads only the header."""
    p = Path(path)
    if p.is_dir():
        return _zarr_dir_pixel_size(p)
    suffix = p.name.lower()
    if suffix.endswith((".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".btf", ".tf8", ".qptiff")):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                return tiff_pixel_size(tif)
        except Exception as exc:  # noqa: BLE001 - not a readable TIFF: no pixel size
            logger.debug("no pixel size from %s: not a readable TIFF (%s)", p, exc)
            return None
    if suffix.endswith((".png", ".jpg", ".jpeg")):
        return _dpi_pixel_size(p)
    return None


def tiff_pixel_size(tif) -> float | None:
    """The pixel size of an open ``tifffile.TiffFile`` (its first page / series)."""
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    description = page.description or ""
    if getattr(tif, "is_ome", False) and tif.ome_metadata:
        value = _ome_xml_pixel_size(tif.ome_metadata)
        if value is not None:
            return value
    if getattr(tif, "is_svs", False) or description.startswith("Aperio"):
        match = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", description)
        if match:
            value = checked_pixel_size(match.group(1))
            if value is not None:
                return value
    x_resolution = _x_resolution(page)
    if x_resolution is None:
        return None
    if getattr(tif, "is_imagej", False) or description.startswith("ImageJ="):
        match = re.search(r"^unit=(.+)$", description, re.MULTILINE)
        factor = unit_to_um(match.group(1).strip().replace("\\u00B5", "µ")) if match else None
        if factor is not None:
            return checked_pixel_size(factor / x_resolution)
    unit = int(page.tags.valueof(296, default=2))  # ResolutionUnit: 1 none, 2 inch, 3 cm (4 mm, 5 um: nonstandard)
    per_unit_um = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(unit)
    if per_unit_um is None:
        return None
    return checked_pixel_size(per_unit_um / x_resolution)


def _x_resolution(page) -> float | None:
    tag = page.tags.get(282)  # XResolution: a rational (numerator, denominator)
    if tag is None:
        return None
    value = tag.value
    try:
        number = value[0] / value[1] if isinstance(value, tuple) else float(value)
    except (TypeError, ZeroDivisionError, IndexError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _ome_xml_pixel_size(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
        if not match:
            return None
        factor = unit_to_um(unit.group(1)) if unit else 1.0
        return checked_pixel_size(float(match.group(1)) * factor) if factor else None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels" and "PhysicalSizeX" in element.attrib:
            factor = unit_to_um(element.attrib.get("PhysicalSizeXUnit", "µm"))
            if factor is None:
                return None
            try:
                return checked_pixel_size(float(element.attrib["PhysicalSizeX"]) * factor)
            except ValueError:
                return None
    return None


def ome_zarr_pixel_size(multiscales: dict) -> float | None:
    """Pixel size of the first (full-resolution) dataset of one OME-Zarr ``multiscales``
    entry: its ``scale`` transform along x, in the x axis' unit."""
    axes = multiscales.get("axes") or []
    names = [a.get("name") if isinstance(a, dict) else a for a in axes] or ["y", "x"]
    if "x" not in names:
        return None
    ix = names.index("x")
    unit = axes[ix].get("unit") if axes and isinstance(axes[ix], dict) else None
    factor = unit_to_um(unit)
    datasets = multiscales.get("datasets") or []
    if factor is None or not datasets:
        return None
    for transform in datasets[0].get("coordinateTransformations", []):
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == len(names):
            return checked_pixel_size(float(transform["scale"][ix]) * factor)
    return None


def _zarr_dir_pixel_size(p: Path) -> float | None:
    try:
        import zarr

        group = zarr.open_group(str(p), mode="r")
        multiscales = group.attrs.get("multiscales") or group.attrs.get("ome", {}).get("multiscales")
    except Exception as exc:  # noqa: BLE001
        logger.debug("no pixel size from %s: not a readable OME-Zarr (%s)", p, exc)
        return None
    return ome_zarr_pixel_size(multiscales[0]) if multiscales else None


def _dpi_pixel_size(p: Path) -> float | None:
    try:
        from PIL import Image

        with Image.open(p) as image:
            dpi = image.info.get("dpi")
    except Exception as exc:  # noqa: BLE001
        logger.debug("no pixel size from %s: not a readable image (%s)", p, exc)
        return None
    if not dpi:
        return None
    try:
        x_dpi = float(dpi[0])
    except (TypeError, ValueError, IndexError):
        return None
    return checked_pixel_size(25400.0 / x_dpi) if x_dpi > 0 else None


# --------------------------------------------------------------------------- napari layers


def layer_pixel_size(layer) -> float | None:
    """The pixel size of a napari image layer in um: ``layer.scale`` along x when the
    layer's units along x are a length (napari >= 0.6 has ``layer.units``), else
    ``metadata["mpp"]`` (this plugin's reader), else what the file the layer was opened
    from records (napari's own reader keeps the scale at 1 px). Duck-typed: napari is not
    imported."""
    scale = getattr(layer, "scale", None)
    units = getattr(layer, "units", None)
    if scale is not None and units is not None and len(units) and len(scale):
        factor = unit_to_um(units[-1])
        if factor is not None:
            value = checked_pixel_size(float(scale[-1]) * factor)
            if value is not None:
                return value
    metadata = getattr(layer, "metadata", None) or {}
    value = checked_pixel_size(metadata.get("mpp")) if isinstance(metadata, dict) else None
    if value is not None:
        return value
    source = getattr(getattr(layer, "source", None), "path", None)
    if source and (scale is None or not len(scale) or float(scale[-1]) == 1.0):  # a rescaled layer: unknown
        return read_pixel_size(source)
    return None
