"""Levenberg-Marquardt's constants and its plateau verdict, shared by the two implementations.

The tensor solver `batch_lm.batch_levenberg_marquardt` (`fit`'s torch engine over a batch of one,
`one_problem`; `fit_batch`'s torch engine) and the per-curve C solver `native_lm.c` (CPU and CUDA
builds, its constants passed by `native.Options`) take the same steps: MINPACK's scaled trust region
delta = -(J^T J + lambda D^2)^-1 J^T r, ||D delta|| <= Delta, lambda from the SVD of R D^-1 where
[J | r] = QR (never J^T J), D the running maxima of the column norms, damped steps bent by a geodesic
acceleration (Transtrum & Sethna 2012), one Gauss-Newton polish after ftol/xtol/roundoff stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

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
