"""Standard errors of a batch of fits from R alone: cov_b = s_b^2 D^-1 V diag(1/S^2) V^T D^-1, s_b^2 = cost_b / dof_b.

The SVD of R D^-1 has the singular values and V of J D^-1 (R is J's triangular factor), so the
covariance needs no J: the same numbers as `statistics.uncertainty`, for all curves at once.
Parameters in a direction the data do not determine get NaN, as there.
"""

from __future__ import annotations

import torch

from .jacobi import jacobi_svd
from .statistics import NULL_COMPONENT, RANK_TOLERANCE, safe_column_norms


def batch_stderr(upper: torch.Tensor, cost: torch.Tensor, dof: torch.Tensor) -> torch.Tensor:
    """Standard errors (B, p) from the R factors ``upper`` (B, p, p) of the Jacobians at the solutions."""
    finite = torch.isfinite(upper).flatten(1).all(-1)
    upper = torch.where(finite[:, None, None], upper, 0.0)
    column_norms = safe_column_norms(upper)
    scale = torch.where(column_norms > 0, column_norms, 1.0)
    values, vt, _ = jacobi_svd(upper / scale.unsqueeze(-2), torch.zeros_like(scale))
    keep = (values[:, :1] > 0) & (values > RANK_TOLERANCE * values[:, :1])
    inverse = torch.where(keep, 1 / torch.where(keep, values, 1.0) ** 2, 0.0)
    variance = torch.where(dof > 0, cost / dof.clamp_min(1), torch.nan)
    core = (vt * vt * inverse.unsqueeze(-1)).sum(-2)
    # square roots before the units: parameters near 1e300 keep finite errors
    stderr = torch.sqrt(core.abs()) * torch.sqrt(variance).unsqueeze(-1) / scale
    involved = ((vt.abs() > NULL_COMPONENT) & ~keep.unsqueeze(-1)).any(-2)
    stderr = torch.where(involved | ~finite.unsqueeze(-1), torch.nan, stderr)
    return stderr
