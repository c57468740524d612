"""The host's own float micro-kernels: ragged channel tiles in full vectors with an overlapping last
vector.

A float tile of n channels that no vector width divides (58 on AVX2 and AVX-512: ShuffleNet V2's
first stage) runs in the generic kernel (ukernels.ragged_body) as half- or quarter-width vectors
and the last n % w channels as scalars: 58 channels are 7 x 8 lanes + 2 scalars per pixel on
AVX-512, 9 FMA instructions where 4 would do. Here the tile is ceil(n / lanes) full vectors, the
last one at channel n - lanes: it overlaps the one before it, both compute the overlapped channels
from the same loaded values in the same order, and the later store writes the same bits again.
That is exact only when both vectors are loaded before either is stored: they are always in the
same block of accumulators (`_blocks`)."""

from __future__ import annotations

import re
import sys
from typing import Any

from ..ukernels import (F32, Types, _Emit, chunk_panel_width, dw_signature, family_gemm_c, gemm_block, gemm_signature,
                        narrower_widths, overlap_blocks, ragged_width)
from ..epilogues import start_at_zero


def _rules() -> Any:
    """The host's rules as they are now (host.RULES; a test may build with another variant's)."""
    return sys.modules[__package__].RULES


def overlapped(n: int, lanes: int, types: Types) -> bool:
    """Whether a tile of n channels gets the overlapped kernel: a float ragged tile (no vector width
    divides n) at least one full vector wide."""
    return types == F32 and lanes > 1 and n > lanes and ragged_width(n, lanes) > 1


def dw_overlapped(n: int, lanes: int, types: Types) -> bool:
    """Whether a depthwise tile of n channels gets the overlapped kernel: any float tile wider than
    a vector that full vectors do not divide. Not only ragged ones (`overlapped`): 60 channels ran as
    15 quarter-width vectors, 120 as 15 half-width ones, 56 (Xception's fused 2 x 56 tiles) as 7,
    where 4, 8 and 4 full vectors do (ShuffleNet V1's standalone depthwise on AVX-512)."""
    return types == F32 and lanes > 1 and n > lanes and n % lanes != 0


def _offsets(n: int, lanes: int) -> list[int]:
    return [o for b in overlap_blocks(1, n, lanes, 2 * n) for o in b]


def _blocks(m: int, n: int, lanes: int, acc: int) -> list[list[int]]:
    return overlap_blocks(m, n, lanes, acc)


def _gemm_block(e: _Emit, m: int, offs: list[int]) -> list[str]:
    return gemm_block([e] * len(offs), m, [str(o) for o in offs], [f"B + k * ldb + {o}" for o in offs], "float32",
                      lambda i: f"A[{i} * lda + k]")


def _dw_block(e: _Emit, m: int, kh: int, kw: int, s: int, offs: list[int]) -> list[str]:
    lines = ["    " + " ".join(f"{e.acc_type()} c{i}_{j} = {e.load_acc(f'C + {i} * ldc + {o}')};"
                               for j, o in enumerate(offs)) for i in range(m)]
    lines += [f"    for (int32_t ry = 0; ry < {kh}; ++ry) {{", f"      for (int32_t rx = 0; rx < {kw}; ++rx) {{",
              "        const float *x = X + ry * ldx_row + rx * ldx_px;",
              "        const float *w = W + ry * ldw_row + rx * ldw_px;",
              "        " + " ".join(f"const {e.acc_type()} w{j} = {e.load(f'w + {o}', 'float32')};"
                                    for j, o in enumerate(offs))]
    for i in range(m):
        lines.append("        " + " ".join(
            f"c{i}_{j} += {e.load(f'x + {i * s} * ldx_px + {o}', 'float32')} * w{j};" for j, o in enumerate(offs)))
    lines += ["      }", "    }"]
    lines += ["    " + " ".join(e.store_acc(f"C + {i} * ldc + {o}", f"c{i}_{j}") for j, o in enumerate(offs))
              for i in range(m)]
    return lines


def _describe(n: int, lanes: int, m: int, blocks: list[list[int]]) -> str:
    return (f"{len(_offsets(n, lanes))} {lanes}-lane vectors, the last at channel {n - lanes} overlapping the one "
            f"before it, in blocks of up to {m * max(len(b) for b in blocks)} accumulators")


def chunk_panels(n: int, lanes: int, types: Types, model: Any = None) -> int:
    """`ukernels.chunk_panel_width` under this host's GEMM model (or `model`)."""
    return chunk_panel_width(n, lanes, types, model or _rules().gemm_model)


def chunked_gemm(m: int, n: int, lanes: int, types: Types, model: Any = None) -> str:
    """C for `ec_gemm_f32_MxN` over chunk panels (`chunk_panels`): the n channels in blocks of up to
    the accumulators' vectors (an even number: whole chunks), each block M x its vectors over the
    whole reduction, a vector at channel c reading chunk c / w's [K][w] panel (the last chunk
    narrower). The same products in the same order as the row-major blocked kernel: the same bits."""
    model = model or _rules().gemm_model
    w = chunk_panels(n, lanes, types, model)
    acc = model.accumulators
    v = max(1, acc // m)
    if v > 1:
        v -= v % 2
    step = v * lanes
    full = n // w * w
    e = _Emit(types, lanes, dict(narrower_widths(lanes))[lanes])

    def address(col: int) -> str:
        if col >= full:
            return f"B + {full} * K + k * {n - full} + {col - full}"
        return f"B + {col // w * w} * K + k * {w} + {col % w}"

    def block(cols: list[str], loads: list[str]) -> list[str]:
        return gemm_block([e] * len(cols), m, cols, loads, "float32", lambda i: f"A[{i} * lda + k]")

    looped = full // step * step      # whole blocks of whole chunks (v is 1 or even)
    lines = [f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] (float32); blocked tile over chunk panels: [K][{w}] panels of "
             f"{w} channels{f', the last [K][{n - full}]' if n > full else ''}, in blocks of up to {m * v} accumulators */",
             gemm_signature(m, n, types) + " {"]
    if looped > step:
        if v == 1:
            loads = [f"B + (j0 - j0 % {w}) * K + k * {w} + j0 % {w}"]
        else:
            loads = [f"B + (j0 + {lanes * j // w * w}) * K + k * {w} + {lanes * j % w}" for j in range(v)]
        lines += [f"  for (int32_t j0 = 0; j0 < {looped}; j0 += {step}) {{",
                  *block(["j0" if j == 0 else f"j0 + {lanes * j}" for j in range(v)], loads), "  }"]
    else:
        looped = 0
    cols = list(range(looped, n, lanes))
    for b0 in range(0, len(cols), v):
        part = cols[b0:b0 + v]
        lines += ["  {", *block([str(col) for col in part], [address(col) for col in part]), "  }"]
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


def gemm(m: int, n: int, lanes: int, types: Types, acc: int = 0) -> str | None:
    """C for `ec_gemm_f32_MxN` of a ragged float tile (`overlapped`) or of a tile over chunk panels
    (`chunk_panels`), or None (the generic kernel)."""
    if chunk_panels(n, lanes, types):
        return chunked_gemm(m, n, lanes, types)
    if not overlapped(n, lanes, types):
        return None
    e = _Emit(types, lanes, dict(narrower_widths(lanes))[lanes])
    rules = _rules()
    blocks = _blocks(m, n, lanes, acc or (rules.gemm_model.accumulators if rules.gemm_model else rules.conv_acc))
    lines = [f"/* C[{m}x{n}] += A[{m}xK] * B[Kx{n}] (float32); {_describe(n, lanes, m, blocks)} */",
             gemm_signature(m, n, types) + " {"]
    for offs in blocks:
        lines += ["  {", *_gemm_block(e, m, offs), "  }"]
    lines += ["  return 0;", "}"]
    return "\n".join(lines)


def dw(m: int, n: int, kh: int, kw: int, s: int, lanes: int, types: Types, acc: int = 0) -> str | None:
    """C for `ec_dw_f32_MxN_kKHxKWsS` of a float tile that full vectors do not divide
    (`dw_overlapped`), or None."""
    if not dw_overlapped(n, lanes, types):
        return None
    e = _Emit(types, lanes, dict(narrower_widths(lanes))[lanes])
    blocks = _blocks(m, n, lanes, acc or _rules().dw_acc)
    lines = [f"/* depthwise {kh}x{kw}/{s} (float32): C[{m}x{n}] += sum X[ry][m*{s}+rx][n] * W[ry][rx][n] over a "
             f"padded window; {_describe(n, lanes, m, blocks)} */",
             dw_signature(m, n, kh, kw, s, types) + " {"]
    for offs in blocks:
        lines += ["  {", *_dw_block(e, m, kh, kw, s, offs), "  }"]
    lines += ["  return 0;", "}"]
    return "\n".join(lines)




def gemm_z(m: int, n: int, lanes: int, types: Types) -> str | None:
    """C for `ec_gemm_f32_MxN_z` (C = A B; codegen.lower.zero_start_gemms, where a kernel zeroed
    the tile right before the call): the += kernel this family emits for the tile
    (ukernels.family_gemm_c: `gemm`, or the generic one) with its accumulators started at zero instead
    of loaded from C, so the tile's zeroing loop and the loads of those zeros go. The same sums in
    the same order from +0: the same bits. None (the generic zero-then-call form) for a kernel
    that reads C other than by the vector loads and scalar `*(C + ...)` initialisers rewritten here."""
    if types != F32:
        return None
    src = family_gemm_c(sys.modules[__name__], _rules(), m, n, lanes, types)
    name = f"ec_gemm_{types.tag}_{m}x{n}("
    if src.count(name) != 1:
        return None
    out = start_at_zero(src.replace(name, name[:-1] + "_z("))
    body = out[out.index("{", out.index(name[:-1] + "_z(")):]
    # every use of C left must be a store: `..._store(C + ...)` or `*(C + ...) = ...`
    uses = len(re.findall(r"\bC\b", body))
    stores = len(re.findall(r"_store\(C \+ ", body)) + len(re.findall(r"\*\(C \+ [^()]*\) = ", body))
    if uses != stores:
        return None
    return out.replace(f"C[{m}x{n}] += A", f"C[{m}x{n}] = A", 1)
