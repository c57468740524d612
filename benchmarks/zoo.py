"""Side-by-side host latency of the zoo: our generated C against the runtimes users pick today.

    benchmarks/run.sh            # sets up .venv-bench with the optional peers, then runs this
    python benchmarks/zoo.py [--peers onnxruntime,litert,...] [--quick] [--out benchmarks/RESULTS.md]

For every network: one process run, the same input, one thread each, median after warm-up
(edgecompile.bench). Writes RESULTS.md (tables of medians and ratios), RESULTS.json and plots
(latency bars, and a roofline: our achieved FLOP rate against this machine's measured peak FMA
rate and streaming bandwidth from benchmarks/peak.c). Peers whose packages are missing are
skipped and named in the output. ARM results (instruction counts under QEMU, TFLite+XNNPACK vs our
rpi4 build) come from benchmarks/arm_xnnpack.py's JSON when present.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgecompile.measure.bench import OPTIONAL, bench  # noqa: E402
from edgecompile.ir.frontend import ModelOptions, load_model  # noqa: E402
from edgecompile.compiler import BuildOptions, Progress, write_build  # noqa: E402
from edgecompile.targets import load_target  # noqa: E402

from isolated import ISOLATED, bench_isolated  # noqa: E402  (benchmarks/isolated.py)

# issue 14's nine rows (the seven families at 224, MobileNet V1 0.25 at 32 and 96) and MobileNet V2 0.35 / 96
MODELS = [
    ("mobilenet_v1", dict(width_mult=0.25, resolution=32), "MobileNet V1 0.25 / 32"),
    ("mobilenet_v1", dict(width_mult=0.25, resolution=96), "MobileNet V1 0.25 / 96"),
    ("mobilenet_v1", dict(width_mult=1.0, resolution=224), "MobileNet V1 1.0 / 224"),
    ("mobilenet_v2", dict(width_mult=1.0, resolution=224), "MobileNet V2 1.0 / 224"),
    ("mobilenet_v2", dict(width_mult=0.35, resolution=96), "MobileNet V2 0.35 / 96"),
    ("squeezenet1_1", dict(resolution=224), "SqueezeNet 1.1 / 224"),
    ("shufflenet_v2", dict(resolution=224), "ShuffleNet V2 1.0x / 224"),
    ("shufflenet_v1", dict(resolution=224), "ShuffleNet V1 g3 / 224"),
    ("xception", dict(resolution=224), "Xception / 224"),
    ("efficientnet_b0", dict(resolution=224), "EfficientNet-B0 / 224"),
]
# issue 14's aims, x the fastest peer: untuned builds, tuned builds
AIM_UNTUNED, AIM_TUNED = 1.15, 1.0
ALL_PEERS = ["onnxruntime", "litert", "executorch", "tvm-vm", "torch", "tflm"]
SLOW_PEERS = {"tflm": 2e8}     # reference kernels: only for networks under this many MACs


def machine_peak() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "peak"
        subprocess.run(["gcc", "-O3", "-march=native", "-o", str(exe), str(HERE / "peak.c")], check=True)
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    vals = dict(line.split() for line in out.splitlines())
    return {"gflops": float(vals["gflops"]), "bandwidth_gbs": float(vals["bandwidth_gbs"]),
            "vector_lanes": int(vals["vector_lanes"])}


def machine_name() -> str:
    """The CPU's model name and its widest float vectors, e.g. 'AMD EPYC (x86_64, AVX-512)'."""
    model, flags = platform.processor() or "cpu", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("cpu", "", platform.machine()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = value
    except OSError:
        pass
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "NEON" if " asimd" in flags else ""
    return f"{model} ({platform.machine()}{', ' + isa if isa else ''})"


def available(peers: list[str]) -> tuple[list[str], list[str]]:
    ok, skipped = [], []
    for p in peers:
        mods = OPTIONAL.get(p, ())
        (ok if all(importlib.util.find_spec(m) for m in mods) else skipped).append(p)
    return ok, skipped


def run_one(name: str, opts: dict, peers: list[str], runs: int, warmup: int, db: Path | None) -> dict:
    source = load_model(name, ModelOptions(num_classes=1000, **opts))
    target = load_target("host")
    tuning = None
    if db is not None:     # tune (resuming what the committed database already has), then use it
        from edgecompile.compiler import model_kernels
        from edgecompile.tune.records import TuningRecords
        from edgecompile.tune.search import Runner, tune

        tune(model_kernels(source, target, progress=Progress(quiet=True)), target, Runner("host"), db, resume=True,
             log=lambda m: None)
        tuning = TuningRecords(db, target)
    with tempfile.TemporaryDirectory(prefix="ec-zoo-") as tmp:
        out = Path(tmp) / "build"
        report = write_build(source, target, out, BuildOptions(compare_unfused=False, tuning=tuning),
                             Progress(quiet=True))
        variants = {}
        if tuning is not None:
            write_build(source, target, Path(tmp) / "untuned", BuildOptions(compare_unfused=False), Progress(quiet=True))
            variants["edgecompile-untuned"] = str(Path(tmp) / "untuned")
        use = [p for p in peers if report["macs"] < SLOW_PEERS.get(p, float("inf"))]
        res = bench(source, str(out), [p for p in use if p not in ISOLATED], runs=runs, warmup=warmup,
                    variants=variants)
        res.setdefault("failed", {})
        for p in [p for p in use if p in ISOLATED]:     # in a child process: a segfault costs its cell only
            child = bench_isolated(name, dict(num_classes=1000, **opts), str(out), p, runs, warmup)
            res["failed"].update(child["failed"])
            if p in child["results"]:
                res["results"][p] = {**child["results"][p],
                                     "edgecompile_ms_in_child": child["results"]["edgecompile"]["median_ms"]}
    res["tuned_kernels"] = report["tuning"]["kernels_tuned"]
    res["macs"], res["arena_bytes"], res["weights_bytes"] = report["macs"], report["arena_bytes"], report["weights_bytes"]
    return res


def plots(rows: list[dict], peak: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["label"] for r in rows]
    peers = sorted({p for r in rows for p in r["results"]}, key=lambda p: (p != "edgecompile", p))
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(peers)
    for i, p in enumerate(peers):
        vals = [peer_ms(r["results"], p) if p in r["results"] else np.nan for r in rows]
        isolated = any("edgecompile_ms_in_child" in r["results"].get(p, {}) for r in rows)
        ax.bar(np.arange(len(rows)) + i * width, vals, width,
               label=f"{p} (own process, scaled by ours there)" if isolated else p)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, names, rotation=15, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms, log scale), 1 thread")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("host latency: edgecompile vs peers (lower is better)")
    fig.tight_layout()
    fig.savefig(out_dir / "results_latency.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    ai = np.logspace(-1, 3, 100)
    ax.loglog(ai, np.minimum(peak["gflops"], ai * peak["bandwidth_gbs"]), "k-", label="roofline (measured)")
    for r in rows:
        ec = r["results"]["edgecompile"]["median_ms"]
        flops = 2 * r["macs"]
        moved = r["weights_bytes"] + r["arena_bytes"]      # compulsory traffic, lower bound
        ax.loglog(flops / moved, flops / (ec * 1e-3) / 1e9, "o", label=r["label"])
    ax.set_xlabel("arithmetic intensity (FLOP / byte of weights + arena)")
    ax.set_ylabel("GFLOP/s (1 thread)")
    ax.set_title(f"roofline: peak {peak['gflops']:.0f} GFLOP/s, {peak['bandwidth_gbs']:.1f} GB/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "results_roofline.png", dpi=110)
    plt.close(fig)
    return ["results_latency.png", "results_roofline.png"]


def _n(v: float | None) -> str:
    return f"{int(v):,}" if v else "–"


def arm_section(arm: list[dict]) -> list[str]:
    """The ARM table from benchmarks/arm_xnnpack.json (benchmarks/arm_compare.py)."""
    aim = next((a["aim_ratio"] for a in arm if a.get("aim_ratio")), 0.9)
    lines = ["## ARM: instruction counts under `qemu-aarch64 -cpu cortex-a72`", "",
             "Emulator instruction counts per inference, not cycles: our rpi4 build (`edgecompile test` on the",
             "emulated Pi, our QEMU plugin) against TFLite with XNNPACK and TFLite's built-in kernels (ai-edge-litert",
             "aarch64 wheel in an arm64 Debian root, num_threads=1, see benchmarks/arm_xnnpack.py), both under",
             "`qemu-aarch64 -cpu cortex-a72`, on the same network: same zoo options, seed 0 weights, 1000 classes,",
             "float32. Regenerate: `benchmarks/arm_xnnpack.py`, then `benchmarks/arm_compare.py`, then",
             f"`benchmarks/zoo.py --render-only`. The aim (issue 14) is ours / XNNPACK <= {aim}.", "",
             "| network | ours untuned | ours tuned | TFLite+XNNPACK | TFLite built-in | ours / XNNPACK | aim |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for a in arm:
        ours, xnn = a.get("edgecompile_instructions_per_inference"), a.get("tflite_xnnpack_instructions_per_inference")
        untuned = a.get("edgecompile_untuned_instructions_per_inference")
        tuned = a.get("edgecompile_tuned_instructions_per_inference")
        builtin = a.get("tflite_builtin_instructions_per_inference")
        ratio = f"{ours / xnn:.2f}" if ours and xnn else "–"
        met = "–" if not (ours and xnn) else ("met" if ours / xnn <= aim else f"not met ({aim})")
        lines.append(f"| {a['label']} | {_n(untuned)} | {_n(tuned)} | {_n(xnn)} | {_n(builtin)} | {ratio} | {met} |")
        if a.get("tflite_error"):
            notes.append(f"- {a['label']}: {a['tflite_error']}")
        for kind in ("edgecompile_untuned", "edgecompile_tuned"):
            if isinstance(a.get(kind), dict) and not a[kind].get("check_passed", True):
                notes.append(f"- {a['label']}: our {kind.split('_')[1]} build's output check failed: "
                             f"{'; '.join(a[kind].get('failures') or [])}")
    lines += [""] + notes + ([""] if notes else [])
    lines += ["`ours / XNNPACK` uses our best build of the row (tuned where that column has a number). "
              "`–` in `ours tuned`: not tuned in this run.", ""]
    if (HERE / "ARM_PROFILE.md").exists():
        lines += ["Where our instructions go on the rows furthest from XNNPACK (per kernel): [ARM_PROFILE.md](ARM_PROFILE.md).", ""]
    return lines


def peer_ms(res: dict, peer: str) -> float:
    """`peer`'s median on this process's scale: as timed here, or for a peer timed in a child process
    (benchmarks/isolated.py) its time there x ours here / ours there, the ratio it was measured at."""
    v = res[peer]
    if "edgecompile_ms_in_child" in v:
        return v["median_ms"] * res["edgecompile"]["median_ms"] / v["edgecompile_ms_in_child"]
    return v["median_ms"]


def to_fastest(res: dict, build: str) -> float:
    """Our build `build` (a key of `res`) against the fastest peer, each ratio from one process
    (`peer_ms`). NaN without peers."""
    peers = [peer_ms(res, k) for k in res if not k.startswith("edgecompile")]
    return res[build]["median_ms"] / min(peers) if peers else float("nan")


def write_markdown(rows: list[dict], peak: dict, skipped: list[str], pngs: list[str], arm: list[dict],
                   path: Path, machine: str) -> None:
    peers = sorted({p for r in rows for p in r["results"]}, key=lambda p: (p != "edgecompile", p))
    lines = [
        "# Benchmark results", "",
        "Regenerate with `benchmarks/run.sh` (sets up `.venv-bench` with the optional peers). Every row is one",
        "process run: the same random input, one thread for every runtime, median of the runs after warm-up.",
        f"Machine: {machine}; numbers are from this machine and",
        "only the ratios mean anything elsewhere. 1000 classes.", "",
        "## Host latency (ms, median)", "",
        "| network | MACs | " + " | ".join(peers) + " | ours vs fastest peer | untuned vs fastest peer | aims |",
        "|---|---:|" + "---:|" * len(peers) + "---:|---:|---|",
    ]
    met = {"untuned": 0, "tuned": 0}
    for r in rows:
        res = r["results"]
        ratio = to_fastest(res, "edgecompile")
        tuned = "edgecompile-untuned" in res          # else `edgecompile` is the untuned build (--no-tuning)
        untuned = to_fastest(res, "edgecompile-untuned") if tuned else ratio
        aims = [f"untuned {'met' if untuned <= AIM_UNTUNED else 'not met'}"]
        met["untuned"] += untuned <= AIM_UNTUNED
        if tuned:
            aims.append(f"tuned {'met' if ratio <= AIM_TUNED else 'not met'}")
            met["tuned"] += ratio <= AIM_TUNED
        cells = [f"{res[p]['median_ms']:.3f}" if p in res else "–" for p in peers]
        lines.append(f"| {r['label']} | {r['macs'] / 1e6:.1f} M | " + " | ".join(cells)
                     + f" | {ratio:.2f}x | {untuned:.2f}x | {', '.join(aims)} |")
    tuned_rows = sum("edgecompile-untuned" in r["results"] for r in rows)
    lines += ["", f"Issue 14's aims, x the fastest peer in the same run: untuned <= {AIM_UNTUNED}x (met by "
              f"{met['untuned']} of {len(rows)})" + (f", tuned <= {AIM_TUNED}x (met by {met['tuned']} of {tuned_rows})"
                                                    if tuned_rows else "") + "."]
    lines += ["", "`edgecompile` is the build with the tuning records of `--db` (default `benchmarks/tuning/`, tuned on this",
              "machine by this script with the host runner; ~30 MB of MetaSchedule JSON, so not committed: a run resumes",
              "it), `edgecompile-untuned` the rules' own schedules. `ours vs",
              "fastest peer` < 1 means we are faster than every peer; > 1, the fastest peer is that many times faster.",
              f"Peers timed in a child process of their own ({', '.join(sorted(ISOLATED))}: a crash costs its cell only)",
              "are rated against our build timed in that child, their milliseconds are from another moment of the",
              "machine; every other runtime is timed interleaved with ours in this process.", ""]
    if skipped:
        lines += [f"Peers not installed in this run (skipped): {', '.join(skipped)}.", ""]
    for r in rows:
        for peer, why in r.get("failed", {}).items():
            lines += [f"{peer} could not run {r['label']}: {why}", ""]
    lines += ["## Roofline", "",
              f"Measured on this machine by `benchmarks/peak.c`: peak single-thread FP32 FMA rate "
              f"{peak['gflops']:.1f} GFLOP/s ({peak['vector_lanes']}-lane vectors), streaming bandwidth "
              f"{peak['bandwidth_gbs']:.1f} GB/s.", "",
              "| network | our GFLOP/s | share of peak |", "|---|---:|---:|"]
    for r in rows:
        g = 2 * r["macs"] / (r["results"]["edgecompile"]["median_ms"] * 1e-3) / 1e9
        lines.append(f"| {r['label']} | {g:.1f} | {100 * g / peak['gflops']:.0f}% |")
    lines += [""] + [f"![{p}]({p})" for p in pngs] + [""]
    if arm:
        lines += arm_section(arm)
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default=",".join(ALL_PEERS))
    ap.add_argument("--quick", action="store_true", help="only the two small networks, fewer runs")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--db", default=str(HERE / "tuning"), help="tuning database (tuned first, resuming)")
    ap.add_argument("--no-tuning", action="store_true")
    ap.add_argument("--models", help="comma-separated labels' network names to run (default: all)")
    ap.add_argument("--render-only", action="store_true",
                    help="run nothing: rewrite RESULTS.md from RESULTS.json and arm_xnnpack.json (e.g. after "
                         "benchmarks/arm_compare.py) and redraw the plots")
    args = ap.parse_args()
    if args.render_only:
        out = Path(args.out)
        saved = json.loads(out.with_suffix(".json").read_text())
        arm_json = HERE / "arm_xnnpack.json"
        arm = json.loads(arm_json.read_text()) if arm_json.exists() else []
        pngs = plots(saved["rows"], saved["peak"], out.parent)
        write_markdown(saved["rows"], saved["peak"], saved.get("skipped", []), pngs,
                       arm if isinstance(arm, list) else [arm], out, saved.get("machine", "not recorded"))
        print(f"wrote {out} (rendered only)", file=sys.stderr)
        return
    peers, skipped = available([p for p in args.peers.split(",") if p])
    if skipped:
        print(f"skipping peers without their packages: {', '.join(skipped)}", file=sys.stderr)
    peak = machine_peak()
    print(f"machine peak {peak['gflops']:.1f} GFLOP/s, {peak['bandwidth_gbs']:.1f} GB/s", file=sys.stderr)
    models = [m for m in MODELS if not args.quick or m[1].get("resolution", 224) <= 96]
    if args.models:
        models = [m for m in models if m[0] in args.models.split(",")]
    db = None if args.no_tuning else Path(args.db)
    rows = []
    for name, opts, label in models:
        print(f"{label} ...", file=sys.stderr, flush=True)
        small = opts.get("resolution", 224) <= 96
        res = run_one(name, opts, peers, runs=50 if small else 15, warmup=10 if small else 3, db=db)
        res["label"] = label
        rows.append(res)
        print("  " + ", ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in res["results"].items()), file=sys.stderr)
    out = Path(args.out)
    previous = out.with_suffix(".json")
    if args.models and previous.exists():     # a partial run: keep the other networks' rows
        old = json.loads(previous.read_text())
        done = {r["label"] for r in rows}
        order = [label for _, _, label in MODELS]
        rows = sorted([r for r in old["rows"] if r["label"] not in done] + rows,
                      key=lambda r: order.index(r["label"]) if r["label"] in order else len(order))
    arm_json = HERE / "arm_xnnpack.json"
    arm = json.loads(arm_json.read_text()) if arm_json.exists() else []
    pngs = plots(rows, peak, out.parent)
    machine = machine_name()
    write_markdown(rows, peak, skipped, pngs, arm if isinstance(arm, list) else [arm], out, machine)
    (out.with_suffix(".json")).write_text(json.dumps({"machine": machine, "peak": peak, "rows": rows,
                                                      "skipped": skipped}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
