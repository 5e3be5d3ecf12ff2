"""Probabilities to labels (thresholds, instance splitting, cleaning) and result helpers."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_minenet.postprocess import (
    labels_from_probability,
    remove_small,
    split_instances,
    threshold_mask,
)
from napari_minenet.segmentation import SegmentationResult, measure, summarize
from napari_minenet.zoo import ModelCard


def _discs(shape, centres, radius, value=1.0):
    prob = np.zeros(shape, np.float32)
    for c, r, v in zip(centres, np.broadcast_to(radius, len(centres)), np.broadcast_to(value, len(centres))):
        prob[disk(c, r, shape=shape)] = v
    return prob


def _ids(labels):
    ids = np.unique(labels)
    return ids[ids > 0]


TOUCHING = dict(shape=(64, 96), centres=[(32, 34), (32, 60)], radius=14)  # overlap by 2 px


def test_touching_discs_split_by_distance_transform():
    prob = _discs(**TOUCHING)
    assert len(_ids(labels_from_probability(prob, instances=False))) == 1  # one blob when binary
    labels = labels_from_probability(prob, instances=True)
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(_ids(labels), [1, 2])
    (ya, xa), (yb, xb) = TOUCHING["centres"]
    assert labels[ya, xa] != labels[yb, xb]
    # the split keeps every foreground pixel and each part is about one disc
    assert ((labels > 0) == (prob > 0.5)).all()
    areas = np.bincount(labels.ravel())[1:]
    assert abs(int(areas[0]) - int(areas[1])) < 0.1 * areas.mean()


def test_touching_discs_split_by_contour_map():
    prob = _discs(**TOUCHING)
    contour = np.zeros_like(prob)
    contour[:, 46:49] = 0.9  # the predicted border between the two objects
    labels = labels_from_probability(prob, instances=True, contour=contour, contour_threshold=0.5)
    np.testing.assert_array_equal(_ids(labels), [1, 2])
    (ya, xa), (yb, xb) = TOUCHING["centres"]
    assert labels[ya, xa] != labels[yb, xb]
    assert ((labels > 0) == (prob > 0.5)).all()  # contour pixels are given to a neighbour


def test_only_a_confident_contour_splits_a_convex_object():
    from skimage.draw import ellipse

    prob = np.zeros((64, 120), np.float32)
    rr, cc = ellipse(32, 60, 16, 40, shape=prob.shape)
    prob[rr, cc] = 0.95  # one elongated, convex object: the distance transform keeps it whole
    contour = np.zeros_like(prob)
    assert len(_ids(labels_from_probability(prob, instances=True, contour=contour))) == 1
    contour[:, 58:62] = 0.3  # a weak contour across it: interior (prob - contour = 0.65) stays connected
    assert len(_ids(labels_from_probability(prob, instances=True, contour=contour, contour_threshold=0.5))) == 1
    contour[:, 58:62] = 0.9  # a confident contour: two objects
    labels = labels_from_probability(prob, instances=True, contour=contour, contour_threshold=0.5)
    assert len(_ids(labels)) == 2
    assert labels[32, 40] != labels[32, 80]


def test_three_discs_in_a_row_give_three_labels():
    prob = _discs((60, 140), [(30, 30), (30, 56), (30, 82)], 14)
    assert len(_ids(labels_from_probability(prob, instances=True))) == 3


def test_a_single_disc_is_not_oversplit():
    prob = _discs((80, 80), [(40, 40)], 25)
    np.testing.assert_array_equal(_ids(labels_from_probability(prob, instances=True)), [1])


def test_separate_objects_get_consecutive_ids():
    prob = _discs((100, 100), [(20, 20), (20, 70), (70, 20), (70, 70)], [8, 6, 10, 7])
    labels = labels_from_probability(prob, instances=True)
    np.testing.assert_array_equal(_ids(labels), [1, 2, 3, 4])


def test_min_size_removes_small_objects_and_renumbers():
    prob = _discs((100, 100), [(20, 20), (20, 70), (70, 20), (70, 70)], [8, 2, 10, 3])
    labels = labels_from_probability(prob, instances=True, min_size=50)
    np.testing.assert_array_equal(_ids(labels), [1, 2])
    assert labels[20, 70] == 0 and labels[70, 70] == 0
    assert labels[20, 20] > 0 and labels[70, 20] > 0
    binary = labels_from_probability(prob, instances=False, min_size=50)
    assert binary[20, 70] == 0 and binary[20, 20] == 1


def test_binary_mode_gives_zero_and_one():
    prob = _discs((100, 100), [(20, 20), (70, 70)], 10, value=[0.8, 0.6])
    labels = labels_from_probability(prob, threshold=0.5)
    assert labels.dtype == np.uint32
    assert set(np.unique(labels)) == {0, 1}
    assert labels.sum() == (prob > 0.5).sum()


def test_threshold_is_strictly_greater():
    prob = np.array([[0.49, 0.5, 0.51]] * 3, np.float32)
    np.testing.assert_array_equal(threshold_mask(prob, 0.5)[0], [False, False, True])


def test_keep_largest():
    prob = _discs((100, 100), [(25, 25), (70, 70)], [6, 12])
    mask = threshold_mask(prob, 0.5, keep_largest=True)
    assert mask[70, 70] and not mask[25, 25]
    labels = labels_from_probability(prob, keep_largest=True)
    assert labels.sum() == (_discs((100, 100), [(70, 70)], 12) > 0).sum()


def test_fill_holes():
    ring = _discs((60, 60), [(30, 30)], 20)
    ring[disk((30, 30), 8)] = 0
    assert not threshold_mask(ring)[30, 30]
    assert threshold_mask(ring, fill_holes=True)[30, 30]
    assert labels_from_probability(ring, fill_holes=True)[30, 30] == 1
    assert labels_from_probability(ring, fill_holes=False)[30, 30] == 0


def test_empty_probability_gives_empty_labels():
    for instances in (False, True):
        labels = labels_from_probability(np.zeros((32, 32), np.float32), instances=instances, min_size=5)
        assert labels.dtype == np.uint32 and labels.shape == (32, 32) and not labels.any()


def test_bad_arguments():
    prob = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match="between 0 and 1"):
        labels_from_probability(prob, threshold=1.5)
    with pytest.raises(ValueError, match="2-D"):
        labels_from_probability(np.zeros((2, 32, 32), np.float32))
    with pytest.raises(ValueError, match="differ in shape"):
        labels_from_probability(prob, contour=np.zeros((16, 32), np.float32), instances=True)


def test_remove_small_and_split_instances_directly():
    labels = np.zeros((20, 20), np.int32)
    labels[0:2, 0:2] = 3
    labels[5:15, 5:15] = 7
    out = remove_small(labels, 5)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(_ids(out), [1])
    assert out[10, 10] == 1 and out[0, 0] == 0
    assert not split_instances(np.zeros((10, 10), bool)).any()


# --------------------------------------------------------------------------- SegmentationResult


def _result(prob, **card_kw):
    card = ModelCard(name="r", task="nuclei", out_channels=1, instances=True, **card_kw)
    labels = labels_from_probability(prob, threshold=0.5, instances=True)
    return SegmentationResult(labels, prob, None, card, 0.5, True, 0)


def test_relabel_changes_labels_when_the_threshold_changes():
    prob = _discs((100, 100), [(25, 25), (70, 70)], 10, value=[0.9, 0.6])
    result = _result(prob)
    assert result.count == 2
    new = result.relabel(threshold=0.75)
    assert result.threshold == 0.75
    assert new is result.labels
    assert result.count == 1 and result.labels[70, 70] == 0 and result.labels[25, 25] == 1
    result.relabel(threshold=0.3)
    assert result.count == 2


def test_relabel_min_size_and_instances():
    prob = _discs((100, 100), [(25, 25), (70, 70)], [10, 3])
    result = _result(prob)
    assert result.count == 2
    result.relabel(min_size=100)
    assert result.count == 1 and result.min_size == 100
    result.relabel(instances=False)
    assert not result.instances and set(np.unique(result.labels)) == {0, 1}
    assert result.count == 1


# --------------------------------------------------------------------------- measure / summarize


def test_measure_returns_regionprops_columns():
    labels = np.zeros((64, 64), np.uint32)
    labels[disk((20, 20), 8)] = 1
    labels[disk((45, 45), 6)] = 2
    image = np.full((64, 64, 3), 200, np.uint8)
    image[labels == 1] = (10, 20, 30)
    table = measure(labels, image)
    for column in ("label", "area", "centroid-0", "centroid-1", "bbox-0", "eccentricity", "solidity",
                   "perimeter", "major_axis_length", "minor_axis_length", "orientation",
                   "mean_intensity-0", "mean_intensity-2"):
        assert column in table, column
    np.testing.assert_array_equal(table["label"], [1, 2])
    np.testing.assert_array_equal(table["area"], [(labels == 1).sum(), (labels == 2).sum()])
    np.testing.assert_allclose(table["centroid-0"], [20, 45], atol=0.01)
    np.testing.assert_allclose(table["mean_intensity-0"], [10, 200])
    np.testing.assert_allclose(table["mean_intensity-2"], [30, 200])
    assert not any(k.startswith("mean_intensity") for k in measure(labels))


def test_measure_errors():
    from napari_minenet.data import InputError

    with pytest.raises(InputError, match="2-D labels"):
        measure(np.zeros((2, 8, 8), np.uint32))
    with pytest.raises(InputError, match="differ in size"):
        measure(np.zeros((32, 32), np.uint32), np.arange(40 * 32, dtype=np.uint16).reshape(40, 32))


def test_summarize():
    labels = np.zeros((10, 10), np.uint32)
    labels[0:2, 0:5] = 1  # 10 px
    labels[5:10, 5:9] = 3  # 20 px (ids need not be consecutive)
    assert summarize(labels, "nuclei") == "2 nuclei, mean area 15 px"
    assert summarize(labels > 0, "vessels", instances=False) == "30.0% of the image is vessels"
    assert summarize(np.zeros((4, 4), np.uint32), "nuclei") == "0 nuclei found"
    assert summarize(np.zeros((0, 0), np.uint32)) == "nothing segmented"


# --------------------------------------------------------------------------- many objects per call


def _blobs(seed, shape=(160, 200), n=40):
    """Random overlapping discs of random radii: touching clumps, single objects, holes."""
    rng = np.random.default_rng(seed)
    prob = np.zeros(shape, np.float32)
    for _ in range(n):
        c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        prob[disk(c, int(rng.integers(3, 13)), shape=shape)] = 1.0
    return prob


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_maxima_equal_skimage_h_maxima_object_by_object(seed):
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    from napari_minenet.instance_atlas import _dynamic_maxima

    mask = _blobs(seed) > 0.5
    dist = ndi.distance_transform_edt(mask)
    f = ndi.gaussian_filter(dist, 1.0) * mask
    cc, n = ndi.label(mask)
    got = _dynamic_maxima(f, 2.0)
    expected = np.zeros_like(got)
    for index, sl in enumerate(ndi.find_objects(cc), start=1):
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        crop = np.where(cc[sl] == index, f[sl], 0.0)
        expected[sl] |= h_maxima(crop, 2.0).astype(bool) & (cc[sl] == index)
    assert n > 5 and expected.any()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("use_contour", [False, True])
def test_split_is_the_same_whatever_the_atlas_size(monkeypatch, use_contour):
    import napari_minenet.postprocess as pp

    prob = _blobs(7, (240, 260), 80)
    contour = None
    if use_contour:
        from scipy import ndimage as ndi

        contour = (ndi.morphological_gradient(prob, size=3) > 0).astype(np.float32) * 0.9
    one = labels_from_probability(prob, contour=contour, instances=True, fill_holes=True, min_size=5)
    monkeypatch.setattr(pp, "_ATLAS_PIXELS", 2000)  # many small atlases instead of one
    many = labels_from_probability(prob, contour=contour, instances=True, fill_holes=True, min_size=5)
    assert one.max() > 10
    np.testing.assert_array_equal(one, many)


@pytest.mark.parametrize("workers", [2, 3])
def test_atlases_in_threads_give_the_labels_of_one_thread(monkeypatch, workers):
    """Atlases split in threads (waves of ``workers``), written in order: the same labels and
    ids as one thread, with many atlases and objects whose crops overlap neighbouring atlases."""
    from scipy import ndimage as ndi

    import napari_minenet.postprocess as pp

    prob = _blobs(11, (260, 300), 110)
    contour = (ndi.morphological_gradient(prob, size=3) > 0).astype(np.float32) * 0.9
    mask = prob > 0.5
    kw = dict(contour=contour, probability=prob, fill_holes=True, min_size=5)
    monkeypatch.setattr(pp, "_ATLAS_PIXELS", 1500)  # many small atlases
    one = pp.split_instances(mask, workers=1, **kw)
    threaded = pp.split_instances(mask, workers=workers, **kw)
    assert one.max() > 20
    np.testing.assert_array_equal(one, threaded)
    assert pp.split_workers() >= 1


def test_many_touching_pairs_each_split_in_two():
    pairs = [(30 + 60 * i, 30 + 70 * j) for i in range(5) for j in range(6)]
    centres = [c for y, x in pairs for c in ((y, x - 12), (y, x + 12))]
    prob = _discs((300, 420), centres, 14)
    labels = labels_from_probability(prob, instances=True)
    assert labels.max() == 2 * len(pairs)
    for (ya, xa), (yb, xb) in zip(centres[::2], centres[1::2]):
        assert labels[ya, xa] != labels[yb, xb]
    assert ((labels > 0) == (prob > 0.5)).all()


def test_a_hole_is_filled_with_its_own_object_only():
    prob = _discs((80, 80), [(40, 40)], 30)
    prob[disk((40, 40), 12)] = 0  # a ring ...
    prob[disk((40, 40), 4)] = 1  # ... around a small separate object in its hole
    labels = labels_from_probability(prob, instances=True, fill_holes=True)
    ring, inner = labels[40, 15], labels[40, 40]
    assert ring > 0 and inner > 0 and ring != inner
    assert labels[40, 30] == ring  # the hole between them belongs to the ring


@pytest.mark.parametrize("chunk_rows", [7, 1024])
def test_bounding_boxes_are_find_objects_for_the_wanted_ids(monkeypatch, chunk_rows):
    from scipy import ndimage as ndi

    import napari_minenet.postprocess as pp

    monkeypatch.setattr(pp, "_CHUNK_ROWS", chunk_rows)  # objects across chunk borders
    rng = np.random.default_rng(3)
    labels, n = ndi.label(ndi.gaussian_filter(rng.random((150, 230)), 2) > 0.5)
    labels = labels.astype(np.uint32)
    wanted = np.bincount(labels.ravel(), minlength=n + 1) >= 12
    wanted[0] = True  # (the background is never an object)
    expected = [(i, sl) for i, sl in enumerate(ndi.find_objects(labels), start=1) if wanted[i]]
    got = pp._bounding_boxes(labels, wanted)
    assert 10 < len(got) < n
    assert [(i, tuple((s.start, s.stop) for s in sl)) for i, sl in got] == [
        (i, tuple((s.start, s.stop) for s in sl)) for i, sl in expected]


def test_a_component_larger_than_any_object_is_left_whole(monkeypatch):
    """A region whose box exceeds _LARGEST_SPLIT_BOX (a black border, a fold) is not split and
    costs no atlas of its size; objects beside it are split as before."""
    import napari_minenet.postprocess as pp

    prob = np.zeros((64, 200), np.float32)
    prob[:, :96] = _discs(**TOUCHING)
    prob[4:60, 110:196] = 1.0  # a big "dark region", 56 x 86 px, with a hole
    prob[30:34, 150:154] = 0.0
    normal = labels_from_probability(prob, instances=True, fill_holes=True)
    assert len(_ids(normal[:, :96])) == 2 and normal[31, 151] > 0  # split and filled at the default limit
    monkeypatch.setattr(pp, "_LARGEST_SPLIT_BOX", 60 * 92)  # between the discs' box and the region's
    labels = labels_from_probability(prob, instances=True, fill_holes=True)
    assert len(_ids(labels[:, :96])) == 2  # the discs are still split
    region = labels[4:60, 110:196]
    assert len(_ids(region)) == 1 and labels[31, 151] == 0  # one object, its hole kept


def test_fill_holes_by_labelling_is_scipys_fill_holes():
    """The atlas's hole filling (one labelling of the background) gives exactly
    ndi.binary_fill_holes: random blobs, rings with islands inside their holes, objects
    on the border, diagonal-only gaps (4-connected background)."""
    from scipy import ndimage as ndi

    from napari_minenet.instance_atlas import _fill_holes

    rng = np.random.default_rng(3)
    for k in range(20):
        obj = ndi.gaussian_filter(rng.random((60 + k, 90)), 2.0) > 0.5
        obj[10:30, 10:30] = True
        obj[14:26, 14:26] = False  # a ring ...
        obj[18:22, 18:22] = True  # ... with an island in its hole
        obj[0, :] = k % 2 == 0  # sometimes a row of foreground along the border
        obj[40, 40] = obj[41, 41] = obj[40, 42] = obj[42, 42] = True  # a pixel hole reached only diagonally
        obj[41, 40] = obj[42, 41] = obj[41, 43] = obj[40, 41] = True
        assert np.array_equal(_fill_holes(obj), ndi.binary_fill_holes(obj))
