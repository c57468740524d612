"""The compiler's kernel graph run by TVM's Relax VM: each kernel call's output computed by TVM
from the unscheduled kernels, independent of our schedules and of model.c. The reference of the
per-layer comparison (`layers`) and of an int8 device's bytes (`accuracy`)."""

from __future__ import annotations

import ctypes
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import proc
from ..errors import EdgeCompileError


def _lowered(build: Path, report: dict[str, Any], per_call: bool = True) -> tuple[Any, Any]:
    """The build's kernel graph again, from its model.onnx and recorded options: (module, program).
    Without patches: a patch-based build's bands are the same arithmetic on row ranges (int8: the
    same bytes, tests/test_patches.py), so its output is the whole-tensor graph's; only its calls
    (`per_call`) have no counterpart there."""
    from ..compiler import BuildOptions, _graph
    from ..ir import passes
    from ..ir.frontend import load_model
    from ..ir.program import extract_program
    from ..targets import load_target

    pp = report.get("patch_plan")
    if pp and per_call:       # TVM's VM runs no TIR function on a view with a byte offset (the bands)
        raise EdgeCompileError(f"{build}: per-layer comparison of a patch-based build (the first {pp['layers']} "
                               f"layers in {pp['bands']} bands) is not supported; build with --patches off")
    quant = report.get("quant", {})
    cal = quant.get("calibration", {})
    options = BuildOptions(quant=quant.get("dtype", "fp32"), calibration=cal.get("data", "digits"),
                           calibration_samples=cal.get("samples", 100), calibration_method=cal.get("method", "minmax"),
                           fuse=report.get("fusion", {}).get("fused", True), compile=False)
    source = load_model(str(build / "model.onnx"))
    graph, _ = _graph(source, load_target("host"), options, lambda m: None)
    mod = passes.lower_graph(graph, fuse_dwpw=options.fuse)
    prog = extract_program(mod)
    calls = report["calls"]
    if not per_call:
        if list(prog.tensors[prog.calls[-1].outputs[0]].shape) != calls[-1]["output_shape"]:
            raise EdgeCompileError(f"{build}: the kernel graph rebuilt from model.onnx ends in another shape than "
                                   "the build's: was the build made by another version?")
    elif len(prog.calls) != len(calls) or any(
            list(prog.tensors[c.outputs[0]].shape) != r["output_shape"] for c, r in zip(prog.calls, calls)):
        raise EdgeCompileError(f"{build}: the kernel graph rebuilt from model.onnx differs from the build's "
                               f"({len(prog.calls)} calls vs {len(calls)}): was the build made by another version?")
    return mod, prog


def kernel_graph_outputs(mod: Any, x: np.ndarray) -> list[np.ndarray]:
    """Every kernel call's output of a lowered module on input `x`, by TVM's Relax VM (LLVM)."""
    return kernel_graph_runner(mod)(x)


def int8_graph_runner(build: Path, report: dict[str, Any]) -> Any:
    """The build's int8 output for a quantized input, by its kernel graph on TVM's VM: the
    compiler's own integer arithmetic, independent of model.c (a reference for the device's bytes
    that a wrong kernel in the C cannot share)."""
    mod, _ = _lowered(build, report, per_call=False)
    run = kernel_graph_runner(mod)
    return lambda xq: run(xq)[-1]


_HELPERS_LIB: list[Any] = []


def _load_c_helpers() -> None:
    """The scalar C helpers kernels call by name (schedules.ukernels.HELPERS, e.g. the int8
    saturation), compiled for this machine and loaded into the process's global symbols, where
    TVM's LLVM JIT finds them (it cannot compile model.c's inline definitions)."""
    from ..schedules.ukernels import HELPERS

    if _HELPERS_LIB:
        return
    code = "#include <stdint.h>\n" + "\n".join(c.replace("static inline ", "") for c in HELPERS.values())
    tmp = tempfile.TemporaryDirectory(prefix="ec-helpers-")
    src, lib = Path(tmp.name) / "helpers.c", Path(tmp.name) / "libhelpers.so"
    src.write_text(code)
    proc.run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(lib), str(src)], what="gcc: the kernels' C helpers")
    _HELPERS_LIB.append((tmp, ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)))


def kernel_graph_runner(mod: Any) -> Any:
    """`kernel_graph_outputs` compiled once: a function of the input."""
    import tvm
    from tvm import relax

    main = mod["main"]
    bb = relax.BlockBuilder()
    params = [relax.Var(p.name, p.ty) for p in main.params]
    with bb.function("main", params):
        with bb.dataflow():
            env: dict[Any, Any] = dict(zip(main.params, params))
            outs = []
            for block in main.body.blocks:
                for b in block.bindings:
                    v = bb.emit(_substitute(b.value, env), b.var.name)
                    env[b.var] = v
                    if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir":
                        outs.append(v)
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    new = bb.get()
    for gvar, f in mod.functions.items():
        if gvar.name_hint != "main":
            new[gvar] = f
    _load_c_helpers()
    exe = tvm.compile(new, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())

    def run(x: np.ndarray) -> list[np.ndarray]:
        res = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x)))
        return [r.numpy() if hasattr(r, "numpy") else r[0].numpy() for r in res]

    return run


def _substitute(value: Any, env: dict) -> Any:
    from ..ir.passes import _substitute as substitute

    return substitute(value, env)
