"""Every external command edgecompile starts goes through here: compilers, linkers, emulators,
flash tools, valgrind.

* `run` waits for a command and turns a failure (missing program, non-zero exit, timeout) into
  a `ToolchainError` (or the error type the caller names) with a one-line message that the CLI
  prints; the child runs in its own process group with a private TMPDIR, and when edgecompile is
  interrupted (Ctrl-C, SIGTERM, any exception) the whole group is ended and the TMPDIR removed,
  so no `cc1` keeps running and no `/tmp/cc*.s` stays behind.
* `run_all` runs independent commands in parallel (the translation units of a build), with
  the same guarantees.
* `spawn` starts a long-running child (an emulator, socat) in its own process group; `stop`
  ends the group. Children still running when edgecompile exits are ended too.
* `terminate_on_sigterm` makes SIGTERM behave like Ctrl-C (the CLI installs it), so the same
  clean-up runs for both.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Sequence

from .errors import EdgeCompileError, ToolchainError

_LIVE: set[subprocess.Popen] = set()     # spawned children that are still ours to end


def require(tool: str, hint: str = "run `make setup` (or see README: toolchains)",
            error: type[EdgeCompileError] = ToolchainError) -> str:
    path = shutil.which(tool)
    if path is None:
        raise error(f"'{tool}' not found on PATH; {hint}")
    return path


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    flagged = [ln for ln in lines if "error" in ln.lower() and "collect2" not in ln]
    return (flagged or lines or ["(no output)"])[0][:400]


def run(cmd: Sequence[str], cwd: Path | str | None = None, what: str = "", timeout: float = 1800,
        env: dict[str, str] | None = None, check: bool = True, hint: str | None = None,
        error: type[EdgeCompileError] = ToolchainError) -> subprocess.CompletedProcess:
    """Run `cmd` to completion and return it (stdout/stderr as text). With `check`, a non-zero
    exit raises `error` naming `what` and the first error line of the output."""
    cmd = [str(c) for c in cmd]
    require(cmd[0], hint or "run `make setup` (or see README: toolchains)", error)
    what = what or cmd[0]
    with tempfile.TemporaryDirectory(prefix="ec-tmp-") as tmp:
        child_env = {**(os.environ if env is None else env), "TMPDIR": tmp}
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            raise error(f"{what}: timed out after {timeout:.0f} s") from None
        except BaseException:          # Ctrl-C, SIGTERM, anything: the child's group goes too
            _end_group(proc)
            raise
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise error(f"{what} failed: {_first_error_line(err or out)}")
    return result


def run_all(jobs: Sequence[tuple[Sequence[str], Path | str | None, str]], parallel: int | None = None,
            timeout: float = 1800, error: type[EdgeCompileError] = ToolchainError) -> None:
    """Run independent commands, `parallel` at a time (default: os.cpu_count()), each job
    `(cmd, cwd, what)` as `run` runs one: its own process group and private TMPDIR, ended with the
    others when edgecompile is interrupted. The first failure ends the jobs still running and
    raises `error` naming its `what` and the first error line of its output."""
    jobs = [([str(c) for c in cmd], cwd, what or str(cmd[0])) for cmd, cwd, what in jobs]
    for cmd, _, _ in jobs:
        require(cmd[0], error=error)
    limit = max(1, parallel or os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="ec-tmp-") as tmp:
        pending = list(enumerate(jobs))
        running: list[tuple[subprocess.Popen, str, IO[bytes], float]] = []
        try:
            while pending or running:
                while pending and len(running) < limit:
                    i, (cmd, cwd, what) = pending.pop(0)
                    private = Path(tmp) / f"job{i}"
                    private.mkdir()
                    log = open(private / "output", "w+b")
                    child = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "TMPDIR": str(private)},
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
                    running.append((child, what, log, time.monotonic() + timeout))
                for job in list(running):
                    child, what, log, deadline = job
                    rc = child.poll()
                    if rc is None:
                        if time.monotonic() > deadline:
                            raise error(f"{what}: timed out after {timeout:.0f} s")
                        continue
                    running.remove(job)
                    log.seek(0)
                    text = log.read().decode(errors="replace")
                    log.close()
                    if rc != 0:
                        raise error(f"{what} failed: {_first_error_line(text)}")
                if running:
                    time.sleep(0.01)
        finally:            # a failure, Ctrl-C, SIGTERM: nothing keeps running
            for child, _, log, _ in running:
                _end_group(child)
                log.close()


def spawn(cmd: Sequence[str], log: IO[bytes] | int | None = None, env: dict[str, str] | None = None,
          hint: str | None = None, error: type[EdgeCompileError] = ToolchainError) -> subprocess.Popen:
    """Start a long-running child in its own process group; its output goes to `log`."""
    cmd = [str(c) for c in cmd]
    require(cmd[0], hint or "run `make setup` (or see README: toolchains)", error)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    _LIVE.add(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """End a spawned child's whole process group (SIGTERM, then SIGKILL after 3 s)."""
    _end_group(proc)
    _LIVE.discard(proc)


def release(proc: subprocess.Popen) -> None:
    """Let a spawned child outlive edgecompile (a detached emulator that `flash --stop` ends)."""
    _LIVE.discard(proc)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return state not in ("Z", "X")


def kill_group(pid: int) -> bool:
    """End the process group led by `pid` (a child of an earlier edgecompile run). False when it
    had already gone."""
    running = alive(pid)
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return running


def _end_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@atexit.register
def _end_all() -> None:
    for proc in list(_LIVE):
        stop(proc)


def terminate_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, so `run`, `spawn` owners and every `finally` clean up
    exactly as for Ctrl-C."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
