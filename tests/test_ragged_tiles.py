"""Ragged float tiles: channel counts that no vector width divides (ShuffleNet V2's 58 and 116 on
wide hosts, 10 classes, 17...) are tiled as M pixels x all the channels; the micro-kernel runs
them in blocks of vectors and only the last few channels in scalars (rules._ragged,
ukernels.ragged_body). Before, such layers fell back to
scalar tiles of a divisor of the channels (4 x 2 on the A72: 2.2 instructions per MAC).

One small network covers 3x3, pointwise and fused depthwise + pointwise convolutions and a dense
layer with 58, 17, 116, 10, 3 and 1 output channels on odd widths (9 x 7, then 5 x 4); it runs
from the generated C on this machine and on the emulated Raspberry Pi against PyTorch, and the
model.c must call the ragged micro-kernels (so this fails on the scalar fallback)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules.rules import choose_tile, tile_candidates
from edgecompile.schedules.ukernels import ragged_width
from edgecompile.targets import load_target
from helpers import (assert_close, board_outputs, compare_with_reference, gemm_tile_re, keep_input_dependence,
                     output_spread, random_input)

SHAPE = (1, 3, 9, 7)
REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)
# micro-kernels that must be ragged tiles (N = all the channels of a layer no vector divides)
RAGGED = [gemm_tile_re(r"\d+", 58), gemm_tile_re(r"\d+", 17), gemm_tile_re(r"\d+", 10), r"ec_dw_f32_\d+x58_k3x3s1(?:_z_e[A-Za-z0-9]+)?\("]


def _source():
    torch.manual_seed(20)
    model = nn.Sequential(
        nn.Conv2d(3, 58, 3, padding=1), nn.ReLU6(),                                  # 3x3, 58 out
        nn.Conv2d(58, 58, 3, padding=1, groups=58), nn.ReLU6(), nn.Conv2d(58, 17, 1), nn.ReLU6(),  # dw 58 + pw 17
        nn.Conv2d(17, 116, 1), nn.ReLU(),                                            # pointwise, 116
        nn.Conv2d(116, 10, 3, stride=2, padding=1), nn.ReLU(),                       # 3x3/2, 10 out
        nn.Conv2d(10, 3, 1), nn.ReLU(), nn.Conv2d(3, 1, 1),                          # 3, then 1 channel
        nn.Flatten(), nn.Linear(20, 10)).eval()                                      # dense, 10 classes
    keep_input_dependence(model)
    return _from_torch("ragged", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=20))


def _check_tiles(rep: dict, out: Path, family: str) -> None:
    convs = [c for c in rep["calls"] if c["kind"] in ("conv", "conv_pw", "dwpw", "fc")]
    assert len(convs) >= 6 and all(c["schedule"].startswith(f"{family}.") for c in convs), \
        [(c["kind"], c["schedule"]) for c in rep["calls"]]
    code = (out / "model.c").read_text()
    for pattern in RAGGED:
        assert re.search(pattern, code), (pattern, sorted(set(re.findall(r"ec_(?:gemm|dw)_f32_\w+?\(", code))))
    # the host runs ragged tiles of at least one full vector as full vectors, the last overlapping
    # (schedules/host/ukernels.py: on AVX2 every ragged tile here)
    assert "ragged tile" in code or (family == "host" and "overlapping the one before it" in code)


def test_ragged_tiles_match_pytorch_on_host(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    _check_tiles(rep, out, "host")
    model = HostModel(out)
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    model.close()


def test_ragged_tiles_match_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    target = load_target("rpi4")
    out = tmp_path / "b"
    rep = write_build(source, target, out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    _check_tiles(rep, out, target.family)
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)


def test_ragged_tile_choice_and_tuning_space():
    """The rule takes a ragged tile only where no vector width divides the channels and only when
    the family asks for it (integer and Cortex-M kernels keep their tiles); the tuner's space has
    the ragged tiles ahead of the scalar ones."""
    assert ragged_width(58, 4) == 4 and ragged_width(58, 8) == 8 and ragged_width(58, 16) == 8
    assert ragged_width(17, 16) == 16 and ragged_width(10, 4) == 4
    assert ragged_width(6, 4) == 1 and ragged_width(116, 16) == 1 and ragged_width(58, 1) == 1
    assert choose_tile(28, 58, 4, 20, 8, ragged=True) == (4, 58)     # 4 pixels x 5 vectors per block
    assert choose_tile(28, 58, 4, 20, 8) == (4, 2)                   # without: the scalar fallback
    assert choose_tile(28, 64, 4, 20, 8, ragged=True) == choose_tile(28, 64, 4, 20, 8)
    assert choose_tile(7, 3, 4, 20, 8, ragged=True) == choose_tile(7, 3, 4, 20, 8)
    space = tile_candidates(28, 58, 4, 20, 8, ragged=True)
    ragged = [t for t in space if t[1] == 58]
    assert ragged and space[:len(ragged)] == ragged and (4, 2) in space


def test_tuning_space_has_ragged_tiles():
    """`edgecompile tune`'s space for the 58-channel 3x3 conv and the fused dw + pw kernel holds
    ragged tiles, and the rule accepts each of them."""
    from tvm import s_tir

    from edgecompile import schedules
    from edgecompile.compiler import _graph
    from edgecompile.ir import passes
    from edgecompile.ir.kernel import analyze
    from edgecompile.ir.operators import Kind
    from edgecompile.ir.program import extract_program

    graph, _ = _graph(_source(), load_target("rpi4"), BuildOptions(), Progress(quiet=True))
    mod = passes.lower_graph(graph, fuse_dwpw=True)
    names = [n for n in dict.fromkeys(c.kernel for c in extract_program(mod).calls if c.builtin is None)
             if analyze(mod[n]).kind in (Kind.CONV, Kind.DWPW)]
    found = set()
    for name in names:
        configs, _ = schedules.space(mod[name], "cortex_a")
        ragged = [c for c in configs if c.get("tile", [0, 0])[1] in (58, 17, 10) or c.get("dw_tile", [0, 0])[1] == 58]
        found |= {analyze(mod[name]).kind for c in ragged}
        assert all(schedules.apply_config(s_tir.Schedule(mod[name]), analyze(mod[name]), "cortex_a", c) for c in ragged)
    assert found == {Kind.CONV, Kind.DWPW}, found
