"""Bare-metal Cortex-M boards: firmware, QEMU system emulation, probes, SysTick profiles.

* build: the generated model + `firmware_templates/common` (device loop) +
  `firmware_templates/cortex_m` (startup, HAL, the UART driver `uart/<driver>.c` the target names)
  linked with a linker script generated from the target's memory map, so a model that does not
  fit fails at link time; the linker's complaint becomes a `FitError` naming the region, what is
  needed and the budget. Boards that QEMU does not model are linked twice: `firmware.elf` for the
  real board and `firmware-emu.elf` relocated to the emulated machine (same budget, the emulated
  machine's UART and clock).
* emulator: `qemu-system-arm -M <machine>` with the UART on a local TCP socket and `-icount`, so
  the firmware's SysTick counts emulator instructions exactly.
* flash: `pyocd` or `openocd` through the board's debug probe.
* profile: the PROFILE request of the serial protocol returns the SysTick ticks of every kernel
  call; cache: our QEMU plugin.
* tuning: a kernel's measuring program runs under QEMU's user mode (`qemu-arm -cpu max`), which
  executes Thumb-2 + FPv4/FPv5 code unchanged; counted between marker calls.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import proc
from ..device.elf import elf_symbol, footprint
from ..device.plugins import count_between_marks
from ..device.protocol import PROFILE, PROFILE_RESP
from ..device.session import EmulatorSession, free_port, listening
from ..errors import DeviceError, EdgeCompileError, FitError, TargetError, ToolchainError
from ..targets import RESET_CLOCK_HZ, Target, clock_frequencies, uart_clock_hz
from ..paths import template_dir
from . import MemoryEstimate, Platform, run_inferences
from .device_loop import copy_common, plugin_cache, render_info_header

TOOLCHAIN_HINT = "install gcc-arm-none-eabi (make setup)"
# RAM of the firmware besides the model's arena, for estimates before compiling (`estimate_memory`;
# tests/test_budget.py checks them against linked and running firmware): data + bss of the device
# loop, UART driver and HAL; an 8-byte SysTick counter per kernel call (EC_PROFILE); stack the
# device loop and the kernels' frames use on top of the arrays kernels keep on the stack. The device
# loop receives its small frames in the arena (ec_device.c) unless the arena is smaller than one.
FIRMWARE_STATIC_RAM = 20        # the SysTick extension, clock state and the DWT counter's 64-bit extension
SMALL_FRAME_BYTES = 512         # EC_SMALL_PAYLOAD_MAX, firmware_templates/common/ec_protocol.h
PROFILE_COUNTER_BYTES = 8
FIRMWARE_STACK = 1024
_OVERFLOW = re.compile(r"region `([^']+)' overflowed by (\d+) bytes")


def uart_drivers() -> list[str]:
    return sorted(p.stem for p in (template_dir("cortex_m") / "uart").glob("*.c"))


def _clock_defines(target: Target) -> list[str]:
    """The [clock] section as C macros for clock.c; without it (or in an emulated variant whose
    machine has no such clock controller) the firmware leaves the clock as it found it."""
    c = target.clock
    uart_reset = target.uart.clock_hz or target.clock_hz
    if c is None or not target.rcc_setup:
        reset = target.clock_hz if c is None else (target.emulator.clock_hz or RESET_CLOCK_HZ[c.controller])
        return ["#define EC_CLOCK_SETUP 0", f"#define EC_RESET_HZ {reset}u",
                f"#define EC_UART_CLOCK_PLL_HZ {uart_reset}u"]
    hz = clock_frequencies(c)
    rge = next(i for i, top in enumerate((2e6, 4e6, 8e6, 16e6)) if hz["vco_in"] <= top)   # H7 PLL1RGE
    wrhighfreq = 0 if hz["ahb"] <= 70e6 else 1 if hz["ahb"] <= 185e6 else 2                 # H7 flash
    controller = {"stm32f4": 1, "stm32f7": 2, "stm32h7": 3}[c.controller]
    return [
        "#define EC_CLOCK_SETUP 1",
        f"#define EC_CLOCK_CONTROLLER {controller}   /* {c.controller} */",
        f"#define EC_RESET_HZ {RESET_CLOCK_HZ[c.controller]}u",
        f"#define EC_CLOCK_SYSCLK_HZ {c.sysclk_hz}u",
        f"#define EC_CLOCK_SOURCE_HSE {1 if c.source == 'hse' else 0}",
        f"#define EC_CLOCK_HSE_BYPASS {1 if c.hse_bypass else 0}",
        f"#define EC_PLL_M {c.pll.m}u", f"#define EC_PLL_N {c.pll.n}u", f"#define EC_PLL_P {c.pll.p}u",
        f"#define EC_PLL_Q {c.pll.q}u", f"#define EC_PLL_R {c.pll.r}u", f"#define EC_PLL_RGE {rge}u",
        f"#define EC_CLOCK_AHB_DIV {c.ahb_div}u", f"#define EC_CLOCK_APB1_DIV {c.apb1_div}u",
        f"#define EC_CLOCK_APB2_DIV {c.apb2_div}u",
        f"#define EC_CLOCK_FLASH_LATENCY {c.flash_latency}u", f"#define EC_CLOCK_FLASH_WRHIGHFREQ {wrhighfreq}u",
        f"#define EC_CLOCK_VOS {c.vos}", f"#define EC_CLOCK_OVERDRIVE {1 if c.overdrive else 0}",
        f"#define EC_CLOCK_POLL_LIMIT {c.poll_limit}u",
        f"#define EC_UART_CLOCK_PLL_HZ {uart_clock_hz(target)}u",
    ]


def render_board_header(target: Target) -> str:
    uart = target.uart
    emulated_tick = ([f"#define EC_EMULATED_TICK_HZ {target.emulator.clock_hz}u"]
                     if target.emulated and target.emulator.clock_hz else [])
    return "\n".join([
        f"/* Generated by edgecompile for target '{target.name}'. */", "#ifndef EC_BOARD_H", "#define EC_BOARD_H",
        f"#define EC_UART_BASE 0x{uart.base:08X}u",
        f"#define EC_UART_CLOCK_HZ {uart.clock_hz or target.clock_hz}u",
        f"#define EC_UART_BAUD {uart.baud}u",
        f"#define EC_UART_RCC {', '.join('{0x%08Xu, %du}' % tuple(r) for r in uart.rcc) or '{0, 0}'}",
        f"#define EC_UART_PINS {', '.join('{0x%08Xu, %du, %du}' % tuple(p) for p in uart.pins) or '{0, 0, 0}'}",
        f"#define EC_CPU_HZ {target.clock_hz}u",
        f"#define EC_HAS_FPU {1 if any(f.startswith(('fp', 'mve')) for f in target.features) else 0}",
        f"#define EC_ENABLE_ICACHE {1 if target.icache else 0}",
        f"#define EC_ENABLE_DCACHE {1 if target.dcache else 0}",
        *_clock_defines(target), *emulated_tick,
        "#endif",
    ]) + "\n"


def render_linker_script(target: Target, arena: str | None = None) -> str:
    """The linker script of `target`'s memory map; the arena goes to region `arena` (default: the
    first region that holds it, e.g. the DTCM)."""
    def region(role: str) -> str:
        if role == "arena" and arena:
            return arena
        return target.region_for(role).name

    text, weights = region("text"), region("weights")
    lines = [f"/* Generated by edgecompile for target '{target.name}' from its memory map. */", "MEMORY", "{"]
    for r in target.memory:
        attrs = "rx" if r.kind == "flash" else "rwx"
        lines.append(f"  {r.name} ({attrs}) : ORIGIN = 0x{r.origin:08X}, LENGTH = {r.size}")
    lines += ["}", "", "ENTRY(Reset_Handler)", f"__ec_stack_size = {target.stack_bytes};", "", "SECTIONS", "{"]
    if weights != text:   # listed first so that it claims the weights before .text's wildcard
        lines += ["  .ec_weights : ALIGN(16) { *(.rodata.ec_weights*) } > " + weights]
    lines += [
        "  .text : ALIGN(4)",
        "  {",
        "    KEEP(*(.vectors))",
        "    *(.text*)",
        "    *(.rodata.ec_weights*)" if weights == text else "",
        "    *(.rodata*)",
        "    KEEP(*(.init)) KEEP(*(.fini))",
        "    . = ALIGN(4);",
        f"  }} > {text}",
        f"  .ARM.exidx : {{ *(.ARM.exidx* .gnu.linkonce.armexidx.*) }} > {text}",
        "  .init_array : { KEEP(*(.init_array*)) } > " + text,
        "  .fini_array : { KEEP(*(.fini_array*)) } > " + text,
        "  .data : ALIGN(4)",
        "  {",
        "    _sdata = .;",
        "    *(.data*)",
        "    . = ALIGN(4);",
        "    _edata = .;",
        f"  }} > {region('data')} AT > {text}",
        "  _sidata = LOADADDR(.data);",
        "  .bss (NOLOAD) : ALIGN(4)",
        "  {",
        "    _sbss = .;",
        "    *(.bss*) *(COMMON)",
        "    . = ALIGN(4);",
        "    _ebss = .;",
        f"  }} > {region('bss')}",
        "  .ec_arena (NOLOAD) : ALIGN(16)",
        "  {",
        "    __ec_arena_start = .;",
        "    KEEP(*(.ec_arena))",
        "    __ec_arena_end = .;",
        f"  }} > {region('arena')}",
        "  .stack (NOLOAD) : ALIGN(8)",
        "  {",
        "    __ec_stack_bottom = .;",
        "    . = . + __ec_stack_size;",
        "    __ec_stack_top = .;",
        f"  }} > {region('stack')}",
        "  end = __ec_stack_top;",
        "}",
    ]
    return "\n".join(line for line in lines if line != "") + "\n"


def _link(target: Target, objects: list[str], script: str, out: str, build: Path) -> Any:
    """Link; the target's ldflags (-lm, specs) go after the objects that need them."""
    cmd = [target.cc, *target.cflags, "-T", script, "-o", out, *objects, *target.ldflags, "-Wl,-Map," + out + ".map"]
    return proc.run(cmd, cwd=build, check=False, hint=TOOLCHAIN_HINT)


def _fit_error(target: Target, stderr: str, needs: dict[str, int]) -> FitError:
    parts = []
    for name, over in _OVERFLOW.findall(stderr):
        r = next(r for r in target.memory if r.name == name)
        need = needs.get(name, r.size + int(over))
        parts.append(f"{name} needs {need:,} B, budget {r.size:,} B ({r.kind}, over by {int(over):,} B)")
    return FitError(f"model does not fit {target.name}: " + "; ".join(parts))


def _measure_needs(target: Target, objects: list[str], build: Path, arena: str | None = None) -> dict[str, int]:
    """Link once more with every region 256 MB large (at non-overlapping addresses) to learn what
    each one would need."""
    roomy = replace(target, memory=tuple(replace(r, size=1 << 28, origin=0x10000000 + i * (1 << 28))
                                         for i, r in enumerate(target.memory)))
    (build / "measure.ld").write_text(render_linker_script(roomy, arena))
    if _link(roomy, objects, "measure.ld", "measure.elf", build).returncode != 0:
        return {}
    fp = footprint(build / "measure.elf", roomy)
    return {name: v["used"] for name, v in fp["regions"].items()}


def _instructions_per_tick(target: Target) -> float:
    """Emulator instructions per SysTick tick under `-icount shift=N` (one instruction per 2^N ns)."""
    return 1e9 / (target.clock_hz_emulated * 2 ** int(target.emulator.icount_shift or 0))


class CortexM(Platform):
    kind = "cortex_m"

    def check(self, target: Target) -> None:
        drivers = uart_drivers()
        for where, uart in (("uart", target.uart), ("emulator.uart", target.emulator.uart or target.uart)):
            if uart.driver not in drivers:
                raise TargetError(f"{target.source}: {where}.driver must be one of {', '.join(drivers)} "
                                  f"(firmware_templates/cortex_m/uart/), got {uart.driver!r}")
        for role in ("text", "weights", "data", "bss", "arena", "stack"):
            target.region_for(role)

    def estimate_memory(self, target: Target, weights_bytes: int, arena_bytes: int = 0, calls: int = 0,
                        kernel_stack_bytes: int = 0) -> MemoryEstimate:
        static = FIRMWARE_STATIC_RAM + PROFILE_COUNTER_BYTES * calls + (SMALL_FRAME_BYTES if arena_bytes < SMALL_FRAME_BYTES else 0)
        est = MemoryEstimate(arena_bytes, static, FIRMWARE_STACK + kernel_stack_bytes)

        def add(r: Any, nbytes: int) -> None:
            est.needs[r.name] = est.needs.get(r.name, 0) + nbytes
            est.budgets[r.name], est.kinds[r.name] = r.size, r.kind

        # the arena in the first layout where everything fits (as the linking does), else the last one
        for t, arena in target.arena_layouts():
            est.needs, est.budgets, est.kinds = {}, {}, {}
            for role, nbytes in (("weights", weights_bytes), ("data", static), ("stack", target.stack_bytes)):
                add(t.region_for(role), nbytes)
            add(next(r for r in t.memory if r.name == arena), arena_bytes)
            if not est.over():
                break
        return est

    def build(self, build: Path, target: Target, report: dict[str, Any], weights_src: str,
              progress: Callable[[str], None], defines: tuple[str, ...] = ()) -> dict[str, Any]:
        self.check(target)
        cc = target.cc
        proc.require(cc, TOOLCHAIN_HINT)
        sources = copy_common(build)
        templates = template_dir("cortex_m")
        for src in templates.glob("*.[ch]"):
            shutil.copy(src, build / src.name)
        sources += sorted(p.name for p in templates.glob("*.c"))
        defs = ['-DEC_ARENA_ATTR=__attribute__((section(".ec_arena")))', "-DEC_PROFILE", *defines, "-I."]
        variants = [("board", target, "firmware")]
        if target.emulated_elsewhere:
            variants.append(("emu", target.for_emulator(), "firmware-emu"))
        progress(f"compiling the model with {cc}")
        model_objs = []
        for src in ("model.c", weights_src):
            obj = src.rsplit(".", 1)[0] + ".o"
            proc.run([cc, *target.cflags, *defs, "-c", src, "-o", obj], build, f"{cc}: compiling {src}")
            model_objs.append(obj)
        results = {}
        for variant, t, stem in variants:
            sub = build / f"{stem}-objs"
            sub.mkdir(exist_ok=True)
            (sub / "ec_board.h").write_text(render_board_header(t))
            (sub / "ec_build_info.h").write_text(render_info_header(report, t, variant))
            shutil.copy(templates / "uart" / f"{t.uart.driver}.c", sub / "uart.c")
            shutil.copy(templates / "uart" / "stm32.h", sub / "stm32.h")
            objs = list(model_objs)
            for src in [*sources, f"{sub.name}/uart.c"]:
                obj = f"{sub.name}/{Path(src).stem}.o"
                proc.run([cc, *target.cflags, *defs, f"-I{sub.name}", "-c", src, "-o", obj], build,
                         f"{cc}: compiling {Path(src).name}")
                objs.append(obj)
            script = f"{stem}.ld"
            progress(f"linking {stem}.elf for {t.name} ({variant})")
            # the arena in the first region that holds it where the link fits (DTCM, then SRAM, then
            # adjacent regions as one)
            layouts = t.arena_layouts()
            for i, (t, arena) in enumerate(layouts):
                (build / script).write_text(render_linker_script(t, arena))
                linked = _link(t, objs, script, f"{stem}.elf", build)
                if linked.returncode == 0 or not _OVERFLOW.search(linked.stderr) or i == len(layouts) - 1:
                    break
            if linked.returncode != 0:
                if _OVERFLOW.search(linked.stderr):
                    raise _fit_error(t, linked.stderr, _measure_needs(t, objs, build, arena))
                lines = [ln for ln in linked.stderr.splitlines() if "collect2" not in ln]
                first = next((ln for ln in lines if "error" in ln.lower() or "undefined" in ln),
                             linked.stderr.strip()[:300])
                raise ToolchainError(f"{cc}: linking {stem}.elf failed: {first}")
            results[variant] = {"elf": f"{stem}.elf", **footprint(build / f"{stem}.elf", t), "arena_region": arena}
            if variant == "board":
                region = next(r for r in t.memory if r.name == arena)
                tried = [name for _, name in layouts[:i]]
                where = (f"{arena}" if len(t.memory) == len(layouts[0][0].memory) else
                         f"{arena} extended to 0x{region.origin:08X} ({region.size:,} B, the adjacent regions as one)")
                why = f"too large for {', '.join(tried)}" if tried else f"it fits the {region.size:,} B region"
                progress(f"arena {results[variant].get('arena_bytes', 0):,} B in {where} ({why})")
        for p in build.glob("measure.*"):
            p.unlink()
        return results

    # -- running
    def start_emulator(self, target: Target, build: Path, report: dict[str, Any],
                       extra_plugin: str | None = None, detach: bool = False) -> EmulatorSession:
        emu = target.emulator
        firmware = self._emulated_program(target, build, report)
        session = EmulatorSession(target.name, icount_shift=emu.icount_shift)
        for _ in range(5):
            port = free_port()
            cmd = [emu.program, "-M", emu.machine, "-nographic", "-monitor", "none", "-kernel", str(firmware),
                   "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on"]
            if emu.icount_shift is not None:
                cmd += ["-icount", f"shift={emu.icount_shift}"]
            if extra_plugin:
                cmd += ["-plugin", extra_plugin]
            cmd += list(emu.args)
            p = session.spawn(cmd)
            session.port_url = f"socket://127.0.0.1:{port}"
            if not detach:
                return session   # open_port() retries until QEMU listens; the guest starts on that connection
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and p.poll() is None:
                if listening(port):
                    return session
                time.sleep(0.05)
            session.forget(p)
        log = session.log_tail()
        session.stop()
        raise DeviceError(f"{emu.program} did not start: {log}")

    def flash(self, method: str, target: Target, build: Path, report: dict[str, Any]) -> list[list[str]]:
        if method not in target.flash.methods:
            raise DeviceError(f"target {target.name} cannot be flashed with {method} "
                              f"(flash.methods: {', '.join(target.flash.methods)})")
        fw = self.program(build, report, emulated=False)
        cfg = target.flash
        if method == "pyocd":
            if not cfg.pyocd_target:
                raise DeviceError(f"target {target.name} has no pyocd_target (flash.pyocd_target in its .toml)")
            cmds = [["pyocd", "load", "--target", cfg.pyocd_target, str(fw)],
                    ["pyocd", "reset", "--target", cfg.pyocd_target]]
        elif method == "openocd":
            if not cfg.openocd_config:
                raise DeviceError(f"target {target.name} has no openocd_config (flash.openocd_config in its .toml)")
            cmds = [["openocd", *[a for c in cfg.openocd_config for a in ("-f", c)],
                     "-c", f"program {fw} verify reset exit"]]
        else:
            raise DeviceError(f"unknown device {method!r} for {target.name}: use emu, pyocd or openocd")
        for cmd in cmds:
            proc.run(cmd, what=" ".join(cmd[:2]), timeout=300, hint=f"install {cmd[0]} to flash real hardware",
                     error=DeviceError)
        return cmds

    # -- measuring
    def profile(self, target: Target, build: Path, report: dict[str, Any], runs: int = 3) -> dict[str, Any]:
        """Per-call counts from the emulated device: SysTick under -icount = emulator instructions."""
        def around(link: Any, infer_all: Callable[[], None]) -> bytes:
            link.request(PROFILE, b"", PROFILE_RESP)                 # reset the counters
            infer_all()
            return link.request(PROFILE, b"", PROFILE_RESP).payload

        with self.start_emulator(target, build, report) as session:
            payload = run_inferences(session, report, runs, around)
        ticks = np.frombuffer(payload, dtype="<u8").astype(np.float64) / runs
        per_tick = _instructions_per_tick(target)
        return {"unit": "emulator instructions (not cycles)", "unit_key": "instructions",
                "per_call": [int(round(t * per_tick)) for t in ticks], "runs": runs,
                # one SysTick period: the phase of the timer against the instruction stream depends on
                # when the serial input arrived, so a call's count varies by up to one period
                "resolution": per_tick}

    def cache(self, target: Target, build: Path, report: dict[str, Any], runs: int = 2) -> dict[str, Any]:
        return plugin_cache(self, target, build, report, runs)

    # -- tuning
    def harness_mode_for(self, target: Target) -> str:
        return "ticked" if self._bare_metal_harness(target) else "marked"

    def _bare_metal_harness(self, target: Target) -> bool:
        """Kernels of cores with Helium (MVE) cannot run under QEMU's user mode (no M-profile CPU
        there): they are measured bare-metal on the target's emulated machine."""
        return any(f.startswith("mve") for f in target.features)

    def harness_entry(self, target: Target) -> str:
        if self._bare_metal_harness(target):
            return ""       # firmware_templates/cortex_m/tune/harness_entry.c, linked beside the program
        # QEMU's user mode runs the M-profile code as a Linux program: an entry point and exit
        return "\n".join(["__attribute__((naked, noreturn)) void _start(void) {",
                          "  __asm__ volatile(\"bl main\\n movs r7, #1\\n svc #0\\n\");", "}"])

    def check_harness(self, target: Target) -> None:
        if self._bare_metal_harness(target):
            if not target.emulator.program or not target.emulator.machine:
                raise EdgeCompileError(f"{target.name}: no emulated machine to measure its kernels on "
                                       "([emulator] program and machine in its target file)")
            proc.require(target.emulator.program, "install qemu-system-arm (make setup)")
            return
        self._user_mode(target)
        proc.require("qemu-arm", "install qemu-user (make setup)")

    def _user_mode(self, target: Target) -> tuple[str, str]:
        if target.family != "cortex_m":
            raise EdgeCompileError(f"no user-mode emulator runs {target.name}'s kernels ({target.cpu}, family "
                                   f"{target.family}); tune through rpc://")
        return "qemu-arm", "max"

    def build_harness(self, target: Target, source: Path, exe: Path) -> None:
        if self._bare_metal_harness(target):
            emu = target.for_emulator()
            work = source.parent
            shutil.copy(template_dir("cortex_m") / "tune" / "harness_entry.c", work / "harness_entry.c")
            (work / "harness.ld").write_text(render_linker_script(emu))
            proc.run([emu.cc, *emu.cflags, "-T", "harness.ld", "-o", str(exe), source.name, "harness_entry.c",
                      *emu.ldflags], cwd=work, what=f"{emu.cc} on a tuning candidate", hint=TOOLCHAIN_HINT)
            return
        self._user_mode(target)
        proc.run([target.cc, *target.cflags, "-o", str(exe), str(source), *target.ldflags, "-lm"],
                 what=f"{target.cc} on a tuning candidate", hint=TOOLCHAIN_HINT)

    def run_harness(self, target: Target, exe: Path) -> float:
        if self._bare_metal_harness(target):
            return self._run_bare_metal(target, exe)
        program, cpu = self._user_mode(target)
        mark = elf_symbol(exe, "ec_hal_mark")
        if mark is None:
            raise EdgeCompileError(f"{exe}: no ec_hal_mark symbol")
        return count_between_marks([program, "-cpu", cpu], exe, mark & ~1)    # Thumb symbols carry bit 0

    def _run_bare_metal(self, target: Target, exe: Path, timeout: float = 300) -> float:
        """The program on the emulated machine under -icount: SysTick ticks between the two marker
        calls, printed through semihosting, as emulator instructions (exact to one tick)."""
        emu = target.emulator
        cmd = [emu.program, "-M", emu.machine, "-nographic", "-monitor", "none", "-serial", "null",
               "-icount", f"shift={emu.icount_shift or 0}", "-semihosting-config", "enable=on,target=native",
               "-kernel", str(exe), *emu.args]
        out = proc.run(cmd, what=f"a tuning candidate on {emu.machine}", timeout=timeout, check=False)
        m = re.search(r"EC_TICKS (\d+)", out.stdout + out.stderr)   # semihosting console: stdout or stderr
        if out.returncode != 0 or m is None:
            tail = (out.stdout + out.stderr).strip().splitlines()[-1:] or ["no output"]
            raise EdgeCompileError(f"{exe.name} on {emu.machine} failed (exit {out.returncode}): {tail[0][:200]}")
        return int(m.group(1)) * _instructions_per_tick(target)


PLATFORM = CortexM()
