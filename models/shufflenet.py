"""ShuffleNet V1 (Zhang et al., 2017) and V2 (Ma et al., 2018): group convolution and channel shuffle."""

from __future__ import annotations

import torch
from torch import nn

from .common import ConvBNAct


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.reshape(n, groups, c // groups, h, w).transpose(1, 2)
    return x.reshape(n, c, h, w)


# ---------------------------------------------------------------- ShuffleNet V1
# Output channels of stage 2 for each group count at scale 1x (Table 1 of the paper);
# stages 3 and 4 double them.
_V1_STAGE2 = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
_V1_REPEATS = (4, 8, 4)


class ShuffleV1Unit(nn.Module):
    """1x1 group conv, channel shuffle, 3x3 depthwise, 1x1 group conv; add (stride 1) or
    concat with a 3x3 average-pooled shortcut (stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        mid = out_ch // 4
        self.groups = first_groups
        self.compress = ConvBNAct(in_ch, mid, 1, groups=first_groups)
        self.depthwise = ConvBNAct(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = ConvBNAct(mid, branch_out, 1, groups=groups, act=None)
        self.relu = nn.ReLU(inplace=True)
        if stride == 2:
            self.shortcut = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.compress(x)
        if self.groups > 1:
            y = channel_shuffle(y, self.groups)
        y = self.expand(self.depthwise(y))
        if self.stride == 2:
            return self.relu(torch.cat([self.shortcut(x), y], 1))
        return self.relu(x + y)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        if groups not in _V1_STAGE2:
            raise ValueError(f"ShuffleNet V1 groups must be one of {sorted(_V1_STAGE2)}, got {groups}")
        # Channels must stay divisible by 4 * groups (bottleneck = out / 4, grouped 1x1 convs).
        unit = 4 * groups
        stage_out = [max(unit, int(_V1_STAGE2[groups] * width_mult * 2**i) // unit * unit)
                     for i in range(3)]
        stem = max(8, int(24 * width_mult))
        self.stem = nn.Sequential(ConvBNAct(3, stem, 3, 2), nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        ch = stem
        for stage, (out, repeats) in enumerate(zip(stage_out, _V1_REPEATS)):
            for i in range(repeats):
                # The first pointwise layer of stage 2 is not grouped: its input has few channels.
                first_groups = 1 if (stage == 0 and i == 0) else groups
                layers.append(ShuffleV1Unit(ch, out, 2 if i == 0 else 1, groups, first_groups))
                ch = out
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------- ShuffleNet V2
_V2_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
_V2_REPEATS = (4, 8, 4)


class ShuffleV2Unit(nn.Module):
    """Channel split (stride 1) or two strided branches (stride 2), concat, channel shuffle."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                ConvBNAct(in_ch, in_ch, 3, 2, groups=in_ch, act=None),
                ConvBNAct(in_ch, half, 1),
            )
        branch_in = in_ch if stride == 2 else half
        self.branch2 = nn.Sequential(
            ConvBNAct(branch_in, half, 1),
            ConvBNAct(half, half, 3, stride, groups=half, act=None),
            ConvBNAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.branch2(b)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        if width_mult not in _V2_CHANNELS:
            raise ValueError(
                f"ShuffleNet V2 width must be one of {sorted(_V2_CHANNELS)}, got {width_mult}"
            )
        stem, *stages, last = _V2_CHANNELS[width_mult]
        self.stem = nn.Sequential(ConvBNAct(3, stem, 3, 2), nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        ch = stem
        for out, repeats in zip(stages, _V2_REPEATS):
            for i in range(repeats):
                layers.append(ShuffleV2Unit(ch, out, 2 if i == 0 else 1))
                ch = out
        self.stages = nn.Sequential(*layers)
        self.head = ConvBNAct(ch, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.stages(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))
