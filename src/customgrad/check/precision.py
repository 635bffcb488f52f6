"""Precision: float64 inputs get float64-accurate results (no math silently done in float32), and
float32/float16/bfloat16 results agree with float64 within what the dtype allows."""

from __future__ import annotations

import math
from typing import Any

import torch

from .inputs import checked_point, finite_point, float64_copies
from .outcome import failed, passed
from .report import CheckResult
from .subject import Subject, describe_error, make_generator

#: Low-precision dtypes compared with float64, and the tolerance in units of the dtype's epsilon
#: (relative to the largest magnitude) used when no same-dtype eager reference exists.
LOW_PRECISION = ((torch.float32, 64.0), (torch.float16, 64.0), (torch.bfloat16, 64.0))
#: With a same-dtype eager reference: allowed error = this many times the eager formula's own error
#: (rounding differs with the order of operations; math done in a lower precision is off by far more).
EAGER_FACTOR = 16.0


def check_precision(subject: Subject) -> CheckResult:
    """float64 accuracy, and low-precision dtypes against a float64 reference (values a dtype cannot hold
    skipped for it, with a note)."""
    problems, notes = [], []
    problems += _float32_math(subject)
    point = checked_point(subject, seed=70)
    reference = subject.evaluate(point, generator=make_generator(71))
    eager = _eager_subject(subject)
    random, compared = [], []
    for dtype, units in LOW_PRECISION:
        name, differences = str(dtype).replace("torch.", ""), []
        if not _compare_dtype(subject, dtype, units, point, reference, eager, differences, notes):
            continue
        if differences and subject.draws_random_numbers(point):
            random.append(name)  # torch draws other random values for a float32 tensor than a float64 one
        else:
            problems += differences
            compared.append(name)
    if random:
        notes.append(
            f"{', '.join(random)} not judged: {'they differ' if len(random) > 1 else 'it differs'} from float64, "
            f"but {subject.name} draws random numbers in forward, and torch draws other values for each dtype"
        )
    note = f" ({'; '.join(notes)})" if notes else ""
    if problems:
        return failed("; ".join(problems) + note, notes=notes)
    agree = f"; {', '.join(compared)} agree with float64" if compared else ""
    return passed(f"float64 is float64-accurate{agree}{note}", notes=notes)


def _compare_dtype(subject, dtype, units, point, reference, eager, problems: list[str], notes: list[str]) -> bool:
    """Outputs and gradients in ``dtype`` against float64 at the same (rounded) inputs; False when they
    could not be compared (inputs beyond the dtype's range, or the Function refuses it: a note says so)."""
    name = str(dtype).replace("torch.", "")
    largest = torch.finfo(dtype).max
    beyond = [subject.input_name(p) for p in subject.differentiable_positions if _beyond(point[p], largest)]
    if beyond:
        notes.append(f"{name} not compared: {_range_note(', '.join(map(repr, beyond)), name, largest)}")
        return False
    values = subject.with_values({p: point[p].to(dtype) for p in subject.differentiable_positions})
    rounded = subject.with_values({p: values[p].to(torch.float64) for p in subject.differentiable_positions})
    low_upstream = [g.to(dtype) for g in reference.upstream]
    try:
        low = subject.evaluate(values, low_upstream)
    except Exception as error:  # noqa: BLE001 - a dtype the Function does not support is a note
        notes.append(f"{name} not supported ({describe_error(error)})")
        return False
    high = subject.evaluate(rounded, list(reference.upstream))
    eager_pairs = {}
    if eager is not None:
        # The same formula in plain torch ops, same dtype: how far rounding alone moves it.
        eager_pairs = _pairs(
            eager, eager.evaluate(values, low_upstream), eager.evaluate(rounded, list(reference.upstream))
        )
    for label, (got, want) in _pairs(subject, low, high).items():
        if got is None:
            continue
        want = want.detach().double()
        if _beyond(want, largest):
            notes.append(f"{name}: {label} not compared: {_range_note('its float64 values', name, largest)}")
            continue
        allowed, basis = _allowed(dtype, units, want, eager_pairs.get(label, (None, None)))
        error = float((got.detach().double() - want).abs().max()) if want.numel() else 0.0
        if error > allowed:
            overflow = bool((torch.isinf(got) & torch.isfinite(want)).any())
            problems.append(
                f"{name}: {label} is off by {error:.3g} (allowed {allowed:.3g}, {basis}) compared with float64"
                + (f" (it overflows to inf inside the Function although its value fits in {name})" * overflow)
            )
    return True


def _beyond(values: torch.Tensor, largest: float) -> bool:
    """Whether some finite value is larger in magnitude than ``largest`` (it overflows in that dtype)."""
    finite = values.detach().double()
    finite = finite[torch.isfinite(finite)]
    return bool(finite.numel()) and float(finite.abs().max()) > largest


def _range_note(what: str, name: str, largest: float) -> str:
    return f"{what} exceed {name}'s largest value {largest:.6g} (they overflow to inf there)"


def _allowed(dtype: torch.dtype, units: float, want: torch.Tensor, eager: tuple[Any, Any]) -> tuple[float, str]:
    """The allowed error and its basis: `units` eps of the largest magnitude, or `EAGER_FACTOR` times the
    error of the same formula in eager torch ops when that is larger."""
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    allowed, basis = units * torch.finfo(dtype).eps * scale, f"{units:g} x eps x max |value|"
    eager_low, eager_high = eager
    if eager_low is not None and eager_high is not None and want.numel():
        eager_error = float((eager_low.detach().double() - eager_high.detach().double()).abs().max())
        # An eager twin that overflows (inf) or fails (nan) in this dtype gives no tolerance.
        if math.isfinite(eager_error) and EAGER_FACTOR * eager_error > allowed:
            allowed = EAGER_FACTOR * eager_error
            basis = f"{EAGER_FACTOR:g} x the error of the same formula in eager torch ops"
    return allowed, basis


def _float32_math(subject: Subject) -> list[str]:
    """A float64 result insensitive to changes below float32's resolution was computed in float32."""
    base = float64_copies(subject)
    generator = make_generator(72)
    drawn = {
        p: (torch.randn(base[p].shape, generator=generator, dtype=torch.float64) + 0.5).to(base[p].device)
        for p in subject.differentiable_positions
    }
    _, point = finite_point(subject, "float32 math", drawn, seed=74)
    values = {p: point[p] for p in subject.differentiable_positions}
    problems = []
    evaluations = []
    for relative in (0.0, 1e-11, 1e-3):
        moved = subject.with_values({p: v * (1 + relative) for p, v in values.items()})
        evaluations.append(subject.evaluate(moved, generator=make_generator(73)))
    same, tiny, large = evaluations
    for index in same.output_positions:
        dtype = same.outputs[index].dtype
        if dtype.is_floating_point and torch.finfo(dtype).bits < 64:
            problems.append(
                f"float64: output {index} is {str(dtype).replace('torch.', '')} for float64 inputs: forward casts "
                "its result to (or computes it in) a lower precision; return the inputs' dtype"
            )
    for label, pick in _quantities(subject, same):
        a, b, c = pick(same), pick(tiny), pick(large)
        if a is None or b is None or c is None or a.numel() == 0:
            continue
        if a.dtype == torch.float64 and _stuck_in_float32(a, b, c):
            problems.append(
                f"float64: {label} does not change when the inputs change by 1e-11 (relative) but "
                "does for 1e-3: it is computed in float32 or lower (a .float() or .half(), a float32 constant "
                "or numpy float32 array); keep the input's dtype throughout"
            )
    return problems


def _stuck_in_float32(same: torch.Tensor, tiny: torch.Tensor, large: torch.Tensor) -> bool:
    """Unchanged by the 1e-11 change at every element where float64 would show it (the 1e-3 change, scaled
    down, is over 64 ulps there), and there is such an element: 1 + 1e-7 x^2 legitimately shows nothing."""
    change = (large - same).abs() * 1e-8  # the 1e-11 change's effect, to first order
    visible = torch.isfinite(change) & (change > 64 * torch.finfo(torch.float64).eps * same.abs())
    return bool(visible.any()) and torch.equal(same[visible], tiny[visible])


def _quantities(subject: Subject, evaluation) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [
        (f"output {i}", lambda e, i=i: e.outputs[i].detach()) for i in evaluation.output_positions
    ]
    items += [
        (f"the gradient of {subject.input_name(p)!r}", lambda e, p=p: e.gradients[p])
        for p in subject.differentiable_positions
    ]
    return items


def _pairs(subject: Subject, low, high) -> dict[str, tuple[Any, Any]]:
    """label -> (low-precision value, float64 value) for every output and input gradient."""
    pairs = {f"output {i}": (low.outputs[i], high.outputs[i]) for i in high.output_positions}
    pairs.update(
        {
            f"gradient of {subject.input_name(p)!r}": (low.gradients[p], high.gradients[p])
            for p in subject.differentiable_positions
            if high.gradients[p] is not None
        }
    )
    return pairs


def _eager_subject(subject: Subject) -> Subject | None:
    """A Subject for the Function's plain-torch twin (``Function.eager``, as customgrad.function gives)."""
    eager = getattr(subject.function_class, "eager", None)
    if eager is None or not subject.calls_function_directly:
        return None
    return Subject(eager, tuple(subject.example_inputs))
