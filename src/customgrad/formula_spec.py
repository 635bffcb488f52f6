"""Formula text (with declared gradients) -> a validated `FunctionSpec`: what `function` builds and
``customgrad derive`` prints. SymPy only: no torch, no code generation.
"""

from __future__ import annotations

import itertools
import keyword
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import sympy

from .derive import FunctionSpec, derive_spec
from .errors import FormulaError, UsageError
from .formula import parse_formula, shorten, symbol
from .registry import RegisteredFunction, register

_counter = itertools.count()


def _gradient_text(input_name: str, value) -> str:
    """A declared gradient as formula text: strings as they are, finite real numbers (``1``, ``0.5``) too."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return repr(float(value)) if not isinstance(value, numbers.Integral) else str(int(value))
    raise UsageError(
        f"grads[{input_name!r}] must be a formula such as '2*{input_name}' or a finite number, "
        f"got {type(value).__name__} {value!r}"
    )


def next_class_name() -> str:
    """A fresh default class name, ``Formula<n>``."""
    return f"Formula{next(_counter)}"


def formula_spec(
    formula: str,
    *,
    inputs: Sequence[str] | None = None,
    grads: Mapping[str, str] | None = None,
    class_name: str | None = None,
    what: str = "formula",
) -> FunctionSpec:
    """The `FunctionSpec` of f(inputs) = formula with declared ``grads``, validated; nothing generated yet.

    Parameters as for `function`; ``class_name`` names the spec (default ``Formula<n>``); ``what``
    names the formula in error messages (a fit's ``"model"``). Partials are derived when first used.
    """
    parsed = parse_formula(formula, what=what)
    if inputs is None:
        input_names = list(parsed.names)
    else:
        if isinstance(inputs, str) or not isinstance(inputs, Iterable):
            raise UsageError(f"inputs must be a list of names such as ['x', 'y'], got {inputs!r}")
        input_names = list(inputs)
        if not all(isinstance(n, str) for n in input_names):
            raise UsageError(f"inputs must be a list of names such as ['x', 'y'], got {input_names!r}")
        duplicates = sorted({n for n in input_names if input_names.count(n) > 1})
        if duplicates:
            raise UsageError(f"inputs {input_names} name {', '.join(duplicates)} more than once")
        missing = [n for n in parsed.names if n not in input_names]
        if missing:
            raise FormulaError(
                f"formula {shorten(formula)!r} uses {', '.join(map(repr, missing))}, which "
                f"{'is' if len(missing) == 1 else 'are'} not among inputs {input_names}: "
                "add them to inputs"
            )
        for n in input_names:
            if not n.isidentifier() or n.startswith("_") or keyword.iskeyword(n):
                raise UsageError(f"input name {n!r} is not a valid name: use letters, digits and '_'")
    if not input_names:
        raise FormulaError(f'{what} {shorten(formula)!r} has no inputs: a function needs at least one, as in "2*x"')
    if grads is not None and not isinstance(grads, Mapping):
        raise UsageError(
            f"grads must be a dict {{input name: formula}} such as {{'x': '2*x'}}, got {type(grads).__name__} {grads!r}"
        )
    declared: dict[str, sympy.Expr] = {}
    for input_name, text in (grads or {}).items():
        if input_name not in input_names:
            raise UsageError(
                f"grads names {input_name!r}, which is not an input of {shorten(formula)!r} "
                f"(inputs: {', '.join(input_names)})"
            )
        parsed_gradient = parse_formula(_gradient_text(input_name, text), what=f"gradient for {input_name!r}")
        unknown = [n for n in parsed_gradient.names if n not in input_names]
        if unknown:
            raise FormulaError(
                f"gradient for {input_name!r} ({text!r}) uses {', '.join(map(repr, unknown))}, "
                f"which {'is' if len(unknown) == 1 else 'are'} not an input "
                f"(inputs: {', '.join(input_names)})"
            )
        declared[input_name] = parsed_gradient.expr
    symbols = tuple(symbol(n) for n in input_names)
    return derive_spec(class_name or next_class_name(), symbols, (parsed.expr,), declared, formula=parsed.text)


def register_spec(name: str, spec: FunctionSpec, function=None, *, generate=None) -> RegisteredFunction:
    """Register the formula function of ``spec`` as ``name``: its autograd ``function``, or None and
    ``generate`` to make it on first call. Registered with the un-inlined expression, so formulas
    calling it differentiate through its own (derived or declared) partials."""
    return register(
        name,
        function,
        partials=spec.partials[0],
        input_symbols=spec.inputs,
        expr=spec.raw_outputs[0],
        summary=f"{name}({', '.join(spec.input_names)}) = {spec.formula}",
        generate=generate,
    )
