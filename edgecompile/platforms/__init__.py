"""Kinds of board behind one interface (microTVM's Project API is the model): everything that
differs between this machine, a bare-metal Cortex-M and a Linux board lives in one module here,
chosen by the target file's `platform` field, together with its firmware templates.

A new board of an existing kind is a TOML file in `targets/`; a new kind of board is one module
here (a `Platform` subclass registered in `PLATFORMS`) plus its `firmware_templates/<kind>/`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..device.protocol import Link
from ..device.session import EmulatorSession
from ..errors import DeviceError, EdgeCompileError
from ..targets import Target

PLATFORMS = {"host": "host", "cortex_m": "cortex_m", "linux": "linux"}   # target.platform -> module


@dataclass
class MemoryEstimate:
    """What a build would need on a board, estimated from the graph and the memory plan before the
    C is compiled: `needs` per memory region of the target (what the linker would place there, the
    reserved stack included) against `budgets`, and the peak RAM the running program would use
    (static RAM + arena + stack actually used), which `edgecompile test` measures afterwards."""

    arena_bytes: int
    static_ram_bytes: int                 # data + bss besides the arena
    stack_used_bytes: int                 # estimated high-water mark of the stack
    needs: dict[str, int] = field(default_factory=dict)
    budgets: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)    # region -> "flash" | "ram"

    @property
    def peak_ram_bytes(self) -> int:
        return self.static_ram_bytes + self.arena_bytes + self.stack_used_bytes

    def over(self, kind: str | None = None) -> list[str]:
        """The regions (of `kind`, or any) whose need exceeds their budget."""
        return [r for r, n in self.needs.items() if n > self.budgets[r] and kind in (None, self.kinds[r])]

    def describe(self, region: str) -> str:
        n, b = self.needs[region], self.budgets[region]
        return f"{region} needs {n:,} B, budget {b:,} B ({self.kinds[region]}, over by {n - b:,} B)"


class Platform:
    """What edgecompile asks of one kind of board. Every method a kind cannot do raises an
    `EdgeCompileError` that says so; nothing outside this package tests the kind."""

    kind = ""
    has_device = True            # runs the serial device loop (`flash`, `test`)
    runs_here = False            # builds run in this process (`run`, `bench`)

    # -- building
    def check(self, target: Target) -> None:
        """Reject a target file this platform cannot build for (before the long compile)."""

    def estimate_memory(self, target: Target, weights_bytes: int, arena_bytes: int = 0, calls: int = 0,
                        kernel_stack_bytes: int = 0) -> MemoryEstimate | None:
        """What a build with this much weight data, this arena, this many kernel calls and kernels
        keeping this many bytes on the stack would need, before compiling; None when the board
        has no memory budget (a Linux process, this machine)."""
        return None

    def build(self, build: Path, target: Target, report: dict[str, Any], weights_src: str,
              progress: Callable[[str], None], defines: tuple[str, ...] = ()) -> dict[str, Any]:
        """Compile the generated sources in `build` into this board's artifacts (`defines`: extra
        -D flags, e.g. a debug firmware's -DEC_TRACE). Returns what the report gains (footprints
        measured on the linked files, `firmware`)."""
        raise NotImplementedError

    def program(self, build: Path, report: dict[str, Any], emulated: bool) -> Path:
        """The file that runs on the device (or, `emulated`, in its emulator)."""
        fw = report.get("firmware")
        if not fw:
            raise DeviceError(f"{build}: no firmware in this build (target {report.get('target')}); "
                              "build for a device target, e.g. --target mps2-an386")
        variant = "emu" if emulated and "emu" in fw else next(iter(fw))
        return build / fw[variant]["elf"]

    # -- running
    def _emulated_program(self, target: Target, build: Path, report: dict[str, Any]) -> Path:
        if not target.emulator.program:
            raise DeviceError(f"target {target.name} has no emulator")
        return self.program(build, report, emulated=True)

    def start_emulator(self, target: Target, build: Path, report: dict[str, Any],
                       extra_plugin: str | None = None, detach: bool = False) -> EmulatorSession:
        """Start the board's emulator with the build's program; the session's serial URL is
        ready to open (the caller stops the session)."""
        raise DeviceError(f"target {target.name} has no emulator")

    def flash(self, method: str, target: Target, build: Path, report: dict[str, Any]) -> list[list[str]]:
        """Put the build on real hardware with `method`; returns the commands it ran."""
        raise DeviceError(f"target {target.name} has no flash methods")

    # -- measuring
    def profile(self, target: Target, build: Path, report: dict[str, Any]) -> dict[str, Any]:
        """Per-kernel-call costs: {unit, unit_key, per_call, runs, ...}."""
        raise EdgeCompileError(f"per-kernel profiles are not available for {target.name} ({self.kind})")

    def cache(self, target: Target, build: Path, report: dict[str, Any]) -> dict[str, Any]:
        """Per-kernel cache behaviour simulated with the target's cache geometry."""
        raise EdgeCompileError(f"cache simulation is not available for {target.name} ({self.kind})")

    # -- tuning: measuring one kernel on its own (tune/harness.py writes the program)
    harness_mode = "marked"      # "timed" (wall clock, in the program) or "marked" (counted between marks)
    harness_unit = "instructions"   # what run_harness returns: "seconds" or emulator "instructions"
    tune_runner = "emu"          # the runner `edgecompile tune` uses by default

    def harness_mode_for(self, target: Target) -> str:
        """How `target`'s measuring program is counted (see tune/harness.py); the platform's
        `harness_mode` unless it depends on the target."""
        return self.harness_mode

    def harness_entry(self, target: Target) -> str:
        """Extra C for the measuring program (a bare-metal entry point, ...)."""
        return ""

    def check_harness(self, target: Target) -> None:
        """Raise when this target's kernels cannot be measured on their own here."""

    def build_harness(self, target: Target, source: Path, exe: Path) -> None:
        raise EdgeCompileError(f"{target.name}: kernels cannot be measured on their own ({self.kind})")

    def run_harness(self, target: Target, exe: Path) -> float:
        """One kernel call's cost: seconds (host) or emulator instructions (emulated)."""
        raise EdgeCompileError(f"{target.name}: kernels cannot be measured on their own ({self.kind})")


def platform_for(target: Target) -> Platform:
    module = importlib.import_module(f"{__name__}.{PLATFORMS[target.platform]}")
    return module.PLATFORM


def cache_geometry(target: Target) -> dict[str, str]:
    """The target's caches as the plugins and cachegrind take them: {l1i: size:ways:line, ...}."""
    return {c.name.lower(): f"{c.size}:{c.ways}:{c.line}" for c in target.caches}


def run_inferences(session: EmulatorSession, report: dict[str, Any], runs: int,
                   around: Callable[[Link, Callable[[], None]], Any] | None = None, timeout: float = 60) -> Any:
    """Connect to a started session and run `runs` inferences on a zero input (profiles and cache
    simulations: the work is the same for every input). `around(link, infer_all)` may talk to
    the device before and after the inferences; its result is returned."""
    port = session.open_port()
    try:
        link = Link(port, timeout=timeout, alive=session.alive)
        link.connect()
        inp, out = report["inputs"][0], report["outputs"][0]

        def infer_all() -> None:
            for _ in range(runs):
                link.infer(np.zeros(inp["shape"], dtype=inp["dtype"]), tuple(out["shape"]), in_dtype=inp["dtype"],
                           out_dtype=out["dtype"])

        if around is None:
            return infer_all()
        return around(link, infer_all)
    finally:
        port.close()
