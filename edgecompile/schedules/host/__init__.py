"""Schedules for the development host (built with -march=native, so they follow this machine):
AVX-512 (16-lane vectors, 32 registers: up to 24 accumulators) when the CPU has it, else AVX2
(8 lanes, 16 registers: 12 accumulators); float GEMM tiles are ranked by a model of the core
(rules.GemmModel: two FMAs and two loads or broadcasts per cycle, as on every AVX2/AVX-512 core
since Haswell; weights streaming from L2 at 32 bytes per cycle, half the L1 fill width), with up
to 28 accumulators on AVX-512 (4 registers left for B vectors), and on AVX-512 no tile whose
accumulators, B vectors and broadcast exceed the 32 registers (GemmModel.b_in_registers: the 7 x 64
tiles of EfficientNet-B0's 7x7 expansions spilled; thread CPU time per inference, interleaved,
100 runs, medians: 8.29 -> 7.19 ms, onnxruntime 6.84 ms in the same run; MobileNet V2 unchanged).
EDGECOMPILE_HOST_VECTOR=avx2|avx512 overrides the detection (e.g. to build on one machine for
another)."""

import os
from typing import Any

from ...errors import TargetError
from ...ir.operators import Kind
from .. import tiling
from ..rules import GemmModel, TiledRules, _pick, choose_tile, largest_divisor, tile_candidates
from ..ukernels import F32, chunk_panel_width


# The L2 size per core the tile ranking assumes (GemmModel.for_weights: weights beyond it stream from
# L3), per variant rather than read from this machine, so that a variant's generated C does not
# depend on the machine that builds it: 512 KiB on AVX2 (Zen 2/3, this machine; Intel client cores
# have 256 KiB to 1.25 MiB). AVX-512: 0, not modelled: measured on an AMD EPYC Zen 4 (1 MiB L2),
# 1 MiB here (every GEMM whose weights exceed it run over runs of pixels, as on AVX2) made MobileNet
# V1 1.0/224 1.26x slower, SqueezeNet 1.1 1.03x, Xception 1.04x, EfficientNet-B0 1.01x, MobileNet V2
# 1.02x (thread CPU time, interleaved, 20-30 runs, medians); only GEMMs over ragged channels gain
# from runs there (AVX512_L2_BYTES, HostRules._ragged_stream).
L2_BYTES = {"avx2": 512 << 10, "avx512": 0}
# AVX-512: the L2 beyond whose size a pointwise GEMM over ragged channels runs over runs of pixels
# (HostRules.ragged_stream_bytes): Zen 4's 1 MiB (Intel's AVX-512 server cores have 1-2 MiB)
AVX512_L2_BYTES = 1 << 20
# The rate at which weights that do not fit L2 stream from L3, bytes per cycle, as the tile ranking
# sees it: a quarter of the L2 rate (AVX2 now: AVX2_L3_BYTES_PER_CYCLE, below). Not measured as a bandwidth; it ranks the tiles as measured:
# Xception/224 untuned, thread CPU time, interleaved, medians: its 728-channel pointwise layers in
# 2 x 728 / 4 x 728 tiles (weights once per 2 or 4 pixels) 1.00, 4 x 728 / 7 x 728 blocked 0.94,
# 7 x 8 over [K][8] panels 0.71 (forced), 0.68 with this model (which ranks 7 x 8 first for any rate
# below 14 bytes per cycle); on a machine loaded by other jobs.
L3_BYTES_PER_CYCLE = 8

# The AVX2 core as its float GEMM tiles measured (this machine: AMD EPYC Zen 3, gcc 12 -O3; GFLOP/s of
# one pointwise GEMM in a loop, tiles over rows with a ragged last tile, several runs; peak 99): the
# tiles of 10 to 12 accumulators in two vectors (5 x 16, 6 x 16) ran 70-93 on every shape tried
# (rows of 13 to 112 pixels, 64 to 1024 channels); 8-accumulator tiles (4 x 16, 2 x 32, 8 x 8) 45-78,
# 7 x 8 45-77, tiles of one vector and many pixels (11 x 8, 12 x 8) 50-73, and 4 x 24 / 3 x 32
# (16 and 17 vector registers with their B vectors and a broadcast) 53-70. The model says so by:
# - AVX2_STEP_CYCLES: a reduction step takes at least 6 cycles (FMA latency and the loop around it:
#   12 independent accumulators to keep both FMA pipes busy, GemmModel.step_cycles);
# - AVX2_BROADCAST_LOADS: a broadcast of A costs 1.5 load slots against a vector load of B's 1;
# - b_operands: B vectors that do not fit beside the accumulators, a broadcast and one spare
#   register are read by every FMA (4 x 24, 3 x 32, 2 x 48: M x nv loads a step), at
#   AVX2_OPERAND_LOADS = 1.25 slots each: 2 x 48 ran 56-74 where 5 x 16 ran 68-88 (13-pixel rows,
#   192 channels), and SqueezeNet 1.1's 13 x 13 layers ran their 2 x 48 + 1 x 48 rows ~1.2x slower
#   than 5 x 16 + 3 x 16 (6 x 16 + 1 x 16 now);
# - AVX2_L3_BYTES_PER_CYCLE: 16, not 8: MobileNet V1's 14 x 14, 512 -> 512 layers (1 MB of
#   weights) ran 6 x 16 tiles at 76-86 GFLOP/s against 7 x 8's 52-59 although each 6 pixels read
#   all the weights; at 8 bytes a cycle the model ranked 7 x 8 level with them;
# - blocked tiles off: MobileNet V1's 4 x 128 / 4 x 256 blocked tiles (0.98 of the untuned time)
#   against 6 x 16 ones (0.81);
# - AVX2_RAGGED_MIN_WIDTH: no ragged pixel tiles on rows narrower than 8 pixels: MobileNet V2's
#   7 x 7 layers ran 4 x 24 + 3 x 24 and 2 x 40 ragged tiles 6-13% slower than 7 x 8.
# Whole networks, untuned, thread CPU time, interleaved in one process, 30-40 runs, medians, against
# the model before (ratio): MobileNet V1 1.0/224 0.84-0.90, Xception 0.93, EfficientNet-B0 0.91,
# SqueezeNet 1.1 0.93, ShuffleNet V1 0.90, ShuffleNet V2 1.00, MobileNet V2 1.00.
AVX2_STEP_CYCLES = 6
AVX2_BROADCAST_LOADS = 1.5
AVX2_OPERAND_LOADS = 1.25
AVX2_L3_BYTES_PER_CYCLE = 16
AVX2_RAGGED_MIN_WIDTH = 8
# Fully connected layers (one pixel: every accumulator a chain of K dependent FMAs): up to 8 vector
# accumulators, not 4. The 1000-class classifiers took 1 x 8 tiles (1000 = 125 x 8; 40 channels
# need 5 accumulators), one chain of FMAs over K per 8 classes: MobileNet V1 0.25/32's 256 -> 1000
# classifier was 34 of its 83 us. With 1 x 40 (1000) and 1 x 64 (1024) tiles: the whole untuned
# inference 0.084 -> 0.074 ms (300 interleaved runs, thread CPU time, medians), 1.0/224 0.99x.
AVX2_FC_ACCUMULATORS = 8


def _has_avx512() -> bool:
    forced = os.environ.get("EDGECOMPILE_HOST_VECTOR", "")
    if forced:
        if forced not in ("avx2", "avx512"):
            raise TargetError(f"EDGECOMPILE_HOST_VECTOR={forced!r}: expected avx2 or avx512")
        return forced == "avx512"
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


class HostRules(TiledRules):
    """The host's rules: `TiledRules` plus channel-innermost sums and split float windows."""

    def finish(self, sch: Any, info: Any, blocks_before: list[str]) -> None:
        """Padded float windows split into a fill and an in-bound copy (tiling.split_padding).
        Unsplit, each window value is `cond ? f(x[i]) : 0` with the load under the condition: GCC
        neither hoists the whole condition out of the channel loop nor speculates the load, so a
        window with a ReLU before it (Xception's separable convolutions) or a channel shuffle
        folded into its indexing (ShuffleNet V1) is copied one scalar and one branch at a time."""
        pads = [b for b in blocks_before if "pad" in b.lower() and tiling.block_dtype(sch, b) == "float32"]
        tiling.split_padding(sch, pads)

    # A pointwise GEMM whose weights do not fit L2 (GemmModel.l2_bytes: AVX2 only) runs over a run of
    # pixels across rows, channel tile by channel tile: a fused dw+pw kernel's over up to
    # STREAMED_DWPW_ROWS output rows (schedule_dwpw), a 1x1 convolution's over its whole map
    # (schedule_conv); False: as any other.
    stream_weights = True
    STREAMED_DWPW_ROWS = 7

    def schedule_dwpw(self, sch: Any, info: Any, rows: int | None = None, cfg: dict | None = None) -> bool:
        """`TiledRules.schedule_dwpw`, except, untuned, for a fused kernel whose pointwise weights
        exceed L2 (`stream_weights`):
        - it takes up to STREAMED_DWPW_ROWS output rows per tile (the most dividing the map's
          height), and its pointwise GEMM runs over their pixels as one run (tiling.tile_dwpw
          `order` "flat"): tiles of M pixels cross the rows, so a 7- or 14-pixel row no longer
          limits them to 7 x 8 (one vector: more loads than FMAs), and channel tile by channel tile,
          so each weight panel streams in from L3 once per run, not once per M pixels;
        - its tile is the model's best for that run (6 x 16 ragged), or, where two vectors do not
          divide the channels (Xception's 728), a blocked tile of all of them in blocks of 6 x 16
          over weights stored in 16-channel chunk panels (ukernels.chunk_panel_width).
        The same sums in the same order: the same bits. Untuned, AVX2 (Zen 3), thread CPU time,
        interleaved in one process, medians: Xception/224 0.90x (25 runs; 1.18x -> 1.06x
        onnxruntime), MobileNet V1 1.0/224 0.94x (40 runs; 1.10x -> 1.04x), MobileNet V2 1.00x
        (80 runs), against the same rows and order per row; channel tile by channel tile alone
        (7 x 8 tiles, rows apart) was 0.976x, 0.993x and 0.994x."""
        if cfg is None and rows is None:
            cfg = self.own_config(sch, info)
        return super().schedule_dwpw(sch, info, rows, cfg)

    def _streamed_tile(self, sch: Any, info: Any, pixels: int, channels: int, k: int) -> dict | None:
        """The configuration of a pointwise GEMM over a run of `pixels` pixels whose weights stream
        in from L3 (schedule_dwpw, schedule_conv): the model's best tile for the run, or, where two
        vectors do not divide the channels, a blocked tile of all of them over chunk panels
        (ukernels.chunk_panel_width) of as many pixels as two vectors' accumulators allow."""
        model = self.gemm_model
        chunks = chunk_panel_width(channels, self.lanes, F32, model)
        if chunks:
            return {"tile": [min(pixels, model.accumulators * self.lanes // chunks), channels], "panels": f"c{chunks}"}
        if self._ragged_run(channels):
            return {"tile": [min(pixels, model.accumulators // 2), channels]}
        if self._ragged_stream(k, channels, pixels):
            width = max(w for w in range(self.lanes // 2, 4 * self.lanes + 1, self.lanes // 2) if channels % w == 0)
            return {"tile": [min(pixels, model.accumulators // -(-width // self.lanes)), width]}
        tile = self._run_tile(sch, info, pixels, channels, k)
        return {"tile": list(tile)} if tile is not None else None

    # pointwise GEMMs over ragged channels (`_ragged_run`) in runs of pixels across rows; set for
    # AVX2 below, where it was measured (on AVX-512 far more channel counts are ragged: 24, 40...)
    ragged_runs = False

    def _ragged_run(self, channels: int) -> bool:
        """Whether a float pointwise GEMM over `channels` output channels, more than two vectors
        that whole vectors do not divide (ShuffleNet V2's 58 and 116), runs over a run of pixels
        across rows (`_flat_run`) in blocked tiles of all its channels (`_streamed_tile`), as the
        GEMMs whose weights stream from L3 do. Untuned, its rows' tiles were blocked tiles of 2 or
        4 pixels (2 x 116: 14.5 vectors in blocks of 2 x 6), each reading all the weights again
        from L2: ShuffleNet V2's 14 x 14 x 116 1x1 convolutions ran at 41 GFLOP/s, 2x
        onnxruntime's time. AVX2 (Zen 3), thread CPU time, interleaved, 40 runs, medians, same
        bits: ShuffleNet V2 1.0x/224 0.78x (1.13x -> 0.89x onnxruntime); with the 116-channel
        layers only 0.85x."""
        return self.ragged_runs and self._ragged_channels(channels)

    def _ragged_channels(self, channels: int) -> bool:
        """More than two vectors of channels that whole vectors do not divide."""
        return self.lanes > 1 and channels % self.lanes != 0 and channels > 2 * self.lanes

    # AVX-512 (set below): the L2 beyond which a pointwise GEMM over ragged channels runs over runs
    # of pixels in narrow channel tiles (`_ragged_stream`); 0: never
    ragged_stream_bytes = 0

    def _ragged_stream(self, k: int, channels: int, pixels: int) -> bool:
        """Whether a float pointwise GEMM over `channels` output channels that whole vectors do not
        divide, with K x N weights beyond `ragged_stream_bytes`, runs over a run of pixels across
        rows channel tile by channel tile (`_flat_run`), in tiles of the widest whole number of half
        vectors up to 4 vectors that divides the channels, as tall as the accumulators allow
        (`_streamed_tile`: 728 channels on AVX-512, 7 x 56). Row by row, its tile was a blocked tile
        of all the channels (14 x 728), which read all 2.1 MB of weights from L3 again for every 14
        pixels; here each 56-channel panel (163 KB) is read from L3 once per 7-row run and from L2
        for its other 13 tiles. AVX-512 (Zen 4, 1 MB L2), thread CPU time, interleaved, 20 runs,
        medians, same bits: Xception/224 untuned 0.88x (1.17x -> 1.03x onnxruntime). Setting the
        GemmModel's L2 instead (every GEMM beyond it run over runs) made MobileNet V1 1.0/224 1.26x
        slower (its 7 x 7 x 1024 layers took 28 x 16 tiles)."""
        return (bool(self.ragged_stream_bytes) and self._ragged_channels(channels)
                and k * channels * 4 > self.ragged_stream_bytes and pixels > 1)

    def _runs(self, k: int, channels: int, pixels: int) -> bool:
        """Whether a pointwise GEMM (K = `k`, `channels` outputs, `pixels` per map) runs over runs
        of pixels across rows: its weights stream from L3 or its channels are ragged."""
        return (self._streams_weights(k, channels, pixels) or (self._ragged_run(channels) and pixels > 1)
                or self._ragged_stream(k, channels, pixels))

    def _run_tile(self, sch: Any, info: Any, pixels: int, channels: int, k: int) -> tuple[int, int] | None:
        """The GEMM model's best tile for a run of `pixels` pixels x `channels` channels over K = `k`."""
        return choose_tile(pixels, channels, *self._lanes_budget(sch, info.anchor, "conv"), 8,
                           self.ragged_for(sch, info.anchor), self.gemm_model, k,
                           self.ragged_pixels_for(sch, info.anchor))

    def _streams_weights(self, k: int, channels: int, pixels: int) -> bool:
        """Whether a pointwise GEMM's K x N float weights exceed the modelled L2 (GemmModel.l2_bytes,
        0 on AVX-512: not modelled) on a map of more than one pixel."""
        model = self.gemm_model
        return (self.stream_weights and model is not None and bool(model.l2_bytes)
                and k * channels * 4 > model.l2_bytes and pixels > 1)

    # 1x1 stride-1 group convolutions over their whole map as one run of pixels (schedule_conv);
    # set for AVX2 below, where it was measured
    flat_group_convs = False

    def schedule_conv(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """`TiledRules.schedule_conv`, except, untuned:
        - with `flat_group_convs`, a 1x1 stride-1 group convolution runs each group's GEMM over
          the whole map's pixels as one run (tiling.tile_conv_gemm `order` "flat"), in the model's
          tiles for the run: ShuffleNet V1's 28 x 28, 14 x 14 and 7 x 7 group convolutions took
          6 x 16 tiles over 784-, 196- and 49-pixel runs instead of 7 x 8 and 2 x 16 ones on their
          rows; the untuned network 0.966x and 0.972x (AVX2, interleaved, 60 runs each, medians;
          1.11x -> 1.07x onnxruntime), the same bits;
        - a 1x1 stride-1 convolution whose weights exceed L2 runs over the whole map's pixels as
          one run, channel tile by channel tile, tiles as for the fused kernels (`_streamed_tile`).
        Untuned, AVX2, thread CPU time, interleaved, 40 runs, medians, against the build with only
        the fused kernels' runs: SqueezeNet 1.1 0.95x (its 13 x 13, 512 -> 1000
        classifier, 2 MB of weights, in 6 x 1000 chunk-panel tiles: 1.07x -> 1.01x onnxruntime),
        EfficientNet-B0 0.95x (1.07x -> 1.02x), MobileNet V2 0.98x, ShuffleNet V2 0.98x; the same
        bits."""
        if cfg is None:
            cfg = self.own_config(sch, info)
        return super().schedule_conv(sch, info, cfg)

    def _flat_run(self, sch: Any, info: Any) -> tuple[int, int, int, int] | None:
        """(rows, pixels, channels, K) of the run of pixels this family's rule gives the kernel's
        GEMM untuned (schedule_dwpw, schedule_conv: rows per tile, pixels per run, channels per
        group, reduction), or None where it runs it row by row as TiledRules does."""
        ext = tiling.anchor_extents(sch, info.anchor)
        if len(ext) != 7:
            return None
        if info.kind == Kind.DWPW:
            if self._runs(ext[6], ext[3], ext[1] * ext[2]):
                r = largest_divisor(ext[1], self.STREAMED_DWPW_ROWS)
                return r, r * ext[2], ext[3], info.dw_channels
            return None
        if tuple(info.stride) != (1, 1) or ext[4] != 1 or ext[5] != 1 or ext[1] * ext[2] <= 1:
            return None
        if info.kind == Kind.CONV_GROUP and self.flat_group_convs:
            groups = tiling.conv_groups(sch, info)
            if groups > 1 and ext[3] % groups == 0:
                return ext[1], ext[1] * ext[2], ext[3] // groups, ext[6]
        if info.kind == Kind.CONV_PW and self._runs(ext[6], ext[3], ext[1] * ext[2]):
            return ext[1], ext[1] * ext[2], ext[3], ext[6]
        return None

    def own_config(self, sch: Any, info: Any) -> dict | None:
        """The configuration schedule_dwpw and schedule_conv pick untuned for a kernel whose GEMM
        runs over a run of pixels across rows (`_flat_run`): order "flat", the rows of a fused
        kernel's tile, and the group convolution's tile for the run (`_run_tile`) or the streamed
        GEMM's (`_streamed_tile`). None for every other kernel (TiledRules' own choices)."""
        own = self._own_run(sch, info)
        return None if own is None else own[0]

    def _own_run(self, sch: Any, info: Any) -> tuple[dict, tuple[int, int, int, int]] | None:
        """`own_config` and the `_flat_run` it was made for."""
        run = self._flat_run(sch, info)
        if run is None:
            return None
        rows, pixels, channels, k = run
        if info.kind == Kind.CONV_GROUP:
            tile = self._run_tile(sch, info, pixels, channels, k)
            flat = {"tile": list(tile)} if tile is not None else None
        else:
            flat = self._streamed_tile(sch, info, pixels, channels, k)
        if flat is None:
            return None
        return {**({"rows": rows} if info.kind == Kind.DWPW else {}), "order": "flat", **flat}, run

    def space(self, sch: Any, info: Any, limit: int = 24) -> list[dict]:
        """`TiledRules.space`, with, for a kernel whose GEMM runs over a run of pixels untuned
        (`own_config`), that configuration first and runs in the model's next tiles for the run."""
        out = super().space(sch, info, limit)
        found = self._own_run(sch, info)
        if found is None:
            return out
        own, (_, pixels, channels, k) = found
        lanes, acc = self._lanes_budget(sch, info.anchor, "conv")
        runs = [{**own, "tile": list(t), "panels": ""}
                for t in tile_candidates(pixels, channels, lanes, acc, 8, self.ragged_for(sch, info.anchor),
                                         self.gemm_model, k, self.ragged_pixels_for(sch, info.anchor))[:4]]
        firsts = [own] + [c for c in runs if c["tile"] != own["tile"] or c["panels"] != own.get("panels", "")]
        return (firsts + [c for c in out if c not in firsts])[:limit]

    # zero-start float GEMM tiles and the epilogue after them as one call (codegen.lower.fuse_epilogues)
    fuse_epilogues = True
    kernel_rows = True

    def window_gemm(self, types: Any) -> bool:
        """Float KxK convolutions: one GEMM call per kernel row (K = KW x input channels) that
        codegen.lower then makes one call over all the rows (`kernel_rows`): the tile's accumulators
        stay in registers across the KH x KW taps, where each tap's call loaded and stored them
        (SqueezeNet's 3 x 3 expand convolutions: 16 to 64 input channels, 16 to 64 FMAs per
        accumulator per call), and the first convolution's 3 colour channels make one call of
        27 steps instead of 9 of 3."""
        return self.kernel_rows and types is not None and (types.a, types.b, types.c) == ("float32",) * 3

    def after_finish(self, func: Any, info: Any) -> Any | None:
        """Marked for codegen.lower.zero_start_gemms: a float GEMM tile zeroed right before its
        micro-kernel call takes the zero-start kernel (host/ukernels.gemm_z: accumulators started
        at zero) instead of the zeros stored, then loaded by the kernel. And for
        codegen.lower.border_fills, as on the Pi: a padded float window is zeroed only where its
        in-bound copy does not write, not wholly per row tile. Untuned, AVX2 host, thread CPU time
        interleaved in one process (80 runs; Xception 20), outputs bit-identical: MobileNet V2
        1.0/224 0.974x, V1 0.992x, Xception 0.984x.
        And (`fuse_epilogues`) for codegen.lower.fuse_epilogues: a zero-start tile and the epilogue
        loop after it (bias, ReLU/ReLU6 clamps, residual add) become one call of a kernel that
        applies the epilogue to its accumulators and stores them in the output
        (schedules/epilogues.py). Same run conditions, 50-60 runs, outputs bit-identical:
        MobileNet V2 1.0/224 0.928x (1.063x -> 0.987x onnxruntime), V1 0.979x, ShuffleNet V2
        0.980x, V1 0.977x, SqueezeNet 1.1 0.991x, EfficientNet-B0 0.992x."""
        out = super().after_finish(func, info)
        if out is None:
            return None
        marks = ([tiling.BORDER_FILL_ATTR, tiling.ZERO_START_ATTR] + ([tiling.EPILOGUE_ATTR] if self.fuse_epilogues else [])
                 + ([tiling.KERNEL_ROWS_ATTR] if self.kernel_rows else []))
        for mark in marks:
            out = out.with_attr(mark, 1)
        return out

    def _row_tile(self, sch: Any, info: Any, cfg: dict | None, acc: str, groups: int = 1) -> tuple[int, int] | None:
        """`TiledRules._row_tile`, except a float depthwise convolution over channels that full
        vectors do not divide (ShuffleNet V1's 60, 120; Xception's 728) takes all its channels per
        tile, in full vectors with an overlapping last one (host/ukernels.dw), instead of a tile of
        the widest narrower vector that divides them (60 channels: 15 x 4 lanes). Its pixels: the
        most (at most 8, dividing the row) that keep a block of all the channels' vectors within
        the depthwise accumulators."""
        if acc != "dw" or _pick(cfg, "tile", None) is not None or not self.ragged_for(sch, info.anchor):
            return super()._row_tile(sch, info, cfg, acc, groups)
        ext = tiling.anchor_extents(sch, info.anchor)
        if len(ext) != 7 or groups != 1 or ext[3] <= self.lanes or ext[3] % self.lanes == 0:
            return super()._row_tile(sch, info, cfg, acc, groups)
        width, vectors = ext[2], -(-ext[3] // self.lanes)
        m = largest_divisor(width, max(1, min(8, self.dw_acc // min(vectors, self.dw_acc))))
        return (m, ext[3])

    def schedule_pool(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """A sum over pixels (global average pool, squeeze-excitation's pool) with the channel loop
        innermost: the reduction loops go outside it, so each pixel's channels are added to a row
        of partial sums, contiguous vector adds, instead of one channel's sum over a strided
        column, a chain of dependent scalar adds (EfficientNet-B0/224: 9% of the untuned
        inference in its 17 pools). Each sum adds the same values in the same order: the same bits."""
        if info.kind == Kind.POOL and info.anchor is not None and tiling.block_dtype(sch, info.anchor) == "float32":
            return self._schedule_window_pool(sch, info)
        if info.kind != Kind.MEAN or info.anchor is None:
            return False
        block = sch.get_sblock(info.anchor)
        loops = sch.get_loops(block)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        spatial = kinds.count(0)
        if (len(loops) != len(kinds) or spatial < 1 or kinds != [0] * spatial + [2] * (len(kinds) - spatial)
                or spatial == len(kinds)):
            return False
        src, dst = sch.get(block).reads[0].source, sch.get(block).writes[0].source
        channels = int(sch.get(loops[spatial - 1]).extent)
        if channels == 1 or int(src.shape[-1]) != channels or int(dst.shape[-1]) != channels:
            return False
        sch.reorder(*loops[spatial:], loops[spatial - 1])
        sch.decompose_reduction(block, loops[spatial])
        return True

    def _schedule_window_pool(self, sch: Any, info: Any) -> bool:
        """A max or average pool over NHWC windows (Xception's 3x3/2 max pools, ShuffleNet V1's 3x3/2
        average pools) with the channel loop inside the window loops (tiling.reduce_channels_innermost):
        each window tap is a contiguous run of channels. Untiled, every output value ran its own 3x3
        window, a strided scalar chain, and the kernel kept the whole pooled map in a scratch buffer
        for its epilogue (Xception's residual add: 1.5 MB at 55x55x128). Here the epilogue runs per
        output pixel, right after its channels are pooled, so the pooled values stay a row of C
        floats. Each output adds or compares the same values in the same order: the same bits. Float
        pools only (int8 pools keep their schedule).
        Xception/224, thread CPU time per inference, interleaved in one process (20 runs each,
        medians): 55.2 ms with split windows alone -> 52.3 ms with this; onnxruntime 46.0 ms."""
        from tvm import s_tir

        epi = tiling.epilogue_block(sch, info)
        block = sch.get_sblock(info.anchor)
        loops = sch.get_loops(block)
        if len(sch.get(block).iter_vars) != 6 or len(loops) != 6 or not tiling.reduce_channels_innermost(sch, info.anchor):
            return False
        if epi is not None:
            try:
                sch.reverse_compute_at(epi, loops[2])
            except s_tir.ScheduleError:
                pass    # an epilogue that reads other pixels of the pool stays a loop of its own
        return True


def rules_for(variant: str) -> HostRules:
    """The host's rules for a vector variant: "avx512" or "avx2" (RULES: this machine's, or
    EDGECOMPILE_HOST_VECTOR's). Either builds on any x86-64 host that has AVX2: the C is compiled
    with -march=native, so a test can build with AVX2's rules on an AVX-512 machine."""
    if variant == "avx512":
        rules = HostRules(lanes=16, conv_acc=24, dw_acc=16, fc_acc=8, ragged=True, ragged_pixels=True,
                          gemm_model=GemmModel(registers=32, reserved=4, fma_per_cycle=2, loads_per_cycle=2,
                                               l2_bytes_per_cycle=32, overlap_tail=True, b_in_registers=True,
                                               l2_bytes=L2_BYTES[variant], l3_bytes_per_cycle=L3_BYTES_PER_CYCLE))
        rules.ragged_stream_bytes = AVX512_L2_BYTES
        return rules
    if variant != "avx2":
        raise TargetError(f"unknown host vector variant {variant!r} (avx2 or avx512)")
    rules = HostRules(lanes=8, conv_acc=12, dw_acc=8, fc_acc=AVX2_FC_ACCUMULATORS, ragged=True, ragged_pixels=True,
                      gemm_model=GemmModel(registers=16, reserved=4, fma_per_cycle=2, loads_per_cycle=2,
                                           l2_bytes_per_cycle=32, overlap_tail=True,
                                           l2_bytes=L2_BYTES[variant], l3_bytes_per_cycle=AVX2_L3_BYTES_PER_CYCLE,
                                           step_cycles=AVX2_STEP_CYCLES, b_operands=True,
                                           broadcast_loads=AVX2_BROADCAST_LOADS,
                                           operand_loads=AVX2_OPERAND_LOADS, blocked=False, chunk_panels=True,
                                           ragged_min_width=AVX2_RAGGED_MIN_WIDTH))
    rules.flat_group_convs = True
    rules.ragged_runs = True
    return rules


VARIANT = "avx512" if _has_avx512() else "avx2"     # tuning records are kept per variant: their tiles depend on it
RULES = rules_for(VARIANT)
LANES = RULES.lanes
