"""A peer timed in a child process of its own, beside our build, so that a peer which crashes the
process (ExecuTorch 1.5.1 segfaults inside its runtime on some networks: a segfault cannot be
caught in-process) costs that peer's row, not the whole run.

The child loads the same zoo model (same options, same seed: the same weights and input) and our
build's library, and runs `edgecompile.measure.bench` on them: our build and the peer timed one
after the other in that one process, as every in-process peer is. Its ratio ours / peer is
therefore a same-process figure; its milliseconds are from another moment of a shared machine.

    python benchmarks/isolated.py '{"model": ..., "options": {...}, "build": DIR, "peer": P, "runs": N, "warmup": W}'

prints the bench result as JSON on its last line of stdout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ISOLATED = {"executorch"}      # peers run in a child process by untuned.py and zoo.py


def bench_isolated(model: str, options: dict, build: str, peer: str, runs: int, warmup: int,
                   timeout_s: float = 1800.0) -> dict:
    """bench() of our build and `peer` in a child process: {"results": {"edgecompile": ..., peer: ...},
    "failed": {}} as bench returns, or {"results": {}, "failed": {peer: why}} when the child died
    (the signal that ended it, or its last line of stderr), failed or timed out."""
    job = json.dumps({"model": model, "options": options, "build": build, "peer": peer, "runs": runs,
                      "warmup": warmup})
    try:
        child = subprocess.run([sys.executable, str(Path(__file__).resolve()), job], capture_output=True, text=True,
                               timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"results": {}, "failed": {peer: f"no result within {timeout_s:.0f} s (child process killed)"}}
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        return {"results": {}, "failed": {peer: f"its child process died of {name} (run in a process of its own)"}}
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        err = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        return {"results": {}, "failed": {peer: f"child process failed: {err[:200]}"}}
    return json.loads(lines[-1])


def _child(job: dict) -> None:
    sys.path.insert(0, str(HERE.parent))
    from edgecompile.ir.frontend import ModelOptions, load_model
    from edgecompile.measure.bench import bench

    source = load_model(job["model"], ModelOptions(**job["options"]))
    res = bench(source, job["build"], [job["peer"]], runs=job["runs"], warmup=job["warmup"])
    print(json.dumps({"results": res["results"], "failed": res.get("failed", {})}), flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
