"""What the user changed: corrections found by comparing the labels before and after editing.

An example added from the widget keeps the labels the model predicted ("before") next to
the labels the user corrected ("after"). Where they differ is the only new information a
fine-tune gets, so this module turns the pair into

* :func:`edited_pixels`: pixels whose foreground or object boundary changed (a painted
  nucleus, an erased false one, a line that splits a merge);
* :class:`Corrections`: the edits grouped into *corrections* (one per painted or erased
  object, with a margin around it), each with an id, so corrections can be held out to
  judge a fine-tuned version on edits it did not train on;
* :func:`correction_scores`: how many held-out corrections a candidate reproduces, and
  how much of the rest of the image it changes.

docs/training.md explains how finetuning weights the pixels with these maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Corrections", "edited_pixels", "find_corrections", "correction_scores", "CorrectionScores",
           "JudgeRule", "correction_acceptance", "changed_objects"]

#: margin (pixels at the model's working size) around an edited object that counts as part
#: of the correction: the boundary of a painted nucleus and the tissue next to an erased
#: one are what the model must learn to see
MARGIN = 6


def _boundaries(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner")


def edited_pixels(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Boolean map of pixels the user changed: foreground added or removed, or an object
    boundary moved (a split or merge keeps the foreground but changes the boundaries)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"labels before {before.shape} and after {after.shape} the edit differ in shape")
    changed = (before > 0) != (after > 0)
    both = (before > 0) & (after > 0)
    if both.any() and (before[both] != after[both]).any():
        changed |= _boundaries(before) != _boundaries(after)
    return changed


@dataclass
class Corrections:
    """The corrections of one example: ``regions`` holds 0 outside any correction and
    1..n inside correction k (the edited objects, dilated by ``MARGIN``)."""

    regions: np.ndarray  # (H, W) int32
    count: int
    edited: np.ndarray  # (H, W) bool, the edited pixels themselves
    kinds: list[str]  # per correction: "added", "removed" or "reshaped"

    def mask(self, ids: list[int] | np.ndarray | None = None) -> np.ndarray:
        """Pixels of the given corrections (all when ``ids`` is None)."""
        if ids is None:
            return self.regions > 0
        return np.isin(self.regions, np.asarray(ids, dtype=self.regions.dtype)) & (self.regions > 0)


def find_corrections(before: np.ndarray, after: np.ndarray, margin: int = MARGIN, *,
                     objects: bool = True) -> Corrections:
    """Group the edited pixels into corrections.

    Instance labels (``objects=True``, nuclei): a correction is the union of the objects
    (before or after) that touch an edit, plus the edited pixels, dilated by ``margin``.
    Binary masks (``objects=False``, vessels and lesions): the foreground is one connected
    "object" (a vessel tree), so a correction is a connected piece of edited pixels dilated
    by ``margin``. Touching groups merge into one correction either way.
    """
    before, after = np.asarray(before), np.asarray(after)
    edited = edited_pixels(before, after)
    if not edited.any():
        return Corrections(np.zeros(before.shape, np.int32), 0, edited, [])
    area = edited.copy()
    for labels in (before, after) if objects else ():
        touched = np.unique(labels[edited & (labels > 0)])
        if touched.size:
            area |= np.isin(labels, touched)
    if margin > 0:
        area = ndi.binary_dilation(area, structure=np.ones((3, 3), bool), iterations=int(margin))
    regions, n = ndi.label(area)
    regions = regions.astype(np.int32)
    kinds = []
    fg_before, fg_after = before > 0, after > 0
    for k, sl in enumerate(ndi.find_objects(regions), start=1):
        inside = (regions[sl] == k) & edited[sl]
        added = int(np.count_nonzero(inside & fg_after[sl] & ~fg_before[sl]))
        removed = int(np.count_nonzero(inside & fg_before[sl] & ~fg_after[sl]))
        kinds.append("added" if added > 2 * removed else "removed" if removed > 2 * added else "reshaped")
    return Corrections(regions, int(n), edited, kinds)


@dataclass
class CorrectionScores:
    """How a model's labels compare with the corrected labels of some examples."""

    held_out: int = 0  # held-out corrections scored
    fixed: int = 0  # reproduced by the candidate (and not by the parent)
    broken: int = 0  # reproduced by the parent, not by the candidate
    parent_fixed: int = 0  # reproduced by the parent already (re-predicted on the crop)
    rest_pixels: int = 0  # pixels outside every correction
    rest_changed: int = 0  # of those, where the candidate's foreground differs from the corrected labels
    parent_rest_changed: int = 0  # same for the parent
    edited_agreement: float = float("nan")  # candidate: mean agreement on held-out edited pixels
    parent_edited_agreement: float = float("nan")
    #: mean BCE between the foreground probability and the corrected labels on the held-out
    #: edited pixels (lower: closer to what the user painted), candidate and parent
    edited_loss: float = float("nan")
    parent_edited_loss: float = float("nan")

    def add(self, other: CorrectionScores) -> CorrectionScores:
        def mean(a: float, na: int, b: float, nb: int) -> float:
            parts = [(a, na), (b, nb)]
            parts = [(v, n) for v, n in parts if n and np.isfinite(v)]
            return sum(v * n for v, n in parts) / sum(n for _, n in parts) if parts else float("nan")

        return CorrectionScores(
            self.held_out + other.held_out, self.fixed + other.fixed, self.broken + other.broken,
            self.parent_fixed + other.parent_fixed, self.rest_pixels + other.rest_pixels,
            self.rest_changed + other.rest_changed, self.parent_rest_changed + other.parent_rest_changed,
            mean(self.edited_agreement, self.held_out, other.edited_agreement, other.held_out),
            mean(self.parent_edited_agreement, self.held_out, other.parent_edited_agreement, other.held_out),
            mean(self.edited_loss, self.held_out, other.edited_loss, other.held_out),
            mean(self.parent_edited_loss, self.held_out, other.parent_edited_loss, other.held_out),
        )

    @property
    def rest_changed_fraction(self) -> float:
        """Extra fraction of the unedited pixels the candidate changes, beyond what the
        parent itself changes when it re-predicts the crop."""
        if not self.rest_pixels:
            return 0.0
        return max(0, self.rest_changed - self.parent_rest_changed) / self.rest_pixels

    @property
    def loss_drop(self) -> float:
        """Relative drop of the held-out corrections' loss from the parent to the candidate."""
        if not (np.isfinite(self.edited_loss) and np.isfinite(self.parent_edited_loss)) or self.parent_edited_loss <= 0:
            return float("nan")
        return 1.0 - self.edited_loss / self.parent_edited_loss

    @property
    def agreement_gain(self) -> float:
        """How much larger a share of the held-out edited pixels the candidate labels as the
        user did, than the parent (absolute: 0.1 = 10 points)."""
        if not (np.isfinite(self.edited_agreement) and np.isfinite(self.parent_edited_agreement)):
            return float("nan")
        return self.edited_agreement - self.parent_edited_agreement

    def summary(self) -> str:
        """'12 corrections it did not see: 35 % closer to them, right on 30 % of their pixels (was 4 %),
        2 fixed outright; changes 0.7 % of the rest'."""
        parts = []
        if self.held_out:
            unseen = self.held_out - self.parent_fixed
            text = f"{unseen} correction{'s' if unseen != 1 else ''} it did not see: "
            if np.isfinite(self.loss_drop):
                text += (f"{100 * self.loss_drop:.0f} % closer to them" if self.loss_drop >= 0
                         else f"{100 * -self.loss_drop:.0f} % further from them")
            if np.isfinite(self.edited_agreement):
                text += (f", right on {100 * self.edited_agreement:.0f} % of their pixels "
                         f"(was {100 * self.parent_edited_agreement:.0f} %)")
            text += f", {self.fixed} fixed outright"
            if self.broken:
                text += f", {self.broken} that were right undone"
            parts.append(text)
        parts.append(f"changes {100 * self.rest_changed_fraction:.1f} % of the rest")
        return "; ".join(parts)


#: a held-out correction counts as reproduced when the model's foreground agrees with the
#: corrected labels on at least this fraction of its edited pixels
REPRODUCED = 0.5


def _bce(prob: np.ndarray, target: np.ndarray) -> float:
    p = np.clip(prob.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(-np.mean(np.where(target, np.log(p), np.log1p(-p)))) if p.size else float("nan")


def correction_scores(candidate_fg: np.ndarray, parent_fg: np.ndarray, corrected_fg: np.ndarray,
                      corrections: Corrections, held_out: list[int] | np.ndarray,
                      valid: np.ndarray | None = None, candidate_prob: np.ndarray | None = None,
                      parent_prob: np.ndarray | None = None) -> CorrectionScores:
    """Score a candidate against the parent on one example.

    For each held-out correction: is it reproduced (foreground agrees with the corrected
    labels on >= ``REPRODUCED`` of its edited pixels) by the candidate, by the parent? On
    the pixels outside every correction: where does each disagree with the corrected
    labels (which there are the parent's own output at the time of the edit)?
    """
    held = set(int(k) for k in held_out)
    scores = CorrectionScores()
    regions, edited = corrections.regions, corrections.edited
    cand_ok = candidate_fg == corrected_fg
    par_ok = parent_fg == corrected_fg
    agreements, parent_agreements, losses, parent_losses = [], [], [], []
    for k, sl in enumerate(ndi.find_objects(regions), start=1):
        if sl is None or k not in held:
            continue
        pixels = (regions[sl] == k) & edited[sl]
        if valid is not None:
            pixels &= valid[sl]
        n = int(np.count_nonzero(pixels))
        if n == 0:
            continue
        a_c = float(np.count_nonzero(cand_ok[sl] & pixels)) / n
        a_p = float(np.count_nonzero(par_ok[sl] & pixels)) / n
        agreements.append(a_c)
        parent_agreements.append(a_p)
        if candidate_prob is not None and parent_prob is not None:
            truth = corrected_fg[sl][pixels]
            losses.append(_bce(candidate_prob[sl][pixels], truth))
            parent_losses.append(_bce(parent_prob[sl][pixels], truth))
        scores.held_out += 1
        scores.parent_fixed += a_p >= REPRODUCED
        scores.fixed += a_c >= REPRODUCED and a_p < REPRODUCED
        scores.broken += a_p >= REPRODUCED and a_c < REPRODUCED
    if agreements:
        scores.edited_agreement = float(np.mean(agreements))
        scores.parent_edited_agreement = float(np.mean(parent_agreements))
    if losses:
        scores.edited_loss = float(np.mean(losses))
        scores.parent_edited_loss = float(np.mean(parent_losses))
    rest = regions == 0
    if valid is not None:
        rest &= valid
    scores.rest_pixels = int(np.count_nonzero(rest))
    scores.rest_changed = int(np.count_nonzero(rest & ~cand_ok))
    scores.parent_rest_changed = int(np.count_nonzero(rest & ~par_ok))
    return scores


def changed_objects(before: np.ndarray, after: np.ndarray, *, instances: bool = True, iou: float = 0.8) -> int:
    """How many objects differ between two label images: objects of ``after`` without an
    object of ``before`` that overlaps it with IoU >= ``iou`` (new, reshaped, split or
    merged), plus objects of ``before`` that overlap nothing in ``after`` (removed). For
    binary labels: the number of pixels whose foreground changed."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"labels {before.shape} and {after.shape} differ in shape")
    if not instances:
        return int(np.count_nonzero((before > 0) != (after > 0)))
    b = before.ravel().astype(np.int64)
    a = after.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a = np.bincount(a)
    area_b = np.bincount(b)
    union = area_a[pairs[0]] + area_b[pairs[1]] - inter
    good = inter / union >= iou
    matched_a = set(pairs[0][good].tolist())
    ids_a = set(np.flatnonzero(area_a[1:]) + 1)
    ids_b = set(np.flatnonzero(area_b[1:]) + 1)
    # new, reshaped, split or merged objects count once each (as the object they are now);
    # removed ones are the old objects that overlap nothing now
    return len(ids_a - matched_a) + len(ids_b - set(pairs[1].tolist()))


@dataclass(frozen=True)
class JudgeRule:
    """What a candidate must show on the held-out corrections to replace its parent.

    ``min_loss_drop``: their BCE (foreground probability against the corrected labels, on
    the edited pixels) at least this much lower than the parent's. ``min_agreement_gain``:
    the share of their edited pixels the candidate labels as the user did, at least this
    much higher than the parent's (absolute; 0.08 = 8 points). ``max_rest_changed``: the
    share of the pixels nobody corrected that it changes, beyond the parent's own
    disagreement there. The values per task come from simulated users on data the model was
    trained on (nothing to gain there, so a candidate must beat what those runs reach) and
    on data it never saw: ``finetuning.config.JUDGE_RULES``, docs/training.md.
    """

    min_loss_drop: float = 0.2
    min_agreement_gain: float = 0.0
    max_rest_changed: float = 0.02


def correction_acceptance(scores: CorrectionScores, rule: JudgeRule) -> tuple[bool, str]:
    """Whether a candidate trained without the held-out corrections replaces its parent, and
    why, in the words the panel shows. Every part of ``rule`` must hold. Counting
    corrections "fixed" outright is reported but not required: a nuclei version that helps
    on other images typically moves every unseen correction part of the way without
    flipping many (docs/training.md).
    """
    summary = scores.summary()
    if not scores.held_out or not np.isfinite(scores.loss_drop):
        return False, f"no held-out correction could be scored ({summary})"
    if scores.loss_drop < rule.min_loss_drop:
        needs = f"needs {100 * rule.min_loss_drop:.0f} % closer" if rule.min_loss_drop > 0 else "it moved away"
        return False, f"not close enough to your corrections ({needs}): {summary}"
    if scores.agreement_gain < rule.min_agreement_gain:
        return False, (f"reproduces too little of your corrections (needs {100 * rule.min_agreement_gain:.0f} more "
                       f"points of their pixels): {summary}")
    if scores.rest_changed_fraction > rule.max_rest_changed:
        return False, f"changes more than {100 * rule.max_rest_changed:g} % of what you did not correct: {summary}"
    return True, summary
