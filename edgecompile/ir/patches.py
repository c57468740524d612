"""Patch-based execution of a network's first stage (the idea of MCUNetV2, our own implementation).

The activations of a CNN are largest in its first, high-resolution layers. Here the first `k`
window layers (convolutions, pooling) and everything between them run band by band: the stage
output is cut into bands of `n` rows; each band is computed from the input rows it needs,
through every layer of the stage, its halo rows recomputed. Only the stage's input and output
exist whole; every intermediate tensor exists one band at a time.

**Full-width row bands (n x W) by default.** A row band of an NHWC tensor is contiguous, so
a band reads its input rows and writes its output rows through views with a byte offset (no
copies), the kernels of all inner bands are one function, and the stage output can overwrite the
input rows no later band reads (`codegen/memory.py`).

**2-D tiles (`cols` > 1, `--patches K:RxC`).** Each band is cut into `cols` column tiles (widths
as even as integers allow), every tile computed through all the stage's layers from the rows and
columns it needs, its halo rows *and* columns recomputed (`tile_macs`; no cached halos). A tile
reads the stage input through the band's row view (one per band, shared by its tiles: a streamed
input reads those rows once) and a strided copy of its columns into a tile buffer
(`ec_tile_columns`); inner tensors a consumer needs fewer columns of are copied the same way.
Only the border tiles get the layers' padding, on their border sides. The band's tiles are put
side by side by one copy (`ec_assemble_columns`) whose output is the band's rows of the stage
output (a view, as a band's). Measured (benchmarks/TILES.md, tiles_sweep.py): on the wake-word
network and MobileNet V2 0.35/96 they never beat the best row-band plans, whose peak is outside
the stage or set by the stage input's rows.

The rewrite works on the high-level Relax graph (float, or after the int8 rewrite), so a band
runs exactly the arithmetic of the whole layer: int8 results are bit-identical. Inside the image
a band has no padding; only a band that touches the image border gets the layer's padding there.

What the executor then sees (see `program.extract_program`):
* the stage input: the graph input transposed to NHWC *in place* (`ec.in_place_transpose`; a
  transposed copy would cost as much RAM as the input), or an ordinary transpose when the input
  stays in the caller's buffer;
* for every band: `memory.view`s of the rows it reads, its kernels, its output;
* the stage output = `ec_assemble_rows(band outputs)`, which is no kernel: every band output
  becomes a view of the stage output at its rows.

**Halo rows: recomputed or cached.** A window layer's band reads a few rows more than it
writes (the halo), which the band before also read. By default every band recomputes them at
every inner layer (extra MACs, `patch_macs`). With `halo="cached"` (`cached_bands`, line buffers)
the bands run top to bottom and keep them instead: of each inner tensor a band holds [halo rows |
new rows] in one buffer, the halo rows copied from the previous band's (through a small halo
buffer, two `copy_rows` builtin copies), and computes only the new rows: the MACs of the whole
network, plus a copy of the halo rows. Tensors for which that does not apply (tuples, views, the
int8 zero-point shifts that fuse into their conv) keep recomputing their rows.

Which operators a stage may contain, and how their output rows depend on input rows, is the
operator registry's `rows` field (`operators.py`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import EdgeCompileError
from .operators import row_mapping
from .passes import _is_const, _shape, _substitute, _tvm
from .program import DTYPE_BYTES

ASSEMBLE_ATTR = "ec.assemble_rows"           # marks the stage output's (non-)kernel
IN_PLACE_TRANSPOSE_ATTR = "ec.in_place_transpose"
COPY_ROWS_ATTR = "ec.copy_rows"              # a band's cached halo rows, copied from the previous band
HALO_MODES = ("recomputed", "cached", "narrow")
CACHED_MODES = ("cached", "narrow")          # line buffers; "narrow": not of widening 1x1 convolutions
KEEP_CALL_ATTR = "ec.keep_call"              # never fused or merged with other calls


@dataclass(frozen=True)
class Cut:
    """A tensor that separates a first stage of the network from the rest: nothing after it
    reads any tensor of the stage but this one."""

    index: int           # the stage's last node (index into `Stage.nodes`)
    name: str            # the stage output (a Relax var name)
    shape: tuple[int, ...]
    layers: int          # window operators (convolutions, pooling) in the stage
    macs: int            # multiply-accumulates of the stage computed whole


@dataclass
class PatchPlan:
    """What report.json records under `patch_plan`."""

    layers: int                  # k: window layers computed band by band
    rows: int                    # n: stage-output rows per band
    bands: int
    stage_output: str
    stage_output_shape: list[int]
    macs_whole: int              # MACs of the stage without patches
    macs_patched: int            # with the recomputed halo rows
    in_place_input: bool         # the NHWC stage input is the graph input transposed in place
    shape: str = "full-width row bands (n x W)"     # or 2-D tiles (`cols` > 1)
    band_rows: list[list[int]] = field(default_factory=list)   # [first, end) stage-output rows of each band
    halo: str = "recomputed"     # or "cached": halo rows kept from the previous band (line buffers);
    # "narrow": cached, except the outputs of widening 1x1 convolutions (an inverted residual's
    # expansion): their halo rows are recomputed from the narrow block input's, which is cached
    rows_copied: int = 0         # cached: halo rows kept from one band to the next, all layers
    bytes_copied: int = 0        # bytes the copies move (each halo row twice: out, then in)
    input_streamed: bool = False # the graph input is read row band by row band, never whole (ir/stream.py)
    input_rows: dict[str, Any] | None = None   # streamed: the reads, rows read and held at most
    second_stage: dict[str, Any] | None = None # a second patch stage from this stage's output (`patch_second`)
    cols: int = 1                # column tiles per band (2-D tiles, `--patches K:RxC`); 1: full-width bands
    tiles: int = 0               # bands x cols
    band_cols: list[list[int]] = field(default_factory=list)   # [first, end) stage-output columns of each tile column

    @property
    def extra_macs(self) -> int:
        return self.macs_patched - self.macs_whole

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "extra_macs": self.extra_macs}


@dataclass
class _Node:
    var: Any                     # the binding's var
    value: Any                   # its value
    kind: str                    # window | same | layout | tir | item
    args: list[Any]              # the stage vars it reads


@dataclass
class Stage:
    """The longest prefix of `main` that can run band by band."""

    param: Any                   # the graph input
    entry: Any                   # the NHWC tensor the stage starts from (the input or its transpose)
    transposed: bool             # entry = permute_dims(input, [0, 2, 3, 1])
    nodes: list[_Node]
    bindings: list[Any]          # every binding of main, in order
    first: int                   # index in `bindings` of nodes[0]
    mod: Any = None              # the module (the PrimFuncs of `tir` nodes)

    def heights(self) -> dict[Any, int]:
        return {n.var: _height(n.var) for n in self.nodes} | {self.entry: _height(self.entry)}


# ----------------------------------------------------------------------------- analysis


def _extent(var: Any, axis: int) -> int:
    """The NHWC extent of `var` (of a tuple's first field) along `axis`."""
    _, relax = _tvm()
    ty = var.ty
    if isinstance(ty, relax.TupleType):
        ty = ty.fields[0]
    return int(ty.shape[axis])


def _height(var: Any) -> int:
    return _extent(var, 1)


def _ints(e: Any) -> list[int]:
    """The integers of a Relax tuple/shape argument (axes of strided_slice, ...)."""
    _, relax = _tvm()
    if isinstance(e, relax.ShapeExpr):
        return [int(v) for v in e.values]
    if isinstance(e, relax.Tuple):
        return [int(f.value) for f in e.fields]
    return [int(v) for v in e]


def _window(value: Any) -> tuple[int, int, int, int] | None:
    """(effective kernel height, stride, top padding, bottom padding) of an NHWC conv/pool call
    that can run on row bands, else None."""
    name = value.op.name
    a = value.attrs
    if name == "relax.nn.conv2d":
        if str(a.data_layout) != "NHWC" or str(a.out_layout) not in ("NHWC", "") or not _is_const(value.args[1]):
            return None
        kernel = _shape(value.args[1])
        kl = str(a.kernel_layout)
        kh = kernel[kl.index("H")]
    elif name in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d"):
        if str(a.layout) != "NHWC" or str(a.out_layout) not in ("NHWC", ""):
            return None
        pad = [int(p) for p in a.padding]
        if name == "relax.nn.avg_pool2d" and (any(pad) or bool(a.ceil_mode)):
            return None       # a band's border padding would change the divisor
        kh = int(a.pool_size[0])
    else:
        return None
    pad = [int(p) for p in a.padding]
    dil = int(a.dilation[0])
    return (kh - 1) * dil + 1, int(a.strides[0]), pad[0], pad[2]


def _rows_same(var: Any, args: list[Any], consts: list[Any]) -> bool:
    """Every stage operand has the output's height and no constant varies along H."""
    h = _height(var)
    if any(_height(a) != h for a in args):
        return False
    for c in consts:
        cs = _shape(c)
        out_rank = len(var.ty.shape)
        # broadcasting aligns shapes on the right: H is axis 1 of the output
        if len(cs) >= out_rank - 1 and cs[len(cs) - (out_rank - 1)] != 1:
            return False
    return True


_BINARY = ("Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max", "EQ", "NE", "LT", "LE", "RShift", "LShift",
           "GT", "GE", "And", "Or")


def _rebuild_expr(node: Any, load: Any, var: Any) -> Any:
    """A TIR expression rebuilt with `load(BufferLoad)` and `var(Var)` in place of its loads and
    variables; raises for a node kind it does not know (the caller then keeps the function)."""
    from tvm import tirx

    rec = lambda e: _rebuild_expr(e, load, var)  # noqa: E731
    kind = type(node).__name__     # (some tirx names are constructor functions, not classes)
    if kind in ("BufferLoad", "TensorLoad"):
        return load(node)
    if kind == "Var":
        return var(node)
    if kind in ("IntImm", "FloatImm", "StringImm"):
        return node
    if kind in _BINARY:
        return type(node)(rec(node.a), rec(node.b))
    if kind == "Cast":
        return tirx.Cast(str(node.ty), rec(node.value))
    if kind == "Not":
        return tirx.Not(rec(node.a))
    if kind == "Select":
        return tirx.Select(rec(node.condition), rec(node.true_value), rec(node.false_value))
    if kind == "Call":              # an intrinsic or a C helper (the int8 rescale's ec_sat_s8)
        from tvm.ir.expr import Call

        return Call(node.op, [rec(a) for a in node.args], ret_ty=str(node.ty))
    raise EdgeCompileError(f"patches: TIR expression {kind} is not re-made for band shapes")


def _elementwise_block(func: Any) -> Any | None:
    """The block of a PrimFunc that computes each output element from the same element of its
    inputs (one spatial block, identity indexing, known expression nodes), else None: such a
    function can be re-made for a band's shape."""
    from .kernel import root_blocks

    blocks = root_blocks(func)
    if len(blocks) != 1:
        return None
    block = blocks[0]
    ivs = [iv.var for iv in block.iter_vars]
    if any(int(iv.iter_type) != 0 for iv in block.iter_vars) or type(block.body).__name__ != "BufferStore":
        return None
    store = block.body
    if len(store.indices) != len(ivs) or any(not i.same_as(v) for i, v in zip(store.indices, ivs)):
        return None

    def load(node: Any) -> Any:
        # the output's own element, or a per-channel constant's (indexed by the trailing axes)
        tail = ivs[len(ivs) - len(node.indices):]
        if len(node.indices) > len(ivs) or any(not i.same_as(v) for i, v in zip(node.indices, tail)):
            raise EdgeCompileError("patches: not an elementwise load")
        return node

    try:
        _rebuild_expr(store.value, load, lambda v: v)
    except EdgeCompileError:
        return None
    return block


def _classify(mod: Any, b: Any, stage: set[Any]) -> _Node | None:
    """The stage node of binding `b` whose operands are in `stage`, or None if it cannot run on
    row bands."""
    tvm, relax = _tvm()
    var, value = b.var, b.value
    if isinstance(value, relax.TupleGetItem):
        if value.tuple_value in stage:
            return _Node(var, value, "item", [value.tuple_value])
        return None
    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)):
        return None
    tensors, consts = [], []
    for a in value.args:
        fields = a.fields if isinstance(a, relax.Tuple) else [a]
        for f in fields:
            if isinstance(f, relax.Var):
                if f not in stage:
                    return None
                tensors.append(f)
            elif _is_const(f):
                consts.append(f)
    if not tensors:
        return None
    name = value.op.name
    if isinstance(var.ty, relax.TensorType) and (var.ty.ndim < 2 or any(not isinstance(d, tvm.tirx.IntImm)
                                                                         for d in var.ty.shape)):
        return None
    if name == "relax.call_tir":
        func = mod[value.args[0]]
        per_channel = all(len(_shape(c)) <= 1 for c in consts)     # the int8 rescale's per-channel constants
        if _elementwise_block(func) is not None and _rows_same(var, tensors, consts) and per_channel:
            return _Node(var, value, "tir", tensors)
        return None
    mapping = row_mapping(name)
    if mapping == "window":
        if _window(value) is None or len(tensors) != 1 or not tensors[0].same_as(value.args[0]):
            return None
        return _Node(var, value, "window", tensors)
    if mapping == "same":
        return _Node(var, value, "same", tensors) if _rows_same(var, tensors, consts) else None
    if mapping == "table":      # take(constant table, indices): each element looked up on its own
        table, index = value.args[0], value.args[1]
        if _is_const(table) and len(_shape(table)) == 1 and index.same_as(tensors[0]) and len(tensors) == 1 \
                and _shape(var) == _shape(index):
            return _Node(var, value, "same", tensors)
        return None
    if mapping == "layout" and _keeps_rows(value, var, tensors):
        return _Node(var, value, "layout", tensors)
    return None


def _keeps_rows(value: Any, var: Any, tensors: list[Any]) -> bool:
    """Whether a layout operator keeps axis 1 as the rows of input and output."""
    _, relax = _tvm()
    name, a = value.op.name, value.attrs
    src = tensors[0]
    if isinstance(var.ty, relax.TensorType):
        out_shape = _shape(var)
        if len(out_shape) < 2 or out_shape[1] != _height(src):
            return False
    if name == "relax.reshape":
        return _shape(src)[:2] == _shape(var)[:2]
    if name == "relax.permute_dims":
        axes = [int(x) for x in a.axes] if a.axes is not None else None
        return axes is not None and axes[:2] == [0, 1]
    if name == "relax.strided_slice":
        rank = len(_shape(src))
        return all(ax % rank not in (0, 1) for ax in _ints(value.args[1]))
    if name == "relax.split":
        return int(a.axis) % len(_shape(src)) not in (0, 1)
    if name == "relax.concat":
        return a.axis is not None and int(a.axis) % len(_shape(src)) not in (0, 1) and \
            all(_height(t) == _height(src) for t in tensors)
    return False


def find_stage(mod: Any, after: Any = None) -> Stage | None:
    """The longest prefix of `main` that can run on row bands, from the graph input (NCHW,
    transposed to NHWC by the first binding, or NHWC feeding a window operator); with `after`
    (a var of `main`), the longest run of bindings from that NHWC tensor instead (a second
    stage, `patch_second`)."""
    _, relax = _tvm()
    main = mod["main"]
    if len(main.params) != 1 or not isinstance(main.params[0].ty, relax.TensorType) or main.params[0].ty.ndim != 4:
        return None
    p = main.params[0]
    bindings = [b for block in main.body.blocks for b in block.bindings]
    if not bindings:
        return None
    if after is not None:
        return _stage_after(mod, p, bindings, after)
    first = bindings[0]
    v = first.value
    transposed = (isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.permute_dims"
                  and v.args[0].same_as(p) and v.attrs.axes is not None and [int(x) for x in v.attrs.axes] == [0, 2, 3, 1])
    entry, start = (first.var, 1) if transposed else (p, 0)
    if not transposed and not (isinstance(v, relax.Call) and row_mapping(getattr(v.op, "name", "")) == "window"
                               and v.args[0].same_as(p) and _window(v) is not None):
        return None
    nodes = _grow(mod, bindings, start, entry)
    return Stage(p, entry, transposed, nodes, bindings, start, mod) if nodes else None


def _grow(mod: Any, bindings: list[Any], start: int, entry: Any) -> list[Any]:
    """The nodes of a stage entered at `entry`: bindings from `start` on while each runs on row bands
    of what the stage has made so far."""
    stage: set[Any] = {entry}
    nodes = []
    for b in bindings[start:]:
        node = _classify(mod, b, stage)
        if node is None:
            break
        nodes.append(node)
        stage.add(b.var)
    return nodes


def _stage_after(mod: Any, p: Any, bindings: list[Any], after: Any) -> Stage | None:
    """The stage that starts at `after`, an NHWC tensor some binding of `main` makes: the bindings
    after it that run on row bands. The bindings before it run as they are."""
    _, relax = _tvm()
    at = next((i for i, b in enumerate(bindings) if b.var.same_as(after)), None)
    if at is None or not isinstance(after.ty, relax.TensorType) or after.ty.ndim != 4:
        return None
    nodes = _grow(mod, bindings, at + 1, after)
    return Stage(p, after, False, nodes, bindings, at + 1, mod) if nodes else None


def _last_uses(bindings: list[Any], result: Any) -> dict[Any, int]:
    """Index of the last binding that reads each var (len(bindings) for the function result)."""
    _, relax = _tvm()
    last: dict[Any, int] = {}
    for i, b in enumerate(bindings):
        def visit(e: Any, i: int = i) -> None:
            if isinstance(e, relax.Var):
                last[e] = i
        relax.analysis.post_order_visit(b.value, visit)
    last[result] = len(bindings)
    return last


def _node_macs(node: _Node, rows: int) -> int:
    """Multiply-accumulates of a node computing `rows` output rows."""
    if node.kind != "window" or node.value.op.name != "relax.nn.conv2d":
        return 0
    out = _shape(node.var)
    w = _shape(node.value.args[1])
    kl = str(node.value.attrs.kernel_layout)
    kh, kw, ci = w[kl.index("H")], w[kl.index("W")], w[kl.index("I")]
    return rows * int(math.prod(out[2:])) * kh * kw * ci


def stage_cuts(stage: Stage) -> list[Cut]:
    """Every tensor of the stage that can end a patch stage: an NHWC tensor made by a kernel
    (not a view), after at least one window layer, that is the only stage tensor read later."""
    last = _last_uses(stage.bindings, None)
    cuts = []
    layers = macs = 0
    stage_vars = [stage.entry]
    for j, node in enumerate(stage.nodes):
        stage_vars.append(node.var)
        if node.kind == "window":
            layers += 1
        macs += _node_macs(node, _height(node.var))
        pos = stage.first + j
        if layers == 0 or node.kind not in ("window", "same", "tir"):
            continue
        if len(node.var.ty.shape) != 4:
            continue
        if any(last.get(u, -1) > pos for u in stage_vars[:-1]):
            continue
        cuts.append(Cut(j, node.var.name, _shape(node.var), layers, macs))
    return cuts


def band_ranges(height: int, rows: int) -> list[tuple[int, int]]:
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


def _window_rows(node: _Node, o0: int, o1: int) -> tuple[int, int, int, int]:
    """Input rows [c0, c1) and the (top, bottom) padding that compute output rows [o0, o1)."""
    k, s, pt, _ = _window(node.value)  # type: ignore[misc]
    h_in = _height(node.args[0])
    u0, u1 = o0 * s - pt, (o1 - 1) * s - pt + k
    c0, c1 = max(u0, 0), min(u1, h_in)
    return c0, c1, c0 - u0, u1 - c1


def _needed_rows(stage: Stage, cut: Cut, y0: int, y1: int) -> dict[Any, tuple[int, int]]:
    """Rows of every stage tensor that band [y0, y1) of the stage output needs."""
    needed: dict[Any, tuple[int, int]] = {stage.nodes[cut.index].var: (y0, y1)}
    for node in reversed(stage.nodes[:cut.index + 1]):
        if node.var not in needed:
            continue
        o0, o1 = needed[node.var]
        req = _window_rows(node, o0, o1)[:2] if node.kind == "window" else (o0, o1)
        for a in node.args:
            r = needed.get(a)
            needed[a] = req if r is None else (min(r[0], req[0]), max(r[1], req[1]))
    return needed


def patch_macs(stage: Stage, cut: Cut, rows: int, halo: str = "recomputed") -> int:
    """Multiply-accumulates of the stage computed in bands of `rows` output rows."""
    if halo in CACHED_MODES:
        return sum(_node_macs(n, b.computed[n.var][1] - b.computed[n.var][0])
                   for b in cached_bands(stage, cut, rows, halo == "narrow") for n in stage.nodes[:cut.index + 1] if n.var in b.computed)
    total = 0
    for y0, y1 in band_ranges(cut.shape[1], rows):
        needed = _needed_rows(stage, cut, y0, y1)
        total += sum(_node_macs(n, needed[n.var][1] - needed[n.var][0]) for n in stage.nodes[:cut.index + 1]
                     if n.var in needed)
    return total


@dataclass
class CachedBand:
    """What one band does when halo rows are kept (line buffers) instead of recomputed.

    `held[v]`: rows [a, e) of stage tensor v the band's buffer holds (what its consumers read).
    `computed[v]`: rows the band's node computes: all of `held` (no usable overlap), or the rows
    [p, e) after the previous band's [.., p), when rows [a, p) are `cached[v]`: copied from the end
    of the previous band's buffer to the start of this one. `reused`: tensors whose rows all lie
    in the previous band's buffer (read there, nothing computed)."""

    y0: int
    y1: int
    held: dict[Any, tuple[int, int]]
    computed: dict[Any, tuple[int, int]]
    cached: dict[Any, tuple[int, int]]
    reused: set[Any]


def _cacheable(mod: Any, node: _Node, out: Any) -> bool:
    """A tensor a band may hold as [cached rows | new rows]: a 4-D kernel output (the new rows
    and the copied rows are both kernel outputs, placed as views of the band's buffer), not the
    stage output (whose bands do not overlap)."""
    _, relax = _tvm()
    if node.kind == "tir" and _fused_into_consumer(mod, node):
        return False       # (int8: the zero-point shift) recomputed inside its conv, its input cached
    return (node.kind in ("window", "same", "tir") and not node.var.same_as(out)
            and isinstance(node.var.ty, relax.TensorType) and node.var.ty.ndim == 4)


def _fused_into_consumer(mod: Any, node: _Node) -> bool:
    f = mod[node.value.args[0]]
    return f.attrs is not None and "ec.fuse_into_consumer" in f.attrs


def _widening(stage: Stage, node: _Node) -> bool:
    """Whether `node`'s output is a 1x1 stride-1 convolution's that widens its input (an inverted
    residual's expansion), or made from one by elementwise nodes (bias, activation, the int8
    rescale): a tensor whose halo rows cost more bytes to keep than MACs to recompute."""
    producer = {n.var: n for n in stage.nodes}
    while node.kind in ("tir", "same") and len(node.args) == 1 and node.args[0] in producer:
        node = producer[node.args[0]]
    if node.kind != "window" or node.value.op.name != "relax.nn.conv2d" or len(node.args) != 1:
        return False
    w = _shape(node.value.args[1])
    kl = str(node.value.attrs.kernel_layout)
    k, s = _window(node.value)[:2]     # type: ignore[index]
    return (k == 1 and s == 1 and w[kl.index("W")] == 1 and int(node.value.attrs.groups) == 1
            and _shape(node.var)[-1] > _shape(node.args[0])[-1])


def cached_bands(stage: Stage, cut: Cut, rows: int, narrow: bool = False) -> list[CachedBand]:
    """The bands of a cached-halo stage, top to bottom: each band needs, of every stage tensor,
    the rows its consumers' *computed* rows read (a window's halo included); what the previous
    band's buffer of the same tensor already holds is copied, not computed. Bands run in order,
    so a held interval only moves down: its overlap with the previous one is a prefix."""
    nodes = stage.nodes[:cut.index + 1]
    out = nodes[-1].var
    prev: dict[Any, tuple[int, int]] = {}
    bands = []
    for y0, y1 in band_ranges(cut.shape[1], rows):
        held: dict[Any, tuple[int, int]] = {out: (y0, y1)}
        computed: dict[Any, tuple[int, int]] = {}
        cached: dict[Any, tuple[int, int]] = {}
        reused: set[Any] = set()
        for node in reversed(nodes):
            if node.var not in held:
                continue
            a, e = held[node.var]
            p = prev.get(node.var)
            if p is not None and _cacheable(stage.mod, node, out) and p[0] <= a < p[1] \
                    and not (narrow and _widening(stage, node)):
                if e <= p[1]:              # all in the previous buffer: read there
                    held[node.var] = p
                    reused.add(node.var)
                    continue
                cached[node.var] = (a, p[1])
                computed[node.var] = (p[1], e)
            else:
                computed[node.var] = (a, e)
            o0, o1 = computed[node.var]
            req = _window_rows(node, o0, o1)[:2] if node.kind == "window" else (o0, o1)
            for arg in node.args:
                r = held.get(arg)
                held[arg] = req if r is None else (min(r[0], req[0]), max(r[1], req[1]))
        bands.append(CachedBand(y0, y1, held, computed, cached, reused))
        prev = dict(held)
    return bands


def _row_bytes(var: Any) -> int:
    return int(math.prod(_shape(var)[2:])) * DTYPE_BYTES[str(var.ty.dtype)]


def cached_copies(stage: Stage, cut: Cut, rows: int, narrow: bool = False) -> tuple[int, int]:
    """(rows, bytes) of halo a cached-halo stage keeps from band to band, over all its tensors
    (each row is copied twice: out of a band's buffer, into the next one's)."""
    copied = [(b.cached[v][1] - b.cached[v][0], _row_bytes(v)) for b in cached_bands(stage, cut, rows, narrow)
              for v in b.cached]
    return sum(r for r, _ in copied), 2 * sum(r * n for r, n in copied)


# ----------------------------------------------------------------------------- rewrite


class _BandEmitter:
    """Emits one band's bindings into a BlockBuilder."""

    def __init__(self, bb: Any, mod: Any) -> None:
        self.bb, self.mod = bb, mod
        self.reshaped: dict[tuple[str, tuple], Any] = {}

    def rows_of(self, band: dict[Any, tuple[Any, int, int]], var: Any, r0: int, r1: int) -> Any:
        """Stage tensor `var` restricted to rows [r0, r1): the band tensor, or a view of it."""
        tvm, relax = _tvm()
        expr, b0, b1 = band[var]
        if (r0, r1) == (b0, b1):
            return expr
        if not (b0 <= r0 < r1 <= b1):
            raise EdgeCompileError(f"patch stage: rows {r0}..{r1} of {var.name} are not computed ({b0}..{b1})")
        shape = _shape(expr)
        row_bytes = int(math.prod(shape[2:])) * DTYPE_BYTES[str(expr.ty.dtype)]
        offset = relax.prim_value(tvm.tirx.IntImm("int64", (r0 - b0) * row_bytes))
        view = relax.op.memory.view(expr, [shape[0], r1 - r0, *shape[2:]], str(expr.ty.dtype), offset)
        return self.bb.emit(view, f"{var.name}_rows")

    def node(self, node: _Node, band: dict[Any, tuple[Any, int, int]], o0: int, o1: int) -> Any:
        tvm, relax = _tvm()
        v = node.value
        name = node.var.name
        if node.kind == "item":
            expr = band[node.args[0]][0]
            return self.bb.emit(relax.TupleGetItem(expr, v.index), name)
        if node.kind == "window":
            c0, c1, pt, pb = _window_rows(node, o0, o1)
            return self.bb.emit(_window_call(v, self.rows_of(band, node.args[0], c0, c1), pt, pb), name)

        def arg(a: Any) -> Any:
            if isinstance(a, relax.Tuple):
                return relax.Tuple([arg(f) for f in a.fields])
            if isinstance(a, relax.Var):
                return self.rows_of(band, a, o0, o1)
            if isinstance(a, relax.ShapeExpr) and v.op.name == "relax.reshape":
                dims = [int(d) for d in a.values]
                return relax.ShapeExpr([dims[0], o1 - o0, *dims[2:]])
            return a

        if node.kind == "tir":
            x = [self.rows_of(band, a, o0, o1) if isinstance(a, relax.Var) else a for a in v.args[1].fields]
            return self.bb.emit(self._reshaped_call(v, x, o1 - o0), name)
        return self.bb.emit(relax.Call(v.op, [arg(a) for a in v.args], v.attrs, v.ty_args), name)

    def _reshaped_call(self, call: Any, args: list[Any], rows: int, cols: int | None = None) -> Any:
        """call_tir of an elementwise PrimFunc on band-shaped arguments: the same function made
        for the band's shape (one per distinct shape); `cols`: a 2-D tile's columns too."""
        _, relax = _tvm()
        gv = call.args[0]
        func = self.mod[gv]
        out_ty = call.ty_args[0]
        shape = [int(d) for d in out_ty.shape]
        shape[1] = rows
        if cols is not None:
            shape[2] = cols
        key = (gv.name_hint, tuple(shape))
        if key not in self.reshaped:
            new = _elementwise_for_shape(func, shape)
            self.reshaped[key] = self.bb.add_func(new, gv.name_hint)
        return relax.call_tir(self.reshaped[key], args, relax.TensorType(shape, str(out_ty.dtype)))


def _window_call(value: Any, data: Any, top: int, bottom: int, left: int | None = None,
                 right: int | None = None) -> Any:
    """The conv/pool call `value` on `data` with (top, bottom) padding instead of its own (and
    (left, right) too for a 2-D tile)."""
    _, relax = _tvm()
    a = value.attrs
    pad = [int(p) for p in a.padding]
    padding = (top, pad[1] if left is None else left, bottom, pad[3] if right is None else right)
    ints = lambda t: tuple(int(x) for x in t)  # noqa: E731
    if value.op.name == "relax.nn.conv2d":
        out_dtype = None if str(a.out_dtype) in ("", "None", "void") else str(a.out_dtype)
        return relax.op.nn.conv2d(data, value.args[1], ints(a.strides), padding, ints(a.dilation), int(a.groups),
                                  str(a.data_layout), str(a.kernel_layout), str(a.out_layout) or None, out_dtype)
    op = relax.op.nn.max_pool2d if value.op.name == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
    # a band computes exactly its rows: a partial last window (ceil mode) is bottom padding here
    return op(data, ints(a.pool_size), ints(a.strides), padding, ints(a.dilation), False, bool(a.count_include_pad),
              str(a.layout), str(a.out_layout) or None)


def _elementwise_for_shape(func: Any, shape: list[int]) -> Any:
    """An elementwise PrimFunc (see `_elementwise_block`) re-made for output `shape`."""
    from tvm import te, tirx

    block = _elementwise_block(func)
    ivs = [iv.var for iv in block.iter_vars]
    shape = [tirx.IntImm("int64", d) for d in shape]      # as Relax's legalization makes them
    out_buf = block.body.buffer
    inputs = [b for b in func.params if not b.same_as(out_buf)]      # buffer parameters
    # band-shaped tensors, or per-channel constants (their own shape)
    holders = [te.placeholder(shape if len(b.shape) == len(shape) else [int(d) for d in b.shape], str(b.ty.dtype),
                              b.name) for b in inputs]

    def compute(*idx: Any) -> Any:
        index = {iv: i for iv, i in zip(ivs, idx)}

        def load(node: Any) -> Any:
            src = node.source if hasattr(node, "source") else node.buffer
            holder = next(h for b, h in zip(inputs, holders) if src.same_as(b))
            return holder(*idx[len(idx) - len(node.indices):])

        return _rebuild_expr(block.body.value, load, lambda v: index.get(v, v))

    out = te.compute(shape, compute, name=block.name_hint)
    new = te.create_prim_func([*holders, out])
    for key in ("ec.fuse_into_consumer", "op_pattern"):
        if func.attrs is not None and key in func.attrs:
            new = new.with_attr(key, func.attrs[key])
    return new


def _marked(bb: Any, call_var: Any, attrs: dict[str, Any]) -> None:
    """Set attributes on the PrimFunc a call_te binding calls."""
    gv = bb.lookup_binding(call_var).args[0]
    func = bb.get()[gv]
    for k, v in attrs.items():
        func = func.with_attr(k, v)
    bb.update_func(gv, func)


def _copy(t: Any) -> Any:
    """A copy of `t`, run by the `copy_rows` builtin (this PrimFunc is never compiled). Its value
    goes through an opaque call so that no simplification makes it a reshape (a view, no copy)."""
    from tvm import te, tirx

    return te.compute(t.shape, lambda *i: tirx.call_pure_extern(str(t.dtype), "ec_copy_rows", t(*i)), name="copy")


def _emit_cached(bb: Any, emitter: _BandEmitter, stage: Stage, cut: Cut, rows: int, x: Any,
                 narrow: bool = False) -> list[Any]:
    """The bands of a cached-halo stage (`cached_bands`); returns the band outputs. A tensor with
    cached rows is one buffer per band, [halo rows | new rows], both parts placed as views of it
    (`ec_assemble_rows`). The halo rows travel in two copies (`ec_copy_rows`, a builtin): as soon
    as a band's buffer is made, its tail rows that the next band keeps go to a halo buffer of just
    those rows; in the next band, right before the new rows are computed, they go from the halo
    buffer to the start of the new buffer. Only the halo rows of each layer stay live from band
    to band, and each copy's destination may lie over its source (`memory.copy_overlaps`)."""
    from tvm import topi

    nodes = stage.nodes[:cut.index + 1]
    plan = cached_bands(stage, cut, rows, narrow)

    def copy(src: Any) -> Any:
        out = bb.emit_te(_copy, src, primfunc_name_hint="ec_copy_rows")
        _marked(bb, out, {COPY_ROWS_ATTR: True, KEEP_CALL_ATTR: True})
        return out

    prev: dict[Any, tuple[Any, int, int]] = {}
    halo: dict[Any, Any] = {}           # the previous band's halo buffers
    outs = []
    for k, b in enumerate(plan):
        nxt = plan[k + 1] if k + 1 < len(plan) else None
        band: dict[Any, tuple[Any, int, int]] = {stage.entry: (x, 0, _height(stage.entry))}
        kept: dict[Any, Any] = {}
        for node in nodes:
            v = node.var
            if v not in b.held:
                pass
            elif v in b.reused:
                band[v] = prev[v]
            elif node.kind == "item":            # a tuple item has the rows its tuple was computed for
                o0, o1 = band[node.args[0]][1:]
                band[v] = (emitter.node(node, band, o0, o1), o0, o1)
            elif v not in b.cached:
                o0, o1 = b.computed[v]
                band[v] = (emitter.node(node, band, o0, o1), o0, o1)
            else:
                o0, o1 = b.computed[v]
                head = copy(halo.pop(v))
                new = emitter.node(node, band, o0, o1)
                buf = bb.emit_te(topi.concatenate, [head, new], 1, primfunc_name_hint="ec_assemble_rows")
                _marked(bb, buf, {ASSEMBLE_ATTR: True, KEEP_CALL_ATTR: True})
                band[v] = (buf, b.cached[v][0], o1)
            # the halo rows the next band keeps, copied as soon as they are made: the band's
            # buffer then dies at its last reader as without caching (a kernel may stream its
            # output over it), and only the small halo buffer lives on
            if nxt is not None and v in nxt.cached and v in band:
                kept[v] = copy(emitter.rows_of(band, v, *nxt.cached[v]))
        outs.append(band[nodes[-1].var][0])
        prev, halo = band, kept
    return outs


def apply_patches(mod: Any, stage: Stage, cut: Cut, rows: int, in_place_input: bool,
                  halo: str = "recomputed", cols: int = 1) -> tuple[Any, PatchPlan]:
    """`mod` with its first stage (up to `cut`) computed in bands of `rows` stage-output rows,
    the halo rows of inner layers recomputed by every band or cached from the previous one.
    `cols` > 1: each band in that many column tiles (2-D tiles, halo rows and columns
    recomputed), put side by side into the band's rows of the stage output by one copy."""
    tvm, relax = _tvm()
    from tvm import topi

    main = mod["main"]
    if rows < 1:
        raise EdgeCompileError(f"patch rows must be >= 1, got {rows}")
    if halo not in HALO_MODES:
        raise EdgeCompileError(f"patch halo must be one of {', '.join(HALO_MODES)}, got {halo!r}")
    if cols < 1:
        raise EdgeCompileError(f"patch column tiles must be >= 1, got {cols}")
    if cols > 1 and halo != "recomputed":
        raise EdgeCompileError(f"patches: 2-D tiles recompute their halos; {halo} halo rows are for full-width bands")
    if cols > 1:
        check_columns(stage, cut, cols)
    height = cut.shape[1]
    bands = band_ranges(height, rows)
    bb = relax.BlockBuilder(mod)
    p = relax.Var(stage.param.name, stage.param.ty)
    emitter = _BandEmitter(bb, mod) if cols == 1 else _TileEmitter(bb, mod)
    env: dict[Any, Any] = {stage.param: p}
    in_place = stage.transposed and in_place_input
    interior = not stage.entry.same_as(stage.param) and not stage.transposed     # a second stage
    with bb.function("ec_patched_main", [p]):
        with bb.dataflow():
            if interior:       # the bindings before the stage (a first stage's bands) as they are
                for b in stage.bindings[:stage.first]:
                    env[b.var] = bb.emit(_substitute(b.value, env), b.var.name)
                x = env[stage.entry]
            elif stage.transposed:
                if in_place:
                    x = bb.emit_te(topi.transpose, p, [0, 2, 3, 1], primfunc_name_hint="ec_transpose_in_place")
                    _marked(bb, x, {IN_PLACE_TRANSPOSE_ATTR: True, KEEP_CALL_ATTR: True})
                else:
                    x = bb.emit(relax.op.permute_dims(p, [0, 2, 3, 1]), stage.entry.name)
            else:
                x = p
            outs = []
            if halo in CACHED_MODES:
                outs = _emit_cached(bb, emitter, stage, cut, rows, x, halo == "narrow")
            if cols > 1:
                outs = _emit_tiles(bb, emitter, stage, cut, rows, cols, x)
            for y0, y1 in bands if halo not in CACHED_MODES and cols == 1 else ():
                needed = _needed_rows(stage, cut, y0, y1)
                band: dict[Any, tuple[Any, int, int]] = {stage.entry: (x, 0, _height(stage.entry))}
                for node in stage.nodes[:cut.index + 1]:
                    if node.var in needed:
                        # a tuple item has the rows its tuple was computed for
                        o0, o1 = band[node.args[0]][1:] if node.kind == "item" else needed[node.var]
                        band[node.var] = (emitter.node(node, band, o0, o1), o0, o1)
                outs.append(band[stage.nodes[cut.index].var][0])
            y = bb.emit_te(topi.concatenate, outs, 1, primfunc_name_hint="ec_assemble_rows")
            _marked(bb, y, {ASSEMBLE_ATTR: True, KEEP_CALL_ATTR: True})
            env[stage.nodes[cut.index].var] = y
            for b in stage.bindings[stage.first + cut.index + 1:]:
                env[b.var] = bb.emit(_substitute(b.value, env), b.var.name)
            result = main.body.body
            gv = bb.emit_output(env.get(result, result))
        bb.emit_func_output(gv)
    new = bb.get()
    patched = new.get_global_var("ec_patched_main")
    func = new[patched]
    new = tvm.IRModule({g: f for g, f in new.functions.items() if g.name_hint not in ("main", "ec_patched_main")},
                       attrs=new.attrs)
    new["main"] = func.with_attr("global_symbol", "main")
    new = relax.transform.DeadCodeElimination()(new)
    plan = PatchPlan(layers=cut.layers, rows=rows, bands=len(bands), stage_output=cut.name,
                     stage_output_shape=list(cut.shape), macs_whole=cut.macs,
                     macs_patched=patch_macs(stage, cut, rows, halo), in_place_input=in_place,
                     band_rows=[[a, b] for a, b in bands], halo=halo)
    if cols > 1:
        plan.cols, plan.tiles = cols, len(bands) * cols
        plan.band_cols = [[a, b] for a, b in column_ranges(cut.shape[2], cols)]
        plan.macs_patched = tile_macs(stage, cut, rows, cols)
        plan.shape = "2-D tiles (n rows x W/c columns), halos recomputed"
    else:
        plan.tiles = len(bands)
    if halo in CACHED_MODES:
        plan.rows_copied, plan.bytes_copied = cached_copies(stage, cut, rows, halo == "narrow")
    return new, plan


def arena_lower_bound(stage: Stage, cut: Cut, rows: int, halo: str = "recomputed", streamed: bool = False) -> int:
    """Bytes any plan of this patch stage needs at least: the whole stage input, live while the
    first band runs. (Nothing more can be counted from the band shapes alone: a band's buffers and
    the stage output may overlap input rows already consumed, and fused kernels keep their
    intermediate rows to themselves.) With cached halo rows, also what the second band takes
    over from the first: every halo buffer, and every buffer of the first band it reads whole,
    all live between the two bands. Used to skip plans that cannot fit a budget. `streamed` (the
    graph input read row band by row band, `stream.py`): only the input rows of the first band."""
    total = tensor_bytes(stage.entry)
    if streamed and stage.transposed:
        a, b = _needed_rows(stage, cut, 0, min(rows, cut.shape[1])).get(stage.entry, (0, _height(stage.entry)))
        total = (b - a) * _row_bytes(stage.entry)
    if halo in CACHED_MODES:
        bands = cached_bands(stage, cut, rows, halo == "narrow")
        if len(bands) > 1:
            first, second = bands[0], bands[1]
            total += sum((p - a) * _row_bytes(v) for v, (a, p) in second.cached.items())
            total += sum((first.held[v][1] - first.held[v][0]) * _row_bytes(v) for v in second.reused)
    return total


def tensor_bytes(var: Any) -> int:
    return int(math.prod(_shape(var))) * DTYPE_BYTES[str(var.ty.dtype)]


def cut_bytes(stage: Stage, cut: Cut) -> int:
    """Bytes of a cut's stage output."""
    return tensor_bytes(stage.nodes[cut.index].var)


def best_cuts(stage: Stage) -> dict[int, Cut]:
    """For each number of window layers a stage can have, its cut of the smallest output (the
    later one of equal size)."""
    best: dict[int, Cut] = {}
    for c in stage_cuts(stage):
        key = (cut_bytes(stage, c), -c.index)
        if c.layers not in best or key < (cut_bytes(stage, best[c.layers]), -best[c.layers].index):
            best[c.layers] = c
    return best


def patch_graph(mod: Any, layers: int, rows: int, in_place_input: bool = True,
                halo: str = "recomputed", cols: int = 1) -> tuple[Any, PatchPlan]:
    """`mod` with its first window layers, `layers` at most, run in bands of `rows` stage-output
    rows (of the deepest cuts within that many layers, the one with the smallest stage output).
    An error names what limits it."""
    stage = find_stage(mod)
    if stage is None:
        raise EdgeCompileError("patches: the network does not start with a convolution on its input")
    cut = _deepest_cut(stage, layers, f"stage of at most {layers} layers")
    return apply_patches(mod, stage, cut, rows, in_place_input, halo, cols)


def _deepest_cut(stage: Stage, layers: int, what: str) -> Any:
    """The cut of `stage` ending the most layers, `layers` at most; an error names the first layer
    count that can end it (`what`: the stage the message names)."""
    cuts = {n: c for n, c in best_cuts(stage).items() if n <= layers}
    if not cuts:
        least = min(best_cuts(stage), default=0)
        raise EdgeCompileError(f"patches: no {what} (the first one that can end a stage has {least})")
    return cuts[max(cuts)]


def stage_output_var(mod: Any) -> Any:
    """The output of the patch stage `apply_patches` made in `mod` (the last `ec.assemble_rows`
    binding of `main`: a stage's own [halo | new rows] buffers all come before it)."""
    _, relax = _tvm()
    found = None
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                f = mod[v.args[0]]
                if f.attrs is not None and ASSEMBLE_ATTR in f.attrs:
                    found = b.var
    return found


def patch_second(mod: Any, first: PatchPlan, layers: int, rows: int, halo: str = "recomputed",
                 cols: int = 1) -> tuple[Any, PatchPlan]:
    """A second patch stage: after the first stage (`patch_graph`) of `mod`, its output -- which
    exists whole -- is the input of up to `layers` more window layers run in bands of `rows`
    rows, so that the large tensors of the next resolutions (MobileNet V2's 28x28 and 14x14
    expansions) exist a band at a time too. The stage's output overlaps its input as the first
    stage's does (`memory.patch_overlaps` covers every assembled stage output)."""
    entry = stage_output_var(mod)
    stage = find_stage(mod, after=entry) if entry is not None else None
    if stage is None:
        raise EdgeCompileError(f"patches: nothing after the first stage's output {first.stage_output} runs on row bands")
    cut = _deepest_cut(stage, layers, f"second stage of at most {layers} layers after {first.stage_output}")
    return apply_patches(mod, stage, cut, rows, False, halo, cols)


# ----------------------------------------------------------------------------- 2-D tiles


def column_ranges(width: int, cols: int) -> list[tuple[int, int]]:
    """`cols` column ranges of a `width`-wide tensor, as even as integers allow."""
    return [(i * width // cols, (i + 1) * width // cols) for i in range(cols)]


def _window_w(value: Any) -> tuple[int, int, int, int]:
    """(effective kernel width, stride, left padding, right padding) of a conv/pool call."""
    a = value.attrs
    if value.op.name == "relax.nn.conv2d":
        kernel = _shape(value.args[1])
        kw = kernel[str(a.kernel_layout).index("W")]
    else:
        kw = int(a.pool_size[1])
    pad = [int(p) for p in a.padding]
    return (kw - 1) * int(a.dilation[1]) + 1, int(a.strides[1]), pad[1], pad[3]


def _window_cols(node: _Node, o0: int, o1: int) -> tuple[int, int, int, int]:
    """Input columns [c0, c1) and the (left, right) padding that compute output columns [o0, o1)."""
    k, s, pl, _ = _window_w(node.value)
    w_in = _width(node.args[0])
    u0, u1 = o0 * s - pl, (o1 - 1) * s - pl + k
    c0, c1 = max(u0, 0), min(u1, w_in)
    return c0, c1, c0 - u0, u1 - c1


def _width(var: Any) -> int:
    return _extent(var, 2)


def check_columns(stage: Stage, cut: Cut, cols: int) -> None:
    """Raise an error naming the node or limit that keeps the stage from running in `cols` column
    tiles: more tiles than the stage output has columns, a tensor without a column axis, a
    layout operator that moves the columns, a constant that varies along them."""
    _, relax = _tvm()
    width = cut.shape[2]
    if cols > width:
        raise EdgeCompileError(f"patches: {cols} column tiles, but the stage output {cut.name} "
                               f"{'x'.join(map(str, cut.shape[1:]))} has only {width} columns")
    for node in stage.nodes[:cut.index + 1]:
        v = node.value
        ty = node.var.ty
        tys = ty.fields if isinstance(ty, relax.TupleType) else [ty]
        if any(t.ndim != 4 for t in tys):
            raise EdgeCompileError(f"patches: column tiles need NHWC tensors; {node.var.name} has rank "
                                   f"{tys[0].ndim}")
        if node.kind == "layout":
            name, a = v.op.name, v.attrs
            rank = 4
            ok = (name == "relax.reshape" and _shape(node.args[0])[:3] == _shape(node.var)[:3]) or \
                 (name == "relax.permute_dims" and a.axes is not None and [int(x) for x in a.axes][:3] == [0, 1, 2]) or \
                 (name == "relax.strided_slice" and all(ax % rank == 3 for ax in _ints(v.args[1]))) or \
                 (name in ("relax.split", "relax.concat") and a.axis is not None and int(a.axis) % rank == 3)
            if not ok:
                raise EdgeCompileError(f"patches: {node.var.name} ({name}) moves the columns: no column tiles "
                                       f"across it")
        if node.kind in ("same", "tir"):
            args = v.args[1].fields if node.kind == "tir" else v.args
            for c in args:
                if _is_const(c):
                    cs = _shape(c)
                    if len(cs) >= 2 and cs[-2] != 1:
                        raise EdgeCompileError(f"patches: {node.var.name} has a constant that varies along the "
                                               f"columns: no column tiles across it")


def _needed_tiles(stage: Stage, cut: Cut, y0: int, y1: int, x0: int, x1: int
                  ) -> dict[Any, tuple[int, int, int, int]]:
    """Rows [r0, r1) and columns [c0, c1) of every stage tensor that tile [y0, y1) x [x0, x1) of
    the stage output needs."""
    needed: dict[Any, tuple[int, int, int, int]] = {stage.nodes[cut.index].var: (y0, y1, x0, x1)}
    for node in reversed(stage.nodes[:cut.index + 1]):
        if node.var not in needed:
            continue
        r0, r1, c0, c1 = needed[node.var]
        if node.kind == "window":
            req = (*_window_rows(node, r0, r1)[:2], *_window_cols(node, c0, c1)[:2])
        else:
            req = (r0, r1, c0, c1)
        for a in node.args:
            r = needed.get(a)
            needed[a] = req if r is None else (min(r[0], req[0]), max(r[1], req[1]), min(r[2], req[2]),
                                               max(r[3], req[3]))
    return needed


def tile_macs(stage: Stage, cut: Cut, rows: int, cols: int) -> int:
    """Multiply-accumulates of the stage computed in tiles of `rows` rows x `cols` column tiles,
    every halo (rows and columns) recomputed."""
    total = 0
    for y0, y1 in band_ranges(cut.shape[1], rows):
        for x0, x1 in column_ranges(cut.shape[2], cols):
            needed = _needed_tiles(stage, cut, y0, y1, x0, x1)
            for n in stage.nodes[:cut.index + 1]:
                if n.var in needed:
                    r0, r1, c0, c1 = needed[n.var]
                    total += _node_macs(n, r1 - r0) * (c1 - c0) // _width(n.var)
    return total


class _TileEmitter(_BandEmitter):
    """Emits one 2-D tile's bindings. A tile tensor is (expr, r0, r1, c0, c1); the stage input's
    rows are read through one full-width row view per band (shared by the band's tiles, so that a
    streamed input reads them once), its columns by a copy into a tile buffer."""

    def __init__(self, bb: Any, mod: Any) -> None:
        super().__init__(bb, mod)
        self.windows: dict[tuple, Any] = {}

    def window(self, tile: dict[Any, tuple], var: Any, r0: int, r1: int, c0: int, c1: int) -> Any:
        """Stage tensor `var` restricted to rows [r0, r1) and columns [c0, c1): the tile tensor, a
        row view of it, or a copy of its columns (`ec_tile_columns`)."""
        from tvm import topi

        expr, b0, b1, d0, d1 = tile[var]
        if not (b0 <= r0 < r1 <= b1 and d0 <= c0 < c1 <= d1):
            raise EdgeCompileError(f"patch tile: rows {r0}..{r1} x columns {c0}..{c1} of {var.name} are not "
                                   f"computed ({b0}..{b1} x {d0}..{d1})")
        if (r0, r1, c0, c1) == (b0, b1, d0, d1):
            return expr
        key = (var, r0, r1, c0, c1)
        if key in self.windows:              # (per tile: two readers of one window share it)
            return self.windows[key]
        if (r0, r1) != (b0, b1):
            expr = self.rows_of({var: (expr, b0, b1)}, var, r0, r1)
        if (c0, c1) != (d0, d1):
            shape = _shape(expr)
            expr = self.bb.emit_te(topi.strided_slice, expr, [0, 0, c0 - d0, 0],
                                   [shape[0], shape[1], c1 - d0, shape[3]], primfunc_name_hint="ec_tile_columns")
            _marked(self.bb, expr, {KEEP_CALL_ATTR: True})
        self.windows[key] = expr
        return expr

    def tile_node(self, node: _Node, tile: dict[Any, tuple], r0: int, r1: int, c0: int, c1: int) -> Any:
        _, relax = _tvm()
        v = node.value
        name = node.var.name
        if node.kind == "item":
            return self.bb.emit(relax.TupleGetItem(tile[node.args[0]][0], v.index), name)
        if node.kind == "window":
            a0, a1, pt, pb = _window_rows(node, r0, r1)
            e0, e1, pl, pr = _window_cols(node, c0, c1)
            return self.bb.emit(_window_call(v, self.window(tile, node.args[0], a0, a1, e0, e1), pt, pb, pl, pr), name)

        def arg(a: Any) -> Any:
            if isinstance(a, relax.Tuple):
                return relax.Tuple([arg(f) for f in a.fields])
            if isinstance(a, relax.Var):
                return self.window(tile, a, r0, r1, c0, c1)
            if isinstance(a, relax.ShapeExpr) and v.op.name == "relax.reshape":
                dims = [int(d) for d in a.values]
                return relax.ShapeExpr([dims[0], r1 - r0, c1 - c0, *dims[3:]])
            return a

        if node.kind == "tir":
            x = [self.window(tile, a, r0, r1, c0, c1) if isinstance(a, relax.Var) else a for a in v.args[1].fields]
            return self.bb.emit(self._reshaped_call(v, x, r1 - r0, c1 - c0), name)
        return self.bb.emit(relax.Call(v.op, [arg(a) for a in v.args], v.attrs, v.ty_args), name)


def _emit_tiles(bb: Any, emitter: _TileEmitter, stage: Stage, cut: Cut, rows: int, cols: int, x: Any) -> list[Any]:
    """The row bands of a 2-D tiled stage; returns each band's output: its column tiles put side by
    side by one copy (`ec_assemble_columns`) into the band's rows of the stage output."""
    from tvm import topi

    nodes = stage.nodes[:cut.index + 1]
    entry = (x, 0, _height(stage.entry), 0, _width(stage.entry))
    outs = []
    for y0, y1 in band_ranges(cut.shape[1], rows):
        tiles = []
        shared: dict[Any, tuple] = {stage.entry: entry}
        band_rows: dict[Any, tuple] = {}         # the band's input rows, read once
        for x0, x1 in column_ranges(cut.shape[2], cols):
            needed = _needed_tiles(stage, cut, y0, y1, x0, x1)
            if stage.entry in needed and stage.entry not in band_rows:
                r0, r1 = needed[stage.entry][:2]
                view = emitter.rows_of({stage.entry: (x, 0, _height(stage.entry))}, stage.entry, r0, r1)
                band_rows[stage.entry] = (view, r0, r1, 0, _width(stage.entry))
            emitter.windows = {}
            tile = {**shared, **band_rows}
            for node in nodes:
                if node.var in needed:
                    r0, r1, c0, c1 = tile[node.args[0]][1:] if node.kind == "item" else needed[node.var]
                    tile[node.var] = (emitter.tile_node(node, tile, r0, r1, c0, c1), r0, r1, c0, c1)
            tiles.append(tile[nodes[-1].var][0])
        band = bb.emit_te(topi.concatenate, tiles, 2, primfunc_name_hint="ec_assemble_columns")
        _marked(bb, band, {KEEP_CALL_ATTR: True})
        outs.append(band)
    return outs
