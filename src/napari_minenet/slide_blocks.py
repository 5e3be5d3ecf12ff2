"""Whole slides, block by block: the options, the job every block task shares, planning a run
(tissue mask, normalisation statistics, the work folder a rerun resumes from) and
segmenting one block into anchors and an object table. See ``slide_engine`` for the whole
method; ``slide_stitching`` turns the finished blocks into the labels image.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .data import InputError, Normalizer
from .inference import CancelCheck, Cancelled, adapt_to_tiles, predict_with_network, ready_network, select_device
from .segmentation import labels_for
from .slide_export import ObjectTable, describe_objects
from .slides import Slide, TissueMask, glass_pixels, tissue_mask
from .zoo import SegmentationModel

logger = logging.getLogger(__name__)

__all__ = ["SlideOptions", "SlideJob", "plan_slide", "process_block", "block_tasks", "block_key", "run_fingerprint",
           "check_cancel", "create_array", "worker_loads", "CONTEXT", "LABELS_PATH", "CHUNK", "SLIDE_SAMPLE_TILE",
           "SLIDE_SAMPLE_PIXELS"]

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
    token: str = ""  # names this run (settings + output): task keys, the workers' cache
    _keys: object = None
    _remote: dict | None = None  # unpickled: what :meth:`ready` loads (slide, model, network)

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

    def __reduce__(self):
        """Pickled (dask.distributed) as what a worker cannot find itself: settings, paths, the
        card and the normalisation. A worker opens the slide by its path and loads the
        prepared network from the work folder (``network.safetensors``, written by
        :func:`plan_slide`) once per run, not per block (:meth:`ready`), not where it is only
        unpickled (dask's scheduler). A slide without a file travels whole. The tissue mask
        stays with the client."""
        if self._remote is not None:
            return _restore_job, (self._remote,)
        state = {name: getattr(self, name) for name in ("options", "zarr_path", "work", "threshold", "min_size",
                                                        "instances", "token", "normalizer")}
        state["card"] = self.model.card
        state["slide"] = self.slide.path if self.slide.path is not None else self.slide
        return _restore_job, (state,)

    def ready(self) -> SlideJob:
        """This job, with the slide, model and network of an unpickled one loaded from the
        process's cache (the first block of a run on a worker loads them); returns self."""
        if self._remote is not None:
            self.slide, self.model, self.network, self.device = _worker_run(self._remote)
            self._remote = None
        return self


# --------------------------------------------------------------------------- on a worker

#: per process: run token -> (slide, model, prepared network, device); a few runs at most
_WORKER_RUNS: dict[str, tuple] = {}
_WORKER_LOCK = threading.Lock()
_WORKER_LOADS = [0]
_WORKER_KEEP = 4


def worker_loads() -> int:
    """How many times this process loaded a run's network (the slide engine's own counter:
    once per run and worker process, whatever the number of blocks)."""
    return _WORKER_LOADS[0]



def _restore_job(state: dict) -> SlideJob:
    """An unpickled job: settings only, until :meth:`SlideJob.ready` (a block) needs the rest."""
    return SlideJob(None, None, None, state["normalizer"], state["options"], state["zarr_path"],  # type: ignore[arg-type]
                    state["work"], None, state["threshold"], state["min_size"], state["instances"], None,
                    token=state["token"], _remote=state)



def _worker_run(state: dict) -> tuple:
    """(slide, model, prepared network, device) of a run in this process, loaded once per
    run (the slide reopened if someone closed it)."""
    from .slides import open_slide

    token = f"{state['token']}:{state['work']}"
    with _WORKER_LOCK:
        cached = _WORKER_RUNS.get(token)
        if cached is not None and cached[0].path is not None and cached[0]._handle is None \
                and not cached[0].path.is_dir():
            cached = None  # closed by someone: open it again
        if cached is None:
            source = state["slide"]
            slide = open_slide(source) if isinstance(source, Path) else source
            card = state["card"]
            model = SegmentationModel(_load_network_state(SegmentationModel.new(card), state["work"] /
                                                          "network.safetensors"), card)
            device = select_device(state["options"].device)
            cached = (slide, model, ready_network(model.network, device), device)
            _WORKER_LOADS[0] += 1
            while len(_WORKER_RUNS) >= _WORKER_KEEP:
                _WORKER_RUNS.pop(next(iter(_WORKER_RUNS)))
            _WORKER_RUNS[token] = cached
    return cached


# --------------------------------------------------------------------------- planning


def run_fingerprint(slide: Slide, model: SegmentationModel, opts: SlideOptions, threshold, min_size, instances,
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



def create_array(group, name: str, shape, chunks, dtype):
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
    fingerprint = run_fingerprint(slide, model, options, threshold, min_size, instances, statistics_tiles)
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
        create_array(root, "anchors", slide.shape, (options.block_size,) * 2, np.uint64)
        info = {"fingerprint": fingerprint, "normalizer": {"scale": normalizer.scale.tolist(),
                                                           "offset": normalizer.offset.tolist(),
                                                           "prescale": normalizer.prescale}}
        tmp = run_file.with_name(".run.json.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(run_file)
    import hashlib

    token = hashlib.sha256(json.dumps([fingerprint, str(out.resolve())], sort_keys=True).encode()).hexdigest()[:16]
    job = SlideJob(slide, model, ready_network(adapted, device), normalizer, options, out, work, mask, threshold,
                   min_size, instances, device, cancel, token=token)
    return job, {"resumed": resumed, "fingerprint": fingerprint}


# --------------------------------------------------------------------------- one block


def check_cancel(job: SlideJob) -> None:
    if job.cancel is not None and job.cancel():
        raise Cancelled()



def process_block(job: SlideJob, block) -> int:
    """Segment one block; returns the number of objects it owns. Skips a finished block.

    Writes in this order: the block's anchors (exactly one chunk of the work array; zarr
    3.1's local store writes it to a temporary file and renames it), then its object table
    (atomically, :meth:`ObjectTable.save`): the "done" marker. A block stopped at any point
    has no table and is computed again, by a rerun or by another dask worker; nothing reads
    a block's anchors before its table exists, so a half-written chunk is never used."""
    table_path = job.table_path(block)
    if table_path.exists():
        return -1
    job = job.ready()
    check_cancel(job)
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



def block_key(job: SlideJob, block) -> str:
    """The dask key of a block's task: unique per run, so slides of a cohort share a cluster."""
    return f"minenet-block-{job.token}-{block[0]}-{block[1]}"



def block_tasks(job: SlideJob, blocks) -> list:
    """One dask ``delayed`` task per block (pure=False: each writes its part of the output).
    Compute them with any dask scheduler (threads, or dask.distributed: see ``slide_cluster``);
    :func:`finish_slide` then assembles the result."""
    import dask

    return [dask.delayed(process_block, pure=False)(job, blk, dask_key_name=block_key(job, blk)) for blk in blocks]

