"""Host float GEMM tiles chosen by a model of the core (rules.GemmModel, rules.model_tiles): per
reduction step a tile of M pixels x nv vectors issues nv loads and M broadcasts for M x nv FMAs and
streams nv vectors of weights from L2; the tile closest to the FMA peak wins, then the one with
the most accumulators, then the most pixels. Before, the rule took at most 24 accumulators and 8
pixels, most balanced first (2x128 on 14x14 maps, 1x256 on 7x7: 1/2 to 1/4 of the peak).

A small network with the tiles the model picks on 14-, 7-, 4-, 2- and 1-pixel-wide maps (64, 48,
40, 24, 33 output channels: full, 3-vector, mixed-width (16 + 16 + 8, 16 + 8 lanes) and ragged
tiles) runs from the generated C
against PyTorch; model.c must call the micro-kernels the model chose.

Calls of at most 8 reduction steps (a first convolution's 3 channels per tap, the pointwise of a
fused dw+pw kernel on 8 channels) keep to 12 pixels (GemmModel.max_m): gcc spills 16- and
24-pixel tiles of such calls (MobileNet V1 0.25/96 untuned: 24x8 and 24x16 tiles ~8% slower than
the 8x8 and 8x16 before the model, 12x8 and 12x16 ~2% faster); a 48-pixel-wide network of such
calls runs from the generated C against PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules import host
from edgecompile.schedules.rules import tile_candidates, GemmModel, choose_tile, model_tiles
from edgecompile.schedules.ukernels import blocked_chunks, mixed_widths
from edgecompile.targets import load_target
from helpers import compare_with_reference, has_gemm_tile, keep_input_dependence

SHAPE = (1, 16, 14, 14)
REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)
AVX512 = GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32)
AVX2 = GemmModel(registers=16, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32)


def _block_accumulators(m: int, n: int, lanes: int, model: GemmModel) -> int:
    """The accumulators of the largest block of an M x N tile's micro-kernel."""
    return m * max(len(chunk) for chunk in blocked_chunks(m, n, lanes, model.accumulators))


def test_model_picks_tall_tiles_that_reach_the_fma_peak():
    # MobileNet V1 1.0/224's pointwise layers on AVX-512 (the rule before: 2x128, 1x256, 4x64)
    assert model_tiles(14, 512, 16, AVX512)[0] == (14, 32)
    assert model_tiles(7, 1024, 16, AVX512)[0] == (7, 64)
    assert model_tiles(28, 256, 16, AVX512)[0] == (14, 32)
    assert model_tiles(112, 32, 16, AVX512)[0] == (14, 32)
    # the efficiency terms: load issue (16x16: 17 loads per 16 FMAs), L2 (1x256: 16 vectors per FMA row)
    assert AVX512.efficiency(14, 32, 16) == 1.0 and AVX512.efficiency(16, 16, 16) < 1.0
    assert AVX512.efficiency(1, 256, 16) == 0.25 and AVX512.efficiency(2, 128, 16) == 0.5
    # Xception's 728 channels (16 x 45 + 8): 7 x (3 x 16 + 8) mixed-width vectors, not 8-lane ones,
    # the best tile of one block (all 728 channels in blocks of 14 x 32 rank first: test_blocked_tiles)
    one_block = [t for t in model_tiles(14, 728, 16, AVX512) if len(blocked_chunks(*t, 16, 28)) == 1]
    assert mixed_widths(56, 16) == [(16, "v")] * 3 + [(8, "h")] and one_block[0] == (7, 56)
    assert AVX512.efficiency(7, 56, 16) > 1.8 * AVX512.efficiency(14, 8, 16)
    # AVX2: 12 accumulators at most
    assert all(_block_accumulators(m, n, 8, AVX2) <= 12 for m, n in model_tiles(56, 128, 8, AVX2))
    assert model_tiles(56, 128, 8, AVX2)[0] == (4, 16)
    # narrower vectors where the full width does not divide the channels; none (ragged / scalar
    # fallback of choose_tile) where no width does
    assert model_tiles(4, 40, 16, AVX512)[0] == (4, 40) and model_tiles(1, 33, 16, AVX512) == []
    assert mixed_widths(40, 16) == [(16, "v"), (16, "v"), (8, "h")] and mixed_widths(33, 16) == []
    assert mixed_widths(12, 4) == [(4, "v")] * 3      # one width: the uniform kernel (NEON unchanged)
    assert choose_tile(1, 33, 16, 24, 8, ragged=True, model=AVX512) == choose_tile(1, 33, 16, 24, 8, ragged=True)
    # every tile divides the map and the channels, and each of its blocks fits the accumulators
    # (one block but for the blocked tiles of test_blocked_tiles: all the channels, in blocks)
    for w, c in [(7, 1000), (13, 24), (55, 116), (1, 1024), (2, 512), (112, 64)]:
        for m, n in model_tiles(w, c, 16, AVX512):
            assert w % m == 0 and c % n == 0 and _block_accumulators(m, n, 16, AVX512) <= 28


def test_short_reductions_keep_to_12_pixels():
    # MobileNet V1 0.25/96: the first convolution (K = 3 per tap) and the first dw+pw (K = 8)
    assert model_tiles(48, 8, 16, AVX512)[0] == (24, 8) and model_tiles(48, 8, 16, AVX512, k=3)[0] == (12, 8)
    assert model_tiles(48, 16, 16, AVX512, k=8)[0] == (12, 16) and model_tiles(48, 16, 16, AVX512, k=9)[0] == (24, 16)
    assert all(m <= 12 for m, _ in model_tiles(112, 32, 16, AVX512, k=3)) and AVX512.max_m(None) == 28
    # MobileNet V1 1.0/224's long reductions keep their tall tiles
    assert model_tiles(14, 512, 16, AVX512, k=512)[0] == (14, 32)
    assert model_tiles(7, 1024, 16, AVX512, k=1024)[0] == (7, 64)
    assert model_tiles(112, 32, 16, AVX512, k=32)[0] == (14, 32)
    assert all(_block_accumulators(m, n, 8, AVX2) <= 12 and m <= 12 for m, n in model_tiles(48, 16, 8, AVX2, k=8))


def test_short_reduction_tiles_match_pytorch_on_host(tmp_path):
    shape = (1, 3, 96, 96)
    torch.manual_seed(22)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),                            # 48x48, K = 3 per tap
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1)).eval()  # dw+pw, K = 8
    keep_input_dependence(net)
    source = _from_torch("host_short_k", net, shape, ModelOptions(input_shape=shape, seed=22))
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    model = host.RULES.gemm_model
    for c, k in [(8, 3), (16, 8)]:
        m, n = model_tiles(48, c, host.LANES, model, k)[0]
        assert m <= 12 and has_gemm_tile(code, m, n), (c, k, m, n)
    if host.VARIANT == "avx512":
        assert has_gemm_tile(code, 12, 8) and has_gemm_tile(code, 12, 16) and "ec_gemm_f32_24x" not in code
    assert [c["kind"] for c in rep["calls"] if c["schedule"].startswith("host.")][:2] == ["conv", "dwpw"], \
        [(c["kind"], c["schedule"]) for c in rep["calls"]]
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], shape, REL)
    runner.close()


def _source():
    torch.manual_seed(21)
    model = nn.Sequential(
        nn.Conv2d(16, 64, 1), nn.ReLU(),                                              # 14x14, 64
        nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=64), nn.ReLU(), nn.Conv2d(64, 48, 1), nn.ReLU(),  # dw+pw, 7x7
        nn.Conv2d(48, 40, 3, stride=2, padding=1), nn.ReLU(),                         # 4x4, 40
        nn.Conv2d(40, 24, 3, stride=2, padding=1), nn.ReLU(),                         # 2x2, 24
        nn.Conv2d(24, 33, 2), nn.ReLU(),                                              # 1x1, 33
        nn.Flatten(), nn.Linear(33, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("host_tiles", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=21))


def test_model_tiles_match_pytorch_on_host(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    model = host.RULES.gemm_model
    for w, c in [(14, 64), (7, 48), (4, 40), (2, 24)]:
        # the rule's first candidate: a ragged pixel tile (its M x N micro-kernel) where it ranks first
        m, n = tile_candidates(w, c, host.LANES, model.accumulators, 8, True, model, None, True)[0]
        assert has_gemm_tile(code, m, n), (w, c, m, n)
    if host.VARIANT == "avx512":
        assert all(has_gemm_tile(code, *t.split("x")) for t in ("14x32", "7x48", "4x40", "2x24"))
        assert "mixed widths (16 + 16 + 8 lanes)" in code and "mixed widths (16 + 8 lanes)" in code
    convs = [c for c in rep["calls"] if c["kind"] in ("conv", "conv_pw", "dwpw", "fc")]
    assert len(convs) >= 5 and all(c["schedule"].startswith("host.") for c in convs), \
        [(c["kind"], c["schedule"]) for c in rep["calls"]]
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    runner.close()
