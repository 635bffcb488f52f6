"""Function transforms and compilation: torch.func (vmap, grad, jacrev) and torch.compile(fullgraph=True)."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch

from .finite_differences import NOISE_FACTOR, STEP, CentralDifferences, compare_gradient
from .inputs import checked_point, finite_point, random_like
from .outcome import failed, passed, skipped, warning
from .report import CheckResult
from .subject import (
    Subject,
    describe_error,
    flatten_outputs,
    has_setup_context,
    make_generator,
    random_upstream,
    sum_to_shape,
)

HOW_TO_SETUP_CONTEXT = (
    "to support torch.func, split forward: forward(x, ...) without ctx computes the output, and "
    "@staticmethod setup_context(ctx, inputs, output) saves what backward needs (x, = inputs; "
    "ctx.save_for_backward(x)); add generate_vmap_rule = True (or a vmap staticmethod) for vmap/jacrev"
)
HOW_TO_VMAP = (
    "for vmap and jacrev set generate_vmap_rule = True on the class (when forward and backward use "
    "only torch operations) or write a vmap staticmethod"
)

RANDOM_VMAP = (
    "torch.vmap refuses it with its default randomness='error'; call vmap(..., randomness='different') "
    "(an independent draw per batch element) or randomness='same'; with randomness='same' it is compared "
    "with a loop"
)

BATCH = 3
#: Jacobians with more rows than this are compared at `SAMPLED_JACOBIAN_ROWS` rows only.
FULL_JACOBIAN_ROWS = 64
SAMPLED_JACOBIAN_ROWS = 8


def check_torch_func(subject: Subject) -> CheckResult:
    """vmap over a batch equals a loop; torch.func.grad and jacrev agree with autograd, jvp (forward mode) with
    finite differences or the backward (vmap of the forward alone when ``subject.forward_only``)."""
    cls = subject.function_class
    if cls is not None and not has_setup_context(cls):
        return warning(
            f"{cls.__name__} defines forward(ctx, ...) without setup_context, so torch.func "
            f"transforms (vmap, grad, jacrev) refuse it: {HOW_TO_SETUP_CONTEXT}"
        )
    inputs = checked_point(subject, seed=80)
    reference = subject.evaluate(inputs, generator=make_generator(81))
    problems, warnings_, passed_parts = [], [], []
    if not subject.forward_only:
        _grad(subject, inputs, reference, problems, passed_parts)
    _vmap_and_jacrev(subject, inputs, reference, problems, warnings_, passed_parts)
    if not subject.forward_only:
        _jvp(subject, inputs, reference, problems, passed_parts)
    if problems:
        if cls is not None and cls.vjp is not torch.autograd.Function.vjp and "NotImplementedError" in str(problems):
            problems.append("torch.func calls the method named backward, never vjp: rename vjp to backward")
        return failed("; ".join(problems + warnings_))
    if warnings_:
        return warning("; ".join(warnings_) + (f" ({', '.join(passed_parts)} work)" if passed_parts else ""))
    if subject.forward_only:
        return passed(f"{', '.join(passed_parts)} of the forward agrees with a loop")
    return passed(f"{', '.join(passed_parts)} agree with autograd and a loop")


def _grad(subject: Subject, inputs: list[Any], reference, problems: list[str], passed_parts: list[str]) -> None:
    positions = subject.differentiable_positions
    output_positions = reference.output_positions

    def scalar(*tensors: torch.Tensor) -> torch.Tensor:
        outputs = subject.call(subject.with_values(dict(zip(positions, tensors, strict=True))))
        return sum((g * outputs[i]).sum() for g, i in zip(reference.upstream, output_positions, strict=True))

    tensors = [inputs[p] for p in positions]
    try:
        grads = torch.func.grad(scalar, argnums=tuple(range(len(tensors))))(*tensors)
        for position, got in zip(positions, grads, strict=True):
            want = reference.gradients[position]
            if want is not None and compare_gradient(got, want) is not None:
                problems.append(
                    f"torch.func.grad gives a different gradient of {subject.input_name(position)!r} "
                    f"than autograd ({compare_gradient(got, want).describe()})"
                )
        passed_parts.append("grad")
    except Exception as error:  # noqa: BLE001
        problems.append(f"torch.func.grad raised {describe_error(error)}")


def _jvp(subject: Subject, inputs: list[Any], reference, problems: list[str], passed_parts: list[str]) -> None:
    """Forward mode: ``u . (J v)`` from torch.func.jvp for random directions u, v, against ``(J^T u) . v`` from
    the backward and central differences of ``u . f`` along v. Wrong when it agrees with neither (a jvp that
    agrees with a wrong backward is left to first_order). Skipped silently where forward mode is not
    supported and the Function defines no jvp of its own."""
    cls, positions = subject.function_class, subject.differentiable_positions
    custom = cls is not None and cls.jvp is not torch.autograd.Function.jvp

    def outputs_of(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = subject.call(subject.with_values(dict(zip(positions, tensors, strict=True))))
        return tuple(outputs[i] for i in reference.output_positions)

    generator = make_generator(84)
    primals = tuple(inputs[p] for p in positions)
    tangents = [random_like(t.shape, generator, t.device).to(t.dtype) for t in primals]
    try:
        _, derivatives = torch.func.jvp(outputs_of, primals, tuple(tangents))
    except Exception as error:  # noqa: BLE001
        if custom:
            problems.append(f"torch.func.jvp raised {describe_error(error)}")
        return
    weights = [random_upstream(d, generator) for d in derivatives]
    gradients = subject.evaluate(inputs, weights).gradients
    terms = [w.double() * d.double() for w, d in zip(weights, derivatives, strict=True)]
    backward_terms = [
        sum_to_shape(gradients[p].double(), inputs[p].shape) * v.double()
        for p, v in zip(positions, tangents, strict=True)
        if gradients[p] is not None
    ]
    got, by_backward = sum(float(t.sum()) for t in terms), sum(float(t.sum()) for t in backward_terms)
    scale = max(sum(float(t.abs().sum()) for t in group) for group in (terms, backward_terms))
    differences = CentralDifferences(outputs_of, primals, weights, STEP)
    by_differences, noise = 0.0, 0.0
    for index, tangent in enumerate(tangents):
        value, error = differences.central(index, tangent.double())
        by_differences, noise = by_differences + value, noise + error
    agrees_with_backward = abs(got - by_backward) <= 1e-6 * scale
    agrees_with_differences = abs(got - by_differences) <= 1e-6 * scale + NOISE_FACTOR * noise
    if agrees_with_backward or agrees_with_differences or not math.isfinite(by_differences):
        passed_parts.append("jvp")
        return
    what = "the jvp staticmethod" if custom else "forward mode"
    problems.append(
        f"torch.func.jvp (forward mode) is wrong: along random directions u, v, u . (J v) is {got:.6g}, but "
        f"{by_differences:.6g} by finite differences ({by_backward:.6g} by backward, (J^T u) . v); fix {what}"
    )


def _vmap_and_jacrev(
    subject: Subject,
    inputs: list[Any],
    reference,
    problems: list[str],
    warnings_: list[str],
    passed_parts: list[str],
) -> None:
    positions = subject.differentiable_positions
    batched = _finite_batch(subject, inputs)
    in_dims = tuple(0 if i in batched else None for i in range(len(inputs)))

    def call(*arguments: Any) -> tuple[Any, ...]:
        return tuple(o for o in subject.call(list(arguments)) if isinstance(o, torch.Tensor))

    mapped = _vmapped(subject, call, in_dims, subject.with_values(batched), problems, warnings_)
    if mapped is None:
        return
    with torch.no_grad():
        looped = [call(*subject.with_values({p: v[b] for p, v in batched.items()})) for b in range(BATCH)]
    for index, got in enumerate(mapped):
        want = torch.stack([row[index] for row in looped])
        same = got.shape == want.shape and torch.allclose(got.double(), want.double(), 1e-10, 1e-10, equal_nan=True)
        if not same:
            problems.append(
                f"vmap over a batch of {BATCH} differs from a loop in output {index} (vmap rule "
                "wrong: check out_dims and where the batch dimension goes)"
            )
    passed_parts.append("vmap")
    if subject.forward_only:
        return
    # jacrev of the first differentiable output w.r.t. each input, against autograd row by row.
    first = reference.output_positions[0]

    def output_of(*tensors: torch.Tensor) -> torch.Tensor:
        return subject.call(subject.with_values(dict(zip(positions, tensors, strict=True))))[first]

    tensors = [inputs[p] for p in positions]
    out_shape = reference.outputs[first].shape
    rows = _jacobian_rows(out_shape.numel())
    try:
        if rows is None:
            jacobians = torch.func.jacrev(output_of, argnums=tuple(range(len(tensors))))(*tensors)
        else:
            # A large output: vmap of vjp (what jacrev does) over a few rows of the Jacobian only.
            _, vjp = torch.func.vjp(output_of, *tensors)
            units = torch.zeros((len(rows), out_shape.numel()), dtype=reference.outputs[first].dtype)
            units[range(len(rows)), rows] = 1
            units = units.to(reference.outputs[first].device).reshape((len(rows), *out_shape))
            jacobians = torch.vmap(vjp)(units)
    except Exception as error:  # noqa: BLE001
        problems.append(f"torch.func.jacrev raised {describe_error(error)}")
        return
    for k, (position, jacobian) in enumerate(zip(positions, jacobians, strict=True)):
        want = _autograd_rows(subject, inputs, reference, first, position, tensors[k], rows)
        mismatch = compare_gradient(jacobian.reshape(want.shape), want)
        if mismatch is not None:
            problems.append(
                f"torch.func.jacrev for {subject.input_name(position)!r} differs from autograd's "
                f"Jacobian ({mismatch.describe()})"
            )
    passed_parts.append("jacrev")


def _vmapped(subject: Subject, call, in_dims, arguments, problems: list[str], warnings_: list[str]) -> Any:
    """``torch.vmap(call)(*arguments)``, with randomness='same' (and a warning) for a forward drawing random
    numbers; None, with a problem or warning, when vmap refuses the Function."""
    try:
        with torch.no_grad():
            return torch.vmap(call, in_dims=in_dims)(*arguments)
    except Exception as error:  # noqa: BLE001
        if "generate_vmap_rule" in str(error) or "vmap staticmethod" in str(error):
            warnings_.append(f"vmap is not supported: {HOW_TO_VMAP}")
            return None
        if "randomness" not in str(error):
            problems.append(f"vmap raised {describe_error(error)}")
            return None
    # A forward drawing random numbers (dropout): torch's vmap refuses it unless told how to draw.
    warnings_.append(f"{subject.name} draws random numbers in forward: {RANDOM_VMAP}")
    try:
        with torch.no_grad():
            return torch.vmap(call, in_dims=in_dims, randomness="same")(*arguments)
    except Exception as error:  # noqa: BLE001
        problems.append(f"vmap(randomness='same') raised {describe_error(error)}")
        return None


def _finite_batch(subject: Subject, inputs: list[Any]) -> dict[int, torch.Tensor]:
    """`BATCH` random points stacked for vmap, each where the forward is finite (`finite_point`)."""
    generator = make_generator(82)
    positions = subject.differentiable_positions
    rows = []
    for row in range(BATCH):
        values = {p: random_like(inputs[p].shape, generator, inputs[p].device) for p in positions}
        rows.append(finite_point(subject, "vmap", values, seed=83 + row)[1])
    return {p: torch.stack([drawn[p] for drawn in rows]) for p in positions}


def _jacobian_rows(n: int) -> list[int] | None:
    """All rows (None) of a Jacobian with up to `FULL_JACOBIAN_ROWS` rows, else a few spread over it."""
    if n <= FULL_JACOBIAN_ROWS:
        return None
    return sorted({round(i * (n - 1) / (SAMPLED_JACOBIAN_ROWS - 1)) for i in range(SAMPLED_JACOBIAN_ROWS)})


def _autograd_rows(subject: Subject, inputs, reference, first: int, position: int, tensor, rows) -> torch.Tensor:
    """Rows of the Jacobian of output ``first`` w.r.t. input ``position`` by autograd, one backward each."""
    out_shape = reference.outputs[first].shape
    result = []
    for element in range(max(1, out_shape.numel())) if rows is None else rows:
        unit = torch.zeros(out_shape.numel(), dtype=torch.float64, device=reference.outputs[first].device)
        if out_shape.numel():
            unit[element] = 1
        upstream = [
            unit.reshape(out_shape) if i == first else torch.zeros_like(reference.outputs[i])
            for i in reference.output_positions
        ]
        grad = subject.evaluate(inputs, upstream).gradients[position]
        result.append(torch.zeros_like(tensor) if grad is None else grad.detach())
    stacked = torch.stack(result)
    return stacked.reshape((*out_shape, *tensor.shape)) if rows is None else stacked


def check_compile(subject: Subject) -> CheckResult:
    """torch.compile(fullgraph=True) gives the eager outputs and gradients (outputs alone, traced without
    autograd, when ``subject.forward_only``)."""
    backend = subject.compile_backend
    if backend is None:
        return skipped("torch.compile check disabled")

    inputs = checked_point(subject, seed=90)
    reference = subject.evaluate(inputs, generator=make_generator(91))

    def run(*arguments: Any) -> tuple[Any, ...]:
        return flatten_outputs(subject.apply(*arguments))

    logger = logging.getLogger("torch._dynamo")
    level = logger.level
    logger.setLevel(logging.ERROR)  # graph-break chatter: the result says it once, in words
    try:
        with _eager_random_draws(backend):
            return _compare_compiled(subject, run, backend, inputs, reference)
    finally:
        logger.setLevel(level)


def _eager_random_draws(backend: str) -> contextlib.AbstractContextManager:
    """Inductor draws random numbers its own way; with fallback_random it draws eager's (same seed)."""
    if backend != "inductor":
        return contextlib.nullcontext()
    import torch._inductor.config

    return torch._inductor.config.patch(fallback_random=True)


def _compare_compiled(subject: Subject, run, backend: str, inputs: list[Any], reference) -> CheckResult:
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(run, fullgraph=True, backend=backend)
    leaves, _ = subject.leaves(inputs, clone=True)
    arguments = subject.with_values({p: (l.clone() if subject.clone_inputs else l) for p, l in leaves.items()})
    capture_problem = None
    # Without the backward, trace under no_grad so that Dynamo does not trace the broken backward.
    autograd = torch.no_grad if subject.forward_only else torch.enable_grad
    try:
        with autograd(), subject.random_state(arguments):
            outputs = compiled(*arguments)
    except Exception as error:  # noqa: BLE001
        reason = " ".join(str(error).split("\n")[0].split())[:300]
        capture_problem = (
            f"torch.compile(fullgraph=True, backend={backend!r}) cannot capture {subject.name} "
            f"in one graph: {type(error).__name__}: {reason}"
        )
        if "custom jvp" in reason:
            capture_problem += (
                " (Dynamo does not trace autograd.Functions that define a jvp staticmethod; "
                "drop jvp if forward-mode AD is not needed)"
            )
        torch._dynamo.reset()
        compiled = torch.compile(run, backend=backend)
        try:
            with autograd(), subject.random_state(arguments):
                outputs = compiled(*arguments)
        except Exception as second:  # noqa: BLE001
            return failed(f"{capture_problem}; even with graph breaks it raised {describe_error(second)}")
    problems = []
    for index in reference.output_positions:
        if compare_gradient(outputs[index], reference.outputs[index], rtol=1e-9, atol=1e-9) is not None:
            problems.append(f"compiled output {index} differs from eager")
    if not subject.forward_only:
        try:
            problems.extend(_gradient_differences(subject, outputs, leaves, reference))
        except Exception as error:  # noqa: BLE001
            return failed(f"backward of the compiled Function raised {describe_error(error)}")
    compared = "outputs" if subject.forward_only else "outputs and gradients"
    if problems:
        return failed("; ".join(([capture_problem] if capture_problem else []) + problems), backend=backend)
    if capture_problem:
        return warning(
            f"{capture_problem}. With graph breaks, compiled {compared} match eager",
            backend=backend,
        )
    return passed(
        f"torch.compile(fullgraph=True, backend={backend!r}) matches eager {compared}",
        backend=backend,
    )


def _gradient_differences(subject: Subject, outputs, leaves: dict[int, torch.Tensor], reference) -> list[str]:
    grads = torch.autograd.grad(
        [outputs[i] for i in reference.output_positions],
        list(leaves.values()),
        reference.upstream,
        allow_unused=True,
    )
    problems = []
    for position, got in zip(subject.differentiable_positions, grads, strict=True):
        want = reference.gradients[position]
        if want is not None and compare_gradient(got, want, rtol=1e-9, atol=1e-9) is not None:
            problems.append(
                f"compiled gradient of {subject.input_name(position)!r} differs from eager "
                f"({compare_gradient(got, want, rtol=1e-9, atol=1e-9).describe()})"
            )
    return problems
