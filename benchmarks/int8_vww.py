"""int8 visual-wake-words network (MLPerf Tiny: MobileNet V1 alpha=0.25, 96x96x3, 2 classes) on the
emulated boards, this tree next to a baseline revision (default: main) in the same run, with the
published MLPerf Tiny records beside them and TensorFlow Lite Micro's arena for the same network
(benchmarks/tflm_vww.json, produced by benchmarks/tflm_vww.py in a separate environment).

    .venv/bin/python benchmarks/int8_vww.py [--samples 3] [--baseline main] [--boards b1,b2]

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


def measure(board: str, samples: int) -> dict[str, Any]:
    """Build the network int8 for `board` with the `edgecompile` package on sys.path and run
    `test` on the board's emulator."""
    from edgecompile.compiler import BuildOptions, Progress, write_build
    from edgecompile.ir.frontend import ModelOptions, load_model
    from edgecompile.measure.accuracy import run_test
    from edgecompile.targets import load_target

    source = load_model("mobilenet_v1", ModelOptions(**NETWORK))
    target = load_target(board)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / board
        rep = write_build(source, target, out, BuildOptions(quant="int8"), Progress(quiet=True))
        res = run_test(out, samples=samples, dataset="digits")
    return {"board": board, "cpu": target.cpu, "macs": rep["macs"], "flash_bytes": rep["flash_bytes"],
            "arena_bytes": rep["arena_bytes"], "ram_bytes": rep["ram_bytes"],
            "stack_used_bytes": res["stack_used_bytes"], "peak_ram_bytes": rep["ram_bytes"] + res["stack_used_bytes"],
            "instructions_per_inference": res["instructions_per_inference"]}


def measure_baseline(rev: str, boards: list[str], samples: int) -> dict[str, dict[str, Any]]:
    """The same measurement on revision `rev` of this repository, in a child process."""
    from edgecompile import proc

    from baseline_tree import baseline_tree

    rows = {}
    with baseline_tree(rev) as (tree, env):
        for board in boards:
            out = proc.run([sys.executable, str(Path(__file__).resolve()), "--measure", board, "--samples", str(samples)],
                           cwd=tree, env=env, what=f"the {rev} build on {board}", timeout=3600)
            rows[board] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{rev}: {json.dumps(rows[board])}", flush=True)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--baseline", default="main", help="git revision measured as 'before'")
    ap.add_argument("--boards", default=",".join(BOARDS))
    ap.add_argument("--out", default="benchmarks/INT8_VWW.md")
    ap.add_argument("--measure", metavar="BOARD", help=argparse.SUPPRESS)   # one board, JSON on stdout
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.samples)), flush=True)
        return
    boards = args.boards.split(",")
    tflm = json.loads((Path(__file__).resolve().parent / "tflm_vww.json").read_text())
    before = measure_baseline(args.baseline, boards, args.samples)
    rows = []
    for board in boards:
        after = measure(board, args.samples)
        print(f"after: {json.dumps(after)}", flush=True)
        rows.append((before[board], after))
    Path(args.out).write_text("\n".join(table(rows, args.baseline, tflm)) + "\n")


if __name__ == "__main__":
    main()
