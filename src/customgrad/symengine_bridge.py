"""Differentiation in C++ (SymEngine) for the expressions it treats exactly as SymPy does.

SymPy's ``diff`` spends most of its time in its assumptions system; SymEngine differentiates the
same expression in microseconds. Only expressions built entirely from the node types in
`SYMENGINE_NODES` go there (arithmetic, powers, exp/log, trigonometric, hyperbolic, erf); anything
else (piecewise pieces, min/max, abs, registered and customgrad's own functions, which SymEngine
would silently treat as constants) stays with SymPy. Results come back as SymPy expressions over
the same (real) symbols.
"""

from __future__ import annotations

import functools

import sympy

#: SymPy node types whose derivative SymEngine computes as SymPy does. A new one is one new row.
SYMENGINE_NODES: frozenset[type] = frozenset(
    {
        sympy.Symbol,
        sympy.Integer,
        sympy.Rational,
        sympy.Float,
        sympy.core.numbers.Zero,
        sympy.core.numbers.One,
        sympy.core.numbers.NegativeOne,
        sympy.core.numbers.Half,
        sympy.core.numbers.Pi,
        sympy.core.numbers.Exp1,
        sympy.Add,
        sympy.Mul,
        sympy.Pow,
        sympy.exp,
        sympy.log,
        sympy.sin,
        sympy.cos,
        sympy.tan,
        sympy.asin,
        sympy.acos,
        sympy.atan,
        sympy.sinh,
        sympy.cosh,
        sympy.tanh,
        sympy.asinh,
        sympy.acosh,
        sympy.atanh,
        sympy.erf,
        sympy.erfc,
    }
)


@functools.cache
def _symengine():
    try:
        import symengine
    except ImportError:  # optional at run time: SymPy does everything, only slower
        return None
    return symengine


def supported(expr: sympy.Basic) -> bool:
    """Whether every node of ``expr`` is in `SYMENGINE_NODES` (and SymEngine is installed)."""
    if _symengine() is None:
        return False
    stack = [expr]
    while stack:
        node = stack.pop()
        if type(node) not in SYMENGINE_NODES:
            return False
        stack.extend(node.args)
    return True


def derivative(expr: sympy.Expr, variable: sympy.Symbol) -> sympy.Expr | None:
    """d expr / d variable computed by SymEngine, or None when ``expr`` is not `supported`."""
    if not supported(expr):
        return None
    symengine = _symengine()
    result = symengine.sympify(expr).diff(symengine.Symbol(variable.name))._sympy_()
    # SymEngine's symbols carry no assumptions: put back the expression's own (real) symbols.
    return result.xreplace({sympy.Symbol(s.name): s for s in expr.free_symbols})
