"""Host side of the serial protocol (see docs/protocol.md and firmware_templates/common/ec_protocol.h).

    frame := 0xEC 0x5A | type:u8 | seq:u8 | length:u32 LE | payload | crc32:u32 LE

`Link` wraps any pyserial-like port (`serial.serial_for_url` accepts `socket://`, `rfc2217://`,
device paths such as `/dev/ttyACM0`, ...). Every wait is bounded; a NAK makes the request go out
again (at most `retries` times); a device fault or a dead emulator ends the wait at once.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import DeviceError

SYNC = b"\xec\x5a"
HEADER = struct.Struct("<2sBBI")
MAX_FRAME_PAYLOAD = 1 << 20    # default bound on a device frame; Link raises it for big outputs

PING, INFO, INFER, PROFILE = 0x01, 0x02, 0x03, 0x04
ROWS = 0x05            # streamed input: host -> device, the rows a ROWS_REQ asked for (NHWC), its seq
ROWS_REQ = 0x87        # streamed input: device -> host during an INFER, u32 y0, u32 y1
ROWS_REQ_FRAME = struct.Struct("<II")
READY, PONG, INFO_RESP, RESULT, PROFILE_RESP, TRACE = 0x80, 0x81, 0x82, 0x83, 0x84, 0x85
TIMING = 0x86          # protocol 2: sent before an INFER's RESULT (older hosts skip it)
PROTOCOL_VERSION = 2
COUNTERS = {1: "systick", 2: "dwt", 3: "os"}
CLOCK_SOURCES = {0: "fixed (no clock set-up)", 1: "pll", 2: "reset (oscillator not ready)",
                 3: "reset (PLL not ready)", 4: "os"}
TIMING_FRAME = struct.Struct("<BBBxIIQ")   # version, counter, clock source, clock_hz, tick_hz, ticks
NAK, FAULT, ERROR = 0xE0, 0xE1, 0xE2
NAK_REASONS = {1: "bad CRC", 2: "payload too long", 3: "bad payload length", 4: "unknown message type",
               5: "frame timed out"}
FAULT_FIELDS = ("r0", "r1", "r2", "r3", "r12", "lr", "pc", "xpsr", "cfsr", "hfsr", "mmfar", "bfar", "exc_return")


def encode(kind: int, seq: int, payload: bytes = b"") -> bytes:
    head = HEADER.pack(SYNC, kind, seq & 0xFF, len(payload))
    crc = zlib.crc32(head[2:] + payload) & 0xFFFFFFFF
    return head + payload + struct.pack("<I", crc)


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    payload: bytes


class FrameDecoder:
    """Incremental decoder: bytes in, frames out. Skips noise and frames with a bad CRC."""

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self.buf = bytearray()
        self.max_payload = max_payload
        self.dropped = 0   # frames discarded for a bad CRC or an absurd length
        self.noise = bytearray()   # bytes outside any frame (a device's own text output, line noise)

    def skip_partial(self) -> list[Frame]:
        """Give up on the incomplete frame at the head of the buffer (a sync pattern inside noise
        whose 'length' never arrives) and look for frames after it."""
        if self.buf.startswith(SYNC):
            self.dropped += 1
            del self.buf[:2]
        return self.feed(b"")

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while True:
            start = self.buf.find(SYNC)
            if start < 0:
                keep = 1 if self.buf.endswith(SYNC[:1]) else 0
                self.noise += self.buf[:len(self.buf) - keep]
                del self.noise[:-65536]
                del self.buf[:len(self.buf) - keep]
                return frames
            self.noise += self.buf[:start]
            del self.noise[:-65536]          # a bounded window: whoever reads it reads it soon
            del self.buf[:start]
            if len(self.buf) < HEADER.size:
                return frames
            _, kind, seq, length = HEADER.unpack_from(self.buf)
            if length > self.max_payload:
                self.dropped += 1
                del self.buf[:2]
                continue
            total = HEADER.size + length + 4
            if len(self.buf) < total:
                return frames
            body = bytes(self.buf[2:HEADER.size + length])
            crc, = struct.unpack_from("<I", self.buf, HEADER.size + length)
            if zlib.crc32(body) & 0xFFFFFFFF != crc:
                self.dropped += 1
                del self.buf[:2]
                continue
            frames.append(Frame(kind, seq, bytes(self.buf[HEADER.size:HEADER.size + length])))
            del self.buf[:total]


@dataclass(frozen=True)
class Timing:
    """An INFER's TIMING frame (protocol 2): what the counter is and the clock the core ran at."""
    version: int
    counter: str           # dwt, systick, os
    clock_source: str      # pll, or why the core stayed on its reset clock
    clock_hz: int          # the core clock (0: unknown, e.g. an OS)
    tick_hz: int
    ticks: int


def decode_timing(payload: bytes) -> Timing | None:
    """A TIMING payload; None for one this host cannot read (a later version may only append)."""
    if len(payload) < TIMING_FRAME.size:
        return None
    version, counter, source, clock_hz, tick_hz, ticks = TIMING_FRAME.unpack_from(payload)
    if version < 1:
        return None
    return Timing(version, COUNTERS.get(counter, f"counter {counter}"),
                  CLOCK_SOURCES.get(source, f"source {source}"), clock_hz, tick_hz, ticks)


@dataclass
class InferResult:
    output: np.ndarray
    ticks: int
    tick_hz: int
    stack_used_bytes: int
    arena_bytes: int
    timing: Timing | None = None     # None from protocol-1 firmware


def decode_fault(payload: bytes) -> dict[str, int]:
    n = len(payload) // 4
    return dict(zip(FAULT_FIELDS, struct.unpack(f"<{n}I", payload[: 4 * n])))


class Link:
    """Request/response over a serial port. `alive` (optional) reports whether the other end
    can still answer (e.g. the emulator process is running)."""

    def __init__(self, port: Any, timeout: float = 30.0, retries: int = 3,
                 alive: Callable[[], str | None] | None = None) -> None:
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.alive = alive
        self.decoder = FrameDecoder()
        self.pending: list[Frame] = []
        self.seq = 0
        self.naks = 0
        self.ready_info: dict[str, Any] | None = None
        self.traced: dict[int, bytes] = {}    # call index -> output bytes, from a trace firmware
        self.timings: dict[int, Timing] = {}  # seq -> the TIMING frame sent before that RESULT
        self.input_streamed = False           # the device asks for input rows (INFO's input_streamed)
        self.rows_sent: list[tuple[int, int]] = []   # [y0, y1) of every ROWS answered in the last INFER
        if hasattr(self.port, "timeout"):
            self.port.timeout = 0.05

    # -- low level
    def send(self, kind: int, payload: bytes = b"", seq: int | None = None) -> int:
        if seq is None:
            self.seq = (self.seq + 1) & 0xFF
            seq = self.seq
        data = encode(kind, seq, payload)
        try:
            self.port.write(data)
            if hasattr(self.port, "flush"):
                self.port.flush()
        except OSError as err:
            raise DeviceError(f"serial write failed: {err}") from None
        return seq

    def _read_some(self) -> None:
        try:
            data = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 1))
        except OSError as err:
            reason = None
            if self.alive is not None:   # a dying emulator closes the line before it is reaped
                deadline = time.monotonic() + 1.0
                while reason is None and time.monotonic() < deadline:
                    reason = self.alive()
                    time.sleep(0.02)
            raise DeviceError(reason or f"serial read failed: {err}") from None
        if data:
            self.pending += self.decoder.feed(data)
        elif self.alive is not None:
            reason = self.alive()
            if reason:
                raise DeviceError(reason)

    def receive(self, deadline: float) -> Frame:
        while not self.pending:
            if time.monotonic() > deadline:
                self.pending += self.decoder.skip_partial()
                if self.pending:
                    break
                raise DeviceError("timed out waiting for the device")
            self._read_some()
        frame = self.pending.pop(0)
        if frame.kind == FAULT:
            regs = decode_fault(frame.payload)
            desc = ", ".join(f"{k}=0x{v:08x}" for k, v in regs.items() if k in ("pc", "lr", "cfsr", "hfsr", "bfar"))
            raise DeviceError(f"device fault (HardFault): {desc}")
        if frame.kind == ERROR:
            raise DeviceError(f"device error: {frame.payload[4:].decode(errors='replace')}")
        if frame.kind == READY:
            self.ready_info = _json(frame.payload)
        if frame.kind == TIMING:
            timing = decode_timing(frame.payload)
            if timing is not None:
                self.timings[frame.seq] = timing
        if frame.kind == TRACE and len(frame.payload) >= 4:     # a debug firmware: one call's output
            call, = struct.unpack_from("<I", frame.payload)
            self.traced[call] = frame.payload[4:]
        return frame

    def request(self, kind: int, payload: bytes, expect: int, timeout: float | None = None) -> Frame:
        timeout = self.timeout if timeout is None else timeout
        for attempt in range(self.retries + 1):
            seq = self.send(kind, payload)
            deadline = time.monotonic() + timeout
            while True:
                frame = self.receive(deadline)
                if frame.kind == expect and frame.seq == seq:
                    return frame
                if frame.kind == NAK:
                    self.naks += 1
                    break   # resend
            if attempt == self.retries:
                reason = NAK_REASONS.get(frame.payload[0] if frame.payload else 0, "unknown")
                raise DeviceError(f"device rejected the request {self.retries + 1} times ({reason})")
        raise AssertionError("unreachable")

    # -- operations
    def connect(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the device answers (it may still be booting), then return its INFO."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request(PING, b"ec", PONG, timeout=min(0.5, max(0.1, deadline - time.monotonic())))
                break
            except DeviceError as err:
                if "timed out" not in str(err) or time.monotonic() > deadline:
                    raise DeviceError(f"no answer from the device: {err}") from None
        return self.info()

    def info(self) -> dict[str, Any]:
        info = _json(self.request(INFO, b"", INFO_RESP).payload)
        self.input_streamed = bool(info.get("input_streamed"))
        return info

    def rows_payload(self, x: np.ndarray, payload: bytes) -> tuple[int, int, bytes]:
        """The answer to a ROWS_REQ for input `x` (NCHW): rows [y0, y1) in NHWC order. A request
        the input cannot answer is refused with an error naming the rows."""
        if len(payload) != ROWS_REQ_FRAME.size:
            raise DeviceError(f"the device asked for input rows with a {len(payload)}-byte request (expected "
                              f"{ROWS_REQ_FRAME.size})")
        y0, y1 = ROWS_REQ_FRAME.unpack(payload)
        if x.ndim != 4 or not 0 <= y0 < y1 <= x.shape[2]:
            raise DeviceError(f"the device asked for input rows {y0}..{y1} of an input of "
                              f"{x.shape[2] if x.ndim == 4 else 0} rows (shape {list(x.shape)})")
        return y0, y1, np.ascontiguousarray(x[0, :, y0:y1, :].transpose(1, 2, 0)).tobytes()

    def _infer_streamed(self, x: np.ndarray, timeout: float) -> Frame:
        """INFER without a payload; answer the device's ROWS_REQ frames from `x` until its RESULT.
        A NAK (the device saw a broken ROWS frame) needs nothing: the device asks again."""
        self.rows_sent = []
        seq = self.send(INFER, b"")
        deadline = time.monotonic() + timeout
        while True:
            frame = self.receive(deadline)
            if frame.kind == RESULT and frame.seq == seq:
                return frame
            if frame.kind == NAK:
                self.naks += 1
                if len(frame.payload) >= 2 and frame.payload[1] == seq and not self.rows_sent:
                    reason = NAK_REASONS.get(frame.payload[0], "unknown")
                    raise DeviceError(f"device rejected the INFER ({reason}): is its input streamed?")
            elif frame.kind == ROWS_REQ:
                y0, y1, data = self.rows_payload(x, frame.payload)
                self.send_rows(frame.seq, data)
                self.rows_sent.append((y0, y1))
                deadline = time.monotonic() + timeout       # the device is alive and working

    def send_rows(self, seq: int, data: bytes) -> None:
        """The ROWS frame answering the device's request `seq` (a test may override it)."""
        self.send(ROWS, data, seq=seq)

    def infer(self, x: np.ndarray, out_shape: tuple[int, ...], timeout: float | None = None,
              in_dtype: str = "float32", out_dtype: str = "float32") -> InferResult:
        data = np.ascontiguousarray(x, dtype=np.dtype(in_dtype).newbyteorder("<")).tobytes()
        out_t = np.dtype(out_dtype).newbyteorder("<")
        self.decoder.max_payload = max(self.decoder.max_payload, out_t.itemsize * int(np.prod(out_shape)) + 64)
        t = timeout if timeout is not None else self.timeout + len(data) / 2000.0
        self.traced = {}
        self.timings = {}
        if self.input_streamed:
            frame = self._infer_streamed(np.frombuffer(data, dtype=np.dtype(in_dtype).newbyteorder("<")).reshape(x.shape), t)
        else:
            frame = self.request(INFER, data, RESULT, timeout=t)
        status, lo, hi, tick_hz, stack, arena = struct.unpack_from("<6I", frame.payload)
        if status != 0:
            raise DeviceError(f"the model failed on the device at kernel call {status}")
        out = np.frombuffer(frame.payload[24:], dtype=out_t).astype(np.dtype(out_dtype))
        if out.size != int(np.prod(out_shape)):
            raise DeviceError(f"device returned {out.size} values, expected {int(np.prod(out_shape))}")
        timing = self.timings.get(frame.seq)
        if timing is not None and timing.ticks != lo | (hi << 32):
            timing = None      # a TIMING frame of an earlier request with the same seq
        return InferResult(out.reshape(out_shape), lo | (hi << 32), tick_hz, stack, arena, timing)


def _json(payload: bytes) -> dict[str, Any]:
    try:
        return json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise DeviceError(f"device sent unreadable INFO: {err}") from None


def describe(frame: Frame) -> str:
    """One line about a frame, for `edgecompile monitor`."""
    names = {PING: "PING", INFO: "INFO", INFER: "INFER", PROFILE: "PROFILE", ROWS: "ROWS", ROWS_REQ: "ROWS_REQ",
             READY: "READY", PONG: "PONG",
             INFO_RESP: "INFO", RESULT: "RESULT", PROFILE_RESP: "PROFILE", TRACE: "TRACE", TIMING: "TIMING", NAK: "NAK",
             FAULT: "FAULT", ERROR: "ERROR"}
    name = names.get(frame.kind, f"type 0x{frame.kind:02x}")
    p = frame.payload
    if frame.kind in (READY, INFO_RESP):
        return f"{name}: {p.decode(errors='replace')}"
    if frame.kind == RESULT and len(p) >= 24:
        status, lo, hi, hz, stack, arena = struct.unpack_from("<6I", p)
        return (f"RESULT #{frame.seq}: status {status}, {lo | (hi << 32):,} ticks at {hz:,} Hz, stack {stack:,} B, "
                f"arena {arena:,} B, {len(p) - 24} output bytes")
    if frame.kind == TIMING:
        t = decode_timing(p)
        if t is not None:
            return (f"TIMING #{frame.seq}: v{t.version}, {t.ticks:,} {t.counter} ticks at {t.tick_hz:,} Hz, "
                    f"core clock {t.clock_hz:,} Hz ({t.clock_source})")
    if frame.kind == ROWS_REQ and len(p) == ROWS_REQ_FRAME.size:
        return "ROWS_REQ #{}: input rows {}..{}".format(frame.seq, *ROWS_REQ_FRAME.unpack(p))
    if frame.kind == FAULT:
        return "FAULT: " + ", ".join(f"{k}=0x{v:08x}" for k, v in decode_fault(p).items())
    if frame.kind == NAK and len(p) >= 2:
        return f"NAK #{p[1]}: {NAK_REASONS.get(p[0], p[0])}"
    if frame.kind == TRACE and len(p) >= 4:
        return f"TRACE #{frame.seq}: call {struct.unpack_from('<I', p)[0]}, {len(p) - 4} bytes"
    if frame.kind == ERROR:
        return f"ERROR: {p[4:].decode(errors='replace')}"
    return f"{name} #{frame.seq}: {len(p)} bytes"
