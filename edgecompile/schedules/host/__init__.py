"""Schedules for the development host (built with -march=native, so they follow this machine):
AVX-512 (16-lane vectors, 32 registers: up to 24 accumulators) when the CPU has it, else AVX2
(8 lanes, 16 registers: 12 accumulators); float GEMM tiles are ranked by a model of the core
(rules.GemmModel: two FMAs and two loads or broadcasts per cycle, as on every AVX2/AVX-512 core
since Haswell; weights streaming from L2 at 32 bytes per cycle, half the L1 fill width), with up
to 28 accumulators on AVX-512 (4 registers left for B vectors).
EDGECOMPILE_HOST_VECTOR=avx2|avx512 overrides the detection (e.g. to build on one machine for
another)."""

import os

from ..rules import GemmModel, TiledRules


def _has_avx512() -> bool:
    forced = os.environ.get("EDGECOMPILE_HOST_VECTOR", "")
    if forced:
        return forced == "avx512"
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


if _has_avx512():
    VARIANT = "avx512"           # tuning records are kept per variant: their tiles depend on it
    LANES = 16
    RULES = TiledRules(lanes=LANES, conv_acc=24, dw_acc=16, fc_acc=8, ragged=True, ragged_pixels=True,
                       gemm_model=GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2,
                                            l2_bytes_per_cycle=32))
else:
    VARIANT = "avx2"
    LANES = 8
    RULES = TiledRules(lanes=LANES, conv_acc=12, dw_acc=8, fc_acc=4, ragged=True, ragged_pixels=True,
                       gemm_model=GemmModel(registers=16, reserved=4, fma_per_cycle=2, loads_per_cycle=2,
                                            l2_bytes_per_cycle=32))
