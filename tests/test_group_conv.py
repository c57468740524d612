"""Grouped convolutions (ShuffleNet V1) are tiled like any convolution, one GEMM per group: the
output channels of a group in N-channel tiles, the reduction over the group's input channels
(at the group's offset in the pixel's row) in the family's GEMM micro-kernel.

One small network of grouped convolutions with random weights covers groups 2, 3, 4, 5 and 8,
odd channel counts per group (in and out), 1x1 and 3x3 kernels, strides 1 and 2, and channel
counts per group that fill whole vectors; it runs from the generated C on this machine and on the
emulated Raspberry Pi (NEON kernels) against PyTorch, with two channel shuffles and depthwise
convolutions in between (the shuffle read without a division per element). The int8 version of the
same layers and one ShuffleNet V1 unit are in test_int8_kernels (bit-exact against TVM's VM on
three emulated cores)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecompile.models.shufflenet import channel_shuffle

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch, load_model
from edgecompile.ir.kernel import analyze
from edgecompile.ir.operators import Kind
from edgecompile.measure.accuracy import run_test
from edgecompile.platforms.host import HostModel
from edgecompile.targets import load_target
from helpers import assert_close, board_outputs, compare_with_reference, keep_input_dependence, output_spread, random_input


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle (the zoo's own function)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


NAMES = {"nn": nn, "Shuffle": Shuffle}     # what the layer expressions name
SHAPE = (1, 6, 11, 9)
# (in, out, kernel, stride, groups): in/out per group in the comments
LAYERS = [
    (6, 15, 1, 1, 3),      # 2 -> 5
    (15, 10, 3, 2, 5),     # 3 -> 2, stride 2, odd group count
    (10, 14, 3, 1, 2),     # 5 -> 7
    (14, 36, 1, 1, 2),     # 7 -> 18
    (36, 24, 3, 1, 4),     # 9 -> 6
    (24, 40, 1, 1, 8),     # 3 -> 5
    (40, 64, 1, 1, 2),     # 20 -> 32: whole vectors on every family
    (64, 48, 3, 1, 4),     # 16 -> 12
    (48, 16, 1, 2, 8),     # 6 -> 2, a strided 1x1
]
GROUP_LAYERS = "[" + ", ".join(
    f"nn.Conv2d({i}, {o}, {k}, stride={s}, padding={k // 2}, groups={g}), nn.ReLU()" for i, o, k, s, g in LAYERS) + "]"
# ShuffleNet V1's channel shuffle (transpose-reshape over the channels) and depthwise conv after the
# first layer and the fourth: the shuffle becomes the depthwise window's gather (fp32) or a copy
# kernel (int8), indexed without a division per element
SHUFFLE_AFTER = {0: "Shuffle(3), nn.Conv2d(15, 15, 3, padding=1, groups=15)",
                 3: "Shuffle(2), nn.Conv2d(36, 36, 3, stride=2, padding=1, groups=36)"}
SHUFFLED_LAYERS = "[" + ", ".join(
    f"nn.Conv2d({i}, {o}, {k}, stride={s}, padding={k // 2}, groups={g}), nn.ReLU()"
    + (", " + SHUFFLE_AFTER[n] if n in SHUFFLE_AFTER else "") for n, (i, o, k, s, g) in enumerate(LAYERS)) + "]"
# one ShuffleNet V1 unit's convolutions (int8: test_int8_kernels)
UNIT_LAYERS = ("[nn.Conv2d(6, 15, 1, groups=3), nn.ReLU(), Shuffle(3), nn.Conv2d(15, 15, 3, padding=1, groups=15), "
               "nn.Conv2d(15, 12, 1, groups=3), nn.ReLU()]")
REL = 1e-4     # |C - PyTorch| <= REL x the spread of PyTorch's outputs (float32 rounding)


def _source():
    torch.manual_seed(14)
    model = nn.Sequential(*eval(SHUFFLED_LAYERS, NAMES)).eval()
    keep_input_dependence(model, nn.Conv2d)
    return _from_torch("group_convs", model, SHAPE, ModelOptions(input_shape=SHAPE, seed=14))


def _tiled_group_convs(rep: dict, family: str) -> None:
    calls = [c for c in rep["calls"] if c["kind"] == "conv_group"]
    assert len(calls) == len(LAYERS), [(c["kind"], c["schedule"]) for c in rep["calls"]]
    assert all(c["schedule"] == f"{family}.schedule_conv" for c in calls), [c["schedule"] for c in calls]


class _Order:
    """Tuning records that fix one choice of the rule for every grouped convolution (the rest
    stays the rule's own): the tuner's other loop order, channel tiles outside pixel tiles."""

    def __init__(self, order: str) -> None:
        self.order, self.hits, self.set_aside, self.db = order, {}, {}, Path("unused")

    def config_for(self, func, name):
        return {"order": self.order} if analyze(func).kind == Kind.CONV_GROUP else None


@pytest.mark.parametrize("order", ["pixels", "channels"])
def test_group_convs_match_pytorch_on_host(tmp_path, order):
    source = _source()
    rep = write_build(source, load_target("host"), tmp_path / "b",
                      BuildOptions(compare_unfused=False, tuning=_Order(order)), Progress(quiet=True))
    calls = [c for c in rep["calls"] if c["kind"] == "conv_group"]
    assert len(calls) == len(LAYERS) and all(f'"order": "{order}"' in c["schedule"] for c in calls), \
        [c["schedule"] for c in calls]
    assert not re.search(r"\w+ % \d+", (tmp_path / "b" / "model.c").read_text()), "a shuffle divides per element"
    model = HostModel(tmp_path / "b")
    compare_with_reference(lambda x: model.run(x)[0], lambda x: source.reference(x)[0], SHAPE, REL)
    model.close()


def test_group_convs_match_pytorch_on_emulated_pi(tmp_path):
    source = _source()
    target = load_target("rpi4")
    rep = write_build(source, target, tmp_path / "b", BuildOptions(compare_unfused=False), Progress(quiet=True))
    _tiled_group_convs(rep, target.family)
    xs = [random_input(SHAPE, s) for s in range(3)]
    refs = [source.reference(x)[0] for x in xs]
    spread = output_spread(refs)
    for got, ref in zip(board_outputs("rpi4", tmp_path / "b", rep, xs, timeout=60), refs):
        assert_close(got, ref, spread, REL)


@pytest.mark.slow
@pytest.mark.parametrize("name,opts,groups", [
    ("shufflenet_v1", dict(groups=3, width_mult=0.5, resolution=64, num_classes=10), 31),
    ("shufflenet_v2", dict(width_mult=0.5, resolution=64, num_classes=10), 0),
], ids=["shufflenet_v1", "shufflenet_v2"])
def test_shufflenet_int8_on_cortex_m4_equals_the_kernel_graph(tmp_path, name, opts, groups):
    """ShuffleNet int8 on the emulated Cortex-M4 (V1: DSP GEMM kernels per group; both: shuffles
    without divisions): the device's bytes are the kernel graph's on TVM's VM (the unscheduled
    kernels)."""
    source = load_model(name, ModelOptions(**opts))
    out = tmp_path / "b"
    rep = write_build(source, load_target("mps2-an386"), out, BuildOptions(quant="int8", compare_unfused=False),
                      Progress(quiet=True))
    calls = [c for c in rep["calls"] if c["kind"] == "conv_group"]
    assert len(calls) == groups and all(c["schedule"] == "cortex_m.schedule_conv" for c in calls)
    assert not re.search(r"\w+ % \d+", (out / "model.c").read_text()), "a shuffle divides per element"
    res = run_test(out, samples=3)
    assert res["passed"], res["failures"]
    assert res["kernel_graph"] == {"samples_differing": 0, "max_difference_steps": 0}, res["kernel_graph"]


def test_tuning_space_of_group_convs():
    """The tuner gets tiled configurations of grouped convolutions (tiles over one group's output
    channels, both loop orders), and the rule accepts every one of them."""
    from tvm import s_tir

    from edgecompile import schedules
    from edgecompile.compiler import _graph
    from edgecompile.ir import passes
    from edgecompile.ir.program import extract_program

    graph, _ = _graph(_source(), load_target("host"), BuildOptions(), Progress(quiet=True))
    mod = passes.lower_graph(graph, fuse_dwpw=True)
    names = [n for n in dict.fromkeys(c.kernel for c in extract_program(mod).calls if c.builtin is None)
             if analyze(mod[n]).kind == Kind.CONV_GROUP]
    assert len(names) == len(LAYERS)
    for name in names:
        configs, _ = schedules.space(mod[name], "host")
        tiled = [c for c in configs if not c.get("untiled")]
        orders = {c["order"] for c in tiled}
        assert {"pixels", "channels"} <= orders <= {"pixels", "channels", "flat"}, (name, configs)
        assert all(schedules.apply_config(s_tir.Schedule(mod[name]), analyze(mod[name]), "host", c) for c in tiled)
