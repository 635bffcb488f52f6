"""What the tools that read a finished fit (prediction bands, profile intervals, plots) need of it:
`Fitted`, a Protocol that `result.FitResult` satisfies.

They take any object of this shape, so they need not import the result class whose methods
(`FitResult.eval_uncertainty`, `.conf_interval`, `.plot`) hand themselves over to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from .source import FitSource


class Fitted(Protocol):
    """A fit's numbers and the model that produced them (see `result.FitResult` for each field)."""

    params: dict[str, float]
    stderr: dict[str, float]
    covariance: np.ndarray
    cost: float
    status: str
    method: str
    model: str
    not_identifiable: list[list[str]]
    fixed: dict[str, float]
    tied: dict[str, str]
    data: dict
    absolute_sigma: bool
    source: FitSource | None

    @property
    def success(self) -> bool: ...

    @property
    def message(self) -> str: ...

    @property
    def nfree(self) -> int: ...

    @property
    def redchi(self) -> float: ...

    def predict(self, x) -> np.ndarray: ...

    def eval_uncertainty(self, x=None, *, sigma: float = 1, kind: str = "confidence") -> np.ndarray: ...
