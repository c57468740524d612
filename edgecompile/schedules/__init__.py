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
import json
from dataclasses import dataclass, field
from typing import Any

KINDS = ("conv", "conv_dw", "conv_pw", "conv_group", "dwpw", "fc", "pool", "mean", "elementwise")


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
    dw_anchor: str | None = None       # dwpw: the depthwise reduction block
    dw_channels: int = 0               # dwpw: channels of the depthwise part
    out_rows: int = 0                  # output height (rows of the NHWC output)
    rows: int = 0                      # dwpw: output rows per tile of the tiled schedule (0: untiled)
    packed: dict = field(default_factory=dict)   # weight parameter position -> output-channel panel width

    def describe(self) -> str:
        if self.kind == "dwpw":
            (kh, kw), (sh, _) = self.kernel, self.stride
            return f"{self.kind} {kh}x{kw}/{sh} dw {self.dw_channels} -> pw {self.channels[1]}"
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
    if len(reductions) == 2:
        first, second = _conv(reductions[0]), _conv(reductions[1])
        if first and second and first[0] == "conv_dw" and second[0] == "conv_pw" and second[3] == (1, 1):
            info = KernelInfo("dwpw", first[1] + second[1], reductions[1].name_hint, names, first[2], first[3],
                              second[4], dw_anchor=reductions[0].name_hint, dw_channels=first[4][1])
            info.out_rows = _spatial(reductions[1])[1]
            return info
    conv = _conv(anchor)
    if conv is not None:
        kind, macs, kernel, stride, channels = conv
        info = KernelInfo(kind, macs, anchor.name_hint, names, kernel, stride, channels)
        info.out_rows = _spatial(anchor)[1]
        return info
    name = anchor.name_hint
    extents = _iter_extents(anchor)
    total = 1
    for _, e in extents:
        total *= e
    if "matmul" in name or "dense" in name:
        sp = [e for t, e in extents if t == 0]
        red = [e for t, e in extents if t == 2]
        return KernelInfo("fc", total, name, names, channels=(red[0], sp[-1]))
    if "pool" in name:
        return KernelInfo("pool", 0, name, names)
    return KernelInfo("mean", 0, name, names)


def _spatial(block: Any) -> list[int]:
    return [e for t, e in _iter_extents(block) if t == 0]


def _conv(block: Any) -> tuple[str, int, tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """(kind, MACs, kernel, stride, (in channels per group, out channels)) of an NHWC conv block."""
    name = block.name_hint
    if "conv2d" not in name:
        return None
    extents = _iter_extents(block)
    total = 1
    for _, e in extents:
        total *= e
    sp = [e for t, e in extents if t == 0]
    red = [e for t, e in extents if t == 2]
    kh, kw, cin_g = red[0], red[1], red[2]
    cout = sp[-1]
    if name.startswith("group_conv2d"):
        kind = "conv_dw" if cin_g == 1 else "conv_group"
    elif kh == 1 and kw == 1:
        kind = "conv_pw"
    else:
        kind = "conv"
    return kind, total, (kh, kw), _conv_stride(block), (cin_g, cout)


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


def _prepared(func: Any, info: KernelInfo, keep_pad: bool) -> Any:
    from tvm import s_tir

    from . import generic

    sch = s_tir.Schedule(func)
    if info.kind == "dwpw":
        generic.inline_dwpw(sch, info)
    else:
        generic.inline_producers_and_epilogues(sch, info, keep_pad=keep_pad)
    return sch


def space(func: Any, family: str) -> tuple[list[dict], KernelInfo]:
    """The tuner's search space for one kernel: the family rule's configurations (its own choice
    first) plus the portable untiled schedule. One entry = the untiled schedule only."""
    info = analyze(func)
    mod = family_module(family)
    configs: list[dict] = []
    if hasattr(mod, "space"):
        try:
            configs = mod.space(_prepared(func, info, keep_pad=info.kind in ("conv", "conv_dw")), info)
        except Exception:  # noqa: BLE001 - a kernel the rule cannot read has no tiled space
            configs = []
    return configs + [{"untiled": True}], info


def apply_config(sch: Any, info: KernelInfo, family: str, config: dict) -> bool:
    """Schedule `sch` (a fresh Schedule of the kernel) with one configuration of `space`. False
    (and `sch` unusable) when the family's rule rejects it."""
    from . import generic

    if info.kind == "dwpw":
        generic.inline_dwpw(sch, info)
    else:
        tiled = not config.get("untiled")
        generic.inline_producers_and_epilogues(sch, info, keep_pad=tiled and info.kind in ("conv", "conv_dw"),
                                               keep_concat=tiled and info.kind == "conv_pw")
    if config.get("untiled"):
        return True
    mod = family_module(family)
    rule = {"conv": mod.schedule_conv, "conv_pw": mod.schedule_conv, "conv_group": mod.schedule_conv,
            "conv_dw": mod.schedule_depthwise, "dwpw": mod.schedule_dwpw, "fc": mod.schedule_dense}.get(info.kind)
    if rule is None:
        return False
    try:
        return bool(rule(sch, info, cfg=config))
    except Exception:  # noqa: BLE001 - ScheduleError and friends: the configuration does not fit
        return False


def schedule(func: Any, family: str, dwpw_rows: int | None = None,
             config: dict | None = None) -> tuple[Any, KernelInfo]:
    """Schedule one fused kernel for a target family. Returns (scheduled PrimFunc, info).

    The family's rule runs first; if it declines (returns False) or a schedule primitive
    rejects the kernel, the kernel falls back to the portable untiled schedule, and
    `info.schedule` says which one ran. `dwpw_rows` overrides the family's row-tile height of
    fused depthwise+pointwise kernels. `config` (from the tuner, see `space`) fixes the rule's
    choices (tile sizes, loop order, rows) or asks for the untiled schedule."""
    from tvm import s_tir

    from . import generic

    info = analyze(func)
    if config and config.get("untiled"):
        sch = _prepared(func, info, keep_pad=False)
        info.schedule = "generic.untiled (tuned)"
        return sch.mod["main"], info
    mod = family_module(family)
    rule = {
        "conv": mod.schedule_conv,
        "conv_pw": mod.schedule_conv,
        "conv_group": mod.schedule_conv,
        "conv_dw": mod.schedule_depthwise,
        "dwpw": mod.schedule_dwpw,
        "fc": mod.schedule_dense,
        "pool": mod.schedule_pool,
        "mean": mod.schedule_pool,
        "elementwise": mod.schedule_elementwise,
    }[info.kind]
    sch = s_tir.Schedule(func)
    if info.kind == "dwpw":
        generic.inline_dwpw(sch, info)
    else:
        generic.inline_producers_and_epilogues(sch, info, keep_pad=info.kind in ("conv", "conv_dw"),
                                               keep_concat=info.kind == "conv_pw")
    try:
        if config:
            ok = bool(rule(sch, info, cfg=config))
        else:
            ok = bool(rule(sch, info, rows=dwpw_rows) if info.kind == "dwpw" else rule(sch, info))
    except Exception as err:  # noqa: BLE001 - ScheduleError and friends: fall back
        ok = False
        info.note = f"{rule.__name__} failed: {str(err).strip().splitlines()[-1][:160]}"
    if ok:
        info.schedule = f"{family}.{rule.__name__}" + (f" {json.dumps(config, sort_keys=True)}" if config else "")
        return sch.mod["main"], info
    sch = s_tir.Schedule(func)
    if info.kind == "dwpw":
        generic.inline_dwpw(sch, info)
    else:
        generic.inline_producers_and_epilogues(sch, info)
    info.packed = {}          # whatever the failed rule packed is gone with its schedule
    info.rows = 0
    info.schedule = "generic.untiled"
    return sch.mod["main"], info
