"""Schedules for Cortex-M55 with Helium (MVE): 128-bit vectors but only 8 vector registers.
Integer GEMM tiles over int8 activations use Helium (`ukernels.py`: VMLADAVA.S8 over weight panels
in groups of 16 reduction steps per channel, "k16"); fused depthwise+pointwise kernels therefore
keep their depthwise rows int8. Integer depthwise and int16-activation GEMM tiles (padded KxK
convolutions) are those of Cortex-M4/M7 (`cortex_m`: the M55 has the DSP extension). Float
kernels use the 4-lane vectors."""

from typing import Any

from ..cortex_m import CortexMRules


class HeliumRules(CortexMRules):
    """int8 x int8 GEMM tiles read "k16" panels (Helium); int16 activations keep the DSP order."""

    def panel_order(self, types: Any) -> str:
        if types.c == "int32" and types.a == "int8":
            return "k16"
        return super().panel_order(types)


LANES = 4
RULES = HeliumRules(lanes=LANES, conv_acc=4, dw_acc=4, fc_acc=4, wide_rows=False)
