"""What a hand-written backward or jvp receives, read from its parameter names (`customgrad.custom_gradient`).

A backward's parameters are matched by name: a forward parameter's name receives that input, ``output``
the forward's output (a tuple when it returns several), a declared residual's name that residual,
``needs_input_grad`` one bool per input; every other positional parameter receives one upstream gradient,
in output order (``*grads`` takes them all). A jvp rule reads the same names, and its other parameters are
the tangents, one per differentiable (not ``nondiff_argnums``) input.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .errors import GradientError, UsageError

#: The names with a meaning of their own in a backward or jvp rule.
OUTPUT, NEEDS = "output", "needs_input_grad"


def function_name(function: Callable) -> str:
    """The name a message calls a user's function by: its qualified name."""
    return getattr(function, "__qualname__", None) or getattr(function, "__name__", repr(function))


def _parameters(function: Callable, role: str, owner: str) -> list[inspect.Parameter]:
    if not callable(function):
        raise UsageError(f"{role} of {owner} must be a function, got {type(function).__name__} {function!r}")
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        raise UsageError(f"{role} of {owner} has no readable signature: decorate a Python function (def)") from None
    for parameter in parameters:
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.VAR_KEYWORD):
            raise UsageError(
                f"{role} {function_name(function)} of {owner} has the keyword-only parameter {parameter.name!r}: "
                "every parameter is passed by position; make it a positional parameter"
            )
    return parameters


class ForwardSignature(NamedTuple):
    """The decorated forward: its input names, which are non-differentiable, its declared residuals.

    Named tuples of plain values (this one, `RuleSignature`), so that Dynamo can trace code reading them.
    """

    name: str
    inputs: tuple[str, ...]
    nondiff: tuple[int, ...]
    residuals: tuple[str, ...]

    @property
    def differentiable(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.inputs)) if i not in self.nondiff)


def forward_signature(function: Callable, nondiff_argnums: Sequence, residuals: Sequence[str]) -> ForwardSignature:
    """Read the forward's inputs; check ``nondiff_argnums`` (positions or names) and ``residuals`` against them."""
    name = function_name(function)
    parameters = _parameters(function, "forward", name)
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        raise UsageError(
            f"custom_gradient needs named inputs, but {name} takes *{parameters[-1].name}: "
            "list the inputs as parameters (def f(x, y): ...)"
        )
    inputs = tuple(p.name for p in parameters)
    reserved = [name for name in inputs if name in (OUTPUT, NEEDS)]
    if reserved:
        raise UsageError(
            f"forward {name} has an input named {reserved[0]!r}, which is what its backward receives the "
            f"{'output' if reserved[0] == OUTPUT else 'needs_input_grad flags'} by: rename the input"
        )
    nondiff = tuple(sorted({_position(item, inputs, name) for item in _as_tuple(nondiff_argnums, "nondiff_argnums")}))
    residuals = _as_tuple(residuals, "residuals")
    for residual in residuals:
        if not isinstance(residual, str) or not residual.isidentifier():
            raise UsageError(f"residuals of {name} must be names such as ('mask',), got {residual!r}")
        if residual in inputs or residual in (OUTPUT, NEEDS):
            raise UsageError(
                f"residual {residual!r} of {name} has the name of "
                f"{'an input' if residual in inputs else 'a reserved backward argument'}: choose another name"
            )
    if len(set(residuals)) != len(residuals):
        raise UsageError(f"residuals of {name} name one value twice: {residuals}")
    return ForwardSignature(name, inputs, nondiff, tuple(residuals))


def _as_tuple(value, what: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise UsageError(f"{what} must be a sequence, got {type(value).__name__} {value!r}") from None


def _position(item, inputs: tuple[str, ...], name: str) -> int:
    if isinstance(item, str) and item in inputs:
        return inputs.index(item)
    if isinstance(item, int) and not isinstance(item, bool) and -len(inputs) <= item < len(inputs):
        return item % len(inputs)
    raise UsageError(
        f"nondiff_argnums of {name}: {item!r} is not one of its inputs ({', '.join(inputs)}): "
        f"give positions 0..{len(inputs) - 1} or names"
    )


class RuleSignature(NamedTuple):
    """Where each positional parameter of a backward (or jvp) rule comes from.

    ``sources`` holds one ``(kind, index)`` per parameter, kind in {"input", "residual", "output", "needs",
    "slot"}; slots are the upstream gradients (backward) or tangents (jvp), numbered in order;
    ``rest`` says a ``*args`` parameter takes the remaining slots.
    """

    name: str
    parameters: tuple[str, ...]
    sources: tuple[tuple[str, int], ...]
    slot_names: tuple[str, ...]
    rest: str | None

    def uses(self, kind: str) -> list[int]:
        return [index for source, index in self.sources if source == kind]


def rule_signature(function: Callable, forward: ForwardSignature, role: str) -> RuleSignature:
    """Match the parameters of ``function`` (the backward or the jvp rule of ``forward``) by name."""
    parameters = _parameters(function, role, forward.name)
    sources, slots, rest = [], [], None
    for parameter in parameters:
        name = parameter.name
        if parameter.kind == parameter.VAR_POSITIONAL:
            rest = name
        elif name in forward.inputs:
            sources.append(("input", forward.inputs.index(name)))
        elif name in forward.residuals:
            sources.append(("residual", forward.residuals.index(name)))
        elif name == OUTPUT:
            sources.append(("output", 0))
        elif name == NEEDS and role == "backward":
            sources.append(("needs", 0))
        elif name == "ctx":
            raise UsageError(
                f"{role} {function_name(function)} of {forward.name} takes 'ctx', but a custom_gradient {role} "
                f"receives values by name, not a ctx: name the inputs it needs ({', '.join(forward.inputs)}), "
                f"'output', declared residuals, then the {'upstream gradients' if role == 'backward' else 'tangents'}"
            )
        else:
            sources.append(("slot", len(slots)))
            slots.append(name)
    return RuleSignature(function_name(function), tuple(p.name for p in parameters), tuple(sources), tuple(slots), rest)


def check_slot_count(rule: RuleSignature, count: int, forward: ForwardSignature, role: str, what: str) -> None:
    """A `GradientError` unless ``rule`` takes ``count`` slots (or ``*args`` for the rest)."""
    taken = len(rule.slot_names)
    if taken == count or (rule.rest is not None and taken <= count):
        return
    names = ", ".join(rule.slot_names) or "none"
    raise GradientError(
        f"{role} {rule.name} of {forward.name} takes {taken} {what} ({names}), but it needs {count}: "
        f"give it one parameter per {what[:-1] if what.endswith('s') else what} after the named values "
        f"(parameters named like an input ({', '.join(forward.inputs)}), 'output' or a residual receive those "
        f"values instead), or *{what.split()[-1]} for all"
    )
