"""Validation and calibration: how a model scores on held-out images, and the thresholds
its card records.

Validation runs the network exactly as segmentation does (``predict_tiled``: per-image
BatchNorm statistics, tiling), so the validation score is the score users get. Used by the
training loop (``training.fit``), by fine-tuning and by ``scripts/recalibrate_model.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from .data import TrainingExample
from .inference import predict_tiled
from .metrics import instance_metrics, mean_metrics, pixel_metrics
from .patches import example_targets
from .segmentation import labels_for
from .zoo import ModelCard, SegmentationModel

__all__ = ["validate", "choose_threshold", "choose_instance_thresholds", "calibrate_and_score"]


def validate(
    model: SegmentationModel,
    examples: list[TrainingExample],
    loss_fn: nn.Module,
    device: torch.device,
    *,
    instances: bool = False,
    probabilities: list[np.ndarray] | None = None,
) -> tuple[float, dict[str, float], list[np.ndarray]]:
    """Validation loss and mean metrics over ``examples``, predicted like ``segment`` does.

    Returns (loss, metrics, probability maps) so callers can reuse the maps (threshold
    selection) without predicting again.
    """
    losses, rows, probs_out = [], [], []
    card = model.card
    for k, ex in enumerate(examples):
        probs = probabilities[k] if probabilities is not None else predict_tiled(ex.image, model, device=device,
                                                                                 scale=ex.scale)
        probs_out.append(probs)
        target = torch.from_numpy(example_targets(ex, card.has_contours))[None]
        logits = torch.logit(torch.from_numpy(probs)[None].clamp(1e-6, 1 - 1e-6))
        valid = None if ex.fov is None else torch.from_numpy(ex.fov[None, None].astype(np.float32))
        losses.append(float(loss_fn(logits, target, valid)))
        row = pixel_metrics(probs[0] > card.default_threshold, ex.mask, prob=probs[0], fov=ex.fov)
        if instances and ex.labels is not None:
            labels = _labels(probs, card, card.default_threshold)
            row.update(instance_metrics(labels, ex.labels))
        rows.append(row)
    return float(np.mean(losses)) if losses else float("nan"), mean_metrics(rows), probs_out


def _labels(probs: np.ndarray, card: ModelCard, threshold: float) -> np.ndarray:
    return labels_for(probs[0], probs[1] if card.has_contours else None, card, threshold, card.instances,
                      card.min_size)


def choose_threshold(model: SegmentationModel, examples: list[TrainingExample], probs: list[np.ndarray]) -> float:
    """The foreground threshold (0.30 ... 0.70) with the best mean validation F1."""
    if not examples:
        return model.card.default_threshold
    best_t, best_f1 = model.card.default_threshold, -1.0
    for t in np.round(np.arange(0.30, 0.701, 0.05), 2):
        f1 = np.mean([pixel_metrics(p[0] > t, ex.mask, fov=ex.fov)["f1"] for p, ex in zip(probs, examples)])
        if f1 > best_f1 + 1e-6:
            best_t, best_f1 = float(t), float(f1)
    return best_t


def choose_instance_thresholds(model: SegmentationModel, examples: list[TrainingExample],
                               probs: list[np.ndarray]) -> tuple[float, float]:
    """(foreground, contour) thresholds with the best mean validation AJI (instance models
    with labelled validation images); the card's values when there is nothing to tune on."""
    card = model.card
    usable = [(p, ex) for p, ex in zip(probs, examples) if ex.labels is not None]
    if not usable or not card.instances:
        return card.default_threshold, card.contour_threshold
    best, best_aji = (card.default_threshold, card.contour_threshold), -1.0
    contour_grid = (0.4, 0.5, 0.6, 0.7) if card.has_contours else (card.contour_threshold,)
    for t in (0.4, 0.45, 0.5, 0.55, 0.6):
        for ct in contour_grid:
            trial = dataclasses.replace(card, contour_threshold=ct)
            aji = np.mean([instance_metrics(_labels(p, trial, t), ex.labels)["aji"] for p, ex in usable])
            if aji > best_aji + 1e-6:
                best, best_aji = (float(t), float(ct)), float(aji)
    return best


def calibrate_and_score(model: SegmentationModel, val_ex: list[TrainingExample], loss_fn: nn.Module,
                        device: torch.device, source: str) -> tuple[float, dict[str, float]]:
    """Pick the card's thresholds on the validation images and record the validation metrics
    (and, for a contour channel, the same metrics without it) in ``model.card.metrics``."""
    card = model.card
    card.test_time_augmentation = 1
    _, _, probs = validate(model, val_ex, loss_fn, device)
    if not card.instances:
        # test-time augmentation (8 rotations / flips): kept only if it helps on validation
        plain = mean_metrics([pixel_metrics(p[0] > card.default_threshold, ex.mask, prob=p[0], fov=ex.fov)
                              for p, ex in zip(probs, val_ex)])
        tta = [predict_tiled(ex.image, model, device=device, test_time_augmentation=8, scale=ex.scale)
               for ex in val_ex]
        augmented = mean_metrics([pixel_metrics(p[0] > card.default_threshold, ex.mask, prob=p[0], fov=ex.fov)
                                  for p, ex in zip(tta, val_ex)])
        if augmented["f1"] >= plain["f1"] and augmented.get("auc", 1) >= plain.get("auc", 1) and (
                augmented["f1"] > plain["f1"] or augmented.get("auc", 0) > plain.get("auc", 0)):
            card.test_time_augmentation, probs = 8, tta
    if card.instances and any(ex.labels is not None for ex in val_ex):
        card.default_threshold, card.contour_threshold = choose_instance_thresholds(model, val_ex, probs)
    else:
        card.default_threshold = choose_threshold(model, val_ex, probs)
    vloss, vmetrics, _ = validate(model, val_ex, loss_fn, device, instances=card.instances, probabilities=probs)
    card.metrics = {"validation": {"data": source, "ids": [ex.id for ex in val_ex], "loss": vloss,
                                   "threshold": card.default_threshold, "contour_threshold": card.contour_threshold,
                                   "test_time_augmentation": card.test_time_augmentation, **vmetrics}}
    if card.has_contours and card.instances:
        # what the contour channel gains: the same validation, instances split without it
        from .evaluation import evaluate_examples

        without, _ = evaluate_examples(val_ex, model, device=device, use_contours=False)
        card.metrics["validation, contour channel ignored"] = {"data": source, **without}
    return vloss, vmetrics
