"""Getting a build onto a device and a serial line to it.

Backends (`edgecompile flash DIR --device ...`):

* `emu` (default): the target's emulator. Cortex-M boards run in `qemu-system-arm` with the UART
  on a local TCP socket (`socket://127.0.0.1:PORT`); the Raspberry Pi runs as a static aarch64
  program under `qemu-aarch64 -cpu cortex-a72` that opens one end of a `socat` pty pair, exactly
  as it would open /dev/serial0 on a Pi.
* `pyocd`, `openocd`: program a real board through its debug probe.
* `ssh://user@host`: copy the Pi program with scp and start it with ssh.

Emulators started here are always stopped again: `EmulatorSession` is a context manager that
kills its whole process group, and `edgecompile flash --stop DIR` ends a detached one.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import toolchain
from .errors import DeviceError, ToolchainError
from .targets import Target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plugin_path() -> Path | None:
    """The instruction-counting QEMU plugin (None if it cannot be built here)."""
    try:
        return build_plugin("ec_insn")
    except ToolchainError:
        return None


def build_plugin(name: str) -> Path:
    """A QEMU plugin of ours (firmware_templates/qemu_plugins/NAME.c), built with the host
    compiler on first use into the user's cache directory."""
    import hashlib
    import shutil as _shutil

    from .pipeline import template_dir

    src = template_dir("qemu_plugins") / f"{name}.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgecompile" / "qemu-plugins"
    lib = cache / f"lib{name}-{digest}.so"
    if lib.exists():
        return lib
    cc = _shutil.which("gcc") or _shutil.which("cc")
    if cc is None:
        raise ToolchainError("no host C compiler to build the QEMU plugin")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"cannot build the QEMU plugin {name}: {proc.stderr.strip()[:200]}")
    tmp.rename(lib)
    return lib


def firmware_path(build: Path, report: dict[str, Any], emulated: bool) -> Path:
    fw = report.get("firmware")
    if not fw:
        raise DeviceError(f"{build}: no firmware in this build (target {report.get('target')}); "
                          "build for a device target, e.g. --target mps2-an386")
    if "linux" in fw:
        return build / fw["linux"]["elf"]
    variant = "emu" if emulated and "emu" in fw else "board"
    return build / fw[variant]["elf"]


@dataclass
class EmulatorSession:
    """A running emulator with its serial line. Use as a context manager."""

    target: Target
    firmware: Path
    mark_address: int | None = None     # Linux programs: count instructions between marker calls
    extra_plugin: str | None = None     # "lib.so,arg=...": another QEMU plugin (cache simulation)
    port_url: str = ""
    counts_path: Path | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)
    tmp: tempfile.TemporaryDirectory | None = None
    log_path: Path | None = None

    def start(self, detach: bool = False) -> "EmulatorSession":
        emu = self.target.emulator
        program = emu.get("program")
        if not program:
            raise DeviceError(f"target {self.target.name} has no emulator")
        toolchain.require(program, "install qemu-system-arm / qemu-user (make setup)")
        self.tmp = tempfile.TemporaryDirectory(prefix="ec-emu-")
        tmp = Path(self.tmp.name)
        self.log_path = tmp / "emulator.log"
        if program == "qemu-aarch64":
            self._start_linux_user(tmp, detach)
        else:
            self._start_system(tmp, detach)
        return self

    def _spawn(self, cmd: list[str], detach: bool) -> subprocess.Popen:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def _start_system(self, tmp: Path, detach: bool) -> None:
        emu = self.target.emulator
        for _ in range(5):
            port = _free_port()
            cmd = [emu["program"], "-M", emu["machine"], "-nographic", "-monitor", "none",
                   "-kernel", str(self.firmware), "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on"]
            if "icount_shift" in emu:
                cmd += ["-icount", f"shift={int(emu['icount_shift'])}"]
            if self.extra_plugin:
                cmd += ["-plugin", self.extra_plugin]
            cmd += list(emu.get("args", []))
            proc = self._spawn(cmd, detach)
            self.port_url = f"socket://127.0.0.1:{port}"
            if not detach:
                return   # open_port() retries until QEMU listens; the guest starts on that connection
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                if _listening(port):
                    return
                time.sleep(0.05)
            self.procs.remove(proc)
            _kill(proc)
        raise DeviceError(f"{emu['program']} did not start: {self.log_tail()}")

    def open_port(self, timeout: float = 15.0) -> Any:
        """Open the serial line, retrying while the emulator comes up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return open_port(self.port_url)
            except DeviceError:
                reason = self.alive()
                if reason:
                    raise DeviceError(reason) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _start_linux_user(self, tmp: Path, detach: bool) -> None:
        emu = self.target.emulator
        toolchain.require("socat", "install socat (make setup)")
        host_end, dev_end = tmp / "tty-host", tmp / "tty-device"
        self._spawn(["socat", f"pty,raw,echo=0,link={host_end}", f"pty,raw,echo=0,link={dev_end}"], detach)
        deadline = time.monotonic() + 5
        while not (host_end.exists() and dev_end.exists()):
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise DeviceError(f"socat did not create the pty pair: {self.log_tail()}")
            time.sleep(0.02)
        cmd = [emu["program"], "-cpu", emu.get("cpu", "max")]
        plugin = plugin_path() if self.mark_address and not self.extra_plugin else None
        if plugin is not None:
            self.counts_path = tmp / "instructions.txt"
            cmd += ["-plugin", f"{plugin},mark={self.mark_address:#x},out={self.counts_path}"]
        if self.extra_plugin:
            cmd += ["-plugin", self.extra_plugin]
        self._spawn([*cmd, str(self.firmware), str(dev_end)], detach)
        self.port_url = str(host_end)

    def instruction_counts(self) -> list[int]:
        """Instructions of each inference so far (from the plugin; [] without it)."""
        if self.counts_path is None or not self.counts_path.exists():
            return []
        lines = [int(x) for x in self.counts_path.read_text().split()]
        return lines[1::2]

    def alive(self) -> str | None:
        """None while every process runs, else why not (for the protocol's error messages)."""
        for p in self.procs:
            rc = p.poll()
            if rc is not None:
                return f"the emulator exited (code {rc}): {self.log_tail()}"
        return None

    def log_tail(self, n: int = 300) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip() if self.log_path else ""
        except OSError:
            text = ""
        return text[-n:] or "(no output)"

    def stop(self) -> None:
        for p in reversed(self.procs):
            _kill(p)
        self.procs.clear()
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def __enter__(self) -> "EmulatorSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, without connecting (a connection would start
    a QEMU guest that waits for its first client)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True
    return any(ln.split()[1] == want and ln.split()[3] == "0A" for ln in lines)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def open_port(url: str, baud: int = 115200) -> Any:
    import serial

    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=0.05)
    except (serial.SerialException, ValueError, OSError) as err:
        raise DeviceError(f"cannot open serial port {url}: {err}") from None


# ----------------------------------------------------------------------------- real hardware


def real_flash_command(method: str, target: Target, build: Path, report: dict[str, Any]) -> list[list[str]]:
    """The command lines that put the build on a real device (one per step)."""
    fw = firmware_path(build, report, emulated=False)
    cfg = target.flash
    if method == "pyocd":
        if "pyocd_target" not in cfg:
            raise DeviceError(f"target {target.name} has no pyocd_target (flash.pyocd_target in its .toml)")
        return [["pyocd", "load", "--target", cfg["pyocd_target"], str(fw)], ["pyocd", "reset", "--target", cfg["pyocd_target"]]]
    if method == "openocd":
        configs = cfg.get("openocd_config")
        if not configs:
            raise DeviceError(f"target {target.name} has no openocd_config (flash.openocd_config in its .toml)")
        args = ["openocd"]
        for c in configs if isinstance(configs, list) else [configs]:
            args += ["-f", c]
        return [args + ["-c", f"program {fw} verify reset exit"]]
    if method.startswith("ssh://"):
        host = method[len("ssh://"):]
        if not host:
            raise DeviceError("ssh backend needs ssh://user@host")
        remote = cfg.get("remote_path", "/tmp/edgecompile-app")
        tty = cfg.get("serial_device", "/dev/serial0")
        start = f"pkill -f {shlex.quote(remote)} ; nohup {shlex.quote(remote)} {shlex.quote(tty)} >/dev/null 2>&1 &"
        return [["scp", "-q", str(fw), f"{host}:{remote}"], ["ssh", host, f"chmod +x {shlex.quote(remote)} && {start}"]]
    raise DeviceError(f"unknown device {method!r}: use emu, pyocd, openocd or ssh://user@host")


def flash_real(method: str, target: Target, build: Path, report: dict[str, Any]) -> list[list[str]]:
    cmds = real_flash_command(method, target, build, report)
    allowed = target.flash.get("methods", [])
    kind = "ssh" if method.startswith("ssh://") else method
    if allowed and kind not in allowed:
        raise DeviceError(f"target {target.name} cannot be flashed with {kind} (flash.methods: {', '.join(allowed)})")
    for cmd in cmds:
        toolchain.require(cmd[0], f"install {cmd[0]} to flash real hardware")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise DeviceError(f"{' '.join(cmd[:2])} failed: {msg[-1] if msg else proc.returncode}")
    return cmds


# ----------------------------------------------------------------------------- detached emulators


def session_for(target: Target, build: Path, report: dict[str, Any]) -> EmulatorSession:
    fw = report.get("firmware", {})
    mark = fw.get("linux", {}).get("mark_address")
    return EmulatorSession(target, firmware_path(build, report, emulated=True), mark_address=mark)


def start_detached(target: Target, build: Path, report: dict[str, Any]) -> dict[str, Any]:
    session = session_for(target, build, report).start(detach=True)
    state = {"port": session.port_url, "pids": [p.pid for p in session.procs],
             "workdir": session.tmp.name if session.tmp else None, "target": target.name}
    session.tmp = None   # the detached emulator keeps its directory until --stop
    (build / "device.json").write_text(json.dumps(state, indent=2) + "\n")
    return state


def stop_detached(build: Path) -> bool:
    path = build / "device.json"
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    for pid in state.get("pids", []):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    if state.get("workdir"):
        import shutil

        shutil.rmtree(state["workdir"], ignore_errors=True)
    path.unlink()
    return True


def check_flash_method(method: str) -> None:
    if method not in ("emu", "pyocd", "openocd") and not method.startswith("ssh://"):
        raise ToolchainError(f"unknown device {method!r}: use emu, pyocd, openocd or ssh://user@host")
