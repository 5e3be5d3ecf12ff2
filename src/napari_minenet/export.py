"""Export a model to ONNX (runs anywhere ONNX Runtime runs, without PyTorch).

The exported graph takes ``image``: float32 (N, C, H, W) with pixel values scaled to
0..1 (uint8 / 255) and H, W multiples of 4, and returns ``probability``: (N, C_out, H, W)
after the sigmoid (channel 0 foreground, channel 1 contours when the model has them).
The card's mean / std normalisation is inside the graph.

Models whose card says ``bn_statistics == "image"`` normalise with the statistics of the
image they see (AdaBN), exactly like ``segment`` does on an image that fits in one tile:
every BatchNorm becomes "normalise with the mean / variance of this input over N, H, W"
(with a ``bn_prior``, blended with the stored statistics: the graph then runs the network
twice, once to measure the input's statistics and once to predict).
Give the whole image (N = 1); for huge images, use ``napari-minenet segment`` or compute
statistics on a sample as docs/export.md explains. The model card is written beside the
.onnx file as JSON (thresholds, post-processing options).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write_bytes, atomic_write_json
from .model import MiniNet, fuse_for_inference
from .zoo import SegmentationModel, load_model

__all__ = ["export_onnx", "ExportWrapper", "InputStatisticsNorm"]


class InputStatisticsNorm(nn.Module):
    """BatchNorm that uses the statistics of its input (biased variance), as BatchNorm does in
    training mode; exportable to ONNX as plain arithmetic.

    With a ``prior`` (card ``bn_prior``) the statistics are blended with the stored ones the
    way :func:`napari_minenet.adabn.adapt_batchnorm` does: each layer's input statistics
    are those of a first pass normalised with the input's own statistics alone
    (``collect``), blended, and used by a second pass (``apply``); :class:`ExportWrapper`
    runs both passes in the graph."""

    def __init__(self, bn: nn.BatchNorm2d, prior: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())
        self.register_buffer("stored_mean", bn.running_mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("stored_var", bn.running_var.detach().clone().view(1, -1, 1, 1))
        self.eps = bn.eps
        self.prior = float(prior)
        self.mode = "plain"  # "plain", "collect" (first pass) or "apply" (second pass)
        self._blended: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "apply":
            mean, var = self._blended
        else:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
            if self.mode == "collect":
                p = self.prior
                self._blended = ((1 - p) * mean + p * self.stored_mean,
                                 (1 - p) * var + p * self.stored_var + p * (1 - p) * (mean - self.stored_mean) ** 2)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _swap_batchnorm(module: nn.Module, prior: float = 0.0) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, InputStatisticsNorm(child, prior))
        else:
            _swap_batchnorm(child, prior)


class ExportWrapper(nn.Module):
    """0..1 pixels in, probabilities out; normalisation and sigmoid inside."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        card = model.card
        self.prior = card.bn_prior if card.bn_statistics == "image" else 0.0
        if card.bn_statistics == "image":
            net = copy.deepcopy(model.network).eval()
            _swap_batchnorm(net, self.prior)
        else:
            net = fuse_for_inference(model.network)
        self.net: MiniNet = net
        c = card.in_channels
        mean = torch.tensor(card.normalization.get("mean", [0.0] * c), dtype=torch.float32)[:c]
        std = torch.tensor(card.normalization.get("std", [1.0] * c), dtype=torch.float32)[:c]
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # the network's own forward, without the padding (the graph's input is already a
        # multiple of the network's size multiple)
        x = (image - self.mean) / self.std
        if self.prior == 0:
            return torch.sigmoid(self.net.forward_padded(x))
        norms = [m for m in self.net.modules() if isinstance(m, InputStatisticsNorm)]
        try:
            for m in norms:
                m.mode = "collect"
            self.net.forward_padded(x)  # the input's own statistics, blended with the stored ones
            for m in norms:
                m.mode = "apply"
            return torch.sigmoid(self.net.forward_padded(x))
        finally:
            for m in norms:
                m.mode, m._blended = "plain", None


def export_onnx(model: SegmentationModel | str, path: str | Path, *, opset: int = 17) -> Path:
    """Write ``path`` (.onnx) and ``path.json`` (the model card); returns the .onnx path."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'napari-minenet[onnx]'") from exc
    model = load_model(model)  # a SegmentationModel is passed through
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        path = path.with_suffix(".onnx")
    wrapper = ExportWrapper(model).eval()
    example = torch.rand(1, model.card.in_channels, 64, 64)
    import io

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (example,), buffer, input_names=["image"], output_names=["probability"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "probability": {0: "batch", 2: "height", 3: "width"}},
            opset_version=opset, dynamo=False,
        )
    atomic_write_bytes(path, buffer.getvalue())
    card = dataclasses.asdict(model.card)
    card["onnx"] = {"input": "image: float32 (N, C, H, W), pixels / 255 (0..1), H and W multiples of 4",
                    "output": "probability: float32 (N, C_out, H, W)", "opset": opset}
    atomic_write_json(path.with_suffix(".json"), card)
    return path
