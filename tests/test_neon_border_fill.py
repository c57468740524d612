"""Padded float windows on the emulated Raspberry Pi are zeroed only where their in-bound copy does
not write (codegen.lower.border_fills, marked by schedules/cortex_a `after_finish`): per window
row, the columns left and right of the copied ones, or the whole row where it is out of bounds.
Before, each row tile zeroed its whole window (a `memset`) and then copied over most of it.

A network of fused depthwise + pointwise layers (3x3 and 5x5, strides 1 and 2, odd sizes, so the
first and last row tiles have out-of-bound rows) and a padded 3x3 convolution: the padded windows
of row-tiled layers take the border fill, and the outputs match PyTorch on the emulated Pi, on outputs that depend on
the input."""

from __future__ import annotations

import torch
from torch import nn

import edgecompile.codegen.lower as lower
from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, keep_input_dependence, output_spread, random_input

SHAPE = (1, 3, 13, 11)
REL = 1e-4


def _dwpw(ci: int, co: int, k: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(ci, ci, k, stride=stride, padding=k // 2, groups=ci), nn.ReLU6(), nn.Conv2d(ci, co, 1)]


def _source():
    torch.manual_seed(53)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),            # 13 x 11 x 16
        *_dwpw(16, 24, 3, 1), nn.ReLU(),                      # 13 x 11
        *_dwpw(24, 20, 5, 2), nn.ReLU(),                      # 7 x 6
        *_dwpw(20, 28, 3, 2),                                 # 4 x 3
        *_dwpw(28, 12, 5, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("neon_border_fill", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=53))


def test_border_fills_match_pytorch_on_emulated_pi(tmp_path, monkeypatch):
    rewritten = []
    original = lower._border_fill

    def spy(fill, copy):
        out = original(fill, copy)
        if out is not None:
            rewritten.append(out)
        return out

    monkeypatch.setattr(lower, "_border_fill", spy)
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("rpi4"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    dwpw = [c for c in rep["calls"] if c["kind"] == "dwpw"]
    assert len(dwpw) == 4, [c["kind"] for c in rep["calls"]]
    # the fused layers' padded rows, but for the last one: its 4 output rows are one row tile, whose
    # copy TVM lowers without the per-row bound check (its window keeps the whole fill)
    assert len(rewritten) >= len(dwpw) - 1
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
