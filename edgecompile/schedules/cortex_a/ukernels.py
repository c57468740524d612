"""Cortex-A (NEON) micro-kernels that override the generic ones of `schedules/ukernels.py`.

`gemm`, float: GEMM tiles of 4-lane vectors run the reduction 4 steps at a time, each A row's 4
values loaded as one vector and used lane by lane (`fmla` by element) instead of one scalar load
per step: 7-9% fewer instructions on the A72 than the generic kernel. Over a packed panel, one
inline-asm loop of 8 steps per iteration (each row's 8 values by one `ldp` where the registers
allow); `gemm_z`, the same loop for a tile it sets (C = A B), its accumulators started by `fmul`
and handed to the caller's epilogue in registers.

`gemm`, int8 x int8 -> int32 over weight panels in the "k16" order (`ukernels.GROUP_ORDERS`: each
output channel's weights for 16 consecutive reduction steps in one 16-byte block; the last K % 16
steps per channel together, the first 8 of them by the same NEON code). Per 16 steps
and (pixel, channel) pair: `smull` + `smlal2` (16 int8 x int8 products, added in pairs into 8
int16 lanes) and `sadalp` (the 8 lanes added in pairs into the pair's 4 int32 accumulator lanes):
3 instructions for 16 multiply-accumulates, plus one 16-byte load per pixel and per channel. The
pair sums are exact in 16 bits because no weight is -128 (|a w + a' w'| <= 2 * 128 * 127 =
32512). The 4 lanes of each accumulator are added (`addp`, 4 channels at a time) once per tile.
The A72 has no `sdot`. With a packed panel (ldb == N) and K >= ASM_S8_MIN_K the loop is one
inline-asm block with fixed registers (`_gemm_s8_k16_asm`); gcc's intrinsics otherwise.

`gemm`, int8 x int8 -> int32 over unpacked weights [K][N] (pointwise convolutions over fewer than
CortexARules.S8_ROWS_MAX_K input channels), 8 channels per vector: each pixel's next 8 values
widened by one `sxtl`, per step the weights widened and multiplied by each value by lane
(`smlal`/`smlal2` by element): no lanes to add at the end, which the k16 pairs pay per tile.

`gemm`, int16 x int8 -> int32 (the zero-point-shifted padded rows of KxK convolutions, e.g. the
first layer), weights row by row: per reduction step 8 weights widened by one `sxtl`, each pixel's
value multiplied into them by `smlal`/`smlal2` by element.

`dw`, float, tiles of 4-lane vectors: one inline-asm block per channel group (`_dw_f32_asm`),
each input pixel of a kernel row loaded once by one `ld1` of the group's registers and multiplied
into every output pixel whose window holds it (47 instructions per kernel row of the 4 x 12 3x3/1
tile, gcc's loop 67): MobileNet V2 1.0/224's fused kernels 107.9 M -> 104.6 M instructions.

`dw`, int16 (zero-point-shifted, padded rows) or int8 activations x int8 weights -> int32,
8 channels at a time: the weights widened once per tap, `smlal`/`smlal2` on 16-bit lanes (one
instruction per 4 multiply-accumulates instead of a widening load and a 32-bit multiply-add).

`requant`, the int8 rescale of an M x N tile of int32 accumulators (ir/quantize.py's folded form
sat8((int32)((acc * m0 + rnd) >> 32) >> r)), 8 channels at a time, then 4: `smull`/`smull2` give
acc * m0 in 64 bits, `addhn`/`addhn2` add the 64-bit constant and keep the high words (exactly
the truncating `>> 32`), `sshl` by -r (a truncating arithmetic shift right), `sqxtn` twice (the
int8 clamp); the last n % 4 channels in scalar C.

Each integer kernel keeps portable C of the same panel order under `#else`: the same model.c on
this machine gives the same bytes (`edgecompile test` compares a device's int8 output with it)."""

from __future__ import annotations

from collections.abc import Callable

from ..ukernels import (Types, dw_body, dw_signature, gemm_signature, guarded_kernel, requant_body,
                        requant_signature, vector_width)

NEON = "defined(__ARM_NEON) && defined(__aarch64__)"
_INCLUDE = "\n".join([
    "#ifndef EC_ARM_NEON",
    "#define EC_ARM_NEON",
    f"#if {NEON}",
    "#include <arm_neon.h>",
    "#endif",
    "#endif",
])


def gemm(m: int, n: int, lanes: int, types: Types) -> str | None:
    """C for `ec_gemm_<t>_MxN`, or None where the generic kernel is used."""
    if types.b_order == "k16" and types.a == "int8" and types.b == "int8" and types.c == "int32":
        return _gemm_s8_k16(m, n)
    if not types.b_order and types.a == "int16" and types.b == "int8" and types.c == "int32" and n % 8 == 0:
        return _gemm_s16(m, n)
    if not types.b_order and types.a == "int8" and types.b == "int8" and types.c == "int32" and n % 8 == 0:
        return _gemm_s8_rows(m, n)
    lanes, _ = vector_width(n, lanes)
    if not (lanes == 4 and types.c == "float32" and types.a == "float32"):
        return None
    nv = n // lanes
    asm = _gemm_f32_asm(m, nv)
    lines = [
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] (float); 4-lane vectors, {m * nv} accumulators; the reduction 4 "
        "steps at a time with A rows loaded as vectors and used by lane (fmla by element)"
        + ("; on aarch64 with a packed panel (ldb == N) one asm loop, registers fixed" if asm else "") + " */",
        f"static inline int32_t ec_gemm_{types.tag}_{m}x{n}(float *restrict C, const float *restrict A, "
        "const float *restrict B, int32_t K, int64_t lda, int64_t ldb, int64_t ldc) {",
    ]
    if asm:
        lines += [f"#if {NEON}", f"  if (ldb == {n}) {{", *asm, "    return 0;", "  }", "#endif"]
    for i in range(m):
        lines.append("  ec_f32v " + ", ".join(f"c{i}_{j} = ec_f32v_load(C + {i} * ldc + {j * 4})"
                                               for j in range(nv)) + ";")
    lines.append("  int32_t k = 0;")
    lines.append("  for (; k + 4 <= K; k += 4) {")
    lines.append("    const ec_f32v " + ", ".join(f"a{i} = ec_f32v_load(A + {i} * lda + k)" for i in range(m)) + ";")
    for kk in range(4):
        lines.append("    {")
        lines.append("      const ec_f32v " + ", ".join(f"b{j} = ec_f32v_load(B + (k + {kk}) * ldb + {j * 4})"
                                                     for j in range(nv)) + ";")
        for i in range(m):
            lines.append("      " + " ".join(f"c{i}_{j} += a{i}[{kk}] * b{j};" for j in range(nv)))
        lines.append("    }")
    lines.append("  }")
    lines.append("  for (; k < K; ++k) {")
    lines.append("    const ec_f32v " + ", ".join(f"b{j} = ec_f32v_load(B + k * ldb + {j * 4})" for j in range(nv)) + ";")
    for i in range(m):
        lines.append(f"    const float a{i} = A[{i} * lda + k];")
        lines.append("    " + " ".join(f"c{i}_{j} += a{i} * b{j};" for j in range(nv)))
    lines.append("  }")
    for i in range(m):
        lines.append("  " + " ".join(f"ec_f32v_store(C + {i} * ldc + {j * 4}, c{i}_{j});" for j in range(nv)))
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


# the asm float GEMM: at most this many pixels (one general register per A row; gcc allows 30 asm
# operands, a "+r" counting twice)
ASM_MAX_M = 11


def asm_b_registers(m: int, nv: int) -> int:
    """The weight-vector registers of the asm M x 4nv tile: all of a step's nv when they fit beside
    the M nv accumulators and M activation vectors, else two (one `ldp` pair at a time, each pair's
    M x 2 `fmla` before the next load: the same instructions); 0 when even that does not fit or
    M > ASM_MAX_M (the C kernel then)."""
    free = 32 - m * nv - m
    if m > ASM_MAX_M or free < min(nv, 2):
        return 0
    return nv if free >= nv else 2


def asm_paired_a(m: int, nv: int) -> int:
    """The weight-vector registers of the asm tile when each activation row's 8 steps are loaded
    by one `ldp` into two vectors (2M registers): as `asm_b_registers` with 2M activation registers;
    0 where they do not fit (then one `ldr q` per row and 4 steps)."""
    free = 32 - m * nv - 2 * m
    if not asm_b_registers(m, nv) or free < min(nv, 2):
        return 0
    return nv if free >= nv else 2


def _f32_asm_loop(m: int, nv: int, row: Callable[[int], str], b: str, n8: str, r1: str, k: str,
                  zero_start: bool) -> list[str] | None:
    """The reduction of the float M x 4nv asm tile (accumulators v0.. row by row, then the
    activation vectors, then the weight vectors): 8 steps per loop iteration (each row's 8
    activations by one `ldp` into two vectors where the registers allow, `asm_paired_a`, else
    two `ldr q`), then 4 steps if K & 4, then K % 4 single steps (`ldr s`); per step the nv
    weight vectors by `ldp` pairs (post-indexed) and M nv `fmla` by element. `row(i)`, `b`: the
    registers of the row pointers and the weight pointer (post-indexed); `n8`, `r1`: scratch
    registers for the counters; `k`: the register of K. `zero_start`: the first step of the
    first iteration is `fmul` (no accumulator read; K < 8: `movi` zeroes them first). Labels
    0-6 are local to the block."""
    nb = asm_b_registers(m, nv)
    if not nb:
        return None
    pb = asm_paired_a(m, nv)
    paired = bool(pb)
    nb = pb or nb
    acc = [[i * nv + j for j in range(nv)] for i in range(m)]
    a0 = [m * nv + i for i in range(m)]
    a1 = [m * nv + m + i for i in range(m)] if paired else a0
    base_b = m * nv + (2 * m if paired else m)
    bv = [base_b + j % nb for j in range(nv)]

    def step(av: list[int], lane: str, op: str = "fmla") -> list[str]:
        loads, j = [], 0
        while j < nv:
            if j + 1 < nv:
                loads.append((j, f"ldp q{bv[j]}, q{bv[j + 1]}, [{b}], #32"))
                j += 2
            else:
                loads.append((j, f"ldr q{bv[j]}, [{b}], #16"))
                j += 1
        fm = [[f"{op} v{acc[i][j]}.4s, v{bv[j]}.4s, v{av[i]}.{lane}" for i in range(m)] for j in range(nv)]
        if nb == nv:
            return [ld for _, ld in loads] + [f for i in range(m) for f in (fm[j][i] for j in range(nv))]
        out = []
        for j, ld in loads:
            out += [ld, *fm[j], *(fm[j + 1] if j + 1 < nv else [])]
        return out

    def octet(first: bool) -> list[str]:
        if paired:
            out = [f"ldp q{a0[i]}, q{a1[i]}, [{row(i)}], #32" for i in range(m)]
        else:
            out = [f"ldr q{a0[i]}, [{row(i)}], #16" for i in range(m)]
        for kk in range(4):
            out += step(a0, f"s[{kk}]", "fmul" if first and kk == 0 else "fmla")
        if not paired:
            out += [f"ldr q{a1[i]}, [{row(i)}], #16" for i in range(m)]
        for kk in range(4):
            out += step(a1, f"s[{kk}]")
        return out

    quad = [f"ldr q{a0[i]}, [{row(i)}], #16" for i in range(m)]
    for kk in range(4):
        quad += step(a0, f"s[{kk}]")
    body = [f"lsr {n8}, {k}, #3"]
    if zero_start:
        body += [f"cbnz {n8}, 0f", *[f"movi v{v}.16b, #0" for r in acc for v in r], "b 5f",
                 "0:", *octet(True), f"subs {n8}, {n8}, #1", "b.eq 5f"]
    else:
        body += [f"cbz {n8}, 5f"]
    body += ["1:", *octet(False), f"subs {n8}, {n8}, #1", "b.ne 1b",
             "5:", f"tbz {k}, #2, 2f", *quad,
             "2:", f"ands {r1}, {k}, #3", "b.eq 4f",
             "3:", *[f"ldr s{a0[i]}, [{row(i)}], #4" for i in range(m)], *step(a0, "s[0]"),
             f"subs {r1}, {r1}, #1", "b.ne 3b", "4:"]
    return body


def _f32_asm_vectors(m: int, nv: int) -> int:
    """How many vector registers the asm tile uses (accumulators, activations, weights)."""
    pb = asm_paired_a(m, nv)
    return m * nv + (2 * m + pb if pb else m + asm_b_registers(m, nv))


def _gemm_f32_asm(m: int, nv: int) -> list[str] | None:
    """The float M x 4nv tile over a packed weight panel (B rows contiguous, ldb == N) as one
    inline-asm block with its registers fixed: the C tile loaded into the accumulators, the
    reduction of `_f32_asm_loop` (8 steps per iteration, activations by `ldp` where they fit),
    the tile stored back. The in/out operands are early-clobbered ("+&r"): else gcc may give an
    input of the same value the register of a pointer. gcc, given the same loop in C, rotates
    accumulators through extra `mov`s (8 per 4 steps in the 7 x 8 tile: 79 instructions for 56
    fmla) and indexes B by a multiple of ldb. None where the registers do not suffice."""
    loop = _f32_asm_loop(m, nv, lambda i: f"%[a{i}]", "%[b]", "x17", "x16", "%[k]", False)
    if loop is None:
        return None
    acc = [[i * nv + j for j in range(nv)] for i in range(m)]

    def row_io(op: str) -> list[str]:
        out = []
        for i in range(m):
            j = 0
            while j < nv:
                if j + 1 < nv:
                    out.append(f"{op}p q{acc[i][j]}, q{acc[i][j + 1]}, [x16, #{16 * j}]")
                    j += 2
                else:
                    out.append(f"{op}r q{acc[i][j]}, [x16, #{16 * j}]")
                    j += 1
            if i + 1 < m:
                out.append("add x16, x16, %[ldc]")
        return out

    body = ["mov x16, %[c]", *row_io("ld"), *loop, "mov x16, %[c]", *row_io("st")]
    return [
        "    const float " + ", ".join(f"*a{i} = A + {i} * lda" for i in range(m)) + ";",
        "    const float *b = B;",
        "    __asm__ volatile(",
        *[f'      "{ins}\\n\\t"' for ins in body],
        "      : [b] \"+&r\"(b), " + ", ".join(f'[a{i}] \"+&r\"(a{i})' for i in range(m)),
        "      : [c] \"r\"(C), [ldc] \"r\"(ldc * 4), [k] \"r\"((int64_t)K)",
        "      : \"x16\", \"x17\", \"cc\", \"memory\", "
        + ", ".join(f'\"v{v}\"' for v in range(_f32_asm_vectors(m, nv))) + ");",
    ]


def _gemm_s8_k16_neon(m: int, n: int) -> list[str]:
    """The NEON body: M x N int32x4 accumulators over the 16-step groups and the first 8 steps of
    the last group, reduced; the rest of the last group in scalar C. The first block (16 steps, or
    the last group's first 8 when K < 16) sets the accumulators by `saddlp` instead of zeroing
    them for `sadalp` (one register copy per accumulator less per call)."""
    def block16(first: bool) -> list[str]:
        out = ["    const int8x16_t " + ", ".join(f"a{i} = vld1q_s8(A + {i} * lda + k)" for i in range(m)) + ";",
               "    const int8x8_t " + ", ".join(f"a{i}l = vget_low_s8(a{i})" for i in range(m)) + ";"]
        for j in range(n):
            out.append(f"    {{ const int8x16_t w = vld1q_s8(b + {16 * j}); const int8x8_t wl = vget_low_s8(w);")
            for i in range(m):
                prod = f"vmlal_high_s8(vmull_s8(a{i}l, wl), a{i}, w)"
                out.append(f"      s{i}_{j} = vpaddlq_s16({prod});" if first
                           else f"      s{i}_{j} = vpadalq_s16(s{i}_{j}, {prod});")
            out.append("    }")
        return out

    def block8(first: bool) -> list[str]:
        out = ["    const int8x8_t " + ", ".join(f"a{i} = vld1_s8(A + {i} * lda + k)" for i in range(m)) + ";"]
        for j in range(n):
            out.append(f"    {{ const int8x8_t w = vld1_s8(b + {j} * r);")
            out.append("      " + " ".join((f"s{i}_{j} = vpaddlq_s16(vmull_s8(a{i}, w));" if first
                                            else f"s{i}_{j} = vpadalq_s16(s{i}_{j}, vmull_s8(a{i}, w));")
                                           for i in range(m)))
            out.append("    }")
        return out

    lines = ["  int32x4_t " + ", ".join(f"s{i}_{j}" for i in range(m) for j in range(n)) + ";",
             "  const int8_t *b = B;", "  int32_t k = 0, t0 = 0;",
             "  if (K >= 16) {", *block16(True), "    k = 16; b += 16 * ldb;",
             "  } else if (K >= 8) {         /* one group of K steps: channel j's weights at B + j * K */",
             "    const int32_t r = K;", *block8(True), "    t0 = 8;",
             "  } else {",
             "    " + " ".join(f"s{i}_{j} = vdupq_n_s32(0);" for i in range(m) for j in range(n)),
             "  }",
             "  for (; k + 16 <= K; k += 16, b += 16 * ldb) {", *block16(False), "  }",
             "  const int32_t r = K - k;       /* the last group: channel j's r weights at b + j * r */",
             "  if (K >= 16 && r >= 8) {", *block8(False), "    t0 = 8;", "  }"]
    for i in range(m):
        for q in range(n // 4):
            j = 4 * q
            lines.append(f"  vst1q_s32(C + {i} * ldc + {j}, vaddq_s32(vld1q_s32(C + {i} * ldc + {j}), "
                         f"vpaddq_s32(vpaddq_s32(s{i}_{j}, s{i}_{j + 1}), vpaddq_s32(s{i}_{j + 2}, s{i}_{j + 3}))));")
        for j in range(n // 4 * 4, n):
            lines.append(f"  C[{i} * ldc + {j}] += vaddvq_s32(s{i}_{j});")
    lines.append("  for (int32_t t = t0; t < r; ++t) {")
    for j in range(n):
        lines.append("    " + " ".join(f"C[{i} * ldc + {j}] += (int32_t)A[{i} * lda + k + t] * b[{j} * r + t];"
                                       for i in range(m)))
    lines.append("  }")
    return lines


# the asm int8 GEMM: at most this many pixels (one general register per A row, each a "+r" operand
# counted twice among gcc's 30)
ASM_S8_MAX_M = 11
# ... and at least this many reduction steps (K is a constant once the kernel is inlined): with one
# 16-step block gcc's straight-line intrinsics win. Kernel instructions per inference (int8, rpi4,
# one session) with the asm from K = 16 / 32 / 48 / 64: MobileNet V1 0.25/96 2.985 / 2.961 / 2.960 /
# - M, MobileNet V2 0.35/96 - / 4.727 / 4.739 / 4.777 M
ASM_S8_MIN_K = 32


def _gemm_s8_k16_asm(m: int, n: int) -> list[str] | None:
    """The int8 M x N tile over a packed 'k16' panel (ldb == N: the 16-step blocks contiguous, then
    the last group) as one inline-asm block with its registers fixed: M x N int32x4 accumulators
    v0.., the M activation vectors, two weight vectors (a pair of channels' 16-byte blocks by one
    `ldp`) and the rest as product temporaries. Per 16 steps: M `ldr q` (post-indexed rows),
    ceil(N / 2) weight loads, per pair `smull` + `smlal2` + `sadalp` (the first block `saddlp`, no
    zeroing), `subs` + `b.ne`: 3 instructions per 16 multiply-accumulates, the exact bound of the
    pair sums in 16 bits (no weight is -128). Then the last group's first 8 steps when it has 8 (`ldr d`), the
    4 lanes of each accumulator added (`addp`, 4 channels at a time; 2 and 1 for the rest) into C.
    gcc, given the same loop in intrinsics, keeps the products in fresh registers and spills
    accumulators to the stack (66 instructions per 16 steps of the 2 x 8 tile, 56 here); the last
    group's r % 8 steps stay in C. For K >= ASM_S8_MIN_K (at least one 16-step block). None where the
    registers or gcc's 30 operands do not suffice."""
    temps = 32 - m * n - m - 2
    if m > ASM_S8_MAX_M or temps < 1:
        return None
    temps = min(temps, 4)
    acc = [[i * n + j for j in range(n)] for i in range(m)]
    av = [m * n + i for i in range(m)]
    wv = [m * n + m, m * n + m + 1]
    tv = [m * n + m + 2 + t for t in range(temps)]
    used = m * n + m + 2 + temps

    def products(wide: bool, first: bool, j: int, w: int, t0: int) -> list[str]:
        out = []
        for i in range(m):
            t = tv[(t0 + i) % temps]
            if wide:
                out += [f"smull v{t}.8h, v{av[i]}.8b, v{w}.8b", f"smlal2 v{t}.8h, v{av[i]}.16b, v{w}.16b"]
            else:
                out.append(f"smull v{t}.8h, v{av[i]}.8b, v{w}.8b")
            out.append(f"{'saddlp' if first else 'sadalp'} v{acc[i][j]}.4s, v{t}.8h")
        return out

    def block16(first: bool) -> list[str]:
        out = [f"ldr q{av[i]}, [%[a{i}]], #16" for i in range(m)]
        for j in range(0, n, 2):
            if j + 1 < n:
                out.append(f"ldp q{wv[0]}, q{wv[1]}, [%[b]], #32")
                out += products(True, first, j, wv[0], 0) + products(True, first, j + 1, wv[1], m)
            else:
                out.append(f"ldr q{wv[0]}, [%[b]], #16")
                out += products(True, first, j, wv[0], 0)
        return out

    def block8() -> list[str]:       # channel j's 8 weights at b + j * r
        out = [f"ldr d{av[i]}, [%[a{i}]]" for i in range(m)]
        for j in range(n):
            out += [f"ldr d{wv[0]}, [%[b]]", "add %[b], %[b], %[r]"] + products(False, False, j, wv[0], j)
        return out

    # the 4 lanes of each accumulator added, 4 channels per register (2, 3 or 1 for the last
    # group), left in the group's first accumulator: an output of the asm (an explicit register
    # variable), added to C in C, so that gcc forwards the caller's zeroed C instead of storing
    # and reloading it (the asm touches no memory but A and B, which it only reads)
    reduce, outs = [], []
    for i in range(m):
        a = acc[i]
        for j in range(0, n, 4):
            g = min(4, n - j)
            if g == 1:
                reduce.append(f"addv s{a[j]}, v{a[j]}.4s")
            elif g == 2:
                reduce += [f"addp v{a[j]}.4s, v{a[j]}.4s, v{a[j + 1]}.4s", f"addp v{a[j]}.4s, v{a[j]}.4s, v{a[j]}.4s"]
            else:
                last = a[j + 3] if g == 4 else a[j + 2]
                reduce += [f"addp v{a[j]}.4s, v{a[j]}.4s, v{a[j + 1]}.4s",
                           f"addp v{a[j + 2]}.4s, v{a[j + 2]}.4s, v{last}.4s",
                           f"addp v{a[j]}.4s, v{a[j]}.4s, v{a[j + 2]}.4s"]
            outs.append((i, j, g, a[j]))
    if 2 * m + 4 + len(outs) + 3 > 30:           # gcc's operand limit
        return None
    out_regs = {reg for _, _, _, reg in outs}

    body = [*block16(True), "subs %[n16], %[n16], #1", "b.eq 2f",       # K >= ASM_S8_MIN_K: a first block
            "1:", *block16(False), "subs %[n16], %[n16], #1", "b.ne 1b",
            "2:", "cmp %[r], #8", "b.lt 4f", *block8(),
            "4:", *reduce]
    add_c = []
    for i, j, g, reg in outs:
        if g == 4:
            add_c.append(f"    vst1q_s32(C + {i} * ldc + {j}, vaddq_s32(vld1q_s32(C + {i} * ldc + {j}), o{i}_{j}));")
        else:
            add_c.append("    " + " ".join(f"C[{i} * ldc + {j + l}] += vgetq_lane_s32(o{i}_{j}, {l});" for l in range(g)))
    return [
        "    const int8_t " + ", ".join(f"*a{i} = A + {i} * lda" for i in range(m)) + ";",
        "    const int8_t *b = B;",
        "    int64_t n16 = K >> 4;",
        "    const int64_t r = K & 15;",
        *[f'    register int32x4_t o{i}_{j} __asm__("v{reg}");' for i, j, _, reg in outs],
        "    __asm__ volatile(",
        *[f'      "{ins}\\n\\t"' for ins in body],
        "      : [n16] \"+&r\"(n16), [b] \"+&r\"(b), " + ", ".join(f'[a{i}] \"+&r\"(a{i})' for i in range(m))
        + ", " + ", ".join(f'\"=w\"(o{i}_{j})' for i, j, _, _ in outs),
        "      : [r] \"r\"(r), \"m\"(*(const int8_t (*)[])A), \"m\"(*(const int8_t (*)[])B)",
        "      : \"cc\", " + ", ".join(f'\"v{v}\"' for v in range(used) if v not in out_regs) + ");",
        *add_c,
        "    const int32_t k = K - (int32_t)r;",
        "    const int8_t *bt = B + (int64_t)k * ldb;     /* the last group: channel j's r weights at bt + j * r */",
        f"    for (int32_t t = r >= 8 ? 8 : 0; t < r; ++t) {{",
        *["      " + " ".join(f"C[{i} * ldc + {j}] += (int32_t)A[{i} * lda + k + t] * bt[{j} * r + t];"
                             for i in range(m)) for j in range(n)],
        "    }",
    ]


def _gemm_s8_k16_portable(m: int, n: int) -> list[str]:
    """The same panel order in plain C (this machine, and any core without NEON)."""
    lines = ["  const int8_t *b = B;", "  int32_t k = 0;", "  for (; k + 16 <= K; k += 16, b += 16 * ldb) {"]
    for i in range(m):
        for j in range(n):
            lines.append(f"    {{ int32_t s = 0; for (int32_t t = 0; t < 16; ++t) "
                         f"s += (int32_t)A[{i} * lda + k + t] * b[{16 * j} + t]; C[{i} * ldc + {j}] += s; }}")
    lines += ["  }", "  const int32_t r = K - k;", "  for (int32_t t = 0; t < r; ++t) {"]
    for j in range(n):
        lines.append("    " + " ".join(f"C[{i} * ldc + {j}] += (int32_t)A[{i} * lda + k + t] * b[{j} * r + t];"
                                       for i in range(m)))
    lines.append("  }")
    return lines


def _gemm_s8_k16(m: int, n: int) -> str:
    types = Types("int8", "int8", "int32", "k16")
    return guarded_kernel(
        _INCLUDE,
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] (int8 x int8 -> int32), B panel in order 'k16' (16-step blocks "
        f"per channel): NEON smull/smlal2 + sadalp, {m * n} int32x4 accumulators; portable C otherwise */",
        gemm_signature(m, n, types), NEON,
        _gemm_s8_k16_fast(m, n), _gemm_s8_k16_portable(m, n))


def _gemm_s8_k16_fast(m: int, n: int) -> list[str]:
    """The asm block for a packed panel (ldb == N) where the registers allow, the intrinsics
    otherwise."""
    asm = _gemm_s8_k16_asm(m, n)
    if asm is None:
        return _gemm_s8_k16_neon(m, n)
    return [f"  if (ldb == {n} && K >= {ASM_S8_MIN_K}) {{", *asm, "    return 0;", "  }", *_gemm_s8_k16_neon(m, n)]


def _rows_load(m: int, q8: int) -> str:
    """The row-by-row integer GEMMs' accumulators (low and high int32x4 halves of each 8-channel
    vector of each pixel) loaded from C."""
    return "  int32x4_t " + ", ".join(f"l{i}_{q} = vld1q_s32(C + {i} * ldc + {8 * q}), "
                                      f"h{i}_{q} = vld1q_s32(C + {i} * ldc + {8 * q + 4})"
                                      for i in range(m) for q in range(q8)) + ";"


def _rows_gemm(m: int, n: int, types: Types, what: str, neon: list[str]) -> str:
    """A row-by-row integer GEMM (weights [K][N], 8 channels per vector): `neon`, the body after
    `_rows_load`, then the accumulators stored; portable C of the same sums under `#else`."""
    store = ["  " + " ".join(f"vst1q_s32(C + {i} * ldc + {8 * q}, l{i}_{q}); vst1q_s32(C + {i} * ldc + {8 * q + 4}, h{i}_{q});"
                             for q in range(n // 8)) for i in range(m)]
    portable = ["  for (int32_t k = 0; k < K; ++k) {",
                f"    for (int32_t i = 0; i < {m}; ++i) {{",
                f"      for (int32_t j = 0; j < {n}; ++j) C[i * ldc + j] += (int32_t)A[i * lda + k] * B[k * ldb + j];",
                "    }", "  }"]
    return guarded_kernel(_INCLUDE, f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] {what} */", gemm_signature(m, n, types), NEON,
                          neon + store, portable)


def _gemm_s16(m: int, n: int) -> str:
    """int16 activations (the zero-point-shifted padded rows of KxK convolutions) x int8 weights
    [K][N] row by row: per reduction step the N weights widened once (8 per `sxtl`), each pixel's
    value multiplied into them by `smlal`/`smlal2` by element (8 multiply-accumulates in 2
    instructions)."""
    types = Types("int16", "int8", "int32")
    q8 = n // 8
    neon = [_rows_load(m, q8),
            "  for (int32_t k = 0; k < K; ++k) {",
            "    const int16x8_t " + ", ".join(f"w{q} = vmovl_s8(vld1_s8(B + k * ldb + {8 * q}))" for q in range(q8)) + ";",
            "    const int16x4_t " + ", ".join(f"w{q}l = vget_low_s16(w{q})" for q in range(q8)) + ";"]
    for i in range(m):
        neon.append(f"    {{ const int16_t a = A[{i} * lda + k]; " + " ".join(
            f"l{i}_{q} = vmlal_n_s16(l{i}_{q}, w{q}l, a); h{i}_{q} = vmlal_high_n_s16(h{i}_{q}, w{q}, a);"
            for q in range(q8)) + " }")
    neon.append("  }")
    return _rows_gemm(m, n, types, "(int16 x int8 -> int32): NEON smlal/smlal2 by element on 16-bit lanes, 8 channels "
                      "per weight vector; portable C otherwise", neon)


def _gemm_s8_rows(m: int, n: int) -> str:
    """int8 activations x int8 weights [K][N] row by row (the short reductions of pointwise
    convolutions over few channels, CortexARules.S8_ROWS_MAX_K): each pixel's 8 next values
    widened by one `sxtl`, per reduction step the N weights widened (8 per `sxtl`) and multiplied by
    each pixel's value by `smlal`/`smlal2` by lane (8 multiply-accumulates in 2 instructions), no
    reduction of accumulator lanes at the end (the k16 kernel's pairs add 4 lanes per pair)."""
    types = Types("int8", "int8", "int32")
    q8 = n // 8

    def step(b: str, lane: Callable[[int], str], kk: int) -> list[str]:
        out = ["    {", "      const int16x8_t " + ", ".join(f"w{q} = vmovl_s8(vld1_s8({b} + {8 * q}))" for q in range(q8)) + ";"]
        for i in range(m):
            out.append("      " + " ".join(
                f"l{i}_{q} = {lane(i).format(acc=f'l{i}_{q}', w=f'vget_low_s16(w{q})', high='', kk=kk)}; "
                f"h{i}_{q} = {lane(i).format(acc=f'h{i}_{q}', w=f'w{q}', high='_high', kk=kk)};" for q in range(q8)))
        return out + ["    }"]

    neon = [_rows_load(m, q8),
            "  int32_t k = 0;",
            "  for (; k + 8 <= K; k += 8) {",
            "    const int16x8_t " + ", ".join(f"a{i} = vmovl_s8(vld1_s8(A + {i} * lda + k))" for i in range(m)) + ";"]
    for kk in range(8):
        neon += step(f"B + (k + {kk}) * ldb", lambda i: f"vmlal{{high}}_laneq_s16({{acc}}, {{w}}, a{i}, {{kk}})", kk)
    neon += ["  }", "  for (; k < K; ++k) {",
             "    const int16_t " + ", ".join(f"a{i} = A[{i} * lda + k]" for i in range(m)) + ";"]
    neon += step("B + k * ldb", lambda i: f"vmlal{{high}}_n_s16({{acc}}, {{w}}, a{i})", 0)
    neon.append("  }")
    return _rows_gemm(m, n, types, "(int8 x int8 -> int32), B row by row: NEON smlal/smlal2 by lane on 16-bit lanes, 8 "
                      "channels per weight vector, each pixel's values widened 8 at a time; portable C otherwise", neon)


def _dw_neon(m: int, n: int, kh: int, kw: int, s: int, a: str) -> list[str]:
    """8 channels at a time: per tap the weights widened to 16 bits once, each pixel's 8 values
    (int16, or int8 widened) multiplied into two int32x4 accumulators by smlal/smlal2."""
    load_x = "vld1q_s16({p})" if a == "int16" else "vmovl_s8(vld1_s8({p}))"
    lines = []
    for q in range(n // 8):
        c = 8 * q
        lines.append("  {")
        lines.append("    int32x4_t " + ", ".join(f"l{i} = vld1q_s32(C + {i} * ldc + {c}), h{i} = vld1q_s32(C + {i} * ldc + {c + 4})"
                                                 for i in range(m)) + ";")
        for ry in range(kh):
            for rx in range(kw):
                lines.append(f"    {{ const int16x8_t w = vmovl_s8(vld1_s8(W + {ry} * ldw_row + {rx} * ldw_px + {c}));"
                             " const int16x4_t wl = vget_low_s16(w);")
                for i in range(m):
                    x = load_x.format(p=f"X + {ry} * ldx_row + {i * s + rx} * ldx_px + {c}")
                    lines.append(f"      {{ const int16x8_t x = {x}; l{i} = vmlal_s16(l{i}, vget_low_s16(x), wl);"
                                 f" h{i} = vmlal_high_s16(h{i}, x, w); }}")
                lines.append("    }")
        lines.append("    " + " ".join(f"vst1q_s32(C + {i} * ldc + {c}, l{i}); vst1q_s32(C + {i} * ldc + {c + 4}, h{i});"
                                       for i in range(m)))
        lines.append("  }")
    return lines


def dw_f32_groups(m: int, nv: int, kw: int, s: int = 1) -> list[int]:
    """The channel groups (in 4-lane vectors) of the asm float depthwise M x 4nv tile: each group's
    M x g accumulators, one kernel row's KW x g weight vectors and one input pixel's g vectors in
    the 32 registers (g (M + KW + 1) <= 32), at most 4 vectors (one `ld1` of 4 registers), as few
    groups as that allows and as even; [] where not even one vector fits."""
    fit = min(4, 32 // (m + kw + 1))
    if fit < 1:
        return []
    count = -(-nv // fit)
    q, r = divmod(nv, count)
    return [q + 1] * r + [q] * (count - r)


def dw_f32_instructions(m: int, nv: int, kh: int, kw: int, s: int) -> int | None:
    """Instructions of one call of the asm float depthwise M x 4nv tile (_dw_f32_asm): per channel
    group of g vectors its M accumulator loads and stores, per kernel row KW weight loads, the
    row's (M - 1) S + KW input pixel loads, M KW g `fmla` and two row steps (not after the last
    row), and about 4 instructions of pointer set-up; about 6 for the strides. None where the
    registers do not suffice."""
    groups = dw_f32_groups(m, nv, kw, s)
    if not groups:
        return None
    npx = (m - 1) * s + kw
    return 6 + sum(2 * m + kh * (kw + npx + m * kw * g) + 2 * (kh - 1) + 4 for g in groups)


def _dw_f32_asm(m: int, nv: int, kh: int, kw: int, s: int) -> list[str] | None:
    """The float depthwise M x 4nv tile, channel group by channel group (dw_f32_groups), as one
    inline-asm block per group with its registers fixed. Per kernel row: the KW taps' weight
    vectors of the group, one `ld1` of g registers per tap (post-indexed by the pixel stride), then
    each of the (M - 1) S + KW input pixels of the row loaded once (one `ld1`) and multiplied into
    every output pixel whose window holds it (KW of them at stride 1): (M - 1) S + KW + KW loads
    and M KW g `fmla` per row. The accumulators are loaded and stored pixel by pixel (`ld1` / `st1`
    of g registers, post-indexed by the row stride of C). gcc, given the generic loop, loads each
    pixel once too but spills (67 instructions per kernel row of the 4 x 12 3x3/1 tile against 47
    here) and indexes every vector by its own offset."""
    groups = dw_f32_groups(m, nv, kw, s)
    if not groups:
        return None
    npx = (m - 1) * s + kw
    lines = ["  const int64_t xs = ldx_px * 4, ws = ldw_px * 4, cs = ldc * 4;",
             f"  const int64_t xrow = (ldx_row - {npx} * ldx_px) * 4, wrow = (ldw_row - {kw} * ldw_px) * 4;"]
    j0 = 0
    for g in groups:
        acc = [[i * g + j for j in range(g)] for i in range(m)]
        wv = [[m * g + rx * g + j for j in range(g)] for rx in range(kw)]
        xv = [m * g + kw * g + j for j in range(g)]
        used = m * g + kw * g + g

        def regs(r: list[int]) -> str:
            return "{" + ", ".join(f"v{v}.4s" for v in r) + "}"

        body = [f"ld1 {regs(acc[i])}, [%[cl]], %[cs]" for i in range(m)]
        for ry in range(kh):
            body += [f"ld1 {regs(wv[rx])}, [%[w]], %[ws]" for rx in range(kw)]
            for p in range(npx):
                body.append(f"ld1 {regs(xv)}, [%[x]], %[xs]")
                for i in range(m):
                    rx = p - i * s
                    if 0 <= rx < kw:
                        body += [f"fmla v{acc[i][j]}.4s, v{xv[j]}.4s, v{wv[rx][j]}.4s" for j in range(g)]
            if ry + 1 < kh:
                body += ["add %[x], %[x], %[xrow]", "add %[w], %[w], %[wrow]"]
        body += [f"st1 {regs(acc[i])}, [%[cs_]], %[cs]" for i in range(m)]
        lines += [
            "  {",
            f"    const float *x = X + {4 * j0}, *w = W + {4 * j0};",
            f"    float *cl = C + {4 * j0}, *cs_ = C + {4 * j0};",
            "    __asm__ volatile(",
            *[f'      "{ins}\\n\\t"' for ins in body],
            '      : [x] "+&r"(x), [w] "+&r"(w), [cl] "+&r"(cl), [cs_] "+&r"(cs_)',
            '      : [xs] "r"(xs), [ws] "r"(ws), [cs] "r"(cs), [xrow] "r"(xrow), [wrow] "r"(wrow)',
            '      : "memory", ' + ", ".join(f'"v{v}"' for v in range(used)) + ");",
            "  }",
        ]
        j0 += g
    return lines


def dw(m: int, n: int, kh: int, kw: int, s: int, lanes: int, types: Types) -> str | None:
    """C for `ec_dw_<t>_MxN_kKHxKWsS`, or None where the generic kernel is used: float tiles of
    4-lane vectors as inline asm on aarch64 (_dw_f32_asm; the generic loop elsewhere); int16 or
    int8 activations x int8 weights, channels in eights."""
    if types.a == types.b == types.c == "float32" and lanes == 4 and n % 4 == 0:
        asm = _dw_f32_asm(m, n // 4, kh, kw, s)
        if asm is None:
            return None
        return "\n".join([
            f"/* depthwise {kh}x{kw}/{s} (float): C[{m}x{n}] += sum X[ry][m*{s}+rx][n] * W[ry][rx][n] over a padded "
            "window; on aarch64 one asm block per channel group, each input pixel of a kernel row loaded once */",
            dw_signature(m, n, kh, kw, s, types) + " {",
            f"#if {NEON}", *asm, "#else", *dw_body(m, n, kh, kw, s, lanes, types), "#endif",
            "  return 0;", "}"])
    if not (types.a in ("int16", "int8") and types.b == "int8" and types.c == "int32" and n % 8 == 0):
        return None
    return guarded_kernel(
        _INCLUDE,
        f"/* depthwise {kh}x{kw}/{s} ({types.a} x int8 -> int32), C[{m}x{n}]: NEON smlal/smlal2 on 16-bit lanes, "
        "8 channels at a time; portable C otherwise */",
        dw_signature(m, n, kh, kw, s, types), NEON,
        _dw_neon(m, n, kh, kw, s, types.a), dw_body(m, n, kh, kw, s, lanes, types))


def _requant_block(c: int, w: int, m: int) -> list[str]:
    """Channels c .. c + w - 1 (w = 8 or 4) of every pixel: the constants loaded once, then per pixel
    two (or one) int32x4 accumulator vectors rescaled and narrowed to w int8 values."""
    groups = range(c, c + w, 4)
    lines = ["  {"]
    for g in groups:
        lines.append(f"    const int32x4_t mu{g} = vld1q_s32(m0 + {g}), sh{g} = vnegq_s32(vld1q_s32(r + {g}));"
                     f" const int64x2_t rl{g} = vld1q_s64(rnd + {g}), rh{g} = vld1q_s64(rnd + {g + 2});")
    lines.append(f"    for (int32_t i = 0; i < {m}; ++i) {{")
    for g in groups:
        lines += [f"      const int32x4_t c{g} = vld1q_s32(C + i * ldc + {g});",
                  f"      const int32x4_t x{g} = vshlq_s32(vaddhn_high_s64(vaddhn_s64(vmull_s32(vget_low_s32(c{g}), "
                  f"vget_low_s32(mu{g})), rl{g}), vmull_high_s32(c{g}, mu{g}), rh{g}), sh{g});"]
    if w == 8:
        lines.append(f"      vst1_s8(O + i * ldo + {c}, vqmovn_s16(vqmovn_high_s32(vqmovn_s32(x{c}), x{c + 4})));")
    else:
        lines.append(f"      const int16x4_t h{c} = vqmovn_s32(x{c});")
        lines.append(f"      vst1_lane_s32((int32_t *)(O + i * ldo + {c}), "
                     f"vreinterpret_s32_s8(vqmovn_s16(vcombine_s16(h{c}, h{c}))), 0);")
    lines += ["    }", "  }"]
    return lines


def _requant_neon(m: int, n: int) -> list[str]:
    lines: list[str] = []
    c = 0
    while c + 8 <= n:
        lines += _requant_block(c, 8, m)
        c += 8
    if c + 4 <= n:
        lines += _requant_block(c, 4, m)
        c += 4
    if c < n:            # the last n % 4 channels: the scalar form
        lines += [f"  for (int32_t i = 0; i < {m}; ++i) {{",
                  f"    for (int32_t j = {c}; j < {n}; ++j) {{",
                  "      const int32_t x = ((int32_t)((((int64_t)C[i * ldc + j]) * ((int64_t)m0[j]) + rnd[j]) >> "
                  "(int64_t)32)) >> r[j];",
                  "      O[i * ldo + j] = (int8_t)(x < -128 ? -128 : x > 127 ? 127 : x);",
                  "    }", "  }"]
    return lines


def requant(m: int, n: int) -> str | None:
    """C for `ec_requant_s8_MxN`: the folded int8 rescale on NEON, 8 then 4 channels per step,
    bit for bit the scalar form (the 64-bit sum's high word by `addhn`); None (the generic scalar
    kernel) below 4 channels."""
    if n < 4:
        return None
    return guarded_kernel(
        _INCLUDE,
        f"/* int8 rescale of C[{m}x{n}] (int32): O = sat8((int32)((C * m0 + rnd) >> 32) >> r) per channel; NEON "
        "smull/smull2 + addhn/addhn2 + sshl + sqxtn, 8 or 4 channels per step; portable C otherwise */",
        requant_signature(m, n), NEON, _requant_neon(m, n), requant_body(m, n))


# the zero-start float GEMM (`gemm_z`): its accumulators leave the asm as outputs (explicit
# register variables), one per operand among gcc's 30, beside the 4 inputs (A, lda, B, K)
ASM_Z_MAX_ACC = 26
# general registers the zero-start asm takes for its row pointers, weight pointer and counters
# (caller-saved: x18 is the platform register, x19.. callee-saved)
_Z_SCRATCH = [f"x{r}" for r in (9, 10, 11, 12, 13, 14, 15, 16, 17, 0, 1, 2, 3, 4, 5, 6, 7, 8)]


def _gemm_f32_asm_z(m: int, nv: int) -> list[str] | None:
    """The float M x 4nv tile over a packed panel that *sets* C (C = A B, `gemm_z`): the loop of
    `_gemm_f32_asm` without reading C. The first reduction step starts the accumulators with
    `fmul` instead of zeroing them (K < 8: `movi`); the accumulators leave the asm as register
    outputs, which the C stores into the tile: gcc then forwards them to the epilogue that reads
    the tile (no tile zeroing before the call, no load of it in the asm, no store-then-load
    between the asm and the epilogue). The row pointers and counters live in clobbered scratch
    registers. None where the registers or gcc's operands do not suffice."""
    if m * nv > ASM_Z_MAX_ACC or m + 3 > len(_Z_SCRATCH):
        return None
    rows, xb, n8, r1 = _Z_SCRATCH[:m], _Z_SCRATCH[m], _Z_SCRATCH[m + 1], _Z_SCRATCH[m + 2]
    loop = _f32_asm_loop(m, nv, lambda i: rows[i], xb, n8, r1, "%[k]", True)
    if loop is None:
        return None
    body = [f"mov {rows[0]}, %[a]", *[f"add {rows[i]}, {rows[i - 1]}, %[lda]" for i in range(1, m)],
            f"mov {xb}, %[b]", *loop]
    clobbers = [f'"v{v}"' for v in range(m * nv, _f32_asm_vectors(m, nv))] + [f'"{x}"' for x in _Z_SCRATCH[:m + 3]]
    return [
        *[f'    register ec_f32v c{i}_{j} __asm__("v{i * nv + j}");' for i in range(m) for j in range(nv)],
        "    __asm__ volatile(",
        *[f'      "{ins}\\n\\t"' for ins in body],
        "      : " + ", ".join(f'"=w"(c{i}_{j})' for i in range(m) for j in range(nv)),
        "      : [a] \"r\"(A), [lda] \"r\"(lda * 4), [b] \"r\"(B), [k] \"r\"((int64_t)K)",
        "      : \"cc\", \"memory\", " + ", ".join(clobbers) + ");",
        *["    " + " ".join(f"ec_f32v_store(C + {i} * ldc + {4 * j}, c{i}_{j});" for j in range(nv)) for i in range(m)],
    ]


def gemm_z(m: int, n: int, lanes: int, types: Types) -> str | None:
    """C for `ec_gemm_f32_MxN_z` (C = A B: the tile's zeroing and the += in one; TIR calls it where
    codegen.lower.zero_start_gemms removed the zeroing before an `ec_gemm_f32_MxN` call): the
    zero-start asm (`_gemm_f32_asm_z`) on aarch64 with a packed panel, else the tile zeroed and
    `ec_gemm_f32_MxN` (which `emit_ukernels` emits with it). None for other types (never called)."""
    if not (types.a == types.b == types.c == "float32"):
        return None
    nv = n // 4 if lanes == 4 and n % 4 == 0 else 0
    asm = _gemm_f32_asm_z(m, nv) if nv else None
    lines = [f"/* C[{m}x{n}] = A[{m}xK] * B[Kx{n}] (float): on aarch64 with a packed panel (ldb == N) one asm loop "
             "whose accumulators start by fmul and leave as register outputs; else C zeroed and the += kernel */",
             f"static inline int32_t ec_gemm_{types.tag}_{m}x{n}_z(float *restrict C, const float *restrict A, "
             "const float *restrict B, int32_t K, int64_t lda, int64_t ldb, int64_t ldc) {"]
    if asm:
        lines += [f"#if {NEON}", f"  if (ldb == {n}) {{", *asm, "    return 0;", "  }", "#endif"]
    lines += [f"  for (int32_t i = 0; i < {m}; ++i) for (int32_t j = 0; j < {n}; ++j) C[i * ldc + j] = 0.0f;",
              f"  return ec_gemm_{types.tag}_{m}x{n}(C, A, B, K, lda, ldb, ldc);", "}"]
    return "\n".join(lines)
