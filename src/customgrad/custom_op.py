"""A generated Function as a ``torch.library`` custom operator: ``F.as_custom_op("namespace::name")``; and a
`customgrad.custom_gradient` function as one (`custom_gradient_op`: its forward, fake and hand-written backward).

Two operators: ``namespace::name`` (the forward kernel of the Function's backend) and
``namespace::name_backward`` (every input's gradient in one pass, full broadcast shape), each with a
fake (meta) implementation, so ``torch.compile(fullgraph=True)`` and ``torch.export`` see them as
opaque nodes of known shape and dtype; ``register_autograd`` wires the first to the second and
reduces the gradients to the inputs' shapes. Inputs are tensors (numbers: pass ``torch.tensor(v)``).
"""

from __future__ import annotations

import inspect
import typing

import torch

from .errors import UsageError
from .launcher import promoted_dtype, reduce_gradient


def _typed(function, names: list[str], returns: str):
    """``function(*args)`` behind a signature torch.library can read: ``(name0: Tensor, ...) -> returns``."""
    parameters = ", ".join(f"{name}: torch.Tensor" for name in names)
    source = f"def operator({parameters}) -> {returns}:\n    return _implementation({', '.join(names)})\n"
    namespace = {"torch": torch, "_implementation": function, "list": list}
    exec(compile(source, "<customgrad custom op>", "exec"), namespace)  # noqa: S102 - names are identifiers
    return namespace["operator"]


def _fresh(tensor: torch.Tensor, inputs) -> torch.Tensor:
    """Custom operators must not return an input itself."""
    return tensor.clone() if any(tensor is t for t in inputs) else tensor


def as_custom_op(cls, qualified_name: str):
    """Register ``cls`` (a generated single-output Function) as the custom operator ``qualified_name``.

    Parameters
    ----------
    cls : type[torch.autograd.Function]
        A Function made by `customgrad.function`.
    qualified_name : str
        ``"namespace::name"``; the backward is registered as ``"namespace::name_backward"``.

    Returns
    -------
    torch._library.custom_ops.CustomOpDef
        Callable as ``op(*tensors)``, differentiable, traceable with ``fullgraph=True``.
    """
    _check_qualified_name(qualified_name)
    if len(cls.spec.outputs) != 1:
        raise UsageError(f"{cls.__name__}: as_custom_op handles single-output Functions")
    names = list(cls.input_names)
    positions = tuple(range(len(names)))
    backward_cls, used = cls._backward_for(positions)

    def forward(*inputs):
        return _fresh(cls.forward(*inputs), inputs)

    def forward_fake(*inputs):
        shape = torch.broadcast_shapes(*(t.shape for t in inputs))
        return inputs[0].new_empty(shape, dtype=promoted_dtype(inputs))

    def backward_kernel(*inputs_and_grad):
        *inputs, grad = inputs_and_grad
        gradients = backward_cls.forward(*(inputs[j] for j in used), grad)
        gradients = gradients if isinstance(gradients, tuple) else (gradients,)
        return [_fresh(g.contiguous(), inputs_and_grad) for g in gradients]

    def backward_fake(*inputs_and_grad):
        *inputs, grad = inputs_and_grad
        shape = torch.broadcast_shapes(*(t.shape for t in inputs))
        return [grad.new_empty(shape, dtype=promoted_dtype([*inputs, grad])) for _ in inputs]

    op = torch.library.custom_op(qualified_name, mutates_args=())(_typed(forward, names, "torch.Tensor"))
    op.register_fake(_typed(forward_fake, names, "torch.Tensor"))
    backward_op = torch.library.custom_op(f"{qualified_name}_backward", mutates_args=())(
        _typed(backward_kernel, [*names, "_grad"], "list[torch.Tensor]")
    )
    backward_op.register_fake(_typed(backward_fake, [*names, "_grad"], "list[torch.Tensor]"))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        inputs = ctx.saved_tensors
        gradients = backward_op(*inputs, grad)
        return tuple(
            reduce_gradient(g, t.shape, t.dtype) if needed else None
            for g, t, needed in zip(gradients, inputs, ctx.needs_input_grad, strict=True)
        )

    op.register_autograd(backward, setup_context=setup_context)
    return op


def custom_gradient_op(function, qualified_name: str, *, fake=None, outputs: int | None = None):
    """Register a `customgrad.custom_gradient` function as the custom operator ``qualified_name``.

    Parameters
    ----------
    function : CustomGradient
        A decorated function with its backward. Inputs without an annotation are tensors; annotate the others
        on the forward (``n: int``, ``scale: float``).
    qualified_name : str
        ``"namespace::name"``.
    fake : callable, optional
        The fake (meta) implementation: outputs of the right shapes and dtypes from the inputs' (default: the
        forward itself, which works when it is written in torch operations).
    outputs : int, optional
        How many tensors the forward returns (default: read from a ``-> tuple[Tensor, ...]`` annotation, else 1);
        declared residuals come after them in the operator's results.

    Returns
    -------
    torch._library.custom_ops.CustomOpDef
        ``op(*inputs)``, differentiable through the hand-written backward, traceable with ``fullgraph=True``.
    """
    _check_qualified_name(qualified_name)
    rules = function.traced_function.custom_gradient_rules
    names = list(rules.signature.inputs)
    parameters = inspect.signature(rules.forward_function, eval_str=True)
    types = [_schema_type(p.annotation, p.default) for p in parameters.parameters.values()]
    defaults = _trailing_defaults(list(parameters.parameters.values()))
    count = (outputs if outputs is not None else _output_count(parameters.return_annotation)) + rules.residual_count
    returns = "torch.Tensor" if count == 1 else f"tuple[{', '.join(['torch.Tensor'] * count)}]"

    def forward(*inputs):
        result = rules.forward_function(*inputs)
        if isinstance(result, (tuple, list)):
            return tuple(_fresh(r, inputs) for r in result)
        return _fresh(result, inputs)

    op = torch.library.custom_op(qualified_name, mutates_args=())(_annotated(forward, names, types, returns, defaults))
    op.register_fake(_annotated(fake or rules.forward_function, names, types, returns, defaults))

    def backward(ctx, *grads):
        return rules.backward_traced(ctx, *grads)

    op.register_autograd(backward, setup_context=rules.setup_context)
    return op


def _check_qualified_name(qualified_name) -> None:
    if (
        not isinstance(qualified_name, str)
        or qualified_name.count("::") != 1
        or not all(part.isidentifier() for part in qualified_name.split("::"))
    ):
        raise UsageError(f"as_custom_op needs a name like 'mylib::p2', got {qualified_name!r}")


#: Default values a torch.library schema can carry.
_SCHEMA_DEFAULTS = (int, float, bool, str)


def _schema_type(annotation, default=inspect.Parameter.empty) -> str:
    """The torch.library type of an input annotated ``annotation`` (none: the type of a number or string
    default, ``power=2`` an int; else a tensor)."""
    if annotation is inspect.Parameter.empty and type(default) in _SCHEMA_DEFAULTS:
        return type(default).__name__
    if annotation is inspect.Parameter.empty or annotation is torch.Tensor:
        return "torch.Tensor"
    if annotation in (int, float, bool, str):
        return annotation.__name__
    raise UsageError(
        f"as_custom_op: an input annotated {annotation!r} has no torch.library type: annotate inputs as "
        "torch.Tensor, int, float, bool or str (or leave tensors unannotated)"
    )


def _output_count(annotation) -> int:
    arguments = typing.get_args(annotation) if typing.get_origin(annotation) is tuple else ()
    return len(arguments) if arguments and Ellipsis not in arguments else 1


def _trailing_defaults(parameters: list[inspect.Parameter]) -> dict[int, object]:
    """Position -> default of the forward's last parameters whose defaults a schema can carry (a number or a
    string): the operator takes them as the forward does (``op(x, k)`` for ``def f(x, k, power: int = 2)``)."""
    defaults: dict[int, object] = {}
    for position in range(len(parameters) - 1, -1, -1):
        default = parameters[position].default
        if type(default) not in _SCHEMA_DEFAULTS:
            break
        defaults[position] = default
    return defaults


def _annotated(function, names: list[str], types: list[str], returns: str, defaults: dict | None = None):
    """``function(*args)`` behind the signature ``(name0: type0, ...) -> returns`` torch.library reads,
    ``defaults`` (position -> value) given to the last parameters."""
    defaults = defaults or {}
    parameters = ", ".join(
        f"{name}: {kind}" + (f" = _defaults[{k}]" if k in defaults else "")
        for k, (name, kind) in enumerate(zip(names, types, strict=True))
    )
    source = f"def operator({parameters}) -> {returns}:\n    return _implementation({', '.join(names)})\n"
    namespace = {"torch": torch, "_implementation": function, "tuple": tuple, "_defaults": defaults}
    exec(compile(source, "<customgrad custom op>", "exec"), namespace)  # noqa: S102 - names are identifiers
    return namespace["operator"]
