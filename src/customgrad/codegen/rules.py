"""The printer table: SymPy function -> its call in every target language, one row per function.

A new formula function is one new row. A target with ``None`` in a row cannot print that function
(the printer raises, and the caller names the function and the target). Columns:

- ``torch``: generated Python over torch (the eager and compile backends, any device);
- ``numpy``: generated Python over numpy (the fit engine's CPU float64 rows);
- ``c``: the double-precision C99 name; the C printer appends ``f`` for float kernels
  (``exp`` -> ``expf``), and glibc's libmvec supplies vector variants of most of them;
- ``triton``: a ``triton.language`` call (``tl``) or a libdevice one (``libdevice``).
"""

from __future__ import annotations

from typing import NamedTuple

import sympy
from sympy.codegen.cfunctions import expm1, log1p

from ..functions import Round, sigmoid, softplus


class Rule(NamedTuple):
    """One function's call in each target; ``None`` where a target lacks it."""

    torch: str | None
    numpy: str | None
    c: str | None
    triton: str | None


#: Functions of one argument.
FUNCTION_RULES: dict[type, Rule] = {
    sympy.exp: Rule("torch.exp", "numpy.exp", "exp", "tl.exp"),
    sympy.log: Rule("torch.log", "numpy.log", "log", "tl.log"),
    log1p: Rule("torch.log1p", "numpy.log1p", "log1p", "libdevice.log1p"),
    expm1: Rule("torch.expm1", "numpy.expm1", "expm1", "libdevice.expm1"),
    sympy.sin: Rule("torch.sin", "numpy.sin", "sin", "tl.sin"),
    sympy.cos: Rule("torch.cos", "numpy.cos", "cos", "tl.cos"),
    sympy.tan: Rule("torch.tan", "numpy.tan", "tan", "libdevice.tan"),
    sympy.asin: Rule("torch.asin", "numpy.arcsin", "asin", "libdevice.asin"),
    sympy.acos: Rule("torch.acos", "numpy.arccos", "acos", "libdevice.acos"),
    sympy.atan: Rule("torch.atan", "numpy.arctan", "atan", "libdevice.atan"),
    sympy.sinh: Rule("torch.sinh", "numpy.sinh", "sinh", "libdevice.sinh"),
    sympy.cosh: Rule("torch.cosh", "numpy.cosh", "cosh", "libdevice.cosh"),
    sympy.tanh: Rule("torch.tanh", "numpy.tanh", "tanh", "libdevice.tanh"),
    sympy.asinh: Rule("torch.asinh", "numpy.arcsinh", "asinh", "libdevice.asinh"),
    sympy.acosh: Rule("torch.acosh", "numpy.arccosh", "acosh", "libdevice.acosh"),
    sympy.atanh: Rule("torch.atanh", "numpy.arctanh", "atanh", "libdevice.atanh"),
    sympy.erf: Rule("torch.erf", None, "erf", "tl.erf"),
    sympy.erfc: Rule("torch.erfc", None, "erfc", "libdevice.erfc"),
    sigmoid: Rule("torch.sigmoid", "_sigmoid", "cg_sigmoid", "tl.sigmoid"),
    softplus: Rule("torch.nn.functional.softplus", "_softplus", "cg_softplus", "_softplus"),
    sympy.Abs: Rule("torch.abs", "numpy.abs", "fabs", "tl.abs"),
    sympy.sign: Rule("torch.sign", "numpy.sign", "cg_sign", "_sign"),
    sympy.floor: Rule("torch.floor", "numpy.floor", "floor", "tl.floor"),
    sympy.ceiling: Rule("torch.ceil", "numpy.ceil", "ceil", "tl.ceil"),
    Round: Rule("torch.round", "numpy.round", "rint", "libdevice.rint"),
}

#: Functions of two arguments (folded left to right over more).
BINARY_RULES: dict[type, Rule] = {
    sympy.atan2: Rule("torch.atan2", "numpy.arctan2", "atan2", "libdevice.atan2"),
    sympy.Max: Rule("torch.maximum", "numpy.maximum", "cg_max", "_maximum"),
    sympy.Min: Rule("torch.minimum", "numpy.minimum", "cg_min", "_minimum"),
}


def column(rules: dict[type, Rule], target: str) -> dict[type, str]:
    """One target's column of a rule table: SymPy function -> call, for the functions it has."""
    return {kind: getattr(rule, target) for kind, rule in rules.items() if getattr(rule, target) is not None}
