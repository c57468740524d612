"""Schedules for Cortex-M55 with Helium (MVE): 128-bit vectors but only 8 vector registers.
Integer GEMM tiles over int8 activations use Helium (`ukernels.py`: VMLADAVA.S8 over weight panels
in groups of 16 reduction steps per channel, "k16"); fused depthwise+pointwise kernels therefore
keep their depthwise rows int8; int16-activation GEMM tiles (the zero-point-shifted rows of padded
KxK convolutions) use VMLADAVA.S16 over groups of 8 ("k8"). Integer depthwise tiles (int16 padded
rows x int8 weights) use 4-lane Helium vectors. The zero-point-shifted padded rows themselves are
copied by a Helium row copy (`ec_widen_s8s16`, one call per in-bound row of the window). The int8
rescale tiles read their constants re-encoded as the Cortex-M4/M7 kernels' (off, Ra) pairs, the
offsets added by the accumulators' init (`after_finish`, inherited): VMULH + VADD per vector, no
64-bit sum. Float kernels use the 4-lane vectors."""

from typing import Any

from ...ir.operators import Kind
from .. import tiling
from ..cortex_m import CortexMRules
from ..rules import _pick, choose_tile


class HeliumRules(CortexMRules):
    """Integer GEMM tiles read "k16" (int8 activations) or "k8" (int16) panels: Helium kernels."""

    # the wake-word network: 7.93 M / 7.92 M / 7.76 M / 8.35 M / 8.22 M with 2 / 3 / 4 / 6 / 8 while gcc
    # spilled the depthwise products; with the taps as asm statements (ukernels._dw_tap_asm, the same
    # session): 4,749,484 with 4 (2 x 8 tiles), 4,617,281 with 6 (3 x 8, weights loaded in the asm)
    DW_VECTORS = 6

    # arm-none-eabi-gcc 12.2 (Debian's) vectorises an interleaving copy (ShuffleNet's channel
    # shuffle as TVM lowers it) into VST20/VST21 and its auto-inc-dec pass then gives VST21 a
    # register post-increment, `vst21.8 {q2,q3},[r1],r6`, which the assembler refuses: the
    # ShuffleNet V2 int8 build for mps3-an547 did not compile. Without that pass in the generic
    # kernels only (tests/test_helium_int8.py: the shuffle case); in every kernel (-fno-auto-inc-dec
    # in the target's cflags) the wake-word network measured 3,950,469 -> 4,049,562 instructions.
    GENERIC_GCC_OPTIONS = ("no-auto-inc-dec",)

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

    WINDOW_MAX_CI = 4   # KxK convolutions with at most this many input channels: one window kernel per tile
    WINDOW_ACC = 4      # its accumulator vectors (2 x 8 tiles): the wake-word network's first conv measured
                        # 933 k / 780 k / 794 k instructions with 6 / 4 / 2 (gcc spills the 3 x 8 tile's)

    def schedule_conv(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """A KxK convolution over few input channels (int16 padded rows: the first convolution of a
        network) as tiles whose whole window is one Helium kernel call, vectorised over the output
        channels (tiling.tile_conv_window); the others as GEMM tiles."""
        window = self._window_tile(sch, info, cfg)
        if window is None:
            return super().schedule_conv(sch, info, cfg)
        return tiling.tile_conv_window(sch, info, window, _pick(cfg, "order", "pixels"))

    def _window_tile(self, sch: Any, info: Any, cfg: dict | None) -> tuple[int, int] | None:
        if info.kind != Kind.CONV or tuple(info.kernel) == (1, 1) or (cfg and cfg.get("window") is False):
            return None
        ext = tiling.anchor_extents(sch, info.anchor)
        types = tiling.operand_types(sch, sch.get_sblock(info.anchor))
        if len(ext) != 7 or types is None or (types.a, types.c) != ("int16", "int32") or ext[6] > self.WINDOW_MAX_CI:
            return None
        return _pick(cfg, "tile", None) or choose_tile(ext[2], ext[3], 4, self.WINDOW_ACC, 8)

    SPLIT_PAD_CHANNELS = 0      # every width: the split's in-bound copy is the Helium row copy (ec_widen_s8s16)
    # int8 rescale tiles of at least this many channels go to the Helium rescale kernel; narrower
    # ones (the 3 x 2 pointwise tiles) stay scalar: a half-empty vector per pixel plus the per-call
    # constants cost more than SMLAL + ASR + SSAT (the wake-word network: 6.73 M with 4, 8.40 M with 1)
    REQUANT_MIN_CHANNELS = 4

    def finish(self, sch: Any, info: Any, blocks_before: list[str]) -> None:
        """Padded windows of at most SPLIT_PAD_CHANNELS channels (0: any) split into a fill and an in-bound
        copy (tiling.split_padding): gcc leaves the conditional copy of a short channel row scalar.
        The wake-word network, instructions: first conv (3 channels) 780 k -> 734 k, the
        dw+pw kernels on 8 and 16 channels 1,366 k -> 1,233 k and 731 k -> 703 k; its 32- and
        64-channel windows measured 2-8% slower split while the copy was scalar (982 k -> 1,005 k,
        568 k -> 579 k). With the in-bound copy as one Helium row copy per padded row
        (tiling.mark_widen_rows, `ec_widen_s8s16`), every width is split: the network
        5,754,905 -> 5,498,322 (dw+pw 24x24x32_2 887,656 -> 819,281, 12x12x64_2 502,240 -> 470,583,
        6x6x128_2 293,083 -> 278,635 each).
        Then the int8 rescale epilogues of tiles of >= REQUANT_MIN_CHANNELS channels become Helium
        rescale kernel calls (tiling.tensorize_requant). With the predicated rescale this was only
        done in kernels with windows that narrow (elsewhere the out-of-line call measured 0.6-5%
        slower); with the VHADD rescale and the pointwise rescale grouped per 16 channels, every
        kernel: the wake-word network 6,132,609 -> 6,101,719 instructions (dw+pw 24x24x32_2
        930,594 -> 906,719; 12x12x64_2 and the 3x3x256 ones 1-3 k slower). Over re-encoded constants
        (info.rescale: ukernels.rescale_constants, the offsets in the accumulators' init) the rescale
        is VMULH + VADD Ra, VQSHL by 24 - r, VSHR #24: the network 4,617,296 -> 4,272,609 (same
        session). Without the rescale kernel (constants it cannot take, e.g. a shift of 32) the
        kernel keeps its own C."""
        pads = [b for b in blocks_before if "pad" in b.lower()]
        tiling.split_padding(sch, pads, self.SPLIT_PAD_CHANNELS)
        tiling.mark_widen_rows(sch, pads)
        if info.rescale_kernel:     # over re-encoded constants (ukernels.rescale_constants); else the kernel's own C
            tiling.tensorize_requant(sch, self.REQUANT_MIN_CHANNELS, info.rescale)

    EPILOGUE_MAX_CHANNELS = 64     # the wake-word network: 6.10 / 6.04 / 6.02 / 6.28 M instructions with 16 / 32 / 64 / 128

    def dwpw_epilogue_channels(self, sch: Any, info: Any, tile: tuple[int, int]) -> int:
        """Integer fused dw+pw kernels: the pointwise rescale per M pixels x C output channels (the
        largest multiple of the tile's N dividing the output channels, 4 <= C <=
        EPILOGUE_MAX_CHANNELS), one Helium rescale call instead of one per GEMM tile (3 x 2 tiles:
        scalar). The wake-word network, instructions (with the VHADD rescale): 6.56 M per tile,
        6.13 M with C = 16 (before the rescale went to every kernel), 6.02 M with C <= 64 (its
        M x C int32 buffer on the stack: 3 x 64 x 4 B)."""
        ext = tiling.anchor_extents(sch, info.anchor)
        types = tiling.operand_types(sch, sch.get_sblock(info.anchor))
        if len(ext) != 7 or types is None or types.c != "int32":
            return 0
        n = tile[1]
        return next((c for c in range(self.EPILOGUE_MAX_CHANNELS // n * n, n, -n) if c >= 4 and ext[3] % c == 0), 0)

    def panel_order(self, types: Any) -> str:
        if types.c == "int32" and types.a in ("int8", "int16"):
            return "k16" if types.a == "int8" else "k8"
        return super().panel_order(types)


LANES = 4
RULES = HeliumRules(lanes=LANES, conv_acc=4, dw_acc=4, fc_acc=4, wide_rows=False)
