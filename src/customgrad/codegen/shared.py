"""Common subexpressions of a kernel's outputs: the one CSE setting of all generated code.

Every target (torch and numpy code, C kernels, Triton kernels, the fit's Jacobian rows) shares
subexpressions the same way, so a formula rounds alike in every backend.
"""

from __future__ import annotations

import functools
import itertools

import sympy


@functools.lru_cache(maxsize=64)
def shared_subexpressions(outputs: tuple[sympy.Expr, ...]) -> tuple[list, list]:
    """``outputs`` with common subexpressions pulled out as ``_t0, _t1, ...``: (replacements, reduced).

    No "basic" optimizations: they pull out rational content, turning x/200000 + 1 into
    (x + 200000)/200000, which overflows float16 (and rounds differently in any precision).
    Remembered for the last few output sets: a fit prints the same rows for more than one backend.
    """
    temporaries = (sympy.Symbol(f"_t{i}", real=True) for i in itertools.count())
    return sympy.cse(list(outputs), symbols=temporaries)
