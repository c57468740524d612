"""The AVX2 float GEMM tile model (schedules/host: GemmModel.step_cycles, broadcast_loads,
b_operands, operand_loads, ragged_min_width; measured in the comment above AVX2_STEP_CYCLES): tiles of 10 to 12
accumulators in two vectors (5 x 16, 6 x 16) rank above the 8-accumulator and one-vector tiles
that ran slower, B vectors that do not fit the registers cost a load per FMA, short calls are not
latency-bound, rows under 8 pixels keep dividing tiles, and a 1000-class classifier runs 1 x 40
tiles (5 chains of FMAs, not 1 x 8's one). The AVX2 model is built here as the
host rules build it, whatever this machine's variant; the build test compiles the AVX2 variant's
C (EDGECOMPILE_HOST_VECTOR=avx2 in a child process: every x86-64 host CI runs runs AVX2) and
checks it against PyTorch on outputs that depend on the input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from edgecompile.schedules.host import (AVX2_BROADCAST_LOADS, AVX2_L3_BYTES_PER_CYCLE, AVX2_OPERAND_LOADS,
                                        AVX2_RAGGED_MIN_WIDTH, AVX2_STEP_CYCLES, L2_BYTES, L3_BYTES_PER_CYCLE)
from edgecompile.schedules.rules import GemmModel, model_tiles, tile_candidates

AVX2 = GemmModel(registers=16, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32,
                 overlap_tail=True, l2_bytes=L2_BYTES["avx2"], l3_bytes_per_cycle=AVX2_L3_BYTES_PER_CYCLE,
                 step_cycles=AVX2_STEP_CYCLES, b_operands=True, broadcast_loads=AVX2_BROADCAST_LOADS,
                 operand_loads=AVX2_OPERAND_LOADS, blocked=False, ragged_min_width=AVX2_RAGGED_MIN_WIDTH)
BEFORE = replace(AVX2, step_cycles=0, b_operands=False, broadcast_loads=1.0, operand_loads=1.0, blocked=True,
                 ragged_min_width=0, l3_bytes_per_cycle=8)


def first(width: int, channels: int, k: int | None, model: GemmModel = AVX2) -> tuple[int, int]:
    return tile_candidates(width, channels, 8, model.accumulators, 8, True, model, k, True)[0]


def test_avx2_model_ranks_twelve_accumulators_in_two_vectors_first():
    # 6 x 16 tiles (ragged rows) where the model before took 8-accumulator ones
    assert first(112, 64, 32) == (6, 16) and first(112, 64, 32, BEFORE) == (4, 16)
    assert first(56, 128, 128) == (6, 16) and first(56, 128, 128, BEFORE) == (4, 16)
    assert first(28, 256, 256) == (6, 16)
    assert first(14, 512, 512) == (6, 16) and first(14, 512, 512, BEFORE) == (7, 8)   # 1 MB of weights
    # 5 x 16 divides a 55-pixel row: above 11 x 8 (11 broadcasts a step) and a ragged 6 x 16
    assert first(55, 64, 64) == (5, 16)
    # B as memory operands (2 x 48: 12 FMA operands + 2 broadcasts a step) ranks below 6 x 16 tiles
    # with a ragged last one (SqueezeNet's 13-pixel rows: 2 x 48 + 1 x 48 ran ~1.2x slower than 5 x 16)
    assert first(14, 384, 64) == (6, 16) and first(13, 192, 48) == (6, 16)
    assert AVX2.efficiency(2, 48, 8) < AVX2.efficiency(5, 16, 8)
    # rows under 8 pixels: no ragged tiles (7 x 8 as before, not 4 x 24 + 3 x 24 or 2 x 40 + 1 x 40)
    assert first(7, 960, 160) == (7, 8) and first(7, 1024, 1024) == (7, 8)


def test_channels_only_a_quarter_vector_divides_take_overlapped_full_vectors():
    """116 channels (29 x 4, ShuffleNet V2 1.0): the best 4-lane tile (7 x 4, one quarter vector,
    7 accumulators) rates far below full vectors with an overlapping last one (2 x 116: 15 vectors
    in blocks of 6, 6, 3), which come first; a tile with a full vector (AVX-512's 60 channels as
    16 + 16 + 16 + 8 + 4) keeps the model's own ranking."""
    assert model_tiles(14, 116, 8, AVX2, 116)[0] == (7, 4)
    assert first(14, 116, 116) == (2, 116) and first(28, 116, 116) == (2, 116)
    assert first(28, 58, 58) == (2, 58)        # no narrower vector divides 58: overlapped as before
    avx512 = GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2, l2_bytes_per_cycle=32,
                       overlap_tail=True, b_in_registers=True, l2_bytes=L2_BYTES["avx512"],
                       l3_bytes_per_cycle=L3_BYTES_PER_CYCLE)
    assert tile_candidates(28, 60, 16, 28, 8, True, avx512, 60, True)[0] == model_tiles(28, 60, 16, avx512, 60)[0]


def test_avx2_model_terms():
    lanes = 8
    # a step takes 6 cycles: 8 accumulators fill 2/3 of the FMA slots, 12 all of them
    assert AVX2.efficiency(4, 16, lanes) == 4 / 6 and AVX2.efficiency(6, 16, lanes) == 1.0
    # broadcasts cost 1.5 load slots: 11 x 8 is load-bound
    assert AVX2.efficiency(11, 8, lanes) == 5.5 / ((11 * 1.5 + 1) / 2)
    # B vectors in registers beside the accumulators, a broadcast and one spare, else one load per FMA
    assert AVX2.b_loads(6, 2) == 2 and AVX2.b_loads(4, 3) == 12 * AVX2_OPERAND_LOADS == AVX2.b_loads(3, 4)
    assert AVX2.efficiency(4, 24, lanes) < AVX2.efficiency(5, 16, lanes) < AVX2.efficiency(6, 16, lanes)
    # calls of at most short_k steps (the first convolution's taps) are not latency-bound
    assert AVX2.for_weights(3, 32).step_cycles == 0 and AVX2.for_weights(64, 32).step_cycles == AVX2_STEP_CYCLES
    assert AVX2.for_weights(3, 32).efficiency(4, 16, lanes) == 1.0
    # weights past L2 stream at the L3 rate, still counted
    assert AVX2.for_weights(1024, 1024).l2_bytes_per_cycle == AVX2_L3_BYTES_PER_CYCLE


def test_avx2_build_takes_the_modelled_tiles_and_matches_pytorch(tmp_path):
    """The AVX2 variant's C (built in a child process so that the variant is chosen at import),
    its tiles the model's first candidates, run here against PyTorch: every host CI is x86-64 with
    AVX2 (the build's -march=native C compiles AVX2 code on an AVX-512 host too)."""
    script = Path(__file__).with_name("avx2_tiles_child.py")
    env = {**os.environ, "EDGECOMPILE_HOST_VECTOR": "avx2"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["variant"] == "avx2"
    for name, present in result["tiles"].items():
        assert present, (name, result)
    assert result["max_rel_err"] <= result["tolerance"], result
    assert result["output_spread"] > 0.1, result        # the outputs depend on the input
