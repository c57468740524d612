"""Tuned kernels checked inside the network (host runner): what `tune` keeps for `build`.

The host runner times each candidate alone, in a loop: its weights and rows stay in the caches
from one call to the next, which a kernel inside the network does not get. On an AVX2 machine
the records of that harness made whole networks slower than the untuned build (SqueezeNet 1.1
1.19x, MobileNet V1 1.10x, MobileNet V2 1.10x: benchmarks/TUNED_AVX2.md), a kernel 0.63x in the
harness taking 1.36x inside the network. So after tuning a network, `tune` builds it with and
without the records and times both builds' kernels in the same loop (one inference of each in
turn, platforms.host.interleaved_profiles); a tuned kernel whose time inside the network is not
below `1 - MARGIN` of the untuned one's is set aside in `<db>/<target>/in_network.json`, which
`TuningRecords` reads: `build` then uses the rule's own schedule for it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..compiler import BuildOptions, Progress, write_build
from ..ir.frontend import ModelSource
from ..targets import Target
from .records import IN_NETWORK, TuningRecords, db_key

# a tuned kernel is kept when it takes less than (1 - MARGIN) of the untuned kernel's time inside
# the network
MARGIN = 0.03
RUNS = 40


def validate_in_network(source: ModelSource, target: Target, db: Path, options: BuildOptions = BuildOptions(),
                        runs: int = RUNS, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the network's tuned kernels against the untuned ones inside the network; record which
    are kept. Returns {kernel: {"untuned_ns", "tuned_ns", "kept", "config"}} for the kernels with a
    record (the tuned build's `hits`)."""
    from ..platforms.host import interleaved_profiles

    records = TuningRecords(db, target, in_network=False)
    with tempfile.TemporaryDirectory(prefix="ec-validate-") as tmp:
        plain_dir, tuned_dir = Path(tmp) / "untuned", Path(tmp) / "tuned"
        plain = write_build(source, target, plain_dir, replace(options, tuning=None, compare_unfused=False),
                            Progress(quiet=True))
        tuned = write_build(source, target, tuned_dir, replace(options, tuning=records, compare_unfused=False),
                            Progress(quiet=True))
        if not records.hits:
            return {}
        log(f"timing {len(records.hits)} tuned kernels inside the network against the untuned ones ({runs} runs)")
        per_plain, per_tuned = interleaved_profiles(target, [(plain_dir, plain), (tuned_dir, tuned)], runs)
    out: dict[str, Any] = {}
    for name in records.hits:
        before = sum(ns for c, ns in zip(plain["calls"], per_plain) if c["kernel"] == name)
        after = sum(ns for c, ns in zip(tuned["calls"], per_tuned) if c["kernel"] == name)
        out[name] = {"untuned_ns": round(before), "tuned_ns": round(after),
                     "kept": bool(before) and after < (1 - MARGIN) * before, "config": records.hits[name]}
    path = db / db_key(target) / IN_NETWORK
    saved = json.loads(path.read_text()) if path.exists() else {}
    for name, r in out.items():
        saved[records.keys[name]] = {"kernel": name, "network": source.name, **r}
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    tmp_path.replace(path)
    kept = sum(r["kept"] for r in out.values())
    log(f"kept {kept} of {len(out)} tuned kernels (faster by more than {MARGIN:.0%} inside the network); "
        f"the others build with the rule's own schedule ({path})")
    return out
