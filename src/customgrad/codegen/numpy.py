"""SymPy -> numpy source, for evaluating formulas on small CPU arrays where a numpy call costs a
fraction of a torch dispatch (the fit engine's residuals and Jacobians on CPU in float64).

The printer is the torch printer with the function table swapped; functions numpy lacks (erf, erfc)
and hand-written registered Functions raise NotImplementedError, and callers fall back to torch.
Generated code runs with numpy's floating-point warnings silenced by the caller (NaN/inf are
results here, as in torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy

from .rules import BINARY_RULES, FUNCTION_RULES, column
from .runtime import compile_numpy  # noqa: F401 - the runtime, re-exported
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
