"""Schedule mechanisms shared by every target family: inlining, tiling a kernel's loops for a
given tile, packing weights, tensorizing the inner block into a micro-kernel. What tile to use
is policy, decided in `rules.py` (or by a tuning record); these functions only carry it out and
return False when the kernel does not have the loop structure they expect."""

from __future__ import annotations

from typing import Any

from ..ir.operators import Kind
from .ukernels import (SPAN_KW, SPAN_WINDOW, dw_intrin, gemm_full_window_intrin, gemm_intrin, gemm_window_intrin,
                       requant_intrin, types_for, window_intrin)


def _children(sch: Any) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def children(sch: Any) -> list[Any]:
    """A kernel's blocks under its root block, in order (the tensorized ones excepted)."""
    return _children(sch)


def _is_reduction(sch: Any, block: Any) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


def _is_pad(sch: Any, block: Any) -> bool:
    return "pad" in sch.get(block).name_hint.lower()


def _try(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # noqa: BLE001 - TVM raises ScheduleError subclasses; keep the block
        return False


def extent(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


def anchor_extents(sch: Any, block_name: str) -> list[int]:
    """Extents of the loops around a block (after inlining): what a rule chooses tiles from."""
    return [extent(sch, lp) for lp in sch.get_loops(sch.get_sblock(block_name))]


# ----------------------------------------------------------------------------- inlining


def inline_producers_and_epilogues(sch: Any, info: Any, keep_pad: bool = False, keep_concat: bool = False) -> None:
    """Inline padding / elementwise producers into their consumers and collapse the epilogue
    (bias, activation, residual add...) after the anchor into one block. With `keep_pad`, a
    padding block feeding the anchor stays (tiled schedules compute it per output row); with
    `keep_concat`, so does an input transform fused in front of the anchor (concatenation, channel
    split, shuffle transpose: inlined, it would make the GEMM operand a select or a gather, which
    no micro-kernel reads); the transform's own producers are inlined into it."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if info.anchor is None:
        # Purely elementwise: everything but the final block is inlined into its consumers.
        for b in blocks[:-1]:
            _try(sch.compute_inline, b)
        split_channel_gathers(sch, _children(sch)[-1])      # a channel shuffle kernel (int8)
        return
    a = names.index(info.anchor)
    keep = None
    if keep_concat:
        transforms = [b for b in blocks[:a] if not _is_pad(sch, b) and not _is_reduction(sch, b)]
        keep = transforms[-1] if transforms else None
    for b in blocks[:a]:
        if keep_pad and _is_pad(sch, b):
            continue
        if keep is not None and sch.get(b).same_as(sch.get(keep)):
            continue
        if not _is_reduction(sch, b):
            _try(sch.compute_inline, b)
    # Intermediate epilogue blocks are inlined forward into their consumers, leaving one block
    # that writes the kernel output. (Forward inlining copes with diamonds such as SiLU,
    # x * sigmoid(x), where reverse inlining would have to read a removed buffer.)
    # A block whose consumer writes more elements (squeeze-and-excitation: a per-channel sigmoid
    # scaling a whole map) stays a block of its own: inlined, it would be recomputed per pixel.
    epilogue = blocks[a + 1:]
    for b, consumer in zip(epilogue[:-1], epilogue[1:]):
        if _is_reduction(sch, b):
            break
        if _elements_written(sch, consumer) > _elements_written(sch, b):
            continue
        _try(sch.compute_inline, b)


def _elements_written(sch: Any, block: Any) -> int:
    n = 1
    for d in sch.get(block).writes[0].source.shape:
        n *= int(d)
    return n


def inline_dwpw(sch: Any, info: Any) -> None:
    """Fused depthwise + pointwise kernel: keep the depthwise padding, one depthwise epilogue
    block (bias + activation) and one pointwise epilogue block (bias, activation, residual)."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    ia, ib = names.index(info.dw_anchor), names.index(info.anchor)
    for b in blocks[:ia]:
        if not _is_pad(sch, b):
            _try(sch.compute_inline, b)
    between = blocks[ia + 1:ib]
    pads = [b for b in between if _is_pad(sch, b)]
    epi1 = [b for b in between if b not in pads]
    for b in pads:                # the pointwise conv's (empty) padding reads the dw epilogue
        _try(sch.compute_inline, b)
    for b in epi1[:-1]:
        _try(sch.compute_inline, b)
    for b in blocks[ib + 1:-1]:
        _try(sch.compute_inline, b)


def prepare(sch: Any, info: Any, tiled: bool) -> None:
    """The generic steps before any rule: inlining, keeping what a tiled schedule computes per row."""
    if info.kind == Kind.DWPW:
        inline_dwpw(sch, info)
    else:
        # a 1x1 group convolution is tiled as a pointwise one (per group), a KxK one as a KxK conv
        pointwise = info.kind == Kind.CONV_PW or (info.kind == Kind.CONV_GROUP and tuple(info.kernel) == (1, 1))
        windowed = info.kind in (Kind.CONV, Kind.CONV_DW) or (info.kind == Kind.CONV_GROUP and not pointwise)
        inline_producers_and_epilogues(sch, info, keep_pad=tiled and windowed, keep_concat=tiled and pointwise)


def _divisors_of(expr: Any, var: Any, found: set[int]) -> None:
    """The constant divisors of every `var // g` and `var % g` in `expr` (into `found`)."""
    import tvm
    from tvm import tirx

    if isinstance(expr, (tirx.FloorDiv, tirx.FloorMod)) and expr.a.same_as(var) and isinstance(expr.b, tirx.IntImm):
        found.add(int(expr.b.value))
    for attr in ("a", "b", "value", "condition", "true_value", "false_value"):
        sub = getattr(expr, attr, None)
        if isinstance(sub, tvm.ir.expr.Expr):
            _divisors_of(sub, var, found)
    for attr in ("indices", "args"):
        for sub in getattr(expr, attr, None) or []:
            _divisors_of(sub, var, found)


def split_channel_gathers(sch: Any, block: Any) -> bool:
    """A copy whose innermost index `c` is read through `c // g` and `c % g` (a channel shuffle,
    transpose-reshape-transpose over the channels, inlined into a padding window or a copy kernel:
    source channel (c % g) * C/g + c // g) gets its innermost loop split c = i * g + j, which
    turns the source index into j * C/g + i: no division per element (GCC neither vectorizes nor
    strength-reduces those). False when the block has no such index."""
    b = sch.get(block)
    loops = sch.get_loops(block)
    if not loops or not b.iter_vars or not hasattr(b.body, "value"):
        return False
    var, n = b.iter_vars[-1].var, int(b.iter_vars[-1].dom.extent)
    if extent(sch, loops[-1]) != n:
        return False
    from tvm import sym

    analyzer = sym.Analyzer()       # the inlined index, simplified within the block's iteration domain
    for iv in b.iter_vars:
        analyzer.bind(iv.var, iv.dom)
    found: set[int] = set()
    _divisors_of(analyzer.simplify(b.body.value), var, found)
    g = max((d for d in found if 1 < d < n and n % d == 0), default=0)
    if not g:
        return False
    sch.split(loops[-1], [None, g])     # j inner: contiguous writes (measured faster than i inner)
    return True


def _split_points(expr: Any, var: Any, found: set[int]) -> None:
    """The values `k` at which a comparison of `var` with a constant in `expr` changes (`k <= var`,
    `var < k`, `k - 1 < var`...: a concatenation's `c >= C0 ? B[c - C0] : A[c]`), into `found`."""
    import tvm
    from tvm import tirx

    def const(e: Any) -> int | None:
        return int(e.value) if isinstance(e, tirx.IntImm) else None

    ops = {tirx.LE: (0, 1), tirx.GT: (1, 0), tirx.LT: (1, 0), tirx.GE: (0, 1)}
    for op in ops:
        if isinstance(expr, op):
            a, b = const(expr.a), const(expr.b)
            if a is not None and expr.b.same_as(var):       # k <= v, k < v, k > v, k >= v
                found.add(a + (1 if op in (tirx.LT, tirx.GE) else 0))
            elif b is not None and expr.a.same_as(var):     # v <= k, v < k, v > k, v >= k
                found.add(b + (1 if op in (tirx.LE, tirx.GT) else 0))
    for attr in ("a", "b", "value", "condition", "true_value", "false_value"):
        sub = getattr(expr, attr, None)
        if isinstance(sub, tvm.ir.expr.Expr):
            _split_points(sub, var, found)
    for attr in ("indices", "args"):
        for sub in getattr(expr, attr, None) or []:
            _split_points(sub, var, found)


def split_concat_channels(sch: Any, block: Any, max_pieces: int = 8) -> bool:
    """A copy that selects its source by comparing its innermost index `c` with constants (a
    concatenation over the channels, alone or inlined into a GEMM's input row: `c >= C0 ? B[..,
    c - C0] : A[.., c]`) gets that loop split at the greatest common divisor g of the channel count
    and the boundaries, the outer loop unrolled: each of the (at most `max_pieces`) copies of the
    inner loop then reads one source without a condition, and the C compiler vectorizes it (a
    select between two loads stays scalar: the load not taken may be out of bounds). False when
    there is nothing to split."""
    import math

    loops = sch.get_loops(block)
    if not loops:
        return False
    realize = sch.get(loops[-1]).body
    if not hasattr(realize, "iter_values"):
        return False
    b = realize.block
    if not hasattr(b.body, "value"):
        return False
    loop_var = sch.get(loops[-1]).loop_var
    hits = [iv for iv, v in zip(b.iter_vars, realize.iter_values) if v.same_as(loop_var)]
    n = extent(sch, loops[-1])
    if len(hits) != 1 or int(hits[0].dom.extent) != n:
        return False
    from tvm import sym

    analyzer = sym.Analyzer()
    for iv in b.iter_vars:
        analyzer.bind(iv.var, iv.dom)
    found: set[int] = set()
    _split_points(analyzer.simplify(b.body.value), hits[0].var, found)
    found = {k for k in found if 0 < k < n}
    if not found:
        return False
    g = math.gcd(n, *found)
    if g == 1 or n // g > max_pieces:
        return False
    outer, _ = sch.split(loops[-1], [n // g, g])
    sch.unroll(outer)
    return True


def epilogue_block(sch: Any, info: Any) -> Any | None:
    """The single epilogue block after the anchor, if any."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if info.anchor not in names:
        return None
    a = names.index(info.anchor)
    return blocks[a + 1] if a + 1 < len(blocks) else None


def block_channels(sch: Any, name: str) -> int:
    """The extent of block `name`'s innermost iterator (the channels of an NHWC window); 0 when the
    block is no longer there (inlined by the rule, or split into blocks of other names)."""
    try:
        block = sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - no such block
        return 0
    return int(sch.get(block).iter_vars[-1].dom.extent)


def block_dtype(sch: Any, name: str) -> str:
    """The element type a block of the scheduled kernel writes ("" if it is gone or writes several)."""
    try:
        b = sch.get(sch.get_sblock(name))
    except Exception:  # noqa: BLE001 - inlined by the rule
        return ""
    return str(b.writes[0].source.ty.dtype) if len(b.writes) == 1 else ""


def split_padding(sch: Any, pads: list[str], max_channels: int = 0, min_channels: int = 0) -> None:
    """Decompose each padding block `pads` of the scheduled kernel into a pad-value fill and an
    in-bound copy, at the block's third-innermost loop (rows, columns, channels of a padded NHWC
    window). A block TVM does not take for padding stays as it is; so does a one-channel window
    (its unit channel loop is not materialised: the third-innermost loop is the row loop of the
    kernel's tile, and the split there lost the convolution that followed it; likewise a window of
    one row, whose unit row loop is not materialised either: the split is only made at a loop that
    holds the padding block alone), and, with
    `max_channels`, a window of more channels (its innermost loop), with `min_channels`, one of
    fewer."""
    for name in pads:
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - inlined by the rule
            continue
        loops = sch.get_loops(block)
        channels = int(sch.get(block).iter_vars[-1].dom.extent)
        if len(loops) < 3 or channels == 1 or (max_channels and extent(sch, loops[-1]) > max_channels) \
                or extent(sch, loops[-1]) < min_channels:
            continue
        if len(sch.get_child_blocks(loops[-3])) != 1:
            continue    # a window of one row (a 1xK kernel): the third-innermost loop is the output row loop
        try:
            sch.decompose_padding(block, loops[-3])
        except Exception:  # noqa: BLE001 - ScheduleError: not the padding pattern; keep the block
            pass


def fill_in_memory_order(sch: Any, pads: list[str]) -> int:
    """Reorder the pad-value fill of each split padding block `pads` (split_padding: the block
    `<name>_pad_const`) so that its loops walk the window buffer in memory order: a whole-window
    GEMM's padded rows are stored pixel-major ([pixel][KH][C], tile_conv_gemm's transform_layout)
    while the fill's loops stay rows x pixels x channels, a strided store per channel run (the
    compiler's 3 stores per 3 int16 of the first convolution's window); in memory order the fill
    is one contiguous run the compiler stores a word pair at a time. Returns how many fills were
    reordered."""
    from tvm import s_tir, tirx

    done = 0
    for name in pads:
        try:
            fill = sch.get_sblock(name + "_pad_const")
        except Exception:  # noqa: BLE001 - not split
            continue
        loops = sch.get_loops(fill)
        if len(loops) < 3:
            continue
        realize = sch.get(loops[-1]).body
        if not isinstance(realize, s_tir.SBlockRealize):
            continue
        block = realize.block
        if len(block.writes) != 1:
            continue
        # the loop each iter var is bound to (itself or an expression using it): innermost loops only
        inner = {sch.get(lp).loop_var: lp for lp in loops[-3:]}
        bound = {}
        for iv, value in zip(block.iter_vars, realize.iter_values):
            used = [lv for lv in inner if _uses_var(value, lv)]
            if len(used) == 1:
                bound[iv.var] = used[0]
        order = []
        for index in block.writes[0].region:
            var = index.min
            if isinstance(var, tirx.Var) and var in bound and bound[var] not in order:
                order.append(bound[var])
        if len(order) != 3 or order == list(inner):
            continue
        sch.reorder(*[inner[v] for v in order])
        done += 1
    return done


def _uses_var(expr: Any, var: Any) -> bool:
    """Whether the index expression `expr` reads the variable `var`."""
    if expr.same_as(var):
        return True
    return any(_uses_var(sub, var) for sub in (getattr(expr, "a", None), getattr(expr, "b", None),
                                               getattr(expr, "value", None)) if sub is not None and hasattr(sub, "same_as"))


def _widen_zero_point(sch: Any, block: Any) -> int | None:
    """zp when the block stores (int16)x - zp of an int8 x (the zero-point-shifted copy of a
    padded window), else None."""
    from tvm import tirx

    b = sch.get(block)
    value = getattr(b.body, "value", None)
    if len(b.writes) != 1 or str(b.writes[0].source.ty.dtype) != "int16" or not isinstance(value, tirx.Sub):
        return None
    if not (isinstance(value.a, tirx.Cast) and isinstance(value.b, tirx.IntImm)
            and hasattr(value.a.value, "indices") and str(value.a.value.ty) == "int8"):
        return None
    return int(value.b.value)


WIDEN_PRAGMA = "pragma_ec_widen_s8s16"
BORDER_FILL_ATTR = "ec.border_fill"     # codegen.lower.border_fills: zero only the window border
# codegen.lower.zero_start_gemms: a float GEMM tile zeroed right before its micro-kernel call calls the
# family's `gemm_z` (C = A B) instead
ZERO_START_ATTR = "ec.zero_start_gemm"
# codegen.lower.fuse_epilogues: a zero-start float GEMM tile and the epilogue loop after it become one
# call of a kernel that applies the epilogue in registers (schedules/epilogues.py)
EPILOGUE_ATTR = "ec.fused_epilogue"
# codegen.lower.zero_start_gemms: a zeroed float GEMM tile summed by one call per kernel row (a KxK
# convolution's one-row window tiles) becomes one call over all the rows (`ec_gemm_f32_MxN_rR_z`)
KERNEL_ROWS_ATTR = "ec.kernel_rows"


def mark_widen_rows(sch: Any, pads: list[str]) -> int:
    """Mark the in-bound copy of each padding block `pads` (after split_padding: the block that
    keeps the padding's name, int8 rows widened to int16 and shifted by the zero point) for the
    `ec_widen_s8s16` micro-kernel, one call per padded row (its two innermost loops: pixels x
    channels): the row loop carries WIDEN_PRAGMA = zp, and the lowering (codegen.lower) replaces
    the loop nest by the call. Not sch.tensorize: the block's predicate (the window's in-bound
    rows) keeps TVM's comparator from matching it, and a blockized row no longer lets the window
    buffer shrink to its rows. A block of another form (unsplit: a conditional per element;
    another type) stays as it is. Returns how many blocks were marked."""
    done = 0
    for name in pads:
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - inlined by the rule
            continue
        zp = _widen_zero_point(sch, block)
        loops = sch.get_loops(block)
        if zp is None or len(loops) < 2:
            continue
        sch.annotate(loops[-2], WIDEN_PRAGMA, zp)
        done += 1
    return done


def _requant_params(sch: Any, block: Any) -> tuple[int, int, int] | None:
    """The kernel parameter positions of a rescale block's per-channel constants (m0, rnd, r), in
    the order the folded form reads them (int32 m0, int64 rnd, int32 r), or None when they are not
    all kernel parameters."""
    params = list(sch.mod["main"].params)      # buffer parameters
    found = []
    for region in sch.get(block).reads:
        for i, p in enumerate(params):
            if region.source.same_as(p):
                found.append((i, str(p.ty.dtype)))
    dtypes = [d for _, d in found]
    if dtypes != ["int32", "int64", "int32"]:
        return None
    return found[0][0], found[1][0], found[2][0]


def tensorize_requant(sch: Any, min_channels: int = 1, constants: dict | None = None, wide: bool = False) -> int:
    """Hand each int8 rescale block of the scheduled kernel (an epilogue computed per M x N tile,
    `requant*`, in the folded form of ir/quantize.py) to the `ec_requant_s8_MxN` micro-kernel: its
    two innermost loops (M pixels x N channels), or its innermost one (one pixel). A block of
    another form (a clamp, a residual add...) or loop structure stays as it is, and so does a tile
    of fewer than `min_channels` channels. Returns how many blocks were tensorized. With
    `constants` (a family whose rescale kernel reads its constants re-encoded at compile time):
    only blocks whose constants are kernel parameters, recorded there as
    {rnd position: (m0 position, r position)}. `wide` (a family that has `ec_requant_s8_MxN_s16`):
    also the blocks that store their int8 values as int16 (a fused kernel's depthwise rows,
    tile_dwpw's wide_rows)."""
    names: list[str] = []
    todo = list(_children(sch))
    while todo:
        b = todo.pop(0)
        name = sch.get(b).name_hint
        if name.startswith("requant"):
            names.append(name)
        todo += list(sch.get_child_blocks(b))
    done = 0
    for name in names:
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        b = sch.get(block)
        out = str(b.writes[0].source.ty.dtype) if len(b.writes) == 1 else ""
        if out != "int8" and not (wide and out == "int16"):
            continue
        params = _requant_params(sch, block) if constants is not None else None
        if constants is not None and params is None:
            continue
        tries = ([(loops[-2], extent(sch, loops[-2]), extent(sch, loops[-1]))] if len(loops) >= 2 else []) \
            + ([(loops[-1], 1, extent(sch, loops[-1]))] if loops else [])
        for loop, m, n in tries:
            if m * n < 2 or n < min_channels or not _try(sch.tensorize, loop, requant_intrin(m, n, out == "int16")):
                continue
            if params is not None and constants is not None:
                constants[params[1]] = (params[0], params[2])
            done += 1
            break
    return done


# ----------------------------------------------------------------------------- tiling


def pixel_tile(width: int, m: int) -> tuple[int, int]:
    """(pixels of the scheduled tile, P) for a tile of M pixels on a row of `width`: (M, 0) when M
    divides the row; else a ragged pixel tile, the whole row as one tensorized tile whose
    micro-kernel runs width // M tiles of M pixels and one of width % M (P = M; see
    ukernels.rows_gemm_c): a prime width (Xception's 19 and 37) no longer forces one-pixel tiles.
    Xception 299 fp32 on the emulated Pi: 3,985,050,747 -> 3,297,367,782 emulator instructions per
    inference (qemu-aarch64 -icount, not cycles; TFLite + XNNPACK 2,950,720,903: 1.35x -> 1.12x).
    On this host (AVX-512, loaded, 15 interleaved runs): 0.735x the time before, 2.41x -> 1.77x
    onnxruntime's; SqueezeNet 1.1/224 (its 55-, 27- and 13-pixel rows; 40 runs): 0.750x, 1.36x ->
    1.02x onnxruntime's."""
    if m > 1 and width % m:
        return width, m
    return m, 0


def _split_pixels(sch: Any, w: Any, m: int) -> tuple[Any, list[Any]]:
    """Split the output-width loop into (outer, [inner]) for tiles of M pixels (a ragged pixel
    tile: the whole row, `pixel_tile`); a one-pixel tile keeps no inner loop."""
    m, _ = pixel_tile(extent(sch, w), m)
    if m == 1:
        return w, []
    wo, wi = sch.split(w, [None, m])
    return wo, [wi]


def operand_types(sch: Any, block: Any) -> Any:
    """The micro-kernel operand types of a conv/matmul block (None if no micro-kernel fits)."""
    b = sch.get(block)
    out = b.writes[0].source
    reads = [r.source for r in b.reads if not r.source.same_as(out)]
    if len(reads) < 2:
        return None
    return types_for(str(reads[0].ty.dtype), str(reads[1].ty.dtype), str(out.ty.dtype))


def pack_weights(sch: Any, block: Any, nn: int, info: Any, order: str = "") -> bool:
    """Store the block's weight operand (a kernel parameter: HWIO conv weights or a [K, N] matrix)
    as panels of `nn` output channels, [N/nn][...][K][nn], so that the micro-kernel reads each
    tile's weights contiguously instead of one short row every N elements (a stride of N floats
    maps the rows of a tile onto a few cache sets). The build applies the same permutation to
    the constant data (`info.packed`: parameter position -> nn), and within each [K][nn] panel
    the family's `order` (`info.panel_order`; ukernels.PANEL_ORDERS), which the schedule does not
    see: only the micro-kernel reads a panel. False when the weight stays as it is."""
    b = sch.get(block)
    out = b.writes[0].source
    reads = [(i, r.source) for i, r in enumerate(b.reads) if not r.source.same_as(out)]
    if len(reads) < 2:
        return False
    ri, buf = reads[1]
    params = list(sch.mod["main"].params)
    pos = next((i for i, p in enumerate(params) if p.same_as(buf)), None)
    shape = [int(d) for d in buf.shape]
    if pos is None or len(shape) not in (2, 4) or shape[-1] < nn or shape[-1] % nn or (shape[-1] == nn and not order):
        return False
    if len(shape) == 4 and order.endswith(SPAN_WINDOW):      # [O/nn][W][H][I][nn]: see ukernels.SPAN_WINDOW
        sch.transform_layout(block, ("read", ri), lambda a, c, d, e: (e // nn, c, a, d, e % nn))
    elif len(shape) == 4:
        sch.transform_layout(block, ("read", ri), lambda a, c, d, e: (e // nn, a, c, d, e % nn))
    else:
        sch.transform_layout(block, ("read", ri), lambda k, n: (n // nn, k, n % nn))
    info.packed[pos] = nn
    if order:
        info.panel_order[pos] = order
    return True


def _gemm_types(types: Any, packed: bool, order_for: Any) -> Any:
    """The micro-kernel types of a GEMM tile: the family's panel order when its weights are packed."""
    order = order_for(types) if (packed and order_for is not None) else ""
    return types.ordered(order) if order else types


def _anchor_loops(sch: Any, name: str, count: int) -> tuple[Any, Any, list[Any]] | None:
    """(block, micro-kernel operand types, loops) of an anchor with `count` loops, else None."""
    block = sch.get_sblock(name)
    types = operand_types(sch, block)
    loops = sch.get_loops(block)
    return (block, types, list(loops)) if len(loops) == count and types is not None else None


def _pixels_x_channels(sch: Any, info: Any, block: Any, n: Any, h: Any, w: Any, co: Any, reduction: list[Any],
                       tile: tuple[int, int], order: str, window_per_channel_tile: bool = False,
                       group: Any = None) -> None:
    """Tile an NHWC anchor's output row into M pixels x N channels (`order`: which of the two tile
    loops is outer), the reduction loops inside; the epilogue per tile, producers (padding) per row,
    or, with `window_per_channel_tile` and the channel tiles outer, per row and channel tile (a
    depthwise window needs only its own channels: the same copies, 1/tiles of the buffer).
    `group`: the group loop of a grouped convolution (`co` then counts the channels of one
    group), just outside the channel tiles."""
    m, nn = tile
    wo, wi = _split_pixels(sch, w, m)
    coo, coi = sch.split(co, [None, nn])
    channels = [group, coo] if group is not None else [coo]
    tiles = [*channels, wo] if order == "channels" else [wo, *channels]
    outer, inner = tiles[0], tiles[-1]
    sch.reorder(n, h, *tiles, *reduction, *wi, coi)
    epi = epilogue_block(sch, info)
    if epi is not None:
        sch.reverse_compute_at(epi, inner)
    at = outer if window_per_channel_tile and order == "channels" else h
    for p in sch.get_producers(block):   # padding kept for KxK: one row window per h
        sch.compute_at(p, at)
        split_channel_gathers(sch, p)


def conv_groups(sch: Any, info: Any) -> int:
    """The group count of a convolution anchor: its input's channels / input channels per group."""
    b = sch.get(sch.get_sblock(info.anchor))
    channels = int(b.reads[0].source.shape[-1])
    return channels // info.channels[0] if info.channels[0] and channels % info.channels[0] == 0 else 0


def tile_conv_gemm(sch: Any, info: Any, tile: tuple[int, int], order: str = "pixels", pack: bool = True,
                   order_for: Any = None, groups: int = 1, window_for: Any = None,
                   window_order_for: Any = None, window_ragged: bool = False, panels: str = "") -> bool:
    """Convolution (1x1 or KxK) as GEMM tiles: M output pixels of one row x N output
    channels, the reduction over input channels in the `ec_gemm_<t>_MxN` micro-kernel. A KxK
    convolution's padding is computed per output row (KH padded rows in a small buffer).
    A grouped convolution (`groups` > 1) is one such GEMM per group: the output channels split
    into groups, N dividing a group's channels, so that every tile reads the input channels of
    its own group (K = input channels per group, at the group's offset in the pixel's row).
    `order_for(types)`: the panel order of the family's integer kernels (see pack_weights).
    `window_for(types)`: True where the family's kernels of `types` take the whole window per call
    (K = KW x KH x input channels over pixel-major padded rows and [W][H][I] weight panels,
    `ukernels.gemm_full_window_intrin`; unpacked weights or a 1xK kernel: one kernel row,
    K = KW x input channels, `ukernels.gemm_window_intrin`) instead of one tap (K = input
    channels): KxK convolutions of few input channels (a network's first, on 3 colour channels).
    `window_order_for(types)`: the panel order of those whole-window tiles (`order_for` if None).
    `window_ragged`: a ragged pixel tile may take the one-row window kernel too (a family whose
    kernels then run all the kernel rows in one call: KERNEL_ROWS_ATTR); else it runs one call per tap.
    `order` "flat" (a 1x1, stride-1 convolution; a grouped one group by group): the GEMM runs over
    the map's pixels as one run of H x W (_flatten_pixels), channel tile by channel tile, so that
    tiles cross rows and each weight panel is read for all the pixels in turn (weights too large for
    the cache, short rows: host.HostRules.schedule_conv). `panels`: the panel order of float weights where the family's own
    order is none (ukernels.chunk_width)."""
    found = _anchor_loops(sch, info.anchor, 7)
    if found is None:
        return False
    conv, types, (n, h, w, co, ry, rx, ci) = found
    k, kw = extent(sch, ci), extent(sch, rx)
    if k == 1:      # one input channel: no reduction loop is left for a micro-kernel to take
        return False
    if order == "flat":
        cout = extent(sch, co)
        if (extent(sch, ry) != 1 or kw != 1 or info.stride[1] != 1
                or (groups > 1 and (cout % groups or (cout // groups) % tile[1]))):
            return False
        for p in sch.get_producers(conv):       # a concat or shuffle before it: computed whole, first
            split_channel_gathers(sch, p)
        epi = epilogue_block(sch, info)
        _flatten_pixels(sch, conv, epi, extent(sch, h), extent(sch, w))
        n, pixels, co, ry, rx, ci = sch.get_loops(conv)
        tm, px = pixel_tile(extent(sch, pixels), tile[0])
        wo, wi = _split_pixels(sch, pixels, tile[0])
        channel_loops = []
        if groups > 1:
            group, co = sch.split(co, [groups, None])
            channel_loops.append(group)
        coo, coi = sch.split(co, [None, tile[1]])
        sch.reorder(n, *channel_loops, coo, wo, ry, rx, ci, *wi, coi)
        if epi is not None:
            sch.reverse_compute_at(epi, wo)
        packed = pack and pack_weights(sch, conv, tile[1], info, _gemm_types(types, True, order_for).b_order or panels)
        sch.decompose_reduction(conv, ry)
        sch.tensorize(ci, gemm_intrin(tm, tile[1], k, 1, _gemm_types(types, packed, order_for), pixels=px))
        return True
    tm, px = pixel_tile(extent(sch, w), tile[0])
    # a whole-window kernel takes no ragged pixel tile; the one-row window kernel does where
    # `window_ragged` (rows_gemm_c runs its tiles over any K)
    window = window_for is not None and groups == 1 and kw > 1 and (window_ragged or not px) and window_for(types)
    group = None
    if groups > 1:
        cout = extent(sch, co)
        if cout % groups or (cout // groups) % tile[1]:
            return False
        group, co = sch.split(co, [groups, None])
    panel = _gemm_types(types, True, order_for).b_order
    kh = extent(sch, ry)
    full = window and pack and bool(panel) and kh > 1 and not px
    if full and window_order_for is not None:
        order_for = window_order_for
        panel = _gemm_types(types, True, order_for).b_order
    _pixels_x_channels(sch, info, conv, n, h, w, co, [rx, ry, ci] if full else [ry, rx, ci], tile, order, group=group)
    if full:        # the padded rows pixel-major, [pixel][KH][C]: one pixel's whole window is contiguous
        for p in sch.get_producers(conv):
            sch.transform_layout(p, ("write", 0), lambda a, b, c, d: (a, c, b, d))
    span = (SPAN_WINDOW if full else SPAN_KW) if window and panel else ""
    packed = pack and pack_weights(sch, conv, tile[1], info, panel + span)
    sch.decompose_reduction(conv, rx if full else ry)
    gemm_types = _gemm_types(types, packed, order_for)
    if full:
        sch.tensorize(rx, gemm_full_window_intrin(tile[0], tile[1], kh, kw, k, info.stride[1], gemm_types))
    elif window:
        sch.tensorize(rx, gemm_window_intrin(tm, tile[1], kw, k, info.stride[1], gemm_types, pixels=px))
    else:
        sch.tensorize(ci, gemm_intrin(tm, tile[1], k, info.stride[1], gemm_types, pixels=px))
    return True


def tile_conv_window(sch: Any, info: Any, tile: tuple[int, int], order: str = "pixels") -> bool:
    """KxK convolution (not grouped) as M pixels x N channels tiles whose whole window (KH x KW
    taps x CI input channels) is one `ec_window_<t>` micro-kernel call over the padded rows computed
    per output row: for few input channels (the first convolution of a network, 3 channels), where
    a GEMM call per tap would reduce only CI steps. The weights are packed in panels of N channels
    read row by row ([O/N][KH][KW][CI][N])."""
    found = _anchor_loops(sch, info.anchor, 7)
    if found is None:
        return False
    conv, types, (n, h, w, co, ry, rx, ci) = found
    (kh, kw), (s, _) = info.kernel, info.stride
    if (extent(sch, ry), extent(sch, rx)) != (kh, kw) or pixel_tile(extent(sch, w), tile[0])[1]:
        return False        # (the window kernel takes no ragged pixel tiles)
    k = extent(sch, ci)
    _pixels_x_channels(sch, info, conv, n, h, w, co, [ry, rx, ci], tile, order)
    pack_weights(sch, conv, tile[1], info)     # a tile of all the channels reads the weights as they are
    sch.decompose_reduction(conv, ry)
    sch.tensorize(ry, window_intrin(tile[0], tile[1], kh, kw, k, s, types))
    return True


def tile_depthwise(sch: Any, info: Any, tile: tuple[int, int], order: str = "pixels") -> bool:
    """Depthwise convolution: M pixels x N channels per `ec_dw_<t>` micro-kernel call over a
    padded row window computed per output row."""
    found = _anchor_loops(sch, info.anchor, 7)
    if found is None:
        return False
    conv, types, (n, h, w, co, ry, rx, rc) = found
    if extent(sch, rc) != 1:
        return False
    (kh, kw), (s, _) = info.kernel, info.stride
    tm, px = pixel_tile(extent(sch, w), tile[0])
    # the unit channel loop stays outside the window loops
    _pixels_x_channels(sch, info, conv, n, h, w, co, [rc, ry, rx], tile, order, window_per_channel_tile=True)
    sch.decompose_reduction(conv, rc)
    sch.tensorize(ry, dw_intrin(tm, tile[1], kh, kw, s, types, pixels=px))
    info.rows = 1     # output row by output row, the outermost loop after the batch (in-place planning)
    return True


def reduce_channels_innermost(sch: Any, block_name: str) -> bool:
    """A window or spatial reduction over NHWC data (pooling windows, the global average pool of a
    squeeze-and-excitation gate): the channel loop goes inside the reduction loops, so each
    reduction step reads a contiguous run of channels into a run of accumulators (a loop the C
    compiler vectorizes) instead of every output value running its window on its own (a strided
    scalar loop); the accumulators are initialised before the reduction loops. Only where the
    block's loops are its spatial iterators then its reduction iterators, and the innermost spatial
    one indexes the last (channel) dimension of every buffer it reads: not a reduction over the
    channels themselves (softmax)."""
    block = sch.get_sblock(block_name)
    b = sch.get(block)
    loops = sch.get_loops(block)
    kinds = [int(iv.iter_type) for iv in b.iter_vars]        # 0 spatial, 2 reduction
    spatial = kinds.count(0)
    if (len(loops) != len(kinds) or spatial == 0 or spatial == len(kinds)
            or kinds != [0] * spatial + [2] * (len(kinds) - spatial)):
        return False
    channel = b.iter_vars[spatial - 1].var
    written = [w.source for w in b.writes]
    for r in b.reads:
        if any(r.source.same_as(w) for w in written):
            continue
        last = r.region[-1]
        if not (last.min.same_as(channel) and int(last.extent) == 1):
            return False
    sp, red = loops[:spatial], loops[spatial:]
    sch.reorder(*sp[:-1], *red, sp[-1])
    sch.decompose_reduction(block, red[0])
    return True


def tile_dense(sch: Any, info: Any, nn: int, pack: bool = True, order_for: Any = None) -> bool:
    """[1, K] x [K, N]: a 1 x N micro-kernel tile per N output features."""
    found = _anchor_loops(sch, info.anchor, 3)
    if found is None:
        return False
    block, types, (i, j, k) = found
    if extent(sch, i) != 1 or extent(sch, k) == 1:
        return False
    jo, ji = sch.split(j, [None, nn])
    sch.reorder(i, jo, k, ji)
    epi = epilogue_block(sch, info)
    if epi is not None:
        sch.reverse_compute_at(epi, jo)
    packed = pack and pack_weights(sch, block, nn, info, _gemm_types(types, True, order_for).b_order)
    sch.decompose_reduction(block, k)
    sch.tensorize(k, gemm_intrin(1, nn, extent(sch, k), 1, _gemm_types(types, packed, order_for)))
    return True


def tile_dwpw(sch: Any, info: Any, rows: int, tile: tuple[int, int], dw_tile: tuple[int, int],
              pack: bool = True, order_for: Any = None, wide_rows: bool = False, dw_order: str = "pixels",
              epilogue_channels: int = 0, order: str = "pixels", panels: str = "") -> bool:
    """The fused kernel: for each tile of `rows` output rows, compute the depthwise output for
    those rows (padding window, micro-kernel, bias + activation) into a rows x W x C scratch
    buffer, then the pointwise GEMM tiles over it. The depthwise tensor never exists in full.
    `wide_rows`: int8 depthwise rows are stored as int16 (same values, twice the scratch), which
    the GEMM of a family with 16-bit multiply-accumulates reads without extending.
    `dw_order` "channels": the depthwise part runs channel tile by channel tile, each with the
    padded window of its own channels only (less RAM, the same copies).
    `epilogue_channels`: the pointwise epilogue runs once per M pixels x this many channels (a
    multiple of the tile's N dividing the output channels) instead of once per tile: the GEMM tiles
    of those channels accumulate into one M x epilogue_channels buffer, which a family's vector
    rescale then takes whole (tensorize_requant); 0 or N: per tile.
    `order` "flat": the pointwise GEMM runs over the `rows` rows' pixels as one run of rows x W
    (_flatten_pixels), channel tile by channel tile, each over all of the run's pixel tiles (a weight
    panel read for all of them in turn: weights too large for the cache,
    host.HostRules.schedule_dwpw), the epilogue per tile; its M-pixel tiles (a ragged last one)
    cross the rows, so a row too short for the widest tiles (7 or 14 pixels) does not limit them.
    `panels`: the panel order of float pointwise weights where the family's own order is none
    (ukernels.chunk_width "c<w>": a blocked tile of all the channels reading [K][w] chunk panels)."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    ia, ib = names.index(info.dw_anchor), names.index(info.anchor)
    dw_pad = [b for b in blocks[:ia] if _is_pad(sch, b)]
    e1 = blocks[ib - 1] if ib - 1 > ia else None   # None: the depthwise conv has no epilogue
    e2 = blocks[ib + 1] if ib + 1 < len(blocks) else None
    pw = sch.get_sblock(info.anchor)
    dw = sch.get_sblock(info.dw_anchor)
    widened = wide_rows and e1 is not None and str(sch.get(e1).writes[0].source.ty.dtype) == "int8"
    if widened:            # the GEMM then reads int16 values through a cast to int8 (gemm_intrin a_narrowed)
        sch.unsafe_set_dtype(e1, 0, "int16")
    pw_types, dw_types = operand_types(sch, pw), operand_types(sch, dw)
    loops = sch.get_loops(pw)
    if len(loops) != 7 or pw_types is None or dw_types is None:
        return False
    n, h, w, co, ry, rx, ci = loops
    m, nn = tile
    k = extent(sch, ci)
    width = extent(sch, w)
    channels = extent(sch, co)
    if order == "flat":
        if e1 is None:      # the depthwise tiles write rows: a copy stores them as the run the GEMM reads
            e1 = sch.cache_read(pw, 0, "global")
        _flatten_pixels(sch, pw, e2, extent(sch, h), width)
        n, pixels, co, ry, rx, ci = sch.get_loops(pw)
        tm, px = pixel_tile(rows * width, m)
        ho, run = sch.split(pixels, [None, rows * width])
        wo, wi = _split_pixels(sch, run, m)
        coo, coi = sch.split(co, [None, nn])
        sch.reorder(n, ho, coo, wo, ry, rx, ci, *wi, coi)
        chunk = wo
    else:
        tm, px = pixel_tile(width, m)
        ho, hi = sch.split(h, [None, rows])
        wo, wi = _split_pixels(sch, w, m)
        coo, coi = sch.split(co, [None, nn])
        chunk = coo
        if epilogue_channels > nn and epilogue_channels % nn == 0 and channels % epilogue_channels == 0 \
                and e2 is not None:
            chunk, coo = sch.split(coo, [None, epilogue_channels // nn])
            sch.reorder(n, ho, hi, wo, chunk, coo, ry, rx, ci, *wi, coi)
        else:
            sch.reorder(n, ho, hi, wo, coo, ry, rx, ci, *wi, coi)
    if e2 is not None:
        sch.reverse_compute_at(e2, chunk)
    if e1 is not None:
        sch.compute_at(e1, ho)
    sch.compute_at(dw, ho)
    for p in dw_pad:
        sch.compute_at(p, ho)
    packed = pack and pack_weights(sch, pw, nn, info, _gemm_types(pw_types, True, order_for).b_order or panels)
    sch.decompose_reduction(pw, ry)
    sch.tensorize(ci, gemm_intrin(tm, nn, k, 1, _gemm_types(pw_types, packed, order_for), a_narrowed=widened,
                                  pixels=px))
    # the depthwise part, now a loop nest inside `ho`
    dloops = list(sch.get_loops(dw))
    inner = dloops[[str(sch.get(x).loop_var) for x in dloops].index(str(sch.get(ho).loop_var)) + 1:]
    (kh, kw), (s, _) = info.kernel, info.stride
    # compute_at does not materialise unit loops: match what is there to what is expected
    expected = [("h", rows), ("w", width), ("c", info.dw_channels), ("ry", kh), ("rx", kw), ("rc", 1)]
    if len(inner) < len(expected):
        expected = [e for e in expected if e[1] != 1] if len(inner) == len([e for e in expected if e[1] != 1]) \
            else expected[:len(inner)]
    if len(inner) != len(expected) or any(extent(sch, lp) != e for lp, (_, e) in zip(inner, expected)):
        return False
    found = {name: lp for (name, _), lp in zip(expected, inner)}
    dh, dwl, dc, dry, drx, drc = (found.get(k) for k in ("h", "w", "c", "ry", "rx", "rc"))
    if dwl is None and dc is not None and width == 1:
        dwl = sch.add_unit_loop(dc)      # a one-pixel-wide map (1x1 at the end of a network)
    if dwl is None or dc is None or dry is None or drx is None:
        return False
    dm, dn = dw_tile
    dtm, dpx = pixel_tile(width, dm)
    dwo, dwi = _split_pixels(sch, dwl, dm)
    dco, dci = sch.split(dc, [None, dn])
    rest = [*([drc] if drc is not None else []), dry, drx, *dwi, dci]
    if dw_order == "channels":
        sch.reorder(dco, *([dh] if dh is not None else []), dwo, *rest)
        for p in dw_pad:
            sch.compute_at(p, dco)
        if e1 is not None:
            sch.reverse_compute_at(e1, dwo)
    else:
        sch.reorder(*([dh] if dh is not None else []), dwo, dco, *rest)
        if e1 is not None:
            sch.reverse_compute_at(e1, dco)
    sch.decompose_reduction(dw, drc if drc is not None else dry)
    sch.tensorize(dry, dw_intrin(dtm, dn, kh, kw, s, dw_types, pixels=dpx))
    info.rows = rows
    return True


def _flatten_pixels(sch: Any, pw: Any, epilogue: Any, height: int, width: int) -> None:
    """Make a pointwise GEMM (a fused dw+pw kernel's, or a 1x1 convolution's) and its epilogue iterate
    over pixels h x W + w instead of rows and columns: every NHWC buffer they read or write (the
    depthwise output, the GEMM's output, the epilogue's output and residual inputs; not the weights)
    stored [N][H x W][C], the same bytes, and the two blocks' iteration domains fused likewise
    (transform_block_layout), so that a GEMM tile's pixels may span rows (tiling along the fused axis
    stays affine)."""
    def flat(a: Any, b: Any, c: Any, d: Any) -> Any:
        return (a, b * width + c, d)

    def nhwc(buf: Any) -> bool:
        shape = [int(x) for x in buf.shape]
        return len(shape) == 4 and shape[1:3] == [height, width]

    weights = sch.get(pw).reads[1].source
    for block in [pw] + ([epilogue] if epilogue is not None else []):
        if nhwc(sch.get(block).writes[0].source):
            sch.transform_layout(block, ("write", 0), flat)
        for i, r in enumerate(sch.get(block).reads):
            if nhwc(r.source) and not r.source.same_as(weights):
                sch.transform_layout(block, ("read", i), flat)
    sch.transform_block_layout(pw, lambda a, b, c, d, e, f, g: (a, b * width + c, d, e, f, g))
    if epilogue is not None:
        sch.transform_block_layout(epilogue, lambda a, b, c, d: (a, b * width + c, d))


def rescale_offsets_into_init(func: Any, call_prefix: str = "ec_requant_s8_", own_offset: str = "_s16") -> Any | None:
    """Start each int8 rescale tile's accumulators at its channels' offsets: every block that
    initialises to 0 an accumulator buffer read by a tensorized rescale call (`call_prefix`) gets
    `(int32) rnd[c]` instead, rnd the call's constants (re-encoded by the family with the offset in
    the low word, e.g. cortex_m.ukernels.rescale_constants) and c the channel (the buffer's last
    index, as the rescale reads its constants). The rescale kernel then adds nothing. Calls whose
    name ends with `own_offset` add the offsets themselves and keep their init at 0 (a depthwise
    tile of 8 accumulators: with 4 offsets live from its start it spills registers). Returns the
    rewritten function, or None when some rescale call's buffer has no such init block (the caller
    falls back)."""
    from tvm import s_tir, tirx

    calls: dict[Any, Any] = {}          # accumulator buffer -> rnd parameter buffer
    own: list[str] = []                 # calls that add their offsets themselves

    def visit(stmt: Any) -> None:
        if isinstance(stmt, s_tir.SBlockRealize):
            b = stmt.block
            body = b.body
            call = body.value if isinstance(body, tirx.Evaluate) else None
            name = str(call.args[0].value) if call is not None and len(call.args) and hasattr(call.args[0], "value") \
                and isinstance(call.args[0].value, str) else ""
            if name.startswith(call_prefix) and own_offset and name.endswith(own_offset):
                own.append(name)
            elif name.startswith(call_prefix):
                mbs = {str(mb.buffer.name): mb.source.source for mb in b.match_buffers}
                if "C" not in mbs or "Ad" not in mbs:
                    raise LookupError
                calls[mbs["C"]] = mbs["Ad"]
            visit(body)
            if b.init is not None:
                visit(b.init)
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                visit(s)
        elif isinstance(stmt, (tirx.For, tirx.AttrStmt, tirx.While)):
            visit(stmt.body)
        elif isinstance(stmt, tirx.IfThenElse):
            visit(stmt.then_case)
            if stmt.else_case is not None:
                visit(stmt.else_case)

    try:
        visit(func.body)
    except LookupError:
        return None
    if not calls:
        return func if own else None
    done: set[Any] = set()

    def is_init(b: Any) -> bool:
        body = b.body
        return isinstance(body, tirx.BufferStore) and any(body.buffer.same_as(c) for c in calls) \
            and isinstance(body.value, tirx.IntImm) and int(body.value.value) == 0

    def rewrite(stmt: Any) -> Any:
        if isinstance(stmt, s_tir.SBlockRealize):
            b = stmt.block
            if is_init(b):
                store = b.body
                acc = next(c for c in calls if store.buffer.same_as(c))
                rnd = calls[acc]
                value = tirx.Cast("int32", tirx.BufferLoad(rnd, [store.indices[-1]]))
                # reads left as they were: a kernel parameter, nothing the lowering plans for
                nb = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint,
                                  tirx.BufferStore(store.buffer, value, store.indices), b.init, b.alloc_buffers,
                                  b.match_buffers, b.annotations)
                done.add(acc)
                return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, nb)
            init = None if b.init is None else rewrite(b.init)
            nb = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, rewrite(b.body), init, b.alloc_buffers,
                              b.match_buffers, b.annotations)
            return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, nb)
        return map_children(stmt, rewrite)

    body = rewrite(func.body)
    if len(done) != len(calls):
        return None
    return func.with_body(body)


def map_children(stmt: Any, fn: Any) -> Any:
    """`stmt` rebuilt with `fn` applied to each statement directly inside it (sequences, loops,
    conditionals, attributes, while loops); any other statement as it is. A rewrite of TIR calls it
    for the statements it does not handle itself."""
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([fn(s) for s in stmt.seq])
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, fn(stmt.body),
                        stmt.thread_binding, stmt.annotations, stmt.step)
    if isinstance(stmt, tirx.IfThenElse):
        return tirx.IfThenElse(stmt.condition, fn(stmt.then_case), None if stmt.else_case is None else fn(stmt.else_case))
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, fn(stmt.body))
    if isinstance(stmt, tirx.While):
        return tirx.While(stmt.condition, fn(stmt.body))
    return stmt
