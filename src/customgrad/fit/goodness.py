"""Goodness of fit with lmfit's definitions: chi-square, reduced chi-square, AIC, BIC and R^2; the
correlation matrix of a covariance; and the quantiles of the bands and intervals.

For n data points, p free parameters and weighted residuals r = (f - y) / sigma:
chisqr = sum r^2, nfree = n - p, redchi = chisqr / max(1, nfree),
aic = n log(chisqr / n) + 2 p, bic = n log(chisqr / n) + p log(n) (chisqr floored at 1e-250 n there),
rsquared = 1 - sum (y - f)^2 / sum (y - mean y)^2 (unweighted, as lmfit's ModelResult).

Quantiles: P = erf(sigma / sqrt(2)) for a number of standard deviations, the Student-t quantile
t_nu(q), and the F(1, nu) quantile t_nu((1 + P) / 2)^2 (the square of a t variable is F(1, nu)).
SciPy is a test-only dependency, so the t quantile is found by Newton's method on the t CDF
(mpmath's regularized incomplete beta, which ships with SymPy), to float64 precision.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from ..errors import UsageError

# lmfit floors chi-square here before taking its log, so an exact fit has a finite AIC/BIC.
_CHISQR_FLOOR = 1e-250
_TINY = float(np.finfo(np.float64).tiny)


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


def sigma_probability(sigma: float, what: str = "sigma") -> float:
    """P = erf(sigma / sqrt(2)) for sigma >= 1 (1 -> 0.6827, 2 -> 0.9545); below 1, sigma is P itself.

    The convention of lmfit's ``eval_uncertainty`` and ``conf_interval``.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise UsageError(
            f"{what} must be a positive number of standard deviations (1, 2, 3) or a probability below 1 "
            f"(0.9), got {sigma!r}"
        )
    return float(sigma) if sigma < 1 else math.erf(sigma / math.sqrt(2))


def student_t_quantile(q: float, dof: float) -> float:
    """t such that P(T <= t) = q for Student's t with ``dof`` degrees of freedom (NaN when dof <= 0)."""
    if not dof > 0:
        return math.nan
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_quantile(1 - q, dof)
    import mpmath

    with mpmath.workdps(30):
        nu, target = mpmath.mpf(dof), mpmath.mpf(q)
        density_scale = mpmath.gamma((nu + 1) / 2) / (mpmath.sqrt(nu * mpmath.pi) * mpmath.gamma(nu / 2))

        def cdf(t):
            return 1 - mpmath.betainc(nu / 2, mpmath.mpf(1) / 2, 0, nu / (nu + t * t), regularized=True) / 2

        def density(t):
            return density_scale * (1 + t * t / nu) ** (-(nu + 1) / 2)

        # The CDF is concave for t > 0: Newton from the normal quantile (below the root) overshoots once,
        # then descends monotonically onto the root.
        t = mpmath.mpf(NormalDist().inv_cdf(q))
        for _ in range(200):
            step = (cdf(t) - target) / density(t)
            t -= step
            if abs(step) <= mpmath.mpf(10) ** -20 * (1 + abs(t)):
                break
        return float(t)


def band_quantile(sigma: float, dof: int, *, student: bool = True, what: str = "sigma") -> float:
    """The band's scale: t_dof((1 + P) / 2) with P = `sigma_probability` (lmfit), or sigma's normal
    quantile when the variance is known (``student=False``: absolute sigma)."""
    quantile = (1 + sigma_probability(sigma, what)) / 2
    return student_t_quantile(quantile, dof) if student else NormalDist().inv_cdf(quantile)


def profile_target(sigma: float, best: float, dof: int, *, absolute: bool = False) -> float:
    """chi2 at the edge of the ``sigma`` interval: chi2_best (1 + F_(1,dof)(P) / dof), where lmfit's F-test
    reaches P; with ``absolute`` sigma, chi2_best + chi2_1(P) (the known-variance likelihood ratio)."""
    scale = band_quantile(sigma, dof, student=not absolute, what="sigmas")
    return best + scale**2 if absolute else best * (1 + scale**2 / dof)


def profile_probability(chisqr: float, best: float, dof: int, *, absolute: bool = False) -> float:
    """The inverse of `profile_target` as a number of sigmas: the level a profile point reaches."""
    excess = chisqr - best if absolute else (chisqr / best - 1) * dof if best > 0 else math.inf
    return math.sqrt(max(excess, 0.0)) if absolute else _t_to_sigma(math.sqrt(max(excess, 0.0)), dof)


def _t_to_sigma(t: float, dof: int) -> float:
    import mpmath

    if not math.isfinite(t):
        return math.inf
    nu = mpmath.mpf(dof)
    tail = mpmath.betainc(nu / 2, mpmath.mpf(1) / 2, 0, nu / (nu + t * t), regularized=True)  # P(|T| > t)
    return float(NormalDist().inv_cdf(float(1 - tail / 2))) if tail > 0 else math.inf
