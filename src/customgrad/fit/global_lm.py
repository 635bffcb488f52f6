"""Levenberg-Marquardt for a global fit: shared parameters phi (one set for all curves) and local ones
theta_b (one set per curve), minimising sum_b ||r_b(theta_b, phi)||^2 on the arrowhead Jacobian by block
elimination (Schur complement), never forming the dense (B N) x (S + B L) Jacobian.

Curve b's rows [A_b | C_b | r_b] (local columns, shared columns, residuals) are reduced by their own
QR to R_b, (S + L + 1) square. A damped step min ||J d + r||^2 + lambda ||D d||^2 appends the rows
sqrt(lambda) D_b to R_b's local columns and reduces again (a small batched QR): the leading L rows
then hold curve b's local equations R'_AA d_b + R'_AC d_phi = -q'_A, the next S rows its remainder
[R'_CC | q'_C], the part of its rows no local step can reach. The remainders of all curves, with the
rows sqrt(lambda) D_S, stacked and reduced once more (TSQR: the same R as the normal equations of the
Schur complement sum_b C_b^T (I - P_b) C_b, without squaring its condition number) give d_phi; each
curve's d_b follows by back-substitution. Per iteration O(B N (S + L)^2) work, O(B (S + L)^2) memory.

One lambda for the whole problem, accepted or rejected on the total cost, updated as Nielsen (1999):
it is one least-squares problem, whose answer is the dense problem's. D are the column norms of J
(running maxima, as MINPACK), so lambda is relative. Every total over curves goes through a `Totals`
(sums and maxima over ranks for ``distributed=True``; plain in one process), so every rank takes the
same steps.

On the CPU in float64 the per-curve work runs in C (`global_native`), one pass per curve; elsewhere the
same steps run as torch operations over all curves. For a formula model (its [J | r] costs about what r
does) a trial point's cost is read from its R_b, so an accepted step's Jacobian is the one its trial
already took.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from . import global_native
from .lm import EPS
from .reduction import reduce_batched, reduce_gram, reduce_local

# Nielsen's damping: the first lambda (relative to the column-scaled J^T J), and its floor (below it
# the step is Gauss-Newton's to float64 precision).
INITIAL_DAMPING = 1e-3
SMALLEST_DAMPING = 1e-30
# Entries of [J | r] evaluated and reduced at a time (4 MB in float64: the rows are still in the cache when
# they are reduced; 10^4 Gaussians of 64 points: 10% faster than all at once).
CACHE_ENTRIES = 1 << 19
# A step is accepted when the cost fell by at least this share of the reduction the linear model promised.
ACCEPT_RATIO = 1e-4


class Totals:
    """Sums, maxima and stacked R factors over the curves of every rank (one process: the values themselves)."""

    def __init__(self, shards):
        self.shards = shards

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a float64 tensor of any shape."""
        if self.shards is None:
            return tensor
        return torch.as_tensor(self.shards.sum(tensor.detach().cpu().numpy()), dtype=tensor.dtype).to(tensor.device)

    def maximum(self, value: float) -> float:
        """The largest ``value`` over ranks."""
        return value if self.shards is None else -self.shards.minimum(-value)

    def factor(self, rows: torch.Tensor) -> torch.Tensor:
        """R of the rows of every rank (each rank's R all-gathered and reduced again: TSQR)."""
        if self.shards is None:
            return reduce_local(rows)
        return self.shards.factor(rows).to(rows)


@dataclass
class GlobalProblem:
    """The curves ``curves`` of a `model.Model` whose first L parameter columns are per curve and last S
    one for all (``sizes`` (L, S): `global_fit.split_shared` orders them so); [J | r] of each curve comes
    back with its columns in the order local, shared, r."""

    model: object
    curves: torch.Tensor
    sizes: tuple[int, int]
    chunk_size: int
    totals: Totals
    native: object | None  # the model's `native.NativeSolver`, whose library computes R_b, or None
    threads: int  # of the C kernels over the curves
    _first: int | None = field(default=None, repr=False)  # the first curve where they are consecutive, else -1

    @property
    def cheap_jacobian(self) -> bool:
        """True where [J | r] costs about what r does (a formula's generated rows): a trial point's cost is
        then read from its R_b, which the next iteration needs if the step is accepted."""
        return getattr(self.model, "rows", None) is not None

    def full(self, local: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """theta (b, L + S), the shared values repeated per curve."""
        return torch.cat([local, shared.expand(local.shape[0], -1)], dim=-1)

    def span(self, begin: int, end: int) -> torch.Tensor | slice:
        """This rank's curves begin to end (exclusive) for the model: a slice where they are consecutive
        (the common case: the model then reads y, sigma and the mask in place instead of copying them)."""
        end = min(end, len(self.curves))
        if self._first is None:
            count = len(self.curves)
            consecutive = count > 0 and int(self.curves[-1]) - int(self.curves[0]) == count - 1
            self._first = int(self.curves[0]) if consecutive else -1  # (curves are sorted and distinct)
        return self.curves[begin:end] if self._first < 0 else slice(self._first + begin, self._first + end)

    def residuals(self, local: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """r (b, N) of this rank's curves."""
        return self.model.residuals(self.full(local, shared), self.span(0, len(self.curves)))

    def factors(self, local: torch.Tensor, shared: torch.Tensor, *, external: bool = False) -> torch.Tensor:
        """R_b of each curve's [A_b | C_b | r_b], (b, L + S + 1) square, chunk by chunk of curves."""
        theta = self.full(local, shared)
        if self.native is not None and global_native.usable(theta):
            return global_native.factors(self.native, self.curves, theta, external=external, workers=self.threads)
        q = theta.shape[-1] + 1
        parts = []
        # chunks of rows that stay in a core's cache from the model's kernel to their reduction
        size = max(1, min(self.chunk_size, CACHE_ENTRIES // (q * self.model.y.shape[-1])))
        for begin in range(0, len(self.curves), size):
            block = self.model.augmented(theta[begin : begin + size], self.span(begin, begin + size), external=external)
            parts.append(_reduce(block.permute(2, 0, 1), self.threads))  # (the model's layout (p + 1, b, N): a view)
        return torch.cat(parts) if parts else theta.new_zeros(0, q, q)


def _reduce(rows: torch.Tensor, workers: int) -> torch.Tensor:
    """R_b (b, q, q) of each curve's rows (q, b, N) by CholeskyQR (Householder where ill-conditioned)."""
    if global_native.usable(rows):
        upper, poor = global_native.reduce_rows(rows, workers)
        redo = poor.nonzero().flatten()
        if len(redo):
            upper[redo] = reduce_batched(rows.index_select(1, redo).permute(1, 2, 0))
        return upper
    # the Gram matrices formed in this layout: one contraction over N, ~5x faster than a batched A^T A
    return reduce_gram(rows.permute(1, 2, 0), torch.einsum("ibn,jbn->bij", rows, rows))


@dataclass
class GlobalOutcome:
    """Where a global fit stopped (while it runs: its iterate): internal coordinates, the cost per curve
    and in total, and counts."""

    local: torch.Tensor  # (b, L)
    shared: torch.Tensor  # (S,)
    cost: float
    curve_cost: torch.Tensor  # (b,)
    evaluations: int = 1
    jacobians: int = 0
    steps: int = 0
    upper: torch.Tensor | None = None  # R_b at (local, shared) where the last Jacobian was taken there
    status: str = "running"

    def accept(self, local, shared, cost, curve_cost, upper=None) -> None:
        """Move to the trial point (``upper``: its R_b where the trial evaluation took it, else None)."""
        self.local, self.shared, self.cost, self.curve_cost, self.upper = local, shared, cost, curve_cost, upper
        self.steps += 1

    def stop(self, status: str) -> GlobalOutcome:
        """This outcome, stopped with ``status``."""
        self.status = status
        return self


@dataclass
class _Linearization:
    """One Jacobian's reduction: R_b per curve, the scales D, the gradient J^T r and ||D theta||."""

    upper: torch.Tensor  # (b, P + 1, P + 1), columns local, shared, r
    local_scale: torch.Tensor  # (b, L)
    shared_scale: torch.Tensor  # (S,)
    local_gradient: torch.Tensor  # (b, L)
    shared_gradient: torch.Tensor  # (S,)
    local_cosine: float  # this rank's max |J_j^T r| / D_j over the local columns
    local_theta_square: float  # sum_b ||D_b theta_b||^2 over every rank

    @functools.cached_property
    def local_rows(self) -> torch.Tensor:
        """R_b's first L rows with the batch innermost, (L, P + 1, b) (`_eliminate_damping`'s layout)."""
        return self.upper[:, : self.local_scale.shape[-1]].permute(1, 2, 0).contiguous()


def _linearize(problem: GlobalProblem, local, shared, previous, upper=None) -> _Linearization | None:
    """R_b at (local, shared) (``upper`` where already taken there), with D updated to the running maxima of
    the column norms; None where J is not finite. One total over ranks."""
    upper = problem.factors(local, shared) if upper is None else upper
    L, S = problem.sizes
    before = None if previous is None else previous.local_scale
    if global_native.usable(upper):  # (one C pass over the curves)
        local_scale, local_gradient, parts = global_native.linearize(upper, before, local, (L, S))
        cosine = float(parts[2 * S + 2])
    else:
        local_scale, local_gradient, parts, cosine = _linearize_torch(upper, before, local, (L, S))
    totals = problem.totals.sum(parts[: 2 * S + 2])
    if float(totals[2 * S]) > 0:
        return None
    shared_scale = _running_scale(torch.sqrt(totals[:S]), previous and previous.shared_scale)
    theta_square = float(totals[2 * S + 1])
    return _Linearization(upper, local_scale, shared_scale, local_gradient, totals[S : 2 * S], cosine, theta_square)


def _linearize_torch(upper: torch.Tensor, previous: torch.Tensor | None, local: torch.Tensor, sizes: tuple) -> tuple:
    """`global_native.linearize` as torch operations: D_b (b, L), (J^T r) (b, L) of the local columns, this
    rank's (2 S + 2) sums (shared columns' squared norms and J^T r, non-finite entries of R_b, ||D theta||^2),
    and its largest local cosine."""
    L, S = sizes
    p = L + S
    jacobian, q = upper[:, :p, :p], upper[:, :p, p]
    squares, gradient = torch.einsum("bij,bij->bj", jacobian, jacobian), torch.einsum("bij,bi->bj", jacobian, q)
    # (the local columns copied out: elementwise torch operations on a (b, L) view of a (b, P) tensor run L
    # entries per inner loop, ~5x slower at 10^4 curves)
    local_scale = _running_scale(torch.sqrt(squares[:, :L].contiguous()), previous)
    local_gradient = gradient[:, :L].contiguous()
    sums = [squares[:, L:].sum(0), gradient[:, L:].sum(0), nonfinite_count(upper).to(upper.dtype)[None]]
    parts = torch.cat([*sums, ((local_scale * local) ** 2).sum()[None]])
    cosine = (local_gradient.abs() / local_scale).amax() if local_gradient.numel() else 0.0
    return local_scale, local_gradient, parts, float(cosine)


def _running_scale(norms: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """D = max(column norms, the previous D) (MINPACK's running maxima), 1 where that is 0."""
    norms = norms if previous is None else torch.maximum(norms, previous)
    return torch.where(norms > 0, norms, 1.0)


def nonfinite_count(tensor: torch.Tensor) -> torch.Tensor:
    """How many entries of ``tensor`` are NaN or inf, as a float64 0-d tensor (a finite sum says none: only
    where it is not are the entries counted)."""
    if bool(torch.isfinite(tensor.sum())):
        return tensor.new_zeros((), dtype=torch.float64)
    return torch.isfinite(tensor).logical_not().sum().to(torch.float64)


def _eliminate_damping(local_rows: torch.Tensor, sizes: tuple[int, int], root_scale: torch.Tensor) -> tuple:
    """R_b's local rows after appending the rows diag(sqrt(lambda) D_b) to its local columns, by Givens
    rotations vectorised over the curves (MINPACK's qrsolv).

    ``local_rows`` (L, P + 1, b) are R_b's first L rows, the batch innermost (every operation on long
    contiguous runs); returns the new rows in that layout and what is left of each damping row in the
    shared and r columns (L, S + 1, b): remainder rows, as R_b's own last S rows are.
    """
    L, S = sizes
    rows = local_rows.clone()
    leftovers = []
    for j in range(L):
        extra = rows.new_zeros(L + S + 1, rows.shape[-1])
        extra[j] = root_scale[j]
        for k in range(j, L):
            diagonal, entry = rows[k, k], extra[k]
            radius = torch.hypot(diagonal, entry)
            safe = torch.where(radius > 0, radius, 1.0)
            cos = torch.where(radius > 0, diagonal / safe, 1.0)
            sin = torch.where(radius > 0, entry / safe, 0.0)
            row, other = rows[k, k:], extra[k:]
            rows[k, k:], extra[k:] = cos * row + sin * other, cos * other - sin * row
        leftovers.append(extra[L:])
    return rows, torch.stack(leftovers) if leftovers else rows.new_zeros(0, S + 1, rows.shape[-1])


def _back_substitution(rows: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """x (L, b) with the upper-triangular rows[:, :L] x = right (L, b) of every curve at once (batch innermost)."""
    L = right.shape[0]
    x = torch.zeros_like(right)
    for j in reversed(range(L)):
        known = (rows[j, j + 1 : L] * x[j + 1 :]).sum(0)
        x[j] = (right[j] - known) / rows[j, j]
    return x


def _damped_step(problem: GlobalProblem, linear: _Linearization, damping: float) -> tuple:
    """(d_local (b, L), d_shared (S,), predicted reduction, ||D d||^2) of min ||J d + r||^2 + lambda ||D d||^2."""
    L, S = problem.sizes
    p = L + S
    upper = linear.upper
    root = math.sqrt(damping)
    native = global_native.usable(upper)
    if native:  # (the remainder rows already reduced to a few small R's)
        rows, remainder = global_native.eliminate_damping(upper, root * linear.local_scale, (L, S), problem.threads)
    else:
        rows, leftovers = _eliminate_damping(linear.local_rows, (L, S), root * linear.local_scale.T)
        remainder = torch.cat([upper[:, L:p, L:], leftovers.permute(2, 0, 1)], dim=1).reshape(-1, S + 1)
    stacked = problem.totals.factor(remainder)
    shared_rows = torch.cat([torch.diag(root * linear.shared_scale), upper.new_zeros(S, 1)], dim=-1)
    schur = reduce_local(torch.cat([stacked, shared_rows]))
    d_shared = -torch.linalg.solve_triangular(schur[:S, :S], schur[:S, S:], upper=True)[:, 0]
    if native:
        d_local, per_curve = global_native.local_steps(
            upper, rows, linear.local_scale, d_shared, (L, S), problem.threads
        )
        sums = per_curve.sum(0)
        parts = torch.stack([-(sums[0] + 2 * sums[1]), sums[2]])
    else:
        d_local, parts = _local_steps(linear, rows, d_shared, (L, S))
    predicted, local_norm = problem.totals.sum(parts).tolist()
    return d_local, d_shared, predicted, local_norm + float(((linear.shared_scale * d_shared) ** 2).sum())


def _local_steps(linear: _Linearization, rows: torch.Tensor, d_shared: torch.Tensor, sizes: tuple) -> tuple:
    """d_b (b, L) by back-substitution in the damped local rows (L, P + 1, b), and this rank's
    (predicted reduction, ||D_local d_local||^2)."""
    L, S = sizes
    p = L + S
    upper = linear.upper
    d_local = -_back_substitution(rows, rows[:, p] + (rows[:, L:p] * d_shared[:, None]).sum(1)).T
    step = torch.cat([d_local, d_shared.expand(d_local.shape[0], -1)], dim=-1)
    change = (upper[:, :p, :p] @ step.unsqueeze(-1))[..., 0]
    parts = torch.stack(
        [
            -((change * change).sum() + 2 * (change * upper[:, :p, p]).sum()),
            ((linear.local_scale * d_local) ** 2).sum(),
        ]
    )
    return d_local, parts


def _evaluate(problem: GlobalProblem, local, shared) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """The total cost over every rank (inf where any residual is not finite), this rank's cost per curve, and
    R_b at (local, shared) where [J | r] costs about what r does, else None (the cost then read from it:
    ||r_b||^2 is the squared norm of R_b's last column)."""
    upper = problem.factors(local, shared) if problem.cheap_jacobian else None
    if upper is not None and global_native.usable(upper):  # (one pass in C instead of four torch operations)
        curve_cost, parts = global_native.costs(upper)
    else:
        r = problem.residuals(local, shared) if upper is None else upper[..., -1]
        curve_cost = torch.linalg.vecdot(r, r)  # (no (b, N) temporary)
        finite = bool(torch.isfinite(curve_cost).all())
        total = curve_cost.sum() if finite else curve_cost.new_tensor(0.0)
        parts = torch.stack([total, curve_cost.new_tensor(0.0 if finite else 1.0)])
    cost, failures = problem.totals.sum(parts).tolist()
    return (cost if failures == 0 else math.inf), curve_cost, upper


def _gradient_small(problem: GlobalProblem, linear: _Linearization, cost: float, gtol: float) -> bool:
    """max_j |J_j^T r| / (||J_j|| ||r||) <= gtol over every column (the norms being D)."""
    largest = problem.totals.maximum(linear.local_cosine)
    largest = max(largest, float((linear.shared_gradient.abs() / linear.shared_scale).amax()))
    return largest <= gtol * math.sqrt(cost)


def global_levenberg_marquardt(
    problem: GlobalProblem,
    local: torch.Tensor,
    shared: torch.Tensor,
    *,
    ftol: float,
    xtol: float,
    gtol: float,
    max_steps: int,
) -> GlobalOutcome:
    """Minimise sum_b ||r_b(theta_b, phi)||^2 over local (b, L) and shared (S,) internal coordinates.

    Stops as `lm.batch_levenberg_marquardt` does (statuses of `result.TERMINATION`): ftol (actual and
    predicted relative reductions), xtol (||D d|| relative to ||D theta||), gtol (the largest cosine
    between r and a column of J), exact (zero cost), roundoff (a rejected step that promised less
    than float64 can resolve), max_steps (Jacobians), nonfinite.
    """
    cost, curve_cost, pending = _evaluate(problem, local, shared)
    run = GlobalOutcome(local.clone(), shared.clone(), cost, curve_cost)
    if not math.isfinite(cost):
        return run.stop("nonfinite")
    linear, damping, growth = None, INITIAL_DAMPING, 2.0
    while True:
        if run.cost == 0:
            return run.stop("exact")
        if run.jacobians >= max_steps:
            return run.stop("max_steps")
        linear = _linearize(problem, run.local, run.shared, linear, pending)
        run.jacobians += 1
        run.upper = None if linear is None else linear.upper
        if linear is None:
            return run.stop("nonfinite")
        if _gradient_small(problem, linear, run.cost, gtol):
            return run.stop("gtol")
        theta_norm = math.sqrt(linear.local_theta_square + float(((linear.shared_scale * run.shared) ** 2).sum()))
        while True:
            d_local, d_shared, predicted, step_square = _damped_step(problem, linear, damping)
            trial_local, trial_shared = run.local + d_local, run.shared + d_shared
            trial_cost, trial_curves, pending = _evaluate(problem, trial_local, trial_shared)
            run.evaluations += 1
            actual = run.cost - trial_cost
            step_norm = math.sqrt(step_square)
            accepted = predicted > 0 and math.isfinite(trial_cost) and actual > ACCEPT_RATIO * predicted
            previous_cost = run.cost
            if accepted:
                ratio = actual / predicted
                damping = max(damping * max(1 / 3, 1 - (2 * ratio - 1) ** 3), SMALLEST_DAMPING)
                growth = 2.0
                run.accept(trial_local, trial_shared, trial_cost, trial_curves, pending)
            else:
                damping, growth = damping * growth, growth * 2
            status = _converged(actual, predicted, previous_cost, step_norm, theta_norm, accepted, ftol, xtol)
            if status is not None:
                return run.stop(status)
            if accepted:
                break


def _converged(actual, predicted, cost, step_norm, theta_norm, accepted, ftol, xtol) -> str | None:
    """The status a step ends the fit with, if any (see `global_levenberg_marquardt`)."""
    if accepted and abs(actual) <= ftol * cost and predicted <= ftol * cost:
        return "ftol"
    if step_norm <= xtol * theta_norm:
        return "xtol"
    if not accepted and (predicted <= EPS * cost or step_norm <= EPS * theta_norm or not math.isfinite(predicted)):
        return "roundoff"
    return None
