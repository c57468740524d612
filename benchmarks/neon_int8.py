"""int8 against fp32 on the emulated Raspberry Pi 4 (qemu-aarch64 -cpu cortex-a72): instructions per
inference of this tree's rpi4 builds next to a baseline revision's (default: main), in the same run,
and where each int8 build spends them by kernel kind (issue 14: NEON int8 kernels).

    .venv/bin/python benchmarks/neon_int8.py [--baseline main] [--samples 3] [--out benchmarks/NEON_INT8.md]
                                             [--tflite-json DIR]

The baseline is the revision's tree (`git archive`) in a temporary directory, imported ahead of this
tree's package by a child process of this script (same interpreter, same machine, same run).
Counts: our QEMU plugin's emulator instructions per inference (`edgecompile test` on the digits set;
the per-kernel split from `edgecompile report`). Emulator instructions, NOT cycles, and nothing about
the time on a real Pi.

TFLite beside them: benchmarks/arm_xnnpack.py's counts of the same networks (10 classes) in fp32 and
int8 under the same emulator, read from --tflite-json (its --out-dir; default
benchmarks/arm_xnnpack_c10, made by `--models mobilenet_v1_0.25_96,mobilenet_v2_0.35_96 --quant
fp32,int8 --num-classes 10 --out-dir benchmarks/arm_xnnpack_c10`): how many
instructions XNNPACK's own int8 takes against its fp32 on a core without `sdot`. Rows it has not
measured are left out of that table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

NETWORKS = [
    ("MobileNet V1 0.25 / 96", "mobilenet_v1", dict(width_mult=0.25, resolution=96, num_classes=10)),
    ("MobileNet V2 0.35 / 96", "mobilenet_v2", dict(width_mult=0.35, resolution=96, num_classes=10)),
]


# benchmarks/arm_xnnpack.py's JSON key of each network (10 classes), without the _int8 suffix
TFLITE_KEYS = ["mobilenet_v1_0.25_96_c10", "mobilenet_v2_0.35_96_c10"]


def tflite_counts(directory: Path) -> list[dict[str, int] | None]:
    """{"xnnpack fp32": n, "xnnpack int8": n, "builtin fp32": n, "builtin int8": n} per network, or
    None where arm_xnnpack.py has not measured both precisions."""
    out: list[dict[str, int] | None] = []
    for key in TFLITE_KEYS:
        row: dict[str, int] = {}
        for quant, suffix in (("fp32", ""), ("int8", "_int8")):
            path = directory / f"{key}{suffix}.json"
            data = json.loads(path.read_text()) if path.exists() else {}
            for resolver in ("xnnpack", "builtin"):
                n = data.get(f"tflite_{resolver}_instructions_per_inference")
                if n:
                    row[f"{resolver} {quant}"] = int(n)
        out.append(row if len(row) == 4 else None)
    return out


def mac_floor(model_onnx: Path) -> dict[str, float]:
    """A lower bound on the int8 instructions of a network on a NEON core without `sdot` (the A72),
    computed from its ONNX graph, not measured: only the instructions that multiply, each doing as
    many as the widest exact form allows, and nothing else (no load, store, add, narrowing, loop or
    padding). Depthwise convolutions (no reduction over channels, so no lanes to pair): 8 products
    per `smlal`+`smlal2` on 16-bit lanes, 4 per instruction, as `fmla` on 4 floats. Every other
    convolution and dense layer, whatever its reduction: 16 products per `smull`+`smlal2`+`sadalp`
    (two int8 x int8 products summed exactly in 16 bits, then pairwise into int32): 16 / 3 per
    instruction. And each output's int32 sum multiplied by its channel's rescale factor (every
    convolution's output is int8 in the quantized graph, the depthwise ones inside a fused kernel
    too): one vector multiply per 4 outputs (4 int32 lanes). {"depthwise_macs", "other_macs",
    "outputs", "instructions"}."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(model_onnx)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    dw = other = outputs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]              # [out, in / groups, kh, kw]
            out = shapes[node.output[0]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            macs = out[1] * out[2] * out[3] * w[1] * w[2] * w[3]
            outputs += out[1] * out[2] * out[3]
            if group > 1 and group == out[1] and w[1] == 1:
                dw += macs
            else:
                other += macs
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights.get(node.input[1])
            if w is not None:
                other += w[0] * w[1]
                outputs += min(w)
    return {"depthwise_macs": dw, "other_macs": other, "outputs": outputs,
            "instructions": dw / 4 + other * 3 / 16 + outputs / 4}


def measure(index: int, samples: int) -> dict[str, Any]:
    """Build network `index` for rpi4 in int8 and fp32 with the `edgecompile` package on sys.path,
    run `test` on the emulated Pi and profile the int8 build per kernel."""
    from edgecompile.compiler import BuildOptions, Progress, write_build
    from edgecompile.ir.frontend import ModelOptions, load_model
    from edgecompile.measure.accuracy import run_test
    from edgecompile.measure.report import collect, measure as profile
    from edgecompile.targets import load_target

    _, name, opts = NETWORKS[index]
    source = load_model(name, ModelOptions(**opts))
    target = load_target("rpi4")
    row: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quant in ("int8", "fp32"):
            out = Path(tmp) / quant
            rep = write_build(source, target, out, BuildOptions(quant=quant), Progress(quiet=True))
            res = run_test(out, samples=samples, dataset="digits")
            row[quant] = res["instructions_per_inference"]
            if quant == "fp32":
                row["int8_mac_floor"] = mac_floor(out / "model.onnx")
            if quant == "int8":
                row["int8_identical_to_host_compile"] = res["host_int8"]["samples_differing"] == 0
                prof, _ = profile(out, target, rep)
                by_kind: dict[str, int] = {}
                for call in collect(out, prof)["calls"]:
                    by_kind[call["kind"]] = by_kind.get(call["kind"], 0) + int(call.get("instructions", 0))
                row["int8_by_kind"] = by_kind
    return row


def measure_baseline(rev: str, samples: int) -> list[dict[str, Any]]:
    """The same measurement on revision `rev` of this repository, in a child process."""
    from edgecompile import proc

    from baseline_tree import baseline_tree

    rows = []
    with baseline_tree(rev) as (tree, env):
        for i in range(len(NETWORKS)):
            out = proc.run([sys.executable, str(Path(__file__).resolve()), "--measure", str(i), "--samples", str(samples)],
                           cwd=tree, env=env, what=f"the {rev} builds of {NETWORKS[i][0]}", timeout=3600)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{rev}: {json.dumps(rows[-1])}", flush=True)
    return rows


def _m(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e6:.2f} M"


def table(rows: list[tuple[dict[str, Any], dict[str, Any]]], rev: str,
          tflite: list[dict[str, int] | None] | None = None) -> list[str]:
    lines = ["# int8 vs fp32 on the emulated Raspberry Pi 4 (NEON int8 kernels)", "",
             f"Emulator instructions per inference (QEMU plugin under `qemu-aarch64 -cpu cortex-a72`; NOT cycles), "
             f"median over the digits samples; before = `{rev}`, after = this tree, measured in the same run. "
             "Aim (issue 14): int8 <= 0.5x fp32 (from XNNPACK's times on a real Pi 4: int8 0.40x fp32).", "",
             "| network | int8 before | int8 after | fp32 before | fp32 after | int8/fp32 before | int8/fp32 after | "
             "int8 after vs before |",
             "|---|---|---|---|---|---|---|---|"]
    for (label, _, _), (b, a) in zip(NETWORKS, rows):
        lines.append(f"| {label} | {_m(b['int8'])} | {_m(a['int8'])} | {_m(b['fp32'])} | {_m(a['fp32'])} | "
                     f"{b['int8'] / b['fp32']:.2f}x | {a['int8'] / a['fp32']:.2f}x | {a['int8'] / b['int8']:.2f}x |")
    if all("int8_mac_floor" in a for _, a in rows):
        lines += ["", "The aim against a lower bound on the int8 instructions, computed from each network's graph "
                  "(`mac_floor`: not measured): only the instructions that multiply, at the most products "
                  "per instruction an A72 without `sdot` allows exactly (depthwise: 4, as `smlal`/`smlal2` on 16-bit "
                  "lanes; every other convolution and dense layer: 16 per `smull`+`smlal2`+`sadalp`, whatever its "
                  "reduction; the rescale of each int8 output: one multiply per 4), and no load, store, add, "
                  "narrowing, loop or padding. Where that bound is above 0.5x our measured fp32, "
                  "the aim cannot be met in emulator instructions by any int8 code on this core; XNNPACK's 0.40x is "
                  "time on a real Pi 4, which these counts do not model.", "",
                  "| network | depthwise MACs | other MACs | int8 outputs | int8 multiply-instruction bound | "
                  "our fp32 (measured) | bound / fp32 | aim (int8 / fp32) | our int8 / bound |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for (label, _, _), (_, a) in zip(NETWORKS, rows):
            f = a["int8_mac_floor"]
            lines.append(f"| {label} | {f['depthwise_macs'] / 1e6:.2f} M | {f['other_macs'] / 1e6:.2f} M | "
                         f"{f['outputs'] / 1e6:.3f} M | "
                         f"{_m(f['instructions'])} | {_m(a['fp32'])} | {f['instructions'] / a['fp32']:.2f}x | 0.50x | "
                         f"{a['int8'] / f['instructions']:.2f}x |")
    if tflite and any(tflite):
        lines += ["", "TFLite (ai-edge-litert, benchmarks/arm_xnnpack.py) on the same emulator, same networks and classes, "
                  "its own PT2E int8 (per-channel weights, per-tensor activations, the whole graph delegated to XNNPACK): "
                  "int8 against fp32 with XNNPACK and with TFLite's built-in kernels, and our int8 (after) against "
                  "XNNPACK's int8. Same instruction counting (steady-state inference; TFLite's include a transpose of "
                  "the NCHW input and some Python call overhead).", "",
                  "| network | XNNPACK fp32 | XNNPACK int8 | XNNPACK int8/fp32 | built-in int8/fp32 | ours int8/fp32 | "
                  "ours int8 / XNNPACK int8 | ours fp32 / XNNPACK fp32 |", "|---|---|---|---|---|---|---|---|"]
        for (label, _, _), (_, a), t in zip(NETWORKS, rows, tflite):
            if t is None:
                continue
            lines.append(f"| {label} | {_m(t['xnnpack fp32'])} | {_m(t['xnnpack int8'])} | "
                         f"{t['xnnpack int8'] / t['xnnpack fp32']:.2f}x | {t['builtin int8'] / t['builtin fp32']:.2f}x | "
                         f"{a['int8'] / a['fp32']:.2f}x | {a['int8'] / t['xnnpack int8']:.2f}x | "
                         f"{a['fp32'] / t['xnnpack fp32']:.2f}x |")
    lines += ["", "int8 instructions by kernel kind (per-kernel counts of `edgecompile report`):", "",
              "| network | kind | before | after | after / before |", "|---|---|---|---|---|"]
    for (label, _, _), (b, a) in zip(NETWORKS, rows):
        for kind in sorted(set(b["int8_by_kind"]) | set(a["int8_by_kind"]), key=lambda k: -b["int8_by_kind"].get(k, 0)):
            x, y = b["int8_by_kind"].get(kind, 0), a["int8_by_kind"].get(kind, 0)
            lines.append(f"| {label} | {kind} | {x:,} | {y:,} | {y / x:.2f}x |" if x else
                         f"| {label} | {kind} | {x:,} | {y:,} | - |")
    lines += ["", "int8 bytes identical to this machine's compile of the same model.c (after): " +
              ", ".join(f"{label}: {'yes' if a['int8_identical_to_host_compile'] else 'NO'}"
                        for (label, _, _), (_, a) in zip(NETWORKS, rows)) + "."]
    lines += ["", "Generated by `benchmarks/neon_int8.py`."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--baseline", default="main", help="git revision measured as 'before'")
    ap.add_argument("--out", default="benchmarks/NEON_INT8.md")
    ap.add_argument("--tflite-json", default=str(Path(__file__).with_name("arm_xnnpack_c10")),
                    help="benchmarks/arm_xnnpack.py's output directory (default: benchmarks/arm_xnnpack_c10, "
                         "the committed counts)")
    ap.add_argument("--measure", metavar="INDEX", help=argparse.SUPPRESS)   # one network, JSON on stdout
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(int(args.measure), args.samples)), flush=True)
        return
    before = measure_baseline(args.baseline, args.samples)
    rows = []
    for i in range(len(NETWORKS)):
        after = measure(i, args.samples)
        print(f"after: {json.dumps(after)}", flush=True)
        rows.append((before[i], after))
    tflite = tflite_counts(Path(args.tflite_json))
    Path(args.out).write_text("\n".join(table(rows, args.baseline, tflite)) + "\n")


if __name__ == "__main__":
    main()
