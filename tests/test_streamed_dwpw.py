"""Fused depthwise+pointwise kernels whose pointwise weights do not fit L2 (host.HostRules.schedule_dwpw):
on the host such a kernel takes up to 7 output rows per tile and runs its pointwise tiles channel tile
by channel tile over all of their pixels (tiling.tile_dwpw `order` "channels"), so that each weight
panel streams in once per tile of rows instead of once per pixel tile.

A host build of a network with two such kernels (384 -> 384 and 384 -> 512 channels, 590 KB and
786 KB of float weights, past the 512 KiB L2 the AVX2 model assumes; the model's L2 is set so on an
AVX-512 machine too) and a small one (64 -> 64, untouched): the large ones run 7 rows per tile with
their channel tiles outermost, the small one keeps its rows and order, the same bits as the build
without the rule, and the outputs match PyTorch on outputs that depend on the input."""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn

from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.schedules import host
from helpers import assert_same_bits_and_close, host_builds_with_and_without, keep_input_dependence

REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)


def _separable(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in), nn.ReLU(),
                         nn.Conv2d(c_in, c_out, 1), nn.ReLU())


def _network() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), _separable(64, 64),
                         nn.Conv2d(64, 384, 1), nn.ReLU(), _separable(384, 384), _separable(384, 512)).eval()


def _kernel(code: str, name: str) -> str:
    start = code.index(f"int32_t {name}(")
    return code[start:code.index("\n}\n", start)]


def test_large_pointwise_weights_stream_once_per_seven_rows(tmp_path, monkeypatch):
    shape = (1, 3, 14, 14)
    net = _network()
    keep_input_dependence(net)
    source = _from_torch("streamed_dwpw", net, shape, ModelOptions(input_shape=shape, seed=5))
    if not host.RULES.gemm_model.l2_bytes:      # AVX-512: the L2 the AVX2 model assumes
        monkeypatch.setattr(host.RULES, "gemm_model", replace(host.RULES.gemm_model, l2_bytes=512 << 10))
    (on, code), (off, off_code) = host_builds_with_and_without(tmp_path, monkeypatch, source, host.RULES,
                                                               "stream_dwpw")
    names = sorted(set(re.findall(r"\b(ec_dwpw_f32_14x14x\d+(?:_\d+)?)\(", code)))
    assert len(names) == 3, names
    for name in names:
        kernel, before = _kernel(code, name), _kernel(off_code, name)
        large = "x64" not in name
        # the row tiles: 14 / 7 = 2 with the rule, 14 / 2 = 7 without it
        loops = re.findall(r"for \(int32_t (\w+) = 0; \1 < (\d+); \+\+\1\)", kernel)
        assert loops[0][1] == ("2" if large else "7"), (name, loops[:3])
        assert (kernel == before) != large, name
        if large:   # the pointwise channel tiles outside the pixel tiles: a GEMM call under the rows loops
            call = kernel.index("ec_gemm_f32_")
            outer = [v for v, n in loops if kernel.index(f"{v} < {n}") < call]
            channel_loop = next(v for v in outer if v.startswith("ff"))
            rows_loop = next(v for v in outer if v.startswith("yy") and v != loops[0][0])
            assert kernel.index(f"{channel_loop} < ") < kernel.index(f"{rows_loop} < "), (name, outer)
    assert_same_bits_and_close(on, off, source, shape, REL)
