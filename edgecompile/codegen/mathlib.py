"""Elementary functions model.c defines itself instead of calling the C library.

`ec_expf` replaces `expf` (sigmoid, SiLU, softmax...): branch-free, so that GCC vectorizes the
loops that call it (libm's `expf` is a call per element), and the same source on every target
instead of each C library's own `expf`."""

from __future__ import annotations

# exp(x) = 2^k * exp(r): k = round(x / ln 2) by the 1.5 * 2^23 shift, r = x - k ln 2 with ln 2 in
# two parts (the first has trailing zero bits, so k * LN2_HI is exact), exp(r) on |r| <= ln2/2 by
# its degree-7 Taylor polynomial (truncation < 6e-9 relative), 2^k from the exponent bits. x is
# clamped to [-87.3, 88.3] first, on its bits (integer min/max vectorize without if-conversion):
# below, exp is 1.2e-38 instead of a denormal or 0; above, 2.2e38 instead of 3.4e38 or inf.
EC_EXPF_C = """\
static inline float ec_expf(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  int32_t s = (int32_t)u;
  s = s < 0x42b0999a ? s : 0x42b0999a;            /* x <= 88.3: positive floats order as ints */
  u = (uint32_t)s;
  u = u < 0xc2ae999au ? u : 0xc2ae999au;          /* x >= -87.3: negative ones as unsigned ints */
  memcpy(&x, &u, sizeof x);
  const float shift = 12582912.0f;
  float k = (x * 1.44269504f + shift) - shift;
  float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = ((int32_t)k + 127) * (1 << 23);
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
"""

LIBM_REPLACEMENTS = {"expf": ("ec_expf", EC_EXPF_C)}


def math_helpers(kernel_code: str) -> str:
    """Definitions of the helpers `kernel_code` calls."""
    return "\n".join(code for name, code in LIBM_REPLACEMENTS.values() if f"{name}(" in kernel_code)
