"""Targets, firmware and the device loop on the emulated boards: real cross compilers, real QEMU,
real serial bytes."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from edgecompile.platforms import platform_for
from edgecompile.errors import DeviceError
from edgecompile.measure.accuracy import run_test
from edgecompile.device.protocol import INFER, NAK, PING, PONG, Link, encode
from edgecompile.targets import list_targets, load_target
from helpers import REPO, random_input, run_cli, slow_params

EMULATED = ["mps2-an386", "mps3-an547", "netduinoplus2", "stm32f746g-disco", "nucleo-h743zi", "rpi4"]
SMALL = dict(width_mult=0.25, resolution=32, num_classes=10)
FP32 = dict(quant="fp32", **SMALL)     # these tests check the float path against PyTorch


def test_every_required_target_is_listed():
    names = {t.name for t in list_targets()}
    assert {"host", "rpi4", "stm32f746g-disco", "nucleo-h743zi", "mps2-an386", "mps3-an547", "netduinoplus2"} <= names
    out = run_cli("list", "targets", check=True).stdout
    assert "cortex-m55" in out and "cortex-a72" in out


@pytest.mark.parametrize("target", slow_params(EMULATED, ("nucleo-h743zi", "stm32f746g-disco")))   # the M7 boards: slow (CI time; the wake-word test runs stm32f746g-disco)
def test_board_runs_model_over_serial(build_cache, target):
    source, out, report = build_cache("mobilenet_v1", target=target, **FP32)
    # footprints measured from the linked binary
    assert report["flash_bytes"] > report["weights_bytes"] and report["ram_bytes"] >= report["arena_bytes"]
    result = run_test(out, samples=20, dataset="digits")
    assert result["samples"] == 20 and result["passed"], result["failures"]
    # the reference depends on the input, and the device matches it to 1e-4 of that spread
    assert result["reference_spread"] >= 0.1 * result["reference_magnitude"]
    assert result["max_abs_error"] <= 1e-4 * result["reference_spread"]
    assert result["agreement"] >= 0.99
    assert result["arena_bytes"] == report["arena_bytes"]       # device-reported == plan
    if target == "rpi4":
        # counted by our QEMU plugin between the marker calls around each inference: exact
        assert result["instructions_per_inference"] > 0 and len(set(result["instructions"])) == 1
        assert result["counter_unit"] == "emulator instructions"
    else:
        # emulator instruction counts: the same work for every input, up to the SysTick
        # resolution (one tick = 1e9 / clock instructions under -icount shift=0)
        assert result["instructions_per_inference"] > 0
        tick = 1e9 / result["device_info"]["tick_hz"]
        # (plus the SysTick wrap interrupts, whose number depends on where the count starts)
        assert max(result["instructions"]) - min(result["instructions"]) <= 2 * tick + 100
        assert 0 < result["stack_used_bytes"] <= report["stack_reserved_bytes"]
        # protocol 2: QEMU does not count DWT cycles, so the firmware's probe falls back to SysTick;
        # the clock it reports: the reset HSI where the STM32 set-up ran and its HSE poll gave up
        # (QEMU's STM32F405 leaves the RCC unimplemented), the machine's clock on the AN500 stand-in
        info = result["device_info"]
        assert info["protocol"] == 2 and result["counter"] == info["counter"] == "systick"
        board = load_target(target)
        if board.clock is not None:
            if board.emulator.clock_setup:
                assert (info["clock_source"], info["clock_hz"]) == ("reset (oscillator not ready)", 16_000_000)
            else:
                assert (info["clock_source"], info["clock_hz"]) == ("fixed (no clock set-up)", board.emulator.clock_hz)
    updated = json.loads((out / "report.json").read_text())
    assert updated["stack_bytes"] == result["stack_used_bytes"]


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory):
    """MobileNet V1 0.25/32 trained on the digits set (12 epochs), shared by the tests below."""
    weights = tmp_path_factory.mktemp("digits") / "digits.pt"
    run_cli("train", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "32", "--num-classes", "10",
            "--epochs", "12", "--out", str(weights), check=True)
    return str(weights)


def test_trained_model_accuracy_equal_on_device_and_host(digits_weights, build_cache):
    source, out, _ = build_cache("mobilenet_v1", target="mps2-an386", weights=digits_weights, **FP32)
    result = run_test(out, samples=40, dataset="digits")
    assert result["passed"], result["failures"]
    assert result["accuracy"] == result["host_accuracy"]
    assert result["accuracy"] > 0.5          # trained, not chance (0.1)
    assert result["agreement"] == 1.0


def test_trained_model_int8_accuracy_on_the_emulated_pi(digits_weights, build_cache):
    """int8 on rpi4 runs the NEON int8 kernels; on the digits set its bytes equal this machine's
    compile of the same model.c and the kernel graph on TVM's VM, its accuracy is a trained
    model's and within 0.05 of the fp32 reference's top-1."""
    source, out, report = build_cache("mobilenet_v1", target="rpi4", weights=digits_weights, quant="int8", **SMALL)
    model_c = (out / "model.c").read_text()
    assert "ec_gemm_s8k16_" in model_c and "vpadalq_s16" in model_c
    result = run_test(out, samples=40, dataset="digits")
    assert result["passed"], result["failures"]
    assert result["host_int8"]["samples_differing"] == 0
    assert result["kernel_graph"].get("samples_differing") == 0, result["kernel_graph"]
    assert result["accuracy"] > 0.5          # trained, not chance (0.1)
    assert result["agreement"] >= 0.9
    assert result["counter_unit"] == "emulator instructions"


def test_model_too_large_is_refused_with_the_numbers(tmp_path):
    out = tmp_path / "big"
    proc = run_cli("build", "mobilenet_v1", "--width-mult", "0.5", "--resolution", "96", "--num-classes", "10",
                   "--target", "stm32f746g-disco", "--quant", "fp32", "--out", str(out), "-q")
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][0]
    assert "does not fit stm32f746g-disco" in err
    assert "FLASH needs" in err and "budget 1,048,576 B" in err
    assert not out.exists()


def _running(pid: int) -> bool:
    """Alive and not a zombie (detached emulators are reaped by whoever adopts them)."""
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def an386(build_cache):
    return build_cache("mobilenet_v1", target="mps2-an386", **FP32)


def _session(out, report):
    t = load_target("mps2-an386")
    return platform_for(t).start_emulator(t, out, report)


def test_corrupt_truncated_and_oversized_frames_get_nak_and_link_recovers(an386):
    source, out, report = an386
    with _session(out, report) as s:
        port = s.open_port()
        link = Link(port, timeout=5, alive=s.alive)
        link.connect()

        def raw(data, expect_nak):
            link.pending.clear()
            port.write(data)
            deadline = time.monotonic() + 20   # the device's 100 ms frame timeout is virtual time
            frame = link.receive(deadline)
            while frame.kind != NAK:
                frame = link.receive(deadline)
            assert frame.payload[0] == expect_nak

        good = bytearray(encode(PING, 40, b"abc"))
        good[-1] ^= 0x5A
        raw(bytes(good), 1)                                  # bad CRC
        raw(encode(PING, 41, bytes(1000)), 2)                 # too long for a PING
        raw(encode(INFER, 42, bytes(16)), 3)                  # INFER with the wrong input size
        raw(encode(PING, 43, b"abcdef")[:-3], 5)              # truncated: the device times out
        raw(b"\x00\xff garbage \xec" + encode(0x33, 44, b""), 4)   # unknown type after noise
        # the link still works, and inference is still right
        assert link.request(PING, b"hi", PONG).payload == b"hi"
        x = random_input(source.inputs[0].shape)
        res = link.infer(x, tuple(report["outputs"][0]["shape"]))
        assert np.abs(res.output - source.reference(x)[0]).max() <= 1e-4
        port.close()


def test_emulator_crash_is_reported_and_nothing_leaks(an386):
    source, out, report = an386
    s = _session(out, report)
    try:
        port = s.open_port()
        link = Link(port, timeout=5, alive=s.alive)
        link.connect()
        qemu = s.procs[0]
        os.killpg(qemu.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="emulator exited"):
            link.infer(random_input(source.inputs[0].shape), tuple(report["outputs"][0]["shape"]))
        assert time.monotonic() - t0 < 5      # noticed at once, not after the timeout
    finally:
        s.stop()
    assert qemu.poll() is not None


def test_hardfault_is_reported_over_the_uart(tmp_path, an386):
    """A firmware whose model jumps to an invalid address: the device reports the fault."""
    _, out, report = an386
    import shutil

    work = tmp_path / "fw"
    shutil.copytree(out, work)
    # break the first kernel call: the executor calls through a null function pointer
    src = (work / "model.c").read_text()
    src = src.replace("int ec_model_run_multi(", "static void (*volatile ec_crash)(void);\nint ec_model_run_multi(", 1)
    src = src.replace("    EC_PROFILE_BEGIN();", "    ec_crash();\n    EC_PROFILE_BEGIN();", 1)
    (work / "model.c").write_text(src)
    cc = "arm-none-eabi-gcc"
    t = load_target("mps2-an386")
    subprocess.run([cc, *t.cflags, '-DEC_ARENA_ATTR=__attribute__((section(".ec_arena")))', "-DEC_PROFILE", "-I.", "-c", "model.c",
                    "-o", "model.o"], cwd=work, check=True)
    objs = ["model.o", "weights.o"] + sorted(str(p.relative_to(work)) for p in (work / "firmware-objs").glob("*.o"))
    subprocess.run([cc, *t.cflags, "-T", "firmware.ld", "-o", "crash.elf", *objs, *t.ldflags], cwd=work, check=True)
    with platform_for(t).start_emulator(t, work, {**report, "firmware": {"board": {"elf": "crash.elf"}}}) as s:
        link = Link(s.open_port(), timeout=5, alive=s.alive)
        link.connect()
        with pytest.raises(DeviceError, match="HardFault"):
            link.infer(random_input((1, 3, 32, 32)), (1, 10))


def test_flash_emu_then_test_over_port_then_stop(an386):
    _, out, _ = an386
    proc = run_cli("flash", str(out), check=True)
    state = json.loads((out / "device.json").read_text())
    try:
        assert state["port"] in proc.stdout
        res = json.loads(run_cli("test", str(out), "--port", state["port"], "--samples", "3", "--json",
                                 check=True).stdout)
        assert res["samples"] == 3 and res["instructions_per_inference"] > 0
    finally:
        run_cli("flash", str(out), "--stop", check=True)
    deadline = time.monotonic() + 5
    while any(_running(p) for p in state["pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(p) for p in state["pids"])


def test_test_command_json_and_threshold_exit(an386):
    _, out, _ = an386
    proc = run_cli("test", str(out), "--samples", "2", "--json")
    res = json.loads(proc.stdout)
    for key in ("samples", "agreement", "max_abs_error", "accuracy", "instructions_per_inference",
                "reference_spread", "thresholds", "failures"):
        assert key in res
    assert res["accuracy"] is None and proc.returncode == 0, res["failures"]
    # an impossible threshold fails the run with a distinct exit status
    proc = run_cli("test", str(out), "--samples", "2", "--max-abs-error", "0")
    assert proc.returncode == 3 and "FAIL" in proc.stdout


def test_wrong_port_is_a_clean_error(an386):
    _, out, _ = an386
    proc = run_cli("test", str(out), "--port", "/dev/does-not-exist")
    assert proc.returncode == 1 and "cannot open serial port" in proc.stderr


@pytest.mark.parametrize("method,expected", [
    ("pyocd", [["pyocd", "load", "--target", "stm32f746xx"], ["pyocd", "reset"]]),
    ("openocd", [["openocd", "-f", "board/stm32f7discovery.cfg", "-c"]]),
])
def test_real_hardware_flash_commands(tmp_path, build_cache, method, expected):
    """The real-hardware backends with only the external tool replaced by a recorder."""
    _, out, _ = build_cache("mobilenet_v1", target="stm32f746g-disco", **FP32)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    tool = bindir / method
    tool.write_text(f'#!/bin/sh\necho "$0 $@" >> {log}\n')
    tool.chmod(0o755)
    env_path = f"{bindir}:{os.environ['PATH']}"
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "edgecompile"), "flash", str(out), "--device", method],
                          capture_output=True, text=True, env={**os.environ, "PATH": env_path})
    assert proc.returncode == 0, proc.stderr
    calls = [ln.split() for ln in log.read_text().splitlines()]
    assert len(calls) == len(expected)
    for call, want in zip(calls, expected):
        assert call[0].endswith(method) and call[1:len(want)] == want[1:]
    # the real-board image, not the emulator variant
    assert any(str(out / "firmware.elf") in " ".join(c) for c in calls)


def test_ssh_backend_copies_and_starts_the_program(tmp_path, build_cache):
    _, out, _ = build_cache("mobilenet_v1", target="rpi4", **SMALL)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("scp", "ssh"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $@" >> {log}\n')
        (bindir / tool).chmod(0o755)
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "edgecompile"), "flash", str(out), "--device",
                           "ssh://pi@raspberrypi.local"], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    scp, ssh = log.read_text().splitlines()
    assert scp.startswith("scp") and str(out / "app") in scp and "pi@raspberrypi.local:/tmp/edgecompile-app" in scp
    assert ssh.startswith("ssh pi@raspberrypi.local") and "/dev/serial0" in ssh


def test_flash_method_not_allowed_for_target(an386):
    _, out, _ = an386
    proc = run_cli("flash", str(out), "--device", "pyocd")
    assert proc.returncode == 1 and "cannot be flashed with pyocd (flash.methods: emu)" in proc.stderr


def test_user_target_from_a_directory(tmp_path):
    d = tmp_path / "mytargets"
    d.mkdir()
    text = (REPO / "targets" / "mps2-an386.toml").read_text().replace('name = "mps2-an386"', 'name = "my-board"')
    text = text.replace('size = "4M"\nkind = "ram"', 'size = "20K"\nkind = "ram"')
    (d / "my-board.toml").write_text(text)
    env = {"EDGECOMPILE_TARGETS": str(d)}
    assert "my-board" in subprocess.run([str(REPO / ".venv" / "bin" / "edgecompile"), "list", "targets"],
                                        capture_output=True, text=True, env={**os.environ, **env}).stdout
    out = tmp_path / "b"
    proc = run_cli("build", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "32", "--num-classes", "10",
                   "--target", "my-board", "--targets-dir", str(d), "--quant", "fp32", "--out", str(out), "-q")
    # 20 KB of RAM cannot hold the 24 KB arena plus the stack: refused at link time
    assert proc.returncode == 1 and "RAM needs" in proc.stderr and "budget 20,480 B" in proc.stderr
