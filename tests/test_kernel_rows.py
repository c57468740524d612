"""KxK convolution tiles summed over all their kernel rows in one call (tiling.KERNEL_ROWS_ATTR;
codegen.lower._kernel_rows_call; ukernels.kernel_rows_c): on the host a float KxK convolution's tile
takes one GEMM call per kernel row (K = KW x input channels), and its zeroing and that loop of
calls become one call of `ec_gemm_f32_MxN[_pP]_rR_z`, whose accumulators stay in registers across
the rows; with its epilogue, `..._rR_z_e<code>`.

1. Every kind of host tile summed over 2, 3 and 5 rows, at AVX2's and AVX-512's widths (compiled
   only where the machine lacks AVX-512): the rows kernel written from the zero-start kernel, its
   portable form, and the fused rows kernel, bit-identical to a zeroed tile and one += call per row
   (then the epilogue), the values of C beside the tile untouched.
2. A host build of a network with a first convolution on 3 channels (stride 2), a 3x3 convolution
   over a ragged pixel row, a 5x5 one, a residual 3x3 one and a 1x3 one calls the rows kernels,
   gives the same bits as the build that makes one call per tap, and matches PyTorch on outputs
   that depend on the input."""

from __future__ import annotations

import ctypes
import re
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.schedules import epilogues, host
from edgecompile.schedules.host import ukernels as host_ukernels
from edgecompile.schedules.ukernels import F32, emit_prelude, family_gemm_c, gemm_z_c, kernel_rows_c
from edgecompile.targets import load_target
from helpers import assert_same_bits_and_close, host_builds_with_and_without, keep_input_dependence

REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)
RELU6 = epilogues.encode(("N", ("X", ("A", ("a",), ("b", 0)), epilogues.constant(0.0)), epilogues.constant(6.0)))
# (M, N, K, R): two vectors, mixed widths, blocked, overlapped ragged channels, one pixel, one vector,
# quarter vectors, scalars; R kernel rows
CASES = [(6, 16, 37, 3), (3, 20, 5, 2), (13, 1000, 19, 3), (2, 58, 64, 5), (1, 40, 24, 3), (7, 8, 9, 3),
         (7, 4, 17, 2), (2, 3, 10, 3), (2, 116, 30, 3)]


def _supported(lanes: int) -> bool:
    return lanes == 8 or " avx512f" in open("/proc/cpuinfo").read()


def _reference(m: int, n: int, r: int) -> str:
    """A zeroed tile and one += call per kernel row: what the scheduled kernel did before."""
    return "\n".join([
        f"int32_t run_ref(float *C, const float *A, const float *B, int32_t K, int64_t lda, int64_t ldb, "
        "int64_t ars, int64_t brs, int64_t ldc, const float *P0) {",
        f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) C[i * ldc + j] = 0;",
        f"  for (int32_t r = 0; r < {r}; ++r) ec_gemm_f32_{m}x{n}(C, A + r * ars, B + r * brs, K, lda, ldb, ldc);",
        "  return 0;", "}",
        f"int32_t run_ref_e(float *C, const float *A, const float *B, int32_t K, int64_t lda, int64_t ldb, "
        "int64_t ars, int64_t brs, int64_t ldc, const float *P0) {",
        f"  float t[{m * n}];",
        f"  run_ref(t, A, B, K, lda, ldb, ars, brs, {n}, P0);",
        f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) {{",
        f"    float v = t[i * {n} + j] + P0[j]; v = v > 0.0f ? v : 0.0f; C[i * ldc + j] = v < 6.0f ? v : 6.0f; }}",
        "  return 0;", "}"])


@pytest.mark.parametrize("lanes", [8, 16])
def test_rows_kernels_equal_a_call_per_row(tmp_path, lanes):
    runs = _supported(lanes)
    cflags = [f for f in load_target("host").cflags if f.startswith(("-O", "-m", "-f"))] + ([] if runs else ["-mavx512f"])
    for m, n, k, r in CASES:
        z = host_ukernels.gemm_z(m, n, lanes, F32)
        plus = family_gemm_c(host_ukernels, host.RULES, m, n, lanes, F32)
        rows = kernel_rows_c(z, m, n, r, F32)
        assert f"for (int32_t r = 0; r < {r}; ++r)" in rows and f"ec_gemm_f32_{m}x{n}_z(C" not in rows, (m, n)
        portable = kernel_rows_c(gemm_z_c(m, n, F32), m, n, r, F32)
        assert f"ec_gemm_f32_{m}x{n}_z(C, A, B, K, lda, ldb, ldc);" in portable
        fused = epilogues.from_zero_start(rows, m, n, RELU6, lanes, r)
        assert fused is not None and "float t[" not in fused, (m, n)
        name = f"ec_gemm_f32_{m}x{n}_r{r}_z"
        src, lib_path = tmp_path / f"r{lanes}_{m}x{n}.c", tmp_path / f"r{lanes}_{m}x{n}.so"
        args = "C, A, B, K, lda, ldb, ars, brs, ldc"
        sig = ("(float *C, const float *A, const float *B, int32_t K, int64_t lda, int64_t ldb, int64_t ars, "
               "int64_t brs, int64_t ldc, const float *P0)")
        src.write_text("#include <stdint.h>\n" + emit_prelude(lanes) + "\n" + epilogues.helpers_c(lanes) + "\n"
                       + "\n".join([plus, z, gemm_z_c(m, n, F32).replace(f"_{m}x{n}_z(", f"_{m}x{n}_zp("),
                                    rows, portable.replace(f"{name}(", f"{name}_portable(").replace(
                                        f"ec_gemm_f32_{m}x{n}_z(C", f"ec_gemm_f32_{m}x{n}_zp(C"),
                                    fused, _reference(m, n, r)])
                       + f"\nint32_t run_rows{sig} {{ return {name}({args}); }}"
                       + f"\nint32_t run_portable{sig} {{ return {name}_portable({args}); }}"
                       + f"\nint32_t run_fused{sig} {{ return {name}_e{RELU6}({args}, P0); }}\n")
        subprocess.run(["gcc", *cflags, "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
        if not runs:
            continue
        lib = ctypes.CDLL(str(lib_path))
        rng = np.random.default_rng(m * 1000 + n + lanes)
        lda, ldb, ldc, ars, brs = k + 3, n + 8, n + 5, m * (k + 3) + 11, k * (n + 8) + 7   # strides wider than a row
        a = rng.standard_normal(r * ars).astype(np.float32)
        b = rng.standard_normal(r * brs).astype(np.float32)
        p0 = (rng.standard_normal(n) * 2).astype(np.float32)
        beside = rng.standard_normal((m, ldc)).astype(np.float32)
        ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        outs = {}
        for fn in ("ref", "rows", "portable", "ref_e", "fused"):
            c = beside.copy()
            f = getattr(lib, f"run_{fn}")
            f.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int32] + [ctypes.c_int64] * 5 + [ctypes.c_void_p]
            assert f(ptr(c), ptr(a), ptr(b), k, lda, ldb, ars, brs, ldc, ptr(p0)) == 0
            outs[fn] = c
        bits = {fn: v.view(np.uint32) for fn, v in outs.items()}
        assert np.array_equal(bits["rows"], bits["ref"]) and np.array_equal(bits["portable"], bits["ref"]), (m, n, r)
        assert np.array_equal(bits["fused"], bits["ref_e"]), (m, n, r)
        assert np.array_equal(outs["ref"][:, n:], beside[:, n:]) and np.array_equal(outs["fused"][:, n:], beside[:, n:])
        assert len(np.unique(outs["ref"][:, :n])) > 0.99 * m * n       # the sums depend on the operands


def _network():
    torch.manual_seed(43)

    class Residual(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6(),     # the first convolution: 3 channels, 13-pixel rows
        nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),               # 13 = 2 x 6 + 1: a ragged pixel row
        nn.Conv2d(24, 32, 5, padding=2),                          # 5 kernel rows, bias only
        Residual(32),                                             # the residual add in the epilogue
        nn.Conv2d(32, 40, (1, 3), padding=(0, 1)), nn.ReLU(),     # one kernel row: a plain zero-start tile
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10)).eval()


def test_host_build_sums_kernel_rows_bit_identically_and_matches_pytorch(tmp_path, monkeypatch):
    shape = (1, 3, 26, 26)
    net = _network()
    keep_input_dependence(net)
    source = _from_torch("kernel_rows", net, shape, ModelOptions(input_shape=shape, seed=43))
    (rows, code), (taps, taps_code) = host_builds_with_and_without(tmp_path, monkeypatch, source, host.RULES, "kernel_rows")
    calls = set(re.findall(r"\b(ec_gemm_f32_\w+?_r(\d+)_z_e\w+)\(\(&\(", code))
    assert {r for _, r in calls} == {"3", "5"}, calls
    assert any("_p" in name for name, _ in calls), calls                   # the ragged pixel row
    assert "_r1_" not in code
    assert "_r3_z" not in taps_code and "_r5_z" not in taps_code
    assert_same_bits_and_close(rows, taps, source, shape, REL)
