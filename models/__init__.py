"""The edgecompile model zoo, written in plain PyTorch.

Each entry builds an `nn.Module` from a few options; `build_model` applies the deterministic
initialisation (or loads a state_dict) so that the same options and seed give the same weights.
Installed as the `edgecompile.models` package (the `models/` folder of the repository).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .common import init_weights, keep_signal
from .weights import WeightsError, load_into, read_weights
from .efficientnet import VARIANTS as EFFICIENTNET_VARIANTS, EfficientNet
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .shufflenet import ShuffleNetV1, ShuffleNetV2
from .squeezenet import SqueezeNet
from .xception import Xception


class ModelOptionError(ValueError):
    """A model option is out of range or not accepted by the chosen network."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    factory: Callable[..., nn.Module]
    default_resolution: int
    # options beyond num_classes that the factory takes, with their defaults
    options: dict[str, object] = field(default_factory=dict)


def _effnet(variant: int) -> ZooEntry:
    return ZooEntry(
        f"efficientnet_b{variant}",
        f"EfficientNet-B{variant}: MBConv + squeeze-excitation + SiLU, compound-scaled from B0",
        lambda num_classes: EfficientNet(variant, num_classes),
        EFFICIENTNET_VARIANTS[variant][2],
    )


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("mobilenet_v1", "MobileNet V1: depthwise separable convolutions (width α, resolution ρ)",
                 lambda num_classes, width_mult: MobileNetV1(num_classes, width_mult), 224,
                 {"width_mult": 1.0}),
        ZooEntry("mobilenet_v2", "MobileNet V2: inverted residuals, linear bottlenecks",
                 lambda num_classes, width_mult: MobileNetV2(num_classes, width_mult), 224,
                 {"width_mult": 1.0}),
        ZooEntry("shufflenet_v1", "ShuffleNet V1: 1x1 group convolutions + channel shuffle",
                 lambda num_classes, width_mult, groups: ShuffleNetV1(groups, width_mult, num_classes),
                 224, {"width_mult": 1.0, "groups": 3}),
        ZooEntry("shufflenet_v2", "ShuffleNet V2: channel split + shuffle (0.5x/1.0x/1.5x/2.0x)",
                 lambda num_classes, width_mult: ShuffleNetV2(width_mult, num_classes), 224,
                 {"width_mult": 1.0}),
        ZooEntry("squeezenet1_0", "SqueezeNet 1.0: fire modules",
                 lambda num_classes: SqueezeNet("1_0", num_classes), 224),
        ZooEntry("squeezenet1_1", "SqueezeNet 1.1: fire modules, cheaper stem",
                 lambda num_classes: SqueezeNet("1_1", num_classes), 224),
        ZooEntry("xception", "Xception: entry/middle/exit flows of separable convolutions",
                 lambda num_classes: Xception(num_classes), 299),
        *[_effnet(v) for v in range(8)],
    ]
}


def build_model(
    name: str,
    *,
    num_classes: int = 1000,
    width_mult: float | None = None,
    groups: int | None = None,
    resolution: int | None = None,
    seed: int = 0,
    weights: str | None = None,
) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """Build zoo network `name` in eval mode and return it with its NCHW input shape."""
    if name not in ZOO:
        raise ModelOptionError(f"unknown model {name!r}; zoo models: {', '.join(ZOO)}")
    entry = ZOO[name]
    if not 1 <= num_classes <= 100_000:
        raise ModelOptionError(f"--num-classes must be in 1..100000, got {num_classes}")
    kwargs: dict[str, object] = {"num_classes": num_classes}
    for option, value in (("width_mult", width_mult), ("groups", groups)):
        if value is None:
            if option in entry.options:
                kwargs[option] = entry.options[option]
        elif option not in entry.options:
            flag = "--" + option.replace("_", "-")
            raise ModelOptionError(f"{name} does not take {flag}")
        else:
            kwargs[option] = value
    if "width_mult" in kwargs and not 0 < float(kwargs["width_mult"]) <= 4:  # type: ignore[arg-type]
        raise ModelOptionError(f"--width-mult must be in (0, 4], got {kwargs['width_mult']}")
    res = entry.default_resolution if resolution is None else resolution
    if res != entry.default_resolution and (res < 32 or res > 1024 or res % 32):
        raise ModelOptionError(
            f"--resolution must be a multiple of 32 in 32..1024 (or {entry.default_resolution}), got {res}"
        )
    torch.manual_seed(seed)
    try:
        model = entry.factory(**kwargs)
    except ValueError as err:
        raise ModelOptionError(str(err)) from err
    init_weights(model)
    shape = (1, 3, res, res)
    if weights is None:
        keep_signal(model, shape, seed)
    else:
        try:
            state, _ = read_weights(weights)
            load_into(model, state, weights, name)
        except WeightsError as err:
            raise ModelOptionError(str(err)) from None
    model.eval()
    return model, shape
