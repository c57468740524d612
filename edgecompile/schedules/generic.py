"""Portable schedule steps shared by every target family."""

from __future__ import annotations

from typing import Any


def _children(sch: Any) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_reduction(sch: Any, block: Any) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(block).iter_vars)


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
        return
    a = names.index(info.anchor)
    keep = None
    if keep_concat:
        transforms = [b for b in blocks[:a] if "pad" not in sch.get(b).name_hint.lower() and not _is_reduction(sch, b)]
        keep = transforms[-1] if transforms else None
    for b in blocks[:a]:
        if keep_pad and "pad" in sch.get(b).name_hint.lower():
            continue
        if keep is not None and sch.get(b).same_as(sch.get(keep)):
            continue
        if not _is_reduction(sch, b):
            _try(sch.compute_inline, b)
    after = blocks[a + 1:]
    # Intermediate epilogue blocks are inlined forward into their consumers, leaving one block
    # that writes the kernel output. (Forward inlining copes with diamonds such as SiLU,
    # x * sigmoid(x), where reverse inlining would have to read a removed buffer.)
    for b in after[:-1]:
        if _is_reduction(sch, b):
            break
        _try(sch.compute_inline, b)


def _try(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except Exception:  # noqa: BLE001 - TVM raises ScheduleError subclasses; keep the block
        return False


def epilogue_block(sch: Any, info: Any) -> Any | None:
    """The single epilogue block after the anchor, if any."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    if info.anchor not in names:
        return None
    a = names.index(info.anchor)
    return blocks[a + 1] if a + 1 < len(blocks) else None


# ----------------------------------------------------------------------------- tiling rules


def extent(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


def largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def first_dividing(n: int, options: list[int]) -> int | None:
    return next((o for o in options if o <= n and n % o == 0), None)


def choose_tile(width: int, channels: int, lanes: int, acc_budget: int, max_m: int) -> tuple[int, int] | None:
    """(M, N): M output pixels (dividing `width`) x N channels (a multiple of `lanes` dividing
    `channels`) with at most `acc_budget` vector accumulators. Most accumulators wins, then the
    most balanced tile (per reduction step it loads M scalars and N/lanes vectors for M*N/lanes
    FMAs). When no multiple of `lanes` divides `channels` (10 classes, 3 channels...): a scalar
    tile over a divisor of the channels. None when nothing fits."""
    tiles = tile_candidates(width, channels, lanes, acc_budget, max_m)
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


def tile_candidates(width: int, channels: int, lanes: int, acc_budget: int, max_m: int) -> list[tuple[int, int]]:
    """Every (M, N) tile `choose_tile` could pick from, best first by its own ranking: the search
    space of the tuner. Families of 8 or more lanes fall back to half-width vectors (24 or 40
    channels on AVX-512; see ukernels.vector_width), then to scalars."""
    from .ukernels import narrower_widths

    out = []
    for w in [w for w, _ in narrower_widths(lanes)] if lanes > 1 else [1]:
        out = _ranked(width, channels, w, acc_budget, max_m)
        if out:
            break
    if not out and lanes > 1:
        return tile_candidates(width, channels, 1, min(acc_budget, 8), max_m)
    return [t for _, t in sorted(out, reverse=True)]


def _pick(cfg: dict | None, key: str, default: Any) -> Any:
    if cfg and key in cfg:
        v = cfg[key]
        return tuple(v) if isinstance(v, list) else v
    return default


def _split_pixels(sch: Any, w: Any, m: int) -> tuple[Any, list[Any]]:
    """Split the output-width loop into (outer, [inner]); a one-pixel tile keeps no inner loop."""
    if m == 1:
        return w, []
    wo, wi = sch.split(w, [None, m])
    return wo, [wi]


def operand_types(sch: Any, block: Any) -> Any:
    """The micro-kernel operand types of a conv/matmul block (None if no micro-kernel fits)."""
    from .ukernels import types_for

    b = sch.get(block)
    out = b.writes[0].source
    reads = [r.source for r in b.reads if not r.source.same_as(out)]
    if len(reads) < 2:
        return None
    return types_for(str(reads[0].ty.dtype), str(reads[1].ty.dtype), str(out.ty.dtype))


def pack_weights(sch: Any, block: Any, nn: int, info: Any) -> None:
    """Store the block's weight operand (a kernel parameter: HWIO conv weights or a [K, N] matrix)
    as panels of `nn` output channels, [N/nn][...][K][nn], so that the micro-kernel reads each
    tile's weights contiguously instead of one short row every N elements (a stride of N floats
    maps the rows of a tile onto a few cache sets). The build applies the same permutation to
    the constant data (`info.packed`: parameter position -> nn)."""
    b = sch.get(block)
    out = b.writes[0].source
    reads = [(i, r.source) for i, r in enumerate(b.reads) if not r.source.same_as(out)]
    if len(reads) < 2:
        return
    ri, buf = reads[1]
    params = list(sch.mod["main"].params)
    pos = next((i for i, p in enumerate(params) if p.same_as(buf)), None)
    shape = [int(d) for d in buf.shape]
    if pos is None or len(shape) not in (2, 4) or shape[-1] <= nn or shape[-1] % nn:
        return
    if len(shape) == 4:
        sch.transform_layout(block, ("read", ri), lambda a, c, d, e: (e // nn, a, c, d, e % nn))
    else:
        sch.transform_layout(block, ("read", ri), lambda k, n: (n // nn, k, n % nn))
    info.packed[pos] = nn


def producers_in_kernel(sch: Any, block: Any) -> list[Any]:
    return list(sch.get_producers(block))


def tile_conv_gemm(sch: Any, info: Any, lanes: int, acc_budget: int, max_m: int = 8, cfg: dict | None = None) -> bool:
    """Convolution (1x1 or KxK, groups=1) as GEMM tiles: M output pixels of one row x N output
    channels, the reduction over input channels in the `ec_gemm_f32_MxN` micro-kernel. A KxK
    convolution's padding is computed per output row (KH padded rows in a small buffer)."""
    from .ukernels import gemm_intrin

    conv = sch.get_sblock(info.anchor)
    types = operand_types(sch, conv)
    loops = sch.get_loops(conv)
    if len(loops) != 7 or types is None:
        return False
    n, h, w, co, ry, rx, ci = loops
    tile = _pick(cfg, "tile", None) or choose_tile(extent(sch, w), extent(sch, co), lanes, acc_budget, max_m)
    if tile is None:
        return False
    m, nn = tile
    k = extent(sch, ci)
    wo, wi = _split_pixels(sch, w, m)
    coo, coi = sch.split(co, [None, nn])
    outer, inner = (coo, wo) if _pick(cfg, "order", "pixels") == "channels" else (wo, coo)
    sch.reorder(n, h, outer, inner, ry, rx, ci, *wi, coi)
    epi = epilogue_block(sch, info)
    if epi is not None:
        sch.reverse_compute_at(epi, inner)
    for p in producers_in_kernel(sch, conv):   # padding kept for KxK: one row window per h
        sch.compute_at(p, h)
    if _pick(cfg, "pack", True):
        pack_weights(sch, conv, nn, info)
    sch.decompose_reduction(conv, ry)
    sch.tensorize(ci, gemm_intrin(m, nn, k, info.stride[1], types))
    return True


def tile_depthwise(sch: Any, info: Any, lanes: int, acc_budget: int, max_m: int = 8, cfg: dict | None = None) -> bool:
    """Depthwise convolution: M pixels x N channels per `ec_dw_f32` micro-kernel call over a
    padded row window computed per output row."""
    from .ukernels import dw_intrin

    conv = sch.get_sblock(info.anchor)
    types = operand_types(sch, conv)
    loops = sch.get_loops(conv)
    if len(loops) != 7 or types is None:
        return False
    n, h, w, co, ry, rx, rc = loops
    if extent(sch, rc) != 1:
        return False
    tile = _pick(cfg, "tile", None) or choose_tile(extent(sch, w), extent(sch, co), lanes, acc_budget, max_m)
    if tile is None:
        return False
    m, nn = tile
    (kh, kw), (s, _) = info.kernel, info.stride
    wo, wi = _split_pixels(sch, w, m)
    coo, coi = sch.split(co, [None, nn])
    outer, inner = (coo, wo) if _pick(cfg, "order", "pixels") == "channels" else (wo, coo)
    sch.reorder(n, h, outer, inner, rc, ry, rx, *wi, coi)   # the unit channel loop stays outside
    epi = epilogue_block(sch, info)
    if epi is not None:
        sch.reverse_compute_at(epi, inner)
    for p in producers_in_kernel(sch, conv):
        sch.compute_at(p, h)
    sch.decompose_reduction(conv, rc)
    sch.tensorize(ry, dw_intrin(m, nn, kh, kw, s, types))
    return True


def tile_dense(sch: Any, info: Any, lanes: int, acc_budget: int, cfg: dict | None = None) -> bool:
    """[1, K] x [K, N]: a 1 x N micro-kernel tile per N output features."""
    from .ukernels import gemm_intrin

    block = sch.get_sblock(info.anchor)
    types = operand_types(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != 3 or types is None:
        return False
    i, j, k = loops
    if extent(sch, i) != 1:
        return False
    tile = _pick(cfg, "tile", None) or choose_tile(1, extent(sch, j), lanes, acc_budget, 1)
    if tile is None:
        return False
    nn = tile[1]
    jo, ji = sch.split(j, [None, nn])
    sch.reorder(i, jo, k, ji)
    epi = epilogue_block(sch, info)
    if epi is not None:
        sch.reverse_compute_at(epi, jo)
    if _pick(cfg, "pack", True):
        pack_weights(sch, block, nn, info)
    sch.decompose_reduction(block, k)
    sch.tensorize(k, gemm_intrin(1, nn, extent(sch, k), 1, types))
    return True


def inline_dwpw(sch: Any, info: Any) -> None:
    """Fused depthwise + pointwise kernel: keep the depthwise padding, one depthwise epilogue
    block (bias + activation) and one pointwise epilogue block (bias, activation, residual)."""
    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    ia, ib = names.index(info.dw_anchor), names.index(info.anchor)
    for b in blocks[:ia]:
        if "pad" not in sch.get(b).name_hint.lower():
            _try(sch.compute_inline, b)
    between = blocks[ia + 1:ib]
    pads = [b for b in between if "pad" in sch.get(b).name_hint.lower()]
    epi1 = [b for b in between if b not in pads]
    for b in pads:                # the pointwise conv's (empty) padding reads the dw epilogue
        _try(sch.compute_inline, b)
    for b in epi1[:-1]:
        _try(sch.compute_inline, b)
    for b in blocks[ib + 1:-1]:
        _try(sch.compute_inline, b)


def tile_dwpw(sch: Any, info: Any, lanes: int, pw_acc: int, dw_acc: int, rows: int, cfg: dict | None = None) -> bool:
    """The fused kernel: for each tile of `rows` output rows, compute the depthwise output for
    those rows (padding window, micro-kernel, bias + activation) into a rows x W x C scratch
    buffer, then the pointwise GEMM tiles over it. The depthwise tensor never exists in full."""
    from .ukernels import dw_intrin, gemm_intrin

    blocks = _children(sch)
    names = [sch.get(b).name_hint for b in blocks]
    ia, ib = names.index(info.dw_anchor), names.index(info.anchor)
    dw_pad = [b for b in blocks[:ia] if "pad" in sch.get(b).name_hint.lower()]
    e1 = blocks[ib - 1] if ib - 1 > ia else None   # None: the depthwise conv has no epilogue
    e2 = blocks[ib + 1] if ib + 1 < len(blocks) else None
    pw = sch.get_sblock(info.anchor)
    dw = sch.get_sblock(info.dw_anchor)
    pw_types, dw_types = operand_types(sch, pw), operand_types(sch, dw)
    loops = sch.get_loops(pw)
    if len(loops) != 7 or pw_types is None or dw_types is None:
        return False
    n, h, w, co, ry, rx, ci = loops
    r = largest_divisor(extent(sch, h), _pick(cfg, "rows", rows))
    tile = _pick(cfg, "tile", None) or choose_tile(extent(sch, w), extent(sch, co), lanes, pw_acc, 8)
    if tile is None:
        return False
    m, nn = tile
    k = extent(sch, ci)
    ho, hi = sch.split(h, [None, r])
    wo, wi = _split_pixels(sch, w, m)
    coo, coi = sch.split(co, [None, nn])
    sch.reorder(n, ho, hi, wo, coo, ry, rx, ci, *wi, coi)
    if e2 is not None:
        sch.reverse_compute_at(e2, coo)
    if e1 is not None:
        sch.compute_at(e1, ho)
    sch.compute_at(dw, ho)
    for p in dw_pad:
        sch.compute_at(p, ho)
    if _pick(cfg, "pack", True):
        pack_weights(sch, pw, nn, info)
    sch.decompose_reduction(pw, ry)
    sch.tensorize(ci, gemm_intrin(m, nn, k, 1, pw_types))
    # the depthwise part, now a loop nest inside `ho`
    dloops = list(sch.get_loops(dw))
    inner = dloops[[str(sch.get(x).loop_var) for x in dloops].index(str(sch.get(ho).loop_var)) + 1:]
    (kh, kw), (s, _) = info.kernel, info.stride
    # compute_at does not materialise unit loops: match what is there to what is expected
    expected = [("h", r), ("w", extent(sch, wo) * m), ("c", info.dw_channels), ("ry", kh), ("rx", kw), ("rc", 1)]
    if len(inner) < len(expected):
        expected = [e for e in expected if e[1] != 1] if len(inner) == len([e for e in expected if e[1] != 1]) \
            else expected[:len(inner)]
    if len(inner) != len(expected) or any(extent(sch, lp) != e for lp, (_, e) in zip(inner, expected)):
        return False
    found = {name: lp for (name, _), lp in zip(expected, inner)}
    dh, dwl, dc, dry, drx, drc = (found.get(k) for k in ("h", "w", "c", "ry", "rx", "rc"))
    if dwl is None or dc is None or dry is None or drx is None:
        return False
    dtile = _pick(cfg, "dw_tile", None) or choose_tile(extent(sch, dwl), extent(sch, dc), lanes, dw_acc, 8)
    if dtile is None:
        return False
    dm, dn = dtile
    dwo, dwi = _split_pixels(sch, dwl, dm)
    dco, dci = sch.split(dc, [None, dn])
    sch.reorder(*([dh] if dh is not None else []), dwo, dco, *([drc] if drc is not None else []), dry, drx,
                *dwi, dci)
    if e1 is not None:
        sch.reverse_compute_at(e1, dco)
    sch.decompose_reduction(dw, drc if drc is not None else dry)
    sch.tensorize(dry, dw_intrin(dm, dn, kh, kw, s, dw_types))
    info.rows = r
    return True


class TiledRules:
    """The schedule rules of a family that tiles for `lanes`-wide vectors (1 = scalar FPU) with
    a register budget for accumulators. A family module instantiates it with its numbers and
    exposes the bound methods under the standard names; a family that needs a different rule
    for one kind defines that function itself."""

    def __init__(self, lanes: int, conv_acc: int, dw_acc: int, fc_acc: int, dwpw_rows: int = 2) -> None:
        self.lanes, self.conv_acc, self.dw_acc, self.fc_acc = lanes, conv_acc, dw_acc, fc_acc
        self.dwpw_rows = dwpw_rows

    def schedule_dwpw(self, sch: Any, info: Any, rows: int | None = None, cfg: dict | None = None) -> bool:
        return tile_dwpw(sch, info, self.lanes, self.conv_acc, self.dw_acc, rows or self.dwpw_rows, cfg)

    def schedule_conv(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        if info.kind not in ("conv", "conv_pw"):
            return False
        return tile_conv_gemm(sch, info, self.lanes, self.conv_acc, cfg=cfg)

    def schedule_depthwise(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        return tile_depthwise(sch, info, self.lanes, self.dw_acc, cfg=cfg)

    def schedule_dense(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        return tile_dense(sch, info, self.lanes, self.fc_acc, cfg=cfg)

    def space(self, sch: Any, info: Any, limit: int = 24) -> list[dict]:
        """The tuner's search space for one kernel (after the generic inlining): configurations
        this family's rule accepts, the rule's own choice first. Empty if the rule does not tile
        this kind."""
        def loops_of(name: str) -> list[int]:
            return [extent(sch, lp) for lp in sch.get_loops(sch.get_sblock(name))]

        out: list[dict] = []
        if info.kind in ("conv", "conv_pw", "conv_dw"):
            ext = loops_of(info.anchor)
            if len(ext) != 7:
                return []
            acc = self.dw_acc if info.kind == "conv_dw" else self.conv_acc
            for t in tile_candidates(ext[2], ext[3], self.lanes, acc, 8)[:limit // 2]:
                out += [{"tile": list(t), "order": "pixels"}, {"tile": list(t), "order": "channels"}]
        elif info.kind == "fc":
            ext = loops_of(info.anchor)
            if len(ext) != 3:
                return []
            out = [{"tile": list(t)} for t in tile_candidates(1, ext[1], self.lanes, self.fc_acc, 1)[:limit]]
        elif info.kind == "dwpw":
            ext = loops_of(info.anchor)
            if len(ext) != 7:
                return []
            h, w = ext[1], ext[2]
            default = largest_divisor(h, self.dwpw_rows)
            rows = [default] + sorted({largest_divisor(h, r) for r in (1, 2, 4, 8)} - {default})
            pw = tile_candidates(w, ext[3], self.lanes, self.conv_acc, 8)[:4]
            dw = tile_candidates(w, info.dw_channels, self.lanes, self.dw_acc, 8)[:3]
            out = [{"rows": r, "tile": list(t), "dw_tile": list(d)} for r in rows for t in pw for d in dw]
        return out[:limit]

    def schedule_pool(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        return False

    def schedule_elementwise(self, sch: Any, info: Any, cfg: dict | None = None) -> bool:
        return False
