"""`edgecompile test`: stream inputs to a device over serial, compare with the host reference.

The reference is PyTorch for zoo models (rebuilt from the options recorded in report.json) and
onnxruntime on the build's `model.onnx` otherwise. Timing: the device reports its counter
(SysTick cycles on Cortex-M, nanoseconds on Linux). Under QEMU with `-icount` the cycle counter
converts exactly into *emulator instruction counts* (deterministic, not cycles), which is what
`instructions_per_inference` holds; on real Cortex-M hardware it is cycles.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..build_dir import read_build
from ..datasets import load_dataset
from ..device.protocol import Link
from ..device.session import open_port
from ..errors import DeviceError
from ..ir.frontend import ModelOptions, load_model, run_onnxruntime
from ..platforms import platform_for
from ..targets import Target, load_target


def reference_fn(build: Path, report: dict[str, Any]) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    from edgecompile.models import ZOO

    name = report["model"]
    opts = dict(report.get("model_options", {}))
    if name in ZOO:
        if "input_shape" in opts:
            opts["input_shape"] = tuple(opts["input_shape"])
        source = load_model(name, ModelOptions(**opts))
        return "pytorch", lambda x: source.reference(x)[0]
    import onnx

    model = onnx.load(str(build / "model.onnx"))
    in_name = report["inputs"][0]["name"]
    return "onnxruntime", lambda x: run_onnxruntime(model, {in_name: x})[0]


@contextlib.contextmanager
def device_link(build: Path, report: dict[str, Any], target: Target, port: str | None,
                timeout: float) -> Iterator[tuple[Link, bool]]:
    """A connected Link; (link, emulated). Without a port, an emulator is started and stopped."""
    if port:
        serial_port = open_port(port)
        state = build / "device.json"   # an emulator started by `edgecompile flash`?
        emulated = state.exists() and json.loads(state.read_text()).get("port") == port
        try:
            yield Link(serial_port, timeout=timeout), emulated
        finally:
            serial_port.close()
        return
    with platform_for(target).start_emulator(target, build, report) as session:
        serial_port = session.open_port()
        try:
            link = Link(serial_port, timeout=timeout, alive=session.alive)
            link.instruction_counts = session.instruction_counts   # type: ignore[attr-defined]
            yield link, True
        finally:
            serial_port.close()


def run_test(build: Path, port: str | None = None, samples: int = 20, dataset: str = "random",
             min_agreement: float = 0.99, max_abs_error: float | None = None, timeout: float = 60.0,
             targets_dir: str | None = None, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    report = read_build(build)
    target = load_target(report["target"], targets_dir)
    in_shape = tuple(report["inputs"][0]["shape"])
    out_shape = tuple(report["outputs"][0]["shape"])
    data = load_dataset(dataset, in_shape, "test", samples)
    ref_kind, reference = reference_fn(build, report)
    rows = []
    with device_link(build, report, target, port, timeout) as (link, emulated):
        info = link.connect()
        if info.get("model_hash") != report["model_hash"]:
            raise DeviceError(f"the device runs build {info.get('model_hash')}, this directory holds "
                              f"{report['model_hash']}: flash it first")
        quant = report.get("quant", {})
        in_dtype, out_dtype = report["inputs"][0]["dtype"], report["outputs"][0]["dtype"]
        raw_outputs = []
        for i, x in enumerate(data.images):
            x = x[None].astype(np.float32)
            xin = _quantize(x, quant["input"]) if quant.get("dtype") == "int8" else x
            res = link.infer(xin, out_shape, in_dtype=in_dtype, out_dtype=out_dtype)
            raw_outputs.append(res.output)
            if quant.get("dtype") == "int8":
                res.output = _dequantize(res.output, quant["output"])
            ref = reference(x)
            rows.append((res, ref))
            progress(f"sample {i + 1}/{len(data.images)}: device top-1 {int(res.output.argmax())}, "
                     f"host {int(ref.argmax())}, max |diff| {float(np.abs(res.output - ref).max()):.2e}")
        naks = link.naks
        plugin_counts = link.instruction_counts() if hasattr(link, "instruction_counts") else []
    outs = np.stack([r.output for r, _ in rows])
    refs = np.stack([f for _, f in rows])
    dev_top1 = outs.reshape(len(rows), -1).argmax(1)
    ref_top1 = refs.reshape(len(rows), -1).argmax(1)
    ticks = [r.ticks for r, _ in rows]
    tick_hz = rows[0][0].tick_hz
    unit = info.get("tick_unit", "cycles")
    instructions = None
    shift = target.emulator.icount_shift
    if emulated and unit == "cycles" and shift is not None:
        per_tick = 1e9 / (tick_hz * 2 ** int(shift))
        instructions = [int(round(t * per_tick)) for t in ticks]
    elif emulated and len(plugin_counts) >= len(rows):
        instructions = plugin_counts[-len(rows):]     # counted by our QEMU plugin
    result = {
        "build": str(build),
        "model": report["model"],
        "target": target.name,
        "device": "emulator" if emulated else port,
        "reference": ref_kind,
        "dataset": data.name,
        "samples": len(rows),
        "agreement": float((dev_top1 == ref_top1).mean()),
        "max_abs_error": float(np.abs(outs - refs).max()),
        "accuracy": None if data.labels is None else float((dev_top1 == data.labels).mean()),
        "host_accuracy": None if data.labels is None else float((ref_top1 == data.labels).mean()),
        "instructions_per_inference": None if instructions is None else int(statistics.median(instructions)),
        "instructions": instructions,
        "counter_unit": ("emulator instructions" if instructions is not None
                         else "ns of emulated wall-clock time (not Pi time)" if emulated and unit == "ns" else unit),
        "counter_per_inference": int(statistics.median(ticks)),
        "arena_bytes": rows[0][0].arena_bytes,
        "stack_used_bytes": max(r.stack_used_bytes for r, _ in rows),
        "naks": naks,
        "device_info": info,
        "quant": quant.get("dtype", "fp32"),
        "raw_outputs": [o.reshape(-1).tolist() for o in raw_outputs] if quant.get("dtype") == "int8" else None,
    }
    checks = [result["agreement"] >= min_agreement]
    if max_abs_error is not None:
        checks.append(result["max_abs_error"] <= max_abs_error)
    result["passed"] = all(checks)
    result["thresholds"] = {"min_agreement": min_agreement, "max_abs_error": max_abs_error}
    _record(build, report, result)
    return result


def _quantize(x: np.ndarray, qp: dict[str, Any]) -> np.ndarray:
    return np.clip(np.round(x / qp["scale"]) + qp["zero_point"], -128, 127).astype(np.int8)


def _dequantize(q: np.ndarray, qp: dict[str, Any]) -> np.ndarray:
    return (q.astype(np.float32) - qp["zero_point"]) * np.float32(qp["scale"])


def _record(build: Path, report: dict[str, Any], result: dict[str, Any]) -> None:
    """Add what the device measured to report.json (stack use, arena, counts)."""
    report["stack_bytes"] = result["stack_used_bytes"]
    report["device_measurements"] = {
        k: result[k] for k in ("device", "samples", "arena_bytes", "stack_used_bytes", "instructions_per_inference",
                               "counter_per_inference", "counter_unit", "agreement", "max_abs_error", "accuracy")
    }
    (build / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def format_result(r: dict[str, Any]) -> str:
    lines = [
        f"{r['model']} ({r['quant']}) on {r['target']} ({r['device']}), {r['samples']} samples of {r['dataset']}, "
        f"reference {r['reference']} (fp32)",
        f"  top-1 agreement with host: {r['agreement']:.3f}   max |device - host|: {r['max_abs_error']:.3e}",
    ]
    if r["accuracy"] is not None:
        lines.append(f"  accuracy: device {r['accuracy']:.3f}, host {r['host_accuracy']:.3f}")
    if r["instructions_per_inference"] is not None:
        lines.append(f"  {r['instructions_per_inference']:,} emulator instructions per inference (not cycles)")
    else:
        lines.append(f"  {r['counter_per_inference']:,} {r['counter_unit']} per inference")
    lines.append(f"  arena {r['arena_bytes']:,} B (device), stack used {r['stack_used_bytes']:,} B")
    lines.append("PASS" if r["passed"] else f"FAIL (thresholds {r['thresholds']})")
    return "\n".join(lines)
