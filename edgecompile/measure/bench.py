"""`edgecompile bench`: latency of the generated C next to peer runtimes, in one process run,
on the same input, one thread each, median of N runs after warm-up. Reported as ratios; no
performance claim lives anywhere else."""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import Any, Callable

import numpy as np

from .. import proc
from ..errors import EdgeCompileError
from ..ir.frontend import ModelSource, to_relax
from ..platforms.host import HostModel


def _stats(samples: list[float], runs: int) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_ms": statistics.median(samples),
        "min_ms": samples[0],
        "p90_ms": samples[int(0.9 * (len(samples) - 1))],
        "runs": runs,
    }


def _time_interleaved(fns: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """Each runtime's `warmup` calls, then `runs` rounds of one timed call of every runtime in turn
    (wall clock per call): on a shared machine whose speed drifts over seconds (other VMs' jobs),
    back-to-back blocks per runtime put the drift into the ratio: MobileNet V2 1.0/224 timed so
    measured ours / LiteRT at 1.64x in one run and 0.93x in the next, a few minutes apart.
    Each round takes the runtimes in an order of its own (seeded shuffle), so that each follows
    every other about equally often: in a fixed order each always ran right after the same one,
    whose traces in the caches and branch predictors it paid for."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(runs):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter_ns()
            fns[name]()
            samples[name].append((time.perf_counter_ns() - t0) / 1e6)
    return {name: _stats(s, runs) for name, s in samples.items()}


def _peer_onnxruntime(source: ModelSource, x: np.ndarray) -> Callable[[], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(source.onnx_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {source.inputs[0].name: x}
    return lambda: sess.run(None, feed)


def _peer_torch(source: ModelSource, x: np.ndarray) -> Callable[[], Any]:
    import torch

    if source.torch_module is None:
        raise EdgeCompileError("torch: only for zoo models and nn.Module factories")
    torch.set_num_threads(1)
    t = torch.from_numpy(x)

    def run() -> Any:
        with torch.no_grad():
            return source.torch_module(t)

    return run


def _peer_tvm_vm(source: ModelSource, x: np.ndarray) -> Callable[[], Any]:
    """The same ONNX through TVM's stock Relax pipeline and VM (LLVM for this CPU, untuned)."""
    import tvm
    from tvm import relax

    mod = to_relax(source)
    host = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    exe = tvm.compile(mod, target=host)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    inp = tvm.runtime.tensor(x)

    return lambda: vm["main"](inp)


def _need(module: str, peer: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgeCompileError(f"{peer}: the optional package '{module}' is not installed; "
                               "benchmarks/run.sh installs the benchmark extras into .venv-bench") from None


_CONVERT = """
import sys, torch, litert_torch
ep = torch.export.load(sys.argv[1])
sample = (torch.zeros([int(d) for d in sys.argv[3].split(",")]),)
litert_torch.convert(ep.module(), sample).export(sys.argv[2])
"""


def _to_tflite(source: ModelSource) -> bytes:
    """Float TFLite flatbuffer of a PyTorch model, converted by litert-torch: in this process if
    it is installed here, else by the Python named in $EDGECOMPILE_LITERT_PYTHON (litert-torch
    cannot share an environment with TVM), handed the model as a torch.export program."""
    import importlib.util
    import tempfile

    if source.torch_module is None:
        raise EdgeCompileError("litert/tflm: conversion to TFLite needs the PyTorch module (zoo or nn.Module)")
    import torch

    shape = list(source.inputs[0].shape)
    sample = (torch.zeros(shape),)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.tflite")
        if importlib.util.find_spec("litert_torch") is not None:
            import litert_torch

            litert_torch.convert(source.torch_module.eval(), sample).export(path)
        else:
            python = os.environ.get("EDGECOMPILE_LITERT_PYTHON")
            if not python:
                raise EdgeCompileError("litert/tflm: no TFLite converter: install litert-torch, or set "
                                       "EDGECOMPILE_LITERT_PYTHON to a Python that has it (benchmarks/run.sh does)")
            ep_path = os.path.join(tmp, "m.pt2")
            torch.export.save(torch.export.export(source.torch_module.eval(), sample), ep_path)
            proc.run([python, "-c", _CONVERT, ep_path, path, ",".join(map(str, shape))], what="litert-torch conversion",
                     error=EdgeCompileError)
        with open(path, "rb") as f:
            return f.read()


def _peer_litert(source: ModelSource, x: np.ndarray) -> Callable[[], Any]:
    """TFLite (ai-edge-litert) with its default XNNPACK delegate, one thread. The model is NCHW
    as exported; litert-torch converts it to the NHWC ops TFLite runs."""
    interp_mod = _need("ai_edge_litert.interpreter", "litert")
    interp = interp_mod.Interpreter(model_content=_to_tflite(source), num_threads=1)
    interp.allocate_tensors()
    i_idx = interp.get_input_details()[0]["index"]
    o_idx = interp.get_output_details()[0]["index"]

    def run() -> Any:
        interp.set_tensor(i_idx, x)
        interp.invoke()
        return interp.get_tensor(o_idx)

    return run


def _peer_tflm(source: ModelSource, x: np.ndarray) -> Callable[[], Any]:
    """TensorFlow Lite Micro's host interpreter (reference kernels: what runs on an MCU without
    CMSIS-NN), float model."""
    runtime = _need("tflite_micro.python.tflite_micro.runtime", "tflm")
    interp = runtime.Interpreter.from_bytes(_to_tflite(source), arena_size=64 << 20)

    def run() -> Any:
        interp.set_input(x, 0)
        interp.invoke()
        return interp.get_output(0)

    return run


def _peer_executorch(source: ModelSource, x: np.ndarray) -> Callable[[], Any]:
    """ExecuTorch with the XNNPACK backend (exported with torch.export, lowered, run by the
    portable runtime's Python bindings)."""
    _need("executorch", "executorch")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    if source.torch_module is None:
        raise EdgeCompileError("executorch: needs the PyTorch module (zoo or nn.Module)")
    from executorch.extension.pybindings import portable_lib

    # XNNPACK's thread pool defaults to every core: one thread, like every other runtime here
    portable_lib._unsafe_reset_threadpool(1)
    if portable_lib._threadpool_get_thread_count() != 1:
        raise EdgeCompileError("executorch: could not limit its thread pool to one thread")
    sample = (torch.from_numpy(x),)
    program = to_edge_transform_and_lower(torch.export.export(source.torch_module.eval(), sample),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    t = torch.from_numpy(x)
    return lambda: method.execute([t])


PEERS: dict[str, Callable[[ModelSource, np.ndarray], Callable[[], Any]]] = {
    "onnxruntime": _peer_onnxruntime,
    "torch": _peer_torch,
    "tvm-vm": _peer_tvm_vm,
    "litert": _peer_litert,
    "tflm": _peer_tflm,
    "executorch": _peer_executorch,
}


OPTIONAL = {"litert": ("ai_edge_litert",), "tflm": ("tflite_micro",),
            "executorch": ("executorch",)}


def check_peers(against: list[str]) -> None:
    """Fail before any work when a peer is unknown or its optional packages are missing."""
    import importlib.util

    unknown = [p for p in against if p not in PEERS]
    if unknown:
        raise EdgeCompileError(f"unknown peer(s) {', '.join(unknown)}; available: {', '.join(PEERS)}")
    for peer in against:
        missing = [m for m in OPTIONAL.get(peer, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise EdgeCompileError(f"{peer}: optional package(s) {', '.join(missing)} not installed; "
                                   "benchmarks/run.sh installs the benchmark extras into .venv-bench")


def _as_array(out: Any) -> np.ndarray:
    if not isinstance(out, np.ndarray) and not hasattr(out, "numpy") and hasattr(out, "__getitem__"):
        out = out[0]      # list / tuple / TVM array of outputs
    if hasattr(out, "detach"):
        out = out.detach()
    if hasattr(out, "numpy") and not isinstance(out, np.ndarray):
        out = out.numpy()
    return np.asarray(out)


def bench(source: ModelSource, build_dir: str, against: list[str], runs: int = 50, warmup: int = 10,
          seed: int = 0, variants: dict[str, str] | None = None) -> dict[str, Any]:
    """Time our build in `build_dir` and each peer; `variants` = other builds of ours to time
    alongside (name -> build directory, e.g. the untuned build)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    check_peers(against)
    x = np.random.default_rng(seed).standard_normal(source.inputs[0].shape).astype(np.float32)
    model = HostModel(build_dir)
    ours = model.run(x)[0]
    fns: dict[str, Callable[[], Any]] = {"edgecompile": lambda: model.run(x)}
    diffs: dict[str, float] = {}
    others = []
    for vname, vdir in (variants or {}).items():
        vm = HostModel(vdir)
        others.append(vm)
        fns[vname] = lambda vm=vm: vm.run(x)
        diffs[vname] = float(np.abs(vm.run(x)[0] - ours).max())
    failed: dict[str, str] = {}
    for peer in against:
        try:
            fn = PEERS[peer](source, x)
            out = fn()
        except Exception as err:  # noqa: BLE001 - a peer that cannot run this model is reported, not fatal
            failed[peer] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}"
            continue
        fns[peer] = fn
        diffs[peer] = float(np.abs(_as_array(out).reshape(ours.shape) - ours).max())
    results: dict[str, Any] = _time_interleaved(fns, runs, warmup)
    for name, d in diffs.items():
        results[name]["max_abs_diff_vs_edgecompile"] = d
    fastest = min(r["median_ms"] for r in results.values())
    for r in results.values():
        r["ratio_to_fastest"] = r["median_ms"] / fastest
    ec = results["edgecompile"]["median_ms"]
    for name, r in results.items():
        r["speedup_of_edgecompile"] = r["median_ms"] / ec
    model.close()
    for vm in others:
        vm.close()
    return {"model": source.name, "options": source.options, "target": model.report["target"],
            "threads": 1, "results": results, "failed": failed}


def format_bench(res: dict[str, Any]) -> str:
    lines = [f"{res['model']} on {res['target']} (1 thread, median of {res['results']['edgecompile']['runs']} runs)",
             f"{'runtime':14} {'median ms':>10} {'min ms':>9} {'p90 ms':>9} {'x fastest':>10} {'ours faster by':>15}"]
    for name, r in sorted(res["results"].items(), key=lambda kv: kv[1]["median_ms"]):
        lines.append(f"{name:14} {r['median_ms']:>10.3f} {r['min_ms']:>9.3f} {r['p90_ms']:>9.3f} "
                     f"{r['ratio_to_fastest']:>10.2f} {r['speedup_of_edgecompile']:>14.2f}x")
    for name, why in res.get("failed", {}).items():
        lines.append(f"{name:14} failed on this model: {why}")
    return "\n".join(lines)
