"""The generated C of every zoo family compiles warning-free with -Wall -Wextra -Werror and runs
clean under AddressSanitizer and UndefinedBehaviorSanitizer, with the same results."""

import shutil
import subprocess

import numpy as np
import pytest

from helpers import compare_with_reference, slow_params
from test_build_zoo import FAMILIES, REL

FLAGS = ["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


@pytest.mark.parametrize("name,opts", slow_params(FAMILIES, ("efficientnet_b0", "xception"), key=lambda f: f[0]), ids=[f[0] for f in FAMILIES])   # 30 s and 22 s on CI
def test_sanitized_build_runs_clean(build_cache, tmp_path, name, opts):
    source, out, _ = build_cache(name, **opts)
    for f in ("model.c", "model.h", "runner.c", "weights.c", "weights.S", "weights.bin"):
        if (out / f).exists():
            shutil.copy(out / f, tmp_path / f)
    weights = "weights.c" if (tmp_path / "weights.c").exists() else "weights.S"
    proc = subprocess.run(["gcc", *FLAGS, "-o", "runner_san", "runner.c", "model.c", weights, "-lm"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in proc.stderr
    def run(x):
        x.tofile(tmp_path / "x.bin")
        done = subprocess.run(["./runner_san", "x.bin", "y.bin"], cwd=tmp_path, capture_output=True, text=True,
                              env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr
        return np.fromfile(tmp_path / "y.bin", np.float32).reshape(source.outputs[0].shape)

    compare_with_reference(run, lambda x: source.reference(x)[0], source.inputs[0].shape, REL, seeds=(5, 6))
