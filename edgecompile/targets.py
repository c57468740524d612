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
CLOCK_CONTROLLERS = ("stm32f4", "stm32f7", "stm32h7")


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
    bus: str = ""                  # apb1 or apb2: the bus whose clock feeds it once [clock] is set up


@dataclass(frozen=True)
class PllSpec:
    m: int = 0                     # input divider: VCO input = source / m
    n: int = 0                     # multiplier: VCO output = input * n
    p: int = 0                     # system clock = VCO output / p
    q: int = 0                     # 48 MHz / kernel clock divider (0: the reset value)
    r: int = 0                     # H7 PLL1 R output (0: off)


@dataclass(frozen=True)
class ClockSpec:
    """The board's clock tree as the firmware sets it up at boot (RCC of STM32F4/F7/H7)."""
    controller: str = ""           # one of CLOCK_CONTROLLERS: the register layout
    source: str = "hsi"            # PLL input: hsi (internal RC) or hse (crystal / external clock)
    hse_hz: int = 0                # the board's HSE frequency (source = "hse")
    hse_bypass: bool = False       # HSE is an external clock (e.g. ST-LINK MCO), not a crystal
    sysclk_hz: int = 0             # must equal source / pll.m * pll.n / pll.p
    pll: PllSpec = PllSpec()
    ahb_div: int = 1               # HPRE (H7: D1CPRE stays 1, HPRE = ahb_div)
    apb1_div: int = 1              # PPRE1 (H7: D2PPRE1, and D1PPRE, D3PPRE)
    apb2_div: int = 1              # PPRE2 (H7: D2PPRE2)
    flash_latency: int = 0         # flash wait states, written before the clock is raised
    vos: int = 0                   # voltage scale: F4/F7 1..3, H7 0 (VOS0, needs 1 first) ..3; 0 on F4/F7: reset value
    overdrive: bool = False        # STM32F7 over-drive (needed above 180 MHz)
    icache: bool = False           # Cortex-M7 instruction cache on
    dcache: bool = False           # Cortex-M7 data cache on (polled UART, no DMA: nothing to clean)
    poll_limit: int = 200_000      # iterations of each ready-flag poll before giving up (QEMU never sets them)


@dataclass(frozen=True)
class EmulatorSpec:
    program: str = ""              # qemu-system-arm, qemu-aarch64, ...
    machine: str = ""              # -M for system emulators
    cpu: str = ""                  # -cpu for user-mode emulators
    icount_shift: int | None = None   # -icount shift=N: deterministic instruction counts
    clock_hz: int = 0              # the emulated machine's clock, when it is not the board's
    relocate: dict[str, int] = field(default_factory=dict)   # region name -> origin in the emulator
    uart: UartSpec | None = None   # the emulated machine's UART, when it is not the board's
    clock_setup: bool = True       # false: the emulated machine has no clock controller of the board's
                                   # kind (another SoC): the emulated firmware leaves its clock alone
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


@dataclass(frozen=True)
class CostSpec:
    """Instructions per unit of work of the target's kernels, for the memory planning's predicted
    instructions (codegen/cost.py: what each term counts). The defaults are the calibration on
    stm32f746g-disco (Cortex-M7, int8 kernels, QEMU -icount instructions); a target whose kernels
    differ gives its own in `[cost]`."""

    conv: float = 2.04
    dw: float = 6.44
    pw_fused: float = 0.78
    pw: float = 2.41
    fc: float = 2.0
    out_byte: float = 6.52
    copy_byte: float = 0.55
    call: float = 3314.0
    lean_dw: float = 0.0
    row1: float = 0.21
    # the largest relative error of a plan's predicted ratio to the plain plan against the measured
    # one in the calibration: `--patches min` keeps predicted x (1 + error) within its bound
    error: float = 0.02

    def coefficients(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "error"}


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
    cost: CostSpec = CostSpec()      # the planner's instruction model (codegen/cost.py)
    stack_bytes: int = 8192
    enable_icache: bool = False      # older name of clock.icache
    clock: ClockSpec | None = None   # clock set-up at boot; None: the firmware runs on the reset clock


@dataclass(frozen=True, kw_only=True)
class Target(_Board):
    cc: str                          # C compiler command
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    platform: str                    # kind of board: edgecompile/platforms/<platform>.py + its templates
    caches: tuple[CacheLevel, ...] = ()
    source: str = ""                 # file the target was read from
    rcc_setup: bool = True           # the firmware programs the clock controller ([clock]); false in an
                                     # emulated variant whose machine is another SoC (emulator.clock_setup)
    emulated: bool = False           # this record is the emulated variant (for_emulator)

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
                       rcc_setup=emu.clock_setup, emulated=True)

    @property
    def icache(self) -> bool:
        return self.enable_icache or bool(self.clock and self.clock.icache)

    @property
    def dcache(self) -> bool:
        return bool(self.clock and self.clock.dcache)

    def arena_regions(self) -> list[MemoryRegion]:
        """The regions that may hold the arena, in order of preference (e.g. DTCM, then SRAM):
        the firmware's linker script uses the first one it fits in."""
        return [r for r in self.memory if "arena" in r.holds]

    def arena_layouts(self) -> list[tuple["Target", str]]:
        """Where the arena may go, in order of preference: (memory map, region) for each region
        that holds it, then, when such RAM regions are adjacent in the address space (F746: DTCM
        64 KB right below SRAM1), one region made of them, so a large arena may span both."""
        layouts = [(self, r.name) for r in self.arena_regions()]
        ram = sorted((r for r in self.memory if r.kind == "ram"), key=lambda r: r.origin)
        for i, a in enumerate(ram):
            run = [a]
            for b in ram[i + 1:]:
                if run[-1].origin + run[-1].size != b.origin or "arena" not in b.holds:
                    break
                run.append(b)
            if len(run) > 1 and "arena" in a.holds:
                keep = max(run, key=lambda r: (len(r.holds), r.size))      # the one with data and stack
                merged = MemoryRegion(keep.name, a.origin, sum(r.size for r in run), "ram",
                                      tuple(dict.fromkeys(h for r in run for h in r.holds)))
                memory = tuple(merged if r is keep else r for r in self.memory if r is keep or r not in run)
                layouts.append((replace(self, memory=memory), keep.name))
                break
        return layouts


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
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise TargetError(f"{where}: expected a non-negative number, got {value!r}")
        return float(value)
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


# ----------------------------------------------------------------------------- clocks

RESET_CLOCK_HZ = {"stm32f4": 16_000_000, "stm32f7": 16_000_000, "stm32h7": 64_000_000}   # HSI after reset

# Datasheet limits: (VCO input range, VCO output range, m range, n range, allowed p, q range)
_PLL_LIMITS = {
    "stm32f4": ((950_000, 2_100_000), (100_000_000, 432_000_000), (2, 63), (50, 432), (2, 4, 6, 8), (2, 15)),
    "stm32f7": ((950_000, 2_100_000), (100_000_000, 432_000_000), (2, 63), (50, 432), (2, 4, 6, 8), (2, 15)),
    "stm32h7": ((1_000_000, 16_000_000), (192_000_000, 960_000_000), (1, 63), (4, 512),
                tuple(range(2, 129, 2)), (1, 128)),   # PLL1 P: even only
}
# Highest frequencies (sysclk, AHB, APB1, APB2) per controller and voltage scale
_MAX_HZ = {
    ("stm32f4", 0): (168e6, 168e6, 42e6, 84e6), ("stm32f4", 1): (168e6, 168e6, 42e6, 84e6),
    ("stm32f4", 2): (144e6, 144e6, 42e6, 84e6), ("stm32f4", 3): (120e6, 120e6, 42e6, 84e6),
    ("stm32f7", 0): (216e6, 216e6, 54e6, 108e6), ("stm32f7", 1): (216e6, 216e6, 54e6, 108e6),
    ("stm32f7", 2): (180e6, 180e6, 45e6, 90e6), ("stm32f7", 3): (144e6, 144e6, 45e6, 90e6),
    ("stm32h7", 0): (480e6, 240e6, 120e6, 120e6), ("stm32h7", 1): (400e6, 200e6, 100e6, 100e6),
    ("stm32h7", 2): (300e6, 150e6, 75e6, 75e6), ("stm32h7", 3): (200e6, 100e6, 50e6, 50e6),
}
# Flash wait states: the highest HCLK each number of wait states allows (2.7-3.6 V supply)
_FLASH_HZ_PER_WS = {"stm32f4": [30e6 * (i + 1) for i in range(8)], "stm32f7": [30e6 * (i + 1) for i in range(8)],
                    ("stm32h7", 0): [70e6, 140e6, 210e6, 225e6, 240e6], ("stm32h7", 1): [70e6, 140e6, 185e6, 210e6, 225e6],
                    ("stm32h7", 2): [55e6, 110e6, 165e6, 225e6], ("stm32h7", 3): [45e6, 90e6, 135e6, 180e6, 225e6]}


def pll_output_hz(source_hz: int, m: int, n: int, p: int) -> float:
    """System clock of a PLL fed with `source_hz`: source / m * n / p (exact rational, as float)."""
    if m <= 0 or p <= 0:
        raise ValueError("PLL dividers m and p must be positive")
    return source_hz * n / (m * p)


def clock_frequencies(c: ClockSpec) -> dict[str, float]:
    """The clock tree [clock] describes: PLL input, VCO input/output, sysclk, AHB, APB1, APB2."""
    src = c.hse_hz if c.source == "hse" else RESET_CLOCK_HZ[c.controller]
    vco_in = src / c.pll.m
    sysclk = pll_output_hz(src, c.pll.m, c.pll.n, c.pll.p)
    ahb = sysclk / c.ahb_div
    return {"source": src, "vco_in": vco_in, "vco_out": vco_in * c.pll.n, "sysclk": sysclk, "ahb": ahb,
            "apb1": ahb / c.apb1_div, "apb2": ahb / c.apb2_div}


def uart_clock_hz(target: "Target") -> int:
    """The UART's input clock once [clock] is set up (its bus clock); the reset value without [clock]."""
    c, uart = target.clock, target.uart
    if c is None or uart.bus not in ("apb1", "apb2"):
        return uart.clock_hz or target.clock_hz
    return int(round(clock_frequencies(c)[uart.bus]))


def _check_clock(c: ClockSpec, f: Any, source: str) -> None:
    def bad(key: str, why: str) -> TargetError:
        return TargetError(f"{source}: clock.{key}: {why}")

    if c.controller not in CLOCK_CONTROLLERS:
        raise bad("controller", f"must be one of {', '.join(CLOCK_CONTROLLERS)}, got {c.controller!r}")
    if c.source not in ("hsi", "hse"):
        raise bad("source", f"must be hsi or hse, got {c.source!r}")
    if c.source == "hse" and not 1_000_000 <= c.hse_hz <= 50_000_000:
        raise bad("hse_hz", f"source is hse: give the board's HSE frequency (1-50 MHz), got {c.hse_hz}")
    vco_in_range, vco_range, m_range, n_range, p_allowed, q_range = _PLL_LIMITS[c.controller]
    for key, value, (lo, hi) in (("pll.m", c.pll.m, m_range), ("pll.n", c.pll.n, n_range)):
        if not lo <= value <= hi:
            raise bad(key, f"{value} is outside {lo}..{hi} ({c.controller})")
    if c.pll.p not in p_allowed:
        raise bad("pll.p", f"{c.pll.p} is not a {c.controller} PLL P divider "
                  f"({', '.join(map(str, p_allowed[:6]))}{', ...' if len(p_allowed) > 6 else ''})")
    if c.pll.q and not q_range[0] <= c.pll.q <= q_range[1]:
        raise bad("pll.q", f"{c.pll.q} is outside {q_range[0]}..{q_range[1]} ({c.controller})")
    if c.pll.r and (c.controller != "stm32h7" or not 1 <= c.pll.r <= 128):
        raise bad("pll.r", f"{c.pll.r}: only the H7 PLL1 has an R output here (1..128)")
    for key, value, allowed in (("ahb_div", c.ahb_div, (1, 2, 4, 8, 16, 64, 128, 256, 512)),
                                ("apb1_div", c.apb1_div, (1, 2, 4, 8, 16)), ("apb2_div", c.apb2_div, (1, 2, 4, 8, 16))):
        if value not in allowed:
            raise bad(key, f"{value} is not a prescaler value ({', '.join(map(str, allowed))})")
    hz = clock_frequencies(c)
    if not vco_in_range[0] <= hz["vco_in"] <= vco_in_range[1]:
        raise bad("pll.m", f"VCO input {hz['source']:,.0f} Hz / {c.pll.m} = {hz['vco_in']:,.0f} Hz is outside "
                  f"{vco_in_range[0]:,}..{vco_in_range[1]:,} Hz")
    if not vco_range[0] <= hz["vco_out"] <= vco_range[1]:
        raise bad("pll.n", f"VCO output {hz['vco_in']:,.0f} Hz x {c.pll.n} = {hz['vco_out']:,.0f} Hz is outside "
                  f"{vco_range[0]:,}..{vco_range[1]:,} Hz")
    if hz["sysclk"] != c.sysclk_hz:
        raise bad("sysclk_hz", f"{c.sysclk_hz:,} Hz, but the PLL gives {hz['source']:,.0f} / {c.pll.m} x {c.pll.n} "
                  f"/ {c.pll.p} = {hz['sysclk']:,.0f} Hz")
    if f.clock_hz and f.clock_hz != c.sysclk_hz:
        raise TargetError(f"{source}: clock_hz {f.clock_hz:,} differs from clock.sysclk_hz {c.sysclk_hz:,} "
                          "(the core runs at the PLL's clock)")
    if not 0 <= c.vos <= 3:
        raise bad("vos", f"{c.vos} is outside 0..3")
    if c.controller == "stm32f4" and c.vos == 3:
        raise bad("vos", "the STM32F405 has voltage scales 1 and 2 only")
    scale = c.vos if c.controller == "stm32h7" else (c.vos or 1)     # F4/F7: 0 keeps the reset scale 1
    limits = _MAX_HZ[(c.controller, scale)]
    for name, value, limit in zip(("sysclk_hz", "ahb_div", "apb1_div", "apb2_div"),
                                  (hz["sysclk"], hz["ahb"], hz["apb1"], hz["apb2"]), limits):
        if value > limit:
            what = {"sysclk_hz": "system clock", "ahb_div": "AHB clock", "apb1_div": "APB1 clock",
                    "apb2_div": "APB2 clock"}[name]
            raise bad(name, f"{what} {value:,.0f} Hz exceeds {c.controller}'s {limit:,.0f} Hz at voltage scale "
                      f"{scale}")
    if c.controller == "stm32f7" and hz["sysclk"] > 180e6 and not c.overdrive:
        raise bad("overdrive", f"{hz['sysclk']:,.0f} Hz needs the STM32F7 over-drive mode (above 180 MHz): "
                  "set overdrive = true")
    if c.overdrive and c.controller != "stm32f7":
        raise bad("overdrive", f"only the STM32F7 has an over-drive mode, not {c.controller}")
    table = _FLASH_HZ_PER_WS.get(c.controller) or _FLASH_HZ_PER_WS[(c.controller, scale)]
    needed = next((ws for ws, top in enumerate(table) if hz["ahb"] <= top), None)
    if needed is None or c.flash_latency < needed:
        raise bad("flash_latency", f"{c.flash_latency} wait states are too few for a {hz['ahb']:,.0f} Hz flash "
                  f"clock (needs {needed if needed is not None else 'more than ' + str(len(table) - 1)})")
    if c.flash_latency > 15:
        raise bad("flash_latency", f"{c.flash_latency} is not a wait-state count (0..15)")
    if not 1_000 <= c.poll_limit <= 100_000_000:
        raise bad("poll_limit", f"{c.poll_limit} is outside 1,000..100,000,000 iterations")
    if (c.icache or c.dcache) and f.cpu != "cortex-m7":
        raise bad("icache" if c.icache else "dcache", f"{f.cpu} has no L1 cache of its own")


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
    if f.clock is not None:
        _check_clock(f.clock, f, source)
        if f.uart.bus and f.uart.bus not in ("apb1", "apb2"):
            raise TargetError(f"{source}: uart.bus must be apb1 or apb2, got {f.uart.bus!r}")
        if f.uart.driver.startswith("stm32") and not f.uart.bus:
            raise TargetError(f"{source}: uart.bus: missing: with [clock] the UART's input clock changes once the "
                              "PLL runs; say which bus feeds it (apb1 or apb2)")
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
