"""Zero-start float GEMM tiles on the emulated Raspberry Pi: where a kernel zeroes a GEMM tile
right before its micro-kernel call (C += A B), codegen.lower.zero_start_gemms calls
`ec_gemm_f32_MxN_z` (C = A B) instead, and the Pi's kernel (schedules/cortex_a/ukernels.py
`gemm_z`) starts its accumulators with `fmul` and hands them to the epilogue in registers.

1. The `_z` kernels of the asm tiles (1 to 11 pixels, up to 25 accumulators), of tiles left to C
   and of a ragged pixel tile (`_pP_z`), over K below 4, with and without a remainder (K % 4), on
   packed panels and strided weights, compiled with the Pi's compiler and flags and run under
   qemu-aarch64 -cpu cortex-a72: bit-identical to fmaf in the kernel's step order (the first
   product rounded alone where K >= 8 and the panel is packed, from +0 otherwise), the values of
   C beside the tile untouched.
2. A network of odd sizes through the whole build (a first conv of 3 channels per tap, pointwise
   reductions of 12, 36 (fused after a depthwise) and 13 steps, 13 output channels (ragged),
   a grouped 3x3 conv, a dense layer) calls `_z` kernels, keeps no tile zeroing before them and
   matches PyTorch on the emulated Pi, on outputs that depend on the input."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.schedules.cortex_a.ukernels import gemm, gemm_z
from edgecompile.schedules.ukernels import F32, rows_gemm_z_c
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, run_c_cases_on_the_pi, keep_input_dependence, output_spread, random_input

ASM_TILES = [(1, 4), (2, 8), (3, 24), (4, 16), (5, 12), (7, 8), (11, 4), (10, 8), (6, 16), (5, 20), (4, 24),
             (3, 32), (2, 48), (7, 12)]
C_TILES = [(13, 4), (11, 8)]
KS = [1, 3, 4, 5, 7, 8, 13, 16, 33]

_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef float ec_f32v __attribute__((vector_size(16)));
typedef float ec_f32v_u __attribute__((vector_size(16), aligned(4)));
#define ec_f32v_load(p) (*(const ec_f32v_u *)(p))
#define ec_f32v_store(p, v) (*(ec_f32v_u *)(p) = (v))
static float A[16 * 160], B[160 * 48], Bs[160 * 56], C[16 * 56], R[16 * 56];
static unsigned seed = 7;
static float rnd(void) { seed = seed * 1103515245u + 12345u; return (float)((int)((seed >> 8) % 2001) - 1000) / 317.0f; }
static int check(const char *what, int m, int n, int K) {
  if (memcmp(C, R, sizeof C)) {
    for (int i = 0; i < 16 * 56; ++i)
      if (C[i] != R[i] || signbit(C[i]) != signbit(R[i])) {
        printf("%s %dx%d K=%d: [%d] %.9g != %.9g\n", what, m, n, K, i, C[i], R[i]); break; }
    return 1;
  }
  return 0;
}
"""


def _case(symbol: str, m: int, n: int, k: int, panel: bool, fmul_first: bool) -> str:
    """C (ldc = n + 3, the values beside the tile left alone, the tile's own random) = A (lda = k + 5)
    x B, a packed panel (ldb == n) or rows n + 8 apart; the reference in the kernel's step order."""
    ldb, src, ldc, lda = (n, "B", n + 3, k + 5) if panel else (n + 8, "Bs", n + 3, k + 5)
    start = (f"A[i * {lda}] * {src}[j]", 1) if fmul_first and k >= 8 else ("0.0f", 0)
    return "\n".join([
        "{",
        "  for (int i = 0; i < 16 * 160; ++i) A[i] = rnd();",
        "  for (int i = 0; i < 160 * 48; ++i) B[i] = rnd();",
        "  for (int i = 0; i < 160 * 56; ++i) Bs[i] = rnd();",
        "  for (int i = 0; i < 16 * 56; ++i) C[i] = R[i] = rnd();",
        f"  for (int i = 0; i < {m}; ++i) for (int j = 0; j < {n}; ++j) {{",
        f"    volatile float first = {start[0]};",
        "    float acc = first;",
        f"    for (int k = {start[1]}; k < {k}; ++k) acc = fmaf(A[i * {lda} + k], {src}[k * {ldb} + j], acc);",
        f"    R[i * {ldc} + j] = acc;",
        "  }",
        f"  {symbol}(C, A, {src}, {k}, {lda}, {ldb}, {ldc});",
        f'  bad += check("{symbol} {"panel" if panel else "strided"}", {m}, {n}, {k});',
        "}",
    ])


def test_zero_start_gemm_tiles_bit_identical_on_emulated_pi(tmp_path):
    target = load_target("rpi4")
    if not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")):
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    ragged = (13, 5, 20)                       # 13 pixels in tiles of 5, 5, 3
    tiles = ASM_TILES + C_TILES + [(5, 20), (3, 20)]
    kernels = [gemm(m, n, 4, F32) for m, n in sorted(set(tiles))]
    zs = {t: gemm_z(*t, 4, F32) for t in sorted(set(tiles))}
    for t in ASM_TILES:
        assert "fmul v0.4s" in zs[t] and "__asm__" in zs[t], t
    for t in C_TILES:
        assert "__asm__" not in zs[t], t
    cases = []
    for m, n in ASM_TILES + C_TILES:
        for k in KS:
            cases.append(_case(f"ec_gemm_f32_{m}x{n}_z", m, n, k, True, (m, n) in ASM_TILES))
        cases.append(_case(f"ec_gemm_f32_{m}x{n}_z", m, n, 33, False, False))
    for k in (3, 13):
        cases.append(_case(f"ec_gemm_f32_{ragged[0]}x{ragged[2]}_p{ragged[1]}_z", ragged[0], ragged[2], k, True, True))
    run_c_cases_on_the_pi(tmp_path, target, [_PRELUDE, *kernels, *zs.values(), rows_gemm_z_c(*ragged, F32)], cases)


SHAPE = (1, 3, 15, 13)
REL = 1e-4


def _source():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.ReLU(),      # 8 x 7 x 12: 3 channels per tap
        nn.Conv2d(12, 36, 1), nn.ReLU6(),                         # K = 12
        nn.Conv2d(36, 36, 3, padding=1, groups=36), nn.ReLU6(),   # depthwise, fused with the next
        nn.Conv2d(36, 20, 1),                                     # K = 36, no activation
        nn.Conv2d(20, 13, 1), nn.ReLU(),                          # 13 channels: ragged
        nn.Conv2d(13, 24, 1), nn.ReLU(),                          # K = 13 (3 x 4 + 1)
        nn.Conv2d(24, 24, 3, padding=1, groups=3), nn.ReLU(),     # grouped: 8 channels per group
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("neon_zero_start", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=5))


def test_zero_start_network_matches_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("rpi4"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    calls = re.findall(r"\bec_gemm_f32_\w+_z\(\(", code)
    assert len(calls) >= 4, calls
    # no zeroing loop right before a zero-start call
    assert not re.search(r"= 0\.000000e\+00f;\s*\}\s*(\}\s*)*ec_gemm_f32_\w+_z\(", code)
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
