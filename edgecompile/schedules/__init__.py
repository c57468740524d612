"""Schedules: how each fused TIR kernel's loops are ordered, tiled and unrolled.

`analyze` classifies a kernel by its anchor (the reduction block: convolution, matmul, pooling,
mean) and counts its multiply-accumulates. `schedule` applies the generic, portable steps first
(inline padding and elementwise producers, fold the epilogue into one block) and then hands the
kernel to the target family's module (`host`, `cortex_a`, `cortex_m`, `helium`), which all
expose the same functions: `schedule_conv`, `schedule_depthwise`, `schedule_dense`,
`schedule_pool`, `schedule_elementwise`. A new family is a new module with those names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

KINDS = ("conv", "conv_dw", "conv_pw", "conv_group", "fc", "pool", "mean", "elementwise")


@dataclass
class KernelInfo:
    kind: str                          # one of KINDS
    macs: int                          # multiply-accumulates (conv, fc); 0 otherwise
    anchor: str | None                 # name of the reduction block, if any
    ops: list[str] = field(default_factory=list)   # all block names, in order
    kernel: tuple[int, int] = (1, 1)   # conv window
    stride: tuple[int, int] = (1, 1)
    channels: tuple[int, int] = (0, 0)  # (in per group, out) for conv/fc
    schedule: str = ""                 # which schedule rule ran
    note: str = ""                     # why a rule fell back, if it did

    def describe(self) -> str:
        if self.kind.startswith("conv"):
            (kh, kw), (sh, sw) = self.kernel, self.stride
            return f"{self.kind} {kh}x{kw}/{sh} {self.channels[0]}->{self.channels[1]}"
        return self.kind


def _iter_extents(block: Any) -> list[tuple[int, int]]:
    """(iter type, extent) of a block: type 0 = spatial, 2 = reduction."""
    return [(int(iv.iter_type), int(iv.dom.extent)) for iv in block.iter_vars]


def analyze(func: Any) -> KernelInfo:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))] if _has_root(sch) else []
    names = [b.name_hint for b in blocks]
    reductions = [b for b in blocks if any(t == 2 for t, _ in _iter_extents(b))]
    if not reductions:
        return KernelInfo("elementwise", 0, None, names)
    anchor = reductions[0]
    name = anchor.name_hint
    extents = _iter_extents(anchor)
    total = 1
    for _, e in extents:
        total *= e
    if "conv2d" in name:
        # NHWC conv: spatial (n, h, w, c) and reduction (kh, kw, ci)
        sp = [e for t, e in extents if t == 0]
        red = [e for t, e in extents if t == 2]
        kh, kw, cin_g = red[0], red[1], red[2]
        cout = sp[-1]
        stride = _conv_stride(anchor)
        groups = 1 if name.startswith("conv2d") else None
        if cin_g == 1 and name.startswith("group_conv2d"):
            kind = "conv_dw"
        elif name.startswith("group_conv2d"):
            kind = "conv_group"
        elif kh == 1 and kw == 1:
            kind = "conv_pw"
        else:
            kind = "conv"
        del groups
        return KernelInfo(kind, total, name, names, (kh, kw), stride, (cin_g, cout))
    if "matmul" in name or "dense" in name:
        sp = [e for t, e in extents if t == 0]
        red = [e for t, e in extents if t == 2]
        return KernelInfo("fc", total, name, names, channels=(red[0], sp[-1]))
    if "pool" in name:
        return KernelInfo("pool", 0, name, names)
    return KernelInfo("mean", 0, name, names)


def _has_root(sch: Any) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def _conv_stride(block: Any) -> tuple[int, int]:
    """Read the stride from the input index expression `h * s + kh` of the conv block."""
    import re

    for region in block.reads:
        idx = [str(r.min) for r in region.region]
        if len(idx) == 4:
            strides = []
            for e in idx[1:3]:
                m = re.search(r"\* T\.int64\((\d+)\)|\* (\d+)", e)
                strides.append(int(m.group(1) or m.group(2)) if m else 1)
            if any("v_" in e for e in idx[1:3]):
                return strides[0], strides[1]
    return (1, 1)


def family_module(family: str) -> Any:
    return importlib.import_module(f"{__name__}.{family}")


def schedule(func: Any, family: str) -> tuple[Any, KernelInfo]:
    """Schedule one fused kernel for a target family. Returns (scheduled PrimFunc, info).

    The family's rule runs first; if it declines (returns False) or a schedule primitive
    rejects the kernel, the kernel falls back to the portable untiled schedule, and
    `info.schedule` says which one ran."""
    from tvm import s_tir

    from . import generic

    info = analyze(func)
    mod = family_module(family)
    rule = {
        "conv": mod.schedule_conv,
        "conv_pw": mod.schedule_conv,
        "conv_group": mod.schedule_conv,
        "conv_dw": mod.schedule_depthwise,
        "fc": mod.schedule_dense,
        "pool": mod.schedule_pool,
        "mean": mod.schedule_pool,
        "elementwise": mod.schedule_elementwise,
    }[info.kind]
    sch = s_tir.Schedule(func)
    generic.inline_producers_and_epilogues(sch, info, keep_pad=info.kind in ("conv", "conv_dw"))
    try:
        ok = bool(rule(sch, info))
    except Exception as err:  # noqa: BLE001 - ScheduleError and friends: fall back
        ok = False
        info.note = f"{rule.__name__} failed: {str(err).strip().splitlines()[-1][:160]}"
    if ok:
        info.schedule = f"{family}.{rule.__name__}"
        return sch.mod["main"], info
    sch = s_tir.Schedule(func)
    generic.inline_producers_and_epilogues(sch, info)
    info.schedule = "generic.untiled"
    return sch.mod["main"], info
