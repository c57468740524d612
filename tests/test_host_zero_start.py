"""Zero-start float GEMM tiles on the host (schedules/host/ukernels.gemm_z; codegen.lower.zero_start_gemms):
where a kernel zeroes a GEMM tile right before its micro-kernel call, the host calls
`ec_gemm_f32_MxN_z` (C = A B, accumulators started at zero) instead.

1. Every kind of host tile's `_z` kernel (two-vector, mixed widths, blocked, overlapped ragged
   channels), compiled with the host's flags at AVX2's and AVX-512's vector widths: bit-identical
   to the += kernel run on a zeroed tile, the values of C beside the tile untouched.
2. A host build calls `_z` kernels, keeps no tile zeroing right before them, and matches PyTorch
   on outputs that depend on the input."""

from __future__ import annotations

import ctypes
import re
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules import host
from edgecompile.schedules.host import ukernels as host_ukernels
from edgecompile.schedules.ukernels import F32, emit_prelude, family_gemm_c
from edgecompile.targets import load_target
from helpers import compare_with_reference, keep_input_dependence

REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)


def _plus_kernel(m: int, n: int, lanes: int) -> str:
    return family_gemm_c(host_ukernels, host.RULES, m, n, lanes, F32)


# (M, N, K) at each lane width: two vectors, mixed widths, blocked (more vectors than accumulators),
# ragged channels in overlapped full vectors, one pixel, narrower vectors (4 channels), scalars (3
# channels: C read as `*(C + ...)`, which the rewrite must start at zero too)
CASES = [(6, 16, 37), (3, 20, 5), (13, 1000, 19), (2, 58, 64), (1, 40, 256), (7, 8, 3), (7, 4, 17), (2, 3, 10),
         (1, 17, 58), (1, 10, 20), (5, 13, 9)]


@pytest.mark.parametrize("lanes", [8, 16])
def test_zero_start_kernels_equal_the_plus_kernel_on_zeros(tmp_path, lanes):
    cflags = [f for f in load_target("host").cflags if f.startswith(("-O", "-m", "-f"))]
    for m, n, k in CASES:
        z = host_ukernels.gemm_z(m, n, lanes, F32)
        assert z is not None and f"ec_gemm_f32_{m}x{n}_z(" in z and "_load(C" not in z, (m, n)
        lda, ldb, ldc = k + 3, n + 8, n + 5     # strides wider than the tile: only the tile is written
        src = tmp_path / f"k{lanes}_{m}x{n}.c"
        src.write_text("#include <stdint.h>\n" + emit_prelude(lanes) + "\n" + _plus_kernel(m, n, lanes) + "\n" + z + "\n"
                       f"int32_t plus(float *C, const float *A, const float *B) {{ return ec_gemm_f32_{m}x{n}"
                       f"(C, A, B, {k}, {lda}, {ldb}, {ldc}); }}\n"
                       f"int32_t zero(float *C, const float *A, const float *B) {{ return ec_gemm_f32_{m}x{n}_z"
                       f"(C, A, B, {k}, {lda}, {ldb}, {ldc}); }}\n")
        lib_path = tmp_path / f"k{lanes}_{m}x{n}.so"
        subprocess.run(["gcc", *cflags, "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
        lib = ctypes.CDLL(str(lib_path))
        rng = np.random.default_rng(m * 1000 + n + lanes)
        a = rng.standard_normal((m, lda)).astype(np.float32)
        b = rng.standard_normal((k, ldb)).astype(np.float32)
        plus = rng.standard_normal((m, ldc)).astype(np.float32)
        plus[:, :n] = 0.0
        zero = rng.standard_normal((m, ldc)).astype(np.float32)
        zero[:, n:] = plus[:, n:]
        ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        assert lib.plus(ptr(plus), ptr(a), ptr(b)) == 0 and lib.zero(ptr(zero), ptr(a), ptr(b)) == 0
        assert np.array_equal(zero.view(np.uint32), plus.view(np.uint32)), (lanes, m, n, k)
        assert np.abs(zero[:, :n]).max() > 0


def test_host_build_calls_zero_start_kernels_and_matches_pytorch(tmp_path):
    shape = (1, 16, 14, 14)
    torch.manual_seed(31)
    net = nn.Sequential(
        nn.Conv2d(16, 96, 1), nn.ReLU6(),                                                    # 14x14, K = 16
        nn.Conv2d(96, 96, 3, padding=1, groups=96), nn.ReLU6(), nn.Conv2d(96, 24, 1),        # dw+pw
        nn.Conv2d(24, 58, 3, stride=2, padding=1), nn.ReLU(),                                # ragged 58 channels
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(58, 1000)).eval()
    keep_input_dependence(net)
    source = _from_torch("host_zero_start", net, shape, ModelOptions(input_shape=shape, seed=31))
    out = tmp_path / "b"
    write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    lines = code.splitlines()
    # zero-start calls, most with their epilogue (`_z_e<code>`: tests/test_fused_epilogues.py)
    calls = [i for i, line in enumerate(lines) if re.search(r"_z(_e\w+)?\(\(&\(", line)]
    assert len(calls) >= 3, calls
    for i in calls:      # the tile's buffer is not zeroed in the lines right before the call
        buf = re.search(r"_z(?:_e\w+)?\(\(&\((\w+)\[", lines[i]).group(1)
        assert not any(f"{buf}[" in ln and "= 0.000000e+00f" in ln for ln in lines[max(0, i - 6):i]), lines[i - 6:i + 1]
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], shape, REL)
    runner.close()
