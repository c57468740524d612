"""The CLI never destroys what it was not asked to replace, never crashes with a traceback and
never waits forever: each case through the real console script, asserting the one-line error, the
exit status, no traceback, and that nothing outside the build directory changed."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, run_cli

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


# ----------------------------------------------------------------------------- a test verb that can fail


def _broken_target(tmp_path) -> Path:
    """mps2-an386 with a firmware that zeroes every input it receives (EC_TEST_IGNORE_INPUT)."""
    d = tmp_path / "targets"
    d.mkdir()
    text = (REPO / "targets" / "mps2-an386.toml").read_text().replace('name = "mps2-an386"', 'name = "deaf"')
    (d / "deaf.toml").write_text(text.replace('cflags = ["-mcpu=cortex-m4"', 'cflags = ["-DEC_TEST_IGNORE_INPUT", "-mcpu=cortex-m4"'))
    return d


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_test_fails_a_device_that_ignores_its_input(tmp_path, quant):
    targets = _broken_target(tmp_path)
    out = tmp_path / "b"
    run_cli("build", "mobilenet_v1", *SMALL, "--quant", quant, "--target", "deaf", "--targets-dir", str(targets),
            "--out", str(out), "-q", check=True)
    proc = run_cli("test", str(out), "--samples", "4", "--targets-dir", str(targets), "--json")
    res = json.loads(proc.stdout)
    assert proc.returncode == 3 and not res["passed"], res
    assert res["reference_spread"] >= 0.1 * res["reference_magnitude"]     # the reference is not the problem
    if quant == "int8":
        assert res["host_int8"]["samples_differing"] > 0
    else:
        assert res["max_abs_error"] > res["thresholds"]["max_abs_error"]


CONSTANT_NET = """
import torch
from torch import nn
def make():
    conv = nn.Conv2d(3, 4, 3)
    nn.init.zeros_(conv.weight)
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
"""


def test_test_refuses_a_reference_that_ignores_its_input(tmp_path):
    """A network whose output is a constant: every device would agree with it, so the test fails
    and says why, instead of passing vacuously."""
    (tmp_path / "constnet.py").write_text(CONSTANT_NET)
    out = tmp_path / "b"
    run_cli("build", "constnet:make", "--input-shape", "1,3,16,16", "--quant", "fp32", "--target", "mps2-an386",
            "--out", str(out), "-q", check=True, cwd=tmp_path)
    proc = run_cli("test", str(out), "--samples", "4", cwd=tmp_path)
    assert proc.returncode == 3 and "do not depend on the input" in proc.stdout and "--weights" in proc.stdout
    proc = run_cli("test", str(out), "--samples", "1", cwd=tmp_path)
    assert proc.returncode == 3 and "one sample" in proc.stdout
    for n in ("0", "-3"):
        _refused(run_cli("test", str(out), "--samples", n, cwd=tmp_path), "--samples must be at least 1")
