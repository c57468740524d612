"""Building blocks shared by the zoo networks."""

from __future__ import annotations

from typing import Any

import torch
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
    """Deterministic (given the torch seed) initialisation: He-normal convolutions, a random
    BatchNorm affine (gamma, beta), unit-variance logits. `keep_signal` then measures the
    statistics that keep the network's output dependent on its input."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        elif isinstance(m, nn.Linear):
            # unit-variance logits for unit-variance features: errors show up at the 1e-4 level
            nn.init.normal_(m.weight, 0, m.in_features ** -0.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    after = getattr(model, "after_init", None)
    if after is not None:
        after()
    return model


def keep_signal(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    """Make a randomly initialised network's output depend on its input.

    Deep random networks with arbitrary normalisation statistics collapse to a constant: every
    input gives the same logits, and a comparison of a compiler's output with PyTorch's on them
    checks only the layers after the collapse. Here the statistics are measured instead:

    * with BatchNorm: running mean and variance from train-mode forward passes on random inputs
      (cumulative average), then eval, so each layer sees normalised activations, each BatchNorm
      keeping its random affine;
    * without (SqueezeNet): each convolution's weights and bias are set so that each of its
      output channels has the mean and deviation of a random affine on the same inputs (what a
      BatchNorm folded into it would give).

    Computed in float64 on one thread and rounded to float32, so the weights are the same bits on
    every machine; deterministic given `seed`."""
    # enough samples per channel in the last, smallest feature maps (1x1 at 32x32 inputs)
    batch = max(2, min(32, 8192 // (input_shape[-1] * input_shape[-2]) * 8))
    gen = torch.Generator().manual_seed(seed + 7919)
    x = torch.randn((batch, *input_shape[1:]), generator=gen, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.double().eval()
    try:
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            if norms:
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None          # cumulative average over the passes
                    m.train()
                model(x)
                for m in norms:
                    m.momentum = 0.1
            else:
                hooks = [m.register_forward_hook(_normalise_channels(gen)) for m in model.modules()
                         if isinstance(m, nn.Conv2d)]
                try:
                    model(x)
                finally:
                    for h in hooks:
                        h.remove()
    finally:
        torch.set_num_threads(threads)
        model.float().eval()
    return model


def _normalise_channels(gen: "torch.Generator") -> Any:
    def hook(conv: nn.Module, inputs: tuple, out: "torch.Tensor") -> "torch.Tensor":
        channels = out.shape[1]
        mean = out.mean(dim=(0, 2, 3))
        std = out.std(dim=(0, 2, 3)).clamp_min(1e-6)
        gamma = torch.rand(channels, generator=gen, dtype=out.dtype) + 0.5
        beta = (torch.rand(channels, generator=gen, dtype=out.dtype) - 0.5) * 0.4
        scale = gamma / std
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        if conv.bias is None:          # no shift possible: scale only
            return out * scale.view(1, -1, 1, 1)
        conv.bias.copy_((conv.bias - mean) * scale + beta)
        return (out - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)

    return hook
