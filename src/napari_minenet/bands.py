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
the pixels already taken masked out), and the last band takes everything left. The one
exception: a component taller than :data:`MAX_CARRY_ROWS` is no object (a black border, a
fold) and is cut at the band's last row instead of being carried on.

Very large images need not hold their maps at all: :meth:`BandLabeller.maps` gives a
:class:`MapRows`, a window of rows the network writes into (``predict_tiled(..., out=)``)
that drops rows the bands are done with, so the maps cost a few rows of tiles, not the
image. Its bands can be split into sub-bands of at most ``max_band_pixels`` pixels (the
instance split's temporaries are ~36 bytes per pixel of a band; ``segment`` does it where
it streams, with :data:`BAND_PIXELS`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from .allocator import release_memory
from .postprocess import split_instances

__all__ = ["BandLabeller", "MapRows", "BAND_PIXELS", "STREAMED_TILE_SIZE"]

#: where the maps are streamed (``segment`` of a huge image), sub-bands of at most this
#: many pixels (~36 MB of temporaries) and tiles of at most this size (activations ~45 MB
#: instead of ~110 at 1024 px; no slower at 10,000^2 here: docs/benchmarks.md)
BAND_PIXELS = 1 << 20
STREAMED_TILE_SIZE = 640
#: a component that already spans this many rows and still reaches a band's last row is not carried
#: further: it is no object (a black border or a fold thresholded as foreground; the split leaves such
#: regions whole anyway) and carrying it made every later band restart at its first row (a 10,000^2 image
#: with black regions: the last 2,000 rows relabelled in every band, 2.34 GB and 74 s; with this and
#: postprocess._LARGEST_SPLIT_BOX 1.31 GB and 52 s, on the same 2 cores)
MAX_CARRY_ROWS = 1024


class BandLabeller:
    """Instance labels (uint32, ids 1..N) of an (H, W) image, built from finished bands of
    rows of its probability maps (foreground, then the optional contour channel).

    ``rows_done(probs, stop)`` queues rows ``[.., stop)``; :meth:`finish` waits for the queue
    and returns the labels; :meth:`close` drops what is queued (after an error or a cancel).
    With ``background=False`` bands are processed in the calling thread.
    """

    def __init__(self, shape: tuple[int, int], *, threshold: float, min_size: int = 0, use_contour: bool = True,
                 contour_threshold: float = 0.5, fill_holes: bool = False, background: bool = True,
                 max_band_pixels: int | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.threshold = float(threshold)
        self.min_size = int(min_size)
        self.use_contour = bool(use_contour)
        self.contour_threshold = float(contour_threshold)
        self.fill_holes = bool(fill_holes)
        self._band_rows = self.shape[0] if max_band_pixels is None else max(1, int(max_band_pixels) // max(1, self.shape[1]))
        self._streamed = max_band_pixels is not None
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

    def maps(self, channels: int, dtype=np.float32) -> MapRows:
        """A window of rows of (``channels``, H, W) maps for ``predict_tiled(..., out=)``: it
        keeps only the rows from the first one a band still needs (the maps are then never
        whole: nothing but the labels is left at the end)."""
        return MapRows(channels, self.shape, dtype, keep_from=lambda: self._start)

    def rows_done(self, probs: np.ndarray | MapRows, stop: int) -> None:
        """Rows [0, stop) of ``probs`` (C, H, W, an array or :meth:`maps`) are final: split what they hold."""
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

    def _band(self, probs: np.ndarray | MapRows, stop: int, last: bool) -> None:
        """Rows [_start, stop) in sub-bands of at most ``max_band_pixels`` (each adds that many
        new rows to what the one before carried)."""
        sub = self._start + self._taken.shape[0]  # the rows before were in a band already
        while sub < stop:
            sub = min(stop, sub + self._band_rows)
            self._sub_band(probs, sub, last and sub == stop)

    def _sub_band(self, probs: np.ndarray | MapRows, stop: int, last: bool) -> None:
        r0 = self._start
        rows = probs.rows(r0, stop) if isinstance(probs, MapRows) else probs[:, r0:stop]
        prob = rows[0]
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
            if stop - r0 > MAX_CARRY_ROWS:  # those that span more rows than that stay in this band
                reaching[components[: stop - r0 - MAX_CARRY_ROWS]] = False
            if reaching.any():
                carried = reaching[components]
                next_start = r0 + int(np.flatnonzero(carried.any(axis=1))[0])
                mask &= ~carried
                del carried
            del components
        taken = before | mask
        contour = rows[1] if self.use_contour and rows.shape[0] > 1 else None
        # (what earlier bands took is another object's, never a hole, as on the whole map)
        band = split_instances(mask, contour, prob if contour is not None else None,
                               contour_threshold=self.contour_threshold, min_size=self.min_size,
                               fill_holes=self.fill_holes, occupied=before if self.fill_holes else None,
                               workers=1 if self._streamed else None)  # (streamed: one atlas at a time)
        found = int(band.max(initial=0))
        write = band > 0
        write &= ~before
        np.add(band, np.uint32(self.count), out=band, where=write)
        np.copyto(self.labels[r0:stop], band, where=write)
        self.count += found
        self._taken = taken[next_start - r0:].copy()
        self._start = next_start
        if self._streamed:  # (huge images: what the sub-band freed goes back, as between slide blocks)
            release_memory()


class MapRows:
    """Rows of (C, H, W) maps, held only from the first row still needed: ``keep_from()``
    (the labeller's first unfinished row) or the lowest row asked for, whichever is lower.

    ``rows(r0, r1)`` is a writable (C, r1 - r0, W) view; asking for rows past the end moves
    the rows still needed into a new buffer (never in place: a band reading an older view in
    another thread keeps valid data, and only final rows are read there). Rows dropped
    before cannot be asked for again. ``shape`` is the whole maps' (C, H, W).
    """

    def __init__(self, channels: int, shape: tuple[int, int], dtype, keep_from) -> None:
        self.shape = (int(channels), int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self._keep_from = keep_from
        self._held = (0, np.zeros((self.shape[0], 0, self.shape[2]), self.dtype))  # (first row, buffer): one swap

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return int(self._held[1].nbytes)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        if not 0 <= r0 <= r1 <= self.shape[1]:
            raise ValueError(f"rows {r0}..{r1} are outside the maps' {self.shape[1]} rows")
        base, buf = self._held
        if r0 < base:
            raise ValueError(f"rows from {r0} were already dropped (rows from {base} are held)")
        if r1 > base + buf.shape[1]:
            keep = max(base, min(r0, int(self._keep_from())))
            grown = np.zeros((self.shape[0], r1 - keep, self.shape[2]), self.dtype)
            kept = base + buf.shape[1] - keep
            if kept > 0:
                grown[:, :kept] = buf[:, keep - base:]
            self._held = base, buf = keep, grown
        return buf[:, r0 - base:r1 - base]

    def renewed(self) -> MapRows:
        """An empty window of the same maps (a prediction restarted from the first row)."""
        return MapRows(self.shape[0], self.shape[1:], self.dtype, self._keep_from)
