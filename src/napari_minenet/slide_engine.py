"""Whole-slide segmentation in bounded memory: blocks, stitching, OME-Zarr labels, resume.

How a slide is segmented (:func:`segment_slide`):

1. a tissue mask is computed on a low-resolution level (:func:`~napari_minenet.slides.tissue_mask`);
   only blocks with tissue within a halo of them are computed: glass never reaches the network;
2. the normalisation (AdaBN) statistics are estimated once, from tiles spread over the
   tissue, and reused by every block, so all blocks are normalised alike;
3. every tissue block of the full-resolution level is read with a ``halo`` of context,
   run through the same per-tile inference as :func:`~napari_minenet.segmentation.segment`
   (:func:`~napari_minenet.inference.predict_with_network`) and split into instances with
   the same :func:`~napari_minenet.postprocess.labels_from_probability`, on the block
   plus ``halo - CONTEXT`` px (where the probabilities equal the whole-slide ones);
4. stitching without a merge step: every object is named by its *anchor*, its first pixel
   in raster order, in slide coordinates. Two blocks that both see a nucleus crossing
   their border see the same whole object and so the same anchor; each writes only its
   own pixels, with that name, and only the block holding the anchor outlines and measures
   it. Each nucleus therefore appears once, whole, under one id;
5. a block is written to a work array and its objects to a small table (the table is the
   block's "done" marker: a rerun skips finished blocks);
6. at the end the anchors, sorted (raster order), become ids 1..N, each block is
   renumbered into the uint32 OME-Zarr labels image (``labels/nuclei/0``), a pyramid is
   built for viewing, and the outlines and measurements are streamed to GeoJSON / CSV.

Blocks are dask ``delayed`` tasks (:func:`block_tasks`) run on dask's local threaded
scheduler; the same tasks run on ``dask.distributed`` (a worker reopens the slide by path).
Memory is a few blocks plus the sorted anchors (8 bytes per nucleus), whatever the size
of the slide. Objects larger than ``halo - CONTEXT`` px beyond a block border cannot be
seen whole by both blocks; they are counted (``oversized``) and may be cut.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .data import InputError, Normalizer
from .inference import (
    CancelCheck,
    Cancelled,
    ProgressCallback,
    adapt_to_tiles,
    predict_with_network,
    ready_network,
    select_device,
)
from .segmentation import labels_for
from .slide_export import CSVWriter, GeoJSONWriter, ObjectTable, describe_objects
from .slides import Slide, TissueMask, glass_pixels, open_slide, tissue_mask
from .zoo import SegmentationModel, load_model

logger = logging.getLogger(__name__)

__all__ = ["SlideOptions", "SlideResult", "SlideJob", "segment_slide", "plan_slide", "block_tasks", "finish_slide",
           "write_region", "CONTEXT", "LABELS_PATH"]

#: px of context the network's output needs to equal the whole-image output (receptive
#: field ~40 px, plus the tile blending margin)
CONTEXT = 64
#: where the labels image lives inside the output OME-Zarr
LABELS_PATH = "labels/nuclei"
#: chunk side of the labels arrays (level 0 and the pyramid)
CHUNK = 1024
_FORMAT_VERSION = 1


@dataclass
class SlideOptions:
    block_size: int = 2048  # px of level 0 per block (a multiple of 1024, or at most 1024)
    halo: int = 192  # px read around a block; objects up to halo - CONTEXT px past a border stay whole
    threshold: float | None = None  # defaults: the model card's
    min_size: int | None = None
    instances: bool | None = None
    use_contours: bool = True
    device: str = "auto"
    tile_size: int | None = None
    batch_size: int = 1
    precision: str = "fp32"
    workers: int = 1  # blocks computed at once (memory grows with it)

    def check(self) -> None:
        if self.block_size < 64 or (self.block_size > CHUNK and self.block_size % CHUNK):
            raise ValueError(f"block size {self.block_size}: use 64 to {CHUNK} px or a multiple of {CHUNK}")
        if not CONTEXT < self.halo <= self.block_size + CONTEXT:
            raise ValueError(f"halo {self.halo} must be more than {CONTEXT} px and at most the block size + {CONTEXT}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")


@dataclass
class SlideResult:
    zarr_path: Path
    labels_path: str  # inside the zarr
    shape: tuple[int, int]
    mpp: float | None
    count: int  # objects (nuclei), or 1 / 0 for masks
    blocks_total: int
    blocks_tissue: int
    blocks_computed: int  # in this run
    blocks_resumed: int  # finished by an earlier run
    tissue_fraction: float
    seconds: float
    oversized: int = 0
    outputs: list[Path] = field(default_factory=list)

    @property
    def labels_url(self) -> Path:
        return self.zarr_path / self.labels_path


@dataclass
class SlideJob:
    """Everything a block task needs (picklable for dask.distributed: the slide reopens by path)."""

    slide: Slide
    model: SegmentationModel
    network: object  # the prepared (BN-adapted, folded) network, shared by all blocks
    normalizer: Normalizer
    options: SlideOptions
    zarr_path: Path
    work: Path
    mask: TissueMask
    threshold: float
    min_size: int
    instances: bool
    device: object
    cancel: CancelCheck | None = None
    on_block: Callable[[], None] | None = None
    _keys: object = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.slide.shape

    def blocks(self) -> list[tuple[int, int, int, int, int, int]]:
        h, w = self.shape
        b = self.options.block_size
        return [(by, bx, by * b, min(h, by * b + b), bx * b, min(w, bx * b + b))
                for by in range(math.ceil(h / b)) for bx in range(math.ceil(w / b))]

    def tissue_blocks(self) -> list[tuple[int, int, int, int, int, int]]:
        margin = self.options.halo
        return [blk for blk in self.blocks() if self.mask.any_in(blk[2], blk[3], blk[4], blk[5], margin)]

    def table_path(self, block) -> Path:
        return self.work / "blocks" / f"{block[0]}_{block[1]}.npz"

    @property
    def keys(self):
        if self._keys is None:
            import zarr

            self._keys = zarr.open_array(str(self.work / "anchors"), mode="r+")
        return self._keys

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_keys=None, cancel=None, on_block=None)
        return state


# --------------------------------------------------------------------------- planning


def _fingerprint(slide: Slide, model: SegmentationModel, opts: SlideOptions, threshold, min_size, instances,
                 statistics_tiles=None) -> dict:
    import hashlib

    card = model.card
    statistics = "tissue sample"
    if statistics_tiles is not None:
        digest = hashlib.sha256()
        for tile in statistics_tiles:
            digest.update(np.ascontiguousarray(tile).tobytes())
        statistics = digest.hexdigest()
    return {"version": _FORMAT_VERSION, "slide": str(slide.path or slide.name), "shape": list(slide.shape),
            "model": card.name, "weights": getattr(card, "weights_sha256", "") or str(model.path or ""),
            "threshold": threshold, "min_size": min_size, "instances": instances,
            "use_contours": opts.use_contours, "block_size": opts.block_size, "halo": opts.halo,
            "tile_size": opts.tile_size, "precision": opts.precision, "statistics": statistics}


#: the normalisation statistics of a slide come from this many pixels of tissue, in tiles of
#: this size: statistics from small tiles differ from those of a whole image (zero padding at
#: every tile edge); measured against ``segment()`` on a 512 px tile, statistics from 16
#: tiles of 256 px gave pixel F1 0.94 / AJI 0.78, from 4 or 8 tiles of 512 px 0.99 / 0.97
#: and 1.00 / 1.00. 8 x 512^2 px peak at ~0.9 GB during that one pass.
SLIDE_SAMPLE_TILE = 512
SLIDE_SAMPLE_PIXELS = 8 * 512 * 512


def _sample_tiles(slide: Slide, mask: TissueMask, tile: int = SLIDE_SAMPLE_TILE,
                  max_pixels: int = SLIDE_SAMPLE_PIXELS) -> list[np.ndarray]:
    """Tiles for the normalisation statistics: ``tile``-px squares on tissue, spread evenly
    over it (deterministic). Four times as many candidates as needed are read; the tiles are
    spread evenly over the candidates that are mostly tissue (:func:`glass_pixels` < 50 %),
    since glass in the sample shifts the statistics (measured: pixel F1 0.83 against 0.98
    between a tile segmented with and without 128 px of glass around it), but not chosen
    by how much tissue they hold, which biases them towards dense regions (F1 0.90)."""
    h, w = slide.shape
    t = min(tile, h, w)
    n = max(1, max_pixels // (t * t))
    radius = int(math.ceil(t / 2 / mask.downsample))
    inner = ndi.binary_erosion(mask.mask, iterations=radius) if radius else mask.mask
    ys, xs = np.nonzero(inner if inner.any() else mask.mask)
    if ys.size == 0:
        return []
    picks = np.unique(np.round(np.linspace(0, ys.size - 1, min(4 * n, ys.size))).astype(int))
    candidates = []
    for i in picks:
        cy, cx = (ys[i] + 0.5) * mask.downsample, (xs[i] + 0.5) * mask.downsample
        y0 = int(min(max(0, cy - t // 2), h - t))
        x0 = int(min(max(0, cx - t // 2), w - t))
        pixels = slide.read(y0, y0 + t, x0, x0 + t)
        candidates.append((float(glass_pixels(pixels).mean()), pixels))
    full = [c for c in candidates if c[0] < 0.05]
    if len(full) < n:  # not enough: those with the least glass, in their order on the slide
        order = sorted(range(len(candidates)), key=lambda i: (candidates[i][0], i))[:n]
        return [candidates[i][1] for i in sorted(order)]
    keep = np.unique(np.round(np.linspace(0, len(full) - 1, n)).astype(int))
    return [full[i][1] for i in keep]


def _save_network_state(network, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def _load_network_state(model: SegmentationModel, path: Path):
    from safetensors.torch import load_file

    net = copy.deepcopy(model.network)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def _create_array(group, name: str, shape, chunks, dtype):
    import numcodecs

    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True,
                              compressors=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE))


def plan_slide(slide: Slide, model: SegmentationModel, out: Path, options: SlideOptions, *,
               cancel: CancelCheck | None = None,
               statistics_tiles: list[np.ndarray] | None = None) -> tuple[SlideJob, dict]:
    """The job for ``slide``: tissue mask, statistics, work folder. Reuses an unfinished run
    with the same settings (resume); starts over when the settings differ.
    ``statistics_tiles`` replaces the tissue sample the normalisation statistics come from."""
    import zarr

    card = model.card
    if card.working_long_side:
        raise InputError(f"model {card.name!r} resizes whole images to {card.working_long_side} px; it cannot "
                         "segment a slide block by block")
    options.check()
    threshold = card.default_threshold if options.threshold is None else float(options.threshold)
    min_size = card.min_size if options.min_size is None else int(options.min_size)
    instances = card.instances if options.instances is None else bool(options.instances)
    fingerprint = _fingerprint(slide, model, options, threshold, min_size, instances, statistics_tiles)
    work = out.with_name(f".{out.name}.work")
    run_file = work / "run.json"
    resumed = False
    if run_file.is_file():
        try:
            resumed = json.loads(run_file.read_text())["fingerprint"] == fingerprint
        except (OSError, ValueError, KeyError) as exc:
            logger.info("not resuming %s: its run record is unreadable (%s)", work, exc)
            resumed = False
    if not resumed:
        if run_file.is_file():
            logger.info("starting %s afresh: the unfinished run there had other settings", out)
        shutil.rmtree(work, ignore_errors=True)
        (work / "blocks").mkdir(parents=True)
    device = select_device(options.device)
    mask = tissue_mask(slide)
    if resumed:
        info = json.loads(run_file.read_text())
        normalizer = Normalizer(np.asarray(info["normalizer"]["scale"], np.float32),
                                np.asarray(info["normalizer"]["offset"], np.float32), info["normalizer"]["prescale"])
        adapted = _load_network_state(model, work / "network.safetensors")
    else:
        tiles = _sample_tiles(slide, mask) if statistics_tiles is None else list(statistics_tiles)
        sample = np.concatenate(tiles, axis=0) if tiles else slide.read(0, min(256, slide.shape[0]), 0,
                                                                          min(256, slide.shape[1]))
        normalizer = Normalizer.for_image(sample, card.normalization, card.in_channels)
        adapted = adapt_to_tiles(model, tiles, normalizer, device) if tiles else model.network
        _save_network_state(adapted, work / "network.safetensors")
        root = zarr.open_group(str(work), mode="a", zarr_format=2)
        _create_array(root, "anchors", slide.shape, (options.block_size,) * 2, np.uint64)
        info = {"fingerprint": fingerprint, "normalizer": {"scale": normalizer.scale.tolist(),
                                                           "offset": normalizer.offset.tolist(),
                                                           "prescale": normalizer.prescale}}
        tmp = run_file.with_name(".run.json.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(run_file)
    job = SlideJob(slide, model, ready_network(adapted, device), normalizer, options, out, work, mask, threshold,
                   min_size, instances, device, cancel)
    return job, {"resumed": resumed, "fingerprint": fingerprint}


# --------------------------------------------------------------------------- one block


def _check_cancel(job: SlideJob) -> None:
    if job.cancel is not None and job.cancel():
        raise Cancelled()


def process_block(job: SlideJob, block) -> int:
    """Segment one block; returns the number of objects it owns. Skips a finished block."""
    table_path = job.table_path(block)
    if table_path.exists():
        return -1
    _check_cancel(job)
    _, _, y0, y1, x0, x1 = block
    h, w = job.shape
    halo, margin = job.options.halo, job.options.halo - CONTEXT
    ey0, ey1, ex0, ex1 = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
    image = job.slide.read(ey0, ey1, ex0, ex1)
    card = job.model.card
    probs = predict_with_network(image, job.model, job.network, job.normalizer, device=job.device,
                                 tile_size=job.options.tile_size, batch_size=job.options.batch_size,
                                 precision=job.options.precision, cancel=job.cancel)
    oy0, oy1, ox0, ox1 = max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)
    view = (slice(oy0 - ey0, oy1 - ey0), slice(ox0 - ex0, ox1 - ex0))
    contour = probs[1][view] if card.has_contours and job.options.use_contours else None
    labels = labels_for(probs[0][view], contour, card, job.threshold, job.instances, job.min_size)
    del probs
    core = (slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0))
    if not job.instances:
        job.keys[y0:y1, x0:x1] = labels[core].astype(np.uint64)
        ObjectTable.empty([]).save(table_path)
        return 0
    n = int(labels.max(initial=0))
    keys = np.zeros(n + 1, np.uint64)
    owned, oversized = [], 0
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == k
        r, c = divmod(int(np.argmax(obj.ravel())), obj.shape[1])
        gy, gx = oy0 + sl[0].start + r, ox0 + sl[1].start + c
        keys[k] = np.uint64(gy) * np.uint64(w) + np.uint64(gx) + np.uint64(1)
        if y0 <= gy < y1 and x0 <= gx < x1:
            owned.append(k)
            cut = ((sl[0].start == 0 and oy0 > 0) or (sl[0].stop == labels.shape[0] and oy1 < h)
                   or (sl[1].start == 0 and ox0 > 0) or (sl[1].stop == labels.shape[1] and ox1 < w))
            oversized += int(cut)
    job.keys[y0:y1, x0:x1] = keys[labels[core]]
    table = describe_objects(labels, owned, keys, image[view], (oy0, ox0))
    table.oversized = oversized
    table.save(table_path)
    return len(owned)


# --------------------------------------------------------------------------- the graph


def block_tasks(job: SlideJob, blocks) -> list:
    """One dask ``delayed`` task per block (pure=False: each writes its part of the output).
    Compute them with any dask scheduler; :func:`finish_slide` then assembles the result."""
    import dask

    return [dask.delayed(process_block, pure=False)(job, blk, dask_key_name=f"minenet-block-{blk[0]}-{blk[1]}")
            for blk in blocks]


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
        dst = _create_array(group, str(len(arrays)), src.shape, (CHUNK, CHUNK), np.uint32)
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
    level0 = _create_array(group, "0", job.shape, (side, side), np.uint32)
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


# --------------------------------------------------------------------------- the whole run


def _complete_marker(path: Path) -> dict | None:
    import zarr

    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.get("minenet")
    except Exception as exc:  # noqa: BLE001 - no (complete) output yet
        logger.debug("no complete output at %s (%s)", path, exc)
        return None
    return attrs if isinstance(attrs, dict) and attrs.get("complete") else None


def segment_slide(
    slide: Slide | str | Path,
    model: SegmentationModel | str,
    out: str | Path,
    *,
    options: SlideOptions | None = None,
    geojson: str | Path | None = None,
    csv: str | Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    statistics_tiles: list[np.ndarray] | None = None,
) -> SlideResult:
    """Segment a whole slide into the OME-Zarr ``out`` (labels under ``labels/nuclei``).

    ``progress(done, total)`` counts tissue blocks (blocks finished by an earlier run count
    as done); ``cancel()`` is checked between tiles (raises :class:`Cancelled`; finished
    blocks are kept and the next run resumes from them). A finished output with the same
    settings is not recomputed. ``statistics_tiles`` (raw pixels, all the same shape)
    replaces the tissue sample the normalisation statistics come from.
    """
    started = time.monotonic()
    opened = not isinstance(slide, Slide)
    slide = open_slide(slide) if opened else slide
    try:
        model = load_model(model) if not isinstance(model, SegmentationModel) else model
        options = copy.copy(options) if options is not None else SlideOptions()
        out = Path(out)
        geojson = Path(geojson) if geojson is not None else None
        csv = Path(csv) if csv is not None else None
        done_info = _complete_marker(out)
        if done_info is not None and done_info.get("fingerprint") == _fingerprint(
                slide, model, options, *_resolved(model, options), statistics_tiles) and all(
                p is None or p.exists() for p in (geojson, csv)):
            if progress is not None:
                progress(done_info["blocks_tissue"], done_info["blocks_tissue"])
            return SlideResult(out, LABELS_PATH, slide.shape, slide.mpp, done_info["count"],
                               done_info["blocks_total"], done_info["blocks_tissue"], 0, done_info["blocks_tissue"],
                               done_info["tissue_fraction"], time.monotonic() - started,
                               outputs=[out] + [p for p in (geojson, csv) if p is not None])
        job, info = plan_slide(slide, model, out, options, cancel=cancel, statistics_tiles=statistics_tiles)
        blocks = job.tissue_blocks()
        todo = [b for b in blocks if not job.table_path(b).exists()]
        resumed = len(blocks) - len(todo)
        lock = threading.Lock()
        state = {"done": resumed}

        def block_done(result: int) -> None:
            with lock:
                state["done"] += 1
                done = state["done"]
            if progress is not None:
                progress(done, len(blocks))

        if progress is not None:
            progress(resumed, len(blocks))
        _run_blocks(job, todo, block_done)
        _check_cancel(job)
        count, lost, oversized, outputs = finish_slide(job, geojson=geojson, csv=csv)
        result = SlideResult(out, LABELS_PATH, slide.shape, slide.mpp, count, len(job.blocks()), len(blocks),
                             len(todo), resumed, job.mask.fraction, time.monotonic() - started, oversized, outputs)
        import zarr

        root = zarr.open_group(str(out), mode="a", zarr_format=2)
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()
                  if k not in ("outputs", "zarr_path")}
        record.update(complete=True, fingerprint=info["fingerprint"], unlabelled_pixels=lost,
                      source=str(slide.path) if slide.path else slide.name, model=model.card.name)
        root.attrs["minenet"] = json.loads(json.dumps(record, default=str))
        shutil.rmtree(job.work, ignore_errors=True)
        return result
    finally:
        if opened:
            slide.close()


def _resolved(model: SegmentationModel, options: SlideOptions) -> tuple[float, int, bool]:
    card = model.card
    return (card.default_threshold if options.threshold is None else float(options.threshold),
            card.min_size if options.min_size is None else int(options.min_size),
            card.instances if options.instances is None else bool(options.instances))


def _run_blocks(job: SlideJob, todo, on_done: Callable[[int], None]) -> None:
    """Run the block tasks on dask's threaded scheduler, reporting each finished block."""
    import dask
    from dask.callbacks import Callback

    if not todo:
        return
    keys = {f"minenet-block-{b[0]}-{b[1]}" for b in todo}

    class _Report(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in keys:
                on_done(result)

    with _Report():
        dask.compute(*block_tasks(job, todo), scheduler="threads", num_workers=job.options.workers)


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
