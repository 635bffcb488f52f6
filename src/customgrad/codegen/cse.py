"""Common subexpressions shared by every printer: SymPy's ``cse``, with constant temporaries inlined.

SymPy's ``cse`` may name a constant (``_t2 = log(2)``); printed, that temporary is a Python number in
generated torch or Triton code, where tensor-only calls such as ``torch.square(_t2)`` fail. Constant
temporaries are therefore substituted back, so printers see them as numbers and fold them.

One setting for every target (torch and numpy code, C and Triton kernels, the fit's rows), so a formula
rounds alike everywhere. No "basic" optimizations: they pull out rational content, turning
x/200000 + 1 into (x + 200000)/200000, which overflows float16 (and rounds differently in any precision).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import sympy


def shared_subexpressions(
    outputs: Sequence[sympy.Expr],
) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], list[sympy.Expr]]:
    """``(replacements, reduced)`` = cse(outputs) with temporaries ``_t0, _t1, ...`` that are never constants.

    Remembered for the last few output sets: a fit prints the same rows for more than one backend.
    """
    kept, reduced = _shared(tuple(outputs))
    return list(kept), list(reduced)


@functools.lru_cache(maxsize=64)
def _shared(outputs: tuple[sympy.Expr, ...]) -> tuple[tuple, tuple]:
    temporaries = (sympy.Symbol(f"_t{i}", real=True) for i in itertools.count())
    replacements, reduced = sympy.cse(list(outputs), symbols=temporaries)
    constants: dict[sympy.Symbol, sympy.Expr] = {}
    kept = []
    for temporary, value in replacements:
        value = value.xreplace(constants) if constants else value
        if value.free_symbols:
            kept.append((temporary, value))
        else:
            constants[temporary] = value
    if not constants:
        return tuple(kept), tuple(reduced)
    return tuple(kept), tuple(expr.xreplace(constants) for expr in reduced)
