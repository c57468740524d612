"""Schedules for Cortex-A (A72 in the Raspberry Pi 4): 128-bit NEON, 32 vector registers. Its own
micro-kernels (NEON GEMM with fmla by element) are in `ukernels.py`."""

from ..rules import TiledRules

LANES = 4
RULES = TiledRules(lanes=LANES, conv_acc=20, dw_acc=12, fc_acc=8)
