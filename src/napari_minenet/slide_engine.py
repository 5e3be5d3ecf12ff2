"""Whole-slide segmentation in bounded memory: blocks, stitching, OME-Zarr labels, resume.

How a slide is segmented (:func:`segment_slide`):

1. a tissue mask is computed on a low-resolution level (:func:`~napari_minenet.slides.tissue_mask`);
   only blocks with tissue within a halo of them are computed: glass never reaches the network;
2. the normalisation (AdaBN) statistics are estimated once per run and reused by every
   block: from tiles spread over the tissue, and, on a slide with several separate pieces
   of tissue (a TMA, serial sections), for each piece from that piece alone
   (``slide_statistics``; ``SlideOptions(statistics="slide")``: one set for all). Each
   piece is predicted on its own network grid, so a piece on glass gets what
   :func:`~napari_minenet.segmentation.segment` gives on that piece cropped;
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

Planning and the blocks are in ``slide_blocks``, assembling the result in ``slide_stitching``.
Blocks are dask ``delayed`` tasks (:func:`block_tasks`) run on dask's local threaded
scheduler, or, with ``scheduler=``, the same tasks on ``dask.distributed`` (``slide_cluster``:
a LocalCluster or an existing cluster; a worker reopens the slide by path and loads the
network once).
Memory is a few blocks plus the sorted anchors (8 bytes per nucleus), whatever the size
of the slide. Objects larger than ``halo - CONTEXT`` px beyond a block border cannot be
seen whole by both blocks; they are counted (``oversized``) and may be cut.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .inference import CancelCheck, ProgressCallback
from .slide_blocks import (
    CHUNK,
    CONTEXT,
    LABELS_PATH,
    SlideJob,
    SlideOptions,
    block_key,
    block_tasks,
    check_cancel,
    plan_slide,
    process_block,
    run_fingerprint,
)
from .slide_stitching import finish_slide, write_region
from .slides import Slide, open_slide
from .zoo import SegmentationModel, load_model

logger = logging.getLogger(__name__)

__all__ = ["SlideOptions", "SlideResult", "SlideJob", "segment_slide", "plan_slide", "process_block", "block_tasks",
           "finish_slide", "write_region", "CONTEXT", "LABELS_PATH", "CHUNK"]


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
    scheduler=None,
) -> SlideResult:
    """Segment a whole slide into the OME-Zarr ``out`` (labels under ``labels/nuclei``).

    ``progress(done, total)`` counts tissue blocks (blocks finished by an earlier run count
    as done); ``cancel()`` is checked between tiles (raises :class:`Cancelled`; finished
    blocks are kept and the next run resumes from them). A finished output with the same
    settings is not recomputed. ``statistics_tiles`` (raw pixels, all the same shape)
    replaces the tissue sample the normalisation statistics come from. ``scheduler``: None
    (dask's threads, ``options.workers`` blocks at once), ``"local"`` (a dask.distributed
    LocalCluster of ``options.workers`` processes), a scheduler address
    (``"tcp://host:8786"``) or a ``distributed.Client``; the labels are the same.
    """
    started = time.monotonic()
    opened = not isinstance(slide, Slide)
    slide = open_slide(slide) if opened else slide
    try:
        model = load_model(model)  # a SegmentationModel is passed through
        options = copy.copy(options) if options is not None else SlideOptions()
        out = Path(out)
        geojson = Path(geojson) if geojson is not None else None
        csv = Path(csv) if csv is not None else None
        done_info = _complete_marker(out)
        if done_info is not None and done_info.get("fingerprint") == run_fingerprint(
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
        _run_blocks(job, todo, block_done, scheduler, cancel)
        check_cancel(job)
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



def _run_blocks(job: SlideJob, todo, on_done: Callable[[int], None], scheduler=None,
                cancel: CancelCheck | None = None) -> None:
    """Run the block tasks on dask's threaded scheduler, or on dask.distributed when a
    ``scheduler`` is given, reporting each finished block."""
    import dask
    from dask.callbacks import Callback

    if not todo:
        return
    if scheduler is not None:
        from .slide_cluster import connect, run_blocks_on

        with connect(scheduler, job.options.workers) as client:
            run_blocks_on(client, job, todo, on_done, cancel)
        return
    keys = {block_key(job, b) for b in todo}

    class _Report(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in keys:
                on_done(result)

    with _Report():
        dask.compute(*block_tasks(job, todo), scheduler="threads", num_workers=job.options.workers)

