"""Per-kernel comparison (`run --layers`, `test --layers`): where does a build go wrong?

Every kernel call's output is compared with two references computed on the same input:

* the **kernel graph**: the build's own fused kernels before scheduling, run by TVM's Relax VM
  (LLVM, this machine). Same kernel boundaries, layouts and number format as the C — int8 builds
  are compared bit for bit — but none of our schedules, micro-kernels, C code generation, memory
  plan or device: a kernel that differs from it is wrong in what edgecompile generated;
* the **ONNX graph**: every intermediate tensor of the build's model.onnx run by onnxruntime, where
  one equals a kernel's output (matched by value between the two references, which are both
  trusted; fused-away intermediates have no counterpart): the model's own layer outputs.

The first call whose output is beyond tolerance of its references is the culprit.

Our outputs come from a trace build: model.c compiled with -DEC_TRACE makes the executor hand each
call's output to `ec_trace()` — on this machine a ctypes callback, on a device a TRACE frame of
the serial protocol (a debug firmware built on demand; the release firmware is unchanged).
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import proc
from ..errors import EdgeCompileError
from .kernel_graph import _lowered, kernel_graph_outputs

FP32_RTOL = 1e-3          # |ours - reference| <= FP32_RTOL x max |reference| of that tensor
ONNX_MATCH_RTOL = 1e-3    # kernel-graph and onnxruntime tensors are "the same tensor" within this

TRACE_HOOK_C = """/* edgecompile: the host side of EC_TRACE, a callback the caller sets */
#include <stdint.h>
typedef void (*ec_trace_fn)(int call, const void *data, uint32_t bytes);
ec_trace_fn ec_trace_hook;
void ec_trace(int call, const void *data, uint32_t bytes) { if (ec_trace_hook) ec_trace_hook(call, data, bytes); }
"""


@dataclass
class LayerReference:
    """What each kernel call of a build should output for one input."""

    kernel_graph: list[np.ndarray]            # per call, from the unscheduled kernels on TVM's VM
    onnx: list[tuple[str, np.ndarray] | None]  # per call, the model tensor it equals (name, value), if any


def onnx_intermediates(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor of the ONNX graph on input `x`, by onnxruntime."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in model.graph.output}
    for vi in inferred.graph.value_info:
        if vi.name not in known and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            model.graph.output.append(vi)
            known.add(vi.name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    initializers = {i.name for i in model.graph.initializer}
    in_name = next(i.name for i in model.graph.input if i.name not in initializers)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {in_name: x})))


def _as_kernel_layout(t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """An ONNX tensor (NCHW activations) in a kernel output's layout (NHWC), or None if it cannot be."""
    if t.size != int(np.prod(shape)):
        return None
    if t.ndim == 4 and len(shape) == 4 and t.shape == (shape[0], shape[3], shape[1], shape[2]):
        return t.transpose(0, 2, 3, 1)
    return t.reshape(shape)


def match_onnx(kernel_outputs: list[np.ndarray], tensors: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray] | None]:
    """For each kernel output, the ONNX tensor with the same values (both trusted references of
    the same input), preferring the latest one in the graph (after activations)."""
    out: list[tuple[str, np.ndarray] | None] = []
    for k in kernel_outputs:
        if k.dtype != np.float32:
            out.append(None)
            continue
        found = None
        for name, t in tensors.items():
            v = _as_kernel_layout(t, k.shape)
            if v is not None and np.abs(v - k).max() <= ONNX_MATCH_RTOL * (np.abs(k).max() + 1e-12):
                found = (name, v)      # a later tensor (relu after conv) replaces an earlier equal one
        out.append(found)
    return out


def references(build: Path, report: dict[str, Any], x: np.ndarray) -> LayerReference:
    mod, _ = _lowered(build, report)
    quant = report.get("quant", {})
    xin = x
    if quant.get("dtype") == "int8":
        qp = quant["input"]
        xin = np.clip(np.round(x / qp["scale"]) + qp["zero_point"], -128, 127).astype(np.int8)
    graph = kernel_graph_outputs(mod, xin)
    onnx_tensors = onnx_intermediates(build / "model.onnx", x) if quant.get("dtype") != "int8" else {}
    return LayerReference(graph, match_onnx(graph, onnx_tensors) if onnx_tensors else [None] * len(graph))


class HostTrace:
    """The build's model.c compiled for this machine with EC_TRACE: every call's output."""

    def __init__(self, build: Path) -> None:
        from ..platforms.host import WEIGHT_FILES

        self._tmp = tempfile.TemporaryDirectory(prefix="ec-trace-")
        t = Path(self._tmp.name)
        for f in ("model.c", "model.h", *WEIGHT_FILES):
            if (build / f).exists():
                shutil.copy(build / f, t / f)
        (t / "trace_hook.c").write_text(TRACE_HOOK_C)
        weights = "weights.c" if (t / "weights.c").exists() else "weights.S"
        proc.run(["gcc", "-O2", "-DEC_TRACE", "-fPIC", "-shared", "-o", "libtrace.so", "model.c", weights,
                  "trace_hook.c", "-lm"], t, f"gcc: compiling {build}/model.c with EC_TRACE")
        self.lib = ctypes.CDLL(str(t / "libtrace.so"))

    def run(self, x: np.ndarray, out_shape: tuple[int, ...], out_dtype: str) -> tuple[np.ndarray, dict[int, bytes]]:
        traced: dict[int, bytes] = {}
        fn_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)

        def hook(call: int, data: int, nbytes: int) -> None:
            traced[call] = ctypes.string_at(data, nbytes)

        cb = fn_type(hook)
        ctypes.c_void_p.in_dll(self.lib, "ec_trace_hook").value = ctypes.cast(cb, ctypes.c_void_p).value
        x = np.ascontiguousarray(x)
        y = np.zeros(out_shape, dtype=out_dtype)
        rc = self.lib.ec_model_run(x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p))
        ctypes.c_void_p.in_dll(self.lib, "ec_trace_hook").value = None
        if rc != 0:
            raise EdgeCompileError(f"ec_model_run failed at kernel call {rc}")
        return y, traced

    def close(self) -> None:
        self._tmp.cleanup()


def compare(report: dict[str, Any], traced: dict[int, bytes], ref: LayerReference) -> dict[str, Any]:
    """Each call's output against its references; the first call beyond tolerance."""
    int8 = report.get("quant", {}).get("dtype") == "int8"
    rows = []
    first = None
    for i, call in enumerate(report["calls"]):
        expected = ref.kernel_graph[i]
        row: dict[str, Any] = {"index": i, "name": call["name"], "kind": call["kind"], "shape": call["output_shape"]}
        if i not in traced:
            row["status"] = "not traced"
            rows.append(row)
            continue
        ours = np.frombuffer(traced[i], dtype=expected.dtype)
        if ours.size != expected.size:
            row.update(status="wrong size", error=None)
            rows.append(row)
            first = first if first is not None else i
            continue
        ours = ours.reshape(expected.shape)
        err = float(np.abs(ours.astype(np.float64) - expected.astype(np.float64)).max())
        tol = 0.0 if int8 or expected.dtype.kind in "iu" else FP32_RTOL * float(np.abs(expected).max())
        row.update(error=err, tolerance=tol, ok=err <= tol)
        onnx_match = ref.onnx[i]
        if onnx_match is not None:
            name, value = onnx_match
            row["onnx_tensor"] = name
            row["onnx_error"] = float(np.abs(ours.astype(np.float64) - value).max())
            row["onnx_ok"] = row["onnx_error"] <= FP32_RTOL * float(np.abs(value).max())
            row["ok"] = row["ok"] and row["onnx_ok"]
        row["status"] = "ok" if row["ok"] else "DIVERGES"
        if not row["ok"] and first is None:
            first = i
        rows.append(row)
    return {"calls": rows, "first_divergence": first, "traced": len(traced), "number_format": "int8" if int8 else "fp32"}


def format_layers(result: dict[str, Any]) -> str:
    lines = [f"{'#':>3} {'kernel':46} {'shape':>16} {'max |error|':>12} {'tolerance':>10}  onnx tensor"]
    for r in result["calls"]:
        shape = "x".join(str(d) for d in r["shape"])
        err = "-" if r.get("error") is None else f"{r['error']:.3g}"
        tol = "-" if r.get("tolerance") is None else f"{r['tolerance']:.3g}"
        onnx_name = r.get("onnx_tensor", "")
        if onnx_name:
            onnx_name = f"{onnx_name[-40:]} ({r['onnx_error']:.3g})"
        lines.append(f"{r['index']:>3} {r['name'][:46]:46} {shape:>16} {err:>12} {tol:>10}  {onnx_name}"
                     + ("   <-- DIVERGES" if r["status"] == "DIVERGES" else "" if r["status"] == "ok" else
                        f"   ({r['status']})"))
    first = result["first_divergence"]
    lines.append("every kernel matches its references" if first is None else
                 f"first kernel beyond tolerance: call {first} ({result['calls'][first]['name']}), "
                 f"max |error| {result['calls'][first].get('error')}")
    return "\n".join(lines)


TRACE_DIR = "debug-trace"     # the debug (EC_TRACE) variant of a device build, inside the build directory


def trace_build(build: Path, report: dict[str, Any], target: Any, progress: Any = lambda m: None) -> Path:
    """The debug firmware of a device build (model.c and the device loop compiled with -DEC_TRACE),
    as a build directory of its own inside `build` (flash it like any build to trace a real
    device). Made again only when the build changed."""
    import json

    from ..build_dir import mark_build, read_build, write_atomically
    from ..platforms import platform_for

    out = build / TRACE_DIR
    if (out / "report.json").is_file() and read_build(out).get("model_hash") == report["model_hash"]:
        return out
    platform = platform_for(target)
    if not platform.has_device:
        raise EdgeCompileError(f"{build}: {target.name} builds run on this machine; use `edgecompile run --layers`")

    def fill(tmp: Path) -> None:
        from ..platforms.host import WEIGHT_FILES

        for f in ("model.c", "model.h", "model.onnx", *WEIGHT_FILES):
            if (build / f).exists():
                shutil.copy(build / f, tmp / f)
        weights = "weights.c" if (tmp / "weights.c").exists() else "weights.S"
        progress(f"building the debug (EC_TRACE) firmware into {out}")
        debug = {**report, "firmware": platform.build(tmp, target, report, weights, progress, ("-DEC_TRACE",)),
                 "debug": "EC_TRACE: every kernel call's output is sent as a TRACE frame"}
        (tmp / "report.json").write_text(json.dumps(debug, indent=2) + "\n")
        mark_build(tmp, {"model": report["model"], "target": target.name, "variant": "trace"})

    write_atomically(out, fill)
    return out


def device_trace(build: Path, report: dict[str, Any], target: Any, x: np.ndarray, port: str | None,
                 timeout: float, progress: Any = lambda m: None) -> tuple[np.ndarray, dict[int, bytes]]:
    """Run one inference on the debug firmware (its emulator, or the device at `port` that was
    flashed with it) and return the output and every call's traced output."""
    from ..build_dir import read_build
    from .accuracy import device_link

    trace_dir = trace_build(build, report, target, progress)
    debug = read_build(trace_dir)
    largest = max(c["arena_size"] for c in report["calls"])
    inp, out = report["inputs"][0], report["outputs"][0]
    with device_link(trace_dir, debug, target, port, timeout) as (link, _, _):
        link.connect()
        link.decoder.max_payload = max(link.decoder.max_payload, largest + 64)
        res = link.infer(x, tuple(out["shape"]), in_dtype=inp["dtype"], out_dtype=out["dtype"])
        if not link.traced:
            raise EdgeCompileError(f"the device sent no TRACE frames: flash the debug firmware first "
                                   f"(edgecompile flash {trace_dir} ...)")
        return res.output, dict(link.traced)


def device_layers(build: Path, report: dict[str, Any], target: Any, x: np.ndarray, port: str | None, timeout: float,
                progress: Any = lambda m: None) -> dict[str, Any]:
    """`test --layers`: one input through the device's debug firmware, every call compared."""
    quant = report.get("quant", {})
    xin = x
    if quant.get("dtype") == "int8":
        qp = quant["input"]
        xin = np.clip(np.round(x / qp["scale"]) + qp["zero_point"], -128, 127).astype(np.int8)
    _, traced = device_trace(build, report, target, xin, port, timeout, progress)
    progress("computing the references (kernel graph on TVM's VM, ONNX graph on onnxruntime)")
    return compare(report, traced, references(build, report, x))
