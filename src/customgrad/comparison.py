"""Comparisons of a formula's conditions as IEEE floats compare them: a < b is false where either is NaN.

SymPy decides comparisons from its assumptions, which hold for finite reals only: ``x != x`` is
False, ``x == x`` and ``x*0 == 0`` are True, and ``Not(x < y)`` is ``x >= y``. At NaN (and at
infinities) torch says otherwise, and those are the very conditions written to guard against NaN:
``where(x != x, 0, x)``. So a condition's comparison is one of these stand-ins, which SymPy never
decides or rewrites, with its operands kept as written (`Formula` builds them unevaluated, so
``x*0`` stays ``x*0``); each printer prints it as the comparison it stands for.
"""

from __future__ import annotations

import math
import operator as operators

import sympy
from sympy.logic.boolalg import BooleanFunction


class Comparison(BooleanFunction):
    """``lhs <operator> rhs``, decided only when both sides are numbers (as floats compare them)."""

    #: The operator as Python and torch write it; its function on floats (not ``compare``, which is SymPy's
    #: canonical ordering of expressions: sorting a sum's terms that hold two conditions called it); the
    #: SymPy relation it stands for.
    operator = "?"
    decide = staticmethod(operators.eq)
    relation: type = sympy.Eq

    @classmethod
    def eval(cls, lhs, rhs):
        if not (lhs.is_number and rhs.is_number):
            return None
        try:
            values = float(lhs), float(rhs)
        except TypeError:  # a complex or undefined constant: left to the printers' checks
            return None
        if any(math.isnan(value) for value in values):
            return sympy.true if cls.operator == "!=" else sympy.false
        return sympy.true if cls.decide(*values) else sympy.false

    def _eval_as_set(self):
        # As a set of reals it would cover NaN by neither x < 0 nor x >= 0: SymPy would merge such pieces.
        raise NotImplementedError("an IEEE comparison has no set of reals")

    def as_relational(self) -> sympy.core.relational.Relational:
        """The SymPy relation, unevaluated (for display only)."""
        return self.relation(*self.args, evaluate=False)

    def _code(self, printer) -> str:
        lhs, rhs = (printer._print(argument) for argument in self.args)
        return f"({lhs} {self.operator} {rhs})"

    _customgrad_torchcode = _customgrad_numpycode = _customgrad_tritoncode = _customgrad_ccode = _code

    def _display(self, printer):
        return printer._print(self.as_relational())

    _sympystr = _pretty = _latex = _display


def _comparison(name: str, operator: str, decide, relation: type) -> type[Comparison]:
    return type(name, (Comparison,), {"operator": operator, "decide": staticmethod(decide), "relation": relation})


Less = _comparison("Less", "<", operators.lt, sympy.StrictLessThan)
LessEqual = _comparison("LessEqual", "<=", operators.le, sympy.LessThan)
Greater = _comparison("Greater", ">", operators.gt, sympy.StrictGreaterThan)
GreaterEqual = _comparison("GreaterEqual", ">=", operators.ge, sympy.GreaterThan)
Equal = _comparison("Equal", "==", operators.eq, sympy.Eq)
NotEqual = _comparison("NotEqual", "!=", operators.ne, sympy.Ne)


def substitute(expr: sympy.Basic, mapping: dict) -> sympy.Basic:
    """``expr.xreplace(mapping)``, the operands of its comparisons substituted as written.

    A plain xreplace rebuilds ``x*0 == 0`` at x -> y as ``0 == 0``, which is decided (True): the
    NaN guard of a registered function would be lost where a formula calls it.
    """
    held = {c: sympy.Dummy(f"condition{k}") for k, c in enumerate(expr.atoms(Comparison))}
    if not held:
        return expr.xreplace(mapping)
    with sympy.evaluate(False):
        substituted = {symbol: c.xreplace(mapping) for c, symbol in held.items()}
    return expr.xreplace(held).xreplace(mapping).xreplace(substituted)
