"""Tests of napari_minenet.metrics (hand-computed cases, conventions, sklearn parity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_minenet.metrics import (
    aggregated_jaccard_index,
    confusion_counts,
    instance_metrics,
    mean_metrics,
    panoptic_quality,
    pixel_metrics,
    roc_auc,
)

# 4x4 example: tp = 3, fp = 2, fn = 1, tn = 10.
TRUTH_4 = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)
PRED_4 = np.array(
    [
        [1, 0, 0, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
    ]
)


def row(*segments: tuple[int, int, int], length: int = 12) -> np.ndarray:
    """A (1, length) label image; each segment is (label, start, stop_exclusive)."""
    out = np.zeros((1, length), np.int32)
    for lab, a, b in segments:
        out[0, a:b] = lab
    return out


# --------------------------------------------------------------------- pixel metrics


def test_confusion_counts_hand_example():
    assert confusion_counts(PRED_4, TRUTH_4) == (3, 2, 1, 10)
    # bool, float and arbitrary nonzero values are all foreground
    assert confusion_counts(PRED_4.astype(bool), TRUTH_4 * 7.5) == (3, 2, 1, 10)
    assert all(type(v) is int for v in confusion_counts(PRED_4, TRUTH_4))


def test_pixel_metrics_hand_example():
    m = pixel_metrics(PRED_4, TRUTH_4)
    assert set(m) == {"f1", "jaccard", "se", "sp", "acc"}
    assert m["f1"] == pytest.approx(6 / 9)
    assert m["jaccard"] == pytest.approx(3 / 6)
    assert m["se"] == pytest.approx(3 / 4)
    assert m["sp"] == pytest.approx(10 / 12)
    assert m["acc"] == pytest.approx(13 / 16)


def test_fov_restriction():
    fov = np.zeros((4, 4), bool)
    fov[:2] = True  # first two rows: tp = 3, fp = 1 (1,2), fn = 1 (0,1), tn = 3
    assert confusion_counts(PRED_4, TRUTH_4, fov) == (3, 1, 1, 3)
    m = pixel_metrics(PRED_4, TRUTH_4, fov=fov)
    assert m["acc"] == pytest.approx(6 / 8)
    assert m["sp"] == pytest.approx(3 / 4)
    # an integer FOV mask works the same
    assert confusion_counts(PRED_4, TRUTH_4, fov.astype(np.uint8) * 255) == (3, 1, 1, 3)


def test_degenerate_conventions():
    z = np.zeros((3, 3), bool)
    m = pixel_metrics(z, z)
    assert m == {"f1": 1.0, "jaccard": 1.0, "se": 1.0, "sp": 1.0, "acc": 1.0}
    # truth empty, prediction not: se vacuous (1.0), overlap scores 0
    p = z.copy()
    p[0, 0] = True
    m = pixel_metrics(p, z)
    assert m["se"] == 1.0 and m["f1"] == 0.0 and m["jaccard"] == 0.0
    assert m["sp"] == pytest.approx(8 / 9)
    # truth all foreground: sp vacuous
    o = np.ones((3, 3), bool)
    assert pixel_metrics(o, o)["sp"] == 1.0
    # empty FOV: no pixel counted
    assert confusion_counts(p, z, fov=z) == (0, 0, 0, 0)
    assert pixel_metrics(p, z, fov=z)["acc"] == 1.0
    # AUC undefined with one class in truth
    assert math.isnan(roc_auc(np.random.rand(3, 3), z))
    assert math.isnan(pixel_metrics(p, z, prob=np.random.rand(3, 3))["auc"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        confusion_counts(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="fov"):
        pixel_metrics(np.zeros((4, 4)), np.zeros((4, 4)), fov=np.ones((3, 3)))
    with pytest.raises(ValueError, match="prob"):
        roc_auc(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        aggregated_jaccard_index(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError):
        panoptic_quality(np.zeros((2, 2), int), np.zeros((3, 2), int))


def test_roc_auc_hand_example():
    # positives 0.8, 0.5; negatives 0.5, 0.1: pairs (0.8>0.5)=1, (0.8>0.1)=1,
    # (0.5=0.5)=0.5, (0.5>0.1)=1 -> 3.5 / 4
    assert roc_auc([0.8, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert roc_auc([0.1, 0.2, 0.3], [0, 1, 1]) == 1.0
    assert roc_auc([0.3, 0.2, 0.1], [0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, np.nan], [0, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_match_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    truth = rng.random((48, 40)) < 0.3
    prob = np.round(np.clip(truth * 0.3 + rng.random(truth.shape) * 0.8, 0, 1), 2)
    pred = prob > 0.5
    fov = rng.random(truth.shape) < 0.8
    for f in (None, fov):
        sel = np.ones(truth.shape, bool) if f is None else f
        t, p, s = truth[sel], pred[sel], prob[sel]
        m = pixel_metrics(pred, truth, prob=prob, fov=f)
        assert m["f1"] == pytest.approx(skm.f1_score(t, p))
        assert m["jaccard"] == pytest.approx(skm.jaccard_score(t, p))
        assert m["se"] == pytest.approx(skm.recall_score(t, p))
        assert m["sp"] == pytest.approx(skm.recall_score(~t, ~p))
        assert m["acc"] == pytest.approx(skm.accuracy_score(t, p))
        assert m["auc"] == pytest.approx(skm.roc_auc_score(t, s), abs=1e-12)
        assert roc_auc(prob, truth, f) == m["auc"]


def test_roc_auc_million_pixels_with_ties():
    # exact against scikit-learn on a million pixels with many ties (speed: benchmarks, not here:
    # a wall-clock bound in a unit test fails on a busy machine and proves nothing on a fast one)
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    truth = rng.random((1000, 1000)) < 0.1
    prob = (truth * 0.2 + rng.random(truth.shape)).astype(np.float32)
    prob = np.round(prob, 3)  # many ties
    auc = roc_auc(prob, truth)
    assert auc == pytest.approx(skm.roc_auc_score(truth.ravel(), prob.ravel()), abs=1e-12)


# ------------------------------------------------------------------ instance metrics


def test_aji_and_pq_hand_example():
    # GT 1 = [0,4) (area 4), GT 2 = [6,10) (area 4)
    # pred 1 = [0,3): inter 3, union 4 (IoU .75) with GT 1
    # pred 2 = [5,9): inter 3, union 5 (IoU .6) with GT 2
    # pred 3 = [10,12): unused, area 2
    gt = row((1, 0, 4), (2, 6, 10))
    pred = row((1, 0, 3), (2, 5, 9), (3, 10, 12))
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(6 / 11)
    pq = panoptic_quality(pred, gt)
    assert pq["dq"] == pytest.approx(2 / 2.5)  # TP 2, FP 1, FN 0
    assert pq["sq"] == pytest.approx((0.75 + 0.6) / 2)
    assert pq["pq"] == pytest.approx(0.8 * 0.675)
    im = instance_metrics(pred, gt)
    assert im == pytest.approx({"aji": 6 / 11, **pq})


def test_pq_one_match_one_unmatched():
    # GT 1 = [0,4), pred 1 = [1,5): IoU 3/5 = 0.6; GT 2 = [8,10) unmatched (FN)
    gt = row((1, 0, 4), (2, 8, 10))
    pred = row((1, 1, 5))
    pq = panoptic_quality(pred, gt)
    assert pq["dq"] == pytest.approx(1 / 1.5)
    assert pq["sq"] == pytest.approx(0.6)
    assert pq["pq"] == pytest.approx(0.4)


def test_pq_iou_exactly_half_is_not_a_match():
    gt = row((1, 0, 4))
    pred = row((1, 0, 2))  # IoU 2/4 = 0.5, not > 0.5
    assert panoptic_quality(pred, gt) == {"pq": 0.0, "dq": 0.0, "sq": 0.0}
    assert panoptic_quality(pred, gt, iou_threshold=0.4)["sq"] == pytest.approx(0.5)


def test_pq_low_threshold_is_one_to_one():
    # GT A=[0,4), B=[4,8); pred X=[1,6): IoU .5 with A, 2/7 with B; Y=[6,9): .4 with B
    gt = row((1, 0, 4), (2, 4, 8))
    pred = row((1, 1, 6), (2, 6, 9))
    pq = panoptic_quality(pred, gt, iou_threshold=0.25)
    assert pq["dq"] == 1.0  # two one-to-one matches: A-X, B-Y
    assert pq["sq"] == pytest.approx((0.5 + 0.4) / 2)
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(pred, gt, iou_threshold=1.0)


def test_aji_prediction_overlapping_two_gt_original_definition():
    # GT 1 = [0,4), GT 2 = [4,8); pred 1 = [0,8) has IoU .5 with both and is picked
    # by both: C = 4 + 4, U = 8 + 8; pred 2 = [10,12) is unused: U += 2.
    gt = row((1, 0, 4), (2, 4, 8))
    pred = row((1, 0, 8), (2, 10, 12))
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(8 / 18)
    # a one-to-one variant would give 4 / (8 + 4 + 2); make sure we are not that
    assert aggregated_jaccard_index(pred, gt) != pytest.approx(4 / 14)


def test_aji_unmatched_gt_adds_area():
    gt = row((1, 0, 4), (2, 8, 10))
    pred = row((1, 0, 4))
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(4 / 6)


def test_aji_picks_max_iou_not_max_intersection():
    # GT = [2,8) (6 px). pred 1 = [0,4): inter 2, union 8 (IoU .25);
    # pred 2 = [4,20): inter 4, union 18 (IoU .222). Max IoU -> pred 1, pred 2 unused:
    # C = 2, U = 8 + 16. (Choosing by intersection would give 4 / (18 + 4).)
    gt = row((1, 2, 8), length=24)
    pred = row((1, 0, 4), (2, 4, 20), length=24)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(2 / 24)


def test_instance_empty_conventions():
    z = np.zeros((5, 5), np.int32)
    one = z.copy()
    one[1:3, 1:3] = 4
    assert aggregated_jaccard_index(z, z) == 1.0
    assert panoptic_quality(z, z) == {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    assert instance_metrics(z, z) == {"aji": 1.0, "pq": 1.0, "dq": 1.0, "sq": 1.0}
    for a, b in ((one, z), (z, one)):
        assert instance_metrics(a, b) == {"aji": 0.0, "pq": 0.0, "dq": 0.0, "sq": 0.0}
    assert instance_metrics(one, one) == {"aji": 1.0, "pq": 1.0, "dq": 1.0, "sq": 1.0}


def test_invalid_labels_raise():
    with pytest.raises(ValueError, match="negative"):
        aggregated_jaccard_index(np.array([[-1, 0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="integer"):
        panoptic_quality(np.array([[0.5, 0]]), np.array([[1, 0]]))


def _instance_pair(rng: np.random.Generator, shape=(64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt): ~35-50 blob instances each; pred is a noisy version of gt."""
    base = ndi.gaussian_filter(rng.random(shape), 1.5)
    gt, _ = ndi.label(base > np.quantile(base, 0.7))
    noise = ndi.gaussian_filter(rng.standard_normal(shape), 1.0)
    pert = base + 0.3 * np.std(base) * noise
    pred, _ = ndi.label(pert > np.quantile(pert, 0.72))
    return pred, gt


def _naive_aji(pred: np.ndarray, gt: np.ndarray) -> float:
    """Per-instance loop reference (HoVer-Net get_fast_aji semantics)."""
    p_ids = [i for i in np.unique(pred) if i]
    g_ids = [i for i in np.unique(gt) if i]
    if not p_ids and not g_ids:
        return 1.0
    c = u = 0
    used = set()
    for g in g_ids:
        gm = gt == g
        best = None
        for p in p_ids:
            pm = pred == p
            inter = np.sum(gm & pm)
            if inter == 0:
                continue
            union = np.sum(gm | pm)
            key = (inter / union, inter, -p)
            if best is None or key > best[0]:
                best = (key, p, inter, union)
        if best is None:
            u += gm.sum()
        else:
            c += best[2]
            u += best[3]
            used.add(best[1])
    u += sum(np.sum(pred == p) for p in p_ids if p not in used)
    return c / u if u else 0.0


def _naive_pq(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    p_ids = [i for i in np.unique(pred) if i]
    g_ids = [i for i in np.unique(gt) if i]
    ious = []
    for g in g_ids:
        gm = gt == g
        for p in p_ids:
            pm = pred == p
            iou = np.sum(gm & pm) / np.sum(gm | pm)
            if iou > 0.5:
                ious.append(iou)
    tp = len(ious)
    dq = tp / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(g_ids) - tp))
    sq = float(np.mean(ious)) if ious else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


@pytest.mark.parametrize("seed", [0, 1])
def test_instance_metrics_match_naive_reference(seed):
    rng = np.random.default_rng(seed)
    pred, gt = _instance_pair(rng)
    assert gt.max() > 20 and pred.max() > 20
    got = instance_metrics(pred, gt)
    assert 0.0 < got["aji"] < 1.0 and 0.0 < got["pq"] < 1.0
    assert got["aji"] == pytest.approx(_naive_aji(pred, gt))
    assert {k: got[k] for k in ("pq", "dq", "sq")} == pytest.approx(_naive_pq(pred, gt))
    # with pixels erased from the prediction, the naive reference still agrees
    holes = np.where(rng.random(gt.shape) < 0.05, 0, pred)
    assert aggregated_jaccard_index(holes, gt) == pytest.approx(_naive_aji(holes, gt))


def test_label_permutation_and_large_ids_invariance():
    rng = np.random.default_rng(5)
    pred, gt = _instance_pair(rng)
    ref = instance_metrics(pred, gt)
    assert 0.0 < ref["aji"] < 1.0 and 0.0 < ref["pq"] < 1.0

    def remap(lab: np.ndarray) -> np.ndarray:
        n = int(lab.max())
        new_ids = 1 + rng.choice(2**31 - 1, size=n, replace=False)
        lut = np.concatenate([[0], new_ids]).astype(np.uint32)
        return lut[lab]

    big_pred, big_gt = remap(pred), remap(gt)
    assert big_pred.dtype == np.uint32 and big_pred.max() > 2**20
    assert instance_metrics(big_pred, big_gt) == pytest.approx(ref)
    # simple permutation of small consecutive ids
    perm = np.concatenate([[0], rng.permutation(np.arange(1, pred.max() + 1))])
    assert instance_metrics(perm[pred], gt) == pytest.approx(ref)
    # swapping roles keeps PQ (symmetric) unchanged
    swapped = panoptic_quality(gt, pred)
    assert swapped == pytest.approx({k: ref[k] for k in ("pq", "dq", "sq")})


def test_non_consecutive_ids_hand_example():
    gt = row((1000, 0, 4), (7, 6, 10))
    pred = row((2**31 - 1, 0, 3), (3, 5, 9), (99, 10, 12)).astype(np.uint32)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(6 / 11)
    assert panoptic_quality(pred, gt)["pq"] == pytest.approx(0.54)
    # no background pixel at all, large ids: GT is one instance of 12 px, the prediction
    # two halves of IoU 0.5 each -> AJI = 6 / (12 + 6) (one half unused), no PQ match
    gt_full = np.full((1, 12), 2**30, np.uint32)
    pred_full = row((5, 0, 6), (2**31 - 1, 6, 12)).astype(np.uint32)
    assert aggregated_jaccard_index(pred_full, gt_full) == pytest.approx(1 / 3)
    assert panoptic_quality(pred_full, gt_full)["dq"] == 0.0


def test_instance_metrics_on_two_thousand_objects():
    # 45 x 45 = 2025 square nuclei of 20x20 px on a 1000x1000 image; prediction shifted
    # by 2 px: each IoU = (18*20) / (2*400 - 360) = 360/440.
    gt = np.zeros((1000, 1000), np.int32)
    ys, xs = np.meshgrid(np.arange(45), np.arange(45), indexing="ij")
    lab = (ys * 45 + xs + 1).astype(np.int32)
    block = np.zeros((22, 22), bool)
    block[1:21, 1:21] = True
    tiles = np.kron(lab, np.ones((22, 22), np.int32)) * np.tile(block, (45, 45))
    gt[:990, :990] = tiles
    pred = np.roll(gt, 2, axis=1) * 3 + 17  # different, non-consecutive ids
    pred[np.roll(gt, 2, axis=1) == 0] = 0
    m = instance_metrics(pred, gt)
    iou = 360 / 440
    assert m["aji"] == pytest.approx(iou)
    assert m["dq"] == 1.0
    assert m["sq"] == pytest.approx(iou)


# ------------------------------------------------------------------------ aggregation


def test_mean_metrics():
    rows = [
        {"f1": 0.5, "auc": float("nan"), "x": float("nan")},
        {"f1": 1.0, "auc": 0.8, "x": float("nan")},
        {"f1": 0.0, "auc": 0.6, "extra": 2.0},
    ]
    m = mean_metrics(rows)
    assert m == pytest.approx({"f1": 0.5, "auc": 0.7, "extra": 2.0})
    assert "x" not in m
    assert list(m) == ["f1", "auc", "extra"]
    assert mean_metrics([]) == {}
