"""Elementary functions model.c defines itself instead of calling the C library.

`ec_expf` replaces `expf` (sigmoid, SiLU, softmax...): branch-free, so that GCC vectorizes the
loops that call it (libm's `expf` is a call per element), and the same source on every target
instead of each C library's own `expf`."""

from __future__ import annotations

# exp(x) = 2^k * exp(r): k = round(x / ln 2) by adding MAGIC = 1.5 * 2^23 + 127 (the sum's low
# mantissa bits are then k + 127, the exponent field of 2^k: shifted left by 23 they are 2^k's
# bits, with no float -> int conversion and no add), r = x - k ln 2 with ln 2 in two parts (the
# first has trailing zero bits, so k * LN2_HI is exact), exp(r) on |r| <= ln2/2 by a degree-6
# polynomial 1 + r + c2 r^2 + ... + c6 r^6 (c2..c6 fitted for the least maximum relative error
# over that interval, 3.1e-9, then rounded to float; within 0.83 ulp of exp over the range it
# does not clamp, against 0.88 for the degree-7 Taylor polynomial it replaces). x is clamped to
# [-87.3, 88.3] first, on its bits (integer min/max vectorize without if-conversion): below, exp
# is 1.2e-38 instead of a denormal or 0; above, 2.2e38 instead of 3.4e38 or inf. Vectorized by
# gcc for the A72, a SiLU takes 4 instructions per 4 values fewer than with the Taylor
# polynomial and the conversion of k (one Horner step, a `mov` + `fmla` pair, and `fcvtzs` +
# `add`).
EC_EXPF_C = """\
static inline float ec_expf(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  int32_t s = (int32_t)u;
  s = s < 0x42b0999a ? s : 0x42b0999a;            /* x <= 88.3: positive floats order as ints */
  u = (uint32_t)s;
  u = u < 0xc2ae999au ? u : 0xc2ae999au;          /* x >= -87.3: negative ones as unsigned ints */
  memcpy(&x, &u, sizeof x);
  const float magic = 12583039.0f;                /* 1.5 * 2^23 + 127 */
  float kb = x * 1.44269504f + magic;             /* low mantissa bits: k + 127 */
  uint32_t kbits;
  memcpy(&kbits, &kb, sizeof kbits);
  float k = kb - magic;
  float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;
  float p = 0x1.6a244cp-10f;
  p = p * r + 0x1.1239d4p-7f;
  p = p * r + 0x1.5558f2p-5f;
  p = p * r + 0x1.555492p-3f;
  p = p * r + 0x1.fffffcp-2f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  uint32_t bits = kbits << 23;                    /* 2^k */
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
"""

LIBM_REPLACEMENTS = {"expf": ("ec_expf", EC_EXPF_C)}


def math_helpers(kernel_code: str) -> str:
    """Definitions of the helpers `kernel_code` calls."""
    return "\n".join(code for name, code in LIBM_REPLACEMENTS.values() if f"{name}(" in kernel_code)
