"""`edgecompile tune`: MetaSchedule over our schedule space with the host, emulator and RPC runners;
records that `build` then uses (kernel changes, output still matches PyTorch)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.platforms.host import HostModel
from helpers import random_input, run_cli

MODEL = ["mobilenet_v1", "--width-mult", "0.25", "--resolution", "32", "--num-classes", "10"]
DWPW = "fused_conv2d3_add2_relu2__fused_conv2d4_add3_relu3"    # a fused depthwise+pointwise kernel


def _tune(db, *extra):
    proc = run_cli("tune", *MODEL, "--db", str(db), "--json", "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _build(out, *extra):
    proc = run_cli("build", *MODEL, "--out", str(out), "--json", "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _records(db, target):
    lines = (db / target / "database_tuning_record.json").read_text().splitlines()
    return sorted(json.dumps(json.loads(ln)[1][1:3]) for ln in lines)    # (run_secs, target) per record


def test_host_tune_records_are_used_by_build(tmp_path):
    db = tmp_path / "db"
    summary = _tune(db, "--target", "host", "--runner", "host", "--kernel", DWPW, "--trials", "4")
    assert summary["unit"].startswith("us") and len(summary["kernels"]) == 1
    k = summary["kernels"][0]
    assert k["configurations"] == 5 and k["best_cost"] > 0 and k["best_config"]    # 4 + untiled
    assert list(db.glob("host*/database_tuning_record.json"))     # host-avx2 / host-avx512
    # the tuned kernel timed inside the network against the rule's own (tune/validate.py): kept or
    # set aside, and a build follows that verdict
    verdict = summary["in_network"][DWPW]
    assert verdict["untuned_ns"] > 0 and verdict["tuned_ns"] > 0 and verdict["config"] == k["best_config"]
    saved = json.loads(next(db.glob("host*/in_network.json")).read_text())
    assert [v["kernel"] for v in saved.values()] == [DWPW] and list(saved.values())[0]["kept"] == verdict["kept"]
    tuned = _build(tmp_path / "tuned", "--db", str(db))
    plain = _build(tmp_path / "plain", "--no-tuning")
    assert plain["tuning"]["kernels_tuned"] == 0
    if not verdict["kept"]:
        assert tuned["tuning"]["kernels_tuned"] == 0 and list(tuned["tuning"]["set_aside"]) == [DWPW]
        assert (tmp_path / "tuned" / "model.c").read_bytes() == (tmp_path / "plain" / "model.c").read_bytes()
        # the verdict overruled: the record is used
        path = next(db.glob("host*/in_network.json"))
        path.write_text(json.dumps({key: {**v, "kept": True} for key, v in saved.items()}))
        tuned = _build(tmp_path / "tuned", "--db", str(db))
    assert tuned["tuning"]["kernels_tuned"] == 1 and not tuned["tuning"]["set_aside"]
    call = next(c for c in tuned["calls"] if json.dumps(k["best_config"], sort_keys=True) in c["schedule"])
    assert call["kind"] == "dwpw"
    if k["best_config"] != k["rule_config"]:
        assert (tmp_path / "tuned" / "model.c").read_bytes() != (tmp_path / "plain" / "model.c").read_bytes()
    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=32, num_classes=10))
    x = random_input(source.inputs[0].shape)
    m = HostModel(tmp_path / "tuned")
    np.testing.assert_allclose(m.run(x)[0], source.reference(x)[0], rtol=1e-4, atol=1e-4)
    m.close()


def test_emu_runner_is_deterministic_and_changes_the_kernel(tmp_path):
    """rpi4 under qemu-aarch64: instruction counts, the same records twice; the tuned build's
    kernel differs from the rule's and still matches PyTorch on the emulated Pi."""
    a = _tune(tmp_path / "a", "--target", "rpi4", "--runner", "emu", "--kernel", DWPW, "--trials", "5")
    b = _tune(tmp_path / "b", "--target", "rpi4", "--runner", "emu", "--kernel", DWPW, "--trials", "5")
    assert "not cycles" in a["unit"]
    assert _records(tmp_path / "a", "rpi4") == _records(tmp_path / "b", "rpi4")
    assert a["kernels"] == b["kernels"]
    k = a["kernels"][0]
    assert k["best_cost"] <= k["default_cost"]
    tuned = _build(tmp_path / "tuned", "--target", "rpi4", "--db", str(tmp_path / "a"))
    plain = _build(tmp_path / "plain", "--target", "rpi4", "--no-tuning")
    assert tuned["tuning"]["kernels_tuned"] == 1
    if k["best_config"] != k["rule_config"]:
        assert (tmp_path / "tuned" / "model.c").read_bytes() != (tmp_path / "plain" / "model.c").read_bytes()
    from edgecompile.measure.accuracy import run_test

    result = run_test(tmp_path / "tuned", samples=5, dataset="digits")
    assert result["passed"], result["failures"]
    assert result["agreement"] == 1.0 and result["max_abs_error"] <= 1e-4 * result["reference_spread"]


@pytest.mark.slow   # 83 s on CI; see test_emu_runner_is_deterministic_and_changes_the_kernel
def test_emu_runner_for_cortex_m7_int8(tmp_path):
    """Cortex-M7 int8 kernels counted under QEMU's user mode; the tuned firmware stays bit-exact
    on the emulated board."""
    db = tmp_path / "db"
    summary = _tune(db, "--target", "stm32f746g-disco", "--kernel", "fused_conv2d3_", "--trials", "3")
    k = summary["kernels"][0]
    assert summary["runner"] == "emu" and k["best_cost"] > 0 and k["best_cost"] <= k["default_cost"]
    tuned = _build(tmp_path / "tuned", "--target", "stm32f746g-disco", "--db", str(db))
    plain = _build(tmp_path / "plain", "--target", "stm32f746g-disco", "--no-tuning")
    assert tuned["tuning"]["kernels_tuned"] == 1
    from edgecompile.measure.accuracy import run_test

    a = run_test(tmp_path / "tuned", samples=4, dataset="digits")
    b = run_test(tmp_path / "plain", samples=4, dataset="digits")
    assert a["raw_outputs"] == b["raw_outputs"]        # integer kernels: tiling changes no bit


@pytest.mark.slow   # 100 s on CI; the emulator runners stay tested by test_emu_runner_is_deterministic_and_changes_the_kernel
def test_bare_metal_runner_for_cortex_m55_int8(tmp_path):
    """Cortex-M55 kernels (no M-profile CPU in QEMU's user mode) measured bare-metal on the
    emulated mps3-an547 under qemu-system-arm -icount: SysTick counts of each candidate, the same
    records twice; the tuned firmware stays bit-exact on the emulated board."""
    tune = ("--target", "mps3-an547", "--kernel", "fused_conv2d3_", "--trials", "3")
    a, b = _tune(tmp_path / "a", *tune), _tune(tmp_path / "b", *tune)
    assert a["runner"] == "emu" and "not cycles" in a["unit"]
    assert _records(tmp_path / "a", "mps3-an547") == _records(tmp_path / "b", "mps3-an547")
    k = a["kernels"][0]
    assert k["configurations"] > 1 and 0 < k["best_cost"] <= k["default_cost"]
    assert len(set(_records(tmp_path / "a", "mps3-an547"))) > 1     # the candidates' counts differ
    tuned = _build(tmp_path / "tuned", "--target", "mps3-an547", "--db", str(tmp_path / "a"))
    plain = _build(tmp_path / "plain", "--target", "mps3-an547", "--no-tuning")
    assert tuned["tuning"]["kernels_tuned"] == 1
    from edgecompile.measure.accuracy import run_test

    t = run_test(tmp_path / "tuned", samples=4, dataset="digits")
    p = run_test(tmp_path / "plain", samples=4, dataset="digits")
    assert t["passed"], t["failures"]
    assert t["raw_outputs"] == p["raw_outputs"]        # integer kernels: tiling changes no bit


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_tracker():
    """A TVM RPC tracker and one server registered under a key, on loopback (as a Pi farm would
    run them, one server per Pi)."""
    port, sport, key = _free_port(), _free_port(), "ec-test"
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                               str(port), "--port-end", str(port + 1)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "RPC tracker did not start"
                time.sleep(0.3)
        procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                       "--port", str(sport), "--port-end", str(sport + 1), "--tracker",
                                       f"127.0.0.1:{port}", "--key", key], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from tvm import rpc

        while True:
            try:
                tr = rpc.connect_tracker("127.0.0.1", port)
                free = tr.summary()["queue_info"].get(key, {}).get("free", 0)
                tr.close()
                if free:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert time.monotonic() < deadline, "RPC server did not register"
            time.sleep(0.5)
        yield f"rpc://127.0.0.1:{port}/{key}"
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.slow   # 50 s on CI with its tracker fixture
def test_rpc_runner_on_loopback(tmp_path, rpc_tracker):
    db = tmp_path / "db"
    summary = _tune(db, "--target", "host", "--runner", rpc_tracker, "--kernel", DWPW, "--trials", "3")
    k = summary["kernels"][0]
    assert summary["runner"] == "rpc" and k["best_cost"] > 0 and k["best_config"]
    tuned = _build(tmp_path / "tuned", "--db", str(db))
    assert tuned["tuning"]["kernels_tuned"] == 1


def test_tune_rejects_bad_runner_and_kernel(tmp_path):
    proc = run_cli("tune", *MODEL, "--target", "host", "--runner", "emu", "--db", str(tmp_path))
    assert proc.returncode != 0 and "user-mode emulator" in proc.stderr
    proc = run_cli("tune", *MODEL, "--target", "rpi4", "--runner", "host", "--db", str(tmp_path))
    assert proc.returncode != 0 and "this machine" in proc.stderr
    proc = run_cli("tune", *MODEL, "--kernel", "nope", "--db", str(tmp_path))
    assert proc.returncode != 0 and "matches no kernel" in proc.stderr


def test_a_database_names_only_intrinsics_it_can_register(tmp_path):
    """A tuning database shared by several networks replays every stored trace when it opens, so
    each micro-kernel intrinsic its traces name must be registered first from the name alone
    (records._register_intrinsics): every form, with ragged pixel tiles (`_p`), narrowed rows (`_a8`)
    and integer panel orders. A ragged whole-row window tile (`ec_gemmw_..._pP`, SqueezeNet's 3x3
    convolutions on AVX2) was not: tuning ShuffleNet into the database after SqueezeNet failed."""
    from tvm.s_tir import TensorIntrin

    from edgecompile.tune.records import _register_intrinsics

    names = ["ec_gemmw_f32_27x16_w3c29_s1_p6", "ec_gemmw_f32_5x8_w3c31_s2", "ec_gemmw_s16k4w_3x4_h3w3c7_s2",
             "ec_gemm_f32_29x16_k37_s1_p6", "ec_gemm_s8k16_3x5_k41_s1", "ec_gemm_s16_2x8_k43_s2_a8",
             "ec_dw_f32_27x32_k3x3s1_p4", "ec_dw_s16_3x8_k5x5s2", "ec_window_s16_3x8_k3x3c3s2"]
    assert all(TensorIntrin.get(n, allow_missing=True) is None for n in names), "registered before: pick new ones"
    _register_intrinsics(json.dumps({"trace": names}))
    missing = [n for n in names if TensorIntrin.get(n, allow_missing=True) is None]
    assert not missing, missing
