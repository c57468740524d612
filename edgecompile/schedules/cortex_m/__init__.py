"""Schedules for Cortex-M4/M7: no floating-point SIMD; micro-kernels keep a tile of accumulators
in the 32 single-precision FPU registers (float) or the 13-14 usable core registers (int8). Integer
GEMM kernels use the DSP extension's dual 16-bit multiply-accumulate (SMLAD, `ukernels.py`) over
weight panels stored in quads of the reduction; fused depthwise+pointwise kernels keep their int8
depthwise rows as int16, which those kernels read two values per word without extending."""

from typing import Any

from ..rules import TiledRules


class CortexMRules(TiledRules):
    """Integer GEMM tiles get 4 accumulators: with two words of activations per pixel, the
    channels' weight words and the row and panel pointers, a 2 x 2 tile fills the core registers."""

    INT_GEMM_ACC = 4

    def accumulators(self, which: str, types: Any) -> int:
        if which == "conv" and types is not None and types.c == "int32":
            return self.INT_GEMM_ACC
        return super().accumulators(which, types)

    def panel_order(self, types: Any) -> str:
        if types.c != "int32":
            return ""
        return "k4x" if types.a == "int16" else "k4"


LANES = 1
RULES = CortexMRules(lanes=LANES, conv_acc=16, dw_acc=8, fc_acc=8, wide_rows=True)
