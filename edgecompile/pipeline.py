"""The build: model source -> Relax -> kernels -> C + static plan -> compiled artifacts + report.

Everything is written into a temporary directory next to the destination and moved into place
only when the whole build succeeded, so a failed build never leaves a half-written directory.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from . import codegen, firmware, passes, schedules, toolchain
from .errors import EdgeCompileError
from .frontend import ModelSource, to_relax
from .memory import MemoryPlan, Overlap, plan_program, streaming_max_delta
from .program import Program, Tensor, extract_program
from .targets import Target


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
    tuning: Any = None              # tuning.TuningRecords: tuned configurations to use (None: the rules')


@dataclass
class Compiled:
    """The compiler's output before anything is written: sources, plan and per-call facts."""

    program: Program
    plan: MemoryPlan
    files: dict[str, bytes]
    calls: list[dict[str, Any]]
    kernel_infos: dict[str, schedules.KernelInfo]
    digest: str
    fusion: dict[str, Any]
    quant: dict[str, Any] | None = None
    tuning: dict[str, Any] | None = None


def template_dir(name: str) -> Path:
    return Path(str(resources.files("edgecompile.firmware_templates"))) / name


class Progress:
    """Stage-by-stage progress on stderr (quiet=True silences it)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _symbol_for(info: schedules.KernelInfo, out: Tensor, taken: set[str]) -> str:
    dtype = {"float32": "f32", "int8": "s8", "int32": "s32"}.get(out.dtype, out.dtype)
    base = f"ec_{info.kind}_{dtype}"
    shape = "x".join(str(d) for d in out.shape[1:] if True) or "scalar"
    if info.kind.startswith("conv"):
        (kh, kw), (sh, _) = info.kernel, info.stride
        base += f"_k{kh}x{kw}s{sh}_{shape}"
    else:
        base += f"_{shape}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


@dataclass
class _Lowered:
    program: Program
    plan: MemoryPlan
    kernels: dict[str, codegen.KernelSource]
    infos: dict[str, schedules.KernelInfo]
    symbol_of: dict[str, str]


def _pack_weight(prog: Program, name: str, nn: int) -> None:
    """Store a weight as panels of `nn` output channels, the layout the scheduled kernel reads
    (schedules.generic.pack_weights): HWIO -> [O/nn][H][W][I][nn], [K, N] -> [N/nn][K][nn]."""
    t = prog.tensors[name]
    arr = prog.weights[name]
    if getattr(t, "packed", None) is not None:
        if t.packed != nn:
            raise EdgeCompileError(f"weight {name} is read by kernels with different panel widths")
        return
    if arr.ndim == 4:
        kh, kw, ci, co = arr.shape
        new = arr.reshape(kh, kw, ci, co // nn, nn).transpose(3, 0, 1, 2, 4)
    else:
        k, n = arr.shape
        new = arr.reshape(k, n // nn, nn).transpose(1, 0, 2)
    prog.weights[name] = np.ascontiguousarray(new)
    prog.tensors[name] = replace(t, shape=tuple(new.shape), packed=nn)


def _lower(graph: Any, target: Target, options: BuildOptions, progress: Callable[[str], None]) -> _Lowered:
    """High-level graph -> fused kernels -> scheduled kernels -> C functions -> memory plan."""
    mod = passes.lower_graph(graph, fuse_dwpw=options.fuse)
    prog = extract_program(mod)
    names = list(dict.fromkeys(c.kernel for c in prog.calls))
    progress(f"scheduling {len(names)} kernels for family '{target.family}' ({len(prog.calls)} calls)")
    scheduled: dict[str, Any] = {}
    infos: dict[str, schedules.KernelInfo] = {}
    symbol_of: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        first = next(c for c in prog.calls if c.kernel == name)
        config = options.tuning.config_for(mod[name], name) if options.tuning is not None else None
        func, info = schedules.schedule(mod[name], target.family, options.dwpw_rows, config)
        calls_of = [c for c in prog.calls if c.kernel == name]
        if info.packed and not all(c.inputs[p] in prog.weights for c in calls_of for p in info.packed):
            # a GEMM operand that is not a constant cannot be stored in panels at compile time
            func, info = schedules.schedule(mod[name], target.family, options.dwpw_rows, {**(config or {}), "pack": False})
        for c in calls_of:
            for pos, nn in sorted(info.packed.items()):
                _pack_weight(prog, c.inputs[pos], nn)
        sym = _symbol_for(info, prog.tensors[first.outputs[0]], taken)
        symbol_of[name] = sym
        scheduled[sym] = func
        infos[sym] = info
    progress("generating C for the kernels (TVM C codegen, unpacked ABI)")
    streaming = {sym for sym, info in infos.items() if info.kind == "dwpw" and info.rows}
    kernels = codegen.lower_kernels(scheduled, target.tvm, streaming)
    for i, call in enumerate(prog.calls):
        for j, nbytes in enumerate(kernels[symbol_of[call.kernel]].scratch_bytes):
            sname = f"scratch_{i}_{j}"
            prog.tensors[sname] = Tensor(sname, (nbytes,), "uint8", "scratch")
            call.scratch.append(sname)
    overlaps = []
    for call in prog.calls:
        info = infos[symbol_of[call.kernel]]
        if info.kind == "dwpw" and info.rows:
            inp, out = prog.tensors[call.inputs[0]], prog.tensors[call.outputs[0]]
            _, hin, win, cin = inp.shape
            _, h, w, cout = out.shape
            delta = streaming_max_delta(hin, win * cin * 4, h, w * cout * 4, info.rows, info.stride[0], info.kernel[0])
            overlaps.append(Overlap(prog.storage_root(call.outputs[0]), prog.storage_root(call.inputs[0]), delta))
    plan = plan_program(prog, external_io=options.external_io, overlaps=overlaps if options.in_place else [])
    return _Lowered(prog, plan, kernels, infos, symbol_of)


def _graph(source: ModelSource, target: Target, options: BuildOptions,
           progress: Callable[[str], None]) -> tuple[Any, dict[str, Any] | None]:
    progress(f"importing {source.name} into Relax")
    relax_mod = to_relax(source)
    progress("Relax passes: fold constants and BatchNorm, NHWC layout")
    graph, given = passes.prepare_graph(relax_mod)
    quant_mode = options.quant or target.default_quant
    quant: dict[str, Any] | None = None
    if quant_mode == "int8":
        graph, quant = _quantize(graph, source, options, given, progress)
    elif quant_mode != "fp32":
        raise EdgeCompileError(f"--quant must be fp32 or int8, got {quant_mode!r}")
    return graph, quant


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


def compile_model(source: ModelSource, target: Target, options: BuildOptions = BuildOptions(),
                  progress: Callable[[str], None] = Progress()) -> Compiled:
    graph, quant = _graph(source, target, options, progress)
    progress("legalize, fuse, schedule")
    low = _lower(graph, target, options, progress)
    prog, plan, kernels, infos, symbol_of = low.program, low.plan, low.kernels, low.infos, low.symbol_of
    tuning = None
    if options.tuning is not None:
        hits = dict(options.tuning.hits)
        from .tuning import db_key

        tuning = {"db": str(options.tuning.db / db_key(target)), "kernels_tuned": len(hits), "configs": hits}
        progress(f"tuning records: {len(hits)} of {len(infos)} kernels use tuned configurations")
    progress(f"memory plan: arena {plan.arena_bytes} B ({len(plan.in_place)} in-place overlaps; "
             f"largest live set without overlap {plan.peak_live_bytes} B)")
    fusion: dict[str, Any] = {"fused": options.fuse, "arena_bytes": plan.arena_bytes}
    if options.fuse and options.compare_unfused and any(i.kind == "dwpw" for i in infos.values()):
        progress("measuring the unfused plan for comparison")
        plain = _lower(graph, target, replace(options, fuse=False, in_place=False), lambda m: None)
        fusion["arena_bytes_unfused"] = plain.plan.arena_bytes
        fusion["kernel_calls_unfused"] = len(plain.program.calls)
    in_place_outputs = {o.out for o in plan.in_place}
    call_symbols = [symbol_of[c.kernel] for c in prog.calls]
    docs, calls = [], []
    for i, (call, sym) in enumerate(zip(prog.calls, call_symbols)):
        info = infos[sym]
        out = prog.tensors[call.outputs[0]]
        docs.append(f"{info.describe()} -> {list(out.shape)}, {info.macs} MACs")
        root = prog.storage_root(call.outputs[0])
        calls.append({
            "index": i,
            "name": sym,
            "kind": info.kind,
            "path": (f"fused depthwise+pointwise, {info.rows} output rows per tile" if info.kind == "dwpw" and info.rows
                     else "fused depthwise+pointwise, untiled" if info.kind == "dwpw" else "single kernel"),
            "in_place": root in in_place_outputs,
            "schedule": info.schedule,
            "macs": info.macs,
            "output": call.outputs[0],
            "output_shape": list(out.shape),
            "arena_offset": plan.offsets.get(root),
            "arena_size": out.nbytes,
            "scratch": [{"offset": plan.offsets[s], "size": prog.tensors[s].nbytes} for s in call.scratch],
        })
    files: dict[str, bytes] = {}
    weights_bytes = sum(prog.tensors[w].nbytes for w in prog.weights)
    if weights_bytes <= codegen.WEIGHTS_C_LIMIT:
        files["weights.c"] = codegen.emit_weights_c(prog).encode()
    else:
        files["weights.bin"] = codegen.weights_blob(prog)
        files["weights.S"] = codegen.emit_weights_asm(prog).encode()
    body = codegen.emit_model_c(source.name, prog, plan, kernels, call_symbols, docs, options.external_io,
                                lanes=schedules.family_module(target.family).LANES,
                                lane_fma=getattr(schedules.family_module(target.family), "LANE_FMA", False))
    digest = hashlib.sha256(body.encode() + b"".join(files[k] for k in sorted(files))).hexdigest()[:16]
    files["model.h"] = codegen.emit_model_h(source.name, prog, plan, options.external_io, target.name, digest,
                                            quant).encode()
    files["model.c"] = body.encode()
    return Compiled(prog, plan, files, calls, infos, digest, fusion, quant, tuning)


def calibration_inputs(source: ModelSource, spec: str, count: int) -> np.ndarray:
    """Calibration inputs: a dataset name (see datasets.py) or an .npy file (N x input shape)."""
    from .datasets import load_dataset

    shape = source.inputs[0].shape
    if spec.endswith(".npy"):
        try:
            data = np.load(spec).astype(np.float32)
        except (OSError, ValueError) as err:
            raise EdgeCompileError(f"{spec}: cannot read calibration data: {err}") from None
        if data.shape[1:] != tuple(shape[1:]):
            raise EdgeCompileError(f"{spec}: calibration inputs have shape {data.shape[1:]}, the model takes "
                                   f"{tuple(shape[1:])}")
        return data[:count]
    if len(shape) != 4:
        spec = "random"
    ds = load_dataset(spec, shape, "train", min(count, 1437) if spec == "digits" else count)
    return ds.images


def _quantize(graph: Any, source: ModelSource, options: BuildOptions, given: dict[Any, tuple[float, int]],
              progress: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    from . import quantize

    data = calibration_inputs(source, options.calibration, options.calibration_samples)
    progress(f"int8: calibrating on {len(data)} {options.calibration} inputs ({options.calibration_method})")
    ranges = quantize.calibrate(graph, data, options.calibration_method)
    if given:
        progress(f"int8: the model is quantized already (QDQ): {len(given)} activation scales used as given")
    qgraph, in_qp, out_qp = quantize.quantize_graph(graph, ranges, given)
    info = {
        "dtype": "int8",
        "input": {"scale": in_qp.scale, "zero_point": in_qp.zero_point},
        "output": {"scale": out_qp.scale, "zero_point": out_qp.zero_point},
        "calibration": {"data": options.calibration, "samples": len(data), "method": options.calibration_method,
                        "given_by_model": len(given)},
        "scheme": "int8 per-channel symmetric weights, per-tensor asymmetric activations, int32 bias, "
                  "fixed-point requantization",
    }
    return qgraph, info


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


BUILD_MARKER = ".edgecompile-build"   # written into every build directory: only those may be replaced


def check_out_dir(out_dir: Path, force: bool = False) -> None:
    """Refuse an output path whose replacement would destroy something that is not a previous
    build: a directory without the build marker (unless empty), a regular file (unless `force`),
    and always the current directory, one of its parents, the home directory or the root."""
    out_dir = Path(out_dir)
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve() or resolved == Path("/"):
        raise EdgeCompileError(f"--out {out_dir}: is the current directory, one of its parents, the home directory "
                               "or the root; a build replaces its output directory, give a new directory")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        if not force:
            raise EdgeCompileError(f"--out {out_dir}: exists and is not a directory; refusing to replace it "
                                   "(choose another path, or --force to replace it)")
        return
    if out_dir.is_dir() and not force and not _is_build_dir(out_dir) and any(out_dir.iterdir()):
        raise EdgeCompileError(f"--out {out_dir}: exists and is not an edgecompile build directory (no {BUILD_MARKER}); "
                               "refusing to replace it (choose a new directory, or --force to replace it)")


def _is_build_dir(path: Path) -> bool:
    """A previous build: the marker, or (builds made before the marker existed) a report.json
    written by edgecompile next to model.c."""
    if (path / BUILD_MARKER).is_file():
        return True
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"model_hash", "target", "calls"} <= set(report) and (path / "model.c").is_file()


def write_build(source: ModelSource, target: Target, out_dir: Path, options: BuildOptions = BuildOptions(),
                progress: Callable[[str], None] = Progress(), force: bool = False) -> dict[str, Any]:
    """Compile, write and (for the host) build; atomically replaces `out_dir`, which must be new,
    empty or a previous build (see `check_out_dir`; `force` replaces anything else but the
    current directory and its parents)."""
    check_out_dir(out_dir, force)
    compiled = compile_model(source, target, options, progress)
    report = build_report(source, target, compiled)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name, data in compiled.files.items():
            (tmp / name).write_bytes(data)
        (tmp / "model.onnx").write_bytes(source.onnx_model.SerializeToString())
        if options.compile:
            weights_src = "weights.c" if "weights.c" in compiled.files else "weights.S"
            if target.firmware == "host":
                progress(f"compiling with {target.cc}")
                toolchain.compile_host(tmp, target.cc, target.cflags, target.ldflags, ["model.c", weights_src],
                                       template_dir("host") / "runner.c")
            else:
                results = firmware.build_firmware(tmp, target, report, weights_src, template_dir(""), progress)
                main = results.get("board") or results["linux"]
                if main["arena_bytes"] != report["arena_bytes"]:
                    raise EdgeCompileError(
                        f"linked arena is {main['arena_bytes']} B, the plan says {report['arena_bytes']} B")
                report.update({k: main[k] for k in ("flash_bytes", "ram_bytes", "stack_reserved_bytes")})
                report["firmware"] = results
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / BUILD_MARKER).write_text(json.dumps({"model": source.name, "target": target.name}) + "\n")
        tmp.chmod(0o777 & ~_umask())      # mkdtemp makes it 0700: a build is as readable as any directory
        check_out_dir(out_dir, force)      # nothing else appeared there during the compile
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"wrote {out_dir}")
    return report


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_dir(new: Path, dest: Path) -> None:
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    new.rename(dest)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
