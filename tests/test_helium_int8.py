"""Helium (MVE) int8 kernels of Cortex-M55 (mps3-an547) against the independent integer reference
of test_int8_kernels (the quantized graph on TVM's Relax VM), bit for bit: the device's bytes and
the same model.c compiled for this machine. The cases are chosen for the Helium GEMM's edges:
reductions of 3, 5, 12, 17 and 33 input channels (a tail-predicated group alone, one full group
and a tail, two groups and a tail), odd and single output channels, a strided 1x1 convolution;
and the padded 3x3 convolutions' int16 GEMM: 3, 5 and 9 input channels per tap (stride 2 and 1);
the Helium depthwise kernel's: 33, 17, 5 channels (predicated vectors alone), 12 and 24
(full vectors), stride 1 and 2 with padding, fused with the pointwise GEMM and alone; a fully
connected layer; random weights and quantization parameters. Each build must actually contain
the Helium kernels."""

from __future__ import annotations

import re

import pytest

from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.device.protocol import Link
from edgecompile.platforms import platform_for
from edgecompile.platforms.host import HostModel
from edgecompile.targets import load_target
from helpers import output_spread
from test_int8_kernels import Case, _calibration, _inputs, _source, vm_reference

BOARD = "mps3-an547"

CASES = [
    Case("helium_pw_17_33_3", (1, 17, 7, 5),
         "[nn.Conv2d(17, 33, 1), nn.ReLU(), nn.Conv2d(33, 3, 1, stride=2), nn.ReLU6(), nn.Conv2d(3, 17, 1)]",
         ("conv_pw",)),
    Case("helium_dwpw_33_17_1", (1, 33, 9, 7),
         "[nn.Conv2d(33, 33, 3, stride=2, padding=1, groups=33), nn.BatchNorm2d(33), nn.ReLU(), nn.Conv2d(33, 17, 1),"
         " nn.ReLU(), nn.Conv2d(17, 17, 3, padding=1, groups=17), nn.ReLU6(), nn.Conv2d(17, 1, 1)]",
         ("dwpw",)),
    Case("helium_dwpw_5_fc_33", (1, 5, 6, 6),
         "[nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.ReLU(), nn.Conv2d(5, 33, 1), nn.ReLU(),"
         " nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(33, 7)]",
         ("dwpw", "fc")),
    Case("helium_conv3x3_3_5_9", (1, 3, 10, 9),
         "[nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(5, 9, 3, padding=1), nn.ReLU6(),"
         " nn.Conv2d(9, 9, 3, padding=1)]", ("conv",)),
    Case("helium_dw_24_s2", (1, 24, 9, 8),
         "[nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24), nn.ReLU6(), nn.AvgPool2d((5, 4))]", ("conv_dw",)),
    Case("helium_dwpw_12_s1_28", (1, 12, 5, 6),
         "[nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU(), nn.Conv2d(12, 28, 1), nn.ReLU6()]", ("dwpw",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_helium_kernel_bytes_equal_the_integer_reference(tmp_path, monkeypatch, case):
    seed = 40 + CASES.index(case)
    source = _source(case, seed)
    calibration = _calibration(tmp_path, case, seed)
    reference, quant = vm_reference(source, calibration, monkeypatch)
    inputs = _inputs(case, seed)
    expected = [reference(x) for x in inputs]
    output_spread(expected)      # the reference depends on the input, or the comparison proves nothing
    out = tmp_path / BOARD
    target = load_target(BOARD)
    rep = write_build(source, target, out, BuildOptions(quant="int8", calibration=calibration, compare_unfused=False),
                      Progress(quiet=True))
    assert rep["quant"] == quant
    kinds = {c["kind"] for c in rep["calls"] if not c["schedule"].startswith("generic")}
    assert set(case.kinds) <= kinds, f"{case.kinds} not tiled ({[c['schedule'] for c in rep['calls']]})"
    code = (out / "model.c").read_text()
    if {"conv_pw", "dwpw", "fc"} & set(case.kinds):
        assert re.search(r"\bec_gemm_s8k16_\d+x\d+\(", code) and "vmladavaq_s8" in code, "no Helium GEMM kernel"
    if "conv" in case.kinds:
        assert re.search(r"\bec_gemm_s16k8_\d+x\d+\(", code) and "vmladavaq_s16" in code, "no Helium int16 GEMM"
    if {"conv_dw", "dwpw"} & set(case.kinds):
        assert re.search(r"\bvldrhq_(z_)?s32\(", code), "no Helium depthwise kernel"
    host = HostModel.from_sources(out)
    with platform_for(target).start_emulator(target, out, rep) as s:
        port = s.open_port()
        link = Link(port, timeout=30, alive=s.alive)
        link.connect()
        for x, want in zip(inputs, expected):
            dev = link.infer(x, tuple(rep["outputs"][0]["shape"]), in_dtype="int8", out_dtype="int8").output
            assert dev.tobytes() == want.tobytes(), "device bytes differ from the reference"
            assert host.run(x)[0].tobytes() == want.tobytes(), "host compile of model.c differs"
        port.close()
    host.close()
