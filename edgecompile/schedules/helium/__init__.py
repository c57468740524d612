"""Schedules for Cortex-M55 with Helium (MVE): 128-bit vectors but only 8 vector registers.
Integer kernels: the M55 also has the DSP extension, so until Helium int8 kernels exist its int8
GEMM and depthwise tiles are those of Cortex-M4/M7 (`cortex_m`: SMLAD over K-quad weight panels,
int16 depthwise rows in fused kernels); float kernels use the 4-lane vectors."""

from ..cortex_m import CortexMRules

LANES = 4
RULES = CortexMRules(lanes=LANES, conv_acc=4, dw_acc=4, fc_acc=4, wide_rows=True)
