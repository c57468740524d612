"""Like-for-like ARM comparison without a Pi: emulator instructions per inference of our rpi4 build
(untuned, and with --tuned also tuned with `edgecompile tune --runner emu`) against TFLite + XNNPACK
(and TFLite's built-in kernels) on the same network under the same `qemu-aarch64 -cpu cortex-a72`.

    python benchmarks/arm_compare.py [--models all|KEY,...] [--tuned] [--tflite-json DIR]

The networks are the rows of benchmarks/arm_models.py (one per zoo family, MobileNet V1 twice), built
from the same zoo options, seed and class count as arm_xnnpack.py converts them. TFLite counts come
from benchmarks/arm_xnnpack.py (run it first; one JSON per network, default under
~/.cache/edgecompile/arm_xnnpack/); a network litert-torch could not convert keeps its error in the
row. Writes benchmarks/arm_xnnpack.json (rows not selected this run are kept from the file), which
`benchmarks/zoo.py --render-only` puts in RESULTS.md. Counts are emulator instructions, not cycles.
Our count is the median over the inferences of `edgecompile test` on the emulated Pi (random inputs;
the device's output is checked against PyTorch and the check's verdict is kept in the row).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from arm_models import ARM_MODELS, NUM_CLASSES, SEED, ArmModel, select  # noqa: E402
from edgecompile.measure.accuracy import run_test  # noqa: E402
from edgecompile.ir.frontend import ModelOptions, load_model  # noqa: E402
from edgecompile.compiler import BuildOptions, Progress, model_kernels, write_build  # noqa: E402
from edgecompile.paths import cache_dir  # noqa: E402
from edgecompile.targets import load_target  # noqa: E402
from edgecompile.tune.records import TuningRecords  # noqa: E402
from edgecompile.tune.search import Runner, tune  # noqa: E402

UNIT = "emulator instructions per inference (qemu-aarch64 -cpu cortex-a72), not cycles"
AIM = 0.9     # issue 14: ours <= 0.9x TFLite+XNNPACK's instructions on the emulated Pi


def measure(build: Path, samples: int) -> dict:
    res = run_test(build, samples=samples, dataset="random", timeout=900.0)
    return {"instructions": int(res["instructions_per_inference"]), "per_sample": res.get("instructions"),
            "check_passed": bool(res["passed"]), "failures": res.get("failures") or []}


def build_and_count(source, target, out: Path, options: BuildOptions, samples: int) -> dict:
    t0 = time.monotonic()
    write_build(source, target, out, options, Progress(quiet=True))
    build_s = time.monotonic() - t0
    t0 = time.monotonic()
    r = measure(out, samples)
    r.update(build_s=round(build_s, 1), test_s=round(time.monotonic() - t0, 1))
    return r


def attach_tflite(row: dict, tfl_dir: Path) -> dict:
    """Put arm_xnnpack.py's counts for the row's network (or why there are none) and the ratio in `row`."""
    for k in ("tflite_error", "tflite_xnnpack_max_abs_diff_vs_torch", "tflite_version"):
        row.pop(k, None)
    tfl_path = tfl_dir / f"{row['key']}.json"
    tfl = json.loads(tfl_path.read_text()) if tfl_path.exists() else {}
    best, xnn = row["edgecompile_instructions_per_inference"], tfl.get("tflite_xnnpack_instructions_per_inference")
    row.update({
        "tflite_xnnpack_instructions_per_inference": xnn,
        "tflite_builtin_instructions_per_inference": tfl.get("tflite_builtin_instructions_per_inference"),
        "ratio_vs_xnnpack": round(best / xnn, 4) if xnn else None,
        "aim_ratio": AIM,
        "meets_aim": (best / xnn <= AIM) if xnn else None,
        "unit": UNIT,
    })
    details = tfl.get("details", {})
    if not tfl:
        row["tflite_error"] = f"no TFLite measurement: run benchmarks/arm_xnnpack.py --models {row['key']}"
    elif tfl.get("convert_error"):
        row["tflite_error"] = f"litert-torch could not convert it: {tfl['convert_error']}"
    if details.get("xnnpack"):
        row["tflite_xnnpack_max_abs_diff_vs_torch"] = details["xnnpack"]["max_abs_diff_vs_torch"]
    if details.get("guest"):
        row["tflite_version"] = details["guest"]["ai_edge_litert"]
    return row


def row_for(m: ArmModel, tfl_dir: Path, tuned: bool, db: Path, samples: int) -> dict:
    target = load_target("rpi4")
    opts = {k: v for k, v in m.options.items() if k in ("width_mult", "resolution", "groups")}
    source = load_model(m.model, ModelOptions(num_classes=NUM_CLASSES, seed=SEED, **opts))
    row: dict = {"key": m.key, "label": m.label, "model": m.model, **m.options, "num_classes": NUM_CLASSES,
                 "seed": SEED}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{m.label}: untuned build + test on the emulated Pi ...", file=sys.stderr, flush=True)
        plain = build_and_count(source, target, Path(tmp) / "plain", BuildOptions(compare_unfused=False), samples)
        row["edgecompile_untuned_instructions_per_inference"] = plain["instructions"]
        row["edgecompile_untuned"] = plain
        best = plain["instructions"]
        if tuned:
            print(f"{m.label}: tuning for rpi4 with the emu runner ...", file=sys.stderr, flush=True)
            summary = tune(model_kernels(source, target, progress=Progress(quiet=True)), target, Runner("emu"),
                           db, resume=True, log=lambda msg: None)
            t = build_and_count(source, target, Path(tmp) / "tuned",
                                BuildOptions(compare_unfused=False, tuning=TuningRecords(db, target)), samples)
            row["edgecompile_tuned_instructions_per_inference"] = t["instructions"]
            row["edgecompile_tuned"] = {**t, "tuned_kernels": len(summary["kernels"])}
            best = min(best, t["instructions"])
    row["edgecompile_instructions_per_inference"] = best
    row.setdefault("edgecompile_tuned", None)
    return attach_tflite(row, tfl_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflite-json", default=str(cache_dir("arm_xnnpack")))
    ap.add_argument("--models", default="all", help="rows of benchmarks/arm_models.py (keys or zoo names)")
    ap.add_argument("--tuned", action="store_true", help="also tune (long) and build with the records")
    ap.add_argument("--samples", type=int, default=2, help="inferences per build on the emulated Pi")
    ap.add_argument("--db", default=str(HERE / "tuning"))
    ap.add_argument("--out", default=str(HERE / "arm_xnnpack.json"))
    ap.add_argument("--refresh-tflite", action="store_true",
                    help="only re-read the TFLite JSONs into the selected rows already in --out (no builds)")
    args = ap.parse_args()
    models = select(args.models)
    out = Path(args.out)
    for m in models:
        if args.refresh_tflite:
            have = [r for r in (json.loads(out.read_text()) if out.exists() else []) if r.get("key") == m.key]
            if not have:
                print(f"{m.label}: no row in {out} yet (build it first)", file=sys.stderr)
                continue
            row = attach_tflite(have[0], Path(args.tflite_json))
        else:
            row = row_for(m, Path(args.tflite_json), args.tuned, Path(args.db), args.samples)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), file=sys.stderr)
        # write after every network (a 299 px network takes minutes): keep the other rows, in table order
        old = json.loads(out.read_text()) if out.exists() else []
        by_label = {a.label: a.key for a in ARM_MODELS}       # rows written before rows had keys
        rows = {r.get("key") or by_label.get(r["label"], r["label"]): r
                for r in (old if isinstance(old, list) else [old])}
        rows[m.key] = row
        order = [a.key for a in ARM_MODELS]
        ordered = sorted(rows.values(), key=lambda r: order.index(r["key"]) if r.get("key") in order else len(order))
        out.write_text(json.dumps(ordered, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
