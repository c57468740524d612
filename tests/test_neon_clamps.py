"""Float maxima and minima against constants (ReLU, ReLU6, Clip) on the emulated Raspberry Pi are
`fmaxf` / `fminf` calls (schedules/cortex_a `IEEE_CLAMPS`, codegen.lower.ieee_clamps) instead of the
ternaries TVM's C printer writes: gcc compiles them to one FMAXNM / FMINNM per vector, the
ternaries to compares and bit selects.

1. The rewrite itself: exactly TVM's form of Max(a, c) / Min(a, c) as a whole operand; a zero
   constant of the sign FMAXNM / FMINNM order the other way, other branches, or a tighter-binding
   neighbour are left alone.
2. Same bits: the ternaries and their rewrite, compiled with the Pi's compiler and flags (in a
   loop gcc vectorizes, and its scalar tail), over quiet NaNs, signed zeros, infinities, denormals
   and random bit patterns, under qemu-aarch64 -cpu cortex-a72. (A signalling NaN, which no
   arithmetic produces, becomes a quiet NaN instead of the constant.)
3. A small network with ReLU6, ReLU and a Clip of non-zero bounds through the whole build: no
   ternary left, outputs match PyTorch on the emulated Pi (on outputs that depend on the input)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from torch import nn

from edgecompile.codegen.lower import ieee_clamps
from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, keep_input_dependence, output_spread, random_input


def test_ieee_clamps_rewrites_only_tvm_max_min_against_constants():
    src = "\n".join([
        "  float v__1 = (v_) > (0.000000e+00f) ? (v_) : (0.000000e+00f);",
        "  T[(a + b)] = ((v__1) < (6.000000e+00f) ? (v__1) : (6.000000e+00f));",
        "  x = (((a) > (b)) + r[(i)]) > (-2.500000e+00f) ? (((a) > (b)) + r[(i)]) : (-2.500000e+00f);",
        "  f(y, (q) < (-1.500000e+00f) ? (q) : (-1.500000e+00f));",
        "  x = (q) > (-0.000000e+00f) ? (q) : (-0.000000e+00f);",     # max against -0: kept
        "  x = (q) < (0.000000e+00f) ? (q) : (0.000000e+00f);",       # min against +0: kept
        "  x = (q) > (1.000000e+00f) ? (w) : (1.000000e+00f);",       # not a Max
        "  x = 1 + (q) > (1.000000e+00f) ? (q) : (1.000000e+00f);",   # (1 + q) is compared
        "  x = (q) > (1) ? (q) : (1);",                               # an integer Max
    ])
    want = "\n".join([
        "  float v__1 = fmaxf(v_, 0.000000e+00f);",
        "  T[(a + b)] = (fminf(v__1, 6.000000e+00f));",
        "  x = fmaxf(((a) > (b)) + r[(i)], -2.500000e+00f);",
        "  f(y, fminf(q, -1.500000e+00f));",
        *src.splitlines()[4:],
    ])
    assert ieee_clamps(src) == want
    assert ieee_clamps(want) == want


_BITS_C = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#define N 4099
static float X[N], T[7 * N], F[7 * N];
static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
__attribute__((noinline)) static void ternary(float *restrict o, const float *restrict x, int n) {
  for (int i = 0; i < n; ++i) {
    float v_ = x[i];
    BODY_T
  }
}
__attribute__((noinline)) static void rewritten(float *restrict o, const float *restrict x, int n) {
  for (int i = 0; i < n; ++i) {
    float v_ = x[i];
    BODY_F
  }
}
int main(void) {
  const uint32_t special[] = {0x7fc00000u, 0xffc00000u, 0x7fc00001u, 0x7f800000u, 0xff800000u, 0x80000000u,
                              0x00000000u, 0x00000001u, 0x80000001u, 0x40c00000u, 0x40c00001u, 0x40bfffffu,
                              0xbfc00000u, 0x3f800000u, 0xc0200000u};
  uint32_t s = 7;
  for (int i = 0; i < N; ++i) {
    s = s * 1103515245u + 12345u;
    uint32_t u = (s & 0x7f800000u) == 0x7f800000u && (s & 0x7fffffu) ? s | 0x400000u : s;   /* NaNs quiet */
    X[i] = i < (int)(sizeof special / 4) ? of(special[i]) : (i % 3 ? of(u) : (float)((int)(s >> 9) % 2001 - 1000) / 97.0f);
  }
  int bad = 0, cases = 0;
  for (int n = N - 3; n <= N; ++n) {                 /* vector loop and scalar tails */
    ternary(T, X, n); rewritten(F, X, n);
    for (int i = 0; i < 7 * N; ++i, ++cases)
      if (i % N < n && bits(T[i]) != bits(F[i])) { if (bad++ < 5) printf("x %08x: %08x != %08x\n", bits(X[i % N]), bits(T[i]), bits(F[i])); }
  }
  printf("bad %d of %d\n", bad, cases);
  return bad != 0;
}
"""

# what TVM prints for ReLU6 (Clip 0..6), a Clip of negative bounds, a min against -0, and the max
# against -0 and min against +0 the rewrite keeps as ternaries
_BODY = "\n".join([
    "    float v__1 = (v_) > (0.000000e+00f) ? (v_) : (0.000000e+00f);",
    "    float v__2 = ((v__1) < (6.000000e+00f) ? (v__1) : (6.000000e+00f));",
    "    float v__3 = (v_) > (-1.500000e+00f) ? (v_) : (-1.500000e+00f);",
    "    float v__4 = (v__3) < (-0.000000e+00f) ? (v__3) : (-0.000000e+00f);",
    "    float v__5 = (v_) < (2.500000e+00f) ? (v_) : (2.500000e+00f);",
    "    float v__6 = (v_) > (-0.000000e+00f) ? (v_) : (-0.000000e+00f);",
    "    float v__7 = (v_) < (0.000000e+00f) ? (v_) : (0.000000e+00f);",
    *[f"    o[{k - 1} * N + i] = v__{k};" for k in range(1, 8)],
])


def test_ieee_clamps_same_bits_on_emulated_pi(tmp_path):
    target = load_target("rpi4")
    if not (shutil.which(target.cc) and shutil.which("qemu-aarch64")):
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    rewritten = ieee_clamps(_BODY)
    assert rewritten.count("fmaxf(") == 2 and rewritten.count("fminf(") == 3 and rewritten.count(" ? ") == 2, rewritten
    code = _BITS_C.replace("BODY_T", _BODY).replace("BODY_F", rewritten)
    (tmp_path / "t.c").write_text(code)
    subprocess.run([target.cc, "-static", *target.cflags, str(tmp_path / "t.c"), "-o", str(tmp_path / "t"), "-lm"],
                   check=True)
    asm = subprocess.run([target.cc, *target.cflags, "-S", "-o", "-", str(tmp_path / "t.c")], check=True,
                         capture_output=True, text=True).stdout
    assert "fmaxnm\tv" in asm and "fminnm\tv" in asm          # vectorized, one instruction per vector
    run = subprocess.run(["qemu-aarch64", "-cpu", "cortex-a72", str(tmp_path / "t")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "bad 0 of" in run.stdout


SHAPE = (1, 3, 9, 11)
REL = 1e-4


class _Clip(nn.Module):
    def forward(self, x):
        return torch.clamp(x, -1.5, 2.5)


def _source():
    torch.manual_seed(41)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
        nn.Conv2d(16, 24, 1), _Clip(),
        nn.Conv2d(24, 20, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("neon_clamps", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=41))


def test_clamps_network_matches_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("rpi4"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    assert "fminf(" in code and "fmaxf(" in code
    assert "e+00f) ? (" not in code                         # no float clamp left as a ternary
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
