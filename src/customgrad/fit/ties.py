"""Tied parameters: ``params={"a": 1.0, "b": {"expr": "2*a"}}`` makes b = 2a everywhere.

Each expression is read by the safe formula parser and may name other parameters only (tied ones
too, as long as there is no cycle). Tied parameters are not fitted: a formula model gets the
expressions substituted into its text (so its Jacobian is generated for the free parameters), a
callable model gets them computed before each call. A tied value's standard error is propagated from
the covariance of the free parameters: se(b)^2 = g^T C g, g = d expr / d theta.
"""

from __future__ import annotations

import ast
import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UsageError
from .formula_model import formula_model
from .model import build_function


@dataclass(frozen=True)
class Ties:
    """Tied parameters: name -> expression as given, and resolved over untied parameters only."""

    given: dict[str, str] = field(default_factory=dict)
    resolved: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.given)

    def build_function(self, model, data_names: tuple[str, ...], names: tuple[str, ...], x_is_dict: bool):
        """`model.build_function` for the untied ``names``, with the ties substituted or computed."""
        if not self:
            return build_function(model, data_names, names, x_is_dict)
        if isinstance(model, str):
            return build_function(self.substitute(model), data_names, names, x_is_dict)
        function, text, data_names = build_function(model, data_names, names + tuple(self.given), x_is_dict)
        return self._computing(function), text, data_names

    def substitute(self, model: str) -> str:
        """The model text with every tied name replaced by its resolved expression, in parentheses."""
        from ..formula import parse_formula, recursion_limit  # here: fits without ties import no SymPy

        parse_formula(model, what="model")  # the usual errors for a bad model, before rewriting it
        with recursion_limit():  # both walk the tree recursively: a flat 1,000-term sum is 1,000 deep
            return _substituted(model, self.resolved)

    def _computing(self, function: Callable) -> Callable:
        return _Tied(function, self.resolved)

    def values_and_errors(
        self, values: Mapping[str, float], free: tuple[str, ...], covariance: np.ndarray
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Each tied value, and its standard error sqrt(g^T C g) with g = d expr / d free (autograd)."""
        tied, errors = {}, {}
        for name, text in self.resolved.items():
            expression = formula_model(text)
            leaves = {n: torch.tensor(float(values[n]), dtype=torch.float64, requires_grad=n in free) for n in values}
            with torch.enable_grad():
                value = expression.evaluate(*(leaves[n] for n in expression.names))
                if not isinstance(value, torch.Tensor):
                    value = torch.as_tensor(value, dtype=torch.float64)
                wanted = [leaves[n] for n in free]
                grads = torch.autograd.grad(value, wanted, allow_unused=True) if value.requires_grad else []
            gradient = np.array([0.0 if g is None else float(g) for g in grads] or [0.0] * len(free))
            tied[name] = float(value.detach())
            variance = float(gradient @ covariance @ gradient) if len(free) else 0.0
            errors[name] = math.sqrt(variance) if variance >= 0 else math.nan
        return tied, errors


class _Tied:
    """``function(data, values)`` with the tied values computed from the free ones first (a callable
    model's ties); pickles as the function and the expressions' text."""

    def __init__(self, function: Callable, resolved: dict[str, str]):
        self.function, self.resolved = function, resolved
        self.expressions = {name: formula_model(text) for name, text in resolved.items()}

    def __call__(self, data, values):
        full = dict(values)
        for name, expression in self.expressions.items():
            full[name] = expression.evaluate(*(values[n] for n in expression.names))
        return self.function(data, full)

    def __reduce__(self):
        return _Tied, (self.function, self.resolved)


class _Substitute(ast.NodeTransformer):
    """Replace names by expression trees, leaving called function names alone."""

    def __init__(self, trees: dict[str, ast.AST]):
        self.trees = trees

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node.args = [self.visit(argument) for argument in node.args]
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return copy.deepcopy(self.trees[node.id]) if node.id in self.trees else node


def split_ties(params, bounds: Mapping | None = None) -> tuple[object, Ties]:
    """``params`` without its ``{"expr": ...}`` entries, and those entries as checked, resolved `Ties`.

    Raises `UsageError` naming the parameter when an expression names an unknown parameter, itself,
    or a cycle of tied parameters.
    """
    if not isinstance(params, Mapping):
        return params, Ties()  # parameter_specs reports it
    given = {}
    for name, spec in params.items():
        if isinstance(spec, Mapping) and "expr" in spec:
            extra = set(spec) - {"expr"}
            if extra:
                raise UsageError(
                    f"parameter {name!r} is tied by 'expr' and also has {sorted(extra)}: a tied parameter "
                    "takes its value from the expression; drop the other keys"
                )
            if bounds and name in bounds:
                raise UsageError(f"parameter {name!r} is tied by 'expr': it cannot have bounds; bound the others")
            given[name] = spec["expr"]
    if not given:
        return params, Ties()
    names_of = {name: _names(name, text, params) for name, text in given.items()}
    resolved: dict[str, str] = {}
    for name in given:
        _resolve(name, given, names_of, resolved, [])
    untied = {name: spec for name, spec in params.items() if name not in given}
    return untied, Ties(given=dict(given), resolved=resolved)


def _names(name: str, text, params: Mapping) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise UsageError(f"parameter {name!r}: 'expr' must be formula text such as \"2*a\", got {text!r}")
    from ..formula import parse_formula

    names = parse_formula(text, what=f"expr of parameter {name!r}").names
    if name in names:
        raise UsageError(
            f"expr of parameter {name!r} ({text!r}) refers to {name!r} itself: a tied parameter must be "
            "given by the others"
        )
    if not names:
        raise UsageError(
            f"expr of parameter {name!r} ({text!r}) names no parameter, so it is a constant: give it as a fixed "
            f"value instead, e.g. params={{{name!r}: {{'value': {text}, 'fixed': True}}}}"
        )
    unknown = [n for n in names if n not in params]
    if unknown:
        raise UsageError(
            f"expr of parameter {name!r} ({text!r}) names {', '.join(map(repr, unknown))}, which is not a "
            f"parameter (parameters: {', '.join(params)}); add it to params or fix the expression"
        )
    return names


def _resolve(name: str, given: dict, names_of: dict, resolved: dict, path: list[str]) -> str:
    """``given[name]`` with tied names replaced by their resolved expressions (depth first, cycles named)."""
    if name in resolved:
        return resolved[name]
    if name in path:
        cycle = " -> ".join([*path[path.index(name) :], name])
        raise UsageError(f"tied parameters form a cycle: {cycle}; give one of them a value instead of an expr")
    inner = {n: _resolve(n, given, names_of, resolved, [*path, name]) for n in names_of[name] if n in given}
    resolved[name] = _substituted(given[name], inner)
    return resolved[name]


def _substituted(text: str, expressions: Mapping[str, str]) -> str:
    """Formula ``text`` with each name of ``expressions`` replaced by its expression (in parentheses)."""
    trees = {name: ast.parse(expression, mode="eval").body for name, expression in expressions.items()}
    return ast.unparse(_Substitute(trees).visit(ast.parse(text.strip(), mode="eval")))
