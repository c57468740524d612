"""Our QEMU TCG plugins (firmware_templates/qemu_plugins/*.c): instruction counting between
marker calls (`ec_insn`) and a set-associative cache model per address range (`ec_cache`).
Built with the host compiler on first use into the user's cache directory, keyed by the
source's hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .. import proc
from ..errors import EdgeCompileError, ToolchainError
from ..paths import cache_dir, template_dir


def build_plugin(name: str) -> Path:
    src = template_dir("qemu_plugins") / f"{name}.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    cache = cache_dir("qemu-plugins")
    lib = cache / f"lib{name}-{digest}.so"
    if lib.exists():
        return lib
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ToolchainError("no host C compiler to build the QEMU plugin")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".tmp{os.getpid()}")
    proc.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src)], what=f"building the QEMU plugin {name}")
    tmp.rename(lib)
    return lib


def plugin_path() -> Path | None:
    """The instruction-counting plugin (None if it cannot be built here)."""
    try:
        return build_plugin("ec_insn")
    except ToolchainError:
        return None


def count_between_marks(emulator: list[str], exe: Path, mark: int, timeout: float = 300) -> int:
    """Instructions between the two marker calls of a measuring program run under a user-mode
    emulator with our counting plugin (deterministic)."""
    plugin = build_plugin("ec_insn")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.txt"
        proc.run([*emulator, "-plugin", f"{plugin},mark={mark:#x},out={out}", str(exe)],
                 what=f"a tuning candidate under {emulator[0]}", timeout=timeout)
        counts = [int(v) for v in out.read_text().split()] if out.exists() else []
    if len(counts) < 2:
        raise EdgeCompileError("the instruction-counting plugin recorded no marker calls")
    return counts[1]
