"""Common subexpressions shared by every printer: SymPy's ``cse``, with constant temporaries inlined.

SymPy's ``cse`` may name a constant (``_t2 = log(2)``); printed, that temporary is a Python number in
generated torch or Triton code, where tensor-only calls such as ``torch.square(_t2)`` fail. Constant
temporaries are therefore substituted back, so printers see them as numbers and fold them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import sympy


def shared_subexpressions(
    outputs: Sequence[sympy.Expr], optimizations: str | None = None
) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], list[sympy.Expr]]:
    """``(replacements, reduced)`` = cse(outputs) with temporaries ``_t0, _t1, ...`` that are never constants."""
    temporaries = (sympy.Symbol(f"_t{i}", real=True) for i in itertools.count())
    replacements, reduced = sympy.cse(list(outputs), symbols=temporaries, optimizations=optimizations)
    constants: dict[sympy.Symbol, sympy.Expr] = {}
    kept = []
    for temporary, value in replacements:
        value = value.xreplace(constants) if constants else value
        if value.free_symbols:
            kept.append((temporary, value))
        else:
            constants[temporary] = value
    if not constants:
        return kept, list(reduced)
    return kept, [expr.xreplace(constants) for expr in reduced]
