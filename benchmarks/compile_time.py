"""Compile time of a host build, another revision (before) against this tree (after), in one run.

    .venv/bin/python benchmarks/compile_time.py [--before main] [--runs 3] [--out benchmarks/COMPILE_TIME.md]

Each run is the user's command, `edgecompile build mobilenet_v2 --target host --no-tuning --out D`
(MobileNet V2 1.0/224, fp32, untuned), as a child process: wall time, and CPU time (user + sys of
the process and its children: the Python side and every compiler). The revisions alternate run by
run, so both see the same machine load. This tree is measured cold (an empty object cache) and
warm (the cache its cold run of the same round filled). The phases are the build's own `[ t s]`
progress lines. The machine is shared: CPU time is the figure to compare; wall time depends on
the load and on the number of cores (the C compiles run os.cpu_count() at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import baseline_tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = ["mobilenet_v2", "--target", "host", "--no-tuning"]
NOTES = "<!-- written by hand from here on; compile_time.py keeps it -->"
PHASE = re.compile(r"^\[\s*([\d.]+)s\] (.*)$")


def _run(env: dict[str, str], out: Path, cwd: Path) -> dict:
    """One build as a child process in `cwd` (`python -m` imports the package of its directory first)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "edgecompile", "build", *MODEL, "--out", str(out)],
                          env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr}")
    phases = [(float(m.group(1)), m.group(2).replace(str(out), "OUT"))
              for m in map(PHASE.match, done.stderr.splitlines()) if m]
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "phases": phases}


def _phase_split(phases: list[tuple[float, str]], wall: float) -> dict[str, float]:
    """Seconds before the first progress line (imports, model, ONNX export), in Python (to the
    compiler), compiling and linking C, and after."""
    first_c = next(s for s, msg in phases if msg.startswith("compiling"))
    end = phases[-1][0]
    return {"start": wall - end, "python": first_c, "c": end - first_c}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="main", help="git revision measured as before")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/COMPILE_TIME.md")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"before": [], "after cold": [], "after warm": []}
    with baseline_tree(args.before) as (tree, before_env), tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            cache = Path(tmp) / f"objects{i}"
            after_env = {**os.environ, "EDGECOMPILE_OBJECT_CACHE": str(cache)}
            for label, env, cwd in (("before", before_env, tree), ("after cold", after_env, REPO),
                                    ("after warm", after_env, REPO)):
                r = _run({**env, "EDGECOMPILE_TUNING_DB": str(Path(tmp) / "no-tuning")}, Path(tmp) / f"{label}{i}", cwd)
                results[label].append(r)
                print(f"run {i + 1} {label:10s}: {r['wall_s']:5.1f} s wall, {r['cpu_s']:5.1f} s CPU  "
                      f"{_phase_split(r['phases'], r['wall_s'])}", flush=True)
    rows = []
    for label, runs in results.items():
        split = [_phase_split(r["phases"], r["wall_s"]) for r in runs]
        rows.append({"build": label, "wall_s": statistics.median(r["wall_s"] for r in runs),
                     "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                     "wall_min_s": min(r["wall_s"] for r in runs), "cpu_min_s": min(r["cpu_s"] for r in runs),
                     **{f"{k}_s": statistics.median(s[k] for s in split) for k in ("start", "python", "c")}})
    lines = [
        "# Compile time: MobileNet V2 1.0/224, host, fp32, untuned",
        "",
        f"`benchmarks/compile_time.py --before {args.before} --runs {args.runs}`: "
        "`edgecompile build mobilenet_v2 --target host --no-tuning`, before (revision "
        f"`{args.before}`) and after (this tree), alternating in one run on this machine "
        f"({os.cpu_count()} CPUs, shared: CPU time is the comparable figure). Medians of {args.runs} runs "
        "(minimum in brackets). CPU = user + sys of the build and all its children (compilers). "
        "Phases (wall, from the build's progress lines): start = imports, model, ONNX export; "
        "Python = Relax, schedules, TVM codegen, memory plan, C text; C = compiling and linking.",
        "",
        "| build | wall s | CPU s | start s | Python s | C s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['build']} | {r['wall_s']:.1f} ({r['wall_min_s']:.1f}) | {r['cpu_s']:.1f} "
                     f"({r['cpu_min_s']:.1f}) | {r['start_s']:.1f} | {r['python_s']:.1f} | {r['c_s']:.1f} |")
    out = Path(args.out)
    notes = out.read_text().partition(NOTES)[2] if out.exists() and NOTES in out.read_text() else "\n"
    out.write_text("\n".join(lines) + "\n\n" + NOTES + notes)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "runs": results}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
