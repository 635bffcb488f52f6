"""The solvers behind `fit`, one row per method in `SOLVERS`: Levenberg-Marquardt (default: `lm` over a
batch of one) and the gradient-based optimisers L-BFGS, Adam and SGD, which minimise cost = sum rho(r^2)
directly.

Each takes the problem as `api._Calls` and `profile` give it: residuals, [J | r] (robust: reweighted), the
cost of residuals (robust, summed over ranks); for LM the reduction of [J | r] to R (one process:
Householder; distributed: TSQR over ranks) and sums over every rank's rows, for the gradient methods the
cost as a differentiable ``objective``. LM's state is float64 whatever the model's dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import UsageError
from .lm import BatchProblem, BatchState, Outcome, batch_levenberg_marquardt

# Default step limits and learning rates; SGD's is the blog's.
DEFAULT_STEPS = {"lm": 1000, "lbfgs": 500, "adam": 5000, "sgd": 2000}
LEARNING_RATES = {"lbfgs": 1.0, "adam": 1e-2, "sgd": 1e-6}


class OneProblem(BatchProblem):
    """`lm.BatchProblem` of one problem (index ignored): theta (1, p), residuals (1, n), float64, as
    torch tensors, or numpy arrays without the batch axis (theta (p,), residuals (n,), the cost a numpy
    scalar: `arrays.SCALAR`), answered in the kind given (no conversion by the solver).

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
        if last is None or last[0] is not theta:  # (the solver's arrays are new at each step, never changed)
            self._last = last = theta, _like(self._linearize(self._model_point(theta)), theta)
        return last[1]

    def cost(self, r):
        if isinstance(r, np.ndarray):
            return np.float64(self._cost_of(torch.from_numpy(r)))
        return r.new_tensor([self._cost_of(r[0])])

    def _model_point(self, theta) -> torch.Tensor:
        """The point (p,) of theta as the model takes it: a tensor of the model's dtype."""
        point = torch.from_numpy(theta) if isinstance(theta, np.ndarray) else theta[0]
        return point if point.dtype == self.dtype else point.to(self.dtype)

    def sum_rows(self, sums):
        if self._sum_rows is None:
            return sums
        if isinstance(sums, np.ndarray):
            return np.asarray(self._sum_rows(sums), dtype=np.float64)
        total = torch.as_tensor(np.asarray(self._sum_rows(sums[0].cpu().numpy())))
        return _like(total, sums)


def _like(value: torch.Tensor, like):
    """``value`` (a model's answer for one problem) in float64, the kind of array ``like`` is: a numpy
    array as it is, a tensor as a batch of one."""
    if value.dtype != torch.float64:
        value = value.to(torch.float64)
    if isinstance(like, np.ndarray):
        return value.detach().numpy()
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
    objective: Callable | None = None,
    learning_rate: float | None = None,
    **options,
) -> Outcome:
    """Minimise cost_of(residuals(theta)) from ``theta`` (p,) by `lm.batch_levenberg_marquardt`.

    ``reduce`` maps one block [J | r] (n, p + 1) to its R (default: Householder QR, `lm`'s);
    ``on_step(step, cost)`` is called after each accepted step; other options (ftol, xtol, gtol,
    max_steps, factor, geodesic_acceleration) as `batch_levenberg_marquardt` takes them;
    ``objective`` and ``learning_rate`` are the gradient methods' (unused).
    """
    problem = OneProblem(residuals, linearize, cost_of, sum_rows, theta.dtype)
    if reduce is not None:
        options["reduce"] = lambda blocks: _one_block(reduce, blocks)
    if on_step is not None:
        options["on_round"] = _reporter(on_step)
    outcome = batch_levenberg_marquardt(problem, theta.detach().to(torch.float64).unsqueeze(0), **options).one(0)
    outcome.theta = outcome.theta.to(theta)
    return outcome


def _one_block(reduce: Callable[[torch.Tensor], torch.Tensor], blocks: torch.Tensor) -> torch.Tensor:
    """``reduce`` (one block [J | r] -> R) for the solver's blocks: one block (n, p + 1), or a batch of one."""
    if blocks.dim() == 2:
        return reduce(blocks).to(blocks)
    return reduce(blocks[0]).to(blocks).unsqueeze(0)


def _reporter(on_step: Callable[[int, float], None]) -> Callable[[BatchState], None]:
    """``on_round`` for `batch_levenberg_marquardt`: ``on_step(steps, cost)`` after a round that accepted a step."""
    reported = [0]

    def on_round(state: BatchState) -> None:
        steps = int(state.steps.reshape(-1)[0])  # (a numpy scalar, or a tensor (1,): `arrays`)
        if steps > reported[0]:
            reported[0] = steps
            on_step(steps, float(state.cost.reshape(-1)[0]))

    return on_round


# torch's optimisers over the one parameter tensor ``leaf``
_LBFGS = dict(max_iter=20, line_search_fn="strong_wolfe", tolerance_grad=1e-15, tolerance_change=1e-15, history_size=20)
_OPTIMIZERS = {
    "lbfgs": lambda leaf, rate: torch.optim.LBFGS([leaf], lr=rate, **_LBFGS),
    "adam": lambda leaf, rate: torch.optim.Adam([leaf], lr=rate),
    "sgd": lambda leaf, rate: torch.optim.SGD([leaf], lr=rate),
}


def _gradient_descent(
    name: str,
    residuals: Callable,
    linearize: Callable,
    cost_of: Callable,
    theta: torch.Tensor,
    *,
    max_steps: int,
    learning_rate: float | None = None,
    on_step: Callable | None = None,
    objective: Callable,
    shards=None,
    **_,
) -> Outcome:
    """Minimise ``objective`` (the cost as a differentiable tensor) from ``theta`` by torch's optimiser ``name``;
    the best point seen is returned (adam and sgd do not descend monotonically)."""
    leaf = theta.detach().clone().requires_grad_()
    optimizer = _OPTIMIZERS[name](leaf, LEARNING_RATES[name] if learning_rate is None else learning_rate)
    evaluations = 0
    best_theta, best_cost = theta.detach().clone(), math.inf
    history: list[float] = []

    def closure():
        nonlocal evaluations
        optimizer.zero_grad()
        with torch.enable_grad():
            value = objective(leaf)
            value.backward()
        evaluations += 1
        if shards is not None:  # the cost is a sum over every rank's rows: so is its gradient
            shards.all_reduce_gradient(leaf)
            value = value.detach().new_tensor(shards.sum(float(value)))
        return value

    # adam and sgd have no convergence test: reaching the step limit is all they can report
    status = "step_limit"
    for step in range(max_steps):
        before = leaf.detach().clone()
        # the value returned is the cost at the parameters before the step
        value = float(optimizer.step(closure).detach())
        if not math.isfinite(value):
            status = "nonfinite"
            break
        if value < best_cost:
            best_theta, best_cost = before, value
        history.append(value)
        if on_step is not None:
            on_step(step + 1, value)
        if name == "lbfgs" and len(history) > 1 and abs(history[-2] - value) <= 1e-15 * abs(value):
            status = "ftol"
            break
    final = cost_of(residuals(leaf.detach()))
    if math.isfinite(final) and final <= best_cost:
        best_theta, best_cost = leaf.detach().clone(), final
    if status == "step_limit" and name == "lbfgs":
        status = "max_steps"
    # (evaluations: one cost more than the gradients, whose count stands for the Jacobians)
    return Outcome(best_theta, status, best_cost, evaluations + 1, evaluations, len(history), history)


SOLVERS: dict[str, Callable[..., Outcome]] = {
    "lm": levenberg_marquardt,
    **{name: functools.partial(_gradient_descent, name) for name in _OPTIMIZERS},
}


def get_solver(method: str) -> Callable[..., Outcome]:
    """The solver for ``method`` in {"lm", "lbfgs", "adam", "sgd"}."""
    if method not in SOLVERS:
        raise UsageError(f"unknown method {method!r}: choose one of {{{', '.join(SOLVERS)}}}")
    return SOLVERS[method]
