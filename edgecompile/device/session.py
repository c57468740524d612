"""A running emulator and the serial line to it, whatever the board: the processes (each in its
own process group, always ended again), their log, the serial URL, instruction counts. Which
programs to start is the platform's business (`platforms/<kind>.py`); this module only keeps
them. `edgecompile flash` detaches a session (`detach`) and `flash --stop` ends it
(`stop_detached`)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import proc
from ..errors import DeviceError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, without connecting (a connection would start
    a QEMU guest that waits for its first client)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True
    return any(ln.split()[1] == want and ln.split()[3] == "0A" for ln in lines)


def open_port(url: str, baud: int = 115200) -> Any:
    import serial

    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=0.05)
    except (serial.SerialException, ValueError, OSError) as err:
        raise DeviceError(f"cannot open serial port {url}: {err}") from None


@dataclass
class EmulatorSession:
    """A running emulator with its serial line. Use as a context manager."""

    name: str                              # the target, for messages
    icount_shift: int | None = None        # a system emulator counting instructions (-icount)
    port_url: str = ""
    counts_path: Path | None = None        # where our plugin writes instruction counts, if it runs
    procs: list[subprocess.Popen] = field(default_factory=list)
    tmp: tempfile.TemporaryDirectory | None = None
    log_path: Path | None = None

    @property
    def workdir(self) -> Path:
        if self.tmp is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="ec-emu-")
            self.log_path = Path(self.tmp.name) / "emulator.log"
        return Path(self.tmp.name)

    def spawn(self, cmd: list[str], hint: str = "install qemu-system-arm / qemu-user (make setup)") -> subprocess.Popen:
        self.workdir        # noqa: B018 - creates the log's directory
        with open(self.log_path, "ab") as log:   # type: ignore[arg-type]
            p = proc.spawn(cmd, log, hint=hint)
        self.procs.append(p)
        return p

    def forget(self, p: subprocess.Popen) -> None:
        """End one of the processes (a start attempt that failed)."""
        proc.stop(p)
        self.procs.remove(p)

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
            proc.stop(p)
        self.procs.clear()
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def detach(self, state_file: Path) -> dict[str, Any]:
        """Leave the emulator running after edgecompile exits; `stop_detached` ends it."""
        state = {"port": self.port_url, "pids": [p.pid for p in self.procs],
                 "workdir": self.tmp.name if self.tmp else None, "target": self.name}
        for p in self.procs:
            proc.release(p)
        self.procs.clear()
        self.tmp = None       # its directory stays until --stop
        state_file.write_text(json.dumps(state, indent=2) + "\n")
        return state

    def __enter__(self) -> "EmulatorSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_detached(state_file: Path) -> tuple[bool, bool]:
    """End a detached emulator: (there was one, it was still running)."""
    if not state_file.exists():
        return False, False
    state = json.loads(state_file.read_text())
    running = [pid for pid in state.get("pids", []) if proc.kill_group(pid)]
    if state.get("workdir"):
        shutil.rmtree(state["workdir"], ignore_errors=True)
    state_file.unlink()
    return True, bool(running)
