"""Spatial means on the emulated Raspberry Pi run with the channel loop innermost
(schedules/cortex_a `schedule_pool`, tiling.reduce_channels_innermost), which gcc vectorizes;
before, each output value ran the whole map on its own (a strided scalar loop: 8 instructions per
input value in EfficientNet-B0's squeeze-and-excitation gates). Pooling windows keep theirs.
Concatenations over the channels, alone or gathered into a GEMM's input rows, copy each source in
a loop of its own (tiling.split_concat_channels) instead of a select between two loads per value.

One small network on odd sizes (15 x 13 input, 13 and 22 channels) covers a ceil-mode 3x3/2 max
pool (SqueezeNet's), a fire module (8 + 16 channels concatenated into a 1x1 conv), a padded 3x3/1
average pool, a squeeze-and-excitation gate (a spatial mean, a 1x1 conv, a sigmoid scaling the
map), a concatenation (22 + 22) into a 2x2/2 max pool and a global average pool before the
classifier; a mean over the channels (the last NHWC axis) must keep the generic schedule. Run on
the emulated Pi through the serial protocol, against PyTorch, on outputs that depend on the
input."""

from __future__ import annotations

import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, keep_input_dependence, output_spread, random_input

SHAPE = (1, 3, 15, 13)
REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 13, 3, padding=1)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)         # 15 x 13 -> 7 x 6 (SqueezeNet's)
        self.expand1 = nn.Conv2d(13, 8, 1)                       # a fire module's two branches,
        self.expand3 = nn.Conv2d(13, 16, 3, padding=1)           # 8 + 16 channels
        self.squeeze = nn.Conv2d(24, 22, 1)                      # the concatenation gathered into its rows
        self.pool2 = nn.AvgPool2d(3, 1, padding=1)               # padded window, divisor 9
        self.gate = nn.Conv2d(22, 22, 1)
        self.branch = nn.Conv2d(22, 22, 1)
        self.pool3 = nn.MaxPool2d(2, 2)                          # 7 x 6 -> 3 x 3, after a concatenation
        self.fc = nn.Linear(44, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool1(torch.relu(self.conv1(x)))
        y = torch.cat([torch.relu(self.expand1(y)), torch.relu(self.expand3(y))], 1)
        y = self.pool2(torch.relu(self.squeeze(y)))
        y = y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))    # squeeze-and-excitation
        y = y - y.mean(1, keepdim=True)                                    # a mean over the channels
        y = self.pool3(torch.cat([y, torch.relu(self.branch(y))], 1))
        return self.fc(y.mean((2, 3)))


def _source():
    torch.manual_seed(22)
    model = keep_input_dependence(_Net().eval())
    return _from_torch("reductions", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=22))


def test_means_and_concatenations_on_the_channels_match_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    out = tmp_path / "b"
    rep = write_build(source, load_target("rpi4"), out, BuildOptions(compare_unfused=False), Progress(quiet=True))
    pools = [c for c in rep["calls"] if c["kind"] == "pool"]
    means = [c for c in rep["calls"] if c["kind"] == "mean"]
    assert len(pools) == 3 and all(c["schedule"] == "generic.untiled" for c in pools), \
        [(c["name"], c["schedule"]) for c in pools]
    # the gate's and the classifier's spatial means take the rule; the mean over the channels does not
    assert sorted(c["schedule"] for c in means) == ["cortex_a.schedule_pool"] * 2 + ["generic.untiled"], \
        [(c["name"], c["schedule"]) for c in means]
    concat = [c for c in rep["calls"] if c["kind"] == "elementwise"]
    assert [c["schedule"] for c in concat] == ["cortex_a.schedule_elementwise"], concat
    # both concatenations (alone, and gathered into the squeeze conv's rows) copy each source
    # without a select (TVM's `condval`) per value
    kernels = (out / "model.c").read_text().split("static __attribute__((noinline)) int32_t ")
    gathers = [k for k in kernels if "T_concat" in k]
    assert len(gathers) == 2 and not any("condval" in k for k in gathers), gathers
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", out, rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)
