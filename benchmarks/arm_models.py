"""The networks of the ARM comparison (benchmarks/arm_xnnpack.py and benchmarks/arm_compare.py).

One row per network: both scripts build it with the zoo's `build_model` from the same options
(seed 0, 1000 classes, the zoo's default weights initialisation), so TFLite and our rpi4 build run
the same weights. Plain data: imported by the litert venv (no edgecompile there) and by .venv.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NUM_CLASSES = 1000
SEED = 0


@dataclass(frozen=True)
class ArmModel:
    key: str                      # --models selector and JSON file name
    model: str                    # zoo name
    label: str
    options: dict = field(default_factory=dict)   # width_mult / groups / resolution, as build_model takes them

    @property
    def resolution(self) -> int:
        return int(self.options["resolution"])


ARM_MODELS: list[ArmModel] = [
    ArmModel("mobilenet_v1_0.25_96", "mobilenet_v1", "MobileNet V1 0.25 / 96", {"width_mult": 0.25, "resolution": 96}),
    ArmModel("mobilenet_v1_1.0_224", "mobilenet_v1", "MobileNet V1 1.0 / 224", {"width_mult": 1.0, "resolution": 224}),
    ArmModel("mobilenet_v2_1.0_224", "mobilenet_v2", "MobileNet V2 1.0 / 224", {"width_mult": 1.0, "resolution": 224}),
    ArmModel("shufflenet_v1_1.0_g3_224", "shufflenet_v1", "ShuffleNet V1 1.0x g=3 / 224",
             {"width_mult": 1.0, "groups": 3, "resolution": 224}),
    ArmModel("shufflenet_v2_1.0_224", "shufflenet_v2", "ShuffleNet V2 1.0x / 224", {"width_mult": 1.0, "resolution": 224}),
    ArmModel("squeezenet1_1_224", "squeezenet1_1", "SqueezeNet 1.1 / 224", {"resolution": 224}),
    ArmModel("xception_299", "xception", "Xception / 299", {"resolution": 299}),
    ArmModel("efficientnet_b0_224", "efficientnet_b0", "EfficientNet-B0 / 224", {"resolution": 224}),
]
# Selectable by key only (not part of "all", so arm_compare.py's default set is unchanged).
EXTRA_MODELS: list[ArmModel] = [
    # the second network of benchmarks/NEON_INT8.md (our int8 vs fp32)
    ArmModel("mobilenet_v2_0.35_96", "mobilenet_v2", "MobileNet V2 0.35 / 96", {"width_mult": 0.35, "resolution": 96}),
]
BY_KEY = {m.key: m for m in ARM_MODELS + EXTRA_MODELS}


def select(spec: str | None) -> list[ArmModel]:
    """`--models` value: comma-separated keys (or zoo names, meaning every row of that network)."""
    if not spec or spec == "all":
        return list(ARM_MODELS)
    out: list[ArmModel] = []
    for word in [w.strip() for w in spec.split(",") if w.strip()]:
        hits = [BY_KEY[word]] if word in BY_KEY else [m for m in ARM_MODELS if m.model == word]
        if not hits:
            raise SystemExit(f"error: --models: unknown network {word!r}; known: {', '.join(BY_KEY)} "
                             f"(or a zoo name among {', '.join(sorted({m.model for m in ARM_MODELS}))})")
        out += [m for m in hits if m not in out]
    return out
