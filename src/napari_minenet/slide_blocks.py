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

from .allocator import release_memory
from .data import InputError, Normalizer
from .inference import CancelCheck, Cancelled, predict_with_network, ready_network, select_device
from .segmentation import labels_for
from .slide_export import ObjectTable, describe_objects
from .slide_statistics import TissuePieces, estimate_statistics
from .slides import Slide, TissueMask, tissue_mask
from .tiling import network_grid
from .zoo import SegmentationModel

logger = logging.getLogger(__name__)

__all__ = ["SlideOptions", "SlideJob", "plan_slide", "process_block", "block_tasks", "block_key", "run_fingerprint",
           "check_cancel", "create_array", "worker_loads", "CONTEXT", "LABELS_PATH", "CHUNK"]

#: px of context the network's output needs to equal the whole-image output (receptive
#: field ~40 px, plus the tile blending margin)
CONTEXT = 64
#: where the labels image lives inside the output OME-Zarr
LABELS_PATH = "labels/nuclei"
#: chunk side of the labels arrays (level 0 and the pyramid)
CHUNK = 1024
_FORMAT_VERSION = 2  # 2: normalisation statistics per piece of tissue


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
    #: "piece": every separate piece of tissue is normalised with its own statistics
    #: (``slide_statistics``); "slide": one set for the whole slide
    statistics: str = "piece"

    def check(self) -> None:
        if self.block_size < 64 or (self.block_size > CHUNK and self.block_size % CHUNK):
            raise ValueError(f"block size {self.block_size}: use 64 to {CHUNK} px or a multiple of {CHUNK}")
        if not CONTEXT < self.halo <= self.block_size + CONTEXT:
            raise ValueError(f"halo {self.halo} must be more than {CONTEXT} px and at most the block size + {CONTEXT}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")
        if self.statistics not in ("piece", "slide"):
            raise ValueError(f"statistics must be 'piece' or 'slide', not {self.statistics!r}")


@dataclass
class SlideJob:
    """Everything a block task needs (picklable for dask.distributed: the slide reopens by path)."""

    slide: Slide
    model: SegmentationModel
    #: the prepared (BN-adapted, folded) networks and their normalisers: entry 0 the
    #: slide-wide statistics, entry k those of tissue piece k (see ``pieces``)
    networks: list
    normalizers: list[Normalizer]
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
    pieces: TissuePieces | None = None  # which statistics each pixel uses (None: entry 0 everywhere)
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
        prepared networks from the work folder (``network*.safetensors``, written by
        :func:`plan_slide`) once per run, not per block (:meth:`ready`), not where it is only
        unpickled (dask's scheduler). A slide without a file travels whole. The tissue mask
        stays with the client."""
        if self._remote is not None:
            return _restore_job, (self._remote,)
        state = {name: getattr(self, name) for name in ("options", "zarr_path", "work", "threshold", "min_size",
                                                        "instances", "token", "normalizers", "pieces")}
        state["card"] = self.model.card
        state["slide"] = self.slide.path if self.slide.path is not None else self.slide
        return _restore_job, (state,)

    def ready(self) -> SlideJob:
        """This job, with the slide, model and network of an unpickled one loaded from the
        process's cache (the first block of a run on a worker loads them); returns self."""
        if self._remote is not None:
            self.slide, self.model, self.networks, self.device = _worker_run(self._remote)
            self._remote = None
        return self


# --------------------------------------------------------------------------- on a worker

#: per process: run token -> (slide, model, prepared networks, device); a few runs at most
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
    return SlideJob(None, None, None, state["normalizers"], state["options"], state["zarr_path"],  # type: ignore[arg-type]
                    state["work"], None, state["threshold"], state["min_size"], state["instances"], None,
                    token=state["token"], pieces=state["pieces"], _remote=state)


def _worker_run(state: dict) -> tuple:
    """(slide, model, prepared networks, device) of a run in this process, loaded once per
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
            base = SegmentationModel.new(card)
            nets = [_load_network_state(base, _network_path(state["work"], k)) for k in range(len(state["normalizers"]))]
            model = SegmentationModel(nets[0], card)
            device = select_device(state["options"].device)
            cached = (slide, model, [ready_network(net, device, state["options"].precision) for net in nets], device)
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
    statistics = f"tissue sample, per {opts.statistics}"
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


def _save_network_state(network, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def _network_path(work: Path, k: int) -> Path:
    return work / ("network.safetensors" if k == 0 else f"network_{k}.safetensors")


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
        normalizers = [Normalizer(np.asarray(n["scale"], np.float32), np.asarray(n["offset"], np.float32),
                                  n["prescale"]) for n in info["normalizers"]]
        networks = [_load_network_state(model, _network_path(work, k)) for k in range(len(normalizers))]
        pieces = TissuePieces.load(work / "pieces.npz")
    else:
        pieces, estimates = estimate_statistics(slide, mask, model, device, per_piece=options.statistics == "piece",
                                                statistics_tiles=statistics_tiles)
        networks, normalizers = [e[0] for e in estimates], [e[1] for e in estimates]
        release_memory()  # (the statistics passes' buffers)
        for k, net in enumerate(networks):
            _save_network_state(net, _network_path(work, k))
        if pieces is not None:
            pieces.save(work / "pieces.npz")
        root = zarr.open_group(str(work), mode="a", zarr_format=2)
        create_array(root, "anchors", slide.shape, (options.block_size,) * 2, np.uint64)
        info = {"fingerprint": fingerprint, "normalizers": [
            {"scale": n.scale.tolist(), "offset": n.offset.tolist(), "prescale": n.prescale} for n in normalizers]}
        tmp = run_file.with_name(".run.json.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(run_file)  # (written last: a run without it starts afresh)
    import hashlib

    token = hashlib.sha256(json.dumps([fingerprint, str(out.resolve())], sort_keys=True).encode()).hexdigest()[:16]
    job = SlideJob(slide, model, [ready_network(net, device, options.precision) for net in networks], normalizers, options, out, work,
                   mask, threshold, min_size, instances, device, cancel, token=token, pieces=pieces)
    return job, {"resumed": resumed, "fingerprint": fingerprint}


# --------------------------------------------------------------------------- one block


def check_cancel(job: SlideJob) -> None:
    if job.cancel is not None and job.cancel():
        raise Cancelled()


def process_block(job: SlideJob, block) -> int:
    """:func:`_segment_block`, then :func:`release_memory`; -1 for a block already finished."""
    if job.table_path(block).exists():
        return -1
    try:
        return _segment_block(job, block)
    finally:
        release_memory()


def _segment_block(job: SlideJob, block) -> int:
    """Segment one block; returns the number of objects it owns.

    Writes in this order: the block's anchors (exactly one chunk of the work array; zarr
    3.1's local store writes it to a temporary file and renames it), then its object table
    (atomically, :meth:`ObjectTable.save`): the "done" marker. A block stopped at any point
    has no table and is computed again, by a rerun or by another dask worker; nothing reads
    a block's anchors before its table exists, so a half-written chunk is never used."""
    table_path = job.table_path(block)
    job = job.ready()
    check_cancel(job)
    _, _, y0, y1, x0, x1 = block
    h, w = job.shape
    halo, margin = job.options.halo, job.options.halo - CONTEXT
    ey0, ey1, ex0, ex1 = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
    image = job.slide.read(ey0, ey1, ex0, ex1)
    card = job.model.card
    probs = _block_probabilities(job, image, (ey0, ey1, ex0, ex1))
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


def _block_probabilities(job: SlideJob, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Probability maps of a block's pixels (``image``, the slide's ``box``), each pixel with
    the network of the statistics it belongs to, on that network's grid. Where a block sees
    several pieces of tissue, each piece's network runs on the part it owns plus ``CONTEXT``
    px, so every pixel gets the same probabilities in every block that sees it."""
    owners = job.pieces.owners_in(*box) if job.pieces is not None else None
    present = np.unique(owners).tolist() if owners is not None else [0]
    h, w = image.shape[:2]
    if len(present) == 1:
        return _on_grid(job, present[0], image, (0, h, 0, w), box)
    probs = None
    for k in present:
        mine = owners == k
        rows, cols = np.nonzero(mine.any(axis=1))[0], np.nonzero(mine.any(axis=0))[0]
        crop = (max(0, rows[0] - CONTEXT), min(h, rows[-1] + 1 + CONTEXT),
                max(0, cols[0] - CONTEXT), min(w, cols[-1] + 1 + CONTEXT))
        part = _on_grid(job, k, image, crop, box)
        if probs is None:
            probs = np.zeros((part.shape[0], h, w), part.dtype)
        view = (slice(None), slice(crop[0], crop[1]), slice(crop[2], crop[3]))
        inside = mine[view[1:]]
        probs[view][:, inside] = part[:, inside]
    return probs


def _on_grid(job: SlideJob, k: int, image: np.ndarray, crop: tuple[int, int, int, int],
             box: tuple[int, int, int, int]) -> np.ndarray:
    """Network ``k``'s probabilities on ``image[crop]``, computed with the tile grid starting on
    a multiple of the network's stride from network ``k``'s origin (a strided network's
    output depends on where its grid starts: a 2 px shift moved some nuclei probabilities by
    0.75). The crop is extended back to the grid, with edge pixels where the image ends."""
    grid = network_grid(job.model.network)
    oy, ox = job.pieces.origin(k) if job.pieces is not None else (0, 0)
    cy0, cy1, cx0, cx1 = crop
    ry, rx = (box[0] + cy0 - oy) % grid, (box[2] + cx0 - ox) % grid
    sy, sx = cy0 - ry, cx0 - rx
    part = image[max(0, sy):cy1, max(0, sx):cx1]
    if sy < 0 or sx < 0:
        part = np.pad(part, ((max(0, -sy), 0), (max(0, -sx), 0)) + ((0, 0),) * (part.ndim - 2), mode="edge")
    probs = predict_with_network(part, job.model, job.networks[k], job.normalizers[k], device=job.device,
                                 tile_size=job.options.tile_size, batch_size=job.options.batch_size,
                                 precision=job.options.precision, cancel=job.cancel)
    return probs[:, ry:, rx:]


def block_key(job: SlideJob, block) -> str:
    """The dask key of a block's task: unique per run, so slides of a cohort share a cluster."""
    return f"minenet-block-{job.token}-{block[0]}-{block[1]}"


def block_tasks(job: SlideJob, blocks) -> list:
    """One dask ``delayed`` task per block (pure=False: each writes its part of the output).
    Compute them with any dask scheduler (threads, or dask.distributed: see ``slide_cluster``);
    :func:`finish_slide` then assembles the result."""
    import dask

    return [dask.delayed(process_block, pure=False)(job, blk, dask_key_name=block_key(job, blk)) for blk in blocks]

