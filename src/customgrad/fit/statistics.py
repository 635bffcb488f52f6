"""Standard errors cov = s^2 (J^T J)^-1, s^2 = cost / dof, from an SVD of the column-scaled Jacobian,
with the diagnostics a careful analyst adds: rank deficiency (which parameters are not identifiable),
ill-conditioning, and parameters at their bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

# Relative singular value below which a direction counts as not identifiable (numerically null),
# and condition number above which standard errors are flagged as fragile.
RANK_TOLERANCE = 1e-10
CONDITION_WARNING = 1e12
# A parameter counts as part of a null direction when its component there exceeds this.
NULL_COMPONENT = 0.1


@dataclass
class Uncertainty:
    """Covariance, standard errors, correlation, and what is wrong with them, if anything."""

    covariance: np.ndarray
    stderr: np.ndarray
    correlation: np.ndarray
    condition: float
    rank: int
    not_identifiable: list[list[str]] = field(default_factory=list)


def uncertainty(
    jacobian: torch.Tensor, cost: float, dof: int, names: tuple[str, ...], *, absolute: bool = False
) -> Uncertainty:
    """cov = s^2 D^-1 V diag(1/S^2) V^T D^-1 (SVD of J D^-1), s^2 = cost / dof; NaN where not identifiable.

    With ``absolute`` (sigma taken as absolute, SciPy's ``absolute_sigma=True``) s^2 = 1.
    """
    jacobian = jacobian.detach().to(torch.float64).cpu().numpy()
    p = jacobian.shape[1]
    column_norms = np.linalg.norm(jacobian, axis=0)
    scale = np.where(column_norms > 0, column_norms, 1.0)
    if not np.isfinite(jacobian).all():
        nan = np.full((p, p), math.nan)
        return Uncertainty(nan, np.full(p, math.nan), nan, math.inf, 0, [list(names)])
    _, s, vt = np.linalg.svd(jacobian / scale, full_matrices=False)
    s = np.concatenate([s, np.zeros(p - len(s))])
    keep = s > RANK_TOLERANCE * s[0] if s[0] > 0 else np.zeros(p, dtype=bool)
    rank = int(keep.sum())
    condition = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
    not_identifiable: list[list[str]] = []
    if rank < p:
        vt_full = np.linalg.svd(jacobian / scale)[2] if vt.shape[0] < p else vt
        involved = np.zeros(p, dtype=bool)
        for row in vt_full[rank:]:
            members = np.abs(row) > NULL_COMPONENT
            involved |= members
            not_identifiable.append([names[j] for j in np.flatnonzero(members)])
        vt = vt_full
    variance = 1.0 if absolute else cost / dof if dof > 0 else math.nan
    inverse = np.where(keep, 1 / np.where(keep, s, 1.0) ** 2, 0.0)
    covariance = (vt[:p].T * inverse) @ vt[:p] / np.outer(scale, scale) * variance
    stderr = np.sqrt(np.abs(np.diag(covariance)))
    if rank < p:
        stderr[involved] = math.nan
        covariance[involved, :] = math.nan
        covariance[:, involved] = math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = covariance / np.outer(stderr, stderr)
    return Uncertainty(covariance, stderr, correlation, condition, rank, not_identifiable)
