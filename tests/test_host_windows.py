"""The host's padded float windows, split into a fill and an in-bound copy (schedules/host:
HostRules.finish): the copy has no per-value condition, so GCC vectorizes it even when a ReLU
(Xception's separable convolutions) or a channel shuffle (ShuffleNet V1: folded into the next
depthwise window's indexing) sits in it.

A float depthwise tile over channels that full vectors do not divide takes them all, in full
vectors with an overlapping last one (HostRules._row_tile, host/ukernels.dw).

Pooling windows (HostRules.schedule_pool) run with the channels innermost and their epilogue
(Xception's residual add) per output pixel.

A small network with both, odd channel counts, a stride-2 depthwise, a 3x3/2 average pool
(ShuffleNet V1's downsampling unit), a 3x3/2 max pool and a residual add (Xception's block) runs
from the generated C against PyTorch."""

from __future__ import annotations

import re

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.platforms.host import HostModel
from edgecompile.schedules import host
from edgecompile.targets import load_target
from helpers import compare_with_reference, keep_input_dependence

SHAPE = (1, 3, 15, 15)
REL = 1e-4


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # ShuffleNet V1 downsampling unit: group 1x1 (g=3) -> shuffle -> stride-2 depthwise 3x3 ->
        # group 1x1, beside a 3x3/2 average pool, concatenated
        self.stem = nn.Conv2d(3, 9, 3, 1, 1)
        self.g1 = nn.Conv2d(9, 60, 1, groups=3)
        self.dw = nn.Conv2d(60, 60, 3, 2, 1, groups=60)
        self.g2 = nn.Conv2d(60, 27, 1, groups=3)
        self.avg = nn.AvgPool2d(3, 2, 1)
        # Xception block: ReLU -> sep conv -> ReLU -> sep conv -> 3x3/2 max pool, plus a strided 1x1
        # shortcut
        self.dw1, self.pw1 = nn.Conv2d(36, 36, 3, 1, 1, groups=36), nn.Conv2d(36, 41, 1)
        self.dw2, self.pw2 = nn.Conv2d(41, 41, 3, 1, 1, groups=41), nn.Conv2d(41, 41, 1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.short = nn.Conv2d(36, 41, 1, 2)
        self.head = nn.Conv2d(41, 13, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        r = self.g2(self.dw(_shuffle(torch.relu(self.g1(x)), 3)))
        x = torch.relu(torch.cat([self.avg(x), r], 1))
        y = self.pw1(self.dw1(torch.relu(x)))
        y = self.pool(self.pw2(self.dw2(torch.relu(y))))
        return self.head(y + self.short(x))


def test_split_windows_match_pytorch_on_host(tmp_path):
    torch.manual_seed(31)
    net = keep_input_dependence(_Net().eval())
    source = _from_torch("host_windows", net, SHAPE, ModelOptions(input_shape=SHAPE, seed=31))
    out = tmp_path / "b"
    rep = write_build(source, load_target("host"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    code = (out / "model.c").read_text()
    windows = [c["name"] for c in rep["calls"] if c["kind"] in ("conv_dw", "dwpw")]
    assert len(windows) >= 3, [(c["kind"], c["name"]) for c in rep["calls"]]
    for name in windows:
        body = re.search(rf"int32_t {name}\(.*?\n}}\n", code, re.S)
        assert body is not None, name
        # the window's in-bound copy: one bounds test per window row, none per value
        assert "condval" not in body.group(0), body.group(0)
    # the standalone depthwise over 60 channels (no 16-lane multiple): all of them per tile in full
    # vectors, the last overlapping (host.HostRules._row_tile, host/ukernels.dw), not 15 x 4 lanes
    lanes = host.LANES
    if lanes == 16:
        assert re.search(r"depthwise 3x3/2 \(float32\): C\[\d+x60\].*the last at channel 44 overlapping", code)
    assert not re.search(r"ec_dw_f32_\d+x(4|8|12)_k3x3s2(?:_z_e[A-Za-z0-9]+)?\(", code)
    pools = [c for c in rep["calls"] if c["kind"] == "pool"]
    # both pools channels-innermost; the max pool's residual add per output pixel (no map-sized scratch)
    assert len(pools) == 2 and all(c["schedule"] == "host.schedule_pool" for c in pools), [(c["name"], c["schedule"]) for c in pools]
    assert all(s["size"] < 41 * 4 * 4 * 4 for c in pools for s in c.get("scratch", [])), pools
    runner = HostModel(out)
    compare_with_reference(lambda x: runner.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    runner.close()
