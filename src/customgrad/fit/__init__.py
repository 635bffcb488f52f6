"""Fitting: `fit` (Levenberg-Marquardt and gradient-based solvers), `FitResult`, and the NIST StRD reader.

The names are imported on first use (module ``__getattr__``), so that the command line can import
what checks its options (``customgrad.fit_command``, ``fit.formula_model``) without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "TERMINATION": "status",
    "BatchFitResult": "result",
    "FitResult": "result",
    "NistProblem": "nist",
    "fit": "api",
    "fit_batch": "api",
    "load_nist": "nist",
    "nist_names": "nist",
    "read_nist": "nist",
}

if TYPE_CHECKING:
    from .api import fit, fit_batch
    from .nist import NistProblem, load_nist, nist_names, read_nist
    from .result import BatchFitResult, FitResult
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
