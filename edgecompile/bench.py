"""`edgecompile bench`: latency of the generated C next to peer runtimes, in one process run,
on the same input, one thread each, median of N runs after warm-up. Reported as ratios; no
performance claim lives anywhere else."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import numpy as np

from .errors import EdgeCompileError
from .frontend import ModelSource, run_onnxruntime  # noqa: F401 - re-exported for peers
from .hostrun import HostModel


def _time(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "min_ms": samples[0],
        "p90_ms": samples[int(0.9 * (len(samples) - 1))],
        "runs": runs,
    }


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


PEERS: dict[str, Callable[[ModelSource, np.ndarray], Callable[[], Any]]] = {
    "onnxruntime": _peer_onnxruntime,
    "torch": _peer_torch,
}


def bench(source: ModelSource, build_dir: str, against: list[str], runs: int = 50, warmup: int = 10,
          seed: int = 0) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    unknown = [p for p in against if p not in PEERS]
    if unknown:
        raise EdgeCompileError(f"unknown peer(s) {', '.join(unknown)}; available: {', '.join(PEERS)}")
    x = np.random.default_rng(seed).standard_normal(source.inputs[0].shape).astype(np.float32)
    model = HostModel(build_dir)
    ours = model.run(x)[0]
    results: dict[str, Any] = {"edgecompile": _time(lambda: model.run(x), runs, warmup)}
    for peer in against:
        fn = PEERS[peer](source, x)
        out = fn()
        ref = np.asarray(out[0] if isinstance(out, (list, tuple)) else out.detach().numpy())
        results[peer] = _time(fn, runs, warmup)
        results[peer]["max_abs_diff_vs_edgecompile"] = float(np.abs(ref.reshape(ours.shape) - ours).max())
    fastest = min(r["median_ms"] for r in results.values())
    for r in results.values():
        r["ratio_to_fastest"] = r["median_ms"] / fastest
    ec = results["edgecompile"]["median_ms"]
    for name, r in results.items():
        r["speedup_of_edgecompile"] = r["median_ms"] / ec
    model.close()
    return {"model": source.name, "options": source.options, "target": model.report["target"],
            "threads": 1, "results": results}


def format_bench(res: dict[str, Any]) -> str:
    lines = [f"{res['model']} on {res['target']} (1 thread, median of {res['results']['edgecompile']['runs']} runs)",
             f"{'runtime':14} {'median ms':>10} {'min ms':>9} {'p90 ms':>9} {'x fastest':>10} {'ours faster by':>15}"]
    for name, r in sorted(res["results"].items(), key=lambda kv: kv[1]["median_ms"]):
        lines.append(f"{name:14} {r['median_ms']:>10.3f} {r['min_ms']:>9.3f} {r['p90_ms']:>9.3f} "
                     f"{r['ratio_to_fastest']:>10.2f} {r['speedup_of_edgecompile']:>14.2f}x")
    return "\n".join(lines)
