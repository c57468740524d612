"""Real clocks on the STM32 boards (issue 12): the [clock] section of a target file (PLL checked
against sysclk_hz), the firmware's clock set-up with bounded ready polls under QEMU, the arena in
DTCM, and protocol 2's clock and counter fields."""

from __future__ import annotations

import json
import struct
import tomllib

import numpy as np
import pytest

from edgecompile.device.elf import elf_symbol
from edgecompile.device.protocol import INFER, RESULT, TIMING, TIMING_FRAME, Link, decode_timing, describe, encode, Frame
from edgecompile.errors import TargetError
from edgecompile.measure.accuracy import _counts, run_test
from edgecompile.platforms import platform_for
from edgecompile.targets import clock_frequencies, load_target, parse_target, pll_output_hz
from helpers import REPO, run_cli
from test_protocol import ScriptedPort

SMALL = dict(width_mult=0.25, resolution=32, num_classes=10)
FP32 = dict(quant="fp32", **SMALL)       # the same builds as test_device's board tests (cached)


# ----------------------------------------------------------------------------- schema


def test_pll_frequency_of_each_board():
    # source / M * N / P, and the buses behind it
    assert pll_output_hz(25_000_000, 25, 432, 2) == 216_000_000
    assert pll_output_hz(64_000_000, 4, 60, 2) == 480_000_000
    assert pll_output_hz(25_000_000, 25, 336, 2) == 168_000_000
    assert pll_output_hz(16_000_000, 8, 216, 2) == 216_000_000
    assert pll_output_hz(25_000_000, 25, 336, 4) == 84_000_000
    with pytest.raises(ValueError):
        pll_output_hz(25_000_000, 0, 336, 2)
    expected = {"stm32f746g-disco": (216e6, 432e6, 54e6, 108e6), "nucleo-h743zi": (480e6, 960e6, 120e6, 120e6),
                "netduinoplus2": (168e6, 336e6, 42e6, 84e6)}
    for name, (sysclk, vco, apb1, apb2) in expected.items():
        t = load_target(name)
        hz = clock_frequencies(t.clock)
        assert (hz["sysclk"], hz["vco_out"], hz["apb1"], hz["apb2"]) == (sysclk, vco, apb1, apb2), name
        assert t.clock_hz == t.clock.sysclk_hz == sysclk


def test_target_list_shows_the_clock_set_up():
    targets = {t["name"]: t for t in json.loads(run_cli("list", "targets", "--json", check=True).stdout)}
    h7 = targets["nucleo-h743zi"]["clock"]
    assert (h7["sysclk_hz"], h7["pll"], h7["vos"]) == (480_000_000, {"m": 4, "n": 60, "p": 2, "q": 4, "r": 2}, 0)
    assert targets["mps2-an386"]["clock"] is None


def _f746() -> dict:
    return tomllib.loads((REPO / "targets" / "stm32f746g-disco.toml").read_text())


def _with(path: str, value):
    data = _f746()
    node = data
    *parents, key = path.split(".")
    for p in parents:
        node = node[p]
    node[key] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    ("clock.pll.nn", 432, r"clock\.pll\.nn: unknown key"),
    ("clock.sysclk_hz", 200_000_000, r"clock\.sysclk_hz: 200,000,000 Hz, but the PLL gives 25,000,000 / 25 x 432 / 2 "
                                      r"= 216,000,000 Hz"),
    ("clock.pll.p", 3, r"clock\.pll\.p: 3 is not a stm32f7 PLL P divider"),
    ("clock.pll.m", 10, r"clock\.pll\.m: VCO input 25,000,000 Hz / 10 = 2,500,000 Hz is outside"),
    ("clock.pll.n", 500, r"clock\.pll\.n: 500 is outside 50\.\.432"),
    ("clock.flash_latency", 5, r"clock\.flash_latency: 5 wait states are too few for a 216,000,000 Hz flash clock "
                               r"\(needs 7\)"),
    ("clock.overdrive", False, r"clock\.overdrive: 216,000,000 Hz needs the STM32F7 over-drive mode"),
    ("clock.apb2_div", 1, r"clock\.apb2_div: APB2 clock 216,000,000 Hz exceeds stm32f7's 108,000,000 Hz"),
    ("clock.apb1_div", 3, r"clock\.apb1_div: 3 is not a prescaler value"),
    ("clock.source", "hsx", r"clock\.source: must be hsi or hse, got 'hsx'"),
    ("clock.controller", "stm32f9", r"clock\.controller: must be one of stm32f4, stm32f7, stm32h7"),
    ("clock.hse_hz", "25M", r"clock\.hse_hz: expected an integer"),
    ("clock_hz", 16_000_000, r"clock_hz 16,000,000 differs from clock.sysclk_hz 216,000,000"),
    ("uart.bus", "apb3", r"uart\.bus must be apb1 or apb2"),
    ("uart.bus", "", r"uart\.bus: missing: with \[clock\] the UART's input clock changes"),
    ("cpu", "cortex-m4", r"clock\.icache: cortex-m4 has no L1 cache"),
])
def test_bad_clock_values_are_errors_naming_file_and_key(path, value, message):
    with pytest.raises(TargetError, match=r"^boards/f7\.toml:.*" + message):
        parse_target(_with(path, value), "boards/f7.toml")


def test_h7_clock_limits_depend_on_the_voltage_scale():
    data = tomllib.loads((REPO / "targets" / "nucleo-h743zi.toml").read_text())
    parse_target(data, "h7.toml")                      # VOS0: 480 MHz
    data["clock"]["vos"] = 1                           # VOS1 stops at 400 MHz
    with pytest.raises(TargetError, match=r"h7\.toml: clock\.sysclk_hz: system clock 480,000,000 Hz exceeds "
                                          r"stm32h7's 400,000,000 Hz at voltage scale 1"):
        parse_target(data, "h7.toml")
    data["clock"]["vos"] = 0
    data["clock"]["pll"]["n"] = 61                     # VCO 976 MHz: over the wide range's 960
    with pytest.raises(TargetError, match=r"clock\.pll\.n: VCO output 16,000,000 Hz x 61"):
        parse_target(data, "h7.toml")


def test_arena_goes_to_the_dtcm_in_the_estimate_when_it_fits_else_to_sram():
    target = load_target("stm32f746g-disco")
    platform = platform_for(target)
    est = platform.estimate_memory(target, 100_000, arena_bytes=60_000)
    assert est.needs["DTCM"] == 60_000 and not est.over()
    est = platform.estimate_memory(target, 100_000, arena_bytes=70_000)
    assert "DTCM" not in est.needs and est.needs["RAM"] > 70_000 and not est.over()
    # larger than either: DTCM and SRAM1 are adjacent, the arena spans both (the board's 320 KB)
    est = platform.estimate_memory(target, 100_000, arena_bytes=300_000)
    assert est.budgets["RAM"] == 320 << 10 and "DTCM" not in est.budgets and not est.over()
    est = platform.estimate_memory(target, 100_000, arena_bytes=320_000)
    assert est.over("ram") == ["RAM"]
    # no adjacent regions on the H743 (DTCM at 0x20000000, AXI SRAM at 0x24000000)
    assert [name for _, name in load_target("nucleo-h743zi").arena_layouts()] == ["DTCM", "AXISRAM"]


# ----------------------------------------------------------------------------- protocol 2


def _device(payload_out: bytes, timing: bytes | None):
    def answer(data, nth):
        seq = data[3]
        frames = b""
        if timing is not None:
            frames += encode(TIMING, seq, timing)
        return frames + encode(RESULT, seq, payload_out)
    return answer


def _result_payload(ticks: int, tick_hz: int, out: np.ndarray) -> bytes:
    return struct.pack("<6I", 0, ticks & 0xFFFFFFFF, ticks >> 32, tick_hz, 512, 8192) + out.astype("<f4").tobytes()


def test_timing_frame_parsed_and_real_board_counts_become_milliseconds():
    out = np.arange(10, dtype=np.float32)
    ticks = 5_400_000_000                               # over 2^32: DWT extended to 64 bits
    timing = TIMING_FRAME.pack(1, 2, 1, 216_000_000, 216_000_000, ticks) + b"\x00" * 4   # a later version appends
    link = Link(ScriptedPort(_device(_result_payload(ticks, 216_000_000, out), timing)), timeout=2)
    res = link.infer(np.zeros((1, 4), np.float32), (1, 10))
    assert np.array_equal(res.output.reshape(-1), out)
    assert (res.timing.counter, res.timing.clock_source, res.timing.clock_hz, res.timing.ticks) == \
        ("dwt", "pll", 216_000_000, ticks)
    counts = _counts(load_target("stm32f746g-disco"), [(res, None, None)] * 2, emulated=False, plugin_counts=[],
                     info={"tick_unit": "cycles", "protocol": 2}, port="/dev/ttyACM0")
    assert counts["ms_per_inference"] == pytest.approx(25_000.0)      # 5.4e9 cycles / 216 MHz
    assert counts["counter_unit"] == "DWT cycles" and counts["instructions_per_inference"] is None
    assert counts["clock_source"] == "pll" and counts["counter"] == "dwt"
    assert "TIMING" in describe(Frame(TIMING, 3, timing)) and "dwt" in describe(Frame(TIMING, 3, timing))


def test_protocol_1_firmware_still_works_without_timing():
    out = np.ones(10, dtype=np.float32)
    link = Link(ScriptedPort(_device(_result_payload(1000, 16_000_000, out), None)), timeout=2)
    res = link.infer(np.zeros((1, 4), np.float32), (1, 10))
    assert res.timing is None and res.ticks == 1000
    counts = _counts(load_target("stm32f746g-disco"), [(res, None, None)] * 2, emulated=False, plugin_counts=[],
                     info={"tick_unit": "cycles"}, port="/dev/ttyACM0")
    assert counts["ms_per_inference"] == pytest.approx(1000 / 16e3) and counts["counter_unit"] == "SysTick cycles"
    assert counts["protocol"] == 1 and counts["counter"] is None
    assert decode_timing(b"\x01\x02") is None and decode_timing(TIMING_FRAME.pack(0, 2, 1, 1, 1, 1)) is None


def test_timing_frame_with_a_bad_crc_is_dropped_and_the_result_still_arrives():
    out = np.ones(10, dtype=np.float32)
    timing = TIMING_FRAME.pack(1, 2, 1, 216_000_000, 216_000_000, 77)

    def answer(data, nth):
        bad = bytearray(encode(TIMING, data[3], timing))
        bad[-1] ^= 0xFF
        return bytes(bad) + encode(RESULT, data[3], _result_payload(77, 216_000_000, out))
    link = Link(ScriptedPort(answer), timeout=2)
    res = link.infer(np.zeros((1, 4), np.float32), (1, 10))
    assert res.timing is None and res.ticks == 77 and link.decoder.dropped == 1


# ----------------------------------------------------------------------------- firmware


@pytest.mark.parametrize("target, regions", [("stm32f746g-disco", ("DTCM", 0x20000000, 64 << 10)),
                                             ("nucleo-h743zi", ("DTCM", 0x20000000, 128 << 10))])
def test_arena_linked_into_the_dtcm(build_cache, target, regions):
    name, origin, size = regions
    _, out, report = build_cache("mobilenet_v1", target=target, **FP32)
    start, end = (elf_symbol(out / "firmware.elf", s) for s in ("__ec_arena_start", "__ec_arena_end"))
    assert origin <= start < end <= origin + size and end - start == report["arena_bytes"]
    assert report["firmware"]["board"]["arena_region"] == name


def test_arena_falls_back_to_sram_when_the_dtcm_is_too_small(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    text = (REPO / "targets" / "stm32f746g-disco.toml").read_text().replace('name = "stm32f746g-disco"',
                                                                           'name = "small-dtcm"')
    text = text.replace('name = "DTCM"\norigin = 0x20000000\nsize = "64K"', 'name = "DTCM"\norigin = 0x20000000\nsize = "16K"')
    (d / "small-dtcm.toml").write_text(text)
    out = tmp_path / "b"
    proc = run_cli("build", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "32", "--num-classes", "10",
                   "--target", "small-dtcm", "--targets-dir", str(d), "--quant", "fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    arena = json.loads((out / "report.json").read_text())["arena_bytes"]
    assert arena > 16 << 10 and f"arena {arena:,} B in RAM (too large for DTCM)" in proc.stderr
    start = elf_symbol(out / "firmware.elf", "__ec_arena_start")
    assert 0x20010000 <= start < 0x20050000


def test_f7_clock_code_times_out_on_an_unmodelled_rcc_and_the_board_still_passes(tmp_path):
    """QEMU's STM32F405 (netduinoplus2) leaves the RCC unimplemented (it reads as zero): the
    STM32F7 set-up (same RCC, PWR and flash addresses) from HSI runs there and its PLL-ready poll
    must give up; the firmware then runs on HSI 16 MHz, says so, and passes `test`."""
    d = tmp_path / "boards"
    d.mkdir()
    text = (REPO / "targets" / "netduinoplus2.toml").read_text().replace('name = "netduinoplus2"',
                                                                        'name = "f7-clock-on-f405"')
    head, rest = text.split("[clock]\n", 1)
    rest = rest[rest.index("\n[tvm]"):]
    clock = ('[clock]\ncontroller = "stm32f7"\nsource = "hsi"\nsysclk_hz = 216_000_000\n'
             'pll = { m = 8, n = 216, p = 2, q = 9 }\napb1_div = 4\napb2_div = 2\nflash_latency = 7\n'
             'overdrive = true\npoll_limit = 20_000\n')
    text = head.replace("clock_hz = 168_000_000    #", "clock_hz = 216_000_000    #") + clock + rest
    (d / "f7-clock-on-f405.toml").write_text(text)
    out = tmp_path / "b"
    run_cli("build", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "32", "--num-classes", "10",
            "--target", "f7-clock-on-f405", "--targets-dir", str(d), "--quant", "fp32", "--out", str(out), "-q",
            check=True)
    assert "#define EC_CLOCK_CONTROLLER 2" in (out / "firmware-emu-objs" / "ec_board.h").read_text()
    result = run_test(out, samples=2, targets_dir=str(d))
    assert result["passed"], result["failures"]
    info = result["device_info"]
    assert (info["protocol"], info["counter"], info["clock_source"], info["clock_hz"]) == \
        (2, "systick", "reset (PLL not ready)", 16_000_000)
    assert info["tick_hz"] == 168_000_000 and result["instructions_per_inference"] > 0
