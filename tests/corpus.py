"""Formulas paired with independent torch-ops references, and the domains to sample them in.

Each `Case` gives a formula for `customgrad.function`, a reference written with ordinary torch ops
(called with the inputs by name, so it does not depend on input order), and for every input its
shape and an interval inside the formula's domain. Shapes broadcast against each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

VECTOR = (7,)


@dataclass(frozen=True)
class Case:
    """A formula, its torch reference, and where to sample it: name -> (shape, low, high)."""

    id: str
    formula: str
    reference: Callable[..., torch.Tensor]
    domains: dict[str, tuple[tuple[int, ...], float, float]] = field(default_factory=dict)
    third_order: bool = False

    def sample(self, seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """Random inputs inside the domains (float64 draws, then cast), by name."""
        generator = torch.Generator().manual_seed(seed)
        values = {}
        for name, (shape, low, high) in self.domains.items():
            draw = torch.rand(shape, generator=generator, dtype=torch.float64)
            values[name] = (low + (high - low) * draw).to(dtype)
        return values


def _legendre(x: torch.Tensor, n: int) -> torch.Tensor:
    # Bonnet's recursion: (k + 1) P_{k+1} = (2k + 1) x P_k - k P_{k-1}
    previous, current = torch.ones_like(x), x
    for k in range(1, n):
        previous, current = current, ((2 * k + 1) * x * current - k * previous) / (k + 1)
    return current


def _hermite(x: torch.Tensor, n: int, physicists: bool = True) -> torch.Tensor:
    # H_{k+1} = 2x H_k - 2k H_{k-1};  He_{k+1} = x He_k - k He_{k-1}
    scale = 2 if physicists else 1
    previous, current = torch.ones_like(x), scale * x
    for k in range(1, n):
        previous, current = current, scale * x * current - scale * k * previous
    return current


def _p2(z):
    return z**2 + 2 * z


def _p3(z):
    return 0.5 * (5 * z**3 - 3 * z)


def _x(low: float = -2.0, high: float = 2.0, shape: tuple[int, ...] = VECTOR):
    return {"x": (shape, low, high)}


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

CASES: list[Case] = [
    # Activations.
    Case(
        "gelu_tanh",
        "0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))",
        lambda x: F.gelu(x, approximate="tanh"),
        _x(-3, 3),
        third_order=True,
    ),
    Case("gelu_erf", "x/2*(1 + erf(x/sqrt(2)))", lambda x: F.gelu(x), _x(-3, 3), third_order=True),
    Case("mish", "x*tanh(softplus(x))", lambda x: F.mish(x), _x(-4, 4), third_order=True),
    Case("mish_exp", "x*tanh(log(1 + exp(x)))", lambda x: F.mish(x), _x(-4, 4)),
    Case("softplus", "softplus(x)", lambda x: F.softplus(x), _x(-5, 5), third_order=True),
    Case(
        "softplus_beta",
        "log1p(exp(b*x))/b",
        lambda b, x: torch.log1p(torch.exp(b * x)) / b,
        {"b": ((2, 1), 0.5, 2), "x": (VECTOR, -3, 3)},
    ),
    Case("silu", "x*sigmoid(x)", lambda x: F.silu(x), _x(-5, 5), third_order=True),
    Case("elu_where", "where(x > 0, x, 1.3*(exp(x) - 1))", lambda x: F.elu(x, alpha=1.3), _x(-3, 3)),
    Case("selu", f"{SELU_SCALE}*where(x > 0, x, {SELU_ALPHA}*expm1(x))", lambda x: F.selu(x), _x(-3, 3)),
    Case(
        "celu_piecewise",
        "Piecewise((x, x > 0), (0.5*(exp(x/0.5) - 1), True))",
        lambda x: F.celu(x, alpha=0.5),
        _x(-3, 3),
    ),
    Case("leaky_relu_max", "max(x, 0.01*x)", lambda x: F.leaky_relu(x, 0.01), _x(-3, 3)),
    # Reference relu6-based, not F.hardswish: torch's CUDA hardswish uses 1.0f/6.0f, float32 accurate only.
    Case("hardswish_min_max", "x*min(max(x + 3, 0), 6)/6", lambda x: x * F.relu6(x + 3) / 6, _x(-4.5, 4.5)),
    Case("softsign", "x/(1 + abs(x))", lambda x: F.softsign(x), _x(-3, 3)),
    Case("tanhshrink", "x - tanh(x)", lambda x: F.tanhshrink(x), _x(-3, 3)),
    Case("logsigmoid", "-softplus(-x)", lambda x: F.logsigmoid(x), _x(-5, 5)),
    Case(
        "huber",
        "where(abs(x) <= 1, x**2/2, abs(x) - 1/2)",
        lambda x: F.huber_loss(x, torch.zeros_like(x), reduction="none"),
        _x(-3, 3),
    ),
    # Orthogonal polynomials.
    Case("legendre_p2", "(3*x**2 - 1)/2", lambda x: _legendre(x, 2), _x(-1, 1)),
    Case("legendre_p4", "(35*x**4 - 30*x**2 + 3)/8", lambda x: _legendre(x, 4), _x(-1, 1), third_order=True),
    Case("legendre_p5", "(63*x**5 - 70*x**3 + 15*x)/8", lambda x: _legendre(x, 5), _x(-1, 1)),
    Case("chebyshev_t3", "4*x**3 - 3*x", lambda x: torch.cos(3 * torch.acos(x)), _x(-0.95, 0.95)),
    Case(
        "chebyshev_t4", "8*x**4 - 8*x**2 + 1", lambda x: torch.cos(4 * torch.acos(x)), _x(-0.95, 0.95), third_order=True
    ),
    Case(
        "chebyshev_u2", "4*x**2 - 1", lambda x: torch.sin(3 * torch.acos(x)) / torch.sin(torch.acos(x)), _x(-0.95, 0.95)
    ),
    Case("hermite_h3", "8*x**3 - 12*x", lambda x: _hermite(x, 3), _x(-2, 2)),
    Case("hermite_h4", "16*x**4 - 48*x**2 + 12", lambda x: _hermite(x, 4), _x(-2, 2), third_order=True),
    Case("hermite_he5", "x**5 - 10*x**3 + 15*x", lambda x: _hermite(x, 5, physicists=False), _x(-2, 2)),
    # Rational functions.
    Case("rational_pole", "(x**2 + 1)/(x - 3)", lambda x: (x * x + 1) / (x - 3), _x(-2, 2), third_order=True),
    Case("lorentzian", "1/(1 + x**2)", lambda x: torch.reciprocal(1 + x * x), _x(-3, 3)),
    Case(
        "pade_exp",
        "(1 + x/2 + x**2/12)/(1 - x/2 + x**2/12)",
        lambda x: (12 + 6 * x + x * x) / (12 - 6 * x + x * x),
        _x(-1, 1),
    ),
    Case(
        "rational_3_inputs",
        "(a*x + b)/(x**2 + a**2 + 1)",
        lambda a, b, x: (a * x + b) / (x * x + a * a + 1),
        {"a": ((3, 1), -2, 2), "b": ((1,), -2, 2), "x": ((1, 5), -2, 2)},
        third_order=True,
    ),
    # Piecewise.
    Case(
        "piecewise_three",
        "Piecewise((x**2, x < 0), (sin(x), x < 1), (x**3, True))",
        lambda x: torch.where(x < 0, x * x, torch.where(x < 1, torch.sin(x), x**3)),
        _x(-2, 2),
    ),
    Case(
        "where_and",
        "where(x > -1 and x < 1, cos(x), x**2)",
        lambda x: torch.where(x.abs() < 1, torch.cos(x), x * x),
        _x(-2, 2),
    ),
    Case(
        "where_two_inputs",
        "where(x > y, x - y, exp(x - y) - 1)",
        lambda x, y: torch.where(x > y, x - y, torch.expm1(x - y)),
        {"x": ((4, 1), -2, 2), "y": ((3,), -2, 2)},
    ),
    # Elementary functions.
    Case(
        "trig",
        "tan(x) + asin(x/2) + acos(x/3) + atan(x)",
        lambda x: torch.tan(x) + torch.asin(x / 2) + torch.acos(x / 3) + torch.atan(x),
        _x(-1.2, 1.2),
        third_order=True,
    ),
    Case(
        "hyperbolic",
        "sinh(x) * cosh(x/2) + asinh(x) + atanh(x/2)",
        lambda x: torch.sinh(x) * torch.cosh(x / 2) + torch.asinh(x) + torch.atanh(x / 2),
        _x(-1.5, 1.5),
    ),
    Case(
        "acosh_log", "acosh(x) + log(x) + sqrt(x)", lambda x: torch.acosh(x) + torch.log(x) + torch.sqrt(x), _x(1.1, 4)
    ),
    Case(
        "log1p_expm1_erfc",
        "log1p(x**2) * expm1(-x) + erfc(x)",
        lambda x: torch.log1p(x * x) * torch.expm1(-x) + torch.erfc(x),
        _x(-2, 2),
    ),
    Case("constants", "E**x * pi - x**2.5", lambda x: torch.exp(x) * math.pi - x**2.5, _x(0.1, 3)),
    Case("negative_power", "x**(-3) + 1/sqrt(x)", lambda x: x**-3 + torch.rsqrt(x), _x(0.5, 3)),
    Case("sign_abs", "sign(x)*abs(x)**1.5", lambda x: torch.sign(x) * x.abs() ** 1.5, _x(-3, 3)),
    Case(
        "floor_round_ceil",
        "x - floor(x) + round(x)*x + ceil(x)*x**2",
        lambda x: x - torch.floor(x) + torch.round(x) * x + torch.ceil(x) * x * x,
        _x(-3, 3),
    ),
    # Several inputs, broadcasting.
    Case("atan2", "atan2(y, x)", lambda y, x: torch.atan2(y, x), {"y": ((3, 1), -2, 2), "x": ((4,), 0.2, 2)}),
    Case(
        "power_of_input",
        "x**y",
        lambda x, y: torch.pow(x, y),
        {"x": ((5,), 0.3, 3), "y": ((2, 1), -2, 2)},
        third_order=True,
    ),
    Case(
        "log_ratio", "log(x)/log(y)", lambda x, y: torch.log(x) / torch.log(y), {"x": ((5,), 0.3, 3), "y": ((), 1.5, 3)}
    ),
    Case(
        "norm3",
        "sqrt(x**2 + y**2 + z**2)",
        lambda x, y, z: torch.linalg.vector_norm(torch.stack(torch.broadcast_tensors(x, y, z)), dim=0),
        {"x": ((2, 3), -2, 2), "y": ((3,), -2, 2), "z": ((2, 1), -2, 2)},
    ),
    Case(
        "max3_min",
        "max(x, y, z) + min(x, y)",
        lambda x, y, z: torch.maximum(torch.maximum(x, y), z) + torch.minimum(x, y),
        {"x": ((6,), -2, 2), "y": ((6,), -2, 2), "z": ((), -2, 2)},
    ),
    Case(
        "gaussian_4",
        "a*exp(-(x - m)**2/(2*s**2)) + c",
        lambda a, x, m, s, c: a * torch.exp(-((x - m) ** 2) / (2 * s * s)) + c,
        {"a": ((), 0.5, 2), "x": ((6,), -2, 2), "m": ((), -1, 1), "s": ((), 0.5, 2), "c": ((), -1, 1)},
        third_order=True,
    ),
    Case(
        "logistic_regression",
        "-log(sigmoid(w*x + b))",
        lambda w, x, b: -F.logsigmoid(w * x + b),
        {"w": ((3, 1), -2, 2), "x": ((4,), -2, 2), "b": ((3, 1), -1, 1)},
    ),
    Case(
        "damped_oscillator",
        "a*exp(-k*t)*sin(w*t + phi)",
        lambda a, k, t, w, phi: a * torch.exp(-k * t) * torch.sin(w * t + phi),
        {"a": ((), 0.5, 2), "k": ((2, 1), 0.1, 1), "t": ((5,), 0, 3), "w": ((), 1, 3), "phi": ((), -1, 1)},
    ),
    # The blog's model and the tutorial's model, as single formulas through registered functions.
    Case(
        "blog_model",
        "a + b*P2(c*x + d)",
        lambda a, b, c, x, d: a + b * _p2(c * x + d),
        {"a": ((), -1, 1), "b": ((), -1, 1), "c": ((), -1, 1), "x": ((8,), -2, 2), "d": ((), -1, 1)},
        third_order=True,
    ),
    Case(
        "tutorial_model",
        "a + b*LegendreP3(c + d*x)",
        lambda a, b, c, d, x: a + b * _p3(c + d * x),
        {"a": ((), -1, 1), "b": ((), -1, 1), "c": ((), -1, 1), "d": ((), -1, 1), "x": ((8,), -1, 1)},
        third_order=True,
    ),
    Case(
        "nested_registered",
        "P2(LegendreP3(x)) * y",
        lambda x, y: _p2(_p3(x)) * y,
        {"x": ((4,), -1, 1), "y": ((2, 1), -1, 1)},
    ),
]

CASES_BY_ID = {case.id: case for case in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"
