"""Levenberg-Marquardt over a batch of independent problems, as tensors with a leading batch dimension.

MINPACK's scaled trust region (lmder): delta = -(J^T J + lambda D^2)^-1 J^T r with ||D delta|| <= Delta,
lambda from the SVD of R D^-1 by Hebden's iteration, D the running maxima of the column norms (so the
method is invariant to parameter scale), damped steps bent by a geodesic acceleration (Transtrum &
Sethna 2012: on curved valleys such as Bennett5 and MGH09/10/17 it cuts the Jacobians several-fold),
and one Gauss-Newton polish step after ftol/xtol/roundoff stops (`lm.POLISHED`). Every scalar of the
loop is a tensor of shape (B,): damping, trust radius, counters and status are per problem, and a
problem stops changing once its status is set while the others go on. `fit` runs it over a batch of
one (`one_problem`), `fit_batch` over its curves; `native_lm.c` is its per-curve C twin, and `lm`
holds the constants all share. Each round is one trial step for every running problem; those
whose step was accepted get a new Jacobian in the next round. Only the running problems are
evaluated (their indices are passed to the model), so a batch costs what its slowest members do.

The Jacobian reaches the step only through R of [J | r] (`reduction`), the small SVDs are batched
Jacobi rotations (`jacobi`), and the geodesic correction needs J^T r'', a sum over each problem's rows
(J evaluated again for the problems that take a curved step: no J is kept between rounds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from .jacobi import jacobi_svd
from .lm import (
    ACCELERATION_RATIO,
    COLUMN_SHRUNK,
    DRIFT_TOLERANCE,
    DRIFT_WINDOW,
    EPS,
    NONFINITE_RETRIES,
    POLISH_SLACK,
    POLISHED,
    PROBE,
    RANK_TOLERANCE,
    SHRUNK,
    TINY,
    UNEXPLOITED_SHARE,
    VISIBLE_STEP,
    Outcome,
)
from .reduction import reduce_batched
from .statistics import safe_column_norms
from .status import CODE, STATUSES


@dataclass
class BatchState:
    """Per-problem state of the iteration, every field a tensor over the leading batch dimension."""

    theta: torch.Tensor  # (B, p) internal coordinates
    cost: torch.Tensor  # (B,)
    scale: torch.Tensor  # (B, p) D: running maxima of the column norms
    live_scale: torch.Tensor  # (B, p) D where the column is nonzero, else 0: ||D theta|| over these (`lm`)
    radius: torch.Tensor  # (B,) trust radius
    theta_norm: torch.Tensor  # (B,) ||D theta||
    # the current linearisation's SVD of R D^-1, and the steps built from it
    values: torch.Tensor  # (B, p) singular values s
    vt: torch.Tensor  # (B, p, p)
    products: torch.Tensor  # (B, p) s U^T Q^T r
    gauss_newton: torch.Tensor  # (B, p) V-coordinates of the Gauss-Newton step
    gauss_newton_norm: torch.Tensor  # (B,)
    gauss_newton_decrease: torch.Tensor  # (B,) ||S c_GN||^2, the reduction the Gauss-Newton step promises
    start: torch.Tensor  # (B,) Hebden's starting lambda
    low_rank: torch.Tensor  # (B,) bool: a direction the data do not determine
    recent: torch.Tensor  # (B, DRIFT_WINDOW + 1) the costs of the last accepted steps
    evaluations: torch.Tensor  # (B,) int
    jacobians: torch.Tensor
    steps: torch.Tensor
    nonfinite_run: torch.Tensor
    fresh: torch.Tensor  # (B,) bool: needs a new Jacobian
    status: torch.Tensor  # (B,) int code in STATUSES

    def take(self, index: torch.Tensor) -> BatchState:
        """The problems at ``index``, as a smaller state (index_select: about twice as fast as ``[index]``)."""
        return BatchState(**{f.name: getattr(self, f.name).index_select(0, index) for f in fields(self)})

    def put(self, index: torch.Tensor, part: BatchState) -> None:
        """Write ``part`` back at ``index``."""
        for f in fields(self):
            getattr(self, f.name).index_copy_(0, index, getattr(part, f.name))


@dataclass
class BatchOutcome:
    """What the batched solver hands back: final state per problem, and the accepted costs per round."""

    theta: torch.Tensor
    status: list[str]
    cost: torch.Tensor
    evaluations: torch.Tensor
    jacobians: torch.Tensor
    steps: torch.Tensor
    initial_cost: torch.Tensor
    accepted: list[tuple[torch.Tensor, torch.Tensor]]
    histories: Sequence[list[float]] | None = None  # given outright (native engine, gathered from other processes)
    saturated: torch.Tensor | None = None  # (native engine) bool per problem: stopped on a plateau

    @classmethod
    def of_one(cls, outcome: Outcome) -> BatchOutcome:
        """A single problem's `lm.Outcome` as a batch of one."""
        cost = torch.tensor([outcome.cost], dtype=torch.float64)
        counts = (torch.tensor([count]) for count in (outcome.evaluations, outcome.jacobians, outcome.steps))
        initial = cost.new_tensor([outcome.history[0] if outcome.history else outcome.cost])
        return cls(outcome.theta.unsqueeze(0), [outcome.status], cost, *counts, initial, [], [list(outcome.history)])

    def one(self, i: int) -> Outcome:
        """Problem ``i``'s `lm.Outcome`."""
        return Outcome(
            theta=self.theta[i],
            status=self.status[i],
            cost=float(self.cost[i]),
            evaluations=int(self.evaluations[i]),
            jacobians=int(self.jacobians[i]),
            steps=int(self.steps[i]),
            history=self.history(i),
        )

    def in_data_units(self, scales: torch.Tensor) -> None:
        """Costs back in the data's units, for problems whose residuals were multiplied by ``scales`` (one per row)."""
        scales = scales.to(self.cost)
        self.cost = self.cost / scales / scales  # (scales^2 may leave float64's range)
        self.initial_cost = self.initial_cost / scales / scales
        self.accepted = [(index, cost / scales[index] / scales[index]) for index, cost in self.accepted]
        if self.histories is not None:
            unit = scales.tolist()
            self.histories = [[c / unit[i] / unit[i] for c in self.histories[i]] for i in range(len(self.histories))]

    def history(self, i: int) -> list[float]:
        """Problem ``i``'s costs: the initial one, then after each accepted step."""
        if self.histories is not None:
            return self.histories[i]
        costs = [float(self.initial_cost[i])]
        for index, cost in self.accepted:
            hit = (index == i).nonzero()
            if len(hit):
                costs.append(float(cost[hit[0, 0]]))
        return costs


class BatchProblem:
    """The interface the solver needs: residuals and [J | r] of the problems at ``index``, the cost of
    residuals and the sum over all rows of per-row sums (defaults: least squares, all rows here)."""

    def residuals(self, theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (b, n)
        raise NotImplementedError

    def augmented(self, theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (b, n, p + 1)
        """[J | r] of the local least-squares model (for a robust loss: reweighted, see `loss`)."""
        raise NotImplementedError

    def cost(self, r: torch.Tensor) -> torch.Tensor:
        """(b,) cost = sum_i r_i^2 of residuals (b, n): what the trust region accepts steps on."""
        return (r * r).sum(-1)

    def sum_rows(self, sums: torch.Tensor) -> torch.Tensor:
        """(b, k) per-problem sums over this process's rows -> sums over all rows (the geodesic J^T r'')."""
        return sums


def batch_levenberg_marquardt(
    problem: BatchProblem,
    theta: torch.Tensor,
    *,
    ftol: float = 1e-15,
    xtol: float = 1e-15,
    gtol: float = 1e-15,
    max_steps: int = 1000,
    factor: float = 100.0,
    geodesic_acceleration: bool = True,
    reduce: Callable[[torch.Tensor], torch.Tensor] = reduce_batched,
    on_round: Callable[[BatchState], None] | None = None,
) -> BatchOutcome:
    """Minimise problem.cost(r_b(theta_b)) (||r_b||^2 by default) for every problem b of ``theta`` (B, p) at once.

    ``ftol``, ``xtol``, ``gtol``: stop when the actual and predicted relative reductions of the cost are
    both below ``ftol``, the trust radius is below ``xtol * ||D theta||``, or the cosine between r and every
    column of J is below ``gtol``; ``max_steps``: Jacobian evaluations; ``geodesic_acceleration`` needs
    ``problem.augmented``'s residual column to be ``problem.residuals`` (least squares); ``reduce`` maps
    blocks (b, n, p + 1) to R (b, p + 1, p + 1); ``on_round(state)`` is called after each round with the
    state so far (``state.status``: codes).
    """
    batch, p = theta.shape
    everyone = torch.arange(batch, device=theta.device)
    r = problem.residuals(theta, everyone)
    cost = problem.cost(r)
    state = _initial_state(theta, cost)
    accepted_log: list[tuple[torch.Tensor, torch.Tensor]] = []
    tolerances = (ftol, xtol, gtol, max_steps, factor)
    while True:
        index = (state.status == 0).nonzero().flatten()
        if len(index) == 0:
            break
        part = state if len(index) == batch else state.take(index)
        _linearize_fresh(problem, part, index, reduce, tolerances)
        running = (part.status == 0).nonzero().flatten()
        if len(running):
            trial = part if len(running) == len(index) else part.take(running)
            accepted = _trial_step(problem, trial, index[running], geodesic_acceleration, tolerances)
            if len(accepted):
                accepted_log.append((index[running][accepted], trial.cost[accepted].clone()))
            if trial is not part:
                part.put(running, trial)
        if part is not state:
            state.put(index, part)
        if on_round is not None:
            on_round(state)
    _polish(problem, state, reduce, accepted_log)
    return BatchOutcome(
        theta=state.theta,
        status=[STATUSES[code] for code in state.status.tolist()],
        cost=state.cost,
        evaluations=state.evaluations,
        jacobians=state.jacobians,
        steps=state.steps,
        initial_cost=cost,
        accepted=accepted_log,
    )


def _initial_state(theta: torch.Tensor, cost: torch.Tensor) -> BatchState:
    batch, p = theta.shape

    def zeros(*shape, dtype=theta.dtype):
        return torch.zeros(batch, *shape, dtype=dtype, device=theta.device)

    recent = zeros(DRIFT_WINDOW + 1)
    recent[:, -1] = cost
    integer = torch.long
    return BatchState(
        theta=theta.clone(),
        cost=cost.clone(),
        scale=zeros(p),
        live_scale=zeros(p),
        radius=zeros(),
        theta_norm=zeros(),
        values=zeros(p),
        vt=zeros(p, p),
        products=zeros(p),
        gauss_newton=zeros(p),
        gauss_newton_norm=zeros(),
        gauss_newton_decrease=zeros(),
        start=zeros(),
        low_rank=zeros(dtype=torch.bool),
        recent=recent,
        evaluations=torch.ones(batch, dtype=integer, device=theta.device),
        jacobians=zeros(dtype=integer),
        steps=zeros(dtype=integer),
        nonfinite_run=zeros(dtype=integer),
        fresh=torch.ones(batch, dtype=torch.bool, device=theta.device),
        status=zeros(dtype=integer),
    )


def _set_status(state: BatchState, condition: torch.Tensor, name: str) -> None:
    """Status ``name`` where ``condition`` holds and no status is set yet."""
    state.status = torch.where(condition & (state.status == 0), CODE[name], state.status)


def _linearize_fresh(problem, part, index, reduce, tolerances) -> None:
    """New Jacobians, trust-region scales and SVDs for the problems of ``part`` that need them."""
    _, _, gtol, max_steps, factor = tolerances
    _set_status(part, part.fresh & (part.jacobians >= max_steps), "max_steps")
    fresh = (part.fresh & (part.status == 0)).nonzero().flatten()
    if len(fresh) == 0:
        return
    state = part if len(fresh) == len(index) else part.take(fresh)
    reduced = reduce(problem.augmented(state.theta, index[fresh]))
    state.jacobians = state.jacobians + 1
    state.fresh = torch.zeros_like(state.fresh)
    p = state.theta.shape[-1]
    finite = torch.isfinite(reduced).flatten(1).all(-1)
    reduced = torch.where(finite[:, None, None], reduced, 0.0)
    upper, qtr = reduced[:, :p, :p], reduced[:, :p, p]
    column_norms = safe_column_norms(upper)
    first = state.jacobians == 1
    # D restarts where every column shrank below SHRUNK of its maximum (see `lm.SHRUNK`)
    first = first | (column_norms < SHRUNK * state.scale).all(-1)
    initial_scale = torch.where(column_norms > 0, column_norms, 1.0)
    scale = torch.maximum(state.scale, column_norms)
    # a single column that shrank by orders of magnitude restarts alone (`lm.COLUMN_SHRUNK`)
    scale = torch.where((column_norms > 0) & (column_norms < COLUMN_SHRUNK * scale), column_norms, scale)
    state.scale = torch.where(first[:, None], initial_scale, scale)
    initial_radius = factor * torch.linalg.vector_norm(state.scale * state.theta, dim=-1)
    initial_radius = torch.where(initial_radius == 0, factor, initial_radius)
    # at least a step whose effect shows in float64 (see `lm.VISIBLE_STEP`)
    initial_radius = torch.maximum(initial_radius, VISIBLE_STEP * torch.sqrt(state.cost))
    state.radius = torch.where(first, initial_radius, state.radius)
    # a cost that overflowed (or NaN) makes every convergence test pass vacuously
    _set_status(state, ~finite | ~torch.isfinite(state.cost), "nonfinite")
    _set_status(state, state.cost == 0, "exact")
    # gtol: max_j |J_j^T r| / (||J_j|| ||r||) <= gtol
    gradient = (upper * qtr.unsqueeze(-1)).sum(-2).abs()
    cosine = (gradient / column_norms.clamp_min(TINY)).amax(-1)
    _set_status(state, cosine <= gtol * torch.sqrt(state.cost), "gtol")
    # warm start from the previous V (none yet on the first Jacobian: all zeros)
    previous = state.vt.transpose(-1, -2)
    start = torch.where(first[:, None, None], torch.eye(p, dtype=previous.dtype, device=previous.device), previous)
    values, vt, products = jacobi_svd(upper / state.scale.unsqueeze(-2), qtr, start)
    largest = values[:, :1]
    keep = (largest > 0) & (values > largest * RANK_TOLERANCE)
    squares = values * values
    state.values, state.vt, state.products = values, vt, products
    state.gauss_newton = torch.where(keep, -products / torch.where(keep, squares, 1.0), 0.0)
    state.gauss_newton_norm = torch.linalg.vector_norm(state.gauss_newton, dim=-1)
    projected = torch.where(keep, products / torch.where(keep, values, 1.0), 0.0)
    state.gauss_newton_decrease = (projected * projected).sum(-1)
    state.start = torch.where(keep.all(-1), 0.0, EPS * largest[:, 0] ** 2)
    state.low_rank = values[:, -1] <= RANK_TOLERANCE * values[:, 0]
    state.live_scale = torch.where(column_norms > 0, state.scale, 0.0)
    state.theta_norm = torch.linalg.vector_norm(state.live_scale * state.theta, dim=-1)
    if state is not part:
        part.put(fresh, state)


def _damped_steps(state: BatchState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """lambda, the step's V-coordinates c, ||c|| and ||S c||^2 per problem, ||c|| within 10% of the radius.

    lambda = 0 where the Gauss-Newton step (pseudo-inverse: directions below `RANK_TOLERANCE` left out)
    already fits; elsewhere Newton's method on 1/||delta|| (Hebden), which converges from below.
    """
    radius, squares, products = state.radius, state.values**2, state.products
    fits = state.gauss_newton_norm <= 1.1 * radius
    lam = state.start.clone()
    done = fits.clone()
    for _ in range(60):
        coefficients = _ratio(products, squares + lam.unsqueeze(-1))
        norm = torch.linalg.vector_norm(coefficients, dim=-1)
        done = done | ((norm - radius).abs() <= 0.1 * radius) | (norm == 0)
        if bool(done.all()):
            break
        derivative = -_ratio(coefficients * coefficients, squares + lam.unsqueeze(-1)).sum(-1) / norm
        lam = torch.where(done, lam, (lam + (norm - norm * norm / radius) / derivative).clamp_min(0.0))
    coordinates = torch.where(fits.unsqueeze(-1), state.gauss_newton, -_ratio(products, squares + lam.unsqueeze(-1)))
    lam = torch.where(fits, 0.0, lam)
    norm = torch.where(fits, state.gauss_newton_norm, torch.linalg.vector_norm(coordinates, dim=-1))
    decrease = (squares * coordinates * coordinates).sum(-1)
    return lam, coordinates, norm, decrease


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, and 0 where b = 0 (a zero singular value at lambda = 0, where a = s u = 0 too)."""
    return torch.where(b != 0, a / torch.where(b != 0, b, 1.0), 0.0)


def _to_parameters(state: BatchState, coordinates: torch.Tensor) -> torch.Tensor:
    """D^-1 V c: a step in parameter space from its V-coordinates."""
    return (state.vt * coordinates.unsqueeze(-1)).sum(-2) / state.scale


def _trial_step(problem, state, index, geodesic_acceleration, tolerances) -> torch.Tensor:
    """One trial step for every problem of ``state``; returns the positions of the accepted ones."""
    ftol, xtol, _, _, _ = tolerances
    lam, coordinates, step_norm, decrease = _damped_steps(state)
    first = (state.steps == 0) & (state.jacobians == 1)
    state.radius = torch.where(first, torch.minimum(state.radius, step_norm), state.radius)
    velocity = _to_parameters(state, coordinates)
    if geodesic_acceleration:
        bent = (lam > 0).nonzero().flatten()
        if len(bent):
            velocity[bent] += _half_acceleration(problem, state, index, bent, velocity, lam, step_norm)
            state.evaluations[bent] += 1
    trial = state.theta + velocity
    r_trial = problem.residuals(trial, index)
    state.evaluations = state.evaluations + 1
    cost_trial = problem.cost(r_trial)
    cost = state.cost
    finite = torch.isfinite(cost_trial)
    near = 0.1 * torch.sqrt(cost_trial) < torch.sqrt(cost)
    actual = torch.where(finite & near, 1 - cost_trial / cost, -1.0)
    linear_part = decrease / cost
    damping_part = lam * step_norm**2 / cost
    predicted = linear_part + 2 * damping_part
    directional = -(linear_part + damping_part)
    ratio = torch.where(predicted != 0, actual / torch.where(predicted != 0, predicted, 1.0), 0.0)
    shrink = torch.where(actual >= 0, 0.5, 0.5 * directional / (directional + 0.5 * actual))
    shrink = torch.where(~finite | ~near | (shrink < 0.1), 0.1, shrink)
    grown = torch.where((lam == 0) | (ratio >= 0.75), step_norm / 0.5, state.radius)
    state.radius = torch.where(ratio <= 0.25, shrink * torch.minimum(state.radius, step_norm / 0.1), grown)
    accepted = ratio >= 1e-4
    _accept(state, accepted, trial, cost_trial)
    theta_norm = state.theta_norm
    # a tiny reduction counts only when the Gauss-Newton step has little left to give (`lm.UNEXPLOITED_SHARE`)
    exhausted = (0.5 * ratio <= 1) & (state.gauss_newton_decrease <= UNEXPLOITED_SHARE * state.cost)
    rule = (abs(actual) <= ftol) & (predicted <= ftol) & exhausted
    _set_status(state, rule, "ftol")
    _set_status(state, state.radius <= xtol * theta_norm, "xtol")
    roundoff = ((actual.abs() <= EPS) & (predicted <= EPS) & exhausted) | (state.radius <= EPS * theta_norm)
    _set_status(state, roundoff, "roundoff")
    _set_status(state, state.cost == 0, "exact")
    drift = state.recent[:, 0] - state.cost <= DRIFT_TOLERANCE * state.cost
    _set_status(state, accepted & state.low_rank & (state.steps + 1 > DRIFT_WINDOW) & drift, "drift")
    state.nonfinite_run = torch.where(finite, 0, state.nonfinite_run + 1)
    stop = (state.status != 0) | (state.nonfinite_run >= NONFINITE_RETRIES)
    state.status = torch.where((state.nonfinite_run > 0) & stop, CODE["nonfinite"], state.status)
    state.fresh = accepted & (state.status == 0)
    return accepted.nonzero().flatten()


def _accept(state, accepted, trial, cost_trial) -> None:
    state.theta = torch.where(accepted.unsqueeze(-1), trial, state.theta)
    state.cost = torch.where(accepted, cost_trial, state.cost)
    state.steps = state.steps + accepted.long()
    shifted = torch.cat([state.recent[:, 1:], state.cost.unsqueeze(-1)], dim=-1)
    state.recent = torch.where(accepted.unsqueeze(-1), shifted, state.recent)
    new_norm = torch.linalg.vector_norm(state.live_scale * state.theta, dim=-1)
    state.theta_norm = torch.where(accepted, new_norm, state.theta_norm)


def _polish(problem, state: BatchState, reduce, accepted_log: list) -> None:
    """One Gauss-Newton step for the converged problems, kept where the cost does not rise (see `lm.POLISHED`)."""
    codes = torch.tensor([CODE[name] for name in POLISHED], device=state.status.device)
    index = torch.isin(state.status, codes).nonzero().flatten()
    if len(index) == 0:
        return
    theta, cost, scale = state.theta[index], state.cost[index], state.scale[index]
    reduced = reduce(problem.augmented(theta, index))
    p = theta.shape[-1]
    finite = torch.isfinite(reduced).flatten(1).all(-1)
    reduced = torch.where(finite[:, None, None], reduced, 0.0)
    # warm start from the last linearization's V (these statuses are set by trial steps, after an SVD)
    start = state.vt.index_select(0, index).transpose(-1, -2)
    values, vt, products = jacobi_svd(reduced[:, :p, :p] / scale.unsqueeze(-2), reduced[:, :p, p], start)
    keep = (values[:, :1] > 0) & (values > values[:, :1] * RANK_TOLERANCE)
    coordinates = torch.where(keep, -products / torch.where(keep, values * values, 1.0), 0.0)
    trial = theta + (vt * coordinates.unsqueeze(-1)).sum(-2) / scale
    r_trial = problem.residuals(trial, index)
    cost_trial = problem.cost(r_trial)
    better = finite & (cost_trial <= cost * (1 + POLISH_SLACK))
    state.jacobians[index] += 1
    state.evaluations[index] += finite.long()
    state.steps[index] += better.long()
    state.theta[index] = torch.where(better.unsqueeze(-1), trial, theta)
    state.cost[index] = torch.where(better, cost_trial, cost)
    if bool(better.any()):
        accepted_log.append((index[better], cost_trial[better]))


def _half_acceleration(problem, state, index, bent, velocity, lam, step_norm) -> torch.Tensor:
    """Half the geodesic acceleration a = -(J^T J + lambda D^2)^-1 J^T r''(v, v) of the problems at ``bent``.

    r''(v, v) ~ (2 / h) ((r(theta + h v) - r) / h - J v) from one probe at h = `PROBE`, solved in the SVD
    coordinates of the step; J^T r'' is a sum over rows (`BatchProblem.sum_rows`). 0 where the
    acceleration is not small next to the velocity (2 ||a|| > `ACCELERATION_RATIO` ||v||, scaled).

    J and r at the current point are evaluated again for these problems (usually a minority, 0-30%
    per round), which is cheaper than keeping every problem's J between rounds.
    """
    rows = index[bent]
    block = problem.augmented(state.theta[bent], rows).permute(2, 0, 1)  # the model's layout (p + 1, b, n)
    jacobian, r = block[:-1], block[-1]
    v = velocity[bent]
    r_probe = problem.residuals(state.theta[bent] + PROBE * v, rows)
    jv = (jacobian * v.T.unsqueeze(-1)).sum(0)
    curvature = (r_probe - r - PROBE * jv) * (2 / PROBE**2)
    scale = state.scale[bent]
    projected = problem.sum_rows((jacobian * curvature).sum(-1).T) / scale
    vt = state.vt[bent]
    coordinates = -(vt @ projected.unsqueeze(-1)).squeeze(-1) / (state.values[bent] ** 2 + lam[bent].unsqueeze(-1))
    small = 2 * torch.linalg.vector_norm(coordinates, dim=-1) <= ACCELERATION_RATIO * step_norm[bent]
    acceleration = 0.5 * (vt * coordinates.unsqueeze(-1)).sum(-2) / scale
    return torch.where(small.unsqueeze(-1), acceleration, 0.0)
