"""Input variants the battery derives from the example inputs: float64 copies, other random points,
non-contiguous layouts, other sizes and dtypes. Non-floating tensors and non-tensors are kept as given.
"""

from __future__ import annotations

from typing import Any

import torch

from .subject import Subject, make_generator


def float64_copies(subject: Subject) -> list[Any]:
    """The example inputs with every floating tensor copied to float64 (values unchanged)."""
    return subject.with_values(
        {p: subject.example_inputs[p].detach().to(torch.float64).clone() for p in subject.differentiable_positions}
    )


#: Random points, as (label, how to draw a value from the example tensor in float64).
POINTS = (
    ("example values", lambda x, g: x.clone()),
    ("random (both signs)", lambda x, g: random_like(x.shape, g, x.device)),
    ("near zero", lambda x, g: 0.05 * random_like(x.shape, g, x.device)),
)


#: Where a random point makes the forward non-finite (log or sqrt of negative values), gradients cannot be
#: judged there: the point moves to the first of these where the forward is finite, else to values drawn
#: from the example inputs (`from_examples`), which lie in the Function's domain (asin, erfinv).
FINITE_MOVES = (
    ("|x| + 0.5", lambda x: x.abs() + 0.5),
    ("-(|x| + 0.5)", lambda x: -(x.abs() + 0.5)),
)
#: Tried after the values drawn from the examples, for examples wholly outside the domain (the command line's
#: random ones for acosh or log(x - 1), defined from 1 on).
LAST_MOVES = (("|x| + 1.5", lambda x: x.abs() + 1.5),)


def sample_points(subject: Subject, seed: int = 0) -> list[tuple[str, list[Any]]]:
    """The example point and other random points (both signs, near zero) in float64; a random point where
    the forward is not finite moves to where it is (`finite_point`), and its label says so."""
    generator = make_generator(seed)
    base = float64_copies(subject)
    points = []
    for label, draw in POINTS:
        values = {p: draw(base[p], generator) for p in subject.differentiable_positions}
        if label == "example values":
            points.append((label, subject.with_values(values)))
        else:
            points.append(finite_point(subject, label, values, seed))
    return points


def checked_point(subject: Subject, seed: int) -> list[Any]:
    """The point the single-point checks use: `sample_points`' random one, or, where the forward is not finite
    even there (example values partly outside the domain, as the command line's random ones may be), the
    first of the near-zero and example points where it is."""
    points = sample_points(subject, seed)
    for _, inputs in (points[1], points[2], points[0]):
        if _finite_forward(subject, inputs):
            return inputs
    return points[1][1]


def finite_point(subject: Subject, label: str, values: dict[int, torch.Tensor], seed: int = 0) -> tuple[str, list[Any]]:
    """``(label, inputs)``: the drawn ``values`` where the forward is finite there; else the first of
    `FINITE_MOVES`, values between the example values, example values resampled, or `LAST_MOVES` where it is
    (the label says which). Values of any shape, for the shapes an elementwise Function is also tried at."""
    inputs = subject.with_values(values)
    if _finite_forward(subject, inputs):
        return label, inputs
    candidates = [(how, {p: move(v) for p, v in values.items()}) for how, move in FINITE_MOVES]
    for how, between in (("between the example values", True), ("the example values resampled", False)):
        drawn = from_examples(subject, {p: v.shape for p, v in values.items()}, seed, between)
        if drawn is not None:
            candidates.append((how, drawn))
    candidates += [(how, {p: move(v) for p, v in values.items()}) for how, move in LAST_MOVES]
    for how, moved in candidates:
        moved_inputs = subject.with_values(moved)
        if _finite_forward(subject, moved_inputs):
            return f"{label}, moved to {how} where the forward is finite", moved_inputs
    return label, inputs


def from_examples(
    subject: Subject, shapes: dict[int, torch.Size], seed: int, between: bool = True
) -> dict[int, torch.Tensor] | None:
    """Values of the given shapes drawn from each input's example values (float64): ``t a + (1 - t) b`` for
    two random example elements a, b (``between``), else one example element. Inputs of one shape draw the
    same elements and t, so that a domain joining them (log(x - y)) holds too. None for an empty example."""
    values = {}
    for position, shape in shapes.items():
        example = subject.example_inputs[position].detach().to(torch.float64).flatten()
        if example.numel() == 0:
            return None
        generator = make_generator(seed)
        first, second, t = (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) for _ in range(3))
        value = _element_at(example, first)
        if between:
            weight = t.to(example.device)
            value = weight * value + (1 - weight) * _element_at(example, second)
        values[position] = value
    return values


def _element_at(flat: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """The elements of ``flat`` at the indices ``floor(fraction * len(flat))`` (``fraction`` in [0, 1))."""
    index = (fraction * flat.numel()).long().clamp_max(flat.numel() - 1)
    return flat[index.to(flat.device)]


def _finite_forward(subject: Subject, inputs: list[Any]) -> bool:
    """Whether every floating output of the forward is finite (True when it raises: the checks report that)."""
    try:
        with torch.no_grad():
            outputs = subject.call([v.clone() if isinstance(v, torch.Tensor) else v for v in inputs])
    except Exception:  # noqa: BLE001 - the user's forward; its errors are the checks' to report
        return True
    return all(bool(torch.isfinite(o).all()) for o in outputs if isinstance(o, torch.Tensor) and o.is_floating_point())


def non_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: transposed storage (2-D and up) or every other element."""
    if tensor.dim() >= 2:
        return tensor.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
    if tensor.dim() == 1:
        storage = torch.zeros(2 * tensor.shape[0], dtype=tensor.dtype, device=tensor.device)
        view = storage[::2]
        view.copy_(tensor.detach())
        return view
    return tensor.detach().clone()


def random_like(shape: tuple[int, ...], generator: torch.Generator, device=None) -> torch.Tensor:
    """Standard normal float64 values, drawn on the CPU (reproducible) and moved to ``device``."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
