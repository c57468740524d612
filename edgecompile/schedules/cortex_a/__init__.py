"""Schedules for Cortex-A (A72 in the Raspberry Pi 4): 128-bit NEON, 32 vector registers. Its own
micro-kernels (NEON GEMM with fmla by element; int8 GEMM by smull/sadalp over 16-step weight
blocks; int8 depthwise on 16-bit lanes; the int8 rescale) are in `ukernels.py`."""

from typing import Any

from .. import tiling
from ..rules import TiledRules


class CortexARules(TiledRules):
    """int8 x int8 GEMM tiles (pointwise convolutions, dense layers) keep one int32x4 accumulator
    per (pixel, channel) pair, the 4 lanes partial sums over the reduction: 16 pairs (4 x 4, 2 x 8,
    1 x 16...) leave registers for the 16-byte activation and weight blocks. Their weight panels are
    stored in 16-step blocks per channel ("k16"). int16 x int8 GEMM tiles (the padded rows of KxK
    convolutions) are counted in vectors of 8 channels, 4 of them (8 int32x4 accumulators).
    Padded windows are split into a fill and a copy (`tiling.split_padding`)."""

    def _s8_gemm(self, types: Any) -> bool:
        return types is not None and (types.a, types.b, types.c) == ("int8", "int8", "int32")

    def accumulators(self, which: str, types: Any) -> int:
        if which in ("conv", "fc") and self._s8_gemm(types):
            return 16
        return super().accumulators(which, types)

    def _s16_gemm(self, types: Any) -> bool:
        return types is not None and (types.a, types.b, types.c) == ("int16", "int8", "int32")

    def _lanes_budget(self, sch: Any, block_name: str | None, which: str) -> tuple[int, int]:
        """int16 x int8 GEMMs: channels in eights (one widened weight vector), 4 such vectors
        (4 x 8 tiles; 8 x 8 spills: MobileNet V1 0.25/96's first conv 437 k -> 353 k instructions)."""
        types = tiling.operand_types(sch, sch.get_sblock(block_name)) if block_name else None
        if which == "conv" and self._s16_gemm(types):
            return 8, 4
        return super()._lanes_budget(sch, block_name, which)

    def lanes_for(self, types: Any) -> int:
        """int8 GEMMs: pairs, not vectors of channels: any channel count."""
        if self._s8_gemm(types):
            return 1
        return self.lanes

    def panel_order(self, types: Any) -> str:
        return "k16" if self._s8_gemm(types) else ""

    # int8 rescale tiles of at least this many channels go to the NEON rescale kernel (a vector of
    # 4 int32 accumulators per step); narrower ones keep the scalar C
    REQUANT_MIN_CHANNELS = 4

    def finish(self, sch: Any, info: Any, blocks_before: list[str]) -> None:
        """Padded windows: TVM writes each padded value as `cond ? x - zero_point : 0` inside the
        channel loop, which gcc leaves scalar (one load, add, store per value: ~20% of an int8
        MobileNet's instructions on the A72). Split into a block that fills the window with the
        pad value and one that copies the in-bound values without a condition: the copy's channel
        loop is vectorized. (A build step, not part of the rules: MetaSchedule cannot print the
        trace of `decompose_padding`, so tuning measures kernels without it.)
        Then the int8 rescale epilogues of tiles of >= REQUANT_MIN_CHANNELS channels become NEON
        rescale kernel calls (tiling.tensorize_requant): MobileNet V1 0.25/96 int8 4.35 M -> 3.25 M
        instructions (scalar C: a 64-bit multiply-add, two shifts and a clamp per value). Inlined,
        as gcc does it: out of line measured 3.37 M."""
        tiling.split_padding(sch, [b for b in blocks_before if "pad" in b.lower()])
        tiling.tensorize_requant(sch, self.REQUANT_MIN_CHANNELS)


LANES = 4
RULES = CortexARules(lanes=LANES, conv_acc=20, dw_acc=12, fc_acc=8, ragged=True, ragged_pixels=True)
