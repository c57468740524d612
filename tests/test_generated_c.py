"""The generated C of every zoo family, on the host, the Pi and a Cortex-M board (int8 and fp32), is
byte-identical to the recorded hashes in golden_c.json. A change that alters generated C on
purpose (a new kernel, a new schedule, new zoo weights) records new hashes, in the same commit:

    .venv/bin/python tests/test_generated_c.py --update

Host builds depend on the host vector variant (AVX2 or AVX-512 schedules): both are recorded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("golden_c.json")
FAMILIES = {
    "mobilenet_v1": dict(width_mult=0.25, resolution=96, num_classes=10),
    "mobilenet_v2": dict(width_mult=0.35, resolution=64, num_classes=10),
    "shufflenet_v1": dict(groups=3, width_mult=0.5, resolution=64, num_classes=10),
    "shufflenet_v2": dict(width_mult=0.5, resolution=64, num_classes=10),
    "squeezenet1_0": dict(resolution=64, num_classes=10),
    "squeezenet1_1": dict(resolution=64, num_classes=10),
    "xception": dict(resolution=64, num_classes=10),
    "efficientnet_b0": dict(resolution=64, num_classes=10),
}
TARGETS = [("host", None), ("rpi4", None), ("mps2-an386", "int8"), ("mps2-an386", "fp32")]
# the default run: every family on the host, two families on every target; the rest is slow
QUICK = ({(f, "host", None) for f in FAMILIES} | {(f, t, q) for f in ("mobilenet_v1", "efficientnet_b0")
                                                   for t, q in TARGETS}) - {("efficientnet_b0", "mps2-an386", "int8")}


def sources_hash(family: str, target: str, quant: str | None) -> str:
    from edgecompile.compiler import BuildOptions, Progress, compile_model
    from edgecompile.ir.frontend import ModelOptions, load_model
    from edgecompile.targets import load_target

    source = load_model(family, ModelOptions(**FAMILIES[family]))
    compiled = compile_model(source, load_target(target), BuildOptions(quant=quant, compare_unfused=False),
                             Progress(quiet=True))
    h = hashlib.sha256()
    for name in sorted(compiled.files):
        h.update(name.encode() + b"\0" + compiled.files[name] + b"\0")
    return h.hexdigest()


def key(family: str, target: str, quant: str | None) -> str:
    if target == "host":
        from edgecompile.schedules import family as schedule_family

        return f"{family}/host-{schedule_family('host').VARIANT}"
    return f"{family}/{target}/{quant or 'default'}"


# Xception's weights (20.8 MB int8, 83 MB fp32) are over mps2-an386's 16 MB PSRAM: refused before
# its C is generated (tests/test_budget.py)
CASES = [(f, t, q) for f in FAMILIES for t, q in TARGETS if (f, t) != ("xception", "mps2-an386")]


@pytest.mark.parametrize("family,target,quant", [
    pytest.param(*c, marks=() if c in QUICK else pytest.mark.slow, id=f"{c[0]}-{c[1]}-{c[2] or 'default'}")
    for c in CASES])
def test_generated_c_is_byte_identical_to_the_record(family, target, quant, monkeypatch):
    monkeypatch.setenv("EDGECOMPILE_TUNING_DB", "/nonexistent-edgecompile-db")
    golden = json.loads(GOLDEN.read_text())
    k = key(family, target, quant)
    assert k in golden, f"no recorded hash for {k}: run tests/test_generated_c.py --update"
    assert sources_hash(family, target, quant) == golden[k], f"generated C of {k} changed"


def _update() -> None:
    """Record every hash: host ones once per vector variant, each in its own process."""
    golden = {}
    for variant in ("avx2", "avx512"):
        env = {**os.environ, "EDGECOMPILE_HOST_VECTOR": variant, "EDGECOMPILE_TUNING_DB": "/nonexistent-edgecompile-db"}
        out = subprocess.run([sys.executable, __file__, "--print", variant], env=env, check=True,
                             capture_output=True, text=True).stdout
        golden.update(json.loads(out))
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(golden)} hashes to {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--update"]:
        _update()
    elif sys.argv[1:2] == ["--print"]:
        with_targets = sys.argv[2] == "avx2"     # non-host targets once
        print(json.dumps({key(f, t, q): sources_hash(f, t, q) for f, t, q in CASES if t == "host" or with_targets}))
    else:
        sys.exit("usage: test_generated_c.py --update")
