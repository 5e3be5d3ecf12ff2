"""Per-nucleus outlines and measurements of a whole slide, and their export.

The slide engine describes the objects each block owns (:func:`describe_objects`: a
polygon in level-0 pixel coordinates plus measurements) and keeps them beside the labels;
at the end they are streamed, block by block, to

* GeoJSON (:class:`GeoJSONWriter`): a ``FeatureCollection`` QuPath imports (*File >
  Import objects*): one ``Polygon`` per nucleus, coordinates in level-0 pixels (x right,
  y down, a pixel spans [x, x + 1)), ``properties`` with the id, ``objectType:
  "detection"``, a ``classification`` and the measurements (pixels, and um / um^2 when
  the pixel size is known);
* CSV (:class:`CSVWriter`): one row per nucleus; lengths and areas also in um and um^2
  when the pixel size is known.

Neither writer holds more than one block's objects in memory.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["describe_objects", "ObjectTable", "GeoJSONWriter", "CSVWriter", "MEASUREMENT_COLUMNS"]

#: measured per object (pixels of level 0; the CSV adds um columns when the pixel size is known)
MEASUREMENT_COLUMNS = ("centroid_x", "centroid_y", "area", "perimeter", "eccentricity", "solidity",
                       "major_axis_length", "minor_axis_length", "orientation", "bbox_x0", "bbox_y0", "bbox_x1",
                       "bbox_y1")
_LENGTHS = ("centroid_x", "centroid_y", "perimeter", "major_axis_length", "minor_axis_length")
#: outlines are simplified by this much (px; topology kept, so every polygon stays valid)
SIMPLIFY_PX = 0.3


class ObjectTable:
    """Outlines and measurements of some objects: ``keys`` (one per object), ``values``
    (objects x columns), and the polygons as one (P, 2) array of x, y with offsets."""

    def __init__(self, keys: np.ndarray, columns: list[str], values: np.ndarray, xy: np.ndarray,
                 offsets: np.ndarray, oversized: int = 0) -> None:
        self.keys, self.columns, self.values, self.xy, self.offsets = keys, columns, values, xy, offsets
        self.oversized = int(oversized)  # objects that reached the edge of the region they were seen in

    def __len__(self) -> int:
        return int(self.keys.size)

    def polygon(self, i: int) -> np.ndarray:
        return self.xy[self.offsets[i] : self.offsets[i + 1]]

    def save(self, path: Path) -> None:
        """Atomically (a block is done once its table exists: the engine's resume marker)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=self.keys, values=self.values, xy=self.xy, offsets=self.offsets,
                     columns=np.array(self.columns, dtype=str), oversized=np.int64(self.oversized))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ObjectTable:
        with np.load(path) as f:
            return cls(f["keys"], [str(c) for c in f["columns"]], f["values"], f["xy"], f["offsets"],
                       int(f["oversized"]))

    @classmethod
    def empty(cls, columns: list[str]) -> ObjectTable:
        return cls(np.zeros(0, np.uint64), columns, np.zeros((0, len(columns))), np.zeros((0, 2), np.float32),
                   np.zeros(1, np.int64))


def _outline(mask: np.ndarray) -> np.ndarray:
    """The outer boundary of a boolean object mask as a closed (N, 2) ring of (row, col)
    points on pixel edges (a pixel (r, c) spans [r - 0.5, r + 0.5])."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1).astype(np.float32)
    contours = find_contours(padded, 0.5)
    ring = max(contours, key=len) - 1.0  # undo the pad
    return ring


def _valid_polygon(ring_xy: np.ndarray) -> np.ndarray:
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    poly = Polygon(ring_xy)
    if not poly.is_valid:
        fixed = make_valid(poly)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
        poly = max(parts, key=lambda g: g.area) if parts else poly.convex_hull
    simple = poly.simplify(SIMPLIFY_PX, preserve_topology=True)
    if simple.is_valid and not simple.is_empty and simple.geom_type == "Polygon":
        poly = simple
    return np.asarray(poly.exterior.coords, dtype=np.float32)


def describe_objects(labels: np.ndarray, which: list[int], keys: np.ndarray, image: np.ndarray | None,
                     offset: tuple[int, int]) -> ObjectTable:
    """Outline and measure the objects ``which`` (ids in ``labels``, a crop whose top-left
    pixel is ``offset`` = (y, x) in level 0); ``keys[id]`` names each object. Coordinates
    are level-0 pixels, x right and y down, pixel (x, y) spanning [x, x + 1)."""
    from skimage.measure import regionprops

    channels = 0 if image is None else (1 if image.ndim == 2 else image.shape[-1])
    columns = list(MEASUREMENT_COLUMNS) + [f"mean_intensity_{c}" for c in
                                           (["grey"] if channels == 1 else ["r", "g", "b"][:channels])]
    if not which:
        return ObjectTable.empty(columns)
    wanted = set(int(i) for i in which)
    oy, ox = offset
    rows, rings, out_keys = [], [], []
    for region in regionprops(labels):
        if region.label not in wanted:
            continue
        r0, c0, r1, c1 = region.bbox
        cy, cx = region.centroid
        mask = region.image
        row = [cx + ox + 0.5, cy + oy + 0.5, float(region.area), float(region.perimeter),
               float(region.eccentricity), float(region.solidity), float(region.axis_major_length),
               float(region.axis_minor_length), float(region.orientation), c0 + ox, r0 + oy, c1 + ox, r1 + oy]
        if channels:
            pixels = image[r0:r1, c0:c1][mask].astype(np.float64)
            row += list(np.atleast_1d(pixels.mean(axis=0)))
        ring = _outline(mask)
        xy = np.stack([ring[:, 1] + c0 + ox + 0.5, ring[:, 0] + r0 + oy + 0.5], axis=1)
        rings.append(_valid_polygon(xy))
        rows.append(row)
        out_keys.append(keys[region.label])
    order = np.argsort(np.asarray(out_keys, np.uint64), kind="stable")
    rings = [rings[i] for i in order]
    offsets = np.zeros(len(rings) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rings])
    return ObjectTable(np.asarray(out_keys, np.uint64)[order], columns, np.asarray(rows, np.float64)[order],
                       np.concatenate(rings).astype(np.float32), offsets)


def _number(value: float):
    if not math.isfinite(value):
        return None
    return round(float(value), 3)


class _StreamingFile:
    """A file written through a temporary twin and renamed into place at ``close`` (atomic:
    a crash leaves the previous file, never half of a new one)."""

    def __init__(self, path: str | os.PathLike, **open_kwargs) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.fh = open(self.tmp, "w", encoding="utf-8", **open_kwargs)
        self.count = 0

    def _finish(self) -> Path:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _physical(table: ObjectTable, values: np.ndarray, mpp: float | None) -> dict[str, float | None]:
    """The lengths in um and the area in um^2 of one object (empty when the pixel size is unknown)."""
    if not mpp:
        return {}
    index = {c: k for k, c in enumerate(table.columns)}
    out = {f"{c}_um": _number(values[index[c]] * mpp) for c in _LENGTHS}
    out["area_um2"] = _number(values[index["area"]] * mpp ** 2)
    return out


def _pixel_header(columns) -> list[str]:
    return ["id"] + [f"{c}_px" if c in _LENGTHS or c == "area" else c for c in columns]


class GeoJSONWriter(_StreamingFile):
    """Streams a FeatureCollection to ``path`` (written to a temporary file, renamed at close)."""

    def __init__(self, path: str | os.PathLike, *, object_name: str = "nuclei", mpp: float | None = None) -> None:
        super().__init__(path)
        self.mpp = mpp
        self.classification = {"name": object_name.capitalize(), "color": [255, 255, 0]}
        self.fh.write('{"type": "FeatureCollection", "features": [\n')

    def add(self, ids: np.ndarray, table: ObjectTable) -> None:
        for i, object_id in enumerate(ids):
            ring = table.polygon(i)
            props = {"id": int(object_id), "objectType": "detection", "classification": self.classification}
            props["measurements"] = {c: _number(v) for c, v in zip(table.columns, table.values[i])}
            props["measurements"].update(_physical(table, table.values[i], self.mpp))
            feature = {"type": "Feature", "id": str(int(object_id)),
                       "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 2).tolist()]},
                       "properties": props}
            self.fh.write(("" if self.count == 0 else ",\n") + json.dumps(feature, separators=(",", ":")))
            self.count += 1

    def close(self) -> Path:
        self.fh.write("\n]}\n")
        return self._finish()


class CSVWriter(_StreamingFile):
    """Streams one row per object to ``path``: ``id``, the measurements in pixels, and the
    same in um / um^2 when the pixel size ``mpp`` is known."""

    def __init__(self, path: str | os.PathLike, *, mpp: float | None = None) -> None:
        super().__init__(path, newline="")
        self.writer = csv.writer(self.fh)
        self.mpp, self.header = mpp, None

    def add(self, ids: np.ndarray, table: ObjectTable) -> None:
        if self.header is None:
            self.header = _pixel_header(table.columns)
            if self.mpp:
                self.header += [f"{c}_um" for c in _LENGTHS] + ["area_um2"]
            self.writer.writerow(self.header)
        for i, object_id in enumerate(ids):
            values = table.values[i]
            row = [int(object_id)] + [_number(v) for v in values]
            row += list(_physical(table, values, self.mpp).values())
            self.writer.writerow(row)
            self.count += 1

    def close(self) -> Path:
        if self.header is None:
            self.writer.writerow(_pixel_header(MEASUREMENT_COLUMNS))
        return self._finish()
