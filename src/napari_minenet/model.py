"""Mini-Net (Javed et al., "Advancing Medical Image Segmentation with Mini-Net").

The network is an encoder-decoder of dual multi-residual (DMRes) blocks. The paper fixes
the topology and the parameter budget (36,657 trainable parameters for RGB input) but not
how its 3x3/5x5 convolutions at 16 and 32 channels fit that budget; docs/architecture.md
explains the interpretation chosen here and maps every equation to the classes below:

* encoder and bottleneck DMRes blocks use depthwise-separable convolutions
  (depthwise kxk followed by pointwise 1x1), as in the LDMRes-Net lineage the paper cites;
* the decoder blocks follow eqs. 7-9: their last two convolutions are full ("transposed")
  convolutions. A stride-1 transposed convolution is the same function as a stride-1
  convolution with a flipped kernel, so they are implemented as ``nn.Conv2d`` (faster on
  CPU) with the same parameter count.

The forward pass returns logits; ``torch.sigmoid`` gives probabilities. Channel 0 is the
foreground; an optional channel 1 predicts object contours (used for instance splitting).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MiniNet", "ConvBN", "DMResBlock", "count_parameters", "fuse_for_inference", "pad_to_multiple"]

#: Trainable parameters the paper reports for RGB input (Keras counting).
PAPER_TRAINABLE_PARAMETERS = 36_657


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad H and W at the bottom / right to a multiple (reflection; replicate if too small)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if (h > ph and w > pw) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class ConvBN(nn.Module):
    """A convolution (optionally depthwise-separable) followed by batch normalisation.

    ``separable=True`` builds depthwise kxk -> pointwise 1x1 (no bias: the BN that follows
    makes a bias redundant).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        separable: bool = False,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        if separable:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, kernel_size, stride, pad, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DMResBlock(nn.Module):
    """Dual multi-residual block, eqs. 2-4 (encoder) and 7-9 (decoder).

    S1  = ReLU(BN(conv3x3(F)) + BN(conv5x5(F)))                 eq. 2 / 7
    S2  = ReLU(BN(conv1x1(S1)) + S1)                            eq. 3 / 8
    out = BN(conv1x1(F)) + BN(conv3x3(S2)) + BN(conv5x5(S2))    eq. 4 / 9 (+ skip in decoder)

    ``decoder=True`` makes the last two convolutions full convolutions (the paper's
    transposed convolutions, stride 1) instead of depthwise-separable ones.
    """

    def __init__(self, channels: int, *, decoder: bool = False) -> None:
        super().__init__()
        c = channels
        self.branch3 = ConvBN(c, c, 3, separable=True)
        self.branch5 = ConvBN(c, c, 5, separable=True)
        self.mix = ConvBN(c, c, 1)
        self.shortcut = ConvBN(c, c, 1)
        self.tail3 = ConvBN(c, c, 3, separable=not decoder)
        self.tail5 = ConvBN(c, c, 5, separable=not decoder)

    def forward(self, f: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        s1 = _relu(_plus(self.branch3(f), self.branch5(f)))
        s2 = _relu(_plus(self.mix(s1), s1))
        del s1
        out = _plus(_plus(self.shortcut(f), self.tail3(s2)), self.tail5(s2))
        if skip is not None:
            out = _plus(out, skip)
        return out


# Without autograd (inference, the AdaBN statistics pass) fp32 sums and ReLUs are computed in
# place, in the fresh output of the convolution: the same numbers with fewer full-resolution
# temporaries. At 8 channels the network is memory-bound on a CPU, so this made a 1024^2
# tile ~25 % faster and its activations 144 -> 110 MB (docs/benchmarks.md). bf16 / fp16 ones
# (autocast) stay out of place: PyTorch 2.13's in-place bf16 add and ReLU run at half the speed
# of its out-of-place ones (1024^2 x 8 channels, 2 threads: 2.09 vs 1.06 ms, 1.74 vs 0.89 ms).


def _in_place(fresh: torch.Tensor) -> bool:
    return fresh.dtype == torch.float32 and not torch.is_grad_enabled()


def _plus(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, into ``fresh`` when that is cheaper (``fresh`` is a layer's new output)."""
    return fresh.add_(other) if _in_place(fresh) else fresh + other


def _relu(fresh: torch.Tensor) -> torch.Tensor:
    return F.relu(fresh, inplace=_in_place(fresh))


class _Resample(nn.Module):
    """Strided 3x3 conv (down) or 3x3 transposed conv (up), with bias and ReLU.

    The paper gives these layers no batch normalisation; every path through the DMRes
    block that follows is normalised.
    """

    def __init__(self, in_channels: int, out_channels: int, *, up: bool) -> None:
        super().__init__()
        if up:
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _relu(self.conv(x))


class MiniNet(nn.Module):
    """Mini-Net: ~37k parameters, input (N, C, H, W) with any H, W; output logits.

    Parameters
    ----------
    in_channels:
        1 (grey) or 3 (RGB).
    out_channels:
        1 (foreground) or 2 (foreground + contour).
    width:
        channels of the first level (8 in the paper); levels use width, 2x, 4x.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"MiniNet takes 1 or 3 input channels, got {in_channels}")
        if out_channels not in (1, 2):
            raise ValueError(f"MiniNet predicts 1 or 2 output channels, got {out_channels}")
        w = width
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.width = width
        self.stem = ConvBN(in_channels, w, 3)  # eq. 1
        self.enc1 = DMResBlock(w)
        self.down1 = _Resample(w, 2 * w, up=False)
        self.enc2 = DMResBlock(2 * w)
        self.down2 = _Resample(2 * w, 4 * w, up=False)
        self.bottleneck = DMResBlock(4 * w)
        self.up2 = _Resample(4 * w, 2 * w, up=True)
        self.dec2 = DMResBlock(2 * w, decoder=True)
        self.up1 = _Resample(2 * w, w, up=True)
        self.dec1 = DMResBlock(w, decoder=True)
        self.head = ConvBN(w, w, 1)  # eq. 10 (ReLU applied in forward)
        self.classifier = nn.Conv2d(w, out_channels, 1)  # eq. 11 (sigmoid applied by callers)

    #: the network downsamples twice, so H and W are padded to a multiple of this
    size_multiple = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.forward_padded(pad_to_multiple(x, self.size_multiple))[..., :h, :w]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The network on an input whose H and W are multiples of :attr:`size_multiple`
        (what ``forward`` runs after padding; the ONNX export runs it as it is)."""
        e1 = self.enc1(self.stem(x))
        e2 = self.enc2(self.down1(e1))
        b = self.bottleneck(self.down2(e2))
        d2 = self.dec2(self.up2(b), skip=e2)
        d1 = self.dec1(self.up1(d2), skip=e1)
        return self.classifier(_relu(self.head(d1)))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; BN running statistics are buffers, not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def fuse_for_inference(model: MiniNet) -> MiniNet:
    """Return an inference copy of ``model`` with every BatchNorm folded into its conv.

    The result computes the same function as ``model.eval()`` (up to float rounding) with
    fewer passes over memory. The argument is not modified.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBN):
            _fold_convbn(module)
    return fused


def _fold_convbn(module: ConvBN) -> None:
    conv = module.conv
    last = conv[-1] if isinstance(conv, nn.Sequential) else conv
    folded = _fold_bn_into(last, module.bn)
    if isinstance(conv, nn.Sequential):
        conv[-1] = folded
    else:
        module.conv = folded
    module.bn = nn.Identity()


@torch.no_grad()
def _fold_bn_into(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = copy.deepcopy(conv)
    fused.weight.mul_(scale.view(-1, 1, 1, 1))
    old_bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias = nn.Parameter(old_bias * scale + shift)
    return fused
