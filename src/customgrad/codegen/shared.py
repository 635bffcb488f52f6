"""Common subexpressions: ``sympy.cse`` with constant temporaries folded back into their uses.

A temporary such as ``_t0 = log(2)`` would be a Python float in generated code, and ``_t0**2`` would
print as ``torch.square(_t0)`` (a TypeError: torch functions take tensors), ``tl.sqrt`` of a float, ...
Inlined, ``log(2)**2`` is a constant expression, which every printer writes as one number.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import sympy


def shared_subexpressions(
    expressions: Sequence[sympy.Expr], optimizations: str | None = None
) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], list[sympy.Expr]]:
    """``expressions`` = ``reduced`` after ``_t_i = value_i`` (replacements), no temporary a constant.

    Temporaries are named ``_t0, _t1, ...`` (real); ``optimizations`` is passed to ``sympy.cse``.
    """
    temporaries = (sympy.Symbol(f"_t{i}", real=True) for i in itertools.count())
    replacements, reduced = sympy.cse(list(expressions), symbols=temporaries, optimizations=optimizations)
    constants: dict[sympy.Symbol, sympy.Expr] = {}
    kept = []
    for temporary, value in replacements:
        value = value.xreplace(constants) if constants else value
        if value.free_symbols:
            kept.append((temporary, value))
        else:
            constants[temporary] = value
    if constants:
        reduced = [expr.xreplace(constants) for expr in reduced]
    return kept, list(reduced)
