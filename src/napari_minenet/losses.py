"""Segmentation losses: Dice, Jaccard, BCE and the paper's combination (eq. 16).

The paper writes the loss as ``L = alpha * (L_Dice + L_BCE + L_Jaccard)`` and does not
define alpha or how it changes during training. Our interpretation (docs/training.md):
alpha is a constant that averages the three terms (alpha = 1/3 by default), so the loss
stays on the scale of a single term (0..~1) and the numbers printed during training are
comparable across tasks. With Adam a constant factor barely changes the optimisation, so
alpha matters only relative to other terms (the optional contour term and the L2-SP
penalty used when fine-tuning). Per-term weights are configurable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["dice_loss", "jaccard_loss", "bce_loss", "MiniNetLoss", "CorrectionLoss"]

_SMOOTH = 1.0


def _flatten(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None):
    prob = torch.sigmoid(logits).reshape(-1)
    target = target.reshape(-1).to(prob.dtype)
    w = None if weight is None else weight.reshape(-1).to(prob.dtype)
    return prob, target, w


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - soft Dice over the whole batch (pixels with weight 0 are ignored)."""
    prob, target, w = _flatten(logits, target, weight)
    if w is not None:
        prob, target = prob * w, target * w
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + _SMOOTH) / (prob.sum() + target.sum() + _SMOOTH)


def jaccard_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - soft Jaccard (IoU) over the whole batch."""
    prob, target, w = _flatten(logits, target, weight)
    if w is not None:
        prob, target = prob * w, target * w
    inter = (prob * target).sum()
    union = prob.sum() + target.sum() - inter
    return 1.0 - (inter + _SMOOTH) / (union + _SMOOTH)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits (numerically stable), mean over weighted pixels."""
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    if weight is None:
        return loss.mean()
    w = weight.to(loss.dtype)
    return (loss * w).sum() / w.sum().clamp_min(1.0)


class MiniNetLoss(nn.Module):
    """alpha * (w_dice * Dice + w_bce * BCE + w_jaccard * Jaccard)  (eq. 16).

    With a two-channel network (foreground + contour) the contour channel adds
    ``contour_weight * (BCE + Dice)`` on channel 1. ``valid`` (optional, same shape as
    one target channel) masks out pixels that must not count, e.g. outside a retina's
    field of view or in padding.
    """

    def __init__(
        self,
        alpha: float = 1.0 / 3.0,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        jaccard_weight: float = 1.0,
        contour_weight: float = 0.5,
    ) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.jaccard_weight = jaccard_weight
        self.contour_weight = contour_weight

    def region_loss(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.alpha * (
            self.dice_weight * dice_loss(logits, target, valid)
            + self.bce_weight * bce_loss(logits, target, valid)
            + self.jaccard_weight * jaccard_loss(logits, target, valid)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """logits (N, C, H, W); target (N, C, H, W) with C = 1 or 2 (matching logits)."""
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        loss = self.region_loss(logits[:, :1], target[:, :1], valid)
        if logits.shape[1] > 1 and self.contour_weight > 0:
            c_logits, c_target = logits[:, 1:2], target[:, 1:2]
            loss = loss + self.contour_weight * (
                bce_loss(c_logits, c_target, valid) + dice_loss(c_logits, c_target, valid)
            )
        return loss


class CorrectionLoss(nn.Module):
    """The fine-tuning loss for corrected examples (finetuning/from_corrections.py): a per-pixel BCE on every
    output channel, weighted by ``weight`` (N, 1, H, W). The targets are the corrected
    labels inside corrections and the parent's probabilities (soft targets) elsewhere.

    Why BCE alone: Dice and Jaccard are not minimised by predicting a soft target (they push
    probabilities towards 1 wherever the target is high), and even on the corrections alone
    they pushed the foreground up everywhere. On an unseen H&E dataset (TNBC, 40 simulated
    corrections on 2 tiles, 60 steps, 16 other tiles scored) F1 went 0.651 -> 0.553 with
    Dice + Jaccard + BCE and 0.651 -> 0.678 with BCE alone (docs/training.md). BCE is
    minimised exactly at the target, so it distils without drift and corrects without
    inflating.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        return bce_loss(logits, target, None if weight is None else weight.expand_as(logits))
