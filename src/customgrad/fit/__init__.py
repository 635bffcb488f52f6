"""Fitting: `fit` (Levenberg-Marquardt and gradient-based solvers), `FitResult`, and the NIST StRD reader."""

from .api import fit
from .nist import NistProblem, load_nist, nist_names, read_nist
from .result import TERMINATION, FitResult

__all__ = ["TERMINATION", "FitResult", "NistProblem", "fit", "load_nist", "nist_names", "read_nist"]
