"""LM's plateau safeguard, one for `fit` and `fit_batch`: sensitivities, one restart, status "plateau".

A fit can stop with a parameter that no longer matters (an exponential that underflowed: its Jacobian
column is ~0, so every convergence test passes). Where a parameter's relative sensitivity
||J_j|| max(|b_j|, 1) is below `SATURATION` ||y / sigma||, the fit is restarted once from its start with
factor 1 (a first trust radius of ||D theta||) and the restart kept where it reached a lower cost
(`keep_restarts`); where it still stops on the plateau (`stuck_on_plateau`), its status is "plateau"
(success False), not the convergence test that fired. Every engine reports through it (the native one
tests saturation in C, at the same threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .arrays import namespace_of
from .lm import BatchOutcome
from .parameters import held_at_bounds
from .status import TERMINATION
from .units import curve_unit, power_of_two_scale

# A parameter whose relative sensitivity ||J_j|| max(|b_j|, 1) falls below this share of ||y|| has stopped
# mattering (an exp that underflowed): the fit stopped on a plateau, worth one restart (`fit`, `fit_batch`).
SATURATION = 1e-10
# A fit that stopped there (after its restart) with every parameter's sensitivity below this share of
# ||y|| has a model that no longer depends on its parameters (a exp(-b x) at b = 25 on x >= 1: the model
# is 1e-10 of the data, with a cost of ||y||^2): status "plateau", not converged.
PLATEAU = 1e-6
# ... or with some parameter below SATURATION while a live one's column still has a cosine above this
# with the residuals: from b = 60, a exp(-b x) + c stopped at its start with c = 0 (the dead columns,
# scaled by D to unit norm, made every trial step useless), though c alone could lower the cost.
STATIONARY = 1e-6


def stuck_on_plateau(
    reach: torch.Tensor, gradient: torch.Tensor, residual_norm: torch.Tensor, data_norm: torch.Tensor
) -> torch.Tensor:
    """(...) bool: every sensitivity reach_j = ||J_j|| max(|b_j|, 1) is below `PLATEAU` ||y||, or one is
    below `SATURATION` ||y|| while a live column's cosine |gradient_j| / (reach_j ||r||) is above
    `STATIONARY` (``gradient`` = (J max(|b|, 1))^T r): the fit stopped on a plateau, not at a minimum.

    Shapes (..., p), (..., p), (...,), (...,), all in the same units (y, r and J scaled alike).
    """
    threshold = data_norm[..., None]
    saturated = reach < SATURATION * threshold
    cosine = abs(gradient) / (reach * residual_norm[..., None])
    unfinished = (~saturated & (cosine > STATIONARY)).any(-1)  # NaN (a zero column or r) counts as finished
    return (reach < PLATEAU * threshold).all(-1) | (saturated.any(-1) & unfinished)


def sensitivities(
    block: torch.Tensor,
    values: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor,
    sum_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    held: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """`stuck_on_plateau`'s inputs per problem: ||J_j|| max(|b_j|, 1), (J max(|b|, 1))^T r, ||r||, ||y||.

    ``block`` (b, n, p + 1) is [J | r] in internal coordinates, weighted by 1 / sigma (or its R: the
    column products are the same), ``values`` (b, p) the parameter values, ``y`` (b, m) the weighted data,
    ``scale`` (b,) powers of two keeping the squares in range (J, r and y multiplied alike: J scaled
    alone, 1e-224 at y ~ 1e300, squares to 0); ``sum_rows`` adds the per-problem sums (b, 2p + 2) over
    every rank's rows (distributed). Parameters ``held`` (b, p) at a bound (`parameters.held_at_bounds`: their
    internal column is ~0, but they still matter) count as live and stationary: infinite reach, zero gradient.
    """
    xp = namespace_of(block)  # torch, or numpy for one curve on the CPU (a fraction of torch's dispatch)
    scale = scale[..., None]
    reach = block[..., :-1] * (scale * xp.clamp_min(abs(values), 1.0))[..., None, :]
    r, y = block[..., -1] * scale, y * scale
    squares = [xp.sum(reach * reach, -2), xp.sum(reach * r[..., None], -2)]
    sums = xp.concat([*squares, xp.sum(r * r, -1)[..., None], xp.sum(y * y, -1)[..., None]], -1)
    if sum_rows is not None:
        sums = sum_rows(sums)
    p = values.shape[-1]
    reach, gradient = xp.sqrt(sums[..., :p]), sums[..., p : 2 * p]
    if held is not None:
        reach, gradient = xp.where(held, math.inf, reach), xp.where(held, 0.0, gradient)
    return reach, gradient, xp.sqrt(sums[..., 2 * p]), xp.sqrt(sums[..., 2 * p + 1])


def saturated(reach: torch.Tensor, data_norm: torch.Tensor) -> torch.Tensor:
    """(b,) how many parameters' sensitivity ``reach`` (b, p) is below `SATURATION` ``data_norm`` (b,)."""
    return (reach < SATURATION * data_norm[..., None]).sum(-1)


def stalled(problem, theta: torch.Tensor, statuses: list[str], index=None, shards=None) -> torch.Tensor:
    """(b,) bool: the restart's trigger for the curves ``index`` (None: all) of the `model.Model` ``problem``
    stopped at internal ``theta`` (b, p) with ``statuses``: not failed, and some parameter `saturated`."""
    live = [status != "nonfinite" for status in statuses]
    if not any(live):
        return torch.zeros(len(live), dtype=torch.bool, device=theta.device)
    reach, _, _, data_norm = model_sensitivities(problem, theta, index, shards=shards)
    found = torch.as_tensor(saturated(reach, data_norm) > 0, device=theta.device)
    return torch.tensor(live, device=theta.device) & found


def restart_plateaus(outcome: BatchOutcome, problem, index, rerun: Callable, shards=None) -> None:
    """Into ``outcome`` (of the curves ``index`` of the `model.Model` ``problem``; None: its only curve):
    ``rerun(positions)``, the restarts with factor 1 of the problems at those positions that stopped on a
    plateau (`stalled`; the native engine tests it in C: ``outcome.saturated``), kept by `keep_restarts`.
    The one plateau safeguard of every engine, for `fit` (a batch of one) and `fit_batch`."""

    def sensitivities_of(positions, theta: torch.Tensor, held: bool) -> tuple[torch.Tensor, ...]:
        curves = None if index is None else index[positions]
        return model_sensitivities(problem, theta, curves, held=held, shards=shards)

    plateau = outcome.saturated
    if plateau is None:
        plateau = stalled(problem, outcome.theta, outcome.status, index, shards)
    plateau = plateau.nonzero().flatten()
    if len(plateau):
        stuck = lambda theta: stuck_on_plateau(*sensitivities_of(plateau, theta, True))  # noqa: E731
        keep_restarts(outcome, plateau, rerun(plateau), stuck)


def model_sensitivities(
    problem, theta: torch.Tensor, index=None, *, held: bool = False, external: bool = False, shards=None
) -> tuple:
    """`sensitivities` of the curves ``index`` (None: all) of the `model.Model` ``problem`` at internal
    ``theta`` (b, p), over every rank's rows with ``shards`` (a distributed single fit). J, r and y carry
    1 / sigma and the curves' scales alike: the tests do not depend on the units of y or sigma. With
    ``held`` the parameters held at a bound count as live (the plateau verdict; not the restart's
    trigger, where a restart also brings a parameter closer to its bound). With ``external`` J is taken
    with respect to the parameter values, not the internal coordinates (`bounds.unsettled`: the sign of a
    gradient at a bound, where the transform's slope vanishes)."""
    values, at_bounds = problem.external(theta), held_at_bounds(theta, problem.bounded) if held else None
    point = values if external else theta
    y = problem.weighted_y(index)  # norms of data near 1e200 would overflow: in units 2^k
    if index is None and problem.batch == 1:  # as a single fit takes it (chunked: R, not J), in numpy on the CPU
        block = problem.augmented(point[0], external=external).unsqueeze(0)
        scale = torch.tensor([curve_unit(y[0])], dtype=block.dtype)
        if block.device.type == "cpu" and shards is None:
            block, values, y, scale = (part.detach().numpy() for part in (block, values, y, scale))
            at_bounds = None if at_bounds is None else at_bounds.numpy()
    else:
        block, scale = problem.augmented(point, index, external=external), power_of_two_scale(y)
    sum_rows = None
    if shards is not None:
        scale = scale.new_tensor([shards.minimum(float(scale[0]))])

        def sum_rows(sums: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(shards.sum(sums.cpu().numpy())).to(sums)

    return sensitivities(block, values, y, scale, sum_rows, at_bounds)


def keep_restarts(
    outcome: BatchOutcome, plateau: torch.Tensor, retry: BatchOutcome, stuck: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Into ``outcome``: the restarts ``retry`` of its problems at ``plateau`` where they reached a lower cost
    (their counts added), then status "plateau" where ``stuck(theta)`` (bool per row of theta (k, p)) holds.
    """
    better = (retry.cost.to(outcome.cost) < outcome.cost[plateau]).nonzero().flatten()
    for position in better.tolist():
        i = int(plateau[position])
        outcome.theta[i] = retry.theta[position]
        outcome.cost[i] = retry.cost[position]
        outcome.status[i] = retry.status[position]
        outcome.evaluations[i] += retry.evaluations[position]
        outcome.jacobians[i] += retry.jacobians[position]
        outcome.steps[i] = retry.steps[position]
        if outcome.histories is not None:
            outcome.histories[i] = retry.history(position)
            continue
        _replace_accepted(outcome, i, retry.history(position)[1:])
    # stuck: every convergence test passed on a flat cost, but the model no longer depends on its parameters
    # (a exp(-b x) from b = 40): not a minimum, unless the cost is zero ("exact")
    for i, flag in zip(plateau.tolist(), stuck(outcome.theta[plateau]).tolist()):
        if flag and outcome.status[i] != "exact" and TERMINATION[outcome.status[i]][0]:
            outcome.status[i] = "plateau"


def _replace_accepted(outcome: BatchOutcome, i: int, costs: list[float]) -> None:
    """Problem ``i``'s accepted costs in ``outcome`` replaced by ``costs`` (its restart's); the other
    problems' entries of the rounds it shared with them are kept."""
    kept = []
    for index, cost in outcome.accepted:
        others = index != i
        if bool(others.all()):
            kept.append((index, cost))
        elif bool(others.any()):
            kept.append((index[others], cost[others]))
    device = outcome.accepted[0][0].device if outcome.accepted else outcome.cost.device
    single = torch.tensor([i], device=device)
    kept += [(single, outcome.cost.new_tensor([cost])) for cost in costs]
    outcome.accepted = kept
