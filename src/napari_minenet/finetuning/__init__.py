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
import time
from collections.abc import Callable, Generator
from pathlib import Path

import torch

from ..data import InputError, TrainingExample, load_dataset
from ..inference import select_device
from ..training import TrainingProgress, hardware_description, resize_examples
from ..zoo import SegmentationModel, check_model_name, load_model, save_model, user_models_dir
from .config import (
    FINETUNE_AUGMENTATION,
    JUDGE_RULES,
    FinetuneConfig,
    FinetuneResult,
    l2sp_penalty,
    norm_parameters,
    version_name,
)
from .from_corrections import learn_from_edits
from .from_labels import acceptance, holdout_split, learn_from_labels

__all__ = ["FinetuneConfig", "FinetuneResult", "JUDGE_RULES", "FINETUNE_AUGMENTATION",
           "acceptance", "finetune", "holdout_split", "l2sp_penalty", "norm_parameters", "version_name"]


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
    widget stores them) are learnt from their corrections (:func:`from_corrections.learn_from_edits`);
    examples with full labels only (a data folder) from every pixel (:func:`from_labels.learn_from_labels`).
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

    child, target = _new_version(parent_model, cfg, output, dev)
    learn = learn_from_edits if any(ex.before is not None for ex in examples) else learn_from_labels
    out = yield from learn(parent_model, child, examples, cfg, dev, cancel, pause)
    card = child.card
    card.training = _training_record(parent_model, cfg, out, dev, started, data_source,
                                     example_sources or [ex.id for ex in examples])
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


def _new_version(parent_model: SegmentationModel, cfg: FinetuneConfig, output, dev) -> tuple[SegmentationModel, Path]:
    """A copy of the parent under its new name (and where it will be saved), with only the
    parameters ``cfg.train`` names learning."""
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
    if card.bn_statistics == "image":
        # the stored BatchNorm statistics are the prior every image's statistics are blended with (card
        # bn_prior): they stay the parent's (its training images'), not those of the user's few tiles, which
        # training mode would otherwise write into them (measured: a version fine-tuned on 2 TNBC tiles with
        # its statistics replaced lost 0.041 F1 on the other tiles, and was kept)
        for module in child.network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
    if cfg.train == "norm":
        learning = set(norm_parameters(child.network))
        for name, param in child.network.named_parameters():
            param.requires_grad = name in learning
    return child, target


def _training_record(parent_model: SegmentationModel, cfg: FinetuneConfig, out, dev, started: float,
                     data_source: str, examples: list[str]) -> dict:
    """What the new version's card records about how it was made."""
    return {
        "kind": "fine-tune",
        "parent": parent_model.card.name,
        "parent_path": str(parent_model.path) if parent_model.path else None,
        "data": data_source,
        "examples": examples,
        **out.record,
        "config": dataclasses.asdict(cfg),
        "steps": out.fit.steps,
        "duration_s": round(out.seconds, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "stopped": out.fit.stopped,
        "hardware": hardware_description(dev),
        "torch": torch.__version__,
    }
