"""Stand-ins for the libdevice functions generated Triton kernels call, for Triton's CPU interpreter
(``TRITON_INTERPRET=1``), which cannot run libdevice: each is built from ``tl`` primitives, accurate
to a few float32 ulps. On a GPU the kernels call libdevice itself.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    # tanh(|x|) = (1 - e^(-2|x|)) / (1 + e^(-2|x|)), and its odd Taylor series near 0 (no cancellation)
    a = tl.abs(x)
    t = tl.exp(-2.0 * a)
    large = (1.0 - t) / (1.0 + t)
    large = tl.where(x < 0, -large, large)
    s = x * x
    small = x * (1.0 + s * (-1.0 / 3.0 + s * (2.0 / 15.0 + s * (-17.0 / 315.0))))
    return tl.where(a < 0.125, small, large)


@triton.jit
def log1p(x):
    # log(1 + x) = log(u) * x / (u - 1) with u = 1 + x rounded (Goldberg)
    u = 1.0 + x
    return tl.where((u == 1.0) | (u == float("inf")), x, tl.log(u) * x / (u - 1.0))


@triton.jit
def expm1(x):
    # e^x - 1 = (u - 1) * x / log(u) with u = e^x rounded (Kahan)
    u = tl.exp(x)
    return tl.where(
        (u == 1.0) | (u == float("inf")),
        tl.where(u == 1.0, x, u),
        tl.where(u - 1.0 == -1.0, -1.0, (u - 1.0) * x / tl.log(u)),
    )


@triton.jit
def pow(x, y):
    # C99 pow (as libdevice): |x|^y = e^(y log|x|) computed in float64; for x < 0 or x = -0 the sign of
    # an odd integer y, NaN for finite nonzero x and y not an integer; 1 when y = 0 or x = 1
    dtype = (x + y).dtype
    wide_x = (x + tl.zeros((1,), tl.float64)).to(tl.float64)
    wide_y = (y + tl.zeros((1,), tl.float64)).to(tl.float64)
    r = tl.exp(wide_y * tl.log(tl.abs(wide_x))).to(dtype)
    integer = y == tl.floor(y)
    odd = integer & (tl.floor(y * 0.5) * 2.0 != y)
    negative = (x < 0) | ((x == 0) & (1.0 / x < 0))  # -0 too: pow(-0, -3) = -inf
    exceptional = (x == 0) | (x == -float("inf"))  # no NaN for them at non-integer y
    r = tl.where(negative, tl.where(integer, tl.where(odd, -r, r), tl.where(exceptional, r, float("nan"))), r)
    return tl.where((y == 0) | (x == 1), 1.0, r)
