"""Schedules: how each fused TIR kernel's loops are ordered, tiled and unrolled, per target family.

* `tiling.py`   the mechanisms (inline, split, reorder, pack weights, tensorize);
* `rules.py`    the policy: which tile a kernel of each kind gets (`TiledRules`);
* `ukernels.py` the generic micro-kernels (C with GCC vector extensions) that tiles tensorize into;
* `<family>/`   one package per target family (`host`, `cortex_a`, `cortex_m`, `helium`), chosen
                by the target file's `family`: its `RULES` (a `TiledRules` with the family's
                registers and lanes) and, in `<family>/ukernels.py`, hand-written micro-kernels
                that override the generic ones by name (`gemm`, `dw`), as TFLM's
                `kernels/cmsis_nn/` overrides `kernels/`.

A new family is a new package with `LANES` and `RULES`; nothing else names families.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any

from ..ir.kernel import KernelInfo, analyze
from ..ir.operators import Kind
from . import epilogues, tiling, ukernels


def family(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def family_ukernels(name: str) -> ModuleType | None:
    """The family's own micro-kernels (`<family>/ukernels.py`), if it has any."""
    try:
        return importlib.import_module(f"{__name__}.{name}.ukernels")
    except ModuleNotFoundError:
        return None


def space(func: Any, family_name: str) -> tuple[list[dict], KernelInfo]:
    """The tuner's search space for one kernel: the family rule's configurations (its own choice
    first) plus the portable untiled schedule. One entry = the untiled schedule only."""
    from tvm import s_tir

    info = analyze(func)
    configs: list[dict] = []
    try:
        sch = s_tir.Schedule(func)
        tiling.prepare(sch, info, tiled=True)
        configs = family(family_name).RULES.space(sch, info)
    except Exception:  # noqa: BLE001 - a kernel the rule cannot read has no tiled space
        configs = []
    return configs + [{"untiled": True}], info


def apply_config(sch: Any, info: KernelInfo, family_name: str, config: dict) -> bool:
    """Schedule `sch` (a fresh Schedule of the kernel) with one configuration of `space`. False
    (and `sch` unusable) when the family's rule rejects it."""
    tiled = not config.get("untiled")
    tiling.prepare(sch, info, tiled)
    if not tiled:
        return True
    try:
        return bool(family(family_name).RULES.rule_for(info.kind)(sch, info, cfg=config))
    except Exception:  # noqa: BLE001 - ScheduleError and friends: the configuration does not fit
        return False


def schedule(func: Any, family_name: str, dwpw_rows: int | None = None, config: dict | None = None,
             name: str = "", rescale_kernel: bool = True) -> tuple[Any, KernelInfo]:
    """Schedule one fused kernel for a target family. Returns (scheduled PrimFunc, info).

    The family's rule runs first; if it declines (returns False) or a schedule primitive
    rejects the kernel, the kernel falls back to the portable untiled schedule, and
    `info.schedule` says which one ran. `dwpw_rows` overrides the family's row-tile height of
    fused depthwise+pointwise kernels. `config` (from the tuner, see `space`) fixes the rule's
    choices (tile sizes, loop order, rows) or asks for the untiled schedule. `rescale_kernel`
    False keeps the int8 rescale tiles in the kernel's own C where a family would hand them to a
    rescale kernel over re-encoded constants (`info.rescale`: the compiler found constants that
    kernel cannot take)."""
    from tvm import s_tir

    info = analyze(func, name)
    info.rescale_kernel = rescale_kernel
    if config and config.get("untiled"):
        sch = s_tir.Schedule(func)
        tiling.prepare(sch, info, tiled=False)
        info.schedule = "generic.untiled (tuned)"
        return sch.mod["main"], info
    rules = family(family_name).RULES
    rule = rules.rule_for(info.kind)
    sch = s_tir.Schedule(func)
    tiling.prepare(sch, info, tiled=True)
    blocks_before = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    try:
        if config:
            ok = bool(rule(sch, info, cfg=config))
        else:
            ok = bool(rule(sch, info, rows=dwpw_rows) if info.kind == Kind.DWPW else rule(sch, info))
    except Exception as err:  # noqa: BLE001 - ScheduleError and friends: fall back
        ok = False
        info.note = f"{rule.__name__} failed: {str(err).strip().splitlines()[-1][:160]}"
    if ok:
        rules.finish(sch, info, blocks_before)
        info.schedule = f"{family_name}.{rule.__name__}" + (f" {json.dumps(config, sort_keys=True)}" if config else "")
        out = rules.after_finish(sch.mod["main"], info)
        if out is None:         # the family's post-schedule rewrite does not apply: without its rescale kernel
            return schedule(func, family_name, dwpw_rows, config, name, rescale_kernel=False)
        return out, info
    sch = s_tir.Schedule(func)
    tiling.prepare(sch, info, tiled=False)
    info.packed, info.panel_order, info.rescale = {}, {}, {}   # whatever the failed rule packed is gone with its schedule
    info.rows = 0
    info.schedule = "generic.untiled"
    return sch.mod["main"], info


def emit_ukernels(kernel_code: str, family_name: str) -> str:
    """C definitions of every micro-kernel that `kernel_code` calls (sorted: deterministic): the
    family's own version where it has one, else the generic one."""
    lanes, rules = family(family_name).LANES, family(family_name).RULES
    own = family_ukernels(family_name)
    gemm_rows = sorted({(t, int(m), int(n), int(p)) for t, m, n, p in ukernels.GEMM_ROWS_CALL_RE.findall(kernel_code)})
    dw_rows = sorted({(t, *(int(v) for v in rest)) for t, *rest in ukernels.DW_ROWS_CALL_RE.findall(kernel_code)})
    gemm_rows_z = sorted({(t, int(m), int(n), int(p)) for t, m, n, p in ukernels.GEMM_ROWS_Z_CALL_RE.findall(kernel_code)})
    # zero-start tiles (C = A B), each with the += kernel its portable form calls
    gemms_z = sorted({(t, int(m), int(n)) for t, m, n in ukernels.GEMM_Z_CALL_RE.findall(kernel_code)}
                     | {(t, q, n) for t, m, n, p in gemm_rows_z for _, q in ukernels.ragged_pixels(m, p)})
    # zero-start tiles summed over kernel rows (C = sum_r A_r B_r), plain and ragged pixel tiles
    gemm_rows_rz = sorted({(t, int(m), int(n), int(p), int(r))
                           for t, m, n, p, r in ukernels.GEMM_ROWS_RZ_CALL_RE.findall(kernel_code)})
    gemms_rz = ({(t, int(m), int(n), int(r)) for t, m, n, r in ukernels.GEMM_RZ_CALL_RE.findall(kernel_code)}
                | {(t, q, n, r) for t, m, n, p, r in gemm_rows_rz for _, q in ukernels.ragged_pixels(m, p)})
    # a ragged pixel tile calls the micro-kernels of its full and last tiles
    gemms = sorted({(t, int(m), int(n)) for t, m, n in ukernels.GEMM_CALL_RE.findall(kernel_code)}
                   | {(t, q, n) for t, m, n, p in gemm_rows for _, q in ukernels.ragged_pixels(m, p)}
                   | set(gemms_z))
    dws = sorted({(t, *(int(v) for v in rest)) for t, *rest in ukernels.DW_CALL_RE.findall(kernel_code)}
                 | {(t, q, n, kh, kw, s) for t, m, n, kh, kw, s, p in dw_rows for _, q in ukernels.ragged_pixels(m, p)})
    windows = sorted({(t, *(int(v) for v in rest)) for t, *rest in ukernels.WINDOW_CALL_RE.findall(kernel_code)})
    requants = sorted({(int(m), int(n), False) for m, n in ukernels.REQUANT_CALL_RE.findall(kernel_code)}
                      | {(int(m), int(n), True) for m, n in ukernels.REQUANT16_CALL_RE.findall(kernel_code)})
    helpers = sorted(set(ukernels.HELPER_CALL_RE.findall(kernel_code)))
    widen = bool(ukernels.WIDEN_CALL_RE.search(kernel_code))
    # GEMM tiles with their epilogue (codegen.lower.fuse_epilogues); portable forms call zero-start tiles
    def zero_start_c(m: int, n: int, types: ukernels.Types = ukernels.F32) -> str:
        return getattr(own, "gemm_z", lambda *a: None)(m, n, lanes, types) or ukernels.gemm_z_c(m, n, types)

    def kernel_rows_c(m: int, n: int, r: int, types: ukernels.Types = ukernels.F32) -> str:
        return ukernels.kernel_rows_c(zero_start_c(m, n, types), m, n, r, types)

    fused, fused_z = epilogues.emit(kernel_code, own, lanes,
                                    lambda m, n, r: kernel_rows_c(m, n, r) if r else zero_start_c(m, n))
    fused_dw, fused_dw_plus = epilogues.emit_dw(kernel_code, own, lanes, lambda m, n, kh, kw, s: (
        getattr(own, "dw", lambda *a: None)(m, n, kh, kw, s, lanes, ukernels.F32)
        or ukernels.emit_dw_c(m, n, kh, kw, s, lanes, ukernels.F32, rules.dw_acc)))
    fused += fused_dw
    gemms_rz |= {("f32", m, n, r) for m, n, r in fused_z if r}
    rz_parts = []
    for t, m, n, r in sorted(gemms_rz):
        code = kernel_rows_c(m, n, r, ukernels.TYPES[t])
        rz_parts.append(code)
        if f"ec_gemm_{t}_{m}x{n}_z(C, A, B," in code:      # the portable form: the zero-start and += kernels
            fused_z = set(fused_z) | {(m, n, 0)}
            gemms = sorted(set(gemms) | {(t, m, n)})
    if fused_z:
        gemms_z = sorted(set(gemms_z) | {("f32", m, n) for m, n, r in fused_z if not r})
        gemms = sorted(set(gemms) | set(gemms_z))
    if fused_dw_plus:
        dws = sorted(set(dws) | {("f32", *t) for t in fused_dw_plus})
    if not gemms and not dws and not windows and not requants and not helpers and not widen and not fused and not rz_parts:
        return ""
    integer = helpers or requants or widen or any(t != "f32" for t, *_ in gemms + dws + windows)
    parts = ([ukernels.ACLE_INCLUDE] if integer else []) + [ukernels.emit_prelude(lanes)]
    parts += [ukernels.HELPERS[h] for h in helpers]
    for t, m, n in gemms:
        parts.append(ukernels.family_gemm_c(own, rules, m, n, lanes, ukernels.TYPES[t]))
    for t, m, n in gemms_z:
        types = ukernels.TYPES[t]
        parts.append(getattr(own, "gemm_z", lambda *a: None)(m, n, lanes, types) or ukernels.gemm_z_c(m, n, types))
    for t, m, n, kh, kw, s in dws:
        types = ukernels.TYPES[t]
        code = getattr(own, "dw", lambda *a: None)(m, n, kh, kw, s, lanes, types)
        parts.append(code or ukernels.emit_dw_c(m, n, kh, kw, s, lanes, types, rules.dw_acc))
    for t, m, n, kh, kw, ci, s in windows:
        types = ukernels.TYPES[t]
        code = getattr(own, "window", lambda *a: None)(m, n, kh, kw, ci, s, lanes, types)
        parts.append(code or ukernels.emit_window_c(m, n, kh, kw, ci, s, lanes, types))
    for m, n, wide in requants:
        code = getattr(own, "requant", lambda *a, **k: None)(m, n, **({"wide": True} if wide else {}))
        parts.append(code or ukernels.emit_requant_c(m, n, wide))
    if widen:
        code = getattr(own, "widen", lambda: None)()
        parts.append(code or ukernels.emit_widen_c())
    parts += [ukernels.rows_gemm_c(m, p, n, ukernels.TYPES[t]) for t, m, n, p in gemm_rows]
    parts += [ukernels.rows_gemm_z_c(m, p, n, ukernels.TYPES[t]) for t, m, n, p in gemm_rows_z]
    parts += rz_parts
    parts += [ukernels.rows_kernel_rows_c(m, p, n, r, ukernels.TYPES[t]) for t, m, n, p, r in gemm_rows_rz]
    parts += [ukernels.rows_dw_c(m, p, n, kh, kw, s, ukernels.TYPES[t]) for t, m, n, kh, kw, s, p in dw_rows]
    parts += ([epilogues.helpers_c(lanes)] + fused) if fused else []
    return "\n\n".join(parts) + "\n"
