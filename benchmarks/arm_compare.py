"""Like-for-like ARM comparison without a Pi: emulator instructions per inference of our rpi4 build
(untuned, and tuned with `edgecompile tune --runner emu`) against TFLite + XNNPACK (and TFLite's
built-in kernels) on the same network under the same `qemu-aarch64 -cpu cortex-a72`.

    python benchmarks/arm_compare.py [--tflite-json DIR] [--models 0.25/96,1.0/224]

TFLite counts come from benchmarks/arm_xnnpack.py (run it first; it writes one JSON per model,
default under ~/.cache/edgecompile/arm_xnnpack/). Writes benchmarks/arm_xnnpack.json, which
benchmarks/zoo.py puts in RESULTS.md. Counts are emulator instructions, not cycles.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgecompile.measure.accuracy import run_test  # noqa: E402
from edgecompile.ir.frontend import ModelOptions, load_model  # noqa: E402
from edgecompile.compiler import BuildOptions, Progress, model_kernels, write_build  # noqa: E402
from edgecompile.paths import cache_dir  # noqa: E402
from edgecompile.targets import load_target  # noqa: E402
from edgecompile.tune.records import TuningRecords
from edgecompile.tune.search import Runner, tune  # noqa: E402


def instructions(build: Path) -> int:
    res = run_test(build, samples=2, dataset="random")
    return int(res["instructions_per_inference"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = cache_dir("arm_xnnpack")
    ap.add_argument("--tflite-json", default=str(cache))
    ap.add_argument("--models", default="0.25/96,1.0/224")
    ap.add_argument("--db", default=str(HERE / "tuning"))
    ap.add_argument("--out", default=str(HERE / "arm_xnnpack.json"))
    args = ap.parse_args()
    target = load_target("rpi4")
    rows = []
    for spec in args.models.split(","):
        width, res = spec.split("/")
        label = f"MobileNet V1 {width} / {res}"
        tfl_path = Path(args.tflite_json) / f"mobilenet_v1_w{float(width)}_r{int(res)}.json"
        tfl = json.loads(tfl_path.read_text()) if tfl_path.exists() else {}
        source = load_model("mobilenet_v1", ModelOptions(width_mult=float(width), resolution=int(res),
                                                          num_classes=1000))
        print(f"{label}: tuning for rpi4 with the emu runner ...", file=sys.stderr, flush=True)
        summary = tune(model_kernels(source, target, progress=Progress(quiet=True)), target, Runner("emu"),
                       Path(args.db), resume=True, log=lambda m: None)
        with tempfile.TemporaryDirectory() as tmp:
            tuned, plain = Path(tmp) / "tuned", Path(tmp) / "plain"
            write_build(source, target, tuned, BuildOptions(compare_unfused=False,
                                                           tuning=TuningRecords(Path(args.db), target)),
                        Progress(quiet=True))
            write_build(source, target, plain, BuildOptions(compare_unfused=False), Progress(quiet=True))
            ours, ours_plain = instructions(tuned), instructions(plain)
        row = {"label": label, "model": "mobilenet_v1", "width": float(width), "resolution": int(res),
               "num_classes": 1000, "edgecompile_instructions_per_inference": ours,
               "edgecompile_untuned_instructions_per_inference": ours_plain,
               "tuned_kernels": len(summary["kernels"]),
               "tflite_xnnpack_instructions_per_inference": tfl.get("tflite_xnnpack_instructions_per_inference"),
               "tflite_builtin_instructions_per_inference": tfl.get("tflite_builtin_instructions_per_inference"),
               "unit": "emulator instructions per inference (qemu-aarch64 -cpu cortex-a72), not cycles"}
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
