"""Fitting: `fit` (Levenberg-Marquardt and gradient-based solvers), `FitResult`, and the NIST StRD reader."""

from .api import fit
from .batch import fit_batch
from .batch_result import BatchFitResult
from .nist import NistProblem, load_nist, nist_names, read_nist
from .result import FitResult
from .status import TERMINATION

__all__ = [
    "TERMINATION",
    "BatchFitResult",
    "FitResult",
    "NistProblem",
    "fit",
    "fit_batch",
    "load_nist",
    "nist_names",
    "read_nist",
]
