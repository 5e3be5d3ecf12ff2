"""A simulated user who corrects a segmentation the way a person does, from ground truth.

Used by the human-in-the-loop benchmark (benchmarks/simulated_user.py) and its test: it
makes ``k`` corrections, the most visible first, and returns the corrected labels.

* **paint a missed object**: a true object less than half covered by the prediction is
  painted in whole with a new label (largest first);
* **erase a false object**: a predicted object that is mostly not on any true object is
  erased (most confident first, or largest when no probabilities are given);
* **split a merge** (instance models): a predicted object that covers most of two or more
  true objects is replaced by those true objects.

For binary models (vessels, lesions) the corrections are the connected pieces of the
difference between truth and prediction: missed pieces painted, false pieces erased,
largest first. Corrections alternate between the kinds so a few edits show each.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["simulate_corrections"]


def _instance_candidates(pred: np.ndarray, truth: np.ndarray, prob: np.ndarray | None):
    pred_fg, truth_fg = pred > 0, truth > 0
    missed, false, merged = [], [], []
    t_slices = ndi.find_objects(truth)
    for t, sl in enumerate(t_slices, start=1):
        if sl is None:
            continue
        obj = truth[sl] == t
        area = int(obj.sum())
        if area and np.count_nonzero(pred_fg[sl] & obj) < 0.5 * area:
            missed.append((area, t))
    for p, sl in enumerate(ndi.find_objects(pred), start=1):
        if sl is None:
            continue
        obj = pred[sl] == p
        area = int(obj.sum())
        if not area:
            continue
        on_truth = np.count_nonzero(truth_fg[sl] & obj)
        if on_truth < 0.2 * area:
            confidence = float(prob[sl][obj].mean()) if prob is not None else float(area)
            false.append((confidence, p))
            continue
        ids, counts = np.unique(truth[sl][obj], return_counts=True)
        covered = [t for t, c in zip(ids, counts) if t and c >= 0.5 * np.count_nonzero(truth[t_slices[t - 1]] == t)]
        if len(covered) >= 2:
            merged.append((area, p, covered))
    missed.sort(reverse=True)
    false.sort(reverse=True)
    merged.sort(key=lambda row: row[0], reverse=True)
    return missed, false, merged


def simulate_corrections(pred: np.ndarray, truth: np.ndarray, k: int, *, prob: np.ndarray | None = None,
                         instances: bool = True) -> tuple[np.ndarray, list[str]]:
    """Corrected labels after ``k`` person-like corrections, and what each one was
    ("added", "removed", "split"). ``pred`` and ``truth`` are label images (or 0/1 masks
    for binary models); ``prob`` is the foreground probability (to erase the most
    confident false objects first)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    out = pred.astype(np.uint32, copy=True)
    done: list[str] = []
    if not instances:
        missed_cc, n_m = ndi.label((truth > 0) & (pred == 0))
        false_cc, n_f = ndi.label((pred > 0) & (truth == 0))
        missed = sorted(((int(a), i) for i, a in enumerate(np.bincount(missed_cc.ravel())[1:], start=1)), reverse=True)
        false = sorted(((int(a), i) for i, a in enumerate(np.bincount(false_cc.ravel())[1:], start=1)), reverse=True)
        queues = {"added": [(missed_cc, i) for _, i in missed], "removed": [(false_cc, i) for _, i in false]}
        while len(done) < k and any(queues.values()):
            for kind in ("added", "removed"):
                if queues[kind] and len(done) < k:
                    cc, i = queues[kind].pop(0)
                    out[cc == i] = 1 if kind == "added" else 0
                    done.append(kind)
        return out, done
    truth = truth.astype(np.int64, copy=False)
    pred_labels = pred.astype(np.int64, copy=False)
    missed, false, merged = _instance_candidates(pred_labels, truth, prob)
    next_id = int(out.max()) + 1
    pattern = ["added", "removed", "added", "removed", "split"]
    queues = {"added": [t for _, t in missed], "removed": [p for _, p in false],
              "split": [(p, covered) for _, p, covered in merged]}
    turn = 0
    while len(done) < k and any(queues.values()):
        kind = pattern[turn % len(pattern)]
        turn += 1
        if not queues[kind]:
            continue
        item = queues[kind].pop(0)
        if kind == "added":
            out[truth == item] = next_id
            next_id += 1
        elif kind == "removed":
            out[(pred_labels == item) & (out == item)] = 0  # not what an earlier correction painted
        else:
            p, covered = item
            region = pred_labels == p
            out[region] = 0
            for t in covered:
                out[region & (truth == t)] = next_id
                next_id += 1
        done.append(kind)
    return out, done
