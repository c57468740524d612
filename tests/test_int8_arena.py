"""int8 builds keep their activations int8 in the arena: every requantization runs in the kernel
that produces the accumulator (conv / GEMM / residual-add epilogue), never in a consumer that
would make the producer store int32 (or int64) — and the bytes do not change for it.

What used to be stored wider (issue 13): MobileNet V2 block outputs (the project conv's int32
accumulator, requantized once per consumer), Xception's skip-branch int64 add term, ShuffleNet
V1's int32 zero-point-shifted average-pool input, EfficientNet's int32 sigmoid table index. What
may stay: the int32 sum of a mean (global average pooling, squeeze-excitation): FuseOps fuses no
elementwise consumer into a reduction, so its rescale is the next kernel's; the tensor is
1 x 1 x C.

Each network: the host build's memory plan, its bytes against the kernel graph on TVM's VM (the
integer reference of test_int8_kernels) and the mps2-an386 build's bytes against the host's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.ir.frontend import ModelOptions, _from_torch, load_model
from edgecompile.platforms.host import HostModel
from edgecompile.targets import load_target
from helpers import board_outputs, output_spread
from test_int8_kernels import vm_reference


class _Branches(nn.Module):
    """One of each pattern that stored wide tensors, small: an add of two computed branches
    (max-pooled conv + strided 1x1 skip conv, Xception), a concat with a 3x3 average pool
    (ShuffleNet V1), SiLU (EfficientNet), a residual add after a 1x1 conv (MobileNet V2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.main = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.MaxPool2d(3, 2, 1))
        self.skip = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2), nn.BatchNorm2d(12))
        self.down = nn.Sequential(nn.Conv2d(12, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.expand = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.SiLU())
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.main(x) + self.skip(x)
        z = torch.relu(torch.cat([self.pool(y), self.down(y)], 1))
        z = z + self.project(self.expand(z))
        return self.fc(z.mean((2, 3)))


def _branches():
    torch.manual_seed(3)
    model = _Branches()
    model.train()
    with torch.no_grad():                    # BatchNorm statistics of random inputs
        for _ in range(4):
            model(torch.randn(8, 3, 24, 24))
    model.eval()
    return _from_torch("branches", model, (1, 3, 24, 24), ModelOptions(input_shape=(1, 3, 24, 24), seed=3))


SMALL_MOBILENET_V2 = dict(width_mult=0.35, resolution=32, num_classes=10)
NETWORKS = [
    pytest.param("branches", None, id="branches"),
    pytest.param("mobilenet_v2", SMALL_MOBILENET_V2, id="mobilenet_v2", marks=pytest.mark.slow),
    pytest.param("shufflenet_v1", dict(groups=3, width_mult=0.5, resolution=64, num_classes=10), id="shufflenet_v1",
                 marks=pytest.mark.slow),
    pytest.param("xception", dict(resolution=64, num_classes=10), id="xception", marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", dict(resolution=64, num_classes=10), id="efficientnet_b0", marks=pytest.mark.slow),
]


def wide_activations(rep: dict) -> list[dict]:
    """The memory plan's tensors (not a kernel's scratch) stored in anything but int8, except a
    mean's 1 x 1 x C int32 sum (see the module docstring)."""
    written_by = {c["output"]: c for c in rep["calls"]}
    wide = []
    for b in rep["memory_plan"]:
        if b["kind"] == "scratch" or b["dtype"] == "int8":
            continue
        call = written_by.get(b["name"])
        if call is not None and call["kind"] == "mean" and b["dtype"] == "int32" and set(b["shape"][:-1]) == {1}:
            continue
        wide.append(b)
    return wide


def test_mobilenet_v2_int8_memory_plan_has_no_int32_block_output(tmp_path):
    """The memory plan alone (no C compiled): the project convs' outputs, read by the residual add
    and by the next block, are int8."""
    source = load_model("mobilenet_v2", ModelOptions(**SMALL_MOBILENET_V2))
    rep = write_build(source, load_target("host"), tmp_path / "host",
                      BuildOptions(quant="int8", compare_unfused=False, compile=False), Progress(quiet=True))
    assert wide_activations(rep) == []
    assert any(c["kind"] == "dwpw" and c["output_shape"][-1] == 8 for c in rep["calls"])   # the block outputs


@pytest.mark.parametrize("name,opts", NETWORKS)
def test_int8_arena_holds_int8_activations_and_the_same_bytes(tmp_path, monkeypatch, name, opts):
    source = _branches() if opts is None else load_model(name, ModelOptions(**opts))
    rep = write_build(source, load_target("host"), tmp_path / "host", BuildOptions(quant="int8", compare_unfused=False),
                      Progress(quiet=True))
    assert all("dtype" in b for b in rep["memory_plan"])
    assert wide_activations(rep) == []
    reference, quant = vm_reference(source, "digits", monkeypatch)
    assert rep["quant"] == quant
    rng = np.random.default_rng(11)
    shape = tuple(rep["inputs"][0]["shape"])
    inputs = [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(3)]
    host = HostModel(tmp_path / "host")
    expected = [reference(x) for x in inputs]
    output_spread(expected)
    for x, want in zip(inputs, expected):
        assert host.run(x)[0].tobytes() == want.tobytes(), "host int8 bytes differ from the VM reference"
    host.close()
    board = "mps2-an386"
    brep = write_build(source, load_target(board), tmp_path / board, BuildOptions(quant="int8", compare_unfused=False),
                       Progress(quiet=True))
    assert wide_activations(brep) == []
    for want, dev in zip(expected, board_outputs(board, tmp_path / board, brep, inputs, dtype="int8")):
        assert dev.tobytes() == want.tobytes(), f"{board} bytes differ from the reference"
