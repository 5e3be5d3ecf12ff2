"""Instance labels built band by band while the network runs on the rest of the image.

``predict_tiled(..., rows_done=labeller.rows_done)`` reports rows of the probability maps as
they become final (after every row of tiles); a :class:`BandLabeller` post-processes each
finished band in one background thread, so the instance split (single-threaded NumPy /
SciPy) overlaps the network (which releases the GIL) instead of following it.

The result is the same partition into objects as :func:`~napari_minenet.postprocess.
labels_from_probability` on the whole map (ids are numbered band by band, so they may be
permuted): the split treats every connected component of the thresholded foreground on its
own crop, so a component gives the same objects wherever it is processed, provided it is
processed whole. A band therefore splits only the components that do not reach its last
row; those that do are carried into the next band (which starts at their first row, with
the pixels already taken masked out), and the last band takes everything left.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from .postprocess import split_instances

__all__ = ["BandLabeller"]


class BandLabeller:
    """Instance labels (uint32, ids 1..N) of an (H, W) image, built from finished bands of
    rows of its probability maps (foreground, then the optional contour channel).

    ``rows_done(probs, stop)`` queues rows ``[.., stop)``; :meth:`finish` waits for the queue
    and returns the labels; :meth:`close` drops what is queued (after an error or a cancel).
    With ``background=False`` bands are processed in the calling thread.
    """

    def __init__(self, shape: tuple[int, int], *, threshold: float, min_size: int = 0, use_contour: bool = True,
                 contour_threshold: float = 0.5, fill_holes: bool = False, background: bool = True) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.threshold = float(threshold)
        self.min_size = int(min_size)
        self.use_contour = bool(use_contour)
        self.contour_threshold = float(contour_threshold)
        self.fill_holes = bool(fill_holes)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="minenet-bands") if background else None
        self._futures: list[Future] = []  # (one worker: bands never run at the same time)
        self._reset(None)

    def _reset(self, probs: np.ndarray | None) -> None:
        self._probs = probs
        self.labels = np.zeros(self.shape, np.uint32)
        self.count = 0
        self._start = 0  # first row that is not finished in ``labels``
        self._queued = 0  # rows handed over so far
        #: pixels of rows [_start, _queued) already given to an object (or dropped as too small)
        self._taken = np.zeros((0, self.shape[1]), bool)

    # ------------------------------------------------------------------ queue

    def rows_done(self, probs: np.ndarray, stop: int) -> None:
        """Rows [0, stop) of ``probs`` (C, H, W) are final: split what they hold."""
        if probs.shape[1:] != self.shape:
            raise ValueError(f"probability maps {probs.shape[1:]} do not match the labels {self.shape}")
        if probs is not self._probs:  # a new prediction (e.g. retried after CUDA out of memory)
            self._wait()
            self._reset(probs)
        stop = min(int(stop), self.shape[0])
        if stop <= self._queued:
            return
        self._queued = stop
        last = stop == self.shape[0]
        if self._pool is None:
            self._band(probs, stop, last)
        else:
            self._futures.append(self._pool.submit(self._band, probs, stop, last))

    def finish(self) -> np.ndarray:
        """Wait for the queued bands; the labels (every row must have been reported)."""
        try:
            self._wait()
        finally:
            self.close()
        if self._queued < self.shape[0]:
            raise RuntimeError(f"rows {self._queued}..{self.shape[0]} of the probability maps were never finished")
        return self.labels

    def close(self) -> None:
        """Stop: bands not started are dropped (the labels are then incomplete)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _wait(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()  # re-raises an error of the band

    # ------------------------------------------------------------------ one band

    def _band(self, probs: np.ndarray, stop: int, last: bool) -> None:
        r0 = self._start
        prob = probs[0, r0:stop]
        mask = prob > self.threshold
        before = np.zeros(mask.shape, bool)  # taken by earlier bands
        before[: self._taken.shape[0]] = self._taken
        mask &= ~before
        next_start = stop
        if not last and mask.any():
            components, n = ndi.label(mask)  # (the connectivity split_instances labels with)
            reaching = np.zeros(n + 1, bool)  # components that may continue below: the next band takes them
            reaching[components[-1]] = True
            reaching[0] = False
            if reaching.any():
                carried = reaching[components]
                next_start = r0 + int(np.flatnonzero(carried.any(axis=1))[0])
                mask &= ~carried
                del carried
            del components
        taken = before | mask
        contour = probs[1, r0:stop] if self.use_contour and probs.shape[0] > 1 else None
        # (what earlier bands took is another object's, never a hole, as on the whole map)
        band = split_instances(mask, contour, prob if contour is not None else None,
                               contour_threshold=self.contour_threshold, min_size=self.min_size,
                               fill_holes=self.fill_holes, occupied=before if self.fill_holes else None)
        found = int(band.max(initial=0))
        write = band > 0
        write &= ~before
        np.add(band, np.uint32(self.count), out=band, where=write)
        np.copyto(self.labels[r0:stop], band, where=write)
        self.count += found
        self._taken = taken[next_start - r0:].copy()
        self._start = next_start
