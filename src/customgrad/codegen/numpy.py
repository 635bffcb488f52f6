"""SymPy -> numpy source, for evaluating formulas on small CPU arrays where a numpy call costs a
fraction of a torch dispatch (the fit engine's residuals and Jacobians on CPU in float64).

The printer is the torch printer with the function table swapped; functions numpy lacks (erf, erfc)
and hand-written registered Functions raise NotImplementedError, and callers fall back to torch.
Generated code runs with numpy's floating-point warnings silenced by the caller (NaN/inf are
results here, as in torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy
import sympy
from sympy.codegen.cfunctions import expm1, log1p

from ..functions import Round, sigmoid, softplus
from .torch import _RELATIONS, TorchCodePrinter

#: SymPy function -> numpy call (a function with no row here is not available in numpy code).
NUMPY_FUNCTIONS: dict[type, str] = {
    sympy.exp: "numpy.exp",
    sympy.log: "numpy.log",
    log1p: "numpy.log1p",
    expm1: "numpy.expm1",
    sympy.sin: "numpy.sin",
    sympy.cos: "numpy.cos",
    sympy.tan: "numpy.tan",
    sympy.asin: "numpy.arcsin",
    sympy.acos: "numpy.arccos",
    sympy.atan: "numpy.arctan",
    sympy.sinh: "numpy.sinh",
    sympy.cosh: "numpy.cosh",
    sympy.tanh: "numpy.tanh",
    sympy.asinh: "numpy.arcsinh",
    sympy.acosh: "numpy.arccosh",
    sympy.atanh: "numpy.arctanh",
    sigmoid: "_sigmoid",
    softplus: "_softplus",
    sympy.Abs: "numpy.abs",
    sympy.sign: "numpy.sign",
    sympy.floor: "numpy.floor",
    sympy.ceiling: "numpy.ceil",
    Round: "numpy.round",
}

#: Functions of two arrays, folded left to right over more arguments.
NUMPY_BINARY_FUNCTIONS: dict[type, str] = {
    sympy.atan2: "numpy.arctan2",
    sympy.Max: "numpy.maximum",
    sympy.Min: "numpy.minimum",
}


class NumpyCodePrinter(TorchCodePrinter):
    """Prints a SymPy expression as a numpy expression over arrays named like its symbols."""

    printmethod = "_customgrad_numpycode"
    language = "Python with numpy"

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        if not expr.free_symbols:
            return self._print_constant_value(expr)
        if exponent == sympy.S.Half:
            return f"numpy.sqrt({self._print(base)})"
        if exponent == -sympy.S.Half:
            return f"(1.0 / numpy.sqrt({self._print(base)}))"
        if exponent == -1:
            return f"(1.0 / ({self._print(base)}))"
        if exponent == 2:
            return f"numpy.square({self._print(base)})"
        return f"numpy.power({self._print(base)}, {self._print(exponent)})"

    def _print_Function(self, expr):
        if not expr.free_symbols:
            return self._print_constant_value(expr)
        kind = type(expr)
        if kind in NUMPY_FUNCTIONS:
            return f"{NUMPY_FUNCTIONS[kind]}({', '.join(self._print(arg) for arg in expr.args)})"
        if kind in NUMPY_BINARY_FUNCTIONS:
            return self._print_binary(NUMPY_BINARY_FUNCTIONS[kind], expr.args)
        raise NotImplementedError(f"no numpy translation for {kind.__name__}")

    _print_Max = _print_Function
    _print_Min = _print_Function
    _print_atan2 = _print_Function
    _print_sign = _print_Function
    _print_Abs = _print_Function
    _print_floor = _print_Function
    _print_ceiling = _print_Function
    _print_erf = _print_Function
    _print_erfc = _print_Function
    _print_exp = _print_Function
    _print_log = _print_Function

    def _print_binary(self, call: str, args: Sequence[sympy.Expr]) -> str:
        printed = [self._print(arg) for arg in args]
        result = printed[0]
        for item in printed[1:]:
            result = f"{call}({result}, {item})"
        return result

    def _print_Heaviside(self, expr):
        return f"(0.5 + 0.5 * numpy.sign({self._print(expr.args[0])}))"

    def _print_Piecewise(self, expr):
        pieces = list(expr.args)
        if pieces[-1].cond != sympy.true:
            pieces.append(sympy.functions.elementary.piecewise.ExprCondPair(sympy.nan, sympy.true))
        result = self._print(pieces[-1].expr)
        for piece in reversed(pieces[:-1]):
            result = f"numpy.where({self._print(piece.cond)}, {self._print(piece.expr)}, {result})"
        return result

    def _print_Relational(self, expr):
        left, right = expr.args
        return f"({self._print(left)} {_RELATIONS[type(expr)]} {self._print(right)})"


def _sigmoid(x):
    # 1 / (1 + exp(-x)), without overflow warnings mattering (exp(-x) = inf gives 0)
    return 1.0 / (1.0 + numpy.exp(-x))


def _softplus(x):
    # log(1 + exp(x)), stable for large x
    return numpy.logaddexp(0.0, x)


def compile_numpy(source: str, name: str, filename: str) -> Callable:
    """Compile generated numpy source and return the function it defines."""
    namespace = {"numpy": numpy, "_sigmoid": _sigmoid, "_softplus": _softplus}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - generated code, not user text
    return namespace[name]
