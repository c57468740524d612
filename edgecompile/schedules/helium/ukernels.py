"""Cortex-M55 micro-kernels that override the generic ones.

`gemm` over int8 activations and weights: Helium (MVE) kernels over weight panels in the "k16"
order (`ukernels.GROUP_ORDERS`: each output channel's weights for 16 consecutive reduction steps
in one 16-byte vector). Per 16 steps an M x N tile loads M activation vectors (one per pixel)
and N weight vectors and issues M*N VMLADAVA.S8 (16 int8 x int8 products summed into a 32-bit
core register): 16 MACs an instruction, accumulators in the even core registers. The last
K % 16 steps are one tail-predicated group (VCTP.8: the loads read only the lanes it enables
and leave the others zero). The tail group and a reduction of exactly one group (K = 16) add a
VMLADAV (no accumulate) to C: inlined where C was just zeroed, gcc drops the add, where VMLADAVA
on the zero took a MOV per output (the pointwise GEMMs after 8 and 16 depthwise channels). int16 activations (the zero-point-shifted rows of padded KxK
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
from ..ukernels import (GROUP_ORDERS, WIDEN_SIGNATURE, Types, dw_body, dw_signature, gemm_signature, guarded_kernel, ordered_gemm_body,
                        requant_signature, widen_body, window_body, window_signature)

__all__ = ["dw", "gemm", "requant", "widen", "window"]

# The pragma (in model.c only: the firmware's startup runs before the FPU/MVE is enabled) keeps gcc from
# turning the padded windows' zero fills into calls of newlib-nano's byte-by-byte memset: they stay loops
# that gcc vectorises. Wake-word int8 on mps3-an547 (--samples 2 PASS, same session): 4,075,796 ->
# 3,962,562 instructions. The same flag in the target's cflags vectorised the startup's .bss loop
# (a fault before CPACR enables MVE).
_MVE = "\n".join([
    "#if defined(__ARM_FEATURE_MVE) && !defined(EC_ARM_MVE)",
    "#define EC_ARM_MVE",
    "#include <arm_mve.h>",
    "#pragma GCC optimize (\"no-tree-loop-distribute-patterns\")",
    "#endif",
])


ASM_MIN_GROUPS = 4
# reductions of at least this many full groups take the asm loop; shorter ones gcc's unrolled C: with the
# loop for K = 32 too, the wake-word network's dw+pw 24x24x32_2 measured 553,938 -> 599,354 instructions
_ACC_REGS = ("r0", "r2", "r4", "r6", "r8", "r10")    # VMLADAVA's accumulator: an even core register


def _asm_groups(m: int, n: int) -> list[str]:
    """The full groups of 16 int8 steps as one asm loop (DLS/LE): per group M activation loads and N
    weight loads with post-increment (q0-q2, q3), M x N VMLADAVA.S8 into accumulators held in even
    core registers (local register variables), so that nothing but the loads, the MACs and LE
    remains in the loop. Where gcc unrolled the C loop over a constant K (64-256), it kept the
    pointers of every group in stack slots (3 x 2 tile, K = 128: 145 instructions per call)."""
    accs = [(i, j) for i in range(m) for j in range(n)]
    lines = [f"  if (k >= {16 * ASM_MIN_GROUPS}) {{",
             "    const int32_t groups = k >> 4;"]
    lines += [f"    register int32_t r{i}_{j} __asm__(\"{_ACC_REGS[t]}\") = c{i}_{j};" for t, (i, j) in enumerate(accs)]
    body = ["dls lr, %[groups]", "1:"]
    body += [f"vldrb.8 q{i}, [%[a{i}]], #16" for i in range(m)]
    for j in range(n):
        body.append("vldrb.8 q3, [%[b]], #16")
        body += [f"vmladava.s8 %[c{i}_{j}], q{i}, q3" for i in range(m)]
    body.append("le lr, 1b")
    lines.append("    __asm__ volatile(" + " ".join(f'"{t}\\n"' for t in body))
    outs = [f'[c{i}_{j}] "+r"(r{i}_{j})' for i, j in accs] + [f'[a{i}] "+r"(a{i})' for i in range(m)] + ['[b] "+r"(b)']
    lines.append("      : " + ", ".join(outs))
    lines.append('      : [groups] "r"(groups)')
    lines.append('      : "q0", "q1", "q2", "q3", "lr", "memory");')
    lines += ["    " + " ".join(f"c{i}_{j} = r{i}_{j};" for i, j in accs), "    k &= 15;", "  }"]
    return lines


def _mve_body(m: int, n: int, g: int, wide: bool) -> list[str]:
    """VMLADAVA over full groups of g steps (16 int8 or, `wide`, 8 int16 activations; the int8
    weights widened to int16 by their load), then one predicated group for the K % g last steps.
    K == g and the tail group: C + VMLADAV (the wake-word network, mps3-an547, same session:
    5,234,719 -> 5,192,438 instructions with the tail, 5,186,562 with K == g too; its dw+pw
    kernels' pointwise K = 8: 801,156 -> 758,844, K = 16: 489,677 -> 483,792). Peeling the first of
    several full groups the same way measured worse (K = 64-256 kernels +16-28%: gcc's unrolling
    changed), and so did a separate K <= g branch storing C directly (K = 8: 918 k)."""
    vt, xs, ws, ps = ("int16x8_t", "vldrhq", "vldrbq", "vctp16q") if wide else ("int8x16_t", "vldrbq", "vldrbq", "vctp8q")
    sfx = "s16" if wide else "s8"
    ta = "int16_t" if wide else "int8_t"
    lines = ["  int32_t " + ", ".join(f"c{i}_{j} = C[{i} * ldc + {j}]" for i in range(m) for j in range(n)) + ";",
             f"  const {ta} " + ", ".join(f"*a{i} = A + {i} * lda" for i in range(m)) + ";",
             "  const int8_t *b = B;",
             "  int32_t k = K;",
             f"  if (k == {g}) {{"]
    for i in range(m):     # exactly one group: C + VMLADAV (where C was just zeroed, gcc folds the add)
        lines.append(f"    const {vt} x{i} = {xs}_{sfx}(a{i});")
    for j in range(n):
        lines.append(f"    {{ const {vt} w = {ws}_{sfx}(b + {g * j});")
        lines.append("      " + " ".join(f"c{i}_{j} += vmladavq_{sfx}(x{i}, w);" for i in range(m)) + " }")
    lines += ["    k = 0;", "  }"]
    if not wide and m * n <= len(_ACC_REGS) and m <= 3:
        lines += _asm_groups(m, n)
    lines += [f"  for (; k >= {g}; k -= {g}) {{"]
    for i in range(m):
        lines.append(f"    const {vt} x{i} = {xs}_{sfx}(a{i}); a{i} += {g};")
    for j in range(n):
        lines.append(f"    {{ const {vt} w = {ws}_{sfx}(b + {g * j});")
        lines.append("      " + " ".join(f"c{i}_{j} = vmladavaq_{sfx}(c{i}_{j}, x{i}, w);" for i in range(m)) + " }")
    lines += [f"    b += {g * n};", "  }"]
    lines += ["  if (k > 0) {", f"    const mve_pred16_t p = {ps}((uint32_t)k);"]
    for i in range(m):
        lines.append(f"    const {vt} x{i} = {xs}_z_{sfx}(a{i}, p);")
    for j in range(n):
        lines.append(f"    {{ const {vt} w = {ws}_z_{sfx}(b + {j} * k, p);")
        lines.append("      " + " ".join(f"c{i}_{j} += vmladavq_{sfx}(x{i}, w);" for i in range(m)) + " }")
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


def _acc_vectors_load(m: int, n: int) -> tuple[list[tuple[int, bool]], list[str]]:
    """The int32 accumulator tile C[m x n] in vectors of 4 channels: (vector index, predicated)
    for each vector, the last one VCTP.32-predicated when 4 does not divide n, and the lines
    that load the tile into c<i>_<q>."""
    full, tail = divmod(n, 4)
    vecs = [(q, False) for q in range(full)] + ([(full, True)] if tail else [])
    lines = [f"  const mve_pred16_t p = vctp32q({tail});"] if tail else []
    for i in range(m):
        for q, t in vecs:
            at = f"C + {i} * ldc + {4 * q}"
            lines.append(f"  int32x4_t c{i}_{q} = " + (f"vldrwq_z_s32({at}, p);" if t else f"vldrwq_s32({at});"))
    return vecs, lines


def _acc_vectors_store(m: int, vecs: list[tuple[int, bool]]) -> list[str]:
    """The lines that store the accumulator vectors of `_acc_vectors_load` back to C."""
    lines = []
    for i in range(m):
        for q, t in vecs:
            at = f"C + {i} * ldc + {4 * q}"
            lines.append(f"  vstrwq_p_s32({at}, c{i}_{q}, p);" if t else f"  vstrwq_s32({at}, c{i}_{q});")
    return lines


def _dw_mve_body(m: int, n: int, kh: int, kw: int, s: int) -> list[str]:
    vecs, lines = _acc_vectors_load(m, n)
    for ry in range(kh):
        for rx in range(kw):
            lines.append(f"  {{ const int16_t *x = X + {ry} * ldx_row + {rx} * ldx_px;")
            lines.append(f"    const int8_t *w = W + {ry} * ldw_row + {rx} * ldw_px;")
            full = [q for q, t in vecs if not t and 4 * q <= 124]    # VLDRB's immediate offset: 0-127
            # the accumulators, the tap's weight vectors and a temporary must fit the 8 Q registers,
            # else (the 1 x 16 and 3 x 8 tiles) each vector's weights are loaded inside the asm
            # statement (a second temporary); tiles whose accumulators leave no room for that stay C
            w_inside = len(vecs) * (m + 1) + 1 > 8
            if w_inside and m * len(vecs) + 2 > 8:
                full = []
            for q, t in vecs:
                if not (w_inside and q in full):
                    lines.append(f"    const int32x4_t w{q} = " + (f"vldrbq_z_s32(w + {4 * q}, p);" if t
                                                                     else f"vldrbq_s32(w + {4 * q});"))
            for i in range(m):
                if full:
                    lines.append(_dw_tap_asm(i, s, full, w_inside))
                for q, t in vecs:
                    if q not in full:
                        at = f"x + {i * s} * ldx_px + {4 * q}"
                        xv = f"vldrhq_z_s32({at}, p)" if t else f"vldrhq_s32({at})"
                        lines.append(f"    c{i}_{q} = vaddq_s32(c{i}_{q}, vmulq_s32({xv}, w{q}));")
            lines.append("  }")
    return lines + _acc_vectors_store(m, vecs)


def _dw_tap_asm(i: int, s: int, full: list[int], w_inside: bool) -> str:
    """One tap of pixel i over its full channel vectors as one asm statement: per vector VLDRH.S32
    (the 4 int16 values widened by the load, at an immediate offset), VMUL.I32 by the tap's weights
    (`w_inside`: first loaded by VLDRB.S32 into a second temporary), VADD.I32 into the accumulator.
    In C (the same intrinsics) gcc hoisted every tap's loads and VMULs ahead of the adds and
    spilled the products (8 Q registers): the wake-word network's dw+pw kernels spent about 300
    instructions per 2 x 8 tile (9 taps: 9 x 14 in registers). The widening loads take only low
    core registers as their base ("l")."""
    steps = []
    for q in full:
        wq = "%q[u]" if w_inside else f"%q[w{q}]"
        steps += ([f"vldrb.s32 %q[u], [%[w], #{4 * q}]"] if w_inside else []) + [
            f"vldrh.s32 %q[t], [%[x], #{8 * q}]", f"vmul.i32 %q[t], %q[t], {wq}", f"vadd.i32 %q[c{q}], %q[c{q}], %q[t]"]
    body = "\\n\\t".join(steps)
    outs = ", ".join(f'[c{q}] "+w"(c{i}_{q})' for q in full) + ', [t] "=&w"(t)' + (', [u] "=&w"(u)' if w_inside else "")
    span = 4 * (max(full) + 1)
    ins = (f'[x] "l"(x + {i * s} * ldx_px), '
           + (f'[w] "l"(w), "m"(*(const int8_t (*)[{span}])w)' if w_inside
              else ", ".join(f'[w{q}] "w"(w{q})' for q in full))
           + f', "m"(*(const int16_t (*)[{span}])(x + {i * s} * ldx_px))')
    decl = "int32x4_t t" + (", u" if w_inside else "")
    return f'    {{ {decl}; __asm__("{body}" : {outs} : {ins}); }}'



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
    vecs, lines = _acc_vectors_load(m, n)
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
    return lines + _acc_vectors_store(m, vecs)


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


REQUANT_LOOP_VECTORS = 3
# from this many full vectors of channels on, the rescale loops over them (not unrolled): unrolled
# over the 4 vectors of a 3 x 16 tile, gcc hoisted every vector's constants and spilled them (8 Q
# registers)

# The rescale tiles read their constants re-encoded at compile time as the Cortex-M4/M7 SMMLA kernel
# does (cortex_m.ukernels.rescale_constants: each channel's int64 rnd stored as the int32 pair
# (off, Ra), the offset added by the accumulators' init, tiling.rescale_offsets_into_init), so that
# (acc * m0 + rnd) >> 32 == VMULH.S32(acc', m0) + Ra: no 64-bit sum, no carry.
RESCALE_ORDER = dsp.RESCALE_ORDER
rescale_constants = dsp.rescale_constants


REQUANT_ASM_PIXELS = 3


def _requant_vector_asm(m: int, at0: object) -> str:
    """One full vector of 4 channels over the M pixels as one asm statement: its constants (VLDRW m0,
    the gathered Ra words, VLDRW r and 24 - r), then per pixel VLDRW, VMULH.S32, VADD, VQSHL.S32,
    VSHR #24, VSTRB.32. In C gcc hoisted the loads and products of every vector and spilled them
    (79 instructions per 3 x 8 call; the narrowing store takes a low core register as its base)."""
    steps = ["vldrw.32 %q[mu], [%[m0]]", "vldrw.u32 %q[ra], [%[rp], %q[odd], uxtw #2]", "vldrw.32 %q[sh], [%[r]]",
             "vsub.i32 %q[sh], %q[s24], %q[sh]"]
    for i in range(m):
        steps += [f"vldrw.32 %q[t], [%[c{i}]]", "vmulh.s32 %q[t], %q[t], %q[mu]", "vadd.i32 %q[t], %q[t], %q[ra]",
                  "vqshl.s32 %q[t], %q[t], %q[sh]", "vshr.s32 %q[t], %q[t], #24", f"vstrb.32 %q[t], [%[o{i}]]"]
    body = "\\n\\t".join(steps)
    ins = [f'[m0] "r"(m0 + {at0})', f'[rp] "r"(ra_lo + 2 * {at0})', '[odd] "w"(odd)', f'[r] "r"(r + {at0})',
           '[s24] "w"(s24)'] + [f'[c{i}] "r"(C + {i} * ldc + {at0})' for i in range(m)] \
        + [f'[o{i}] "l"(O + {i} * ldo + {at0})' for i in range(m)]
    return (f'  {{ int32x4_t mu, ra, sh, t; __asm__ volatile("{body}" : [mu] "=&w"(mu), [ra] "=&w"(ra), [sh] "=&w"(sh), '
            f'[t] "=&w"(t) : {", ".join(ins)} : "memory"); }}')


def _requant_mve_body(m: int, n: int) -> list[str]:
    """Per vector of 4 channels and pixel: VLDRW, VMULH.S32, VADD (Ra), VQSHL.S32 by 24 - r, VSHR #24,
    VSTRB.32. sat8(x >> r) == (sat32(x << (24 - r))) >> 24 for 0 <= r <= 24: x << (24 - r)
    stays in int32 exactly when x >> r is in [-128, 127] (both ranges are [-2^(7+r), 2^(7+r))),
    and saturates to INT32_MAX / INT32_MIN (>> 24: 127 / -128) otherwise."""
    full, tail = divmod(n, 4)
    looped = full >= REQUANT_LOOP_VECTORS
    vecs = ([("q", False)] if looped else [(q, False) for q in range(full)]) + ([(full, True)] if tail else [])
    lines = [f"  const mve_pred16_t p = vctp32q({tail});"] if tail else []
    lines += ["  const uint32x4_t odd = vidupq_n_u32(1, 2);",
              "  const int32x4_t s24 = vdupq_n_s32(24);",
              "  const int32_t *ra_lo = (const int32_t *)rnd;"]
    if looped:
        lines += ["#pragma GCC unroll 1", f"  for (int32_t v = 0; v < {full}; ++v) {{", "    const int32_t q = 4 * v;"]
    for q, t in vecs:       # one vector of channels at a time, its pixels inside: 3 constant vectors live
        z, pa = ("_z", ", p") if t else ("", "")
        at0 = q if q == "q" else 4 * q
        if not t and m <= REQUANT_ASM_PIXELS:
            lines.append(_requant_vector_asm(m, at0))
            if q == "q":
                lines.append("  }")
            continue
        lines += ["  {",
                  f"    const int32x4_t mu = vldrwq{z}_s32(m0 + {at0}{pa});",
                  f"    const int32x4_t ra = vldrwq_gather_shifted_offset{z}_s32(ra_lo + 2 * {at0}, odd{pa});",
                  f"    const int32x4_t sh = vsubq_s32(s24, vldrwq{z}_s32(r + {at0}{pa}));"]
        for i in range(m):
            at = f"C + {i} * ldc + {at0}"
            lines += ["    {",
                      "      const int32x4_t c = " + (f"vldrwq_z_s32({at}, p);" if t else f"vldrwq_s32({at});"),
                      "      const int32x4_t x = vshrq_n_s32(vqshlq_s32(vaddq_s32(vmulhq_s32(c, mu), ra), sh), 24);",
                      (f"      vstrbq_p_s32(O + {i} * ldo + {at0}, x, p);" if t
                       else f"      vstrbq_s32(O + {i} * ldo + {at0}, x);"),
                      "    }"]
        lines.append("  }")
        if q == "q":
            lines.append("  }")
    return lines


def requant(m: int, n: int) -> str:
    """C for `ec_requant_s8_MxN` over re-encoded constants (`rescale_constants`; the accumulators
    started at the channels' offsets): O = sat8((VMULH(C, m0) + Ra) >> r), 4 channels per Helium
    vector, bit for bit the scalar form (the portable C of the Cortex-M4/M7 kernel otherwise: the
    host's model.c gives the same bytes)."""
    code = guarded_kernel(
        _MVE,
        f"/* int8 rescale of C[{m}x{n}] (int32, started at the channels' offsets), constants (m0, (off, Ra), r) per "
        "channel, r > 0: O = sat8((((C * m0) >> 32) + Ra) >> r), 4 channels per Helium vector, portable C otherwise */",
        requant_signature(m, n), "defined(__ARM_FEATURE_MVE)", _requant_mve_body(m, n), dsp._rescale_portable_body(m, n))
    # out of line: inlined into the depthwise loops, gcc spilled their vectors (8 Q registers); the
    # wake-word network measured 7.11 M inlined, 6.73 M out of line
    return code.replace(requant_signature(m, n) + " {",
                        requant_signature(m, n) + " __attribute__((noinline));\n" + requant_signature(m, n) + " {")


def widen() -> str:
    """C for `ec_widen_s8s16`: the in-bound rows of a zero-point-shifted padded window, 8 values
    per Helium vector: VLDRB.S16 (the load widens), VSUB of the zero point, VSTRH; the last n % 8
    values scalar (a VCTP.16-predicated VLDRB.S16 / VSTRH tail gave wrong bytes on the emulated
    an547: the conv3x3 and widen cases of test_helium_int8). Rows contiguous in both the source and the window (all the channels of
    each pixel: the usual NHWC row) are one run of rows x cols values."""
    return guarded_kernel(
        _MVE,
        "/* O[rows x cols] = (int16)X - zp (the in-bound rows of a zero-point-shifted padded window): 8 values per "
        "Helium vector, portable C otherwise */",
        WIDEN_SIGNATURE, "defined(__ARM_FEATURE_MVE)",
        ["  int32_t n = cols;",
         "  if (ldo == cols && ldx == cols) {",
         "    n = rows * cols;",
         "    rows = 1;",
         "  }",
         "  for (int32_t i = 0; i < rows; ++i) {",
         "    const int8_t *x = X + i * ldx;",
         "    int16_t *o = O + i * ldo;",
         "    int32_t k = n;",
         "    for (; k >= 8; k -= 8) {",
         "      vstrhq_s16(o, vsubq_n_s16(vldrbq_s16(x), (int16_t)zp));",
         "      x += 8;",
         "      o += 8;",
         "    }",
         "    for (int32_t j = 0; j < k; ++j) {",
         "      o[j] = (int16_t)(((int16_t)x[j]) - (int16_t)zp);",
         "    }",
         "  }"],
        widen_body())
