"""int8 visual-wake-words network (MLPerf Tiny: MobileNet V1 alpha=0.25, 96x96x3, 2 classes) on the
emulated boards, this tree next to a baseline revision (default: main) in the same run, with the
published MLPerf Tiny records beside them and TensorFlow Lite Micro's arena for the same network
(benchmarks/tflm_vww.json, produced by benchmarks/tflm_vww.py in a separate environment).

    .venv/bin/python benchmarks/int8_vww.py [--samples 3] [--baseline main] [--boards b1,b2]
        [--zoo-baseline REV] [--zoo-boards b1,b2]

With --zoo-baseline, a second table measures one network of each other zoo family (int8, at a
size that fits the boards: the sizes of the whole-network bit-exactness tests) on --zoo-boards,
revision REV next to this tree in the same run.

The baseline is the revision's tree (`git archive`) in a temporary directory, imported ahead of this
tree's package by a child process of this script (same interpreter, same machine, same run).
Flash / RAM: measured from the linked firmware; stack: the device's stack painting after
inferences; instructions: emulator instruction counts per inference (QEMU -icount), NOT cycles.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

BOARDS = ["mps2-an386", "stm32f746g-disco", "nucleo-h743zi", "mps3-an547"]
NETWORK = dict(width_mult=0.25, resolution=96, num_classes=2)
# MLPerf Tiny closed division, visual wake words, fastest per core: cycles = latency x clock
# (mlcommons/tiny_results v1.1/v1.2; /work/shared/notes/anchors.md)
RECORDS = {
    "cortex-m4": ("X-CUBE-AI 9.0, NUCLEO-L4R5ZI, 88.93 ms @ 120 MHz (v1.2)", 10_700_000),
    "cortex-m7": ("X-CUBE-AI 9.0, NUCLEO-H7A3ZI-Q, 23.80 ms @ 280 MHz (v1.2); Plumerai, DISCO-F746NG, "
                  "34.08 ms @ 216 MHz = 7.36 M (v1.1)", 6_660_000),
    "cortex-m55": ("TFLM + CMSIS-NN on Cortex-M85 (Helium), EK-RA8D1, 13.39 ms @ 480 MHz (v1.2)", 6_400_000),
}
AIMS = {"cortex-m4": 10_700_000, "cortex-m7": 6_600_000, "cortex-m55": 4_000_000}
# one network of each other zoo family, as in tests/test_quant.FAMILIES (the sizes whose int8 bytes
# tests/test_int8_kernels checks on every core)
ZOO = [
    ("mobilenet_v2", dict(width_mult=0.35, resolution=64, num_classes=10)),
    ("shufflenet_v1", dict(groups=3, width_mult=0.5, resolution=64, num_classes=10)),
    ("shufflenet_v2", dict(width_mult=0.5, resolution=64, num_classes=10)),
    ("squeezenet1_1", dict(resolution=64, num_classes=10)),
    ("xception", dict(resolution=64, num_classes=10)),
    ("efficientnet_b0", dict(resolution=64, num_classes=10)),
]
ZOO_BOARDS = ["mps2-an386", "stm32f746g-disco", "mps3-an547"]


def measure(board: str, samples: int, model: str = "mobilenet_v1", options: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Build the network int8 for `board` with the `edgecompile` package on sys.path and run
    `test` on the board's emulator. A network that does not fit the board gives {"fits": False}
    with the refusal's first line."""
    from edgecompile.compiler import BuildOptions, Progress, write_build
    from edgecompile.errors import EdgeCompileError
    from edgecompile.ir.frontend import ModelOptions, load_model
    from edgecompile.measure.accuracy import run_test
    from edgecompile.targets import load_target

    source = load_model(model, ModelOptions(**(NETWORK if options is None else options)))
    target = load_target(board)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / board
        try:
            rep = write_build(source, target, out, BuildOptions(quant="int8"), Progress(quiet=True))
        except EdgeCompileError as e:
            if "fit" not in type(e).__name__.lower():
                raise
            return {"board": board, "cpu": target.cpu, "fits": False, "why": str(e).splitlines()[0]}
        res = run_test(out, samples=samples, dataset="digits")
    return {"board": board, "cpu": target.cpu, "fits": True, "macs": rep["macs"], "flash_bytes": rep["flash_bytes"],
            "arena_bytes": rep["arena_bytes"], "ram_bytes": rep["ram_bytes"],
            "stack_used_bytes": res["stack_used_bytes"], "peak_ram_bytes": rep["ram_bytes"] + res["stack_used_bytes"],
            "instructions_per_inference": res["instructions_per_inference"]}


def measure_baseline(rev: str, runs: list[tuple[str, str, dict[str, Any] | None]], samples: int
                     ) -> dict[tuple[str, str], dict[str, Any]]:
    """The same measurements, (board, model, options) each, on revision `rev` of this repository,
    in a child process per build."""
    from edgecompile import proc

    from baseline_tree import baseline_tree

    rows = {}
    with baseline_tree(rev) as (tree, env):
        for board, model, options in runs:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", board, "--samples", str(samples)]
            if options is not None:
                cmd += ["--model", model, "--options", json.dumps(options)]
            out = proc.run(cmd, cwd=tree, env=env, what=f"the {rev} build of {model} on {board}", timeout=3600)
            rows[board, model] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{rev}: {model} {json.dumps(rows[board, model])}", flush=True)
    return rows


def _header(*names: str) -> list[str]:
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def table(rows: list[tuple[dict[str, Any], dict[str, Any]]], rev: str, tflm: dict[str, Any]) -> list[str]:
    t = tflm["tflm_arena"]["total"]
    lines = [
        "# int8 visual wake words on Cortex-M: edgecompile before/after, published records, TFLM arena",
        "",
        f"Network: {tflm['network']} ({rows[0][1]['macs']:,} MACs per inference). "
        f"Before = `{rev}`, after = this tree, measured in the same run on the same machine.",
        "",
        "**Instructions are not cycles.** Our figures are QEMU `-icount` instruction counts per inference "
        "(SysTick with `-icount shift=0`, the same counting as `edgecompile test`); the records are cycles on "
        "real chips (latency x clock). A Cortex-M7 dual-issues (its cycles can be fewer than its "
        "instructions); an M4 or M55 spends more cycles than instructions on loads, branches and "
        "flash wait states. The M55 row is compared with the fastest Helium record, which is on a "
        "Cortex-M85.",
        "",
        *_header("board", "core", "instructions / inference before", "after", "after / before",
                 "instructions / MAC before -> after", "aim (issue 12)", "fastest published record (cycles)"),
    ]
    for before, after in rows:
        b, a = before["instructions_per_inference"], after["instructions_per_inference"]
        rec, cycles = RECORDS.get(after["cpu"], ("-", 0))
        aim = AIMS.get(after["cpu"])
        lines.append(
            f"| {after['board']} | {after['cpu']} | {b:,} | {a:,} | {a / b:.3f} | "
            f"{b / before['macs']:.2f} -> {a / after['macs']:.2f} | {'<= ' + format(aim, ',') if aim else '-'} | "
            f"{cycles / 1e6:.2f} M: {rec} |")
    lines += [
        "",
        f"Memory (bytes). TFLM arena for the same network (tflite-micro interpreter, `print_allocations`): "
        f"**{t:,} B** (head {tflm['tflm_arena']['head']:,} B activation plan, tail {tflm['tflm_arena']['tail']:,} B "
        "persistent, on x86-64); TFLM needs more RAM than its arena. Ours: peak RAM = static RAM "
        "(data+bss+arena) + measured stack.",
        "",
        *_header("board", "flash before", "flash after", "arena before -> after", "static RAM before -> after",
                 "stack used before -> after", "peak RAM before", "peak RAM after", "peak change", "peak / TFLM arena"),
    ]
    for before, after in rows:
        pb, pa = before["peak_ram_bytes"], after["peak_ram_bytes"]
        lines.append(
            f"| {after['board']} | {before['flash_bytes']:,} | {after['flash_bytes']:,} | "
            f"{before['arena_bytes']:,} -> {after['arena_bytes']:,} | "
            f"{before['ram_bytes']:,} -> {after['ram_bytes']:,} | {before['stack_used_bytes']:,} -> "
            f"{after['stack_used_bytes']:,} | {pb:,} | {pa:,} | {100 * (pa - pb) / pb:+.1f}% | {pa / t:.2f} |")
    lines += ["", "Generated by `benchmarks/int8_vww.py`; TFLM figure by `benchmarks/tflm_vww.py`."]
    return lines


def _label(model: str, options: dict[str, Any]) -> str:
    size = ", ".join(f"{k} {v}" for k, v in options.items() if k != "num_classes")
    return f"{model} ({size})"


def zoo_table(rows: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]], rev: str) -> list[str]:
    """One row per (network, board): instructions and per MAC, flash and peak RAM, before and after."""
    lines = [
        "",
        "## One network of each other zoo family, int8",
        "",
        f"Before = `{rev}`, after = this tree, same run. The sizes are those whose int8 bytes "
        "tests/test_int8_kernels checks on every core against the host build (10 classes). "
        "Instructions per inference: QEMU `-icount`, not cycles; peak RAM = static RAM + measured stack.",
        "",
        *_header("network", "board", "MACs", "instructions before", "after", "after / before",
                 "instructions / MAC before -> after", "flash before -> after", "peak RAM before -> after"),
    ]
    for model, options, before, after in rows:
        if not after["fits"] or not before.get("fits", True):
            why = after.get("why") or before.get("why", "")
            lines.append(f"| {_label(model, options)} | {after['board']} | does not fit: {why} |||||||")
            continue
        b, a = before["instructions_per_inference"], after["instructions_per_inference"]
        lines.append(
            f"| {_label(model, options)} | {after['board']} | {after['macs']:,} | {b:,} | {a:,} | {a / b:.3f} | "
            f"{b / before['macs']:.2f} -> {a / after['macs']:.2f} | {before['flash_bytes']:,} -> {after['flash_bytes']:,} | "
            f"{before['peak_ram_bytes']:,} -> {after['peak_ram_bytes']:,} |")
    lines += ["", f"Generated by `benchmarks/int8_vww.py --zoo-baseline {rev}`."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--baseline", default="main", help="git revision measured as 'before'")
    ap.add_argument("--boards", default=",".join(BOARDS))
    ap.add_argument("--out", default="benchmarks/INT8_VWW.md")
    ap.add_argument("--zoo-baseline", metavar="REV",
                    help="also measure one network of each other zoo family: revision REV next to this tree")
    ap.add_argument("--zoo-boards", default=",".join(ZOO_BOARDS))
    ap.add_argument("--measure", metavar="BOARD", help=argparse.SUPPRESS)   # one board, JSON on stdout
    ap.add_argument("--model", default="mobilenet_v1", help=argparse.SUPPRESS)
    ap.add_argument("--options", help=argparse.SUPPRESS)                   # ModelOptions as JSON
    args = ap.parse_args()
    if args.measure:
        options = json.loads(args.options) if args.options else None
        print(json.dumps(measure(args.measure, args.samples, args.model, options)), flush=True)
        return
    boards = args.boards.split(",")
    tflm = json.loads((Path(__file__).resolve().parent / "tflm_vww.json").read_text())
    before = measure_baseline(args.baseline, [(b, "mobilenet_v1", None) for b in boards], args.samples)
    rows = []
    for board in boards:
        after = measure(board, args.samples)
        print(f"after: {json.dumps(after)}", flush=True)
        rows.append((before[board, "mobilenet_v1"], after))
    lines = table(rows, args.baseline, tflm)
    if args.zoo_baseline:
        runs = [(b, m, o) for m, o in ZOO for b in args.zoo_boards.split(",")]
        zoo_before = measure_baseline(args.zoo_baseline, runs, args.samples)
        zoo_rows = []
        for board, model, options in runs:
            after = measure(board, args.samples, model, options)
            print(f"after: {model} {json.dumps(after)}", flush=True)
            zoo_rows.append((model, options, zoo_before[board, model], after))
        lines += zoo_table(zoo_rows, args.zoo_baseline)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
