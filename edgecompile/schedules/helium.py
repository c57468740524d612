"""Schedules for Cortex-M55 with Helium (MVE): 128-bit vectors but only 8 vector registers."""

from .generic import TiledRules

LANES = 4
RULES = TiledRules(lanes=LANES, conv_acc=4, dw_acc=4, fc_acc=4)

schedule_conv = RULES.schedule_conv
schedule_depthwise = RULES.schedule_depthwise
schedule_dwpw = RULES.schedule_dwpw
schedule_dense = RULES.schedule_dense
schedule_pool = RULES.schedule_pool
schedule_elementwise = RULES.schedule_elementwise
space = RULES.space
