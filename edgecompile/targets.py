"""Targets are data: one TOML file per board in `targets/` (or a user directory).

A board file is checked against a schema when it is loaded: every table is a dataclass below,
unknown keys and wrong types are errors naming the file and the key (`targets/x.toml:
emulator.machin: unknown key`), so a typo is found at once. Code reads fields from the `Target`
record; nothing in edgecompile tests a target's name. What kind of board it is (`platform`) picks
the module in `edgecompile/platforms/` that builds, emulates, flashes and measures it; `family`
picks the schedules in `edgecompile/schedules/`.

Search order: `--targets-dir` / `$EDGECOMPILE_TARGETS` (os.pathsep-separated), then the built-in
`targets/` folder shipped with the package.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import TargetError

FAMILIES = ("host", "cortex_a", "cortex_m", "helium")
PLATFORMS = ("host", "cortex_m", "linux")
SECTION_ROLES = ("text", "weights", "data", "bss", "arena", "stack")
UART_DRIVERS = ("cmsdk", "stm32_v1", "stm32_v2")


@dataclass(frozen=True)
class MemoryRegion:
    name: str                      # e.g. FLASH, RAM
    origin: int
    size: int
    kind: str                      # "flash" (read-only: code, weights) or "ram"
    holds: tuple[str, ...] = ()    # which of SECTION_ROLES the linker script places here


@dataclass(frozen=True)
class CacheLevel:
    name: str                      # L1I, L1D, L2
    size: int
    ways: int
    line: int


@dataclass(frozen=True)
class UartSpec:
    driver: str = ""               # one of UART_DRIVERS
    base: int = 0                  # peripheral base address
    clock_hz: int = 0              # the peripheral's input clock (0: the core clock)
    baud: int = 115200
    rcc: tuple[tuple[int, ...], ...] = ()    # (register, bit) clock enables
    pins: tuple[tuple[int, ...], ...] = ()   # (GPIO base, pin, alternate function)


@dataclass(frozen=True)
class EmulatorSpec:
    program: str = ""              # qemu-system-arm, qemu-aarch64, ...
    machine: str = ""              # -M for system emulators
    cpu: str = ""                  # -cpu for user-mode emulators
    icount_shift: int | None = None   # -icount shift=N: deterministic instruction counts
    clock_hz: int = 0              # the emulated machine's clock, when it is not the board's
    relocate: dict[str, int] = field(default_factory=dict)   # region name -> origin in the emulator
    uart: UartSpec | None = None   # the emulated machine's UART, when it is not the board's
    args: tuple[str, ...] = ()     # extra emulator arguments


@dataclass(frozen=True)
class FlashSpec:
    methods: tuple[str, ...] = ()  # emu, pyocd, openocd, ssh
    pyocd_target: str = ""
    openocd_config: tuple[str, ...] = ()
    serial_device: str = "/dev/serial0"        # Linux boards: the serial device the program opens
    remote_path: str = "/tmp/edgecompile-app"  # Linux boards: where ssh/scp puts the program


@dataclass(frozen=True)
class TuningSpec:
    llvm: dict[str, Any] = field(default_factory=dict)   # the same core as an LLVM target


@dataclass(frozen=True, kw_only=True)
class _Board:
    """What a board file and the Target record have in common."""

    name: str
    description: str = ""
    family: str                      # selects the schedules (edgecompile/schedules/<family>)
    cpu: str
    features: tuple[str, ...] = ()
    tvm: dict[str, Any]              # TVM target dict; kernels are emitted as C
    clock_hz: int = 0
    default_quant: str = "fp32"
    memory: tuple[MemoryRegion, ...] = ()
    emulator: EmulatorSpec = EmulatorSpec()
    flash: FlashSpec = FlashSpec()
    uart: UartSpec = UartSpec()
    tuning: TuningSpec = TuningSpec()
    stack_bytes: int = 8192
    enable_icache: bool = False


@dataclass(frozen=True, kw_only=True)
class Target(_Board):
    cc: str                          # C compiler command
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    platform: str                    # kind of board: edgecompile/platforms/<platform>.py + its templates
    caches: tuple[CacheLevel, ...] = ()
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
        return self.emulator.clock_hz or self.clock_hz

    @property
    def emulated_elsewhere(self) -> bool:
        """True when the emulator is a different machine that needs its own firmware variant."""
        emu = self.emulator
        return bool(emu.relocate or emu.uart or emu.clock_hz)

    def for_emulator(self) -> "Target":
        """This board as the emulator runs it: memories relocated to the emulated machine's
        addresses (sizes, i.e. the budget, unchanged), the emulated machine's UART and clock."""
        if not self.emulated_elsewhere:
            return self
        emu = self.emulator
        memory = tuple(replace(r, origin=emu.relocate.get(r.name, r.origin)) for r in self.memory)
        return replace(self, memory=memory, uart=emu.uart or self.uart, clock_hz=emu.clock_hz or self.clock_hz,
                       enable_icache=False)


# ----------------------------------------------------------------------------- reading


def _search_dirs(extra: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    for spec in (str(extra) if extra else None, os.environ.get("EDGECOMPILE_TARGETS")):
        if spec:
            dirs += [Path(p) for p in spec.split(os.pathsep) if p]
    dirs.append(Path(str(resources.files("edgecompile.target_files"))))
    return dirs


def _size(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
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


_SIZES = {"origin", "size", "line"}     # keys that accept '320K'-style sizes


def _value(tp: Any, value: Any, where: str) -> Any:
    """`value` read from TOML as type `tp` (a field annotation), or a TargetError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        return _value(options[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TargetError(f"{where}: expected a table, got {value!r}")
        return _table(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise TargetError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_value(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise TargetError(f"{where}: expected a table, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _value(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is int:
        if where.rsplit(".", 1)[-1] in _SIZES:
            return _size(value, where)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TargetError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TargetError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TargetError(f"{where}: expected a string, got {value!r}")
        return value
    return value     # Any


def _table(cls: Any, data: dict[str, Any], where: str, required: tuple[str, ...] = ()) -> Any:
    """Build dataclass `cls` from a TOML table: unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    prefix = f"{where}." if not where.endswith(":") else f"{where} "
    for key in data:
        if key not in known:
            raise TargetError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")
    for key in required:
        if key not in data:
            raise TargetError(f"{prefix}{key}: missing")
    return cls(**{k: _value(hints[k], v, f"{prefix}{k}") for k, v in data.items()})


@dataclass(frozen=True)
class _Toolchain:
    cc: str
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _File(_Board):
    """The layout of a board file: the common fields plus these tables and keys."""

    toolchain: _Toolchain
    platform: str = ""
    firmware: str = ""               # the older name of `platform`
    cache: tuple[CacheLevel, ...] = ()


def parse_target(data: dict[str, Any], source: str) -> Target:
    f = _table(_File, data, f"{source}:", required=("name", "family", "cpu", "tvm", "toolchain"))
    if f.family not in FAMILIES:
        raise TargetError(f"{source}: family must be one of {', '.join(FAMILIES)}, got {f.family!r}")
    platform = f.platform or f.firmware
    if platform not in PLATFORMS:
        raise TargetError(f"{source}: platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    if f.default_quant not in ("fp32", "int8"):
        raise TargetError(f"{source}: default_quant must be fp32 or int8, got {f.default_quant!r}")
    for r in f.memory:
        bad = set(r.holds) - set(SECTION_ROLES)
        if bad:
            raise TargetError(f"{source}: memory region {r.name} holds unknown {sorted(bad)}; "
                              f"use {', '.join(SECTION_ROLES)}")
        if r.kind not in ("flash", "ram"):
            raise TargetError(f"{source}: memory region {r.name}: kind must be flash or ram, got {r.kind!r}")
    for where, uart in (("uart", f.uart), ("emulator.uart", f.emulator.uart)):
        if uart is not None and uart.driver and uart.driver not in UART_DRIVERS:
            raise TargetError(f"{source}: {where}.driver must be one of {', '.join(UART_DRIVERS)}, "
                              f"got {uart.driver!r}")
    names = {r.name for r in f.memory}
    for region in f.emulator.relocate:
        if region not in names:
            raise TargetError(f"{source}: emulator.relocate.{region}: no memory region of that name")
    common = {fl.name: getattr(f, fl.name) for fl in fields(_Board)}
    return Target(**common, cc=f.toolchain.cc, cflags=f.toolchain.cflags, ldflags=f.toolchain.ldflags,
                  platform=platform, caches=f.cache, source=source)


def _read(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise TargetError(f"{path}: {err}") from None
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
