"""Untuned (and, with --db, tuned) host latency against the peers, one process run per network
(issue 14's aims: untuned <= 1.15x and tuned <= 1.0x the fastest of onnxruntime, LiteRT-XNNPACK and
ExecuTorch).

    .venv/bin/python benchmarks/untuned.py [--models all|NAME,...] [--peers onnxruntime,litert,executorch]
                                           [--runs 50] [--out benchmarks/UNTUNED.md] [--db DIR]

With --db DIR: each network is first tuned into DIR on this machine (`edgecompile tune --resume`:
only what DIR lacks; the host runner, one thread), then its tuned build is timed in the same
interleaved loop as the untuned build and the peers.

The peers not installed are skipped (and named in the table): `make test`'s .venv has only
onnxruntime; benchmarks/run.sh sets up .venv-bench with all of them (and .venv-litert, the
converter LiteRT needs: export EDGECOMPILE_LITERT_PYTHON=.venv-litert/bin/python).

With --models NAME,...: only those networks are run again; the table keeps the other rows from
the previous run's JSON (UNTUNED.json), each row saying which run measured it.

For every network: our build without tuning records and each peer, timed in this process on the
same input, one thread, their calls interleaved (one of each in turn), medians after warm-up
(edgecompile.measure.bench).
ExecuTorch runs in a child process per network (benchmarks/isolated.py), timed there beside our
build's library: it segfaults inside its runtime on some networks, which then costs its cell (the
table says why), not the run; its ratio is ours / ExecuTorch as the child measured both. The
machine is shared and has 2 cores: the medians move between runs, only the ratio in one run
means anything. Also records the build's wall-clock time (a loaded machine inflates it too), and
our GFLOP/s (2 x MACs / median) against the single-thread FMA peak benchmarks/peak.c measures in
the same run.
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

from isolated import ISOLATED, bench_isolated  # noqa: E402  (benchmarks/isolated.py)
from zoo import available, machine_peak  # noqa: E402  (benchmarks/zoo.py)

PEERS = ["onnxruntime", "litert", "executorch"]

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


def run_one(name: str, opts: dict, runs: int, peers: list[str], db: Path | None = None) -> dict:
    source = load_model(name, ModelOptions(num_classes=1000, **opts))
    target = load_target("host")
    tuning = None
    if db is not None:     # tune what the database lacks (edgecompile tune --resume), then build with it
        from edgecompile.compiler import model_kernels
        from edgecompile.tune.records import TuningRecords
        from edgecompile.tune.search import Runner, tune

        t0 = time.monotonic()
        from edgecompile.tune.validate import validate_in_network

        tune(model_kernels(source, target, progress=Progress(quiet=True)), target, Runner("host"), db, resume=True,
             log=lambda m: None)
        validate_in_network(source, target, db, log=lambda m: print("  " + m, file=sys.stderr, flush=True))
        print(f"  tuned in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        tuning = TuningRecords(db, target)
    with tempfile.TemporaryDirectory(prefix="ec-untuned-") as tmp:
        out = Path(tmp) / "build"
        t0 = time.monotonic()
        report = write_build(source, target, out, BuildOptions(compare_unfused=False), Progress(quiet=True))
        build_s = time.monotonic() - t0
        variants = {}
        if tuning is not None:
            tuned = write_build(source, target, Path(tmp) / "tuned", BuildOptions(compare_unfused=False, tuning=tuning),
                                Progress(quiet=True))
            variants["edgecompile-tuned"] = str(Path(tmp) / "tuned")
        warmup = max(3, runs // 5)
        res = bench(source, str(out), [p for p in peers if p not in ISOLATED], runs=runs, warmup=warmup,
                    variants=variants)
        isolated = {p: bench_isolated(name, dict(num_classes=1000, **opts), str(out), p, runs, warmup)
                    for p in peers if p in ISOLATED}
    results = res["results"]
    ours = results["edgecompile"]["median_ms"]
    failed = dict(res.get("failed", {}))
    peer_ms = {p: results[p]["median_ms"] for p in peers if p in results}
    # ours / peer, each from one process: the in-process peers against this process's median of ours,
    # an isolated peer against its child's own median of ours
    peer_ratio = {p: ours / ms for p, ms in peer_ms.items()}
    ours_in_child = {}
    for p, r in isolated.items():
        failed.update(r["failed"])
        if p in r["results"]:
            peer_ms[p] = r["results"][p]["median_ms"]
            ours_in_child[p] = r["results"]["edgecompile"]["median_ms"]
            peer_ratio[p] = ours_in_child[p] / peer_ms[p]
    fastest = max(peer_ratio, key=peer_ratio.get) if peer_ratio else None
    extra = {}
    if tuning is not None:
        # tuned / fastest peer = tuned / untuned (this process) x untuned / fastest (its own process)
        tuned_ms = results["edgecompile-tuned"]["median_ms"]
        extra = {"tuned_ms": tuned_ms, "tuned_vs_untuned": tuned_ms / ours,
                 "tuned_ratio_to_fastest": tuned_ms / ours * peer_ratio[fastest] if fastest else None,
                 "tuned_max_abs_diff": results["edgecompile-tuned"]["max_abs_diff_vs_edgecompile"],
                 "kernels_tuned": tuned["tuning"]["kernels_tuned"]}
    return {**extra, "edgecompile_ms": ours, "peers_ms": peer_ms, "peers_ratio": peer_ratio, "peers_failed": failed,
            "edgecompile_ms_in_child": ours_in_child,
            "onnxruntime_ms": peer_ms.get("onnxruntime"),
            "ratio": peer_ratio.get("onnxruntime"),
            "fastest_peer": fastest, "ratio_to_fastest": peer_ratio[fastest] if fastest else None,
            "gflops": 2 * report["macs"] / (ours * 1e6), "build_s": build_s,
            "macs": report["macs"], "untiled": [c["name"] for c in report["calls"]
                                                if c["macs"] and "untiled" in (c.get("schedule") or "")]}

# the team's recorded and published figures (anchors), quoted beside ours: other runs and machines,
# for scale, not ratios. Recorded: medians of 50 runs on this kind of machine (x86-64, one thread,
# AVX2), 2026-11; MobileNet V1 0.25 / 96 with 10 classes there.
RECORDED = {
    "MobileNet V1 0.25 / 96": "LiteRT-XNNPACK 0.34 ms, onnxruntime 0.38-0.48 ms, ExecuTorch 0.41-0.46 ms (10 classes)",
    "MobileNet V2 1.0 / 224": "LiteRT-XNNPACK 9.9-13.2 ms, onnxruntime 12.4-13.7 ms, ExecuTorch 11.0-14.6 ms",
}
PUBLISHED = [
    "MACs (papers): MobileNet V1 1.0/224 569 M, 0.25/224 41 M; MobileNet V2 1.0/224 300 M; "
    "EfficientNet-B0 0.39 B FLOPs; ShuffleNet V2 1.0x 146 M FLOPs.",
    "Raspberry Pi 4 (Cortex-A72 @1.8 GHz, one thread; ncnn benchmark README): MobileNet V1 124 ms, MobileNet V2 "
    "93 ms, ShuffleNet V2 42 ms, SqueezeNet 74 ms, EfficientNet-B0 130 ms; XNNPACK README (multi-threaded): "
    "MobileNet V1 72 ms, V2 41 ms.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="all, or labels' model names, comma-separated")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="peers to time beside ours (default: %(default)s; those not installed are skipped)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out", default=str(HERE / "UNTUNED.md"))
    ap.add_argument("--db", help="a tuning database: also time the build with its records (tuning first what it "
                                 "lacks, as `edgecompile tune --resume` would) beside the untuned one")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    peers, skipped = available([p for p in args.peers.split(",") if p])
    if skipped:
        print(f"peers not installed, skipped: {', '.join(skipped)}", file=sys.stderr)
    peak = max((machine_peak() for _ in range(3)), key=lambda m: m["gflops"])   # the best of 3: other jobs share the cores
    print(f"machine peak {peak['gflops']:.1f} GFLOP/s", file=sys.stderr)
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
        r = run_one(name, opts, args.runs, peers, Path(args.db) if args.db else None)
        r["label"], r["run"], r["peak_gflops"] = label, run, peak["gflops"]
        rows.append(r)
        print(f"  ours {r['edgecompile_ms']:.3f} ms, "
              + ", ".join(f"{p} {ms:.3f} ms" for p, ms in r["peers_ms"].items())
              + (f", {r['ratio_to_fastest']:.2f}x the fastest ({r['fastest_peer']})" if r["fastest_peer"] else "")
              + (f", tuned {r['tuned_ms']:.3f} ms ({r['tuned_ratio_to_fastest']:.2f}x)" if "tuned_ms" in r else "")
              + f", build {r['build_s']:.1f} s", file=sys.stderr, flush=True)
    shown = [p for p in PEERS if any(p in r.get("peers_ms", {}) for r in rows)] or ["onnxruntime"]
    lines = [("# Untuned and tuned" if any("tuned_ms" in r for r in rows) else "# Untuned")
             + " host latency against the fastest peer", "",
             f"`benchmarks/untuned.py`, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             "one thread, median of each in one process run, the runtimes' calls interleaved; 1000 classes. The machine is shared (2 cores, "
             "other jobs running): the medians move between runs, the ratio within a run is the figure. "
             "Build time is wall clock on the same loaded machine. A row's run says when it was measured "
             "(`--models` reruns some rows and keeps the others). GFLOP/s = 2 x MACs / our median, against "
             f"the single-thread FP32 FMA peak benchmarks/peak.c measured in the row's run "
             f"({peak['gflops']:.0f} GFLOP/s in this run). Issue 14's aim: <= 1.15x the fastest peer."
             + (" ExecuTorch ran in a child process per network (benchmarks/isolated.py: a segfault costs its cell, "
                "not the run), timed there beside our build: its ratio is ours / ExecuTorch in that child, the "
                "other peers' ours / peer in the main process; the fastest peer is the one with the highest ratio."
                if any(p in ISOLATED for p in peers) else ""), ""]
    if skipped:
        lines += [f"Peers not installed in this run (skipped): {', '.join(skipped)}.", ""]
    tuned = any("tuned_ms" in r for r in rows)
    if tuned:
        lines += [f"Tuned: the build with the records of a tuning database (`--db`; `edgecompile tune` on this machine, "
                  "its host runner), timed in the same interleaved loop as the untuned build and the peers; "
                  "tuned / fastest = tuned / untuned in that loop x untuned / fastest. Issue 14's aim: <= 1.0x. "
                  "Kernels tuned: the distinct kernels the tuned build took from a record (the best record may be "
                  "the rule's own choice).", ""]
    tuned_head = " | edgecompile tuned (ms) | tuned / fastest | tuned / untuned | kernels tuned" if tuned else ""
    lines += ["| network | edgecompile untuned (ms) | " + " | ".join(f"{p} (ms)" for p in shown)
              + " | fastest peer | ours / fastest | ours / onnxruntime" + tuned_head
              + " | GFLOP/s (% of peak) | before (issue 14) | build (s) | untiled kernels with MACs | run "
              "| recorded peers (anchors) |",
              "|---|---:|" + "---:|" * len(shown) + "---|---:|---:|" + ("---:|---:|---:|---:|" if tuned else "")
              + "---:|---|---:|---|---|---|"]
    for r in rows:
        pm = r.get("peers_ms") or {"onnxruntime": r["onnxruntime_ms"]}
        failed = r.get("peers_failed", {})
        cells = [f"{pm[p]:.3f}" if p in pm else ("failed" if p in failed else "–") for p in shown]
        fastest = r.get("fastest_peer") or "onnxruntime"
        to_fastest = r.get("ratio_to_fastest") or r["ratio"]
        flops = (f"{r['gflops']:.1f} ({100 * r['gflops'] / r['peak_gflops']:.0f}%)" if r.get("gflops") else "–")
        lines.append(f"| {r['label']} | {r['edgecompile_ms']:.3f} | " + " | ".join(cells)
                     + f" | {fastest} | {to_fastest:.2f}x | "
                     + (f"{r['ratio']:.2f}x" if r.get("ratio") else "–")
                     + ((f" | {r['tuned_ms']:.3f} | {r['tuned_ratio_to_fastest']:.2f}x | {r['tuned_vs_untuned']:.3f}x | "
                         f"{r['kernels_tuned']}" if "tuned_ms" in r else " | – | – | – | –") if tuned else "")
                     + f" | {flops} | {BEFORE.get(r['label'], '')} | {r['build_s']:.1f} | {len(r['untiled'])} | "
                     f"{r.get('run', 'earlier')} | {RECORDED.get(r['label'], '')} |")
    notes = sorted({f"{p} on {r['label']}: {why}" for r in rows for p, why in r.get("peers_failed", {}).items()})
    if notes:
        lines += ["", "Peers that could not run a network:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Recorded peers (anchors): the same peers timed on an x86-64 AVX2 machine without VNNI in 2026-11, "
              "another run: for scale only. Published figures, other machines:", ""] + [f"- {t}" for t in PUBLISHED]
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
