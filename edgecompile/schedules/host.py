"""Schedules for the development host: 8-lane (32-byte) vectors, AVX2's 16 registers (12 for accumulators); AVX-512 machines run them too."""

from .generic import TiledRules

LANES = 8
RULES = TiledRules(lanes=LANES, conv_acc=12, dw_acc=8, fc_acc=4)

schedule_conv = RULES.schedule_conv
schedule_depthwise = RULES.schedule_depthwise
schedule_dwpw = RULES.schedule_dwpw
schedule_dense = RULES.schedule_dense
schedule_pool = RULES.schedule_pool
schedule_elementwise = RULES.schedule_elementwise
space = RULES.space
