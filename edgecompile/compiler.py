"""The build, stage by stage; each stage is a module of its own and this one only passes data on:

    ir.frontend (model -> Relax) -> ir.passes (float rewrites) -> ir.quantize (int8, optional)
    -> ir.passes.lower_graph (fused kernels) -> ir.program (kernel calls) -> schedules (per family,
    tuning records from tune.records) -> codegen (C kernels, memory plan, weights, executor)
    -> platforms (compile for the board, measure the linked files) -> build directory
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import schedules
from .build_dir import check_out_dir, mark_build, write_atomically
from .codegen import executor, lower, memory, weights
from .codegen.lower import KernelSource
from .codegen.memory import MemoryPlan
from .datasets import calibration_inputs
from .errors import EdgeCompileError
from .ir import passes, quantize
from .ir.frontend import ModelSource, to_relax
from .ir.kernel import KernelInfo
from .ir.operators import Kind
from .ir.program import Program, extract_program
from .platforms import platform_for
from .targets import Target
from .tune.records import TuningRecords, db_key


@dataclass(frozen=True)
class BuildOptions:
    external_io: bool = False       # graph input/output live in caller buffers, not the arena
    compile: bool = True            # run the target toolchain (False: sources and report only)
    fuse: bool = True               # fused depthwise+pointwise kernels (False: the unfused path)
    in_place: bool = True           # let streaming kernels overwrite their consumed input
    dwpw_rows: int | None = None    # row-tile height of fused kernels (None: the family's default)
    quant: str | None = None        # "fp32" or "int8" (None: the target's default_quant)
    calibration: str = "digits"     # int8: a dataset name or a .npy file of inputs
    calibration_samples: int = 100
    calibration_method: str = "minmax"   # or "percentile"
    compare_unfused: bool = True    # also plan the unfused program, for the report (costs a 2nd lowering)
    tuning: TuningRecords | None = None   # tuned configurations to use (None: the rules')
    perturb_first_conv: bool = False      # test-only: a wrong weight in the first convolution (see _perturb)


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


def _schedule_kernels(mod: Any, prog: Program, target: Target,
                      options: BuildOptions) -> tuple[dict[str, Any], dict[str, KernelInfo], dict[str, str]]:
    """Schedule every distinct kernel for the target family (a tuning record's configuration
    where there is one) and store the weights it reads in the layout it reads them in."""
    scheduled: dict[str, Any] = {}
    infos: dict[str, KernelInfo] = {}
    symbol_of: dict[str, str] = {}
    taken: set[str] = set()
    for name in dict.fromkeys(c.kernel for c in prog.calls):
        calls = [c for c in prog.calls if c.kernel == name]
        config = options.tuning.config_for(mod[name], name) if options.tuning is not None else None
        func, info = schedules.schedule(mod[name], target.family, options.dwpw_rows, config, name)
        if info.packed and not all(c.inputs[p] in prog.weights for c in calls for p in info.packed):
            # a GEMM operand that is not a constant cannot be stored in panels at compile time
            func, info = schedules.schedule(mod[name], target.family, options.dwpw_rows, {**(config or {}), "pack": False},
                                            name)
        for c in calls:
            for pos, nn in sorted(info.packed.items()):
                weights.pack_weight(prog, c.inputs[pos], nn, info.panel_order.get(pos, ""))
        sym = lower.kernel_symbol(info, prog.tensors[calls[0].outputs[0]], taken)
        symbol_of[name], scheduled[sym], infos[sym] = sym, func, info
    return scheduled, infos, symbol_of


def _perturb(mod: Any, prog: Program) -> None:
    """Test-only: change one weight of the first convolution, as a broken kernel would compute
    (`test` and `run --layers` must catch it and point at that call)."""
    from .ir.kernel import analyze

    for call in prog.calls:
        if analyze(mod[call.kernel]).kind.is_conv:
            w = next(n for n in call.inputs if n in prog.weights and prog.weights[n].ndim == 4)
            arr = prog.weights[w].copy()
            flat = arr.reshape(-1)
            flat[int(np.argmax(np.abs(flat)))] *= -1          # the largest weight, sign flipped
            prog.weights[w] = arr
            return
    raise EdgeCompileError("no convolution to perturb")


def _lower(graph: Any, target: Target, options: BuildOptions, progress: Callable[[str], None]) -> _Lowered:
    """High-level graph -> fused kernels -> scheduled kernels -> C functions -> memory plan."""
    mod = passes.lower_graph(graph, fuse_dwpw=options.fuse)
    prog = extract_program(mod)
    progress(f"scheduling {len(set(c.kernel for c in prog.calls))} kernels for family '{target.family}' "
             f"({len(prog.calls)} calls)")
    if options.perturb_first_conv:
        _perturb(mod, prog)
    scheduled, infos, symbol_of = _schedule_kernels(mod, prog, target, options)
    progress("generating C for the kernels (TVM C codegen, unpacked ABI)")
    kernels = lower.lower_kernels(scheduled, target.tvm, {s for s, i in infos.items() if i.streams_rows})
    call_symbols = [symbol_of[c.kernel] for c in prog.calls]
    memory.add_scratch(prog, [kernels[s].scratch_bytes for s in call_symbols])
    overlaps = memory.streaming_overlaps(prog, [infos[s] for s in call_symbols]) if options.in_place else []
    plan = memory.plan_program(prog, external_io=options.external_io, overlaps=overlaps)
    return _Lowered(prog, plan, kernels, infos, call_symbols)


def _graph(source: ModelSource, target: Target, options: BuildOptions,
           progress: Callable[[str], None]) -> tuple[Any, dict[str, Any] | None]:
    """The high-level graph the kernels are made from: float, or int8 after quantization."""
    progress(f"importing {source.name} into Relax")
    relax_mod = to_relax(source)
    progress("Relax passes: fold constants and BatchNorm, NHWC layout")
    graph, given = passes.prepare_graph(relax_mod)
    quant_mode = options.quant or target.default_quant
    if quant_mode == "fp32":
        return graph, None
    if quant_mode != "int8":
        raise EdgeCompileError(f"--quant must be fp32 or int8, got {quant_mode!r}")
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


def compile_model(source: ModelSource, target: Target, options: BuildOptions = BuildOptions(),
                  progress: Callable[[str], None] = Progress()) -> Compiled:
    graph, quant = _graph(source, target, options, progress)
    progress("legalize, fuse, schedule")
    low = _lower(graph, target, options, progress)
    prog, plan = low.program, low.plan
    tuning = None
    if options.tuning is not None:
        hits = dict(options.tuning.hits)
        tuning = {"db": str(options.tuning.db / db_key(target)), "kernels_tuned": len(hits), "configs": hits}
        progress(f"tuning records: {len(hits)} of {len(low.infos)} kernels use tuned configurations")
    progress(f"memory plan: arena {plan.arena_bytes} B ({len(plan.in_place)} in-place overlaps; "
             f"largest live set without overlap {plan.peak_live_bytes} B)")
    fusion: dict[str, Any] = {"fused": options.fuse, "arena_bytes": plan.arena_bytes}
    if options.fuse and options.compare_unfused and any(i.kind == Kind.DWPW for i in low.infos.values()):
        progress("measuring the unfused plan for comparison")
        plain = _lower(graph, target, replace(options, fuse=False, in_place=False), lambda m: None)
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
    return Compiled(prog, plan, files, calls, low.infos, digest, fusion, quant, tuning)


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
             "start": plan.lifetimes[n][0], "end": plan.lifetimes[n][1]}
            for n in sorted(plan.offsets, key=lambda n: (plan.offsets[n], n))
        ],
        "memory_in_place": [[o.out, o.inp] for o in plan.in_place],   # overlapping on purpose
        "kernel_functions": len(compiled.kernel_infos),
        "fusion": compiled.fusion,
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
