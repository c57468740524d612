"""Micro-kernels: the innermost register-blocked loops, written once in C and reached from TIR
by tensorization.

A scheduled convolution or dense layer tiles its output into M x N blocks (M output pixels of
one row, N output channels) and hands the whole reduction over the input channels to

    ec_gemm_<t>_MxN(C, A, B, K, lda, ldb, ldc):   C[m][n] += sum_k A[m*lda + k] * B[k*ldb + n]

and a depthwise convolution hands a KH x KW window to `ec_dw_<t>_MxN_kKHxKWsS`. <t> names the
operand types: `f32` (float32 everything), `s8` (int8 activations x int8 weights -> int32),
`s16` (int16 zero-point-shifted activations x int8 weights -> int32).

The C bodies are generated per tile shape for the target's SIMD width with GCC/Clang vector
extensions, so one source serves AVX2/AVX-512 (host), NEON (Cortex-A), Helium (Cortex-M55) and
plain registers (lanes = 1, Cortex-M4/M7). Keeping the accumulators in named vector variables
is what makes the compiler keep them in registers; plain loops over a local array do not
reliably get there (measured: 1.2 vs 48 GMAC/s on the same pointwise layer with gcc 12).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

_REGISTERED: set[str] = set()
GEMM_CALL_RE = re.compile(r"\bec_gemm_([a-z0-9]+)_(\d+)x(\d+)\(")
DW_CALL_RE = re.compile(r"\bec_dw_(f32|s8|s16)_(\d+)x(\d+)_k(\d+)x(\d+)s(\d+)\(")
REQUANT_CALL_RE = re.compile(r"\bec_requant_s8_(\d+)x(\d+)\(")
# the same rescale storing its int8 values widened to int16 (a fused kernel's depthwise rows, wide_rows)
REQUANT16_CALL_RE = re.compile(r"\bec_requant_s8_(\d+)x(\d+)_s16\(")
WINDOW_CALL_RE = re.compile(r"\bec_window_(f32|s8|s16)_(\d+)x(\d+)_k(\d+)x(\d+)c(\d+)s(\d+)\(")
WIDEN_CALL_RE = re.compile(r"\bec_widen_s8s16\(")
# ragged pixel tiles (rows_gemm_c, rows_dw_c): a row of W pixels in tiles of P, then one of W % P
GEMM_ROWS_CALL_RE = re.compile(r"\bec_gemm_([a-z0-9]+)_(\d+)x(\d+)_p(\d+)\(")
DW_ROWS_CALL_RE = re.compile(r"\bec_dw_(f32|s8|s16)_(\d+)x(\d+)_k(\d+)x(\d+)s(\d+)_p(\d+)\(")
# zero-start GEMM tiles (C = A B; codegen.lower.zero_start_gemms), plain and ragged pixel tiles
GEMM_Z_CALL_RE = re.compile(r"\bec_gemm_([a-z0-9]+)_(\d+)x(\d+)_z\(")
GEMM_ROWS_Z_CALL_RE = re.compile(r"\bec_gemm_([a-z0-9]+)_(\d+)x(\d+)_p(\d+)_z\(")
# zero-start tiles summed over R kernel rows (codegen.lower._kernel_rows_call), plain and ragged pixel tiles
GEMM_RZ_CALL_RE = re.compile(r"\bec_gemm_([a-z0-9]+)_(\d+)x(\d+)_r(\d+)_z\(")
GEMM_ROWS_RZ_CALL_RE = re.compile(r"\bec_gemm_([a-z0-9]+)_(\d+)x(\d+)_p(\d+)_r(\d+)_z\(")


@dataclass(frozen=True)
class Types:
    """Operand types of a micro-kernel: activations a, weights b, accumulator c; and `b_order`, how
    a GEMM's packed weight panel orders its K x N values: "" row by row ([K][N]), or an order a
    family's kernels read (PANEL_ORDERS)."""

    a: str
    b: str
    c: str
    b_order: str = ""

    @property
    def tag(self) -> str:
        if self.c == "float32":
            return "f32"
        return {"int8": "s8", "int16": "s16"}[self.a] + self.b_order

    def ordered(self, order: str) -> "Types":
        return Types(self.a, self.b, self.c, order)


# Panel orders for integer GEMMs whose kernels multiply pairs of 16-bit values (Arm's SMLAD): the
# reduction in quads, each output channel's 4 weights together ([K/4][N][4], then the K % 4 last
# rows [K % 4][N] as they are). "k4": the quad in K order (int8 activations: both operands are
# split into even and odd lanes by SXTB16); "k4x": w0 w2 w1 w3 (int16 activations, read as the
# pairs (a0 a1), (a2 a3): SXTB16 of the weights gives (w0 w1), (w2 w3)).
PANEL_ORDERS = {"k4": (0, 1, 2, 3), "k4x": (0, 2, 1, 3), "k4w": (0, 1, 2, 3)}
# Panel orders whose weights are stored widened to int16 at compile time (codegen.weights.pack_weight):
# "k4w", the quad in K order as 16-bit values, (w0 w1), (w2 w3) in two words: int16 activations read
# as (a0 a1), (a2 a3) meet them in SMLAD without extending either operand (twice the weight bytes). The
# kernel's TIR still types the parameter int8: its calls pass the array and the panel's element offset
# (`wide_b`), the kernel reads int16 values from there.
WIDE_ORDERS = {"k4w"}


def wide_b(types: "Types") -> bool:
    """Whether a GEMM of `types` reads its weights widened to int16 (WIDE_ORDERS)."""
    return split_order(types.b_order)[0] in WIDE_ORDERS
# Panel orders for integer GEMMs whose kernels reduce one vector of K values per output channel: the
# reduction in groups of G, each output channel's G weights together ([K/G][N][G]), the last K % G
# rows likewise ([N][K % G]), so that the kernel reads every group of every channel as one contiguous
# (tail-predicated) vector. "k16": int8 activations x int8 weights (Helium's VMLADAVA sums 16
# products in 32 bits; the NEON kernels of Cortex-A, `cortex_a/ukernels.py`, read 16 then 8 steps at
# a time and add pairs of products in 16 bits: exact only without the weight -128, which
# codegen.weights checks; our symmetric weights are in [-127, 127]); "k8": int16 activations
# (Helium, weights widened by the load).
GROUP_ORDERS = {"k16": 16, "k8": 8}

F32 = Types("float32", "float32", "float32")
TYPES = {"f32": F32, "s8": Types("int8", "int8", "int32"), "s16": Types("int16", "int8", "int32")}
TYPES.update({t.ordered(o).tag: t.ordered(o) for t in list(TYPES.values())[1:] for o in [*PANEL_ORDERS, *GROUP_ORDERS]})


def types_for(a: str, b: str, c: str) -> Types | None:
    t = Types(a, b, c)
    return t if t in TYPES.values() else None


def parse_shallow(parse: Any) -> Any:
    """Run `parse` (TVMScript parsing) on a fresh thread. The parser calls `inspect.stack()` twice
    per function, which reads the source of every frame on the stack: ~0.3 s per intrinsic under
    the compiler's deep stack (30 s of a MobileNet V2 build), a few ms on a thread's short one.
    The intrinsic's names all come from closures and globals, none from the caller's frames."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(parse).result()


# A panel order may carry SPAN_KW: the weights of a KxK convolution whose kernels reduce over a
# whole kernel row at once (`gemm_window_intrin`: the kernel width and the input channels, KW x C
# steps contiguous in the padded NHWC row), so that each [KW][C][nn] block is one [KW*C][nn] panel
# in that order rather than KW panels of C rows.
# SPAN_WINDOW: the panel is a whole [KW][KH][C] window (`gemm_full_window_intrin`), weights stored
# [O/nn][KW][KH][I][nn].
SPAN_KW, SPAN_WINDOW = "+kw", "+win"


def split_order(order: str) -> tuple[str, str]:
    """(the panel order proper, its span: "" (one tap), SPAN_KW or SPAN_WINDOW)."""
    for span in (SPAN_KW, SPAN_WINDOW):
        if order.endswith(span):
            return order[: -len(span)], span
    return order, ""


# Float panel orders of chunks ("c<w>", e.g. "c16"): a [K][N] panel stored as N / w consecutive
# [K][w] panels of w channels, then a [K][N % w] one (host/ukernels.chunked_gemm): a blocked tile of
# all a layer's N channels (N not a multiple of w: Xception's 728) reads each block's weights as one
# contiguous stream of w floats per reduction step instead of w floats every N.
CHUNK_ORDER_RE = re.compile(r"c(\d+)$")


def chunk_panel_width(n: int, lanes: int, types: "Types", model: Any) -> int:
    """The chunk width w of the weight panels a float GEMM tile of n channels reads under a family's
    GemmModel `model` (the "c<w>" order), else 0: with `model.chunk_panels` (AVX2), a tile of more
    vectors than accumulators (blocked whatever its pixels: only all the channels of a wide layer,
    host.HostRules._streamed_tile) whose channels two vectors do not divide (Xception's 728). Its
    blocks of 2 vectors each read one [K][2 x lanes] panel, as a tile over weights packed 16 wide
    would, where row-major [K][728] weights cost 1.2x (one 728 -> 728 pointwise layer over 98-pixel
    runs, best of 40)."""
    w = 2 * lanes
    if (model is None or not model.chunk_panels or types != F32 or lanes < 2 or n % lanes
            or n // lanes <= model.accumulators or n % w == 0):
        return 0
    return w


def chunk_width(order: str) -> int:
    """The chunk width w of a "c<w>" panel order, else 0."""
    mt = CHUNK_ORDER_RE.match(order)
    return int(mt.group(1)) if mt else 0


def order_panel(panel: "np.ndarray", order: str) -> "np.ndarray":
    """A [K][N] weight panel's values in `order` (PANEL_ORDERS, GROUP_ORDERS or a chunk order), as an
    array of the same shape: the bytes the kernel reads, in its order."""
    import numpy as np

    k, n = panel.shape
    if chunk_width(order):
        w = chunk_width(order)
        return np.concatenate([panel[:, j:j + w].reshape(-1) for j in range(0, n, w)]).reshape(k, n)
    if order in GROUP_ORDERS:
        g = GROUP_ORDERS[order]
        return np.concatenate([panel[k0:k0 + g].T.reshape(-1) for k0 in range(0, k, g)]).reshape(k, n)
    q = k // 4
    quads = panel[: 4 * q].reshape(q, 4, n).transpose(0, 2, 1)[:, :, list(PANEL_ORDERS[order])]
    flat = np.concatenate([quads.reshape(-1), panel[4 * q:].reshape(-1)])
    return flat.reshape(k, n)


def _mac(types: Types, a_narrowed: bool = False) -> Any:
    """a * b in the accumulator type, as the kernels' TIR writes it (integer operands widened;
    `a_narrowed`: int8 values stored in int16, read through a cast to int8)."""
    tc = types.c

    def mac(a: Any, b: Any) -> Any:
        if tc == "float32":
            return a * b
        if a_narrowed:
            a = T.Cast("int8", a)
        return T.Cast(tc, a) * T.Cast(tc, b)

    return mac


def gemm_intrin(m: int, n: int, k: int, stride: int = 1, types: Types = F32, a_narrowed: bool = False,
                pixels: int = 0) -> str:
    """Register (once) and return the name of the TensorIntrin for an M x N tile over K.
    `stride` is the distance, in A rows, between consecutive output pixels (a strided conv).
    `a_narrowed`: the kernel reads int16 A values through a cast to int8 (int8 values stored
    wide, see tiling.tile_dwpw): the same micro-kernel, which reads them as int16.
    `pixels` P (0 < P < M, not dividing M): a ragged pixel tile, the M pixels (a whole row) run
    by `ec_gemm_<t>_MxN_pP`: M // P tiles of P pixels, then one of M % P (rows_gemm_c)."""
    ragged = 0 < pixels < m and m % pixels != 0
    name = f"ec_gemm_{types.tag}_{m}x{n}_k{k}_s{stride}" + ("_a8" if a_narrowed else "") \
        + (f"_p{pixels}" if ragged else "")
    if name in _REGISTERED:
        return name
    M, N, K, S = T.int64(m), T.int64(n), T.int64(k), T.int64(stride)
    AM = T.int64((m - 1) * stride + 1)
    symbol = f"ec_gemm_{types.tag}_{m}x{n}" + (f"_p{pixels}" if ragged else "")
    ta, tb, tc = types.a, types.b, types.c
    mac = _mac(types, a_narrowed)
    wide = wide_b(types)
    zero = T.int64(0)
    # a one-pixel tile has no pixel loop in the scheduled kernel; a one-channel tile keeps its unit
    # channel loop but its block has no channel iterator: the description matches both

    def make(call: bool) -> Any:
        """The intrinsic's description (call=False) or its implementation (call=True): the same
        buffers, then the computation or the call of the C micro-kernel."""

        @T.prim_func(s_tir=True)
        def f(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (AM, K), ta, offset_factor=1, strides=[T.int64(), T.int64(1)])
            B = T.match_buffer(b, (K, N), tb, offset_factor=1, strides=[T.int64(), T.int64(1)])
            C = T.match_buffer(c, (M, N), tc, offset_factor=1, strides=[T.int64(), T.int64(1)])
            with T.sblock("root"):
                T.reads(C[0:M, 0:N], A[0:AM, 0:K], B[0:K, 0:N])
                T.writes(C[0:M, 0:N])
                if call and wide:
                    T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), A.access_ptr("r"), B.data,
                                             B.elem_offset, k, A.strides[0] * S, B.strides[0], C.strides[0]))
                elif call:
                    T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), A.access_ptr("r"),
                                             B.access_ptr("r"), k, A.strides[0] * S, B.strides[0], C.strides[0]))
                elif m > 1 and n > 1:
                    for kk, mm, nn in T.grid(K, M, N):
                        with T.sblock("update"):
                            vm, vn, vk = T.axis.remap("SSR", [mm, nn, kk])
                            C[vm, vn] = C[vm, vn] + mac(A[vm * S, vk], B[vk, vn])
                elif n > 1:
                    for kk, nn in T.grid(K, N):
                        with T.sblock("update"):
                            vn, vk = T.axis.remap("SR", [nn, kk])
                            C[zero, vn] = C[zero, vn] + mac(A[zero, vk], B[vk, vn])
                elif m > 1:
                    for kk, mm, nn in T.grid(K, M, N):
                        with T.sblock("update"):
                            vm, vk = T.axis.remap("SR", [mm, kk])
                            C[vm, zero] = C[vm, zero] + mac(A[vm * S, vk], B[vk, zero])
                else:
                    for kk, nn in T.grid(K, N):
                        with T.sblock("update"):
                            vk = T.axis.reduce(K, kk)
                            C[zero, zero] = C[zero, zero] + mac(A[zero, vk], B[vk, zero])

        return f

    TensorIntrin.register(name, *parse_shallow(lambda: (make(False), make(True))), override=True)
    _REGISTERED.add(name)
    return name


def gemm_window_intrin(m: int, n: int, kw: int, c: int, stride: int = 1, types: Types = F32, pixels: int = 0) -> str:
    """Register (once) and return the name of the TensorIntrin for an M x N tile of a KxK
    convolution that reduces over one whole kernel row: the KW taps x C input channels of a
    padded NHWC row are KW * C contiguous values per output pixel (pixel m's at m * stride * C),
    and an HWIO (or packed [..][KW][C][nn]) weight row is KW * C contiguous rows of N. The call
    is the plain GEMM micro-kernel `ec_gemm_<t>_MxN` with K = KW * C: fewer calls, and K quads
    where C alone has none (3 input channels). A's rows must be exactly C values apart (the
    padded row buffer of the convolution's own input channels: no grouped convolution).
    `pixels`: a ragged pixel tile, as `gemm_intrin`'s."""
    ragged = 0 < pixels < m and m % pixels != 0
    name = f"ec_gemmw_{types.tag}_{m}x{n}_w{kw}c{c}_s{stride}" + (f"_p{pixels}" if ragged else "")
    if name in _REGISTERED:
        return name
    M, N, KW, CI, S = T.int64(m), T.int64(n), T.int64(kw), T.int64(c), T.int64(stride)
    AM = T.int64((m - 1) * stride + kw)
    symbol = f"ec_gemm_{types.tag}_{m}x{n}" + (f"_p{pixels}" if ragged else "")
    ta, tb, tc = types.a, types.b, types.c
    mac = _mac(types)
    zero, one = T.int64(0), T.int64(1)

    def make(call: bool) -> Any:
        @T.prim_func(s_tir=True)
        def f(a: T.handle, b: T.handle, cc: T.handle) -> None:
            A = T.match_buffer(a, (AM, CI), ta, offset_factor=1, strides=[CI, one])
            B = T.match_buffer(b, (KW, CI, N), tb, offset_factor=1, strides=[T.int64(), T.int64(), one])
            C = T.match_buffer(cc, (M, N), tc, offset_factor=1, strides=[T.int64(), one])
            with T.sblock("root"):
                T.reads(C[0:M, 0:N], A[0:AM, 0:CI], B[0:KW, 0:CI, 0:N])
                T.writes(C[0:M, 0:N])
                if call:
                    T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), A.access_ptr("r"),
                                             B.access_ptr("r"), kw * c, CI * S, B.strides[1], C.strides[0]))
                elif m > 1 and n > 1:
                    for rx, kk, mm, nn in T.grid(KW, CI, M, N):
                        with T.sblock("update"):
                            vm, vn, vrx, vk = T.axis.remap("SSRR", [mm, nn, rx, kk])
                            C[vm, vn] = C[vm, vn] + mac(A[vm * S + vrx, vk], B[vrx, vk, vn])
                elif n > 1:
                    for rx, kk, nn in T.grid(KW, CI, N):
                        with T.sblock("update"):
                            vn, vrx, vk = T.axis.remap("SRR", [nn, rx, kk])
                            C[zero, vn] = C[zero, vn] + mac(A[vrx, vk], B[vrx, vk, vn])
                elif m > 1:
                    for rx, kk, mm, nn in T.grid(KW, CI, M, N):
                        with T.sblock("update"):
                            vm, vrx, vk = T.axis.remap("SRR", [mm, rx, kk])
                            C[vm, zero] = C[vm, zero] + mac(A[vm * S + vrx, vk], B[vrx, vk, zero])
                else:
                    for rx, kk, nn in T.grid(KW, CI, N):
                        with T.sblock("update"):
                            vrx, vk = T.axis.remap("RR", [rx, kk])
                            C[zero, zero] = C[zero, zero] + mac(A[vrx, vk], B[vrx, vk, zero])

        return f

    TensorIntrin.register(name, *parse_shallow(lambda: (make(False), make(True))), override=True)
    _REGISTERED.add(name)
    return name


def gemm_full_window_intrin(m: int, n: int, kh: int, kw: int, c: int, stride: int = 1, types: Types = F32) -> str:
    """As `gemm_window_intrin`, over the whole KH x KW window: the padded rows stored pixel-major
    ([pixel][KH][C], so that one output pixel's KW x KH x C values are contiguous, pixel m's at
    m * stride * KH * C) and the weights as [..][KW][KH][C][nn] (panel order + SPAN_WINDOW): one
    call of K = KW * KH * C per tile."""
    name = f"ec_gemmw_{types.tag}_{m}x{n}_h{kh}w{kw}c{c}_s{stride}"
    if name in _REGISTERED:
        return name
    M, N, KH, KW, CI, S = (T.int64(v) for v in (m, n, kh, kw, c, stride))
    AM = T.int64((m - 1) * stride + kw)
    symbol = f"ec_gemm_{types.tag}_{m}x{n}"
    ta, tb, tc = types.a, types.b, types.c
    mac = _mac(types)
    wide = wide_b(types)     # weights widened to int16: the call passes the array and the panel's offset
    zero, one = T.int64(0), T.int64(1)

    def make(call: bool) -> Any:
        @T.prim_func(s_tir=True)
        def f(a: T.handle, b: T.handle, cc: T.handle) -> None:
            A = T.match_buffer(a, (AM, KH, CI), ta, offset_factor=1, strides=[KH * CI, CI, one])
            B = T.match_buffer(b, (KW, KH, CI, N), tb, offset_factor=1,
                               strides=[T.int64(), T.int64(), T.int64(), one])
            C = T.match_buffer(cc, (M, N), tc, offset_factor=1, strides=[T.int64(), one])
            with T.sblock("root"):
                T.reads(C[0:M, 0:N], A[0:AM, 0:KH, 0:CI], B[0:KW, 0:KH, 0:CI, 0:N])
                T.writes(C[0:M, 0:N])
                if call and wide:
                    T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), A.access_ptr("r"), B.data,
                                             B.elem_offset, kw * kh * c, KH * CI * S, B.strides[2], C.strides[0]))
                elif call:
                    T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), A.access_ptr("r"),
                                             B.access_ptr("r"), kw * kh * c, KH * CI * S, B.strides[2], C.strides[0]))
                elif m > 1 and n > 1:
                    for rx, ry, kk, mm, nn in T.grid(KW, KH, CI, M, N):
                        with T.sblock("update"):
                            vm, vn, vry, vrx, vk = T.axis.remap("SSRRR", [mm, nn, ry, rx, kk])
                            C[vm, vn] = C[vm, vn] + mac(A[vm * S + vrx, vry, vk], B[vrx, vry, vk, vn])
                elif n > 1:
                    for rx, ry, kk, nn in T.grid(KW, KH, CI, N):
                        with T.sblock("update"):
                            vn, vry, vrx, vk = T.axis.remap("SRRR", [nn, ry, rx, kk])
                            C[zero, vn] = C[zero, vn] + mac(A[vrx, vry, vk], B[vrx, vry, vk, vn])
                elif m > 1:
                    for rx, ry, kk, mm, nn in T.grid(KW, KH, CI, M, N):
                        with T.sblock("update"):
                            vm, vry, vrx, vk = T.axis.remap("SRRR", [mm, ry, rx, kk])
                            C[vm, zero] = C[vm, zero] + mac(A[vm * S + vrx, vry, vk], B[vrx, vry, vk, zero])
                else:
                    for rx, ry, kk, nn in T.grid(KW, KH, CI, N):
                        with T.sblock("update"):
                            vry, vrx, vk = T.axis.remap("RRR", [ry, rx, kk])
                            C[zero, zero] = C[zero, zero] + mac(A[vrx, vry, vk], B[vrx, vry, vk, zero])

        return f

    TensorIntrin.register(name, *parse_shallow(lambda: (make(False), make(True))), override=True)
    _REGISTERED.add(name)
    return name


def dw_intrin(m: int, n: int, kh: int, kw: int, s: int, types: Types = F32, pixels: int = 0) -> str:
    """TensorIntrin for a depthwise M x N output tile (M pixels of a row, N channels) computed from
    an already padded input window. `pixels` P (0 < P < M, not dividing M): a ragged pixel tile,
    `ec_dw_<t>_MxN_kKHxKWsS_pP` (M // P tiles of P pixels, then one of M % P: rows_dw_c)."""
    ragged = 0 < pixels < m and m % pixels != 0
    name = f"ec_dw_{types.tag}_{m}x{n}_k{kh}x{kw}s{s}" + (f"_p{pixels}" if ragged else "")
    if name in _REGISTERED:
        return name
    M, N, KH, KW, S = T.int64(m), T.int64(n), T.int64(kh), T.int64(kw), T.int64(s)
    XW = T.int64((m - 1) * s + kw)
    one, zero = T.int64(1), T.int64(0)
    ta, tb, tc = types.a, types.b, types.c
    symbol = name
    mac = _mac(types)

    def make(call: bool) -> Any:
        @T.prim_func(s_tir=True)
        def f(x: T.handle, w: T.handle, c: T.handle) -> None:
            X = T.match_buffer(x, (KH, XW, N), ta, offset_factor=1, strides=[T.int64(), T.int64(), one])
            W = T.match_buffer(w, (KH, KW, one, N), tb, offset_factor=1,
                               strides=[T.int64(), T.int64(), T.int64(), one])
            C = T.match_buffer(c, (M, N), tc, offset_factor=1, strides=[T.int64(), one])
            with T.sblock("root"):
                T.reads(C[0:M, 0:N], X[0:KH, 0:XW, 0:N], W[0:KH, 0:KW, 0:1, 0:N])
                T.writes(C[0:M, 0:N])
                if call:
                    T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), X.access_ptr("r"),
                                             W.access_ptr("r"), X.strides[0], X.strides[1], W.strides[0],
                                             W.strides[1], C.strides[0]))
                elif m > 1 and n > 1:
                    for ry, rx, mm, nn in T.grid(KH, KW, M, N):
                        with T.sblock("update"):
                            vm, vn, vry, vrx = T.axis.remap("SSRR", [mm, nn, ry, rx])
                            C[vm, vn] = C[vm, vn] + mac(X[vry, vm * S + vrx, vn], W[vry, vrx, zero, vn])
                elif n > 1:
                    for ry, rx, nn in T.grid(KH, KW, N):
                        with T.sblock("update"):
                            vn, vry, vrx = T.axis.remap("SRR", [nn, ry, rx])
                            C[zero, vn] = C[zero, vn] + mac(X[vry, vrx, vn], W[vry, vrx, zero, vn])
                elif m > 1:
                    for ry, rx, mm, nn in T.grid(KH, KW, M, N):
                        with T.sblock("update"):
                            vm, vry, vrx = T.axis.remap("SRR", [mm, ry, rx])
                            C[vm, zero] = C[vm, zero] + mac(X[vry, vm * S + vrx, zero], W[vry, vrx, zero, zero])
                else:
                    for ry, rx, nn in T.grid(KH, KW, N):
                        with T.sblock("update"):
                            vry, vrx = T.axis.remap("RR", [ry, rx])
                            C[zero, zero] = C[zero, zero] + mac(X[vry, vrx, zero], W[vry, vrx, zero, zero])

        return f

    TensorIntrin.register(name, *parse_shallow(lambda: (make(False), make(True))), override=True)
    _REGISTERED.add(name)
    return name


def requant_intrin(m: int, n: int, wide: bool = False) -> str:
    """TensorIntrin for the int8 rescale of an M x N tile of int32 accumulators (M pixels, N
    channels), the folded form of ir/quantize.py's requant_plan as the kernels' TIR writes it:
    out = sat8((int32)((acc * m0[c] + rnd[c]) >> 32) >> r[c]). M = 1: a one-pixel tile (no pixel
    iterator). `wide`: the int8 values stored as int16 (`ec_requant_s8_MxN_s16`: the depthwise rows
    of a fused kernel whose pointwise GEMM reads them as int16, tiling.tile_dwpw's wide_rows)."""
    name = f"ec_requant_s8_{m}x{n}" + ("_s16" if wide else "")
    if name in _REGISTERED:
        return name
    M, N, one, zero = T.int64(m), T.int64(n), T.int64(1), T.int64(0)
    sat = "ec_sat_s8"
    out = "int16" if wide else "int8"

    def value(c: Any, mu: Any, ad: Any, sh: Any) -> Any:
        v = T.call_extern("int8", sat, T.Cast("int32", T.Cast("int64", c) * T.Cast("int64", mu) + ad >> T.int64(32)) >> sh)
        return T.Cast("int16", v) if wide else v

    def make(call: bool) -> Any:
        @T.prim_func(s_tir=True)
        def f(c: T.handle, mu: T.handle, ad: T.handle, sh: T.handle, o: T.handle) -> None:
            C = T.match_buffer(c, (M, N), "int32", offset_factor=1, strides=[T.int64(), one])
            Mu = T.match_buffer(mu, (N,), "int32", offset_factor=1)
            Ad = T.match_buffer(ad, (N,), "int64", offset_factor=1)
            Sh = T.match_buffer(sh, (N,), "int32", offset_factor=1)
            O = T.match_buffer(o, (M, N), out, offset_factor=1, strides=[T.int64(), one])
            with T.sblock("root"):
                T.reads(C[0:M, 0:N], Mu[0:N], Ad[0:N], Sh[0:N])
                T.writes(O[0:M, 0:N])
                if call:
                    T.evaluate(T.call_extern("int32", name, O.access_ptr("w"), C.access_ptr("r"), Mu.access_ptr("r"),
                                             Ad.access_ptr("r"), Sh.access_ptr("r"), O.strides[0], C.strides[0]))
                elif m > 1:
                    for i, j in T.grid(M, N):
                        with T.sblock("requant"):
                            vi, vj = T.axis.remap("SS", [i, j])
                            O[vi, vj] = value(C[vi, vj], Mu[vj], Ad[vj], Sh[vj])
                else:
                    for j in T.grid(N):
                        with T.sblock("requant"):
                            vj = T.axis.remap("S", [j])
                            O[zero, vj] = value(C[zero, vj], Mu[vj], Ad[vj], Sh[vj])

        return f

    TensorIntrin.register(name, *parse_shallow(lambda: (make(False), make(True))), override=True)
    _REGISTERED.add(name)
    return name


def window_intrin(m: int, n: int, kh: int, kw: int, ci: int, s: int, types: Types = F32) -> str:
    """TensorIntrin for an M x N output tile of a KxK convolution over its whole window: the
    reduction over KH x KW taps and CI input channels in one micro-kernel call (a convolution with
    few input channels, where one GEMM call per tap reduces only CI steps), from an already padded
    row window. The weights are a packed panel read row by row, [KH][KW][CI][N]."""
    name = f"ec_window_{types.tag}_{m}x{n}_k{kh}x{kw}c{ci}s{s}"
    if name in _REGISTERED:
        return name
    M, N, KH, KW, CI, S = T.int64(m), T.int64(n), T.int64(kh), T.int64(kw), T.int64(ci), T.int64(s)
    XW = T.int64((m - 1) * s + kw)
    one, zero = T.int64(1), T.int64(0)
    ta, tb, tc = types.a, types.b, types.c
    mac = _mac(types)

    def make(call: bool) -> Any:
        @T.prim_func(s_tir=True)
        def f(x: T.handle, w: T.handle, c: T.handle) -> None:
            X = T.match_buffer(x, (KH, XW, CI), ta, offset_factor=1, strides=[T.int64(), T.int64(), one])
            W = T.match_buffer(w, (KH, KW, CI, N), tb, offset_factor=1,
                               strides=[T.int64(), T.int64(), T.int64(), one])
            C = T.match_buffer(c, (M, N), tc, offset_factor=1, strides=[T.int64(), one])
            with T.sblock("root"):
                T.reads(C[0:M, 0:N], X[0:KH, 0:XW, 0:CI], W[0:KH, 0:KW, 0:CI, 0:N])
                T.writes(C[0:M, 0:N])
                if call:
                    T.evaluate(T.call_extern("int32", name, C.access_ptr("rw"), X.access_ptr("r"),
                                             W.access_ptr("r"), X.strides[0], X.strides[1], W.strides[0],
                                             W.strides[1], W.strides[2], C.strides[0]))
                elif ci == 1 and m > 1 and n > 1:     # one input channel: its unit loop has no iterator
                    for ry, rx, rc, mm, nn in T.grid(KH, KW, CI, M, N):
                        with T.sblock("update"):
                            vm, vn, vry, vrx = T.axis.remap("SSRR", [mm, nn, ry, rx])
                            C[vm, vn] = C[vm, vn] + mac(X[vry, vm * S + vrx, zero], W[vry, vrx, zero, vn])
                elif ci == 1 and n > 1:
                    for ry, rx, rc, nn in T.grid(KH, KW, CI, N):
                        with T.sblock("update"):
                            vn, vry, vrx = T.axis.remap("SRR", [nn, ry, rx])
                            C[zero, vn] = C[zero, vn] + mac(X[vry, vrx, zero], W[vry, vrx, zero, vn])
                elif ci == 1 and m > 1:
                    for ry, rx, rc, mm, nn in T.grid(KH, KW, CI, M, N):
                        with T.sblock("update"):
                            vm, vry, vrx = T.axis.remap("SRR", [mm, ry, rx])
                            C[vm, zero] = C[vm, zero] + mac(X[vry, vm * S + vrx, zero], W[vry, vrx, zero, zero])
                elif ci == 1:
                    for ry, rx, rc, nn in T.grid(KH, KW, CI, N):
                        with T.sblock("update"):
                            vry, vrx = T.axis.remap("RR", [ry, rx])
                            C[zero, zero] = C[zero, zero] + mac(X[vry, vrx, zero], W[vry, vrx, zero, zero])
                elif m > 1 and n > 1:
                    for ry, rx, rc, mm, nn in T.grid(KH, KW, CI, M, N):
                        with T.sblock("update"):
                            vm, vn, vry, vrx, vrc = T.axis.remap("SSRRR", [mm, nn, ry, rx, rc])
                            C[vm, vn] = C[vm, vn] + mac(X[vry, vm * S + vrx, vrc], W[vry, vrx, vrc, vn])
                elif n > 1:
                    for ry, rx, rc, nn in T.grid(KH, KW, CI, N):
                        with T.sblock("update"):
                            vn, vry, vrx, vrc = T.axis.remap("SRRR", [nn, ry, rx, rc])
                            C[zero, vn] = C[zero, vn] + mac(X[vry, vrx, vrc], W[vry, vrx, vrc, vn])
                elif m > 1:
                    for ry, rx, rc, mm, nn in T.grid(KH, KW, CI, M, N):
                        with T.sblock("update"):
                            vm, vry, vrx, vrc = T.axis.remap("SRRR", [mm, ry, rx, rc])
                            C[vm, zero] = C[vm, zero] + mac(X[vry, vm * S + vrx, vrc], W[vry, vrx, vrc, zero])
                else:
                    for ry, rx, rc, nn in T.grid(KH, KW, CI, N):
                        with T.sblock("update"):
                            vry, vrx, vrc = T.axis.remap("RRR", [ry, rx, rc])
                            C[zero, zero] = C[zero, zero] + mac(X[vry, vrx, vrc], W[vry, vrx, vrc, zero])

        return f

    TensorIntrin.register(name, *parse_shallow(lambda: (make(False), make(True))), override=True)
    _REGISTERED.add(name)
    return name


# ----------------------------------------------------------------------------- C source

_C = {"float32": "float", "int8": "int8_t", "int16": "int16_t", "int32": "int32_t"}


class _Emit:
    """Loads and stores for one operand-type set and vector width."""

    def __init__(self, types: Types, lanes: int, sfx: str = "v") -> None:
        self.t, self.lanes, self.sfx = types, lanes, sfx
        self.acc = f"ec_f32{sfx}" if types.c == "float32" else f"ec_i32{sfx}"

    @classmethod
    def for_tile(cls, types: Types, n: int, lanes: int) -> tuple["_Emit", int]:
        """The emitter for a tile of n channels (the widest vector dividing n) and its vectors per row."""
        width, sfx = vector_width(n, lanes)
        return cls(types, width, sfx), n // width

    def acc_type(self) -> str:
        return self.acc if self.lanes > 1 else _C[self.t.c]

    def load_acc(self, p: str) -> str:
        return f"{self.acc}_load({p})" if self.lanes > 1 else f"*({p})"

    def store_acc(self, p: str, v: str) -> str:
        return f"{self.acc}_store({p}, {v});" if self.lanes > 1 else f"*({p}) = {v};"

    def load(self, p: str, dtype: str) -> str:
        """`lanes` elements of `dtype` at p, as an accumulator-typed vector (widened)."""
        if self.lanes == 1:
            return f"({_C[self.t.c]})*({p})"
        if dtype == "float32":
            return f"ec_f32{self.sfx}_load({p})"
        return {"int8": f"ec_i8{self.sfx}_widen", "int16": f"ec_i16{self.sfx}_widen",
                "int32": f"ec_i32{self.sfx}_load"}[dtype] + f"({p})"

    def scalar(self, expr: str) -> str:
        return f"({_C[self.t.c]})({expr})"


def ragged_width(n: int, lanes: int) -> int:
    """The vector width of a ragged tile of n channels (more than 8, no width of `narrower_widths`
    dividing them): the width leaving the fewest channels to scalars, the wider on a tie
    (58 channels: 4 lanes on NEON, 8 on AVX2 and AVX-512). 1 when n is no ragged tile."""
    if n <= 8 or lanes <= 1 or vector_width(n, lanes)[0] > 1:
        return 1
    fits = [w for w, _ in narrower_widths(lanes) if w <= n]
    return min(fits, key=lambda w: (n % w, -w)) if fits else 1


def overlap_blocks(m: int, n: int, lanes: int, acc: int) -> list[list[int]]:
    """The channel offsets of a ragged float tile run as ceil(n / lanes) full vectors, the last at
    n - lanes overlapping the one before it (the host's kernels, schedules/host/ukernels.py), in
    blocks of up to max(2, acc // m) vectors (M x that many accumulators), the last block never a
    lone overlapping vector: both compute the overlapped channels from the same loaded values,
    which is exact only when they are loaded before either is stored."""
    nv = -(-n // lanes)
    offs = [j * lanes for j in range(nv - 1)] + [n - lanes]
    v = max(2, acc // m)
    blocks = [offs[i:i + v] for i in range(0, len(offs), v)]
    if len(blocks) > 1 and len(blocks[-1]) == 1:
        blocks[-1].insert(0, blocks[-2].pop())
    return blocks


def ragged_body(m: int, n: int, lanes: int, acc: int, block: Any) -> list[str]:
    """The body of a ragged tile's micro-kernel (rules._ragged): the n channels as nv vectors of
    w = ragged_width(n, lanes) lanes, in blocks of up to max(1, acc // m) vectors (a loop over
    the full blocks, then the remaining vectors), then the last n % w channels in scalars.
    `block(w, sfx, v, off)` gives the C of one block of v vectors of width w (1: scalars) at
    channel offset `off` (a C expression followed by " + ", or "")."""
    w = ragged_width(n, lanes)
    sfx = dict(narrower_widths(lanes))[w]
    nv, r = divmod(n, w)
    v = max(1, min(nv, acc // m))
    full, rest = divmod(nv, v)
    lines = []
    if full > 1:
        lines += [f"  for (int32_t j0 = 0; j0 < {full * v * w}; j0 += {v * w}) {{",
                  *block(w, sfx, v, "j0 + "), "  }"]
    elif full == 1:
        lines += ["  {", *block(w, sfx, v, ""), "  }"]
    if rest:
        lines += ["  {", *block(w, sfx, rest, f"{full * v * w} + "), "  }"]
    if r:
        lines += ["  {", *block(1, "", r, f"{nv * w} + "), "  }"]
    return lines


def _gemm_block(types: Types, m: int, w: int, sfx: str, v: int, off: str) -> list[str]:
    """One block of a ragged GEMM: M x v accumulators of width w over the whole reduction."""
    e = _Emit(types, w, sfx)
    lines = [f"    {e.acc_type()} " + ", ".join(f"c{i}_{j} = {e.load_acc(f'C + {i} * ldc + {off}{j * w}')}"
                                              for j in range(v)) + ";" for i in range(m)]
    lines.append("    for (int32_t k = 0; k < K; ++k) {")
    lines.append(f"      const {e.acc_type()} " + ", ".join(
        f"b{j} = {e.load(f'B + k * ldb + {off}{j * w}', types.b)}" for j in range(v)) + ";")
    for i in range(m):
        lines.append(f"      const {_C[types.c]} a{i} = {e.scalar(f'A[{i} * lda + k]')};")
        lines.append("      " + " ".join(f"c{i}_{j} += a{i} * b{j};" for j in range(v)))
    lines.append("    }")
    lines += ["    " + " ".join(e.store_acc(f"C + {i} * ldc + {off}{j * w}", f"c{i}_{j}") for j in range(v))
              for i in range(m)]
    return lines


def _load_acc_tile(e: "_Emit", m: int, nv: int, lanes: int) -> list[str]:
    """C declarations of the M x nv accumulators c<i>_<j>, loaded from the output tile C (row stride ldc)."""
    return [f"  {e.acc_type()} " + ", ".join(
        f"c{i}_{j} = {e.load_acc(f'C + {i} * ldc + {j * lanes}')}" for j in range(nv)) + ";" for i in range(m)]


def _store_acc_tile(e: "_Emit", m: int, nv: int, lanes: int) -> list[str]:
    """The accumulators c<i>_<j> stored back to the output tile C, one line per row."""
    return ["  " + " ".join(e.store_acc(f"C + {i} * ldc + {j * lanes}", f"c{i}_{j}") for j in range(nv))
            for i in range(m)]


def mixed_widths(n: int, lanes: int) -> list[tuple[int, str]]:
    """The vectors of a mixed-width row of n channels: as many full `lanes`-wide vectors as fit,
    then the narrower widths of `narrower_widths` for the rest (104 channels on AVX-512: six
    16-lane vectors and one of 8, where `vector_width` would take thirteen of 8). Empty when the
    rest is no sum of those widths (n not a multiple of the narrowest)."""
    out, rest = [], n
    for w, sfx in narrower_widths(lanes):
        out += [(w, sfx)] * (rest // w)
        rest %= w
    return out if rest == 0 and lanes > 1 else []


def emit_mixed_gemm_c(m: int, n: int, lanes: int, types: Types) -> str:
    """The float GEMM micro-kernel over a mixed-width row (`mixed_widths`): one reduction loop,
    each of the M rows' accumulators a full vector but the last ones, which are narrower."""
    vecs = mixed_widths(n, lanes)
    offs = [sum(w for w, _ in vecs[:j]) for j in range(len(vecs))]
    ems = [_Emit(types, w, sfx) for w, sfx in vecs]
    lines = [
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> {types.c}); mixed widths "
        f"({' + '.join(str(w) for w, _ in vecs)} lanes), {m * len(vecs)} accumulators in registers */",
        gemm_signature(m, n, types) + " {",
    ]
    for i in range(m):
        lines.append("  " + " ".join(f"{e.acc_type()} c{i}_{j} = {e.load_acc(f'C + {i} * ldc + {offs[j]}')};"
                                     for j, e in enumerate(ems)))
    lines.append("  for (int32_t k = 0; k < K; ++k) {")
    lines.append("    " + " ".join(f"const {e.acc_type()} b{j} = {e.load(f'B + k * ldb + {offs[j]}', types.b)};"
                                   for j, e in enumerate(ems)))
    for i in range(m):
        lines.append(f"    const {_C[types.c]} a{i} = {ems[0].scalar(f'A[{i} * lda + k]')};")
        lines.append("    " + " ".join(f"c{i}_{j} += a{i} * b{j};" for j in range(len(ems))))
    lines.append("  }")
    lines += ["  " + " ".join(e.store_acc(f"C + {i} * ldc + {offs[j]}", f"c{i}_{j}") for j, e in enumerate(ems))
              for i in range(m)]
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


def uses_mixed_widths(n: int, lanes: int, types: Types) -> bool:
    """Whether a float GEMM tile of n channels is a mixed-width one (fewer vectors than with the
    widest single width dividing n)."""
    vecs = mixed_widths(n, lanes)
    return (types.c == "float32" and not types.b_order and bool(vecs)
            and len(vecs) < n // vector_width(n, lanes)[0])


def blocked_chunks(m: int, n: int, lanes: int, acc: int) -> list[list[tuple[int, str]]]:
    """The vector blocks of a blocked float GEMM tile (`uses_blocked`): the `mixed_widths` vectors
    of its n channels in order, up to max(1, acc // m) per block (M x that many accumulators)."""
    vecs = mixed_widths(n, lanes)
    v = max(1, acc // m)
    return [vecs[i:i + v] for i in range(0, len(vecs), v)]


def uses_blocked(m: int, n: int, lanes: int, types: Types, acc: int) -> bool:
    """Whether a float GEMM tile of M x n channels is a blocked one: its `mixed_widths` vectors need
    more than `acc` accumulators (a tile over all the channels of a layer that no tile of few
    vectors divides well: 1000 classes, 232 channels...), so its micro-kernel runs them in blocks."""
    vecs = mixed_widths(n, lanes)
    return types.c == "float32" and not types.b_order and acc > 0 and bool(vecs) and m * len(vecs) > acc


def gemm_block(ems: list["_Emit"], m: int, cols: list[str], b_ptrs: list[str], b_type: str, a_of: Any) -> list[str]:
    """One block of a GEMM kernel: M x len(cols) accumulators, accumulator j of each row in `ems[j]`'s
    width at C column `cols[j]` (C expressions), loaded from C, updated over the whole reduction
    from B at `b_ptrs[j]` (values of `b_type`) and A at `a_of(i)` for row i, then stored."""
    c_type = _C[ems[0].t.c]
    lines = ["    " + " ".join(f"{e.acc_type()} c{i}_{j} = {e.load_acc(f'C + {i} * ldc + {col}')};"
                               for j, (e, col) in enumerate(zip(ems, cols))) for i in range(m)]
    lines.append("    for (int32_t k = 0; k < K; ++k) {")
    lines.append("      " + " ".join(f"const {e.acc_type()} b{j} = {e.load(ptr, b_type)};"
                                     for j, (e, ptr) in enumerate(zip(ems, b_ptrs))))
    for i in range(m):
        lines.append(f"      const {c_type} a{i} = {a_of(i)};")
        lines.append("      " + " ".join(f"c{i}_{j} += a{i} * b{j};" for j in range(len(ems))))
    lines.append("    }")
    lines += ["    " + " ".join(e.store_acc(f"C + {i} * ldc + {col}", f"c{i}_{j}") for j, (e, col) in enumerate(zip(ems, cols)))
              for i in range(m)]
    return lines


def _chunk_block(types: Types, m: int, chunk: list[tuple[int, str]], off: str) -> list[str]:
    """One block of a blocked GEMM: M x len(chunk) accumulators (the chunk's vector widths) over
    the whole reduction, at channel offset `off` (a C expression followed by " + ", or "")."""
    offs = [sum(w for w, _ in chunk[:j]) for j in range(len(chunk))]
    ems = [_Emit(types, w, sfx) for w, sfx in chunk]
    return gemm_block(ems, m, [f"{off}{o}" for o in offs], [f"B + k * ldb + {off}{o}" for o in offs], types.b,
                      lambda i: ems[0].scalar(f"A[{i} * lda + k]"))


def emit_blocked_gemm_c(m: int, n: int, lanes: int, types: Types, acc: int) -> str:
    """The float GEMM micro-kernel of a blocked tile (`uses_blocked`): the n channels in blocks of
    `blocked_chunks`, each block M x its vectors of accumulators over the whole reduction (the A
    tile is read again per block, the weights once): a loop over the leading run of equal
    full-width blocks, then the other blocks one by one."""
    chunks = blocked_chunks(m, n, lanes, acc)
    same = 0
    while same < len(chunks) and chunks[same] == chunks[0] and all(w == lanes for w, _ in chunks[same]):
        same += 1
    step = sum(w for w, _ in chunks[0])
    lines = [
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> {types.c}); blocked tile: {len(chunks)} blocks of up "
        f"to {m * max(len(c) for c in chunks)} accumulators ({' + '.join(str(w) for w, _ in mixed_widths(n, lanes))} "
        "lanes) */",
        gemm_signature(m, n, types) + " {",
    ]
    if same > 1:
        lines += [f"  for (int32_t j0 = 0; j0 < {same * step}; j0 += {step}) {{",
                  *_chunk_block(types, m, chunks[0], "j0 + "), "  }"]
    else:
        same = 0
    done = same * step
    for chunk in chunks[same:]:
        lines += ["  {", *_chunk_block(types, m, chunk, f"{done} + " if done else ""), "  }"]
        done += sum(w for w, _ in chunk)
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


def emit_gemm_c(m: int, n: int, lanes: int, types: Types = F32, acc: int = 8, mixed: bool = False,
                block_acc: int = 0) -> str:
    """The generic GEMM micro-kernel: M x N accumulators in named (vector) variables, one rank-1
    update per reduction step; a ragged tile (ragged_width > 1) in blocks of up to `acc`
    accumulators (ragged_body); with `mixed` (a family whose rule ranks such tiles), a float tile
    that full vectors do not divide in full and narrower ones (emit_mixed_gemm_c), or, when its
    vectors need more than `block_acc` accumulators, a blocked tile (emit_blocked_gemm_c)."""
    if types.b_order:
        return emit_ordered_gemm_c(m, n, types)
    if mixed and uses_blocked(m, n, lanes, types, block_acc):
        return emit_blocked_gemm_c(m, n, lanes, types, block_acc)
    if mixed and uses_mixed_widths(n, lanes, types):
        return emit_mixed_gemm_c(m, n, lanes, types)
    if ragged_width(n, lanes) > 1:
        w = ragged_width(n, lanes)
        return "\n".join([
            f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> {types.c}); ragged tile: {w}-lane "
            f"vectors in blocks of up to {max(1, min(n // w, acc // m)) * m} accumulators, the last {n % w} channels "
            "in scalars */",
            gemm_signature(m, n, types) + " {",
            *ragged_body(m, n, lanes, acc, lambda w, sfx, v, off: _gemm_block(types, m, w, sfx, v, off)),
            "  return 0;", "}"])
    e, nv = _Emit.for_tile(types, n, lanes)
    lanes = e.lanes
    lines = [
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> {types.c}); {lanes}-lane vectors, "
        f"{m * nv} accumulators in registers */",
        f"static inline int32_t ec_gemm_{types.tag}_{m}x{n}({_C[types.c]} *restrict C, const {_C[types.a]} *restrict A, "
        f"const {_C[types.b]} *restrict B, int32_t K, int64_t lda, int64_t ldb, int64_t ldc) {{",
    ]
    lines += _load_acc_tile(e, m, nv, lanes)
    lines.append("  for (int32_t k = 0; k < K; ++k) {")
    lines.append(f"    const {e.acc_type()} " + ", ".join(
        f"b{j} = {e.load(f'B + k * ldb + {j * lanes}', types.b)}" for j in range(nv)) + ";")
    for i in range(m):
        lines.append(f"    const {_C[types.c]} a{i} = {e.scalar(f'A[{i} * lda + k]')};")
        lines.append("    " + " ".join(f"c{i}_{j} += a{i} * b{j};" for j in range(nv)))
    lines.append("  }")
    lines += _store_acc_tile(e, m, nv, lanes)
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


def gemm_signature(m: int, n: int, types: Types) -> str:
    if wide_b(types):     # the weight array and the panel's offset in it, in int16 values
        return (f"static inline int32_t ec_gemm_{types.tag}_{m}x{n}({_C[types.c]} *restrict C, "
                f"const {_C[types.a]} *restrict A, const void *restrict Bw, int64_t boff, int32_t K, int64_t lda, "
                "int64_t ldb, int64_t ldc)")
    return (f"static inline int32_t ec_gemm_{types.tag}_{m}x{n}({_C[types.c]} *restrict C, "
            f"const {_C[types.a]} *restrict A, const {_C[types.b]} *restrict B, int32_t K, int64_t lda, "
            "int64_t ldb, int64_t ldc)")


def wide_b_pointer(types: Types) -> list[str]:
    """A wide-weight GEMM's first line: its panel as int16 values (B)."""
    return ["  const int16_t *restrict B = (const int16_t *)Bw + boff;"] if wide_b(types) else []


def ordered_gemm_body(m: int, n: int, types: Types, indent: str = "  ") -> list[str]:
    """Portable C over a panel in `types.b_order` (PANEL_ORDERS): the K quads, then the K % 4
    last rows; each accumulator is a named variable."""
    if types.b_order in GROUP_ORDERS:
        return [indent + ln for ln in _grouped_gemm_body(m, n, GROUP_ORDERS[types.b_order])]
    perm = PANEL_ORDERS[types.b_order]
    tb = "int16_t" if wide_b(types) else "int8_t"
    lines = ["int32_t " + ", ".join(f"c{i}_{j} = C[{i} * ldc + {j}]" for i in range(m) for j in range(n)) + ";",
             f"const {tb} *b = B;", "int32_t k = 0;",
             "for (; k + 4 <= K; k += 4, b += 4 * ldb) {"]
    for j in range(n):
        for i in range(m):
            terms = " + ".join(f"(int32_t)A[{i} * lda + k + {t}] * b[{j * 4 + perm.index(t)}]" for t in range(4))
            lines.append(f"  c{i}_{j} += {terms};")
    lines += ["}", "for (; k < K; ++k, b += ldb) {"]
    for j in range(n):
        lines.append("  " + " ".join(f"c{i}_{j} += (int32_t)A[{i} * lda + k] * b[{j}];" for i in range(m)))
    lines.append("}")
    lines += [" ".join(f"C[{i} * ldc + {j}] = c{i}_{j};" for j in range(n)) for i in range(m)]
    return [indent + ln for ln in lines]


def _grouped_gemm_body(m: int, n: int, g: int) -> list[str]:
    """Portable C over a panel in a GROUP_ORDERS order of group size g (channel j's weights of a
    group of r <= g reduction steps at b + j * r)."""
    lines = ["int32_t " + ", ".join(f"c{i}_{j} = C[{i} * ldc + {j}]" for i in range(m) for j in range(n)) + ";",
             "const int8_t *b = B;",
             f"for (int32_t k = 0; k < K; k += {g}) {{",
             f"  const int32_t r = K - k < {g} ? K - k : {g};",
             "  for (int32_t t = 0; t < r; ++t) {"]
    for j in range(n):
        lines.append("    " + " ".join(f"c{i}_{j} += (int32_t)A[{i} * lda + k + t] * b[{j} * r + t];" for i in range(m)))
    lines += ["  }", f"  b += {n} * r;", "}"]
    lines += [" ".join(f"C[{i} * ldc + {j}] = c{i}_{j};" for j in range(n)) for i in range(m)]
    return lines


def emit_ordered_gemm_c(m: int, n: int, types: Types) -> str:
    """The generic GEMM over a panel in a family's order, scalar C."""
    return "\n".join([
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> {types.c}); B panel in order "
        f"{types.b_order!r} (quads of K), scalar C */",
        gemm_signature(m, n, types) + " {", *wide_b_pointer(types), *ordered_gemm_body(m, n, types), "  return 0;", "}"])


def dw_signature(m: int, n: int, kh: int, kw: int, s: int, types: Types) -> str:
    return (f"static inline int32_t ec_dw_{types.tag}_{m}x{n}_k{kh}x{kw}s{s}({_C[types.c]} *restrict C, "
            f"const {_C[types.a]} *restrict X, const {_C[types.b]} *restrict W, int64_t ldx_row, int64_t ldx_px, "
            "int64_t ldw_row, int64_t ldw_px, int64_t ldc)")


def dw_body(m: int, n: int, kh: int, kw: int, s: int, lanes: int, types: Types) -> list[str]:
    """The generic depthwise loop: M x N accumulators, one tap of the window at a time."""
    e, nv = _Emit.for_tile(types, n, lanes)
    lanes = e.lanes
    lines = _load_acc_tile(e, m, nv, lanes)
    lines.append(f"  for (int32_t ry = 0; ry < {kh}; ++ry) {{")
    lines.append(f"    for (int32_t rx = 0; rx < {kw}; ++rx) {{")
    lines.append(f"      const {_C[types.a]} *x = X + ry * ldx_row + rx * ldx_px;")
    lines.append(f"      const {_C[types.b]} *w = W + ry * ldw_row + rx * ldw_px;")
    lines.append(f"      const {e.acc_type()} " + ", ".join(
        f"w{j} = {e.load(f'w + {j * lanes}', types.b)}" for j in range(nv)) + ";")
    for i in range(m):
        lines.append("      " + " ".join(
            f"c{i}_{j} += {e.load(f'x + {i * s} * ldx_px + {j * lanes}', types.a)} * w{j};" for j in range(nv)))
    lines += ["    }", "  }"]
    lines += _store_acc_tile(e, m, nv, lanes)
    return lines


def _dw_block(types: Types, m: int, kh: int, kw: int, s: int, w: int, sfx: str, v: int, off: str) -> list[str]:
    """One block of a ragged depthwise tile: M x v accumulators of width w over the whole window."""
    e = _Emit(types, w, sfx)
    lines = [f"    {e.acc_type()} " + ", ".join(f"c{i}_{j} = {e.load_acc(f'C + {i} * ldc + {off}{j * w}')}"
                                              for j in range(v)) + ";" for i in range(m)]
    lines += [f"    for (int32_t ry = 0; ry < {kh}; ++ry) {{", f"      for (int32_t rx = 0; rx < {kw}; ++rx) {{",
              f"        const {_C[types.a]} *x = X + ry * ldx_row + rx * ldx_px + {off}0;",
              f"        const {_C[types.b]} *w = W + ry * ldw_row + rx * ldw_px + {off}0;",
              f"        const {e.acc_type()} " + ", ".join(f"w{j} = {e.load(f'w + {j * w}', types.b)}"
                                                          for j in range(v)) + ";"]
    for i in range(m):
        lines.append("        " + " ".join(
            f"c{i}_{j} += {e.load(f'x + {i * s} * ldx_px + {j * w}', types.a)} * w{j};" for j in range(v)))
    lines += ["      }", "    }"]
    lines += ["    " + " ".join(e.store_acc(f"C + {i} * ldc + {off}{j * w}", f"c{i}_{j}") for j in range(v))
              for i in range(m)]
    return lines


def emit_dw_c(m: int, n: int, kh: int, kw: int, s: int, lanes: int, types: Types = F32, acc: int = 8) -> str:
    if ragged_width(n, lanes) > 1:
        w = ragged_width(n, lanes)
        return "\n".join([
            f"/* depthwise {kh}x{kw}/{s} ({types.a} x {types.b} -> {types.c}): "
            f"C[{m}x{n}] += sum X[ry][m*{s}+rx][n] * W[ry][rx][n] over a padded window; ragged tile: {w}-lane "
            f"vectors in blocks, the last {n % w} channels in scalars */",
            dw_signature(m, n, kh, kw, s, types) + " {",
            *ragged_body(m, n, lanes, acc, lambda w, sfx, v, off: _dw_block(types, m, kh, kw, s, w, sfx, v, off)),
            "  return 0;", "}"])
    return "\n".join([
        f"/* depthwise {kh}x{kw}/{s} ({types.a} x {types.b} -> {types.c}): "
        f"C[{m}x{n}] += sum X[ry][m*{s}+rx][n] * W[ry][rx][n] over a padded window */",
        dw_signature(m, n, kh, kw, s, types) + " {", *dw_body(m, n, kh, kw, s, lanes, types), "  return 0;", "}"])


def requant_signature(m: int, n: int, wide: bool = False) -> str:
    """`wide`: `ec_requant_s8_MxN_s16`, the int8 values stored as int16 (requant_intrin)."""
    suffix, out = ("_s16", "int16_t") if wide else ("", "int8_t")
    return (f"static inline int32_t ec_requant_s8_{m}x{n}{suffix}({out} *restrict O, const int32_t *restrict C, "
            "const int32_t *restrict m0, const int64_t *restrict rnd, const int32_t *restrict r, int64_t ldo, "
            "int64_t ldc)")


def requant_body(m: int, n: int, wide: bool = False) -> list[str]:
    """The rescale as the kernels' own C writes it, one value at a time (ir/quantize.py); `wide`:
    stored as int16."""
    cast = "(int16_t)(int8_t)" if wide else "(int8_t)"
    return [f"  for (int32_t i = 0; i < {m}; ++i) {{",
            f"    for (int32_t j = 0; j < {n}; ++j) {{",
            "      const int32_t x = ((int32_t)((((int64_t)C[i * ldc + j]) * ((int64_t)m0[j]) + rnd[j]) >> (int64_t)32)) "
            ">> r[j];",
            f"      O[i * ldo + j] = {cast}(x < -128 ? -128 : x > 127 ? 127 : x);",
            "    }", "  }"]


def emit_requant_c(m: int, n: int, wide: bool = False) -> str:
    return "\n".join([
        f"/* int8 rescale of C[{m}x{n}] (int32): O = sat8((int32)((C * m0 + rnd) >> 32) >> r), per channel"
        + (", stored as int16" if wide else "") + " */",
        requant_signature(m, n, wide) + " {", *requant_body(m, n, wide), "  return 0;", "}"])


WIDEN_SIGNATURE = ("static inline int32_t ec_widen_s8s16(int16_t *restrict O, const int8_t *restrict X, int32_t rows, "
                   "int32_t cols, int64_t ldo, int64_t ldx, int32_t zp)")


def widen_body() -> list[str]:
    """The zero-point-shifted int8 -> int16 row copy as the kernels' own C writes it."""
    return ["  for (int32_t i = 0; i < rows; ++i) {",
            "    for (int32_t j = 0; j < cols; ++j) {",
            "      O[i * ldo + j] = (int16_t)(((int16_t)X[i * ldx + j]) - (int16_t)zp);",
            "    }", "  }"]


def emit_widen_c() -> str:
    return "\n".join([
        "/* O[rows x cols] = (int16)X - zp: the in-bound rows of a zero-point-shifted padded window */",
        WIDEN_SIGNATURE + " {", *widen_body(), "  return 0;", "}"])


def window_signature(m: int, n: int, kh: int, kw: int, ci: int, s: int, types: Types) -> str:
    return (f"static inline int32_t ec_window_{types.tag}_{m}x{n}_k{kh}x{kw}c{ci}s{s}({_C[types.c]} *restrict C, "
            f"const {_C[types.a]} *restrict X, const {_C[types.b]} *restrict W, int64_t ldx_row, int64_t ldx_px, "
            "int64_t ldw_row, int64_t ldw_px, int64_t ldw_ci, int64_t ldc)")


def window_body(m: int, n: int, kh: int, kw: int, ci: int, s: int, lanes: int, types: Types) -> list[str]:
    """The generic KxK window loop: M x N accumulators, one rank-1 update (M activations x N
    weights) per tap and input channel."""
    e, nv = _Emit.for_tile(types, n, lanes)
    lanes = e.lanes
    lines = _load_acc_tile(e, m, nv, lanes)
    lines.append(f"  for (int32_t ry = 0; ry < {kh}; ++ry) {{")
    lines.append(f"    for (int32_t rx = 0; rx < {kw}; ++rx) {{")
    lines.append(f"      for (int32_t rc = 0; rc < {ci}; ++rc) {{")
    lines.append(f"        const {_C[types.a]} *x = X + ry * ldx_row + rx * ldx_px + rc;")
    lines.append(f"        const {_C[types.b]} *w = W + ry * ldw_row + rx * ldw_px + rc * ldw_ci;")
    lines.append(f"        const {e.acc_type()} " + ", ".join(
        f"w{j} = {e.load(f'w + {j * lanes}', types.b)}" for j in range(nv)) + ";")
    for i in range(m):
        lines.append(f"        const {_C[types.c]} a{i} = {e.scalar(f'x[{i * s} * ldx_px]')};")
        lines.append("        " + " ".join(f"c{i}_{j} += a{i} * w{j};" for j in range(nv)))
    lines += ["      }", "    }", "  }"]
    lines += _store_acc_tile(e, m, nv, lanes)
    return lines


def emit_window_c(m: int, n: int, kh: int, kw: int, ci: int, s: int, lanes: int, types: Types = F32) -> str:
    return "\n".join([
        f"/* KxK window {kh}x{kw}x{ci}/{s} ({types.a} x {types.b} -> {types.c}): "
        f"C[{m}x{n}] += sum X[ry][m*{s}+rx][rc] * W[ry][rx][rc][n] over a padded window */",
        window_signature(m, n, kh, kw, ci, s, types) + " {", *window_body(m, n, kh, kw, ci, s, lanes, types),
        "  return 0;", "}"])


def ragged_pixels(m: int, p: int) -> list[tuple[int, int]]:
    """The (first pixel, pixels) of the tiles of a ragged pixel tile of M pixels in tiles of P:
    M // P tiles of P pixels, then one of M % P."""
    q, r = divmod(m, p)
    return [(i * p, p) for i in range(q)] + ([(q * p, r)] if r else [])


def rows_gemm_c(m: int, p: int, n: int, types: Types, zero_start: bool = False) -> str:
    """`ec_gemm_<t>_MxN_pP`, a ragged pixel tile (gemm_intrin's `pixels`): the M pixels of a row
    that P does not divide, as M // P calls of the P x N micro-kernel and one of the (M % P) x N
    one, each over the whole reduction (C += A B: every pixel is computed once). `zero_start`:
    `ec_gemm_<t>_MxN_pP_z`, the tile that sets C (C = A B) by the zero-start kernels of its tiles."""
    q, r = divmod(m, p)
    tag, z = types.tag, "_z" if zero_start else ""
    rest = "Bw, boff, K, lda, ldb, ldc" if wide_b(types) and not zero_start else "B, K, lda, ldb, ldc"
    signature = gemm_signature(m, n, types).replace(f"ec_gemm_{tag}_{m}x{n}(", f"ec_gemm_{tag}_{m}x{n}_p{p}{z}(")
    return "\n".join([
        f"/* C[{m}x{n}] {'=' if zero_start else '+='} A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> {types.c}); "
        f"ragged pixel tile: {q} x {p} pixels, then {r} */",
        signature + " {",
        f"  for (int32_t i = 0; i < {q * p}; i += {p}) ec_gemm_{tag}_{p}x{n}{z}(C + i * ldc, A + i * lda, {rest});",
        f"  ec_gemm_{tag}_{r}x{n}{z}(C + {q * p} * ldc, A + {q * p} * lda, {rest});",
        "  return 0;", "}"])


def family_gemm_c(own: Any, rules: Any, m: int, n: int, lanes: int, types: Types) -> str:
    """`ec_gemm_<t>_MxN` (C += A B) as a family emits it: its own kernel (`own.gemm`, its
    `<family>/ukernels.py`) where it has one for the tile, else the generic one, ranked tiles'
    blocks sized by the family's GEMM model (`rules.gemm_model`) when it has one."""
    code = getattr(own, "gemm", lambda *a: None)(m, n, lanes, types)
    model = getattr(rules, "gemm_model", None)
    return code or emit_gemm_c(m, n, lanes, types, rules.conv_acc, mixed=model is not None,
                               block_acc=model.accumulators if model is not None else 0)


def gemm_z_c(m: int, n: int, types: Types) -> str:
    """`ec_gemm_<t>_MxN_z` (C = A B) where a family has no kernel of its own: the tile zeroed, then
    the += kernel."""
    return "\n".join([
        f"/* C[{m}x{n}] = A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> {types.c}): zeroed, then the += kernel */",
        gemm_signature(m, n, types).replace(f"ec_gemm_{types.tag}_{m}x{n}(", f"ec_gemm_{types.tag}_{m}x{n}_z(") + " {",
        f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) C[i * ldc + j] = 0;",
        f"  return ec_gemm_{types.tag}_{m}x{n}(C, A, B, K, lda, ldb, ldc);", "}"])


def rows_gemm_z_c(m: int, p: int, n: int, types: Types) -> str:
    """`ec_gemm_<t>_MxN_pP_z`: the ragged pixel tile of `rows_gemm_c` that sets C (C = A B)."""
    return rows_gemm_c(m, p, n, types, zero_start=True)


def kernel_rows_signature(m: int, n: int, r: int, types: Types, pixels: int = 0) -> str:
    """The prototype of `ec_gemm_<t>_MxN[_pP]_rR_z`: the GEMM's arguments with the distances
    between two kernel rows' A and B (`ars`, `brs`) before ldc."""
    p = f"_p{pixels}" if pixels else ""
    return (f"static inline int32_t ec_gemm_{types.tag}_{m}x{n}{p}_r{r}_z({_C[types.c]} *restrict C, "
            f"const {_C[types.a]} *restrict A, const {_C[types.b]} *restrict B, int32_t K, int64_t lda, "
            "int64_t ldb, int64_t ars, int64_t brs, int64_t ldc")


_K_LOOP = "for (int32_t k = 0; k < K; ++k) {"


def kernel_rows_c(z_src: str, m: int, n: int, r: int, types: Types) -> str:
    """`ec_gemm_<t>_MxN_rR_z` (C = the sum over R kernel rows of A_r B_r, row r's A at A + r * ars
    and B at B + r * brs; codegen.lower._kernel_rows_call) written from the zero-start kernel's C
    `z_src` (`ec_gemm_<t>_MxN_z`): each reduction loop runs over the rows too, its accumulators in
    registers throughout, where a call per row loaded and stored them. The same products summed
    in the same order (row by row, each over K): the same bits. Where that kernel reads A or B
    other than in its `for k` loops' bodies, the portable form: the zero-start kernel on the first
    row, then the += kernel on each other."""
    name = f"ec_gemm_{types.tag}_{m}x{n}_z("
    proto = kernel_rows_signature(m, n, r, types) + ")"
    portable = "\n".join([
        f"/* C[{m}x{n}] = sum over {r} kernel rows of A_r[{m}xK] * B_r[Kx{n}] ({types.a} x {types.b} -> {types.c}): "
        "the zero-start kernel, then the += kernel per row */",
        proto + " {",
        f"  ec_gemm_{types.tag}_{m}x{n}_z(C, A, B, K, lda, ldb, ldc);",
        f"  for (int32_t r = 1; r < {r}; ++r) ec_gemm_{types.tag}_{m}x{n}(C, A + r * ars, B + r * brs, K, lda, ldb, ldc);",
        "  return 0;", "}"])
    if z_src.count(name) != 1 or _K_LOOP not in z_src:
        return portable
    start = z_src.index(name)
    head = z_src[:max(z_src.rfind("\n", 0, start), 0)].strip("\n")
    lines = z_src[z_src.index("{", start) + 1:].split("\n")
    out, rewritten, i = [], 0, 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != _K_LOOP:
            out.append(line)
            i += 1
            continue
        indent = line[:len(line) - len(line.lstrip())]
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == indent + "}"), None)
        if end is None:
            return portable
        body = "\n".join(lines[i + 1:end])
        uses = len(re.findall(r"\b[AB]\b", body))
        body, na = re.subn(r"\bA\[", "Ar[", body)
        body, nb = re.subn(r"\bB \+ ", "Br + ", body)
        if na + nb != uses:
            return portable
        rewritten += 1
        out += [f"{indent}for (int32_t r = 0; r < {r}; ++r) {{",
                f"{indent}  const {_C[types.a]} *restrict Ar = A + r * ars;",
                f"{indent}  const {_C[types.b]} *restrict Br = B + r * brs;",
                f"{indent}  {_K_LOOP}", *[f"  {ln}" for ln in body.split("\n")], f"{indent}  }}", f"{indent}}}"]
        i = end + 1
    text = "\n".join(out)
    if not rewritten or re.search(r"\b[AB]\b", re.sub(r"const [a-z0-9_]+ \*restrict [AB]r = [AB] \+ r \* [ab]rs;", "", text)):
        return portable
    comment = f"/* ... summed over {r} kernel rows (row r: A + r * ars, B + r * brs), the accumulators in registers */"
    return "\n".join([ln for ln in (head, comment) if ln] + [proto + " {" + text])


def rows_kernel_rows_c(m: int, p: int, n: int, r: int, types: Types) -> str:
    """`ec_gemm_<t>_MxN_pP_rR_z`: a ragged pixel tile (rows_gemm_c) of kernel-rows tiles."""
    q, rest = divmod(m, p)
    args = "B, K, lda, ldb, ars, brs, ldc"
    return "\n".join([
        f"/* C[{m}x{n}] = sum over {r} kernel rows of A_r[{m}xK] * B_r[Kx{n}]; ragged pixel tile: {q} x {p} pixels, "
        f"then {rest} */",
        kernel_rows_signature(m, n, r, types, pixels=p) + ") {",
        f"  for (int32_t i = 0; i < {q * p}; i += {p}) ec_gemm_{types.tag}_{p}x{n}_r{r}_z(C + i * ldc, A + i * lda, {args});",
        f"  ec_gemm_{types.tag}_{rest}x{n}_r{r}_z(C + {q * p} * ldc, A + {q * p} * lda, {args});",
        "  return 0;", "}"])


def rows_dw_c(m: int, p: int, n: int, kh: int, kw: int, s: int, types: Types) -> str:
    """`ec_dw_<t>_MxN_kKHxKWsS_pP`, a ragged pixel tile of a depthwise window (dw_intrin's
    `pixels`): M // P calls of the P x N micro-kernel, then one of (M % P) x N."""
    q, r = divmod(m, p)
    base = f"ec_dw_{types.tag}_{{}}x{n}_k{kh}x{kw}s{s}"
    signature = dw_signature(m, n, kh, kw, s, types).replace(base.format(m) + "(", base.format(m) + f"_p{p}(")
    rest = "W, ldx_row, ldx_px, ldw_row, ldw_px, ldc"
    return "\n".join([
        f"/* depthwise {kh}x{kw}/{s} ({types.a} x {types.b} -> {types.c}), C[{m}x{n}]; ragged pixel tile: "
        f"{q} x {p} pixels, then {r} */",
        signature + " {",
        f"  for (int32_t i = 0; i < {q * p}; i += {p}) {base.format(p)}(C + i * ldc, X + i{f' * {s}' if s > 1 else ''} * ldx_px, {rest});",
        f"  {base.format(r)}(C + {q * p} * ldc, X + {q * p * s} * ldx_px, {rest});",
        "  return 0;", "}"])


def guarded_kernel(prelude: str, comment: str, signature: str, condition: str, fast: list[str],
                   portable: list[str]) -> str:
    """A family's micro-kernel definition: its instructions where the compiler targets them
    (`condition`, a preprocessor test), the portable C otherwise, so that the same model.c gives
    the same bytes on the host."""
    return "\n".join([prelude, comment, signature + " {", f"#if {condition}", *fast, "#else", *portable, "#endif",
                      "  return 0;", "}"])


# Scalar helpers the generated kernels call by name (the int8 rescale's saturation): each keeps a
# portable C body under the ARM feature test, so the same model.c runs on the host.
HELPERS = {
    "ec_sat_s8": "\n".join([
        "/* an int32 clamped to the int8 range (SSAT where the core has it) */",
        "static inline int8_t ec_sat_s8(int32_t x) {",
        "#if defined(__ARM_FEATURE_SAT)",
        "  return (int8_t)__ssat(x, 8);",
        "#else",
        "  return (int8_t)(x < -128 ? -128 : x > 127 ? 127 : x);",
        "#endif",
        "}",
    ]),
}
HELPER_CALL_RE = re.compile(r"\b(" + "|".join(HELPERS) + r")\(")
ACLE_INCLUDE = "#if defined(__ARM_FEATURE_SAT) || defined(__ARM_FEATURE_DSP) || defined(__ARM_FEATURE_MVE)\n" \
               "#include <arm_acle.h>\n#endif"


def _vector_types(width: int, sfx: str) -> list[str]:
    b = width * 4
    return [
        f"typedef float ec_f32{sfx} __attribute__((vector_size({b})));",
        f"typedef float ec_f32{sfx}_u __attribute__((vector_size({b}), aligned(4)));",
        f"typedef int32_t ec_i32{sfx} __attribute__((vector_size({b})));",
        f"typedef int32_t ec_i32{sfx}_u __attribute__((vector_size({b}), aligned(4)));",
        f"typedef int16_t ec_i16{sfx}_u __attribute__((vector_size({width * 2}), aligned(2)));",
        f"typedef int8_t ec_i8{sfx}_u __attribute__((vector_size({width}), aligned(1)));",
        f"#define ec_f32{sfx}_load(p) (*(const ec_f32{sfx}_u *)(p))",
        f"#define ec_f32{sfx}_store(p, v) (*(ec_f32{sfx}_u *)(p) = (v))",
        f"#define ec_i32{sfx}_load(p) (*(const ec_i32{sfx}_u *)(p))",
        f"#define ec_i32{sfx}_store(p, v) (*(ec_i32{sfx}_u *)(p) = (v))",
        f"#define ec_i16{sfx}_widen(p) __builtin_convertvector(*(const ec_i16{sfx}_u *)(p), ec_i32{sfx})",
        f"#define ec_i8{sfx}_widen(p) __builtin_convertvector(*(const ec_i8{sfx}_u *)(p), ec_i32{sfx})",
    ]


def narrower_widths(lanes: int) -> list[tuple[int, str]]:
    """Vector widths a family of `lanes` lanes also uses, widest first, with their type suffixes:
    full, half and quarter width, down to 4 lanes (the narrowest SIMD register)."""
    out, w = [], lanes
    for sfx in ("v", "h", "q"):
        if w < 4:
            break
        out.append((w, sfx))
        w //= 2
    return out


def vector_width(n: int, lanes: int) -> tuple[int, str]:
    """The vector width a tile of n channels uses: the widest of `narrower_widths` dividing n
    (16-lane AVX-512 tiles of 24 or 116 channels use 8 or 4 lanes), else scalar."""
    if lanes > 1:
        for w, sfx in narrower_widths(lanes):
            if n % w == 0:
                return w, sfx
    return 1, ""


def emit_prelude(lanes: int) -> str:
    if lanes <= 1:
        return "/* micro-kernels use scalar registers (no SIMD used on this target) */"
    lines = [f"/* {lanes}-lane vectors (GCC/Clang vector extensions: AVX, NEON or Helium) */"]
    for w, sfx in narrower_widths(lanes):
        if sfx != "v":
            lines.append(f"/* {w}-lane vectors for tiles whose channels are not a multiple of {w * 2} */")
        lines += _vector_types(w, sfx)
    return "\n".join(lines)
