"""Float GEMM tiles of layers whose weights do not fit L2 (rules.GemmModel.for_weights): such a
tile reads all K x N weights from L3 once per M pixels, so the model rates them at
`l3_bytes_per_cycle` and picks tiles of more pixels over [K][N] panels instead of a few pixels
over all the channels. Xception/224's 728 -> 728 pointwise convolutions (2.1 MB of weights) took
2 x 728 tiles on this AVX2 host (all the weights from L3 every 2 pixels); 7 x 8 tiles made the
untuned inference 0.68x (thread CPU time, interleaved builds in one process, medians).

A small network whose fused depthwise + 384 -> 384 pointwise (576 KiB of weights) and plain
pointwise 384 -> 448 exceed a 512 KiB L2 runs from the generated C against PyTorch, with the
tiles the host's model picks for its weights."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules import host
from edgecompile.schedules.rules import GemmModel, model_tiles, tile_candidates
from edgecompile.targets import load_target
from helpers import compare_with_reference, has_gemm_tile, keep_input_dependence

AVX2 = GemmModel(registers=16, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32,
                 overlap_tail=True)
AVX2_L2 = replace(AVX2, l2_bytes=512 << 10, l3_bytes_per_cycle=8)
SHAPE = (1, 32, 14, 14)
REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)


def test_weights_beyond_l2_take_tiles_of_more_pixels():
    # Xception's 14x14 and 28x28 728 -> 728 and 14x14 728 -> 1024: all the channels every 2 or 4
    # pixels without the L2 size, 7 pixels x one [K][8] panel with it
    assert model_tiles(14, 728, 8, AVX2, 728)[0] == (2, 728)
    assert model_tiles(14, 728, 8, AVX2_L2, 728)[0] == (7, 8)
    assert tile_candidates(28, 728, 8, 12, 8, True, AVX2_L2, 728, True)[0] == (7, 8)
    assert tile_candidates(14, 1024, 8, 12, 8, True, AVX2_L2, 728, True)[0] == (7, 8)
    # weights that fit (K x N x 4 <= 512 KiB) keep the tiles they had
    for w, c, k in [(55, 256, 256), (109, 128, 128), (28, 256, 128), (14, 728, 180)]:
        assert model_tiles(w, c, 8, AVX2_L2, k) == model_tiles(w, c, 8, AVX2, k), (w, c, k)
    assert AVX2_L2.for_weights(180, 728) is AVX2_L2 and AVX2_L2.for_weights(None, 728) is AVX2_L2
    assert AVX2_L2.for_weights(728, 728).l2_bytes_per_cycle == 8
    assert AVX2.for_weights(728, 728) is AVX2          # no L2 size: not modelled (the Cortex-A model)


def _source():
    torch.manual_seed(25)
    net = nn.Sequential(
        nn.Conv2d(32, 384, 1), nn.ReLU(),                                                  # 14x14, 48 KiB
        nn.Conv2d(384, 384, 3, padding=1, groups=384), nn.ReLU(), nn.Conv2d(384, 384, 1), nn.ReLU(),  # dw+pw, 576 KiB
        nn.Conv2d(384, 448, 1)).eval()                                                     # 672 KiB
    keep_input_dependence(net)
    return _from_torch("host_l3_weights", net, SHAPE, ModelOptions(input_shape=SHAPE, seed=25))


def test_l3_weight_tiles_match_pytorch_on_host(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    model = host.RULES.gemm_model
    for c, k in [(384, 384), (448, 384)]:
        m, n = tile_candidates(14, c, host.LANES, model.accumulators, 8, True, model, k, True)[0]
        assert has_gemm_tile(code, m, n), (c, k, m, n)
        if model.l2_bytes and k * c * 4 > model.l2_bytes:
            assert m >= 6 and n < c, (c, k, m, n)       # a panel of the channels, not all of them
    kinds = [c["kind"] for c in rep["calls"]]
    assert "dwpw" in kinds and all(c["schedule"].startswith("host.") for c in rep["calls"]
                                   if c["kind"] in ("conv_pw", "dwpw")), [(c["kind"], c["schedule"]) for c in rep["calls"]]
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    runner.close()
