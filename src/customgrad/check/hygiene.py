"""Hygiene and determinism: forward leaves its inputs alone (unless ``mark_dirty``), saved state is
protected against later in-place changes (``save_for_backward``, not ctx attributes), the graph is freed
after backward, and two identical runs give identical results."""

from __future__ import annotations

import copy
import gc
import weakref
from typing import Any

import numpy as np
import torch

from .finite_differences import compare_gradient
from .inputs import checked_point
from .outcome import failed, passed, warning
from .report import CheckResult
from .subject import CALL_SEED, Subject, generator_states_kept, make_generator


def check_hygiene(subject: Subject) -> CheckResult:
    """Inputs unmodified, grad_output unmodified, state saved with save_for_backward, and no leak of the graph
    after backward (the first alone when ``subject.forward_only``)."""
    inputs = checked_point(subject, seed=40)
    problems, warnings_, notes = [], [], []
    _inputs_unmodified(subject, inputs, problems, notes)
    if not subject.forward_only:
        if subject.evaluate(inputs, generator=make_generator(42)).upstream_modified:
            problems.append(
                "backward writes into grad_output in place (grad_output.mul_(...), grad_output *= ...): autograd "
                "may pass the same tensor on to other Functions, or an expanded one that cannot be written; "
                "compute out of place (grad_output * ...)"
            )
        _ctx_attributes(subject, inputs, problems, warnings_)
        _freed_after_backward(subject, inputs, problems)
    if problems:
        return failed("; ".join(problems + warnings_), notes=notes)
    if warnings_:
        return warning("; ".join(warnings_), notes=notes)
    extra = f" ({'; '.join(notes)})" if notes else ""
    if subject.forward_only:
        return passed(f"forward leaves its inputs unmodified{extra}", notes=notes)
    return passed(
        "inputs unmodified, in-place changes after forward are detected or harmless, graph freed "
        f"after backward{extra}",
        notes=notes,
    )


def _inputs_unmodified(subject: Subject, inputs: list[Any], problems: list[str], notes: list[str]) -> None:
    originals = {p: inputs[p].clone() for p in subject.differentiable_positions}
    # Non-leaf copies, so that in-place work in forward is allowed and can be seen.
    sources = {p: inputs[p].clone().requires_grad_(True) for p in originals}
    arguments = subject.with_values({p: s.clone() for p, s in sources.items()})
    with torch.enable_grad(), subject.random_state(arguments):
        outputs = subject.apply(*arguments)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    for position, original in originals.items():
        used = arguments[position]
        if torch.equal(used.detach(), original):
            continue
        name = subject.input_name(position)
        dirty = any(isinstance(o, torch.Tensor) and o.data_ptr() == used.data_ptr() for o in outputs)
        if dirty:
            notes.append(f"{name!r} is modified in place and returned (mark_dirty)")
        else:
            problems.append(
                f"forward modified input {name!r} in place without ctx.mark_dirty({name}): the "
                "caller's tensor changed; work on a copy (x = x.clone()) or mark_dirty and return it"
            )


def _ctx_attributes(subject: Subject, inputs: list[Any], problems: list[str], warnings_: list[str]) -> None:
    """Change inputs in place after forward: save_for_backward notices; ctx attributes do not."""
    reference = subject.evaluate(inputs, generator=make_generator(41))
    sources = {p: inputs[p].clone().requires_grad_(True) for p in subject.differentiable_positions}
    arguments = subject.with_values({p: s.clone() for p, s in sources.items()})
    with torch.enable_grad():
        if subject.clone_inputs:
            with subject.random_state(arguments):
                outputs = subject.apply(*arguments)
        else:
            outputs = subject.call(arguments)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    attributes = _tensor_attributes(outputs)
    differentiable = [outputs[i] for i in reference.output_positions]
    try:
        with torch.no_grad():
            for position in sources:
                arguments[position].add_(0.5)
        grads = torch.autograd.grad(differentiable, list(sources.values()), reference.upstream, allow_unused=True)
    except RuntimeError:
        # Autograd noticed the change (version counter, or view + in-place rules): protected.
        _attribute_warning(attributes, warnings_, "")
        return
    stale = []
    for position, grad in zip(sources, grads, strict=True):
        want = reference.gradients[position]
        if want is None and grad is None:
            continue
        if compare_gradient(grad, want if want is not None else torch.zeros_like(inputs[position])) is not None:
            stale.append(subject.input_name(position))
    if stale:
        where = f" (stored on ctx.{', ctx.'.join(attributes)})" if attributes else ""
        problems.append(
            f"after forward, changing {', '.join(map(repr, stale))} in place (x.add_(0.5)) silently changed "
            f"the gradient backward returns{where}: state kept outside ctx.save_for_backward is not "
            "protected; "
            "save tensors with ctx.save_for_backward so that autograd raises on such changes"
        )
    else:
        _attribute_warning(attributes, warnings_, "")


def _attribute_warning(attributes: list[str], warnings_: list[str], _: str) -> None:
    if attributes:
        warnings_.append(
            f"tensor(s) stored as ctx attributes (ctx.{', ctx.'.join(attributes)}) instead of "
            "ctx.save_for_backward: in-place changes are not detected and they can keep memory "
            "alive; use save_for_backward"
        )


def _tensor_attributes(outputs: tuple[Any, ...]) -> list[str]:
    node = next((o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None), None)
    if node is None or not hasattr(type(node), "_forward_cls"):
        return []
    names = []
    for name, value in vars(node).items() if hasattr(node, "__dict__") else []:
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, (torch.Tensor, np.ndarray)) for v in values):
            names.append(name)
    return names


def _freed_after_backward(subject: Subject, inputs: list[Any], problems: list[str]) -> None:
    """The outputs die with their last reference once backward ran (no reference cycle through ctx)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        _, arguments = subject.leaves(inputs, clone=True)
        with torch.enable_grad():
            outputs = subject.call(arguments)
        differentiable = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
        # An output that is an input, or a view of one (forward returned it unchanged), lives as long as
        # the input does: torch's aliasing, not a leak.
        pointers = {a.data_ptr() for a in arguments if isinstance(a, torch.Tensor)}
        references = [weakref.ref(o) for o in differentiable if o.numel() == 0 or o.data_ptr() not in pointers]
        torch.autograd.backward(differentiable, [torch.ones_like(o) for o in differentiable])
        del outputs, differentiable
        alive = sum(r() is not None for r in references)
    finally:
        if enabled:
            gc.enable()
    if alive:
        problems.append(
            f"{alive} output(s) stay alive after backward once the caller dropped them: the "
            "Function's graph is not freed (a reference cycle, e.g. the output kept on ctx: "
            "ctx.out = out); save outputs with ctx.save_for_backward(out) instead"
        )


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise the same values, NaN equal to NaN (``torch.equal`` says NaN != NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not (a.is_floating_point() or a.is_complex()):
        return torch.equal(a, b)
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def check_determinism(subject: Subject) -> CheckResult:
    """Two runs with the same inputs and grad_output give bitwise identical outputs and gradients (outputs
    alone when ``subject.forward_only``: the gradients are then None), torch's generators not reseeded."""
    inputs = checked_point(subject, seed=50)
    draws = subject.draws_random_numbers(inputs)
    subject = copy.copy(subject)
    subject.reseed = False
    given = [value for value in inputs if isinstance(value, torch.Generator)]
    with torch.random.fork_rng(devices=[]), generator_states_kept(given):  # the caller's generators as they were
        first = subject.evaluate(inputs, generator=make_generator(51))
        second = subject.evaluate(inputs, list(first.upstream))
    differences = []
    for index, (a, b) in enumerate(zip(first.outputs, second.outputs, strict=True)):
        if isinstance(a, torch.Tensor) and not identical(a.detach(), b.detach()):
            differences.append(f"output {index}")
    for position in subject.differentiable_positions:
        a, b = first.gradients[position], second.gradients[position]
        if (a is None) != (b is None) or (a is not None and not identical(a, b)):
            differences.append(f"gradient of {subject.input_name(position)!r}")
    if differences and draws:
        return warning(
            f"two identical runs differ in {', '.join(differences)}: {subject.name} draws random numbers (dropout, "
            "noise) from torch's generator or one it is given, so results reproduce only from a seeded generator; "
            f"the other checks started each call from the same state (torch.manual_seed({CALL_SEED}), a given "
            "generator as passed), comparing like with like",
            random=True,
        )
    if differences:
        return warning(
            f"two identical runs differ in {', '.join(differences)}: nondeterministic (atomics, "
            "unseeded randomness, dict/set order?); results will not reproduce exactly"
        )
    compared = "outputs" if subject.forward_only else "outputs and gradients"
    return passed(f"two runs give bitwise identical {compared}")
