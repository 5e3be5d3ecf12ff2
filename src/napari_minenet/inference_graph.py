"""Mini-Net rewritten for inference: the same function with about half the passes over memory.

At 8 channels and full resolution a CPU spends its time moving activations, not multiplying
(docs/benchmarks.md), so every layer that can be merged into its neighbour is merged. Each
rewrite below is exact in real arithmetic; only float rounding differs (fp32: ~1e-5 on the
logits; bf16: probabilities within 0.054 of fp32 on a 2048^2 H&E mosaic, the unmerged network's
bf16 within 0.043; validation scores within 0.001 either way). Training, the AdaBN statistics pass and the ONNX export
keep the network as the paper describes it (``model.py``); only tiles run through this graph.

In each DMRes block (``model.DMResBlock``), after BatchNorm is folded into the convolutions:

* a depthwise-separable pair (depthwise kxk, then pointwise 1x1) is one full kxk convolution
  with weights ``W[o, i] = P[o, i] * D[i]``;
* ``BN(conv3x3(F)) + BN(conv5x5(F))`` (eqs. 2/7, and the two tails of eqs. 4/9) is one 5x5
  convolution: the 3x3 kernel zero-padded to 5x5 and added to the 5x5 one, biases summed;
* ``BN(conv1x1(S1)) + S1`` (eq. 3/8) is one 1x1 convolution whose weights have the identity
  added.

A block is then 4 convolutions, 2 ReLUs and 1-2 sums instead of 10 (encoder) or 8 (decoder)
convolutions, 2 ReLUs and 4-5 sums. A full 5x5 convolution does 4x the multiplications of the
two separable pairs it replaces (8 channels: 1,600 against 400 per pixel); in bf16 oneDNN runs
it about as fast as the 5x5 depthwise convolution alone, in fp32 it does not. So
``ready_network`` multiplies the separable pairs out for bf16 / fp16 only, and fp32 keeps them
(``merge_separable=False``: the other two rewrites only). Network on the 9 tiles of a 2048^2
H&E mosaic (Intel Xeon with AMX, 2 threads, 9 alternating rounds, medians): bf16 0.79 s unmerged
-> 0.71 pairs kept -> **0.54** multiplied out; fp32 1.23 unmerged -> **1.04** kept -> 1.31
multiplied out (fp32 kept is fastest with oneDNN capped to AVX2 and to AVX-512 too: 1.05 / 0.96
/ 1.26 s and 1.48 / 1.15 / 1.38 s).

Sums and ReLUs are ``model``'s: in place on fp32 tensors, out of place on bf16 ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import ConvBN, DMResBlock, MiniNet, _plus, _relu, fuse_for_inference, pad_to_multiple

__all__ = ["InferenceMiniNet", "inference_network"]


def inference_network(network: nn.Module, *, merge_separable: bool = True) -> nn.Module:
    """An eval-mode inference copy of ``network`` (never the argument itself): a
    :class:`MiniNet` becomes an :class:`InferenceMiniNet`; any other network (the reference
    U-Net) an eval-mode copy (:func:`fuse_for_inference` folds nothing it does not know)."""
    if isinstance(network, MiniNet):
        return InferenceMiniNet(network, merge_separable=merge_separable)
    return fuse_for_inference(network)


class InferenceMiniNet(nn.Module):
    """``MiniNet.eval()`` as 4 convolutions per DMRes block; built from a trained MiniNet
    (not modified). Same input and output as :meth:`MiniNet.forward`.

    ``merge_separable=False`` keeps the depthwise-separable pairs as they are (so parallel
    separable branches stay two branches) and merges only what costs no extra multiplications
    (the identity into the 1x1 mix, the decoder's two full tails into one 5x5): the choice for
    fp32, where the full 5x5 kernels are not faster (see ``ready_network``)."""

    size_multiple = MiniNet.size_multiple

    def __init__(self, network: MiniNet, *, merge_separable: bool = True) -> None:
        super().__init__()
        folded = fuse_for_inference(network)  # a copy, eval mode, BN folded
        self.in_channels, self.out_channels = folded.in_channels, folded.out_channels
        with torch.no_grad():
            self.stem = _conv(*_full_kernel(folded.stem))
            block = lambda b: _Block(b, merge_separable)  # noqa: E731
            self.enc1, self.enc2, self.bottleneck = block(folded.enc1), block(folded.enc2), block(folded.bottleneck)
            self.dec2, self.dec1 = block(folded.dec2), block(folded.dec1)
            self.head = _conv(*_full_kernel(folded.head))
        self.down1, self.down2 = folded.down1.conv, folded.down2.conv
        self.up2, self.up1 = folded.up2.conv, folded.up1.conv
        self.classifier = folded.classifier
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.forward_padded(pad_to_multiple(x, self.size_multiple))[..., :h, :w]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(self.stem(x))
        e2 = self.enc2(_relu(self.down1(e1)))
        b = self.bottleneck(_relu(self.down2(e2)))
        d2 = self.dec2(_relu(self.up2(b)), skip=e2)
        del b, e2
        d1 = self.dec1(_relu(self.up1(d2)), skip=e1)
        del d2, e1
        return self.classifier(_relu(self.head(d1)))


class _Block(nn.Module):
    """One folded :class:`DMResBlock` as branch (5x5), mix (1x1), tail (5x5) and shortcut (1x1)."""

    def __init__(self, block: DMResBlock, merge_separable: bool = True) -> None:
        super().__init__()
        self.branch = _branches(block.branch3, block.branch5, merge_separable)
        mix_w, mix_b = _full_kernel(block.mix)
        c = mix_w.shape[0]
        self.mix = _conv(mix_w + torch.eye(c, dtype=mix_w.dtype).view(c, c, 1, 1), mix_b)
        self.tail = _branches(block.tail3, block.tail5, merge_separable)
        self.shortcut = _conv(*_full_kernel(block.shortcut))

    def forward(self, f: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        s2 = _relu(self.mix(_relu(self.branch(f))))
        out = _plus(self.tail(s2), self.shortcut(f))
        return out if skip is None else _plus(out, skip)


class _Sum(nn.Module):
    """Two branches of the same input, summed (separable pairs kept as they are)."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _plus(self.a(x), self.b(x))


def _branches(a: ConvBN, b: ConvBN, merge_separable: bool) -> nn.Module:
    """``a(x) + b(x)`` for two folded ConvBNs: one convolution, unless either is a separable
    pair that is to be kept."""
    if merge_separable or not any(isinstance(m.conv, nn.Sequential) for m in (a, b)):
        return _conv(*_summed(_full_kernel(a), _full_kernel(b)))
    return _Sum(a.conv, b.conv)


def _full_kernel(module: ConvBN) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a folded ConvBN as one full convolution (a separable pair multiplied out)."""
    conv = module.conv
    if isinstance(conv, nn.Sequential):  # depthwise kxk (no bias), then pointwise 1x1 (bias from the BN)
        depthwise, pointwise = conv
        weight = pointwise.weight[:, :, 0, 0, None, None] * depthwise.weight[:, 0][None]
        return weight, pointwise.bias
    return conv.weight, conv.bias


def _summed(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two convolutions of the same input, summed, as one (the smaller kernel zero-padded, centred)."""
    (wa, ba), (wb, bb) = a, b
    k = max(wa.shape[-1], wb.shape[-1])

    def pad(w: torch.Tensor) -> torch.Tensor:
        p = (k - w.shape[-1]) // 2
        return F.pad(w, (p, p, p, p))

    return pad(wa) + pad(wb), ba + bb


def _conv(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out_c, in_c, k, _ = weight.shape
    conv = nn.Conv2d(in_c, out_c, k, padding=k // 2)
    conv.weight = nn.Parameter(weight.detach().clone())
    conv.bias = nn.Parameter(bias.detach().clone())
    return conv

