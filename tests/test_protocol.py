"""The serial protocol: host encoder/decoder against the firmware's C parser, fault handling,
fuzzing of the parser."""

import ctypes
import shutil
import subprocess
import time
import zlib

import numpy as np
import pytest

from edgecompile.errors import DeviceError
from edgecompile.device.protocol import INFO, INFO_RESP, NAK, PING, PONG, Frame, FrameDecoder, Link, encode
from helpers import REPO

COMMON = REPO / "firmware_templates" / "common"


@pytest.fixture(scope="module")
def c_parser(tmp_path_factory):
    """The firmware's parser compiled for the host, driven through ctypes."""
    d = tmp_path_factory.mktemp("cparser")
    (d / "shim.c").write_text(
        '#include "ec_protocol.h"\n'
        "static uint8_t buf[1024];\n"
        "static uint8_t *sink(void *c, uint8_t t, uint32_t n) { (void)c; (void)t; return n <= sizeof buf ? buf : 0; }\n"
        "static ec_parser p;\n"
        "void shim_init(void) { ec_parser_init(&p, sink, 0); }\n"
        "int shim_feed(const uint8_t *d, int n, uint8_t *out) {\n"
        "  for (int i = 0; i < n; ++i) { uint8_t r = 0; ec_parse_result x = ec_parser_feed(&p, d[i], &r);\n"
        "    if (x == EC_PARSE_FRAME) { out[0] = p.type; out[1] = p.seq; return (int)p.length; }\n"
        "    if (x == EC_PARSE_ERROR) return -(int)r; }\n"
        "  return -100; }\n")
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", f"-I{COMMON}", "-o", d / "p.so", d / "shim.c",
                    COMMON / "ec_protocol.c"], check=True)
    lib = ctypes.CDLL(str(d / "p.so"))
    return lib


def feed(lib, data: bytes):
    lib.shim_init()
    out = (ctypes.c_uint8 * 2)()
    n = lib.shim_feed(data, len(data), out)
    return n, out[0], out[1]


def test_host_frames_parse_in_firmware(c_parser):
    for payload in (b"", b"ec", bytes(range(256)) * 2):
        n, kind, seq = feed(c_parser, b"\x00noise\xec" + encode(PING, 77, payload))
        assert (n, kind, seq) == (len(payload), PING, 77)


def test_firmware_rejects_bad_frames(c_parser):
    good = bytearray(encode(INFO, 3, b"abc"))
    bad_crc = bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert feed(c_parser, bad_crc)[0] == -1                    # NAK bad CRC
    assert feed(c_parser, encode(0x55, 1, b""))[0] == -4        # unknown type
    assert feed(c_parser, encode(PING, 1, bytes(2000)))[0] == -2  # too long
    assert feed(c_parser, bytes(good[:-2]))[0] == -100          # truncated: waits for more
    # after an error the parser resynchronises on the next frame
    assert feed(c_parser, bad_crc + encode(PING, 9, b"x"))[0] == -1


def test_decoder_skips_noise_and_bad_crc():
    dec = FrameDecoder()
    a, b = encode(PONG, 1, b"one"), encode(INFO_RESP, 2, b"{}")
    corrupt = bytearray(a)
    corrupt[10] ^= 0xFF
    frames = []
    stream = b"\xec\xec\x5a\x01" + bytes(corrupt) + b"junk" + a + b
    for i in range(0, len(stream), 3):   # arrives in pieces
        frames += dec.feed(stream[i:i + 3])
    # the stray sync at the start announces an absurd length: it is dropped, not waited for
    assert frames == [Frame(PONG, 1, b"one"), Frame(INFO_RESP, 2, b"{}")]
    assert dec.dropped >= 1


class ScriptedPort:
    """A serial port whose 'device' answers through a function (or not at all)."""

    def __init__(self, answer):
        self.answer = answer
        self.out = b""
        self.timeout = 0.05
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        self.out += self.answer(data, len(self.writes)) or b""

    def read(self, n):
        if not self.out:
            time.sleep(0.01)
            return b""
        chunk, self.out = self.out[:n], self.out[n:]
        return chunk


def _seq(frame: bytes) -> int:
    return frame[3]


def test_nak_makes_the_request_go_again():
    def device(data, nth):
        if nth == 1:
            return encode(NAK, 0, bytes([1, _seq(data)]))   # first try: "bad CRC"
        return encode(PONG, _seq(data), b"ec")
    link = Link(ScriptedPort(device), timeout=2)
    assert link.request(PING, b"ec", PONG).payload == b"ec"
    assert link.naks == 1


def test_persistent_naks_give_up_with_the_reason():
    link = Link(ScriptedPort(lambda d, n: encode(NAK, 0, bytes([3, _seq(d)]))), timeout=2, retries=2)
    with pytest.raises(DeviceError, match="3 times.*bad payload length"):
        link.request(PING, b"", PONG)


def test_silent_device_times_out_in_bounded_time():
    link = Link(ScriptedPort(lambda d, n: None), timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="timed out"):
        link.request(INFO, b"", INFO_RESP)
    assert time.monotonic() - t0 < 3 * 0.5 * (link.retries + 1)


def test_device_fault_is_reported():
    fault = np.array([0, 1, 2, 3, 12, 0x0800_1235, 0x0800_4321, 0x2100_0000, 0x8200, 0x4000_0000, 0, 0x2000_0000,
                      0xFFFF_FFF9], dtype="<u4").tobytes()
    link = Link(ScriptedPort(lambda d, n: encode(0xE1, 0, fault)), timeout=1)
    with pytest.raises(DeviceError, match="HardFault.*pc=0x08004321"):
        link.request(PING, b"", PONG)


def test_frame_crc_is_zlib_crc32():
    frame = encode(PING, 5, b"hello")
    assert int.from_bytes(frame[-4:], "little") == zlib.crc32(frame[2:-4])


def test_parser_survives_fuzzing(tmp_path):
    """libFuzzer (clang) with ASan + UBSan over the parser, bounded in time."""
    clang = shutil.which("clang")
    assert clang, "clang is installed by `make setup` (libFuzzer)"
    exe = tmp_path / "fuzz"
    subprocess.run([clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
                    f"-I{COMMON}", str(REPO / "tests" / "fuzz" / "fuzz_ec_protocol.c"), str(COMMON / "ec_protocol.c"),
                    "-o", str(exe)], check=True, capture_output=True)
    proc = subprocess.run([str(exe), "-max_total_time=15", "-max_len=1024", "-seed=1", "-rss_limit_mb=8192"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Done" in proc.stderr and "ERROR" not in proc.stderr
