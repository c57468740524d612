"""Cortex-M4/M7 micro-kernels (the DSP extension) that override the generic ones of
`schedules/ukernels.py`.

`gemm`: integer GEMM tiles over weight panels in the "k4" / "k4x" orders (`ukernels.PANEL_ORDERS`:
each output channel's weights for 4 consecutive reduction steps in one word). Per 4 steps, an
int8 activation word becomes two registers of 16-bit lanes, (a0 a2) and (a1 a3), with SXTB16
(one instruction each, the second with its rotation); a weight word likewise, so the pairs line
up and two SMLAD (two 16x16 multiply-accumulates each) finish the 4 steps. int16 activations
(the zero-point-shifted rows of padded convolutions) are read as the pairs (a0 a1), (a2 a3);
their weights are stored w0 w2 w1 w3, so SXTB16 gives (w0 w1), (w2 w3). Per 4 steps an M x N tile
costs 3M (int8) or 2M (int16) loads and extensions, 3N for the weights and 2MN SMLAD.

Each kernel keeps the portable C of the same panel order under `#else`: the same model.c runs on
the host (`edgecompile test` compares a device's int8 bytes with it)."""

from __future__ import annotations

from ..ukernels import (WIDEN_SIGNATURE, Types, dw_body, dw_signature, gemm_signature, guarded_kernel, requant_signature,
                        ordered_gemm_body, wide_b_pointer, widen_body)

_READ32 = "\n".join([
    "#ifndef EC_READ32",
    "#define EC_READ32",
    "/* 4 bytes from any address as one word (LDR: unaligned access is allowed on ARMv7-M/v8-M) */",
    "static inline int32_t ec_read32(const void *p) { int32_t v; __builtin_memcpy(&v, p, 4); return v; }",
    "/* one word to any address (STR: unaligned access is allowed on ARMv7-M/v8-M) */",
    "static inline void ec_write32(void *p, int32_t v) { __builtin_memcpy(p, &v, 4); }",
    "#if defined(__ARM_FEATURE_DSP)",
    "/* bytes 1 and 3 of a word, sign-extended into two 16-bit lanes: SXTB16 with its ROR #8 (gcc does",
    "   not fold the rotation into the instruction by itself) */",
    "static inline int32_t ec_sxtb16_ror8(int32_t x) { int32_t r; __asm__(\"sxtb16 %0, %1, ror #8\" : \"=r\"(r) : \"r\"(x)); return r; }",
    "/* two words from a word-aligned address, the pointer advanced by 8: one LDRD with post-increment",
    "   (gcc splits such loads into two LDR on Cortex-M) */",
    "typedef struct { int32_t w[2]; } __attribute__((may_alias)) ec_words2;",
    "static inline const void *ec_ldrd(const void *p, int32_t *lo, int32_t *hi) {",
    "  int32_t a, b;",
    "  __asm__(\"ldrd %0, %1, [%2], #8\" : \"=&r\"(a), \"=&r\"(b), \"+r\"(p) : \"m\"(*(const ec_words2 *)p));",
    "  *lo = a; *hi = b;",
    "  return p;",
    "}",
    "#endif",
    "#endif",
])


_LDR = "\n".join([
    "#ifndef EC_LDR32",
    "#define EC_LDR32",
    "#if defined(__ARM_FEATURE_DSP)",
    "/* 4 bytes from any address as one word, by an LDR the compiler neither moves nor merges: the",
    "   depthwise kernels' loads stay next to their multiplies (gcc otherwise hoists a whole window's",
    "   loads and holds them in FPU registers, VLDR + VMOV, and spills the accumulators) */",
    "static inline int32_t ec_ldr32(const void *p) {",
    "  int32_t v;",
    "  __asm__ volatile(\"ldr %0, %1\" : \"=r\"(v) : \"m\"(*(const int32_t *)p));",
    "  return v;",
    "}",
    "#endif",
    "#endif",
])


def _smlads(m: int, j: int, w: str) -> list[str]:
    """Channel j's weight word `w` (4 int8 of one quad): both halves, 2 SMLAD per pixel."""
    lines = [f"    {{ const int32_t wl = __sxtb16({w}), wh = ec_sxtb16_ror8({w});"]
    lines += [f"      c{i}_{j} = __smlad(x{i}l, wl, c{i}_{j}); c{i}_{j} = __smlad(x{i}h, wh, c{i}_{j});" for i in range(m)]
    return lines + ["    }"]


def _quad_loop_any(m: int, n: int, wide: bool) -> list[str]:
    """The K quads from any alignment (LDR may read unaligned words). Tiles of up to 2 pixels: two
    quads per iteration, then the odd last quad, as in the aligned loop; 3 pixels keep one quad per
    iteration (two there made the compiler spill in the aligned loop of the same kernel)."""
    if m > 2:
        return ["  _Pragma(\"GCC unroll 2\")", "  for (; k + 4 <= K; k += 4, b += 4 * ldb) {",
                *_any_quad(m, n, wide, 0, "0"), "  }"]
    return ["  for (; k + 8 <= K; k += 8, b += 8 * ldb) {", *_any_quad(m, n, wide, 0, "0"),
            *_any_quad(m, n, wide, 4, "4 * ldb"), "  }",
            "  if (k + 4 <= K) {", *_any_quad(m, n, wide, 0, "0"), "    k += 4; b += 4 * ldb;", "  }"]


def _any_quad(m: int, n: int, wide: bool, dk: int, db: str) -> list[str]:
    """One K quad at k + dk, its weights at b + db."""
    lines = ["    {"]
    for i in range(m):
        if wide:     # int16 activations: (a0 a1), (a2 a3)
            lines.append(f"    const int32_t x{i}l = ec_read32(A + {i} * lda + k + {dk}), "
                         f"x{i}h = ec_read32(A + {i} * lda + k + {dk + 2});")
        else:        # int8 activations: (a0 a2), (a1 a3)
            lines.append(f"    const int32_t x{i} = ec_read32(A + {i} * lda + k + {dk});")
            lines.append(f"    const int32_t x{i}l = __sxtb16(x{i}), x{i}h = ec_sxtb16_ror8(x{i});")
    for j in range(n):
        lines.append(f"    const int32_t w{j} = ec_read32(b + {db} + {4 * j});")
        lines += _smlads(m, j, f"w{j}")
    return lines + ["    }"]


def _quad_loop_aligned(m: int, n: int, wide: bool) -> list[str]:
    """The K quads from word-aligned rows and panels: two words per LDRD with post-increment
    (int16 activation rows; the quads of two output channels), two quads per iteration and the odd
    last quad after the loop (a `GCC unroll 2` of one quad kept the end test after every quad: the
    trip count's parity is unknown to the compiler, and on a 2 x 2 tile the end pointer lives on
    the stack, one load per quad)."""
    ta = "int16_t" if wide else "int8_t"
    quad = _aligned_quad(m, n, wide)
    return ["  const " + ta + " " + ", ".join(f"*a{i} = A + {i} * lda" for i in range(m)) + ";",
            "  const int8_t *bend = B + (K / 8) * 8 * ldb;",
            "  while (b != bend) {", *quad, *quad, "  }",
            "  if (K & 4) {", *quad, "  }",
            "  k = K & ~3;"]


def _aligned_quad(m: int, n: int, wide: bool) -> list[str]:
    """One K quad of the aligned loop (its body is written twice per iteration: one end test per
    two quads, whatever the compiler knows of K)."""
    lines = ["    {"]
    for i in range(m):
        if wide:
            lines.append(f"    int32_t x{i}l, x{i}h; a{i} = (const int16_t *)ec_ldrd(a{i}, &x{i}l, &x{i}h);")
        else:
            lines.append(f"    const int32_t x{i} = ec_read32(a{i}); a{i} += 4;")
            lines.append(f"    const int32_t x{i}l = __sxtb16(x{i}), x{i}h = ec_sxtb16_ror8(x{i});")
    for j in range(0, n - 1, 2):
        lines.append(f"    int32_t w{j}, w{j + 1}; b = (const int8_t *)ec_ldrd(b, &w{j}, &w{j + 1});")
        lines += _smlads(m, j, f"w{j}") + _smlads(m, j + 1, f"w{j + 1}")
    if n % 2:
        lines.append(f"    const int32_t w{n - 1} = ec_read32(b); b += 4;")
        lines += _smlads(m, n - 1, f"w{n - 1}")
    return lines + ["    }"]


def _dsp_body(m: int, n: int, types: Types) -> list[str]:
    """The SMLAD loop over the K quads (two words per load where rows and panel are word-aligned);
    the K % 4 last rows in plain C."""
    wide = types.a == "int16"
    aligned = ["(((uintptr_t)B & 3) == 0)", f"(ldb == {n})"]
    if wide:
        aligned += ["(((uintptr_t)A & 3) == 0)", "((lda & 1) == 0)"]
    lines = ["  int32_t " + ", ".join(f"c{i}_{j} = C[{i} * ldc + {j}]" for i in range(m) for j in range(n)) + ";",
             "  const int8_t *b = B;", "  int32_t k = 0;",
             f"  if ({' && '.join(aligned)}) {{", *["  " + ln for ln in _quad_loop_aligned(m, n, wide)],
             "  } else {", *["  " + ln for ln in _quad_loop_any(m, n, wide)], "  }",
             "  for (; k < K; ++k, b += ldb) {"]
    for j in range(n):
        lines.append("    " + " ".join(f"c{i}_{j} += (int32_t)A[{i} * lda + k] * b[{j}];" for i in range(m)))
    lines.append("  }")
    lines += ["  " + " ".join(f"C[{i} * ldc + {j}] = c{i}_{j};" for j in range(n)) for i in range(m)]
    return lines


def _wide_quad(m: int, n: int, aligned: bool) -> list[str]:
    """One K quad over int16 activations and weights widened to int16 ("k4w"): per pixel the pairs
    (a0 a1), (a2 a3), per channel (w0 w1), (w2 w3); 2 SMLAD per pixel and channel, no extension."""
    lines = ["    {"]
    for i in range(m):
        if aligned:
            lines.append(f"    int32_t x{i}l, x{i}h; a{i} = (const int16_t *)ec_ldrd(a{i}, &x{i}l, &x{i}h);")
        else:
            lines.append(f"    const int32_t x{i}l = ec_read32(A + {i} * lda + k), x{i}h = ec_read32(A + {i} * lda + k + 2);")
    for j in range(n):
        if aligned:
            lines.append(f"    {{ int32_t wl, wh; b = (const int16_t *)ec_ldrd(b, &wl, &wh);")
        else:
            lines.append(f"    {{ const int32_t wl = ec_read32(b + {4 * j}), wh = ec_read32(b + {4 * j + 2});")
        lines += [f"      c{i}_{j} = __smlad(x{i}l, wl, c{i}_{j}); c{i}_{j} = __smlad(x{i}h, wh, c{i}_{j});"
                  for i in range(m)]
        lines.append("    }")
    return lines + ["    }"]


# Registers of the 2 x 2 "k4w" quads (r7, the Thumb frame pointer, is left to the compiler). The wake-word
# network on mps2-an386 (edgecompile test --samples 2, report), the gcc loop of two quads per iteration
# -> these quads: 11,433,056 -> 11,087,082 instructions (kernels); one asm statement per quad with
# operands of the compiler's choice: 11,236,028 (two MOV per quad); the whole K loop in one asm
# statement (14 registers: the compiler then spills around it): 11,530,120. The second row at its
# offset from the first (one pointer, `_wide_asm_quads(one_pointer=True)`, where lda is a constant up
# to 510): 10,903,360 -> 10,828,522.
_WIDE_REGS = {"c0_0": "r0", "c1_0": "r1", "c0_1": "r2", "c1_1": "r3", "a0": "r4", "a1": "r5", "b": "r6",
              "x0l": "r8", "x0h": "r9", "x1l": "r10", "x1h": "r11", "wl": "r12", "wh": "lr"}


def _wide_asm_quads(m: int, n: int, one_pointer: bool = False) -> list[str]:
    """The K quads of a 2 x 2 "k4w" tile from word-aligned rows and panels: one asm statement per
    quad (LDRD with post-increment of both pixels' activation pairs, then per channel its weight
    pairs and 4 SMLAD: 12 instructions per 16 MACs), all quads unrolled where K is a constant
    (up to 64 quads). Every operand lives in a register of its own for the whole loop (register
    variables): with operands of the compiler's choice it moved accumulators and pointers between
    registers between the quads, and with C loads it hoisted later quads' loads (spills)."""
    temps = [f"x{i}{h}" for i in range(m) for h in "lh"] + ["wl", "wh"]
    quad = [f"ldrd %[x{i}l], %[x{i}h], [%[a{i}]], #8" for i in range(m)]
    if one_pointer:     # the second row at its (constant) offset from the first: one register less
        quad = ["ldrd %[x1l], %[x1h], [%[a0], %[o1]]", "ldrd %[x0l], %[x0h], [%[a0]], #8"]
    for j in range(n):
        quad.append("ldrd %[wl], %[wh], [%[b]], #8")
        quad += [f"smlad %[c{i}_{j}], %[x{i}{h}], %[w{h}], %[c{i}_{j}]" for h in "lh" for i in range(m)]
    acc = [f"c{i}_{j}" for j in range(n) for i in range(m)]
    ptrs = (["a0"] if one_pointer else [f"a{i}" for i in range(m)]) + ["b"]
    outs = [f"[{v}] \"+r\"(r_{v})" for v in acc + ptrs] + [f"[{v}] \"=&r\"(r_{v})" for v in temps]
    lines = [f"    register int32_t r_{v} __asm__(\"{_WIDE_REGS[v]}\") = {v};" for v in acc]
    lines += [f"    register const int16_t *r_{v} __asm__(\"{_WIDE_REGS[v]}\") = {v};" for v in ptrs]
    lines += [f"    register int32_t r_{v} __asm__(\"{_WIDE_REGS[v]}\");" for v in temps]
    lines += ["    _Pragma(\"GCC unroll 64\")",
              "    for (int32_t q = K >> 2; q > 0; --q) {",
              "      __asm__(" + "\n              ".join(f'"{t}\\n\\t"' for t in quad[:-1]) + f'\n              "{quad[-1]}"',
              "              : " + ", ".join(outs),
              "              : " + ("[o1] \"i\"(2 * lda) " if one_pointer else "") + ": \"memory\");",
              "    }"]
    lines += [f"    {v} = r_{v};" for v in acc] + [f"    b = r_b;"]
    return lines


# Registers of the 3 x 2 "k4w" quads: 6 accumulators, one activation pointer, the weight pointer, the
# quad's 4 weight words and one activation word (r7 left to the compiler). Wake-word network on
# mps2-an386 (one run): the gcc loop (two quads per iteration, 10 LDRD + 24 SMLAD + about 12 spill
# loads and stores) -> these quads: 3x3x256 kernels 394,133 -> 331,560 and 739,947 -> 618,853
# instructions, all kernels 11,087,082 -> 10,903,360; flash +7,296 B (64 quads unrolled for K = 256).
_WIDE_REGS_3X2 = {"c0_0": "r0", "c1_0": "r1", "c2_0": "r2", "c0_1": "r3", "c1_1": "r4", "c2_1": "r5",
                  "a": "r6", "b": "r8", "wl0": "r9", "wh0": "r10", "wl1": "r11", "wh1": "r12", "x": "lr"}


def _wide_asm_quads_3x2() -> list[str]:
    """The K quads of a 3 x 2 "k4w" tile (odd-width rows): per quad both channels' weight pairs by
    two LDRD, then each pixel's activation words one at a time (LDR at the row's offset from one
    pointer: the offsets are constants, `lda` known where the kernel is inlined) into 2 SMLAD each:
    20 instructions per 24 MACs, in 13 registers (holding every pixel's words would take 16). The
    first pixel's last load advances the pointer. Where lda is not a constant the C loop stays."""
    r = _WIDE_REGS_3X2
    acc = [f"c{i}_{j}" for j in range(2) for i in range(3)]
    temps = ["wl0", "wh0", "wl1", "wh1", "x"]
    quad = ["ldrd %[wl0], %[wh0], [%[b]], #8", "ldrd %[wl1], %[wh1], [%[b]], #8"]
    for i, h, at in [(1, "l", "[%[a], %[o1]]"), (1, "h", "[%[a], %[o1h]]"), (2, "l", "[%[a], %[o2]]"),
                     (2, "h", "[%[a], %[o2h]]"), (0, "h", "[%[a], #4]"), (0, "l", "[%[a]], #8")]:
        quad += [f"ldr %[x], {at}", f"smlad %[c{i}_0], %[x], %[w{h}0], %[c{i}_0]",
                 f"smlad %[c{i}_1], %[x], %[w{h}1], %[c{i}_1]"]
    outs = [f"[{v}] \"+r\"(r_{v})" for v in acc + ["a", "b"]] + [f"[{v}] \"=&r\"(r_{v})" for v in temps]
    ins = ["[o1] \"i\"(2 * lda)", "[o1h] \"i\"(2 * lda + 4)", "[o2] \"i\"(4 * lda)", "[o2h] \"i\"(4 * lda + 4)"]
    lines = [f"    register int32_t r_{v} __asm__(\"{r[v]}\") = {v};" for v in acc]
    lines += [f"    register const int16_t *r_a __asm__(\"{r['a']}\") = A;",
              f"    register const int16_t *r_b __asm__(\"{r['b']}\") = b;"]
    lines += [f"    register int32_t r_{v} __asm__(\"{r[v]}\");" for v in temps]
    lines += ["    _Pragma(\"GCC unroll 64\")",
              "    for (int32_t q = K >> 2; q > 0; --q) {",
              "      __asm__(" + "\n              ".join(f'"{t}\\n\\t"' for t in quad[:-1]) + f'\n              "{quad[-1]}"',
              "              : " + ", ".join(outs),
              "              : " + ", ".join(ins) + " : \"memory\");",
              "    }"]
    lines += [f"    {v} = r_{v};" for v in acc] + ["    b = r_b;"]
    return lines


def _wide_body(m: int, n: int) -> list[str]:
    """The SMLAD loop of a "k4w" panel: from word-aligned rows and panels (LDRD with post-increment),
    2 x 2 tiles one asm statement per quad (`_wide_asm_quads`), other tiles two quads per iteration;
    one quad per iteration from any alignment; the K % 4 last rows in plain C."""
    aligned = ["(((uintptr_t)B & 3) == 0)", f"(ldb == {n})", "(((uintptr_t)A & 3) == 0)", "((lda & 1) == 0)"]
    quad = _wide_quad(m, n, True)
    loop = ["    const int16_t *bend = B + (K / 8) * 8 * ldb;",
            "    while (b != bend) {", *["  " + ln for ln in quad + quad], "    }",
            "    if (K & 4) {", *["  " + ln for ln in quad], "    }"]
    return ["  int32_t " + ", ".join(f"c{i}_{j} = C[{i} * ldc + {j}]" for i in range(m) for j in range(n)) + ";",
            "  const int16_t *b = B;", "  int32_t k = 0;",
            f"  if ({' && '.join(aligned)}) {{",
            "    const int16_t " + ", ".join(f"*a{i} = A + {i} * lda" for i in range(m)) + ";",
            *(["    if (__builtin_constant_p(lda) && lda >= 0 && lda <= 510) {",
               *["  " + ln for ln in _wide_asm_quads(m, n, True)],
               "    } else {", *["  " + ln for ln in _wide_asm_quads(m, n)], "    }"] if (m, n) == (2, 2) else
              ["    if (__builtin_constant_p(lda) && lda >= 0 && lda <= 1022) {", *["  " + ln for ln in _wide_asm_quads_3x2()],
               "    } else {", *["  " + ln for ln in loop], "    }"] if (m, n) == (3, 2) else loop),
            "    k = K & ~3;",
            "  } else {",
            "    for (; k + 4 <= K; k += 4, b += 4 * ldb) {", *["  " + ln for ln in _wide_quad(m, n, False)], "    }",
            "  }",
            "  for (; k < K; ++k, b += ldb) {",
            *["    " + " ".join(f"c{i}_{j} += (int32_t)A[{i} * lda + k] * b[{j}];" for i in range(m)) for j in range(n)],
            "  }",
            *["  " + " ".join(f"C[{i} * ldc + {j}] = c{i}_{j};" for j in range(n)) for i in range(m)]]


def gemm(m: int, n: int, lanes: int, types: Types) -> str | None:
    """C for `ec_gemm_<t>_MxN`, or None where the generic kernel is used."""
    if types.b_order == "k4w" and types.a == "int16" and types.c == "int32":
        return "\n".join([
            _READ32,
            f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] (int16 x int8 -> int32), B panel in order 'k4w' (weights widened "
            "to int16 at compile time, at Bw + boff): SMLAD on 16-bit pairs of both operands (DSP extension), "
            "portable C otherwise */",
            gemm_signature(m, n, types) + " {", *wide_b_pointer(types),
            "#if defined(__ARM_FEATURE_DSP)", *_wide_body(m, n), "#else", *ordered_gemm_body(m, n, types), "#endif",
            "  return 0;", "}"])
    if types.b_order not in ("k4", "k4x") or types.c != "int32":
        return None
    if (types.a == "int16") != (types.b_order == "k4x"):
        return None
    return guarded_kernel(
        _READ32,
        f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] ({types.a} x {types.b} -> int32), B panel in order "
        f"{types.b_order!r}: SMLAD on 16-bit pairs (DSP extension), portable C otherwise */",
        gemm_signature(m, n, types), "defined(__ARM_FEATURE_DSP)",
        _dsp_body(m, n, types), ordered_gemm_body(m, n, types))


def _dw_dsp_body(m: int, n: int, kh: int, kw: int, s: int) -> list[str]:
    """Depthwise over int16 rows, 4 channels at a time: per tap, the quad's 4 int8 weights split
    into (w0 w2), (w1 w3) by SXTB16; each pixel's words (x0 x1), (x2 x3) meet them in the halfword
    multiply-accumulates SMLABB, SMLATB, SMLABT, SMLATT (one instruction per MAC, and the two loads
    of 4 channels). The loads are `ec_ldr32` (in program order), and tiles of 2 or more pixels
    address each window row from its own base pointers (`xr`, `wr`), opaque to the compiler: inlined
    into a kernel whose window sits at a constant arena offset, gcc otherwise rebuilds every
    address from the arena's (two ADDs per load). arm-none-eabi-gcc 12 -O3, a 2 x 4 tile of a
    3x3 window at an arena offset, 8 calls: 254 instructions (M4; 186 M7) with the compiler's own
    loads (hoisted through FPU registers, VLDR + VMOV, accumulators spilled), 232 with `ec_ldr32`,
    185 with the row pointers too (M4 and M7); 1 x 8 tiles 221 -> 204, 237 with row pointers.
    Tiles of 2 pixels at stride 1 load each window column once per row (_dw_row_shared_columns):
    the wake-word network on mps2-an386 (edgecompile report, one session) dw+pw 48x48x16
    1,419,840 -> 1,392,240 instructions, 24x24x32_2 1,425,520 -> 1,399,853, 12x12x64_2
    937,387 -> 923,600, 6x6x128_2 703,000 -> 695,587 each."""
    rows = m > 1
    lines = []
    for q in range(n // 4):
        lines.append("  {")
        for i in range(m):
            lines.append("    int32_t " + ", ".join(f"c{i}_{j} = C[{i} * ldc + {4 * q + j}]" for j in range(4)) + ";")
        if m == 2 and s == 1:
            lines.append("    int32_t xa, xb;")
        for ry in range(kh):
            if rows:
                lines.append(f"    {{ const int16_t *xr = X + {ry} * ldx_row; const int8_t *wr = W + {ry} * ldw_row;")
                lines.append("      __asm__(\"\" : \"+r\"(xr), \"+r\"(wr));")
            xrow, wrow = ("xr", "wr") if rows else (f"X + {ry} * ldx_row", f"W + {ry} * ldw_row")
            if m == 2 and s == 1:
                lines += _dw_row_shared_columns(kw, q, xrow, wrow)
                if rows:
                    lines.append("    }")
                continue
            for rx in range(kw):
                lines.append(f"    {{ const int32_t w = ec_ldr32({wrow} + {rx} * ldw_px + {4 * q});")
                lines.append("      const int32_t w02 = __sxtb16(w), w13 = ec_sxtb16_ror8(w);")
                for i in range(m):
                    at = f"{xrow} + {i * s + rx} * ldx_px + {4 * q}"
                    lines.append(f"      {{ const int32_t xa = ec_ldr32({at}), xb = ec_ldr32({at} + 2);")
                    lines.append(f"        c{i}_0 = __smlabb(xa, w02, c{i}_0); c{i}_1 = __smlatb(xa, w13, c{i}_1);"
                                 f" c{i}_2 = __smlabt(xb, w02, c{i}_2); c{i}_3 = __smlatt(xb, w13, c{i}_3); }}")
                lines.append("    }")
            if rows:
                lines.append("    }")
        for i in range(m):
            lines.append("    " + " ".join(f"C[{i} * ldc + {4 * q + j}] = c{i}_{j};" for j in range(4)))
        lines.append("  }")
    return lines


def _dw_quad_macs(i: int, xa: str, xb: str) -> str:
    """Pixel i's 4 channels of one tap: the halfword MACs of its words (x0 x1), (x2 x3)."""
    return (f"c{i}_0 = __smlabb({xa}, w02, c{i}_0); c{i}_1 = __smlatb({xa}, w13, c{i}_1); "
            f"c{i}_2 = __smlabt({xb}, w02, c{i}_2); c{i}_3 = __smlatt({xb}, w13, c{i}_3);")


def _dw_row_shared_columns(kw: int, q: int, xrow: str, wrow: str) -> list[str]:
    """One window row of a 2-pixel stride-1 tile: pixel 1's tap rx reads the column of pixel 0's
    tap rx + 1, so each column's words are loaded once (kw + 1 column loads per row instead of
    2 kw) and used by both pixels before the next: tap rx's weights, pixel 0 on the column loaded
    for pixel 1 at tap rx - 1 (column 0 loaded first), then column rx + 1 for pixel 1. The same
    registers as the tap-by-tap order (8 accumulators, one tap's weights, one column's words)."""
    lines = []
    for rx in range(kw):
        lines.append(f"    {{ const int32_t w = ec_ldr32({wrow} + {rx} * ldw_px + {4 * q});")
        lines.append("      const int32_t w02 = __sxtb16(w), w13 = ec_sxtb16_ror8(w);")
        if rx == 0:
            at = f"{xrow} + {4 * q}"
            lines.append(f"      xa = ec_ldr32({at}); xb = ec_ldr32({at} + 2);")
        lines.append("      " + _dw_quad_macs(0, "xa", "xb"))
        at = f"{xrow} + {rx + 1} * ldx_px + {4 * q}"
        lines.append(f"      xa = ec_ldr32({at}); xb = ec_ldr32({at} + 2);")
        lines.append("      " + _dw_quad_macs(1, "xa", "xb"))
        lines.append("    }")
    return lines


def dw(m: int, n: int, kh: int, kw: int, s: int, lanes: int, types: Types) -> str | None:
    """C for `ec_dw_<t>_MxN_kKHxKWsS`, or None where the generic kernel is used: int16 rows
    (zero-point-shifted, padded) x int8 weights, channels in quads."""
    if not (types.a == "int16" and types.b == "int8" and types.c == "int32" and n % 4 == 0):
        return None
    return guarded_kernel(
        _READ32 + "\n" + _LDR,
        f"/* depthwise {kh}x{kw}/{s} (int16 x int8 -> int32), C[{m}x{n}]: halfword MACs of the DSP extension, "
        "portable C otherwise */",
        dw_signature(m, n, kh, kw, s, types), "defined(__ARM_FEATURE_DSP)",
        _dw_dsp_body(m, n, kh, kw, s), dw_body(m, n, kh, kw, s, lanes, types))


def _widen_rgb_rows() -> list[str]:
    """Rows of 3 values contiguous in the source (the first convolution's window of an RGB input:
    each pixel's 3 channels go to their own window slot, ldo apart), 4 rows per iteration: 3 LDR
    of the 12 source bytes, SXTB16 / SXTB16 ROR #8 and SSUB16 give their 16-bit values in pairs
    (even and odd bytes), each row stores two values as one (unaligned, allowed on ARMv7E-M) STR
    and the third as STRH: 37 instructions per 12 values (arm-none-eabi-gcc 12 -O3, M4) instead of
    13 per 3 for the conditional int16 copy, 6+ per value in the general path's per-row scalar tail.
    The last rows % 4 one by one. (Rows contiguous in the window too, ldo == 3, are one run of the
    general path.)"""
    return ["  if (cols == 3 && ldx == 3 && ldo != 3) {",
            "    const int8_t *x = X;",
            "    int16_t *o = O;",
            "    int32_t i = rows;",
            "    for (; i >= 4; i -= 4) {",
            "      const int32_t w0 = ec_read32(x), w1 = ec_read32(x + 4), w2 = ec_read32(x + 8);",
            "      const int32_t e0 = __ssub16(__sxtb16(w0), zz), d0 = __ssub16(ec_sxtb16_ror8(w0), zz);",
            "      const int32_t e1 = __ssub16(__sxtb16(w1), zz), d1 = __ssub16(ec_sxtb16_ror8(w1), zz);",
            "      const int32_t e2 = __ssub16(__sxtb16(w2), zz), d2 = __ssub16(ec_sxtb16_ror8(w2), zz);",
            "      /* e0 = (x0 x2), d0 = (x1 x3), e1 = (x4 x6), d1 = (x5 x7), e2 = (x8 x10), d2 = (x9 x11) */",
            "      int32_t p0, p2, p3;",
            "      __asm__(\"pkhbt %0, %1, %2, lsl #16\" : \"=r\"(p0) : \"r\"(e0), \"r\"(d0));   /* (x0 x1) */",
            "      __asm__(\"pkhtb %0, %1, %2, asr #16\" : \"=r\"(p2) : \"r\"(d1), \"r\"(e1));   /* (x6 x7) */",
            "      __asm__(\"pkhbt %0, %1, %2\" : \"=r\"(p3) : \"r\"(d2), \"r\"(e2));            /* (x9 x10) */",
            "      int16_t *o1 = o + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;",
            "      ec_write32(o, p0); o[2] = (int16_t)(e0 >> 16);",
            "      o1[0] = (int16_t)(d0 >> 16); o1[1] = (int16_t)e1; o1[2] = (int16_t)d1;",
            "      ec_write32(o2, p2); o2[2] = (int16_t)e2;",
            "      ec_write32(o3, p3); o3[2] = (int16_t)(d2 >> 16);",
            "      x += 12;",
            "      o = o3 + ldo;",
            "    }",
            "    for (; i > 0; --i, x += 3, o += ldo) {",
            "      o[0] = (int16_t)(((int16_t)x[0]) - (int16_t)zp);",
            "      o[1] = (int16_t)(((int16_t)x[1]) - (int16_t)zp);",
            "      o[2] = (int16_t)(((int16_t)x[2]) - (int16_t)zp);",
            "    }",
            "    return 0;",
            "  }"]


def _widen_quad(w: str, at: str, word: int) -> list[str]:
    """4 values of the row copy: the source word at `at` into the window's words `word`, `word` + 1
    (stored through `ec_write32`: the window is an int16 array, which int32 stores may not alias;
    inlined into a kernel whose window is a local array, gcc dropped such stores)."""
    return [f"      {{ const int32_t {w} = ec_read32({at});",
            f"        const int32_t e = __ssub16(__sxtb16({w}), zz), d = __ssub16(ec_sxtb16_ror8({w}), zz);",
            "        int32_t lo, hi;",
            "        __asm__(\"pkhbt %0, %1, %2, lsl #16\" : \"=r\"(lo) : \"r\"(e), \"r\"(d));",
            "        __asm__(\"pkhtb %0, %1, %2, asr #16\" : \"=r\"(hi) : \"r\"(d), \"r\"(e));",
            f"        ec_write32(o + {2 * word}, lo);",
            f"        ec_write32(o + {2 * word + 2}, hi); }}"]


def _widen_dsp_body() -> list[str]:
    """The row copy 4 values per word: SXTB16 of the word and of the word rotated by 8 give
    (x0 x2) and (x1 x3) as 16-bit lanes, SSUB16 takes the packed (zp zp) from both (no overflow:
    x - zp is within [-255, 255]), PKHBT / PKHTB re-pair them as (x0 x1), (x2 x3) in memory order,
    two word stores; 8 values per iteration (the loop's pointer updates, test and branch once per
    two source words: 20 instructions per 8 values instead of 24; the wake-word network on mps2-an386,
    edgecompile report, one session: 10,511,279 -> 10,410,293 instructions, the row copies 768,690 ->
    664,431), then one quad. A scalar head aligns the output to a word (one value at most:
    the window is int16), the source is read by LDR from any alignment (allowed on ARMv7E-M), n % 4
    scalar tail."""
    return ["  const int32_t zz = (int32_t)(((uint32_t)zp & 0xffffu) * 0x10001u);",
            *_widen_rgb_rows(),
            "  int32_t n = cols;",
            "  if (ldo == cols && ldx == cols) {",
            "    n = rows * cols;",
            "    rows = 1;",
            "  }",
            "  for (int32_t i = 0; i < rows; ++i) {",
            "    const int8_t *x = X + i * ldx;",
            "    int16_t *o = O + i * ldo;",
            "    int32_t k = n;",
            "    if (k > 0 && ((uintptr_t)o & 2u)) {",
            "      *o++ = (int16_t)(((int16_t)*x++) - (int16_t)zp);",
            "      --k;",
            "    }",
            "    for (; k >= 8; k -= 8) {",
            *_widen_quad("w0", "x", 0), *_widen_quad("w1", "x + 4", 2),
            "      x += 8;",
            "      o += 8;",
            "    }",
            "    if (k >= 4) {",
            *_widen_quad("w0", "x", 0),
            "      x += 4;",
            "      o += 4;",
            "      k -= 4;",
            "    }",
            "    for (int32_t j = 0; j < k; ++j) {",
            "      o[j] = (int16_t)(((int16_t)x[j]) - (int16_t)zp);",
            "    }",
            "  }"]


def widen() -> str:
    """C for `ec_widen_s8s16`: the in-bound rows of a zero-point-shifted padded window (int8 ->
    int16, minus the zero point), 4 values per word with the DSP extension, portable C otherwise.
    Rows contiguous in both the source and the window (each pixel's whole channel row) are one run."""
    return guarded_kernel(
        _READ32,
        "/* O[rows x cols] = (int16)X - zp (the in-bound rows of a zero-point-shifted padded window): 4 values per "
        "word (SXTB16, SSUB16, PKHBT/PKHTB; DSP extension), portable C otherwise */",
        WIDEN_SIGNATURE, "defined(__ARM_FEATURE_DSP)", _widen_dsp_body(), widen_body())


# ----------------------------------------------------------------------------- int8 rescale
#
# The rescale tiles of this family read their per-channel constants re-encoded at compile time
# (`rescale_constants`, applied by the compiler to the weights that `CortexMRules.finish` names in
# `info.rescale`): each channel's int64 `rnd` of ir/quantize.py's folded form is stored as the int32
# pair (off, Ra) in its low and high words. With acc' = acc + off (exact in int32: |acc + off| < 2^31)
# and n > 32, (acc * m0 + rnd) >> 32 == SMMLA(acc', m0, Ra) (the high word of acc' * m0 + Ra * 2^32;
# Ra = 2^(n-33) + zp * 2^(n-32)), then >> r and SSAT #8: per value ADD, SMMLA, ASR, SSAT, STRB
# instead of a 64-bit multiply-add whose 64-bit addend is copied into its destination registers
# first. A shift n == 32 needs SMMLAR (the rounding bias 2^31 in the low word): kernels with such a
# channel keep the rescale in their own C (the compiler reschedules them; `rescale_constants`
# refuses those constants).

RESCALE_ORDER = "offra"     # the re-encoded rnd weights (prog.tensors[...].panel_order)


def rescale_constants(m0: "np.ndarray", rnd: "np.ndarray", r: "np.ndarray", name: str = "") -> "np.ndarray":
    """The (off, Ra) pairs of one rescale's channels, as int64 values (off in the low word, Ra in
    the high word: the bytes the micro-kernel reads as two int32), such that for every channel
    acc * m0 + rnd == (acc + off) * m0 + Ra * 2^32 exactly. `off` is the representative of its
    class modulo 2^(32 - t) nearest to zero (t: the trailing zero bits of m0): for an odd m0 the
    folded offset itself (|off| < 2^31), else within 2^(31 - t), |acc + off| < 2^31 kept where
    |acc| < 2^30 (an int8 GEMM of K < 32,000 steps). Refused (EdgeCompileError): a shift of 32
    (r == 0), constants not of the folded form."""
    import numpy as np

    from ...errors import EdgeCompileError

    out = []
    for k, (m, c, s) in enumerate(zip(np.ravel(m0).tolist(), np.ravel(rnd).tolist(), np.ravel(r).tolist())):
        m, c, s = int(m), int(c), int(s)
        if m < 0 or not 1 <= s <= 22:
            raise EdgeCompileError(f"weight {name}: channel {k} has multiplier {m} and shift {s}: the SMMLA "
                                   "rescale needs m0 >= 0 and 1 <= r <= 22 (n > 32)")
        if m == 0:
            off = 0
        else:
            t = (m & -m).bit_length() - 1
            mod = 1 << (32 - t)
            if c % (1 << t):
                raise EdgeCompileError(f"weight {name}: channel {k}'s rounding constant {c} is not of the folded "
                                       f"form (not a multiple of 2^{t})")
            off = ((c >> t) * pow(m >> t, -1, mod)) % mod
            if off >= mod // 2:
                off -= mod
        hi, rem = divmod(c - off * m, 1 << 32)
        if rem or not (-(1 << 31) <= off < (1 << 31) and -(1 << 31) <= hi < (1 << 31)):
            raise EdgeCompileError(f"weight {name}: channel {k}'s rescale constants do not fit the 32-bit "
                                   f"(off, Ra) form (off {off}, Ra {hi})")
        out.append((hi << 32) | (off & 0xFFFFFFFF))
    return np.array(out, dtype=np.int64).reshape(np.shape(rnd))


def _rescale_dsp_body(m: int, n: int, wide: bool = False) -> list[str]:
    """Per channel its constants once (Ra, m0, r); per value SMMLA, ASR, SSAT, STRB (the offset is in
    the accumulator: its tile started at it, tiling.rescale_offsets_into_init). `wide` (int16
    rows, whose accumulators start at 0): the channel's offset too, added before SMMLA, and STRH."""
    out = "int16_t" if wide else "int8_t"
    lines = ["  const int32_t *q = (const int32_t *)rnd;"]
    for j in range(n):
        lines.append(f"  {{ const int32_t mu = m0[{j}], ra = q[{2 * j + 1}], sh = r[{j}];"
                     + (f" const int32_t off = q[{2 * j}];" if wide else ""))
        for i in range(m):
            acc = f"C[{i} * ldc + {j}] + off" if wide else f"C[{i} * ldc + {j}]"
            lines.append(f"    {{ int32_t h; __asm__(\"smmla %0, %1, %2, %3\" : \"=r\"(h) : \"r\"({acc}), "
                         f"\"r\"(mu), \"r\"(ra)); O[{i} * ldo + {j}] = ({out})__ssat(h >> sh, 8); }}")
        lines.append("  }")
    return lines


def _rescale_portable_body(m: int, n: int, wide: bool = False) -> list[str]:
    """The same arithmetic in portable C (the host's model.c gives the same bytes)."""
    cast = "(int16_t)(int8_t)" if wide else "(int8_t)"
    acc = "(C[i * ldc + j] + (int32_t)rnd[j])" if wide else "C[i * ldc + j]"
    return [f"  for (int32_t j = 0; j < {n}; ++j) {{",
            "    const int64_t ra = (int64_t)(int32_t)(rnd[j] >> 32);",
            f"    for (int32_t i = 0; i < {m}; ++i) {{",
            f"      const int32_t h = (int32_t)((((int64_t){acc}) * ((int64_t)m0[j]) + ra * (int64_t)4294967296)"
            " >> 32);",
            "      const int32_t x = h >> r[j];",
            f"      O[i * ldo + j] = {cast}(x < -128 ? -128 : x > 127 ? 127 : x);",
            "    }", "  }"]


def requant(m: int, n: int, wide: bool = False) -> str:
    """C for `ec_requant_s8_MxN` over re-encoded constants (`rescale_constants`): SMMLA where the
    core has the DSP extension, portable C otherwise. `wide`: `ec_requant_s8_MxN_s16`, the int8
    values stored as int16 (a fused kernel's depthwise rows: SSAT's result stored by STRH), from
    accumulators that started at 0 (the offsets added here)."""
    return guarded_kernel(
        "",
        (f"/* int8 rescale of C[{m}x{n}] (int32), constants (m0, (off, Ra), r) per channel, r > 0: "
         "O = sat8(SMMLA(C + off, m0, Ra) >> r), stored as int16 */" if wide else
         f"/* int8 rescale of C[{m}x{n}] (int32, started at the channels' offsets), constants (m0, (off, Ra), r) "
         "per channel, r > 0: O = sat8(SMMLA(C, m0, Ra) >> r) */"),
        requant_signature(m, n, wide), "defined(__ARM_FEATURE_DSP)",
        _rescale_dsp_body(m, n, wide), _rescale_portable_body(m, n, wide))
