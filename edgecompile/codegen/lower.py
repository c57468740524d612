"""Scheduled TIR kernels -> plain C functions, and the C symbol each kernel gets.

Kernels go through TVM's own lowering passes and C code generator, with one change: a TIR
pipeline of ours (`ec_unpacked`) replaces `MakePackedAPI`. Each kernel becomes

    static int32_t ec_<kind>_...(float *restrict in, const-data weights..., float *restrict out,
                                  float *restrict scratch0, ...)

with plain pointer arguments: no DLTensor, no packed FFI, no TVM runtime. Intermediate buffers a
kernel needs beyond a small stack allowance are turned into extra `scratch` pointer parameters that
the memory planner places inside the arena, so nothing is ever allocated at run time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EdgeCompileError
from ..ir.kernel import KernelInfo
from ..ir.program import DTYPE_BYTES, Tensor
from ..schedules.tiling import (BORDER_FILL_ATTR, EPILOGUE_ATTR, KERNEL_ROWS_ATTR, WIDEN_PRAGMA, ZERO_START_ATTR,
                                map_children)
from .mathlib import LIBM_REPLACEMENTS

# Intermediate buffers below this size stay on the stack (register tiles, small row buffers);
# larger ones become arena scratch.
STACK_ALLOC_LIMIT = 1024
PIPELINE_NAME = "ec_unpacked"


@dataclass
class KernelSource:
    symbol: str
    params: list[tuple[str, str]]     # (C type, name) in call order, scratch last
    scratch_bytes: list[int]
    stack_bytes: int                  # bytes of intermediate buffers left on the stack
    c_code: str                       # the function definition


# ----------------------------------------------------------------------------- TIR pipeline


def _rebuild_stmt(stmt: Any, leaf: Any) -> Any:
    """Post-order rebuild of TIR container statements, mapping leaf statements through `leaf`."""
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_rebuild_stmt(s, leaf) for s in stmt.seq])
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, _rebuild_stmt(stmt.body, leaf),
                        stmt.thread_binding, stmt.annotations, stmt.step)
    if isinstance(stmt, tirx.IfThenElse):
        else_case = None if stmt.else_case is None else _rebuild_stmt(stmt.else_case, leaf)
        return tirx.IfThenElse(stmt.condition, _rebuild_stmt(stmt.then_case, leaf), else_case)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, _rebuild_stmt(stmt.body, leaf))
    if isinstance(stmt, tirx.While):
        return tirx.While(stmt.condition, _rebuild_stmt(stmt.body, leaf))
    return leaf(stmt)


def _buffer_elems(buf: Any) -> int:
    n = 1
    for d in buf.shape:
        n *= int(d)
    return n


def unpack_kernel(func: Any) -> Any:
    """Buffer parameters -> plain pointers; large allocations -> extra scratch pointer params
    (from `ec.stack_limit` bytes, a function attribute; STACK_ALLOC_LIMIT without it)."""
    import tvm
    from tvm import tirx
    from tvm.ir import PointerType, PrimType

    params, decls = [], []
    for p in func.params:
        if not tirx.is_buffer_var(p):
            raise EdgeCompileError(f"kernel parameter {p.name} is not a buffer")
        ptr = tirx.Var(p.name, PointerType(p.ty.dtype))
        params.append(ptr)
        decls.append(tirx.DeclBuffer(p, data=ptr))
    scratch: list[tuple[Any, int]] = []
    stack = [0]
    limit = int(func.attrs["ec.stack_limit"]) if func.attrs is not None and "ec.stack_limit" in func.attrs \
        else STACK_ALLOC_LIMIT

    def hoist(stmt: Any) -> Any:
        if isinstance(stmt, tirx.AllocBuffer):
            buf = stmt.buffer
            nbytes = _buffer_elems(buf) * DTYPE_BYTES.get(str(buf.ty.dtype), 4)
            if str(buf.ty.storage_scope) in ("global", "") and nbytes >= limit:
                ptr = tirx.Var(f"scratch{len(scratch)}", PointerType(buf.ty.dtype))
                scratch.append((ptr, nbytes))
                return tirx.DeclBuffer(buf, data=ptr)
            stack[0] += nbytes
        return stmt

    body = _rebuild_stmt(func.body, hoist)
    body = tirx.SeqStmt(decls + [body, tirx.Return(tirx.const(0, "int32"))])
    # LowerTVMBuiltin wants a device context for the small stack allocations left.
    body = tirx.AttrStmt(tvm.runtime.convert("default"), "device_id", tirx.const(0, "int32"), body)
    body = tirx.AttrStmt(tvm.runtime.convert("default"), "device_type", tirx.const(1, "int32"), body)
    new = tirx.PrimFunc(params + [p for p, _ in scratch], body, ret_type=PrimType("int32"), attrs=func.attrs)
    new = new.with_attr("ec.scratch_bytes", [n for _, n in scratch])
    return new.with_attr("ec.stack_bytes", stack[0])




def _uses(expr: Any, var: Any) -> bool:
    """Whether `expr` reads `var`."""
    import tvm

    if expr.same_as(var):
        return True
    for attr in ("a", "b", "value", "condition", "true_value", "false_value"):
        sub = getattr(expr, attr, None)
        if isinstance(sub, tvm.ir.expr.Expr) and _uses(sub, var):
            return True
    return any(_uses(sub, var) for attr in ("indices", "args") for sub in (getattr(expr, attr, None) or []))


def _widen_call(loop: Any, zp: int) -> Any | None:
    """The `ec_widen_s8s16` call replacing a row loop nest `for i: for j: [if c:] O[o + i*ldo + j] =
    (int16)X[x + i*ldx + j] - zp` (c independent of i and j), else None (left as it is)."""
    from tvm import sym, tirx

    inner = loop.body
    if not isinstance(inner, tirx.For):
        return None
    body, cond = inner.body, None
    if isinstance(body, tirx.IfThenElse) and body.else_case is None:
        body, cond = body.then_case, body.condition
    value = getattr(body, "value", None)
    if not (hasattr(body, "buffer") and isinstance(value, tirx.Sub) and isinstance(value.a, tirx.Cast)
            and hasattr(value.a.value, "indices") and len(body.indices) == 1 and len(value.a.value.indices) == 1):
        return None
    i, j = loop.loop_var, inner.loop_var
    if cond is not None and (_uses(cond, i) or _uses(cond, j)):
        return None
    if not all(isinstance(lp.min, tirx.IntImm) and int(lp.min.value) == 0 for lp in (loop, inner)):
        return None

    def linear(expr: Any) -> tuple[Any, int] | None:
        """(base, row stride) of an index base + i * ld + j."""
        coeffs = sym.detect_linear_equation(expr, [i, j])
        if len(coeffs) != 3 or not all(isinstance(c, tirx.IntImm) for c in coeffs[:2]) or int(coeffs[1].value) != 1:
            return None
        return coeffs[2], int(coeffs[0].value)

    load = value.a.value
    o, x = linear(body.indices[0]), linear(load.indices[0])
    if o is None or x is None or _uses(o[0], i) or _uses(o[0], j) or _uses(x[0], i) or _uses(x[0], j):
        return None
    call = tirx.Evaluate(tirx.call_extern(
        "int32", "ec_widen_s8s16", tirx.address_of(tirx.BufferLoad(body.buffer, [o[0]])),
        tirx.address_of(tirx.BufferLoad(load.source, [x[0]])), tirx.const(int(loop.extent), "int32"),
        tirx.const(int(inner.extent), "int32"), tirx.const(o[1], "int64"), tirx.const(x[1], "int64"),
        tirx.const(zp, "int32")))
    return call if cond is None else tirx.IfThenElse(cond, call, None)


def widen_rows(func: Any) -> Any:
    """Replace each loop nest marked WIDEN_PRAGMA (the zero-point-shifted copy of a padded window's
    in-bound rows, schedules.tiling.mark_widen_rows) by one `ec_widen_s8s16` call."""
    from tvm import tirx

    def walk(stmt: Any) -> Any:
        if isinstance(stmt, tirx.AttrStmt) and str(stmt.attr_key) == WIDEN_PRAGMA and isinstance(stmt.body, tirx.For):
            call = _widen_call(stmt.body, int(stmt.value))
            return call if call is not None else stmt.body
        return map_children(stmt, walk)

    return func.with_body(walk(func.body))


_BINARY = ("Add", "Sub", "Mul", "FloorDiv", "FloorMod", "Min", "Max", "LT", "LE", "GT", "GE", "EQ", "NE", "And", "Or")


def _rename(expr: Any, old: Any, new: Any) -> Any | None:
    """`expr` with the variable `old` replaced by `new`, over the integer arithmetic and comparisons
    of a padded window's bound check; None for any other node."""
    from tvm import tirx

    if expr.same_as(old):
        return new
    if isinstance(expr, (tirx.IntImm, tirx.Var)):
        return expr
    for name in _BINARY:
        if isinstance(expr, getattr(tirx, name)):
            a, b = _rename(expr.a, old, new), _rename(expr.b, old, new)
            return None if a is None or b is None else getattr(tirx, name)(a, b)
    if isinstance(expr, tirx.Not):
        a = _rename(expr.a, old, new)
        return None if a is None else tirx.Not(a)
    if isinstance(expr, tirx.Cast):
        a = _rename(expr.value, old, new)
        return None if a is None else tirx.Cast(str(expr.ty), a)
    return None


def _nest(stmt: Any, depth: int) -> tuple[list[Any], Any] | None:
    """The `depth` serial loops from 0 directly nested at `stmt` and the statement inside them."""
    from tvm import tirx

    loops = []
    for _ in range(depth):
        if not (isinstance(stmt, tirx.For) and isinstance(stmt.min, tirx.IntImm) and int(stmt.min.value) == 0
                and isinstance(stmt.extent, tirx.IntImm) and stmt.kind == tirx.ForKind.SERIAL):
            return None
        loops.append(stmt)
        stmt = stmt.body
    return loops, stmt


def _strides(index: Any, loops: list[Any]) -> list[int] | None:
    """[coefficient of each loop variable..., constant] of an index linear in the loops' variables."""
    from tvm import sym, tirx

    coeffs = sym.detect_linear_equation(index, [lp.loop_var for lp in loops])
    if len(coeffs) != len(loops) + 1 or not all(isinstance(c, tirx.IntImm) for c in coeffs):
        return None
    return [int(c.value) for c in coeffs]


def _border_fill(fill: Any, copy: Any) -> Any | None:
    """A padded window's zero fill `fill` (rows x columns x channels, every value) that the next
    statement `copy` overwrites where the window is in bounds (per row: `if in_bounds(row)`, the
    row's columns c0 .. c0 + W - 1, all channels), rewritten to write only what the copy does not:
    per row, all its columns where the row is out of bounds, else the columns left and right of
    the copied ones. None when the two statements are not that pattern."""
    from tvm import tirx

    f = _nest(fill, 3)
    if f is None:
        return None
    (r, wp, ch), store = f
    if not (isinstance(store, tirx.BufferStore) and isinstance(store.value, tirx.FloatImm)
            and float(store.value.value) == 0.0 and str(store.value.ty) == "float32" and len(store.indices) == 1):
        return None
    fs = _strides(store.indices[0], [r, wp, ch])
    if fs is None or fs[2] != 1 or fs[3] != 0 or fs[1] != int(ch.extent) or fs[0] != int(wp.extent) * fs[1]:
        return None
    c = _nest(copy, 1)
    if c is None or int(c[0][0].extent) != int(r.extent):
        return None
    row, body = c[0][0], c[1]
    cond = None
    if isinstance(body, tirx.IfThenElse):
        if body.else_case is not None:
            return None
        cond, body = _rename(body.condition, row.loop_var, r.loop_var), body.then_case
        if cond is None:
            return None
    inner = _nest(body, 2)
    if inner is None:
        return None
    (col, chan), cstore = inner
    if not (isinstance(cstore, tirx.BufferStore) and cstore.buffer.same_as(store.buffer) and len(cstore.indices) == 1):
        return None
    cs = _strides(cstore.indices[0], [row, col, chan])
    if cs is None or cs[:3] != fs[:3] or int(chan.extent) != int(ch.extent) or cs[3] % fs[1]:
        return None
    c0, w = cs[3] // fs[1], int(col.extent)
    if c0 < 0 or c0 + w > int(wp.extent):
        return None

    def columns(first: int, count: int) -> Any:
        x, k = tirx.Var(wp.loop_var.name, wp.loop_var.ty), tirx.Var(ch.loop_var.name, ch.loop_var.ty)
        index = r.loop_var * fs[0] + (x + first) * fs[1] + k
        return tirx.For(x, 0, count, tirx.ForKind.SERIAL,
                        tirx.For(k, 0, ch.extent, tirx.ForKind.SERIAL, tirx.BufferStore(store.buffer, store.value, [index])))

    sides = [columns(a, n) for a, n in ((0, c0), (c0 + w, int(wp.extent) - c0 - w)) if n > 0]
    border = (tirx.SeqStmt(sides) if len(sides) > 1 else sides[0]) if sides else tirx.Evaluate(0)
    per_row = border if cond is None else tirx.IfThenElse(cond, border, columns(0, int(wp.extent)))
    return tirx.For(r.loop_var, 0, r.extent, tirx.ForKind.SERIAL, per_row)


def border_fills(func: Any) -> Any:
    """In a kernel marked BORDER_FILL_ATTR, every padded window's zero fill followed by its
    in-bound copy (`_border_fill`) writes only the border: the fill of the whole window (a
    `memset` per row tile) wrote every value the copy then wrote again."""
    from tvm import tirx

    if func.attrs is None or BORDER_FILL_ATTR not in func.attrs:
        return func

    def walk(stmt: Any) -> Any:
        if isinstance(stmt, tirx.SeqStmt):
            seq = [walk(s) for s in stmt.seq]
            for i in range(len(seq) - 1):
                new = _border_fill(seq[i], seq[i + 1])
                if new is not None:
                    seq[i] = new
            return tirx.SeqStmt(seq)
        return map_children(stmt, walk)

    return func.with_body(walk(func.body))


_GEMM_SYMBOL_RE = re.compile(r"ec_gemm_f32_(\d+)x(\d+)(_p\d+)?")


def _zero_fill(stmt: Any) -> tuple[Any, int] | None:
    """(buffer, values) of a loop nest (up to 3 serial loops) that sets values 0 .. n - 1 of a float
    buffer to 0, each once; None for anything else."""
    from tvm import tirx

    for depth in (1, 2, 3):
        nest = _nest(stmt, depth)
        if nest is None:
            return None
        loops, store = nest
        if isinstance(store, tirx.For):
            continue
        if not (isinstance(store, tirx.BufferStore) and isinstance(store.value, tirx.FloatImm)
                and float(store.value.value) == 0.0 and str(store.value.ty) == "float32" and len(store.indices) == 1):
            return None
        strides = _strides(store.indices[0], loops)
        if strides is None or strides[-1] != 0:
            return None
        span = 1
        for stride, lp in sorted(zip(strides[:-1], loops), key=lambda t: t[0]):
            if stride != span:
                return None
            span *= int(lp.extent)
        return store.buffer, span
    return None


def _data_of(expr: Any, buf: Any) -> bool:
    """Whether `expr` is `buf`'s data pointer (TVM 0.27: a `buffer_data` call on the buffer)."""
    import tvm

    return (isinstance(expr, tvm.ir.Call) and expr.op.name == "tirx.buffer_data" and len(expr.args) == 1
            and expr.args[0].same_as(buf))


def _zero_start_call(fill: Any, call: Any) -> Any | None:
    """`call` (an `ec_gemm_f32_MxN` or `_pP` micro-kernel call) as the `_z` kernel's call when
    `fill` zeroes exactly its M x N tile, a contiguous buffer (ldc == N) starting at the tile;
    None otherwise."""
    import tvm
    from tvm import tirx

    zero = _zero_fill(fill)
    if zero is None or not isinstance(call, tirx.Evaluate) or not isinstance(call.value, tvm.ir.Call):
        return None
    op = call.value
    if op.op.name != "tirx.call_extern" or len(op.args) != 8 or not isinstance(op.args[0], tvm.ir.StringImm):
        return None
    m = _GEMM_SYMBOL_RE.fullmatch(op.args[0].value)
    buf, values = zero
    if m is None or values != int(m.group(1)) * int(m.group(2)):
        return None
    ldc, ptr = op.args[7], op.args[1]
    if not (isinstance(ldc, tirx.IntImm) and int(ldc.value) == int(m.group(2))):
        return None
    # C: tvm_access_ptr(type, data, offset, extent, rw) of the zeroed buffer at offset 0
    if not (isinstance(ptr, tvm.ir.Call) and ptr.op.name == "tirx.tvm_access_ptr" and _data_of(ptr.args[1], buf)
            and isinstance(ptr.args[2], tirx.IntImm) and int(ptr.args[2].value) == 0):
        return None
    return tirx.Evaluate(tirx.call_extern(str(op.ty), op.args[0].value + "_z", *op.args[1:]))


def _kernel_rows_call(fill: Any, loop: Any) -> Any | None:
    """The call of `ec_gemm_f32_MxN[_pP]_rR_z` (C = the sum over R kernel rows of A_r B_r) that
    replaces the zeroing `fill` of a tile and the loop `loop` of R calls of its += kernel, one per
    kernel row (a KxK convolution's one-row window tiles), each row's A and B at a constant
    distance from the previous row's: (C, A_0, B_0, K, lda, ldb, A row stride, B row stride, ldc).
    None for anything else."""
    import tvm
    from tvm import tirx

    if not (isinstance(loop, tirx.For) and isinstance(loop.min, tirx.IntImm) and int(loop.min.value) == 0
            and isinstance(loop.extent, tirx.IntImm) and int(loop.extent.value) > 1
            and loop.kind == tirx.ForKind.SERIAL and isinstance(loop.body, tirx.Evaluate)):
        return None
    z = _zero_start_call(fill, loop.body)
    if z is None:
        return None
    op, var = loop.body.value, loop.loop_var
    strides, ptrs = [], []
    for ptr in op.args[2:4]:                    # A and B: tvm_access_ptr(type, data, offset, extent, rw)
        if not (isinstance(ptr, tvm.ir.Call) and ptr.op.name == "tirx.tvm_access_ptr"):
            return None
        lin = _linear(ptr.args[2], [loop])
        if lin is None or any(_uses(a, var) for i, a in enumerate(ptr.args) if i != 2):
            return None
        strides.append(tirx.IntImm("int64", lin[0][0]))
        ptrs.append(tirx.call_intrin(ptr.ty, "tirx.tvm_access_ptr", ptr.args[0], ptr.args[1], lin[1], *ptr.args[3:]))
    if _uses(op.args[1], var) or any(_uses(a, var) for a in op.args[4:]):
        return None
    name = f"{op.args[0].value}_r{int(loop.extent.value)}_z"
    return tirx.Evaluate(tirx.call_extern(str(op.ty), name, op.args[1], *ptrs, *op.args[4:7], *strides, op.args[7]))


def zero_start_gemms(func: Any) -> Any:
    """In a kernel marked ZERO_START_ATTR, a float GEMM tile's zeroing followed by its micro-kernel
    call (C += A B) becomes one call of the family's zero-start kernel (`ec_gemm_f32_MxN_z`,
    C = A B): the kernel starts its accumulators itself instead of loading the zeros stored
    just before. Marked KERNEL_ROWS_ATTR too, a zeroing followed by a loop of one such call per
    kernel row becomes one call of `ec_gemm_f32_MxN_rR_z` (`_kernel_rows_call`): the accumulators
    stay in registers across the rows. Each sum adds the same products in the same order: the
    same bits."""
    if func.attrs is None or ZERO_START_ATTR not in func.attrs:
        return func
    rows = KERNEL_ROWS_ATTR in func.attrs

    def step(seq: list[Any], i: int) -> tuple[Any, int] | None:
        if i + 1 >= len(seq):
            return None
        new = _zero_start_call(seq[i], seq[i + 1]) or (_kernel_rows_call(seq[i], seq[i + 1]) if rows else None)
        return None if new is None else (new, 2)

    return _rewrite_sequences(func, step)


def _rewrite_sequences(func: Any, step: Any) -> Any:
    """`func` with every statement sequence rewritten by `step(seq, i)`: (the statement that
    replaces seq[i:i + k], k), or None to keep seq[i]; inner sequences first."""
    from tvm import tirx

    def walk(stmt: Any) -> Any:
        if isinstance(stmt, tirx.SeqStmt):
            seq, out, i = [walk(s) for s in stmt.seq], [], 0
            while i < len(seq):
                done = step(seq, i)
                if done is None:
                    out.append(seq[i])
                    i += 1
                else:
                    out.append(done[0])
                    i += done[1]
            return out[0] if len(out) == 1 else tirx.SeqStmt(out)
        return map_children(stmt, walk)

    return func.with_body(walk(func.body))


_GEMM_Z_SYMBOL_RE = re.compile(r"ec_gemm_f32_(\d+)x(\d+)(_p\d+)?(_r\d+)?_z")


def _linear(index: Any, loops: list[Any]) -> tuple[list[int], Any] | None:
    """([constant coefficient of each loop variable], the rest: an expression free of them) of an
    index linear in the loops' variables; None otherwise."""
    from tvm import sym, tirx

    coeffs = sym.detect_linear_equation(index, [lp.loop_var for lp in loops])
    if len(coeffs) != len(loops) + 1 or not all(isinstance(c, tirx.IntImm) for c in coeffs[:-1]):
        return None
    return [int(c.value) for c in coeffs[:-1]], sym.Analyzer().simplify(coeffs[-1])


def _epilogue_tree(value: Any, tile: Any, i: Any, j: Any, n: int, found: list) -> tuple | None:
    """The epilogue code's tree (schedules/epilogues.py) of a value computed from the tile `tile`
    (read at i * n + j) and other buffers (at base + j, or base + i * stride + j), recording each
    other buffer's read in `found` as (buffer, base, stride or 0); None for any other expression."""
    import tvm
    from tvm import tirx

    from ..schedules import epilogues

    if str(value.ty) != "float32":
        return None
    ops = {tirx.Add: "A", tirx.Max: "X", tirx.Min: "N"}
    for cls, code in ops.items():
        if isinstance(value, cls):
            a = _epilogue_tree(value.a, tile, i, j, n, found)
            b = _epilogue_tree(value.b, tile, i, j, n, found) if a is not None else None
            return None if b is None else (code, a, b)
    if isinstance(value, tirx.FloatImm):
        return epilogues.constant(float(value.value))
    if isinstance(value, tvm.ir.expr.TensorLoad) and len(value.indices) == 1:
        loops = [lp for lp in (i, j) if lp is not None]
        lin = _linear(value.indices[0], loops)
        if lin is None:
            return None
        coeffs, base = lin
        ci, cj = (coeffs[0], coeffs[1]) if i is not None else (0, coeffs[0])
        if value.source.same_as(tile):
            ok = cj == 1 and (ci == n or i is None) and isinstance(base, tirx.IntImm) and int(base.value) == 0
            return ("a",) if ok else None
        if cj != 1:
            return None
        for k, (buf, b, stride) in enumerate(found):
            if buf.same_as(value.source) and stride == ci and tvm.ir.structural_equal(b, base):
                return ("r" if ci else "b", k)
        found.append((value.source, base, ci))
        return ("r" if ci else "b", len(found) - 1)
    return None


def _reads_tile(tree: tuple) -> bool:
    return tree[0] == "a" or (len(tree) == 3 and (_reads_tile(tree[1]) or _reads_tile(tree[2])))


_CHILD_FIELDS = ("seq", "body", "then_case", "else_case", "value", "a", "b", "indices", "args", "condition",
                 "true_value", "false_value", "min", "extent")


def _nodes(node: Any) -> Any:
    """Every statement and expression under `node` (itself first), over the fields of the TIR
    nodes a lowered kernel holds."""
    yield node
    for field in _CHILD_FIELDS:
        child = getattr(node, field, None)
        if child is None or isinstance(child, (str, int, float)):
            continue
        if isinstance(child, (list, tuple, Sequence)):     # lists and TVM arrays (sequences, arguments)
            for c in child:
                yield from _nodes(c)
        elif hasattr(child, "same_as"):
            yield from _nodes(child)


def _uses_buffer(stmts: list[Any], buf: Any) -> bool:
    import tvm
    from tvm import tirx

    for st in stmts:
        for node in _nodes(st):
            if isinstance(node, tvm.ir.expr.TensorLoad) and node.source.data.same_as(buf.data):
                return True
            if isinstance(node, tirx.BufferStore) and node.buffer.data.same_as(buf.data):
                return True
            if isinstance(node, tirx.Var) and node.same_as(buf.data):
                return True
    return False


_DW_SYMBOL_RE = re.compile(r"ec_dw_f32_(\d+)x(\d+)_k\d+x\d+s\d+(_p\d+)?")


def _fused_epilogue_call(call: Any, epi: Any, after: list[Any], fill: Any = None,
                         tiles: list[Any] | None = None) -> Any | None:
    """The call of `ec_gemm_f32_MxN[_pP]_z_e<code>` that replaces a zero-start GEMM tile's call
    `call` (C = A B into a tile buffer, ldc == N) and the epilogue loop nest `epi` after it (M x N,
    or N for one pixel: out[base + i * ldo + j] = f(tile[i * N + j], ...)), when nothing in
    `after` (the statements that follow) reads the tile; None otherwise. With `fill`, the zeroing
    of the tile before `call`, a depthwise window's += call (`ec_dw_f32_MxN_kKHxKWsS[_pP]`) and
    its epilogue: `ec_dw_f32_MxN_kKHxKWsS[_pP]_z_e<code>`."""
    import tvm
    from tvm import tirx

    from ..schedules import epilogues

    if not isinstance(call, tirx.Evaluate) or not isinstance(call.value, tvm.ir.Call):
        return None
    op = call.value
    nargs, pattern = (9, _DW_SYMBOL_RE) if fill is not None else (8, _GEMM_Z_SYMBOL_RE)
    if op.op.name != "tirx.call_extern" or not isinstance(op.args[0], tvm.ir.StringImm):
        return None
    sym_m = pattern.fullmatch(op.args[0].value)
    if sym_m is None:
        return None
    if fill is None and sym_m.group(4):      # a kernel-rows tile: its two row strides before ldc
        nargs = 10
    if len(op.args) != nargs:
        return None
    m, n = int(sym_m.group(1)), int(sym_m.group(2))
    ldc, ptr = op.args[nargs - 1], op.args[1]
    if fill is not None:
        zero = _zero_fill(fill)
        if zero is None or zero[1] != m * n or not (isinstance(ptr, tvm.ir.Call) and _data_of(ptr.args[1], zero[0])):
            return None
    if not (isinstance(ldc, tirx.IntImm) and int(ldc.value) == n and isinstance(ptr, tvm.ir.Call)
            and ptr.op.name == "tirx.tvm_access_ptr" and isinstance(ptr.args[2], tirx.IntImm) and int(ptr.args[2].value) == 0):
        return None
    nest = _nest(epi, 2) if m > 1 else _nest(epi, 1)
    if nest is None:
        return None
    loops, store = nest
    i, j = (loops[0], loops[1]) if m > 1 else (None, loops[0])
    if (i is not None and int(i.extent) != m) or int(j.extent) != n:
        return None
    if not isinstance(store, tirx.BufferStore) or len(store.indices) != 1 or str(store.value.ty) != "float32":
        return None
    data = ptr.args[1]
    tile = next((node.source for node in _nodes(store.value)
                 if isinstance(node, tvm.ir.expr.TensorLoad) and _data_of(data, node.source)), None)
    if tile is None or store.buffer.data.same_as(tile.data) or _uses_buffer(after, tile):
        return None
    found: list = []
    tree = _epilogue_tree(store.value, tile, i, j, n, found)
    out = _linear(store.indices[0], [lp for lp in (i, j) if lp is not None])
    if tree is None or out is None or not _reads_tile(tree):
        return None
    coeffs, obase = out
    if coeffs[-1] != 1 or any(buf.data.same_as(store.buffer.data) and stride == 0 for buf, _, stride in found):
        return None
    ldo = coeffs[0] if m > 1 else n
    code = epilogues.encode(tree)
    name = f"{op.args[0].value}_z_e{code}" if fill is not None else f"{op.args[0].value}_e{code}"

    def address(buf: Any, base: Any) -> Any:
        return tirx.address_of(tirx.BufferLoad(buf, [base]))
    args = [address(store.buffer, obase), *op.args[2:nargs - 1], tirx.IntImm("int64", ldo)]
    for buf, base, stride in found:
        args.append(address(buf, base))
        if stride:
            args.append(tirx.IntImm("int64", stride))
    if tiles is not None:
        tiles.append(tile)         # its allocation goes (`_drop_allocations`)
    return tirx.Evaluate(tirx.call_extern(str(op.ty), name, *args))


def fuse_epilogues(func: Any) -> Any:
    """In a kernel marked EPILOGUE_ATTR, a zero-start float GEMM tile's call followed by the
    epilogue loop over its tile becomes one call of the fused kernel (schedules/epilogues.py)
    that applies the epilogue to its accumulators and stores them in the output; so does a
    depthwise window's tile, zeroed, summed and then given its epilogue."""
    if func.attrs is None or EPILOGUE_ATTR not in func.attrs:
        return func

    tiles: list[Any] = []

    def step(seq: list[Any], i: int) -> tuple[Any, int] | None:
        new = _fused_epilogue_call(seq[i], seq[i + 1], seq[i + 2:], tiles=tiles) if i + 1 < len(seq) else None
        if new is not None:
            return new, 2
        if i + 2 < len(seq):       # a depthwise window: fill, call, epilogue
            new = _fused_epilogue_call(seq[i + 1], seq[i + 2], seq[i + 3:], fill=seq[i], tiles=tiles)
        return None if new is None else (new, 3)

    return _drop_allocations(_rewrite_sequences(func, step), tiles)


def _drop_allocations(func: Any, buffers: list[Any]) -> Any:
    """`func` without the allocations of `buffers` (the tiles of fused epilogues, which nothing
    reads or writes any more: an unused stack array is a -Wunused-variable, an unused large one
    arena scratch)."""
    import tvm
    from tvm import tirx

    # the flattened tile the loads named is another Buffer of the allocation's name: matched by
    # name, and only where nothing left reads or writes a buffer of that name
    names = {b.name for b in buffers}
    for node in _nodes(func.body):
        if isinstance(node, tvm.ir.expr.TensorLoad):
            names.discard(node.source.name)
        elif isinstance(node, tirx.BufferStore):
            names.discard(node.buffer.name)
        elif (isinstance(node, tvm.ir.Call) and getattr(node.op, "name", None) == "tirx.buffer_data"
              and len(node.args) == 1):
            names.discard(node.args[0].name)

    def dropped(stmt: Any) -> bool:
        return isinstance(stmt, tirx.AllocBuffer) and stmt.buffer.name in names

    def walk(stmt: Any) -> Any:
        if isinstance(stmt, tirx.SeqStmt):
            kept = [walk(s) for s in stmt.seq if not dropped(s)]
            return kept[0] if len(kept) == 1 else tirx.SeqStmt(kept) if kept else tirx.Evaluate(0)
        return map_children(stmt, walk)

    return func.with_body(walk(func.body)) if buffers else func


def _register_pipeline() -> None:
    import tvm
    from tvm import s_tir, tirx
    from tvm.tirx import compilation_pipeline as cp

    if PIPELINE_NAME in cp.PIPELINE_MAP:
        return

    # intrinsics TVM lowers for LLVM only: the C library's functions for the C target
    def libm(name: str) -> Any:
        def lower(op: Any) -> Any:
            dtype = str(op.ty)
            return tirx.call_pure_extern(dtype, name + ("f" if dtype == "float32" else ""), *op.args)
        return lower

    for op_name, fn in (("tirx.fabs", "fabs"),):
        tirx.op.register_intrin_lowering(op_name, "default", f=libm(fn), level=99)

    def exp(op: Any) -> Any:      # float32: our vectorizable ec_expf (codegen/mathlib.py)
        dtype = str(op.ty)
        return tirx.call_pure_extern(dtype, LIBM_REPLACEMENTS["expf"][0] if dtype == "float32" else "exp", *op.args)

    tirx.op.register_intrin_lowering("tirx.exp", "c", f=exp, level=99)

    @tvm.transform.module_pass(opt_level=0, name="ECWidenRows")
    def widen(mod: Any, _ctx: Any) -> Any:
        return tvm.IRModule({gv: widen_rows(f) for gv, f in mod.functions.items()}, attrs=mod.attrs)

    @tvm.transform.module_pass(opt_level=0, name="ECBorderFills")
    def borders(mod: Any, _ctx: Any) -> Any:
        return tvm.IRModule({gv: border_fills(f) for gv, f in mod.functions.items()}, attrs=mod.attrs)

    @tvm.transform.module_pass(opt_level=0, name="ECZeroStartGemms")
    def zero_start(mod: Any, _ctx: Any) -> Any:
        return tvm.IRModule({gv: zero_start_gemms(f) for gv, f in mod.functions.items()}, attrs=mod.attrs)

    @tvm.transform.module_pass(opt_level=0, name="ECFuseEpilogues")
    def fuse(mod: Any, _ctx: Any) -> Any:
        return tvm.IRModule({gv: fuse_epilogues(f) for gv, f in mod.functions.items()}, attrs=mod.attrs)

    @tvm.transform.module_pass(opt_level=0, name="ECUnpackKernels")
    def unpack(mod: Any, _ctx: Any) -> Any:
        return tvm.IRModule({gv: unpack_kernel(f) for gv, f in mod.functions.items()}, attrs=mod.attrs)

    def factory() -> Any:
        @tvm.transform.module_pass(opt_level=0, name="ECLowerKernels")
        def lower(mod: Any, _ctx: Any) -> Any:
            passes = [
                s_tir.transform.CanonicalizeLoop(),
                s_tir.transform.LowerInitBlock(),
                s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
                s_tir.transform.ConvertBlocksToOpaque(),
                s_tir.transform.CompactBufferAllocation(),
                s_tir.transform.LowerMatchBuffer(),
                s_tir.transform.StmtSimplify(),
                s_tir.transform.LowerOpaqueBlock(),
                tirx.transform.FlattenBuffer(),
                widen,
                tirx.transform.NarrowDataType(32),
                s_tir.transform.LoopPartition(),
                tirx.transform.VectorizeLoop(True),
                s_tir.transform.HoistIfThenElse(),
                tirx.transform.UnrollLoop(),
                s_tir.transform.RenormalizeSplitPattern(),
                tirx.transform.StmtSimplify(),
                tirx.transform.RemoveNoOp(),
                s_tir.transform.RewriteUnsafeSelect(),
                borders,
                zero_start,
                fuse,
                tirx.transform.CommonSubexprElim(),
                tirx.transform.VerifyMemory(),
                unpack,
            ]
            return tvm.transform.Sequential(passes)(mod)

        return lower, cp.finalize_host_passes, cp.finalize_device_passes

    cp.register_tir_pipeline(PIPELINE_NAME, factory)


def _with_attrs(func: Any, attrs: dict[str, Any]) -> Any:
    for k, v in attrs.items():
        func = func.with_attr(k, v)
    return func


_PREAMBLE_LINES = re.compile(
    r'^(#define TVM_EXPORTS|#include "tvm/.*"|#include "dlpack/.*"|void\* __tvm_ffi__library_ctx = NULL;'
    r"|// tvm target:.*|#ifdef __cplusplus|extern \"C\"|#endif)\s*$"
)


def lower_kernels(funcs: dict[str, Any], target_dict: dict[str, Any],
                  streaming: set[str] = frozenset(),
                  stack_limit: int | dict[str, int] = STACK_ALLOC_LIMIT) -> dict[str, KernelSource]:
    """Lower scheduled PrimFuncs (symbol -> PrimFunc) to C function definitions. Kernels in
    `streaming` may run in place (output overlapping their first input): those two pointers are
    not declared `restrict`. Intermediate buffers of `stack_limit` bytes or more become arena
    scratch, smaller ones stay on the stack (`stack_limit`: one for all, or per symbol)."""
    import tvm
    from tvm import tirx

    _register_pipeline()
    def attrs(sym: str) -> dict[str, Any]:
        limit = stack_limit.get(sym, STACK_ALLOC_LIMIT) if isinstance(stack_limit, dict) else stack_limit
        return {"global_symbol": sym, **({} if limit == STACK_ALLOC_LIMIT else {"ec.stack_limit": limit})}

    mod = tvm.IRModule({sym: _with_attrs(f, attrs(sym)) for sym, f in sorted(funcs.items())})
    target = tvm.target.Target(target_dict if target_dict.get("kind") == "c" else {"kind": "c"})
    mod = tirx.transform.BindTarget(target.with_host(target))(mod)
    pipeline, finalize_host, _ = tirx.get_tir_pipeline(PIPELINE_NAME)
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        lowered = finalize_host()(pipeline(mod))
        source = tvm.get_global_func("target.build.c")(lowered, target).inspect_source()
    infos = {}
    for gv, f in lowered.functions.items():
        sym = gv.name_hint
        infos[sym] = ([int(n) for n in f.attrs["ec.scratch_bytes"]], int(f.attrs["ec.stack_bytes"]))
    return _split_c_source(source, infos, streaming)


def _split_c_source(source: str, infos: dict[str, tuple[list[int], int]],
                    streaming: set[str] = frozenset()) -> dict[str, KernelSource]:
    for bad in ("TVMBackendAllocWorkspace", "TVMFFI", "__tvm_ffi_"):
        kept = [ln for ln in source.splitlines() if bad in ln and "__tvm_ffi__library_ctx" not in ln]
        if kept:
            raise EdgeCompileError(f"generated kernel code still depends on the TVM runtime ({bad}): {kept[0].strip()}")
    lines = [ln for ln in source.splitlines() if not _PREAMBLE_LINES.match(ln)]
    text = "\n".join(lines)
    out: dict[str, KernelSource] = {}
    for sym, (scratch, stack) in infos.items():
        m = re.search(r"^TVM_DLL int32_t " + re.escape(sym) + r"\((.*?)\) \{$", text, re.M)
        if m is None:
            raise EdgeCompileError(f"kernel {sym} not found in generated C")
        start = m.start()
        depth, i = 0, text.index("{", m.end() - 1)
        while True:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        body = text[text.index("{", m.end() - 1): i + 1]
        params = []
        for p in m.group(1).split(","):
            ctype, name = p.strip().rsplit(" ", 1)
            params.append((ctype.rstrip("*").strip() + "*", name.lstrip("*")))
        code = _signature(sym, params, scratch, sym in streaming) + " " + body
        out[sym] = KernelSource(sym, params, scratch, stack, code)
        del start
    return out


def _signature(sym: str, params: list[tuple[str, str]], scratch: list[int], streaming: bool) -> str:
    """A kernel's C declarator: every pointer `restrict`, except, for a kernel that may run in
    place, its first input and its output (they may overlap)."""
    loose = {0, len(params) - 1 - len(scratch)} if streaming else set()
    sig = ", ".join(f"{t} {'' if i in loose else 'restrict '}{n}" for i, (t, n) in enumerate(params))
    # noinline: each kernel keeps its own symbol (footprint by kernel, per-kernel profiles)
    return f"static __attribute__((noinline)) int32_t {sym}({sig})"


def in_place(ks: KernelSource) -> KernelSource:
    """The same kernel for a call the memory plan overlaps in place: its first input and output
    pointers no longer `restrict` (the body is unchanged)."""
    old = _signature(ks.symbol, ks.params, ks.scratch_bytes, False)
    new = _signature(ks.symbol, ks.params, ks.scratch_bytes, True)
    if not ks.c_code.startswith(old + " "):
        return ks            # already declared for in-place calls
    return dataclasses.replace(ks, c_code=new + ks.c_code[len(old):])


def with_gcc_options(ks: KernelSource, options: tuple[str, ...]) -> KernelSource:
    """The same kernel compiled with gcc `options` (`#pragma GCC optimize`) and the rest of
    model.c with the command line's: the function between push_options and pop_options."""
    if not options:
        return ks
    pragma = ", ".join(f'"{o}"' for o in options)
    return dataclasses.replace(ks, c_code=f"#pragma GCC push_options\n#pragma GCC optimize ({pragma})\n"
                                          f"{ks.c_code}\n#pragma GCC pop_options")


def shape_suffix(t: Tensor) -> str:
    """`s8_24x24x16`: a tensor's number format and shape without the batch, for C names."""
    dtype = {"float32": "f32", "int8": "s8", "int32": "s32"}.get(t.dtype, t.dtype)
    return f"{dtype}_" + ("x".join(str(d) for d in t.shape[1:]) or "scalar")


def unique_symbol(base: str, taken: set[str]) -> str:
    """`base`, or `base_2`, `base_3`...: the first not in `taken` (which it joins)."""
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def kernel_symbol(info: KernelInfo, out: Tensor, taken: set[str]) -> str:
    """The C name of a kernel: what it computes, its number format and output shape
    (`ec_dwpw_s8_k3x3s2_24x24x16`), unique among `taken` (which it joins)."""
    dtype, shape = shape_suffix(out).split("_", 1)
    base = f"ec_{info.kind}_{dtype}"
    if info.kind.is_conv:
        (kh, kw), (sh, _) = info.kernel, info.stride
        base += f"_k{kh}x{kw}s{sh}_{shape}"
    else:
        base += f"_{shape}"
    return unique_symbol(base, taken)


# TVM's C printer writes Max(a, c) / Min(a, c) as `(a) > (c) ? (a) : (c)` / `(a) < (c) ? (a) : (c)`
# (a float32 constant c: `6.000000e+00f`)
_CLAMP_RE = re.compile(r"\) ([<>]) \((-?\d+\.\d+e[+-]\d+f)\) \? \(")


def _clamp_fn(op: str, const: str) -> str | None:
    """`fmaxf` / `fminf` where they give the bits of the ternary for every `a`: aarch64's FMAXNM /
    FMINNM (IEEE maxNum / minNum) return the number when `a` is a NaN, as the ternary does (its
    comparison is false: `c`), and order -0 below +0; the ternary keeps `c` when `a` and `c` are
    zeros of either sign. They differ only for a zero constant: max(+0, c = -0) is -0 by the
    ternary, +0 by FMAXNM; min(-0, c = +0) is +0 by the ternary, -0 by FMINNM. None for those.
    (A signalling NaN `a`, which no arithmetic produces, gives a quiet NaN instead of `c`.)"""
    if op == ">":
        return None if const.startswith("-") and float(const[:-1]) == 0 else "fmaxf"
    return None if not const.startswith("-") and float(const[:-1]) == 0 else "fminf"


def ieee_clamps(code: str) -> str:
    """Float32 maxima and minima against a constant (ReLU, ReLU6's clip) as `fmaxf` / `fminf`
    calls: gcc for aarch64 compiles them to one `fmaxnm` / `fminnm` per vector, the ternary to
    compares and bit selects (5 instructions per vector for a ReLU6, 2 for a ReLU). Only where the
    ternary is a whole operand (after `=`, `(` or `,`, before `;`, `)` or `,`) and its two
    branches repeat the compared expression and constant, i.e. exactly what TVM prints for
    Max / Min; the result has the same bits (`_clamp_fn`)."""
    out, pos, i = [], 0, 0
    while (m := _CLAMP_RE.search(code, i)) is not None:
        i = m.end()
        op, const, end = m.group(1), m.group(2), m.start()
        depth, j = 0, end
        while j >= pos:                      # the '(' opening the compared expression
            depth += {")": 1, "(": -1}.get(code[j], 0)
            if depth == 0:
                break
            j -= 1
        if j < pos:
            continue
        a = code[j + 1:end]
        tail = f"{a}) : ({const})"
        before = code[:j].rstrip()[-1:]
        after = code[m.end() + len(tail):].lstrip()[:1]
        fn = _clamp_fn(op, const)
        if fn is None or not code.startswith(tail, m.end()) or before not in ("=", "(", ",") \
                or after not in (";", ")", ","):
            continue
        out += [code[pos:j], f"{fn}({a}, {const})"]
        pos = i = m.end() + len(tail)
    return "".join(out) + code[pos:]


def family_c(code: str, rules: Any) -> str:
    """A lowered kernel's C as the family `rules` compiles it: `ieee_clamps` where the family asks
    for it (`IEEE_CLAMPS`), unchanged otherwise."""
    return ieee_clamps(code) if rules.IEEE_CLAMPS else code
