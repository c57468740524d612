"""Running the target's C compiler on generated code, with errors that say what failed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from .errors import ToolchainError


def require(tool: str, hint: str = "run `make setup` (or see README: toolchains)") -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainError(f"'{tool}' not found on PATH; {hint}")
    return path


def run(cmd: Sequence[str], cwd: Path, what: str, timeout: float = 1800) -> str:
    require(cmd[0])
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{what}: timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        lines = [ln for ln in msg.splitlines() if "error" in ln.lower()] or msg.splitlines() or ["(no output)"]
        raise ToolchainError(f"{what} failed: {lines[0].strip()}")
    return proc.stdout + proc.stderr


def compile_host(out_dir: Path, cc: str, cflags: Sequence[str], ldflags: Sequence[str],
                 sources: Sequence[str], runner_src: Path) -> None:
    """Build libmodel.so (for `edgecompile run` and tests) and the `runner` executable."""
    flags = list(cflags)
    run([cc, *flags, "-fPIC", "-shared", "-o", "libmodel.so", *sources, *ldflags], out_dir,
        f"{cc}: building libmodel.so")
    shutil.copyfile(runner_src, out_dir / "runner.c")
    run([cc, *flags, "-o", "runner", "runner.c", *sources, *ldflags], out_dir, f"{cc}: building runner")
