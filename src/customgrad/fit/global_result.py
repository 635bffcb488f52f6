"""The shared part of a global fit's `BatchFitResult`: the shared values once, their covariance, and the
covariance blocks that tie each curve's local parameters to them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..strict_json import json_ready
from .goodness import correlation
from .status import TERMINATION, termination_message


@dataclass
class SharedParameters:
    """Shared parameters of a global fit (``BatchFitResult.shared``): one value for all curves.

    ``covariance`` is cov(phi) (S, S); ``local_covariance[b]`` cov(theta_b) (L, L) and
    ``cross_covariance[b]`` cov(theta_b, phi) (L, S) for each curve b (NaN for curves without data),
    the blocks of s^2 (J^T J)^-1 of the dense stacked problem, s^2 = cost / dof over all curves.
    """

    params: dict[str, float]
    stderr: dict[str, float]
    covariance: np.ndarray = field(repr=False)
    local_names: tuple[str, ...] = ()
    local_covariance: np.ndarray = field(default=None, repr=False)
    cross_covariance: np.ndarray = field(default=None, repr=False)
    cost: float = math.nan
    dof: int = 0
    status: str = "max_steps"
    evaluations: int = 0
    jacobians: int = 0
    condition: float = math.nan
    warnings: list[str] = field(default_factory=list)

    @property
    def names(self) -> tuple[str, ...]:
        """The free shared parameters, in the order of ``covariance``."""
        return tuple(self.stderr)

    @property
    def success(self) -> bool:
        """True when the joint fit converged (see `TERMINATION`)."""
        return TERMINATION[self.status][0]

    @property
    def correlation(self) -> np.ndarray:
        """cov_ij / (se_i se_j) of the shared parameters."""
        return correlation(self.covariance)

    def summary(self) -> str:
        """One line per shared parameter (value +- stderr), the joint fit's status, cost and warnings."""
        lines = [
            f"global fit: {self.status} ({termination_message(self.status)}), total cost {self.cost:.6g}, "
            f"dof {self.dof}, {self.jacobians} Jacobians"
        ]
        for name, value in self.params.items():
            error = self.stderr.get(name)
            lines.append(f"  shared {name} = {value:.10g}" + (" (fixed)" if error is None else f" +- {error:.4g}"))
        lines.extend(f"warning: {text}" for text in self.warnings)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The shared values, errors, covariance and joint statistics, JSON-ready (NaN -> None)."""
        return json_ready(
            {
                "params": {name: float(value) for name, value in self.params.items()},
                "stderr": {name: float(value) for name, value in self.stderr.items()},
                "covariance": np.asarray(self.covariance, dtype=np.float64),
                "status": self.status,
                "cost": float(self.cost),
                "dof": int(self.dof),
                "warnings": list(self.warnings),
            }
        )
