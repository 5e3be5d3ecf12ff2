"""Fine-tuning a model on a handful of corrected examples, safely.

Two ways in, chosen by what the examples hold (docs/training.md, docs/results.md):

* **Corrections** (the widget's examples keep the labels the model predicted *before* the
  user's edits): the edits are the signal. Pixels of each correction (the edited objects
  and a margin, :mod:`napari_minenet.edits`) are trained towards the corrected labels, the
  rest towards the parent's own probabilities, so a few strokes move the model without
  forgetting. A third of the corrections is held out; the candidate trained without them
  must come clearly closer to them while changing little of what nobody corrected (the
  task's rule in ``JUDGE_RULES``, set from measurements); only then does it train on every
  correction and replace its parent.
* **Full labels** (a folder of images and masks): every pixel is truth; a held-out strip
  (or whole examples when there are 4 or more) judges the candidate: loss at least
  ``min_gain`` lower, F1 and, for nuclei, AJI at least as high.

Either way only the BatchNorm scales / shifts and the final classifier learn by default
(``train="norm"``), each batch holds patches of one image (the same per-image
normalisation as segmentation), an L2-SP penalty keeps learning weights near the parent's,
and a refused or cancelled candidate is never saved.

``finetune`` is a generator like ``training.fit``; its return value says whether the new
version was accepted and where it was saved.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import re
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import InputError, TrainingExample, load_dataset
from .edits import (
    Corrections,
    CorrectionScores,
    JudgeRule,
    correction_acceptance,
    correction_scores,
    find_corrections,
)
from .inference import Cancelled, predict_tiled, select_device
from .losses import CorrectionLoss, MiniNetLoss
from .patches import Augmentation, PatchSampler, example_targets
from .segmentation import labels_for
from .training import TrainingProgress, TrainingResult, fit, hardware_description, resize_examples
from .validation import validate
from .zoo import SegmentationModel, check_model_name, load_model, save_model, user_models_dir

__all__ = ["FinetuneConfig", "FinetuneResult", "JUDGE_RULES", "acceptance", "finetune", "holdout_split", "l2sp_penalty",
           "norm_parameters", "version_name"]



@dataclass
class FinetuneConfig:
    max_seconds: float = 60.0
    lr: float = 2e-3  # for train="norm"; with train="all" use ~3e-4 (docs/training.md)
    l2sp: float = 1e-2  # weight of the pull towards the parent's weights
    patch_size: int = 256
    batch_size: int = 8
    steps_per_validation: int = 10
    max_steps: int = 10_000
    holdout_fraction: float = 0.25
    seed: int = 0
    device: str = "auto"
    #: accept only when the held-out loss falls by more than this fraction. The held-out part
    #: comes from the same crops as the training part, so fitting those crops lowers it a
    #: little even when the rest of the dataset gets worse: 5 of 6 in-domain nuclei runs fell
    #: 1.6-2.6 % (worse elsewhere; the sixth 4.7 %), the STARE runs 4.3-11 % (5 of 6 better
    #: elsewhere); docs/results.md
    min_gain: float = 0.03
    #: which parameters learn: "norm" (default) = BatchNorm scales / shifts and the final 1x1
    #: classifier (1,074 of Mini-Net's 37,721): they adapt contrast and calibration but cannot
    #: forget shapes; "all" = every weight. On STARE (a fundus dataset the vessels model never
    #: saw) "all" lowered F1 at every learning rate tried, "norm" raised it (docs/results.md).
    train: str = "norm"
    #: "flips" (flips and 90 degree turns), "task" (the augmentation of training from
    #: scratch) or "auto": flips for corrected examples (measured, docs/training.md), the
    #: task's for fully labelled ones (as before corrections were learnt from)
    augmentation: str = "auto"
    # --- examples with the labels predicted before the user's edits (the widget's examples)
    #: loss weight of the pixels of a correction (edited objects and a margin around them)
    edit_weight: float = 1.0
    #: loss weight everywhere else, where the target is the parent's own probabilities
    #: (distillation: keeps what the user did not correct). Corrections still count more:
    #: most patches are centred on them (``focus_probability``)
    rest_weight: float = 1.0
    #: fraction of patches centred on a correction (the rest at random positions)
    focus_probability: float = 0.75
    #: share of the corrections held out to judge the candidate (at least one)
    held_out_corrections: float = 1 / 3
    #: share of the training time spent before the judgement; the rest refits on every correction
    judge_fraction: float = 0.6
    #: the judge's rule (``edits.JudgeRule``): None takes the task's measured value from
    #: ``JUDGE_RULES``; set a number to override it
    min_loss_drop: float | None = None
    min_agreement_gain: float | None = None
    max_rest_changed: float | None = None

    def judge_rule(self, task: str) -> JudgeRule:
        """The rule for a model of ``task``, with this config's overrides."""
        rule = JUDGE_RULES.get(task, JUDGE_RULES["nuclei"])
        overrides = {k: getattr(self, k) for k in ("min_loss_drop", "min_agreement_gain", "max_rest_changed")
                     if getattr(self, k) is not None}
        return dataclasses.replace(rule, **overrides)


#: How a candidate must do on the held-out corrections, per task; set from simulated users
#: (20 person-like corrections on each of 2 images, Adam 2e-3, ~130 steps; docs/results.md)
#: on data like the training set, where there is nothing to gain (a candidate must beat
#: what those runs reach), and on data the model never saw:
#:
#: * nuclei: BCE on the held-out edited pixels 20 % lower. MoNuSeg validation (the training
#:   domain): 14-18 % with other images unchanged or slightly worse; TNBC (never seen):
#:   23-29 % on the runs that helped. Nuclei corrections are small and many; BatchNorm-only
#:   learning moves them all part of the way and flips few pixels, so the share of their
#:   pixels it gets right rises by only 0-4 points even when other slides gain +0.02 F1.
#: * vessels: the share of the held-out edited pixels labelled as the user painted them at
#:   least 8 points higher. DRIVE test (the training domain): +4..+6 points (BCE 11-15 %
#:   lower, other images -0.001 F1); STARE (never seen): +11..+31 points (BCE 10-26 % lower,
#:   other images +0.03..+0.05 F1). The BCE drop does not separate the two there, the
#:   agreement does. Vessel corrections are pieces of thin branches: a version that sees
#:   the user's vessels paints many of their pixels.
#: * lesions and custom models: not measured (no unseen lesion dataset here); they get the
#:   stricter nuclei rule.
JUDGE_RULES: dict[str, JudgeRule] = {
    "nuclei": JudgeRule(min_loss_drop=0.2, min_agreement_gain=0.0, max_rest_changed=0.02),
    "vessels": JudgeRule(min_loss_drop=0.0, min_agreement_gain=0.08, max_rest_changed=0.02),
}


@dataclass
class FinetuneResult:
    model: SegmentationModel
    accepted: bool
    reason: str
    before: dict[str, float]
    after: dict[str, float]
    steps: int
    seconds: float  # optimisation time
    saved_to: Path | None
    #: how the candidate did on held-out corrections (examples with the labels before the edit)
    corrections: CorrectionScores | None = None
    total_seconds: float = 0.0  # setup, optimisation, checks and saving


def holdout_split(examples: list[TrainingExample], fraction: float = 0.25,
                  min_train: int = 64, min_held: int = 32) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, held-out): whole examples when there are >= 4, else a strip of each example
    (the last ``fraction`` along its longer side). Examples too small to cut train only."""
    if not examples:
        raise InputError("no examples to fine-tune on: add at least one corrected example")
    if len(examples) >= 4:
        n_val = max(1, int(round(fraction * len(examples))))
        return examples[:-n_val], examples[-n_val:]
    train, held = [], []
    for ex in examples:
        h, w = ex.mask.shape
        axis = 0 if h >= w else 1
        length = (h, w)[axis]
        cut = int(round(length * (1 - fraction)))
        if length - cut < min_held or cut < min_train:
            train.append(ex)
            continue

        def part(sl: slice, suffix: str) -> TrainingExample:
            index = (sl, slice(None)) if axis == 0 else (slice(None), sl)
            return TrainingExample(
                f"{ex.id}{suffix}", ex.image[index], ex.mask[index],
                None if ex.labels is None else ex.labels[index], None if ex.fov is None else ex.fov[index], ex.source,
                scale=ex.scale,
            )

        train.append(part(slice(0, cut), ":train"))
        held.append(part(slice(cut, None), ":held-out"))
    return train, held


def l2sp_penalty(parent: torch.nn.Module, weight: float) -> Callable[[torch.nn.Module], torch.Tensor]:
    """``weight * sum ||w - w_parent||^2`` over the convolution weights (Li et al., 2018)."""
    anchors = {name: p.detach().clone() for name, p in parent.named_parameters() if p.ndim > 1}

    def penalty(net: torch.nn.Module) -> torch.Tensor:
        total = None
        for name, p in net.named_parameters():
            anchor = anchors.get(name)
            if anchor is not None:
                term = (p - anchor.to(p.device)).pow(2).sum()
                total = term if total is None else total + term
        return weight * total if total is not None else torch.zeros(())

    return penalty


def version_name(parent_name: str, when: _dt.datetime | None = None) -> str:
    """``<base>-ft-<date>-<time>-<4 hex>``: the random part keeps two versions made in the
    same second apart (``save_model`` also refuses to overwrite)."""
    base = re.sub(r"-ft-\d{8}-\d{6}(-[0-9a-f]{4})?$", "", parent_name)
    when = when or _dt.datetime.now()
    return f"{base}-ft-{when:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def norm_parameters(network: torch.nn.Module) -> list[str]:
    """Names of the parameters ``train="norm"`` fine-tunes: every BatchNorm's scale and shift,
    and the last layer with weights (the 1x1 classifier). Works for any architecture."""
    names: list[str] = []
    last: list[str] = []
    for mod_name, module in network.named_modules():
        own = [f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)]
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            names += own
        elif own:
            last = own
    return names + [n for n in last if n not in names]


def acceptance(before: dict[str, float], after: dict[str, float], min_gain: float = 0.03) -> tuple[bool, str]:
    """Whether a fine-tuned version replaces its parent, and why, from their held-out scores.

    All must hold: the held-out loss fell by more than the fraction ``min_gain``, and the
    held-out F1 and, for instance models, AJI (when measured) did not fall. A lower loss alone is not enough:
    a model can become more confident on the pixels it already got right while losing or
    merging objects.
    """
    b_loss, a_loss = before["loss"], after["loss"]
    if not a_loss < b_loss * (1.0 - min_gain):
        return False, (f"not better than the parent on the held-out corrections (loss {b_loss:.4f} -> "
                       f"{a_loss:.4f}, needs -{100 * min_gain:.0f} %); the parent stays selected")
    scores = [k for k in ("f1", "aji") if k in before and k in after]
    change = "".join(f", {k.upper()} {before[k]:.4f} -> {after[k]:.4f}" for k in scores)
    if any(after[k] < before[k] for k in scores):
        return False, (f"not better than the parent on the held-out corrections (loss {b_loss:.4f} -> "
                       f"{a_loss:.4f}{change}); the parent stays selected")
    return True, f"held-out loss {b_loss:.4f} -> {a_loss:.4f}{change}"


@dataclass
class _Outcome:
    """What one of the two learning paths found (``finetune`` turns it into a result)."""

    accepted: bool
    reason: str
    before: dict[str, float]
    after: dict[str, float]
    fit: TrainingResult
    seconds: float  # optimisation time
    record: dict  # what the card's training section records about the path
    corrections: CorrectionScores | None = None


def finetune(
    parent: SegmentationModel | str,
    examples: list[TrainingExample] | str | Path,
    config: FinetuneConfig | None = None,
    *,
    output: str | Path | None = None,
    cancel: Callable[[], bool] | None = None,
    pause: Callable[[], bool] | None = None,
    example_sources: list[str] | None = None,
) -> Generator[TrainingProgress, None, FinetuneResult]:
    """Fine-tune a copy of ``parent`` on corrected examples within a time budget.

    Examples that carry the labels predicted before the user's edits (``before``, as the
    widget stores them) are learnt from their corrections (:func:`_learn_from_edits`);
    examples with full labels only (a data folder) from every pixel (:func:`_learn_from_labels`).
    ``config.max_seconds`` is the optimisation time; setup and checks come on top and are
    reported separately.

    Saves the new version (``output``, or a new name in the user models folder) only when
    it is judged better than the parent. ``parent`` is never modified; a cancel raises
    :class:`~napari_minenet.inference.Cancelled` and saves nothing.
    """
    started = time.perf_counter()
    cfg = config or FinetuneConfig()
    if cfg.train not in ("all", "norm"):
        raise ValueError(f"FinetuneConfig.train must be 'all' or 'norm', not {cfg.train!r}")
    if cfg.augmentation not in ("auto", "flips", "task"):
        raise ValueError(f"FinetuneConfig.augmentation must be 'auto', 'flips' or 'task', not {cfg.augmentation!r}")
    parent_model = load_model(parent)
    data_source = str(examples) if not isinstance(examples, list) else "corrected examples"
    if not isinstance(examples, list):
        examples = load_dataset(examples)
    if not examples:
        raise InputError("no examples to fine-tune on: add at least one corrected example")
    # at the model's working size (crops are resized like the image they came from)
    examples = resize_examples(examples, parent_model.card.working_long_side)
    dev = select_device(cfg.device)
    torch.manual_seed(cfg.seed)

    card = dataclasses.replace(parent_model.card)
    card.name = check_model_name(version_name(parent_model.card.name) if output is None
                                 else Path(output).name.removesuffix(".safetensors"))
    target = Path(output) if output is not None else user_models_dir(create=True) / card.name
    if target.with_name(target.name.removesuffix(".safetensors") + ".safetensors").exists():
        raise InputError(f"{target} exists already: choose another output name (models are never overwritten)")
    card.parent = parent_model.card.name
    card.created = ""
    card.weights_sha256 = ""
    child = SegmentationModel(copy.deepcopy(parent_model.network).to(dev), card)
    if cfg.train == "norm":
        learning = set(norm_parameters(child.network))
        for name, param in child.network.named_parameters():
            param.requires_grad = name in learning

    learn = _learn_from_edits if any(ex.before is not None for ex in examples) else _learn_from_labels
    out = yield from learn(parent_model, child, examples, cfg, dev, cancel, pause)
    card.training = {
        "kind": "fine-tune",
        "parent": parent_model.card.name,
        "parent_path": str(parent_model.path) if parent_model.path else None,
        "data": data_source,
        "examples": example_sources or [ex.id for ex in examples],
        **out.record,
        "config": dataclasses.asdict(cfg),
        "steps": out.fit.steps,
        "duration_s": round(out.seconds, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "stopped": out.fit.stopped,
        "hardware": hardware_description(dev),
        "torch": torch.__version__,
    }
    card.metrics = {"held-out corrections": {"before": out.before, "after": out.after}}
    if out.corrections is not None:
        card.metrics["held-out corrections"]["judged"] = out.reason
    saved = None
    if out.accepted:
        after_f1 = out.after.get("f1")
        if after_f1 is not None:
            card.metrics["held-out corrections"]["f1"] = after_f1
        saved = save_model(child, target)
    return FinetuneResult(child, out.accepted, out.reason, out.before, out.after, out.fit.steps, out.seconds, saved,
                          corrections=out.corrections, total_seconds=time.perf_counter() - started)


def _fit(child: SegmentationModel, sampler: PatchSampler, held: list[TrainingExample], cfg: FinetuneConfig,
         parent: SegmentationModel, dev: torch.device, seconds: float, cancel, pause, *, instances: bool = False,
         elapsed_before: float = 0.0, keep: str = "best", loss_fn: torch.nn.Module | None = None,
         max_steps: int | None = None) -> Generator[TrainingProgress, None, TrainingResult]:
    """``training.fit`` with the fine-tuning settings for ``seconds`` or ``max_steps``
    (default ``cfg.max_steps``), whichever ends first; progress times continue from
    ``elapsed_before``."""
    max_steps = max(1, cfg.max_steps if max_steps is None else max_steps)
    steps_per_epoch = min(cfg.steps_per_validation, max_steps) if held else max_steps
    gen = fit(
        child, sampler, held, lr=cfg.lr, epochs=max(1, max_steps // steps_per_epoch),
        steps_per_epoch=steps_per_epoch, lr_schedule="constant", patience=10**6, validate_instances=instances,
        max_seconds=max(1.0, seconds), device=dev, loss_fn=loss_fn or MiniNetLoss(),
        regularizer=l2sp_penalty(parent.network, cfg.l2sp) if cfg.l2sp > 0 else None, cancel=cancel, pause=pause,
        keep=keep,
    )
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            return stop.value
        record.elapsed += elapsed_before
        yield record


#: fine-tuning on corrections augments with flips and 90 degree turns only: the examples already are the
#: user's stain and scanner, and the stain / intensity / scale jitter of training from
#: scratch made each step 3.6x slower on a 2-core CPU (60 steps: 166 s vs 46 s) and, on an
#: unseen H&E dataset, turned a gain into a loss (docs/training.md)
FINETUNE_AUGMENTATION = Augmentation(scale=(1.0, 1.0), flips=True, intensity=0.0, stain=0.0)


def _sampler(examples: list[TrainingExample], card, cfg: FinetuneConfig, corrections: bool,
             **kwargs) -> PatchSampler:
    patch = min(cfg.patch_size, *(min(ex.mask.shape) for ex in examples))
    flips = cfg.augmentation == "flips" or (cfg.augmentation == "auto" and corrections)
    augmentation = FINETUNE_AUGMENTATION if flips else Augmentation.for_task(card.task)
    return PatchSampler(
        examples, patch_size=max(32, patch - patch % 4), batch_size=cfg.batch_size, normalization=card.normalization,
        in_channels=card.in_channels, contours=card.has_contours, augmentation=augmentation, seed=cfg.seed, **kwargs,
    )


def _learn_from_labels(parent_model, child, examples, cfg, dev, cancel, pause):
    """Full labels (every pixel is truth): train on a part, judge on a held-out strip."""
    train_ex, held_ex = holdout_split(examples, cfg.holdout_fraction)
    if not train_ex:
        raise InputError("the examples are too small to fine-tune on (need at least 64 x 64 pixels)")
    loss_fn = MiniNetLoss()
    # instance models are judged on the instances users see (AJI), not only on pixels
    instances = child.card.instances and bool(held_ex) and all(ex.labels is not None for ex in held_ex)
    before_loss, before, _ = (validate(parent_model, held_ex, loss_fn, dev, instances=instances) if held_ex
                              else (float("nan"), {}, None))
    yield TrainingProgress("validation", 0, 0, cfg.max_steps, 0.0, val_loss=before_loss, val_score=before.get("f1"),
                           val_metrics=before, message="parent model on the held-out corrections")
    result = yield from _fit(child, _sampler(train_ex, child.card, cfg, corrections=False), held_ex, cfg, parent_model, dev,
                             cfg.max_seconds, cancel, pause, instances=instances)
    after, after_loss = dict(result.val_metrics), result.best_val_loss
    if not held_ex:
        accepted, reason = True, "no held-out corrections to compare with (examples too small to split)"
    else:
        accepted, reason = acceptance({"loss": before_loss, **before}, {"loss": after_loss, **after}, cfg.min_gain)
    record = {"train_parts": [ex.id for ex in train_ex], "held_out_parts": [ex.id for ex in held_ex]}
    return _Outcome(accepted, reason, {"loss": before_loss, **before}, {"loss": after_loss, **after}, result,
                    result.elapsed, record)


#: fewer corrections than this cannot be split into some to learn from and some to judge on
MIN_CORRECTIONS = 3


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
    """Find the corrections, choose the held-out ones (``cfg.held_out_corrections`` of them,
    none below ``MIN_CORRECTIONS``) and predict each example with the parent once."""
    card = parent_model.card
    corrections = [None if ex.before is None else find_corrections(
        ex.before, ex.labels if ex.labels is not None else ex.mask, objects=card.instances) for ex in examples]
    keys = [(i, k) for i, c in enumerate(corrections) if c is not None for k in range(1, c.count + 1)]
    if not keys:
        raise InputError("the examples hold no corrections: their labels are what the model predicted. Paint the "
                         "objects it missed and erase the wrong ones before adding an example")
    n_held = max(1, int(round(len(keys) * cfg.held_out_corrections))) if len(keys) >= MIN_CORRECTIONS else 0
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
    return _sampler(examples, card, cfg, corrections=True, targets=targets, weights=weights, focus=focus,
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


def _learn_from_edits(parent_model, child, examples, cfg, dev, cancel, pause):
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
    first = cfg.max_seconds * cfg.judge_fraction if n_held else cfg.max_seconds
    first_steps = round(cfg.max_steps * cfg.judge_fraction) if n_held else cfg.max_steps
    result = yield from _fit(child, _edit_sampler(plan, examples, card, cfg, include_held=False), [], cfg,
                             parent_model, dev, first, cancel, pause, keep="last", loss_fn=CorrectionLoss(),
                             max_steps=first_steps)
    if not n_held:
        reason = (f"only {plan.count} correction(s): at least {MIN_CORRECTIONS} are needed so the new version can be "
                  "checked on corrections it did not learn from")
        return _Outcome(False, reason, {}, {}, result, result.elapsed, {"corrections": setup})
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
    return _Outcome(accepted, reason, before, after, result, seconds, record, corrections=scores)


def _refit(plan, parent_model, child, examples, cfg, dev, cancel, pause, result: TrainingResult, seconds: float,
           record: dict):
    """After the judgement: go on training on every correction for the rest of the budget;
    undo it when it changes more than ``max_rest_changed`` of what nobody corrected.
    Returns the optimisation seconds it used (``result.steps`` grows when it is kept)."""
    judged_state = copy.deepcopy(child.network.state_dict())
    more = yield from _fit(child, _edit_sampler(plan, examples, child.card, cfg, include_held=True), [], cfg,
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
