"""Row bands vs 2-D tiles on an emulated board, measured in one run: for the wake-word network
(MobileNet V1 0.25, 96x96, 2 classes) and MobileNet V2 0.35/96 (2 classes), int8, input
streamed, each plan built, its firmware run by `edgecompile test` (device bytes against this
machine's build), peak RAM = static RAM of the linked firmware + the stack the device used,
instructions = QEMU -icount counts per inference (emulator instructions, not cycles).

    .venv/bin/python benchmarks/tiles_board.py [--board stm32f746g-disco] [--samples 2] > benchmarks/TILES.md
"""

from __future__ import annotations

import argparse
import sys

from peak_ram import measure

from edgecompile.ir.frontend import ModelOptions

VWW = {
    "default": dict(patches="off"),
    "4:2 row bands": dict(patch=(4, 2)),
    "4:2x2 tiles": dict(patch=(4, 2, "recomputed", 2)),
    "8:1 row bands, lean windows, 1-row dw+pw": dict(patch=(8, 1), lean_windows=True, dwpw_rows=1),
    "8:1x2 tiles, lean windows, 1-row dw+pw": dict(patch=(8, 1, "recomputed", 2), lean_windows=True, dwpw_rows=1),
}
MBV2 = {
    "default": dict(patches="off"),
    "9:2 row bands": dict(patch=(9, 2)),
    "9:2x2 tiles": dict(patch=(9, 2, "recomputed", 2)),
    "9:2:cached row bands, lean windows, 1-row dw+pw": dict(patch=(9, 2, "cached"), lean_windows=True, dwpw_rows=1),
}


def table(title: str, rows: list[dict]) -> list[str]:
    base = next(r for r in rows if r["plan"] == "default")["instructions_per_inference"]
    out = [f"### {title}", "", "| plan | extra MACs | arena | static RAM | stack used | peak RAM | instructions | vs default | test |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['plan']} | {r['extra_macs']:,} | {r['arena_bytes']:,} | {r['ram_bytes']:,} | "
                   f"{r['stack_used_bytes']:,} | {r['peak_ram_bytes']:,} | {r['instructions_per_inference']:,} | "
                   f"{r['instructions_per_inference'] / base:.3f}x | {'pass' if r['passed'] else 'FAIL'} |")
    return out + [""]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--board", default="stm32f746g-disco")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--models", default="vww,mbv2")
    args = ap.parse_args()
    lines = [f"## Row bands vs 2-D tiles on {args.board} (int8, input streamed; one run)", ""]
    if "vww" in args.models:
        rows = measure(args.board, args.samples, "mobilenet_v1", ModelOptions(width_mult=0.25, resolution=96, num_classes=2), VWW)
        lines += table("MobileNet V1 0.25/96, 2 classes", rows)
    if "mbv2" in args.models:
        rows = measure(args.board, args.samples, "mobilenet_v2", ModelOptions(width_mult=0.35, resolution=96, num_classes=2), MBV2)
        lines += table("MobileNet V2 0.35/96, 2 classes", rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
