"""Compiling a build's translation units into object files: several compilers at a time
(os.cpu_count()), and through a cache of object files shared by all builds.

A cached object is keyed by everything its bytes depend on: the compiler (its resolved path, size,
modification time and `--version`), the flags, the target, the source's file name and text, and the
bytes of every file it includes with `#include "..."` or `.incbin "..."` from its directory or an
`-I` directory (model.h, weights.bin); system headers are covered by the compiler's identity. The
cache lives under the user's cache directory (`objects/`; `$EDGECOMPILE_OBJECT_CACHE` names another
directory, or `off`). An entry is written to a temporary file and renamed into place, so concurrent
builds never see half an entry; each entry carries the SHA-256 of its object, checked before the
object is used: a damaged entry is counted, removed and compiled again, never linked. Above
`$EDGECOMPILE_OBJECT_CACHE_MB` (default 2048) the least recently used entries are removed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import proc
from ..codegen.weights import arrays_asm, parse_weights_c
from ..errors import EdgeCompileError
from ..paths import cache_dir

CACHE_VERSION = b"edgecompile object cache 1"
MAGIC = b"ECOBJ1 "
DEFAULT_LIMIT_MB = 2048
_INCLUDE = re.compile(rb'^\s*(?:#\s*include|\.incbin)\s+"([^"]+)"', re.M)   # C headers, assembler data


@dataclass(frozen=True)
class Unit:
    """One translation unit: `source` (a file name relative to `cwd`, where the compiler runs)
    compiled into `obj`."""

    cwd: Path
    source: str
    obj: Path


@dataclass
class CompileStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0                                     # entries found damaged (and replaced)
    compiled: list[str] = field(default_factory=list)    # sources the compiler ran on

    def describe(self) -> str:
        text = f"{self.hits} cached, {self.misses} compiled"
        return text + (f", {self.corrupt} damaged cache entries replaced" if self.corrupt else "")


def source_units(build: Path, tmp: Path, sources: Sequence[str]) -> list[Unit]:
    """The units of a build's `sources` (compiled in `build`, objects in `tmp`). `weights.c`, when
    it is exactly what codegen.weights writes, becomes an assembly file that includes its arrays'
    bytes (read from it with numpy, checked by writing them again): the same symbols and bytes,
    without a C compiler parsing millions of literals."""
    units = []
    for src in sources:
        if src == "weights.c":
            arrays = parse_weights_c((build / src).read_text())
            if arrays is not None:
                (tmp / "weights_data.bin").write_bytes(b"".join(data for _, data in arrays))
                (tmp / "weights_data.S").write_text(arrays_asm(arrays, "weights_data.bin"))
                units.append(Unit(tmp, "weights_data.S", tmp / "weights_data.o"))
                continue
        units.append(Unit(build, src, tmp / f"{src.rsplit('.', 1)[0]}.o"))
    return units


def object_cache_dir() -> Path | None:
    """Where objects are cached, or None (`EDGECOMPILE_OBJECT_CACHE=off`)."""
    env = os.environ.get("EDGECOMPILE_OBJECT_CACHE", "")
    if env.lower() == "off":
        return None
    return Path(env) if env else cache_dir("objects")


@functools.lru_cache(maxsize=None)
def _compiler_identity(cc: str) -> bytes:
    path = proc.require(cc)
    real = os.path.realpath(path)
    st = os.stat(real)
    version = proc.run([cc, "--version"], what=f"{cc} --version").stdout
    return f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{version}".encode()


def _include_dirs(cwd: Path, flags: Sequence[str]) -> list[Path]:
    """Where `#include "..."` finds files: the source's directory, then every -I directory."""
    dirs, it = [cwd], iter(flags)
    for f in it:
        if f.startswith("-I"):
            d = f[2:] or next(it, "")
            dirs.append(cwd / d)
    return dirs


def _local_includes(dirs: list[Path], text: bytes, seen: set[str]) -> list[tuple[str, bytes]]:
    """(name, bytes) of every `#include "..."` / `.incbin "..."` found in `dirs`, recursively."""
    out = []
    for name in _INCLUDE.findall(text):
        n = name.decode(errors="replace")
        path = next((d / n for d in dirs if (d / n).is_file()), None)
        if n in seen or path is None:
            continue
        seen.add(n)
        data = path.read_bytes()
        out.append((n, data))
        if n.endswith(".h"):
            out += _local_includes(dirs, data, seen)
    return out


def unit_key(unit: Unit, cc: str, flags: Sequence[str], target: str) -> str:
    h = hashlib.sha256(CACHE_VERSION)
    text = (unit.cwd / unit.source).read_bytes()
    for part in (_compiler_identity(cc), "\0".join(flags).encode(), target.encode(), unit.source.encode(), text):
        h.update(len(part).to_bytes(8, "little") + part)
    for name, data in sorted(_local_includes(_include_dirs(unit.cwd, flags), text, set())):
        h.update(len(name).to_bytes(8, "little") + name.encode() + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _entry(cache: Path, key: str) -> Path:
    return cache / key[:2] / f"{key}.o"


def _read_entry(path: Path) -> bytes | None:
    """The object of an entry, or None when the entry is damaged (OSError when there is none)."""
    data = path.read_bytes()
    head, _, obj = data.partition(b"\n")
    if not obj or not head.startswith(MAGIC) or head[len(MAGIC):] != hashlib.sha256(obj).hexdigest().encode():
        return None
    return obj


def _store(cache: Path, key: str, obj: bytes) -> None:
    path = _entry(cache, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(obj).hexdigest().encode() + b"\n" + obj)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prune(cache: Path, limit_bytes: int) -> None:
    """Remove the least recently used entries while the cache is larger than `limit_bytes`."""
    entries = []
    for p in cache.glob("*/*.o"):
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(e[1] for e in entries)
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit_bytes:
            break
        p.unlink(missing_ok=True)
        total -= size


def compile_units(units: Sequence[Unit], cc: str, flags: Sequence[str], target: str,
                  parallel: int | None = None) -> CompileStats:
    """Compile each unit (`cc flags -c -o obj source` in its cwd), taking cached objects where the
    cache has them and storing the others; the compilers run `parallel` at a time (default: the
    number of CPUs)."""
    cache = object_cache_dir()
    stats = CompileStats()
    jobs, keys = [], []
    for u in units:
        key = unit_key(u, cc, flags, target) if cache is not None else ""
        obj, damaged = None, False
        if cache is not None:
            try:
                obj = _read_entry(_entry(cache, key))
                damaged = obj is None
            except OSError:             # no entry (or removed by another build meanwhile)
                pass
        if obj is not None:
            u.obj.write_bytes(obj)
            with contextlib.suppress(OSError):
                os.utime(_entry(cache, key))            # recently used
            stats.hits += 1
            continue
        if damaged:
            stats.corrupt += 1
            with contextlib.suppress(OSError):
                _entry(cache, key).unlink(missing_ok=True)
        stats.misses += 1
        stats.compiled.append(u.source)
        jobs.append(([cc, *flags, "-c", "-o", str(u.obj), u.source], u.cwd, f"{cc}: compiling {u.source}"))
        keys.append((key, u))
    proc.run_all(jobs, parallel)
    if cache is not None and keys:
        try:
            for key, u in keys:
                _store(cache, key, u.obj.read_bytes())
            _prune(cache, _limit_bytes())
        except OSError:          # a read-only or full cache directory: the build itself is done
            pass
    return stats


def _limit_bytes() -> int:
    text = os.environ.get("EDGECOMPILE_OBJECT_CACHE_MB", str(DEFAULT_LIMIT_MB))
    try:
        return int(text) << 20
    except ValueError:
        raise EdgeCompileError(f"EDGECOMPILE_OBJECT_CACHE_MB must be a number of megabytes, got {text!r}") from None
