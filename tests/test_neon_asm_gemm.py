"""The float GEMM micro-kernel of the emulated Raspberry Pi as one inline-asm loop
(schedules/cortex_a/ukernels.py `_gemm_f32_asm`: fixed registers, post-indexed loads, fmla by
element), used where the weights are a packed panel (ldb == N).

1. Every tile shape the asm covers (1 to 11 pixels, 1 to 6 vectors of channels) and one it leaves
   to C (13 x 4), over reductions with and without a remainder (K % 4), below 4 steps, and with
   ldc * 4 == K / 4 (the case where gcc, before the operands were early-clobbered, gave the row
   stride and the step counter one register): compiled with the Pi's compiler and flags, run
   under qemu-aarch64 -cpu cortex-a72, bit-identical to a plain fmaf loop over the same steps
   (both fuse each multiply-add, in the same order); the C behind the panel test (ldb != N) too.
2. A small network on odd sizes through the whole build (first conv of 3 steps per tap, pointwise
   reductions of 12, 36 and 20 steps, 5-vector tiles) matches PyTorch on the emulated Pi, on
   outputs that depend on the input."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.schedules.cortex_a.ukernels import gemm
from edgecompile.schedules.ukernels import F32
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, run_c_cases_on_the_pi, keep_input_dependence, output_spread, random_input

ASM_TILES = [(1, 4), (1, 20), (2, 8), (3, 24), (4, 16), (5, 12), (7, 8), (8, 8), (11, 4), (6, 12),
             (6, 16), (5, 20), (7, 12), (10, 8), (4, 24), (3, 32), (2, 48)]     # weight vectors reloaded in pairs
C_TILES = [(13, 4), (11, 8)]
KS = [1, 3, 4, 7, 13, 16, 33, 128]

_PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef float ec_f32v __attribute__((vector_size(16)));
typedef float ec_f32v_u __attribute__((vector_size(16), aligned(4)));
#define ec_f32v_load(p) (*(const ec_f32v_u *)(p))
#define ec_f32v_store(p, v) (*(ec_f32v_u *)(p) = (v))
static float A[16 * 160], B[160 * 32], Bs[160 * 40], C[16 * 40], R[16 * 40];
static unsigned seed = 1;
static float rnd(void) { seed = seed * 1103515245u + 12345u; return (float)((int)((seed >> 8) % 2001) - 1000) / 317.0f; }
static int check(const char *what, int m, int n, int K, int ldc) {
  if (memcmp(C, R, sizeof C)) {
    for (int i = 0; i < 16 * 40; ++i)
      if (C[i] != R[i]) { printf("%s %dx%d K=%d ldc=%d: [%d] %.9g != %.9g\n", what, m, n, K, ldc, i, C[i], R[i]); break; }
    return 1;
  }
  return 0;
}
"""


def _case(m: int, n: int, k: int, ldc: int, lda: int, panel: bool, calls: int = 1) -> str:
    """`calls` calls in a loop (constants hoisted into registers, as in a kernel's tile loop):
    C (ldc apart, other values left alone) += A (lda apart) x B, B a packed panel (ldb == n) or
    rows ldb = n + 8 apart in Bs; against fmaf in the same step order."""
    ldb = n if panel else n + 8
    src = "Bs" if not panel else "B"
    return "\n".join([
        "{",
        f"  for (int i = 0; i < 16 * 160; ++i) A[i] = rnd();",
        f"  for (int i = 0; i < 160 * 32; ++i) B[i] = rnd();",
        f"  for (int i = 0; i < 160 * 40; ++i) Bs[i] = rnd();",
        f"  for (int i = 0; i < 16 * 40; ++i) C[i] = R[i] = rnd();",
        f"  for (int t = 0; t < {calls}; ++t) for (int i = 0; i < {m}; ++i) for (int j = 0; j < {n}; ++j) {{",
        f"    float acc = R[i * {ldc} + j];",
        f"    for (int k = 0; k < {k}; ++k) acc = fmaf(A[i * {lda} + k], {src}[k * {ldb} + j], acc);",
        f"    R[i * {ldc} + j] = acc;",
        "  }",
        f"  for (int t = 0; t < {calls}; ++t) ec_gemm_f32_{m}x{n}(C, A, {src}, {k}, {lda}, {ldb}, {ldc});",
        f'  bad += check("{"panel" if panel else "strided"}", {m}, {n}, {k}, {ldc});',
        "}",
    ])


def test_asm_gemm_tiles_bit_identical_on_emulated_pi(tmp_path):
    target = load_target("rpi4")
    if not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")):
        pytest.skip("aarch64 cross compiler or qemu-aarch64 missing")
    kernels = {t: gemm(*t, 4, F32) for t in ASM_TILES + C_TILES}
    for t in ASM_TILES:
        assert "__asm__" in kernels[t], t
    for t in C_TILES:
        assert "__asm__" not in kernels[t], t
    cases = []
    for m, n in ASM_TILES + C_TILES:
        for k in KS:
            ldc = n + 3
            cases.append(_case(m, n, k, ldc, k + 5, True))
        cases.append(_case(m, n, 33, n + 1, 40, False))
        if n in (8, 16):                             # ldc * 4 == K / 4: ldc = n, K = 16 n
            cases.append(_case(m, n, 16 * n, n, 16 * n, True, calls=3))
    run_c_cases_on_the_pi(tmp_path, target, [_PRELUDE, *kernels.values()], cases)


SHAPE = (1, 3, 13, 11)
REL = 1e-4


def _source():
    torch.manual_seed(31)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.ReLU(),     # 7 x 6 x 12: 3 steps per tap
        nn.Conv2d(12, 36, 1), nn.ReLU6(),                        # K = 12
        nn.Conv2d(36, 20, 1), nn.ReLU(),                         # K = 36, 20 channels (5 vectors)
        nn.Conv2d(20, 24, 1), nn.ReLU(),                         # K = 20 (5 x 4 + 0), 24 channels
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("neon_asm", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=31))


def test_asm_gemm_network_matches_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("rpi4"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    assert "__asm__ volatile(" in code
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
