"""Targets are data: one TOML file per board in `targets/` (or a user directory).

Code reads fields from the `Target` record; nothing else in edgecompile tests a target's name.
Search order: `--targets-dir` / `$EDGECOMPILE_TARGETS` (os.pathsep-separated), then the built-in
`targets/` folder shipped with the package.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import TargetError

FAMILIES = ("host", "cortex_a", "cortex_m", "helium")


SECTION_ROLES = ("text", "weights", "data", "bss", "arena", "stack")


@dataclass(frozen=True)
class MemoryRegion:
    name: str          # e.g. FLASH, RAM
    origin: int
    size: int
    kind: str          # "flash" (read-only, holds code/weights) or "ram"
    holds: tuple[str, ...] = ()   # which of SECTION_ROLES the linker script places here


@dataclass(frozen=True)
class CacheLevel:
    name: str          # L1I, L1D, L2
    size: int
    ways: int
    line: int


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    family: str                      # selects the schedule module and firmware template
    cpu: str
    features: tuple[str, ...]
    tvm: dict[str, Any]              # TVM target dict; kernels are emitted as C
    cc: str                          # C compiler command
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    firmware: str                    # firmware template name under firmware_templates/
    clock_hz: int = 0
    default_quant: str = "fp32"
    memory: tuple[MemoryRegion, ...] = ()
    caches: tuple[CacheLevel, ...] = ()
    emulator: dict[str, Any] = field(default_factory=dict)
    flash: dict[str, Any] = field(default_factory=dict)
    uart: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    stack_bytes: int = 8192
    enable_icache: bool = False
    source: str = ""                 # file the target was read from

    def region(self, kind: str) -> MemoryRegion | None:
        return next((r for r in self.memory if r.kind == kind), None)

    def region_for(self, role: str) -> MemoryRegion:
        for r in self.memory:
            if role in r.holds:
                return r
        raise TargetError(f"{self.source}: no memory region holds '{role}'")

    @property
    def clock_hz_emulated(self) -> int:
        """The clock the firmware's SysTick runs at in the emulator."""
        return int(self.emulator.get("clock_hz", self.clock_hz))

    @property
    def emulated_elsewhere(self) -> bool:
        """True when the emulator is a different machine that needs its own firmware variant."""
        emu = self.emulator
        return bool(emu.get("relocate") or emu.get("uart") or emu.get("clock_hz"))

    def for_emulator(self) -> "Target":
        """This board as the emulator runs it: memories relocated to the emulated machine's
        addresses (sizes, i.e. the budget, unchanged), the emulated machine's UART and clock."""
        if not self.emulated_elsewhere:
            return self
        emu = self.emulator
        reloc = emu.get("relocate", {})
        memory = tuple(
            MemoryRegion(r.name, int(reloc.get(r.name, r.origin)), r.size, r.kind, r.holds) for r in self.memory
        )
        return replace(self, memory=memory, uart=dict(emu.get("uart", self.uart)),
                       clock_hz=int(emu.get("clock_hz", self.clock_hz)), enable_icache=False)


def _search_dirs(extra: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    for spec in (str(extra) if extra else None, os.environ.get("EDGECOMPILE_TARGETS")):
        if spec:
            dirs += [Path(p) for p in spec.split(os.pathsep) if p]
    dirs.append(Path(str(resources.files("edgecompile.target_files"))))
    return dirs


def _size(value: Any, where: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        s = value.strip().upper().replace(" ", "")
        for suffix, mult in (("KB", 1024), ("K", 1024), ("MB", 1 << 20), ("M", 1 << 20), ("B", 1)):
            if s.endswith(suffix):
                try:
                    return int(float(s[: -len(suffix)]) * mult)
                except ValueError:
                    break
        try:
            return int(s, 0)
        except ValueError:
            pass
    raise TargetError(f"{where}: cannot read size {value!r} (use bytes or e.g. '320K', '1M')")


def parse_target(data: dict[str, Any], source: str) -> Target:
    def need(key: str, table: dict[str, Any] = data, where: str = "") -> Any:
        if key not in table:
            raise TargetError(f"{source}: missing field '{where}{key}'")
        return table[key]

    family = need("family")
    if family not in FAMILIES:
        raise TargetError(f"{source}: family must be one of {', '.join(FAMILIES)}, got {family!r}")
    tc = need("toolchain")
    memory = tuple(
        MemoryRegion(
            name=need("name", r, "memory."),
            origin=_size(need("origin", r, "memory."), source),
            size=_size(need("size", r, "memory."), source),
            kind=need("kind", r, "memory."),
            holds=tuple(r.get("holds", [])),
        )
        for r in data.get("memory", [])
    )
    for r in memory:
        bad = set(r.holds) - set(SECTION_ROLES)
        if bad:
            raise TargetError(f"{source}: memory region {r.name} holds unknown {sorted(bad)}; "
                              f"use {', '.join(SECTION_ROLES)}")
    caches = tuple(
        CacheLevel(c["name"], _size(c["size"], source), int(c["ways"]), _size(c["line"], source))
        for c in data.get("cache", [])
    )
    return Target(
        name=need("name"),
        description=data.get("description", ""),
        family=family,
        cpu=need("cpu"),
        features=tuple(data.get("features", [])),
        tvm=dict(need("tvm")),
        cc=need("cc", tc, "toolchain."),
        cflags=tuple(tc.get("cflags", [])),
        ldflags=tuple(tc.get("ldflags", [])),
        firmware=need("firmware"),
        clock_hz=int(data.get("clock_hz", 0)),
        default_quant=data.get("default_quant", "fp32"),
        memory=memory,
        caches=caches,
        emulator=dict(data.get("emulator", {})),
        flash=dict(data.get("flash", {})),
        uart=dict(data.get("uart", {})),
        tuning=dict(data.get("tuning", {})),
        stack_bytes=int(data.get("stack_bytes", 8192)),
        enable_icache=bool(data.get("enable_icache", False)),
        source=source,
    )


def _read(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise TargetError(f"{path}: {err}") from err
    target = parse_target(data, str(path))
    if target.name != path.stem:
        raise TargetError(f"{path}: name {target.name!r} does not match the file name")
    return target


def list_targets(targets_dir: str | os.PathLike | None = None) -> list[Target]:
    seen: dict[str, Target] = {}
    for d in _search_dirs(targets_dir):
        for path in sorted(d.glob("*.toml")) if d.is_dir() else []:
            if path.stem not in seen:
                seen[path.stem] = _read(path)
    return list(seen.values())


def load_target(name: str, targets_dir: str | os.PathLike | None = None) -> Target:
    for d in _search_dirs(targets_dir):
        path = d / f"{name}.toml"
        if path.is_file():
            return _read(path)
    known = ", ".join(t.name for t in list_targets(targets_dir))
    raise TargetError(f"unknown target {name!r}; known targets: {known}")
