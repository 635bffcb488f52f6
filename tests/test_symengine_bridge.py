"""SymEngine derivatives against SymPy's own (an independent implementation), and what stays with SymPy."""

import pytest
import sympy

from customgrad.formula import parse_formula, symbol
from customgrad.symengine_bridge import derivative, supported

x, y = symbol("x"), symbol("y")
POINT = {x: sympy.Rational(3, 10), y: sympy.Rational(7, 10)}  # inside every domain below

SUPPORTED = [
    "exp(x*y)",
    "log(x + y)",
    "sin(x)*cos(y)",
    "tan(x*y)",
    "asin(x) + acos(y) + atan(x*y)",
    "sinh(x)*cosh(y)/tanh(x + y)",
    "asinh(x) + acosh(y + 1) + atanh(x*y)",
    "erf(x*y) + erfc(x - y)",
    "x**y + y**2.5 + x**(-3) + sqrt(x*y)",
    "pi*E*x/7 + 0.044715*x**3",
]
WITH_SYMPY = [
    "P2(x*y)",
    "sigmoid(x)*y",
    "softplus(x*y)",
    "log1p(x) + expm1(y)",
    "abs(x)*y",
    "max(x, y)",
    "where(x > 0, x, y)",
]


@pytest.mark.parametrize("formula", SUPPORTED)
def test_derivatives_equal_sympys_at_a_point(formula):
    expr = parse_formula(formula).expr
    assert supported(expr)
    for variable in (x, y):
        fast = derivative(expr, variable)
        assert fast.free_symbols <= {x, y} and all(s.is_real for s in fast.free_symbols)
        value, reference = fast.subs(POINT).evalf(30), sympy.diff(expr, variable).subs(POINT).evalf(30)
        assert abs(value - reference) <= 1e-25 * max(1, abs(reference)), (formula, variable)


@pytest.mark.parametrize("formula", WITH_SYMPY)
def test_functions_symengine_would_mistreat_stay_with_sympy(formula):
    expr = parse_formula(formula).expr
    assert not supported(expr)
    assert derivative(expr, x) is None
