"""Goodness of fit with lmfit's definitions: chi-square, reduced chi-square, AIC, BIC and R^2; and the
correlation matrix of a covariance.

For n data points, p free parameters and weighted residuals r = (f - y) / sigma:
chisqr = sum r^2, nfree = n - p, redchi = chisqr / max(1, nfree),
aic = n log(chisqr / n) + 2 p, bic = n log(chisqr / n) + p log(n) (chisqr floored at 1e-250 n there),
rsquared = 1 - sum (y - f)^2 / sum (y - mean y)^2 (unweighted, as lmfit's ModelResult).
"""

from __future__ import annotations

import math

import numpy as np

# lmfit floors chi-square here before taking its log, so an exact fit has a finite AIC/BIC.
_CHISQR_FLOOR = 1e-250
_TINY = float(np.finfo(np.float64).tiny)


def reduced_chi_square(chisqr: float, nfree: int) -> float:
    """redchi = chisqr / max(1, nfree)."""
    return chisqr / max(1, nfree)


def information_criteria(chisqr: float, ndata: int, nvarys: int) -> tuple[float, float]:
    """(aic, bic) = n log(chisqr / n) + 2 p, n log(chisqr / n) + p log(n): -2 log L of Gaussian errors
    plus the penalties of Akaike and Schwarz."""
    if ndata < 1 or not math.isfinite(chisqr):
        return math.nan, math.nan
    neg2_log_likelihood = ndata * math.log(max(chisqr, _CHISQR_FLOOR * ndata) / ndata)
    return neg2_log_likelihood + 2 * nvarys, neg2_log_likelihood + math.log(ndata) * nvarys


def r_squared(y: np.ndarray, fitted: np.ndarray) -> float:
    """R^2 = 1 - sum (y - f)^2 / max(tiny, sum (y - mean y)^2), unweighted (lmfit's ModelResult)."""
    y, fitted = np.asarray(y, dtype=np.float64), np.asarray(fitted, dtype=np.float64)
    residual = float(((y - fitted) ** 2).sum())
    return r_squared_from_sums(residual, float(((y - y.mean()) ** 2).sum()), y.size)


def r_squared_from_sums(residual: float, total: float, count: int) -> float:
    """R^2 = 1 - residual / max(tiny, total) from sum (y - f)^2 and sum (y - mean y)^2 over ``count``
    points (a distributed fit sums them over every rank's rows); NaN below 2 points."""
    if count < 2:
        return math.nan
    return 1.0 - residual / max(_TINY, total)


def correlation(covariance: np.ndarray) -> np.ndarray:
    """corr_ij = cov_ij / (se_i se_j), se = sqrt |diag cov| (NaN where a standard error is 0 or NaN)."""
    spread = np.sqrt(np.abs(np.diag(covariance)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return covariance / np.outer(spread, spread)
