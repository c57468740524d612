"""Schedules for Cortex-M55 with Helium (MVE): 128-bit vectors but only 8 vector registers."""

from ..rules import TiledRules

LANES = 4
RULES = TiledRules(lanes=LANES, conv_acc=4, dw_acc=4, fc_acc=4)
