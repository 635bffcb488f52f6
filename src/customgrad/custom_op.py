"""A generated Function as a ``torch.library`` custom operator: ``F.as_custom_op("namespace::name")``.

Two operators: ``namespace::name`` (the forward kernel of the Function's backend) and
``namespace::name_backward`` (every input's gradient in one pass, full broadcast shape), each with a
fake (meta) implementation, so ``torch.compile(fullgraph=True)`` and ``torch.export`` see them as
opaque nodes of known shape and dtype; ``register_autograd`` wires the first to the second and
reduces the gradients to the inputs' shapes. Inputs are tensors (numbers: pass ``torch.tensor(v)``).
"""

from __future__ import annotations

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
    if (
        not isinstance(qualified_name, str)
        or qualified_name.count("::") != 1
        or not all(part.isidentifier() for part in qualified_name.split("::"))
    ):
        raise UsageError(f"as_custom_op needs a name like 'mylib::p2', got {qualified_name!r}")
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
