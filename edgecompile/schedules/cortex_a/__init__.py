"""Schedules for Cortex-A (A72 in the Raspberry Pi 4): 128-bit NEON, 32 vector registers. Its own
micro-kernels (NEON GEMM with fmla by element; int8 GEMM by smull/sadalp over 16-step weight
blocks; int8 depthwise on 16-bit lanes) are in `ukernels.py`."""

from typing import Any

from ..rules import TiledRules


class CortexARules(TiledRules):
    """int8 x int8 GEMM tiles (pointwise convolutions, dense layers) keep one int32x4 accumulator
    per (pixel, channel) pair, the 4 lanes partial sums over the reduction: 16 pairs (4 x 4, 2 x 8,
    1 x 16...) leave registers for the 16-byte activation and weight blocks. Their weight panels are
    stored in 16-step blocks per channel ("k16")."""

    def _s8_gemm(self, types: Any) -> bool:
        return types is not None and (types.a, types.b, types.c) == ("int8", "int8", "int32")

    def accumulators(self, which: str, types: Any) -> int:
        if which in ("conv", "fc") and self._s8_gemm(types):
            return 16
        return super().accumulators(which, types)

    def lanes_for(self, types: Any) -> int:
        """Pairs, not vectors of channels: any channel count."""
        if self._s8_gemm(types):
            return 1
        return self.lanes

    def panel_order(self, types: Any) -> str:
        return "k16" if self._s8_gemm(types) else ""


LANES = 4
RULES = CortexARules(lanes=LANES, conv_acc=20, dw_acc=12, fc_acc=8)
