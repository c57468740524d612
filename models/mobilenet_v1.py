"""MobileNet V1 (Howard et al., 2017): depthwise separable convolutions.

`width_mult` is the paper's width multiplier α (channels scaled, at least 8 as in the reference
implementation); the resolution multiplier ρ is the input resolution chosen at build time.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import ConvBNAct

# (output channels, stride) of the 13 depthwise separable layers, Table 1 of the paper.
_LAYERS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]


def _scaled(channels: int, width_mult: float) -> int:
    return max(8, int(channels * width_mult))


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(
            ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch),
            ConvBNAct(in_ch, out_ch, 1),
        )


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        ch = _scaled(32, width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, ch, 3, 2)]
        for out, stride in _LAYERS:
            out = _scaled(out, width_mult)
            layers.append(DepthwiseSeparable(ch, out, stride))
            ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
