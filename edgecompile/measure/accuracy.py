"""`edgecompile test`: stream inputs to a device over serial and check what comes back.

Checks, each with a default threshold (a test that cannot fail is no test):

* the reference must depend on its input: over the samples, the fp32 reference outputs must
  differ by at least 10% of their magnitude (`spread`). Random-weight networks that collapse to
  a constant, or a dataset of identical inputs, make every comparison vacuous: the test says so
  and fails, naming the remedy (trained weights with --weights, or a dataset);
* fp32 builds: every output vector within `rtol` x spread of the fp32 reference (PyTorch for zoo
  models, onnxruntime on the build's model.onnx otherwise), and top-1 agreement;
* int8 builds: the device's bytes identical to the same model.c compiled for this machine (the
  integer arithmetic is the same everywhere: any difference is the device's fault); agreement with
  the fp32 reference reported apart, with a default bound in output quantization steps.

The default data are those the model was calibrated on (report.json `quant.calibration`) for int8
builds, random normal inputs for fp32. Timing: the device reports its counter (SysTick cycles on
Cortex-M, nanoseconds on Linux); under QEMU with `-icount` the count converts exactly into
*emulator instruction counts* (deterministic, not cycles); on real Cortex-M hardware it is cycles.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..build_dir import read_build
from ..datasets import Dataset, calibration_inputs, load_dataset
from ..device.protocol import Link
from ..device.session import open_port
from ..errors import DeviceError, EdgeCompileError
from ..ir.frontend import ModelOptions, load_model, run_onnxruntime
from ..platforms import platform_for
from ..targets import Target, load_target

SPREAD_MIN = 0.1        # reference outputs of different inputs must differ by >= 10% of their magnitude
FP32_RTOL = 1e-3        # fp32 builds: |device - reference| <= FP32_RTOL x spread
FP32_MIN_AGREEMENT = 0.99
INT8_MAX_STEPS = 64     # int8 builds: |dequantized device - fp32| <= 64 output quantization steps (a quarter
                        # of the int8 range: random-weight networks reach ~50 on their calibration data)


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
    initializers = {i.name for i in model.graph.initializer}
    in_name = next(i.name for i in model.graph.input if i.name not in initializers)
    return "onnxruntime", lambda x: run_onnxruntime(model, {in_name: x})[0]


@contextlib.contextmanager
def device_link(build: Path, report: dict[str, Any], target: Target, port: str | None,
                timeout: float) -> Iterator[tuple[Link, bool, Callable[[], list[int]]]]:
    """A connected Link; (link, emulated, plugin instruction counts). Without a port, an emulator
    is started and stopped."""
    if port:
        serial_port = open_port(port)
        state = build / "device.json"   # an emulator started by `edgecompile flash`?
        emulated = state.exists() and json.loads(state.read_text()).get("port") == port
        try:
            yield Link(serial_port, timeout=timeout), emulated, lambda: []
        finally:
            serial_port.close()
        return
    with platform_for(target).start_emulator(target, build, report) as session:
        serial_port = session.open_port()
        try:
            yield Link(serial_port, timeout=timeout, alive=session.alive), True, session.instruction_counts
        finally:
            serial_port.close()


def input_data(report: dict[str, Any], dataset: str | None, samples: int) -> Dataset:
    """The inputs of a test: `dataset`, else the calibration data of an int8 build, else random."""
    shape = tuple(report["inputs"][0]["shape"])
    quant = report.get("quant", {})
    if dataset is None:
        dataset = quant.get("calibration", {}).get("data", "random") if quant.get("dtype") == "int8" else "random"
    if dataset.endswith(".npy"):
        if not Path(dataset).is_file():
            raise EdgeCompileError(f"{dataset}: the calibration data of this build is not there; give --dataset")
        images = calibration_inputs(shape, dataset, samples)
        if len(images) < samples:
            raise EdgeCompileError(f"--samples {samples}: {dataset} holds {len(images)} inputs")
        return Dataset(Path(dataset).name, images, None)
    return load_dataset(dataset, shape, "test", samples)


def _quantize(x: np.ndarray, qp: dict[str, Any]) -> np.ndarray:
    return np.clip(np.round(x / qp["scale"]) + qp["zero_point"], -128, 127).astype(np.int8)


def _dequantize(q: np.ndarray, qp: dict[str, Any]) -> np.ndarray:
    return (q.astype(np.float32) - qp["zero_point"]) * np.float32(qp["scale"])


class _Progress:
    """One line that updates (a terminal) or a line every few seconds (a log); every sample with
    `verbose`."""

    def __init__(self, report: Callable[[str], None], total: int, verbose: bool, every: float = 5.0) -> None:
        self.report, self.total, self.verbose, self.every = report, total, verbose, every
        self.t0 = self.last = time.monotonic()

    def __call__(self, done: int, detail: str) -> None:
        now = time.monotonic()
        if self.verbose or done == self.total or now - self.last >= self.every:
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            self.report(f"sample {done}/{self.total} ({rate:.1f}/s){': ' + detail if self.verbose else ''}")


def run_test(build: Path, port: str | None = None, samples: int = 20, dataset: str | None = None,
             min_agreement: float | None = None, max_abs_error: float | None = None, rtol: float | None = None,
             timeout: float = 60.0, targets_dir: str | None = None, progress: Callable[[str], None] = lambda s: None,
             verbose: bool = False) -> dict[str, Any]:
    if samples < 1:
        raise EdgeCompileError(f"--samples must be at least 1, got {samples}")
    report = read_build(build)
    target = load_target(report["target"], targets_dir)
    quant = report.get("quant", {})
    int8 = quant.get("dtype") == "int8"
    out_shape = tuple(report["outputs"][0]["shape"])
    in_dtype, out_dtype = report["inputs"][0]["dtype"], report["outputs"][0]["dtype"]
    data = input_data(report, dataset, samples)
    ref_kind, reference = reference_fn(build, report)
    host_int8 = _host_build(build) if int8 else None
    step = _Progress(progress, len(data.images), verbose)
    rows = []
    with device_link(build, report, target, port, timeout) as (link, emulated, plugin_counts):
        info = link.connect()
        if info.get("model_hash") != report["model_hash"]:
            raise DeviceError(f"the device runs build {info.get('model_hash')}, this directory holds "
                              f"{report['model_hash']}: flash it first")
        for i, x in enumerate(data.images):
            x = x[None].astype(np.float32)
            xin = _quantize(x, quant["input"]) if int8 else x
            res = link.infer(xin, out_shape, in_dtype=in_dtype, out_dtype=out_dtype)
            expected = host_int8.run(xin)[0] if host_int8 is not None else None
            ref = reference(x)
            rows.append((res, ref, expected))
            got = _dequantize(res.output, quant["output"]) if int8 else res.output
            step(i + 1, f"device top-1 {int(got.argmax())}, reference {int(ref.argmax())}, "
                        f"max |diff| {float(np.abs(got - ref).max()):.2e}")
        naks = link.naks
        counts = plugin_counts()
    if host_int8 is not None:
        host_int8.close()
    result = _verdict(report, target, data, rows, ref_kind, min_agreement, max_abs_error, rtol)
    if int8:
        _check_against_kernel_graph(build, report, data, rows, result, progress)
    result.update(_counts(target, rows, emulated, counts, info, port))
    result.update({"build": str(build), "naks": naks, "device_info": info})
    _record(build, report, result)
    return result


def _check_against_kernel_graph(build: Path, report: dict[str, Any], data: Any, rows: list, result: dict[str, Any],
                                progress: Any) -> None:
    """int8: the device's bytes against the compiler's kernel graph on TVM's VM (the same integer
    arithmetic, not our C): a kernel the C gets wrong shows here even when its error hides in the
    quantization noise of the comparison with fp32."""
    from .kernel_graph import int8_graph_runner

    try:
        progress("int8 reference: the build's kernel graph on TVM's VM")
        run = int8_graph_runner(build, report)
    except EdgeCompileError as err:      # e.g. a build of another version: no VM reference
        result["kernel_graph"] = {"unavailable": str(err)}
        return
    quant = report["quant"]
    differing, worst = 0, 0
    for (res, _, _), x in zip(rows, data.images):
        ref = np.asarray(run(_quantize(x[None].astype(np.float32), quant["input"]))).reshape(-1)
        got = np.asarray(res.output).reshape(-1)
        if ref.size != got.size:
            result["kernel_graph"] = {"unavailable": f"its last call has {ref.size} values, the output {got.size}"}
            return
        d = int(np.abs(got.astype(np.int32) - ref.astype(np.int32)).max())
        differing += d > 0
        worst = max(worst, d)
    result["kernel_graph"] = {"samples_differing": differing, "max_difference_steps": worst}
    if differing:
        result["failures"].append(f"{differing} of {len(rows)} outputs differ from the compiler's int8 kernel graph "
                                  f"run by TVM (up to {worst} quantization steps): a kernel of model.c computes "
                                  "wrongly; `edgecompile test --layers` shows which")
        result["passed"] = False


def _host_build(build: Path) -> Any:
    """The build's own model.c and weights compiled for this machine: the int8 bytes a device must
    return (integer arithmetic, the same on every machine)."""
    from ..platforms.host import HostModel

    return HostModel.from_sources(build)


def _verdict(report: dict[str, Any], target: Target, data: Dataset, rows: list, ref_kind: str,
             min_agreement: float | None, max_abs_error: float | None, rtol: float | None) -> dict[str, Any]:
    quant = report.get("quant", {})
    int8 = quant.get("dtype") == "int8"
    n = len(rows)
    raw = np.stack([r.output for r, _, _ in rows]).reshape(n, -1)
    outs = np.stack([_dequantize(r.output, quant["output"]) if int8 else r.output for r, _, _ in rows]).reshape(n, -1)
    refs = np.stack([ref for _, ref, _ in rows]).reshape(n, -1).astype(np.float64)
    spread = float((refs.max(0) - refs.min(0)).max()) if n > 1 else 0.0
    magnitude = float(np.abs(refs).max())
    dev_top1, ref_top1 = outs.argmax(1), refs.argmax(1)
    errors = np.abs(outs - refs)
    result: dict[str, Any] = {
        "model": report["model"], "target": target.name, "reference": ref_kind, "dataset": data.name, "samples": n,
        "quant": quant.get("dtype", "fp32"),
        "reference_spread": spread, "reference_magnitude": magnitude,
        "agreement": float((dev_top1 == ref_top1).mean()),
        "max_abs_error": float(errors.max()),
        "accuracy": None if data.labels is None else float((dev_top1 == data.labels).mean()),
        "host_accuracy": None if data.labels is None else float((ref_top1 == data.labels).mean()),
        "raw_outputs": raw.tolist() if int8 else None,
    }
    failures = []
    if n < 2:
        failures.append("one sample cannot show that the reference depends on its input: use --samples 2 or more")
    elif spread < SPREAD_MIN * magnitude:
        failures.append(f"the reference's outputs do not depend on the input (they differ by at most {spread:.3g} "
                        f"across {n} inputs, magnitude {magnitude:.3g}): a comparison on them proves nothing; use "
                        "trained weights (--weights at build time) or a dataset with distinct inputs (--dataset)")
    if int8:
        expected = np.stack([e for _, _, e in rows]).reshape(n, -1)
        mismatched = int((raw != expected).any(axis=1).sum())
        result["host_int8"] = {"samples_differing": mismatched,
                               "max_difference_steps": int(np.abs(raw.astype(np.int32) - expected.astype(np.int32)).max())}
        if mismatched:
            failures.append(f"{mismatched} of {n} outputs differ from this machine's int8 build of the same model.c "
                            f"(up to {result['host_int8']['max_difference_steps']} quantization steps): the device "
                            "computes wrongly")
        scale = float(quant["output"]["scale"])
        limit = max_abs_error if max_abs_error is not None else INT8_MAX_STEPS * scale
        result["max_abs_error_steps"] = float(errors.max() / scale)
        checks = {"max_abs_error": limit, "min_agreement": min_agreement}
    else:
        rel = rtol if rtol is not None else FP32_RTOL
        limit = max_abs_error if max_abs_error is not None else rel * spread
        checks = {"max_abs_error": limit, "rtol": rel, "min_agreement": FP32_MIN_AGREEMENT if min_agreement is None
                  else min_agreement}
    if result["max_abs_error"] > limit:
        failures.append(f"max |device - reference| {result['max_abs_error']:.3g} exceeds {limit:.3g}")
    if checks["min_agreement"] is not None and result["agreement"] < checks["min_agreement"]:
        failures.append(f"top-1 agreement {result['agreement']:.3f} below {checks['min_agreement']}")
    result["thresholds"] = checks
    result["failures"] = failures
    result["passed"] = not failures
    return result


def _counts(target: Target, rows: list, emulated: bool, plugin_counts: list[int], info: dict[str, Any],
            port: str | None) -> dict[str, Any]:
    ticks = [r.ticks for r, _, _ in rows]
    tick_hz = rows[0][0].tick_hz
    unit = info.get("tick_unit", "cycles")
    shift = target.emulator.icount_shift
    instructions = None
    if emulated and unit == "cycles" and shift is not None:
        per_tick = 1e9 / (tick_hz * 2 ** int(shift))
        instructions = [int(round(t * per_tick)) for t in ticks]
    elif emulated and len(plugin_counts) >= len(rows):
        instructions = plugin_counts[-len(rows):]     # counted by our QEMU plugin
    timing = rows[0][0].timing                    # protocol 2 firmware: counter and core clock
    counter = timing.counter if timing else info.get("counter")
    clock_hz = timing.clock_hz if timing else info.get("clock_hz")
    out = {
        "device": "emulator" if emulated else port,
        "instructions_per_inference": None if instructions is None else int(statistics.median(instructions)),
        "instructions": instructions,
        "counter_unit": ("emulator instructions" if instructions is not None
                         else "ns of emulated wall-clock time (not Pi time)" if emulated and unit == "ns" else unit),
        "counter_per_inference": int(statistics.median(ticks)),
        "counter": counter,                       # dwt, systick, os (None: protocol-1 firmware)
        "clock_hz": clock_hz,                     # the core clock the device says it runs at
        "clock_source": timing.clock_source if timing else info.get("clock_source"),
        "protocol": info.get("protocol", 1),
        "arena_bytes": rows[0][0].arena_bytes,
        "stack_used_bytes": max(r.stack_used_bytes for r, _, _ in rows),
    }
    if not emulated and unit == "cycles" and tick_hz:
        # a real board: DWT CYCCNT (or SysTick) counts core cycles at tick_hz = the clock it runs at
        out["ms_per_inference"] = out["counter_per_inference"] / tick_hz * 1e3
        out["counter_unit"] = "DWT cycles" if counter == "dwt" else "SysTick cycles"
        out["clock_hz"] = clock_hz or tick_hz
    return out


def _record(build: Path, report: dict[str, Any], result: dict[str, Any]) -> None:
    """Add what the device measured to report.json (stack use, arena, counts)."""
    report["stack_bytes"] = result["stack_used_bytes"]
    report["device_measurements"] = {
        k: result.get(k) for k in ("device", "samples", "arena_bytes", "stack_used_bytes", "instructions_per_inference",
                                   "counter_per_inference", "counter_unit", "counter", "clock_hz", "clock_source",
                                   "ms_per_inference", "agreement", "max_abs_error", "accuracy", "passed")
    }
    (build / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def format_result(r: dict[str, Any]) -> str:
    lines = [
        f"{r['model']} ({r['quant']}) on {r['target']} ({r['device']}), {r['samples']} samples of {r['dataset']}, "
        f"reference {r['reference']} (fp32)",
    ]
    if r["quant"] == "int8":
        h = r["host_int8"]
        same = "identical" if not h["samples_differing"] else f"{h['samples_differing']} samples differ"
        lines.append(f"  int8 bytes vs this machine's build of the same C: {same}")
        g = r.get("kernel_graph", {})
        if "unavailable" in g:
            lines.append(f"  int8 bytes vs the kernel graph on TVM's VM: not compared ({g['unavailable']})")
        elif g:
            same = "identical" if not g["samples_differing"] else \
                f"{g['samples_differing']} samples differ, by up to {g['max_difference_steps']} steps"
            lines.append(f"  int8 bytes vs the kernel graph on TVM's VM: {same}")
        lines.append(f"  vs fp32: top-1 agreement {r['agreement']:.3f}, max |device - fp32| {r['max_abs_error']:.3e} "
                     f"({r['max_abs_error_steps']:.1f} output steps)")
    else:
        spread = r["reference_spread"]
        rel = f" ({r['max_abs_error'] / spread:.1e} of the spread)" if spread else ""
        lines.append(f"  top-1 agreement {r['agreement']:.3f}, max |device - reference| {r['max_abs_error']:.3e}{rel}")
    lines.append(f"  reference outputs: spread {r['reference_spread']:.3g} across inputs, magnitude "
                 f"{r['reference_magnitude']:.3g}")
    if r["accuracy"] is not None:
        lines.append(f"  accuracy: device {r['accuracy']:.3f}, host {r['host_accuracy']:.3f}")
    clock = ""
    if r.get("clock_hz"):
        clock = f"core clock {r['clock_hz'] / 1e6:g} MHz ({r['clock_source']})"
    if r["instructions_per_inference"] is not None:
        lines.append(f"  {r['instructions_per_inference']:,} emulator instructions per inference (not cycles; "
                     f"counted by {r.get('counter') or 'systick'} under -icount)")
        if clock:
            lines.append(f"  firmware reports: {clock}")
    elif "ms_per_inference" in r:
        lines.append(f"  {r['ms_per_inference']:.3f} ms per inference on the board = {r['counter_per_inference']:,} "
                     f"{r['counter_unit']} / {r['clock_hz'] or 0:,} Hz" + (f"; {clock}" if clock else ""))
    else:
        lines.append(f"  {r['counter_per_inference']:,} {r['counter_unit']} per inference")
    lines.append(f"  arena {r['arena_bytes']:,} B (device), stack used {r['stack_used_bytes']:,} B")
    lines += [f"  FAIL: {f}" for f in r["failures"]]
    lines.append("PASS" if r["passed"] else "FAIL")
    return "\n".join(lines)
