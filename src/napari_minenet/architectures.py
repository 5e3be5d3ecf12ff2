"""Networks a model card can name. Mini-Net is the product; the U-Net is the reference the
benchmarks compare it with (trained by the same ``train`` command, same data, same budget).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .model import MiniNet, pad_to_multiple

__all__ = ["ARCHITECTURES", "build_network", "ReferenceUNet"]


class ReferenceUNet(nn.Module):
    """MONAI's ``BasicUNet`` (2-D, batch norm), padded to a multiple of 16 like Mini-Net
    pads to a multiple of 4. Needs ``pip install monai`` (the ``bench`` extra)."""

    size_multiple = 16

    def __init__(self, in_channels: int = 3, out_channels: int = 1, features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)) -> None:
        super().__init__()
        try:
            from monai.networks.nets import BasicUNet
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the reference U-Net needs MONAI: pip install 'napari-minenet[bench]'") from exc
        self.in_channels, self.out_channels = in_channels, out_channels
        self.net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=features,
                             norm=("batch", {"affine": True}), act=("relu", {"inplace": True}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.net(pad_to_multiple(x, self.size_multiple))[..., :h, :w]


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "MiniNet": lambda in_channels, out_channels, **kw: MiniNet(in_channels, out_channels, width=int(kw.get("width", 8))),
    "UNet": lambda in_channels, out_channels, **kw: ReferenceUNet(in_channels, out_channels),
}


def build_network(architecture: dict[str, Any], in_channels: int, out_channels: int) -> nn.Module:
    name = architecture.get("name", "MiniNet")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})")
    options = {k: v for k, v in architecture.items() if k != "name"}
    return ARCHITECTURES[name](in_channels, out_channels, **options)
