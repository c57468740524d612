"""Micro-kernels: the innermost register-blocked loops, written once in C and reached from TIR
by tensorization.

A scheduled convolution or dense layer tiles its output into M x N blocks (M output pixels of
one row, N output channels) and hands the whole reduction over the input channels to
`ec_gemm_f32_MxN(C, A, B, K, lda, ldb, ldc)`:

    C[m][n] += sum_k A[m*lda + k] * B[k*ldb + n]      (m < M, n < N, k < K)

The C body is generated per (M, N) for the target's SIMD width with GCC/Clang vector
extensions, so one source serves AVX2/AVX-512 (host), NEON (Cortex-A), Helium (Cortex-M55) and
plain FPU registers (lanes = 1, Cortex-M4/M7). Keeping the accumulators in named vector
variables is what makes the compiler keep them in registers; plain loops over a local array do
not reliably get there (measured: 1.2 vs 48 GMAC/s on the same pointwise layer with gcc 12).
"""

from __future__ import annotations

import re

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

_REGISTERED: set[str] = set()
CALL_RE = re.compile(r"\bec_gemm_f32_(\d+)x(\d+)\(")
DW_CALL_RE = re.compile(r"\bec_dw_f32_(\d+)x(\d+)_k(\d+)x(\d+)s(\d+)\(")


def gemm_intrin(m: int, n: int, k: int, stride: int = 1) -> str:
    """Register (once) and return the name of the TensorIntrin for an M x N tile over K.
    `stride` is the distance, in A rows, between consecutive output pixels (a strided conv)."""
    name = f"ec_gemm_f32_{m}x{n}_k{k}_s{stride}"
    if name in _REGISTERED:
        return name
    M, N, K, S = T.int64(m), T.int64(n), T.int64(k), T.int64(stride)
    AM = T.int64((m - 1) * stride + 1)
    symbol = f"ec_gemm_f32_{m}x{n}"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (AM, K), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        B = T.match_buffer(b, (K, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        C = T.match_buffer(c, (M, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        with T.sblock("root"):
            T.reads(C[0:M, 0:N], A[0:AM, 0:K], B[0:K, 0:N])
            T.writes(C[0:M, 0:N])
            for kk, mm, nn in T.grid(K, M, N):
                with T.sblock("update"):
                    vm, vn, vk = T.axis.remap("SSR", [mm, nn, kk])
                    C[vm, vn] = C[vm, vn] + A[vm * S, vk] * B[vk, vn]

    # A one-pixel tile has no pixel loop left in the scheduled kernel: describe it without one.
    @T.prim_func(s_tir=True)
    def desc1(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (AM, K), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        B = T.match_buffer(b, (K, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        C = T.match_buffer(c, (M, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        with T.sblock("root"):
            T.reads(C[0:M, 0:N], A[0:AM, 0:K], B[0:K, 0:N])
            T.writes(C[0:M, 0:N])
            for kk, nn in T.grid(K, N):
                with T.sblock("update"):
                    vn, vk = T.axis.remap("SR", [nn, kk])
                    C[0, vn] = C[0, vn] + A[0, vk] * B[vk, vn]

    if m == 1:
        desc = desc1

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (AM, K), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        B = T.match_buffer(b, (K, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        C = T.match_buffer(c, (M, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(1)])
        with T.sblock("root"):
            T.reads(C[0:M, 0:N], A[0:AM, 0:K], B[0:K, 0:N])
            T.writes(C[0:M, 0:N])
            T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), A.access_ptr("r"),
                                     B.access_ptr("r"), k, A.strides[0] * S, B.strides[0], C.strides[0]))

    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name


def dw_intrin(m: int, n: int, kh: int, kw: int, s: int) -> str:
    """TensorIntrin for a depthwise M x N output tile (M pixels of a row, N channels) computed from
    an already padded input window."""
    name = f"ec_dw_f32_{m}x{n}_k{kh}x{kw}s{s}"
    if name in _REGISTERED:
        return name
    M, N, KH, KW, S = T.int64(m), T.int64(n), T.int64(kh), T.int64(kw), T.int64(s)
    XW = T.int64((m - 1) * s + kw)
    one = T.int64(1)

    @T.prim_func(s_tir=True)
    def desc(x: T.handle, w: T.handle, c: T.handle) -> None:
        X = T.match_buffer(x, (KH, XW, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(), one])
        W = T.match_buffer(w, (KH, KW, one, N), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), T.int64(), one])
        C = T.match_buffer(c, (M, N), "float32", offset_factor=1, strides=[T.int64(), one])
        with T.sblock("root"):
            T.reads(C[0:M, 0:N], X[0:KH, 0:XW, 0:N], W[0:KH, 0:KW, 0:1, 0:N])
            T.writes(C[0:M, 0:N])
            for ry, rx, mm, nn in T.grid(KH, KW, M, N):
                with T.sblock("update"):
                    vm, vn, vry, vrx = T.axis.remap("SSRR", [mm, nn, ry, rx])
                    C[vm, vn] = C[vm, vn] + X[vry, vm * S + vrx, vn] * W[vry, vrx, T.int64(0), vn]

    @T.prim_func(s_tir=True)
    def desc1(x: T.handle, w: T.handle, c: T.handle) -> None:
        X = T.match_buffer(x, (KH, XW, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(), one])
        W = T.match_buffer(w, (KH, KW, one, N), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), T.int64(), one])
        C = T.match_buffer(c, (M, N), "float32", offset_factor=1, strides=[T.int64(), one])
        with T.sblock("root"):
            T.reads(C[0:M, 0:N], X[0:KH, 0:XW, 0:N], W[0:KH, 0:KW, 0:1, 0:N])
            T.writes(C[0:M, 0:N])
            for ry, rx, nn in T.grid(KH, KW, N):
                with T.sblock("update"):
                    vn, vry, vrx = T.axis.remap("SRR", [nn, ry, rx])
                    C[0, vn] = C[0, vn] + X[vry, vrx, vn] * W[vry, vrx, T.int64(0), vn]

    if m == 1:
        desc = desc1

    @T.prim_func(s_tir=True)
    def impl(x: T.handle, w: T.handle, c: T.handle) -> None:
        X = T.match_buffer(x, (KH, XW, N), "float32", offset_factor=1, strides=[T.int64(), T.int64(), one])
        W = T.match_buffer(w, (KH, KW, one, N), "float32", offset_factor=1,
                           strides=[T.int64(), T.int64(), T.int64(), one])
        C = T.match_buffer(c, (M, N), "float32", offset_factor=1, strides=[T.int64(), one])
        with T.sblock("root"):
            T.reads(C[0:M, 0:N], X[0:KH, 0:XW, 0:N], W[0:KH, 0:KW, 0:1, 0:N])
            T.writes(C[0:M, 0:N])
            T.evaluate(T.call_extern("int32", f"ec_dw_f32_{m}x{n}_k{kh}x{kw}s{s}", C.access_ptr("rw"),
                                     X.access_ptr("r"), W.access_ptr("r"), X.strides[0], X.strides[1],
                                     W.strides[0], W.strides[1], C.strides[0]))

    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name


def emit_dw_c(m: int, n: int, kh: int, kw: int, s: int, lanes: int) -> str:
    if n % lanes:
        lanes = 1
    nv = n // lanes
    vt = "ec_f32v" if lanes > 1 else "float"
    ld = (lambda p: f"ec_f32v_load({p})") if lanes > 1 else (lambda p: f"*({p})")
    st = (lambda p, v: f"ec_f32v_store({p}, {v});") if lanes > 1 else (lambda p, v: f"*({p}) = {v};")
    lines = [
        f"/* depthwise {kh}x{kw}/{s}: C[{m}x{n}] += sum X[ry][m*{s}+rx][n] * W[ry][rx][n] over a padded window */",
        f"static inline int32_t ec_dw_f32_{m}x{n}_k{kh}x{kw}s{s}(float *restrict C, const float *restrict X, "
        "const float *restrict W, int64_t ldx_row, int64_t ldx_px, int64_t ldw_row, int64_t ldw_px, "
        "int64_t ldc) {",
    ]
    for i in range(m):
        lines.append(f"  {vt} " + ", ".join(f"c{i}_{j} = {ld(f'C + {i} * ldc + {j * lanes}')}" for j in range(nv)) + ";")
    lines.append(f"  for (int32_t ry = 0; ry < {kh}; ++ry) {{")
    lines.append(f"    for (int32_t rx = 0; rx < {kw}; ++rx) {{")
    lines.append("      const float *x = X + ry * ldx_row + rx * ldx_px;")
    lines.append("      const float *w = W + ry * ldw_row + rx * ldw_px;")
    lines.append(f"      const {vt} " + ", ".join(f"w{j} = {ld(f'w + {j * lanes}')}" for j in range(nv)) + ";")
    for i in range(m):
        lines.append("      " + " ".join(
            f"c{i}_{j} += {ld(f'x + {i * s} * ldx_px + {j * lanes}')} * w{j};" for j in range(nv)))
    lines.append("    }")
    lines.append("  }")
    for i in range(m):
        lines.append("  " + " ".join(st(f"C + {i} * ldc + {j * lanes}", f"c{i}_{j}") for j in range(nv)))
    lines.append("  return 0;")
    lines.append("}")
    return "\n".join(lines)


def used_gemm_shapes(c_code: str) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in CALL_RE.findall(c_code)}


def emit_gemm_c(m: int, n: int, lanes: int) -> str:
    """C source of ec_gemm_f32_MxN for vectors of `lanes` floats (1 = scalar registers)."""
    if n % lanes:
        lanes = 1
    nv = n // lanes
    vt = "ec_f32v" if lanes > 1 else "float"
    ld = (lambda p: f"ec_f32v_load({p})") if lanes > 1 else (lambda p: f"*({p})")
    st = (lambda p, v: f"ec_f32v_store({p}, {v});") if lanes > 1 else (lambda p, v: f"*({p}) = {v};")
    lines = [
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}]; {lanes}-lane vectors, {m * nv} accumulators in registers */",
        f"static inline int32_t ec_gemm_f32_{m}x{n}(float *restrict C, const float *restrict A, "
        "const float *restrict B, int32_t K, int64_t lda, int64_t ldb, int64_t ldc) {",
    ]
    for i in range(m):
        accs = ", ".join(f"c{i}_{j} = {ld(f'C + {i} * ldc + {j * lanes}')}" for j in range(nv))
        lines.append(f"  {vt} {accs};")
    lines.append("  for (int32_t k = 0; k < K; ++k) {")
    bs = ", ".join(f"b{j} = {ld(f'B + k * ldb + {j * lanes}')}" for j in range(nv))
    lines.append(f"    const {vt} {bs};")
    for i in range(m):
        lines.append(f"    const float a{i} = A[{i} * lda + k];")
        lines.append("    " + " ".join(f"c{i}_{j} += a{i} * b{j};" for j in range(nv)))
    lines.append("  }")
    for i in range(m):
        lines.append("  " + " ".join(st(f"C + {i} * ldc + {j * lanes}", f"c{i}_{j}") for j in range(nv)))
    lines.append("  return 0;")
    lines.append("}")
    return "\n".join(lines)


def emit_prelude(lanes: int) -> str:
    if lanes <= 1:
        return "/* micro-kernels use scalar float registers (no FP SIMD on this target) */"
    return "\n".join([
        f"/* {lanes}-lane float vectors (GCC/Clang vector extensions: AVX, NEON or Helium) */",
        f"typedef float ec_f32v __attribute__((vector_size({lanes * 4})));",
        f"typedef float ec_f32v_u __attribute__((vector_size({lanes * 4}), aligned(4)));",
        "#define ec_f32v_load(p) (*(const ec_f32v_u *)(p))",
        "#define ec_f32v_store(p, v) (*(ec_f32v_u *)(p) = (v))",
    ])


def emit_ukernels(kernel_code: str, lanes: int) -> str:
    """C definitions of every micro-kernel that `kernel_code` calls (sorted: deterministic)."""
    gemms = sorted(used_gemm_shapes(kernel_code))
    dws = sorted({tuple(int(v) for v in t) for t in DW_CALL_RE.findall(kernel_code)})
    if not gemms and not dws:
        return ""
    parts = [emit_prelude(lanes)]
    parts += [emit_gemm_c(m, n, lanes) for m, n in gemms]
    parts += [emit_dw_c(m, n, kh, kw, s, lanes) for m, n, kh, kw, s in dws]
    return "\n\n".join(parts) + "\n"
