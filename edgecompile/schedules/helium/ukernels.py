"""Cortex-M55 micro-kernels that override the generic ones.

`gemm` over int8 activations and weights: Helium (MVE) kernels over weight panels in the "k16"
order (`ukernels.GROUP_ORDERS`: each output channel's weights for 16 consecutive reduction steps
in one 16-byte vector). Per 16 steps an M x N tile loads M activation vectors (one per pixel)
and N weight vectors and issues M*N VMLADAVA.S8 (16 int8 x int8 products summed into a 32-bit
core register): 16 MACs an instruction, accumulators in the even core registers. The last
K % 16 steps are one tail-predicated group (VCTP.8: the loads read only the lanes it enables
and leave the others zero). int16 activations (the zero-point-shifted rows of padded KxK
convolutions) likewise in groups of 8 ("k8", VMLADAVA.S16, the int8 weights widened by VLDRB.S16).

`dw` over int16 rows (the zero-point-shifted, padded depthwise window) and int8 weights: 4
channels per vector, widened by the loads themselves (VLDRH.S32, VLDRB.S32), VMUL + VADD per
tap and pixel (MVE has no integer vector-by-vector multiply-accumulate), accumulators in vector
registers; a tile whose channels are not a multiple of 4 ends in one VCTP.32-predicated vector.
Other panel orders fall back to the DSP extension's kernels of Cortex-M4/M7 (`cortex_m`).

Each kernel keeps the portable C of its panel order under `#else`: the same model.c runs on the
host (`edgecompile test` compares a device's int8 bytes with it)."""

from __future__ import annotations

from ..cortex_m import ukernels as dsp
from ..ukernels import (GROUP_ORDERS, Types, dw_body, dw_signature, gemm_signature, guarded_kernel, ordered_gemm_body,
                        window_body, window_signature)

__all__ = ["dw", "gemm", "window"]

_MVE = "\n".join([
    "#if defined(__ARM_FEATURE_MVE) && !defined(EC_ARM_MVE)",
    "#define EC_ARM_MVE",
    "#include <arm_mve.h>",
    "#endif",
])


def _mve_body(m: int, n: int, g: int, wide: bool) -> list[str]:
    """VMLADAVA over full groups of g steps (16 int8 or, `wide`, 8 int16 activations; the int8
    weights widened to int16 by their load), then one predicated group for the K % g last steps."""
    vt, xs, ws, ps = ("int16x8_t", "vldrhq", "vldrbq", "vctp16q") if wide else ("int8x16_t", "vldrbq", "vldrbq", "vctp8q")
    sfx = "s16" if wide else "s8"
    ta = "int16_t" if wide else "int8_t"
    lines = ["  int32_t " + ", ".join(f"c{i}_{j} = C[{i} * ldc + {j}]" for i in range(m) for j in range(n)) + ";",
             f"  const {ta} " + ", ".join(f"*a{i} = A + {i} * lda" for i in range(m)) + ";",
             "  const int8_t *b = B;",
             "  int32_t k = K;",
             f"  for (; k >= {g}; k -= {g}) {{"]
    for i in range(m):
        lines.append(f"    const {vt} x{i} = {xs}_{sfx}(a{i}); a{i} += {g};")
    for j in range(n):
        lines.append(f"    {{ const {vt} w = {ws}_{sfx}(b + {g * j});")
        lines.append("      " + " ".join(f"c{i}_{j} = vmladavaq_{sfx}(c{i}_{j}, x{i}, w);" for i in range(m)) + " }")
    lines += [f"    b += {g * n};", "  }", "  if (k > 0) {", f"    const mve_pred16_t p = {ps}((uint32_t)k);"]
    for i in range(m):
        lines.append(f"    const {vt} x{i} = {xs}_z_{sfx}(a{i}, p);")
    for j in range(n):
        lines.append(f"    {{ const {vt} w = {ws}_z_{sfx}(b + {j} * k, p);")
        lines.append("      " + " ".join(f"c{i}_{j} = vmladavaq_{sfx}(c{i}_{j}, x{i}, w);" for i in range(m)) + " }")
    lines.append("  }")
    lines += ["  " + " ".join(f"C[{i} * ldc + {j}] = c{i}_{j};" for j in range(n)) for i in range(m)]
    return lines


def gemm(m: int, n: int, lanes: int, types: Types) -> str | None:
    """C for `ec_gemm_<t>_MxN`, or None where the generic kernel is used."""
    if types.b_order not in GROUP_ORDERS:
        return dsp.gemm(m, n, lanes, types)
    g = GROUP_ORDERS[types.b_order]
    wide = types.a == "int16"
    if not (types.b == "int8" and types.c == "int32" and (types.a, g) in (("int8", 16), ("int16", 8))):
        return None
    return guarded_kernel(
        _MVE,
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] ({types.a} x int8 -> int32), B panel in order {types.b_order!r} "
        f"(groups of {g} reduction steps per channel): VMLADAVA.{'S16' if wide else 'S8'} (Helium), portable C "
        "otherwise */",
        gemm_signature(m, n, types), "defined(__ARM_FEATURE_MVE)",
        _mve_body(m, n, g, wide), ordered_gemm_body(m, n, types))


def _dw_mve_body(m: int, n: int, kh: int, kw: int, s: int) -> list[str]:
    full, tail = divmod(n, 4)
    vecs = [(q, False) for q in range(full)] + ([(full, True)] if tail else [])
    lines = [f"  const mve_pred16_t p = vctp32q({tail});"] if tail else []
    for i in range(m):
        for q, t in vecs:
            at = f"C + {i} * ldc + {4 * q}"
            lines.append(f"  int32x4_t c{i}_{q} = " + (f"vldrwq_z_s32({at}, p);" if t else f"vldrwq_s32({at});"))
    for ry in range(kh):
        for rx in range(kw):
            lines.append(f"  {{ const int16_t *x = X + {ry} * ldx_row + {rx} * ldx_px;")
            lines.append(f"    const int8_t *w = W + {ry} * ldw_row + {rx} * ldw_px;")
            for q, t in vecs:
                lines.append(f"    const int32x4_t w{q} = " + (f"vldrbq_z_s32(w + {4 * q}, p);" if t
                                                                 else f"vldrbq_s32(w + {4 * q});"))
            for i in range(m):
                for q, t in vecs:
                    at = f"x + {i * s} * ldx_px + {4 * q}"
                    xv = f"vldrhq_z_s32({at}, p)" if t else f"vldrhq_s32({at})"
                    lines.append(f"    c{i}_{q} = vaddq_s32(c{i}_{q}, vmulq_s32({xv}, w{q}));")
            lines.append("  }")
    for i in range(m):
        for q, t in vecs:
            at = f"C + {i} * ldc + {4 * q}"
            lines.append(f"  vstrwq_p_s32({at}, c{i}_{q}, p);" if t else f"  vstrwq_s32({at}, c{i}_{q});")
    return lines


def dw(m: int, n: int, kh: int, kw: int, s: int, lanes: int, types: Types) -> str | None:
    """C for `ec_dw_<t>_MxN_kKHxKWsS`, or None where the generic kernel is used: int16 rows
    (zero-point-shifted, padded) x int8 weights, 4 channels per vector."""
    if not (types.a == "int16" and types.b == "int8" and types.c == "int32"):
        return None
    return guarded_kernel(
        _MVE,
        f"/* depthwise {kh}x{kw}/{s} (int16 x int8 -> int32), C[{m}x{n}]: 4 channels per Helium vector, "
        "portable C otherwise */",
        dw_signature(m, n, kh, kw, s, types), "defined(__ARM_FEATURE_MVE)",
        _dw_mve_body(m, n, kh, kw, s), dw_body(m, n, kh, kw, s, 1, types))


def _window_mve_body(m: int, n: int, kh: int, kw: int, ci: int, s: int) -> list[str]:
    full, tail = divmod(n, 4)
    vecs = [(q, False) for q in range(full)] + ([(full, True)] if tail else [])
    lines = [f"  const mve_pred16_t p = vctp32q({tail});"] if tail else []
    for i in range(m):
        for q, t in vecs:
            at = f"C + {i} * ldc + {4 * q}"
            lines.append(f"  int32x4_t c{i}_{q} = " + (f"vldrwq_z_s32({at}, p);" if t else f"vldrwq_s32({at});"))
    lines += [f"  for (int32_t ry = 0; ry < {kh}; ++ry) {{", f"    for (int32_t rx = 0; rx < {kw}; ++rx) {{",
              "      const int16_t *x = X + ry * ldx_row + rx * ldx_px;",
              "      const int8_t *w = W + ry * ldw_row + rx * ldw_px;"]
    for rc in range(ci):
        lines.append("      {")
        for q, t in vecs:
            at = f"w + {rc} * ldw_ci + {4 * q}"
            lines.append(f"        const int32x4_t w{q} = " + (f"vldrbq_z_s32({at}, p);" if t else f"vldrbq_s32({at});"))
        for i in range(m):
            lines.append(f"        const int32_t a{i} = x[{i * s} * ldx_px + {rc}];")
            lines.append("        " + " ".join(f"c{i}_{q} = vmlaq_n_s32(c{i}_{q}, w{q}, a{i});" for q, _ in vecs))
        lines.append("      }")
    lines += ["    }", "  }"]
    for i in range(m):
        for q, t in vecs:
            at = f"C + {i} * ldc + {4 * q}"
            lines.append(f"  vstrwq_p_s32({at}, c{i}_{q}, p);" if t else f"  vstrwq_s32({at}, c{i}_{q});")
    return lines


def window(m: int, n: int, kh: int, kw: int, ci: int, s: int, lanes: int, types: Types) -> str | None:
    """C for `ec_window_<t>_MxN_kKHxKWcCIsS`, or None where the generic kernel is used: int16 rows
    (zero-point-shifted, padded) x int8 weights, vectorised over 4 output channels per vector: per
    tap and input channel, the N weights widened by their loads, one VMLA (vector x scalar) per
    pixel and vector; a tile whose channels are not a multiple of 4 ends in one VCTP.32-predicated
    vector."""
    if not (types.a == "int16" and types.b == "int8" and types.c == "int32"):
        return None
    return guarded_kernel(
        _MVE,
        f"/* KxK window {kh}x{kw}x{ci}/{s} (int16 x int8 -> int32), C[{m}x{n}]: 4 output channels per Helium "
        "vector, VMLA by each pixel's activation; portable C otherwise */",
        window_signature(m, n, kh, kw, ci, s, types), "defined(__ARM_FEATURE_MVE)",
        _window_mve_body(m, n, kh, kw, ci, s), window_body(m, n, kh, kw, ci, s, 1, types))
