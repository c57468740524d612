"""Fused depthwise+pointwise kernels whose pointwise weights do not fit L2 (host.HostRules.schedule_dwpw):
on the host such a kernel takes up to 7 output rows per tile and runs its pointwise GEMM over their
pixels as one run (tiling.tile_dwpw `order` "flat"), channel tile by channel tile: tiles of M pixels
cross the rows and each weight panel streams in once per run. Where two vectors do not divide the
channels (Xception's 728), the tile is a blocked one of all of them over weights stored in chunk
panels of two vectors ("c16" on AVX2: ukernels.chunk_width, host/ukernels.chunked_gemm).

1. The chunk-panel kernels (6, 4, 2, 7 and 1 pixels x 360, 728 and 1000 channels, AVX2's 8 lanes and
   12 accumulators) over weights in chunk panels give the same bits as the row-major blocked kernel
   over the same weights, and C += A B within float rounding.
2. A host build of a network with large fused kernels on a 14 x 14 map (376 -> 376 channels with a
   residual add and no depthwise epilogue, 566 KB of weights; 376 -> 512, 770 KB; past the 512 KiB
   L2 the AVX2 model assumes, set so on an AVX-512 machine too) and a small one (64 -> 64): the
   large ones tile 98-pixel runs (7 rows), the 376-channel one (on AVX2) in blocked 6 x 376 tiles
   over chunk panels, the small one is the kernel of the build without the rule; the outputs are
   the same bits as that build's and match PyTorch on outputs that depend on the input. Its 1x1
   convolutions over 1000 channels (160 -> 1000 over a concat computed in the same kernel, and
   1000 -> 1000) run over the map's 196 pixels as one run; a small one (64 -> 376) is untouched.
3. Pointwise GEMMs over ragged channels (58, 116) run over runs of pixels the same way."""

from __future__ import annotations

import ctypes
import re
import subprocess
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.schedules import host
from edgecompile.schedules.host import ukernels as host_ukernels
from edgecompile.schedules.ukernels import F32, emit_blocked_gemm_c, emit_prelude, order_panel
from helpers import assert_same_bits_and_close, host_builds_with_and_without, keep_input_dependence, use_host_variant

REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)
AVX2 = replace(host.RULES.gemm_model, registers=16, reserved=4, chunk_panels=True)    # 12 accumulators


def test_chunk_panel_kernels_equal_the_row_major_blocked_kernel(tmp_path):
    cases = [(6, 728), (4, 728), (2, 728), (7, 360), (1, 1000), (6, 1000)]
    parts = ["#include <stdint.h>", emit_prelude(8)]
    for m, n in cases:
        assert host_ukernels.chunk_panels(n, 8, F32, AVX2) == 16
        chunked = host_ukernels.chunked_gemm(m, n, 8, F32, AVX2)
        assert "chunk panels" in chunked
        parts.append(chunked.replace(f"ec_gemm_f32_{m}x{n}(", f"chunked_{m}x{n}("))
        parts.append(emit_blocked_gemm_c(m, n, 8, F32, AVX2.accumulators).replace(f"ec_gemm_f32_{m}x{n}(", f"rows_{m}x{n}("))
        for kind in ("chunked", "rows"):
            parts.append(f"int32_t run_{kind}_{m}x{n}(float *C, const float *A, const float *B, int32_t K, int64_t lda, "
                         f"int64_t ldb, int64_t ldc) {{ return {kind}_{m}x{n}(C, A, B, K, lda, ldb, ldc); }}")
    (tmp_path / "k.c").write_text("\n\n".join(parts))
    subprocess.run(["gcc", "-O2", "-mavx2", "-mfma", "-shared", "-fPIC", "-o", str(tmp_path / "k.so"),
                    str(tmp_path / "k.c")], check=True)
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    rng = np.random.default_rng(3)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)      # noqa: E731
    for m, n in cases:
        k = 37
        a = rng.standard_normal((m, k + 3)).astype(np.float32)       # lda > K
        b = rng.standard_normal((k, n)).astype(np.float32)
        c0 = rng.standard_normal((m, n + 5)).astype(np.float32)      # ldc > N: the columns past N untouched
        chunked, rows = c0.copy(), c0.copy()
        panels = np.ascontiguousarray(order_panel(b, "c16"))
        args = (ctypes.c_int32(k), ctypes.c_int64(k + 3), ctypes.c_int64(n), ctypes.c_int64(n + 5))
        getattr(lib, f"run_chunked_{m}x{n}")(ptr(chunked), ptr(a), ptr(panels), *args)
        getattr(lib, f"run_rows_{m}x{n}")(ptr(rows), ptr(a), ptr(b), *args)
        assert np.array_equal(chunked.view(np.uint32), rows.view(np.uint32)), (m, n)
        expected = c0.astype(np.float64)
        expected[:, :n] += a[:, :k].astype(np.float64) @ b.astype(np.float64)
        assert np.allclose(chunked, expected, rtol=1e-5, atol=1e-4), (m, n)
        assert np.array_equal(chunked[:, n:], c0[:, n:])


def _separable(c_in: int, c_out: int, dw_act: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in), *([nn.ReLU()] if dw_act else []),
                         nn.Conv2d(c_in, c_out, 1))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = _separable(channels, channels, dw_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class _Fire(nn.Module):
    """SqueezeNet's expand pair: a 1x1 and a 3x3 convolution concatenated (the next kernel's producer)."""

    def __init__(self, c_in: int, each: int) -> None:
        super().__init__()
        self.one, self.three = nn.Conv2d(c_in, each, 1), nn.Conv2d(c_in, each, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.one(x)), torch.relu(self.three(x))], 1)


def _network() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), _separable(64, 64), nn.ReLU(),
                         nn.Conv2d(64, 376, 1), nn.ReLU(), _Residual(376), _separable(376, 512), nn.ReLU(),
                         _Fire(512, 80), nn.Conv2d(160, 1000, 1), nn.ReLU(), nn.Conv2d(1000, 1000, 1)).eval()


def _kernel(code: str, name: str) -> str:
    start = code.index(f"int32_t {name}(")
    return code[start:code.index("\n}\n", start)]


def test_large_pointwise_weights_stream_in_runs_of_seven_rows(tmp_path, monkeypatch):
    shape = (1, 3, 14, 14)
    net = _network()
    keep_input_dependence(net)
    source = _from_torch("streamed_dwpw", net, shape, ModelOptions(input_shape=shape, seed=5))
    use_host_variant(monkeypatch, "avx2")     # the rule's L2 is AVX2's (not modelled on AVX-512)
    (on, code), (off, off_code) = host_builds_with_and_without(tmp_path, monkeypatch, source, host.RULES,
                                                               "stream_weights")
    names = sorted(set(re.findall(r"\b(ec_dwpw_f32_14x14x\d+(?:_\d+)?)\(", code)))
    assert len(names) == 3, names
    for name in names:
        kernel, before = _kernel(code, name), _kernel(off_code, name)
        if "x64" in name:
            assert kernel == before, name
            continue
        tiles = set(re.findall(r"\bec_gemm_f32_(\d+)x(\d+)\w*\(", kernel))
        assert tiles and all(p == "98" for p, _ in tiles), (name, tiles)       # 7 rows x 14 pixels
        assert not re.search(r"\bec_gemm_f32_(7|14)x", kernel), name
        if name.endswith("x376"):
            assert tiles == {("98", "376")}, tiles
            assert re.search(r"blocked tile over chunk panels[^\n]*\n(/\*[^\n]*\n)?static inline int32_t "
                             r"ec_gemm_f32_6x376_z", code)
    # 1x1 convolutions: 64 -> 376 (96 KB of weights) as before; 160 -> 1000 over the concat of
    # SqueezeNet-like expand convolutions (its producer) and 1000 -> 1000 (640 KB and 4 MB) over the
    # map's 196 pixels as one run, blocked over chunk panels on AVX2
    assert _kernel(code, "ec_conv_pw_f32_k1x1s1_14x14x376") == _kernel(off_code, "ec_conv_pw_f32_k1x1s1_14x14x376")
    large = sorted(set(re.findall(r"\b(ec_conv_pw_f32_k1x1s1_14x14x1000(?:_\d+)?)\(", code)))
    assert len(large) == 2, large
    # the first reads both expand outputs: the concat is its producer, computed in the kernel
    assert re.match(r"int32_t \w+\(float\* restrict \w+, float\* restrict \w+, float\* restrict param_0",
                    _kernel(code, large[0])), _kernel(code, large[0])[:200]
    for name in large:
        tiles = set(re.findall(r"\bec_gemm_f32_(\d+)x(\d+)\w*\(", _kernel(code, name)))
        assert tiles == {("196", "1000")}, (name, tiles)
    assert_same_bits_and_close(on, off, source, shape, REL)


class _GroupUnit(nn.Module):
    """A ShuffleNet V1 unit's pointwise group convolutions (3 groups) around a depthwise one."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1, groups=3)
        self.dw = nn.Conv2d(channels // 4, channels // 4, 3, padding=1, groups=channels // 4)
        self.expand = nn.Conv2d(channels // 4, channels, 1, groups=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.expand(self.dw(torch.relu(self.reduce(x)))))


def test_group_convolutions_run_over_the_whole_map(tmp_path, monkeypatch):
    """1x1 group convolutions (host.HostRules.flat_group_convs, set on AVX2; here on any host): each
    group's GEMM over the 7 x 7 map's 49 pixels as one run instead of row by row; the same bits as
    the build without it, and PyTorch's outputs."""
    shape = (1, 3, 7, 7)
    torch.manual_seed(11)
    net = nn.Sequential(nn.Conv2d(3, 240, 3, padding=1), nn.ReLU(), _GroupUnit(240), _GroupUnit(240)).eval()
    keep_input_dependence(net)
    source = _from_torch("flat_groups", net, shape, ModelOptions(input_shape=shape, seed=6))
    use_host_variant(monkeypatch, "avx2")     # as measured (on AVX-512 the model's tiles divide 49: 7 x 80)
    (on, code), (off, off_code) = host_builds_with_and_without(tmp_path, monkeypatch, source, host.RULES,
                                                               "flat_group_convs")
    names = sorted(set(re.findall(r"\b(ec_conv_group_f32_k1x1s1_7x7x\d+(?:_\d+)?)\(", code)))
    assert len(names) >= 2, names
    for name in names:
        tiles = set(re.findall(r"\bec_gemm_f32_(\d+)x(\d+)\w*\(", _kernel(code, name)))
        before = set(re.findall(r"\bec_gemm_f32_(\d+)x(\d+)\w*\(", _kernel(off_code, name)))
        assert tiles and all(p == "49" for p, _ in tiles), (name, tiles)
        assert not any(p == "49" for p, _ in before), (name, before)
    assert_same_bits_and_close(on, off, source, shape, REL)


def test_ragged_pointwise_channels_run_over_rows(tmp_path, monkeypatch):
    """Pointwise GEMMs over more than two vectors of channels that whole vectors do not divide
    (ShuffleNet V2's 58 and 116; host.HostRules.ragged_runs, set on AVX2; here on any host): a 1x1
    convolution's over the 14 x 14 map's 196 pixels as one run, a fused dw+pw kernel's over 7 rows
    (98 pixels), in blocked tiles of all the channels, instead of tiles within a row; a 64-channel
    one is untouched. The same bits as the build without it, and PyTorch's outputs."""
    shape = (1, 3, 14, 14)
    torch.manual_seed(13)
    net = nn.Sequential(nn.Conv2d(3, 58, 3, padding=1), nn.ReLU(), nn.Conv2d(58, 58, 1), nn.ReLU(),
                        _separable(58, 116), nn.ReLU(), nn.Conv2d(116, 116, 1), nn.ReLU(),
                        _separable(116, 64), nn.ReLU(), nn.Conv2d(64, 64, 1)).eval()
    keep_input_dependence(net)
    source = _from_torch("ragged_runs", net, shape, ModelOptions(input_shape=shape, seed=8))
    use_host_variant(monkeypatch, "avx2")     # as measured (on AVX-512 far more channel counts are ragged)
    (on, code), (off, off_code) = host_builds_with_and_without(tmp_path, monkeypatch, source, host.RULES,
                                                               "ragged_runs")
    names = sorted(set(re.findall(r"\b(ec_(?:conv_pw|dwpw)_f32_\w*14x14x(?:58|116|64)(?:_\d+)?)\(", code)))
    assert len(names) == 5, names          # 1x1: 58, 116, 64 outputs; dw+pw: 58 -> 116, 116 -> 64
    for name in names:
        tiles = set(re.findall(r"\bec_gemm_f32_(\d+)x(\d+)\w*\(", _kernel(code, name)))
        if name.endswith("x64"):
            assert _kernel(code, name) == _kernel(off_code, name), name
            continue
        before = set(re.findall(r"\bec_gemm_f32_(\d+)x(\d+)\w*\(", _kernel(off_code, name)))
        run = "98" if name.startswith("ec_dwpw") else "196"
        assert tiles and all(p == run for p, _ in tiles), (name, tiles)
        assert not any(p == run for p, _ in before), (name, before)
    assert_same_bits_and_close(on, off, source, shape, REL)


def _gemm_tiles(code: str, pattern: str) -> dict[str, set[tuple[str, str]]]:
    names = sorted(set(re.findall(r"\b(" + pattern + r")\(", code)))
    return {n: set(re.findall(r"\bec_gemm_f32_(\d+)x(\d+)\w*\(", _kernel(code, n))) for n in names}


def test_avx512_ragged_channels_beyond_l2_run_in_narrow_channel_tiles(tmp_path, monkeypatch):
    """AVX-512 (host.HostRules.ragged_stream_bytes): a pointwise GEMM over channels that 16 lanes do
    not divide whose weights exceed 1 MiB (Xception's 728 -> 728, 2.1 MB; SqueezeNet's 512 -> 1000
    classifier, 2 MB) runs over runs of pixels in tiles of 3.5 or 2.5 vectors (7 x 56 over 7 rows
    of a fused kernel, 9 x 40 over the whole 14 x 14 map) instead of a blocked tile of all its
    channels per row; smaller (256 -> 728, 745 KB) or whole-vector (512 -> 512) GEMMs are untouched.
    The C is checked on any host; the outputs (same bits as without the rule, PyTorch's) where
    this machine runs AVX-512."""
    from edgecompile.compiler import BuildOptions, Progress, compile_model
    from edgecompile.targets import load_target

    shape = (1, 3, 14, 14)
    torch.manual_seed(17)
    net = nn.Sequential(nn.Conv2d(3, 256, 3, padding=1), nn.ReLU(), _separable(256, 728), nn.ReLU(),
                        _separable(728, 728), nn.ReLU(), _separable(728, 512), nn.ReLU(), _separable(512, 512),
                        nn.ReLU(), nn.Conv2d(512, 1000, 1)).eval()
    keep_input_dependence(net)
    source = _from_torch("ragged_streams", net, shape, ModelOptions(input_shape=shape, seed=9))
    rules = use_host_variant(monkeypatch, "avx512")
    codes = {}
    for on in (True, False):
        monkeypatch.setattr(rules, "ragged_stream_bytes", host.AVX512_L2_BYTES if on else 0)
        codes[on] = compile_model(source, load_target("host"), BuildOptions(compare_unfused=False),
                                  Progress(quiet=True)).files["model.c"].decode()
    on, off = (_gemm_tiles(codes[v], r"ec_(?:dwpw|conv_pw)_f32_\w+") for v in (True, False))
    assert on.keys() == off.keys()
    assert on["ec_dwpw_f32_14x14x728_2"] == {("7", "56")}, on          # 728 -> 728: 7 x 56 tiles
    assert off["ec_dwpw_f32_14x14x728_2"] == {("14", "728")}, off
    assert on["ec_dwpw_f32_14x14x728"] == off["ec_dwpw_f32_14x14x728"]                # 256 -> 728: 745 KB
    assert on["ec_dwpw_f32_14x14x512"] == off["ec_dwpw_f32_14x14x512"]                # 728 -> 512, 512 -> 512
    assert on["ec_conv_pw_f32_k1x1s1_14x14x1000"] == {("196", "40")}, on      # 512 -> 1000: the map, 9 x 40
    assert off["ec_conv_pw_f32_k1x1s1_14x14x1000"] == {("7", "1000")}, off
    if " avx512f" not in open("/proc/cpuinfo").read():
        return
    monkeypatch.setattr(rules, "ragged_stream_bytes", host.AVX512_L2_BYTES)
    (a, _), (b, _) = host_builds_with_and_without(tmp_path, monkeypatch, source, rules, "ragged_stream_bytes")
    assert_same_bits_and_close(a, b, source, shape, REL)


def test_tuning_space_starts_with_the_untuned_runs(monkeypatch):
    """The tuner's space (schedules.space) of a kernel whose GEMM runs over a run of pixels untuned
    (streamed fused and 1x1 kernels, 1x1 group convolutions: host.HostRules.own_config) starts with
    that configuration, so tuning never loses the untuned schedule, then tries runs in the model's
    next tiles; the rule accepts each, and the first schedules the kernel exactly as the untuned build
    does. Kernels the rule runs row by row get no run."""
    import tvm_ffi
    from tvm import s_tir

    from edgecompile import schedules
    from edgecompile.compiler import BuildOptions, Progress, _graph
    from edgecompile.ir import passes
    from edgecompile.ir.kernel import analyze
    from edgecompile.ir.operators import Kind
    from edgecompile.ir.program import extract_program
    from edgecompile.targets import load_target

    shape = (1, 3, 14, 14)
    torch.manual_seed(11)
    net = nn.Sequential(_network()[:-1], nn.Conv2d(1000, 240, 1), nn.ReLU(), _GroupUnit(240)).eval()
    source = _from_torch("tuning_runs", net, shape, ModelOptions(input_shape=shape, seed=5))
    if not host.RULES.gemm_model.l2_bytes:
        monkeypatch.setattr(host.RULES, "gemm_model", replace(host.RULES.gemm_model, l2_bytes=512 << 10))
    monkeypatch.setattr(host.RULES, "flat_group_convs", True)
    graph, _ = _graph(source, load_target("host"), BuildOptions(), Progress(quiet=True))
    mod = passes.lower_graph(graph, fuse_dwpw=True)
    runs = {}
    for name in dict.fromkeys(c.kernel for c in extract_program(mod).calls if c.builtin is None):
        func, info = mod[name], analyze(mod[name])
        configs, _ = schedules.space(func, "host")
        flat = [c for c in configs if c.get("order") == "flat"]
        runs[info.kind] = runs.get(info.kind, 0) + bool(flat)
        if not flat:
            continue
        assert configs[0]["order"] == "flat" and len(flat) >= 2, (name, configs)
        assert len({str(c) for c in configs}) == len(configs), (name, configs)
        assert all(schedules.apply_config(s_tir.Schedule(func), analyze(func), "host", c) for c in flat), name
        untuned, _ = schedules.schedule(func, "host", name=name)
        first, _ = schedules.schedule(func, "host", config=configs[0], name=name)
        assert tvm_ffi.structural_equal(untuned, first), name
        second, _ = schedules.schedule(func, "host", config=flat[1], name=name)
        assert not tvm_ffi.structural_equal(untuned, second), name
    # the 376 -> 376 and 376 -> 512 fused kernels, the 160 -> 1000 and 1000 -> 240 1x1 ones (640 and
    # 960 KB of weights), both group convolutions; not the 64 -> 64 fused kernel, the 64 -> 376 1x1 one
    # (96 KB) or the 3x3 ones
    assert {k: n for k, n in runs.items() if n} == {Kind.DWPW: 2, Kind.CONV_PW: 2, Kind.CONV_GROUP: 2}, runs
    assert runs[Kind.CONV] == 0, runs
