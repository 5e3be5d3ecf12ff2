"""Whole slides, after the blocks: anchors become ids 1..N, written block by block into the
OME-Zarr labels image with a pyramid for viewing, and the objects streamed to GeoJSON / CSV
(:func:`finish_slide`); corrections are written back with :func:`write_region`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .slide_blocks import CHUNK, LABELS_PATH, SlideJob, create_array
from .slide_export import CSVWriter, GeoJSONWriter, ObjectTable

__all__ = ["finish_slide", "write_region"]


def _anchor_table(job: SlideJob, blocks) -> np.ndarray:
    keys = [ObjectTable.load(job.table_path(b)).keys for b in blocks]
    table = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    table.sort()
    return table



def _renumber_block(job: SlideJob, level0, block, table: np.ndarray) -> tuple[int, int]:
    """Anchors -> ids 1..N for one block; returns (labelled pixels, pixels whose anchor no
    block owns: left unlabelled)."""
    _, _, y0, y1, x0, x1 = block
    anchors = np.asarray(job.keys[y0:y1, x0:x1])
    if not job.instances:
        level0[y0:y1, x0:x1] = (anchors > 0).astype(np.uint32)
        return int(np.count_nonzero(anchors)), 0
    if table.size == 0:
        return 0, int(np.count_nonzero(anchors))
    pos = np.searchsorted(table, anchors)
    pos_c = np.minimum(pos, table.size - 1)
    found = (table[pos_c] == anchors) & (anchors > 0)
    level0[y0:y1, x0:x1] = np.where(found, pos_c + 1, 0).astype(np.uint32)
    return int(np.count_nonzero(found)), int(np.count_nonzero((anchors > 0) & ~found))



def _write_pyramid(group, level0, mpp: float | None, workers: int) -> list:
    import dask
    import dask.array as da

    arrays = [level0]
    while max(arrays[-1].shape) > CHUNK:
        src = da.from_zarr(arrays[-1])[::2, ::2]
        dst = create_array(group, str(len(arrays)), src.shape, (CHUNK, CHUNK), np.uint32)
        dask.compute(da.store(src.rechunk((CHUNK, CHUNK)), dst, lock=False, compute=False), scheduler="threads",
                     num_workers=workers)
        arrays.append(dst)
    return arrays



def _ome_metadata(n_levels: int, mpp: float | None, name: str) -> dict:
    unit = {"unit": "micrometer"} if mpp else {}
    base = mpp or 1.0
    return {
        "multiscales": [{
            "version": "0.4", "name": name,
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [{"path": str(i), "coordinateTransformations": [
                {"type": "scale", "scale": [base * 2 ** i, base * 2 ** i]}]} for i in range(n_levels)],
            "metadata": {"method": "numpy strided slicing [::2, ::2] (nearest)"},
        }],
        "image-label": {"version": "0.4", "source": {"image": "../../"}},
    }



def finish_slide(job: SlideJob, *, geojson: Path | None = None,
                 csv: Path | None = None) -> tuple[int, int, int, list]:
    """Ids, the OME-Zarr labels image with its pyramid, then GeoJSON / CSV; returns
    (objects, pixels left unlabelled because their object was too large, objects that
    reached the edge of the region they were seen in, outputs)."""
    import dask
    import zarr

    blocks = job.tissue_blocks()
    table = _anchor_table(job, blocks) if job.instances else np.zeros(0, np.uint64)
    root = zarr.open_group(str(job.zarr_path), mode="w", zarr_format=2)
    name = LABELS_PATH.rsplit("/", 1)[-1]
    labels_group = root.create_group("labels")
    labels_group.attrs["labels"] = [name]
    group = labels_group.create_group(name)
    side = min(CHUNK, job.options.block_size)  # every chunk is written by exactly one block
    level0 = create_array(group, "0", job.shape, (side, side), np.uint32)
    pixels = dask.compute(*[dask.delayed(_renumber_block, pure=False)(job, level0, b, table) for b in blocks],
                          scheduler="threads", num_workers=job.options.workers)
    lost = sum(p[1] for p in pixels)
    arrays = _write_pyramid(group, level0, job.slide.mpp, job.options.workers)
    group.attrs.update(_ome_metadata(len(arrays), job.slide.mpp, name))
    outputs = [job.zarr_path]
    writers = []
    if job.instances and geojson is not None:
        writers.append(GeoJSONWriter(geojson, object_name=job.model.card.object_name, mpp=job.slide.mpp))
    if job.instances and csv is not None:
        writers.append(CSVWriter(csv, mpp=job.slide.mpp))
    oversized = 0
    try:
        for b in blocks:
            objects = ObjectTable.load(job.table_path(b))
            oversized += objects.oversized
            if len(objects):
                ids = np.searchsorted(table, objects.keys) + 1
                for writer in writers:
                    writer.add(ids, objects)
        outputs += [writer.close() for writer in writers]
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    count = int(table.size) if job.instances else int(sum(p[0] for p in pixels) > 0)
    return count, int(lost), oversized, outputs



def write_region(zarr_path: str | Path, offset: tuple[int, int], labels: np.ndarray) -> None:
    """Write corrected labels of a box (top-left ``offset`` = (y, x) in level 0) into a slide's
    labels image, and the matching boxes of every pyramid level (level k is level 0 sampled
    every 2^k px). The GeoJSON / CSV written with the slide are not changed."""
    import zarr

    group = zarr.open_group(str(Path(zarr_path) / LABELS_PATH), mode="r+")
    paths = [d["path"] for d in group.attrs["multiscales"][0]["datasets"]]
    level0 = group[paths[0]]
    y0, x0 = (int(v) for v in offset)
    labels = np.asarray(labels)
    if labels.ndim != 2 or y0 < 0 or x0 < 0 or y0 + labels.shape[0] > level0.shape[0] or \
            x0 + labels.shape[1] > level0.shape[1]:
        raise ValueError(f"labels {labels.shape} at {offset} do not fit the slide's {level0.shape}")
    y1, x1 = y0 + labels.shape[0], x0 + labels.shape[1]
    level0[y0:y1, x0:x1] = labels.astype(np.uint32)
    for k, path in enumerate(paths[1:], start=1):
        step = 2 ** k
        ky0, kx0, ky1, kx1 = y0 // step, x0 // step, -(-y1 // step), -(-x1 // step)
        group[path][ky0:ky1, kx0:kx1] = np.asarray(level0[ky0 * step : ky1 * step : step, kx0 * step : kx1 * step : step])

