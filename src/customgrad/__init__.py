"""customgrad: define, check, fit and accelerate custom PyTorch autograd Functions.

The public names are imported on first use (module ``__getattr__``), so ``import customgrad`` and
the command line's ``--help`` load neither torch nor SymPy; ``from customgrad import P2`` still gives
the ready autograd Function.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from . import builtin_table as _builtin_table
from . import openmp  # noqa: F401 - before torch loads: its OpenMP runtime then waits passively
from ._version import __version__
from .errors import (
    CheckError,
    CustomgradError,
    DataError,
    DeriveError,
    FitError,
    FormulaError,
    GradientError,
    UsageError,
)
from .lazy import lazy_exports

#: Public name -> the submodule that defines it (imported when the name is first used).
_EXPORTS: dict[str, str] = {
    "EXPERIMENTS": "experiments",
    "run_experiment": "experiments",
    "REGISTRY": "registry",
    "Formula": "formula",
    "parse_formula": "formula",
    "function": "function",
    "Layer": "layer",
    "custom_gradient": "custom_gradient",
    "CustomGradient": "custom_gradient",
    "P2": "library",
    "LegendreP3": "library",
    "IdentityWithSquareGrad": "library",
    "CheckReport": "check",
    "CheckResult": "check",
    "check": "check",
    "BatchFitResult": "fit",
    "FitResult": "fit",
    "fit": "fit",
    "fit_batch": "fit",
}

if TYPE_CHECKING:
    from .check import CheckReport, CheckResult, check
    from .custom_gradient import CustomGradient, custom_gradient
    from .experiments import EXPERIMENTS, run_experiment
    from .fit import BatchFitResult, FitResult, fit, fit_batch
    from .formula import Formula, parse_formula
    from .function import function
    from .layer import Layer
    from .library import P2, IdentityWithSquareGrad, LegendreP3
    from .registry import REGISTRY

__all__ = [
    "__version__",
    "EXPERIMENTS",
    "REGISTRY",
    "Formula",
    "function",
    "custom_gradient",
    "CustomGradient",
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
    "Layer",
    "GradientError",
    "IdentityWithSquareGrad",
    "LegendreP3",
    "UsageError",
    "check",
    "fit",
    "fit_batch",
    "run_experiment",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)


def _registered_builtin(name: str):
    """`library.registered_builtin`, imported when a built-in is first asked for (SymPy then, not now)."""
    from .library import registered_builtin

    return registered_builtin(name)


# The registry (below `library`) asks for a built-in's entry through the maker installed here.
_builtin_table.install_entry_maker(_registered_builtin)


class _Package(types.ModuleType):
    """The package module: importing the submodule ``customgrad.function`` (or ``.check``, ``.fit``)
    binds it on the package under the name of the public function it defines; keep the function."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            if name not in vars(value):
                return  # not loaded yet (customgrad.fit's names are lazy): `__getattr__` finds it on first use
            value = vars(value)[name]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
