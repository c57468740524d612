"""The host's float GEMM tiles keep their accumulators, a reduction step's B vectors and a broadcast
within the vector registers (rules.GemmModel.b_in_registers): EfficientNet-B0's 7x7 expansions
(192 -> 1152) took 7 x 64 tiles on AVX-512, 28 accumulators + 4 B vectors + 1 broadcast > 32
registers, and GCC spilled accumulators in every reduction step.

An EfficientNet-like 7x7 block (1x1 expansion with SiLU, 5x5 depthwise, squeeze-excitation,
projection) runs from the generated C against PyTorch."""

from __future__ import annotations

import re

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules import host
from edgecompile.schedules.rules import GemmModel, choose_tile
from edgecompile.schedules.ukernels import mixed_widths
from edgecompile.targets import load_target
from helpers import compare_with_reference, keep_input_dependence

SHAPE = (1, 40, 7, 7)
REL = 1e-4

AVX512 = GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32,
                   overlap_tail=True, b_in_registers=True)


def test_tiles_fit_the_registers_with_their_b_vectors():
    for model, lanes in ((AVX512, 16),):
        for width in (7, 14, 28, 56, 112):
            for channels, k in ((1152, 192), (672, 112), (144, 24), (1280, 320), (192, 1152), (728, 728)):
                m, n = choose_tile(width, channels, lanes, model.accumulators, 8, True, model, k)
                nv = len(mixed_widths(n, lanes))
                if m * nv <= model.accumulators:        # not a blocked tile (those run in blocks)
                    assert m * nv + nv + 1 <= model.registers, (width, channels, lanes, m, n)
    assert choose_tile(7, 1152, 16, 28, 8, True, AVX512, 192) != (7, 64)
    # the model without the constraint (another family's) keeps its tile
    plain = GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32)
    assert choose_tile(7, 1152, 16, 28, 8, True, plain, 192) == (7, 64)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c, e = 40, 192
        self.expand = nn.Conv2d(c, e, 1)
        self.dw = nn.Conv2d(e, e, 5, 1, 2, groups=e)
        self.se1, self.se2 = nn.Conv2d(e, 10, 1), nn.Conv2d(10, e, 1)
        self.project = nn.Conv2d(e, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.dw(nn.functional.silu(self.expand(x))))
        s = torch.sigmoid(self.se2(nn.functional.silu(self.se1(y.mean((2, 3), keepdim=True)))))
        return x + self.project(y * s)


def test_register_fitting_tiles_match_pytorch_on_host(tmp_path):
    torch.manual_seed(41)
    net = keep_input_dependence(_Block().eval())
    source = _from_torch("host_registers", net, SHAPE, ModelOptions(input_shape=SHAPE, seed=41))
    out = tmp_path / "b"
    write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    lanes, model = host.LANES, host.RULES.gemm_model
    tiles = {(int(m), int(n)) for m, n in re.findall(r"ec_gemm_f32_(\d+)x(\d+)(?:_z(?:_e[A-Za-z0-9]+)?)?\(", code)}
    assert tiles
    for m, n in tiles:
        nv = len(mixed_widths(n, lanes))
        # AVX-512's model counts the B vectors (measured there); AVX2's keeps its tiles
        assert not model.b_in_registers or m * nv > model.accumulators or m * nv + nv + 1 <= model.registers, (m, n)
    assert model.b_in_registers == (lanes == 16)
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    runner.close()
