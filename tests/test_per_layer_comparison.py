"""A deliberately broken kernel (a test-only build flag flips the sign of the largest weight of the
first convolution) is caught by the comparison with PyTorch and located by `run --layers` on the
host and `test --layers` on an emulated board; a correct build passes both."""

import json

import numpy as np
import pytest

from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.platforms.host import HostModel
from helpers import random_input, run_cli

SMALL = ["--width-mult", "0.25", "--resolution", "32", "--num-classes", "10"]


def _first_conv(out) -> int:
    report = json.loads((out / "report.json").read_text())
    return next(c["index"] for c in report["calls"] if c["kind"] in ("conv", "conv_pw", "conv_dw", "conv_group"))


@pytest.fixture(scope="module")
def host_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    for name, extra in (("good", []), ("broken", ["--debug-perturb-first-conv"])):
        run_cli("build", "mobilenet_v1", *SMALL, "--out", str(root / name), "-q", *extra, check=True)
    np.save(root / "x.npy", random_input((1, 3, 32, 32), 3))
    return root


def test_the_zoo_comparison_catches_the_broken_kernel(host_builds):
    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=32, num_classes=10))
    x = random_input((1, 3, 32, 32), 3)
    ref = source.reference(x)[0]
    good, broken = HostModel(host_builds / "good").run(x)[0], HostModel(host_builds / "broken").run(x)[0]
    assert np.abs(good - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(broken - ref).max() > 1e-2 * np.abs(ref).max()


def test_run_layers_locates_the_broken_kernel_on_the_host(host_builds):
    proc = run_cli("run", str(host_builds / "good"), "--input", str(host_builds / "x.npy"), "--layers")
    assert proc.returncode == 0 and "every kernel matches its references" in proc.stdout, proc.stdout
    assert "Relu_output_0" in proc.stdout                   # matched to the ONNX graph's own tensors
    proc = run_cli("run", str(host_builds / "broken"), "--input", str(host_builds / "x.npy"), "--layers")
    first = _first_conv(host_builds / "broken")
    assert proc.returncode == 3 and f"first kernel beyond tolerance: call {first} " in proc.stdout, proc.stdout


@pytest.mark.parametrize("quant", [pytest.param("int8", marks=pytest.mark.slow), "fp32"])   # int8: 58 s on CI, fp32 40 s
def test_test_layers_locates_the_broken_kernel_on_a_board(tmp_path, quant):
    out = tmp_path / "b"
    run_cli("build", "mobilenet_v1", *SMALL, "--target", "mps2-an386", "--quant", quant, "--out", str(out), "-q",
            "--debug-perturb-first-conv", check=True)
    assert run_cli("test", str(out), "--samples", "4").returncode == 3        # the device is wrong...
    proc = run_cli("test", str(out), "--layers", "--json")
    res = json.loads(proc.stdout)
    assert proc.returncode == 3 and res["first_divergence"] == _first_conv(out)     # ... and here is where
    assert res["traced"] == len(res["calls"])
    # the release firmware is untouched: the debug one lives in its own build directory
    assert (out / "debug-trace" / "report.json").is_file()
    assert json.loads((out / "report.json").read_text())["firmware"]["board"]["elf"] == "firmware.elf"


def test_test_layers_passes_a_correct_build_on_the_emulated_pi(tmp_path):
    out = tmp_path / "pi"
    run_cli("build", "mobilenet_v1", *SMALL, "--target", "rpi4", "--out", str(out), "-q", check=True)
    proc = run_cli("test", str(out), "--layers")
    assert proc.returncode == 0 and "every kernel matches its references" in proc.stdout, proc.stdout
