"""SymPy -> numpy source, for evaluating formulas on small CPU arrays where a numpy call costs a
fraction of a torch dispatch (the fit engine's residuals and Jacobians on CPU in float64).

The printer is the torch printer with the function table swapped; functions numpy lacks (erf, erfc)
and hand-written registered Functions raise NotImplementedError, and callers fall back to torch.
Generated code runs with numpy's floating-point warnings silenced by the caller (NaN/inf are
results here, as in torch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy
import sympy

from ..formula import recursion_limit
from .rules import BINARY_RULES, FUNCTION_RULES, column
from .torch import TorchCodePrinter

#: SymPy function -> numpy call: the numpy column of the printer table (`codegen.rules`); a function
#: with no entry there (erf, erfc) is not available in numpy code.
NUMPY_FUNCTIONS: dict[type, str] = column(FUNCTION_RULES, "numpy")
#: Functions of two arrays, folded left to right over more arguments.
NUMPY_BINARY_FUNCTIONS: dict[type, str] = column(BINARY_RULES, "numpy")


class NumpyCodePrinter(TorchCodePrinter):
    """Prints a SymPy expression as a numpy expression over arrays named like its symbols."""

    printmethod = "_customgrad_numpycode"
    language = "Python with numpy"
    module = "numpy"
    functions = NUMPY_FUNCTIONS
    binary_functions = NUMPY_BINARY_FUNCTIONS
    powers = {
        sympy.S.Half: "numpy.sqrt({})",
        -sympy.S.Half: "(1.0 / numpy.sqrt({}))",
        sympy.S.NegativeOne: "(1.0 / ({}))",
        sympy.Integer(2): "numpy.square({})",
    }
    power = "numpy.power({}, {})"
    calls_registered = False

    def _print_binary(self, kind: type, args: Sequence[sympy.Expr]) -> str:
        # numpy's binary functions take Python numbers: a plain left fold.
        call = self.qualified(self.binary_functions[kind])
        return self._fold(call, [self._print(arg) for arg in args])


def _sigmoid(x):
    # 1 / (1 + exp(-x)), without overflow warnings mattering (exp(-x) = inf gives 0)
    return 1.0 / (1.0 + numpy.exp(-x))


def _softplus(x):
    # log(1 + exp(x)), stable for large x
    return numpy.logaddexp(0.0, x)


def compile_numpy(source: str, name: str, filename: str) -> Callable:
    """Compile generated numpy source and return the function it defines."""
    namespace = {"_numpy": numpy, "_functools": functools, "_sigmoid": _sigmoid, "_softplus": _softplus}
    with recursion_limit():  # a 5000-term sum compiles recursively
        code = compile(source, filename, "exec")
    exec(code, namespace)  # noqa: S102 - generated code, not user text
    return namespace[name]
