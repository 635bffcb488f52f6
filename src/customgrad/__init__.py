"""customgrad: define, check, fit and accelerate custom PyTorch autograd Functions."""

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
from .fit import FitResult, fit
from .library import P2, IdentityWithSquareGrad, LegendreP3

__all__ = [
    "EXPERIMENTS",
    "P2",
    "CheckError",
    "CustomgradError",
    "DataError",
    "DeriveError",
    "FitError",
    "FitResult",
    "FormulaError",
    "IdentityWithSquareGrad",
    "LegendreP3",
    "UsageError",
    "fit",
    "run_experiment",
]

__version__ = "0.1.0"
