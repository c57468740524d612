"""Fused depthwise+pointwise kernels and in-place memory planning."""

import re
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecompile.platforms import platform_for
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.platforms.host import HostModel
from edgecompile.codegen.memory import Buffer, Overlap, plan_buffers, streaming_max_delta, streaming_overlaps
from edgecompile.ir.kernel import KernelInfo
from edgecompile.ir.operators import Kind
from edgecompile.ir.program import DTYPE_BYTES, KernelCall, Program, Tensor
from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.device.protocol import Link
from edgecompile.targets import load_target
from helpers import assert_close, compare_with_reference, output_spread, random_input, slow_params

FUSED_FAMILIES = [
    ("mobilenet_v1", dict(width_mult=0.25, resolution=64, num_classes=10)),
    ("mobilenet_v2", dict(width_mult=0.35, resolution=64, num_classes=10)),
    ("shufflenet_v2", dict(width_mult=0.5, resolution=64, num_classes=10)),
    ("xception", dict(resolution=64, num_classes=10)),
]


def _build(source, out, target="host", **opts):
    return write_build(source, load_target(target), out, BuildOptions(**opts), Progress(quiet=True))


@pytest.mark.parametrize("name,opts", slow_params(FUSED_FAMILIES, ("xception", "mobilenet_v2"), key=lambda f: f[0]), ids=[f[0] for f in FUSED_FAMILIES])   # 24 s, 26 s on CI
def test_fused_matches_unfused_on_host(tmp_path, name, opts):
    source = load_model(name, ModelOptions(**opts))
    fused = _build(source, tmp_path / "fused")
    plain = _build(source, tmp_path / "plain", fuse=False)
    assert any(c["kind"] == "dwpw" for c in fused["calls"]), "no block was fused"
    assert not any(c["kind"] == "dwpw" for c in plain["calls"])
    assert fused["kernels"] < plain["kernels"]
    assert fused["fusion"]["arena_bytes_unfused"] == plain["arena_bytes"]
    a, b = HostModel(tmp_path / "fused"), HostModel(tmp_path / "plain")
    shape = source.inputs[0].shape
    # fused vs unfused: the same float operations in another order (1e-5 of the spread); vs PyTorch 1e-4
    spread = compare_with_reference(lambda x: a.run(x)[0], lambda x: b.run(x)[0], shape, 1e-5, seeds=range(2))
    compare_with_reference(lambda x: a.run(x)[0], lambda x: source.reference(x)[0], shape, 1e-4, seeds=range(2))
    assert spread > 0


def test_one_pixel_maps_are_tiled(tmp_path):
    """At 32x32 MobileNet V1 ends on 1x1 maps: their fused kernels tile too (untiled, they took 20x
    the instructions of the tiled kernels on the emulated Pi) and still match PyTorch."""
    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=32, num_classes=10))
    rep = _build(source, tmp_path / "f")
    ones = [c for c in rep["calls"] if c["kind"] == "dwpw" and c["name"].startswith("ec_dwpw_f32_1x1x")]
    assert len(ones) == 2 and all("untiled" not in c["schedule"] for c in ones), [c["schedule"] for c in ones]
    model = HostModel(tmp_path / "f")
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0],
                           source.inputs[0].shape, 1e-4, seeds=range(2))


def test_in_place_lowers_the_arena(tmp_path):
    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=96, num_classes=10))
    rep = _build(source, tmp_path / "f", compile=False)
    assert any(c["in_place"] for c in rep["calls"])
    assert rep["arena_bytes"] < rep["fusion"]["arena_bytes_unfused"]
    no_overlap = _build(source, tmp_path / "n", compile=False, in_place=False)
    assert rep["arena_bytes"] < no_overlap["arena_bytes"]


# Ends with the last feature map (no global pooling) and measured BatchNorm statistics, so that
# its output depends on the input (the comparisons assert it).
ODD_NET = """
import torch
from torch import nn
from edgecompile.models.common import keep_signal
def make(stride={stride}):
    net = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, stride=stride, padding=1, groups=12), nn.BatchNorm2d(12), nn.ReLU6(),
        nn.Conv2d(12, 20, 1), nn.BatchNorm2d(20), nn.ReLU(),
        nn.Conv2d(20, 20, 5, stride=1, padding=2, groups=20), nn.ReLU(),
        nn.Conv2d(20, 7, 1))
    return keep_signal(net, (1, 3, 13, 11), seed=0)
"""


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_odd_sizes_strides_and_row_tiles(tmp_path, monkeypatch, stride, rows):
    (tmp_path / "oddnet.py").write_text(ODD_NET.format(stride=stride))
    monkeypatch.syspath_prepend(str(tmp_path))
    source = load_model("oddnet:make", ModelOptions(input_shape=(1, 3, 13, 11), seed=rows))
    fused = _build(source, tmp_path / "f", dwpw_rows=rows)
    _build(source, tmp_path / "p", fuse=False)
    tiled = [c for c in fused["calls"] if c["kind"] == "dwpw"]
    assert len(tiled) == 2 and all("rows per tile" in c["path"] for c in tiled)
    a, b = HostModel(tmp_path / "f"), HostModel(tmp_path / "p")
    seeds = range(rows, rows + 2)
    compare_with_reference(lambda x: a.run(x)[0], lambda x: b.run(x)[0], (1, 3, 13, 11), 1e-5, seeds)
    compare_with_reference(lambda x: a.run(x)[0], lambda x: source.reference(x)[0], (1, 3, 13, 11), 1e-4, seeds)


@pytest.mark.parametrize("target", ["mps2-an386", "rpi4"])
def test_fused_matches_unfused_on_device(tmp_path, target):
    source = load_model("mobilenet_v1", ModelOptions(width_mult=0.25, resolution=32, num_classes=10))
    outs = []
    for fuse in (True, False):
        out = tmp_path / f"b{fuse}"
        rep = _build(source, out, target=target, fuse=fuse, quant="fp32")
        t = load_target(target)
        with platform_for(t).start_emulator(t, out, rep) as s:
            port = s.open_port()
            link = Link(port, timeout=30, alive=s.alive)
            link.connect()
            outs.append([link.infer(random_input((1, 3, 32, 32), k), (1, 10)).output for k in range(3)])
            port.close()
    spread = output_spread(outs[1])
    for fused, plain in zip(*outs):
        assert_close(fused, plain, spread, 1e-5)


# ----------------------------------------------------------------------------- in-place planning


def _replay_streaming(hin, ri, hout, ro, rows, stride, k, pad, d):
    """Replay a fused kernel's order (read a tile's input window, then write its output rows) with
    the output `d` bytes after the start of the input; fail on a read of input bytes that already
    hold output data."""
    clobbered_upto = -1                 # input bytes below this offset hold output data
    lowest_write = None
    for t in range(hout // rows):
        first = max(0, t * rows * stride - pad)
        last = min(hin, t * rows * stride - pad + (rows - 1) * stride + k)
        for r in range(first, last):    # the window is read before the tile writes
            start, end = r * ri, (r + 1) * ri
            if lowest_write is not None:
                assert not (start < clobbered_upto and end > lowest_write), (t, r)
        w0, w1 = d + t * rows * ro, d + (t + 1) * rows * ro
        lowest_write = w0 if lowest_write is None else min(lowest_write, w0)
        clobbered_upto = max(clobbered_upto, w1)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.integers(1, 16), st.integers(1, 64), st.integers(1, 64), st.sampled_from([1, 2]),
       st.sampled_from([1, 3, 5]), st.integers(1, 6), st.data())
def test_streaming_overlap_never_overwrites_unread_input(hout, width, cin, cout, stride, k, rows, data):
    """The output placed as far into the input as streaming_max_delta allows."""
    rows = min(rows, hout)
    while hout % rows:
        rows -= 1
    pad = data.draw(st.integers(0, k - 1))
    hin = (hout - 1) * stride + k - 2 * pad if k > 1 else hout * stride
    hin = max(hin, 1)
    ri, ro = width * cin * 4, width * cout * 4
    delta = streaming_max_delta(hin, ri, hout, ro, rows, stride, k)
    _replay_streaming(hin, ri, hout, ro, rows, stride, k, pad, min(delta, hin * ri))


@pytest.mark.parametrize("dtype", ["int8", "float32"])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_streaming_overlaps_use_the_tensors_element_size(dtype, rows, stride):
    """The overlap a fused kernel gets from the program (not from row bytes given by hand): with
    int8 tensors, rows counted as 4-byte elements allowed an offset 4x too deep (stride 2, 4 rows
    per tile: the output overwrote input rows the next tile still reads)."""
    hin, win, cin, cout = 48, 48, 16, 32
    hout = hin // stride
    tensors = {"x": Tensor("x", (1, hin, win, cin), dtype, "activation"),
               "y": Tensor("y", (1, hout, hout, cout), dtype, "activation")}
    prog = Program(["x"], ["y"], tensors, {}, [KernelCall("k", ["x"], ["y"])])
    info = KernelInfo(Kind.DWPW, 0, "pw", kernel=(3, 3), stride=(stride, stride), rows=rows, dw_channels=cin)
    (overlap,) = streaming_overlaps(prog, [info])
    esize = DTYPE_BYTES[dtype]
    ri, ro = win * cin * esize, hout * cout * esize
    assert overlap.max_delta == streaming_max_delta(hin, ri, hout, ro, rows, stride, 3)
    for pad in (0, 1, 2):
        _replay_streaming(hin, ri, hout, ro, rows, stride, 3, pad, min(overlap.max_delta, hin * ri))


@st.composite
def buffers_with_overlaps(draw):
    n = draw(st.integers(2, 30))
    bufs, overlaps = [], []
    for i in range(n):
        start = draw(st.integers(0, 20))
        bufs.append(Buffer(f"b{i}", draw(st.integers(1, 4000)), start, draw(st.integers(start, 25))))
    for _ in range(draw(st.integers(0, 8))):
        a, b = draw(st.sampled_from(bufs)), draw(st.sampled_from(bufs))
        if a.name != b.name and b.end == a.start:      # input dies where the output is born
            overlaps.append(Overlap(a.name, b.name, draw(st.integers(-4000, 4000))))
        elif a.name != b.name and b.start <= a.start < b.end:   # a patch stage: input read after the output starts
            overlaps.append(Overlap(a.name, b.name, draw(st.integers(-4000, 4000)), interleaved=True))
    return bufs, overlaps


@settings(max_examples=300, deadline=None)
@given(buffers_with_overlaps())
def test_planner_respects_in_place_limits(case):
    bufs, overlaps = case
    plan = plan_buffers(bufs, overlaps)
    assert plan.overlaps() == []      # overlapping live pairs are exactly the allowed in-place ones
    allowed = {(o.out, o.inp): o.max_delta for o in overlaps}
    for o in plan.in_place:
        assert plan.offsets[o.out] - plan.offsets[o.inp] <= allowed[(o.out, o.inp)]
    assert plan.arena_bytes <= sum((b.size + 15) // 16 * 16 for b in bufs)


SE_NET = """
import torch
from torch import nn
from edgecompile.models.common import keep_signal

class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(),
                                     nn.Conv2d(4, 16, 1), nn.Sigmoid())
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x * self.squeeze(x))

def make():
    return keep_signal(SqueezeExcite(), (1, 3, 12, 12), seed=0)
"""

FOR_RE = re.compile(r"^( *)for \(int32_t \w+ = 0; \w+ < (\d+); \+\+\w+\) \{$")


def exponentials_per_call(c_code: str) -> int:
    """How many times the C evaluates ec_expf per call, from the loop nests around each use
    (TVM's C output: one loop header per line, constant trip counts, two-space indentation)."""
    total, loops = 0, []          # loops: (indentation, trip count) of the enclosing for loops
    for line in c_code.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        loops = [(i, n) for i, n in loops if i < indent]
        m = FOR_RE.match(line)
        if m:
            loops.append((len(m.group(1)), int(m.group(2))))
        elif "ec_expf(" in line and "static inline" not in line:
            total += line.count("ec_expf(") * int(np.prod([n for _, n in loops]))
    return total


def test_squeeze_excitation_gates_once_per_channel(tmp_path, monkeypatch):
    """The gate of a squeeze-and-excitation block (sigmoid of a per-channel vector, scaling a whole
    map) is computed once per channel, not once per pixel (inlined into the scaling, it was:
    12 x 12 x 16 exponentials)."""
    (tmp_path / "senet.py").write_text(SE_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = load_model("senet:make", ModelOptions(input_shape=(1, 3, 12, 12)))
    _build(source, tmp_path / "b")
    code = (tmp_path / "b" / "model.c").read_text()
    assert "expf(" not in code.replace("ec_expf(", "")
    assert exponentials_per_call(code) == 16
    model = HostModel(tmp_path / "b")
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0], (1, 3, 12, 12), 1e-4,
                           seeds=range(2))


def test_ec_expf_matches_the_c_library(tmp_path):
    """model.c's own expf: within 1 ulp of exp (double) over the range it does not clamp (0.83 with
    the degree-6 fitted polynomial; 2.14 with degree 5, which is why it is not degree 5), and the
    clamped values beyond it."""
    from edgecompile.codegen.mathlib import EC_EXPF_C
    src = tmp_path / "e.c"
    src.write_text("#include <math.h>\n#include <stdint.h>\n#include <stdio.h>\n#include <string.h>\n" + EC_EXPF_C +
                   "int main(void) { float x = -87.29f; double worst = 0; unsigned long h = 0;\n"
                   "  for (; x < 88.29f; x += 0.00137f) { float a = ec_expf(x); double e = exp((double)x);\n"
                   "    double ulp = ldexp(1.0, ilogb(e) - 23); double d = fabs(a - e) / ulp; if (d > worst) worst = d;\n"
                   "    uint32_t b; memcpy(&b, &a, 4); h = h * 31 + b; }\n"
                   "  printf(\"%.3f %g %g %g %lu\\n\", worst, ec_expf(-1e30f), ec_expf(1e30f), ec_expf(0.0f), h % 1000000007ul); return 0; }\n")
    subprocess.run(["gcc", "-O3", "-march=native", "-fno-tree-loop-if-convert", "-o", str(tmp_path / "e"), str(src), "-lm"],
                   check=True)
    worst, lo, hi, one, _ = subprocess.run([str(tmp_path / "e")], capture_output=True, text=True,
                                           check=True).stdout.split()
    assert float(worst) <= 1.0, f"{worst} ulp from exp"
    assert float(lo) == pytest.approx(1.2192e-38, rel=1e-3) and float(hi) == pytest.approx(2.2295e38, rel=1e-3)
    assert float(one) == 1.0
