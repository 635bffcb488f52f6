"""customgrad: define, check, fit and accelerate custom PyTorch autograd Functions."""

from ._version import __version__
from .check import CheckReport, CheckResult, check
from .errors import (
    CheckError,
    CustomgradError,
    DataError,
    DeriveError,
    FitError,
    FormulaError,
    UsageError,
)
from .experiments import EXPERIMENTS, run_experiment
from .fit import BatchFitResult, FitResult, fit, fit_batch
from .formula import Formula, parse_formula
from .function import function
from .library import P2, IdentityWithSquareGrad, LegendreP3
from .registry import REGISTRY

__all__ = [
    "__version__",
    "EXPERIMENTS",
    "REGISTRY",
    "Formula",
    "function",
    "parse_formula",
    "P2",
    "BatchFitResult",
    "CheckError",
    "CheckReport",
    "CheckResult",
    "CustomgradError",
    "DataError",
    "DeriveError",
    "FitError",
    "FitResult",
    "FormulaError",
    "IdentityWithSquareGrad",
    "LegendreP3",
    "UsageError",
    "check",
    "fit",
    "fit_batch",
    "run_experiment",
]
