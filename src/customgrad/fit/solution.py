"""A fit's state at its solution and its `FitResult`: cost, statistics, diagnostics (`curve_result`).

One routine for every curve: a single fit's, and each curve of a batch (`BatchFitResult[i]`). Where
float64 roundoff limits a formula fit, the solution is refined and its cost recomputed in 40 digits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import goodness
from .chunked import ChunkedModel
from .distributed import Shards
from .model import Model
from .result import FitResult
from .source import FitSource
from .statistics import CONDITION_WARNING, Uncertainty, safe_norm, uncertainty
from .units import curve_unit

# Above this ratio of float64 roundoff in the predictions to the residuals, the final cost is
# recomputed in extended precision (formula models only).
_ROUNDOFF_SHARE = 1e-6
_EPS = float(np.finfo(np.float64).eps)
# Gauss-Newton steps with 40-digit residuals at most, in that regime (`_refined`).
_REFINEMENTS = 2


class _Final(NamedTuple):
    """A fit's state at its solution, what `FitResult` reports: ``cost`` in the data's units (inf where
    it overflows), ``scaled_cost`` in units where the residuals were multiplied by ``scale``."""

    values: torch.Tensor
    cost: float
    scaled_cost: float
    scale: float
    dof: int
    spread: Uncertainty
    fitted: torch.Tensor


def curve_result(
    source: FitSource,
    outcome,
    method: str,
    omitted: list,
    seconds: float,
    exact: dict | None = None,
    *,
    refine: bool = True,
    native=None,
    unit: float = 1.0,
) -> FitResult:
    """The `FitResult` of ``source``'s model at ``outcome``'s solution: statistics from the native engine's
    report where it ran (``native``, LM ended in units ``unit``), else from `_final` (``refine``: in 40 digits
    where roundoff limits a formula fit, from the decimal text ``exact``), diagnostics and data."""
    problem, shards, absolute = source.problem, source.shards, source.absolute_sigma
    values = problem.external(outcome.theta)
    final = None if native is None else _native_final(native, problem, values, unit, absolute)
    if final is None:
        final = _final(problem, values, method, source.loss, exact, shards, refine, absolute)
    values, cost, scaled_cost, scale, dof, spread, fitted = final
    value_list = values.tolist()
    found = dict(zip(problem.names, value_list, strict=True))
    all_params = {spec.name: found.get(spec.name, spec.value) for spec in problem.specs}
    stderr = dict(zip(problem.names, spread.stderr.tolist(), strict=True))
    ties = source.ties
    if ties:
        tied_values, tied_errors = ties.values_and_errors(all_params, problem.names, spread.covariance)
        all_params.update(tied_values)
        stderr.update(tied_errors)
    warnings = _diagnose(problem, outcome.status, spread, value_list, dof, omitted)
    if math.isinf(cost) and math.isfinite(scaled_cost):
        warnings.append(
            "the cost (sum of squared residuals) exceeds float64's range (~1.8e308) and is reported as inf; "
            "the fit, residual std and standard errors were computed in rescaled units and are finite"
        )
    return FitResult(
        params=all_params,
        stderr=stderr,
        covariance=spread.covariance,
        correlation=spread.correlation,
        cost=cost,
        residual_std=math.sqrt(scaled_cost / dof) / scale if dof > 0 else math.nan,
        dof=dof,
        evaluations=outcome.evaluations,
        jacobians=outcome.jacobians,
        steps=outcome.steps,
        status=outcome.status,
        method=method,
        model=problem.text,
        loss=source.loss,
        loss_value=outcome.cost,
        history=outcome.history,
        warnings=warnings,
        not_identifiable=spread.not_identifiable,
        condition=spread.condition,
        fixed={spec.name: spec.value for spec in problem.specs if spec.fixed},
        seconds=seconds,
        data={
            "x": {k: v.cpu().numpy()[0] for k, v in problem.data.items()},
            "y": problem.y.cpu().numpy()[0],
            "fitted": fitted.detach().cpu().numpy(),
            "sigma": None if problem.weights is None else (1 / problem.weights).cpu().numpy()[0],
        },
        tied=dict(ties.given),
        absolute_sigma=absolute,
        source=source,
        pooled_rsquared=None if shards is None else _pooled_rsquared(shards, problem.y[0], fitted),
    )


def _pooled_rsquared(shards: Shards, y: torch.Tensor, fitted: torch.Tensor) -> float:
    """R^2 over every rank's rows (`goodness.r_squared`): the mean of y first, then both sums of squares."""
    count, total = shards.sum([y.numel(), float(y.sum())])
    mean = total / count if count else 0.0
    residual, spread = shards.sum([float(((y - fitted) ** 2).sum()), float(((y - mean) ** 2).sum())])
    return goodness.r_squared_from_sums(float(residual), float(spread), int(count))


def _native_final(native, problem: Model, values: torch.Tensor, unit: float, absolute: bool) -> _Final | None:
    """The state at the solution from the native engine's one C call (`native.NativeSolver.report`), in
    the units ``unit`` where LM ended (the cost in range); None where float64 roundoff limits the fit
    (`_final` refines it in extended precision)."""
    dof = problem.size - len(problem.names)
    report = native.report(values, unit, dof, absolute)
    if _roundoff_limited(math.sqrt(report.cost), report.data_norm):
        return None
    fitted = torch.from_numpy(report.fitted)
    return _Final(values, report.cost / unit / unit, report.cost, unit, dof, report.uncertainty, fitted)


def _final(problem: Model, values, method: str, loss: str, exact, shards, refine: bool, absolute: bool) -> _Final:
    """The state at the solution from the model's residuals and Jacobian (any engine, distributed: from
    the combined R); where float64 roundoff limits a formula fit, refined and its cost recomputed in
    40-digit arithmetic."""
    r, jacobian = problem.jacobian(values, external=True)
    # a formula model on the CPU only (the extended-precision model and the refinement run there); norms
    # safe from overflow and underflow
    formula = shards is None and problem.rows is not None and problem.y.device.type == "cpu"
    limited = formula and _roundoff_limited(safe_norm(r), safe_norm(problem.weighted_y()))
    if limited and refine and method == "lm" and loss == "linear" and not isinstance(problem, ChunkedModel):
        values, r, jacobian = _refined(problem, values, r, jacobian, exact or {})
    weighted_y = problem.weighted_y()[0]
    # statistics in units where the squares stay in range (the covariance does not depend on them)
    scale = curve_unit(torch.cat((r, weighted_y)))
    n, p = problem.size, len(problem.names)
    if shards is None:
        scaled_cost = float((r * scale) @ (r * scale))
        cost = scaled_cost / scale / scale
        cost = _precise_cost(problem, values, cost, exact or {}) if limited else cost
        if math.isfinite(cost) and cost > 0:
            scaled_cost = cost * scale * scale
        data_norm = float(torch.linalg.vector_norm(weighted_y * scale))
    else:  # statistics from the combined R: the singular values and V of J (rows never gathered)
        scale = shards.minimum(scale)
        sums = shards.sum([float((r * scale) @ (r * scale)), n, float(((weighted_y * scale) ** 2).sum())])
        scaled_cost, n, data_norm = float(sums[0]), int(sums[1]), math.sqrt(sums[2])
        cost = scaled_cost / scale / scale
        jacobian = shards.factor(jacobian * scale) / scale  # R of J over every rank's rows (J, or R when chunked)
    dof = n - p
    spread = uncertainty(
        jacobian * scale,
        scaled_cost,
        dof,
        problem.names,
        values=values.tolist(),
        data_norm=data_norm,
        absolute=absolute,
        unit=scale,
    )
    with torch.no_grad():
        fitted = problem.predict(values)
    return _Final(values, cost, scaled_cost, scale, dof, spread, fitted)


def _roundoff_limited(size: float, data_norm: float) -> bool:
    """Whether float64 roundoff in the predictions, eps ||y / sigma|| (``data_norm``), is not small next to
    the residuals' norm ``size`` (`_ROUNDOFF_SHARE`), both weighted alike."""
    return math.isfinite(size) and _EPS * data_norm >= _ROUNDOFF_SHARE * size


def _precise_cost(problem: Model, values: torch.Tensor, cost: float, exact: dict) -> float:
    """The cost recomputed in 40-digit arithmetic (for a fit where float64 roundoff would swamp it)."""
    residuals = _precise_residuals(problem, values, exact)
    if residuals is None:
        return cost
    import mpmath

    with mpmath.workdps(40):
        return float(mpmath.fsum(r * r for r in residuals))


def _refined(problem: Model, values: torch.Tensor, r: torch.Tensor, jacobian: torch.Tensor, exact: dict) -> tuple:
    """Where roundoff limits the fit: up to `_REFINEMENTS` Gauss-Newton steps from residuals computed in
    40-digit arithmetic (J in float64), each kept only if the 40-digit cost falls (iterative refinement).
    Returns the values with their float64 residuals and Jacobian (``r``, ``jacobian`` at ``values``).

    On exact data (NIST Lanczos1, cost 1e-25) float64 residuals are noise at the 1e-16 level of the
    predictions, which leaves the parameters off by that noise times the condition number; the solver's
    arithmetic then decides the last digits of the cost. Refined, they no longer depend on it.
    """
    import mpmath

    residuals = _precise_residuals(problem, values, exact)
    with mpmath.workdps(40):
        for _ in range(_REFINEMENTS):
            if residuals is None or not bool(torch.isfinite(jacobian).all()):
                break
            cost = mpmath.fsum(v * v for v in residuals)
            try:
                step = np.linalg.lstsq(jacobian.numpy(), -np.array([float(v) for v in residuals]), rcond=None)[0]
            except np.linalg.LinAlgError:
                break
            trial = values + torch.from_numpy(step)
            if not all(spec.lower <= float(v) <= spec.upper for spec, v in zip(problem.free, trial, strict=True)):
                break
            trial_residuals = _precise_residuals(problem, trial, exact)
            if trial_residuals is None or mpmath.fsum(v * v for v in trial_residuals) >= cost:
                break
            values, residuals = trial, trial_residuals
            r, jacobian = problem.jacobian(values, external=True)
    return values, r, jacobian


def _precise_residuals(problem: Model, values: torch.Tensor, exact: dict) -> list | None:
    """The weighted residuals (f - y) / sigma at ``values`` in 40-digit arithmetic (mpmath), from the data's
    decimal text where ``exact`` has it; None where the model has no extended-precision form."""
    # Only now: building the extended-precision model costs SymPy (and its import).
    precise = getattr(problem.function, "precise", None)
    if precise is None:
        return None
    import mpmath

    named = dict(zip(problem.names, values.tolist(), strict=True))
    named.update({name: float(v) for name, v in problem.fixed.items()})
    size = problem.size

    def column(name: str, floats) -> list:
        text = exact.get(name)
        return list(text) if text is not None and len(text) == size else [float(v) for v in floats]

    with mpmath.workdps(40):
        columns = [
            column(name, problem.data[name][0].cpu().numpy()) if name in problem.data else [named[name]] * size
            for name in problem.function.names
        ]
        try:
            predictions = precise(columns)
        except Exception:  # noqa: BLE001 - extended precision is a refinement: keep the float64 numbers
            return None
        # sin and cos rewritten with exp come back complex, with an imaginary part at the roundoff level
        if any(abs(mpmath.im(f)) > mpmath.mpf(10) ** -30 * (1 + abs(f)) for f in predictions):
            return None
        y = column("y", problem.y[0].cpu().numpy())
        weights = [1.0] * size if problem.weights is None else problem.weights[0].cpu().tolist()
        return [(mpmath.re(f) - mpmath.mpf(t)) * mpmath.mpf(w) for f, t, w in zip(predictions, y, weights, strict=True)]


# The warning a fit that stopped with these statuses carries.
_STATUS_WARNINGS = {
    "max_steps": "the step limit was reached: the parameters may not be converged",
    "step_limit": "the solver ran its fixed number of steps without a convergence test: the parameters may not "
    "be converged (compare with method='lm', or check that the cost history has levelled off)",
    "nonfinite": "the model produced NaN or inf during the fit; the best parameters before that are kept",
}


def _diagnose(problem: Model, status: str, spread, values: list[float], dof: int, omitted: list) -> list[str]:
    warnings = [_STATUS_WARNINGS[status]] if status in _STATUS_WARNINGS else []
    if not spread.finite:
        warnings.append(
            "the Jacobian holds NaN or inf at the fitted values (a derivative undefined there, such as "
            "sqrt's at 0): no standard error is defined; start elsewhere or keep the data off that point"
        )
    for group in spread.not_identifiable if spread.finite else ():
        rank = f"the Jacobian has rank {spread.rank} of {len(problem.names)}"
        if len(group) == 1:
            warnings.append(
                f"parameter {group[0]} is not identifiable: the model does not depend on it at the fitted "
                f"values ({rank}), so the data do not determine it; its standard error is undefined "
                "(fix it or re-parametrise the model)"
            )
            continue
        warnings.append(
            f"parameters {', '.join(group)} are not identifiable: {rank}, so the data fix only a "
            "combination of them; their standard errors are undefined (fix one of them or re-parametrise "
            "the model)"
        )
    if not spread.not_identifiable and spread.condition > CONDITION_WARNING:
        warnings.append(
            f"the scaled Jacobian is ill-conditioned (condition number {spread.condition:.3g}): "
            "standard errors are fragile"
        )
    for spec, value in zip(problem.free, values, strict=True):
        width = (spec.upper - spec.lower) if spec.bounded and math.isfinite(spec.upper - spec.lower) else 1.0
        for side, bound in (("lower", spec.lower), ("upper", spec.upper)):
            if math.isfinite(bound) and abs(value - bound) <= 1e-6 * max(abs(width), abs(bound), 1.0):
                warnings.append(
                    f"parameter {spec.name} = {value:.8g} is at its {side} bound {bound}: "
                    "its standard error assumes the bound is not there"
                )
    if dof <= 0:
        warnings.append(
            f"{problem.size} data points for {len(problem.names)} free parameters: no degrees of "
            "freedom left, standard errors are undefined"
        )
    if omitted:
        where = " (rank:row)" if isinstance(omitted[0], str) else ""  # a distributed fit's, over every rank
        warnings.append(
            f"{len(omitted)} rows with NaN or inf were omitted (nan_policy='omit'): rows{where} "
            f"{', '.join(map(str, omitted[:10]))}{' ...' if len(omitted) > 10 else ''}"
        )
    return warnings
