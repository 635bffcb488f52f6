"""Levenberg-Marquardt's constants, shared by its two implementations, and what a solver hands back (`Outcome`).

The tensor solver `batch_lm.batch_levenberg_marquardt` (`fit`'s torch engine over a batch of one,
`one_problem`; `fit_batch`'s torch engine) and the per-curve C solver `native_lm.c` (CPU and CUDA
builds, its constants passed by `native.Options`) take the same steps: MINPACK's scaled trust region
delta = -(J^T J + lambda D^2)^-1 J^T r, ||D delta|| <= Delta, lambda from the SVD of R D^-1 where
[J | r] = QR (never J^T J), D the running maxima of the column norms, damped steps bent by a geodesic
acceleration (Transtrum & Sethna 2012), one Gauss-Newton polish after ftol/xtol/roundoff stops.
The plateau safeguard around them is `plateau`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

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
