"""The CLI never destroys what it was not asked to replace, never crashes with a traceback and
never waits forever: each case through the real console script, asserting the one-line error, the
exit status, no traceback, and that nothing outside the build directory changed."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_cli

SMALL = ["--width-mult", "0.25", "--resolution", "32", "--num-classes", "10"]


def _refused(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


def test_out_refuses_a_directory_that_is_not_a_build(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("notes\n")
    before = _snapshot(tmp_path)
    _refused(run_cli("build", "mobilenet_v1", *SMALL, "--out", str(d), "-q"), "not an edgecompile build directory",
             "--force")
    assert _snapshot(tmp_path) == before


def test_out_refuses_a_regular_file_and_leaves_no_hidden_copy(tmp_path):
    f = tmp_path / "precious.txt"
    f.write_text("keep me\n")
    _refused(run_cli("build", "mobilenet_v1", *SMALL, "--out", str(f), "-q"), "not a directory")
    assert f.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_out_dot_is_refused_before_the_build(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    before = _snapshot(tmp_path)
    for spec in (".", "..", str(tmp_path)):
        proc = run_cli("build", "mobilenet_v1", *SMALL, "--out", spec, "-q", "--force", cwd=tmp_path)
        _refused(proc, "current directory")
    assert _snapshot(tmp_path) == before


def test_rebuild_replaces_a_previous_build_and_force_replaces_anything(tmp_path):
    out = tmp_path / "b"
    run_cli("build", "mobilenet_v1", *SMALL, "--out", str(out), "--no-compile", "-q", check=True)
    assert (out / ".edgecompile-build").is_file()
    (out / "stale.txt").write_text("from an earlier build")
    run_cli("build", "mobilenet_v1", *SMALL, "--out", str(out), "--no-compile", "-q", check=True)
    assert not (out / "stale.txt").exists() and (out / "model.c").is_file()
    # a build directory is readable by the group (mkdtemp's 0700 is not kept)
    assert stat.S_IMODE(os.stat(out).st_mode) & 0o050 == 0o050
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    run_cli("build", "mobilenet_v1", *SMALL, "--out", str(other), "--no-compile", "-q", "--force", check=True)
    assert not (other / "x.txt").exists() and (other / "model.c").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "other"]     # no hidden leftovers


def _processes_using(path) -> list[str]:
    """Processes whose environment mentions `path` (the TMPDIR given to one edgecompile run)."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if str(path).encode() in env.read_bytes():
                found.append((env.parent / "comm").read_text().strip())
        except OSError:
            pass
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupting_a_build_ends_the_compiler_and_leaves_no_temporary_files(tmp_path, sig):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    exe = Path(sys.executable).with_name("edgecompile")
    # a build whose C compile takes seconds: catch it while cc1 runs
    p = subprocess.Popen([str(exe), "build", "mobilenet_v2", "--resolution", "224", "--num-classes", "10",
                          "--out", str(tmp_path / "out"), "-q"], env={**os.environ, "TMPDIR": str(tmpdir)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while "cc1" not in _processes_using(tmpdir):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the compiler never started"
            time.sleep(0.1)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
    time.sleep(0.5)
    assert _processes_using(tmpdir) == []              # cc1, as, gcc: all gone
    assert list(tmpdir.iterdir()) == []                # no /tmp/cc*.s, no ec-tmp-*
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]     # no half-written build
