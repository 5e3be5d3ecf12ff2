"""Fine-tuning on corrected examples (the widget's): the user's edits are the signal.

The corrections (``napari_minenet.edits``) are trained towards the corrected labels, the
rest of each example towards the parent's own probabilities; a third of the corrections is
held out and the task's judge rule (``config.JUDGE_RULES``) decides on them.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from ..data import InputError
from ..edits import Corrections, CorrectionScores, correction_acceptance, correction_scores, find_corrections
from ..inference import Cancelled, predict_tiled
from ..losses import CorrectionLoss
from ..patches import PatchSampler, example_targets
from ..segmentation import labels_for
from ..training import TrainingProgress, TrainingResult
from ..zoo import SegmentationModel
from .config import FinetuneConfig, Outcome, fit_for, sampler_for

__all__ = ["learn_from_edits"]


def _foreground(probs: np.ndarray, card) -> np.ndarray:
    contour = probs[1] if card.has_contours else None
    return labels_for(probs[0], contour, card, card.default_threshold, card.instances, card.min_size) > 0


@dataclass
class _EditPlan:
    """The corrections of examples with a "before", which are held out, and the parent's view."""

    corrections: list[Corrections | None]  # per example (None: fully labelled example)
    count: int  # corrections in all
    held: list[list[int]]  # per example, the ids of its held-out corrections
    parent_probs: list[np.ndarray]
    parent_fg: list[np.ndarray]
    targets: list[np.ndarray]  # the corrected labels as training targets

    @property
    def n_held(self) -> int:
        return sum(len(h) for h in self.held)

    def setup_record(self) -> dict:
        kinds = [kind for c in self.corrections if c is not None for kind in c.kinds]
        return {"corrections": self.count, "held_out": self.n_held, "added": kinds.count("added"),
                "removed": kinds.count("removed"), "reshaped": kinds.count("reshaped")}


def _plan_edits(parent_model, examples, cfg: FinetuneConfig, dev, cancel) -> _EditPlan:
    """Find the corrections, choose the held-out ones (``cfg.held_out_corrections`` of them;
    fewer than ``cfg.min_corrections`` in all is an error) and predict each example with the
    parent once."""
    card = parent_model.card
    corrections = [None if ex.before is None else find_corrections(
        ex.before, ex.labels if ex.labels is not None else ex.mask, objects=card.instances) for ex in examples]
    keys = [(i, k) for i, c in enumerate(corrections) if c is not None for k in range(1, c.count + 1)]
    if not keys:
        raise InputError("the examples hold no corrections: their labels are what the model predicted. Paint the "
                         "objects it missed and erase the wrong ones before adding an example")
    if len(keys) < cfg.min_corrections:  # say so before the user waits for a version that cannot be judged
        raise InputError(f"{len(keys)} correction(s) in the examples; fine-tuning needs at least {cfg.min_corrections}: it "
                         "learns from two thirds of them and checks the new version on the rest. Correct a few more "
                         "objects and add them as examples")
    n_held = max(1, int(round(len(keys) * cfg.held_out_corrections)))
    held_keys = {keys[j] for j in np.random.default_rng(cfg.seed).permutation(len(keys))[:n_held]}
    held = [sorted(k for i, k in held_keys if i == e) for e in range(len(examples))]
    parent_probs, targets = [], []
    for ex in examples:
        if cancel is not None and cancel():
            raise Cancelled()
        parent_probs.append(predict_tiled(ex.image, parent_model, device=dev, scale=ex.scale))
        targets.append(example_targets(ex, card.has_contours))
    parent_fg = [_foreground(p, card) for p in parent_probs]
    return _EditPlan(corrections, len(keys), held, parent_probs, parent_fg, targets)


def _edit_sampler(plan: _EditPlan, examples, card, cfg: FinetuneConfig, include_held: bool) -> PatchSampler:
    """Patches whose targets are the corrected labels inside the corrections (weight
    ``edit_weight``) and the parent's probabilities elsewhere (``rest_weight``); without
    ``include_held`` the held-out corrections weigh nothing."""
    targets, weights, focus = [], [], []
    for ex, corr, hard, soft, held_ids in zip(examples, plan.corrections, plan.targets, plan.parent_probs, plan.held):
        if corr is None:  # a fully labelled example among corrected ones: every pixel counts
            targets.append(hard)
            weights.append(np.full(ex.mask.shape, cfg.edit_weight, np.float32))
            focus.append(None)
            continue
        learn = corr.mask(None if include_held else [k for k in range(1, corr.count + 1) if k not in held_ids])
        targets.append(np.where(learn[None], hard, soft.astype(np.float32)))
        w = np.full(ex.mask.shape, cfg.rest_weight, np.float32)
        w[learn] = cfg.edit_weight
        if not include_held and held_ids:
            w[corr.mask(held_ids)] = 0.0  # not a hint of the held-out corrections
        weights.append(w)
        focus.append(learn)
    return sampler_for(examples, card, cfg, corrections=True, targets=targets, weights=weights, focus=focus,
                    focus_probability=cfg.focus_probability)


def _judge(model: SegmentationModel, plan: _EditPlan, examples, dev, cancel,
           held: list[list[int]]) -> CorrectionScores:
    """Score ``model`` against the parent on the corrections ``held`` (per example) and on
    the pixels nobody corrected."""
    total = CorrectionScores()
    for ex, corr, ids, pfg, pprob in zip(examples, plan.corrections, held, plan.parent_fg, plan.parent_probs):
        if corr is None:
            continue
        if cancel is not None and cancel():
            raise Cancelled()
        probs = predict_tiled(ex.image, model, device=dev, scale=ex.scale)
        total = total.add(correction_scores(_foreground(probs, model.card), pfg, ex.mask, corr, ids, valid=ex.fov,
                                            candidate_prob=probs[0], parent_prob=pprob[0]))
    return total


def learn_from_edits(parent_model, child, examples, cfg, dev, cancel, pause):
    """Examples with the labels before the edit: the corrections are the signal.

    Pixels of a correction (edited objects and a margin) are trained towards the corrected
    labels with weight ``edit_weight``; the rest towards the parent's own probabilities
    with ``rest_weight`` (distillation), so a few strokes move the model without teaching
    it its own mistakes elsewhere. A share of the corrections is held out: the candidate
    trained without them must move towards them without changing much of the rest (the
    task's ``JUDGE_RULES``); if it passes, training continues on every correction.
    """
    card = child.card
    t_setup = time.perf_counter()
    plan = _plan_edits(parent_model, examples, cfg, dev, cancel)
    setup = {**plan.setup_record(), "setup_s": round(time.perf_counter() - t_setup, 1)}
    n_held = plan.n_held
    yield TrainingProgress("setup", 0, 0, cfg.max_steps, 0.0,
                           message=f"{plan.count} corrections in {len(examples)} example(s), {n_held} held out to "
                                   "judge the new version")
    result = yield from fit_for(child, _edit_sampler(plan, examples, card, cfg, include_held=False), [], cfg,
                                parent_model, dev, cfg.max_seconds * cfg.judge_fraction, cancel, pause, keep="last",
                                loss_fn=CorrectionLoss(), max_steps=round(cfg.max_steps * cfg.judge_fraction))
    yield TrainingProgress("checking", 0, result.steps, cfg.max_steps, result.elapsed,
                           message=f"checking the new version on the {n_held} corrections it did not learn from")
    scores = _judge(child, plan, examples, dev, cancel, plan.held)
    accepted, reason = correction_acceptance(scores, cfg.judge_rule(card.task))
    seconds = result.elapsed
    record = {"corrections": setup, "judged": dataclasses.asdict(scores)}
    if accepted and cfg.max_seconds - seconds >= 1.0 and cfg.max_steps - result.steps >= 1:
        seconds += yield from _refit(plan, parent_model, child, examples, cfg, dev, cancel, pause, result, seconds,
                                     record)
    before = {"fixed": float(scores.parent_fixed), "rest_changed": 0.0,
              "edited_agreement": scores.parent_edited_agreement}
    after = {"fixed": float(scores.parent_fixed + scores.fixed - scores.broken),
             "rest_changed": scores.rest_changed_fraction, "edited_agreement": scores.edited_agreement}
    return Outcome(accepted, reason, before, after, result, seconds, record, corrections=scores)


def _refit(plan, parent_model, child, examples, cfg, dev, cancel, pause, result: TrainingResult, seconds: float,
           record: dict):
    """After the judgement: go on training on every correction for the rest of the budget;
    undo it when it changes more than ``max_rest_changed`` of what nobody corrected.
    Returns the optimisation seconds it used (``result.steps`` grows when it is kept)."""
    judged_state = copy.deepcopy(child.network.state_dict())
    more = yield from fit_for(child, _edit_sampler(plan, examples, child.card, cfg, include_held=True), [], cfg,
                           parent_model, dev, cfg.max_seconds - seconds, cancel, pause, elapsed_before=seconds,
                           keep="last", loss_fn=CorrectionLoss(), max_steps=cfg.max_steps - result.steps)
    final = _judge(child, plan, examples, dev, cancel, [[] for _ in examples])
    record["refit"] = {"steps": more.steps, "rest_changed": final.rest_changed_fraction}
    if final.rest_changed_fraction > cfg.judge_rule(child.card.task).max_rest_changed:
        child.network.load_state_dict(judged_state)  # the refit drifted: keep the judged weights
        record["refit"]["kept"] = False
    else:
        record["refit"]["kept"] = True
        result.steps += more.steps
    return more.elapsed
