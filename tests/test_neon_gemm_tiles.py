"""Float GEMM tiles on the emulated Raspberry Pi are ranked by a model of the NEON micro-kernel in
instructions (schedules/cortex_a NeonGemmModel: fmla by element, weight-vector loads, activation
loads, the registers), not by the most accumulators: wide one-pixel tiles (1 x 40 on a 13-pixel
row, 1 x 72 on a 7-pixel one) load a weight vector per fmla, or spill.

A small network on odd sizes takes the model's tiles (2 x 40 and 5 x 20 ragged pixel tiles on the
13-pixel rows of the first conv and a pointwise, 7 x 12 with weight vectors reloaded in pairs on
the 7-pixel rows after the stride-2 conv) and must match PyTorch on the emulated Pi, on outputs
that depend on the input."""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.schedules.cortex_a import NEON_GEMM
from edgecompile.schedules.rules import choose_tile
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, keep_input_dependence, output_spread, random_input

SHAPE = (1, 3, 11, 13)
REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)


def test_neon_model_tiles():
    """The model's choices on the layers that motivated it, against the most-accumulators rule."""
    k = lambda steps: replace(NEON_GEMM, k=steps, vector_a=steps >= 4)     # noqa: E731 - the model for `steps`
    assert choose_tile(7, 1152, 4, 20, 8) == (1, 72)                      # the rule
    # 14 accumulators in the asm loop, each row's 8 activations by one ldp (14 + 14 + 2 registers):
    # per 8 steps 7 activation loads for 112 fmla (7 x 12: 14 loads for 168, weights reloaded in pairs)
    assert choose_tile(7, 1152, 4, 20, 8, True, k(192), 192) == (7, 8)
    assert choose_tile(13, 1000, 4, 20, 8) == (1, 40)
    # SqueezeNet's 13-pixel classifier rows: asm 7 x 8 tiles (7 + 6 pixels), not the C 13 x 4
    assert choose_tile(13, 1000, 4, 20, 8, True, k(512), 512, True) == (7, 8)
    assert choose_tile(55, 64, 4, 20, 8, True, k(16), 16) == (5, 16)      # kept where it was best
    assert choose_tile(28, 240, 4, 20, 8, True, k(40), 40) == (4, 24)
    assert NEON_GEMM.efficiency(11, 8, 4) == 0.0                          # C: 22 + 11 + 2 registers
    assert NEON_GEMM.efficiency(6, 20, 4) == 0.0                          # C: 30 + 6 + 5
    assert NEON_GEMM.efficiency(7, 8, 4) > NEON_GEMM.efficiency(7, 12, 4) > NEON_GEMM.efficiency(2, 32, 4) \
        > NEON_GEMM.efficiency(1, 40, 4)
    assert NEON_GEMM.efficiency(13, 4, 4) < NEON_GEMM.efficiency(7, 8, 4)   # past ASM_MAX_M: the C kernel
    # fewer than 4 reduction steps per call (a first conv's 3 channels per tap): all in the asm's
    # one-step tail: SqueezeNet's 111 x 111 x 64 first conv
    assert choose_tile(111, 64, 4, 20, 8, True, k(3), 3) == (3, 32)
    # calls of at most 8 reduction steps keep to 12 pixels (GemmModel.max_m)
    assert choose_tile(13, 40, 4, 20, 8, True, k(3), 3) == (1, 40)
    # an epilogue calling exp (SiLU): no 3-vector tiles (gcc's vectorized ec_expf spills its constants)
    silu = replace(k(240), even_vectors=True)
    assert choose_tile(14, 60, 4, 20, 8, True, k(240), 240) == (7, 12)
    assert choose_tile(14, 60, 4, 20, 8, True, silu, 240) == (7, 4)
    # no multiple of 4 divides the channels: the ragged tile, as before
    assert choose_tile(28, 58, 4, 20, 8, True, k(64), 64) == (4, 58)


def _source():
    torch.manual_seed(23)
    model = nn.Sequential(
        nn.Conv2d(3, 40, 3, padding=1), nn.ReLU(),                # 11 x 13 x 40, a kernel row of 9 steps per call: 5 x 20 (+ 3 x 20)
        nn.Conv2d(40, 40, 1), nn.ReLU6(),                         # pointwise on 13-pixel rows: 5 x 20 (+ 3 x 20)
        nn.Conv2d(40, 48, 3, stride=2, padding=1), nn.ReLU(),     # 6 x 7 x 48: 7 x 12
        nn.Conv2d(48, 36, 1), nn.ReLU(),                          # 7 x 12
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(36, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("neon_tiles", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=23))


def test_neon_model_tiles_match_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("rpi4"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    tiles = set(re.findall(r"ec_gemm_f32_(\d+x\d+(?:_p\d+)?)\(", code))
    assert {"13x20_p5", "3x20", "7x12"} <= tiles, sorted(tiles)
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
