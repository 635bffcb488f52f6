"""The functions a formula may call, as data: formula name -> SymPy constructor and arity.

Also the few SymPy function classes customgrad adds (sigmoid, softplus, round), each with its
derivative declared next to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import sympy
from sympy.codegen.cfunctions import expm1, log1p


class sigmoid(sympy.Function):  # noqa: N801 - printed and parsed under this name
    """Logistic sigmoid(x) = 1 / (1 + exp(-x))."""

    def fdiff(self, argindex=1):
        # d/dx sigmoid(x) = sigmoid(x) (1 - sigmoid(x))
        return self * (1 - self)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sympy.exp(-x))

    def _eval_evalf(self, prec):
        return self.rewrite(sympy.exp)._eval_evalf(prec)

    def _eval_is_real(self):
        return self.args[0].is_real


class softplus(sympy.Function):  # noqa: N801
    """Softplus softplus(x) = log(1 + exp(x))."""

    def fdiff(self, argindex=1):
        # d/dx log(1 + exp(x)) = sigmoid(x)
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return sympy.log(1 + sympy.exp(x))

    def _eval_evalf(self, prec):
        return self.rewrite(sympy.exp)._eval_evalf(prec)

    def _eval_is_real(self):
        return self.args[0].is_real


class Round(sympy.Function):
    """Rounding to the nearest integer, halves to even (as torch.round): zero gradient almost everywhere."""

    def fdiff(self, argindex=1):
        # d/dx round(x) = 0 almost everywhere
        return sympy.S.Zero

    @classmethod
    def eval(cls, x):
        # A number, or a constant expression such as sin(0.5) or sqrt(2) (printed as a value otherwise,
        # which round(...) has none of): Python's round halves to even, as torch.round.
        if x.is_Number or (x.is_number and x.is_extended_real):
            try:
                value = float(x)
            except (TypeError, ValueError):
                return None
            if math.isfinite(value):
                return sympy.Integer(round(value))
        return None


@dataclass(frozen=True)
class FormulaFunction:
    """A function callable from formulas: its SymPy constructor and how many arguments it takes."""

    build: Any
    min_args: int = 1
    max_args: int | None = 1  # None: any number


#: Most arguments min(...) and max(...) take.
MAX_MIN_MAX_ARGUMENTS = 16


def _where(cond, a, b):
    return sympy.Piecewise((a, cond), (b, True))


#: Formula name -> the SymPy function it builds. A new function is one new row (and one printer row).
FUNCTIONS: dict[str, FormulaFunction] = {
    "exp": FormulaFunction(sympy.exp),
    "log": FormulaFunction(sympy.log),
    "log1p": FormulaFunction(log1p),
    "expm1": FormulaFunction(expm1),
    "sqrt": FormulaFunction(sympy.sqrt),
    "sin": FormulaFunction(sympy.sin),
    "cos": FormulaFunction(sympy.cos),
    "tan": FormulaFunction(sympy.tan),
    "asin": FormulaFunction(sympy.asin),
    "acos": FormulaFunction(sympy.acos),
    "atan": FormulaFunction(sympy.atan),
    "atan2": FormulaFunction(sympy.atan2, 2, 2),
    "sinh": FormulaFunction(sympy.sinh),
    "cosh": FormulaFunction(sympy.cosh),
    "tanh": FormulaFunction(sympy.tanh),
    "asinh": FormulaFunction(sympy.asinh),
    "acosh": FormulaFunction(sympy.acosh),
    "atanh": FormulaFunction(sympy.atanh),
    "erf": FormulaFunction(sympy.erf),
    "erfc": FormulaFunction(sympy.erfc),
    "sigmoid": FormulaFunction(sigmoid),
    "softplus": FormulaFunction(softplus),
    "abs": FormulaFunction(sympy.Abs),
    "sign": FormulaFunction(sympy.sign),
    # Bounded: SymPy compares every pair of arguments, and each partial holds all of them.
    "min": FormulaFunction(sympy.Min, 2, MAX_MIN_MAX_ARGUMENTS),
    "max": FormulaFunction(sympy.Max, 2, MAX_MIN_MAX_ARGUMENTS),
    "floor": FormulaFunction(sympy.floor),
    "ceil": FormulaFunction(sympy.ceiling),
    "round": FormulaFunction(Round),
    "where": FormulaFunction(_where, 3, 3),
}

#: Named constants a formula may use.
CONSTANTS: dict[str, sympy.Expr] = {"pi": sympy.pi, "E": sympy.E}

#: Functions of other tools (NumPy, torch, math, spreadsheets) a formula writes another way: their name ->
#: how to write them here (for the error message of an unknown function).
OTHER_SPELLINGS: dict[str, str] = {
    "ln": "log(x)",
    "log10": "log(x)/log(10)",
    "log2": "log(x)/log(2)",
    "exp2": "2**x",
    "pow": "x**y",
    "power": "x**y",
    "square": "x**2",
    "rsqrt": "1/sqrt(x)",
    "cbrt": "sign(x)*abs(x)**(1/3)",
    "hypot": "sqrt(x**2 + y**2)",
    "relu": "max(x, 0)",
    "clamp": "min(max(x, low), high)",
    "clip": "min(max(x, low), high)",
    "heaviside": "where(x > 0, 1, 0)",
    "silu": "x*sigmoid(x)",
    "swish": "x*sigmoid(x)",
    "gelu": "0.5*x*(1 + erf(x/sqrt(2)))",
    "logaddexp": "max(x, y) + log1p(exp(-abs(x - y)))",
    "logsigmoid": "-softplus(-x)",
    "maximum": "max(x, y)",
    "minimum": "min(x, y)",
    "fmax": "max(x, y)",
    "fmin": "min(x, y)",
    "fabs": "abs(x)",
    "arctan2": "atan2(y, x)",
    "trunc": "sign(x)*floor(abs(x))",
}
