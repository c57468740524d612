"""Instructions a program will take, predicted from its kernel calls before any C is compiled: what
the memory planning weighs a plan's RAM against (compiler._plan_memory).

The model is linear in what each call does, with coefficients per target (`[cost]` in the target
file, `targets.CostSpec`):

    instructions(call) = conv * MACs of a KxK convolution
                       + dw * depthwise MACs (a depthwise kernel's, or the depthwise part of a fused dw+pw)
                       + pw_fused * pointwise MACs of a fused dw+pw kernel
                       + pw * MACs of a stand-alone 1x1 convolution (grouped: the same)
                       + fc * MACs of a dense layer
                       + out_byte * bytes the call writes (kernels, transposes, elementwise)
                       + copy_byte * bytes a halo-row copy writes (instead of out_byte)
                       + call (a fixed cost per call but the copies')
                       + lean_dw * depthwise MACs of a kernel with lean windows (channel tiles outer)
                       + row1 * MACs of a fused dw+pw kernel tiled one output row at a time

A plan's prediction is the sum over its calls; the planner compares it with the plain plan's
prediction (the same model on the plain program), so what both share mostly cancels. Small band
kernels cost more per MAC than whole-tensor ones through the per-call and per-output-byte terms
(a band writes as many bytes per MAC as its whole-tensor kernel but is called once per band), and
a patch stage that cuts a fused dw+pw kernel in two pays the stand-alone pointwise rate.

Calibration (stm32f746g-disco, int8, QEMU -icount emulator instructions per kernel call from
`edgecompile report`, non-negative least squares over every call of 6 builds of the wake-word
network: plain, one-row tiles everywhere, patches 4:2 recomputed, 4:2 and 4:1 cached, 4:1 cached
with one-row tiles). Plan/plain ratios, predicted against measured: -1.9% (4:2 recomputed) to
+2.4% (the plan `--patches min` then chose: 1.086x predicted, 1.061x measured); held out, 4:2
recomputed with one-row tiles +0.6%, MobileNet V2 0.30/80 6:2 recomputed with one-row tiles
+0.9% and 6:2 cached -0.7% (its absolute instructions err +9..10%: the ratios cancel it). Not
modelled: GCC specialising a kernel (.constprop) when all its calls share some pointer arguments,
which the memory plan decides (up to 10% on a kernel, about 2% of the wake-word network).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..ir.operators import Kind

FEATURES = ("conv", "dw", "pw_fused", "pw", "fc", "out_byte", "copy_byte", "call", "lean_dw", "row1")


@dataclass(frozen=True)
class CallFeatures:
    """What the model counts for one kernel call."""

    values: dict[str, float]

    def cost(self, coef: dict[str, float]) -> float:
        return sum(coef.get(k, 0.0) * v for k, v in self.values.items())


def call_features(info: Any, out_bytes: int, lean: bool, row1: bool | None = None) -> CallFeatures:
    """Features of a call of a kernel described by `info` (ir.kernel.KernelInfo) that writes
    `out_bytes` bytes, with lean windows or not, tiled one output row at a time or not (None: as
    `info.rows` says)."""
    f = dict.fromkeys(FEATURES, 0.0)
    if info.ops == ["copy_rows"]:       # a halo-row copy: a memcpy, nothing per call worth counting
        f["copy_byte"] = float(out_bytes)
        return CallFeatures(f)
    f["call"], f["out_byte"] = 1.0, float(out_bytes)
    kind, macs = info.kind, float(info.macs)
    if kind == Kind.CONV:
        f["conv"] = macs
    elif kind == Kind.CONV_DW:
        f["dw"] = macs
        f["lean_dw"] = macs if lean else 0.0
    elif kind in (Kind.CONV_PW, Kind.CONV_GROUP):
        f["pw"] = macs
    elif kind == Kind.FC:
        f["fc"] = macs
    elif kind == Kind.DWPW:
        cout = info.channels[1] or 1
        window = info.kernel[0] * info.kernel[1]
        # macs = pixels * (window * dw_channels + dw_channels * cout)
        dw = macs * window / (window + cout)
        f["dw"], f["pw_fused"] = dw, macs - dw
        f["lean_dw"] = dw if lean else 0.0
        f["row1"] = macs if (info.rows == 1 if row1 is None else row1) else 0.0
    return CallFeatures(f)


def program_features(prog: Any, infos: dict[str, Any], call_symbols: list[str], is_lean: Callable[[str], bool],
                     is_row1: Callable[[str, Any], bool | None] = lambda k, i: None) -> list[CallFeatures]:
    """Features of every call of a lowered program (`is_lean(kernel name)`: lowered with lean
    windows; `is_row1(kernel name, info)`: counted as one-row tiles, None: as lowered)."""
    return [call_features(infos[sym], prog.tensors[c.outputs[0]].nbytes, is_lean(c.kernel), is_row1(c.kernel, infos[sym]))
            for c, sym in zip(prog.calls, call_symbols)]


def predict(features: Iterable[CallFeatures], coef: dict[str, float]) -> int:
    """Predicted instructions of the calls."""
    return int(round(sum(f.cost(coef) for f in features)))


def extra_estimate(coef: dict[str, float], per_mac: float, extra_macs: int, bytes_copied: int) -> int:
    """Before lowering: what a patch plan adds to the plain plan, its recomputed MACs at the plain
    plan's predicted instructions per MAC (`per_mac`; the band kernels of the first layers cost
    more, so this errs low) and the bytes its copies move (each halo row counted twice in
    `bytes_copied`: out and back in). Orders the candidates and prunes those far over a bound; the
    bound itself is checked on the lowered plan."""
    return int(per_mac * extra_macs + coef.get("copy_byte", 0.0) * bytes_copied / 2)


def ratio(plan: int, plain: int) -> float:
    return plan / plain if plain else math.inf
