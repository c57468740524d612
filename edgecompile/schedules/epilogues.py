"""GEMM tiles with their epilogue in registers: `ec_gemm_f32_MxN[_pP]_z_e<code>`.

A float GEMM tile whose reduction runs in one zero-start call (`ec_gemm_f32_MxN_z`, C = A B) is
followed, in the lowered kernel, by an epilogue loop over the tile: each output value an
elementwise function of the tile's value at (i, j), per-channel constants (`P[j]`: the bias) and
per-pixel tensors (`P[i * ldp + j]`: a residual). codegen.lower.fuse_epilogues hands both to one
call of a kernel that applies the function to its accumulators before it stores them, straight
into the output: the tile is never stored, loaded back, and stored again, and a clamp is two
instructions per vector (x86 max/min), not the compares and bit selects gcc makes of TVM's
ternaries.

The function travels in the kernel's name, so the kernel can be written from the name alone
(schedules.emit_ukernels): a prefix code over

    a        the accumulator (the GEMM's value at i, j)
    b<k>     parameter k at column j            (a pointer)
    r<k>     parameter k at row i, column j     (a pointer and its row stride)
    k<hex8>  a float32 constant (its bits)
    A x y    x + y        X x y  max(x, y) = x > y ? x : y        N x y  min(x, y) = x < y ? x : y

e.g. `NXAab0k00000000k40c00000`: min(max(acc + P0[j], 0), 6), a ReLU6 after the bias. Additions,
maxima and minima only: the same operations in the same order as the loop they replace, so the
same bits (no multiplication that the compiler could contract into an FMA differently)."""

from __future__ import annotations

import re
import struct
from typing import Any, Callable

from .ukernels import narrower_widths, ragged_pixels

OPS = {"A": "+", "X": "max", "N": "min"}
# GEMM tiles, plain or summed over R kernel rows (_rR: ukernels.kernel_rows_c), and ragged pixel tiles of them
CALL_RE = re.compile(r"\bec_gemm_f32_(\d+)x(\d+)(?:_r(\d+))?_z_e([A-Za-z0-9]+)\(")
ROWS_CALL_RE = re.compile(r"\bec_gemm_f32_(\d+)x(\d+)_p(\d+)(?:_r(\d+))?_z_e([A-Za-z0-9]+)\(")
DW_CALL_RE = re.compile(r"\bec_dw_f32_(\d+)x(\d+)_k(\d+)x(\d+)s(\d+)_z_e([A-Za-z0-9]+)\(")
DW_ROWS_CALL_RE = re.compile(r"\bec_dw_f32_(\d+)x(\d+)_k(\d+)x(\d+)s(\d+)_p(\d+)_z_e([A-Za-z0-9]+)\(")

Tree = tuple


def encode(tree: Tree) -> str:
    kind = tree[0]
    if kind == "a":
        return "a"
    if kind in ("b", "r"):
        return f"{kind}{tree[1]}"
    if kind == "k":
        return f"k{tree[1]}"
    return kind + encode(tree[1]) + encode(tree[2])


def parse(code: str) -> Tree:
    """The tree of an epilogue code (ValueError for anything else)."""
    tree, rest = _parse(code)
    if rest:
        raise ValueError(f"epilogue code {code!r}: trailing {rest!r}")
    return tree


def _parse(s: str) -> tuple[Tree, str]:
    if not s:
        raise ValueError("epilogue code ends early")
    c = s[0]
    if c == "a":
        return ("a",), s[1:]
    if c in "br":
        m = re.match(r"\d+", s[1:])
        if m is None:
            raise ValueError(f"epilogue parameter without a number: {s!r}")
        return (c, int(m.group(0))), s[1 + len(m.group(0)):]
    if c == "k":
        bits = s[1:9]
        if not re.fullmatch(r"[0-9a-f]{8}", bits):
            raise ValueError(f"epilogue constant: {s!r}")
        return ("k", bits), s[9:]
    if c in OPS:
        x, rest = _parse(s[1:])
        y, rest = _parse(rest)
        return (c, x, y), rest
    raise ValueError(f"epilogue code: unexpected {c!r}")


def constant(value: float) -> Tree:
    return ("k", struct.pack(">f", value).hex())


def params(tree: Tree) -> list[tuple[int, str]]:
    """(k, kind) of every parameter, by k."""
    found: dict[int, str] = {}

    def walk(t: Tree) -> None:
        if t[0] in ("b", "r"):
            found[t[1]] = t[0]
        elif t[0] in OPS:
            walk(t[1])
            walk(t[2])
    walk(tree)
    return sorted(found.items())


def _float_literal(bits: str) -> str:
    value = struct.unpack(">f", bytes.fromhex(bits))[0]
    return f"{value.hex()}f"       # a hexadecimal float literal: exactly these bits


def expression(tree: Tree, leaf: Callable[[Tree], str], op: Callable[[str, str, str], str]) -> str:
    if tree[0] in OPS:
        return op(tree[0], expression(tree[1], leaf, op), expression(tree[2], leaf, op))
    return leaf(tree)


def _scalar(tree: Tree, acc: str, row: str, off: str) -> str:
    def leaf(t: Tree) -> str:
        return {"a": lambda: acc, "b": lambda: f"P{t[1]}[{off}]", "r": lambda: f"P{t[1]}[{row} * ldp{t[1]} + {off}]",
                "k": lambda: _float_literal(t[1])}[t[0]]()
    return expression(tree, leaf, lambda o, x, y: f"({x} + {y})" if o == "A" else f"ec_f32_{OPS[o]}({x}, {y})")


def _vector(tree: Tree, sfx: str, width: int, acc: str, row: str, off: str) -> str:
    def leaf(t: Tree) -> str:
        if t[0] == "a":
            return acc
        if t[0] == "b":
            return f"ec_f32{sfx}_load(P{t[1]} + {off})"
        if t[0] == "r":
            return f"ec_f32{sfx}_load(P{t[1]} + {row} * ldp{t[1]} + {off})"
        lit = _float_literal(t[1])
        return f"((ec_f32{sfx}){{{', '.join([lit] * width)}}})"     # parenthesized: a macro argument
    return expression(tree, leaf, lambda o, x, y: f"({x} + {y})" if o == "A" else f"ec_f32{sfx}_{OPS[o]}({x}, {y})")


def _extra_params(tree: Tree) -> str:
    return "".join(f", const float *P{k}" + (f", int64_t ldp{k}" if kind == "r" else "") for k, kind in params(tree))


def _extra_args(tree: Tree, row: str) -> str:
    out = ""
    for k, kind in params(tree):
        out += f", P{k} + {row} * ldp{k}, ldp{k}" if kind == "r" and row != "0" else (
            f", P{k}, ldp{k}" if kind == "r" else f", P{k}")
    return out


def signature(m: int, n: int, code: str, rows: int = 0, window: tuple[int, int, int] | None = None,
              kernel_rows: int = 0) -> str:
    """The fused kernel's prototype: the GEMM's (or with `window` = (KH, KW, S), the depthwise
    window's) arguments (C the output, ldc its row stride), then each parameter's pointer (and row
    stride). C is not `restrict` when a parameter is a tensor (a residual read where the output
    is written). `kernel_rows` R: a tile summed over R kernel rows (ukernels.kernel_rows_c), whose
    arguments hold the rows' A and B strides before ldc."""
    tree = parse(code)
    c = "float *C" if any(kind == "r" for _, kind in params(tree)) else "float *restrict C"
    tail = (f"_p{rows}" if rows else "") + (f"_r{kernel_rows}" if kernel_rows else "") + f"_z_e{code}"
    strides = "int64_t ars, int64_t brs, " if kernel_rows else ""
    if window is not None:
        # neither C nor X `restrict`: a streaming depthwise kernel may write its output over the
        # input it reads (--no-in-place turns that off); the tile's stores come after all its loads
        kh, kw, s = window
        return (f"static inline int32_t ec_dw_f32_{m}x{n}_k{kh}x{kw}s{s}{tail}(float *C, const float *X, "
                "const float *restrict W, int64_t ldx_row, int64_t ldx_px, int64_t ldw_row, int64_t ldw_px, "
                f"int64_t ldc{_extra_params(tree)})")
    return (f"static inline int32_t ec_gemm_f32_{m}x{n}{tail}({c}, const float *restrict A, const float *restrict B, "
            f"int32_t K, int64_t lda, int64_t ldb, {strides}int64_t ldc{_extra_params(tree)})")


def describe(code: str) -> str:
    return _scalar(parse(code), "acc", "i", "j")


_VECTOR_STORE = re.compile(r"\b(ec_f32([a-z]*))_store\(C \+ (\d+) \* ldc \+ ([^,()]+), ([A-Za-z_][A-Za-z0-9_]*)\)")
_SCALAR_STORE = re.compile(r"\*\(C \+ (\d+) \* ldc \+ ([^()]+)\) = ([A-Za-z_][A-Za-z0-9_]*);")


def _fuse_stores(src: str, name: str, proto: str, m: int, n: int, code: str, lanes: int,
                 zero_loads: bool = False) -> str | None:
    """`src` (one kernel, `name` its C name with the opening parenthesis) with the prototype
    `proto`, each store of an accumulator to C a store of the epilogue of it (vector stores in
    their own width, scalar stores in scalars), and with `zero_loads` its accumulators started at
    zero instead of loaded from C. None when the kernel touches C otherwise."""
    tree = parse(code)
    if src.count(name) != 1:
        return None
    start = src.index(name)
    head = src[:max(src.rfind("\n", 0, start), 0)]     # the kernel's own comment (its tile's layout)
    body = src[src.index("{", start):]
    if zero_loads:
        body = start_at_zero(body)
    widths = {sfx: w for w, sfx in narrower_widths(lanes)}
    stores = 0

    def vector(mt: re.Match) -> str:
        nonlocal stores
        sfx = mt.group(2)
        if sfx not in widths:
            return mt.group(0)
        stores += 1
        row, off, acc = mt.group(3), mt.group(4).strip(), mt.group(5)
        return f"{mt.group(1)}_store(C + {row} * ldc + {off}, {_vector(tree, sfx, widths[sfx], acc, row, '(' + off + ')')})"

    def scalar(mt: re.Match) -> str:
        nonlocal stores
        stores += 1
        row, off, acc = mt.group(1), mt.group(2).strip(), mt.group(3)
        return f"*(C + {row} * ldc + {off}) = {_scalar(tree, acc, row, '(' + off + ')')};"

    body = _SCALAR_STORE.sub(scalar, _VECTOR_STORE.sub(vector, body))
    if stores == 0 or len(re.findall(r"\bC\b", body)) != stores:
        return None
    comment = f"/* C[{m}x{n}] = {describe(code)} with acc the tile's value at [i][j] (float32), in registers */"
    return "\n".join([line for line in (head.strip("\n"), comment) if line] + [proto + " " + body])


_C_LOAD = re.compile(r"\b(ec_f32[a-z]*)_load\(C \+ [^()]*\)")
_C_SCALAR_LOAD = re.compile(r"= \*\(C \+ [^()]*\)")


def start_at_zero(c_text: str) -> str:
    """A float kernel's C with its accumulators started at zero instead of loaded from C (vector
    loads and scalar `*(C + ...)` initialisers): the zero-start GEMM tiles (host/ukernels.gemm_z)
    and the fused depthwise tiles."""
    return _C_SCALAR_LOAD.sub("= 0.0f", _C_LOAD.sub(lambda mt: f"({mt.group(1)}){{0}}", c_text))


def from_zero_start(z_src: str, m: int, n: int, code: str, lanes: int, kernel_rows: int = 0) -> str | None:
    """The fused GEMM tile written from its zero-start kernel's C (`ec_gemm_f32_MxN_z`, or with
    `kernel_rows` R `ec_gemm_f32_MxN_rR_z`); None when that kernel touches C other than by stores
    of its accumulators."""
    name = f"ec_gemm_f32_{m}x{n}" + (f"_r{kernel_rows}" if kernel_rows else "") + "_z("
    return _fuse_stores(z_src, name, signature(m, n, code, kernel_rows=kernel_rows), m, n, code, lanes)


def dw_from_plus(dw_src: str, m: int, n: int, kh: int, kw: int, s: int, code: str, lanes: int) -> str | None:
    """The fused depthwise tile `ec_dw_f32_MxN_kKHxKWsS_z_e<code>` (its accumulators started at
    zero, its epilogue in registers) written from the += depthwise kernel's C; None when that
    kernel touches C other than by loads and stores of its accumulators."""
    return _fuse_stores(dw_src, f"ec_dw_f32_{m}x{n}_k{kh}x{kw}s{s}(", signature(m, n, code, window=(kh, kw, s)),
                        m, n, code, lanes, zero_loads=True)


def generic_c(m: int, n: int, code: str, kernel_rows: int = 0) -> str:
    """The fused kernel for any family: its zero-start kernel (`kernel_rows` R: summed over R kernel
    rows) into a tile on the stack, then the epilogue over the tile (the same sums and the same
    epilogue: the same bits)."""
    tree = parse(code)
    z, strides = (f"_r{kernel_rows}_z", "ars, brs, ") if kernel_rows else ("_z", "")
    return "\n".join([
        f"/* C[{m}x{n}] = {describe(code)} with acc = (A[{m}xK] * B[Kx{n}])[i][j] (float32) */",
        signature(m, n, code, kernel_rows=kernel_rows) + " {",
        f"  float t[{m * n}];",
        f"  ec_gemm_f32_{m}x{n}{z}(t, A, B, K, lda, ldb, {strides}{n});",
        f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) "
        f"C[i * ldc + j] = {_scalar(tree, f't[i * {n} + j]', 'i', 'j')};",
        "  return 0;", "}"])


def rows_c(m: int, p: int, n: int, code: str, kernel_rows: int = 0) -> str:
    """A ragged pixel tile (ukernels.rows_gemm_c) whose tiles are fused kernels."""
    tree = parse(code)
    q, r = divmod(m, p)
    rest = "B, K, lda, ldb, ars, brs, ldc" if kernel_rows else "B, K, lda, ldb, ldc"
    kr = f"_r{kernel_rows}" if kernel_rows else ""
    return "\n".join([
        f"/* C[{m}x{n}] = {describe(code)}; ragged pixel tile: {q} x {p} pixels, then {r} */",
        signature(m, n, code, p, kernel_rows=kernel_rows) + " {",
        f"  for (int32_t i = 0; i < {q * p}; i += {p}) ec_gemm_f32_{p}x{n}{kr}_z_e{code}(C + i * ldc, A + i * lda, {rest}"
        f"{_extra_args(tree, 'i')});",
        f"  ec_gemm_f32_{r}x{n}{kr}_z_e{code}(C + {q * p} * ldc, A + {q * p} * lda, {rest}{_extra_args(tree, str(q * p))});",
        "  return 0;", "}"])


def dw_generic_c(m: int, n: int, kh: int, kw: int, s: int, code: str) -> str:
    """The fused depthwise tile for any family: a zeroed tile on the stack, the += kernel, then
    the epilogue over the tile."""
    tree = parse(code)
    return "\n".join([
        f"/* depthwise {kh}x{kw}/{s}: C[{m}x{n}] = {describe(code)} with acc the window's sum (float32) */",
        signature(m, n, code, window=(kh, kw, s)) + " {",
        f"  float t[{m * n}] = {{0}};",
        f"  ec_dw_f32_{m}x{n}_k{kh}x{kw}s{s}(t, X, W, ldx_row, ldx_px, ldw_row, ldw_px, {n});",
        f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) "
        f"C[i * ldc + j] = {_scalar(tree, f't[i * {n} + j]', 'i', 'j')};",
        "  return 0;", "}"])


def dw_rows_c(m: int, p: int, n: int, kh: int, kw: int, s: int, code: str) -> str:
    """A ragged pixel tile of a depthwise window (ukernels.rows_dw_c) whose tiles are fused."""
    tree = parse(code)
    q, r = divmod(m, p)
    base = f"ec_dw_f32_{{}}x{n}_k{kh}x{kw}s{s}_z_e{code}"
    rest = "W, ldx_row, ldx_px, ldw_row, ldw_px, ldc"
    step = f" * {s}" if s > 1 else ""
    return "\n".join([
        f"/* depthwise {kh}x{kw}/{s}: C[{m}x{n}] = {describe(code)}; ragged pixel tile: {q} x {p} pixels, then {r} */",
        signature(m, n, code, p, (kh, kw, s)) + " {",
        f"  for (int32_t i = 0; i < {q * p}; i += {p}) {base.format(p)}(C + i * ldc, X + i{step} * ldx_px, {rest}"
        f"{_extra_args(tree, 'i')});",
        f"  {base.format(r)}(C + {q * p} * ldc, X + {q * p * s} * ldx_px, {rest}{_extra_args(tree, str(q * p))});",
        "  return 0;", "}"])


def rows_tiles(m: int, p: int) -> list[int]:
    return [q for _, q in ragged_pixels(m, p)]


def helpers_c(lanes: int) -> str:
    """max and min as TVM's C means them (x > y ? x : y, x < y ? x : y), in scalars and in each
    vector width: x86's max and min instructions compute exactly these (the second operand when
    either is NaN or both are zeros), elsewhere a compare and a select."""
    lines = ["/* TVM's max and min (x > y ? x : y, x < y ? x : y) for the fused epilogues */",
             "#if defined(__x86_64__) || defined(__i386__)", "#include <immintrin.h>", "#endif",
             "static inline float ec_f32_max(float a, float b) { return a > b ? a : b; }",
             "static inline float ec_f32_min(float a, float b) { return a < b ? a : b; }"]
    x86 = {16: ("__AVX512F__", "__m512", "_mm512"), 8: ("__AVX__", "__m256", "_mm256"), 4: ("__SSE__", "__m128", "_mm")}
    # macros, not functions: a vector passed or returned by value is an ABI warning (-Wpsabi) where
    # the translation unit is compiled without the vector extension (the sanitizer build)
    for w, sfx in narrower_widths(lanes) if lanes > 1 else []:
        t, i = f"ec_f32{sfx}", f"ec_i32{sfx}"
        for name, cmp in (("max", ">"), ("min", "<")):
            generic = (f"#define {t}_{name}(a, b) ({{ {t} a_ = (a), b_ = (b); {i} m_ = ({i})(a_ {cmp} b_); "
                       f"({t})((m_ & ({i})a_) | (~m_ & ({i})b_)); }})")
            if w in x86:
                macro, xt, pre = x86[w]
                lines += [f"#if defined({macro})", f"#define {t}_{name}(a, b) (({t}){pre}_{name}_ps(({xt})(a), ({xt})(b)))",
                          "#else", generic, "#endif"]
            else:
                lines.append(generic)
    return "\n".join(lines)


def emit(kernel_code: str, own: Any, lanes: int, zero_start_c: Callable[[int, int, int], str]
         ) -> tuple[list[str], set[tuple[int, int, int]]]:
    """The C of every fused GEMM kernel `kernel_code` calls (sorted; `helpers_c` goes before), and the
    (M, N, R) of the zero-start kernels the portable forms call (R: kernel rows, 0 for a plain tile).
    `own.gemm_ze(m, n, lanes, code)`: a family's own fused kernel of a plain tile (None: written
    from `zero_start_c(m, n, r)`, the family's zero-start kernel, else the portable form)."""
    rows = sorted({(int(m), int(n), int(p), int(r or 0), c) for m, n, p, r, c in ROWS_CALL_RE.findall(kernel_code)})
    tiles = sorted({(int(m), int(n), int(r or 0), c) for m, n, r, c in CALL_RE.findall(kernel_code)}
                   | {(q, n, r, c) for m, n, p, r, c in rows for q in rows_tiles(m, p)})
    if not tiles:
        return [], set()
    parts, needs = [], set()
    for m, n, r, c in tiles:
        code = ((getattr(own, "gemm_ze", lambda *a: None)(m, n, lanes, c) if not r else None)
                or from_zero_start(zero_start_c(m, n, r), m, n, c, lanes, r))
        if code is None:
            code = generic_c(m, n, c, r)
            needs.add((m, n, r))
        parts.append(code)
    parts += [rows_c(m, p, n, c, r) for m, n, p, r, c in rows]
    return parts, needs


def emit_dw(kernel_code: str, own: Any, lanes: int, dw_c: Callable[[int, int, int, int, int], str]
            ) -> tuple[list[str], set[tuple[int, int, int, int, int]]]:
    """The C of every fused depthwise kernel `kernel_code` calls (sorted; `helpers_c` goes before),
    and the (M, N, KH, KW, S) of the += kernels the portable forms call. `own.dw_ze(m, n, kh, kw,
    s, lanes, code)`: a family's own (None: written from `dw_c(...)`, the family's += kernel, else
    the portable form)."""
    rows = sorted({tuple(int(v) for v in t[:6]) + (t[6],) for t in DW_ROWS_CALL_RE.findall(kernel_code)})
    tiles = sorted({tuple(int(v) for v in t[:5]) + (t[5],) for t in DW_CALL_RE.findall(kernel_code)}
                   | {(q, n, kh, kw, s, c) for m, n, kh, kw, s, p, c in rows for q in rows_tiles(m, p)})
    parts, needs = [], set()
    for m, n, kh, kw, s, c in tiles:
        code = (getattr(own, "dw_ze", lambda *a: None)(m, n, kh, kw, s, lanes, c)
                or dw_from_plus(dw_c(m, n, kh, kw, s), m, n, kh, kw, s, c, lanes))
        if code is None:
            code = dw_generic_c(m, n, kh, kw, s, c)
            needs.add((m, n, kh, kw, s))
        parts.append(code)
    parts += [dw_rows_c(m, p, n, kh, kw, s, c) for m, n, kh, kw, s, p, c in rows]
    return parts, needs
