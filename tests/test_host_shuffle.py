"""ShuffleNet V2's channel split, concatenation and shuffle kept channels-last
(passes.channels_last_shuffles), and the host's ragged channel tiles in full vectors with an
overlapping last vector (schedules/host/ukernels.py: 58 channels as 16 + 16 + 16 + 16 lanes, the
last at channel 42, instead of 7 x 8 lanes + 2 scalars).

Also: a fused dw+pw kernel that reads the NCHW graph input through a transpose is not planned in
place over it (codegen.memory._nhwc_dw_input: its output rows overwrote channel planes still to be
read; this network's first kernel did).

A two-unit ShuffleNet V2 block on 58 channels (a downsampling unit with stride-2 depthwise
convolutions on both branches, then a unit that splits, runs its half through 1x1 -> dw 3x3 ->
1x1 and shuffles) runs from the generated C against PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir import passes
from edgecompile.ir.frontend import ModelOptions, _from_torch, to_relax
from edgecompile.platforms.host import HostModel
from edgecompile.schedules import host
from edgecompile.schedules.host import ukernels as host_ukernels
from edgecompile.schedules.rules import GemmModel, _overlapped, choose_tile
from edgecompile.schedules.ukernels import F32, overlap_blocks
from edgecompile.targets import load_target
from helpers import compare_with_reference, has_gemm_tile, keep_input_dependence

SHAPE = (1, 24, 16, 16)
REL = 1e-4


def _shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _Units(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c = 58
        self.left = nn.Sequential(nn.Conv2d(24, 24, 3, 2, 1, groups=24), nn.Conv2d(24, c, 1), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(24, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 2, 1, groups=c),
                                   nn.Conv2d(c, c, 1), nn.ReLU())
        self.unit = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, groups=c),
                                  nn.Conv2d(c, c, 1), nn.ReLU())
        self.head = nn.Conv2d(2 * c, 29, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _shuffle(torch.cat([self.left(x), self.right(x)], 1))
        a, b = x.chunk(2, dim=1)
        x = _shuffle(torch.cat([a, self.unit(b)], 1))
        return self.head(x)


def _source():
    torch.manual_seed(23)
    net = keep_input_dependence(_Units().eval())
    return _from_torch("host_shuffle", net, SHAPE, ModelOptions(input_shape=SHAPE, seed=23))


def test_shuffles_stay_channels_last():
    graph, _ = passes.prepare_graph(to_relax(_source()))
    text = graph["main"].script(show_meta=False)
    # no NHWC -> NCHW transpose but the output's; the shuffles swap the last two axes of NHWC
    # [1, H, W, 2, C/2], the splits slice and the concatenations join the channel axis (3)
    assert text.count("axes=[0, 3, 1, 2]") == 1 and text.count("axes=[0, 1, 2, 4, 3]") == 2, text
    assert "axis=1)" not in text and "R.strided_slice(" in text and "(1,), (0,)" not in text


def test_overlapped_ragged_blocks_cover_every_channel_once_per_block():
    for m, n, lanes, acc in [(4, 58, 16, 24), (7, 58, 16, 24), (1, 58, 8, 12), (12, 58, 8, 12), (2, 29, 16, 24),
                             (24, 58, 16, 24), (3, 233, 16, 24)]:
        blocks = host_ukernels._blocks(m, n, lanes, acc)
        offs = [o for b in blocks for o in b]
        assert offs == host_ukernels._offsets(n, lanes) and offs[-1] == n - lanes
        covered = sorted({o + i for o in offs for i in range(lanes)})
        assert covered == list(range(n)), (m, n, lanes)
        # the overlapping last vector shares its block with the vector it overlaps
        assert len(blocks[-1]) >= 2 or len(offs) == 1
        assert all(m * len(b) <= max(acc, 2 * m) for b in blocks)
    # ShuffleNet V2's 28x28, 58 -> 58: 7 x (4 x 16 lanes), 28 accumulators, on AVX-512; 2 x 58 in
    # blocks of 6 + 2 vectors of 8 lanes on AVX2 (12 accumulators); 4 x 58 (7 x 8 lanes + 2 scalars) before
    avx512 = GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32,
                       overlap_tail=True)
    avx2 = GemmModel(registers=16, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32,
                     overlap_tail=True)
    assert choose_tile(28, 58, 16, 24, 8, True, avx512, 58) == (7, 58)
    assert choose_tile(28, 58, 8, 12, 8, True, avx2, 58) == (2, 58)
    assert overlap_blocks(2, 58, 8, 12) == [[0, 8, 16, 24, 32, 40], [48, 50]]
    # a family without the overlapping kernels keeps its ragged tiles
    plain = GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32)
    assert choose_tile(28, 58, 16, 24, 8, True, plain, 58) == (4, 58)
    assert host_ukernels.gemm(4, 64, 16, F32) is None and host_ukernels.gemm(4, 12, 16, F32) is None
    assert host_ukernels.gemm(4, 58, 16, F32.ordered("k16")) is None


def test_shuffle_units_match_pytorch_on_host(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    assert f"the last at channel {58 - host.LANES} overlapping" in code
    # the pointwise tiles ranked by the model with the overlap (rules._overlapped)
    for w in (16, 8):
        m, n = _overlapped(w, 58, host.LANES, host.RULES.gemm_model, 58)[0]
        assert has_gemm_tile(code, m, n), (w, m, n)
    assert "/* depthwise" in code and code.count("overlapping the one before it") >= 3
    convs = [c for c in rep["calls"] if c["kind"] in ("conv", "conv_pw", "dwpw")]
    assert convs and all(c["schedule"].startswith("host.") for c in convs), \
        [(c["kind"], c["schedule"]) for c in rep["calls"]]
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    runner.close()
