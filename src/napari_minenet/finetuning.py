"""Fine-tuning a model on a handful of corrected examples, safely.

What makes fine-tuning from 1-4 corrections help instead of hurt (docs/training.md, docs/results.md):

* the same normalisation as in training and segmentation: each batch holds patches of one
  image, so BatchNorm uses that image's statistics (segmentation re-estimates them on the
  image being segmented);
* only the BatchNorm scales / shifts and the final classifier learn (``train="norm"``); an
  L2-SP penalty keeps the convolution weights that learn near the parent's;
* a held-out part of the corrections (whole examples when there are 4 or more, otherwise
  a strip of each example) scores the parent *before* training and every few steps
  during it; the best weights are kept;
* the new version is only accepted when it beats the parent on that held-out part
  (loss at least 3 % lower, F1 and, for nuclei, AJI at least as high);
  otherwise the caller is told and nothing replaces the parent.

``finetune`` is a generator like ``training.fit``; its return value says whether the new
version was accepted and where it was saved.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import InputError, TrainingExample, load_dataset
from .inference import select_device
from .losses import MiniNetLoss
from .patches import Augmentation, PatchSampler
from .training import TrainingProgress, fit, hardware_description, resize_examples, validate
from .zoo import SegmentationModel, load_model, save_model, user_models_dir

__all__ = ["FinetuneConfig", "FinetuneResult", "acceptance", "finetune", "holdout_split", "l2sp_penalty",
           "norm_parameters", "version_name"]


SAVE_AND_LAST_STEP_S = 2.0  # seconds kept back from the budget (a CPU step of 8 x 256^2 is ~0.7 s)


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


@dataclass
class FinetuneResult:
    model: SegmentationModel
    accepted: bool
    reason: str
    before: dict[str, float]
    after: dict[str, float]
    steps: int
    seconds: float
    saved_to: Path | None


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
    base = re.sub(r"-ft-\d{8}-\d{6}$", "", parent_name)
    when = when or _dt.datetime.now()
    return f"{base}-ft-{when:%Y%m%d-%H%M%S}"


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

    Saves the new version (``output``, or a new name in the user models folder) only when
    it beats the parent on the held-out corrections. ``parent`` is never modified; a
    cancel raises :class:`~napari_minenet.inference.Cancelled` and saves nothing.
    """
    started = time.perf_counter()
    cfg = config or FinetuneConfig()
    parent_model = load_model(parent) if not isinstance(parent, SegmentationModel) else parent
    data_source = str(examples) if not isinstance(examples, list) else "corrected examples"
    if not isinstance(examples, list):
        examples = load_dataset(examples)
    # at the model's working size (crops are resized like the image they came from)
    examples = resize_examples(examples, parent_model.card.working_long_side)
    train_ex, held_ex = holdout_split(examples, cfg.holdout_fraction)
    if not train_ex:
        raise InputError("the examples are too small to fine-tune on (need at least 64 x 64 pixels)")
    dev = select_device(cfg.device)
    torch.manual_seed(cfg.seed)

    card = dataclasses.replace(parent_model.card)
    card.name = version_name(parent_model.card.name) if output is None else Path(output).name.removesuffix(".safetensors")
    card.parent = parent_model.card.name
    card.created = ""
    card.weights_sha256 = ""
    child = SegmentationModel(copy.deepcopy(parent_model.network).to(dev), card)
    if cfg.train == "norm":
        learning = set(norm_parameters(child.network))
        for name, param in child.network.named_parameters():
            param.requires_grad = name in learning
    elif cfg.train != "all":
        raise ValueError(f"FinetuneConfig.train must be 'all' or 'norm', not {cfg.train!r}")
    loss_fn = MiniNetLoss()
    sampler = PatchSampler(
        train_ex, patch_size=cfg.patch_size, batch_size=cfg.batch_size, normalization=card.normalization,
        in_channels=card.in_channels, contours=card.has_contours, augmentation=Augmentation.for_task(card.task),
        seed=cfg.seed,
    )
    patch = min(cfg.patch_size, *(min(ex.mask.shape) for ex in train_ex))
    sampler.patch_size = max(32, patch - patch % 4)

    # instance models are judged on the instances users see (AJI), not only on pixels
    instances = card.instances and bool(held_ex) and all(ex.labels is not None for ex in held_ex)
    t_validate = time.perf_counter()
    before_loss, before, _ = (validate(parent_model, held_ex, loss_fn, dev, instances=instances) if held_ex
                              else (float("nan"), {}, None))
    # the budget covers the whole run: setup, this validation, the last step that starts
    # inside fit()'s budget, the validation fit() makes after it (about as long as this one)
    # and saving (the last two: SAVE_AND_LAST_STEP_S)
    validation_s = time.perf_counter() - t_validate
    spent = time.perf_counter() - started
    train_budget = max(1.0, cfg.max_seconds - spent - validation_s - SAVE_AND_LAST_STEP_S)
    yield TrainingProgress("validation", 0, 0, cfg.max_steps, 0.0, val_loss=before_loss, val_score=before.get("f1"),
                           val_metrics=before, message="parent model on the held-out corrections")
    result = yield from fit(
        child, sampler, held_ex, lr=cfg.lr, epochs=max(1, cfg.max_steps // cfg.steps_per_validation),
        steps_per_epoch=cfg.steps_per_validation, lr_schedule="constant", patience=10**6,
        validate_instances=instances,
        max_seconds=train_budget, device=dev, loss_fn=loss_fn,
        regularizer=l2sp_penalty(parent_model.network, cfg.l2sp) if cfg.l2sp > 0 else None, cancel=cancel,
        pause=pause,
    )
    after = dict(result.val_metrics)
    after_loss = result.best_val_loss
    if not held_ex:
        accepted, reason = True, "no held-out corrections to compare with (examples too small to split)"
    else:
        accepted, reason = acceptance({"loss": before_loss, **before}, {"loss": after_loss, **after}, cfg.min_gain)
    card.training = {
        "kind": "fine-tune",
        "parent": parent_model.card.name,
        "parent_path": str(parent_model.path) if parent_model.path else None,
        "data": data_source,
        "examples": example_sources or [ex.id for ex in examples],
        "train_parts": [ex.id for ex in train_ex],
        "held_out_parts": [ex.id for ex in held_ex],
        "config": dataclasses.asdict(cfg),
        "steps": result.steps,
        "duration_s": round(result.elapsed, 1),
        "stopped": result.stopped,
        "hardware": hardware_description(dev),
        "torch": torch.__version__,
    }
    card.metrics = {"held-out corrections": {"before": {"loss": before_loss, **before},
                                              "after": {"loss": after_loss, **after}}}
    if accepted:
        after_f1 = after.get("f1")
        if after_f1 is not None:
            card.metrics["held-out corrections"]["f1"] = after_f1
    saved = None
    if accepted:
        target = Path(output) if output is not None else user_models_dir(create=True) / card.name
        saved = save_model(child, target)
    return FinetuneResult(child, accepted, reason, {"loss": before_loss, **before}, {"loss": after_loss, **after},
                          result.steps, result.elapsed, saved)
