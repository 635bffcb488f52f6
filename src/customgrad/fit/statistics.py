"""Standard errors cov = s^2 (J^T J)^-1, s^2 = cost / dof, from an SVD of the column-scaled R factor
of J = QR (the same small R Levenberg-Marquardt steps with), with the diagnostics a careful analyst
adds: rank deficiency (which parameters are not identifiable), parameters the model no longer depends
on, ill-conditioning, and parameters at their bounds.

One routine, `scaled_spread`, does the linear algebra for a stack of R's (B, p, p): a single fit's
`uncertainty` is the stack of one, a batch's `batch_stderr` (and the shared block of a global fit) the
same numbers for all curves at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from .arrays import NUMPY, TORCH
from .goodness import correlation
from .reduction import reduce_local

# Relative singular value below which a direction counts as not identifiable (numerically null),
# and condition number above which standard errors are flagged as fragile.
RANK_TOLERANCE = 1e-10
CONDITION_WARNING = 1e12
# A parameter counts as part of a null direction when its component there exceeds this
# (on the projector onto the null space: its diagonal entry exceeds the square).
NULL_COMPONENT = 0.1
# A parameter whose whole effect (a change by max(|b_j|, 1)) moves the predictions by less than this
# share of the data, ||J_j|| max(|b_j|, 1) < INSENSITIVE ||y||, is not determined by the data: its
# Jacobian column is rounding noise (c + a exp(-k x) on constant y, where a ~ 1e-17 leaves k free).
INSENSITIVE = 1e-12


@dataclass
class Uncertainty:
    """Covariance, standard errors, correlation, and what is wrong with them, if anything."""

    covariance: np.ndarray
    stderr: np.ndarray
    correlation: np.ndarray
    condition: float
    rank: int
    not_identifiable: list[list[str]] = field(default_factory=list)
    finite: bool = True  # False: the Jacobian held NaN or inf, and nothing is determined


def column_norms(matrix: np.ndarray) -> np.ndarray:
    """||A_j|| of each matrix's columns, (..., p) from (..., n, p); where the squares leave float64's range,
    as m_j ||A_j / m_j|| with m_j = max_i |A_ij| (entries near 1e-200 or 1e200 neither underflow nor
    overflow; others keep the plain sum of squares).
    """
    plain = np.sqrt(np.einsum("...ij,...ij->...j", matrix, matrix))
    in_range = (plain > 1e-140) & (plain < 1e140)
    if in_range.all():
        return plain
    return np.where(in_range, plain, safe_column_norms(matrix, NUMPY) if matrix.shape[-2] else 0.0)


def safe_norm(vector: torch.Tensor) -> float:
    """||v|| of a tensor; where the squares leave float64's range, as m ||v / m|| with m = max |v_i|
    (as `column_norms`); inf or NaN where v holds them."""
    plain = float(torch.linalg.vector_norm(vector))
    if 1e-140 < plain < 1e140 or not math.isfinite(plain) and not bool(torch.isfinite(vector).all()):
        return plain
    return float(safe_column_norms(vector.reshape(-1, 1))[0]) if vector.numel() else 0.0


def safe_column_norms(upper: torch.Tensor, xp: SimpleNamespace = TORCH) -> torch.Tensor:
    """||A_j|| of each matrix's columns, (..., p) from (..., n, p), as m_j ||A_j / m_j||, m_j = max_i |A_ij|:
    entries near 1e-200 or 1e200 neither underflow nor overflow when squared (torch's `column_norms`).

    ``xp``: the operations of ``upper``'s kind of array (`arrays`: torch tensors, or numpy arrays).
    """
    largest = xp.amax(abs(upper), -2)
    safe = xp.where(largest > 0, largest, 1.0)
    return largest * xp.sqrt(xp.sum((upper / safe[..., None, :]) ** 2, -2))


def uncertainty(
    jacobian: torch.Tensor,
    cost: float,
    dof: int,
    names: tuple[str, ...],
    *,
    values: np.ndarray | None = None,
    data_norm: float | None = None,
    absolute: bool = False,
    unit: float = 1.0,
) -> Uncertainty:
    """cov = s^2 D^-1 V diag(1/S^2) V^T D^-1 (SVD of R D^-1, J = QR), s^2 = cost / dof; NaN where not identifiable.

    With ``absolute`` (sigma taken as absolute, SciPy's ``absolute_sigma=True``) s^2 = 1 in the
    data's units: ``unit``^2 when J and cost come in units where the residuals were multiplied by
    ``unit``. With ``values`` (the fitted parameters) and ``data_norm`` (||y||, weighted as J is), a
    parameter whose column is below `INSENSITIVE` of the data is not identifiable either.
    """
    # R carries everything the covariance needs, J^T J = R^T R, in p^2 numbers (`reduction`)
    upper = reduce_local(torch.as_tensor(jacobian).detach().to(torch.float64)).cpu().numpy()
    if not np.isfinite(upper).all():
        return undetermined(names)
    if values is not None and data_norm is not None:
        upper = insensitive_zeroed(upper, np.asarray(values, dtype=np.float64), np.float64(data_norm))
    variance = unit * unit if absolute else cost / dof if dof > 0 else math.nan
    return spread_uncertainty(*(part[0] for part in scaled_spread(upper[None])), variance, names)


def batch_stderr(
    upper: torch.Tensor, cost: torch.Tensor, dof: torch.Tensor, values: torch.Tensor, data_norm: torch.Tensor
) -> torch.Tensor:
    """Standard errors s_b sqrt(core_jj) / D_j (B, p), s_b^2 = cost_b / dof_b, from the R factors ``upper``
    (B, p, p) of the Jacobians at the solutions ``values`` (B, p): `uncertainty`'s numbers for every curve
    at once, a column below `INSENSITIVE` of the curve's ``data_norm`` (B,) (||y||, weighted as J is) too."""
    matrices = upper.detach().to(torch.float64).cpu().numpy()
    finite = np.isfinite(matrices).all((-2, -1))
    values, data_norm = (part.detach().to(torch.float64).cpu().numpy() for part in (values, data_norm))
    matrices = insensitive_zeroed(np.where(finite[:, None, None], matrices, 0.0), values, data_norm)
    scale, s, vt, core = scaled_spread(matrices)
    cost, dof = (part.detach().to(torch.float64).cpu().numpy() for part in (cost, dof))
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(dof > 0, cost / np.maximum(dof, 1), math.nan)
        # square roots before the units: parameters near 1e300 keep finite errors
        stderr = np.sqrt(np.abs(np.diagonal(core, axis1=-2, axis2=-1))) * np.sqrt(variance)[:, None] / scale
    stderr = np.where(null_involved(s, vt) | ~finite[:, None], math.nan, stderr)
    return torch.from_numpy(stderr).to(upper)


def insensitive_zeroed(upper: np.ndarray, values: np.ndarray, data_norm: np.ndarray) -> np.ndarray:
    """``upper`` (..., p, p), R of J at the parameter ``values`` (..., p), with the columns whose reach
    ||J_j|| max(|b_j|, 1) is below `INSENSITIVE` of ``data_norm`` (...) set to 0: such a column is rounding
    noise, and its parameter is not identifiable."""
    with np.errstate(invalid="ignore", over="ignore"):
        reach = column_norms(upper) * np.maximum(np.abs(values), 1.0)
    return np.where(np.expand_dims(reach < INSENSITIVE * np.expand_dims(data_norm, -1), -2), 0.0, upper)


def scaled_spread(upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """D, S, V^T and core = V diag(1/S^2) V^T (kept directions) of R D^-1 = U diag(S) V^T per matrix of the
    stack ``upper`` (B, p, p), D its column norms (1 for zero columns): core = (D^-1 J^T J D^-1)^+, entries of
    order 1; units come last, stderr taking its square root first (parameters near 1e300 keep finite errors)."""
    norms = column_norms(upper)
    scale = np.where(norms > 0, norms, 1.0)
    s, vt, core = gram_pseudo_inverse(upper / np.expand_dims(scale, -2))
    return scale, s, vt, core


def gram_pseudo_inverse(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S, V^T and (A^T A)^+ = V diag(1/S^2) V^T over the kept directions of A = U diag(S) V^T, per
    matrix of the stack ``matrix`` (B, p, p) (`kept_directions`)."""
    _, s, vt = np.linalg.svd(matrix)
    keep = kept_directions(s)
    inverse_squares = np.where(keep, 1 / np.where(keep, s, 1.0) ** 2, 0.0)
    return s, vt, (np.swapaxes(vt, -1, -2) * np.expand_dims(inverse_squares, -2)) @ vt


def spread_uncertainty(
    scale: np.ndarray, s: np.ndarray, vt: np.ndarray, core: np.ndarray, variance: float, names
) -> Uncertainty:
    """The `Uncertainty` cov = variance D^-1 core D^-1 of one matrix's `scaled_spread`, its standard
    errors and correlation, with the parameters of null directions grouped and set to NaN."""
    spread = np.sqrt(np.abs(np.diag(core)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        stderr = math.sqrt(variance) * spread / scale
        covariance = core * variance / np.outer(scale, scale)
    return with_null_groups(covariance, stderr, correlation(core), s, vt, names)


def kept_directions(s: np.ndarray) -> np.ndarray:
    """Which singular values (decreasing, (..., p)) count: above `RANK_TOLERANCE` of the largest, none when it is 0."""
    largest = s[..., :1]
    return (largest > 0) & (s > RANK_TOLERANCE * largest)


def null_involved(s: np.ndarray, vt: np.ndarray) -> np.ndarray:
    """Which parameters (..., p) take part in a null direction of the SVD ``s`` (..., p), ``vt`` (..., p, p):
    their diagonal entry of the projector V0 V0^T onto the null space exceeds `NULL_COMPONENT`^2 (as
    `_null_groups`; any basis of the null space gives the same)."""
    null = ~kept_directions(s)
    return (vt * vt * np.expand_dims(null, -1)).sum(-2) > NULL_COMPONENT**2


def undetermined(names: tuple[str, ...]) -> Uncertainty:
    """The `Uncertainty` of a Jacobian holding NaN or inf: nothing determined."""
    p = len(names)
    nan = np.full((p, p), math.nan)
    return Uncertainty(nan, np.full(p, math.nan), nan.copy(), math.inf, 0, [list(names)], finite=False)


def with_null_groups(
    covariance: np.ndarray, stderr: np.ndarray, correlation: np.ndarray, s: np.ndarray, vt: np.ndarray, names
) -> Uncertainty:
    """The `Uncertainty` from the covariance, standard errors and correlation computed over the kept
    directions of the SVD ``s``, ``vt`` of R D^-1: its rank and condition number, with the parameters
    of its null directions grouped and set to NaN (``uncertainty``'s last step; the native engine's too)."""
    rank = int(kept_directions(s).sum())
    condition = float(s[0] / s[-1]) if len(s) and s[-1] > 0 else math.inf
    groups = _null_groups(vt[rank:])
    for group in groups:
        stderr[group] = math.nan
        for matrix in (covariance, correlation):
            matrix[group, :] = math.nan
            matrix[:, group] = math.nan
    not_identifiable = [[names[j] for j in group] for group in groups]
    return Uncertainty(covariance, stderr, correlation, float(condition), rank, not_identifiable)


def _null_groups(null_rows: np.ndarray) -> list[list[int]]:
    """Parameters in the null space, grouped by the null directions they share (any basis gives the same).

    From the projector N = V0 V0^T onto the null space: j takes part when N_jj > `NULL_COMPONENT`^2;
    i and j belong together when |N_ij| exceeds it too (connected components).
    """
    projector = null_rows.T @ null_rows
    threshold = NULL_COMPONENT**2
    unseen = [j for j in range(len(projector)) if projector[j, j] > threshold]
    groups: list[list[int]] = []
    while unseen:
        group = [unseen.pop(0)]
        for i in group:  # (a breadth-first search: the group grows while it is walked)
            linked = [j for j in unseen if abs(projector[i, j]) > threshold]
            unseen = [j for j in unseen if j not in linked]
            group += linked
        groups.append(sorted(group))
    return groups
