"""SymPy expression -> `FunctionSpec`: inputs, outputs, and one partial per input and output.

Partials are derived symbolically, or declared (a custom, surrogate gradient replaces the true
one). Generalised functions that appear in derivatives of step functions (DiracDelta, the
derivative of floor/ceiling) are zero almost everywhere and become 0, as autograd treats them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import sympy

from .errors import DeriveError

SIMPLIFY_MAX_OPS = 40  # simplify small partials only: simplify() is slow on large expressions


@dataclass(frozen=True)
class FunctionSpec:
    """Everything needed to generate an autograd Function.

    Attributes
    ----------
    name : str
        Name of the generated class.
    inputs : tuple of sympy.Symbol
        Inputs, in call order.
    outputs : tuple of sympy.Expr
        Output expressions (one for formulas; several for generated backward Functions).
    partials : tuple of tuple of sympy.Expr
        ``partials[k][i]`` = d outputs[k] / d inputs[i], derived or declared.
    declared : dict of str to sympy.Expr
        Declared custom gradients, input name -> expression (empty when all are derived).
    formula : str
        The formula text the spec came from ("" for generated backward Functions).
    full_shape : tuple of str
        Inputs known to have the outputs' full broadcast shape (a backward's upstream gradients).
    """

    name: str
    inputs: tuple[sympy.Symbol, ...]
    raw_outputs: tuple[sympy.Expr, ...] = field(repr=False)
    declared: dict[str, sympy.Expr] = field(default_factory=dict)
    formula: str = ""
    full_shape: tuple[str, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(symbol.name for symbol in self.inputs)

    @functools.cached_property
    def outputs(self) -> tuple[sympy.Expr, ...]:
        """Outputs with registered formula functions inlined, ready for code generation."""
        return tuple(inline_registered(output) for output in self.raw_outputs)

    @functools.cached_property
    def partials(self) -> tuple[tuple[sympy.Expr, ...], ...]:
        """``partials[k][i]`` = d outputs[k] / d inputs[i]: declared, else derived (computed once, lazily)."""
        return tuple(
            tuple(
                self.declared[variable.name]
                if variable.name in self.declared
                else inline_registered(derive_partial(output, variable))
                for variable in self.inputs
            )
            for output in self.raw_outputs
        )

    @functools.cached_property
    def needs(self) -> tuple[tuple[int, ...], ...]:
        """``needs[i]``: positions of the inputs that input i's partials depend on (what to save)."""
        return tuple(
            tuple(j for j, s in enumerate(self.inputs) if any(s in row[i].free_symbols for row in self.partials))
            for i in range(len(self.inputs))
        )


def zero_almost_everywhere(expr: sympy.Expr) -> sympy.Expr:
    """Replace DiracDelta and derivatives of floor/ceiling (zero almost everywhere) by 0."""
    expr = expr.replace(lambda e: isinstance(e, sympy.DiracDelta), lambda e: sympy.S.Zero)
    return expr.replace(
        lambda e: isinstance(e, sympy.Derivative) and isinstance(e.expr, (sympy.floor, sympy.ceiling)),
        lambda e: sympy.S.Zero,
    )


def derive_partial(expr: sympy.Expr, variable: sympy.Symbol) -> sympy.Expr:
    """d expr / d variable, with a-e-zero terms removed and small results simplified."""
    partial = zero_almost_everywhere(sympy.diff(expr, variable))
    if partial.has(sympy.Derivative):
        raise DeriveError(f"cannot differentiate {expr} with respect to {variable}: SymPy left {partial}")
    if sympy.count_ops(partial) <= SIMPLIFY_MAX_OPS:
        partial = simplify_bounded(partial)
    return partial


def simplify_bounded(expr: sympy.Expr) -> sympy.Expr:
    """The shortest of ``expr``, its common factors pulled out, and its cancelled rational form,
    among those that introduce no number larger than ``expr``'s own.

    Not ``sympy.simplify``: its trigsimp can run for minutes on small expressions (hyperbolic
    functions are factored over the Gaussian rationals); these passes are polynomial-time.
    """
    candidates = [expr, sympy.factor_terms(expr), sympy.factor_terms(sympy.cancel(expr))]
    # Rewrites that clear denominators (0.044715 x -> (8943 x + 200000)/200000) overflow float16.
    largest = _largest_number(expr)
    candidates = [c for c in candidates if _largest_number(c) <= largest]
    return min(candidates, key=sympy.count_ops)  # ties keep the earliest, least rewritten form


def _largest_number(expr: sympy.Expr) -> float:
    return max((abs(float(number)) for number in expr.atoms(sympy.Number) if number.is_finite), default=0.0)


def inline_registered(expr: sympy.Expr) -> sympy.Expr:
    """Replace calls of registered formula functions by their expressions (hand-written ones stay)."""

    def is_inlinable(e) -> bool:
        entry = getattr(type(e), "_customgrad_entry", None)
        return entry is not None and entry.expr is not None

    def inline(e):
        entry = type(e)._customgrad_entry
        return inline_registered(entry.expr.xreplace(dict(zip(entry.input_symbols, e.args, strict=True))))

    return expr.replace(is_inlinable, inline)


def derive_spec(
    name: str,
    inputs: tuple[sympy.Symbol, ...],
    outputs: tuple[sympy.Expr, ...],
    declared: dict[str, sympy.Expr] | None = None,
    formula: str = "",
    full_shape: tuple[str, ...] = (),
) -> FunctionSpec:
    """The spec of ``outputs`` over ``inputs``; partials are derived on first use, declared ones kept.

    Declared gradients apply to single-output specs (formulas); registered functions called by the
    outputs contribute their own partials (derived or declared) through the chain rule.
    """
    return FunctionSpec(
        name=name,
        inputs=tuple(inputs),
        raw_outputs=tuple(outputs),
        declared=dict(declared or {}),
        formula=formula,
        full_shape=tuple(full_shape),
    )


def backward_spec(spec: FunctionSpec, needed: tuple[int, ...], level: int) -> tuple[FunctionSpec, list[int]]:
    """The spec of the backward for the ``needed`` inputs: sum_k g_k * d out_k / d x_i for each needed i.

    One spec per needs-input-grad mask, so one kernel computes every requested gradient in one pass.
    Its inputs are the inputs those partials use (positions returned) followed by one upstream
    gradient per output, named ``_g<level>_<k>`` (fresh per level: a nested backward takes earlier
    gradients as inputs).
    """
    grads = tuple(sympy.Symbol(f"_g{level}_{k}", real=True) for k in range(len(spec.outputs)))
    outputs = tuple(sympy.Add(*[g * row[i] for g, row in zip(grads, spec.partials, strict=True)]) for i in needed)
    used = sorted(set().union(*(spec.needs[i] for i in needed)))
    inputs = tuple(spec.inputs[j] for j in used) + grads
    backward = derive_spec(f"{spec.name}_backward", inputs, outputs, full_shape=tuple(g.name for g in grads))
    return backward, used


def jvp_spec(spec: FunctionSpec) -> FunctionSpec:
    """The spec of forward mode: sum_i d out_k / d x_i * t_i over the inputs then one tangent per input."""
    tangents = tuple(sympy.Symbol(f"_tangent{i}", real=True) for i in range(len(spec.inputs)))  # not _t*: CSE
    outputs = tuple(sympy.Add(*[t * row[i] for i, t in enumerate(tangents)]) for row in spec.partials)
    return derive_spec(f"{spec.name}_jvp", spec.inputs + tangents, outputs)
