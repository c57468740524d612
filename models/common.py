"""Building blocks shared by the zoo networks."""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10%.

    This is the rounding used by the reference MobileNetV2 / EfficientNet implementations.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Convolution + BatchNorm + optional activation ("same" padding for odd kernels)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU) else act())
        super().__init__(*layers)


def init_weights(model: nn.Module) -> nn.Module:
    """Deterministic (given the torch seed) initialisation with non-trivial BatchNorm statistics.

    Random running statistics make BatchNorm folding observable: a compiler that dropped or
    mis-folded BatchNorm would not match PyTorch.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        elif isinstance(m, nn.Linear):
            # unit-variance logits for unit-variance features: errors show up at the 1e-4 level
            nn.init.normal_(m.weight, 0, m.in_features ** -0.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    after = getattr(model, "after_init", None)
    if after is not None:
        after()
    return model
