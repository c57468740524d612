"""Blocked float GEMM tiles on the host (ukernels.uses_blocked, rules.GemmModel.blocked_efficiency):
a tile of M pixels x all the output channels whose vectors need more accumulators than the core
has, run by its micro-kernel in blocks of M x (accumulators // M) vectors, the weights of each block
read once, the A tile again per block. Where the map width leaves few pixel counts (13, 7: prime)
and no few-vector tile divides the channels (1000 classes, 232 = 14 x 16 + 8, 116 = 7 x 16 + 4),
the only tiles before were of one narrow vector (13 x 8: 0.46 of the FMA peak by the model) or
of one pixel (1 x 232: 0.25); SqueezeNet 1.1/224's 512 -> 1000 classifier on 13x13 went from about
half of the untuned inference to a sixth.

The micro-kernels are compiled on their own and checked against numpy (odd K, remainders of 8
and 4 lanes, leading strides wider than the tile), and a network whose convolutions, fused
dw+pw and concatenation-fed pointwise take blocked tiles runs from the generated C against
PyTorch."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules import host
from edgecompile.schedules.rules import GemmModel, model_tiles
from edgecompile.schedules.ukernels import F32, blocked_chunks, emit_gemm_c, emit_prelude, mixed_widths, uses_blocked
from edgecompile.targets import load_target
from helpers import compare_with_reference, has_gemm_tile, keep_input_dependence

AVX512 = GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32)
REL = 1e-4


def test_model_prefers_blocked_tiles_only_when_they_are_closer_to_the_peak():
    # SqueezeNet's classifier: 13 x 1000 in blocks of 13 x 32 (+ one of 13 x 8), not 13 x 8
    assert model_tiles(13, 1000, 16, AVX512, 512)[:2] == [(13, 1000), (13, 8)]
    assert AVX512.blocked_efficiency(13, 1000, 16) > 2 * AVX512.efficiency(13, 8, 16)
    assert blocked_chunks(13, 1000, 16, 28) == [[(16, "v")] * 2] * 31 + [[(8, "h")]]
    # ShuffleNet V2 1.0's 116 / 232 / 464 channels at 28 / 14 / 7 pixels
    assert model_tiles(28, 116, 16, AVX512)[0] == (14, 116)
    assert blocked_chunks(14, 116, 16, 28) == [[(16, "v")] * 2] * 3 + [[(16, "v"), (4, "q")]]
    assert model_tiles(14, 232, 16, AVX512)[0] in ((7, 232), (14, 232))
    # tiles that reach the peak already keep winning (a tie goes to the unblocked tile)
    assert model_tiles(14, 512, 16, AVX512)[0] == (14, 32) and model_tiles(7, 1024, 16, AVX512)[0] == (7, 64)
    assert model_tiles(112, 32, 16, AVX512)[0] == (14, 32) and model_tiles(56, 24, 16, AVX512)[0] == (14, 24)
    # every tile divides the map and the channels; a tile that fits the accumulators is no blocked one
    for w, c in [(7, 1000), (13, 24), (55, 116), (1, 1024), (2, 512), (112, 64), (14, 232)]:
        for m, n in model_tiles(w, c, 16, AVX512):
            assert w % m == 0 and c % n == 0
            if uses_blocked(m, n, 16, F32, 28):
                assert n == c and m * len(mixed_widths(n, 16)) > 28
            else:
                assert m * len(mixed_widths(n, 16)) <= 28


@pytest.mark.parametrize("m,n,k", [(13, 1000, 37), (7, 232, 19), (14, 116, 5), (3, 200, 64), (28, 40, 3)])
def test_blocked_microkernel_matches_numpy(tmp_path, m, n, k):
    lanes = 16
    assert uses_blocked(m, n, lanes, F32, 28)
    code = emit_gemm_c(m, n, lanes, F32, 24, mixed=True, block_acc=28)
    assert "blocked tile:" in code and f"ec_gemm_f32_{m}x{n}(" in code
    lda, ldb, ldc = k + 3, n + 8, n + 5      # strides wider than the tile: only the tile is read / written
    src = tmp_path / "k.c"
    src.write_text("#include <stdint.h>\n" + emit_prelude(lanes) + "\n" + code + "\n"
                   f"int32_t run(float *C, const float *A, const float *B) {{ return ec_gemm_f32_{m}x{n}"
                   f"(C, A, B, {k}, {lda}, {ldb}, {ldc}); }}\n")
    cflags = [f for f in load_target("host").cflags if f.startswith(("-O", "-m", "-f"))]
    subprocess.run(["gcc", *cflags, "-shared", "-fPIC", "-o", str(tmp_path / "k.so"), str(src)], check=True)
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.standard_normal((m, lda)).astype(np.float32)
    b = rng.standard_normal((k, ldb)).astype(np.float32)
    c = rng.standard_normal((m, ldc)).astype(np.float32)
    want = c.copy()
    want[:, :n] += a[:, :k].astype(np.float64) @ b[:, :n].astype(np.float64)
    ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    assert lib.run(ptr(c), ptr(a), ptr(b)) == 0
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    assert np.array_equal(c[:, n:], want[:, n:])      # nothing beyond the tile's channels written


class _Fire(nn.Module):
    """SqueezeNet-like: two branches concatenated, then a pointwise convolution on 1000 channels."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, 24, 1), nn.Conv2d(c, 40, 3, padding=1)
        self.head = nn.Conv2d(64, 1000, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return torch.relu(self.head(y)).mean((2, 3))


def test_blocked_tiles_match_pytorch_on_host(tmp_path):
    shape = (1, 11, 13, 13)
    torch.manual_seed(14)
    net = nn.Sequential(
        nn.Conv2d(11, 232, 1), nn.ReLU(),                                        # 13x13, 232: blocked
        nn.Conv2d(232, 80, 3, stride=2, padding=1), nn.ReLU(),                   # 7x7 stride 2, 80
        nn.Conv2d(80, 80, 3, padding=1, groups=80), nn.ReLU(), nn.Conv2d(80, 116, 1), nn.ReLU(),  # dw+pw, 116
        nn.Conv2d(116, 29, 1), nn.ReLU(),                                        # odd channels
        _Fire(29)).eval()
    keep_input_dependence(net)
    source = _from_torch("host_blocked", net, shape, ModelOptions(input_shape=shape, seed=14))
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    model = host.RULES.gemm_model
    blocked = [(w, c) for w, c in [(13, 232), (7, 80), (7, 116), (7, 1000)]
               if uses_blocked(*model_tiles(w, c, host.LANES, model)[0], host.LANES, F32, model.accumulators)]
    for w, c in blocked:
        m, n = model_tiles(w, c, host.LANES, model)[0]
        assert has_gemm_tile(code, m, n), (w, c, m, n)
    if host.VARIANT == "avx512":
        assert blocked == [(13, 232), (7, 80), (7, 116), (7, 1000)]
        assert code.count("blocked tile:") == 4
    kinds = [c["kind"] for c in rep["calls"] if c["schedule"].startswith("host.")]
    assert "dwpw" in kinds and kinds.count("conv_pw") >= 2, [(c["kind"], c["schedule"]) for c in rep["calls"]]
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], shape, REL)
    runner.close()


class _SE(nn.Module):
    """Squeeze-excitation on a SiLU'd map, then the network's global average pool."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.fc1, self.fc2 = nn.Conv2d(c, 5, 1), nn.Conv2d(5, c, 1)
        self.out = nn.Conv2d(c, 24, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.conv(x))
        g = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.out(y * g).mean((2, 3))


@pytest.mark.parametrize("c,hw", [(29, 9), (48, 1)])
def test_channel_innermost_pools_match_pytorch_on_host(tmp_path, c, hw):
    shape = (1, c, hw, hw)
    torch.manual_seed(c)
    net = _SE(c).eval()
    keep_input_dependence(net)
    source = _from_torch(f"host_pool_{c}", net, shape, ModelOptions(input_shape=shape, seed=c))
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    means = [call for call in rep["calls"] if call["kind"] == "mean"]
    assert len(means) == 2 and all(call["schedule"] == "host.schedule_pool" for call in means), \
        [(call["kind"], call["schedule"]) for call in rep["calls"]]
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], shape, REL)
    runner.close()
