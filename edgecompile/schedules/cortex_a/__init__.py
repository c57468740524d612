"""Schedules for Cortex-A (A72 in the Raspberry Pi 4): 128-bit NEON, 32 vector registers. Its own
micro-kernels (NEON GEMM with fmla by element; int8 GEMM by smull/sadalp over 16-step weight
blocks; int8 depthwise on 16-bit lanes; the int8 rescale) are in `ukernels.py`."""

from dataclasses import dataclass, replace
from typing import Any

from ...ir.operators import Kind
from .. import tiling
from ..rules import RAGGED_PIXEL_MARGIN, GemmModel, TiledRules
from .ukernels import asm_b_registers, asm_paired_a, dw_f32_instructions


@dataclass(frozen=True)
class NeonGemmModel(GemmModel):
    """The float GEMM micro-kernel of `ukernels.gemm` on a core counted in instructions (the
    emulated A72). `efficiency` is the fraction of a call's instructions that are `fmla`s.

    Where the tile fits the inline-asm loop (`ukernels.asm_b_registers`: at most ASM_MAX_M pixels,
    its accumulators, M activation vectors and its weight vectors, or a pair of them reloaded, in
    32 registers), what that loop issues for `k` reduction steps (`asm_instructions`). Else the C
    kernel's estimate: per step M x nv `fmla` by element, nv weight-vector loads (pairs in one
    `ldp`), M / lanes activation loads (M per step when a call has fewer than `lanes` steps,
    `vector_a` False) and one instruction of loop overhead, times C_SHARE (gcc's loop: 79
    instructions for the asm's 69 per 4 steps of a 7 x 8 tile), and 0 past `registers - reserved`:
    measured on EfficientNet-B0 with C kernels, 4 x 24 (34 registers) took 56 x 56 x 24 from 2.66 M
    to 3.84 M instructions against 8 x 8 (26). The most-accumulators rule this replaces took 1 x 72
    on EfficientNet-B0's 7 x 7 x 1152 expand conv (18 weight-vector loads for 18 fmla per step,
    37 registers) and 1 x 40 on SqueezeNet's 13 x 13 x 1000 classifier conv. Before the asm was
    ranked by its own costs, the C estimate gave SqueezeNet's 13-pixel rows 13 x 4 C tiles."""

    vector_a: bool = True
    k: int | None = None      # reduction steps per call, when known
    # an epilogue that calls exp (SiLU, sigmoid): no odd vector counts above 1. gcc's vectorized
    # ec_expf over 3 vectors per tile row reloads its constants (EfficientNet-B0's 14 x 14 x 672
    # expand conv: 7 x 12 tiles 18.95 M instructions, 7 x 8 17.84 M)
    even_vectors: bool = False
    C_SHARE = 69 / 79

    @staticmethod
    def asm_instructions(m: int, nv: int, k: int) -> float:
        """Instructions of one call of the asm M x 4nv tile over `k` steps, with the tile's zeroing
        before it: per 8 steps M `ldp` of activations where 2M activation registers fit
        (`ukernels.asm_paired_a`, else 2M `ldr q`), 8 x ceil(nv/2) weight loads, 8 M nv `fmla`,
        `subs` + `b.ne`; then 4 steps (K & 4) and single steps (K % 4) likewise; per call the C
        tile in and out (`ldp` / `stp` pairs and a row step each), the row pointers and counters
        (about M + 8) and the zeroing (one `stp` per two vectors)."""
        pairs = -(-nv // 2)
        a8 = m if asm_paired_a(m, nv) else 2 * m
        n8, rest = divmod(k, 8)
        q, r = divmod(rest, 4)
        loop = n8 * (8 * m * nv + a8 + 8 * pairs + 2) + q * (4 * m * nv + m + 4 * pairs + 1) \
            + r * (m * nv + m + pairs + 2)
        return loop + 2 * m * (pairs + 1) + m + 8 + m * nv / 2

    def efficiency(self, m: int, n: int, lanes: int) -> float:
        nv = n // lanes
        if self.even_vectors and nv > 1 and nv % 2:
            return 0.0
        if lanes == 4 and asm_b_registers(m, nv):
            k = self.k if self.k else 64
            return m * nv * k / self.asm_instructions(m, nv, k)
        if m * nv + m + nv > self.registers - self.reserved:
            return 0.0
        fmla = m * nv
        return self.C_SHARE * fmla / (fmla + -(-nv // 2) + (m / lanes if self.vector_a else m) + 1)


# NEON's 32 128-bit registers, 3 left for gcc's temporaries; the other fields of GemmModel are not
# used by NeonGemmModel.efficiency (instructions, not cycles). No blocked tiles: the NEON GEMM
# micro-kernel keeps a whole tile in registers.
NEON_GEMM = NeonGemmModel(registers=32, reserved=3, fma_per_cycle=2, loads_per_cycle=1, l2_bytes_per_cycle=16,
                          blocked=False)


class CortexARules(TiledRules):
    """int8 x int8 GEMM tiles (pointwise convolutions, dense layers) keep one int32x4 accumulator
    per (pixel, channel) pair, the 4 lanes partial sums over the reduction: 16 pairs (4 x 4, 2 x 8,
    1 x 16...) leave registers for the 16-byte activation and weight blocks. Their weight panels are
    stored in 16-step blocks per channel ("k16"). int16 x int8 GEMM tiles (the padded rows of KxK
    convolutions) are counted in vectors of 8 channels, 4 of them (8 int32x4 accumulators).
    Padded windows are split into a fill and a copy (`tiling.split_padding`)."""

    def _s8_gemm(self, types: Any) -> bool:
        return types is not None and (types.a, types.b, types.c) == ("int8", "int8", "int32")

    # float depthwise tiles (the asm of ukernels._dw_f32_asm, channel group by channel group):
    # up to this many accumulator vectors (dw_acc, 12, for the integer ones). MobileNet V2 1.0/224
    # fused kernels: 104.64 M instructions with 12 (4 x 12, 2 x 24 tiles), 103.71 M with 16 (4 x 16,
    # 2 x 32), 104.17 M with 20 (5 x 16, 2 x 36)
    FLOAT_DW_ACC = 16
    # instructions per depthwise tile outside its asm call (the loop, the call's pointers), besides
    # half an instruction per accumulator vector (zeroing the tile's buffer, stp pairs)
    DW_TILE_OVERHEAD = 8

    def float_dw_tile(self, width: int, channels: int, kernel: tuple[int, int], stride: int) -> tuple[int, int] | None:
        """The float depthwise tile (M pixels x N channels) whose row costs the fewest instructions
        by the asm's count (ukernels.dw_f32_instructions, plus DW_TILE_OVERHEAD and the zeroing per
        tile): M up to 8 (a ragged pixel tile where M does not divide the row: W // M tiles of M
        and one of W % M, counted RAGGED_PIXEL_MARGIN times: MobileNet V2's 14-pixel rows took
        4 + 4 + 4 + 2 x 16 over 2 x 32, 0.2 M instructions more), N a multiple of 4 dividing the
        channels, M x N / 4 <= FLOAT_DW_ACC; ties to more channels, then more pixels. None for channels of no whole vectors (the ragged
        channel tiles of the generic rule). The accumulator ranking of the generic rule took a
        one-pixel tile of all 60 channels first on ShuffleNet V1's 28-pixel rows, and then a ragged
        8 x 4 pixel tile over it (8 + 8 + 8 + 4 pixels, one vector): 404 k instructions per kernel
        against 284 k for 4 x 12."""
        if channels % self.lanes:
            return None
        kh, kw = kernel
        best = None
        for v in range(1, channels // self.lanes + 1):
            n = v * self.lanes
            if channels % n:
                continue
            for m in range(1, min(width, 8) + 1):
                if m * v > self.FLOAT_DW_ACC:
                    break
                q, r = divmod(width, m)
                cost = 0.0
                for pixels, count in ((m, q), (r, 1 if r else 0)):
                    if count:
                        one = dw_f32_instructions(pixels, v, kh, kw, stride)
                        if one is None:
                            cost = -1.0
                            break
                        cost += count * (one + self.DW_TILE_OVERHEAD + pixels * v / 2)
                if cost < 0:
                    continue
                if r:            # a ragged pixel tile: its epilogue runs over the whole row
                    cost *= RAGGED_PIXEL_MARGIN
                key = (cost * channels / n, -n, -m)
                if best is None or key < best[0]:
                    best = (key, (m, n))
        return best[1] if best else None

    def _float_dw(self, sch: Any, block_name: str | None) -> bool:
        types = tiling.operand_types(sch, sch.get_sblock(block_name)) if block_name else None
        return types is not None and (types.a, types.b, types.c) == ("float32",) * 3

    def schedule_depthwise(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """Float depthwise tiles by `float_dw_tile` (a tuning configuration's tile first)."""
        ext = tiling.anchor_extents(sch, info.anchor)
        if not (cfg and "tile" in cfg) and len(ext) == 7 and self._float_dw(sch, info.anchor):
            tile = self.float_dw_tile(ext[2], ext[3], info.kernel, info.stride[0])
            if tile is not None:
                cfg = {**(cfg or {}), "tile": tile}
        return super().schedule_depthwise(sch, info, cfg)

    def accumulators(self, which: str, types: Any) -> int:
        if which in ("conv", "fc") and self._s8_gemm(types):
            return 16
        if which == "dw" and types is not None and (types.a, types.b, types.c) == ("float32",) * 3:
            return self.FLOAT_DW_ACC
        return super().accumulators(which, types)

    def model_for(self, sch: Any, block_name: str | None) -> GemmModel | None:
        """Float GEMM tiles (convolutions, the pointwise of fused dw+pw) ranked by NEON_GEMM; not
        set as `gemm_model`, which would also switch the generic kernels to mixed widths."""
        if not block_name:
            return None
        types = tiling.operand_types(sch, sch.get_sblock(block_name))
        if types is None or types.c != "float32" or types.b_order:
            return None
        ext = tiling.anchor_extents(sch, block_name)
        # reduction steps per micro-kernel call: a KxK convolution's whole kernel row (window_gemm)
        k = int(ext[-1]) * (int(ext[-2]) if self.window_gemm(types) and len(ext) == 7 else 1)
        return replace(NEON_GEMM, vector_a=k >= self.lanes, k=k, even_vectors="exp" in sch.mod["main"].script())

    # output rows per tile of a float fused dw+pw kernel (int8: `dwpw_rows`): fewer halo rows copied
    # into its padded window per output row (MobileNet V2 1.0/224 fp32: 113.07 M -> 112.53 M
    # instructions with 4 instead of 2)
    FLOAT_DWPW_ROWS = 4

    # int8 x int8 pointwise GEMMs over fewer reduction steps than this take the row-by-row kernel
    # (ukernels._gemm_s8_rows: weights [K][N] unpacked, 8 channels per vector, `smlal` by lane)
    # instead of the k16 pairs, whose 4 accumulator lanes per (pixel, channel) pair are added once
    # per tile. Emulator instructions per inference, int8, digits set: MobileNet V1 0.25/96
    # 2.989 M -> 2.954 M, MobileNet V2 0.35/96 5.883 M -> 5.685 M; below 32 steps instead of 16:
    # 3.021 M and 5.755 M (the k16 pairs win from 16 steps)
    S8_ROWS_MAX_K = 16
    # accumulator vectors of 8 channels (2 registers each): 2 x 16, 4 x 8 tiles; 8 (4 x 16) made gcc
    # spill the widened weights it hoists out of the pixel loop: 3.010 M on MobileNet V1 0.25/96
    S8_ROWS_ACC = 4

    def _s8_rows(self, sch: Any, block_name: str | None) -> bool:
        """Whether the int8 GEMM of block `block_name` (a 1x1 convolution's, not grouped) takes
        `_gemm_s8_rows`."""
        block = sch.get_sblock(block_name) if block_name else None
        types = tiling.operand_types(sch, block) if block is not None else None
        if not self._s8_gemm(types):
            return False
        ext = tiling.anchor_extents(sch, block_name)
        return (len(ext) == 7 and ext[4] == ext[5] == 1 and ext[6] < self.S8_ROWS_MAX_K and ext[3] % 8 == 0
                and int(sch.get(block).reads[0].source.shape[-1]) == ext[6])      # not a group's share of the input

    def schedule_conv(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """int8 1x1 convolutions over few input channels (`_s8_rows`): weights unpacked, for the row-by-row kernel."""
        if info.kind == Kind.CONV_PW and not (cfg and "pack" in cfg) and self._s8_rows(sch, info.anchor):
            cfg = {**(cfg or {}), "pack": False}
        return super().schedule_conv(sch, info, cfg)

    def schedule_dwpw(self, sch: Any, info: Any, rows: int | None = None, cfg: dict | None = None) -> bool:
        if not (cfg and "pack" in cfg) and self._s8_rows(sch, info.anchor):
            cfg = {**(cfg or {}), "pack": False}
        if rows is None and not (cfg and "rows" in cfg) and self.ragged_for(sch, info.anchor):
            rows = self.FLOAT_DWPW_ROWS
        ext = tiling.anchor_extents(sch, info.anchor)
        if not (cfg and "dw_tile" in cfg) and len(ext) == 7 and self._float_dw(sch, info.dw_anchor):
            tile = self.float_dw_tile(ext[2], info.dw_channels, info.kernel, info.stride[0])
            if tile is not None:
                cfg = {**(cfg or {}), "dw_tile": tile}
        return super().schedule_dwpw(sch, info, rows, cfg)

    def window_gemm(self, types: Any) -> bool:
        """Float KxK convolutions take a whole kernel row per GEMM call (K = KW x input channels,
        tiling.tile_conv_gemm's `window_for`): a first convolution on 3 colour channels otherwise
        makes KH x KW calls of K = 3 per tile, all in the one-step tail of the asm loop."""
        return types is not None and (types.a, types.b, types.c) == ("float32", "float32", "float32")

    def _s16_gemm(self, types: Any) -> bool:
        return types is not None and (types.a, types.b, types.c) == ("int16", "int8", "int32")

    def _lanes_budget(self, sch: Any, block_name: str | None, which: str) -> tuple[int, int]:
        """int16 x int8 GEMMs: channels in eights (one widened weight vector), 4 such vectors
        (4 x 8 tiles; 8 x 8 spills: MobileNet V1 0.25/96's first conv 437 k -> 353 k instructions)."""
        types = tiling.operand_types(sch, sch.get_sblock(block_name)) if block_name else None
        if which == "conv" and self._s16_gemm(types):
            return 8, 4
        if which == "conv" and self._s8_rows(sch, block_name):
            return 8, self.S8_ROWS_ACC
        return super()._lanes_budget(sch, block_name, which)

    def lanes_for(self, types: Any) -> int:
        """int8 GEMMs: pairs, not vectors of channels: any channel count."""
        if self._s8_gemm(types):
            return 1
        return self.lanes

    def panel_order(self, types: Any) -> str:
        return "k16" if self._s8_gemm(types) else ""

    def schedule_pool(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """Spatial means (global average pools, squeeze-and-excitation gates) with the channel
        loop innermost (tiling.reduce_channels_innermost): gcc vectorizes it. As TVM lowers
        them, each output value runs the whole map on its own, a strided scalar loop: 8
        instructions per input value in EfficientNet-B0's gates (13.5 M of its 264 M in
        kernels). Pooling windows keep the generic schedule: the same reordering made SqueezeNet
        1.1's three 3x3/2 max pools slower (174.5 M -> 175.4 M instructions per inference; gcc
        keeps the untiled window's maximum in a register, the reordered loop loads and stores it
        per tap)."""
        if info.kind != Kind.MEAN or info.anchor is None:
            return False
        return tiling.reduce_channels_innermost(sch, info.anchor)

    # Float maxima / minima against constants (ReLU, ReLU6) as `fmaxf` / `fminf`, one
    # `fmaxnm` / `fminnm` per vector (codegen.lower.ieee_clamps: the same bits but for
    # signalling NaNs): gcc compiles TVM's ternaries to compares and bit selects, 5 instructions
    # per vector for a ReLU6 clamp. MobileNet V2 1.0/224 fp32: 121.8 M -> 117.4 M instructions.
    IEEE_CLAMPS = True

    def after_finish(self, func: Any, info: Any) -> Any | None:
        """Marked for codegen.lower.border_fills: a float padded window (the depthwise rows of a
        fused dw+pw kernel, a KxK convolution's) is zeroed only where its in-bound copy does not
        write, not wholly per row tile (MobileNet V2: 2.8 M instructions of `memset`).
        And for codegen.lower.zero_start_gemms: a float GEMM tile zeroed right before its
        micro-kernel call takes the zero-start kernel (`ukernels.gemm_z`: accumulators started by
        `fmul`, handed to the epilogue in registers) instead of zeros stored, loaded by the asm, and
        the tile stored and loaded again by the epilogue (MobileNet V2 1.0/224 fp32: 112.65 M ->
        108.87 M instructions per inference)."""
        out = super().after_finish(func, info)
        return None if out is None else out.with_attr(tiling.BORDER_FILL_ATTR, 1).with_attr(tiling.ZERO_START_ATTR, 1)

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
        as gcc does it: out of line measured 3.37 M.
        Last, a concatenation gathered into a GEMM's input rows (SqueezeNet's squeeze convs read
        the two expand branches) is split into one copy loop per source
        (tiling.split_concat_channels)."""
        if info.kind == Kind.ELEMENTWISE:
            return
        tiling.split_padding(sch, [b for b in blocks_before if "pad" in b.lower()])
        tiling.tensorize_requant(sch, self.REQUANT_MIN_CHANNELS)
        for block in tiling.children(sch):     # a concatenation gathered into a GEMM's input rows
            tiling.split_concat_channels(sch, block)

    def schedule_elementwise(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """Concatenations over the channels (SqueezeNet's fire modules, ShuffleNet's branches) as
        one unconditional copy loop per source (tiling.split_concat_channels), which gcc
        vectorizes: as TVM lowers them, a select between two loads per value, scalar (SqueezeNet
        1.1: 2.5 M instructions for the 55 x 55 x 128 one). Other elementwise kernels: declined."""
        blocks = tiling.children(sch)
        return bool(blocks) and tiling.split_concat_channels(sch, blocks[-1])


LANES = 4
RULES = CortexARules(lanes=LANES, conv_acc=20, dw_acc=12, fc_acc=8, ragged=True, ragged_pixels=True)
