"""The at-bound safeguard: chi2 = min over {as found, held at the bound, let go from just inside}.

A bounded parameter at its bound sits where its internal coordinate's derivative vanishes (`parameters`:
the MINUIT/lmfit transforms). Its D-scaled Jacobian column is as large as any other, but the cost is
quadratic, not linear, along it: LM's trust region shrinks until every parameter moves by next to nothing,
so a fit that starts at a bound, or walks into one, stalls short of the minimum of the others (lmfit does
the same). Where a fit ends with parameters within `AT_BOUND` of a bound and is no constrained minimum
(`unsettled`), they are held there while the rest is re-fitted, and then let go again from `INSIDE` of
it; the lowest chi2 of the three counts. One routine for `fit`, each curve of `fit_batch` and every point
of a profile (`profile.Profile`, which re-fits wherever its parameters end at a bound).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .plateau import STATIONARY, model_sensitivities
from .solvers import get_solver
from .units import SAFE_EXPONENT

if TYPE_CHECKING:
    from .lm import Outcome
    from .parameters import ParameterSpec
    from .source import FitSource

# A parameter within AT_BOUND of its range (max(|value|, 1) where it is open on one side) from a bound is
# at it (LM's transform has a slope below ~1e-3 of its largest there), and is let go again from INSIDE.
AT_BOUND, INSIDE = 1e-6, 1e-3
REFIT_STEPS = 1000
# A settled point replaces the fit's own only when its chi2 is lower by more than roundoff.
IMPROVEMENT = 1e-12

Point = tuple[float, dict[str, float], str]  # chi2, every parameter's value, and the solver's status


def residual_unit(source: FitSource) -> float:
    """2^-k where 2^k is about max |y / sigma| over every rank's rows, beyond 2^+-`SAFE_EXPONENT`, else 1:
    the residuals' squares, which overflow float64 from ~1e154 and underflow below ~1e-154, then neither."""
    problem, shards = source.problem, source.shards
    weighted = problem.weighted_y()
    largest = float(weighted.abs().max()) if weighted.numel() else 0.0
    largest = largest if shards is None else -shards.minimum(-largest)
    exponent = math.frexp(largest)[1] if math.isfinite(largest) and largest > 0 else 0
    return math.ldexp(1.0, -exponent) if abs(exponent) > SAFE_EXPONENT else 1.0


def _distances(spec: ParameterSpec, value):
    """(below, above, span): ``value``'s distances from the bounds of ``spec`` and its range (max(|value|, 1)
    where the range is open on one side); of a float or, elementwise, a tensor."""
    span = spec.upper - spec.lower
    if not math.isfinite(span):
        span = max(abs(value), 1.0) if isinstance(value, float) else value.abs().clamp_min(1.0)
    return abs(value - spec.lower), abs(spec.upper - value), span


def inside_points(source: FitSource, found: Mapping[str, float], held: Mapping[str, float]) -> dict[str, float]:
    """{name: a point `INSIDE` of its range in from the bound} for each free parameter of ``found`` not in
    ``held`` within `AT_BOUND` of its range from a bound."""
    moved = {}
    for spec in source.problem.specs:
        if spec.fixed or spec.name in held or spec.name not in found:
            continue
        below, above, span = _distances(spec, float(found[spec.name]))
        if min(below, above) <= AT_BOUND * span:
            moved[spec.name] = spec.lower + INSIDE * span if below <= above else spec.upper - INSIDE * span
    return moved


def unsettled(problem, theta: torch.Tensor, index=None, *, shards=None) -> torch.Tensor:
    """(b,) bool: the curves ``index`` (None: all) of the `model.Model` ``problem`` at internal ``theta``
    (b, p) that have a parameter within `AT_BOUND` of a bound and are no constrained minimum: a parameter
    not at a bound has a cosine |J_j^T r| / (||J_j|| ||r||) above `plateau.STATIONARY`, or one at a bound
    a gradient pointing into its range (moving it inward lowers chi2). Only those need `hold_and_release`.
    The products are `plateau.model_sensitivities`' (J with respect to the values, over every rank's rows
    with ``shards``: a distributed single fit)."""
    values = problem.external(theta)
    lower, upper = torch.zeros_like(values, dtype=torch.bool), torch.zeros_like(values, dtype=torch.bool)
    for i, spec in problem.bounded:
        below, above, span = _distances(spec, values[..., i])
        near = torch.minimum(below, above) <= AT_BOUND * span
        lower[..., i], upper[..., i] = near & (below <= above), near & (below > above)
    found = torch.zeros(values.shape[:-1], dtype=torch.bool, device=values.device)
    near = (lower | upper).any(-1).nonzero().flatten()  # (only those curves' rows are evaluated)
    if not len(near):
        return found
    curves = near if index is None else index[near]
    reach, gradient, residual_norm, _ = model_sensitivities(problem, theta[near], curves, external=True, shards=shards)
    cosine = (gradient.abs() / (reach * residual_norm[:, None])).nan_to_num(0.0)  # (a zero column: 0)
    moving = cosine > STATIONARY
    lower, upper = lower[near], upper[near]
    inward = (lower & (gradient < 0)) | (upper & (gradient > 0))  # (r = f - y: chi2's gradient is 2 J^T r)
    found[near] = (moving & (~(lower | upper) | inward)).any(-1)
    return found


def refit(source: FitSource, unit: float, held: Mapping[str, float], start: Mapping[str, float]) -> Point:
    """The LM re-fit (tolerances 1e-15) of the parameters not in ``held`` from ``start``: chi2 in units
    where the residuals are multiplied by ``unit``, every parameter's value and the solver's status."""
    model = source.with_fixed(held, start)
    theta = model.initial_theta()[0]
    shards = source.shards  # a distributed fit: every rank's rows, every rank the same steps
    total = (lambda value: value) if shards is None else shards.sum
    if not model.names:
        r = model.residuals(theta) * unit
        return total(float(r @ r)), dict(held), "exact"
    collectives = {} if shards is None else dict(reduce=shards.factor, sum_rows=shards.sum)
    outcome = get_solver("lm")(
        lambda theta: model.residuals(theta) * unit,
        lambda theta: model.augmented(theta) * unit,
        lambda r: total(float(r @ r)),
        theta,
        max_steps=REFIT_STEPS,
        ftol=1e-15,
        xtol=1e-15,
        gtol=1e-15,
        geodesic_acceleration=True,
        **collectives,
    )
    found = model.external(outcome.theta).tolist()
    cost = outcome.cost if math.isfinite(outcome.cost) else math.inf
    return cost, {**held, **dict(zip(model.names, found, strict=True))}, outcome.status


def hold_and_release(source: FitSource, unit: float, held: Mapping[str, float], best: Point) -> Point:
    """The lowest chi2 of ``best`` (a fit with ``held`` fixed), the re-fit with its parameters at a bound
    held there too, and the re-fit from `INSIDE` of those bounds."""
    inside = inside_points(source, best[1], held)
    if not inside:
        return best
    bounded = refit(source, unit, {**held, **{name: best[1][name] for name in inside}}, best[1])
    released = refit(source, unit, held, {**bounded[1], **inside})
    return min(best, bounded, released, key=lambda point: point[0])


def settled(source: FitSource, outcome: Outcome) -> Outcome:
    """``outcome`` of a least-squares fit of ``source``, or where it ended with parameters at a bound and
    `hold_and_release` found a chi2 lower by more than `IMPROVEMENT`, the outcome there: its parameters,
    cost and the status of the re-fit that found it (the history ends with that cost)."""
    problem = source.problem
    if not problem.bounded or not math.isfinite(outcome.cost):  # (no work for a fit without bounds)
        return outcome
    stopped = outcome.theta.unsqueeze(0).to(torch.float64)
    if not bool(unsettled(problem, stopped, shards=source.shards)[0]):
        return outcome
    unit = residual_unit(source)
    values = dict(zip(problem.names, problem.external(stopped)[0].tolist(), strict=True))
    found = hold_and_release(source, unit, {}, (outcome.cost * unit * unit, values, outcome.status))
    cost = found[0] / unit / unit
    if not cost < outcome.cost * (1 - IMPROVEMENT):
        return outcome
    theta = source.with_fixed({}, found[1]).initial_theta()[0].to(outcome.theta)
    outcome.theta, outcome.cost, outcome.status = theta, cost, found[2]
    outcome.history = [*outcome.history, cost]
    return outcome
