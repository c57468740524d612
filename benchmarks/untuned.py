"""Untuned host latency against onnxruntime, one process run per network (issue 14's first aim:
untuned <= 1.15x the fastest peer).

    .venv/bin/python benchmarks/untuned.py [--models all|NAME,...] [--runs 50] [--out benchmarks/UNTUNED.md]

With --models NAME,...: only those networks are run again; the table keeps the other rows from
the previous run's JSON (UNTUNED.json), each row saying which run measured it.

For every network: our build without tuning records and onnxruntime, timed one after the other in
this process on the same input, one thread, median after warm-up (edgecompile.measure.bench). The
machine is shared and has 2 cores: the medians move between runs, only the ratio in one run
means anything. Also records the build's wall-clock time (a loaded machine inflates it too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgecompile.compiler import BuildOptions, Progress, write_build  # noqa: E402
from edgecompile.ir.frontend import ModelOptions, load_model  # noqa: E402
from edgecompile.measure.bench import bench  # noqa: E402
from edgecompile.targets import load_target  # noqa: E402

MODELS = [
    ("mobilenet_v1", dict(width_mult=0.25, resolution=32), "MobileNet V1 0.25 / 32"),
    ("mobilenet_v1", dict(width_mult=0.25, resolution=96), "MobileNet V1 0.25 / 96"),
    ("mobilenet_v1", dict(width_mult=1.0, resolution=224), "MobileNet V1 1.0 / 224"),
    ("mobilenet_v2", dict(width_mult=1.0, resolution=224), "MobileNet V2 1.0 / 224"),
    ("squeezenet1_1", dict(resolution=224), "SqueezeNet 1.1 / 224"),
    ("shufflenet_v2", dict(resolution=224), "ShuffleNet V2 1.0x / 224"),
    ("shufflenet_v1", dict(resolution=224), "ShuffleNet V1 g3 / 224"),
    ("xception", dict(resolution=224), "Xception / 224"),
    ("efficientnet_b0", dict(resolution=224), "EfficientNet-B0 / 224"),
]

# what issue 14 measured before this work (untuned unless marked), x onnxruntime / x fastest peer
BEFORE = {
    "MobileNet V1 0.25 / 32": "3.2x onnxruntime",
    "MobileNet V1 0.25 / 96": "1.23x onnxruntime",
    "MobileNet V2 1.0 / 224": "1.58x onnxruntime",
    "SqueezeNet 1.1 / 224": "1.49x fastest (tuned)",
    "ShuffleNet V2 1.0x / 224": "2.99x fastest (tuned)",
    "EfficientNet-B0 / 224": "3.89x fastest (tuned)",
    "ShuffleNet V1 g3 / 224": "39.8x onnxruntime (31 untiled group convs)",
}


def run_one(name: str, opts: dict, runs: int) -> dict:
    source = load_model(name, ModelOptions(num_classes=1000, **opts))
    with tempfile.TemporaryDirectory(prefix="ec-untuned-") as tmp:
        out = Path(tmp) / "build"
        t0 = time.monotonic()
        report = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False),
                             Progress(quiet=True))
        build_s = time.monotonic() - t0
        res = bench(source, str(out), ["onnxruntime"], runs=runs, warmup=max(3, runs // 5))
    ours, ort = res["results"]["edgecompile"]["median_ms"], res["results"]["onnxruntime"]["median_ms"]
    return {"edgecompile_ms": ours, "onnxruntime_ms": ort, "ratio": ours / ort, "build_s": build_s,
            "macs": report["macs"], "untiled": [c["name"] for c in report["calls"]
                                                if c["macs"] and "untiled" in (c.get("schedule") or "")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="all, or labels' model names, comma-separated")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "UNTUNED.md"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    chosen = [m for m in MODELS if args.models == "all" or m[0] in args.models.split(",")]
    previous = Path(args.out).with_suffix(".json")
    kept = {r["label"]: r for r in json.loads(previous.read_text())} if previous.exists() and args.models != "all" else {}
    run = time.strftime("%Y-%m-%d %H:%M")
    rows = []
    for name, opts, label in MODELS:
        if (name, opts, label) not in chosen:
            if label in kept:
                rows.append(kept[label])
            continue
        print(f"{label} ...", file=sys.stderr, flush=True)
        r = run_one(name, opts, args.runs)
        r["label"], r["run"] = label, run
        rows.append(r)
        print(f"  ours {r['edgecompile_ms']:.3f} ms, onnxruntime {r['onnxruntime_ms']:.3f} ms, "
              f"{r['ratio']:.2f}x, build {r['build_s']:.1f} s", file=sys.stderr, flush=True)
    lines = ["# Untuned host latency against onnxruntime", "",
             f"`benchmarks/untuned.py`, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             "one thread, median of each in one process run; 1000 classes. The machine is shared (2 cores, "
             "other jobs running): the medians move between runs, the ratio within a run is the figure. "
             "Build time is wall clock on the same loaded machine. A row's run says when it was measured "
             "(`--models` reruns some rows and keeps the others).", "",
             "| network | edgecompile untuned (ms) | onnxruntime (ms) | ratio | before (issue 14) | build (s) | untiled kernels with MACs | run |",
             "|---|---:|---:|---:|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['edgecompile_ms']:.3f} | {r['onnxruntime_ms']:.3f} | {r['ratio']:.2f}x | "
                     f"{BEFORE.get(r['label'], '')} | {r['build_s']:.1f} | {len(r['untiled'])} | "
                     f"{r.get('run', 'earlier')} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
