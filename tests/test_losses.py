"""Dice, Jaccard, BCE and the combined Mini-Net loss (eq. 16)."""

from __future__ import annotations

import pytest
import torch

from napari_minenet.losses import MiniNetLoss, bce_loss, dice_loss, jaccard_loss


def _target(shape=(2, 1, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) > 0.6).float()


def _logits_for(target, confidence=20.0):
    """Logits whose sigmoid is (almost exactly) the target."""
    return (target * 2 - 1) * confidence


@pytest.mark.parametrize("loss", [dice_loss, jaccard_loss, bce_loss])
def test_perfect_prediction_gives_almost_zero(loss):
    target = _target()
    assert float(loss(_logits_for(target), target)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", [dice_loss, jaccard_loss, bce_loss])
def test_worse_predictions_give_larger_losses(loss):
    target = _target()
    perfect = _logits_for(target)
    # from confidently right, through unsure, to confidently wrong
    sequence = [perfect, perfect * 0.1, torch.zeros_like(target), -perfect * 0.1, -perfect]
    values = [float(loss(x, target)) for x in sequence]
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("loss", [dice_loss, jaccard_loss, bce_loss])
def test_more_wrong_pixels_give_larger_losses(loss):
    target = _target()
    perfect = _logits_for(target)
    u = torch.rand(target.shape, generator=torch.Generator().manual_seed(1))
    values = [float(loss(torch.where(u < frac, -perfect, perfect), target)) for frac in (0.0, 0.05, 0.2, 0.5)]
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("loss", [dice_loss, jaccard_loss])
def test_overlap_losses_are_between_zero_and_one(loss):
    target = _target()
    for logits in (_logits_for(target), -_logits_for(target), torch.zeros_like(target)):
        assert 0.0 <= float(loss(logits, target)) <= 1.0
    assert float(loss(-_logits_for(target), target)) > 0.99


def test_bce_matches_torch():
    target = _target()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), target)
    assert float(bce_loss(logits, target)) == pytest.approx(float(expected), rel=1e-5)


def test_dice_and_jaccard_hand_computed():
    # p = 0.5 on 4 pixels, 2 of which are foreground: inter 1, sum(p) 2, sum(t) 2, smooth 1
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    logits = torch.zeros_like(target)
    assert float(dice_loss(logits, target)) == pytest.approx(1 - (2 * 1 + 1) / (2 + 2 + 1))
    assert float(jaccard_loss(logits, target)) == pytest.approx(1 - (1 + 1) / (2 + 2 - 1 + 1))


def test_combined_loss_is_alpha_times_the_sum():
    target = _target()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(4))
    total = dice_loss(logits, target) + bce_loss(logits, target) + jaccard_loss(logits, target)
    assert float(MiniNetLoss()(logits, target)) == pytest.approx(float(total) / 3, rel=1e-5)
    assert float(MiniNetLoss(alpha=1.0)(logits, target)) == pytest.approx(float(total), rel=1e-5)
    only_bce = MiniNetLoss(alpha=1.0, dice_weight=0, jaccard_weight=0)
    assert float(only_bce(logits, target)) == pytest.approx(float(bce_loss(logits, target)), rel=1e-5)


def test_perfect_prediction_gives_almost_zero_combined_loss_with_two_channels():
    target = _target((2, 2, 24, 24))
    assert float(MiniNetLoss()(_logits_for(target), target)) == pytest.approx(0.0, abs=1e-5)


def test_contour_channel_adds_to_the_loss():
    fg = _target((2, 1, 24, 24), seed=0)
    contour = _target((2, 1, 24, 24), seed=1)
    target = torch.cat([fg, contour], dim=1)
    logits = _logits_for(target).clone()
    base = float(MiniNetLoss()(logits, target))
    logits[:, 1] = -logits[:, 1]  # wrong contours only
    worse = float(MiniNetLoss()(logits, target))
    assert worse > base + 1.0
    assert float(MiniNetLoss(contour_weight=0)(logits, target)) == pytest.approx(base, abs=1e-6)


def test_valid_mask_ignores_pixels():
    target = _target((1, 1, 32, 32))
    logits = _logits_for(target).clone()
    valid = torch.ones(1, 1, 32, 32)
    valid[..., :, 16:] = 0
    logits[..., :, 16:] = -logits[..., :, 16:]  # completely wrong where not valid
    loss = MiniNetLoss()
    assert float(loss(logits, target, valid)) == pytest.approx(0.0, abs=1e-5)
    assert float(loss(logits, target)) > 0.5
    two = torch.cat([target, target], dim=1)
    two_logits = torch.cat([logits, logits], dim=1)
    assert float(loss(two_logits, two, valid)) == pytest.approx(0.0, abs=1e-5)


def test_gradients_flow():
    target = _target()
    logits = torch.zeros(target.shape, requires_grad=True)
    MiniNetLoss()(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # gradient pushes foreground logits up and background logits down
    assert (logits.grad[target == 1] < 0).all() and (logits.grad[target == 0] > 0).all()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        MiniNetLoss()(torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        MiniNetLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


def test_alpha_must_be_positive():
    with pytest.raises(ValueError, match="alpha"):
        MiniNetLoss(alpha=0)
