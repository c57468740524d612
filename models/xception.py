"""Xception (Chollet, 2017): entry, middle and exit flows of separable convolutions."""

from __future__ import annotations

import torch
from torch import nn


class SeparableConv(nn.Sequential):
    """3x3 depthwise conv followed by a 1x1 pointwise conv (no activation in between), + BN."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )


class XceptionBlock(nn.Module):
    """`reps` x (ReLU, SeparableConv), optional 3x3/2 max pool, residual (1x1/stride conv if needed)."""

    def __init__(self, in_ch: int, out_ch: int, reps: int, stride: int,
                 start_with_relu: bool = True, grow_first: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        for i in range(reps):
            target = out_ch if (grow_first and i == 0) or (not grow_first and i == reps - 1) else ch
            if i > 0 or start_with_relu:
                layers.append(nn.ReLU(inplace=False))
            layers.append(SeparableConv(ch, target))
            ch = target
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.body = nn.Sequential(*layers)
        self.skip = None
        if in_ch != out_ch or stride != 1:
            self.skip = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skip(x)
        return self.body(x) + skip


class Xception(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 0, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        )
        self.entry = nn.Sequential(
            XceptionBlock(64, 128, 2, 2, start_with_relu=False),
            XceptionBlock(128, 256, 2, 2),
            XceptionBlock(256, 728, 2, 2),
        )
        self.middle = nn.Sequential(*[XceptionBlock(728, 728, 3, 1) for _ in range(8)])
        self.exit = nn.Sequential(
            XceptionBlock(728, 1024, 2, 2, grow_first=False),
            SeparableConv(1024, 1536), nn.ReLU(inplace=True),
            SeparableConv(1536, 2048), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.exit(self.middle(self.entry(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
