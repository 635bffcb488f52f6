"""A formula model compiled once: predictions, and residuals with their exact Jacobian in one call.

For a formula f(x; b) the Jacobian columns are the symbolic partials df/db_j, generated together with
f into one function whose common subexpressions are shared (``exp(-b2*x)`` is computed once for
f and for both partials): torch code for any device and dtype, numpy code for float64 on the CPU, where
small problems are dominated by per-call dispatch. An iteration then costs a handful of vectorised ops
and no autograd graph. Registered functions enter the partials through their own partials (derived or declared), as
they do under autograd; a hand-written Function without symbolic partials leaves the model to autograd.

Compiled formulas are cached by text, names and the registry entries they were built against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import sympy
import torch

from ..codegen.numpy import NumpyCodePrinter, compile_numpy
from ..codegen.torch import compile_source, rows_source, torch_callable
from ..derive import derive_partial, inline_registered
from ..errors import CustomgradError
from ..formula import Formula, parse_formula, symbol
from ..registry import REGISTRY

_CACHE_SIZE = 128


class FormulaModel:
    """``model(data, values)`` -> f(x; b) for a parsed formula, plus `linearization` for its Jacobian.

    Parameters
    ----------
    parsed : Formula
        The parsed model.
    """

    def __init__(self, parsed: Formula):
        self.parsed = parsed
        self.names = tuple(parsed.names)
        self.evaluate = torch_callable(parsed.expr, self.names)
        self._linearizations: dict[tuple, Callable | None] = {}

    def __call__(self, data: dict, values: dict) -> torch.Tensor:
        return self.evaluate(*(data[n] if n in data else values[n] for n in self.names))

    @functools.cached_property
    def precise(self) -> Callable | None:
        """The formula in 40-digit arithmetic (mpmath) over columns of values, or None.

        For a cost that float64 roundoff would swamp (Lanczos1: residuals ~1e-13 on values ~1). None
        when the formula calls something mpmath lacks.
        """
        import mpmath

        try:
            # customgrad's own functions (sigmoid, softplus) in terms of exp; round as mpmath's nint.
            expression = inline_registered(self.parsed.expr).rewrite(sympy.exp)
            scalar = sympy.lambdify(
                [symbol(n) for n in self.names], expression, modules=[{"Round": mpmath.nint}, "mpmath"]
            )
        except Exception:  # noqa: BLE001 - anything unsupported just means: no precise evaluation
            return None

        def evaluate(columns: list) -> list:
            with mpmath.workdps(40):
                return [scalar(*(mpmath.mpf(c) for c in row)) for row in zip(*columns, strict=True)]

        return evaluate

    def linearization(self, free: tuple[str, ...], language: str = "torch") -> Callable | None:
        """``rows(out, *arguments)`` writing df/db_j into ``out[j]`` (j over ``free``) and f into ``out[-1]``.

        ``arguments`` are the formula's values in the order of `names`; ``out`` has shape
        (len(free) + 1, n): a tensor for ``language="torch"``, an array for ``"numpy"``. None when a
        partial is not known symbolically (a hand-written registered Function) or the language
        cannot express the formula (numpy has no erf).
        """
        key = (free, language)
        if key not in self._linearizations:
            try:
                self._linearizations[key] = self._compile(self._rows(free), language)
            except (CustomgradError, NotImplementedError, TypeError, ValueError):
                self._linearizations[key] = None
        return self._linearizations[key]

    def values(self, language: str = "torch") -> Callable | None:
        """``value(out, *arguments)`` writing f into ``out[0]``; None where `linearization` gives None."""
        return self.linearization((), language)

    def _rows(self, free: tuple[str, ...]) -> list[sympy.Expr]:
        expr = self.parsed.expr
        # Differentiate before inlining registered functions, so their declared partials apply.
        rows = [inline_registered(derive_partial(expr, symbol(name))) for name in free]
        rows.append(inline_registered(expr))
        return rows

    def _compile(self, rows: list[sympy.Expr], language: str) -> Callable:
        filename = f"<customgrad {language} rows of {self.parsed.text}>"
        if language == "numpy":
            source = rows_source("_rows", self.names, rows, NumpyCodePrinter())
            compiled = compile_numpy(source, "_rows", filename)
        else:
            source = rows_source("_rows", self.names, rows)
            compiled = compile_source(source, "_rows", filename)
        compiled.source = source
        return compiled


_MODELS: dict[str, tuple[tuple, FormulaModel]] = {}


def formula_model(text: str) -> FormulaModel:
    """The compiled `FormulaModel` of model formula ``text``, parsed and built once per registry state.

    Redefining a registered function invalidates the entry (the cache holds the registry entries it
    was built against, so their identities cannot be reused).
    """
    entries = tuple(REGISTRY.items())
    cached = _MODELS.get(text)
    if (
        cached is not None
        and len(cached[0]) == len(entries)
        and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(cached[0], entries, strict=True))
    ):
        return cached[1]
    model = FormulaModel(parse_formula(text, what="model"))
    if len(_MODELS) >= _CACHE_SIZE:
        _MODELS.pop(next(iter(_MODELS)))
    _MODELS[text] = (entries, model)
    return model
