"""Levenberg-Marquardt: minimise cost = ||r(theta)||^2 by trust-region steps
delta = -(J^T J + lambda D^2)^-1 J^T r, with ||D delta|| <= Delta (More's MINPACK variant).

Per iteration: one exact Jacobian, an R-only QR of [J | r] (torch, on the data's device), an SVD of
the small R (numpy), then as many trial steps as the trust region needs, each costing one residual
evaluation and no new factorisation (lambda is solved from the singular values). The step uses only
R and Q^T r, pieces a batch or a sharded data set can assemble (stacked QRs), and never forms J^T J,
which squares the condition number.
D holds running maxima of the Jacobian's column norms (a column that shrinks by orders of magnitude
restarts alone), so the method is invariant to parameter scale.
Damped steps get a geodesic acceleration (Transtrum & Sethna 2012): one more residual evaluation gives
the curvature r''(v, v) along the step v, and the correction -(J^T J + lambda D^2)^-1 J^T r'' / 2
reuses the SVD (J^T r'' is again a sum over data rows). On curved valleys (Bennett5, MGH09/10/17) it
cuts the Jacobians several-fold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .statistics import column_norms as safe_column_norms
from .status import TERMINATION

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


def plateau_status(status: str, stuck: bool) -> str:
    """Status "plateau" in place of a converged ``status`` where the fit is ``stuck`` (`stuck_on_plateau`).

    With every Jacobian column negligible the cost is flat, so every convergence test passes, but the
    model no longer depends on its parameters: not a minimum (a exp(-b x) from b = 40). A zero cost
    ("exact") is a minimum all the same. `fit` and `fit_batch` apply it after their plateau restart.
    """
    return "plateau" if stuck and status != "exact" and TERMINATION[status][0] else status


def stuck_on_plateau(
    reach: torch.Tensor, gradient: torch.Tensor, residual_norm: torch.Tensor, data_norm: torch.Tensor
) -> torch.Tensor:
    """(...) bool: every sensitivity reach_j = ||J_j|| max(|b_j|, 1) is below `PLATEAU` ||y||, or one is
    below `SATURATION` ||y|| while a live column's cosine |gradient_j| / (reach_j ||r||) is above
    `STATIONARY` (``gradient`` = (J max(|b|, 1))^T r): the fit stopped on a plateau, not at a minimum.

    Shapes (..., p), (..., p), (...,), (...,), all in the same units (y, r and J scaled alike).
    """
    threshold = data_norm.unsqueeze(-1)
    saturated = reach < SATURATION * threshold
    cosine = gradient.abs() / (reach * residual_norm.unsqueeze(-1))
    unfinished = (~saturated & (cosine > STATIONARY)).any(-1)  # NaN (a zero column or r) counts as finished
    return (reach < PLATEAU * threshold).all(-1) | (saturated.any(-1) & unfinished)


def reduce_jacobian(augmented: torch.Tensor) -> np.ndarray:
    """The (p+1)-square R of the augmented Jacobian [J | r] = QR, on the CPU.

    R's leading p x p block is the R of J and its last column holds Q^T r, so everything the step
    needs follows without forming Q: ||J_j|| = ||R_j||, J^T r = R^T Q^T r, the singular values of J.
    Data shards or batches combine by stacking their R's and QR-ing again.
    """
    rows, columns = augmented.shape
    if rows < columns:
        augmented = torch.cat([augmented, augmented.new_zeros(columns - rows, columns)])
    return torch.linalg.qr(augmented, mode="r").R.cpu().numpy()


class DampedStep:
    """The steps delta(lambda) = -V diag(s / (s^2 + lambda)) U^T r of one linearisation, for any radius.

    Built once per Jacobian from the singular values ``s`` of J D^-1 and ``utr`` = U^T r. Plain Python
    floats: p is small, and a numpy call costs more than its arithmetic.
    """

    def __init__(self, s: np.ndarray, utr: np.ndarray):
        values, projected = s.tolist(), utr.tolist()
        largest = values[0] if values else 0.0
        keep = [largest > 0 and value > largest * RANK_TOLERANCE for value in values]
        self.squares = [value * value for value in values]
        self.products = [value * u for value, u in zip(values, projected)]
        # Gauss-Newton with the pseudo-inverse: non-identifiable directions left out
        self.gauss_newton = [-u / value if kept else 0.0 for value, u, kept in zip(values, projected, keep)]
        self.gauss_newton_norm = math.sqrt(sum(c * c for c in self.gauss_newton))
        # ||S c_GN||^2: the cost reduction the linear model promises for the Gauss-Newton step
        self.gauss_newton_decrease = sum(u * u for u, kept in zip(projected, keep) if kept)
        self.start = 0.0 if all(keep) else EPS * largest**2

    def solve(self, radius: float) -> tuple[float, list[float], float, float]:
        """lambda >= 0 with ||delta|| within 10% of ``radius``; the step's V-coordinates c, ||c||, ||S c||^2.

        lambda = 0 (Gauss-Newton) when that step already fits; otherwise Newton's method on
        1/||delta|| (Hebden), which converges from below.
        """
        if self.gauss_newton_norm <= 1.1 * radius:
            lam, coordinates, norm = 0.0, self.gauss_newton, self.gauss_newton_norm
        else:
            lam = self.start
            for _ in range(60):
                coefficients = [_ratio(a, q + lam) for a, q in zip(self.products, self.squares)]
                norm = math.sqrt(sum(c * c for c in coefficients))
                if abs(norm - radius) <= 0.1 * radius or norm == 0:
                    break
                derivative = -sum(_ratio(c * c, q + lam) for c, q in zip(coefficients, self.squares)) / norm
                lam = max(lam + (norm - norm * norm / radius) / derivative, 0.0)
            coordinates = [-_ratio(a, q + lam) for a, q in zip(self.products, self.squares)]
            norm = math.sqrt(sum(c * c for c in coordinates))
        decrease = sum(q * c * c for q, c in zip(self.squares, coordinates))
        return lam, coordinates, norm, decrease


def levenberg_marquardt(
    residuals: Callable,
    linearize: Callable,
    cost_of: Callable,
    theta: torch.Tensor,
    *,
    ftol: float = 1e-15,
    xtol: float = 1e-15,
    gtol: float = 1e-15,
    max_steps: int = 1000,
    factor: float = 100.0,
    on_step: Callable | None = None,
    geodesic_acceleration: bool = True,
    reduce: Callable[[torch.Tensor], np.ndarray] = reduce_jacobian,
    sum_rows: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Outcome:
    """Minimise cost_of(residuals(theta)) from ``theta`` (MINPACK's lmder logic, SVD-based lmpar).

    Parameters
    ----------
    residuals : callable
        theta -> r.
    linearize : callable
        (theta, r) -> [J | r_effective], shape (n, p + 1): the Jacobian and residuals of the local
        least-squares model (plain J, r for the linear loss).
    cost_of : callable
        r -> cost = sum rho(r^2).
    ftol, xtol, gtol : float
        Stop when the actual and predicted relative reductions of the cost are both below ``ftol``,
        the trust radius is below ``xtol * ||D theta||``, or the cosine between r and every column of
        J is below ``gtol``.
    max_steps : int
        Maximum number of Jacobian evaluations (outer iterations).
    geodesic_acceleration : bool
        Bend damped steps along the curvature of r (needs ``linearize``'s residual column to be
        ``residuals(theta)``: the linear loss).
    reduce, sum_rows : callable
        [J | r] -> R as a numpy array, and the sum over data shards of a vector of per-shard sums
        (for rows held by several processes: `distributed.Shards`; by default one process).
    """
    # The loop runs once per Jacobian on p-sized numpy arrays: Python floats and few numpy calls,
    # since on small problems each call costs more than the arithmetic.
    theta_np = theta.detach().cpu().numpy().astype(np.float64)
    r = residuals(theta)
    cost = cost_of(r)
    evaluations, jacobians, steps = 1, 0, 0
    history = [cost]
    nonfinite_run = 0
    scale = radius = None
    status = "max_steps"
    while jacobians < max_steps:
        augmented = linearize(theta, r)
        reduced = reduce(augmented)
        jacobians += 1
        # a cost that overflowed (or NaN) makes every convergence test below pass vacuously
        if not np.isfinite(reduced).all() or not math.isfinite(cost):
            status = "nonfinite"
            break
        upper, qtr = reduced[:-1, :-1], reduced[:-1, -1]
        column_norms = safe_column_norms(upper)
        scale, radius = _column_scale(scale, radius, column_norms, theta_np, cost, factor)
        # ||D theta|| (xtol's yardstick) over the parameters that move the model here: a column that is
        # exactly zero (a = 1 - 1 after a first step to data at 1e-20 leaves d/dk = 0) keeps its D for
        # the next Jacobian, but its stale D |b_j| would make every later step look relatively small
        live_scale = np.where(column_norms > 0, scale, 0.0)
        if cost == 0:
            status = "exact"
            break
        # gtol: max_j |J_j^T r| / (||J_j|| ||r||); a zero column has J_j^T r = 0 and counts as 0
        gradient = np.abs(upper.T @ qtr)
        if float((gradient / np.maximum(column_norms, TINY)).max(initial=0.0)) <= gtol * math.sqrt(cost):
            status = "gtol"
            break
        u, s, vt = np.linalg.svd(upper / scale)
        damped = DampedStep(s, u.T @ qtr)
        # theta + D^-1 V c: the step from its V-coordinates c, in one product
        to_step = vt.T / scale[:, None]
        theta_norm = _norm(live_scale * theta_np)
        while True:
            lam, coordinates, step_norm, decrease = damped.solve(radius)
            if steps == 0 and jacobians == 1:
                radius = min(radius, step_norm)
            velocity = to_step @ np.array(coordinates)
            if geodesic_acceleration and lam > 0:
                r_probe = residuals(torch.from_numpy(theta_np + PROBE * velocity).to(theta))
                evaluations += 1
                bend = _half_acceleration(augmented, r, r_probe, velocity, scale, s, vt, lam, step_norm, sum_rows)
                velocity = velocity + bend
            trial_np = theta_np + velocity
            trial = torch.from_numpy(trial_np).to(theta)
            r_trial = residuals(trial)
            evaluations += 1
            cost_trial = cost_of(r_trial)
            finite = math.isfinite(cost_trial)
            trial_step = _TrialStep.of(cost, cost_trial, decrease, lam, step_norm)
            actual, predicted, ratio = trial_step.actual, trial_step.predicted, trial_step.ratio
            radius = trial_step.radius(radius, lam)
            accepted = ratio >= 1e-4
            if accepted:
                theta, theta_np, r, cost = trial, trial_np, r_trial, cost_trial
                theta_norm = _norm(live_scale * theta_np)
                steps += 1
                history.append(cost)
                if on_step is not None:
                    on_step(steps, cost)
            exhausted = 0.5 * ratio <= 1 and damped.gauss_newton_decrease <= UNEXPLOITED_SHARE * cost
            drifting = accepted and s[-1] <= RANK_TOLERANCE * s[0] and _drifting(history, cost)
            status = _trial_status(actual, predicted, exhausted, radius, theta_norm, cost, drifting, ftol, xtol)
            nonfinite_run = 0 if finite else nonfinite_run + 1
            # The model gave NaN/inf: a few shrinking retries (a step may just have been too long), but
            # converging onto a NaN wall, or hitting it again and again, means: stop, keep the best.
            if nonfinite_run and (status or nonfinite_run >= NONFINITE_RETRIES):
                status = "nonfinite"
            if status or accepted:
                break
        if status:
            break
    else:
        status = "max_steps"
    outcome = Outcome(
        theta=theta,
        status=status,
        cost=cost,
        evaluations=evaluations,
        jacobians=jacobians,
        steps=steps,
        history=history,
    )
    if status in POLISHED:
        _polished(outcome, residuals, linearize, cost_of, r, scale, reduce)
    return outcome


def _column_scale(scale, radius, column_norms: np.ndarray, theta: np.ndarray, cost: float, factor: float):
    """(D, radius) after a new Jacobian: D = the largest column norms seen (MINPACK), restarted from
    these norms (with a new first radius) when every column shrank below `SHRUNK` of D, and a single
    column that shrank below `COLUMN_SHRUNK` of its D set to its norm now (data at 1e-20: d/dk shrinks
    with a, and a stale D would hide it below the rank tolerance)."""
    if scale is None or bool((column_norms < SHRUNK * scale).all()):
        scale = np.where(column_norms > 0, column_norms, 1.0)
        return scale, max(factor * _norm(scale * theta) or factor, VISIBLE_STEP * math.sqrt(cost))
    scale = np.maximum(scale, column_norms)
    return np.where((column_norms > 0) & (column_norms < COLUMN_SHRUNK * scale), column_norms, scale), radius


@dataclass
class _TrialStep:
    """One trial step's actual and predicted relative reductions of the cost, and their ratio (MINPACK)."""

    actual: float
    predicted: float
    directional: float
    ratio: float
    step_norm: float
    overshot: bool  # NaN/inf, or residuals grown tenfold: the trial tells nothing of the model's shape

    @classmethod
    def of(cls, cost: float, cost_trial: float, decrease: float, lam: float, step_norm: float) -> _TrialStep:
        overshot = not (math.isfinite(cost_trial) and 0.1 * math.sqrt(cost_trial) < math.sqrt(cost))
        actual = -1.0 if overshot else 1 - cost_trial / cost
        linear_part = decrease / cost
        damping_part = lam * step_norm**2 / cost
        predicted = linear_part + 2 * damping_part
        ratio = actual / predicted if predicted != 0 else 0.0
        return cls(actual, predicted, -(linear_part + damping_part), ratio, step_norm, overshot)

    def radius(self, radius: float, lam: float) -> float:
        """The trust radius after this trial: shrunk when the model predicted badly, grown when well."""
        if self.ratio <= 0.25:
            shrink = 0.5 if self.actual >= 0 else 0.5 * self.directional / (self.directional + 0.5 * self.actual)
            if self.overshot or shrink < 0.1:
                shrink = 0.1
            return shrink * min(radius, self.step_norm / 0.1)
        if lam == 0 or self.ratio >= 0.75:
            return self.step_norm / 0.5
        return radius


def _drifting(history: list[float], cost: float) -> bool:
    """The cost fell by less than `DRIFT_TOLERANCE` (relative) over the last `DRIFT_WINDOW` steps."""
    return len(history) > DRIFT_WINDOW and history[-DRIFT_WINDOW - 1] - cost <= DRIFT_TOLERANCE * cost


def _trial_status(actual, predicted, exhausted, radius, theta_norm, cost, drifting, ftol, xtol) -> str:
    """The stopping test a trial step meets (a row of `TERMINATION`), or "" to go on."""
    if abs(actual) <= ftol and predicted <= ftol and exhausted:
        return "ftol"
    if radius <= xtol * theta_norm:
        return "xtol"
    if (abs(actual) <= EPS and predicted <= EPS and exhausted) or radius <= EPS * theta_norm:
        return "roundoff"
    if cost == 0:
        return "exact"
    return "drift" if drifting else ""


def _polished(outcome: Outcome, residuals, linearize, cost_of, r, scale, reduce) -> None:
    """Take one last Gauss-Newton step (`_polish`) into ``outcome`` when it does not raise the cost."""
    polished = _polish(residuals, linearize, cost_of, outcome.theta, r, outcome.cost, scale, reduce)
    outcome.jacobians += 1
    outcome.evaluations += polished is not None
    if polished is not None and polished[2] <= outcome.cost * (1 + POLISH_SLACK):
        outcome.theta, r, outcome.cost = polished
        outcome.steps += 1
        outcome.history.append(outcome.cost)


def _polish(residuals, linearize, cost_of, theta, r, cost, scale, reduce):
    """theta + the Gauss-Newton step -D^-1 V S^+ U^T Q^T r at ``theta``, its residuals and cost (None: J not finite)."""
    reduced = reduce(linearize(theta, r))
    if not np.isfinite(reduced).all():
        return None
    upper, qtr = reduced[:-1, :-1], reduced[:-1, -1]
    u, s, vt = np.linalg.svd(upper / scale)
    step = (vt.T / scale[:, None]) @ np.array(DampedStep(s, u.T @ qtr).gauss_newton)
    trial = theta + torch.from_numpy(step).to(theta)
    r_trial = residuals(trial)
    return trial, r_trial, cost_of(r_trial)


def _half_acceleration(
    augmented: torch.Tensor,
    r: torch.Tensor,
    r_probe: torch.Tensor,
    velocity: np.ndarray,
    scale: np.ndarray,
    s: np.ndarray,
    vt: np.ndarray,
    lam: float,
    velocity_norm: float,
    sum_rows: Callable | None = None,
) -> np.ndarray | float:
    """Half the geodesic acceleration a = -(J^T J + lambda D^2)^-1 J^T r''(v, v) (Transtrum & Sethna 2012).

    r''(v, v) ~ (2 / h) ((r(theta + h v) - r) / h - J v) from one probe at h = `PROBE`; solved in the
    SVD coordinates of the step, and only J^T r'' (a sum over data rows) is needed. Returns 0 where the
    acceleration is not small next to the velocity (2 ||a|| > `ACCELERATION_RATIO` ||v||, scaled):
    there the path curves too much for a second-order correction to be trusted.
    """
    # J^T as rows: contiguous for the generated (p + 1, n) block, so both products run without copies
    rows = augmented.T[:-1]
    curvature = (r_probe - r - PROBE * (torch.from_numpy(velocity).to(rows) @ rows)) * (2 / PROBE**2)
    projected = (rows @ curvature).cpu().numpy()
    if sum_rows is not None:
        projected = sum_rows(projected)
    projected = projected / scale
    coordinates = -(vt @ projected) / (s * s + lam)
    if not 2 * _norm(coordinates) <= ACCELERATION_RATIO * velocity_norm:  # NaN too
        return 0.0
    return 0.5 * ((vt.T / scale[:, None]) @ coordinates)


def _ratio(a: float, b: float) -> float:
    """a / b, and 0 for a zero singular value at lambda = 0 (a = s u = 0 too), as the C engine's IEEE 0/0 is not."""
    return a / b if b != 0 else 0.0


def _norm(vector: np.ndarray) -> float:
    return math.sqrt(float(vector @ vector))
