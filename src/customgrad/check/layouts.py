"""Layouts: non-contiguous inputs, non-contiguous and zero-stride grad_outputs, and (for elementwise
Functions) sizes 0 and 1, 0-d, batched and broadcast shapes. With ``subject.forward_only`` the outputs
alone are compared."""

from __future__ import annotations

from typing import Any

import torch

from .finite_differences import compare_gradient
from .inputs import finite_point, float64_copies, non_contiguous, random_like
from .outcome import failed, passed, warning
from .report import CheckResult
from .subject import Subject, describe_error, make_generator

NO_VIEW = "use .reshape()/.contiguous() instead of .view(), and do not assume strides"
ZERO_STRIDE = (
    "grad_output can be an expanded tensor whose elements share one memory location (stride 0: what "
    "y.sum().backward() passes): do not write into it in place (grad_output.mul_) and do not assume its "
    "strides; use out-of-place operations or grad_output.contiguous()"
)
#: Shapes an elementwise Function is also tried at: (label, shape, with a transposed grad_output). The
#: transposed one catches a backward that flattens grad_output with .view(), which a 1-D example cannot.
SHAPE_VARIANTS = (
    ("size 1", (1,), False),
    ("size 0", (0,), False),
    ("0-d", (), False),
    ("batched (2, 3, 4)", (2, 3, 4), False),
    ("batched (2, 3, 4) with a transposed grad_output", (2, 3, 4), True),
)


def check_layouts(subject: Subject) -> CheckResult:
    """Same results for non-contiguous inputs, non-contiguous and zero-stride grad_outputs; right gradients
    at other shapes (a backward that raises where the forward accepts the shape is wrong)."""
    inputs = float64_copies(subject)
    reference = subject.evaluate(inputs, generator=make_generator(60))
    problems, notes, tried = [], [], []
    for label, values, upstream, hint in _layout_variants(subject, inputs, reference):
        upstream = reference.upstream if upstream is None else upstream
        if all(v.is_contiguous() for v in [*upstream, *(values[p] for p in subject.differentiable_positions)]):
            continue  # 0-d tensors: no non-contiguous layout exists
        tried.append(label)
        # The same values in a contiguous layout: what the result must equal.
        same = (
            reference
            if upstream is reference.upstream
            else subject.evaluate(inputs, [g.contiguous() for g in upstream])
        )
        try:
            result = subject.evaluate(values, upstream)
        except Exception as error:  # noqa: BLE001
            problems.append(f"{label}: raised {describe_error(error)}; {hint}")
            continue
        problems.extend(_differences(subject, label, same, result))
    if _is_elementwise(subject, reference):
        for label, values, transposed in _shape_variants(subject, inputs):
            if not (transposed and subject.forward_only):
                tried.append(label)
                _shape_variant(subject, label, values, transposed, problems, notes)
    if problems:
        return failed("; ".join(problems), tried=tried, notes=notes)
    if notes:
        return warning(
            "the Function does not accept some shapes an elementwise Function should: " + "; ".join(notes),
            tried=tried,
        )
    return passed(f"same results for {', '.join(tried) or 'the example layout'}", tried=tried)


def _layout_variants(subject: Subject, inputs: list[Any], reference) -> list[tuple[str, list[Any], Any, str]]:
    """(label, inputs, upstream or None for the reference's, hint when it raises) for each layout tried."""
    positions = subject.differentiable_positions
    variants = [("non-contiguous inputs", subject.with_values({p: non_contiguous(inputs[p]) for p in positions}))]
    variants = [(label, values, None, NO_VIEW) for label, values in variants]
    if subject.forward_only:
        return variants
    noncontiguous = [non_contiguous(g) for g in reference.upstream]
    expanded = [torch.full((), 0.75, dtype=g.dtype, device=g.device).expand(g.shape) for g in reference.upstream]
    return [
        *variants,
        ("non-contiguous grad_output", inputs, noncontiguous, NO_VIEW),
        ("zero-stride grad_output (as y.sum().backward() passes)", inputs, expanded, ZERO_STRIDE),
    ]


def _shape_variant(
    subject: Subject, label: str, values: list[Any], transposed: bool, problems: list[str], notes: list[str]
) -> None:
    """Gradients at one shape variant against finite differences; a shape the forward refuses is a note."""
    try:
        result = subject.evaluate(values, generator=make_generator(61))
    except Exception as error:  # noqa: BLE001
        if subject.forward_only or not _forward_runs(subject, values):
            notes.append(f"{label}: raised {describe_error(error)}")
        else:
            problems.append(f"{label}: the forward accepts this shape but the backward raised {describe_error(error)}")
        return
    if transposed:
        try:
            result = subject.evaluate(values, [non_contiguous(g) for g in result.upstream])
        except Exception as error:  # noqa: BLE001
            problems.append(f"{label}: raised {describe_error(error)}; {NO_VIEW}")
            return
    if subject.forward_only:
        problems.extend(_forward_differences(subject, label, values, result))
        return
    shape = torch.broadcast_shapes(*(values[p].shape for p in subject.differentiable_positions))
    for index in result.output_positions:
        if result.outputs[index].shape != shape:
            problems.append(
                f"{label}: output {index} has shape {list(result.outputs[index].shape)}, expected {list(shape)} "
                "(an elementwise Function's output has its inputs' broadcast shape)"
            )
    expected = subject.expected_gradients(values, result)
    for position, want in expected.items():
        got = result.gradients[position]
        name = subject.input_name(position)
        if got is not None and got.shape != values[position].shape:
            problems.append(
                f"{label}: gradient of {name!r} has shape {list(got.shape)}, input has {list(values[position].shape)}"
            )
            continue
        mismatch = compare_gradient(got, want)
        if mismatch is not None:
            problems.append(f"{label}: gradient of {name!r} is wrong: {mismatch.describe()}")


def _forward_runs(subject: Subject, values: list[Any]) -> bool:
    try:
        with torch.no_grad():
            subject.call(values)
    except Exception:  # noqa: BLE001 - the user's forward
        return False
    return True


def _differences(subject: Subject, label: str, reference, result) -> list[str]:
    problems = []
    for index in reference.output_positions:
        if compare_gradient(result.outputs[index], reference.outputs[index], rtol=1e-12, atol=1e-12) is not None:
            problems.append(f"{label}: output {index} differs from the contiguous result")
    for position in subject.differentiable_positions:
        want = reference.gradients[position]
        if want is None:
            continue
        mismatch = compare_gradient(result.gradients[position], want, rtol=1e-12, atol=1e-12)
        if mismatch is not None:
            problems.append(
                f"{label}: gradient of {subject.input_name(position)!r} differs from the contiguous "
                f"result ({mismatch.describe()}); do not assume a memory layout (use .reshape, "
                ".contiguous(), no raw data_ptr/stride arithmetic)"
            )
    return problems


def _forward_differences(subject: Subject, label: str, values: list[Any], result) -> list[str]:
    """An elementwise forward on a shape variant equals forward on flat contiguous copies, reshaped."""
    positions = subject.differentiable_positions
    shape = torch.broadcast_shapes(*(values[p].shape for p in positions))
    flat = subject.with_values({p: values[p].expand(shape).reshape(-1).clone() for p in positions})
    expected = subject.forward_outputs(flat, result.output_positions)
    problems = []
    for index, want in zip(result.output_positions, expected, strict=True):
        got = result.outputs[index]
        if got.shape != shape:
            problems.append(f"{label}: output {index} has shape {list(got.shape)}, expected {list(shape)}")
        elif compare_gradient(got, want.reshape(shape), rtol=1e-12, atol=1e-12) is not None:
            problems.append(f"{label}: output {index} differs from forward on flat contiguous copies")
    return problems


def _is_elementwise(subject: Subject, reference) -> bool:
    """Inputs and outputs share one shape, and changing one input element changes only that output element."""
    shapes = {tuple(reference.outputs[i].shape) for i in reference.output_positions}
    shapes |= {tuple(subject.example_inputs[p].shape) for p in subject.differentiable_positions}
    others = [
        v
        for i, v in enumerate(subject.example_inputs)
        if isinstance(v, torch.Tensor) and i not in subject.differentiable_positions
    ]
    if len(shapes) != 1 or others:
        return False
    inputs = [v.detach() if isinstance(v, torch.Tensor) else v for v in reference.inputs]
    base = subject.forward_outputs(inputs, reference.output_positions)
    for position in subject.differentiable_positions:
        n = inputs[position].numel()
        for element in sorted({0, n // 2, n - 1}) if n else ():
            moved = inputs[position].clone()
            moved.view(-1)[element] += 1e-3 * (1 + abs(float(moved.view(-1)[element])))
            outputs = subject.forward_outputs(subject.with_values({position: moved}), reference.output_positions)
            for before, after in zip(base, outputs, strict=True):
                changed = (before != after).view(-1).nonzero().flatten().tolist()
                if any(index != element for index in changed):
                    return False
    return True


def _shape_variants(subject: Subject, inputs: list[Any]) -> list[tuple[str, list[Any], bool]]:
    """The `SHAPE_VARIANTS` (and a broadcast pair) with random values, or values drawn from the examples
    where the forward is not finite at random ones (`finite_point`)."""
    generator = make_generator(62)
    positions = subject.differentiable_positions
    device = inputs[positions[0]].device if positions else None
    shapes = [(label, {p: shape for p in positions}, transposed) for label, shape, transposed in SHAPE_VARIANTS]
    if len(positions) > 1:
        for label, first, last in (("broadcast (3, 4) with (4,)", (3, 4), (4,)), ("broadcast (4,) with 0-d", (4,), ())):
            broadcast = {p: first for p in positions}
            broadcast[positions[-1]] = last
            shapes.append((label, broadcast, False))
    variants = []
    for index, (label, sizes, transposed) in enumerate(shapes):
        values = {p: random_like(shape, generator, device) for p, shape in sizes.items()}
        variants.append((*finite_point(subject, label, values, seed=63 + index), transposed))
    return variants
