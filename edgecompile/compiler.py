"""The build, stage by stage; each stage is a module of its own and this one only passes data on:

    ir.frontend (model -> Relax) -> ir.passes (float rewrites) -> ir.quantize (int8, optional)
    -> ir.passes.lower_graph (fused kernels) -> ir.program (kernel calls) -> schedules (per family,
    tuning records from tune.records) -> codegen (C kernels, memory plan, weights, executor)
    -> platforms (compile for the board, measure the linked files) -> build directory
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import schedules
from .build_dir import check_out_dir, mark_build, write_atomically
from .codegen import builtins, executor, lower, memory, weights
from .codegen import cost as cost_model
from .codegen.lower import KernelSource
from .codegen.memory import MemoryPlan
from .datasets import calibration_inputs
from .errors import EdgeCompileError, FitError
from .ir import passes, patches, quantize, stream
from .ir.frontend import ModelSource, to_relax
from .ir.kernel import KernelInfo, analyze
from .ir.operators import Kind
from .ir.program import Program, extract_program
from .schedules.rules import largest_divisor
from .platforms import MemoryEstimate, platform_for
from .targets import Target
from .tune.records import TuningRecords, db_key


# schedule configurations with `lean_windows`: depthwise channel tiles outer, so that a padded
# input window holds one channel tile (schedules/tiling.py)
LEAN_WINDOWS = {Kind.CONV_DW: {"order": "channels"}, Kind.DWPW: {"dw_order": "channels"}}
# and intermediate buffers from this size in the arena (where the plan can overlap them), not on the stack
LEAN_STACK_LIMIT = 256


@dataclass(frozen=True)
class BuildOptions:
    external_io: bool = False       # graph input/output live in caller buffers, not the arena
    compile: bool = True            # run the target toolchain (False: sources and report only)
    fuse: bool = True               # fused depthwise+pointwise kernels (False: the unfused path)
    in_place: bool = True           # let streaming kernels (dw+pw, depthwise) overwrite their consumed input
    dwpw_rows: int | None = None    # row-tile height of fused kernels (None: the family's default)
    dwpw_rows_kernels: frozenset[str] | None = None   # with dwpw_rows: only these kernels (None: all)
    quant: str | None = None        # "fp32" or "int8" (None: the target's default_quant)
    calibration: str = "digits"     # int8: a dataset name or a .npy file of inputs
    calibration_samples: int = 100
    calibration_method: str = "minmax"   # or "percentile"
    compare_unfused: bool = True    # also plan the unfused program, for the report (costs a 2nd lowering)
    tuning: TuningRecords | None = None   # tuned configurations to use (None: the rules')
    # (layers, rows[, halo[, cols]]): run the first layers in row bands (ir/patches.py), halo
    # "recomputed" (the default) or "cached"; cols > 1: each band in that many column tiles (2-D
    # tiles, halo "recomputed")
    patch: tuple[int, int] | tuple[int, int, str] | tuple[int, int, str, int] | None = None
    # with `patch`: a second stage from the first stage's output, (layers, rows[, halo]) as `patch`,
    # or a tuple of such stages, each from the output of the one before
    patch2: tuple | None = None
    lean_windows: bool = False      # depthwise windows per channel tile (channel tiles outer): less RAM
    lean_kernels: frozenset[str] | None = None   # with lean_windows: only these kernels (None: all)
    perturb_first_conv: bool = False      # test-only: a wrong weight in the first convolution (see _perturb)
    patches: str = "auto"           # without `patch`: off | auto (when the plain plan does not fit) | min (RAM)
    ram_budget: int | None = None   # bytes of peak RAM (static + arena + stack) the plan must stay under
    stream_input: bool = True       # a patch stage reads the graph input row band by row band (ir/stream.py)
    # explicit `patch`: also lower the plain plan, for patch_plan's arena and peak RAM before/after
    patch_before: bool = False


# A plan `min` picks may take at most this many times the plain plan's predicted instructions
# (codegen/cost.py, the target's [cost]): issue 13's bound. Recomputed MACs alone were a poor guide
# (the wake-word network's 4-layer, 2-row plan: +6.0% MACs, 1.176x measured instructions).
MAX_INSTRUCTIONS = 1.15
# row-tile heights of fused dw+pw kernels the planning tries beside the family's default (less
# scratch and row buffers where RAM peaks, at some instructions: kept only where it peaks)
PLAN_DWPW_ROWS = (1,)
# plans `auto`/`min`/--ram-budget lower and plan at the most (about 2-3 s each for a small network)
MAX_PLANS_TRIED = 24


@dataclass
class Compiled:
    """The compiler's output before anything is written: sources, plan and per-call facts."""

    program: Program
    plan: MemoryPlan
    files: dict[str, bytes]
    calls: list[dict[str, Any]]
    kernel_infos: dict[str, KernelInfo]
    digest: str
    fusion: dict[str, Any]
    quant: dict[str, Any] | None = None
    tuning: dict[str, Any] | None = None
    patch_plan: patches.PatchPlan | None = None
    planning: dict[str, Any] | None = None
    patch_before: dict[str, Any] | None = None     # explicit patches: the plain plan's arena and peak RAM


class Progress:
    """Stage-by-stage progress on stderr (quiet=True silences it)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class _Lowered:
    program: Program
    plan: MemoryPlan
    kernels: dict[str, KernelSource]
    infos: dict[str, KernelInfo]      # by C symbol
    call_symbols: list[str]           # the C symbol of every call, in order
    patch_plan: patches.PatchPlan | None = None


def _schedule_kernels(mod: Any, prog: Program, target: Target,
                      options: BuildOptions) -> tuple[dict[str, Any], dict[str, KernelInfo], dict[str, str]]:
    """Schedule every distinct kernel for the target family (a tuning record's configuration
    where there is one) and store the weights it reads in the layout it reads them in."""
    scheduled: dict[str, Any] = {}
    infos: dict[str, KernelInfo] = {}
    symbol_of: dict[str, str] = {}
    taken: set[str] = set()
    wide = _wide_weights_fit(prog, target)
    unpacked: dict[str, tuple] = {}       # weights (array, tensor) as they were before packing
    for name in dict.fromkeys(c.kernel for c in prog.calls if c.builtin is None):
        calls = [c for c in prog.calls if c.kernel == name]
        config = options.tuning.config_for(mod[name], name) if options.tuning is not None else None
        if config is None and _is_lean(options, name):
            kind = analyze(mod[name], name).kind
            config = LEAN_WINDOWS.get(kind)
            if kind == Kind.DWPW and _rows_of(options, name) is not None:
                config = {**config, "rows": _rows_of(options, name)}
        kind = analyze(mod[name], name).kind
        if not wide and kind in (Kind.DWPW, Kind.CONV):     # KxK convolutions: rules.window_panel_order
            rows = {"rows": _rows_of(options, name)} if kind == Kind.DWPW and _rows_of(options, name) is not None else {}
            config = {**rows, **(config or {}), "wide_weights": False}
        func, info = schedules.schedule(mod[name], target.family, _rows_of(options, name), config, name)
        if info.packed and not all(c.inputs[p] in prog.weights for c in calls for p in info.packed):
            # a GEMM operand that is not a constant cannot be stored in panels at compile time
            config = {**(config or {}), "pack": False}
            func, info = schedules.schedule(mod[name], target.family, _rows_of(options, name), config, name)
        if info.rescale and not all(weights.rescale_fits(prog, c.inputs[pos], c.inputs[m0], c.inputs[r], target.family)
                                    for c in calls for pos, (m0, r) in info.rescale.items()):
            # constants the family's rescale kernel cannot take (e.g. a shift of 32): the kernel's own C
            func, info = schedules.schedule(mod[name], target.family, _rows_of(options, name), config, name,
                                            rescale_kernel=False)
        for c in calls:
            for pos, nn in sorted(info.packed.items()):
                w = c.inputs[pos]
                if prog.tensors[w].packed is not None and \
                        (prog.tensors[w].packed, prog.tensors[w].panel_order) != (nn, info.panel_order.get(pos, "")):
                    # 2-D patch tiles of different widths tile a layer differently: this kernel
                    # gets its own copy of the weight, in its own panels
                    w = _weight_copy(prog, w, unpacked, f"{name}_{pos}")
                    for other in calls:
                        other.inputs[pos] = w
                if prog.tensors[w].packed is None:
                    unpacked.setdefault(w, (prog.weights[w], prog.tensors[w]))
                weights.pack_weight(prog, w, nn, info.panel_order.get(pos, ""))
            for pos, (pos_m0, pos_r) in sorted(info.rescale.items()):
                if c.inputs[pos] in prog.weights and not prog.tensors[c.inputs[pos]].panel_order:
                    unpacked.setdefault(c.inputs[pos], (prog.weights[c.inputs[pos]], prog.tensors[c.inputs[pos]]))
                weights.encode_rescale(prog, c.inputs[pos], c.inputs[pos_m0], c.inputs[pos_r], target.family)
        sym = lower.kernel_symbol(info, prog.tensors[calls[0].outputs[0]], taken)
        symbol_of[name], scheduled[sym], infos[sym] = sym, func, info
    for c in prog.calls:      # a packed or re-encoded weight must be read only by kernels that expect it
        if c.builtin is not None:
            continue
        info = infos[symbol_of[c.kernel]]
        enc = info.rescale
        for pos, w in enumerate(c.inputs):
            if w in prog.weights and prog.tensors[w].packed is not None and pos not in info.packed:
                # (2-D patch tiles: one tile's GEMM reads the weight as it is, e.g. a tile as wide
                # as its output channels, where another tile's kernel packed it) its own plain copy
                c.inputs[pos] = _weight_copy(prog, w, unpacked, "plain")
            elif w in prog.weights and prog.tensors[w].panel_order and prog.tensors[w].dtype == "int64" \
                    and pos not in enc and w in unpacked and not unpacked[w][1].panel_order:
                # (2-D patch tiles: a tile's kernel without the family's rescale) its own plain copy
                c.inputs[pos] = _weight_copy(prog, w, unpacked, "plain")
            elif w in prog.weights and prog.tensors[w].panel_order and prog.tensors[w].dtype == "int64" \
                    and pos not in enc:
                raise EdgeCompileError(f"weight {w} is read by kernels with different rescale constant layouts "
                                       f"({c.kernel} reads it in the folded form)")
    return scheduled, infos, symbol_of


def _weight_copy(prog: Program, w: str, unpacked: dict[str, Any], key: str) -> str:
    """A copy of weight `w` as it was before packing, for the kernel `key` names (one per key)."""
    name = f"{w}_{key}"
    if name not in prog.weights:
        arr, tensor = unpacked[w]
        prog.weights[name] = arr
        prog.tensors[name] = replace(tensor, name=name)
    return name


# Flash kept for code, tables and the firmware beside the weights when a family's kernels would store
# some of them widened (rules.dwpw_panel_order: int8 weights as int16, at most twice their bytes).
WIDE_WEIGHTS_CODE_MARGIN = 128 << 10


def _wide_weights_fit(prog: Program, target: Target) -> bool:
    """Whether the target's flash holds every weight twice over plus WIDE_WEIGHTS_CODE_MARGIN: the
    most that widened weight panels can take. Otherwise the kernels keep int8 panels (a board of 1 MB
    holds the wake-word network's 252 KB widened; a network that fits only in int8 still builds)."""
    flash = target.region("flash")
    if flash is None:
        return True
    return 2 * sum(prog.tensors[w].nbytes for w in prog.weights) + WIDE_WEIGHTS_CODE_MARGIN <= flash.size


def _is_lean(options: BuildOptions, kernel: str) -> bool:
    return options.lean_windows and (options.lean_kernels is None or kernel in options.lean_kernels)


def _rows_of(options: BuildOptions, kernel: str) -> int | None:
    """The row-tile height `kernel` gets when it is a fused dw+pw kernel (None: the family's default)."""
    if options.dwpw_rows is None or (options.dwpw_rows_kernels is not None and kernel not in options.dwpw_rows_kernels):
        return None
    return options.dwpw_rows


def _perturb(mod: Any, prog: Program) -> None:
    """Test-only: change the weights of one channel of the first convolution, as a broken kernel would compute
    (`test` and `run --layers` must catch it and point at that call)."""
    from .ir.kernel import analyze

    for call in prog.calls:
        if analyze(mod[call.kernel]).kind.is_conv:
            w = next(n for n in call.inputs if n in prog.weights and prog.weights[n].ndim == 4)
            arr = prog.weights[w].copy()
            # the slice (last axis: an output channel of HWIO) holding the largest weight, negated:
            # a kernel that gets one channel wrong, visible through int8 rounding too
            last = np.unravel_index(int(np.argmax(np.abs(arr))), arr.shape)[-1]
            arr[..., last] *= -1
            prog.weights[w] = arr
            return
    raise EdgeCompileError("no convolution to perturb")


def _halo(patch: tuple) -> str:
    return patch[2] if len(patch) > 2 else "recomputed"


def _cols(patch: tuple) -> int:
    """Column tiles per band of a patch stage (layers, rows, halo, cols); 1: full-width bands."""
    return patch[3] if len(patch) > 3 else 1


def _tiling(plan: patches.PatchPlan) -> str:
    return (f"{plan.bands} bands of {plan.rows} rows" if plan.cols == 1 else
            f"{plan.tiles} tiles ({plan.bands} bands of {plan.rows} rows x {plan.cols} column tiles)")


# lowerings done by this process (memory planning reports how many it took)
_LOWERINGS = [0]


def _lower(graph: Any, target: Target, options: BuildOptions, progress: Callable[[str], None]) -> _Lowered:
    """High-level graph -> (patch stage) -> fused kernels -> scheduled kernels -> C functions ->
    memory plan."""
    _LOWERINGS[0] += 1
    patch_plan = None
    if options.patch is not None:
        graph, patch_plan = patches.patch_graph(graph, options.patch[0], options.patch[1],
                                                in_place_input=not options.external_io, halo=_halo(options.patch),
                                                cols=_cols(options.patch))
        progress(f"patches: the first {patch_plan.layers} layers in {_tiling(patch_plan)} "
                 f"of {patch_plan.stage_output} ({patch_plan.extra_macs:+,} MACs recomputed"
                 + (f", {patch_plan.bytes_copied:,} B of halo rows copied)" if patch_plan.halo != "recomputed" else ")"))
        later = [] if options.patch2 is None else \
            [options.patch2] if isinstance(options.patch2[0], int) else list(options.patch2)
        chain = [patch_plan]
        for st in later:
            graph, second = patches.patch_second(graph, chain[-1], st[0], st[1], halo=_halo(st), cols=_cols(st))
            chain.append(second)
            progress(f"patches: then a stage of {second.layers} layers in {_tiling(second)} "
                     f"of {second.stage_output} ({second.extra_macs:+,} MACs recomputed"
                     + (f", {second.bytes_copied:,} B of halo rows copied)" if second.halo != "recomputed" else ")"))
        for a, b in reversed(list(zip(chain, chain[1:]))):     # each stage's record holds the next one's
            a.second_stage = b.to_json()
    elif options.patch2 is not None:
        raise EdgeCompileError("a second patch stage needs a first one (--patches FIRST+SECOND)")
    mod = passes.lower_graph(graph, fuse_dwpw=options.fuse)
    prog = extract_program(mod)
    if patch_plan is not None and options.stream_input and not options.external_io:
        streamed = stream.stream_input(prog)
        if streamed is not None:
            patch_plan.input_streamed, patch_plan.input_rows = True, streamed.to_json()
            patch_plan.in_place_input = False           # nothing transposed in place any more
            progress(f"streamed input: {len(streamed.reads)} reads of at most {streamed.max_rows_held} rows "
                     f"({streamed.max_rows_held * streamed.row_bytes:,} B) instead of the whole input")
    progress(f"scheduling {len(set(c.kernel for c in prog.calls))} kernels for family '{target.family}' "
             f"({len(prog.calls)} calls)")
    if options.perturb_first_conv:
        _perturb(mod, prog)
    scheduled, infos, symbol_of = _schedule_kernels(mod, prog, target, options)
    progress("generating C for the kernels (TVM C codegen, unpacked ABI)")
    # fused kernels are declared for in-place calls up front; a standalone depthwise only where
    # the plan below overlaps it (its C otherwise stays as it was)
    kernels = lower.lower_kernels(scheduled, target.tvm,
                                  {s for s, i in infos.items() if i.streams_rows and i.kind == Kind.DWPW},
                                  {s: LEAN_STACK_LIMIT for k, s in symbol_of.items() if _is_lean(options, k)})
    rules = schedules.family(target.family).RULES
    kernels = {s: replace(k, c_code=lower.family_c(k.c_code, rules)) for s, k in kernels.items()}
    taken = set(kernels)
    same_builtin: dict[tuple, str] = {}       # one C function for the builtin calls of one shape
    for c in prog.calls:
        if c.builtin is not None and c.kernel not in symbol_of:
            first = (c.inputs or c.outputs)[0]
            key = (c.builtin, prog.tensors[first].shape, prog.tensors[first].dtype)
            if c.builtin == "input_rows":     # one function reads every band (the rows are arguments)
                key = (c.builtin,)
            if key in same_builtin:
                symbol_of[c.kernel] = same_builtin[key]
                continue
            sym = lower.unique_symbol(f"ec_{c.builtin}_{lower.shape_suffix(prog.tensors[prog.inputs[0] if c.builtin == 'input_rows' else first])}", taken)
            kernels[sym], infos[sym] = builtins.builtin_kernel(c, prog, sym)
            symbol_of[c.kernel] = same_builtin[key] = sym
    call_symbols = [symbol_of[c.kernel] for c in prog.calls]
    memory.add_scratch(prog, [kernels[s].scratch_bytes for s in call_symbols])
    overlaps = memory.streaming_overlaps(prog, [infos[s] for s in call_symbols]) if options.in_place else []
    overlaps += memory.patch_overlaps(prog)
    plan = memory.plan_program(prog, external_io=options.external_io, overlaps=overlaps)
    overlapped = {o.out for o in plan.in_place}
    for call, sym in zip(prog.calls, call_symbols):
        if prog.storage_root(call.outputs[0]) in overlapped and infos[sym].streams_rows:
            kernels[sym] = lower.in_place(kernels[sym])
    for sym in sorted(set(call_symbols)):       # after in_place: it rewrites the declarator it made
        if infos[sym].schedule.startswith("generic"):
            kernels[sym] = lower.with_gcc_options(kernels[sym], rules.GENERIC_GCC_OPTIONS)
    return _Lowered(prog, plan, kernels, infos, call_symbols, patch_plan)


def _graph(source: ModelSource, target: Target, options: BuildOptions,
           progress: Callable[[str], None]) -> tuple[Any, dict[str, Any] | None]:
    """The high-level graph the kernels are made from: float, or int8 after quantization."""
    progress(f"importing {source.name} into Relax")
    relax_mod = to_relax(source)
    progress("Relax passes: fold constants and BatchNorm, NHWC layout")
    graph, given = passes.prepare_graph(relax_mod)
    quant_mode = options.quant or target.default_quant
    if quant_mode not in ("fp32", "int8"):
        raise EdgeCompileError(f"--quant must be fp32 or int8, got {quant_mode!r}")
    _check_weights_fit(graph, target, quant_mode)
    if quant_mode == "fp32":
        return graph, None
    data = calibration_inputs(source.inputs[0].shape, options.calibration, options.calibration_samples)
    progress(f"int8: calibrating on {len(data)} {options.calibration} inputs ({options.calibration_method})")
    ranges = quantize.calibrate(graph, data, options.calibration_method)
    if given:
        progress(f"int8: the model is quantized already (QDQ): {len(given)} activation scales used as given")
    qgraph, in_qp, out_qp = quantize.quantize_graph(graph, ranges, given)
    return qgraph, {
        "dtype": "int8",
        "input": {"scale": in_qp.scale, "zero_point": in_qp.zero_point},
        "output": {"scale": out_qp.scale, "zero_point": out_qp.zero_point},
        "calibration": {"data": options.calibration, "samples": len(data), "method": options.calibration_method,
                        "given_by_model": len(given)},
        "scheme": "int8 per-channel symmetric weights, per-tensor asymmetric activations, int32 bias, "
                  "fixed-point requantization",
    }


def model_kernels(source: ModelSource, target: Target, options: BuildOptions = BuildOptions(),
                  progress: Callable[[str], None] = Progress()) -> list[tuple[str, Any, int]]:
    """The distinct fused kernels a build of `source` for `target` schedules, unscheduled:
    [(name, PrimFunc, calls)] in call order (what `edgecompile tune` tunes)."""
    graph, _ = _graph(source, target, options, progress)
    progress("legalize and fuse")
    mod = passes.lower_graph(graph, fuse_dwpw=options.fuse)
    prog = extract_program(mod)
    names = list(dict.fromkeys(c.kernel for c in prog.calls))
    return [(n, mod[n], sum(c.kernel == n for c in prog.calls)) for n in names]


def _call_records(low: _Lowered) -> tuple[list[dict[str, Any]], list[str]]:
    """report.json's record of every kernel call, and the one-line comment model.c gives it."""
    prog, plan = low.program, low.plan
    in_place_outputs = {o.out for o in plan.in_place}
    docs, calls = [], []
    for i, (call, sym) in enumerate(zip(prog.calls, low.call_symbols)):
        info = low.infos[sym]
        out = prog.tensors[call.outputs[0]]
        docs.append(f"{info.describe()} -> {list(out.shape)}, {info.macs} MACs")
        root = prog.storage_root(call.outputs[0])
        calls.append({
            "index": i,
            "name": sym,
            "kernel": call.kernel,
            "kind": info.kind,
            "path": info.path,
            "in_place": root in in_place_outputs,
            "schedule": info.schedule,
            "macs": info.macs,
            "output": call.outputs[0],
            "output_shape": list(out.shape),
            "arena_offset": plan.offsets.get(root),
            "arena_size": out.nbytes,
            "scratch": [{"offset": plan.offsets[s], "size": prog.tensors[s].nbytes} for s in call.scratch],
        })
    return calls, docs


@dataclass
class _Plan:
    """One way to run the model that the memory planning tried."""

    patch: tuple | None               # (layers, rows[, "cached"])
    lean: bool
    extra_macs: int
    arena_bound: int = 0              # the arena is at least this large (patches.arena_lower_bound)
    low: _Lowered | None = None
    estimate: MemoryEstimate | None = None
    lean_kernels: int | None = None   # lean windows in this many kernels only (None: all, when lean)
    bytes_copied: int = 0             # cached halo rows: bytes the copies move
    dwpw_rows: int | None = None      # row-tile height of fused dw+pw kernels (None: the family's default)
    rows_kernels: int | None = None   # that height in this many kernels only (None: all, when dwpw_rows)
    cost: int = 0                     # before lowering: the instructions it adds to the plain plan (estimated)
    predicted: int | None = None      # lowered: predicted instructions (codegen/cost.py)
    floor: int | None = None          # the same without the lean-window and one-row terms
    note: str | None = None           # why the search chose it or left it out
    trimmed_from: int | None = None   # trimmed (_trim): its peak RAM before
    later: tuple = ()                 # later patch stages, each from the output of the one before (_extend_stages)

    def describe(self) -> str:
        what = (f"patches of {self.patch[0]} layers x {self.patch[1]} rows, halo {_halo(self.patch)}"
                if self.patch else "no patches")
        for st in self.later:
            what += f", then {st[0]} layers x {st[1]} rows, halo {_halo(st)}"
        if self.lean:
            what += ", lean windows" + (f" in {self.lean_kernels} kernels" if self.lean_kernels is not None else "")
        if self.dwpw_rows is not None:
            what += (f", {self.dwpw_rows}-row dw+pw tiles"
                     + (f" in {self.rows_kernels} kernels" if self.rows_kernels is not None else ""))
        return what

    def options(self, options: BuildOptions) -> BuildOptions:
        # later stages: the plan's own (the search's), or an explicit one with the explicit first stage it follows
        later = self.later if self.later else options.patch2 if self.patch == options.patch else None
        return replace(options, patch=self.patch, patch2=later,
                       lean_windows=self.lean, lean_kernels=None,
                       dwpw_rows=self.dwpw_rows if self.dwpw_rows is not None else options.dwpw_rows,
                       dwpw_rows_kernels=None)

    def record(self, plain: int | None = None) -> dict[str, Any]:
        est = self.estimate
        return {"patch": list(self.patch) if self.patch else None,
                "later_stages": [[st[0], st[1], _halo(st)] for st in self.later], "lean_windows": self.lean,
                "lean_kernels": self.lean_kernels if self.lean else 0,
                "dwpw_rows": self.dwpw_rows, "dwpw_rows_kernels": self.rows_kernels if self.dwpw_rows else 0,
                "halo": _halo(self.patch) if self.patch else None, "bytes_copied": self.bytes_copied,
                "extra_macs": self.extra_macs, "cost_estimate": self.cost,
                "predicted_instructions": self.predicted, "predicted_floor": self.floor,
                "predicted_ratio": round(self.predicted / plain, 4) if self.predicted and plain else None,
                "arena_bytes": self.low.plan.arena_bytes if self.low else None,
                "peak_ram_estimate": est.peak_ram_bytes if est else None,
                "static_ram_estimate": est.static_ram_bytes if est else None,
                "peak_ram_untrimmed": self.trimmed_from, "note": self.note}


def _weights_bytes(low: _Lowered) -> int:
    return sum(low.program.tensors[w].nbytes for w in low.program.weights)


def _estimate(target: Target, low: _Lowered) -> MemoryEstimate | None:
    stack = max((low.kernels[s].stack_bytes for s in set(low.call_symbols)), default=0)
    return platform_for(target).estimate_memory(target, _weights_bytes(low), low.plan.arena_bytes,
                                                len(low.program.calls), stack)


def _predict(plan: _Plan, target: Target, options: BuildOptions) -> None:
    """The plan's predicted instructions (lowered with `options`), and its floor: the same without
    lean windows and with the family's own dw+pw row tiles, what the plan costs at least once _trim
    keeps them only where RAM peaks."""
    low, coef = plan.low, target.cost.coefficients()
    default_rows = schedules.family(target.family).RULES.dwpw_rows

    def natural_row1(kernel: str, info: KernelInfo) -> bool | None:
        if _rows_of(options, kernel) is None or info.kind != Kind.DWPW or not info.rows:
            return None
        return largest_divisor(info.out_rows, default_rows) == 1

    plan.predicted = cost_model.predict(
        cost_model.program_features(low.program, low.infos, low.call_symbols, lambda k: _is_lean(options, k)), coef)
    plan.floor = cost_model.predict(
        cost_model.program_features(low.program, low.infos, low.call_symbols, lambda k: False, natural_row1), coef)


def _plans(graph: Any, coef: dict[str, float], plain: int, plain_macs: int, allowance: float | None,
           arena_limit: int | None, vary_rows: bool = True, streamed: bool = False) -> list[_Plan]:
    """The plans memory planning may try: the plain one, with lean windows, then patch stages
    (after each number of layers where the stage output is smaller than every shallower cut's and
    than the stage input) x rows per band x halo recomputed or cached, with lean windows; each lean
    plan also with one-row dw+pw tiles (`vary_rows`). Only those whose estimated added instructions
    (codegen/cost.extra_estimate) are within `allowance` x `plain` (the plain plan's predicted
    instructions, for `plain_macs` MACs) and whose arena lower bound is within `arena_limit`.
    Cheapest first."""
    rows_options = (None,) + (PLAN_DWPW_ROWS if vary_rows else ())
    out = [_Plan(None, False, 0)] + [_Plan(None, True, 0, dwpw_rows=r) for r in rows_options]
    stage = patches.find_stage(graph)
    if stage is not None:
        smallest = patches.tensor_bytes(stage.entry)
        for layers, cut in sorted(patches.best_cuts(stage).items()):
            if patches.cut_bytes(stage, cut) >= smallest:
                continue
            smallest = patches.cut_bytes(stage, cut)
            for rows in (1, 2, 3, 4, 6, 8):
                if rows >= cut.shape[1]:
                    continue
                extra = patches.patch_macs(stage, cut, rows) - cut.macs
                bound = patches.arena_lower_bound(stage, cut, rows, streamed=streamed)
                plans = []
                if arena_limit is None or bound <= arena_limit:
                    plans.append(_Plan((layers, rows), True, extra, bound))
                if extra > 0:           # a halo to recompute: or to keep from the band before
                    copied = patches.cached_copies(stage, cut, rows)[1]
                    kept = patches.patch_macs(stage, cut, rows, "cached") - cut.macs   # 0 where every halo is kept
                    cached_bound = patches.arena_lower_bound(stage, cut, rows, "cached", streamed)
                    if arena_limit is None or cached_bound <= arena_limit:
                        plans.append(_Plan((layers, rows, "cached"), True, kept, cached_bound, bytes_copied=copied))
                    # narrow halos: where widening 1x1 convolutions' rows would be cached, recompute them
                    narrow_copied = patches.cached_copies(stage, cut, rows, narrow=True)[1]
                    if narrow_copied < copied:
                        narrow_bound = patches.arena_lower_bound(stage, cut, rows, "narrow", streamed)
                        if arena_limit is None or narrow_bound <= arena_limit:
                            plans.append(_Plan((layers, rows, "narrow"), True,
                                               patches.patch_macs(stage, cut, rows, "narrow") - cut.macs,
                                               narrow_bound, bytes_copied=narrow_copied))
                for p in plans:
                    p.cost = cost_model.extra_estimate(coef, plain / max(plain_macs, 1), p.extra_macs, p.bytes_copied)
                    if allowance is None or p.cost <= allowance * plain:
                        out += [p] + [replace(p, dwpw_rows=r) for r in rows_options[1:]]
    # of plans of one stage that cost the same MACs (no halo to recompute), the smallest
    best: dict[tuple, _Plan] = {}
    for p in out:
        key = (p.patch[0] if p.patch else None, p.lean, p.dwpw_rows, p.extra_macs,
               p.patch[1:] if p.bytes_copied else None)
        if key not in best or p.arena_bound < best[key].arena_bound:
            best[key] = p
    return sorted(best.values(), key=lambda p: (p.cost, p.lean, p.dwpw_rows or 0, p.patch or (0, 0)))


def _fits(plan: _Plan, budget: int | None) -> bool:
    """Within the target's RAM regions and the budget (a board without a memory budget: the arena
    against the budget)."""
    if plan.estimate is not None and plan.estimate.over("ram"):
        return False
    return budget is None or _peak(plan) <= budget


def _plan_memory(graph: Any, target: Target, options: BuildOptions,
                 progress: Callable[[str], None]) -> tuple[_Lowered, dict[str, Any] | None]:
    # The schedule cache (_cached) is not enabled: with it the wake-word network's model.c under
    # --ram-budget 37600 differed from the same build without it (same plan); not yet understood.
    return _plan_memory_run(graph, target, options, progress)


def _plan_memory_run(graph: Any, target: Target, options: BuildOptions,
                     progress: Callable[[str], None]) -> tuple[_Lowered, dict[str, Any] | None]:
    """Lower the graph with the patch plan and schedules that fit: the options' own (`patch`,
    `patches=off`); else the plain plan when it fits the target's RAM and --ram-budget (`auto`);
    else the fitting plan of least predicted instructions (`auto`), or the one of least peak RAM
    whose predicted instructions are within MAX_INSTRUCTIONS x the plain plan's (`min`); lean
    windows and one-row dw+pw tiles then kept only where RAM peaks (_trim). A model that fits in no
    plan tried is refused before its C is compiled, naming the numbers of the smallest plan."""
    if options.patches not in ("off", "auto", "min"):
        raise EdgeCompileError(f"--patches must be off, auto, min or LAYERS:ROWS, got {options.patches!r}")
    lowerings, cpu = _LOWERINGS[0], time.process_time()
    first = _Plan(options.patch, options.lean_windows, 0)
    first.low = _lower(graph, target, options, progress)
    first.estimate = _estimate(target, first.low)
    if first.low.patch_plan is not None:
        first.extra_macs = first.low.patch_plan.extra_macs
        first.bytes_copied = first.low.patch_plan.bytes_copied
    budget = options.ram_budget
    if options.patch is not None or options.patches == "off" or (options.patches == "auto" and _fits(first, budget)):
        if not _fits(first, budget):
            raise _refusal(target, first, budget)
        return first.low, None
    _predict(first, target, options)
    plain = first.predicted
    plain_macs = sum(i.macs for i in (first.low.infos[s] for s in first.low.call_symbols))
    coef = target.cost.coefficients()
    # the bound on predictions, less the model's calibrated error: what keeps measured instructions within it
    bound = MAX_INSTRUCTIONS * plain / (1 + target.cost.error)
    allowance = bound / plain - 1 if options.patches == "min" else None
    est = first.estimate
    arena_limit = None
    if options.patches == "auto" and est is not None:     # what the arena may take of the budgets
        room = [est.budgets[r] - est.needs[r] + est.arena_bytes for r in est.needs if est.kinds[r] == "ram"]
        if budget is not None:
            room.append(budget - est.peak_ram_bytes + est.arena_bytes)
        arena_limit = min(room) if room else None
    streamed = options.stream_input and not options.external_io
    vary_rows = options.dwpw_rows is None        # a --dwpw-rows given holds for every plan
    candidates = _plans(graph, coef, plain, plain_macs, allowance, arena_limit, vary_rows, streamed)
    if options.patches == "min":       # the most promising first, should MAX_PLANS_TRIED cut the list:
        # fewer rows per band first (less RAM per band; deep stages in 1- and 2-row bands before any
        # stage in 8-row bands), then the smallest arena bound (cached halo rows: a larger bound)
        candidates.sort(key=lambda p: (p.patch[1] if p.patch else 0, p.arena_bound, p.cost, p.dwpw_rows or 0))
    tried = [first]

    def scan(plans: list[_Plan], limit: int, skip: Callable[[_Plan], bool] = lambda p: False) -> None:
        for plan in plans:
            if len(tried) >= limit:
                break
            if ((plan.patch, plan.lean, plan.dwpw_rows) == (first.patch, first.lean, first.dwpw_rows)
                    or plan.low is not None or skip(plan)):
                continue
            opts = plan.options(options)
            plan.low = _lower(graph, target, opts, lambda m: None)
            plan.estimate = _estimate(target, plan.low)
            _predict(plan, target, opts)
            tried.append(plan)
            est = plan.estimate
            progress(f"memory plan with {plan.describe()}: arena {plan.low.plan.arena_bytes:,} B"
                     + (f", peak RAM about {est.peak_ram_bytes:,} B" if est else "")
                     + f", {plan.extra_macs:+,} MACs" + (f", {plan.bytes_copied:,} B copied" if plan.bytes_copied else "")
                     + f", predicted {plan.floor / plain:.3f}x"
                     + (f" ({plan.predicted / plain:.3f}x with the overheads everywhere)"
                        if plan.predicted != plan.floor else "") + " the plain plan's instructions")

    if options.patches == "min":
        # the family's row tiles first; then one-row dw+pw tiles for the plans of least peak RAM
        # that can be within the bound (a row-tile height changes the row buffers, not the bands)
        scan([p for p in candidates if p.dwpw_rows is None], MAX_PLANS_TRIED)
        best = sorted((p for p in tried if p.lean and p.dwpw_rows is None and p.floor <= bound),
                      key=lambda p: (_peak(p), p.floor))[:MAX_ROW_TWINS]
        twins = _twins(best, candidates)
        scan(twins, len(tried) + len(twins))
        _extend_stages(graph, target, options, tried, scan, plain, plain / max(plain_macs, 1), coef, bound, None,
                       progress)
        fitting = [p for p in tried if _fits(p, budget)]
        if not fitting:
            _refuse(graph, target, tried, budget, coef, plain, plain_macs, streamed)
        chosen = _choose_min(graph, target, options, fitting, bound, plain, progress)
    else:
        chosen = _search_fit(graph, target, options, candidates, tried, scan, budget, plain, plain_macs,
                             coef, streamed, progress)
    progress(f"memory planning ({options.patches}): {chosen.describe()}, predicted {chosen.predicted / plain:.3f}x "
             "the plain plan's instructions")
    return chosen.low, {"mode": options.patches, "ram_budget": budget, "max_instructions": MAX_INSTRUCTIONS,
                        "model_error": target.cost.error,
                        "predicted_plain_instructions": plain, "lowerings": _LOWERINGS[0] - lowerings,
                        "cpu_seconds": round(time.process_time() - cpu, 1),
                        "chosen": chosen.record(plain), "tried": [p.record(plain) for p in tried]}


def _twins(plans: list[_Plan], candidates: list[_Plan]) -> list[_Plan]:
    """The candidates that are `plans` with other dw+pw row tiles."""
    return [c for p in plans for c in candidates
            if c.dwpw_rows is not None and (c.patch, c.lean, c.extra_macs) == (p.patch, p.lean, p.extra_macs)]


# later patch stages: at most this many stages in all, band heights tried, later-stage plans lowered per step
MAX_STAGES = 4
LATER_ROWS = (1, 2)
MAX_STAGE_CANDIDATES = 8
# seeds of later stages: the one-stage plans whose arena after the stage is within this fraction of the least
SEED_TAIL_SLACK = 0.05
# plans whose stages reach into the arena within this fraction of the least are judged by their predicted instructions
STAGE_TOP_SLACK = 0.02
# with a budget: seeds of later stages tried (the cheapest whose stage fits, then the least reach)
MAX_SEEDS = 2


def _stage_ranges(low: _Lowered) -> list[tuple[int, int]]:
    """[first, end) calls of each patch stage of a lowered plan, in order: a stage ends with the
    last band's write into its output (the assembled tensor of the stage's output shape that
    exactly `bands` calls write, the first one written after the stage before)."""
    prog, chain = low.program, []
    pp = low.patch_plan.to_json() if low.patch_plan is not None else None
    while pp:
        chain.append(pp)
        pp = pp.get("second_stage")
    writers: dict[str, list[int]] = {}
    for i, call in enumerate(prog.calls):
        for t in call.outputs:
            writers.setdefault(prog.storage_root(t), []).append(i)
    wholes = [w for w in dict.fromkeys(prog.storage_root(t) for t in prog.assembled) if w in writers]
    ranges, start = [], 0
    for st in chain:
        ends = [writers[w] for w in wholes if len(writers[w]) == st["bands"] and writers[w][0] >= start
                and list(prog.tensors[w].shape) == list(st["stage_output_shape"])]
        if not ends:
            break
        end = min(ends, key=lambda w: w[0])[-1] + 1
        ranges.append((start, end))
        start = end
    return ranges


def _segment_tops(low: _Lowered) -> list[int]:
    """How far into the arena the buffers live during each patch stage reach, and (last) during
    the calls after the last stage: where a plan's arena peaks, stage by stage."""
    plan, n = low.plan, len(low.program.calls)
    ranges = _stage_ranges(low)
    segments = ranges + [(ranges[-1][1] if ranges else 0, n + 1)]
    segments[0] = (-1, segments[0][1])           # the graph input
    return [max((plan.offsets[b] + plan.sizes[b] for b, (s, e) in plan.lifetimes.items()
                 if b in plan.offsets and s < hi and e >= lo), default=0) for lo, hi in segments]


def _tail_peaks(plan: _Plan) -> bool:
    """Whether the plan's arena peaks after its last patch stage (where a later stage can help)."""
    tops = _segment_tops(plan.low)
    return len(tops) > 1 and tops[-1] > max(tops[:-1])


def _least_reach(plans: list[_Plan]) -> _Plan:
    """Of `plans`, those whose patch stages reach least far into the arena (within STAGE_TOP_SLACK:
    a few hundred bytes are not worth instructions), the one of fewest predicted instructions
    (its floor; then one-row tiles tried, then the least reach)."""
    reach = {id(p): _reach(p) for p in plans}
    least = min(reach.values())
    near = [p for p in plans if reach[id(p)] <= least * (1 + STAGE_TOP_SLACK)]
    return min(near, key=lambda p: (p.floor, p.dwpw_rows is None, reach[id(p)]))


def _reach(plan: _Plan) -> int:
    """How far into the arena the buffers live during the plan's patch stages reach (what later
    stages cannot change)."""
    return max(_segment_tops(plan.low)[:-1], default=0)


def _beside_arena(plan: _Plan) -> int:
    """The plan's peak RAM beside its arena: static data and stack."""
    return _peak(plan) - plan.low.plan.arena_bytes


def _reach_fits(plan: _Plan, budget: int) -> bool:
    """Whether the plan's patch stages, with what lives beside the arena, stay within `budget`:
    later stages can then bring the rest of it under the budget."""
    return _reach(plan) + _beside_arena(plan) <= budget


def _cheapest_in_reach(plans: list[_Plan], budget: int | None) -> _Plan:
    """The plan to extend with a later stage. With a budget: of those whose stages fit it
    (_reach_fits), the one of fewest predicted instructions (its floor: a narrow or recomputed halo
    that reaches a few kB less costs millions of instructions more; later stages only add
    to it); when none fits, or without a budget (`min`: the least RAM), the least reach
    (_least_reach)."""
    if budget is not None:
        within = [p for p in plans if _reach_fits(p, budget)]
        if within:
            return min(within, key=lambda p: (p.floor, p.dwpw_rows is None, _reach(p)))
    return _least_reach(plans)


def _extend_stages(graph: Any, target: Target, options: BuildOptions, tried: list[_Plan],
                   scan: Callable[..., None], plain: int, per_mac: float, coef: dict[str, float],
                   limit: float | None, budget: int | None, progress: Callable[[str], None],
                   aim: float | None = None) -> None:
    """Later patch stages, stage after stage, seeded by where the arena peaks: from a plan tried
    (`limit`: of predicted floor within it) whose arena peaks after its patch stage -- of those with
    the least arena after the stage (within SEED_TAIL_SLACK), the one _cheapest_in_reach picks
    (`min`: whose stage reaches least far into the arena; a budget: the cheapest whose stage fits
    it) -- a later stage starts at that stage's output and bands the next resolutions: each cut of
    the rest where the tensor gets smaller than every shallower cut, in bands of LATER_ROWS rows,
    halo rows cached, narrow or recomputed (within `limit` by codegen/cost.extra_estimate; with a
    budget, only stages whose arena lower bound fits it), at most MAX_STAGE_CANDIDATES lowered per
    step (fewest rows, then cheapest, first). Of those within `limit`, the one _cheapest_in_reach
    picks is extended again while the arena still peaks after its last stage and less than before,
    up to MAX_STAGES stages; with a `budget`, a later stage (which only adds instructions) is tried
    only on a plan predicted to cost less than the cheapest plan found to fit (floors), and not
    on a step where a plan fits already. With a budget, when no plan found fits within `aim`
    (predicted instructions), the search starts again from the other seed (the least reach), up
    to MAX_SEEDS seeds. Every plan lowered goes into `tried` (scan)."""
    seeds = [p for p in tried if p.patch is not None and p.lean and not p.later
             and (limit is None or p.floor <= limit) and _tail_peaks(p)]
    if not seeds:
        return
    # the deepest stages (least arena after them, within SEED_TAIL_SLACK: the same cut with other
    # halos or bands); of those, the one to extend (a shallow stage reaches less far but leaves
    # more than later stages can band)
    least_tail = min(_segment_tops(p.low)[-1] for p in seeds)
    seeds = [p for p in seeds if _segment_tops(p.low)[-1] <= least_tail * (1 + SEED_TAIL_SLACK)]
    cheapest = min(seeds, key=lambda p: p.floor)
    if (budget is not None and not _reach_fits(cheapest, budget) and cheapest.dwpw_rows is None
            and options.dwpw_rows is None):
        # later stages run with one-row dw+pw tiles, which shrink the seed's own stage too: judge
        # the cheapest seed by its one-row twin (one lowering) before a dearer halo that reaches less
        twin = next((p for p in tried if (p.patch, p.lean, p.dwpw_rows, p.later)
                     == (cheapest.patch, True, PLAN_DWPW_ROWS[0], ())), None)
        if twin is None:
            twin = _Plan(cheapest.patch, True, cheapest.extra_macs, cheapest.arena_bound,
                         bytes_copied=cheapest.bytes_copied, dwpw_rows=PLAN_DWPW_ROWS[0], cost=cheapest.cost)
            scan([twin], len(tried) + 1)
        if twin.low is not None and _tail_peaks(twin):
            seeds.append(twin)
    order = [_cheapest_in_reach(seeds, budget)]
    if _least_reach(seeds) is not order[0]:
        order.append(_least_reach(seeds))
    stages: dict[tuple, Any] = {}            # the stage after a chain of stages, per planning run

    def fitted() -> float:
        """With a budget: the fewest predicted instructions (floor) of a plan tried that fits it."""
        return min((p.floor for p in tried if budget is not None and _fits(p, budget)), default=math.inf)

    for seed in order[:MAX_SEEDS if budget is not None else 1]:
        if budget is not None and fitted() <= (aim if aim is not None else math.inf):
            break                            # a plan found fits within the aim: no other seed
        seed.note = (f"seed of later stages: its arena peaks after its stage ({_segment_tops(seed.low)[-1]:,} B), "
                     f"its stage reaches {_reach(seed):,} B, predicted floor {seed.floor / plain:.3f}x")
        progress(f"later patch stages after {seed.describe()} (its arena peaks after the stage)")
        _extend_seed(graph, seed, stages, options, tried, scan, plain, per_mac, coef, limit, budget, fitted,
                     progress)


def _extend_seed(graph: Any, seed: _Plan, stages: dict[tuple, Any], options: BuildOptions, tried: list[_Plan],
                 scan: Callable[..., None], plain: int, per_mac: float, coef: dict[str, float],
                 limit: float | None, budget: int | None, fitted: Callable[[], float],
                 progress: Callable[[str], None]) -> None:
    """_extend_stages from one seed."""
    rows = seed.dwpw_rows if seed.dwpw_rows is not None or options.dwpw_rows is not None else PLAN_DWPW_ROWS[0]
    plan = seed
    while 1 + len(plan.later) < MAX_STAGES:
        chain = (plan.patch, *plan.later)
        if chain not in stages:
            g, first = patches.patch_graph(graph, plan.patch[0], plan.patch[1], halo=_halo(plan.patch))
            for st in plan.later:
                g, first = patches.patch_second(g, first, st[0], st[1], halo=_halo(st))
            entry = patches.stage_output_var(g)
            stages[chain] = patches.find_stage(g, after=entry) if entry is not None else None
        stage = stages[chain]
        if stage is None:
            break
        candidates = []
        smallest = patches.tensor_bytes(stage.entry)
        for layers, cut in sorted(patches.best_cuts(stage).items()):
            if patches.cut_bytes(stage, cut) >= smallest:
                continue
            smallest = patches.cut_bytes(stage, cut)
            for n in LATER_ROWS:
                if n >= cut.shape[1]:
                    continue
                copied = {h: patches.cached_copies(stage, cut, n, h == "narrow")[1] for h in patches.CACHED_MODES}
                for halo in ("cached", "narrow", "recomputed"):
                    if halo == "narrow" and copied["narrow"] >= copied["cached"]:
                        continue             # nothing widening keeps rows: the same as cached
                    bound = patches.arena_lower_bound(stage, cut, n, halo)
                    if budget is not None and bound + _beside_arena(plan) > budget:
                        continue             # this stage alone cannot fit the budget
                    extra = patches.patch_macs(stage, cut, n, halo) - cut.macs
                    moved = copied.get(halo, 0)
                    added = cost_model.extra_estimate(coef, per_mac, extra, moved)
                    if plain + plan.cost + added > min(limit if limit is not None else math.inf, fitted()):
                        continue         # over the bound, or costs more than a plan that fits already
                    if budget is not None and plan.floor + added >= fitted():
                        continue         # the plan's own floor and what the stage adds at least: no cheaper
                    candidates.append(_Plan(plan.patch, True, plan.extra_macs + extra, max(plan.arena_bound, bound),
                                            bytes_copied=plan.bytes_copied + moved, dwpw_rows=rows,
                                            cost=plan.cost + added, later=(*plan.later, (layers, n, halo))))
        if budget is None:
            candidates = sorted(candidates, key=lambda p: (p.later[-1][1], p.cost))[:MAX_STAGE_CANDIDATES]
            scan(candidates, len(tried) + len(candidates))
        else:
            # cheapest first, one at a time: the estimate errs low, so a candidate whose floor plus
            # estimate is no less than the floor of a plan found to fit, or of one this step would
            # extend (its stages within the budget, its arena peaking after them, lower than
            # before), cannot be cheaper: not lowered
            candidates = sorted(candidates, key=lambda p: p.cost)[:MAX_STAGE_CANDIDATES]
            pick = math.inf
            for p in candidates:
                if plan.floor + p.cost - plan.cost >= min(fitted(), pick):
                    p.note = (f"not lowered: predicted at least {(plan.floor + p.cost - plan.cost) / plain:.3f}x, "
                              f"no less than a plan that fits or is extended")
                    continue
                scan([p], len(tried) + 1)
                if (p.low is not None and _reach_fits(p, budget) and _tail_peaks(p)
                        and _segment_tops(p.low)[-1] < _segment_tops(plan.low)[-1]):
                    pick = min(pick, p.floor)
        if not candidates:
            break
        lowered = [p for p in candidates if p.low is not None and (limit is None or p.floor <= limit)]
        if not lowered:
            break
        fit = [p for p in lowered if budget is not None and _fits(p, budget)]
        # with a budget, of the plans that do not fit, those a later stage can help (the arena
        # peaking after their stages, lower than before) first
        rest = [p for p in lowered if p not in fit]
        helped = [p for p in rest if budget is not None and _tail_peaks(p)
                  and _segment_tops(p.low)[-1] < _segment_tops(plan.low)[-1]]
        best = _cheapest_in_reach(helped or rest or lowered, budget)
        for p in candidates:
            if p.low is not None and p is not best:
                p.note = (f"later stage: its stages reach {_reach(p):,} B into the arena, "
                          f"predicted floor {p.floor / plain:.3f}x (the step's best {_reach(best):,} B, "
                          f"{best.floor / plain:.3f}x)")
        if (fit or not _tail_peaks(best) or _segment_tops(best.low)[-1] >= _segment_tops(plan.low)[-1]
                or best.floor >= fitted()):       # a later stage only adds instructions
            best.note = (f"later stage: its stages reach {_reach(best):,} B into the arena, predicted floor "
                         f"{best.floor / plain:.3f}x; not extended: "
                         + ("a plan of this step fits the budget" if fit else
                            "its arena no longer peaks after its last stage, or no less, or it costs more than a plan that fits"))
            break
        best.note = (f"later stage: its stages reach {_reach(best):,} B into the arena, predicted floor "
                     f"{best.floor / plain:.3f}x, and its arena peaks after its last stage "
                     f"({_segment_tops(best.low)[-1]:,} B): extended")
        plan = best
        progress(f"later patch stages after {plan.describe()} (its arena peaks after its last stage)")


def _refuse(graph: Any, target: Target, tried: list[_Plan], budget: int | None, coef: dict[str, float],
            plain: int, plain_macs: int, streamed: bool) -> None:
    bounds = [p.arena_bound for p in _plans(graph, coef, plain, plain_macs, None, None, False, streamed) if p.patch]
    raise _refusal(target, min(tried, key=_peak), budget, min(bounds, default=None))


def _choose_min(graph: Any, target: Target, options: BuildOptions, fitting: list[_Plan], bound: float,
                plain: int, progress: Callable[[str], None]) -> _Plan:
    """`min`: the plan of least peak RAM within the bound: a plan's floor first (its overheads
    trimmed to where RAM peaks can cost no less), then its prediction once trimmed; when none is
    within the bound, the cheapest plan that fits."""
    order = sorted((p for p in fitting if p.floor <= bound), key=lambda p: (_peak(p), p.floor))
    trimmed: set[int] = set()
    for plan in order[:MAX_TRIMMED]:
        if plan.lean or plan.dwpw_rows is not None:
            _trim(graph, target, options, plan, progress)
            trimmed.add(id(plan))
        if plan.predicted <= bound:
            plan.note = f"the least peak RAM within the bound {bound / plain:.3f}x"
            return plan
        plan.note = f"over the bound {bound / plain:.3f}x once trimmed"
        progress(f"{plan.describe()}: predicted {plan.predicted / plain:.3f}x the plain plan's instructions, "
                 f"over {MAX_INSTRUCTIONS}x / (1 + {target.cost.error}) = {bound / plain:.3f}x")
    chosen = min(fitting, key=lambda p: (p.predicted if id(p) in trimmed else p.floor, _peak(p)))
    if (chosen.lean or chosen.dwpw_rows is not None) and id(chosen) not in trimmed:
        _trim(graph, target, options, chosen, progress)
    chosen.note = "nothing fits within the bound: the cheapest plan that fits"
    return chosen


def _search_fit(graph: Any, target: Target, options: BuildOptions, candidates: list[_Plan], tried: list[_Plan],
                scan: Callable[..., None], budget: int | None, plain: int, plain_macs: int, coef: dict[str, float],
                streamed: bool, progress: Callable[[str], None]) -> _Plan:
    """`auto` when the plain plan does not fit (the target's RAM or --ram-budget): among the plans
    that fit, the one of fewest predicted instructions, searched over the dimensions `min` explores.

    1. The candidates with the family's row tiles (patch stages x rows x halo cached or recomputed,
       lean windows everywhere), fewest rows per band and then cheapest estimate first, skipping those whose estimate
       (codegen/cost.extra_estimate, which errs low) is over the floor of a plan found to fit.
    2. One-row dw+pw tiles for the MAX_ROW_TWINS plans of least peak RAM that do not fit (by at most
       ROWS_SLACK) and could be cheaper than the best fitting one (one-row tiles shrink the row buffers where RAM peaks).
    3. By floor (the least a plan costs once its lean windows and one-row tiles are kept only where
       RAM peaks): each plan that fits, or is within TRIM_SLACK of the budget (trimming can lower
       the peak: lean windows everywhere put small windows in the arena), is trimmed (_trim, a few
       lowerings, at most MAX_TRIMMED plans) down to the budget (not to its untrimmed peak: RAM
       under the budget is worth nothing, instructions are) and judged on its trimmed peak and
       prediction; stop once the next floor is no less than the best prediction found.
    Stages whose bands of fewer rows are over by more than ROWS_SLACK are not lowered with more
    rows; a one-stage plan is not lowered when a cheaper one of the same stage, lowered, shows that
    the arena after that stage is over the budget (_dominated). When no one-stage plan fits, later
    stages are searched (_extend_stages) from the cheapest seed whose stage fits the budget. Every plan tried gets a note saying why it lost or won (report.json `memory_planning.tried`)."""
    best_floor = [math.inf]
    done: list[_Plan] = []

    def pruned(plan: _Plan) -> bool:
        if plan.patch is not None and plain + plan.cost >= best_floor[0]:
            plan.note = "not lowered: its estimated cost is over the floor of a plan that fits"
            return True
        # more rows per band hold more rows at once: over the budget by more than ROWS_SLACK with
        # fewer rows (the same layers and halo), over it with these
        for p in done:
            if budget is not None and _dominated(plan, p, budget):
                plan.note = (f"not lowered: {p.describe()} costs no more and reaches within the budget, and "
                             f"the arena after this stage is over it ({_segment_tops(p.low)[-1]:,} B)")
                return True
            if (p.patch is not None and plan.patch is not None and p.patch[0] == plan.patch[0]
                    and _halo(p.patch) == _halo(plan.patch) and p.patch[1] < plan.patch[1]
                    and _excess(p, budget) > ROWS_SLACK):
                plan.note = (f"not lowered: {p.patch[1]}-row bands of this stage are over by "
                             f"{_excess(p, budget):.1%} already")
                return True
        return False

    # fewer rows per band first (the least RAM of each stage), cheapest first within
    base = sorted((p for p in candidates if p.dwpw_rows is None),
                  key=lambda p: (p.patch[1] if p.patch else 0, p.cost, p.arena_bound))
    for plan in base:                       # one at a time: what was found prunes the rest
        before = len(tried)
        scan([plan], MAX_PLANS_TRIED, pruned)
        if len(tried) > before:
            done.append(plan)
            if _fits(plan, budget):
                best_floor[0] = min(best_floor[0], plan.floor)
    # one-row tiles for the plans of least excess that do not fit yet and could be cheaper
    near = sorted((p for p in tried if p.lean and p.dwpw_rows is None and 0 < _excess(p, budget) <= ROWS_SLACK
                   and p.floor < best_floor[0]), key=lambda p: (_peak(p), p.floor))[:MAX_ROW_TWINS]
    twins = _twins(near, candidates)
    scan(twins, len(tried) + len(twins))
    slack = int(budget * (1 + TRIM_SLACK)) if budget is not None else None
    trimmable = [p for p in tried if (p.lean or p.dwpw_rows is not None) and _fits(p, slack)]
    if not any(_fits(p, budget) for p in tried) and not trimmable:
        # no one-stage plan fits: later patch stages where the arena peaks after the stage
        _extend_stages(graph, target, options, tried, scan, plain, plain / max(plain_macs, 1), coef, None, budget,
                       progress, aim=MAX_INSTRUCTIONS * plain / (1 + target.cost.error))
        trimmable = [p for p in tried if (p.lean or p.dwpw_rows is not None) and _fits(p, slack)]
    if not any(_fits(p, budget) for p in tried) and not trimmable:
        _refuse(graph, target, tried, budget, coef, plain, plain_macs, streamed)
    order = sorted((p for p in tried if _fits(p, budget) or p in trimmable), key=lambda p: (p.floor, _peak(p)))
    chosen: _Plan | None = None
    trims = 0
    for plan in order:
        if chosen is not None and plan.floor >= chosen.predicted:
            plan.note = (f"not trimmed: its floor {plan.floor / plain:.3f}x is no less than the chosen plan's "
                         f"{chosen.predicted / plain:.3f}x")
            continue
        fits_untrimmed = _fits(plan, budget)
        if (plan.lean or plan.dwpw_rows is not None) and trims < MAX_TRIMMED:
            before = _peak(plan)
            _trim(graph, target, options, plan, progress, goal=budget)
            trims += 1
            plan.trimmed_from = before
        elif not fits_untrimmed:
            plan.note = f"over the budget by {_peak(plan) - budget:,} B; not trimmed (at most {MAX_TRIMMED} plans)"
            continue
        if not _fits(plan, budget):
            plan.note = "over " + (f"the budget by {_peak(plan) - budget:,} B" if budget is not None
                                   and _peak(plan) > budget else "the target's RAM") + " once trimmed"
            continue
        if chosen is None or (plan.predicted, _peak(plan)) < (chosen.predicted, _peak(chosen)):
            if chosen is not None:
                chosen.note = (f"fits, predicted {chosen.predicted / plain:.3f}x: more than "
                               f"{plan.predicted / plain:.3f}x")
            chosen = plan
        else:
            plan.note = f"fits, predicted {plan.predicted / plain:.3f}x: more than {chosen.predicted / plain:.3f}x"
    if chosen is None:
        _refuse(graph, target, tried, budget, coef, plain, plain_macs, streamed)
    chosen.note = f"the fewest predicted instructions of the plans that fit ({chosen.predicted / plain:.3f}x)"
    for p in tried:
        if p.note is None and p is not chosen:
            p.note = ("fits" if _fits(p, budget) else
                      f"over the budget by {_peak(p) - budget:,} B" if budget is not None and _peak(p) > budget
                      else "over the target's RAM")
    return chosen


# `min`: the plans of least peak RAM that are also tried with one-row dw+pw tiles (`auto`: those
# that do not fit)
MAX_ROW_TWINS = 4
# `auto`: plans whose peak RAM with lean windows and one-row tiles everywhere is within this
# fraction over the budget are trimmed too (trimming lowered the wake-word network's 4:1 cached
# one-row plan from 37,772 to 37,540 B)
TRIM_SLACK = 0.02
# `auto`: a plan over by more than this fraction is not tried with one-row tiles (they saved 3% on
# the wake-word network), nor its stage with more rows per band
ROWS_SLACK = 0.10


def _dominated(plan: _Plan, other: _Plan, budget: int) -> bool:
    """Whether a one-stage plan not lowered yet need not be: `other`, lowered, has the same stage
    (layers) and dw+pw rows, costs no more (estimate), its stage reaches within the budget (a seed
    of later stages at least as good), and the arena after that stage -- which the halo and the
    band height do not change -- is over the budget by more than TRIM_SLACK: `plan` cannot fit
    with one stage either."""
    return (plan.patch is not None and other.patch is not None and other.low is not None and not other.later
            and plan.patch[0] == other.patch[0] and plan.dwpw_rows == other.dwpw_rows and plan.lean == other.lean
            and other.cost <= plan.cost and _reach_fits(other, budget)
            and _segment_tops(other.low)[-1] + _beside_arena(other) > budget * (1 + TRIM_SLACK))


def _excess(plan: _Plan, budget: int | None) -> float:
    """How far over the budget and the target's RAM regions the plan's peak RAM is, as a fraction
    (<= 0: it fits)."""
    est = plan.estimate
    over = [_peak(plan) / budget - 1] if budget is not None else []
    if est is not None:
        over += [est.needs[r] / est.budgets[r] - 1 for r in est.needs if est.kinds[r] == "ram" and est.budgets[r]]
    return max(over, default=0.0)
# plans that `_trim` lowers again (a few lowerings each) before `min` gives up on the bound
MAX_TRIMMED = 3


def _trim(graph: Any, target: Target, options: BuildOptions, plan: _Plan,
          progress: Callable[[str], None], goal: int | None = None) -> None:
    """Lean windows and one-row dw+pw tiles cost instructions (about 2% and 10% on the wake-word
    network when everywhere) and save RAM only in the kernels that run when the arena or the stack
    peaks. Keep them in those kernels alone: one-row tiles in the fused kernels of the patch stage
    and the first one after it (where the stage's row buffers and the next kernel's scratch live);
    lean windows in none; then, until the estimated peak RAM is no more than with both everywhere,
    give the kernel of the call at the peak (of the arena, or of the stack arrays) one-row tiles if
    it is a fused kernel without them, else lean windows. A few lowerings; when that does not
    converge, the same with one-row tiles everywhere, then the plan as it was. Updates the plan's
    prediction. `goal`: a peak RAM to reach instead (--ram-budget: the budget, whether or not the
    plan fits it untrimmed; the first trial, one-row tiles in the stages' kernels alone and no lean
    windows, usually does)."""
    full = _peak(plan) if goal is None else goal
    full_stack = max((plan.low.kernels[s].stack_bytes for s in set(plan.low.call_symbols)), default=0)
    starts = [_stage_rows_kernels(plan.low)] if plan.dwpw_rows is not None else [set()]
    if plan.dwpw_rows is not None:
        starts.append(None)               # one-row tiles everywhere
    for start in starts:
        lean: set[str] = set()
        rows = set(start) if start is not None else None
        for _ in range(16):
            opts = replace(plan.options(options), lean_kernels=frozenset(lean) if plan.lean else None,
                           dwpw_rows_kernels=frozenset(rows) if plan.dwpw_rows is not None and rows is not None else None)
            low = _lower(graph, target, opts, lambda m: None)
            trial = _Plan(plan.patch, plan.lean, plan.extra_macs, plan.arena_bound, low, _estimate(target, low),
                          bytes_copied=plan.bytes_copied)
            if _peak(trial) <= full:
                kernels = len(set(c.kernel for c in low.program.calls))
                plan.low, plan.estimate = low, trial.estimate
                plan.lean_kernels = len(lean) if plan.lean else None
                plan.rows_kernels = (len(rows) if rows is not None else None) if plan.dwpw_rows is not None else None
                _predict(plan, target, opts)
                progress(f"lean windows in {len(lean)}, one-row dw+pw tiles in "
                         f"{len(rows) if rows is not None else 'all'} (of {kernels}) kernels, where RAM peaks: "
                         f"peak RAM about {_peak(trial):,} B")
                return
            stacks = {c.kernel: low.kernels[s].stack_bytes for c, s in zip(low.program.calls, low.call_symbols)}
            if low.plan.arena_bytes > plan.low.plan.arena_bytes or max(stacks.values(), default=0) <= full_stack:
                step, _top = memory.arena_peak(low.plan)
                if not 0 <= step < len(low.program.calls):
                    break
                kernel, sym = low.program.calls[step].kernel, low.call_symbols[step]
                # the arena: the kernel's row buffers first (one-row tiles), then its windows
                if rows is not None and plan.dwpw_rows is not None and kernel not in rows \
                        and low.infos[sym].kind == Kind.DWPW:
                    rows.add(kernel)
                    continue
                if plan.lean and (kernel in lean or low.infos[sym].kind not in (Kind.CONV_DW, Kind.DWPW)):
                    # a copy or a kernel lean already peaks there: the nearest window kernel not yet lean
                    near = sorted((abs(i - step), c.kernel) for i, (c, s) in enumerate(zip(low.program.calls,
                                                                                         low.call_symbols))
                                  if low.infos[s].kind in (Kind.CONV_DW, Kind.DWPW) and c.kernel not in lean)
                    kernel = near[0][1] if near else kernel
            else:
                kernel = max(stacks, key=lambda k: stacks[k])     # the stack: its windows (lean: in the arena)
            if plan.lean and kernel not in lean:
                lean.add(kernel)
            else:
                break


def _stage_rows_kernels(low: _Lowered) -> set[str]:
    """The fused dw+pw kernels of the patch stages and the first one after them (none without patches)."""
    if low.patch_plan is None:
        return set()
    prog = low.program
    end = max([_stage_calls(prog, low.patch_plan.bands)[1]] + [e for _, e in _stage_ranges(low)])
    dwpw = [i for i, s in enumerate(low.call_symbols) if low.infos[s].kind == Kind.DWPW]
    after = [i for i in dwpw if i >= end][:1]
    return {prog.calls[i].kernel for i in dwpw if i < end} | {prog.calls[i].kernel for i in after}


def _peak(plan: _Plan) -> int:
    return plan.estimate.peak_ram_bytes if plan.estimate else plan.low.plan.arena_bytes


def _refusal(target: Target, plan: _Plan, budget: int | None, least_patch_arena: int | None = None) -> FitError:
    """The error for a model that fits in no plan: the smallest plan's numbers, its peak call and
    the least arena any patch stage needs (its input whole, and the rows a band reads)."""
    low, est = plan.low, plan.estimate
    step, top = memory.arena_peak(low.plan)
    at = f"call {step} ({low.call_symbols[step]})" if 0 <= step < len(low.call_symbols) else "the graph input/output"
    detail = (f"smallest plan tried: {plan.describe()}, arena {low.plan.arena_bytes:,} B peaking at {at}")
    live = memory.live_at(low.program, low.plan, step, low.call_symbols)
    if live:
        big = sorted(live, key=lambda b: -b["bytes"])[:6]
        detail += (" with " + ", ".join(f"{b['name']} {'x'.join(map(str, b['shape']))} {b['dtype']} {b['bytes']:,} B"
                                        for b in big)
                   + (f" and {len(live) - len(big)} smaller buffers" if len(live) > len(big) else "") + " live there")
    if est is not None:
        detail += (f", data+bss about {est.static_ram_bytes:,} B, stack about {est.stack_used_bytes:,} B used; "
                   f"peak RAM about {est.peak_ram_bytes:,} B")
    parts = [est.describe(r) for r in est.over("ram")] if est is not None else []
    if budget is not None and _peak(plan) > budget:
        what = "peak RAM needs about" if est is not None else "the arena needs"
        parts.append(f"{what} {_peak(plan):,} B, --ram-budget {budget:,} B (over by {_peak(plan) - budget:,} B)")
    if least_patch_arena is not None:
        detail += f"; every patch stage needs an arena of at least {least_patch_arena:,} B"
    return FitError(f"model does not fit {target.name}, estimated before compiling: " + "; ".join(parts)
                    + f" ({detail})")


def _check_weights_fit(graph: Any, target: Target, quant: str) -> None:
    """Refuse, before calibration and lowering, a model whose weights alone exceed the target's
    flash: at least one byte per weight in int8, four in fp32."""
    est = platform_for(target).estimate_memory(target, passes.constant_elements(graph) * (1 if quant == "int8" else 4))
    if est is not None and est.over("flash"):
        raise FitError(f"model does not fit {target.name}, estimated from the graph before compiling: "
                       + "; ".join(est.describe(r) for r in est.over("flash"))
                       + f" (the {quant} weights alone; the code comes on top)")


def compile_model(source: ModelSource, target: Target, options: BuildOptions = BuildOptions(),
                  progress: Callable[[str], None] = Progress()) -> Compiled:
    graph, quant = _graph(source, target, options, progress)
    progress("legalize, fuse, schedule")
    low, planning = _plan_memory(graph, target, options, progress)
    before = None
    if low.patch_plan is not None and planning is None and options.patch_before:
        progress("lowering the plain plan for the patch stage's before/after")
        plain = _lower(graph, target, replace(options, patch=None, patch2=None), lambda m: None)
        est_plain, est = _estimate(target, plain), _estimate(target, low)
        before = {"arena_bytes_before": plain.plan.arena_bytes, "arena_bytes_after": low.plan.arena_bytes,
                  "peak_ram_estimate_before": est_plain.peak_ram_bytes if est_plain else None,
                  "peak_ram_estimate_after": est.peak_ram_bytes if est else None}
    prog, plan = low.program, low.plan
    tuning = None
    if options.tuning is not None:
        hits = dict(options.tuning.hits)
        aside = dict(options.tuning.set_aside)
        tuning = {"db": str(options.tuning.db / db_key(target)), "kernels_tuned": len(hits), "configs": hits,
                  "set_aside": aside}
        progress(f"tuning records: {len(hits)} of {len(low.infos)} kernels use tuned configurations"
                 + (f" ({len(aside)} set aside: not faster inside the network)" if aside else ""))
    progress(f"memory plan: arena {plan.arena_bytes} B ({len(plan.in_place)} in-place overlaps; "
             f"largest live set without overlap {plan.peak_live_bytes} B)")
    fusion: dict[str, Any] = {"fused": options.fuse, "arena_bytes": plan.arena_bytes}
    if options.fuse and options.compare_unfused and any(i.kind == Kind.DWPW for i in low.infos.values()):
        progress("measuring the unfused plan for comparison")
        plain = _lower(graph, target, replace(options, fuse=False, patch=None, patch2=None), lambda m: None)
        fusion["arena_bytes_unfused"] = plain.plan.arena_bytes
        fusion["kernel_calls_unfused"] = len(plain.program.calls)
    calls, docs = _call_records(low)
    files = weights.emit_weights(prog)
    body = executor.emit_model_c(source.name, prog, plan, low.kernels, low.call_symbols, docs, options.external_io,
                                 target.family)
    digest = hashlib.sha256(body.encode() + b"".join(files[k] for k in sorted(files))).hexdigest()[:16]
    files["model.h"] = executor.emit_model_h(source.name, prog, plan, options.external_io, target.name, digest,
                                             quant).encode()
    files["model.c"] = body.encode()
    return Compiled(prog, plan, files, calls, low.infos, digest, fusion, quant, tuning, low.patch_plan, planning,
                    before)


def _patch_record(compiled: Compiled) -> dict[str, Any] | None:
    """report.json's `patch_plan`, with the arena and estimated peak RAM before (the plain plan)
    and after (the chosen one) when the memory planning chose the patches."""
    if compiled.patch_plan is None:
        return None
    out = compiled.patch_plan.to_json()
    out["stage_calls"] = _stage_calls(compiled.program, compiled.patch_plan.bands)
    if compiled.planning is not None:
        before, after = compiled.planning["tried"][0], compiled.planning["chosen"]
        out.update({"arena_bytes_before": before["arena_bytes"], "arena_bytes_after": after["arena_bytes"],
                    "peak_ram_estimate_before": before["peak_ram_estimate"],
                    "peak_ram_estimate_after": after["peak_ram_estimate"]})
    elif compiled.patch_before is not None:
        out.update(compiled.patch_before)
    return out


def _stage_calls(prog: Program, bands: int) -> list[int]:
    """[first, end) of the calls of the patch stage: from the first call to the last band's write
    into the stage output (the earliest-written storage that exactly `bands` calls write)."""
    writers: dict[str, list[int]] = {}
    for i, call in enumerate(prog.calls):
        writers.setdefault(prog.storage_root(call.outputs[0]), []).append(i)
    stage = min((w for w in writers.values() if len(w) == bands), key=lambda w: w[0], default=None)
    return [0, stage[-1] + 1 if stage else 0]


def build_report(source: ModelSource, target: Target, compiled: Compiled) -> dict[str, Any]:
    prog, plan = compiled.program, compiled.plan
    return {
        "model": source.name,
        "model_options": source.options,
        "target": target.name,
        "family": target.family,
        "model_hash": compiled.digest,
        "inputs": [{"name": n, "shape": list(prog.tensors[n].shape), "dtype": prog.tensors[n].dtype}
                   for n in prog.inputs],
        "outputs": [{"name": n, "shape": list(prog.tensors[n].shape), "dtype": prog.tensors[n].dtype}
                    for n in prog.outputs],
        "macs": sum(c["macs"] for c in compiled.calls),
        "params": int(sum(prog.weights[w].size for w in prog.weights)),
        "weights_bytes": sum(prog.tensors[w].nbytes for w in prog.weights),
        "arena_bytes": plan.arena_bytes,
        "largest_live_set_bytes": plan.peak_live_bytes,   # without in-place overlaps
        "external_io": bool(plan.external),
        "kernels": len(compiled.calls),
        "memory_plan": [
            {"name": n, "kind": prog.tensors[n].kind, "offset": plan.offsets[n], "size": plan.sizes[n],
             "start": plan.lifetimes[n][0], "end": plan.lifetimes[n][1], "dtype": prog.tensors[n].dtype,
             "shape": list(prog.tensors[n].shape)}
            for n in sorted(plan.offsets, key=lambda n: (plan.offsets[n], n))
        ],
        "memory_in_place": [[o.out, o.inp] for o in plan.in_place],   # overlapping on purpose
        "kernel_functions": len(compiled.kernel_infos),
        "fusion": compiled.fusion,
        "patch_plan": _patch_record(compiled),
        "memory_planning": compiled.planning,
        "tuning": compiled.tuning or {"kernels_tuned": 0},
        "quant": compiled.quant or {"dtype": "fp32"},
        "calls": compiled.calls,
    }


def write_build(source: ModelSource, target: Target, out_dir: Path, options: BuildOptions = BuildOptions(),
                progress: Callable[[str], None] = Progress(), force: bool = False) -> dict[str, Any]:
    """Compile, write and build for the target's platform into `out_dir`, which must be new,
    empty or a previous build (see build_dir; `force` replaces anything else but the current
    directory and its parents). Atomic: on failure `out_dir` is as it was."""
    platform = platform_for(target)
    platform.check(target)
    check_out_dir(out_dir, force)
    compiled = compile_model(source, target, options, progress)
    report = build_report(source, target, compiled)

    def fill(tmp: Path) -> None:
        for name, data in compiled.files.items():
            (tmp / name).write_bytes(data)
        (tmp / "model.onnx").write_bytes(source.onnx_model.SerializeToString())
        if options.compile:
            results = platform.build(tmp, target, report, "weights.c" if "weights.c" in compiled.files else "weights.S",
                                     progress)
            main = next(iter(results.values()), None)
            if main is not None:
                if main["arena_bytes"] != report["arena_bytes"]:
                    raise EdgeCompileError(
                        f"linked arena is {main['arena_bytes']} B, the plan says {report['arena_bytes']} B")
                report.update({k: main[k] for k in ("flash_bytes", "ram_bytes", "stack_reserved_bytes")})
                report["firmware"] = results
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        mark_build(tmp, {"model": source.name, "target": target.name})

    write_atomically(Path(out_dir), fill, force)
    progress(f"wrote {out_dir}")
    return report
