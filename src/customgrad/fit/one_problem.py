"""Levenberg-Marquardt for one problem given by callables (`fit`'s torch engine): `lm` over a batch of one.

The problem is what a single fit's solver calls (`api._Calls`, `profile`): residuals, [J | r] (robust:
reweighted), the cost of residuals (robust, summed over ranks), the reduction of [J | r] to R (one
process: Householder; distributed: TSQR over ranks) and sums over every rank's rows. The solver state
is float64 whatever the model's dtype, as the steps were before the two solvers became one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .lm import BatchProblem, BatchState, Outcome, batch_levenberg_marquardt


class OneProblem(BatchProblem):
    """`lm.BatchProblem` of one problem (index ignored): theta (1, p), residuals (1, n), float64, as
    torch tensors or numpy arrays (answered in the kind given: `arrays`, no conversion by the solver).

    Parameters
    ----------
    residuals, linearize, cost_of : callable
        theta (p,) -> r (n,); theta -> [J | r] (n, p + 1) (or an R of it: chunked rows); r -> float.
    sum_rows : callable, optional
        A numpy vector of sums over this process's rows -> the sums over every rank's rows.
    dtype : torch.dtype
        The model's dtype (theta is given to the callables in it).
    """

    arrays = "any"

    def __init__(self, residuals: Callable, linearize: Callable, cost_of: Callable, sum_rows, dtype):
        self._residuals, self._linearize, self._cost_of, self._sum_rows = residuals, linearize, cost_of, sum_rows
        self.dtype = dtype
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # theta and [J | r] of the last linearisation

    def residuals(self, theta, index):
        return _like(self._residuals(self._model_point(theta)), theta)

    def augmented(self, theta, index):
        """[J | r] at theta; the last one is kept, so the geodesic correction at the round's point costs no
        second Jacobian (one problem's J is small: a batch's is not kept)."""
        last = self._last
        if last is None or type(last[0]) is not type(theta) or not bool((last[0] == theta).all()):
            point = theta.copy() if isinstance(theta, np.ndarray) else theta.clone()
            self._last = last = point, _like(self._linearize(self._model_point(theta)), theta)
        return last[1]

    def cost(self, r):
        if isinstance(r, np.ndarray):
            return np.array([self._cost_of(torch.from_numpy(r[0]))])
        return r.new_tensor([self._cost_of(r[0])])

    def _model_point(self, theta) -> torch.Tensor:
        """The point (p,) of theta (1, p) as the model takes it: a tensor of the model's dtype."""
        point = torch.from_numpy(theta[0]) if isinstance(theta, np.ndarray) else theta[0]
        return point if point.dtype == self.dtype else point.to(self.dtype)

    def sum_rows(self, sums):
        if self._sum_rows is None:
            return sums
        rows = sums[0].cpu().numpy() if isinstance(sums, torch.Tensor) else sums[0]
        return _like(torch.as_tensor(np.asarray(self._sum_rows(rows))), sums)


def _like(value: torch.Tensor, like):
    """``value`` (a model's answer for one problem) as a batch of one in float64, the kind of array ``like`` is."""
    if value.dtype != torch.float64:
        value = value.to(torch.float64)
    if isinstance(like, np.ndarray):
        return value.detach().numpy()[None]
    return value.unsqueeze(0).to(like.device)


def levenberg_marquardt(
    residuals: Callable,
    linearize: Callable,
    cost_of: Callable,
    theta: torch.Tensor,
    *,
    on_step: Callable[[int, float], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sum_rows: Callable | None = None,
    **options,
) -> Outcome:
    """Minimise cost_of(residuals(theta)) from ``theta`` (p,) by `lm.batch_levenberg_marquardt`.

    ``reduce`` maps one block [J | r] (n, p + 1) to its R (default: Householder QR, `reduction`);
    ``on_step(step, cost)`` is called after each accepted step; other options (ftol, xtol, gtol,
    max_steps, factor, geodesic_acceleration) as `batch_levenberg_marquardt` takes them.
    """
    problem = OneProblem(residuals, linearize, cost_of, sum_rows, theta.dtype)
    if reduce is not None:
        options["reduce"] = lambda blocks: reduce(blocks[0]).to(blocks).unsqueeze(0)
    if on_step is not None:
        options["on_round"] = _reporter(on_step)
    outcome = batch_levenberg_marquardt(problem, theta.detach().to(torch.float64).unsqueeze(0), **options).one(0)
    outcome.theta = outcome.theta.to(theta)
    return outcome


def _reporter(on_step: Callable[[int, float], None]) -> Callable[[BatchState], None]:
    """``on_round`` for `batch_levenberg_marquardt`: ``on_step(steps, cost)`` after a round that accepted a step."""
    reported = [0]

    def on_round(state: BatchState) -> None:
        steps = int(state.steps[0])
        if steps > reported[0]:
            reported[0] = steps
            on_step(steps, float(state.cost[0]))

    return on_round
