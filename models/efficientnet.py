"""EfficientNet B0-B7 (Tan & Le, 2019): MBConv with squeeze-excitation and SiLU, compound scaling.

Compound scaling multiplies depth by α^φ, width by β^φ and resolution by γ^φ with α = 1.2 (depth),
β = 1.1 (width), γ = 1.15 (resolution), found by grid search on B0 under α·β²·γ² ≈ 2. Note the
assignment: 1.2 is the *depth* coefficient and 1.1 the *width* one (some lecture notes swap them).
The released B1-B7 round those powers to the coefficients below; those are the configurations
whose parameter and FLOP counts the paper's Table 2 reports, so they are what we build.
`compound_coefficients(phi)` gives the unrounded values for any φ.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import ConvBNAct, make_divisible

ALPHA_DEPTH, BETA_WIDTH, GAMMA_RESOLUTION = 1.2, 1.1, 1.15

# variant: (width coefficient, depth coefficient, resolution, dropout) as released with the paper
VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 300, 0.3),
    4: (1.4, 1.8, 380, 0.4),
    5: (1.6, 2.2, 456, 0.4),
    6: (1.8, 2.6, 528, 0.5),
    7: (2.0, 3.1, 600, 0.5),
}

# B0 stages: expansion, kernel, stride, output channels, repeats (Table 1 of the paper)
_B0_STAGES = [
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
]


def compound_coefficients(phi: float) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers of the compound scaling rule for coefficient φ."""
    return ALPHA_DEPTH**phi, BETA_WIDTH**phi, GAMMA_RESOLUTION**phi


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """Expand 1x1 (+SiLU), depthwise kxk (+SiLU), squeeze-excitation, 1x1 projection, residual."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=nn.SiLU))
        layers += [
            ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcitation(hidden, max(1, in_ch // 4)),
            ConvBNAct(hidden, out_ch, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class EfficientNet(nn.Module):
    def __init__(self, variant: int = 0, num_classes: int = 1000) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"EfficientNet variant must be 0..7, got {variant}")
        width, depth, _, dropout = VARIANTS[variant]
        stem = make_divisible(32 * width)
        layers: list[nn.Module] = [ConvBNAct(3, stem, 3, 2, act=nn.SiLU)]
        ch = stem
        for expand, kernel, stride, out, repeats in _B0_STAGES:
            out = make_divisible(out * width)
            for i in range(int(math.ceil(repeats * depth))):
                layers.append(MBConv(ch, out, kernel, stride if i == 0 else 1, expand))
                ch = out
        last = make_divisible(1280 * width)
        layers.append(ConvBNAct(ch, last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
