"""GEMM tiles with their epilogue in registers (schedules/epilogues.py; codegen.lower.fuse_epilogues):
a zero-start float GEMM tile and the epilogue loop after it (bias, ReLU / ReLU6 clamps, a residual
add) become one call of `ec_gemm_f32_MxN[_pP]_z_e<code>`, the epilogue travelling in the name; a
depthwise window's zeroed tile, its += call and its epilogue become one call of
`ec_dw_f32_MxN_kKHxKWsS[_pP]_z_e<code>`.

1. Codes round-trip and name their function; malformed codes are refused.
2. Every kind of host tile (two vectors, mixed widths, blocked, overlapped ragged channels, one
   pixel, quarter vectors, scalars) fused from its zero-start kernel, host depthwise tiles fused
   from their += kernel, and the portable forms any family gets, compiled with the host's flags at AVX2's and AVX-512's widths (where the machine
   runs them): bit-identical to the zero-start kernel followed by the epilogue in plain C, the
   values of C beside the tile untouched.
3. A host build of a network with each epilogue form (ReLU6, ReLU, bias only, residual add, a
   ragged pixel row, 116 channels, a classifier) calls fused kernels, gives the same bits as the
   build without them, and matches PyTorch on outputs that depend on the input."""

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
from edgecompile.schedules.ukernels import F32, emit_dw_c, emit_prelude, family_gemm_c, gemm_z_c
from edgecompile.targets import load_target
from helpers import assert_same_bits_and_close, host_builds_with_and_without, keep_input_dependence, use_host_variant

REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)
RELU6 = epilogues.encode(("N", ("X", ("A", ("a",), ("b", 0)), epilogues.constant(0.0)), epilogues.constant(6.0)))
RESIDUAL = epilogues.encode(("A", ("r", 0), ("A", ("a",), ("b", 1))))
# every operator, a negative constant, a parameter read twice
MIXED = epilogues.encode(("X", ("N", ("A", ("b", 0), ("a",)), ("r", 1)), ("A", ("b", 0), epilogues.constant(-1.5))))


def test_codes_round_trip_and_name_their_function():
    assert RELU6 == "NXAab0k00000000k40c00000"
    for code in (RELU6, RESIDUAL, MIXED, "Aab0"):
        assert epilogues.encode(epilogues.parse(code)) == code
    assert epilogues.params(epilogues.parse(RESIDUAL)) == [(0, "r"), (1, "b")]
    assert epilogues.describe(RELU6) == "ec_f32_min(ec_f32_max((acc + P0[j]), 0x0.0p+0f), 0x1.8000000000000p+2f)"
    assert "int64_t ldp0" in epilogues.signature(2, 16, RESIDUAL) and "float *C," in epilogues.signature(2, 16, RESIDUAL)
    for bad in ("", "A", "Aa", "b", "kxyz", "aa", "Qab0"):
        with pytest.raises(ValueError):
            epilogues.parse(bad)


def _plain_epilogue(code: str, n: int) -> str:
    """The epilogue of tile value t[i * n + j] in plain C as TVM writes it (decimal constants,
    ternaries for max and min), written here independently of the kernels' own printer."""
    def leaf(t):
        if t[0] == "a":
            return f"t[i * {n} + j]"
        if t[0] == "k":
            return repr(float(np.frombuffer(bytes.fromhex(t[1])[::-1], np.float32)[0])) + "f"
        return f"P{t[1]}[j]" if t[0] == "b" else f"P{t[1]}[i * ldp{t[1]} + j]"

    def op(o, x, y):
        return {"A": f"({x} + {y})", "X": f"(({x}) > ({y}) ? ({x}) : ({y}))", "N": f"(({x}) < ({y}) ? ({x}) : ({y}))"}[o]
    return epilogues.expression(epilogues.parse(code), leaf, op)


def _reference(m: int, n: int, code: str) -> str:
    """The zero-start kernel into a tile, then the epilogue in plain C (TVM's ternaries)."""
    expr = _plain_epilogue(code, n)
    return "\n".join([
        epilogues.signature(m, n, code).replace("_z_e" + code + "(", "_ref(") + " {",
        f"  float t[{m * n}];",
        f"  ec_gemm_f32_{m}x{n}_z(t, A, B, K, lda, ldb, {n});",
        f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) C[i * ldc + j] = {expr};",
        "  return 0;", "}"])


def _compile_runners(stem, cflags: list[str], lanes: int, parts: list[str], operands: str, kernel: str, code: str,
                     args: str, runs: bool):
    """The kernels `parts` and three entry points, run_fused / run_portable / run_ref (C, the two
    operands, P0, P1), compiled with `cflags` into a library: loaded when `runs`, else None."""
    src, lib_path = stem.with_suffix(".c"), stem.with_suffix(".so")
    src.write_text("#include <stdint.h>\n" + emit_prelude(lanes) + "\n" + epilogues.helpers_c(lanes) + "\n"
                   + "\n".join(parts) + "\n"
                   + "".join(f"int32_t run_{name}(float *C, {operands}, const float *P0, const float *P1) "
                             f"{{ return {kernel}{sfx}({args}); }}\n"
                             for name, sfx in (("fused", f"_z_e{code}"), ("portable", "_portable"), ("ref", "_ref"))))
    subprocess.run(["gcc", *cflags, "-shared", "-fPIC", "-o", str(lib_path), str(src)], check=True)
    return ctypes.CDLL(str(lib_path)) if runs else None


def _supported(lanes: int) -> bool:
    flags = open("/proc/cpuinfo").read()
    return lanes == 8 or " avx512f" in flags


# (M, N, K): as in test_host_zero_start, every kind of host tile
CASES = [(6, 16, 37), (3, 20, 5), (13, 1000, 19), (2, 58, 64), (1, 40, 256), (7, 8, 3), (7, 4, 17), (2, 3, 10),
         (2, 116, 30), (5, 13, 9)]


@pytest.mark.parametrize("lanes", [8, 16])
def test_fused_kernels_equal_the_tile_then_its_epilogue(tmp_path, lanes):
    runs = _supported(lanes)        # else only compiled (for AVX-512, on a machine without it)
    cflags = [f for f in load_target("host").cflags if f.startswith(("-O", "-m", "-f"))] + ([] if runs else ["-mavx512f"])
    for m, n, k in CASES:
        z = host_ukernels.gemm_z(m, n, lanes, F32)
        plus = family_gemm_c(host_ukernels, host.RULES, m, n, lanes, F32)
        for ci, code in enumerate((RELU6, RESIDUAL, MIXED)):
            fused = epilogues.from_zero_start(z, m, n, code, lanes)
            assert fused is not None and "float t[" not in fused, (m, n, code)
            portable = epilogues.generic_c(m, n, code).replace(f"_z_e{code}(", "_portable(")
            lda, ldb, ldc, ldp = k + 3, n + 8, n + 5, n + 7   # strides wider than the tile
            params = ", ".join(f"P{i}" + (f", {ldp}" if kind == "r" else "") for i, kind in epilogues.params(epilogues.parse(code)))
            args = f"C, A, B, {k}, {lda}, {ldb}, {ldc}, {params}"
            lib = _compile_runners(tmp_path / f"e{lanes}_{m}x{n}_{ci}", cflags, lanes,
                                   [plus, z, fused, portable, _reference(m, n, code)],
                                   "const float *A, const float *B", f"ec_gemm_f32_{m}x{n}", code, args, runs)
            if lib is None:
                continue
            rng = np.random.default_rng(m * 1000 + n + lanes + ci)
            a = rng.standard_normal((m, lda)).astype(np.float32)
            b = rng.standard_normal((k, ldb)).astype(np.float32)
            p = [rng.standard_normal(max(m * ldp, n)).astype(np.float32) * 2 for _ in range(2)]
            outs = {}
            ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
            beside = rng.standard_normal((m, ldc)).astype(np.float32)
            for name in ("ref", "fused", "portable"):
                c = beside.copy()
                assert getattr(lib, f"run_{name}")(ptr(c), ptr(a), ptr(b), ptr(p[0]), ptr(p[1])) == 0
                outs[name] = c
            assert np.array_equal(outs["fused"].view(np.uint32), outs["ref"].view(np.uint32)), (lanes, m, n, code)
            assert np.array_equal(outs["portable"].view(np.uint32), outs["ref"].view(np.uint32)), (lanes, m, n, code)
            assert np.array_equal(outs["ref"][:, n:], beside[:, n:])
            assert len(np.unique(outs["ref"][:, :n])) > min(n, 4)      # the epilogue does not flatten the tile


def _network():
    torch.manual_seed(41)

    class Block(nn.Module):       # an inverted residual: expansion (ReLU6), dw+pw, the residual add
        def __init__(self, c: int, e: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, e, 1), nn.ReLU6(), nn.Conv2d(e, e, 3, padding=1, groups=e),
                                      nn.ReLU6(), nn.Conv2d(e, c, 1))

        def forward(self, x):
            return x + self.body(x)

    return nn.Sequential(
        nn.Conv2d(16, 24, 1), nn.ReLU(),                        # 14x14: ReLU
        Block(24, 96),                                          # ragged pixel rows of 6 x 16 tiles (14 = 2 x 6 + 2)
        nn.Conv2d(24, 116, 1),                                  # bias only, 116 channels
        nn.Conv2d(116, 40, 3, stride=2, padding=1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 1000)).eval()


def test_host_build_fuses_epilogues_bit_identically_and_matches_pytorch(tmp_path, monkeypatch):
    shape = (1, 16, 14, 14)
    net = _network()
    keep_input_dependence(net)
    source = _from_torch("fused_epilogues", net, shape, ModelOptions(input_shape=shape, seed=41))
    use_host_variant(monkeypatch, "avx2")     # its tiles (6 x 16 on 14-pixel rows: a ragged last tile)
    (fused, code), (plain, plain_code) = host_builds_with_and_without(tmp_path, monkeypatch, source, host.RULES,
                                                                      "fuse_epilogues")
    calls = set(re.findall(r"\b(ec_gemm_f32_\w+_z_e(\w+))\(\(&\(", code))
    codes = {c for _, c in calls}
    assert RELU6 in codes and RESIDUAL in codes and "Aab0" in codes, codes
    assert any("_p" in name for name, _ in calls), calls                # a ragged pixel row
    assert any(name.startswith("ec_gemm_f32_1x") for name, _ in calls), calls   # the classifier
    assert re.search(r"\bec_dw_f32_\w+_z_e" + RELU6 + r"\(\(&\(", code)      # the depthwise windows' ReLU6
    assert "_z_e" not in plain_code
    assert_same_bits_and_close(fused, plain, source, shape, REL)


def test_portable_form_serves_a_zero_start_kernel_it_cannot_rewrite():
    """A family whose zero-start tile zeroes C and calls its += kernel (ukernels.gemm_z_c) gets the
    portable form (tile on the stack, then the epilogue), and the emitter then also emits the
    zero-start kernel it calls."""
    assert epilogues.from_zero_start(gemm_z_c(4, 16, F32), 4, 16, RELU6, 8) is None
    dw_parts, dw_needs = epilogues.emit_dw(f"y = ec_dw_f32_9x8_k3x3s2_p4_z_e{RELU6}(C", None, 8, lambda *t: "")
    assert dw_needs == {(4, 8, 3, 3, 2), (1, 8, 3, 3, 2)} and "X + i * 2 * ldx_px" in dw_parts[-1]
    parts, needs = epilogues.emit(f"x = ec_gemm_f32_10x16_p4_z_e{RELU6}(C", None, 8, lambda m, n, r: gemm_z_c(m, n, F32))
    assert needs == {(4, 16, 0), (2, 16, 0)}
    assert any(f"ec_gemm_f32_10x16_p4_z_e{RELU6}(" in p for p in parts)


# (M, N, KH, KW, S): two vectors, overlapped ragged channels (58), quarter vectors, scalars (3), 5x5/2
DW_CASES = [(4, 16, 3, 3, 1), (2, 58, 3, 3, 2), (7, 4, 3, 3, 1), (3, 3, 3, 3, 1), (2, 24, 5, 5, 2)]


@pytest.mark.parametrize("lanes", [8, 16])
def test_fused_depthwise_kernels_equal_the_window_then_its_epilogue(tmp_path, lanes):
    runs = _supported(lanes)
    cflags = [f for f in load_target("host").cflags if f.startswith(("-O", "-m", "-f"))] + ([] if runs else ["-mavx512f"])
    for m, n, kh, kw, s in DW_CASES:
        plus = host_ukernels.dw(m, n, kh, kw, s, lanes, F32) or emit_dw_c(m, n, kh, kw, s, lanes, F32, host.RULES.dw_acc)
        name = f"ec_dw_f32_{m}x{n}_k{kh}x{kw}s{s}"
        for ci, code in enumerate((RELU6, RESIDUAL)):
            fused = epilogues.dw_from_plus(plus, m, n, kh, kw, s, code, lanes)
            assert fused is not None and "float t[" not in fused and "_load(C" not in fused, (m, n, code)
            portable = epilogues.dw_generic_c(m, n, kh, kw, s, code).replace(f"{name}_z_e{code}(", f"{name}_portable(")
            ldx_px, ldc, ldp = n + 3, n + 5, n + 7
            ldx_row = ldx_px * ((m - 1) * s + kw + 2)
            ldw_px, ldw_row = n + 1, (n + 1) * kw
            params = ", ".join(f"P{i}" + (f", {ldp}" if kind == "r" else "") for i, kind in epilogues.params(epilogues.parse(code)))
            args = f"C, X, W, {ldx_row}, {ldx_px}, {ldw_row}, {ldw_px}, {ldc}, {params}"
            ref = "\n".join([
                epilogues.signature(m, n, code, window=(kh, kw, s)).replace(f"_z_e{code}(", "_ref(") + " {",
                f"  float t[{m * n}] = {{0}};",
                f"  {name}(t, X, W, ldx_row, ldx_px, ldw_row, ldw_px, {n});",
                f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) C[i * ldc + j] = "
                f"{_plain_epilogue(code, n)};",
                "  return 0;", "}"])
            lib = _compile_runners(tmp_path / f"d{lanes}_{m}x{n}_{ci}", cflags, lanes, [plus, fused, portable, ref],
                                   "const float *X, const float *W", name, code, args, runs)
            if lib is None:
                continue
            rng = np.random.default_rng(m * 100 + n + lanes + ci)
            x = rng.standard_normal(ldx_row * kh + ldx_px * 4).astype(np.float32)
            w = rng.standard_normal(ldw_row * kh + ldw_px).astype(np.float32)
            p = [rng.standard_normal(max(m * ldp, n)).astype(np.float32) for _ in range(2)]
            beside = rng.standard_normal((m, ldc)).astype(np.float32)
            ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
            outs = {}
            for k in ("ref", "fused", "portable"):
                c = beside.copy()
                assert getattr(lib, f"run_{k}")(ptr(c), ptr(x), ptr(w), ptr(p[0]), ptr(p[1])) == 0
                outs[k] = c
            for k in ("fused", "portable"):
                assert np.array_equal(outs[k].view(np.uint32), outs["ref"].view(np.uint32)), (lanes, m, n, code, k)
            assert np.array_equal(outs["ref"][:, n:], beside[:, n:])
            assert len(np.unique(outs["ref"][:, :n])) > 1         # not one clamped value
