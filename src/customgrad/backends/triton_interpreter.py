"""Stand-ins for the libdevice functions generated Triton kernels call, for Triton's CPU interpreter
(``TRITON_INTERPRET=1``), which cannot run libdevice: each is built from ``tl`` primitives (exp, log,
sqrt, erf, floor, sin, cos, which the interpreter computes with numpy in the kernel dtype), accurate
to a few ulps of the kernel dtype (float32 or float64). On a GPU the kernels call libdevice itself.
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


@triton.jit
def rint(x):
    # round half to even: floor, then up when the rest is above one half, or exactly one half on an odd floor
    f = tl.floor(x)
    d = x - f
    odd = f - 2.0 * tl.floor(f * 0.5) != 0.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)


@triton.jit
def atan(x):
    # |x| > 1: pi/2 - atan(1/|x|); above tan(pi/8): pi/4 + atan((t-1)/(t+1)); then the half angle
    # atan(u) = 2 atan(u / (1 + sqrt(1 + u^2))) leaves |v| < 0.2, where 12 terms of the odd series suffice
    a = tl.abs(x)
    inverted = a > 1.0
    t = tl.where(inverted, 1.0 / a, a)
    shifted = t > 0.41421356237309503
    u = tl.where(shifted, (t - 1.0) / (t + 1.0), t)
    v = u / (1.0 + tl.sqrt(1.0 + u * u))
    s = v * v
    p = -1.0 / 23.0
    p = 1.0 / 21.0 + s * p
    p = -1.0 / 19.0 + s * p
    p = 1.0 / 17.0 + s * p
    p = -1.0 / 15.0 + s * p
    p = 1.0 / 13.0 + s * p
    p = -1.0 / 11.0 + s * p
    p = 1.0 / 9.0 + s * p
    p = -1.0 / 7.0 + s * p
    p = 1.0 / 5.0 + s * p
    p = -1.0 / 3.0 + s * p
    r = 2.0 * (v + v * s * p)
    r = tl.where(shifted, 0.7853981633974483 + r, r)
    r = tl.where(inverted, 1.5707963267948966 - r, r)
    return tl.where(x < 0, -r, r)


@triton.jit
def atan2(y, x):
    # C99 atan2 (as libdevice): atan of the smaller over the larger magnitude, moved to the quadrant of (x, y);
    # atan2(+-0, +-0) and atan2(+-inf, +-inf) by the signs of the zeros and infinities
    ay = tl.abs(y)
    ax = tl.abs(x)
    steep = ay > ax
    q = tl.where(steep, ax / ay, ay / ax)
    q = tl.where((ay == 0.0) & (ax == 0.0), 0.0, q)
    q = tl.where((ay == float("inf")) & (ax == float("inf")), 1.0, q)
    r = atan(q)
    r = tl.where(steep, 1.5707963267948966 - r, r)
    r = tl.where((x < 0) | ((x == 0) & (1.0 / x < 0)), 3.141592653589793 - r, r)
    return tl.where((y < 0) | ((y == 0) & (1.0 / y < 0)), r * -1.0, r)  # -r would be 0 - r: +0, not -0


@triton.jit
def asin(x):
    # asin(x) = atan(x / sqrt((1 - x)(1 + x)))
    return atan(x / tl.sqrt((1.0 - x) * (1.0 + x)))


@triton.jit
def acos(x):
    # acos(x) = 2 atan(sqrt((1 - x) / (1 + x)))
    return 2.0 * atan(tl.sqrt((1.0 - x) / (1.0 + x)))


@triton.jit
def tan(x):
    return tl.sin(x) / tl.cos(x)


@triton.jit
def sinh(x):
    # (u + u / (u + 1)) / 2 with u = e^|x| - 1 (no cancellation near 0); e^(|x|/2) * e^(|x|/2) / 2 past 20
    # (finite up to |x| = 710 in float64, where e^|x| alone overflows)
    a = tl.abs(x)
    u = expm1(a)
    h = tl.exp(0.5 * a)
    r = tl.where(a > 20.0, h * 0.5 * h, 0.5 * (u + u / (u + 1.0)))
    return tl.where(x < 0, -r, r)


@triton.jit
def cosh(x):
    # (e + 1/e) / 2 with e = e^|x|; e^(|x|/2) * e^(|x|/2) / 2 past 20 (no early overflow)
    a = tl.abs(x)
    e = tl.exp(a)
    h = tl.exp(0.5 * a)
    return tl.where(a > 20.0, h * 0.5 * h, 0.5 * (e + 1.0 / e))


@triton.jit
def asinh(x):
    # log1p(a + a^2 / (1 + sqrt(1 + a^2))) for a = |x| (no cancellation), log(a) + log(2) past 2^28
    a = tl.abs(x)
    r = tl.where(a > 268435456.0, tl.log(a) + 0.6931471805599453, log1p(a + a * a / (1.0 + tl.sqrt(1.0 + a * a))))
    return tl.where(x < 0, -r, r)


@triton.jit
def acosh(x):
    # log1p(t + sqrt(2t + t^2)) with t = x - 1 (accurate near 1), log(x) + log(2) past 2^28; NaN below 1
    t = x - 1.0
    r = tl.where(x > 268435456.0, tl.log(x) + 0.6931471805599453, log1p(t + tl.sqrt(2.0 * t + t * t)))
    return tl.where(x < 1.0, float("nan"), r)


@triton.jit
def atanh(x):
    # atanh(a) = log1p(2a / (1 - a)) / 2 for a = |x|: inf at 1, NaN beyond
    a = tl.abs(x)
    r = 0.5 * log1p(2.0 * a / (1.0 - a))
    return tl.where(x < 0, -r, r)


@triton.jit
def erfc(x):
    # In float64 (float32's 1 - erf would lose digits near 2): 1 - erf(x) below 2 (relative error 1e-14
    # there); from 2 on the continued fraction e^(-x^2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / ...)))
    # of 60 terms, with e^(-x^2) = e^(-h^2) e^(-(x-h)(x+h)) for h = x rounded to 12 bits (x^2 would round)
    dtype = x.dtype
    w = (x + tl.zeros((1,), tl.float64)).to(tl.float64)
    f = w
    for k in tl.static_range(60, 0, -1):
        f = w + (k * 0.5) / f
    h = tl.floor(w * 4096.0) / 4096.0
    tail = tl.exp(-h * h) * tl.exp(-(w - h) * (w + h)) * 0.5641895835477563 / f
    tail = tl.where(w == float("inf"), 0.0, tail)
    return tl.where(w < 2.0, 1.0 - tl.erf(w), tail).to(dtype)
