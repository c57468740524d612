"""Ragged pixel tiles: a row of W output pixels that the chosen tile of M pixels does not divide
(Xception's 19- and 37-wide maps, 13, 7...) runs W // M tiles of M pixels and one of W % M
(tiling.pixel_tile; ukernels.rows_gemm_c / rows_dw_c call the family's M- and (W % M)-pixel
micro-kernels) instead of falling back to the divisors of W, one pixel for a prime width.

One small float network has rows of 37, 19, 13 and 7 pixels: a 3x3 convolution, fused depthwise +
pointwise kernels (stride 1 and 2), plain pointwise convolutions (stride 1 and 2) and a 1x7
convolution. It runs from the generated C on this machine and on the emulated Raspberry Pi
against PyTorch, and its model.c must call ragged pixel micro-kernels (GEMM and depthwise) on
each of those widths: on the old rule every one of them was a divisor tile."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules.rules import choose_tile, tile_candidates
from edgecompile.schedules.tiling import pixel_tile
from edgecompile.schedules.ukernels import ragged_pixels
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, compare_with_reference, keep_input_dependence, output_spread, random_input

SHAPE = (1, 3, 6, 37)
REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)
WIDTHS = (37, 19, 13, 7)
ROWS_CALL = re.compile(r"\bec_(gemm|dw)_f32_(\d+)x(\d+)(?:_k\d+x\d+s\d+)?_p(\d+)(?:_z(?:_e[A-Za-z0-9]+)?)?\(")


def _source():
    torch.manual_seed(22)

    def dwpw(c_in, c_out, stride=1):
        return [nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in), nn.ReLU(),
                nn.Conv2d(c_in, c_out, 1), nn.ReLU()]

    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),             # 3x3 on 37-pixel rows
        *dwpw(32, 64),                                          # fused dw + pw, 37
        nn.Conv2d(64, 64, 1), nn.ReLU(),                        # plain pointwise, 37
        *dwpw(64, 48, stride=2),                                # fused, strided depthwise: 19
        nn.Conv2d(48, 64, 1), nn.ReLU(),                        # plain pointwise, 19
        nn.Conv2d(64, 32, (1, 7)), nn.ReLU(),                   # 1x7: 13
        *dwpw(32, 64),                                          # fused, 13
        nn.Conv2d(64, 48, 1, stride=2), nn.ReLU(),              # strided pointwise: 7
        *dwpw(48, 32),                                          # fused, 7
        nn.Flatten(), nn.Linear(32 * 2 * 7, 10)).eval()
    keep_input_dependence(model)
    return _from_torch("ragged_pixels", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=22))


def _check_tiles(rep: dict, out: Path, family: str, gemm: set, dw: set) -> None:
    """Every convolution tiled by the family's rules, with ragged pixel GEMM tiles on the rows of
    `gemm` and depthwise ones on the rows of `dw` (a host's float GEMM already takes a whole
    19-, 13- or 7-pixel row of few channels as one tile)."""
    convs = [c for c in rep["calls"] if c["kind"] in ("conv", "conv_pw", "dwpw", "fc")]
    assert len(convs) >= 9 and all(c["schedule"].startswith(f"{family}.") for c in convs), \
        [(c["kind"], c["schedule"]) for c in rep["calls"]]
    code = (out / "model.c").read_text()
    calls = {(kind, int(w), int(p)) for kind, w, _, p in ROWS_CALL.findall(code)}
    assert all(w % p for _, w, p in calls), calls
    gemm_widths = {w for kind, w, _ in calls if kind == "gemm"}
    dw_widths = {w for kind, w, _ in calls if kind == "dw"}
    assert gemm <= gemm_widths and dw <= dw_widths, sorted(calls)
    assert "ragged pixel tile" in code


def test_ragged_pixels_match_pytorch_on_host(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    model = HostModel(out)
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    model.close()
    _check_tiles(rep, out, "host", {37}, {37, 19, 13})


def test_ragged_pixels_match_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    target = load_target("rpi4")
    out = tmp_path / "b"
    rep = write_build(source, target, out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
    # NEON_GEMM (cortex_a's tile model) ranks the asm loop's tiles by their instructions: the 37-
    # and 19-pixel GEMM rows (at least) take ragged pixel tiles; the float depthwise tiles of up to
    # 16 accumulators (CortexARules.FLOAT_DW_ACC) take the 7-pixel row whole (7 x 8) instead of
    # 6 + 1 pixels
    _check_tiles(rep, out, target.family, {37, 19}, {37, 19, 13})
    assert re.search(r"\bec_dw_f32_7x8_k3x3s\d\(", (out / "model.c").read_text())


def test_ragged_pixel_tile_choice():
    """A prime row takes a ragged pixel tile where one beats the dividing tiles by the margin (the
    A72's 19 x 728 rows: 8 x 8 instead of 1 x 56), only for families that ask for it, and a row
    that a good tile divides keeps its tile; the tiles of a ragged pixel tile cover the row once."""
    assert choose_tile(19, 728, 4, 20, 8, ragged=True, ragged_pixels=True) == (8, 8)
    assert choose_tile(19, 728, 4, 20, 8, ragged=True) == (1, 56)
    assert choose_tile(28, 64, 4, 20, 8, ragged=True, ragged_pixels=True) == choose_tile(28, 64, 4, 20, 8, ragged=True)
    assert choose_tile(19, 58, 4, 20, 8, ragged=True, ragged_pixels=True) == choose_tile(19, 58, 4, 20, 8, ragged=True)
    space = tile_candidates(37, 64, 4, 20, 8, ragged=True, ragged_pixels=True)
    assert 37 % space[0][0] and (1, 64) in space          # the dividing tiles stay in the tuning space
    assert pixel_tile(19, 8) == (19, 8) and pixel_tile(28, 4) == (4, 0) and pixel_tile(19, 1) == (1, 0)
    for w, p in ((19, 8), (37, 5), (13, 8), (7, 5)):
        tiles = ragged_pixels(w, p)
        assert [i for i, n in tiles for i in range(i, i + n)] == list(range(w)) and tiles[-1][1] == w % p
