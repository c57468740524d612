"""Schedules for Cortex-A (A72 in the Raspberry Pi 4): 128-bit NEON, 32 vector registers."""

from .generic import TiledRules

LANES = 4
LANE_FMA = True      # GEMM micro-kernels load A rows as vectors and use fmla by element
RULES = TiledRules(lanes=LANES, conv_acc=20, dw_acc=12, fc_acc=8)

schedule_conv = RULES.schedule_conv
schedule_depthwise = RULES.schedule_depthwise
schedule_dwpw = RULES.schedule_dwpw
schedule_dense = RULES.schedule_dense
schedule_pool = RULES.schedule_pool
schedule_elementwise = RULES.schedule_elementwise
space = RULES.space
