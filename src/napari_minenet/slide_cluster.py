"""Whole slides on dask.distributed: the slide engine's block graph on a cluster.

The graph is the one the local engine computes (:func:`~napari_minenet.slide_blocks.block_tasks`);
only the scheduler differs. :func:`connect` gives a ``distributed.Client`` for

* ``"local"``: a ``LocalCluster`` of ``workers`` processes with one thread each (dask sets
  ``OMP_NUM_THREADS=1`` in them, so each computes one block on one core);
* an address (``"tcp://host:8786"``): an existing cluster, e.g. one started with
  ``dask scheduler`` / ``dask worker`` or dask-jobqueue on SLURM / PBS;
* a ``Client``: used as it is (a caller running a cohort opens one client for all slides).

Workers read the slide by its path and write the blocks into the output's work folder, so
the client and every worker must see the same file system (the slide, ``OUT_DIR``).
Each worker loads a run's network once (``slide_blocks._restore_job``), not per block.
The planning (tissue mask, normalisation statistics) and the finishing (ids, pyramid,
GeoJSON / CSV) run in the client's process.

Faults: a worker that dies takes its running blocks with it; the scheduler computes them
again on another worker (a block counts as done only once its table is written, see
:func:`~napari_minenet.slide_blocks.process_block`). A killed client leaves the finished
blocks in the work folder; a rerun resumes from them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from .inference import CancelCheck, Cancelled
from .slide_blocks import SlideJob, block_tasks

logger = logging.getLogger(__name__)

__all__ = ["connect", "run_blocks_on", "LOCAL"]

#: the scheduler name for a LocalCluster on this machine
LOCAL = "local"
#: seconds between two looks at the cancel flag while blocks run
_POLL = 0.1


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise RuntimeError("a dask.distributed scheduler needs the 'distributed' package: "
                           'pip install "napari-minenet[distributed]"') from exc
    return distributed


@contextlib.contextmanager
def connect(scheduler, workers: int = 1, timeout: str = "20s") -> Iterator[object]:
    """A ``distributed.Client`` for ``scheduler`` (``"local"``, an address, or a Client),
    closed at the end when this function opened it; ``timeout``: to reach an address."""
    distributed = _distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise ValueError(f"scheduler: 'local', an address such as tcp://host:8786, or a Client; not {scheduler!r}")
    if scheduler == LOCAL:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except OSError as exc:
        raise OSError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc
    with client:
        yield client


def run_blocks_on(client, job: SlideJob, todo, on_done: Callable[[int], None],
                  cancel: CancelCheck | None = None) -> None:
    """Compute the blocks ``todo`` of ``job`` on ``client``'s cluster, calling ``on_done``
    as each finishes (in this thread); ``cancel()`` is looked at every 0.1 s and cancels
    the blocks not yet finished (raises :class:`Cancelled`; finished blocks are kept)."""
    distributed = _distributed()
    if not todo:
        return
    futures = client.compute(block_tasks(job, todo))
    pending = set(futures)
    try:
        finished = distributed.as_completed(futures)
        while pending:
            batch = finished.next_batch(block=False)
            if not batch:
                if cancel is not None and cancel():
                    raise Cancelled()
                time.sleep(_POLL)
                continue
            for future in batch:
                pending.discard(future)
                try:
                    count = future.result()  # the block's own error is raised as it is
                except distributed.KilledWorker as exc:  # the block's workers died again and again
                    raise RuntimeError(f"the cluster gave up on a block of {job.zarr_path.name}: {exc}") from exc
                on_done(count)
    finally:
        if pending:
            logger.info("cancelling %d unfinished blocks of %s", len(pending), job.zarr_path)
            client.cancel(list(pending))
