"""Linux boards (Raspberry Pi 4): a static program that opens the serial device it is given.

* build: the generated model + the device loop + `firmware_templates/linux/hal_linux.c` into one
  static executable `app` (objects compiled in parallel, through the object cache: objects.py).
* emulator: `qemu-aarch64 -cpu <cpu>` (user mode) runs `app` on one end of a `socat` pty pair,
  exactly as the program would open /dev/serial0 on a Pi; our QEMU plugin counts the instructions
  between the marker calls around each inference (deterministic emulator counts, not cycles).
* flash: `ssh://user@host` copies `app` with scp and starts it with ssh on the Pi's serial device.
* tuning: a kernel's measuring program runs under the same user-mode emulator with the plugin.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import proc
from ..device.elf import elf_symbol, footprint
from ..device.plugins import count_between_marks, plugin_path
from ..device.session import EmulatorSession
from ..errors import DeviceError, EdgeCompileError
from ..targets import Target
from ..paths import template_dir
from . import Platform
from .device_loop import copy_common, plugin_cache, render_info_header
from .objects import compile_units, source_units

TOOLCHAIN_HINT = "install gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (make setup)"


class Linux(Platform):
    kind = "linux"

    def build(self, build: Path, target: Target, report: dict[str, Any], weights_src: str,
              progress: Callable[[str], None], defines: tuple[str, ...] = ()) -> dict[str, Any]:
        cc = target.cc
        proc.require(cc, TOOLCHAIN_HINT)
        sources = copy_common(build)
        shutil.copy(template_dir("linux") / "hal_linux.c", build / "hal_linux.c")
        (build / "ec_build_info.h").write_text(render_info_header(report, target, "linux"))
        defs = ['-DEC_ARENA_ATTR=__attribute__((section("ec_arena_mem")))', "-DEC_PROFILE", *defines, "-I."]
        # every unit at once and through the object cache (the device loop is compiled once, not per build)
        with tempfile.TemporaryDirectory() as tmp:
            units = source_units(build, Path(tmp), ["model.c", weights_src, *sources, "hal_linux.c"])
            progress(f"compiling {len(units)} translation units with {cc}")
            stats = compile_units(units, cc, [*target.cflags, *defs], target.name)
            progress(f"objects: {stats.describe()}; linking app")
            proc.run([cc, *target.cflags, "-o", "app", *[str(u.obj) for u in units], *target.ldflags], build,
                     f"{cc}: linking app", hint=TOOLCHAIN_HINT)
        return {"linux": {"elf": "app", "mark_address": elf_symbol(build / "app", "ec_hal_mark"),
                          **footprint(build / "app", target)}}

    def start_emulator(self, target: Target, build: Path, report: dict[str, Any],
                       extra_plugin: str | None = None, detach: bool = False) -> EmulatorSession:
        emu = target.emulator
        program = self._emulated_program(target, build, report)
        mark = (report.get("firmware") or {}).get("linux", {}).get("mark_address")
        session = EmulatorSession(target.name)
        tmp = session.workdir
        host_end, dev_end = tmp / "tty-host", tmp / "tty-device"
        session.spawn(["socat", f"pty,raw,echo=0,link={host_end}", f"pty,raw,echo=0,link={dev_end}"],
                      hint="install socat (make setup)")
        deadline = time.monotonic() + 5
        while not (host_end.exists() and dev_end.exists()):
            if time.monotonic() > deadline or session.alive():
                log = session.log_tail()
                session.stop()
                raise DeviceError(f"socat did not create the pty pair: {log}")
            time.sleep(0.02)
        cmd = [emu.program, "-cpu", emu.cpu or "max"]
        plugin = plugin_path() if mark and not extra_plugin else None
        if plugin is not None:
            session.counts_path = tmp / "instructions.txt"
            cmd += ["-plugin", f"{plugin},mark={mark:#x},out={session.counts_path}"]
        if extra_plugin:
            cmd += ["-plugin", extra_plugin]
        session.spawn([*cmd, str(program), str(dev_end)])
        session.port_url = str(host_end)
        return session

    def flash(self, method: str, target: Target, build: Path, report: dict[str, Any]) -> list[list[str]]:
        if not method.startswith("ssh://"):
            raise DeviceError(f"unknown device {method!r} for {target.name}: use emu or ssh://user@host")
        if "ssh" not in target.flash.methods:
            raise DeviceError(f"target {target.name} cannot be flashed with ssh "
                              f"(flash.methods: {', '.join(target.flash.methods)})")
        host = method[len("ssh://"):]
        if not host:
            raise DeviceError("ssh backend needs ssh://user@host")
        fw = self.program(build, report, emulated=False)
        remote, tty = target.flash.remote_path, target.flash.serial_device
        start = f"pkill -f {shlex.quote(remote)} ; nohup {shlex.quote(remote)} {shlex.quote(tty)} >/dev/null 2>&1 &"
        cmds = [["scp", "-q", str(fw), f"{host}:{remote}"], ["ssh", host, f"chmod +x {shlex.quote(remote)} && {start}"]]
        for cmd in cmds:
            proc.run(cmd, what=" ".join(cmd[:2]), timeout=300, hint=f"install {cmd[0]} to flash real hardware",
                     error=DeviceError)
        return cmds

    def profile(self, target: Target, build: Path, report: dict[str, Any], runs: int = 1) -> dict[str, Any]:
        """Per-kernel instructions counted by our QEMU plugin over each kernel's code (the emulated
        Pi has no cycle counter worth reading); a kernel function called k times is split evenly."""
        if not target.caches:
            raise EdgeCompileError(f"per-kernel counts on {target.name} need its [[cache]] geometry (the plugin "
                                   "that counts per kernel is the cache model)")
        per_kernel = plugin_cache(self, target, build, report, runs)["per_kernel"]
        names = [c["name"] for c in report["calls"]]
        return {"unit": "emulator instructions (not cycles; QEMU plugin over each kernel's code)",
                "unit_key": "instructions", "runs": runs,
                "per_call": [per_kernel[n]["instructions"] // names.count(n) for n in names]}

    def cache(self, target: Target, build: Path, report: dict[str, Any], runs: int = 2) -> dict[str, Any]:
        return plugin_cache(self, target, build, report, runs)

    # -- tuning
    def build_harness(self, target: Target, source: Path, exe: Path) -> None:
        ldflags = list(target.ldflags) + ([] if "-static" in target.ldflags else ["-static"])
        proc.run([target.cc, *target.cflags, "-o", str(exe), str(source), *ldflags, "-lm"],
                 what=f"{target.cc} on a tuning candidate", hint=TOOLCHAIN_HINT)

    def check_harness(self, target: Target) -> None:
        if not target.emulator.program:
            raise EdgeCompileError(f"{target.name}: no user-mode emulator to count instructions with")
        proc.require(target.emulator.program, "install qemu-user (make setup)")

    def run_harness(self, target: Target, exe: Path) -> float:
        self.check_harness(target)
        mark = elf_symbol(exe, "ec_hal_mark")
        if mark is None:
            raise EdgeCompileError(f"{exe}: no ec_hal_mark symbol")
        return count_between_marks([target.emulator.program, "-cpu", target.emulator.cpu or "max"], exe, mark)


PLATFORM = Linux()
