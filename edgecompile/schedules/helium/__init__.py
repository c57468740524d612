"""Schedules for Cortex-M55 with Helium (MVE): 128-bit vectors but only 8 vector registers.
Integer GEMM tiles over int8 activations use Helium (`ukernels.py`: VMLADAVA.S8 over weight panels
in groups of 16 reduction steps per channel, "k16"); fused depthwise+pointwise kernels therefore
keep their depthwise rows int8; int16-activation GEMM tiles (the zero-point-shifted rows of padded
KxK convolutions) use VMLADAVA.S16 over groups of 8 ("k8"). Integer depthwise tiles (int16 padded
rows x int8 weights) use 4-lane Helium vectors. Float kernels use the 4-lane vectors."""

from typing import Any

from .. import tiling
from ..cortex_m import CortexMRules


class HeliumRules(CortexMRules):
    """Integer GEMM tiles read "k16" (int8 activations) or "k8" (int16) panels: Helium kernels."""

    DW_VECTORS = 4      # the wake-word network: 7.93 M / 7.92 M / 7.76 M / 8.35 M / 8.22 M with 2 / 3 / 4 / 6 / 8

    def accumulators(self, which: str, types: Any) -> int:
        """Integer GEMM tiles: 6 accumulators (VMLADAVA accumulates into even core registers; the
        wake-word network measured 8.52 M / 8.12 M / 8.44 M instructions with 4 / 6 / 8 on its
        int8 GEMMs, its first (int16, padded) convolution 1.23 M / 1.12 M with 4 / 6)."""
        if which in ("conv", "fc") and types is not None and types.c == "int32" and types.a in ("int8", "int16"):
            return 6
        return super().accumulators(which, types)

    def _lanes_budget(self, sch: Any, block_name: str | None, which: str) -> tuple[int, int]:
        """int16 x int8 depthwise tiles: 4-lane Helium vectors, DW_VECTORS accumulator vectors."""
        lanes, acc = super()._lanes_budget(sch, block_name, which)
        if which == "dw" and block_name:
            types = tiling.operand_types(sch, sch.get_sblock(block_name))
            if types is not None and types.a == "int16" and types.c == "int32":
                return 4, self.DW_VECTORS
        return lanes, acc

    def panel_order(self, types: Any) -> str:
        if types.c == "int32" and types.a in ("int8", "int16"):
            return "k16" if types.a == "int8" else "k8"
        return super().panel_order(types)


LANES = 4
RULES = HeliumRules(lanes=LANES, conv_acc=4, dw_acc=4, fc_acc=4, wide_rows=False)
