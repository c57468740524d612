"""Schedule policy: which tile a kernel gets. `TiledRules` holds a family's numbers (vector lanes,
accumulator registers, rows per fused tile), chooses tiles from the kernel's loop extents and
hands them to the mechanisms of `tiling.py`. A family module instantiates it as `RULES`; a family
that needs a different rule for one kind subclasses it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..ir.operators import Kind
from . import tiling
from .ukernels import blocked_chunks, mixed_widths, narrower_widths, overlap_blocks, ragged_width


def largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def choose_tile(width: int, channels: int, lanes: int, acc_budget: int, max_m: int,
                ragged: bool = False, model: "GemmModel | None" = None,
                k: int | None = None, ragged_pixels: bool = False, depthwise: bool = False) -> tuple[int, int] | None:
    """(M, N): M output pixels (dividing `width`) x N channels (a multiple of `lanes` dividing
    `channels`) with at most `acc_budget` vector accumulators. Most accumulators wins, then the
    most balanced tile (per reduction step it loads M scalars and N/lanes vectors for M*N/lanes
    FMAs). When no multiple of `lanes` divides `channels` (10 classes, 3 channels...): a scalar
    tile over a divisor of the channels, or with `ragged`, first a ragged tile (see
    `tile_candidates`). With a `model`, float GEMM tiles are ranked by it (`model_tiles`; `k`:
    the reduction steps of one micro-kernel call, when known). With `ragged_pixels`, M need not
    divide `width` (a ragged pixel tile, tiling.pixel_tile) where that wins (`tile_candidates`).
    None when nothing fits."""
    tiles = tile_candidates(width, channels, lanes, acc_budget, max_m, ragged, model, k, ragged_pixels, depthwise)
    return tiles[0] if tiles else None


def _ranked(width: int, channels: int, lanes: int, acc_budget: int, max_m: int) -> list[tuple[tuple, tuple[int, int]]]:
    out = []
    for vectors in range(1, acc_budget + 1):
        n = vectors * lanes
        if channels % n:
            continue
        for m in range(1, min(width, max_m) + 1):
            if width % m or m * vectors > acc_budget:
                continue
            out.append(((m * vectors, min(m, vectors), n), (m, n)))
    return out


def _ragged(width: int, channels: int, lanes: int, acc_budget: int, max_m: int) -> list[tuple[int, int]]:
    """Ragged tiles: M pixels x all `channels`, which no vector width divides; the micro-kernel
    (ukernels.emit_gemm_c) runs them in blocks of up to acc_budget // M vectors of
    `ragged_width(channels, lanes)` lanes and the last channels in scalars. Ranked like vector
    tiles by the accumulators of one block; none when a vector is wider than the channels.
    ShuffleNet V2 1.0/224 fp32 on the emulated Pi: 119.5 M -> 76.0 M instructions per inference
    (its 58-channel layers had 4 x 2 scalar tiles)."""
    w = ragged_width(channels, lanes)
    if w <= 1:
        return []
    out = []
    for m in range(1, min(width, max_m) + 1):
        if width % m or m > acc_budget:
            continue
        v = min(acc_budget // m, channels // w)
        out.append(((m * v, min(m, v), m), (m, channels)))
    return [t for _, t in sorted(out, reverse=True)]


def _overlapped(width: int, channels: int, lanes: int, model: "GemmModel", k: int | None) -> list[tuple[int, int]]:
    """Ragged float tiles of a family whose kernels run them as ceil(channels / lanes) full vectors,
    the last overlapping the one before it (`GemmModel.overlap_tail`, ukernels.overlap_blocks): M
    pixels (dividing `width`) x all the channels, in blocks of up to `model.accumulators`; ranked
    like `model_tiles` (the FMA-peak fraction, the blocks' cycles as in `blocked_efficiency`, the
    overlap's wasted lanes counted), then the fewest blocks (each reads the A tile again), then
    the most accumulators, then the most pixels.
    ShuffleNet V2's 28x28, 58 -> 58 on AVX-512: 7 x (4 x 16 lanes) instead of 4 x (7 x 8 lanes + 2)."""
    return [t for _, t in _overlapped_scored(width, channels, lanes, model, k)]


def _overlapped_scored(width: int, channels: int, lanes: int, model: "GemmModel",
                       k: int | None, steps: bool = False) -> list[tuple[float, tuple[int, int]]]:
    """(fraction of the FMA peak, tile) of `_overlapped`'s tiles, best first. A block of nv vectors
    costs the longest of its FMA, load-issue (M broadcasts of A, `GemmModel.b_loads` of B) and
    L2-streaming cycles, and with `steps`, `GemmModel.step_cycles` as `GemmModel.efficiency` counts
    a tile (the score `_dividing_candidates` weighs against narrow vector tiles). The ranking among
    overlapped tiles leaves the steps out: with them, ShuffleNet V2's 28 x 28, 58 -> 58 layers took
    4 x 58 tiles (blocks of 12, 12 and 8 accumulators) instead of 2 x 58 (12 and 4), and the whole
    untuned inference ran ~1% slower on the AVX2 host (150 interleaved runs, twice)."""
    out = []
    for m in range(1, min(width, max(1, model.accumulators // 2), model.max_m(k)) + 1):
        if width % m:
            continue
        blocks = overlap_blocks(m, channels, lanes, model.accumulators)
        cycles = sum(max(m * len(b) / model.fma_per_cycle,
                         (m * model.broadcast_loads + model.b_loads(m, len(b))) / model.loads_per_cycle,
                         len(b) * lanes * 4 / model.l2_bytes_per_cycle, model.step_cycles if steps else 0) for b in blocks)
        score = round(m * channels / lanes / model.fma_per_cycle / cycles, 6)
        out.append(((score, -len(blocks), m * max(len(b) for b in blocks), m), (m, channels)))
    return [(key[0], t) for key, t in sorted(out, reverse=True)]


@dataclass(frozen=True)
class GemmModel:
    """What a core does per cycle in a float GEMM micro-kernel (ukernels.emit_gemm_c: per reduction
    step, nv vector loads of B, M scalar broadcasts of A, M x nv vector FMAs), from which
    `model_tiles` ranks M x N tiles instead of `_ranked`'s most-accumulators-then-balanced rule.

    `registers` vector registers, of which all but `reserved` (the B vectors and a broadcast) may
    hold accumulators; `fma_per_cycle` vector FMAs and `loads_per_cycle` vector loads or broadcasts
    issued per cycle; `l2_bytes_per_cycle`: the bandwidth at which B (the weight panel, K x N: larger
    than L1 for every layer that matters) streams in from L2, once per M pixels.
    `l2_bytes` (0: not modelled): the L2 cache's size; a GEMM whose K x N weights do not fit it
    streams them from the next level, at `l3_bytes_per_cycle`, once per M pixels (`for_weights`)."""

    registers: int
    reserved: int
    fma_per_cycle: int
    loads_per_cycle: int
    l2_bytes_per_cycle: int
    short_k: int = 8
    short_k_max_m: int = 12
    blocked: bool = True      # the family's GEMM emitter runs blocked tiles (ukernels.uses_blocked)
    overlap_tail: bool = False   # ragged channels as full vectors, the last overlapping (host/ukernels.py)
    b_in_registers: bool = False  # the B vectors of a step and a broadcast need registers beside the accumulators
    l2_bytes: int = 0             # the L2 cache's size (0: weights always stream from L2)
    l3_bytes_per_cycle: int = 0   # the bandwidth of weights that do not fit L2
    # The fewest cycles a reduction step takes however few its FMAs (0: not modelled): the FMA
    # latency and the loop around it, so that a tile of fewer accumulators than step_cycles x
    # fma_per_cycle leaves FMA slots empty. Not applied to calls of at most `short_k` steps
    # (`for_weights`): there the next tile's steps overlap.
    step_cycles: float = 0
    b_operands: bool = False      # B vectors that do not fit beside the accumulators: FMA memory operands (b_loads)
    broadcast_loads: float = 1.0  # load slots a broadcast of A takes (a vector load of B: 1)
    operand_loads: float = 1.0    # load slots of a B vector read as an FMA's memory operand (b_operands)
    ragged_min_width: int = 0     # no ragged pixel tiles (_ragged_pixel_tiles) on rows narrower than this
    # The steps `max_m`'s short-K limit counts instead of the call's (0: the call's): a kernel-rows
    # call (TiledRules.kernel_rows) runs K steps per kernel row over several rows, and its tiles keep
    # the pixel limit of one tap's steps, as measured, while the rest of the model counts them all.
    unrolled_k: int = 0
    # Blocked tiles of all a wide layer's channels that two vectors do not divide read their weights
    # as chunk panels ([K][2 x lanes] panels: ukernels.chunk_panel_width, host/ukernels.chunked_gemm)
    chunk_panels: bool = False

    def for_weights(self, k: int | None, channels: int) -> "GemmModel":
        """The model for a GEMM of `k` reduction steps (None: unknown) over `channels` output
        channels of float weights: this one, without `step_cycles` for a call of at most `short_k`
        steps, and when its K x N weights exceed `l2_bytes`, one whose B streams at
        `l3_bytes_per_cycle`. Xception/224's 728 -> 728 pointwise convolutions (2.1 MB
        of weights; L2 512 KB on this AVX2 host) took 2 x 728 tiles that read all of them from L3
        for every 2 pixels: 7 x 8 tiles over [K][8] panels read them once per 7 pixels (the whole
        untuned inference 0.68x in thread CPU time, 12 interleaved runs in one process, medians, on
        a machine loaded by other jobs)."""
        model = self
        if self.step_cycles and k is not None and k <= self.short_k:
            model = replace(model, step_cycles=0)
        if not model.l2_bytes or not model.l3_bytes_per_cycle or k is None or k * channels * 4 <= model.l2_bytes:
            return model
        return replace(model, l2_bytes_per_cycle=model.l3_bytes_per_cycle, l2_bytes=0)

    def fits_registers(self, m: int, nv: int) -> bool:
        """Whether an M x nv-vector tile's accumulators, its nv B vectors and one broadcast fit the
        registers (`b_in_registers`; always true without it). GCC keeps a step's B vectors in
        registers: EfficientNet-B0's 7 x 64 tiles on AVX-512 (28 accumulators + 4 + 1 > 32) spilled
        accumulators to the stack in every reduction step."""
        return not self.b_in_registers or m * nv + nv + 1 <= self.registers

    def b_loads(self, m: int, nv: int) -> float:
        """The load slots of B per reduction step of an M x nv-vector tile: its nv vectors, or with
        `b_operands`, when they do not fit the registers beside the M x nv accumulators, a
        broadcast and one spare, one per FMA (gcc reads them as memory operands of the FMAs), at
        `operand_loads` each."""
        if self.b_operands and m * nv + nv + 2 > self.registers:
            return m * nv * self.operand_loads
        return nv

    def max_m(self, k: int | None) -> int:
        """The most pixels a tile may have when one micro-kernel call runs `k` reduction steps
        (None: unknown). A call of at most `short_k` steps (the first convolution's 3 input
        channels per tap, the pointwise of a fused dw+pw kernel on 8 channels) is a handful of
        FMAs per accumulator between the tile's load and store: gcc unrolls the constant-K loop
        and, past `short_k_max_m` pixels, spills (MobileNet V1 0.25/96, the 48x48x8 first
        convolution's stack references: 73 at 8x8, 65 at 12x8, 265 at 16x8, 408 at 24x8).
        `unrolled_k`, where set, stands for `k` here."""
        k = self.unrolled_k or k
        if k is not None and k <= self.short_k:
            return min(self.accumulators, self.short_k_max_m)
        return self.accumulators

    @property
    def accumulators(self) -> int:
        return self.registers - self.reserved

    def efficiency(self, m: int, n: int, lanes: int) -> float:
        """The fraction of the FMA peak (`lanes`-wide FMAs) an M x N float tile can reach, its N
        channels in the vectors of `ukernels.mixed_widths`: the cycles its M x N MACs per
        reduction step take at the peak over the longest of FMA, load-issue and L2-streaming
        cycles (a narrower vector costs an FMA and a load as a full one)."""
        nv = len(mixed_widths(n, lanes))
        peak = m * n / lanes / self.fma_per_cycle
        fma = m * nv / self.fma_per_cycle
        loads = (m * self.broadcast_loads + self.b_loads(m, nv)) / self.loads_per_cycle
        l2 = n * 4 / self.l2_bytes_per_cycle
        return peak / max(fma, loads, l2, self.step_cycles)

    def blocked_efficiency(self, m: int, n: int, lanes: int) -> float:
        """`efficiency` of a blocked tile (ukernels.uses_blocked: M pixels x all n channels, run in
        blocks of `ukernels.blocked_chunks`): each block costs the longest of its FMA, load-issue
        (the M broadcasts of A again for every block) and L2-streaming cycles."""
        peak = cycles = 0.0
        for chunk in blocked_chunks(m, n, lanes, self.accumulators):
            width = sum(w for w, _ in chunk)
            peak += m * width / lanes / self.fma_per_cycle
            loads = (m * self.broadcast_loads + self.b_loads(m, len(chunk))) / self.loads_per_cycle
            cycles += max(m * len(chunk) / self.fma_per_cycle, loads, width * 4 / self.l2_bytes_per_cycle,
                          self.step_cycles)
        return peak / cycles


def model_tiles(width: int, channels: int, lanes: int, model: GemmModel, k: int | None = None) -> list[tuple[int, int]]:
    """The float GEMM tiles (M pixels dividing `width` x N channels, N dividing `channels` and a
    multiple of the widest vector width of `narrower_widths(lanes)` dividing them, in full vectors
    then narrower ones (`ukernels.mixed_widths`: 56 of 728 channels as 3 x 16 + 8 on AVX-512), at
    most `model.accumulators` vectors), best first: highest `model.efficiency`, then most
    accumulators (fewer calls, the C tile's load and store spread over more FMAs), then more
    pixels (each weight vector read for more of them).
    Measured on AVX-512 (Zen 5, one pointwise layer in a loop, best of 40; GMAC/s): 14x14, 512 ->
    512: 2x128 (the rule before) 68, 1x256 41, 7x32 104, 14x32 130, 7x64 130; 7x7, 1024 -> 1024:
    1x256 27, 7x64 128; 56x56, 128 -> 128: 2x128 88, 4x64 101, 8x32 129, 14x32 126. Empty when no
    vector width divides `channels` (the caller falls back to ragged or scalar tiles).
    `k`, the reduction steps of one call when known, limits the pixels (`GemmModel.max_m`):
    MobileNet V1 0.25/96 untuned ran ~8% slower with the 24x8 and 24x16 tiles of its K = 3 and
    K = 8 calls than with the 8x8 and 8x16 before the model, ~2% faster with 12x8 and 12x16 (one
    process, alternating builds, median of 300 runs); 1.0/224 keeps its tiles but the first
    convolution's (8x32 for 14x32, same speed)."""
    max_m = model.max_m(k)
    model = model.for_weights(k, channels)
    w = next((w for w, _ in narrower_widths(lanes) if channels % w == 0), 0)
    if not w:
        return []
    ranked = []
    for n in range(w, channels + 1, w):
        vectors = len(mixed_widths(n, lanes))
        if channels % n or vectors > model.accumulators:
            continue
        for m in range(1, min(width, model.accumulators // vectors, max_m) + 1):
            if width % m == 0 and model.fits_registers(m, vectors):
                ranked.append(((round(model.efficiency(m, n, lanes), 6), 1, m * vectors, m), (m, n)))
    # Blocked tiles (all the channels, more vectors than accumulators, in blocks: ukernels.uses_blocked)
    # rank below a tile of the same efficiency. SqueezeNet 1.1/224's 13x13, 512 -> 1000 classifier:
    # 13x8 (0.46 of the peak by this model) -> 13 x 1000 in blocks of 13x32 (0.99).
    vectors = len(mixed_widths(channels, lanes))
    for m in range(1, min(width, model.accumulators, max_m) + 1) if model.blocked else ():
        if width % m == 0 and m * vectors > model.accumulators:
            ranked.append(((round(model.blocked_efficiency(m, channels, lanes), 6), 0,
                            m * min(vectors, model.accumulators // m), m), (m, channels)))
    return [t for _, t in sorted(ranked, reverse=True)]


# A ragged pixel tile is chosen over the best tile whose M divides the row only when its estimate
# is this much better: its last tile is a separate call of another micro-kernel, and its epilogue
# runs over the whole row (an M x N accumulator buffer of the row's width).
RAGGED_PIXEL_MARGIN = 1.15


def _intensity(m: int, v: int, depthwise: bool = False) -> float:
    """Vector FMAs per FMA + load of a GEMM tile of M pixels x v vectors (per reduction step: M
    broadcasts of A, v vector loads of B, M x v FMAs), or of a depthwise tile (per tap: M x v
    input vectors, v weight vectors): the ranking of ragged pixel tiles of a family without a
    GemmModel, where every instruction counts."""
    if depthwise:
        return m * v / (2 * m * v + v)
    return m * v / (m * v + m + v)


def _row_score(width: int, m: int, score: Any) -> float:
    """`score(pixels)` (work per cost of a tile of that many pixels) of a row of `width` pixels run
    as width // m tiles of m pixels and one of width % m: the row's work over its summed cost; 0
    when a score is 0 (a tile the model rules out, e.g. NeonGemmModel's past the registers)."""
    q, r = divmod(width, m)
    full, last = score(m), (score(r) if r else 1.0)
    if full <= 0 or last <= 0:
        return 0.0
    return width / (q * m / full + (r / last if r else 0.0))


def _ragged_pixel_tiles(width: int, channels: int, lanes: int, acc_budget: int, max_m: int,
                        model: GemmModel | None, k: int | None,
                        depthwise: bool = False) -> list[tuple[float, tuple[int, int]]]:
    """(row score, (M, N)) of every ragged pixel tile of a row of `width`: M (2..max_m, not
    dividing the width) x N vector channels (as `model_tiles` or `_ranked` take them), scored per
    row by the model's efficiency or by `_intensity`; best first."""
    out = []
    if model is not None and width < model.ragged_min_width:
        return []
    if model is not None:
        w = next((w for w, _ in narrower_widths(lanes) if channels % w == 0), 0)
        for n in range(w, channels + 1, w) if w else []:
            vectors = len(mixed_widths(n, lanes))
            if channels % n or vectors > model.accumulators:
                continue
            for m in range(2, min(width - 1, model.accumulators // vectors, model.max_m(k)) + 1):
                if width % m and model.fits_registers(m, vectors):
                    e = _row_score(width, m, lambda x: model.efficiency(x, n, lanes))
                    out.append(((round(e, 6), m * vectors, m), (m, n)))
    else:
        w = next((w for w, _ in narrower_widths(lanes) if channels % w == 0), 0) if lanes > 1 else 0
        for v in range(1, acc_budget + 1) if w else []:
            n = v * w
            if channels % n:
                continue
            for m in range(2, min(width - 1, max_m, acc_budget // v) + 1):
                if width % m:
                    e = _row_score(width, m, lambda x: _intensity(x, v, depthwise))
                    out.append(((round(e, 6), m * v, m), (m, n)))
    return [(key[0], t) for key, t in sorted(out, reverse=True)]


def _divided_score(tile: tuple[int, int], lanes: int, model: GemmModel | None, depthwise: bool = False) -> float:
    """The score `_ragged_pixel_tiles` gives a tile whose M divides the row."""
    m, n = tile
    if model is not None:
        return model.efficiency(m, n, lanes)
    w = next((w for w, _ in narrower_widths(lanes) if n % w == 0), 1)
    return _intensity(m, n // w, depthwise)


def tile_candidates(width: int, channels: int, lanes: int, acc_budget: int, max_m: int,
                    ragged: bool = False, model: GemmModel | None = None,
                    k: int | None = None, ragged_pixels: bool = False,
                    depthwise: bool = False) -> list[tuple[int, int]]:
    """Every (M, N) tile `choose_tile` could pick from, best first: the search space of the
    tuner (`_dividing_candidates`: M divides `width`). With `ragged_pixels`, ragged pixel tiles
    (M not dividing `width`, tiling.pixel_tile) come first where the best of them scores
    RAGGED_PIXEL_MARGIN times the first dividing tile (`_divided_score`: the model's efficiency,
    or `_intensity` without a model), e.g. the 19-pixel rows of 728 channels of Xception on the
    A72: 1 x 56 (intensity 0.48) -> 8 x 8 (0.60 over the row's 8 + 8 + 3 pixels). Only vector
    tiles compete: channels that no vector width divides keep their ragged channel or scalar tiles.
    Without a model, only a row whose rule picks one-pixel tiles takes them: scored by
    `_intensity` against several pixels, MobileNet V2 1.0/224's 2 x N depthwise tiles (rows of
    112 to 14) lost to 8 x 4 and 6 x 8 ones and the network took 152.5 M emulated A72
    instructions instead of 145.3 M (144.3 M with this restriction).
    `depthwise`: the tiles of a depthwise window (scored by `_intensity`'s depthwise form)."""
    model = model.for_weights(k, channels) if model is not None else None    # weights beyond L2: once here
    tiles = _dividing_candidates(width, channels, lanes, acc_budget, max_m, ragged, model, k)
    if not ragged_pixels or lanes <= 1 or width <= 2 or not tiles or (model is None and tiles[0][0] > 1):
        return tiles
    pixels = _ragged_pixel_tiles(width, channels, lanes, acc_budget, max_m, model, k, depthwise)
    if not pixels or pixels[0][0] <= _divided_score(tiles[0], lanes, model, depthwise) * RAGGED_PIXEL_MARGIN:
        return tiles
    return [t for _, t in pixels] + tiles


def _dividing_candidates(width: int, channels: int, lanes: int, acc_budget: int, max_m: int,
                         ragged: bool = False, model: GemmModel | None = None,
                         k: int | None = None) -> list[tuple[int, int]]:
    """The (M, N) tiles whose M divides `width`, best first by their own ranking. Families of 8 or more lanes fall back to half-width vectors (24 or 40
    channels on AVX-512; see ukernels.vector_width), then (with `ragged`: float kernels of a family
    whose micro-kernels take them) to ragged tiles over all the channels, then to scalars. With a
    `model` (float GEMM tiles of a family that has one), the vector tiles are `model_tiles`'."""
    if model is not None and lanes > 1:
        modelled = model_tiles(width, channels, lanes, model, k)
        if (modelled and ragged and model.overlap_tail and channels > lanes
                and all(w < lanes for w, _ in mixed_widths(modelled[0][1], lanes))):
            # The best tile has no full vector (116 = 29 x 4 channels on AVX2: 7 x 4 tiles of one
            # quarter vector): all the channels in full vectors, the last overlapping, where the
            # model rates that higher. ShuffleNet V2 1.0/224 on the AVX2 host: 7 x 4 -> 2 x 116
            # tiles in its 116-channel pointwise convolutions; the untuned inference 0.95x-0.98x
            # in thread CPU time (60-150 interleaved runs in one process, medians, four runs).
            overlapped = _overlapped_scored(width, channels, lanes, model, k, steps=True)
            if overlapped and max(overlapped)[0] > _model_score(modelled[0], channels, lanes, model, k):
                return _overlapped(width, channels, lanes, model, k) + modelled
        if modelled:
            return modelled
    out = []
    for w in [w for w, _ in narrower_widths(lanes)] if lanes > 1 else [1]:
        out = _ranked(width, channels, w, acc_budget, max_m)
        if out:
            break
    if not out and lanes > 1:
        if ragged and model is not None and model.overlap_tail and channels > lanes:
            return (_overlapped(width, channels, lanes, model, k)
                    + _dividing_candidates(width, channels, 1, min(acc_budget, 8), max_m))
        return ((_ragged(width, channels, lanes, acc_budget, max_m) if ragged else [])
                + _dividing_candidates(width, channels, 1, min(acc_budget, 8), max_m))
    return [t for _, t in sorted(out, reverse=True)]


def _model_score(tile: tuple[int, int], channels: int, lanes: int, model: GemmModel, k: int | None) -> float:
    """The fraction of the FMA peak `model_tiles` rates a tile of its own at (a blocked tile's
    `blocked_efficiency`, else `efficiency`)."""
    m, n = tile
    model = model.for_weights(k, channels)
    if n == channels and len(mixed_widths(n, lanes)) * m > model.accumulators:
        return model.blocked_efficiency(m, n, lanes)
    return model.efficiency(m, n, lanes)


def _pick(cfg: dict | None, key: str, default: Any) -> Any:
    if cfg and key in cfg:
        v = cfg[key]
        return tuple(v) if isinstance(v, list) else v
    return default


class TiledRules:
    """The schedule rules of a family that tiles for `lanes`-wide vectors (1 = scalar FPU) with
    a register budget for accumulators. `cfg` (a tuning record's configuration) fixes a rule's
    choices: `tile`, `order`, `pack`, `rows`, `dw_tile`, `dw_order`."""

    def __init__(self, lanes: int, conv_acc: int, dw_acc: int, fc_acc: int, dwpw_rows: int = 2,
                 wide_rows: bool = False, ragged: bool = False, gemm_model: GemmModel | None = None,
                 ragged_pixels: bool = False) -> None:
        self.lanes, self.conv_acc, self.dw_acc, self.fc_acc = lanes, conv_acc, dw_acc, fc_acc
        self.gemm_model = gemm_model   # ranks the tiles of float GEMMs (convolutions, pointwise) when set
        self.dwpw_rows = dwpw_rows
        self.wide_rows = wide_rows     # fused dw+pw: int8 depthwise rows stored as int16 (tiling.tile_dwpw)
        self.ragged = ragged           # float GEMM/depthwise tiles over channels no vector width divides
        self.ragged_pixels = ragged_pixels   # float tiles of M pixels not dividing the row (tiling.pixel_tile)

    def ragged_for(self, sch: Any, block_name: str | None) -> bool:
        """Whether the micro-kernels of a block may take ragged tiles (rules._ragged): float32 only
        (the integer kernels keep their tiles), in a family built with `ragged`."""
        if not self.ragged or not block_name:
            return False
        types = tiling.operand_types(sch, sch.get_sblock(block_name))
        return types is not None and types.c == "float32"

    def ragged_pixels_for(self, sch: Any, block_name: str | None) -> bool:
        """Whether a block's tiles may be ragged pixel tiles (tiling.pixel_tile): float32 only, in
        a family built with `ragged_pixels`."""
        return self.ragged_pixels and self.ragged_for(sch, block_name)

    def accumulators(self, which: str, types: Any) -> int:
        """The accumulator budget of a `which` ("conv", "dw", "fc") micro-kernel of `types` (None:
        unknown). A family whose integer kernels have other register needs overrides this."""
        return {"conv": self.conv_acc, "dw": self.dw_acc, "fc": self.fc_acc}[which]

    def lanes_for(self, types: Any) -> int:
        """The vector lanes of this family's micro-kernels of `types` (None: unknown); a family
        whose integer kernels work in core registers overrides this."""
        return self.lanes

    def model_for(self, sch: Any, block_name: str | None) -> GemmModel | None:
        """The family's GEMM model for a convolution's GEMM block: float32 only (integer kernels
        keep their rule), None without a model."""
        if self.gemm_model is None or not block_name:
            return None
        types = tiling.operand_types(sch, sch.get_sblock(block_name))
        return self.gemm_model if types is not None and types.c == "float32" and not types.b_order else None

    def _lanes_budget(self, sch: Any, block_name: str | None, which: str) -> tuple[int, int]:
        """(vector lanes, accumulator budget) of the micro-kernel of a `which` block."""
        types = tiling.operand_types(sch, sch.get_sblock(block_name)) if block_name else None
        return self.lanes_for(types), self.accumulators(which, types)

    def panel_order(self, types: Any) -> str:
        """How this family's GEMM kernels of `types` want a packed weight panel ordered
        (ukernels.PANEL_ORDERS; "" row by row)."""
        return ""

    # float maxima / minima against constants written as fmaxf / fminf in the kernels' C
    # (codegen.lower.family_c): for a compiler that turns TVM's ternaries into compares and bit
    # selects but the calls into one instruction per vector
    IEEE_CLAMPS = False
    # gcc options for the kernels TVM lowers without a schedule of ours (`generic.*`: concats,
    # shuffles, pools, elementwise), wrapped around each such function (codegen.lower.with_gcc_options)
    GENERIC_GCC_OPTIONS: tuple[str, ...] = ()

    def after_finish(self, func: Any, info: Any) -> Any | None:
        """The scheduled function, rewritten where a family needs what no schedule primitive does;
        None: the rewrite does not apply (the kernel is scheduled again with `info.rescale_kernel`
        False)."""
        return func

    def dwpw_panel_order(self, types: Any) -> str:
        """The panel order of the pointwise GEMM of a fused depthwise+pointwise kernel (its weights
        are read once per output pixel pair: a family may store them wider); `panel_order` by default."""
        return self.panel_order(types)

    def window_panel_order(self, types: Any) -> str:
        """The panel order of a KxK convolution whose GEMM kernels take the whole window per call
        (`window_gemm`: few input channels, weights read once per pixel pair: a family may store
        them wider); `panel_order` by default."""
        return self.panel_order(types)

    def window_gemm(self, types: Any) -> bool:
        """Whether this family's GEMM kernels of `types` take a KxK convolution's whole kernel row
        per call (tiling.tile_conv_gemm's `window_for`); by default one tap per call."""
        return False

    # Whether the family's float GEMM kernels sum all of a KxK convolution's kernel rows in one call
    # (`ec_gemm_f32_MxN_rR_z`, tiling.KERNEL_ROWS_ATTR) where its tiles take one kernel row per call
    # (`window_gemm`): the tile's accumulators stay in registers across the rows. Its tiles are
    # ranked by all the taps' steps, their pixels limited by one tap's (`_conv_model`).
    kernel_rows = False

    def _conv_model(self, sch: Any, info: Any, ext: list[int]) -> tuple[GemmModel | None, int]:
        """(the GEMM model, the reduction steps of one micro-kernel call) that rank a convolution's
        tiles (ext: the anchor's loop extents N, H, W, C, KH, KW, CI). With `kernel_rows`, a KxK
        tile's call runs all the KH x KW x CI steps, and the pixel limit of a short reduction
        (`GemmModel.max_m`) stays that of one tap's CI steps (`GemmModel.unrolled_k`): AVX-512 would
        otherwise give a first convolution on 3 channels 24 x 8 tiles, past the 12 pixels where gcc
        spilled the unrolled per-tap loop. SqueezeNet 1.1/224 untuned on the AVX2 host, 60
        interleaved runs: 0.92x of the build before kernel rows with this ranking, 0.98x with one
        tap's steps (its first convolution 111 x 16 in 6-pixel tiles instead of 3 x 16)."""
        model = self.model_for(sch, info.anchor)
        types = tiling.operand_types(sch, sch.get_sblock(info.anchor))
        if model is None or not (self.kernel_rows and ext[5] > 1 and self.window_gemm(types)):
            return model, ext[6]
        return replace(model, unrolled_k=ext[6]), ext[4] * ext[5] * ext[6]

    def rule_for(self, kind: Kind) -> Any:
        """The rule that schedules kernels of `kind` (every kind has one; most decline some shapes)."""
        return {
            Kind.CONV: self.schedule_conv, Kind.CONV_PW: self.schedule_conv, Kind.CONV_GROUP: self.schedule_conv,
            Kind.CONV_DW: self.schedule_depthwise, Kind.DWPW: self.schedule_dwpw, Kind.FC: self.schedule_dense,
            Kind.POOL: self.schedule_pool, Kind.MEAN: self.schedule_pool, Kind.REDUCE: self.schedule_pool,
            Kind.ELEMENTWISE: self.schedule_elementwise,
        }[kind]

    def _row_tile(self, sch: Any, info: Any, cfg: dict | None, acc: str, groups: int = 1) -> tuple[int, int] | None:
        """The pixels x channels tile of an NHWC conv anchor (N, H, W, C + 3 reduction loops); the
        channels of one group for a grouped convolution."""
        ext = tiling.anchor_extents(sch, info.anchor)
        if len(ext) != 7 or groups < 1 or ext[3] % groups:
            return None
        model, k = self._conv_model(sch, info, ext) if acc == "conv" else (None, ext[6])
        return _pick(cfg, "tile", None) or choose_tile(ext[2], ext[3] // groups,
                                                       *self._lanes_budget(sch, info.anchor, acc), 8,
                                                       self.ragged_for(sch, info.anchor), model,
                                                       k, self.ragged_pixels_for(sch, info.anchor), acc == "dw")

    def schedule_conv(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        """Convolutions as GEMM tiles; a grouped one as one GEMM per group (tiling.tile_conv_gemm)."""
        if info.kind not in (Kind.CONV, Kind.CONV_PW, Kind.CONV_GROUP):
            return False
        groups = tiling.conv_groups(sch, info) if info.kind == Kind.CONV_GROUP else 1
        tile = self._row_tile(sch, info, cfg, "conv", groups)
        window_order_for = self.window_panel_order if _pick(cfg, "wide_weights", True) else self.panel_order
        return tile is not None and tiling.tile_conv_gemm(sch, info, tile, _pick(cfg, "order", "pixels"),
                                                          _pick(cfg, "pack", True), self.panel_order, groups,
                                                          self.window_gemm, window_order_for, self.kernel_rows,
                                                          _pick(cfg, "panels", ""))

    def schedule_depthwise(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        tile = self._row_tile(sch, info, cfg, "dw")
        return tile is not None and tiling.tile_depthwise(sch, info, tile, _pick(cfg, "order", "pixels"))

    def schedule_dense(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        ext = tiling.anchor_extents(sch, info.anchor)
        if len(ext) != 3:
            return False
        tile = _pick(cfg, "tile", None) or choose_tile(1, ext[1], *self._lanes_budget(sch, info.anchor, "fc"), 1,
                                                       self.ragged_for(sch, info.anchor))
        if tile is None:
            return False
        return tiling.tile_dense(sch, info, tile[1], _pick(cfg, "pack", True), self.panel_order)

    def schedule_dwpw(self, sch: Any, info: Any, rows: int | None = None, cfg: dict | None = None) -> bool:
        ext = tiling.anchor_extents(sch, info.anchor)
        if len(ext) != 7:
            return False
        h, w, co = ext[1], ext[2], ext[3]
        r = largest_divisor(h, _pick(cfg, "rows", rows or self.dwpw_rows))
        tile = _pick(cfg, "tile", None) or choose_tile(w, co, *self._lanes_budget(sch, info.anchor, "conv"), 8,
                                                       self.ragged_for(sch, info.anchor),
                                                       self.model_for(sch, info.anchor), info.dw_channels,
                                                       self.ragged_pixels_for(sch, info.anchor))
        if tile is None:
            return False
        dw_tile = _pick(cfg, "dw_tile", None) or choose_tile(w, info.dw_channels,
                                                             *self._lanes_budget(sch, info.dw_anchor, "dw"), 8,
                                                             self.ragged_for(sch, info.dw_anchor), None, None,
                                                             self.ragged_pixels_for(sch, info.dw_anchor), True)
        if dw_tile is None:
            return False
        order_for = self.dwpw_panel_order if _pick(cfg, "wide_weights", True) else self.panel_order
        return tiling.tile_dwpw(sch, info, r, tile, dw_tile, _pick(cfg, "pack", True), order_for,
                                self.wide_rows, _pick(cfg, "dw_order", "pixels"),
                                _pick(cfg, "epilogue", self.dwpw_epilogue_channels(sch, info, tile)),
                                _pick(cfg, "order", "pixels"), _pick(cfg, "panels", ""))

    def dwpw_epilogue_channels(self, sch: Any, info: Any, tile: tuple[int, int]) -> int:
        """How many output channels the pointwise epilogue of a fused dw+pw kernel takes per call
        (tiling.tile_dwpw's `epilogue_channels`); 0: one epilogue per GEMM tile. A family with a
        vector rescale wider than its GEMM tiles overrides this."""
        return 0

    def finish(self, sch: Any, info: Any, blocks_before: list[str]) -> None:
        """A build's last step on a kernel its rule tiled (not run by the tuner's design spaces):
        `blocks_before` are the kernel's top-level block names before the rule ran. Nothing here;
        a family may override it."""

    def schedule_pool(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        return False

    def schedule_elementwise(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        return False

    def space(self, sch: Any, info: Any, limit: int = 24) -> list[dict]:
        """The tuner's search space for one kernel (after the generic inlining): configurations
        this family's rule accepts, the rule's own choice first. Empty if the rule does not tile
        this kind."""
        out: list[dict] = []
        if info.kind in (Kind.CONV, Kind.CONV_PW, Kind.CONV_DW, Kind.CONV_GROUP):
            ext = tiling.anchor_extents(sch, info.anchor)
            groups = tiling.conv_groups(sch, info) if info.kind == Kind.CONV_GROUP else 1
            if len(ext) != 7 or groups < 1 or ext[3] % groups:
                return []
            lanes, acc = self._lanes_budget(sch, info.anchor, "dw" if info.kind == Kind.CONV_DW else "conv")
            model = self.model_for(sch, info.anchor) if info.kind != Kind.CONV_DW else None
            for t in tile_candidates(ext[2], ext[3] // groups, lanes, acc, 8, self.ragged_for(sch, info.anchor), model,
                                     ext[6], self.ragged_pixels_for(sch, info.anchor),
                                     info.kind == Kind.CONV_DW)[:limit // 2]:
                out += [{"tile": list(t), "order": "pixels"}, {"tile": list(t), "order": "channels"}]
        elif info.kind == Kind.FC:
            ext = tiling.anchor_extents(sch, info.anchor)
            if len(ext) != 3:
                return []
            out = [{"tile": list(t)} for t in tile_candidates(1, ext[1], *self._lanes_budget(sch, info.anchor, "fc"),
                                                              1, self.ragged_for(sch, info.anchor))[:limit]]
        elif info.kind == Kind.DWPW:
            ext = tiling.anchor_extents(sch, info.anchor)
            if len(ext) != 7:
                return []
            h, w = ext[1], ext[2]
            default = largest_divisor(h, self.dwpw_rows)
            rows = [default] + sorted({largest_divisor(h, r) for r in (1, 2, 4, 8)} - {default})
            pw = tile_candidates(w, ext[3], *self._lanes_budget(sch, info.anchor, "conv"), 8,
                                 self.ragged_for(sch, info.anchor), self.model_for(sch, info.anchor),
                                 info.dw_channels, self.ragged_pixels_for(sch, info.anchor))[:4]
            dw = tile_candidates(w, info.dw_channels, *self._lanes_budget(sch, info.dw_anchor, "dw"), 8,
                                 self.ragged_for(sch, info.dw_anchor), None, None,
                                 self.ragged_pixels_for(sch, info.dw_anchor), True)[:3]
            out = [{"rows": r, "tile": list(t), "dw_tile": list(d)} for r in rows for t in pw for d in dw]
        return out[:limit]
