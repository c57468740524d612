"""The build: model source -> Relax -> kernels -> C + static plan -> compiled artifacts + report.

Everything is written into a temporary directory next to the destination and moved into place
only when the whole build succeeded, so a failed build never leaves a half-written directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from . import codegen, firmware, passes, schedules, toolchain
from .errors import EdgeCompileError
from .frontend import ModelSource, to_relax
from .memory import MemoryPlan, plan_program
from .program import Program, Tensor, extract_program
from .targets import Target


@dataclass(frozen=True)
class BuildOptions:
    external_io: bool = False       # graph input/output live in caller buffers, not the arena
    compile: bool = True            # run the target toolchain (False: sources and report only)


@dataclass
class Compiled:
    """The compiler's output before anything is written: sources, plan and per-call facts."""

    program: Program
    plan: MemoryPlan
    files: dict[str, bytes]
    calls: list[dict[str, Any]]
    kernel_infos: dict[str, schedules.KernelInfo]
    digest: str


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


def compile_model(source: ModelSource, target: Target, options: BuildOptions = BuildOptions(),
                  progress: Callable[[str], None] = Progress()) -> Compiled:
    progress(f"importing {source.name} into Relax")
    mod = to_relax(source)
    progress("Relax passes: fold constants and BatchNorm, NHWC layout, legalize, fuse")
    mod = passes.lower_to_kernels(mod)
    prog = extract_program(mod)
    names = []
    for call in prog.calls:
        if call.kernel not in names:
            names.append(call.kernel)
    progress(f"scheduling {len(names)} kernels for family '{target.family}' ({len(prog.calls)} calls)")
    scheduled: dict[str, Any] = {}
    infos: dict[str, schedules.KernelInfo] = {}
    symbol_of: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        first = next(c for c in prog.calls if c.kernel == name)
        func, info = schedules.schedule(mod[name], target.family)
        sym = _symbol_for(info, prog.tensors[first.outputs[0]], taken)
        symbol_of[name] = sym
        scheduled[sym] = func
        infos[sym] = info
    progress("generating C for the kernels (TVM C codegen, unpacked ABI)")
    kernels = codegen.lower_kernels(scheduled, target.tvm)
    for i, call in enumerate(prog.calls):
        for j, nbytes in enumerate(kernels[symbol_of[call.kernel]].scratch_bytes):
            sname = f"scratch_{i}_{j}"
            prog.tensors[sname] = Tensor(sname, (nbytes,), "uint8", "scratch")
            call.scratch.append(sname)
    plan = plan_program(prog, external_io=options.external_io)
    progress(f"memory plan: arena {plan.arena_bytes} B (live-set lower bound {plan.peak_live_bytes} B)")
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
                                lanes=schedules.family_module(target.family).LANES)
    digest = hashlib.sha256(body.encode() + b"".join(files[k] for k in sorted(files))).hexdigest()[:16]
    files["model.h"] = codegen.emit_model_h(source.name, prog, plan, options.external_io, target.name, digest).encode()
    files["model.c"] = body.encode()
    return Compiled(prog, plan, files, calls, infos, digest)


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
        "arena_lower_bound_bytes": plan.peak_live_bytes,
        "external_io": bool(plan.external),
        "kernels": len(compiled.calls),
        "kernel_functions": len(compiled.kernel_infos),
        "calls": compiled.calls,
    }


def write_build(source: ModelSource, target: Target, out_dir: Path, options: BuildOptions = BuildOptions(),
                progress: Callable[[str], None] = Progress()) -> dict[str, Any]:
    """Compile, write and (for the host) build; atomically replaces `out_dir`."""
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
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"wrote {out_dir}")
    return report


def _replace_dir(new: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
