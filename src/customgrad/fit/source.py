"""What a `FitResult` keeps of its fit to evaluate the model again: at new predictor values (bands,
`FitResult.predict`) and with some parameters held fixed (profile intervals).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import DataError
from .data import real_array
from .distributed import Shards
from .model import Model
from .ties import Ties


@dataclass
class FitSource:
    """The fitted `Model` (its function, data, weights and parameter specs) and the fit's options.

    ``intervals``, ``notes`` and ``traces`` cache `profile.conf_interval`'s answers per parameter.
    """

    problem: Model
    loss: str = "linear"
    absolute_sigma: bool = False
    x_is_dict: bool = False
    ties: Ties = field(default_factory=Ties)
    shards: Shards | None = None  # a distributed fit's process group: profile re-fits use every rank's rows
    intervals: dict[str, dict[float, tuple[float, float]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    traces: dict[str, dict[float, float]] = field(default_factory=dict)

    def columns(self, x) -> dict[str, torch.Tensor]:
        """New predictor values as the model's data columns (x: array, or dict by name like the fit's)."""
        reference = self.problem.y
        names = tuple(self.problem.data)
        if self.x_is_dict:
            if not isinstance(x, Mapping):
                raise DataError(f"x must be a dict of predictors {', '.join(names)}, as in the fit")
            missing = [name for name in names if name not in x]
            if missing:
                raise DataError(f"x lacks predictor(s) {', '.join(map(repr, missing))} (the fit used {names})")
            arrays = {name: _vector(x[name], f"x[{name!r}]") for name in names}
        else:
            arrays = {names[0]: _vector(x, "x")}
        lengths = {len(values) for values in arrays.values()}
        if len(lengths) > 1:
            raise DataError(f"the predictors in x have different lengths {sorted(lengths)}: give one value per point")
        return {
            name: torch.as_tensor(values, dtype=reference.dtype, device=reference.device)
            for name, values in arrays.items()
        }

    def model_at(self, columns: dict[str, torch.Tensor]) -> Model:
        """The model over other data: residuals f(x; b) - 0, so its Jacobian rows are df/db."""
        problem = self.problem
        columns = {name: column.reshape(1, -1) for name, column in columns.items()}
        size = next(iter(columns.values())).shape[-1]
        zeros = torch.zeros(1, size, dtype=problem.y.dtype, device=problem.y.device)
        model = Model(problem.function, columns, zeros, None, problem.specs, problem.text)
        model.pointwise = problem.pointwise
        return model

    def with_fixed(self, held: Mapping[str, float], start: Mapping[str, float]) -> Model:
        """The fitted model with the parameters of ``held`` at their values there and the other free
        parameters starting at ``start``."""
        problem = self.problem
        specs = []
        for spec in problem.specs:
            if spec.name in held:
                spec = replace(spec, value=float(held[spec.name]), fixed=True)
            elif not spec.fixed:
                spec = replace(spec, value=min(max(float(start[spec.name]), spec.lower), spec.upper))
            specs.append(spec)
        model = Model(problem.function, problem.data, problem.y, problem.weights, specs, problem.text)
        model.pointwise = problem.pointwise
        return model


def _vector(values, what: str) -> np.ndarray:
    """``values`` as a float64 vector, one per point (`data.real_array`; a number: one point; a column or row
    (N, 1) or (1, N): its N values, as `fit` takes them)."""
    array = np.atleast_1d(real_array(values, what, " (predictor values)"))
    if array.ndim != 1:
        array = np.atleast_1d(array.squeeze())
    if array.ndim != 1:
        raise DataError(f"{what} must be one-dimensional (one value per point), got shape {array.shape}")
    return array
