"""Covariance of a global fit, cov = s^2 (J^T J)^-1 of the dense stacked problem, from its block structure.

With curve b's R_b = [[R_AA, R_AC], [0, R_CC]] (local columns first; J^T J = sum_b R_b^T R_b), the
shared block of (J^T J)^-1 is the inverse of the Schur complement Sigma = sum_b R_CC^T R_CC (plus
R_AC^T U0 U0^T R_AC where R_AA has null directions U0), read from R of the stacked remainders (TSQR:
never squared). With W_b = R_AA^+ R_AC (the pseudo-inverse where a local parameter is not determined):

    cov(phi, phi)     = s^2 Sigma^-1
    cov(theta_b, phi) = -s^2 W_b Sigma^-1
    cov(theta_b)      = s^2 (R_AA^+ R_AA^+T + W_b Sigma^-1 W_b^T)

the block-inverse formula, exactly as the dense inverse. s^2 = total cost / (points - S - B L).
Directions the data do not determine (relative singular value below `RANK_TOLERANCE`, of the scaled
R_AA per curve or of the scaled Sigma's factor, `statistics.scaled_spread`) give NaN, and a warning names them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import global_native
from .global_lm import nonfinite_count
from .statistics import (
    INSENSITIVE,
    RANK_TOLERANCE,
    gram_pseudo_inverse,
    null_involved,
    safe_column_norms,
    scaled_spread,
    spread_uncertainty,
)

# A curve's column-scaled R_AA whose condition bound ||R||_F ||R^-1||_F stays below REGULAR_MARGIN /
# RANK_TOLERANCE has full rank beyond doubt: its inverse is taken directly, without an SVD.
REGULAR_MARGIN = 1e-2


@dataclass
class GlobalUncertainty:
    """The covariance blocks of a global fit (local ones per curve of this rank) and what is wrong with them."""

    shared_covariance: np.ndarray  # (S, S)
    shared_stderr: np.ndarray  # (S,)
    local_covariance: torch.Tensor  # (b, L, L)
    cross_covariance: torch.Tensor  # (b, L, S): cov(theta_b, phi)
    local_stderr: torch.Tensor  # (b, L)
    local_undetermined: torch.Tensor  # (b, L) bool: in a direction its curve does not determine
    condition: float  # of the scaled Schur complement's factor
    warnings: list[str] = field(default_factory=list)


def _local_inverse(upper: torch.Tensor, L: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """R_AA^+ (b, L, L) = D^-1 V diag(1/s^2) V^T D^-1 R_AA^T over the kept directions of the SVD of the
    column-scaled R_AA D^-1 (batched Jacobi), and the parameters of a null direction (b, L) bool; R_AA
    the leading L x L block of each R_b ``upper``."""
    upper_local = upper[:, :L, :L]
    if L == 0 or upper.shape[0] == 0:  # every parameter shared, or no curve here
        return upper_local.clone(), upper_local.new_zeros(upper_local.shape[:2], dtype=torch.bool)
    # s_min / s_max >= 1 / (||R||_F ||R^-1||_F): where that bound clears RANK_TOLERANCE (by a margin) every
    # direction is kept and the pseudo-inverse is the inverse; the SVD decides for the other curves only
    limit = REGULAR_MARGIN / RANK_TOLERANCE
    if global_native.usable(upper):
        pseudo, doubtful = global_native.local_inverse(upper, L, limit, workers)
    else:
        scaled, scale = _column_scaled(upper_local)
        eye = torch.eye(L, dtype=scaled.dtype, device=scaled.device)
        inverse = torch.linalg.solve_triangular(scaled, eye.expand_as(scaled), upper=True)
        doubtful = ~(torch.linalg.matrix_norm(scaled) * torch.linalg.matrix_norm(inverse) < limit)
        pseudo = inverse / scale.unsqueeze(-1)
    involved = torch.zeros(upper_local.shape[:2], dtype=torch.bool, device=upper.device)
    doubtful = doubtful.nonzero().flatten()
    if len(doubtful):
        scaled, scale = _column_scaled(upper_local[doubtful])
        inverse, involved[doubtful] = _svd_pseudo_inverse(scaled)
        pseudo[doubtful] = inverse / scale.unsqueeze(-1)
    return pseudo, involved


def _column_scaled(upper_local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R_AA D^-1 and D (b, L): each column of R_AA (b, L, L) divided by its safe norm (1 where zero)."""
    norms = safe_column_norms(upper_local)
    scale = torch.where(norms > 0, norms, 1.0)
    return upper_local / scale.unsqueeze(-2), scale


def _svd_pseudo_inverse(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R^+ = (R^T R)^+ R^T (b, L, L) over the directions the SVD keeps (`statistics.gram_pseudo_inverse`),
    and the parameters of a null direction (b, L) bool."""
    s, vt, core = gram_pseudo_inverse(scaled.detach().to(torch.float64).cpu().numpy())
    pseudo = torch.from_numpy(core).to(scaled) @ scaled.transpose(-1, -2)
    return pseudo, torch.from_numpy(null_involved(s, vt)).to(scaled.device)


def global_uncertainty(upper, totals, sizes, variance, shared_names, data_norm, shared_values, workers: int):
    """The `GlobalUncertainty` from the R_b (b, P + 1, P + 1) of J with respect to the parameter values.

    ``variance`` is s^2; ``totals`` a `global_lm.Totals`; ``data_norm`` ||y / sigma|| over all curves,
    against which a shared column below `INSENSITIVE` counts as no effect at all; ``workers`` the
    threads of the C kernels over the curves (`global_native.threads`).
    """
    L, S = sizes
    if float(totals.sum(nonfinite_count(upper))) > 0:
        return _undetermined(upper, sizes)
    upper_local, cross, upper_shared = upper[:, :L, :L], upper[:, :L, L : L + S], upper[:, L : L + S, L : L + S]
    pseudo, involved = _local_inverse(upper, L, workers)
    native = global_native.usable(upper)
    if native:
        weights, outside = global_native.local_weights(upper, pseudo, sizes, workers)
    else:
        weights = pseudo @ cross  # W_b
        # R_AC's part outside R_AA's range (zero where R_AA has full rank) joins the remainder: same Gram as U0^T R_AC
        outside = cross - upper_local @ weights
    remainder = torch.cat([upper_shared, outside], dim=-2).reshape(-1, S)
    sigma_factor = totals.factor(remainder).cpu().numpy()[:S, :S]
    column_square = (upper[:, : L + S, L : L + S] ** 2).sum((0, 1)) if len(upper) else upper.new_zeros(S)
    column = np.sqrt(totals.sum(column_square).cpu().numpy())
    warnings = _shared_without_effect(column, shared_values, data_norm, shared_names)
    dead = column * np.maximum(np.abs(shared_values), 1.0) < INSENSITIVE * data_norm
    sigma_factor[:, dead] = 0.0
    inverse, spread = _shared_inverse(sigma_factor, shared_names, dead)
    warnings += _not_identifiable(spread.not_identifiable, {n for n, d in zip(shared_names, dead) if d})
    core = torch.as_tensor(inverse, dtype=upper.dtype, device=upper.device)
    if native:
        local_covariance, cross_covariance, local_stderr = global_native.local_covariance(
            pseudo, weights, core, variance, workers
        )
    else:
        cross_covariance = -variance * weights @ core
        local_covariance = variance * (pseudo @ pseudo.transpose(-1, -2) + weights @ core @ weights.transpose(-1, -2))
        local_stderr = torch.sqrt(torch.diagonal(local_covariance, dim1=-2, dim2=-1).abs())
    if bool(involved.any()):
        # a direction its curve does not determine: NaN in every entry it takes part in, as `with_null_groups`
        local_stderr = torch.where(involved, torch.nan, local_stderr)
        local_covariance = local_covariance.masked_fill(involved.unsqueeze(-1) | involved.unsqueeze(-2), torch.nan)
        cross_covariance = cross_covariance.masked_fill(involved.unsqueeze(-1), torch.nan)
    local = (local_covariance, cross_covariance, local_stderr, involved)
    shared = (variance * spread.covariance, math.sqrt(variance) * spread.stderr)
    return GlobalUncertainty(*shared, *local, spread.condition, warnings)


def _undetermined(upper: torch.Tensor, sizes: tuple[int, int]) -> GlobalUncertainty:
    """Every covariance NaN: the Jacobian at the fitted values holds NaN or inf."""
    L, S = sizes
    b = upper.shape[0]
    local = (upper.new_full(shape, math.nan) for shape in ((b, L, L), (b, L, S), (b, L)))
    every = torch.ones(b, L, dtype=torch.bool, device=upper.device)
    warning = (
        "the Jacobian holds NaN or inf at the fitted values (a derivative undefined there, or the model "
        "failed): no standard error is defined; start elsewhere or keep the data off that point"
    )
    return GlobalUncertainty(np.full((S, S), math.nan), np.full(S, math.nan), *local, every, math.inf, [warning])


def _shared_inverse(factor: np.ndarray, names, dead: np.ndarray):
    """Sigma^+ (kept directions only, for the local blocks) and the `Uncertainty` of the shared block
    (its covariance Sigma^-1 with NaN for the directions Sigma leaves undetermined, stderr unscaled)."""
    scale, s, vt, core = (part[0] for part in scaled_spread(factor[None]))
    inverse = core / np.outer(scale, scale)
    uncertainty = spread_uncertainty(scale, s, vt, core, 1.0, tuple(names))
    for j in np.flatnonzero(dead):
        if not any(names[j] in group for group in uncertainty.not_identifiable):
            uncertainty.not_identifiable.append([names[j]])
        uncertainty.stderr[j] = math.nan
        uncertainty.covariance[j, :] = uncertainty.covariance[:, j] = math.nan
    return inverse, uncertainty


def _shared_without_effect(column: np.ndarray, values, data_norm: float, names) -> list[str]:
    """A warning per shared parameter no curve depends on (its Jacobian column zero on every curve)."""
    reach = column * np.maximum(np.abs(np.asarray(values, dtype=np.float64)), 1.0)
    return [
        f"shared parameter {name} has no effect on any curve (its Jacobian column is zero on all of them at the "
        "fitted values): the data do not determine it and its standard error is undefined; fix it "
        "(fixed=True) or check that the model uses it"
        for name, effect in zip(names, reach, strict=True)
        if not effect >= INSENSITIVE * data_norm
    ]


def _not_identifiable(groups, dead_names: set) -> list[str]:
    """A warning per group of shared parameters the curves together do not determine (beyond those with no effect)."""
    return [
        f"shared parameter{'s' if len(group) > 1 else ''} {', '.join(group)} not identifiable: the curves together "
        "do not determine "
        + ("them (only a combination of them)" if len(group) > 1 else "it (the local parameters absorb its effect)")
        + "; the Schur complement of the shared block is singular, standard errors undefined"
        for group in groups
        if not set(group) <= dead_names
    ]
