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


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGTERM"])   # SIGTERM: slow (CI time)
def test_interrupting_a_build_ends_the_compiler_and_leaves_no_temporary_files(tmp_path, sig):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    exe = Path(sys.executable).with_name("edgecompile")
    # a build whose C compile takes seconds: catch it while cc1 runs
    # a shell's background job (`pytest ... &`) ignores SIGINT and its children inherit that: restore
    # the default disposition, as in a terminal, so that Python installs its Ctrl-C handler
    p = subprocess.Popen([str(exe), "build", "mobilenet_v2", "--resolution", "224", "--num-classes", "10",
                          "--out", str(tmp_path / "out"), "-q"],
                         env={**os.environ, "TMPDIR": str(tmpdir), "EDGECOMPILE_OBJECT_CACHE": "off"},   # cc1 must run
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


@pytest.mark.parametrize("quant", [pytest.param("fp32", marks=pytest.mark.slow), "int8"])   # fp32: 30 s on CI
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


# ----------------------------------------------------------------------------- no tracebacks


def test_a_factory_that_raises_is_a_clean_error(tmp_path):
    (tmp_path / "badnet.py").write_text("def make():\n    raise RuntimeError('no GPU found')\n")
    _refused(run_cli("build", "badnet:make", "--input-shape", "1,3,8,8", "--out", str(tmp_path / "o"), cwd=tmp_path),
             "badnet:make", "raised RuntimeError: no GPU found")


def test_bad_weights_files_are_clean_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(300))
    _refused(run_cli("build", "mobilenet_v1", *SMALL, "--weights", str(garbage), "--out", str(tmp_path / "o")),
             "garbage.pt", "not a PyTorch weights file")
    module = tmp_path / "module.pt"
    subprocess.run([sys.executable, "-c", "import torch, sys; torch.save(torch.nn.Linear(2, 2), sys.argv[1])",
                    str(module)], check=True)
    _refused(run_cli("build", "mobilenet_v1", *SMALL, "--weights", str(module), "--out", str(tmp_path / "o")),
             "module.pt", "pickled objects, not weights")
    other = tmp_path / "other.pt"
    subprocess.run([sys.executable, "-c", "import torch, sys\nfrom edgecompile.models import build_model\n"
                    "m, _ = build_model('mobilenet_v2', width_mult=0.35, resolution=32, num_classes=10)\n"
                    "torch.save(m.state_dict(), sys.argv[1])", str(other)], check=True)
    proc = run_cli("build", "mobilenet_v1", *SMALL, "--weights", str(other), "--out", str(tmp_path / "o"))
    _refused(proc, "does not fit mobilenet_v1", "missing (e.g. ", "unexpected (e.g. ")
    assert len(proc.stderr) < 600                                        # counts and one key, not 3.7 KB


def test_weights_carry_their_architecture_options(tmp_path):
    w = tmp_path / "w.pt"
    run_cli("train", "mobilenet_v1", *SMALL, "--epochs", "1", "--out", str(w), check=True)
    # the options come from the file; a conflicting one is refused
    proc = run_cli("build", "mobilenet_v1", "--weights", str(w), "--out", str(tmp_path / "b"), "--no-compile",
                   "--json", "-q", check=True)
    report = json.loads(proc.stdout)
    assert report["inputs"][0]["shape"] == [1, 3, 32, 32] and report["outputs"][0]["shape"] == [1, 10]
    _refused(run_cli("build", "mobilenet_v1", "--weights", str(w), "--num-classes", "5", "--out", str(tmp_path / "c")),
             "--num-classes 5 conflicts with", "trained with --num-classes 10")
    _refused(run_cli("build", "mobilenet_v2", "--weights", str(w), "--out", str(tmp_path / "d")),
             "weights of mobilenet_v1, not mobilenet_v2")


def test_weights_with_an_onnx_file_are_refused(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    subprocess.run([sys.executable, str(REPO / "tests" / "lone_conv.py"), str(onnx_path)], check=True)
    w = tmp_path / "w.pt"
    w.write_bytes(b"x")
    _refused(run_cli("build", str(onnx_path), "--weights", str(w), "--out", str(tmp_path / "o")),
             "--weights is for zoo models", "carries its own weights")


def test_a_lone_conv_onnx_graph_builds_and_matches_onnxruntime(tmp_path):
    import numpy as np
    import onnxruntime as ort

    onnx_path = tmp_path / "m.onnx"
    subprocess.run([sys.executable, str(REPO / "tests" / "lone_conv.py"), str(onnx_path)], check=True)
    run_cli("build", str(onnx_path), "--out", str(tmp_path / "b"), "-q", check=True)
    from edgecompile.platforms.host import HostModel

    model = HostModel(tmp_path / "b")
    session = ort.InferenceSession(str(onnx_path))
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
        ref = session.run(None, {"x": x})[0]
        assert np.abs(model.run(x)[0] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_an_importer_failure_names_the_onnx_node(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    # Pad is accepted, but TVM converts only a constant pad value: here it is a graph input
    pads = onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    node = helper.make_node("Pad", ["x", "pads", "v"], ["y"], name="pad9", mode="constant")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                            helper.make_tensor_value_info("v", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 10, 10])], [pads])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "p.onnx")
    _refused(run_cli("build", str(tmp_path / "p.onnx"), "--out", str(tmp_path / "o")), "node 'pad9' (Pad)",
             "TVM's ONNX importer failed")


def test_argument_errors_come_before_torch_and_tvm_are_imported():
    code = ("import sys\nfrom edgecompile.cli import main\nrc = main(sys.argv[1:])\n"
            "print('heavy:', sorted(m for m in ('torch', 'tvm') if m in sys.modules))\n")
    for args in (["build", "mobilenet_v1", "--width-mult", "-1"], ["build", "mobilenet_v1", "--num-classes", "0"],
                 ["build", "mobilenet_v1", "--target", "pdp11"], ["test", "/nonexistent-build", "--samples", "0"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert "error:" in proc.stderr and "heavy: []" in proc.stdout, (args, proc.stdout, proc.stderr)


# ----------------------------------------------------------------------------- inputs checked


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "b"
    run_cli("build", "mobilenet_v1", *SMALL, "--out", str(out), "-q", check=True)
    return out


@pytest.mark.parametrize("make,fragment", [
    (lambda np: np.zeros((1, 32, 32, 3), np.float32), "looks like NHWC"),
    (lambda np: np.zeros((1, 3, 32, 32), np.int8), "input is int8"),
    (lambda np: np.full((1, 3, 32, 32), np.nan, np.float32), "NaN or infinite"),
    (lambda np: np.zeros((3, 32, 32), np.float32), "expects (1, 3, 32, 32)"),
])
def test_run_checks_its_input(host_build, tmp_path, make, fragment):
    import numpy as np

    np.save(tmp_path / "x.npy", make(np))
    _refused(run_cli("run", str(host_build), "--input", str(tmp_path / "x.npy")), fragment)


def test_run_casts_float64_with_a_note_and_checks_the_output_directory(host_build, tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float64))
    proc = run_cli("run", str(host_build), "--input", str(tmp_path / "x.npy"), check=True)
    assert "float64 input cast to float32" in proc.stderr and "output shape [1, 10]" in proc.stdout
    _refused(run_cli("run", str(host_build), "--input", str(tmp_path / "x.npy"), "--output", "/nonexistent/dir/y.npy"),
             "/nonexistent/dir")


# ----------------------------------------------------------------------------- small things


def test_version_and_target_list_json():
    from edgecompile import __version__

    assert run_cli("--version", check=True).stdout.strip() == f"edgecompile {__version__}"
    targets = {t["name"]: t for t in json.loads(run_cli("list", "targets", "--json", check=True).stdout)}
    disco = targets["stm32f746g-disco"]
    assert disco["flash_bytes"] == 1 << 20 and disco["ram_bytes"] == 320 << 10 and disco["platform"] == "cortex_m"


def test_flash_prints_the_pid_and_stop_tells_the_truth(tmp_path):
    out = tmp_path / "b"
    run_cli("build", "mobilenet_v1", *SMALL, "--target", "mps2-an386", "--out", str(out), "-q", check=True)
    proc = run_cli("flash", str(out), check=True)
    state = json.loads((out / "device.json").read_text())
    assert f"PID {state['pids'][0]}" in proc.stdout
    watched = run_cli("monitor", str(out), "--seconds", "2", check=True)
    assert json.loads((out / "report.json").read_text())["model_hash"] in watched.stdout   # the INFO it asked for
    for pid in state["pids"]:                     # the emulator dies behind our back
        os.killpg(pid, signal.SIGKILL)
    time.sleep(0.5)
    proc = run_cli("flash", str(out), "--stop", check=True)
    assert "had already exited" in proc.stdout
    assert "no emulator was running" in run_cli("flash", str(out), "--stop", check=True).stdout
