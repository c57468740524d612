"""Schedules for Cortex-M4/M7: no floating-point SIMD; micro-kernels keep a tile of accumulators
in the 32 single-precision FPU registers (float) or the 13-14 usable core registers (int8)."""

from ..rules import TiledRules

LANES = 1
RULES = TiledRules(lanes=LANES, conv_acc=16, dw_acc=8, fc_acc=8)
