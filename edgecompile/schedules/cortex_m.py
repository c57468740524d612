"""Schedules for Cortex-M4/M7: no floating-point SIMD; micro-kernels keep a tile of accumulators in the 32 single-precision FPU registers."""

from .generic import TiledRules

LANES = 1
RULES = TiledRules(lanes=LANES, conv_acc=16, dw_acc=8, fc_acc=8)

schedule_conv = RULES.schedule_conv
schedule_depthwise = RULES.schedule_depthwise
schedule_dwpw = RULES.schedule_dwpw
schedule_dense = RULES.schedule_dense
schedule_pool = RULES.schedule_pool
schedule_elementwise = RULES.schedule_elementwise
space = RULES.space
