"""Peak RAM of int8 networks on an emulated board, one build per memory plan, side by side in one
run: the wake-word network (MobileNet V1 alpha=0.25, 96x96, 2 classes) with TensorFlow Lite Micro's
arena for the same network beside it (benchmarks/tflm_vww.json, from benchmarks/tflm_vww.py in
.venv-bench), and MobileNet V2 alpha=0.30, 80x80 (2 classes) with the published peak SRAM of other
engines for that network; the aims of issue 13.

    .venv/bin/python benchmarks/peak_ram.py [--board stm32f746g-disco] [--samples 3] [--models vww,mbv2,effnet,mbv2_224]

EfficientNet-B0 64x64 int8 (no depthwise fuses there: plain vs in-place depthwise vs patches) runs
on --effnet-board, mps2-an386 by default: its 4 MB of int8 weights fit no STM32 board.

Plans: no in-place overlaps; the default plan (fused kernels' outputs overlap their inputs);
lean windows (depthwise windows per channel tile, small buffers in the arena); patch-based
execution of the first stage in full-width row bands (halo rows recomputed, or cached from the
previous band), as the planner chooses it (`--patches min`:
least peak RAM within +10% MACs) and as `--ram-budget` chooses it.
Peak RAM = static RAM of the linked firmware (data + bss, the arena included) + the stack the
device used (stack painting), as `edgecompile test` records it. Instructions: QEMU -icount
counts per inference (emulator instructions, not cycles), as ratios to the default plan.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.errors import FitError
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.measure.accuracy import run_test
from edgecompile.targets import load_target

PLANS = {   # name -> build options besides quant="int8"
    "no in-place": dict(in_place=False, patches="off"),
    "default": dict(patches="off"),
    "lean windows": dict(patches="off", lean_windows=True),
    # since streamed input became the default of every patch plan: the planner with the whole input
    # in RAM (as TFLM's arena holds it) first, then as a camera would feed it (ir/stream.py)
    "patches (planner: min), whole input": dict(patches="min", stream_input=False),
    "patches (planner: min), input streamed": dict(patches="min"),
    "patches (--ram-budget 40K), whole input": dict(ram_budget=40 * 1024, stream_input=False),
    "patches (--ram-budget 37,600), whole input": dict(ram_budget=37_600, stream_input=False),   # issue 13's aim
    "patches (--ram-budget 37,600), input streamed": dict(ram_budget=37_600),
    "patches 4:2 + lean windows": dict(patch=(4, 2), lean_windows=True),
    # cached halos in 1-row bands, 1-row dw+pw tiles (half the window scratch) and lean windows:
    # `--patches 4:1:cached --dwpw-rows 1 --lean-windows`
    "patches 4:1 cached + 1-row dw+pw tiles + lean windows": dict(patch=(4, 1, "cached"), dwpw_rows=1,
                                                                  lean_windows=True),
}
# MobileNet V2 0.30/80: the plans, and the published peak SRAM (Plumerai's DISCO-F746NG comparison)
MBV2_PLANS = {
    "default": dict(patches="off"),
    "patches 9:4, halo recomputed": dict(patch=(9, 4)),
    "patches (planner: min), whole input": dict(patches="min", stream_input=False),
    "patches (planner: min), input streamed": dict(patches="min"),
    "patches (--ram-budget 61,440), whole input": dict(ram_budget=61_440, stream_input=False),   # issue 13's aim
}
# EfficientNet-B0 64x64 (2 classes), int8: squeeze-excitation needs each depthwise output whole, so no
# depthwise fuses; plain vs in-place depthwise vs patch-based. Its 4 MB of int8 weights fit no
# STM32 board here: mps2-an386 (weights in the PSRAM)
EFFNET_PLANS = {
    "no in-place": dict(in_place=False, patches="off"),
    "default (in-place depthwise)": dict(patches="off"),
    "patches (planner: min), whole input": dict(patches="min", stream_input=False),
    "patches (planner: min), input streamed": dict(patches="min"),
}
EFFNET_BOARD = "mps2-an386"
# MobileNet V2 1.0/224 (1000 classes), int8 on mps2-an386 (its 16 MB PSRAM holds the weights): issue
# 13's aim is <= 160 kB peak RAM at <= 1.15x the plain plan's instructions. The whole 1x3x224x224
# input (150,528 B) against the input streamed row band by row band (ir/stream.py), on the stage
# `--patches min` picks (12 layers to 28x28x32, 28 one-row bands, cached halos) and on a stage that
# reaches the 14x14 blocks (past the 28x28x192 expansion, 150,528 B).
MBV2_224_PLANS = {
    "default": dict(patches="off"),
    "patches 12:1 cached, whole input": dict(patch=(12, 1, "cached"), stream_input=False),
    "patches 12:1 cached, input streamed": dict(patch=(12, 1, "cached")),
    "patches 12:1 cached + 1-row dw+pw tiles + lean windows, input streamed": dict(
        patch=(12, 1, "cached"), dwpw_rows=1, lean_windows=True),
    "patches 21:1 cached + 1-row dw+pw tiles + lean windows, input streamed": dict(
        patch=(21, 1, "cached"), dwpw_rows=1, lean_windows=True),
    "patches 12:1 cached, then a second stage 30:1 cached + 1-row dw+pw tiles + lean windows, input streamed": dict(
        patch=(12, 1, "cached"), patch2=(30, 1, "cached"), dwpw_rows=1, lean_windows=True),
    "patches 12:1 cached, then 9:1 cached, then 21:2 narrow + 1-row dw+pw tiles + lean windows, input streamed": dict(
        patch=(12, 1, "cached"), patch2=((9, 1, "cached"), (21, 2, "narrow")), dwpw_rows=1, lean_windows=True),
}
MBV2_224_BOARD = "mps2-an386"
MBV2_224_AIM_BYTES = 160_000
MBV2_PUBLISHED = "Plumerai 80 KiB, TinyEngine 98 KiB, X-CUBE-AI 109 KiB, TFLM 155 KiB (Plumerai, DISCO-F746NG)"
MBV2_AIM_BYTES = 60 * 1024
AIM_VS_TFLM = 0.35          # issue 13: peak RAM <= 0.35x TFLM's arena ...
AIM_INSTRUCTIONS = 1.15     # ... at <= 1.15x the instructions of the plain plan


def measure(board: str, samples: int, model: str, options: ModelOptions, plans: dict[str, dict],
            timeout: float = 60.0) -> list[dict]:
    source = load_model(model, options)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in plans.items():
            out = Path(tmp) / str(len(rows))
            try:
                rep = write_build(source, load_target(board), out,
                                  BuildOptions(quant="int8", compare_unfused=False, **opts), Progress(quiet=True))
            except FitError as err:          # a budget no plan meets: refused before compiling
                rows.append({"plan": name, "refused": str(err)})
                print(json.dumps(rows[-1]), flush=True)
                continue
            res = run_test(out, samples=samples, timeout=timeout)
            pp = rep["patch_plan"]
            rows.append({"plan": name, "patch": f"{pp['layers']} layers, {pp['bands']} bands of {pp['rows']} rows, "
                         f"halo {pp.get('halo', 'recomputed')}"
                         + (", input streamed" if pp.get("input_streamed") else "")
                         + (f"; then {pp['second_stage']['layers']} layers, {pp['second_stage']['bands']} bands of "
                            f"{pp['second_stage']['rows']} rows, halo {pp['second_stage']['halo']}"
                            if pp.get("second_stage") else "") if pp else "", "extra_macs": pp["extra_macs"] if pp else 0, "macs": rep["macs"],
                         "arena_bytes": rep["arena_bytes"], "ram_bytes": rep["ram_bytes"],
                         "stack_used_bytes": res["stack_used_bytes"],
                         "peak_ram_bytes": rep["ram_bytes"] + res["stack_used_bytes"],
                         "instructions_per_inference": res["instructions_per_inference"], "passed": res["passed"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(board: str, rows: list[dict], tflm: dict) -> list[str]:
    t = tflm["tflm_arena"]["total"]
    base = next(r for r in rows if r["plan"] == "default")["instructions_per_inference"]
    lines = [
        f"# Peak RAM of the int8 wake-word network on {board}: memory plans vs TensorFlow Lite Micro",
        "",
        f"Network: {tflm['network']}. TFLM arena for the same network (tflite-micro, `print_allocations`, "
        f"x86-64): **{t:,} B**; TFLM needs its own data and stack on top. Ours: static RAM of the linked "
        "firmware (data + bss, arena included) + stack used on the device = peak RAM. Patches are "
        "full-width row bands (n x 1 patches, contiguous in NHWC), not n x n tiles. Instructions are QEMU "
        "-icount counts per inference (emulator instructions, not cycles). Issue 13's aim: peak RAM <= "
        f"{AIM_VS_TFLM}x TFLM's arena ({AIM_VS_TFLM * t:,.0f} B) at <= {AIM_INSTRUCTIONS}x the default "
        "plan's instructions.",
        "",
        "| plan | patch stage | arena | static RAM | stack used | peak RAM | peak / TFLM arena | instructions "
        "| vs default | meets aim | test |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['plan']} | refused before compiling: {r['refused']} |||||||||")
            continue
        ratio, cost = r["peak_ram_bytes"] / t, r["instructions_per_inference"] / base
        aim = "yes" if ratio <= AIM_VS_TFLM and cost <= AIM_INSTRUCTIONS else "no"
        if "input streamed" in (r["patch"] or ""):
            aim += " (input streamed)"
        lines.append(f"| {r['plan']} | {r['patch'] or '-'} | {r['arena_bytes']:,} | {r['ram_bytes']:,} | "
                     f"{r['stack_used_bytes']:,} | {r['peak_ram_bytes']:,} | {ratio:.3f} | "
                     f"{r['instructions_per_inference']:,} | {cost:.3f}x | {aim} | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")
    lines += ["", "`--ram-budget` takes the plan of least *predicted* instructions (codegen/cost.py, fitted per "
              "target) whose *estimated* peak RAM (static RAM + arena + 1,024 B + the kernels' stack arrays) is "
              "within the budget; the estimate is made before compiling and errs high on the stack. `min`: least "
              "estimated peak RAM within 1.15x the plain plan's predicted instructions (less the model's error). "
              "*Input streamed*: the graph input is never whole in RAM; each band asks for the input rows it "
              "needs (`ec_read_input_rows`: over the serial link here, from a camera's line buffer on a product). "
              "TFLM's arena holds the whole input: the whole-input rows are the like-for-like comparison.",
              "", "Generated by `benchmarks/peak_ram.py` (all rows in one run); TFLM figure by "
              "`benchmarks/tflm_vww.py`."]
    return lines


def _aim_table(title: str, intro: str, aim_bytes: int, rows: list[dict]) -> list[str]:
    """A table of plans against a peak-RAM aim: each plan's measured peak and instructions against
    the default plan's (the first row whose plan is `default`)."""
    base = next(r for r in rows if r["plan"] == "default")["instructions_per_inference"]
    lines = [title, "", intro, "",
             "| plan | patch stage | arena | static RAM | stack used | peak RAM | instructions | vs default "
             "| meets aim | test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['plan']} | refused before compiling: {r['refused']} ||||||||")
            continue
        cost = r["instructions_per_inference"] / base
        aim = "yes" if r["peak_ram_bytes"] <= aim_bytes and cost <= AIM_INSTRUCTIONS else "no"
        lines.append(f"| {r['plan']} | {r['patch'] or '-'} | {r['arena_bytes']:,} | {r['ram_bytes']:,} | "
                     f"{r['stack_used_bytes']:,} | {r['peak_ram_bytes']:,} | {r['instructions_per_inference']:,} | "
                     f"{cost:.3f}x | {aim} | {'pass' if r['passed'] else 'FAIL'} |")
    return lines


def table_mbv2(board: str, rows: list[dict]) -> list[str]:
    return _aim_table(
        f"## MobileNet V2 alpha=0.30, 80x80, 2 classes, int8 on {board}",
        f"Published peak SRAM for this network: {MBV2_PUBLISHED}. Issue 13's aim: <= {MBV2_AIM_BYTES:,} B "
        f"(60 KiB) at <= {AIM_INSTRUCTIONS}x the default plan's instructions.", MBV2_AIM_BYTES, rows)


def table_effnet(board: str, rows: list[dict]) -> list[str]:
    base = next(r for r in rows if r["plan"].startswith("default"))["instructions_per_inference"]
    lines = [
        f"## EfficientNet-B0, 64x64, 2 classes, int8 on {board}",
        "",
        "No depthwise convolution fuses (squeeze-excitation reads each depthwise output whole): plain plan, "
        "in-place depthwise (each output over the input rows it has consumed), patch-based.",
        "",
        "| plan | patch stage | arena | static RAM | stack used | peak RAM | instructions | vs default | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['plan']} | refused before compiling: {r['refused']} |||||||")
            continue
        lines.append(f"| {r['plan']} | {r['patch'] or '-'} | {r['arena_bytes']:,} | {r['ram_bytes']:,} | "
                     f"{r['stack_used_bytes']:,} | {r['peak_ram_bytes']:,} | {r['instructions_per_inference']:,} | "
                     f"{r['instructions_per_inference'] / base:.3f}x | {'pass' if r['passed'] else 'FAIL'} |")
    return lines


def table_mbv2_224(board: str, rows: list[dict]) -> list[str]:
    return _aim_table(
        f"## MobileNet V2 1.0, 224x224, 1000 classes, int8 on {board}",
        f"Issue 13's aim: <= {MBV2_224_AIM_BYTES:,} B peak RAM at <= {AIM_INSTRUCTIONS}x the default plan's "
        "instructions. Streamed input: the instructions leave out the time the board waits for input rows.",
        MBV2_224_AIM_BYTES, rows)


MODELS = ("vww", "mbv2", "effnet", "mbv2_224")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--board", default="stm32f746g-disco")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/PEAK_RAM.md")
    ap.add_argument("--effnet-board", default=EFFNET_BOARD)
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"which tables to measure, comma-separated from {', '.join(MODELS)} (default: all)")
    args = ap.parse_args()
    models = args.models.split(",")
    if not models or any(m not in MODELS for m in models):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    tflm = json.loads((Path(__file__).resolve().parent / "tflm_vww.json").read_text())
    results: dict = {"board": args.board}
    tables: list[list[str]] = []
    if "vww" in models:
        results["rows"] = measure(args.board, args.samples, "mobilenet_v1",
                                  ModelOptions(width_mult=0.25, resolution=96, num_classes=2), PLANS)
        tables.append(table(args.board, results["rows"], tflm)[:-2])
    if "mbv2" in models:
        results["mobilenet_v2_0.30_80"] = measure(args.board, args.samples, "mobilenet_v2",
                                                  ModelOptions(width_mult=0.3, resolution=80, num_classes=2), MBV2_PLANS)
        tables.append(table_mbv2(args.board, results["mobilenet_v2_0.30_80"]))
    if "effnet" in models:
        results["efficientnet_b0_64"] = {"board": args.effnet_board, "rows": measure(
            args.effnet_board, args.samples, "efficientnet_b0", ModelOptions(resolution=64, num_classes=2), EFFNET_PLANS)}
        tables.append(table_effnet(args.effnet_board, results["efficientnet_b0_64"]["rows"]))
    if "mbv2_224" in models:
        results["mobilenet_v2_1.0_224"] = {"board": MBV2_224_BOARD, "rows": measure(
            MBV2_224_BOARD, args.samples, "mobilenet_v2", ModelOptions(resolution=224), MBV2_224_PLANS, timeout=900)}
        tables.append(table_mbv2_224(MBV2_224_BOARD, results["mobilenet_v2_1.0_224"]["rows"]))
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    footer = ["Generated by `benchmarks/peak_ram.py` (all rows in one run); TFLM figure by `benchmarks/tflm_vww.py`."]
    Path(args.out).write_text("\n".join(sum((t + [""] for t in tables), []) + footer) + "\n")


if __name__ == "__main__":
    main()
