"""Evaluation metrics for binary and instance segmentation (numpy/scipy only).

Binary (pixel) metrics -- retinal vessels, skin lesions:

* :func:`confusion_counts`, :func:`pixel_metrics` (F1/Dice, Jaccard, sensitivity,
  specificity, accuracy, optionally ROC AUC) and :func:`roc_auc`, all optionally
  restricted to a field of view (FOV) mask.

Instance metrics -- nuclei:

* :func:`aggregated_jaccard_index` (AJI, Kumar et al. 2017) and
  :func:`panoptic_quality` (PQ/DQ/SQ, Kirillov et al. 2019), combined in
  :func:`instance_metrics`.

Instance metrics are computed from a sparse contingency table of overlapping
(ground truth, prediction) label pairs, built with one ``bincount``/``unique`` over
combined label codes, so a 1000x1000 image with thousands of instances takes tens of
milliseconds.

Conventions for degenerate cases (vacuous ratios count as perfect):

* ``f1`` and ``jaccard`` are 1.0 when ``tp + fp + fn == 0`` (truth and prediction both
  empty); ``se`` is 1.0 when ``tp + fn == 0`` (no positive in truth); ``sp`` is 1.0 when
  ``tn + fp == 0`` (no negative in truth); ``acc`` is 1.0 when no pixel is counted
  (empty FOV).
* ``auc`` is ``nan`` when the (FOV-restricted) truth holds only one class, since the
  ROC curve is undefined then; :func:`mean_metrics` skips ``nan`` values.
* AJI and PQ/DQ/SQ are 1.0 when both label images are empty, 0.0 when exactly one is.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "confusion_counts",
    "pixel_metrics",
    "roc_auc",
    "aggregated_jaccard_index",
    "panoptic_quality",
    "instance_metrics",
    "mean_metrics",
]


# ----------------------------------------------------------------------------- helpers


def _check_shapes(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch: {name_a} has shape {a.shape} but {name_b} has shape {b.shape}"
        )


def _as_mask(a: ArrayLike) -> NDArray[np.bool_]:
    """Boolean view of a boolean-like array (nonzero = foreground)."""
    arr = np.asarray(a)
    return arr if arr.dtype == np.bool_ else arr != 0


def _masks(
    pred: ArrayLike, truth: ArrayLike, fov: ArrayLike | None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Flattened boolean pred/truth, restricted to the FOV when given."""
    p, t = _as_mask(pred), _as_mask(truth)
    _check_shapes(p, t, "pred", "truth")
    if fov is not None:
        f = _as_mask(fov)
        _check_shapes(f, t, "fov", "truth")
        return p[f], t[f]
    return p.ravel(), t.ravel()


def _safe_ratio(num: float, den: float, empty: float) -> float:
    return float(num) / float(den) if den else float(empty)


# ------------------------------------------------------------------------ pixel metrics


def confusion_counts(
    pred: ArrayLike, truth: ArrayLike, fov: ArrayLike | None = None
) -> tuple[int, int, int, int]:
    """Return ``(tp, fp, fn, tn)`` for boolean-like arrays of equal shape.

    Nonzero values are foreground. ``fov`` (boolean-like, same shape) restricts the
    pixels counted. Raises ``ValueError`` on a shape mismatch.
    """
    p, t = _masks(pred, truth, fov)
    n = int(t.size)
    tp = int(np.count_nonzero(p & t))
    n_pred = int(np.count_nonzero(p))
    n_true = int(np.count_nonzero(t))
    fp = n_pred - tp
    fn = n_true - tp
    tn = n - tp - fp - fn
    return tp, fp, fn, tn


def pixel_metrics(
    pred: ArrayLike,
    truth: ArrayLike,
    prob: ArrayLike | None = None,
    fov: ArrayLike | None = None,
) -> dict[str, float]:
    """Binary segmentation metrics, restricted to ``fov`` when given.

    Keys: ``'f1'`` (= Dice), ``'jaccard'``, ``'se'`` (sensitivity/recall), ``'sp'``
    (specificity), ``'acc'`` and, only when ``prob`` (probability map of the same shape)
    is given, ``'auc'`` (see :func:`roc_auc`).

    Degenerate cases: f1 = jaccard = 1.0 when truth and pred are both empty; se = 1.0
    when truth has no positive; sp = 1.0 when truth has no negative; acc = 1.0 when no
    pixel is counted; auc = nan when truth has a single class.
    """
    tp, fp, fn, tn = confusion_counts(pred, truth, fov)
    out = {
        "f1": _safe_ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "jaccard": _safe_ratio(tp, tp + fp + fn, 1.0),
        "se": _safe_ratio(tp, tp + fn, 1.0),
        "sp": _safe_ratio(tn, tn + fp, 1.0),
        "acc": _safe_ratio(tp + tn, tp + fp + fn + tn, 1.0),
    }
    if prob is not None:
        _check_shapes(np.asarray(prob), np.asarray(truth), "prob", "truth")
        out["auc"] = roc_auc(prob, truth, fov)
    return out


def roc_auc(prob: ArrayLike, truth: ArrayLike, fov: ArrayLike | None = None) -> float:
    """Exact area under the ROC curve of scores ``prob`` against boolean-like ``truth``.

    Equals the Mann-Whitney U statistic with tied scores counted as 1/2, i.e. the same
    value as ``sklearn.metrics.roc_auc_score``. One sort (``np.unique``) plus integer
    counting: O(n log n), about 0.1 s for 10^6 pixels. Restricted to ``fov`` when given.
    Returns ``nan`` when truth holds only one class; raises ``ValueError`` for NaN scores
    or a shape mismatch.
    """
    s = np.asarray(prob)
    t = _as_mask(truth)
    _check_shapes(s, t, "prob", "truth")
    if fov is not None:
        f = _as_mask(fov)
        _check_shapes(f, t, "fov", "truth")
        s, t = s[f], t[f]
    else:
        s, t = s.ravel(), t.ravel()
    if s.dtype == np.bool_:
        s = s.astype(np.uint8)
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise ValueError("prob contains NaN values")
    n_pos = int(np.count_nonzero(t))
    n_neg = int(t.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Group equal scores; per distinct score count positives and negatives.
    _, inv = np.unique(s, return_inverse=True)
    inv = inv.ravel()
    total = np.bincount(inv).astype(np.int64)
    pos_cnt = np.bincount(inv[t], minlength=total.size).astype(np.int64)
    neg_cnt = total - pos_cnt
    neg_below = np.cumsum(neg_cnt) - neg_cnt  # negatives with a strictly lower score
    # U = sum over positives of (#negatives below + 0.5 * #negatives tied).
    twice_u = 2 * int(np.dot(pos_cnt, neg_below)) + int(np.dot(pos_cnt, neg_cnt))
    return twice_u / (2.0 * n_pos * n_neg)


# --------------------------------------------------------------------- instance metrics


def _as_labels(labels: ArrayLike, name: str) -> np.ndarray:
    """Validate a label image: integer (or bool, or integral float), non-negative."""
    arr = np.asarray(labels)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"{name} must contain integer label ids")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name} must not contain negative label ids")
    return arr


def _relabel(labels: np.ndarray) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
    """Map label ids to 0..n (0 stays background), keeping the order of the ids.

    Returns the flat relabelled image and the areas indexed by the new ids (index 0 is
    the background area).
    """
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(0, np.intp), np.zeros(1, np.int64)
    top = int(flat.max())
    if top <= 2 * flat.size + 1024:  # small ids: lookup table, no sort
        flat = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat)
        present = counts > 0
        present[0] = True
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(ids.size)
        return lut[flat], counts[ids].astype(np.int64)
    # Large ids: sort only the foreground pixels (much faster than the whole image).
    fg = flat != 0
    _, inv, counts = np.unique(flat[fg], return_inverse=True, return_counts=True)
    out = np.zeros(flat.size, np.intp)
    out[fg] = inv.ravel() + 1
    areas = np.empty(counts.size + 1, np.int64)
    areas[0] = flat.size - int(counts.sum())
    areas[1:] = counts
    return out, areas


class _Overlaps:
    """Sparse contingency table of two label images (only overlapping instance pairs)."""

    def __init__(self, pred_labels: ArrayLike, true_labels: ArrayLike) -> None:
        p = _as_labels(pred_labels, "pred_labels")
        t = _as_labels(true_labels, "true_labels")
        _check_shapes(p, t, "pred_labels", "true_labels")
        p_r, self.pred_area = _relabel(p)
        t_r, self.true_area = _relabel(t)
        self.n_pred = self.pred_area.size - 1
        self.n_true = self.true_area.size - 1
        both = (p_r > 0) & (t_r > 0)
        stride = self.n_pred + 1
        codes = t_r[both].astype(np.int64) * stride + p_r[both]
        n_bins = (self.n_true + 1) * stride
        if n_bins <= max(1 << 22, 4 * codes.size):
            counts = np.bincount(codes, minlength=n_bins)
            codes = np.flatnonzero(counts)
            counts = counts[codes]
        else:
            codes, counts = np.unique(codes, return_counts=True)
        #: ground-truth index (1..n_true), prediction index (1..n_pred), intersection
        self.ti = (codes // stride).astype(np.intp)
        self.pj = (codes % stride).astype(np.intp)
        self.inter = counts.astype(np.int64)
        self.union = self.true_area[self.ti] + self.pred_area[self.pj] - self.inter
        self.iou = self.inter / self.union


def _aji(ov: _Overlaps) -> float:
    if ov.n_true == 0 and ov.n_pred == 0:
        return 1.0
    if ov.n_true == 0 or ov.n_pred == 0:
        return 0.0
    # Best prediction per GT instance: max IoU, then max intersection, then lowest id.
    order = np.lexsort((ov.pj, -ov.inter, -ov.iou, ov.ti))
    ti_sorted = ov.ti[order]
    first = np.ones(order.size, bool)
    first[1:] = ti_sorted[1:] != ti_sorted[:-1]
    best = order[first]
    c = int(ov.inter[best].sum())
    u = int(ov.union[best].sum())
    matched_true = np.zeros(ov.n_true + 1, bool)
    matched_true[ov.ti[best]] = True
    used_pred = np.zeros(ov.n_pred + 1, bool)
    used_pred[ov.pj[best]] = True
    u += int(ov.true_area[1:][~matched_true[1:]].sum())
    u += int(ov.pred_area[1:][~used_pred[1:]].sum())
    return c / u


def _pq(ov: _Overlaps, iou_threshold: float) -> dict[str, float]:
    if ov.n_true == 0 and ov.n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    cand = ov.iou > iou_threshold
    if iou_threshold >= 0.5:
        # IoU > 0.5 pairs are unique on both sides (Kirillov et al., Thm. 1).
        ious = ov.iou[cand]
    else:
        ious = _max_iou_matching(ov.ti[cand], ov.pj[cand], ov.iou[cand])
    tp = int(ious.size)
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(ious.sum()) / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def _max_iou_matching(ti: np.ndarray, pj: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """IoUs of a one-to-one matching of candidate pairs maximising the total IoU."""
    if iou.size == 0:
        return iou
    from scipy.optimize import linear_sum_assignment

    rows, ti_c = np.unique(ti, return_inverse=True)
    cols, pj_c = np.unique(pj, return_inverse=True)
    gain = np.zeros((rows.size, cols.size))
    gain[ti_c.ravel(), pj_c.ravel()] = iou
    r, c = linear_sum_assignment(gain, maximize=True)
    matched = gain[r, c]
    return matched[matched > 0]


def aggregated_jaccard_index(pred_labels: ArrayLike, true_labels: ArrayLike) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, MoNuSeg), original definition.

    For each ground-truth instance the predicted instance of maximal IoU among those
    overlapping it is chosen (ties: larger intersection, then lower label id); its
    intersection is added to C and its union to U. A ground-truth instance with no
    overlapping prediction adds its area to U. Every predicted instance never chosen adds
    its area to U. AJI = C / U.

    As in the original definition (and the HoVer-Net ``get_fast_aji``), a predicted
    instance may be chosen by several ground-truth instances; its union is then counted
    once per choice, and it counts once as "used". Label ids need not be consecutive.
    Both images empty -> 1.0; exactly one empty -> 0.0.
    """
    return _aji(_Overlaps(pred_labels, true_labels))


def panoptic_quality(
    pred_labels: ArrayLike, true_labels: ArrayLike, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Panoptic quality (Kirillov et al. 2019) of instance label images.

    Matches are (ground truth, prediction) pairs with IoU > ``iou_threshold``; for a
    threshold >= 0.5 they are unique. For a threshold in [0, 0.5) a one-to-one matching
    maximising the total IoU is used (Hungarian algorithm, as in HoVer-Net).
    Returns ``{'pq', 'dq', 'sq'}`` with dq = TP / (TP + FP/2 + FN/2), sq = mean IoU of
    the matches (0 without match) and pq = dq * sq. Both images empty -> all 1.0.
    """
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    return _pq(_Overlaps(pred_labels, true_labels), float(iou_threshold))


def instance_metrics(pred_labels: ArrayLike, true_labels: ArrayLike) -> dict[str, float]:
    """``{'aji', 'pq', 'dq', 'sq'}`` (PQ at IoU > 0.5), sharing one contingency table."""
    ov = _Overlaps(pred_labels, true_labels)
    return {"aji": _aji(ov), **_pq(ov, 0.5)}


# ------------------------------------------------------------------------- aggregation


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each key over images, ignoring ``nan`` values (and rows lacking the key).

    Keys appear in order of first occurrence; a key whose values are all ``nan`` is left
    out. An empty input gives ``{}``.
    """
    values: dict[str, list[float]] = {}
    for row in per_image:
        for key, val in row.items():
            values.setdefault(key, []).append(float(val))
    out: dict[str, float] = {}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=float)
        arr = arr[~np.isnan(arr)]
        if arr.size:
            out[key] = float(arr.mean())
    return out
