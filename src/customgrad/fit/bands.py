"""Confidence and prediction bands of a fitted curve, by the delta method with the exact Jacobian.

At predictor values x, with J = df/db (generated for formulas, autograd for callables) and the
parameter covariance C, var f = diag(J C J^T). The half-width at ``sigma`` standard deviations is
t * sqrt(var f) for the confidence band (lmfit's ``dely``) and t * sqrt(var f + redchi) for the
prediction band (lmfit's ``dely_predicted``), t = the Student-t quantile at (1 + P) / 2 for nfree
degrees of freedom, P = erf(sigma / sqrt(2)) (sigma < 1 is P itself). With absolute sigma the variance
is known and t is the normal quantile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UsageError
from .distributions import band_quantile

if TYPE_CHECKING:
    from .fitted import Fitted

BAND_KINDS = ("confidence", "prediction")


def _source(result: Fitted):
    if result.source is None:
        raise UsageError("this FitResult holds no model to evaluate (it was built by hand, not returned by fit)")
    return result.source


def _free_values(result: Fitted) -> torch.Tensor:
    problem = _source(result).problem
    values = [result.params[name] for name in problem.names]
    return torch.tensor(values, dtype=problem.y.dtype, device=problem.y.device)


def predict(result: Fitted, x) -> np.ndarray:
    """f(x; fitted parameters) at new predictor values."""
    source = _source(result)
    model = source.model_at(source.columns(x))
    with torch.no_grad(), np.errstate(all="ignore"):
        return model.predict(_free_values(result)).detach().cpu().numpy().copy()


def eval_uncertainty(result: Fitted, x=None, *, sigma: float = 1, kind: str = "confidence") -> np.ndarray:
    """Half-width of the ``kind`` band at ``sigma`` standard deviations, at x (default: the data)."""
    if kind not in BAND_KINDS:
        raise UsageError(f"kind must be one of {{{', '.join(BAND_KINDS)}}}, got {kind!r}")
    source = _source(result)
    scale = band_quantile(sigma, result.nfree, student=not source.absolute_sigma)
    columns = source.problem.data if x is None else source.columns(x)
    with np.errstate(all="ignore"):
        _, jacobian = source.model_at(columns).jacobian(_free_values(result), external=True)
    jacobian = jacobian.detach().cpu().to(torch.float64).numpy()
    variance = np.einsum("ij,jk,ik->i", jacobian, np.asarray(result.covariance), jacobian)
    if kind == "prediction":
        variance = variance + (1.0 if source.absolute_sigma else result.redchi)
    return scale * np.sqrt(variance)
