"""Padded float windows on the emulated Raspberry Pi and on the host are zeroed only where their
in-bound copy does not write (codegen.lower.border_fills, marked by the cortex_a and host rules'
`after_finish`): per window
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
from edgecompile.platforms.host import HostModel
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, dwpw_layers, keep_input_dependence, output_spread, random_input

SHAPE = (1, 3, 13, 11)
REL = 1e-4


def _source():
    torch.manual_seed(53)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),            # 13 x 11 x 16
        *dwpw_layers(16, 24, 3, 1), nn.ReLU(),                      # 13 x 11
        *dwpw_layers(24, 20, 5, 2), nn.ReLU(),                      # 7 x 6
        *dwpw_layers(20, 28, 3, 2),                                 # 4 x 3
        *dwpw_layers(28, 12, 5, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("neon_border_fill", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=53))


def _build_spied(target: str, out, monkeypatch) -> tuple:
    """(source, build report, the border fills written) of the network built for `target`."""
    rewritten = []
    original = lower._border_fill

    def spy(fill, copy):
        new = original(fill, copy)
        if new is not None:
            rewritten.append(new)
        return new

    monkeypatch.setattr(lower, "_border_fill", spy)
    source = _source()
    rep = write_build(source, load_target(target), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    return source, rep, rewritten


def test_border_fills_match_pytorch_on_emulated_pi(tmp_path, monkeypatch):
    out = tmp_path / "b"
    source, rep, rewritten = _build_spied("rpi4", out, monkeypatch)
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


def test_border_fills_match_pytorch_on_the_host(tmp_path, monkeypatch):
    """The host's windows take the same fill (MobileNet V2 1.0/224 untuned: 0.97x thread CPU time,
    80 interleaved runs in one process; outputs bit-identical)."""
    out = tmp_path / "b"
    source, rep, rewritten = _build_spied("host", out, monkeypatch)
    dwpw = [c for c in rep["calls"] if c["kind"] == "dwpw"]
    assert len(dwpw) == 4, [c["kind"] for c in rep["calls"]]
    assert len(rewritten) >= len(dwpw) - 1
    model = HostModel(out)
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    try:
        for x, ref in zip(xs, refs):
            assert_close(model.run(x)[0], ref, spread, REL)
    finally:
        model.close()
