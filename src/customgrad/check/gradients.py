"""Checks of the backward itself: it runs, returns the right number and kind of gradients, and they are
the right values (first order, linear in grad_output, second order)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .finite_differences import HintContext, compare_gradient, diagnose, numerical_vjp, own_scale
from .inputs import checked_point, float64_copies, sample_points
from .outcome import failed, passed, skipped, warning
from .parts import PHASE
from .report import CheckResult
from .subject import (
    Subject,
    describe_error,
    has_setup_context,
    is_float_tensor,
    is_once_differentiable,
    make_generator,
    random_upstream,
    sum_to_shape,
)


# -- 1. runs ------------------------------------------------------------------------------------
def check_runs(subject: Subject) -> CheckResult:
    """Forward and backward run on the example inputs; an exception names its type, message and line."""
    inputs = list(subject.example_inputs)
    try:
        outputs = _forward_with_leaves(subject, inputs)
    except Exception as error:  # noqa: BLE001 - the user's code may raise anything
        hint = _ctx_hint(subject)
        return failed(f"forward raised {describe_error(error)}{hint}", stage="forward", error=type(error).__name__)
    differentiable = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
    if not differentiable:
        return failed(
            "forward returned no output that requires grad: return tensors computed from the "
            "inputs (and do not mark them all non-differentiable)",
            stage="forward",
        )
    try:
        subject.evaluate(inputs, generator=make_generator(1))
    except Exception as error:  # noqa: BLE001
        return failed(f"backward raised {describe_error(error)}", stage="backward", error=type(error).__name__)
    note = " (inputs are cloned: the Function works in place)" if subject.clone_inputs else ""
    return passed(f"forward and backward run on {subject.describe_inputs()}{note}")


def _ctx_hint(subject: Subject) -> str:
    """How to fix a forward whose ctx parameter does not fit the style (with or without setup_context)."""
    names = ", ".join(subject.parameter_names)
    if subject.ctx_mistake == "missing":
        return (
            f": {subject.name}.forward({names}) takes no ctx, which torch allows only beside a setup_context "
            f"staticmethod: add @staticmethod setup_context(ctx, inputs, output) that saves what backward "
            f"needs, or take ctx first: forward(ctx, {names})"
        )
    if subject.ctx_mistake == "extra":
        return (
            f": {subject.name}.forward takes ctx, but beside a setup_context staticmethod torch calls it without "
            f"one: write forward({names}) and save what backward needs in setup_context (or drop setup_context)"
        )
    return ""


def _forward_with_leaves(subject: Subject, inputs: list[Any]) -> tuple[Any, ...]:
    _, arguments = subject.leaves(inputs)
    try:
        return subject.call(arguments)
    except RuntimeError as error:
        if "leaf Variable" not in str(error):
            raise
    subject.clone_inputs = True  # an in-place Function (mark_dirty) cannot take leaves directly
    return subject.call(arguments)


# -- 2. arity and metadata ----------------------------------------------------------------------
def check_arity(subject: Subject) -> CheckResult:
    """As many gradients as inputs, None for non-tensors; each gradient's shape, dtype, device fit."""
    inputs = float64_copies(subject)
    try:
        raw = _raw_backward(subject, inputs)
    except _BackwardRaised as raised:
        return skipped(f"backward raises, so its gradients cannot be inspected: {describe_error(raised.error)}")
    except Exception as error:  # noqa: BLE001
        return skipped(f"forward raises, so there are no gradients to inspect: {describe_error(error)}")
    if raw is None:
        try:
            subject.evaluate(inputs, generator=make_generator(2))
        except Exception as error:  # noqa: BLE001
            return failed(f"the autograd engine rejected the backward's result: {describe_error(error)}")
        return passed(
            "the autograd engine accepts the backward's gradients (called through a wrapper, "
            "so the raw gradients were not inspected)"
        )
    grads, leaves = raw
    names = subject.parameter_names
    if subject.function_class is not None and has_setup_context(subject.function_class):
        # apply() binds forward's default arguments: they are inputs too and need a gradient slot.
        names = names + subject.all_parameter_names[len(names) :]
    n_inputs = len(names)
    grads, notes = _without_extra_nones(grads, n_inputs)
    if len(grads) != n_inputs:
        return failed(
            f"backward returned {len(grads)} gradient(s) but forward takes {n_inputs} input(s) "
            f"({', '.join(names)}): return exactly one per input, in order, None for non-tensor "
            "inputs and inputs that need no gradient",
            returned=len(grads),
            inputs=n_inputs,
        )
    problems, cautions = [], []
    values = list(inputs) + [None] * (n_inputs - len(inputs))
    for position, (grad, value) in enumerate(zip(grads, values, strict=True)):
        name = names[position]
        if grad is None:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"gradient for non-tensor input {name!r} must be None, got {type(grad).__name__}")
            continue
        if not isinstance(grad, torch.Tensor):
            problems.append(f"gradient for {name!r} must be a tensor or None, got {type(grad).__name__}")
            continue
        if not value.is_floating_point() and not value.is_complex():
            # The engine drops it (an integer tensor has no gradient): wasted work, not a wrong result.
            cautions.append(f"a gradient for integer input {name!r} is ignored by the engine: return None for it")
            continue
        if grad.shape != value.shape:
            if _reducible(grad.shape, value.shape):
                notes.append(
                    f"{name!r}: gradient of shape {list(grad.shape)} is summed by the engine to the "
                    f"input's shape {list(value.shape)}"
                )
            else:
                problems.append(
                    f"gradient for {name!r} has shape {list(grad.shape)} but the input has shape "
                    f"{list(value.shape)}: return a gradient of the input's shape (sum over "
                    "broadcast dimensions)"
                )
        if grad.dtype != value.dtype:
            problems.append(
                f"gradient for {name!r} is {_dtype(grad)} but the input is {_dtype(value)}: the "
                f"engine casts it silently; compute the gradient in the input's dtype"
            )
        if grad.device != value.device:
            problems.append(f"gradient for {name!r} is on {grad.device} but the input is on {value.device}")
    if problems:
        return failed("; ".join(problems + cautions), notes=notes)
    if cautions:
        return warning("; ".join(cautions), notes=notes)
    message = f"{len(grads)} gradient(s) for {n_inputs} input(s), shapes, dtypes and devices fit"
    return passed(message + (f" ({'; '.join(notes)})" if notes else ""), notes=notes)


def _without_extra_nones(grads: tuple[Any, ...], n_inputs: int) -> tuple[tuple[Any, ...], list[str]]:
    """The gradients without the None(s) after the first ``n_inputs``, which the engine drops (one per
    parameter of forward, defaulted ones included), and a note saying so."""
    if len(grads) > n_inputs and all(grad is None for grad in grads[n_inputs:]):
        extra = len(grads) - n_inputs
        return grads[:n_inputs], [f"the {extra} None(s) after the {n_inputs} input(s) given are ignored"]
    return grads, []


class _BackwardRaised(Exception):
    """The Function's backward (not its forward) raised ``error``."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _raw_backward(subject: Subject, inputs: list[Any]) -> tuple[tuple[Any, ...], dict] | None:
    """Call the Function's backward directly on its ctx, to see what it returns before the engine does."""
    cls = subject.function_class
    if cls is None or not subject.calls_function_directly:
        return None
    _, arguments = subject.leaves(inputs)
    with torch.enable_grad():
        outputs = subject.call(arguments)
    node = next((o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None), None)
    if node is None or getattr(type(node), "_forward_cls", None) is not cls:
        return None
    generator = make_generator(2)
    upstream = []
    for output in outputs:
        if is_float_tensor(output) and output.requires_grad:
            upstream.append(random_upstream(output, generator))
        elif isinstance(output, torch.Tensor):
            upstream.append(torch.zeros_like(output))
        else:
            upstream.append(None)
    with torch.no_grad():
        try:
            grads = _user_backward(cls)(node, *upstream)
        except Exception as error:  # noqa: BLE001 - told apart from a failing forward by check_arity
            raise _BackwardRaised(error) from error
    grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
    return grads, {}


def _user_backward(cls: type) -> Any:
    """The method the engine calls for the Function's backward: ``vjp`` where it is defined instead."""
    return cls.vjp if cls.vjp is not torch.autograd.Function.vjp else cls.backward


def _reducible(grad_shape: torch.Size, input_shape: torch.Size) -> bool:
    try:
        torch.empty(grad_shape, device="meta").sum_to_size(input_shape)
    except RuntimeError:
        return False
    return True


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


# -- 3. first order -----------------------------------------------------------------------------
def check_first_order(subject: Subject) -> CheckResult:
    """Gradients match finite differences (or the declared gradient) at several random points, with every
    input needing a gradient and with only some of them (``ctx.needs_input_grad`` partly False)."""
    what = "the declared custom gradient" if subject.declared_vjp is not None else "finite differences"
    problems: dict[str, str] = {}
    partial: dict[str, str] = {}  # with only some inputs needing a gradient
    contexts: dict[str, list[HintContext]] = {}
    points_checked, skipped_points = [], []
    for index, (label, inputs) in enumerate(sample_points(subject, seed=10)):
        evaluation = subject.evaluate(inputs, generator=make_generator(100 + index))
        finite = _finite_share(evaluation.outputs)
        if finite == "none":
            skipped_points.append(label)
            continue
        if finite == "some":  # elements whose finite difference is not finite are not judged
            label = f"{label}, where the forward is finite"
        points_checked.append(label)
        expected = subject.expected_gradients(inputs, evaluation)
        for position, want in expected.items():
            name = subject.input_name(position)
            got = evaluation.gradients[position]
            mismatch = compare_gradient(got, want)
            if mismatch is None:
                continue
            contexts.setdefault(name, []).append(
                _hint_context(subject, inputs, evaluation, expected, position, got, want)
            )
            if name in problems:
                continue
            text = f"gradient of {name!r} differs from {what} at the {label!r} point: {mismatch.describe()}"
            if got is None:
                text += (
                    " (backward returned None for it, although it needs a gradient: None is only for inputs "
                    f"that need none, ctx.needs_input_grad False; if {name!r} is a constant such as a mask, "
                    f"declare custom_gradient={{{name!r}: 0}} or pass it as an integer or bool tensor)"
                )
            problems[name] = text
        for key, text in _partly_needed(subject, label, inputs, evaluation, expected, what).items():
            partial.setdefault(key, text)
    if not points_checked:
        return skipped(f"the forward gives non-finite values at every point tried ({', '.join(skipped_points)})")
    details = {
        "points": points_checked,
        "skipped_points": skipped_points,
        "compared_with": what,
        "declared": subject.declared_text,
    }
    if problems or partial:
        return failed(_first_order_message(subject, problems, contexts, partial), **details)
    declared = f" ({', '.join(f'{k}: {v}' for k, v in subject.declared_text.items())})" if subject.declared_text else ""
    some = " (also with only some inputs needing a gradient)" if len(subject.differentiable_positions) > 1 else ""
    return passed(
        f"gradients match {what}{declared} at {len(points_checked)} points "
        f"({'; '.join(points_checked)}) with a random grad_output{some}",
        **details,
    )


def _first_order_message(
    subject: Subject, problems: dict[str, str], contexts: dict[str, list[HintContext]], partial: dict[str, str]
) -> str:
    texts = []
    for name, text in problems.items():
        # No hint for a None: the all-zeros it would describe are the None.
        hint = None if "returned None for it" in text else diagnose(_pool(contexts[name]))
        texts.append(f"{text}. Hint: {hint}" if hint else text)
    message = "; ".join(texts + [text for key, text in partial.items() if key not in problems])
    if problems and subject.declared_vjp is None:
        message += (
            ". If the backward is meant to differ from the derivative (straight-through, "
            "scaling, surrogate), declare it: custom_gradient={'name': 'formula'}"
        )
    return message


def _partly_needed(
    subject: Subject, label: str, inputs: list[Any], evaluation, expected: dict[int, torch.Tensor], what: str
) -> dict[str, str]:
    """With several floating inputs: backward again with each alone needing a gradient (and, from three
    inputs, all but each), as when the others are constants; its gradients must not change."""
    positions = subject.differentiable_positions
    if len(positions) < 2:
        return {}
    subsets = [[p] for p in positions]
    if len(positions) > 2:
        subsets += [[q for q in positions if q != p] for p in positions]
    problems = {}
    for subset in subsets:
        names = ", ".join(repr(subject.input_name(p)) for p in subset)
        flags = tuple(p in subset for p in range(len(subject.example_inputs)))
        when = f"when only {names} need{'s' * (len(subset) == 1)} a gradient (ctx.needs_input_grad = {flags})"
        try:
            result = subject.evaluate(inputs, evaluation.upstream, needing=subset)
        except Exception as error:  # noqa: BLE001 - the user's backward
            problems[f"raised: {names}"] = f"backward raised {describe_error(error)} {when}"
            continue
        for position in subset:
            mismatch = compare_gradient(result.gradients[position], expected[position])
            if mismatch is not None:
                name = subject.input_name(position)
                text = f"gradient of {name!r} {when} differs from {what} at the {label!r} point: {mismatch.describe()}"
                problems.setdefault(name, text)
    return problems


def _pool(contexts: list[HintContext]) -> HintContext:
    """One hint context from the mismatches at all points, so patterns show even for one-element inputs."""

    def cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
        if any(v is None for v in values):
            return None
        return torch.cat([v.detach().double().flatten() for v in values])

    upstream = cat(
        [c.upstream if c.upstream is not None and c.upstream.shape == c.expected.shape else None for c in contexts]
    )
    names = set.intersection(*(set(c.other_expected) for c in contexts))
    outputs = set.intersection(*(set(c.through_output) for c in contexts))
    factors = {c.broadcast_factor for c in contexts}
    return HintContext(
        cat([c.got for c in contexts]),
        cat([c.expected for c in contexts]),
        upstream,
        cat([c.expected_with_unit_upstream for c in contexts]),
        {n: cat([c.other_expected[n] for c in contexts]) for n in names},
        {k: cat([c.through_output[k] for c in contexts]) for k in outputs},
        factors.pop() if len(factors) == 1 else 1.0,
    )


def _finite_share(outputs: tuple[Any, ...]) -> str:
    """Where the floating outputs are finite: "all", "some" or "none" (of their elements)."""
    flags = torch.cat(
        [torch.isfinite(o.detach()).flatten() for o in outputs if is_float_tensor(o)]
        or [torch.ones(1, dtype=torch.bool)]
    )
    return "all" if bool(flags.all()) else "some" if bool(flags.any()) else "none"


def _hint_context(
    subject: Subject,
    inputs: list[Any],
    evaluation,
    expected: dict[int, torch.Tensor],
    position: int,
    got: torch.Tensor | None,
    want: torch.Tensor,
) -> HintContext:
    got64 = torch.zeros_like(want) if got is None else sum_to_shape(got.detach().double(), want.shape)
    upstream = evaluation.upstream[0].double() if len(evaluation.upstream) == 1 else None
    unit = dataclasses.replace(evaluation, upstream=[torch.ones_like(g) for g in evaluation.upstream])
    try:
        with_unit = subject.expected_gradients(inputs, unit)[position]
    except Exception:  # noqa: BLE001 - a hint is optional
        with_unit = None
    others = {subject.input_name(p): e for p, e in expected.items() if p != position and e.shape == want.shape}
    through = _through_each_output(subject, inputs, evaluation, position)
    output = evaluation.outputs[evaluation.output_positions[0]]
    single = len(evaluation.output_positions) == 1 and 0 < want.numel() < output.numel()
    factor = output.numel() / want.numel() if single and want.dim() <= output.dim() else 1.0
    known = getattr(want, "_known", None)
    if known is not None:  # a large input: finite differences at a sample of elements only
        pick = lambda t: None if t is None or t.shape != known.shape else t[known]  # noqa: E731
        return HintContext(
            pick(got64),
            pick(want),
            pick(upstream),
            pick(with_unit),
            {k: pick(v) for k, v in others.items()},
            {k: pick(v) for k, v in through.items()},
            factor,
        )
    return HintContext(got64, want, upstream, with_unit, others, through, factor)


def _through_each_output(subject: Subject, inputs: list[Any], evaluation, position: int) -> dict[int, torch.Tensor]:
    """With several differentiable outputs: output index -> the gradient of ``position`` expected when only
    that output's grad_output is kept (the others zero)."""
    outputs = evaluation.output_positions
    through = {}
    for k, index in enumerate(outputs if len(outputs) > 1 else ()):
        upstream = [g if j == k else torch.zeros_like(g) for j, g in enumerate(evaluation.upstream)]
        try:
            through[index] = subject.expected_gradients(inputs, dataclasses.replace(evaluation, upstream=upstream))[
                position
            ]
        except Exception:  # noqa: BLE001 - a hint is optional
            continue
    return through


# -- 4. linearity in grad_output, zero and undefined upstream gradients ------------------------
def check_linearity(subject: Subject) -> CheckResult:
    """backward(a g1 + b g2) = a backward(g1) + b backward(g2); zero upstream gives zero gradients."""
    inputs = checked_point(subject, seed=20)
    generator = make_generator(21)
    first = subject.evaluate(inputs, generator=generator)
    second = subject.evaluate(inputs, generator=generator)
    a, b = 2.0, -0.5
    combined = [a * g1 + b * g2 for g1, g2 in zip(first.upstream, second.upstream, strict=True)]
    mixed = subject.evaluate(inputs, combined)
    zero = subject.evaluate(inputs, [torch.zeros_like(g) for g in first.upstream])
    problems = []
    for position in subject.differentiable_positions:
        name = subject.input_name(position)
        g1, g2, g12 = (_dense(e.gradients[position], inputs[position]) for e in (first, second, mixed))
        gz = zero.gradients[position]
        if gz is not None and gz.numel() and bool(gz.abs().max() > 0):
            worst = float(gz.abs().max())
            problems.append(
                f"gradient of {name!r} is not zero for a zero grad_output (largest {worst:.6g}): "
                "a term of the backward does not multiply grad_output; every returned gradient must "
                "be linear in grad_output"
            )
            continue
        # Where backward(g1) or backward(g2) is inf or NaN, their combination tells nothing: not judged.
        finite = torch.isfinite(g1) & torch.isfinite(g2)
        g12 = torch.where(finite, g12, 0.0)
        g1, g2 = torch.where(finite, g1, 0.0), torch.where(finite, g2, 0.0)
        mismatch = compare_gradient(g12, a * g1 + b * g2, scale=own_scale(a * g1, b * g2))
        if mismatch is not None:
            problems.append(
                f"gradient of {name!r} is not linear in grad_output: backward({a:g}*g1 {b:+g}*g2) "
                f"differs from {a:g}*backward(g1) {b:+g}*backward(g2) ({mismatch.describe()}); "
                "the backward must be a linear function of grad_output"
            )
    undefined = _check_single_outputs(subject, inputs, first)
    if problems or undefined:
        return failed("; ".join(problems + undefined))
    multi = len(first.output_positions) > 1
    note = " and through each output alone (the others' grad_output undefined)" if multi else ""
    return passed(f"linear in grad_output, zero grad_output gives zero gradients{note}")


def _dense(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else sum_to_shape(grad.detach(), like.shape)


def _check_single_outputs(subject: Subject, inputs: list[Any], evaluation) -> list[str]:
    """With several outputs, backward through one of them only: the others' gradients are undefined."""
    positions = evaluation.output_positions
    if len(positions) < 2:
        return []
    problems = []
    for k, output_position in enumerate(positions):
        upstream = [g if j == k else torch.zeros_like(g) for j, g in enumerate(evaluation.upstream)]
        reference = subject.evaluate(inputs, upstream)
        leaves, arguments = subject.leaves(inputs)
        try:
            with torch.enable_grad():
                outputs = subject.call(arguments)
                grads = torch.autograd.grad(
                    [outputs[output_position]],
                    list(leaves.values()),
                    [evaluation.upstream[k]],
                    allow_unused=True,
                )
        except Exception as error:  # noqa: BLE001
            problems.append(
                f"backward through output {output_position} alone (the other outputs' grad_output "
                f"undefined) raised {describe_error(error)}: handle None grad_outputs or keep "
                "ctx.set_materialize_grads(True)"
            )
            continue
        for position, grad in zip(leaves, grads, strict=True):
            mismatch = compare_gradient(
                _dense(grad, inputs[position]), _dense(reference.gradients[position], inputs[position])
            )
            if mismatch is not None:
                problems.append(
                    f"backward through output {output_position} alone gives a different gradient of "
                    f"{subject.input_name(position)!r} than zero grad_outputs for the others "
                    f"({mismatch.describe()})"
                )
    return problems


# -- 5. second order ----------------------------------------------------------------------------
LEAVES_GRAPH = (
    "backward leaves the autograd graph (.detach(), .data, .numpy(), torch.no_grad(), or a new "
    "tensor built from values), so double backward silently gives wrong (zero) second derivatives. "
    "Either compute the gradient with differentiable torch operations on the saved tensors and "
    "grad_output (then second derivatives work), or decorate backward with "
    "@torch.autograd.function.once_differentiable (then double backward raises a clear error)"
)


def _double_backward_refused(error: RuntimeError) -> CheckResult:
    """The result when the backward with a grad_output requiring grad raised by design or by an in-place
    write into grad_output; any other error propagates (the battery reports it)."""
    if "once_differentiable" in str(error):
        return skipped("backward is marked @once_differentiable: second derivatives raise an error by design")
    if "leaf Variable that requires grad is being used in an in-place operation" in str(error):
        return failed(
            f"double backward cannot run: backward writes into grad_output in place, which requires grad "
            f"there ({describe_error(error)}); compute out of place (grad_output * ...)"
        )
    raise error


def check_second_order(subject: Subject) -> CheckResult:
    """Double backward agrees with finite differences of the backward (gradgradcheck)."""
    if is_once_differentiable(subject.function_class):
        return skipped("backward is marked @once_differentiable: second derivatives raise an error by design")
    inputs = checked_point(subject, seed=30)
    generator = make_generator(31)
    try:
        evaluation = subject.evaluate(inputs, generator=generator, create_graph=True, upstream_requires_grad=True)
        positions = [p for p in subject.differentiable_positions if evaluation.gradients[p] is not None]
        grads = [evaluation.gradients[p] for p in positions]
        weights = [random_upstream(g, generator) for g in grads]
        connected = [g.requires_grad for g in grads]
        variables = [evaluation.leaves[p] for p in subject.differentiable_positions] + evaluation.upstream
        analytic = [None] * len(variables)
        if any(connected):
            previous = PHASE.set("double backward")
            analytic = list(
                torch.autograd.grad(
                    [g for g, c in zip(grads, connected, strict=True) if c],
                    variables,
                    [w for w, c in zip(weights, connected, strict=True) if c],
                    allow_unused=True,
                )
            )
            PHASE.restore(previous)
    except RuntimeError as error:
        return _double_backward_refused(error)
    upstream = [g.detach() for g in evaluation.upstream]
    n_inputs = len(subject.differentiable_positions)

    def backward_of(*tensors: torch.Tensor) -> list[torch.Tensor]:
        values = subject.with_values(dict(zip(subject.differentiable_positions, tensors[:n_inputs], strict=True)))
        result = subject.evaluate(values, list(tensors[n_inputs:]))
        return [_dense(result.gradients[p], values[p]) for p in positions]

    base = [inputs[p] for p in subject.differentiable_positions] + upstream
    if not all(connected):
        # Only the disconnected gradients' weights: does the backward depend on anything numerically?
        masked = [w if not c else torch.zeros_like(w) for w, c in zip(weights, connected, strict=True)]
        numeric = numerical_vjp(backward_of, base, masked)
        if any(bool(n.nan_to_num().abs().max() > 1e-8) for n in numeric if n.numel()):
            names = [subject.input_name(p) for p, c in zip(positions, connected, strict=True) if not c]
            return failed(
                f"the gradient of {', '.join(map(repr, names))} returned by backward does not "
                f"require grad although it depends on the inputs or grad_output: {LEAVES_GRAPH}"
            )
    numeric = numerical_vjp(
        backward_of, base, [w if c else torch.zeros_like(w) for w, c in zip(weights, connected, strict=True)]
    )
    labels = [subject.input_name(p) for p in subject.differentiable_positions] + [
        f"grad_output[{k}]" for k in range(len(upstream))
    ]
    problems, missing = [], False
    for label, got, want in zip(labels, analytic, numeric, strict=True):
        mismatch = compare_gradient(got, want, rtol=1e-5, atol=1e-5)
        if mismatch is not None:
            problems.append(
                f"second-order gradient w.r.t. {label} differs from finite differences of the "
                f"backward: {mismatch.describe()}"
            )
            missing = missing or got is None or bool((got == 0).all())
    if problems:
        if missing or not all(connected):
            problems.append(f"where it is zero, {LEAVES_GRAPH}")
        return failed("; ".join(problems))
    note = "" if all(connected) else " (some gradients are constant in the inputs: no graph needed)"
    return passed(f"double backward matches finite differences of the backward{note}")
