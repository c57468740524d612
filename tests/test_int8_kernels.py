"""int8 kernels of each family against an independent integer reference, bit for bit.

The reference is the quantized graph itself, before any of our schedules, micro-kernels or C
code: TVM's own operator implementations compiled for this machine and run by the Relax VM, with
the rescale in its general 64-bit form (the folded form the builds use is checked apart, in
test_quant). Each case is a small network of one kind of kernel with random shapes (odd channel
counts, one channel, strides, padding), random weights and random quantization parameters
(calibration data of random range and offset); the builds for the emulated Cortex-M4
(mps2-an386), Cortex-M7 (stm32f746g-disco) and Cortex-M55 (mps3-an547) and the same model.c
compiled for this machine must return the reference's bytes.

Whole networks (the wake-word network and one of each zoo family): every core's bytes equal the
host int8 build's (this machine's schedules and kernels); a board the network does not fit is
skipped with the numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from edgecompile.compiler import BuildOptions, Progress, _graph, write_build
from edgecompile.ir import quantize
from edgecompile.errors import FitError
from edgecompile.ir.frontend import ModelOptions, _from_torch, load_model
from edgecompile.platforms.host import HostModel
from edgecompile.targets import load_target
from test_group_conv import GROUP_LAYERS, NAMES, SHAPE as GROUP_SHAPE, UNIT_LAYERS
from test_quant import FAMILIES
from helpers import board_outputs, output_spread, slow_params

BOARDS = ["mps2-an386", "stm32f746g-disco", "mps3-an547"]
# The Cortex-M4 and M7 boards run the same kernels (the same model.c, the same asm): the kernel
# cases run on the M4 board by default and on the M7 too in the slow run (CI time)
M4_M7 = pytest.mark.parametrize("board", ["mps2-an386", pytest.param("stm32f746g-disco", marks=pytest.mark.slow)])


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int]      # N, C, H, W
    layers: str                           # a Python expression building the nn.Sequential's layers
    kinds: tuple[str, ...]                # kernel kinds the build must contain (tiled)
    calibration: str = ""                 # "positive" / "negative": input zero point -128 / 127


CASES = [
    Case("pw_16_24", (1, 16, 6, 6), "[nn.Conv2d(16, 24, 1), nn.ReLU()]", ("conv_pw",)),
    Case("pw_odd_7_5", (1, 7, 5, 3), "[nn.Conv2d(7, 5, 1), nn.ReLU6()]", ("conv_pw",)),
    Case("pw_one_out", (1, 9, 4, 5), "[nn.Conv2d(9, 1, 1)]", ("conv_pw",)),
    Case("conv3x3_one_in", (1, 1, 6, 6), "[nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()]", ()),
    Case("dwpw_s1", (1, 8, 8, 8),
         "[nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU()]",
         ("dwpw",)),
    Case("dwpw_s2_odd", (1, 6, 9, 7),
         "[nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), nn.ReLU6(), nn.Conv2d(6, 10, 1), nn.ReLU6()]",
         ("dwpw",)),
    Case("dwpw_one_out", (1, 12, 6, 6),
         "[nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU(), nn.Conv2d(12, 1, 1)]", ("dwpw",)),
    Case("dw_s1", (1, 8, 7, 9), "[nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(), nn.AvgPool2d(7, 9)]",
         ("conv_dw",)),
    Case("dw_s2_odd", (1, 5, 9, 9), "[nn.Conv2d(5, 5, 3, stride=2, padding=1, groups=5), nn.ReLU()]", ("conv_dw",)),
    Case("conv3x3_s2", (1, 3, 12, 10), "[nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()]", ("conv",)),
    Case("conv3x3_s1_odd", (1, 5, 7, 6), "[nn.Conv2d(5, 6, 3, padding=1), nn.ReLU6()]", ("conv",)),
    Case("fc", (1, 10, 1, 1), "[nn.Flatten(), nn.Linear(10, 7)]", ("fc",)),
    # groups 2-8, odd channels per group, 1x1 and 3x3, strides 1 and 2 (test_group_conv)
    Case("group_convs", GROUP_SHAPE, GROUP_LAYERS, ("conv_group",)),
    Case("shufflenet_v1_unit", (1, 6, 7, 5), UNIT_LAYERS, ("conv_group", "conv_dw")),
]


def _source(case: Case, seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(*eval(case.layers, NAMES))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):      # random weight and bias scales per layer
                m.weight.mul_(float(torch.empty(1).uniform_(0.2, 3.0, generator=g)))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    return _from_torch(case.name, model, case.shape, ModelOptions(input_shape=case.shape, seed=seed))


def _calibration(tmp_path, case: Case, seed: int) -> str:
    """Inputs of a random range and offset: random input scale and zero point."""
    rng = np.random.default_rng(seed)
    scale, offset = rng.uniform(0.3, 4.0), rng.uniform(-1.0, 1.0)
    data = (rng.standard_normal((8, *case.shape[1:])) * scale + offset).astype(np.float32)
    if case.calibration:         # one-signed data: the input zero point at either end of the range
        data = np.abs(data) if case.calibration == "positive" else -np.abs(data)
    path = tmp_path / "calibration.npy"
    np.save(path, data)
    return str(path)


def vm_reference(source, calibration: str, monkeypatch) -> tuple[object, dict]:
    """The int8 graph (general rescale form) on TVM's Relax VM: int8 input -> int8 output."""
    import tvm
    from tvm import relax

    with monkeypatch.context() as m:
        m.setattr(quantize, "FAST_SHIFTS", (1, 0))        # no shift qualifies: the general form everywhere
        graph, quant = _graph(source, load_target("host"), BuildOptions(quant="int8", calibration=calibration),
                              Progress(quiet=True))
    exe = tvm.compile(graph, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return (lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()), quant


def _inputs(case: Case, seed: int, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return [rng.integers(-128, 128, size=case.shape, dtype=np.int8) for _ in range(n)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("board", slow_params(BOARDS, ("stm32f746g-disco",)))
def test_kernel_bytes_equal_the_integer_reference_on_every_core(tmp_path, monkeypatch, case, board):
    _check_kernel_case(tmp_path, monkeypatch, case, CASES.index(case) + 1, [board])


# NEON (rpi4, Cortex-A72) int8 kernels: GEMMs over 16-step weight blocks with the 8-step block and
# the scalar tail (K = 6, 7, 8, 9, 10, 12, 16, 24, 33, 45 ...: accumulators set by the first 16-step
# block, by the first 8 steps when K < 16, zeroed when K < 8), one and odd output channel counts (1, 3, 17),
# tiles that are not multiples of 4 channels, depthwise on 8-channel groups (16, 24 channels) and
# the generic depthwise beside it (odd counts), strides, padding, random quantization parameters.
NEON_CASES = CASES + [
    Case("pw_33_17", (1, 33, 5, 4), "[nn.Conv2d(33, 17, 1), nn.ReLU()]", ("conv_pw",)),
    Case("pw_24_3_s2", (1, 24, 7, 7), "[nn.Conv2d(24, 3, 1, stride=2), nn.ReLU6()]", ("conv_pw",)),
    Case("dwpw_16_33_s2", (1, 16, 9, 10),
         "[nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 33, 1), nn.ReLU()]",
         ("dwpw",)),
    Case("dwpw_17_1", (1, 17, 6, 5),
         "[nn.Conv2d(17, 17, 3, padding=1, groups=17), nn.ReLU(), nn.Conv2d(17, 1, 1)]", ("dwpw",)),
    Case("dwpw_24_40", (1, 24, 6, 6),
         "[nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU6(), nn.Conv2d(24, 40, 1), nn.ReLU6()]", ("dwpw",)),
    Case("dw_16_s2", (1, 16, 7, 8), "[nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.ReLU()]",
         ("conv_dw",)),
    Case("fc_45_3", (1, 45, 1, 1), "[nn.Flatten(), nn.Linear(45, 3)]", ("fc",)),
    Case("conv3x3_s2_3_16", (1, 3, 11, 10), "[nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU6()]", ("conv",)),
    # the asm GEMM (K >= 32, packed panels; also pw_33_17 and fc_45_3 above): K = 57 (3 blocks + the
    # 8-step block + 1), 64 (no tail), 99 (6 blocks + 3 steps), 1, 3 and 17 output channels, input
    # zero points -128 and 127
    Case("pw_57_17_zp_min", (1, 57, 5, 3), "[nn.Conv2d(57, 17, 1)]", ("conv_pw",), "positive"),
    Case("pw_64_3_zp_max", (1, 64, 4, 4), "[nn.Conv2d(64, 3, 1)]", ("conv_pw",), "negative"),
    Case("dwpw_64_1", (1, 64, 5, 4), "[nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU6(), nn.Conv2d(64, 1, 1)]",
         ("dwpw",)),
    Case("fc_99_3", (1, 99, 1, 1), "[nn.Flatten(), nn.Linear(99, 3)]", ("fc",), "positive"),
    # the row-by-row GEMM (K < 16, channels in eights, weights unpacked): K = 8 (one 8-step block),
    # 12 (a block and a 4-step tail), 5 (the tail only); 24, 16 and 8 output channels; plus dwpw_s1 above
    Case("pw_8_24_rows", (1, 8, 5, 7), "[nn.Conv2d(8, 24, 1), nn.ReLU()]", ("conv_pw",)),
    Case("pw_12_16_rows", (1, 12, 6, 5), "[nn.Conv2d(12, 16, 1), nn.ReLU6()]", ("conv_pw",), "negative"),
    Case("dwpw_5_8_rows", (1, 5, 6, 6),
         "[nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.ReLU(), nn.Conv2d(5, 8, 1)]", ("dwpw",)),
]
# cases whose pointwise GEMM takes the row-by-row kernel (cortex_a.CortexARules.S8_ROWS_MAX_K)
ROWS_CASES = ("dwpw_s1", "pw_8_24_rows", "pw_12_16_rows", "dwpw_5_8_rows")
# cases whose input zero point must be at an end of the int8 range, and whose outputs (random int8
# inputs beyond the calibration's range) must saturate at both ends
ZERO_POINTS = {"pw_57_17_zp_min": -128, "pw_64_3_zp_max": 127, "fc_99_3": -128}
SATURATING = ("pw_57_17_zp_min", "pw_64_3_zp_max")
# NEON rescale kernels each case's build must contain (8 + 4 + a scalar tail, 4 + 1, 4 + 3, 8 + 8...)
NEON_REQUANT = {"dwpw_s1": ("2x16", "4x8"), "pw_odd_7_5": ("3x5",), "group_convs": ("1x12", "1x16", "1x5"),
                "fc": ("1x7",), "dwpw_24_40": ("2x24",), "dw_16_s2": ("2x16",)}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow if c in CASES else ()) for c in NEON_CASES],
                         ids=[c.name for c in NEON_CASES])      # the Cortex-M cases again: slow (CI budget)
def test_neon_kernel_bytes_equal_the_integer_reference_on_rpi4(tmp_path, monkeypatch, case):
    seen: dict = {}
    model_c = _check_kernel_case(tmp_path, monkeypatch, case, NEON_CASES.index(case) + 1, ["rpi4"], seen)["rpi4"]
    if case.name in ZERO_POINTS:
        assert seen["quant"]["input"]["zero_point"] == ZERO_POINTS[case.name], seen["quant"]["input"]
    if case.name in SATURATING:
        out = np.concatenate([e.ravel() for e in seen["expected"]])
        assert out.min() == -128 and out.max() == 127, (out.min(), out.max())
    if case.name in ROWS_CASES:                                              # the row-by-row NEON GEMM ran
        assert re.search(r"\bec_gemm_s8_\d+x\d+\(", model_c) and "vmlal_high_laneq_s16" in model_c
        assert "ec_gemm_s8k16_" not in model_c
    elif {"conv_pw", "dwpw", "fc"} & set(case.kinds):
        assert "ec_gemm_s8k16_" in model_c and "vpadalq_s16" in model_c      # the NEON int8 GEMM ran
        assert "vpaddlq_s16" in model_c                 # its accumulators set by the first block's saddlp
        if "_zp_" in case.name or case.name in ("dwpw_64_1", "fc_99_3", "pw_33_17", "fc_45_3"):   # K >= 32: asm
            assert "sadalp v" in model_c and "saddlp v" in model_c
    if {"conv_dw", "dwpw"} & set(case.kinds) and case.shape[1] % 8 == 0:
        assert "vmlal_high_s16" in model_c                                   # the NEON depthwise ran
    if "conv" in case.kinds and "nn.Conv2d(3, 16, 3" in case.layers:
        assert "vmlal_high_n_s16" in model_c                                 # the NEON int16 x int8 GEMM ran
    for tile in NEON_REQUANT.get(case.name, ()):                             # the NEON rescale ran
        assert f"ec_requant_s8_{tile}(" in model_c and "vaddhn_high_s64" in model_c, tile


# KxK convolutions whose GEMM takes the whole window per call on Cortex-M4/M7 (K = KW x KH x input
# channels, contiguous in the pixel-major padded rows; weight panels in K quads across the taps), or
# a whole kernel row for a 1xK kernel: 2, 3, 4, 5, 17 input channels (K = 50, 27, 36, 45, 153, 9:
# K quads and a K % 4 tail of 0 to 3), 3x3, 5x5 and 1x3, strides 1 and 2, with and without
# padding (int16 or int8 activations), 1 to 8 output channels.
WINDOW_CASES = [
    Case("window_4in_s1", (1, 4, 7, 6), "[nn.Conv2d(4, 7, 3, padding=1), nn.ReLU()]", ("conv",)),
    Case("window_3in_s2", (1, 3, 11, 9), "[nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6()]", ("conv",)),
    Case("window_5in_nopad", (1, 5, 8, 7), "[nn.Conv2d(5, 4, 3, stride=2), nn.ReLU()]", ("conv",)),
    Case("window_2in_5x5", (1, 2, 7, 7), "[nn.Conv2d(2, 6, 5, padding=2), nn.ReLU6()]", ("conv",)),
    Case("window_17in_1out", (1, 17, 5, 6), "[nn.Conv2d(17, 1, 3, padding=1)]", ("conv",)),
    Case("window_1x3_row_only", (1, 3, 5, 8), "[nn.Conv2d(3, 4, (1, 3), padding=(0, 1)), nn.ReLU()]", ("conv",)),
    # 3 inputs, 17 outputs (one-channel weight panels widened to int16), stride 1, padded
    Case("window_3in_17out_s1", (1, 3, 6, 7), "[nn.Conv2d(3, 17, 3, padding=1), nn.ReLU6()]", ("conv",)),
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow if c.name in ("window_4in_s1", "window_17in_1out")
                                                else ()) for c in WINDOW_CASES],
                         ids=[c.name for c in WINDOW_CASES])      # two of them slow (CI budget)
@M4_M7
def test_kernel_window_gemm_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    import re

    sources = _check_kernel_case(tmp_path, monkeypatch, case, 50 + WINDOW_CASES.index(case),
                                 [board])
    conv = eval(case.layers, NAMES)[0]
    c, (kh, kw), s = conv.in_channels, conv.kernel_size, conv.stride[1]
    padded = conv.padding != (0, 0)
    for board, model_c in sources.items():      # one call per window: K = KW * KH * C, pixels s * KH * C apart
        calls = re.findall(r"ec_gemm_(s8k4|s16k4x|s16k4w)_\d+x\d+\([^;]*, (\d+), \(int64_t\)(\d+), "
                           r"\(int64_t\)\d+, \(int64_t\)\d+\);", model_c)
        assert calls and all((int(k), int(lda)) == (kw * kh * c, s * kh * c) for _, k, lda in calls), (board, calls)
        if padded and kh > 1:       # int16 padded windows: weights widened at compile time (rules.window_panel_order)
            assert {t for t, _, _ in calls} == {"s16k4w"}, (board, calls)


# Rows of odd width on Cortex-M4/M7: integer GEMM tiles of 3 pixels x 2 channels (6 accumulators)
# over int16 depthwise rows (a 3x3 map, as at the end of the wake-word network), and 1 x 6 over int8
# activations (a width of 5: no 2 or 3 pixel tile divides it).
ODD_ROW_CASES = [
    Case("dwpw_3x3_map", (1, 16, 3, 3),
         "[nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.Conv2d(16, 8, 1), nn.ReLU6()]", ("dwpw",)),
    Case("pw_width_5", (1, 12, 4, 5), "[nn.Conv2d(12, 6, 1), nn.ReLU()]", ("conv_pw",)),
]


@pytest.mark.parametrize("case", ODD_ROW_CASES, ids=[c.name for c in ODD_ROW_CASES])
@M4_M7
def test_odd_row_gemm_tiles_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    sources = _check_kernel_case(tmp_path, monkeypatch, case, 70 + ODD_ROW_CASES.index(case),
                                 [board])
    tile = "ec_gemm_s16k4w_3x2(" if case.kinds == ("dwpw",) else "ec_gemm_s8k4_1x6("
    assert all(tile in model_c for model_c in sources.values())


# The aligned SMLAD loop of Cortex-M4/M7 runs two K quads per iteration, then the odd last quad, then
# the K % 4 last steps: K = 13 over int8 activations (3 quads + 1), through the loop, the odd quad and
# the tail; K = 22 over int16 depthwise rows (5 quads + 2, stride 2, padding; the fused kernel's weights
# widened to int16, "k4w"): its 2 x 2 tiles' quads unrolled (one asm statement each), then the tail.
QUAD_PAIR_CASES = [
    Case("dwpw_22_6_s2", (1, 22, 7, 8),
         "[nn.Conv2d(22, 22, 3, stride=2, padding=1, groups=22), nn.ReLU6(), nn.Conv2d(22, 6, 1), nn.ReLU()]",
         ("dwpw",)),
    Case("pw_13_4", (1, 13, 4, 6), "[nn.Conv2d(13, 4, 1), nn.ReLU6()]", ("conv_pw",)),
]


@pytest.mark.parametrize("case", QUAD_PAIR_CASES, ids=[c.name for c in QUAD_PAIR_CASES])
@M4_M7
def test_quad_pair_gemm_loop_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    import re

    sources = _check_kernel_case(tmp_path, monkeypatch, case, 80 + QUAD_PAIR_CASES.index(case),
                                 [board])
    k = eval(case.layers, NAMES)[-2 if case.kinds == ("dwpw",) else 0].in_channels
    for board, model_c in sources.items():      # the SMLAD kernel ran with this K
        calls = re.findall(r"ec_gemm_(s8k4|s16k4w)_\d+x\d+\([^;]*\), (\d+), \(int64_t\)", model_c)
        assert calls and all(int(kk) == k for _, kk in calls), (board, calls)
        if case.kinds == ("dwpw",):      # 2 x 2 tiles: every quad one asm statement, unrolled (K constant)
            assert "ec_gemm_s16k4w_2x2(" in model_c and "smlad %[c1_1], %[x1h], %[wh], %[c1_1]" in model_c, board
        else:
            assert "if (K & 4) {" in model_c, board


# Cortex-M4/M7: a padded window of 8 channels (>= WIDEN_MIN_CHANNELS) is split into a fill and an
# unconditional copy (the ec_widen_s8s16 row copy), and its pointwise GEMM of K = 8 over the int16 rows takes
# 2 x 2 tiles (the asm quads; over int8 activations K <= 8 takes 8 accumulators): the first dw+pw kernel of the
# wake-word network. Stride 2 with padding on one side only, odd width.
SHORT_K_CASES = [
    Case("dwpw_8_12_s2_short_k", (1, 8, 9, 8),
         "[nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU6(), nn.Conv2d(8, 12, 1), nn.ReLU6()]",
         ("dwpw",)),
]


@pytest.mark.parametrize("case", SHORT_K_CASES, ids=[c.name for c in SHORT_K_CASES])
@M4_M7
def test_split_window_and_short_k_tiles_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    sources = _check_kernel_case(tmp_path, monkeypatch, case, 95 + SHORT_K_CASES.index(case),
                                 [board])
    for board, model_c in sources.items():
        assert "ec_gemm_s16k4w_2x2(" in model_c and "ec_gemm_s16k4w_2x4(" not in model_c, board
        assert "condval" not in model_c, board          # the window's copy has no per-value condition


# Cortex-M4/M7: the in-bound rows of every padded int16 window of >= 3 channels are copied by the DSP row
# copy ec_widen_s8s16 (4 values per word, a scalar head to align the window and an n % 4 tail): 17
# channels (rows of 85 and 51 values, starting at an odd int16 offset), strides 1 and 2, the window's zero
# point at both extremes (-128 after a ReLU, 127 after a clamp to [-6, 0]); the 3-channel depthwise window
# before them is one contiguous run per row too.
WIDEN_CASES = [
    Case("dwpw_widen_3_17_zp", (1, 3, 7, 9),
         "[nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3), nn.ReLU(), nn.Conv2d(3, 17, 1), nn.ReLU(),"
         " nn.Conv2d(17, 17, 3, padding=1, groups=17), nn.ReLU6(), nn.Conv2d(17, 17, 1), nn.Hardtanh(-6.0, 0.0),"
         " nn.Conv2d(17, 17, 3, stride=2, padding=1, groups=17), nn.BatchNorm2d(17), nn.Conv2d(17, 5, 1)]", ("dwpw",)),
]


@pytest.mark.parametrize("case", WIDEN_CASES, ids=[c.name for c in WIDEN_CASES])
@M4_M7
def test_widen_row_copy_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    import re

    sources = _check_kernel_case(tmp_path, monkeypatch, case, 98 + WIDEN_CASES.index(case),
                                 [board])
    for board, model_c in sources.items():
        calls = re.findall(r"\bec_widen_s8s16\(\([^;]*, (\d+), (\d+), \(int64_t\)(\d+), \(int64_t\)(\d+), (-?\d+)\);",
                           model_c)
        wide = [c for c in calls if int(c[1]) == 17]
        assert {int(c[-1]) for c in wide} == {-128, 127}, (board, calls)      # both extremes of the zero point
        assert {int(c[1]) for c in calls} == {3, 17}, (board, calls)          # the 3-channel window too
        assert all(int(c[2]) == int(c[3]) == int(c[1]) for c in calls if int(c[1]) == 3), (board, calls)
        assert "__ssub16(__sxtb16(w0), zz)" in model_c, board                 # the DSP row copy


# Cortex-M4/M7, a network's first convolution (3 input channels, the whole window per GEMM call): its
# padded rows are stored pixel-major ([pixel][KH][C]), the pad-value fill walks them in memory order
# (tiling.fill_in_memory_order) and each in-bound window row is one ec_widen_s8s16 call over rows of 3
# values, KH x 3 apart (the 4-rows-per-iteration RGB path, then the rows % 4 last rows): stride 2 on 11
# pixels (2 quads of rows + 3), stride 1 on 9 (2 quads + 1) with 17 output channels; the window's zero
# point at both extremes (-128 after a ReLU, 127 after a clamp to [-6, 0]).
RGB_WINDOW_CASES = [
    Case("rgb_window_s2_zp_min", (1, 3, 13, 11),
         "[nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6()]", ("conv",)),
    Case("rgb_window_s1_zp_max", (1, 3, 6, 9),
         "[nn.Conv2d(3, 3, 1), nn.Hardtanh(-6.0, 0.0), nn.Conv2d(3, 17, 3, padding=1)]", ("conv",)),
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow if c.name == "rgb_window_s1_zp_max" else ())
                                  for c in RGB_WINDOW_CASES], ids=[c.name for c in RGB_WINDOW_CASES])  # one slow (CI budget)
@M4_M7
def test_rgb_window_rows_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    import re

    sources = _check_kernel_case(tmp_path, monkeypatch, case, 105 + RGB_WINDOW_CASES.index(case),
                                 [board])
    zp = -128 if "ReLU()" in case.layers else 127
    for board, model_c in sources.items():
        calls = re.findall(r"\bec_widen_s8s16\(\([^;]*, (\d+), (\d+), \(int64_t\)(\d+), \(int64_t\)(\d+), (-?\d+)\);",
                           model_c)
        # the 3 x 3 window: rows of 3 values 9 apart in the window, 3 apart in the source, at the zero point
        assert (str(case.shape[3]), "3", "9", "3", str(zp)) in calls, (board, calls)
        assert "condval" not in model_c, board          # no conditional copy per value
        assert "if (cols == 3 && ldx == 3 && ldo != 3) {" in model_c, board


# Cortex-M4/M7 depthwise tiles of 2 pixels at stride 1 load each window column once per row for both
# pixels (cortex_m.ukernels._dw_row_shared_columns): two fused dw+pw kernels on rows of 10 pixels
# (5 tiles), 12 and 16 channels (3 and 4 channel quads), the window's zero point at both extremes
# (127 after a clamp to [-6, 0], -128 after a ReLU), padded.
DW_SHARED_CASES = [
    Case("dwpw_s1_shared_columns_zp", (1, 12, 5, 10),
         "[nn.Conv2d(12, 12, 1), nn.Hardtanh(-6.0, 0.0), nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU6(),"
         " nn.Conv2d(12, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),"
         " nn.Conv2d(16, 5, 1)]", ("dwpw",)),
]


@pytest.mark.parametrize("case", DW_SHARED_CASES, ids=[c.name for c in DW_SHARED_CASES])
@M4_M7
def test_dw_shared_column_loads_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    import re

    sources = _check_kernel_case(tmp_path, monkeypatch, case, 110 + DW_SHARED_CASES.index(case),
                                 [board])
    for board, model_c in sources.items():
        assert "ec_dw_s16_2x4_k3x3s1(" in model_c, board
        assert "xa = ec_ldr32(xr + 3 * ldx_px + 0); xb = ec_ldr32(xr + 3 * ldx_px + 0 + 2);" in model_c, board
        zps = {int(z) for z in re.findall(r"\bec_widen_s8s16\([^;]*, (-?\d+)\);", model_c)}
        assert {-128, 127} <= zps, (board, zps)


# Fused depthwise+pointwise kernels on Cortex-M4/M7 store the pointwise weights widened to int16 ("k4w"):
# odd channel counts (17 in: 4 quads + 1; 5 out), one input channel's worth of quads (K = 4), stride 2.
WIDE_CASES = [
    Case("dwpw_17_5_wide", (1, 17, 6, 7),
         "[nn.Conv2d(17, 17, 3, padding=1, groups=17), nn.ReLU(), nn.Conv2d(17, 5, 1), nn.ReLU6()]", ("dwpw",)),
    Case("dwpw_4_3_s2_wide", (1, 4, 7, 6),
         "[nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), nn.ReLU6(), nn.Conv2d(4, 3, 1)]", ("dwpw",)),
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow if c.name == "dwpw_4_3_s2_wide" else ())
                                  for c in WIDE_CASES], ids=[c.name for c in WIDE_CASES])      # one slow (CI budget)
@M4_M7
def test_wide_weight_panels_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    sources = _check_kernel_case(tmp_path, monkeypatch, case, 90 + WIDE_CASES.index(case),
                                 [board])
    for board, model_c in sources.items():
        assert "ec_gemm_s16k4w_" in model_c and "ec_gemm_s16k4x_" not in model_c, board


# Cortex-M4/M7 2 x 2 "k4w" tiles (the fused kernels' pointwise GEMM): one asm statement per K quad, in
# fixed registers, unrolled up to 64 quads, the second row at its offset from the first (LDRD
# immediate, rows up to 510 values apart): K = 3 (no quad: the C tail only), 8, 260 (65 quads: past
# the unroll, a loop) and 10 (two quads and the tail), output zero points -128 (ReLU) and 127 (clamp to
# [-6, 0]); K = 520 (rows too far apart: a pointer per row); beside them 8 x 1 tiles (K = 6 to 17
# channels, odd). 3 x 2 tiles (rows of odd
# width): K = 44 (11 quads, the row offsets as LDR immediates). The last layer of the second and third
# cases saturates on both sides (checked on the reference's bytes).
ASM_QUAD_CASES = [
    Case("dwpw_asm_quads_k3_k260", (1, 3, 7, 8),
         "[nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.ReLU(), nn.Conv2d(3, 8, 1), nn.ReLU(),"
         " nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 260, 1), nn.ReLU(),"
         " nn.Conv2d(260, 260, 3, padding=1, groups=260), nn.ReLU(), nn.Conv2d(260, 6, 1)]", ("dwpw",)),
    Case("dwpw_asm_quads_zp_sat", (1, 10, 6, 8),
         "[nn.Conv2d(10, 10, 3, padding=1, groups=10), nn.ReLU6(), nn.Conv2d(10, 6, 1), nn.Hardtanh(-6.0, 0.0),"
         " nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6), nn.Conv2d(6, 17, 1)]", ("dwpw",)),
    Case("dwpw_asm_quads_3x2", (1, 44, 5, 3),
         "[nn.Conv2d(44, 44, 3, padding=1, groups=44), nn.ReLU6(), nn.Conv2d(44, 6, 1), nn.Hardtanh(-6.0, 0.0)]",
         ("dwpw",)),
    Case("dwpw_asm_quads_k520", (1, 520, 2, 4),
         "[nn.Conv2d(520, 520, 3, padding=1, groups=520), nn.ReLU6(), nn.Conv2d(520, 4, 1), nn.ReLU()]", ("dwpw",)),
]
ASM_QUAD_K = {"dwpw_asm_quads_k3_k260": ("2x2", {3, 8, 260}), "dwpw_asm_quads_zp_sat": ("2x2", {10}),
              "dwpw_asm_quads_3x2": ("3x2", {44}), "dwpw_asm_quads_k520": ("2x2", {520})}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow if c.name.endswith(("zp_sat", "3x2")) else ())
                                  for c in ASM_QUAD_CASES], ids=[c.name for c in ASM_QUAD_CASES])
# two slow (CI budget): the 3 x 2 quads also run in the default test_odd_row_gemm_tiles (K = 16)
@M4_M7
def test_asm_quad_gemm_tiles_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    import re

    seed = 110 + ASM_QUAD_CASES.index(case)
    if case.name.endswith(("zp_sat", "3x2")):  # saturation on both sides in the reference's own bytes
        reference, _ = vm_reference(_source(case, seed), _calibration(tmp_path, case, seed), monkeypatch)
        out = np.concatenate([reference(x).ravel() for x in _inputs(case, seed)])
        assert out.min() == -128 and out.max() == 127
    sources = _check_kernel_case(tmp_path, monkeypatch, case, seed, [board])
    for board, model_c in sources.items():
        tile, want = ASM_QUAD_K[case.name]
        ks = {int(k) for k in re.findall(rf"ec_gemm_s16k4w_{tile}\([^;]*\), (\d+), \(int64_t\)", model_c)}
        assert want <= ks, (board, ks)
        assert ("smlad %[c1_1], %[x1h], %[wh], %[c1_1]" if tile == "2x2" else "ldr %[x], [%[a], %[o2h]]") in model_c
        if case.name.endswith(("k260", "zp_sat")):      # the 2 x 2 GEMM's output zero point: the next window's
            zps = {int(z) for z in re.findall(r"\bec_widen_s8s16\([^;]*, (-?\d+)\);", model_c)}
            assert (-128 if case.name.endswith("k260") else 127) in zps, (board, zps)


# Cortex-M4/M7 fused dw+pw kernels: the depthwise rescale into the int16 rows of the pointwise GEMM is the
# SMMLA kernel too (`ec_requant_s8_MxN_s16`: its accumulators start at 0, the offset is added there, STRH),
# and the window's row copy takes 8 values per iteration, then a quad, then the scalar tail. 12 channels
# (2 x 4 depthwise tiles, and the only SMMLA rescale of its kernel: its 5 output channels take 1-channel
# tiles; rows of 96 values: 12 x 8), 5 (odd: the generic depthwise; rows of 40 at an odd int16 offset:
# head, 4 x 8, quad, 3), 20 at stride 2 (2 x 4 tiles), padding;
# the depthwise outputs' zero points -128 (ReLU) and 127 (clamp to [-6, 0]) and one without activation;
# the windows' zero points 127 and -128. Beside it a one-channel 3x3 convolution and its pointwise layer.
DW_RESCALE_CASES = [
    Case("dwpw_s16_rescale_12_5_20", (1, 12, 7, 8),
         "[nn.Conv2d(12, 12, 1), nn.Hardtanh(-6.0, 0.0), nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.ReLU(),"
         " nn.Conv2d(12, 5, 1), nn.ReLU6(), nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.BatchNorm2d(5),"
         " nn.Conv2d(5, 20, 1), nn.ReLU(), nn.Conv2d(20, 20, 3, stride=2, padding=1, groups=20),"
         " nn.Hardtanh(-6.0, 0.0), nn.Conv2d(20, 3, 1)]", ("dwpw",)),
    Case("dwpw_s16_rescale_one_channel", (1, 1, 6, 9),
         "[nn.Conv2d(1, 1, 3, padding=1, groups=1), nn.ReLU6(), nn.Conv2d(1, 4, 1), nn.ReLU()]", ()),
]


@pytest.mark.parametrize("case", DW_RESCALE_CASES, ids=[c.name for c in DW_RESCALE_CASES])
@M4_M7
def test_depthwise_rescale_into_int16_rows_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch, case, board):
    import re

    sources = _check_kernel_case(tmp_path, monkeypatch, case, 120 + DW_RESCALE_CASES.index(case),
                                 [board])
    if case.kinds != ("dwpw",):
        return
    for board, model_c in sources.items():
        assert "ec_requant_s8_2x4_s16(" in model_c, board                 # the 12- and 20-channel depthwise tiles
        body = model_c[model_c.index("static inline int32_t ec_requant_s8_2x4_s16("):]
        body = body[:body.index("\n}\n")]
        assert "smmla %0" in body and "+ off" in body, board
        zps = {int(z) for z in re.findall(r"\bec_widen_s8s16\([^;]*, (-?\d+)\);", model_c)}
        assert {-128, 127} <= zps, (board, zps)
        assert "for (; k >= 8; k -= 8) {" in model_c, board                # the row copy, 8 values per iteration


def test_wide_weight_panels_only_where_the_flash_holds_them(tmp_path, monkeypatch):
    """The widened panels are used only where the target's flash holds every weight twice over plus
    compiler.WIDE_WEIGHTS_CODE_MARGIN; otherwise the kernels keep int8 'k4x' panels and int8 weights.
    The margin is moved to either side of the stm32f746g-disco's exact limit for this network."""
    from edgecompile import compiler

    case = WIDE_CASES[0]
    source = _source(case, 7)
    calibration = _calibration(tmp_path, case, 7)
    board = load_target("stm32f746g-disco")
    flash = next(r for r in board.memory if r.kind == "flash").size

    def build(margin: int, label: str) -> tuple[dict, str, str]:
        monkeypatch.setattr(compiler, "WIDE_WEIGHTS_CODE_MARGIN", margin)
        out = tmp_path / label
        rep = write_build(source, board, out, BuildOptions(quant="int8", calibration=calibration, compare_unfused=False),
                          Progress(quiet=True))
        return rep, (out / "model.c").read_text(), (out / "weights.c").read_text()

    narrow, model_c, weights_c = build(flash, "narrow")            # 2 x weights + the whole flash: never fits
    assert "ec_gemm_s16k4x_" in model_c and "ec_gemm_s16k4w_" not in model_c and "int16[" not in weights_c
    int8_bytes = narrow["weights_bytes"]
    wide, model_c, weights_c = build(flash - 2 * int8_bytes, "wide")            # exactly fits
    assert "ec_gemm_s16k4w_" in model_c and "ec_gemm_s16k4x_" not in model_c and "int16[" in weights_c
    assert wide["weights_bytes"] > int8_bytes
    _, model_c, _ = build(flash - 2 * int8_bytes + 1, "over")                   # one byte over
    assert "ec_gemm_s16k4x_" in model_c and "ec_gemm_s16k4w_" not in model_c


def _check_kernel_case(tmp_path, monkeypatch, case: Case, seed: int, boards: list[str],
                       seen: dict | None = None) -> dict[str, str]:
    """Build `case` for each board, run it on the emulated board and the board's model.c on this
    machine: both must give the VM reference's bytes. Returns each board's model.c; `seen` gets
    the quantization parameters and the reference outputs."""
    source = _source(case, seed)
    calibration = _calibration(tmp_path, case, seed)
    reference, quant = vm_reference(source, calibration, monkeypatch)
    inputs = _inputs(case, seed)
    expected = [reference(x) for x in inputs]
    if seen is not None:
        seen.update(quant=quant, expected=expected)
    output_spread(expected)      # the reference depends on the input, or the comparison proves nothing
    sources = {}
    for board in boards:
        out = tmp_path / board
        rep = write_build(source, load_target(board), out,
                          BuildOptions(quant="int8", calibration=calibration, compare_unfused=False),
                          Progress(quiet=True))
        assert rep["quant"] == quant
        kinds = {c["kind"] for c in rep["calls"] if not c["schedule"].startswith("generic")}
        untiled = {c["kind"] for c in rep["calls"] if c["schedule"].startswith("generic")}
        assert not set(case.kinds) & untiled, f"{board}: a {case.kinds} kernel is untiled"
        assert set(case.kinds) <= kinds, f"{board}: {case.kinds} not tiled ({[c['schedule'] for c in rep['calls']]})"
        host = HostModel.from_sources(out)
        for x, want, dev in zip(inputs, expected, board_outputs(board, out, rep, inputs, timeout=30, dtype="int8")):
            assert dev.tobytes() == want.tobytes(), f"{board}: device bytes differ from the reference"
            assert host.run(x)[0].tobytes() == want.tobytes(), f"{board}: host compile of model.c differs"
        host.close()
        sources[board] = (out / "model.c").read_text()
    return sources


# ----------------------------------------------------------------------------- whole networks

NETWORKS = [("mobilenet_v1", dict(width_mult=0.25, resolution=96, num_classes=2)),   # the MLPerf Tiny wake-word shape
            *FAMILIES]                                                                 # one of each zoo family


@pytest.fixture(scope="module")
def host_int8(tmp_path_factory):
    """The host int8 build of a network (this machine's own schedules and kernels), cached."""
    root, cache = tmp_path_factory.mktemp("host8"), {}

    def get(name: str, opts: dict):
        if name not in cache:
            source = load_model(name, ModelOptions(**opts))
            rep = write_build(source, load_target("host"), root / name, BuildOptions(quant="int8", compare_unfused=False),
                              Progress(quiet=True))
            cache[name] = (source, rep, HostModel(root / name))
        return cache[name]

    return get


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("name,opts", [pytest.param(*n, marks=() if n[0] == "mobilenet_v1" else pytest.mark.slow)
                                       for n in NETWORKS], ids=[n[0] for n in NETWORKS])
def test_network_int8_bytes_equal_the_host_build_on_every_core(tmp_path, host_int8, name, opts, board):
    source, host_rep, host = host_int8(name, opts)
    try:
        rep = write_build(source, load_target(board), tmp_path / board, BuildOptions(quant="int8", compare_unfused=False),
                          Progress(quiet=True))
    except FitError as err:
        pytest.skip(str(err))
    assert rep["quant"] == host_rep["quant"]
    rng = np.random.default_rng(5)
    shape = tuple(rep["inputs"][0]["shape"])
    inputs = [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(3)]
    expected = [host.run(x)[0] for x in inputs]
    output_spread(expected)
    for want, dev in zip(expected, board_outputs(board, tmp_path / board, rep, inputs, dtype="int8")):
        assert dev.tobytes() == want.tobytes()


def test_k16_panel_order_and_the_weight_range_it_needs():
    """The NEON kernels' 'k16' panels: 16-step groups per channel, then each channel's K % 16 last
    steps together; a weight of -128 (pair sums would overflow 16 bits) is refused with the
    weight's name."""
    from edgecompile.codegen.weights import pack_weight
    from edgecompile.errors import EdgeCompileError
    from edgecompile.ir.program import Program, Tensor
    from edgecompile.schedules.ukernels import order_panel

    k, n = 27, 3                                       # 16 + 11
    panel = np.arange(k * n).reshape(k, n)             # value = k * n + channel
    flat = order_panel(panel, "k16").ravel()
    assert [int(v) for v in flat[:16]] == [t * n for t in range(16)]                 # channel 0, steps 0..15
    assert [int(v) for v in flat[16:32]] == [t * n + 1 for t in range(16)]           # channel 1
    assert [int(v) for v in flat[48:59]] == [(16 + t) * n for t in range(11)]        # channel 0, steps 16..26
    assert [int(v) for v in flat[70:]] == [(16 + t) * n + 2 for t in range(11)]      # channel 2, steps 16..26
    w = np.ones((27, 6), np.int8)
    w[5, 4] = -128
    prog = Program([], [], {"w": Tensor("w", (27, 6), "int8", "weight")}, {"w": w}, [])
    with pytest.raises(EdgeCompileError, match="weight w holds -128"):
        pack_weight(prog, "w", 3, "k16")
    w[5, 4] = -127
    pack_weight(prog, "w", 3, "k16")
    assert prog.tensors["w"].panel_order == "k16"


# ----------------------------------------------------------------------------- Cortex-M4/M7 SMMLA rescale

def test_rescale_constants_reproduce_the_folded_form():
    """cortex_m.ukernels.rescale_constants: for shifts n = 33..54, zero points -128 and 127, offsets
    and accumulators at the int32 extremes, even multipliers (several trailing zero bits, 2^30) and
    m0 = 0, SMMLA(acc + off, m0, Ra) (the high word of (acc + off) * m0 + Ra * 2^32, wrapped to 32
    bits as the instruction does) equals the high word of the folded form acc * m0 + rnd; a shift
    of 32 (SMMLAR's) is refused."""
    from edgecompile.errors import EdgeCompileError
    from edgecompile.schedules.cortex_m.ukernels import rescale_constants

    rng = np.random.default_rng(12)
    m0s = [0, 1 << 30, (1 << 31) - 1, 3 << 28, 0x5A5A5A5A, 0x40000001] + [int(v) for v in rng.integers(1 << 30, 1 << 31, 6)]
    seen = set()
    for m0 in m0s:
        for n in (33, 34, 40, 47, 54):
            for zp in (-128, 127, 0):
                offs = [0, 1, -1, 12345, -(1 << 20)] if m0 == 0 else [int(v) for v in rng.integers(-(1 << 24), 1 << 24, 3)]
                for off in offs + ([(1 << 30) - 7, -(1 << 30)] if m0 else []):
                    rnd = off * m0 + (1 << (n - 1)) + zp * (1 << n)
                    enc = int(rescale_constants(np.array([m0], np.int32), np.array([rnd], np.int64),
                                                np.array([n - 32], np.int32))[0])
                    off2, ra = ((enc & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000, enc >> 32
                    seen.add((ra == (1 << (n - 33)) + zp * (1 << (n - 32))) if m0 % 2 else None)
                    lim = (1 << 31) - 1 - max(abs(off), abs(off2))
                    for acc in [0, 1, -1, lim, -lim, *(int(v) for v in rng.integers(-lim, lim, 8))]:
                        want = (acc * m0 + rnd) >> 32
                        if not -(1 << 31) <= want < (1 << 31):
                            continue
                        a = acc + off2
                        assert -(1 << 31) <= a < (1 << 31)
                        got = ((((a * m0) >> 32) + ra + (1 << 31)) % (1 << 32)) - (1 << 31)
                        assert got == want, (m0, n, zp, off, acc)
    assert True in seen           # an odd multiplier: Ra is exactly 2^(n-33) + zp * 2^(n-32)
    with pytest.raises(EdgeCompileError, match="n > 32"):
        rescale_constants(np.array([1 << 30], np.int32), np.array([1 << 31], np.int64), np.array([0], np.int32), "w")


class _RescaleNet(nn.Module):
    """pw 3 -> 16 (ReLU6: output zero point -128), dw 3x3 + pw 16 -> 4 (ReLU6) whose channel 0 has
    a multiplier in [0.25, 0.5) (a shift n == 32: that kernel keeps its own C), pw 4 -> 2 with a
    negative bias (every output negative: zero point 127). Saturation on both sides: the clipped
    outputs. (Odd channel counts get tiles of one channel, pixels innermost: the generic rescale.)"""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(31)
        self.pw1 = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw2 = nn.Conv2d(16, 4, 1)
        self.pw3 = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.pw1.weight.copy_(torch.randn(16, 3, 1, 1, generator=g) * 1.5)
            self.pw1.bias.copy_(torch.randn(16, generator=g))
            self.dw.weight.copy_(torch.randn(16, 1, 3, 3, generator=g) * 0.4)
            self.pw2.weight.copy_(torch.randn(4, 16, 1, 1, generator=g) * 0.3)
            self.pw2.weight[0].copy_(torch.randn(16, 1, 1, generator=g).clamp(-1, 1) * 45.0)   # multiplier ~0.35
            self.pw3.weight.copy_(torch.rand(2, 4, 1, 1, generator=g) + 0.5)
            self.pw3.bias.fill_(-40.0)

    def forward(self, x):
        x = torch.clamp(self.pw1(x), 0, 6)
        x = self.pw2(torch.clamp(self.dw(x), 0, 6))
        return self.pw3(torch.clamp(x, 0, 6))


def test_smmla_rescale_bytes_equal_the_integer_reference_on_m4_m7(tmp_path, monkeypatch):
    """The Cortex-M4/M7 rescale kernel (SMMLA over (off, Ra) constants, accumulators started at the
    offsets) on 16- and 2-channel outputs with zero points -128 and 127, beside a kernel with a
    shift-32 channel that keeps the generic rescale: the emulated boards and the host compile of
    the same model.c give the VM reference's bytes."""
    import re

    shape = (1, 3, 6, 8)
    model = _RescaleNet().eval()
    source = _from_torch("rescale_net", model, shape, ModelOptions(input_shape=shape, seed=0))
    rng = np.random.default_rng(3)
    path = tmp_path / "calibration.npy"
    np.save(path, rng.uniform(-1.0, 1.0, (8, *shape[1:])).astype(np.float32))
    reference, quant = vm_reference(source, str(path), monkeypatch)
    inputs = [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(4)]
    expected = [reference(x) for x in inputs]
    output_spread(expected)
    assert quant["output"]["zero_point"] == 127
    for board in ["mps2-an386", "stm32f746g-disco"]:
        out = tmp_path / board
        rep = write_build(source, load_target(board), out,
                          BuildOptions(quant="int8", calibration=str(path), compare_unfused=False), Progress(quiet=True))
        model_c = (out / "model.c").read_text()
        smmla = set(re.findall(r"\bec_requant_s8_(\d+x\d+)\(\(", model_c))
        assert len(smmla) >= 2 and "smmla %0" in model_c, (board, smmla)              # pw 3 -> 16 and 3 -> 2
        dwpw = model_c[model_c.index("int32_t ec_dwpw_s8_"):]
        dwpw = dwpw[:dwpw.index("\n}\n")]
        assert "ec_requant_s8_" not in dwpw and "param_2_1[" in dwpw, board          # the n == 32 kernel: generic
        shifts = [[int(v, 16) for v in re.findall(r"0x([0-9a-f]+)u", body)] for body in
                  re.findall(r"/\* w\d+: int32\[4\] \*/\n[^\n]*= \{\{([^}]*)\}\}", (out / "weights.c").read_text())]
        assert any(0 in v and max(v) <= 22 for v in shifts), board                    # ... because of its r == 0
        assert "dwpw" in {c["kind"] for c in rep["calls"]}
        host = HostModel.from_sources(out)
        for x, want, dev in zip(inputs, expected, board_outputs(board, out, rep, inputs, timeout=30, dtype="int8")):
            assert dev.tobytes() == want.tobytes(), f"{board}: device bytes differ from the reference"
            assert host.run(x)[0].tobytes() == want.tobytes(), f"{board}: host compile of model.c differs"
        host.close()
