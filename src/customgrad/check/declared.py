"""Declared (custom) gradients: the gradient a Function is *meant* to have when it is not the true one.

Straight-through estimators, gradient reversal, gradient scaling and the blog's surrogate gradient
all return on purpose something other than the derivative. The battery then compares the backward
with the declared gradient instead of finite differences. A declaration is one of

- a dict ``{input name: partial}``, where a partial is a formula text (``"2*x"``, using any of the
  forward's input names), a number, or a callable of the forward's inputs; the expected gradient of
  input ``x`` is ``sum over outputs of grad_output * partial``, reduced to ``x``'s shape. Inputs not
  named keep the true derivative (finite differences).
- a callable ``vjp(inputs, grad_outputs) -> one gradient (or None) per input``, for anything else.

Functions made by `customgrad.function(..., grads=...)` carry their declaration
(``.declared_grads``) and need none.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ..errors import UsageError

#: vjp(inputs, grad_outputs) -> one gradient per input (None where there is none).
VectorJacobianProduct = Callable[[Sequence[Any], Sequence[torch.Tensor]], Sequence[Any]]


class Subject(Protocol):
    """What a declared gradient is resolved against: the checked Function (`subject.Subject` is one)."""

    name: str
    custom_gradient: Any
    function_class: Any
    parameter_names: tuple[str, ...]

    @property
    def differentiable_positions(self) -> Sequence[int]: ...


def resolve_declared_gradient(subject: Subject) -> tuple[VectorJacobianProduct | None, dict[str, str]]:
    """The declared vector-Jacobian product of ``subject`` and a text of it per input, or ``(None, {})``."""
    declaration = subject.custom_gradient
    if declaration is None:
        declaration = getattr(subject.function_class, "declared_grads", None) or None
    if declaration is None:
        return None, {}
    if callable(declaration) and not isinstance(declaration, dict):
        _check_takes_two_arguments(declaration)
        return _checked_vjp(declaration, subject), {"(all)": getattr(declaration, "__name__", "callable")}
    if not isinstance(declaration, dict):
        raise UsageError(
            f"custom_gradient must be a dict {{input name: formula}} or a callable "
            f"vjp(inputs, grad_outputs), "
            f"got {type(declaration).__name__}"
        )
    names = subject.parameter_names
    partials: dict[int, Callable[..., Any]] = {}
    texts: dict[str, str] = {}
    for name, partial in declaration.items():
        if name not in names:
            raise UsageError(
                f"custom_gradient names input {name!r}, but {subject.name}'s inputs are "
                f"{', '.join(names)}: use one of these names"
            )
        position = names.index(name)
        if position not in subject.differentiable_positions:
            raise UsageError(f"custom_gradient for {name!r}: that input is not a floating-point tensor")
        partials[position] = _partial_callable(partial, names, name)
        texts[name] = (
            partial
            if isinstance(partial, str)
            else (repr(partial) if isinstance(partial, (int, float)) else "a callable")
        )

    def vjp(inputs: Sequence[Any], grad_outputs: Sequence[torch.Tensor]) -> list[Any]:
        result: list[Any] = [None] * len(inputs)
        for position, partial in partials.items():
            with torch.no_grad():
                local = partial(*inputs)
                total = sum(torch.as_tensor(g, dtype=torch.float64) * local for g in grad_outputs)
            result[position] = total
        return result

    vjp.declared_positions = set(partials)  # type: ignore[attr-defined]
    return vjp, texts


def _check_takes_two_arguments(function: Callable) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None)
    except TypeError:
        name = getattr(function, "__name__", "callable")
        raise UsageError(
            f"custom_gradient callable {name}{signature} must take two arguments, vjp(inputs, grad_outputs), "
            "and return one gradient per input"
        ) from None


def _checked_vjp(function: Callable, subject: Subject) -> VectorJacobianProduct:
    def vjp(inputs: Sequence[Any], grad_outputs: Sequence[torch.Tensor]) -> list[Any]:
        with torch.no_grad():
            grads = function(tuple(inputs), tuple(grad_outputs))
        grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
        if len(grads) != len(inputs):
            raise UsageError(
                f"custom_gradient callable returned {len(grads)} gradients for {len(inputs)} inputs of "
                f"{subject.name}: return one per input (None for non-tensors)"
            )
        return grads

    vjp.declared_positions = set(subject.differentiable_positions)  # type: ignore[attr-defined]
    return vjp


def _partial_callable(partial: Any, names: Sequence[str], input_name: str) -> Callable[..., Any]:
    if callable(partial):
        return partial
    if isinstance(partial, (int, float)) and not isinstance(partial, bool):
        value = float(partial)
        if not math.isfinite(value):
            raise UsageError(f"custom_gradient[{input_name!r}] is {value}: give a finite number or a formula")
        return lambda *inputs: torch.tensor(value, dtype=torch.float64)
    if isinstance(partial, str):
        return _formula_callable(partial, names, input_name)
    raise UsageError(
        f"custom_gradient[{input_name!r}] must be a formula text such as '2*x', a number or a callable, "
        f"got {type(partial).__name__}"
    )


def _formula_callable(text: str, names: Sequence[str], input_name: str) -> Callable[..., Any]:
    try:
        from ..codegen.torch import torch_callable
        from ..formula import parse_formula
    except ImportError as error:  # pragma: no cover - until customgrad.formula is available
        raise UsageError(
            f"custom_gradient[{input_name!r}] = {text!r} needs customgrad's formula parser ({error}); "
            "pass a callable of the inputs instead, e.g. lambda x: 2 * x"
        ) from None
    formula = parse_formula(text, what=f"custom gradient for {input_name!r}")
    unknown = [name for name in formula.names if name not in names]
    if unknown:
        raise UsageError(
            f"custom gradient {text!r} for {input_name!r} uses {', '.join(map(repr, unknown))}, which "
            f"is not an input of the Function (inputs: {', '.join(names)})"
        )
    evaluate = torch_callable(formula.expr, tuple(names))

    def partial(*inputs: Any) -> torch.Tensor:
        values = [v.to(torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for v in inputs]
        return torch.as_tensor(evaluate(*values), dtype=torch.float64)

    return partial
