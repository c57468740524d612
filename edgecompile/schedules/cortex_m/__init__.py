"""Schedules for Cortex-M4/M7: no floating-point SIMD; micro-kernels keep a tile of accumulators
in the 32 single-precision FPU registers (float) or the 13-14 usable core registers (int8). Integer
GEMM kernels use the DSP extension's dual 16-bit multiply-accumulate (SMLAD, `ukernels.py`) over
weight panels stored in quads of the reduction; fused depthwise+pointwise kernels keep their int8
depthwise rows as int16, which those kernels read two values per word without extending."""

from typing import Any

from .. import tiling
from ..rules import TiledRules


class CortexMRules(TiledRules):
    """Integer GEMM tiles get 4 accumulators: with two words of activations per pixel, the
    channels' weight words and the row and panel pointers, a 2 x 2 tile fills the core registers.
    Integer depthwise tiles get 8 (2 pixels x a quad of channels: the DSP kernel's unit)."""

    INT_ACC = {"conv": 4, "dw": 8}

    def accumulators(self, which: str, types: Any) -> int:
        if which in self.INT_ACC and types is not None and types.c == "int32":
            return self.INT_ACC[which]
        return super().accumulators(which, types)

    ODD_ROW_ACC = 6
    # A 1x1 GEMM of at most SHORT_K reduction steps (one pass of the two-quad loop) takes SHORT_K_ACC
    # accumulators: the call, its accumulator loads and stores cost more than the spills of a wider
    # tile there. The wake-word network's first dw+pw kernel (K = 8), mps2-an386: 2 x 2 -> 2 x 4 tiles
    # 1,627,000 -> 1,596,973 instructions; 4 x 4 (16) measured 1,704,120; K <= 64 with 8 accumulators
    # made every other kernel slower (12.56 M -> 12.85 M for the network). Not in fused kernels (int16
    # rows) since their 2 x 2 tiles run as asm quads (ukernels._wide_asm_quads): that kernel
    # 1,419,840 -> 1,340,400 with 2 x 2 instead of 2 x 4, the network 10,828,522 -> 10,748,986.
    SHORT_K, SHORT_K_ACC = 8, 8

    def _lanes_budget(self, sch: Any, block_name: str | None, which: str) -> tuple[int, int]:
        """An integer GEMM tile over a row of odd width (the 3 x 3 maps at the end of the wake-word
        network) cannot take 2 pixels: rather than 1 x 4 (19 instructions per 16 MACs in the quad
        loop), 6 accumulators let it take 3 x 2. Even widths keep 2 x 2: 3 x 2 spills registers
        there (wake-word network on stm32f746g-disco: 3x3x256 layers 1,794,547 -> 1,516,173
        instructions, 6x6x128 layers 895,907 -> 1,147,840 each with 6 everywhere)."""
        lanes, acc = super()._lanes_budget(sch, block_name, which)
        if which == "conv" and block_name and acc == self.INT_ACC["conv"]:
            types = tiling.operand_types(sch, sch.get_sblock(block_name))
            ext = tiling.anchor_extents(sch, block_name)
            if types is not None and self.panel_order(types) in ("k4", "k4x") and len(ext) == 7:
                if ext[4] == ext[5] == 1 and ext[6] <= self.SHORT_K and not self._wide_rows_gemm:
                    return lanes, self.SHORT_K_ACC
                if ext[2] % 2:
                    return lanes, self.ODD_ROW_ACC
        return lanes, acc

    _wide_rows_gemm = False

    def schedule_dwpw(self, sch: Any, info: Any, rows: int | None = None, cfg: dict | None = None) -> bool:
        """As the generic rule; its pointwise GEMM reads the depthwise rows widened to int16 (wide_rows:
        its operand types still say int8 while the tile is chosen), whose 2 x 2 tiles are asm quads:
        no SHORT_K tiles there."""
        self._wide_rows_gemm = self.wide_rows
        try:
            return super().schedule_dwpw(sch, info, rows, cfg)
        finally:
            self._wide_rows_gemm = False

    def lanes_for(self, types: Any) -> int:
        """Integer kernels are the DSP extension's, in core registers: one lane (the family's
        lanes, e.g. Helium's 4, apply to its float kernels)."""
        if types is not None and types.c == "int32":
            return 1
        return self.lanes

    def panel_order(self, types: Any) -> str:
        if types.c != "int32":
            return ""
        return "k4x" if types.a == "int16" else "k4"

    def dwpw_panel_order(self, types: Any) -> str:
        """The pointwise GEMM of a fused kernel reads int16 depthwise rows: its weights are stored
        widened to int16 ("k4w"), so that SMLAD takes them as they are loaded (no SXTB16); twice
        their flash (the compiler keeps "k4x" where the target's flash would not hold it)."""
        order = self.panel_order(types)
        return "k4w" if order == "k4x" else order

    def window_panel_order(self, types: Any) -> str:
        """A whole-window GEMM over int16 padded rows (the first convolution: K = 3 x 3 x 3) reads its
        weights widened to int16 ("k4w"), as the fused kernels' pointwise GEMMs do: SMLAD takes
        them as loaded (no SXTB16 per weight word), and every channel tile's panel starts on a word
        (27 int8 weights per channel put every other "k4x" panel off a word: the kernel's
        unaligned path). Twice the weight bytes of that convolution (162 -> 324 B on the
        wake-word network)."""
        order = self.panel_order(types)
        return "k4w" if order == "k4x" else order

    WIDEN_MIN_CHANNELS = 3
    # The depthwise rescale of fused kernels (int8 values stored in the int16 rows of the pointwise GEMM)
    # by the SMMLA kernel too (`ec_requant_s8_MxN_s16`), its accumulators started at 0 and the offset
    # added there (tiling.rescale_offsets_into_init's own_offset). Wake-word network on mps2-an386,
    # emulator instructions per inference (edgecompile report, sum of the kernels, one session): the
    # generic 64-bit rescale 10,540,105 -> 10,511,279 (about 9.1 -> 8.9 instructions per depthwise
    # output: its 8 accumulators, 3 constant pointers and the row pointer exceed the registers, so the
    # constants' pointers are reloaded from the stack). With the offsets in the depthwise init instead
    # (the same session) 10,487,640 in total, lower, but mixed per kernel: 48x48x16 1,309,200 ->
    # 1,293,160 while the stride-1 2 x 4 depthwise tiles of 24x24x32_2 and 6x6x128_2 spill (8
    # accumulators started from 4 live offsets) 1,327,413 -> 1,341,533 and 660,400 -> 663,827 each;
    # a per-kernel choice between the two is left to do.
    WIDE_RESCALE = True

    def finish(self, sch: Any, info: Any, blocks_before: list[str]) -> None:
        """Padded int16 windows (int8 kernels) of at least WIDEN_MIN_CHANNELS channels split into a
        fill and an in-bound copy without a per-value condition (tiling.split_padding), and that
        copy is one `ec_widen_s8s16` call per padded row (tiling.mark_widen_rows; the DSP row copy of
        `ukernels.widen`, 4 values per word). Narrower windows keep the conditional copy. The
        wake-word network on mps2-an386, instructions per inference (edgecompile test --samples 2, one run): before
        (8-channel windows split, scalar copies) 12,486,880; every window split and widened
        12,229,580 (the 3-channel window 9 values per call); windows of >= 8 channels 12,105,360;
        8-channel windows only 12,432,180. Split without the row copy, windows of 16-256
        channels were 0.3-2% slower (the extra fill). Before -> after in one run, windows of >= 4
        channels widened: stm32f746g-disco 12,332,340 -> 11,824,500; per kernel on mps2-an386
        (edgecompile report) dw+pw 48x48x16 1,555,507 -> 1,500,787, 24x24x32 1,113,080 -> 997,267,
        24x24x32_2 1,559,947 -> 1,492,173, 6x6x128_2 741,920 -> 729,400 each, but 3x3x256_2
        761,227 -> 775,960 (a 5-pixel window row with 3 in bounds: the fill outweighs the copy).
        Flash 476,080 -> 475,632 B, RAM unchanged.
        Since then the 3-channel window of a first convolution too (WIDEN_MIN_CHANNELS 4 -> 3): its
        rows of 3 values go through the widen kernel's RGB path (4 rows per iteration), and its fill
        walks the pixel-major window in memory order (tiling.fill_in_memory_order: a contiguous
        run of word-pair stores instead of one STR + STRH per 3 values). Wake-word network,
        mps2-an386, `ec_conv_s8_k3x3s2_48x48x8` (edgecompile report): 987,680 -> 939,987 (the
        copy) -> 893,600 (the fill) instructions."""
        pads = [b for b in blocks_before if "pad" in b.lower() and tiling.block_dtype(sch, b) == "int16"]
        tiling.split_padding(sch, pads, 0, self.WIDEN_MIN_CHANNELS)
        tiling.fill_in_memory_order(sch, pads)
        tiling.mark_widen_rows(sch, pads)
        if info.rescale_kernel:
            tiling.tensorize_requant(sch, 1, info.rescale, wide=self.WIDE_RESCALE)

    def after_finish(self, func: Any, info: Any) -> Any | None:
        """With rescale tiles tensorized (info.rescale), their accumulators start at the channels'
        offsets (tiling.rescale_offsets_into_init: the low words of the re-encoded constants), so
        that the SMMLA rescale kernel (ukernels.requant) adds nothing. The wake-word network
        (benchmarks/int8_vww.py --samples 2, before = the generic C rescale, one run): mps2-an386
        12,105,380 -> 11,930,640 instructions, stm32f746g-disco 11,824,500 -> 11,742,640; flash
        475,632 -> 475,440 B (M4), RAM and stack unchanged. With the offset added in the rescale
        kernel instead (no init rewrite) it was 12,144,060, with a per-channel SMMLA/SMMLAR branch
        12,295,760: gcc already kept the 2 x 2 accumulators in registers across the GEMM and the
        generic rescale, so only the per-value instructions count. Tiles of one channel (odd
        channel counts: pixels innermost) do not match the rescale intrinsic and keep the generic C."""
        if not info.rescale:
            return func
        return tiling.rescale_offsets_into_init(func)

    def window_gemm(self, types: Any) -> bool:
        """The SMLAD kernels take a KxK convolution's whole window per call (K = KW x KH x input
        channels, in K quads): the first convolution of the wake-word network (3 input channels)
        otherwise makes 9 calls of K = 3 per tile, all in the scalar K % 4 tail (stm32f746g-disco:
        1,574,080 instructions with one tap per call, 1,384,800 with a kernel row, 1,162,280 with
        the window). Only for the quad panel orders (a family deriving from this one with other
        panels keeps one tap)."""
        return types is not None and self.panel_order(types) in ("k4", "k4x")


LANES = 1
RULES = CortexMRules(lanes=LANES, conv_acc=16, dw_acc=8, fc_acc=8, wide_rows=True)
