"""Finite differences and the comparison of a computed gradient with an expected one.

`numerical_vjp` differentiates any function of tensors by central differences in float64;
`compare_gradient` measures the mismatch, names the worst element, and `diagnose` turns the pattern
of the mismatch into a hint (rules as a table: `HINTS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

#: Central-difference step in float64: error ~ eps^2 f''' + 1e-16 |f| / eps, both ~1e-10 here.
STEP = 1e-6


#: Inputs with at most this many elements get the finite difference of every element. Larger ones get it
#: at `SAMPLED_ELEMENTS` random elements plus `PROBES` random directional derivatives v^T J u (as
#: gradcheck's fast mode), so that the check's time barely depends on the input's size.
FULL_ELEMENTS = 256
SAMPLED_ELEMENTS = 16
PROBES = 2


#: The finite-difference error estimate is the largest |D(h) - D(2h)| over the elements plus the roundoff
#: eps * sum |w * output| / h, times this (the difference of two steps measures truncation and roundoff).
NOISE_FACTOR = 4.0


def numerical_vjp(
    function: Callable[..., Sequence[torch.Tensor]],
    tensors: Sequence[torch.Tensor],
    upstream: Sequence[torch.Tensor],
    step: float = STEP,
) -> list[torch.Tensor]:
    """d/dx_i of ``sum_k <upstream_k, function(*tensors)_k>`` for every input, by central differences.

    The inputs are perturbed in float64 copies; the function is called with the perturbed copies in the
    dtype of the originals. Each result carries ``._noise``, an estimate of its own error (`NOISE_FACTOR`),
    so that `compare_gradient` can hold a gradient to its own scale however small. For an input of more
    than `FULL_ELEMENTS` elements only a sample of elements is computed (NaN elsewhere, ``._known`` says
    which) and ``._probes`` holds ``(u, v^T J u, its error estimate)`` triples for `compare_gradient`.
    """
    differences = CentralDifferences(function, tensors, upstream, step)
    generator = torch.Generator().manual_seed(12345)
    gradients = []
    for index, tensor in enumerate(differences.base):
        n = tensor.numel()
        sampled = n > FULL_ELEMENTS
        elements = _sample_elements(n, generator) if sampled else range(n)
        gradient = torch.full_like(tensor, float("nan")) if sampled else torch.zeros_like(tensor)
        noise = 0.0
        for element in elements:
            unit = torch.zeros_like(tensor)
            unit.view(-1)[element] = 1
            value, error = differences.central(index, unit)
            gradient.view(-1)[element] = value
            noise = max(noise, error) if math.isfinite(error) else noise  # elements without a reference aside
        gradient._noise = NOISE_FACTOR * noise
        if sampled:
            known = torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
            known.view(-1)[list(elements)] = True
            directions = [torch.randn(tensor.shape, generator=generator, dtype=torch.float64) for _ in range(PROBES)]
            gradient._known = known
            gradient._probes = [differences.probe(index, u.to(tensor.device)) for u in directions]
        gradients.append(gradient)
    return gradients


class CentralDifferences:
    """Central differences of ``sum_k <upstream_k, function(*tensors)_k>`` along one input's directions."""

    def __init__(self, function: Callable, tensors: Sequence[torch.Tensor], upstream: Sequence[torch.Tensor], step):
        self.function, self.tensors, self.step = function, tensors, step
        self.base = [t.detach().to(torch.float64).clone() for t in tensors]
        self.weights = [g.detach().to(torch.float64) for g in upstream]

    def objective(self, index: int, change: torch.Tensor) -> tuple[float, float]:
        """The objective with input ``index`` moved by ``change``, and the sum of its terms' magnitudes."""
        values = [b + change if i == index else b for i, b in enumerate(self.base)]
        cast = [v.to(t.dtype) for v, t in zip(values, self.tensors, strict=True)]
        outputs = [o.detach().to(torch.float64) for o in self.function(*cast)]
        value = sum((w * o).sum() for w, o in zip(self.weights, outputs, strict=True))
        size = sum((w * o).abs().sum() for w, o in zip(self.weights, outputs, strict=True))
        return float(value), float(size)

    def span(self, index: int, change: torch.Tensor, direction: torch.Tensor) -> float:
        """The step the inputs really took along ``direction`` from -change to +change, after rounding (x + h
        is not x + h exactly where |x| is large: at x = 1e6 the step is off by up to 1e-4 of h)."""
        dtype = self.tensors[index].dtype
        taken = (self.base[index] + change).to(dtype).double() - (self.base[index] - change).to(dtype).double()
        return float((taken * direction).sum() / (direction * direction).sum())

    def central(self, index: int, direction: torch.Tensor) -> tuple[float, float]:
        """The central difference with step h, and an estimate of its error from the one with 2h."""
        h = self.step
        change = h * direction
        (plus, size_plus), (minus, size_minus) = self.objective(index, change), self.objective(index, -change)
        (plus2, _), (minus2, _) = self.objective(index, 2 * change), self.objective(index, -2 * change)
        narrow, broad = self.span(index, change, direction), self.span(index, 2 * change, direction)
        if narrow == 0 or broad == 0:  # |x| so large that x + h == x: no finite difference to take
            return math.nan, 0.0
        value, wide = (plus - minus) / narrow, (plus2 - minus2) / broad
        roundoff = torch.finfo(torch.float64).eps * max(size_plus, size_minus) / h
        return value, abs(value - wide) + roundoff

    def probe(self, index: int, direction: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """``(u, v^T J u, its error estimate)`` along a random direction u."""
        value, error = self.central(index, direction)
        return direction, value, NOISE_FACTOR * error if math.isfinite(error) else 0.0


def _sample_elements(n: int, generator: torch.Generator) -> list[int]:
    """The first and last element and random others: `SAMPLED_ELEMENTS` distinct indices below ``n``."""
    chosen = {0, n - 1}
    for index in torch.randperm(n, generator=generator).tolist():
        if len(chosen) >= SAMPLED_ELEMENTS:
            break
        chosen.add(index)
    return sorted(chosen)


@dataclass
class Mismatch:
    """How a computed gradient differs from the expected one (None when they agree)."""

    count: int
    total: int
    worst_index: tuple[int, ...]
    got: float
    expected: float
    max_error: float
    first: list[tuple[tuple[int, ...], float, float]] = field(default_factory=list)

    direction: bool = False
    sampled: bool = False

    def describe(self) -> str:
        if self.direction:
            return (
                f"along a random direction u the gradient's dot product with u differs from the finite "
                f"difference: expected {self.expected:.6g}, got {self.got:.6g}"
            )
        where = list(self.worst_index)
        return (
            f"{self.count} of {self.total} {'sampled ' * self.sampled}elements differ; worst at index {where}: "
            f"expected {self.expected:.6g}, got {self.got:.6g}"
        )


def tolerance_scale(expected: torch.Tensor) -> float:
    """The largest finite ``|expected|`` (1 when all are 0): the scale of the hints' closeness tests."""
    return own_scale(expected) or 1.0


def own_scale(*tensors: torch.Tensor) -> float:
    """The largest finite magnitude among the tensors' elements (0 when there is none)."""
    largest = 0.0
    for tensor in tensors:
        finite = tensor[torch.isfinite(tensor)]
        if finite.numel():
            largest = max(largest, float(finite.abs().max()))
    return largest


def compare_gradient(
    got: torch.Tensor | None,
    expected: torch.Tensor,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    scale: float = 0.0,
) -> Mismatch | None:
    """Elementwise ``|got - expected| <= atol * scale + rtol * |expected| + noise``; None if all agree.

    ``scale`` is the gradients' own: the largest magnitude of ``got`` and ``expected`` (at least the
    ``scale`` given, for a difference of larger terms), so that cancellation near zero is not reported
    and a gradient of size 1e-7 is held to 1e-6 of 1e-7, not of 1. ``noise`` is the finite differences'
    own error estimate (``expected._noise``, 0 for an exact reference); where a finite difference is not
    finite, there is no reference and the element is not judged. A missing gradient (None) counts as zeros.
    """
    known, probes = getattr(expected, "_known", None), getattr(expected, "_probes", ())
    numerical = hasattr(expected, "_noise")
    noise = getattr(expected, "_noise", 0.0)
    expected = expected.detach().to(torch.float64)
    got_t = torch.zeros_like(expected) if got is None else got.detach().to(torch.float64)
    if got_t.shape != expected.shape:
        try:
            got_t = got_t.sum_to_size(expected.shape)
        except RuntimeError:
            return Mismatch(expected.numel(), expected.numel(), (), float("nan"), float("nan"), float("inf"))
    compared = (got_t, expected) if known is None else (got_t[known], expected[known])
    scale = max(scale, own_scale(*compared))
    error = (got_t - expected).abs()
    bound = atol * scale + rtol * expected.abs() + noise
    both_nan = torch.isnan(got_t) & torch.isnan(expected)
    # A finite difference that is not finite (the forward is not, near that element) is no reference.
    no_reference = ~torch.isfinite(expected) if numerical else torch.zeros_like(both_nan)
    bad = ~((error <= bound) | both_nan | (got_t == expected) | no_reference)  # == : the same infinity
    if known is not None:
        bad &= known
    if not bool(bad.any()):
        return _probe_mismatch(got_t, probes, scale, rtol, atol)
    score = torch.where(bad, torch.nan_to_num(error, nan=float("inf")), torch.zeros_like(error))
    worst = int(score.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), expected.shape)) if expected.dim() else ()
    first = [(tuple(i), float(got_t[tuple(i)]), float(expected[tuple(i)])) for i in bad.nonzero().tolist()[:5]]
    return Mismatch(
        int(bad.sum()),
        expected.numel() if known is None else int(known.sum()),
        index,
        float(got_t.flatten()[worst]),
        float(expected.flatten()[worst]),
        float(score.flatten()[worst]),
        first,
        sampled=known is not None,
    )


def _probe_mismatch(got: torch.Tensor, probes, scale: float, rtol: float, atol: float) -> Mismatch | None:
    """The first random direction u along which got . u differs from the finite difference v^T J u."""
    for direction, want, noise in probes:
        value = float((got * direction).sum())
        allowed = atol * scale * float(direction.abs().sum()) + rtol * abs(want) + noise
        if not abs(value - want) <= allowed:
            return Mismatch(got.numel(), got.numel(), (), value, want, abs(value - want), direction=True)
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6 * tolerance_scale(b)))


def _constant(values: torch.Tensor) -> float | None:
    """The common value of all elements, if there is one (and at least two elements)."""
    if values.numel() < 2:
        return None
    mean = values.mean()
    return float(mean) if _close(values, mean.expand_as(values)) else None


@dataclass
class HintContext:
    """What a hint rule may look at: the gradient, the expected one and alternatives (float64)."""

    got: torch.Tensor
    expected: torch.Tensor
    upstream: torch.Tensor | None = None
    expected_with_unit_upstream: torch.Tensor | None = None
    other_expected: dict[str, torch.Tensor] = field(default_factory=dict)
    #: With several outputs: output index -> the gradient expected through that output alone.
    through_output: dict[int, torch.Tensor] = field(default_factory=dict)
    #: How many output elements each input element is broadcast to (1: none).
    broadcast_factor: float = 1.0


def _not_finite(c: HintContext) -> str | None:
    if bool((~torch.isfinite(c.got) & torch.isfinite(c.expected)).any()):
        return (
            "the gradient is inf or NaN where the expected one is finite: a division by zero, log(0) or an "
            "overflow in backward?"
        )
    return None


def _zeros(c: HintContext) -> str | None:
    if bool((c.got == 0).all()) and not bool((c.expected == 0).all()):
        return "the gradient is all zeros: is the returned value detached from the computation, or a placeholder?"
    return None


def _sign(c: HintContext) -> str | None:
    if _close(c.got, -c.expected):
        return "sign flipped: got = -expected; check the sign of the derivative"
    return None


def _averaged(c: HintContext) -> str | None:
    if c.broadcast_factor > 1 and _close(c.got * c.broadcast_factor, c.expected) and not _close(c.got, c.expected):
        return (
            f"averaged over the broadcast dimension(s): got = expected / {c.broadcast_factor:g}; reduce a "
            "broadcast gradient with .sum (or sum_to_size), not .mean"
        )
    return None


def _scaled(c: HintContext) -> str | None:
    nonzero = c.expected.abs() > 1e-9 * tolerance_scale(c.expected)
    if int(nonzero.sum()) < 2 or bool((c.got[~nonzero] != 0).any()):
        return None
    ratio = _constant(c.got[nonzero] / c.expected[nonzero])
    if ratio is not None and abs(ratio - 1) > 1e-6:
        return f"scaled: got = {ratio:.6g} x expected; a constant factor is wrong (a missing or extra 2, 0.5, ...)"
    return None


def _ignores_upstream(c: HintContext) -> str | None:
    if c.expected_with_unit_upstream is not None and _close(c.got, c.expected_with_unit_upstream):
        return (
            "ignores grad_output: got the gradient for grad_output = 1; multiply the local derivative "
            "by grad_output (chain rule)"
        )
    return None


def _local_offset(c: HintContext) -> str | None:
    if c.upstream is None or c.upstream.shape != c.expected.shape:
        return None
    offset = _constant((c.got - c.expected) / c.upstream)
    if offset is not None and abs(offset) > 1e-9:
        return (
            f"off by a constant: the derivative is off by {offset:.6g} everywhere (got "
            f"grad_output * (derivative {offset:+.6g})); a constant term is missing or wrong"
        )
    return None


def _offset(c: HintContext) -> str | None:
    offset = _constant(c.got - c.expected)
    if offset is not None and abs(offset) > 1e-9:
        return f"off by a constant: got = expected {offset:+.6g}, a term that does not multiply grad_output"
    return None


def _swapped(c: HintContext) -> str | None:
    for name, other in c.other_expected.items():
        if _close(c.got, other) and not _close(c.expected, other):
            return (
                f"inputs swapped: this is the gradient expected for {name!r}; return the gradients in "
                "the order of forward's inputs"
            )
    return None


def _one_output_only(c: HintContext) -> str | None:
    for index, alone in c.through_output.items():
        if _close(c.got, alone) and not _close(c.expected, alone):
            return (
                f"only output {index}'s grad_output reaches the gradient: backward drops the part through the other "
                "output(s); add each output's contribution (sum over its grad_outputs)"
            )
    return None


#: Hint rules in the order they are tried; the first that matches explains the mismatch.
HINTS: tuple[tuple[str, Callable[[HintContext], str | None]], ...] = (
    ("not finite", _not_finite),
    ("zeros", _zeros),
    ("sign flipped", _sign),
    ("inputs swapped", _swapped),
    ("one output only", _one_output_only),
    ("ignores grad_output", _ignores_upstream),
    ("averaged over broadcast dimensions", _averaged),
    ("scaled", _scaled),
    ("off by a constant", _offset),
    ("derivative off by a constant", _local_offset),
)


def diagnose(context: HintContext) -> str | None:
    """A hint from the first rule in `HINTS` that recognises the mismatch, or None."""
    for _, rule in HINTS:
        try:
            hint = rule(context)
        except RuntimeError:
            continue
        if hint:
            return hint
    return None
