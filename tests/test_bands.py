"""Instance labels built band by band while the network runs (napari_minenet.bands): the same
objects as post-processing the finished maps, whatever the bands, with errors surfacing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from skimage.draw import disk

from napari_minenet.bands import BandLabeller
from napari_minenet.postprocess import labels_from_probability


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The same foreground split into the same objects (ids may differ)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(a.astype(np.int64).ravel() << 32 | b.astype(np.int64).ravel())
    return len(pairs) == len(np.unique(pairs >> 32)) == len(np.unique(pairs & 0xFFFFFFFF))


def _maps(h: int = 160, w: int = 120, seed: int = 0) -> np.ndarray:
    """(2, H, W) probability + contour maps: touching pairs (split only by the contour), a
    ring with a hole and a nucleus inside it, long objects crossing many rows, specks."""
    rng = np.random.default_rng(seed)
    prob = np.full((h, w), 0.05, np.float32)
    contour = np.zeros((h, w), np.float32)
    centres = [(int(rng.integers(8, h - 8)), int(rng.integers(8, w - 8))) for _ in range(18)]
    for cy, cx in centres:  # touching pairs: one blob with a contour line between two discs
        for dy in (-4, 4):
            prob[disk((cy + dy, cx), 6, shape=(h, w))] = 0.9
        contour[max(0, cy - 1):cy + 2, max(0, cx - 6):cx + 7] = 0.8
    prob[disk((40, 60), 16, shape=(h, w))] = 0.95  # a ring ...
    prob[disk((40, 60), 9, shape=(h, w))] = 0.05
    prob[disk((40, 60), 4, shape=(h, w))] = 0.95  # ... with a nucleus inside it
    prob[20:140, 10:14] = 0.9  # a long vertical object crossing every band
    prob[rng.random((h, w)) < 0.003] = 0.9  # specks (below the minimum size)
    contour[prob < 0.5] = 0.1
    return np.stack([prob, contour])


@pytest.mark.parametrize("stops", [[160], [1, 2, 3, 160], [37, 38, 90, 120, 159, 160], list(range(5, 161, 5))])
@pytest.mark.parametrize("fill_holes", [False, True])
def test_bands_give_the_same_objects_as_the_whole_map(stops, fill_holes):
    probs = _maps()
    options = dict(threshold=0.5, contour_threshold=0.5, min_size=6, fill_holes=fill_holes)
    whole = labels_from_probability(probs[0], contour=probs[1], instances=True, **options)
    bands = BandLabeller(probs.shape[1:], **options)
    for stop in stops:
        bands.rows_done(probs, stop)
    labels = bands.finish()
    assert labels.dtype == np.uint32
    assert whole.max() > 30
    assert same_partition(labels, whole)
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))  # ids 1..N, none missing


def test_without_the_contour_channel_and_in_the_calling_thread():
    probs = _maps(seed=3)
    whole = labels_from_probability(probs[0], instances=True, threshold=0.5, min_size=0)
    bands = BandLabeller(probs.shape[1:], threshold=0.5, use_contour=False, background=False)
    for stop in (50, 51, 100, 160):
        bands.rows_done(probs, stop)
    assert same_partition(bands.finish(), whole)


def test_a_new_array_restarts_the_labels():
    """After a CUDA out-of-memory retry, predict_tiled reports rows of a new array."""
    first, second = _maps(seed=1), _maps(seed=2)
    bands = BandLabeller(first.shape[1:], threshold=0.5, min_size=6)
    bands.rows_done(first, 80)
    bands.rows_done(second, 40)
    bands.rows_done(second, 160)
    whole = labels_from_probability(second[0], contour=second[1], instances=True, threshold=0.5, min_size=6)
    assert same_partition(bands.finish(), whole)


def test_unfinished_rows_and_wrong_shapes_are_errors():
    probs = _maps()
    bands = BandLabeller(probs.shape[1:], threshold=0.5)
    bands.rows_done(probs, 100)
    with pytest.raises(RuntimeError, match="never finished"):
        bands.finish()
    with pytest.raises(ValueError, match="do not match"):
        BandLabeller((10, 10), threshold=0.5).rows_done(probs, 5)
    with pytest.raises(ValueError, match="threshold"):
        BandLabeller((10, 10), threshold=2.0)


def test_an_error_in_the_band_thread_reaches_the_caller_and_no_thread_is_left(monkeypatch):
    import napari_minenet.bands as bands_module

    def broken(*args, **kwargs):
        raise MemoryError("no memory for this band")

    monkeypatch.setattr(bands_module, "split_instances", broken)
    probs = _maps()
    bands = BandLabeller(probs.shape[1:], threshold=0.5)
    bands.rows_done(probs, 160)
    with pytest.raises(MemoryError, match="this band"):
        bands.finish()
    assert not [t for t in threading.enumerate() if t.name.startswith("minenet-bands")]


def test_segment_splits_in_bands_like_the_whole_map(tiny_model, make_blobs):
    """segment() on several rows of tiles: the labels are those of the returned maps."""
    from napari_minenet.segmentation import labels_for, segment

    image, _ = make_blobs(300, seed=4)
    result = segment(image, tiny_model, tile_size=96, overlap=32, threshold=0.5, min_size=0)
    whole = labels_for(result.probability, result.contour, tiny_model.card, 0.5, True, 0)
    assert whole.max() > 0
    assert same_partition(result.labels, whole)
    assert not [t for t in threading.enumerate() if t.name.startswith("minenet-bands")]


def test_a_cancelled_segment_stops_the_band_thread(tiny_model, make_blobs):
    from napari_minenet.inference import Cancelled
    from napari_minenet.segmentation import segment

    image, _ = make_blobs(300, seed=5)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 4

    with pytest.raises(Cancelled):
        segment(image, tiny_model, tile_size=96, overlap=32, cancel=cancel)
    assert not [t for t in threading.enumerate() if t.name.startswith("minenet-bands")]


@pytest.mark.parametrize("background", [False, True])
def test_a_large_image_keeps_no_maps_and_the_same_objects(tiny_model, make_blobs, monkeypatch, background):
    """Above LARGE_IMAGE_PIXELS the maps are not kept (the network writes into a window of
    rows); keep_maps=True keeps them as float16; the objects are the same either way, in
    the calling thread or the band thread, in sub-bands too."""
    import napari_minenet.bands as bands
    import napari_minenet.segmentation as segmentation

    monkeypatch.setattr(segmentation, "LARGE_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(segmentation, "_cores_to_spare", lambda device: background)
    monkeypatch.setattr(bands, "BAND_PIXELS", 256 * 40)  # sub-bands of 40 rows
    held = []
    rows = bands.MapRows.rows

    def rows_held(self, r0, r1):
        view = rows(self, r0, r1)
        held.append(self.nbytes)
        return view

    monkeypatch.setattr(bands.MapRows, "rows", rows_held)
    image, _ = make_blobs(256, seed=6)
    options = dict(tile_size=96, overlap=32, threshold=0.5, min_size=0)
    kept = segmentation.segment(image, tiny_model, keep_maps=True, **options)
    assert kept.probability.dtype == np.float16 and not held
    whole = segmentation.labels_for(kept.probability, kept.contour, tiny_model.card, 0.5, True, 0)
    assert whole.max() > 0 and same_partition(kept.labels, whole)
    streamed = segmentation.segment(image, tiny_model, **options)
    assert streamed.probability is None and streamed.contour is None
    assert same_partition(streamed.labels, whole)
    assert held and max(held) < kept.probability.nbytes * 2 * 0.8  # (both channels, float16) never whole
    with pytest.raises(ValueError, match="keep_maps=True"):
        streamed.relabel(threshold=0.4)


@pytest.mark.parametrize("max_band_pixels", [120 * 7, 120 * 30])
def test_sub_bands_give_the_same_objects(max_band_pixels):
    probs = _maps()
    options = dict(threshold=0.5, contour_threshold=0.5, min_size=6, fill_holes=True)
    whole = labels_from_probability(probs[0], contour=probs[1], instances=True, **options)
    bands = BandLabeller(probs.shape[1:], max_band_pixels=max_band_pixels, background=False, **options)
    for stop in (90, 160):
        bands.rows_done(probs, stop)
    assert same_partition(bands.finish(), whole)


def test_a_window_of_rows_holds_what_the_bands_need():
    """The network's rows go into MapRows: it drops rows the bands are done with and keeps
    the rest; the labels are those of the whole maps."""
    from napari_minenet.bands import MapRows

    probs = _maps(h=400, w=120, seed=3)
    options = dict(threshold=0.5, contour_threshold=0.5, min_size=6)
    whole = labels_from_probability(probs[0], contour=probs[1], instances=True, **options)
    bands = BandLabeller(probs.shape[1:], background=False, **options)
    window = bands.maps(2, np.float32)
    assert isinstance(window, MapRows) and window.shape == probs.shape
    largest = 0
    for r0 in range(0, 400, 50):  # rows of "tiles" 80 rows high, overlapping by 30
        r1 = min(400, r0 + 80)
        window.rows(r0, r1)[...] = probs[:, r0:r1]
        largest = max(largest, window.nbytes)
        bands.rows_done(window, r1 if r1 == 400 else r0 + 50)
    assert same_partition(bands.finish(), whole)
    assert largest < probs.nbytes / 2
    with pytest.raises(ValueError, match="already dropped"):
        window.rows(0, 10)
    with pytest.raises(ValueError, match="outside"):
        window.rows(390, 401)


def test_segment_with_bands_in_their_own_thread_gives_the_same_objects(tiny_model, make_blobs, monkeypatch):
    """The path a GPU (or torch on fewer threads than cores) takes: bands split in a thread
    while the network runs on the next rows of tiles."""
    import napari_minenet.segmentation as segmentation

    monkeypatch.setattr(segmentation, "_cores_to_spare", lambda device: True)
    image, _ = make_blobs(300, seed=9)
    result = segmentation.segment(image, tiny_model, tile_size=96, overlap=32, threshold=0.5, min_size=0)
    whole = segmentation.labels_for(result.probability, result.contour, tiny_model.card, 0.5, True, 0)
    assert whole.max() > 0 and same_partition(result.labels, whole)
    assert not [t for t in threading.enumerate() if t.name.startswith("minenet-bands")]


def test_cores_to_spare_follows_the_torch_threads(monkeypatch):
    import os

    import torch

    import napari_minenet.segmentation as segmentation

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)  # 4 cores
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert not segmentation._cores_to_spare("cpu")
        torch.set_num_threads(2)
        assert segmentation._cores_to_spare("cpu")
    finally:
        torch.set_num_threads(threads)


def test_out_of_gpu_memory_mid_stream_restarts_with_a_new_window(tiny_model, make_blobs, monkeypatch):
    """A CUDA out-of-memory error after some rows were streamed: the retry gets a new
    window (the old one dropped its first rows) and the labels are those of a clean run."""
    import torch

    import napari_minenet.inference as inference
    import napari_minenet.segmentation as segmentation

    image, _ = make_blobs(300, seed=8)
    options = dict(tile_size=128, overlap=32, threshold=0.5, min_size=0, keep_maps=False)
    clean = segmentation.segment(image, tiny_model, **options)
    original = inference._predict_tiles
    calls = []

    def flaky(image, model, device, tile_size, *args, **kwargs):
        calls.append(tile_size)
        if len(calls) == 1:  # fail after two rows of tiles were written and reported
            rows_done = kwargs["rows_done"]

            def fail_later(probs, stop):
                rows_done(probs, stop)
                if stop > 150:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

            kwargs["rows_done"] = fail_later
        return original(image, model, device, tile_size, *args, **kwargs)

    monkeypatch.setattr(inference, "_predict_tiles", flaky)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        retried = segmentation.segment(image, tiny_model, **options)
    assert calls == [128, 128]  # (below 256 px the retry runs on the CPU with the same tiles)
    assert retried.probability is None and clean.labels.max() > 0
    assert same_partition(retried.labels, clean.labels)


def test_a_component_taller_than_max_carry_rows_is_not_carried(monkeypatch):
    """A foreground region running down the whole image (a black border) is cut at band
    borders instead of making every later band restart at its first row; every other object
    is what the whole map gives, and the window of rows stays small."""
    import napari_minenet.bands as bands_module

    monkeypatch.setattr(bands_module, "MAX_CARRY_ROWS", 150)  # (the 120-row object of _maps is carried)
    probs = _maps(h=400, w=120, seed=5)
    probs[0, :, 100:] = 0.95  # the border: 20 columns of foreground from the first row to the last
    probs[1, :, 100:] = 0.1
    probs[0, :, 97:100] = 0.05
    options = dict(threshold=0.5, contour_threshold=0.5, min_size=6)
    whole = labels_from_probability(probs[0], contour=probs[1], instances=True, **options)
    bands = BandLabeller(probs.shape[1:], background=False, **options)
    window = bands.maps(2, np.float32)
    largest = 0
    for r0 in range(0, 400, 50):
        r1 = min(400, r0 + 80)
        window.rows(r0, r1)[...] = probs[:, r0:r1]
        largest = max(largest, window.nbytes)
        bands.rows_done(window, r1 if r1 == 400 else r0 + 50)
    labels = bands.finish()
    assert same_partition(labels[:, :97], whole[:, :97])
    border = np.unique(labels[:, 100:])
    assert 0 not in border and len(border) >= 2  # cut into pieces at band borders
    assert largest <= 2 * 120 * 4 * (80 + 150 + 50)  # never the rows from the border's first row on
