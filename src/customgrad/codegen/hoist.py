"""Loop-invariant pieces of a kernel body, computed once per row instead of once per element.

In a fused loop over rows x columns, an input read once per row (a per-row parameter ``s``) or once per
call (a number) makes parts of the formula constant along the row: ``-(x - m)**2/(2*s**2)`` is
``(x - m)**2 * h`` with ``h = -1/(2*s**2)`` per row. The C compiler hoists such parts itself only where
they are separate expressions, and never turns a division into a multiplication by a reciprocal (that
needs fast-math), so a per-element division by ``s**2`` stays in the loop. Here the invariant factors of
each product (terms of each sum, arguments of each call) are named ``_h0, _h1, ...`` and the body uses
them: divisions by row values become multiplications, and the loop keeps only what varies.

The reordering costs at most an ulp or two against the formula evaluated as written (a/b against
a*(1/b)); inf and NaN propagate alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import sympy


def hoisted(
    replacements: Sequence[tuple[sympy.Symbol, sympy.Expr]],
    reduced: Sequence[sympy.Expr],
    invariant: set[sympy.Symbol],
) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], list[tuple[sympy.Symbol, sympy.Expr]], list[sympy.Expr]]:
    """``(hoisted, replacements, reduced)``: the invariant pieces (computed before the inner loop, in
    order), and the common subexpressions and outputs that use them, for symbols ``invariant`` along it."""
    names = (sympy.Symbol(f"_h{k}", real=True) for k in itertools.count())
    fixed = set(invariant)
    pieces: list[tuple[sympy.Symbol, sympy.Expr]] = []

    def name(expr: sympy.Expr) -> sympy.Symbol:
        symbol = next(names)
        pieces.append((symbol, expr))
        fixed.add(symbol)
        return symbol

    def still(expr) -> bool:
        return expr.free_symbols <= fixed

    def liftable(expr) -> bool:
        return isinstance(expr, sympy.Expr) and bool(expr.free_symbols) and not expr.is_Symbol and still(expr)

    def visit(expr):
        if not expr.args or not expr.free_symbols:
            return expr
        if isinstance(expr, (sympy.Mul, sympy.Add)):
            constant = [a for a in expr.args if still(a)]
            varying = [visit(a) for a in expr.args if not still(a)]
            if (
                varying
                and any(a.free_symbols for a in constant)
                and len(constant) > 1
                or (varying and len(constant) == 1 and liftable(constant[0]))
            ):
                constant = [name(expr.func(*constant))]
            args = (*constant, *varying)
            if sorted(args, key=sympy.default_sort_key) == sorted(expr.args, key=sympy.default_sort_key):
                return expr
            # unevaluated: x*0 inside a NaN guard (x*0 == 0) must stay x*0, not fold to 0
            return expr.func(*args, evaluate=False)
        args = tuple(name(a) if liftable(a) else visit(a) for a in expr.args)
        return expr if args == expr.args else expr.func(*args)

    kept = []
    for temporary, value in replacements:
        if still(value):
            pieces.append((temporary, value))
            fixed.add(temporary)
        else:
            kept.append((temporary, visit(value)))
    outputs = [value if still(value) else visit(value) for value in reduced]
    return pieces, kept, outputs
