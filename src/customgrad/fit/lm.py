"""Levenberg-Marquardt over a batch of problems (a single fit is a batch of one), its constants, and
what a solver hands back (`Outcome`).

MINPACK's scaled trust region (lmder): delta = -(J^T J + lambda D^2)^-1 J^T r with ||D delta|| <= Delta,
lambda from the SVD of R D^-1 (where [J | r] = QR: J^T J is never formed) by Hebden's iteration, D the
running maxima of the column norms (so the method is invariant to parameter scale), damped steps bent
by a geodesic acceleration (Transtrum & Sethna 2012: on curved valleys such as Bennett5 and MGH09/10/17
it cuts the Jacobians several-fold), and one Gauss-Newton polish step after ftol/xtol/roundoff stops
(`POLISHED`). Every scalar of the loop is an array of shape (B,): damping, trust radius, counters and
status are per problem, and a problem stops changing once its status is set while the others go on.
The arrays are torch tensors, or numpy arrays for batches of at most 8 on the CPU, where each
operation's dispatch is its whole cost (`arrays`: the code below is written once against either).

`fit` runs it over a batch of one (`solvers.levenberg_marquardt`), `fit_batch` over its curves; the
per-curve C solver `native_lm.c` (CPU and CUDA builds, these constants passed by `native.Options`) takes
the same steps. The plateau safeguard around both is `plateau`. Each round is one trial step for every
running problem; those whose step was accepted get a new Jacobian in the next round. Only the running
problems are evaluated (their indices are passed to the model), so a batch costs what its slowest members
do. The Jacobian reaches the step only through R of [J | r] (`reduction`), the small SVDs are batched
Jacobi rotations (`jacobi`), and the geodesic correction needs J^T r'', a sum over each problem's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from types import SimpleNamespace

import numpy as np
import torch

from .arrays import SCALAR, TORCH, namespace
from .statistics import safe_column_norms
from .status import CODE, STATUSES

EPS = float(np.finfo(np.float64).eps)
TINY = float(np.finfo(np.float64).tiny)
# Singular values below this share of the largest are left out of Gauss-Newton steps: those directions
# are not identifiable from the data (the cost does not change along them), and stepping along
# them only makes the parameters drift.
RANK_TOLERANCE = 1e-10
# With such directions, the parameters can drift forever at a nearly constant cost (a model with a
# redundant parameter approaching its infimum): stop when the cost changes by less than
# DRIFT_TOLERANCE (relative) over DRIFT_WINDOW accepted steps.
DRIFT_TOLERANCE, DRIFT_WINDOW = 1e-8, 10
# Consecutive trial steps with NaN/inf cost tolerated, each shrinking the trust region tenfold:
# enough to come back from a first step that overflowed.
NONFINITE_RETRIES = 30
# Statuses after which one Gauss-Newton step polishes the solution: these stops leave the parameters
# within about sqrt(ftol) of the minimum (in standard errors), so that a change of one ulp in the data
# or in the arithmetic moves the result by ~1e-8 relative; the polish contracts that spread by the
# Gauss-Newton rate, and is kept only when the cost does not increase.
POLISHED = ("ftol", "xtol", "roundoff")
# At the minimum the cost is flat to roundoff: the polished point is kept unless the cost rises by more.
POLISH_SLACK = 1e-14
# Geodesic acceleration: the probe step h for the second directional derivative (in units of the step)
# and the largest accepted ratio 2 ||a|| / ||v|| (Transtrum & Sethna's alpha).
PROBE, ACCELERATION_RATIO = 0.1, 0.75
# ftol's relative reductions are those of the step the trust region allowed: when the Gauss-Newton
# step would still remove more than this share of the cost, a tiny reduction means the region is too
# small (a start 1e160 times off the solution), not that the fit converged.
UNEXPLOITED_SHARE = 1e-4
# The first trust radius is at least this share of ||r||: a step of D-norm rho changes the cost by
# about rho ||r||, and below ~EPS ||r|| no reduction shows in float64 at all (a start 1e160 off).
VISIBLE_STEP = 1e-8
# D holds running maxima of the Jacobian's column norms. When every column has shrunk below SHRUNK times
# its maximum (an exponential that left its range: exp(a x) from a = 400 to 1.3), R D^-1 is so small that
# its squared singular values underflow and the step vanishes: D restarts from the current columns,
# and the trust radius with it, as at the first Jacobian.
SHRUNK = 2.0**-400
# A single column that shrank below COLUMN_SHRUNK times its maximum restarts alone from its current norm
# (a = 1 -> 3e-10 shrinks d/dk of a exp(-k x) + c by 1e-10): kept at its maximum, its column of R D^-1
# would look RANK_TOLERANCE-small, and k, though determined by the data, would be left out of the steps.
# At sqrt(RANK_TOLERANCE), scaling alone can never push a column below the rank test.
COLUMN_SHRUNK = 1e-5


@dataclass
class Outcome:
    """What a solver hands back: internal coordinates, status key (see `status.TERMINATION`), counts."""

    theta: torch.Tensor
    status: str
    cost: float
    evaluations: int
    jacobians: int
    steps: int
    history: list[float] = field(default_factory=list)
    saturated: bool | None = None  # stopped on a plateau, where the engine tested it (None: not tested)


@dataclass
class BatchState:
    """Per-problem state of the iteration, every field an array (`arrays`: torch or numpy) over the leading
    batch dimension."""

    theta: torch.Tensor  # (B, p) internal coordinates
    cost: torch.Tensor  # (B,)
    scale: torch.Tensor  # (B, p) D: running maxima of the column norms
    live_scale: torch.Tensor  # (B, p) D where the column is nonzero, else 0: ||D theta|| over these (`lm`)
    radius: torch.Tensor  # (B,) trust radius
    theta_norm: torch.Tensor  # (B,) ||D theta||
    # the current linearisation's SVD of R D^-1, and the steps built from it
    squares: torch.Tensor  # (B, p) squared singular values s^2
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

    def take(self, index, xp: SimpleNamespace) -> BatchState:
        """The problems at ``index``, as a smaller state."""
        return BatchState(**{f.name: xp.take(getattr(self, f.name), index) for f in fields(self)})

    def put(self, index, part: BatchState, xp: SimpleNamespace) -> None:
        """Write ``part`` back at ``index``."""
        for f in fields(self):
            xp.put(getattr(self, f.name), index, getattr(part, f.name))


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
        if len(self.status) == 1 and self.accepted:  # (a batch of one: every accepted cost is its own)
            return costs + torch.cat([cost for _, cost in self.accepted]).tolist()
        for index, cost in self.accepted:
            hit = np.flatnonzero(index.cpu().numpy() == i)  # (numpy: a fifth of torch's time per call)
            if len(hit):
                costs.append(float(cost[int(hit[0])]))
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

    # "torch": takes and answers torch tensors; "any": numpy arrays too, answered as numpy (`arrays`)
    arrays = "torch"


def _converted(method: Callable, xp: SimpleNamespace) -> Callable:
    """``method`` (torch tensors in and out) called with and answering the arrays of ``xp``."""
    return lambda *arrays: xp.asarray(method(*map(xp.tensor, arrays)))


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
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_round: Callable[[BatchState], None] | None = None,
) -> BatchOutcome:
    """Minimise problem.cost(r_b(theta_b)) (||r_b||^2 by default) for every problem b of ``theta`` (B, p) at once.

    ``ftol``, ``xtol``, ``gtol``: stop when the actual and predicted relative reductions of the cost are
    both below ``ftol``, the trust radius is below ``xtol * ||D theta||``, or the cosine between r and every
    column of J is below ``gtol``; ``max_steps``: Jacobian evaluations; ``geodesic_acceleration`` needs
    ``problem.augmented``'s residual column to be ``problem.residuals`` (least squares); ``reduce`` maps
    blocks (b, n, p + 1) to R (b, p + 1, p + 1) (default: Householder QR, `reduction.reduce_batched`, or
    numpy's LAPACK for one problem on the host: `arrays.SCALAR`); ``on_round(state)`` is called after each
    round with the state so far (``state.status``: codes; its arrays numpy for small batches on the CPU, see `arrays`).
    """
    xp = namespace(theta, unbatched=problem.arrays == "any")
    if xp is not TORCH and problem.arrays != "any":
        methods = ("residuals", "augmented", "cost", "sum_rows")
        problem = SimpleNamespace(**{name: _converted(getattr(problem, name), xp) for name in methods})
    if reduce is None:
        reduced = xp.householder
    else:
        reduced = reduce if xp is TORCH else _converted(reduce, xp)
    tolerances = (ftol, xtol, gtol, max_steps, factor)
    with np.errstate(all="ignore"):  # numpy's arrays: inf and NaN are handled as torch's are, silently
        state, initial_cost, accepted_log = _iterate(
            problem, xp.of_batch(theta), reduced, tolerances, geodesic_acceleration, on_round, xp
        )
        _polish(problem, state, reduced, accepted_log, xp)
    return _outcome(state, initial_cost, accepted_log, xp)


def _outcome(state: BatchState, initial_cost, accepted_log: list, xp) -> BatchOutcome:
    """The final state as a `BatchOutcome` of tensors; a single problem's (`arrays.SCALAR`) costs as its
    history outright, not as a tensor per accepted step."""
    if xp is SCALAR:
        accepted, histories = [], [[float(initial_cost), *(float(cost[0]) for _, cost in accepted_log)]]
    else:
        accepted, histories = [(xp.tensor(index), xp.tensor(cost)) for index, cost in accepted_log], None
    return BatchOutcome(
        theta=xp.batch_of(state.theta),
        status=[STATUSES[code] for code in xp.batch_of(state.status).tolist()],
        cost=xp.batch_of(state.cost),
        evaluations=xp.batch_of(state.evaluations),
        jacobians=xp.batch_of(state.jacobians),
        steps=xp.batch_of(state.steps),
        initial_cost=xp.batch_of(initial_cost),
        accepted=accepted,
        histories=histories,
    )


def _iterate(problem, theta, reduce, tolerances, geodesic_acceleration, on_round, xp):
    """The rounds until every problem has a status: the final state, the initial costs, the accepted costs."""
    index = xp.arange(1 if xp is SCALAR else theta.shape[0], theta)
    cost = problem.cost(problem.residuals(theta, index))
    state = _initial_state(theta, cost, xp)
    batch = len(index)
    accepted_log: list = []
    while True:
        index = xp.flatnonzero(state.status == 0)
        if len(index) == 0:
            break
        part = state if len(index) == batch else state.take(index, xp)
        _linearize_fresh(problem, part, index, reduce, tolerances, xp)
        running = xp.flatnonzero(part.status == 0)
        if len(running):
            trial = part if len(running) == len(index) else part.take(running, xp)
            rows = index if trial is part else index[running]
            accepted = _trial_step(problem, trial, rows, geodesic_acceleration, tolerances, xp)
            if len(accepted):
                accepted_log.append((rows[accepted], xp.take(trial.cost, accepted)))
            if trial is not part:
                part.put(running, trial, xp)
        if part is not state:
            state.put(index, part, xp)
        if on_round is not None:
            on_round(state)
    return state, cost, accepted_log


def _initial_state(theta, cost, xp: SimpleNamespace) -> BatchState:
    """The state before the first round: ``theta``, its ``cost`` and one evaluation; every problem fresh."""
    batch, p = (1, *theta.shape) if xp is SCALAR else theta.shape
    # one zero of each shape, copied per field (`arrays.SCALAR`: its numpy scalars shared, as immutable)
    vector, scalar = xp.zeros((batch, p), theta), xp.zeros((batch,), theta)
    count, flag = xp.zeros((batch,), theta, xp.integer), xp.zeros((batch,), theta, xp.boolean)
    recent = xp.zeros((batch, DRIFT_WINDOW + 1), theta)
    recent[..., -1] = cost
    return BatchState(
        theta=xp.copy(theta),
        cost=xp.copy(cost),
        scale=xp.copy(vector),
        live_scale=xp.copy(vector),
        radius=xp.copy(scalar),
        theta_norm=xp.copy(scalar),
        squares=xp.copy(vector),
        vt=xp.zeros((batch, p, p), theta),
        products=xp.copy(vector),
        gauss_newton=vector,
        gauss_newton_norm=xp.copy(scalar),
        gauss_newton_decrease=xp.copy(scalar),
        start=scalar,
        low_rank=xp.copy(flag),
        recent=recent,
        evaluations=count + 1,
        jacobians=xp.copy(count),
        steps=xp.copy(count),
        nonfinite_run=count,
        fresh=~flag,
        status=xp.copy(count),
    )


def _anywhere(condition, xp: SimpleNamespace) -> bool:
    """Whether ``condition`` holds for some problem; True, unlooked, where looking waits for a device."""
    if xp is SCALAR:  # (one problem's numpy bool)
        return bool(condition)
    return not xp.host or bool(xp.any(condition, -1))


def _everywhere(condition, xp: SimpleNamespace) -> bool:
    """Whether ``condition`` holds for every problem (on a device, this waits for it)."""
    return bool(condition) if xp is SCALAR else bool(xp.all(condition, -1))


def _set_status(state: BatchState, xp: SimpleNamespace, *rules) -> None:
    """The status of the first of ``rules`` (condition, name) that holds, where no status is set yet."""
    if xp.host:  # (most rounds set none: one test for all the rules, not a where per rule)
        hit = rules[0][0]
        for condition, _ in rules[1:]:
            hit = hit | condition
        if not _anywhere(hit, xp):
            return
    codes = 0
    for condition, name in reversed(rules):
        codes = xp.where(condition, CODE[name], codes)
    state.status = xp.where(state.status == 0, codes, state.status)


def _linearize_fresh(problem, part, index, reduce, tolerances, xp) -> None:
    """New Jacobians, trust-region scales and SVDs for the problems of ``part`` that need them."""
    _, _, gtol, max_steps, factor = tolerances
    fresh = xp.flatnonzero(part.fresh)  # (every running problem's status is still 0)
    if len(fresh) == 0:
        return
    spent = part.fresh & (part.jacobians >= max_steps)
    if _anywhere(spent, xp):
        _set_status(part, xp, (spent, "max_steps"))
        fresh = xp.flatnonzero(part.fresh & (part.status == 0))
        if len(fresh) == 0:
            return
    state = part if len(fresh) == len(index) else part.take(fresh, xp)
    reduced = reduce(problem.augmented(state.theta, index if state is part else index[fresh]))
    state.jacobians = state.jacobians + 1
    state.fresh = xp.zeros_like(state.fresh)
    p = state.theta.shape[-1]
    finite, reduced = _finite_blocks(reduced, xp)
    upper, qtr = reduced[..., :p, :p], reduced[..., :p, p]
    norms = _column_norms(upper, xp)
    first = _rescale(state, norms, factor, xp)
    # gtol: max_j |J_j^T r| / (||J_j|| ||r||) <= gtol
    gradient = abs(xp.vecmat(qtr, upper))
    cosine = xp.amax(gradient / xp.clamp_min(norms, TINY), -1)
    # a cost that overflowed (or NaN) makes every convergence test pass vacuously
    stops = (~(finite & xp.isfinite(state.cost)), "nonfinite"), (state.cost == 0, "exact")
    _set_status(state, xp, *stops, (cosine <= gtol * xp.sqrt(state.cost), "gtol"))
    _decompose(state, upper, qtr, first, xp)
    state.live_scale = xp.where(norms > 0, state.scale, 0.0)
    state.theta_norm = xp.norm(state.live_scale * state.theta)
    if state is not part:
        part.put(fresh, state, xp)


def _column_norms(upper, xp):
    """||R_j|| per column: on the host plain where every square is in float64's range (`statistics.column_norms`),
    else as m_j ||R_j / m_j|| (`statistics.safe_column_norms`)."""
    if xp.host:
        plain = xp.sqrt(xp.sum(upper * upper, -2))
        if _everywhere(xp.within(plain, 1e-140, 1e140), xp):
            return plain
    return safe_column_norms(upper, xp)


def _finite_blocks(reduced, xp):
    """Whether each problem's R is finite, and R with the nonfinite ones zeroed (they stop: "nonfinite")."""
    finite = xp.all_finite(reduced)
    if not xp.host or not _everywhere(finite, xp):
        reduced = xp.where(xp.expand(finite, 2), reduced, 0.0)
    return finite, reduced


def _rescale(state: BatchState, column_norms, factor: float, xp):
    """D and, on a (re)start, the trust radius from a new Jacobian's column norms; returns where D restarted."""
    first = state.jacobians == 1
    scale = xp.maximum(state.scale, column_norms)
    low = column_norms < COLUMN_SHRUNK * scale
    if xp.host and not _anywhere(xp.any(low, -1), xp) and not _anywhere(first, xp):
        state.scale = scale  # (no column zero or shrunk, so none below SHRUNK either: D the running maxima)
        return first
    # D restarts where every column shrank below SHRUNK of its maximum (see `lm.SHRUNK`)
    first = first | xp.all(column_norms < SHRUNK * state.scale, -1)
    # a single column that shrank by orders of magnitude restarts alone (`lm.COLUMN_SHRUNK`)
    scale = xp.where((column_norms > 0) & low, column_norms, scale)
    if not _anywhere(first, xp):
        state.scale = scale
        return first
    state.scale = xp.where(xp.expand(first), xp.where(column_norms > 0, column_norms, 1.0), scale)
    initial_radius = factor * xp.norm(state.scale * state.theta)
    initial_radius = xp.where(initial_radius == 0, factor, initial_radius)
    # at least a step whose effect shows in float64 (see `lm.VISIBLE_STEP`)
    initial_radius = xp.maximum(initial_radius, VISIBLE_STEP * xp.sqrt(state.cost))
    state.radius = xp.where(first, initial_radius, state.radius)
    return first


def _decompose(state: BatchState, upper, qtr, first, xp) -> None:
    """The SVD of R D^-1 and the Gauss-Newton step from it, into ``state``; ``first``: where D restarted
    (None: nowhere)."""
    p = upper.shape[-1]
    start = None
    if xp.warm_start:  # from the previous V (none yet on the first Jacobian: all zeros)
        start = state.vt.swapaxes(-1, -2)
        if first is not None:
            start = xp.where(xp.expand(first, 2), xp.eye(p, upper), start)
    values, vt, products = xp.svd(upper / state.scale[..., None, :], qtr, start)
    largest, smallest = values[..., 0], values[..., -1]  # (sorted, largest first)
    squares, floor = values * values, RANK_TOLERANCE * largest
    state.squares, state.vt, state.products = squares, vt, products
    state.low_rank = smallest <= floor
    full_rank = (largest > 0) & (smallest > floor)  # every direction kept: the smallest passes the test
    if xp.host and _everywhere(full_rank, xp):  # (nothing to select)
        state.gauss_newton, projected = -products / squares, products / values
    else:
        keep = (xp.expand(largest) > 0) & (values > xp.expand(largest) * RANK_TOLERANCE)
        state.gauss_newton = xp.where(keep, -products / squares, 0.0)
        projected = xp.where(keep, products / values, 0.0)
    state.gauss_newton_norm = xp.norm(state.gauss_newton)
    state.gauss_newton_decrease = xp.sum(projected * projected, -1)
    state.start = xp.where(full_rank, 0.0, EPS * largest**2)


def _damped_steps(state: BatchState, xp):
    """lambda, the step's V-coordinates c, ||c|| and ||S c||^2 per problem, ||c|| within 10% of the radius.

    lambda = 0 where the Gauss-Newton step (pseudo-inverse: directions below `RANK_TOLERANCE` left out)
    already fits; elsewhere Newton's method on 1/||delta|| (Hebden), which converges from below.
    """
    radius, squares = state.radius, state.squares
    fits = state.gauss_newton_norm <= 1.1 * radius
    if _everywhere(fits, xp):  # (the usual round near a solution: the Gauss-Newton step as it is)
        lam, coordinates, norm = xp.zeros_like(radius), state.gauss_newton, state.gauss_newton_norm
    else:
        lam, coefficients, norm = _hebden(state, fits, squares, xp)
        coordinates = xp.where(xp.expand(fits), state.gauss_newton, -coefficients)
        lam = xp.where(fits, 0.0, lam)
        norm = xp.where(fits, state.gauss_newton_norm, norm)
    return lam, coordinates, norm, xp.sum(squares * coordinates * coordinates, -1)


def _hebden(state: BatchState, done, squares, xp):
    """lambda with ||c(lambda)|| within 10% of the radius where not ``done``, from Hebden's start, with
    c(lambda) = -(the coefficients returned) and ||c(lambda)||."""
    radius, products, lam = state.radius, state.products, state.start
    tolerance = 0.1 * radius
    # with every s^2 > 0 no denominator s^2 + lambda (lambda >= 0) is 0: plain division (where looking is free)
    ratio = _quotient if xp.host and _everywhere(squares[..., -1] > 0, xp) else _ratio  # (sorted: the last is least)
    for _ in range(60):
        denominator = squares + xp.expand(lam)
        coefficients = ratio(products, denominator, xp)
        norm = xp.norm(coefficients)
        done = done | (abs(norm - radius) <= tolerance) | (norm == 0)
        if _everywhere(done, xp):
            return lam, coefficients, norm
        derivative = -xp.sum(ratio(coefficients * coefficients, denominator, xp), -1) / norm
        lam = xp.where(done, lam, xp.clamp_min(lam + (norm - norm * norm / radius) / derivative, 0.0))
    coefficients = ratio(products, squares + xp.expand(lam), xp)
    return lam, coefficients, xp.norm(coefficients)


def _ratio(a, b, xp):
    """a / b, and 0 where b = 0 (a zero singular value at lambda = 0, where a = s u = 0 too)."""
    return xp.where(b != 0, a / b, 0.0)  # (the NaN of 0 / 0 is not selected)


def _quotient(a, b, xp):
    """a / b, `_ratio` where no b is 0."""
    return a / b


def _to_parameters(state: BatchState, coordinates, xp):
    """D^-1 V c: a step in parameter space from its V-coordinates."""
    return xp.vecmat(coordinates, state.vt) / state.scale


def _trial_step(problem, state, index, geodesic_acceleration, tolerances, xp):
    """One trial step for every problem of ``state``; returns the positions of the accepted ones."""
    lam, coordinates, step_norm, decrease = _damped_steps(state, xp)
    unmoved = state.steps == 0
    if _anywhere(unmoved, xp):  # the first step bounds the first trust radius
        first = unmoved & (state.jacobians == 1)
        state.radius = xp.where(first, xp.minimum(state.radius, step_norm), state.radius)
    velocity = _to_parameters(state, coordinates, xp)
    if geodesic_acceleration:
        velocity = _accelerated(problem, state, index, velocity, lam, step_norm, xp)
    trial = state.theta + velocity
    cost_trial = problem.cost(problem.residuals(trial, index))
    state.evaluations = state.evaluations + 1
    cost = state.cost
    finite = xp.isfinite(cost_trial)
    near = 0.1 * xp.sqrt(cost_trial) < xp.sqrt(cost)  # (false where cost_trial is inf or NaN)
    actual = xp.where(near, 1 - cost_trial / cost, -1.0)
    linear_part = decrease / cost
    damping_part = lam * step_norm**2 / cost
    predicted = linear_part + 2 * damping_part
    ratio = _ratio(actual, predicted, xp)
    state.radius = _new_radius(state.radius, lam, step_norm, ratio, actual, near, -(linear_part + damping_part), xp)
    accepted = ratio >= 1e-4
    _accept(state, accepted, trial, cost_trial, xp)
    _stop(state, accepted, finite, actual, predicted, ratio, tolerances, xp)
    return xp.flatnonzero(accepted)


def _new_radius(radius, lam, step_norm, ratio, actual, near, directional, xp):
    """MINPACK's trust radius after a trial step: grown after a good one, shrunk after a poor one (by the
    cost's curvature along the step, or tenfold where the cost came back nonfinite or 100 times larger)."""
    grown = xp.where((lam == 0) | (ratio >= 0.75), step_norm / 0.5, radius)
    poor = ratio <= 0.25
    if not _anywhere(poor, xp):
        return grown
    shrink = xp.where(actual >= 0, 0.5, 0.5 * directional / (directional + 0.5 * actual))
    shrink = xp.where(~near | (shrink < 0.1), 0.1, shrink)
    return xp.where(poor, shrink * xp.minimum(radius, step_norm / 0.1), grown)


def _stop(state: BatchState, accepted, finite, actual, predicted, ratio, tolerances, xp) -> None:
    """The stopping tests after a trial step (MINPACK's, and `lm`'s drift and nonfinite rules)."""
    ftol, xtol, _, _, _ = tolerances
    theta_norm, cost = state.theta_norm, state.cost
    # a tiny reduction counts only when the Gauss-Newton step has little left to give (`lm.UNEXPLOITED_SHARE`)
    exhausted = (ratio <= 2.0) & (state.gauss_newton_decrease <= UNEXPLOITED_SHARE * cost)
    small = abs(actual)
    rules = [((small <= ftol) & (predicted <= ftol) & exhausted, "ftol"), (state.radius <= xtol * theta_norm, "xtol")]
    if min(ftol, xtol) < EPS:  # (else every roundoff stop is an ftol or xtol stop already, tested before)
        roundoff = ((small <= EPS) & (predicted <= EPS) & exhausted) | (state.radius <= EPS * theta_norm)
        rules.append((roundoff, "roundoff"))
    rules.append((cost == 0, "exact"))
    drift = accepted & state.low_rank
    if _anywhere(drift, xp):  # (steps: this one counted)
        drift = drift & (state.steps > DRIFT_WINDOW - 1) & (state.recent[..., 0] - cost <= DRIFT_TOLERANCE * cost)
        rules.append((drift, "drift"))
    # the step's squares left float64 (residuals near 1e-150 under a robust loss, which is not
    # rescaled): lambda overflowed and the prediction is NaN, so no test above could ever hold
    _set_status(state, xp, *rules, (~xp.isfinite(predicted), "underflow"))
    state.nonfinite_run = xp.where(finite, 0, state.nonfinite_run + 1)
    retrying = state.nonfinite_run > 0
    if _anywhere(retrying, xp):
        stop = (state.status != 0) | (state.nonfinite_run >= NONFINITE_RETRIES)
        state.status = xp.where(retrying & stop, CODE["nonfinite"], state.status)
    state.fresh = accepted & (state.status == 0)


def _accept(state, accepted, trial, cost_trial, xp) -> None:
    """The accepted trial points into ``state`` (on the host, no selection where none or all were accepted)."""
    if not _anywhere(accepted, xp):
        return
    if xp.host and _everywhere(accepted, xp):
        state.theta, state.cost, state.steps = trial, cost_trial, state.steps + 1
        state.recent = xp.concat([state.recent[..., 1:], cost_trial[..., None]], -1)
        state.theta_norm = xp.norm(state.live_scale * trial)
        return
    state.theta = xp.where(xp.expand(accepted), trial, state.theta)
    state.cost = xp.where(accepted, cost_trial, state.cost)
    state.steps = state.steps + accepted
    shifted = xp.concat([state.recent[..., 1:], state.cost[..., None]], -1)
    state.recent = xp.where(xp.expand(accepted), shifted, state.recent)
    new_norm = xp.norm(state.live_scale * state.theta)
    state.theta_norm = xp.where(accepted, new_norm, state.theta_norm)


def _polish(problem, state: BatchState, reduce, accepted_log: list, xp) -> None:
    """One Gauss-Newton step for the converged problems, kept where the cost does not rise (see `lm.POLISHED`)."""
    index = xp.flatnonzero(xp.isin(state.status, [CODE[name] for name in POLISHED]))
    if len(index) == 0:
        return
    part = state if len(index) == (1 if xp is SCALAR else state.theta.shape[0]) else state.take(index, xp)
    p = part.theta.shape[-1]
    finite, reduced = _finite_blocks(reduce(problem.augmented(part.theta, index)), xp)
    # the Gauss-Newton step, its SVD warm-started from the last linearization's V (these statuses are
    # set by trial steps, after an SVD)
    _decompose(part, reduced[..., :p, :p], reduced[..., :p, p], None, xp)
    trial = part.theta + _to_parameters(part, part.gauss_newton, xp)
    cost_trial = problem.cost(problem.residuals(trial, index))
    better = finite & (cost_trial <= part.cost * (1 + POLISH_SLACK))
    part.jacobians = part.jacobians + 1
    part.evaluations = part.evaluations + finite
    part.steps = part.steps + better
    part.theta = xp.where(xp.expand(better), trial, part.theta)
    part.cost = xp.where(better, cost_trial, part.cost)
    if part is not state:
        state.put(index, part, xp)
    kept = xp.flatnonzero(better)
    if len(kept):
        accepted_log.append((index[kept], xp.take(cost_trial, kept)))


def _accelerated(problem, state: BatchState, index, velocity, lam, step_norm, xp):
    """``velocity`` plus half the geodesic acceleration where the step is damped (lambda > 0)."""
    bent = xp.flatnonzero(lam > 0)
    if len(bent) == 0:
        return velocity
    fields = (state.theta, state.scale, state.vt, state.squares, velocity, lam, step_norm)
    if len(bent) == len(index):  # (every problem: no gather or scatter)
        state.evaluations = state.evaluations + 1
        return velocity + _half_acceleration(problem, index, *fields, xp)
    velocity[bent] += _half_acceleration(problem, index[bent], *(xp.take(x, bent) for x in fields), xp)
    state.evaluations[bent] += 1
    return velocity


def _half_acceleration(problem, rows, theta, scale, vt, squares, velocity, lam, step_norm, xp):
    """Half the geodesic acceleration a = -(J^T J + lambda D^2)^-1 J^T r''(v, v) of the problems at ``rows``,
    their theta, D, V^T, s^2, step v, lambda and ||c|| given.

    r''(v, v) ~ (2 / h) ((r(theta + h v) - r) / h - J v) from one probe at h = `PROBE`, solved in the SVD
    coordinates of the step; J^T r'' is a sum over rows (`BatchProblem.sum_rows`). 0 where the
    acceleration is not small next to the velocity (2 ||a|| > `ACCELERATION_RATIO` ||v||, scaled).

    J and r at the current point are evaluated again for these problems (usually a minority, 0-30%
    per round), which is cheaper than keeping every problem's J between rounds.
    """
    block = xp.columns_first(problem.augmented(theta, rows))  # the model's layout (p + 1, b, n)
    jacobian, r = block[:-1], block[-1]
    r_probe = problem.residuals(theta + PROBE * velocity, rows)
    curvature = (r_probe - r - PROBE * xp.combine_columns(jacobian, velocity)) * (2 / PROBE**2)
    projected = problem.sum_rows(xp.project_on_columns(jacobian, curvature)) / scale
    coordinates = -xp.matvec(vt, projected) / (squares + xp.expand(lam))
    small = 2 * xp.norm(coordinates) <= ACCELERATION_RATIO * step_norm
    if xp.host and not _anywhere(small, xp):  # (the path curves too much for every problem: no correction)
        return 0.0
    acceleration = 0.5 * xp.vecmat(coordinates, vt) / scale
    return xp.where(xp.expand(small), acceleration, 0.0)
