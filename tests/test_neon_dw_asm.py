"""Float depthwise tiles on the emulated Raspberry Pi are one inline-asm block per channel group
(schedules/cortex_a/ukernels.py `_dw_f32_asm`): per kernel row, each tap's weight vectors and each
input pixel of the row loaded once (`ld1` of the group's registers, post-indexed by the pixel
stride) and multiplied into every output pixel whose window holds it.

1. The channel groups: as few as the 32 registers allow (accumulators, a kernel row of weights,
   one input pixel), at most 4 vectors each, balanced.
2. A network of depthwise layers (3x3 and 5x5, strides 1 and 2, padding, maps down to 1x1; fused
   with their pointwise convolution and on their own; channel counts of whole vectors, including
   tiles split into two channel groups, and odd ones that keep the generic ragged kernel) built
   for rpi4: the float depthwise kernels of whole vectors are the asm ones, of up to 16
   accumulator vectors, and the outputs match PyTorch on the emulated Pi, on outputs that depend
   on the input."""

from __future__ import annotations

import re

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.schedules.cortex_a import RULES
from edgecompile.schedules.cortex_a.ukernels import dw_f32_groups, dw_f32_instructions
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, dwpw_layers, keep_input_dependence, output_spread, random_input

SHAPE = (1, 3, 15, 13)
REL = 1e-4


def test_dw_f32_groups_fit_the_registers():
    assert dw_f32_groups(4, 3, 3) == [3]                 # 4 x 12, 3x3: 3 (4 + 3 + 1) = 24 registers
    assert dw_f32_groups(2, 6, 3) == [3, 3]              # 2 x 24: 6 x 6 = 36 > 32, two groups
    assert dw_f32_groups(4, 3, 5) == [3]                 # 5x5: 3 x 10 = 30
    assert dw_f32_groups(8, 5, 5) == [2, 2, 1]           # 14 registers per vector: 2 at a time
    assert dw_f32_groups(8, 8, 3) == [2, 2, 2, 2]
    assert dw_f32_groups(40, 1, 3) == []
    for m, nv, kw in [(1, 7, 3), (6, 2, 3), (7, 4, 5), (3, 10, 3)]:
        groups = dw_f32_groups(m, nv, kw)
        assert sum(groups) == nv and max(groups) - min(groups) <= 1 and max(groups) <= 4
        assert all(g * (m + kw + 1) <= 32 for g in groups)


def test_float_dw_tile_choice():
    """The float depthwise tile with the fewest instructions per row by the asm's count: ShuffleNet
    V1's 28 x 60 rows take 4 x 12 (the accumulator ranking of the generic rule, at 16 vectors, took
    one pixel of all 60 channels first and then 8 + 8 + 8 + 4 pixels of one vector); a prime row
    a ragged pixel tile; a 14-pixel row 2 x 32 rather than 4 + 4 + 4 + 2 pixels; channels of no
    whole vectors are left to the generic rule."""
    assert RULES.float_dw_tile(28, 60, (3, 3), 1) == (4, 12)
    assert RULES.float_dw_tile(56, 144, (3, 3), 1) == (4, 16)
    assert RULES.float_dw_tile(19, 728, (3, 3), 1) == (8, 8)
    assert RULES.float_dw_tile(14, 384, (3, 3), 1) == (2, 32)
    assert RULES.float_dw_tile(7, 1152, (5, 5), 1) == (7, 8)
    assert RULES.float_dw_tile(28, 58, (3, 3), 1) is None
    assert dw_f32_instructions(4, 3, 3, 3, 1) == 6 + 8 + 3 * (3 + 6 + 36) + 4 + 4


def _source():
    torch.manual_seed(71)
    model = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(),                           # 15 x 13 x 24
        *dwpw_layers(24, 48, 3, 1), nn.ReLU(),                                     # 15 x 13 x 48
        *dwpw_layers(48, 20, 5, 2), nn.ReLU(),                                     # 8 x 7 x 20
        nn.Conv2d(20, 20, 5, stride=1, padding=2, groups=20), nn.ReLU(),     # on its own (followed by a depthwise)
        nn.Conv2d(20, 20, 5, stride=2, padding=2, groups=20), nn.ReLU(),     # 4 x 4
        *dwpw_layers(20, 36, 3, 2), nn.ReLU(),                                     # 2 x 2 x 36
        *dwpw_layers(36, 13, 3, 2),                                                # 1 x 1 x 13
        *dwpw_layers(13, 16, 3, 1), nn.ReLU(),                                     # 13 channels: the generic ragged kernel
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("neon_dw_asm", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=71))


def test_float_depthwise_asm_matches_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("rpi4"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    kernels = dict(re.findall(r"static inline int32_t (ec_dw_f32_\w+?)\(.*?\n(.*?)\n}\n", code, re.S))
    assert kernels
    asm = {name for name, body in kernels.items() if "__asm__" in body}
    whole = {name for name in kernels if int(re.match(r"ec_dw_f32_\d+x(\d+)_", name).group(1)) % 4 == 0
             and "_p" not in name}
    assert asm == whole, (sorted(asm), sorted(whole))
    assert any(body.count("__asm__") > 1 for body in kernels.values())          # a tile in two channel groups
    assert {re.search(r"_k(\d)x\d(s\d)", n).groups() for n in asm} >= {("3", "s1"), ("3", "s2"), ("5", "s1"), ("5", "s2")}
    # up to CortexARules.FLOAT_DW_ACC = 16 accumulator vectors (12 before), chosen by float_dw_tile
    acc = {name: int(m) * int(n) // 4 for name in asm for m, n in [re.match(r"ec_dw_f32_(\d+)x(\d+)_", name).groups()]}
    assert 12 < max(acc.values()) <= 16, acc
    kinds = {c["kind"] for c in rep["calls"]}
    assert {"dwpw", "conv_dw"} <= kinds, kinds
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
