"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def random_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, timeout: float = 600):
    """Run the installed console script the way a user does."""
    exe = Path(sys.executable).with_name("edgecompile")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "edgecompile"]), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
