"""The inference graph: Mini-Net with BatchNorm folded and its branches merged computes the
same function as the trained network in eval mode, and it is what tiles run through."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from napari_minenet.architectures import ReferenceUNet
from napari_minenet.inference import ready_network
from napari_minenet.inference_graph import InferenceMiniNet, inference_network


@pytest.mark.parametrize("merge_separable", [True, False])
@pytest.mark.parametrize(("in_channels", "out_channels", "width", "hw"),
                         [(3, 2, 8, (64, 64)), (3, 1, 8, (37, 50)), (1, 1, 8, (21, 33)), (3, 2, 12, (40, 28))])
def test_same_function_as_the_network_in_eval_mode(in_channels, out_channels, width, hw, merge_separable, bn_net):
    net = bn_net(in_channels, out_channels, width).eval()
    x = torch.randn(2, in_channels, *hw)
    graph = inference_network(net, merge_separable=merge_separable)
    assert isinstance(graph, InferenceMiniNet)
    with torch.inference_mode():
        expected = net(x)
        got = graph(x)
    assert got.shape == expected.shape == (2, out_channels, *hw)
    scale = float(expected.abs().max())
    assert scale > 0.1  # a real signal, not a network that outputs ~0
    assert float((got - expected).abs().max()) <= 1e-5 * max(scale, 1.0) * 10


def test_far_fewer_layers_and_no_batchnorm(bn_net):
    net = bn_net()
    graph = inference_network(net)
    convs = lambda m: sum(isinstance(c, (nn.Conv2d, nn.ConvTranspose2d)) for c in m.modules())  # noqa: E731
    assert not any(isinstance(m, nn.BatchNorm2d) for m in graph.modules())
    # per DMRes block 4 convolutions instead of 10 (encoder) or 8 (decoder)
    assert convs(graph) == 1 + 5 * 4 + 4 + 1 + 1
    assert convs(net) == 1 + 3 * 10 + 2 * 8 + 4 + 1 + 1
    # separable pairs kept (fp32): encoder blocks keep their 4 pairs (8 convolutions) + mix + shortcut,
    # decoder blocks 2 pairs + mix + shortcut + one merged full tail
    kept = inference_network(net, merge_separable=False)
    assert convs(kept) == 1 + 3 * 10 + 2 * 7 + 4 + 1 + 1
    assert not graph.training
    assert not any(p.requires_grad for p in graph.parameters())


def test_the_trained_network_is_not_modified(bn_net):
    net = bn_net().train()
    before = copy.deepcopy(net.state_dict())
    graph = inference_network(net)
    assert net.training
    with torch.no_grad():
        for p in graph.parameters():
            p.add_(1.0)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_inputs_and_skips_are_left_untouched_in_every_precision(bn_net):
    """In-place sums write only into fresh layer outputs: the input tensor is unchanged."""
    graph = inference_network(bn_net())
    x = torch.randn(1, 3, 48, 48)
    x0 = x.clone()
    with torch.inference_mode():
        a = graph(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = graph(x)
    assert torch.equal(x, x0)
    assert b.dtype == torch.bfloat16
    assert float((a - b.float()).abs().max()) < 0.1 * max(float(a.abs().max()), 1.0)


def test_channels_last_and_batches_give_the_same_numbers(bn_net):
    graph = inference_network(bn_net())
    x = torch.randn(3, 3, 40, 56)
    with torch.inference_mode():
        plain = graph(x)
        cl = graph.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        one = graph(x[1:2])
    assert torch.allclose(plain, cl, atol=1e-5)
    assert torch.allclose(plain[1:2], one, atol=1e-5)


def test_other_architectures_get_an_eval_copy():
    pytest.importorskip("monai")
    unet = ReferenceUNet(3, 1).train()
    copy_ = inference_network(unet)
    assert copy_ is not unet and not copy_.training and unet.training


@pytest.mark.parametrize(("precision", "merged"), [("fp32", False), ("bf16", True), ("fp16", True)])
def test_ready_network_is_the_inference_graph_on_channels_last(precision, merged, bn_net):
    """Separable pairs are multiplied out for bf16 / fp16 (fastest there), kept for fp32."""
    net = bn_net()
    ready = ready_network(net, torch.device("cpu"), precision)
    assert isinstance(ready, InferenceMiniNet)
    assert isinstance(ready.enc1.branch, nn.Conv2d) == merged
    assert ready.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert ready.dec1.tail.weight.shape[-1] == 5  # the decoder's full tails are merged either way
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    with torch.inference_mode():
        assert torch.allclose(ready(x), net.eval()(x), atol=1e-4)
