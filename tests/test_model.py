"""MiniNet: parameter budget, shapes, channels, BatchNorm folding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from napari_minenet.model import (
    PAPER_TRAINABLE_PARAMETERS,
    DMResBlock,
    MiniNet,
    count_parameters,
    fuse_for_inference,
)

# --------------------------------------------------------------------------- parameter budget


def test_parameter_count_is_pinned():
    assert count_parameters(MiniNet(3, 1)) == 37_721


def test_parameter_count_within_three_percent_of_paper():
    """Trainable parameters within 3 % of the paper's 36,657, and the Keras-style total
    (trainable + BatchNorm moving mean / variance) within 3 % of the paper's 37,685."""
    net = MiniNet(3, 1)
    n = count_parameters(net)
    assert abs(n - PAPER_TRAINABLE_PARAMETERS) / PAPER_TRAINABLE_PARAMETERS <= 0.03
    bn_statistics = sum(m.running_mean.numel() + m.running_var.numel()
                        for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn_statistics > 0
    assert abs(n + bn_statistics - 37_685) / 37_685 <= 0.03


def test_parameter_count_of_variants_follows_the_architecture():
    rgb = count_parameters(MiniNet(3, 1))
    # grey input: the stem's 3x3 conv (8 filters, no bias) loses 2 input channels
    assert count_parameters(MiniNet(1, 1)) == rgb - 2 * 8 * 3 * 3
    # contour output: one more 1x1 filter over 8 channels, with bias
    assert count_parameters(MiniNet(3, 2)) == rgb + 8 + 1


def test_batchnorm_statistics_are_buffers_not_parameters():
    net = MiniNet(3, 1)
    assert count_parameters(net, trainable_only=False) == count_parameters(net)
    for p in net.stem.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in net.stem.parameters())
    assert frozen > 0
    assert count_parameters(net) == 37_721 - frozen
    assert count_parameters(net, trainable_only=False) == 37_721


# --------------------------------------------------------------------------- shapes and channels


@pytest.mark.parametrize("hw", [(17, 50), (33, 33), (16, 16), (64, 48), (5, 7), (101, 3)])
def test_output_has_the_input_size(hw):
    torch.manual_seed(0)
    net = MiniNet(3, 1).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *hw))
    assert out.shape == (2, 1, *hw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("out_channels", [1, 2])
def test_input_and_output_channels(in_channels, out_channels):
    net = MiniNet(in_channels, out_channels).eval()
    assert net.in_channels == in_channels and net.out_channels == out_channels
    with torch.no_grad():
        out = net(torch.randn(1, in_channels, 40, 36))
    assert out.shape == (1, out_channels, 40, 36)


def test_wrong_number_of_input_channels_at_runtime_fails():
    net = MiniNet(3, 1).eval()
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("in_channels", [0, 2, 4])
def test_invalid_input_channels_raise(in_channels):
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        MiniNet(in_channels, 1)


@pytest.mark.parametrize("out_channels", [0, 3])
def test_invalid_output_channels_raise(out_channels):
    with pytest.raises(ValueError, match="1 or 2 output channels"):
        MiniNet(3, out_channels)


def test_every_parameter_receives_a_gradient():
    """No dead layers: every parameter takes part in the forward pass."""
    torch.manual_seed(0)
    net = MiniNet(3, 2).train()
    net(torch.randn(2, 3, 32, 32)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_decoder_block_adds_skip():
    torch.manual_seed(0)
    block = DMResBlock(8, decoder=True).eval()
    f, skip = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(block(f, skip) - block(f), skip, atol=1e-5)


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    net = MiniNet(3, 1).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("fused", [False, True])
def test_inference_computes_in_place_with_the_same_numbers(fused, bn_net):
    """Without autograd the sums and ReLUs run in place (less memory, faster): the same
    output bit for bit as with autograd, the input and the skip tensors untouched, and
    a training-mode statistics pass updates the same running statistics."""
    net = bn_net()
    net = fuse_for_inference(net) if fused else net.eval()
    x = torch.randn(2, 3, 36, 44)
    x_before = x.clone()
    with_grad = net(x).detach()
    with torch.inference_mode():
        assert torch.equal(net(x), with_grad)
    with torch.no_grad():
        assert torch.equal(net(x), with_grad)
    assert torch.equal(x, x_before)
    block = DMResBlock(8, decoder=True).eval()
    f, skip = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
    f0, skip0 = f.clone(), skip.clone()
    with torch.no_grad():
        block(f, skip)
    assert torch.equal(f, f0) and torch.equal(skip, skip0)
    if not fused:  # the AdaBN pass: training-mode BatchNorm without autograd
        a, b = copy.deepcopy(net).train(), copy.deepcopy(net).train()
        a(x)
        with torch.no_grad():
            b(x)
        for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(ta, tb), name


# --------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("hw", [(32, 32), (37, 50)])
def test_fuse_for_inference_matches_eval_mode(hw, bn_net):
    net = bn_net()
    x = torch.randn(2, 3, *hw)
    fused = fuse_for_inference(net)
    with torch.no_grad():
        expected = net.eval()(x)
        got = fused(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not fused.training


def test_fuse_for_inference_leaves_the_original_unchanged(bn_net):
    net = bn_net().train()
    before = copy.deepcopy(net.state_dict())
    fused = fuse_for_inference(net)
    assert fused is not net
    assert net.training  # the mode of the argument is kept
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0
    # the fused copy does not share storage with the original
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], net.state_dict()[k]) for k in before)
