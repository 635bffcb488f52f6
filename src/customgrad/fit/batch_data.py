"""Data for a batch of fits: y (B, N), x (N,) or (B, N) or a dict of them, sigma, and per-curve masks.

NaN/inf entries in x, y or sigma are masked out per curve (``nan_policy="omit"``, the default: it is
also how curves of different lengths are given, padded with NaN) or reported (``"raise"``). Initial
parameter values may be scalars or one per curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, UsageError
from .data import real_array
from .model import ParameterSpec, parameter_specs, plain_params

NAN_POLICIES = ("omit", "raise")


@dataclass
class BatchData:
    """Checked batch data as tensors, with the mask of the entries that count."""

    x: dict[str, torch.Tensor]  # each (1, N) or (B, N)
    y: torch.Tensor  # (B, N)
    weights: torch.Tensor | None  # 1 / sigma, (1, N) or (B, N)
    mask: torch.Tensor  # (B, N) bool
    x_is_dict: bool
    arrays: dict[str, np.ndarray]  # the float64 inputs, for one curve's single fit


def _as_array(values, what: str, batch: int | None) -> np.ndarray:
    array = real_array(values, what)
    if batch is None:
        if array.ndim != 2:
            raise DataError(f"{what} must have shape (curves, points), got shape {array.shape}")
        return array
    if array.ndim == 1:
        return array[None, :]
    if array.ndim != 2 or array.shape[0] not in (1, batch):
        raise DataError(f"{what} must have shape (points,) or ({batch}, points) (one row per curve), got {array.shape}")
    return array


def prepare_batch_data(x, y, sigma=None, *, nan_policy: str = "omit", dtype=torch.float64, device=None) -> BatchData:
    """Check and convert batch data; NaN/inf entries are masked (or raise `DataError` naming curves)."""
    if nan_policy not in NAN_POLICIES:
        raise UsageError(f"nan_policy must be one of {{{', '.join(NAN_POLICIES)}}}, got {nan_policy!r}")
    y_array = _as_array(y, "y", None)
    batch, size = y_array.shape
    if batch == 0 or size == 0:
        raise DataError(f"no data: y has shape {y_array.shape}; give one row of points per curve")
    x_is_dict = isinstance(x, Mapping)
    columns = {str(k): _as_array(v, f"x[{k!r}]", batch) for k, v in x.items()} if x_is_dict else {}
    if not x_is_dict:
        columns["x"] = _as_array(x, "x", batch)
    if not columns:
        raise DataError("x is an empty dict: give at least one predictor, e.g. x={'t': [...]}")
    named = dict(columns)
    if sigma is not None:
        named["sigma"] = _as_array(sigma, "sigma", batch)
    for name, values in named.items():
        if values.shape[-1] != size:
            raise DataError(f"{name} has {values.shape[-1]} points per curve but y has {size}: they must match")
    mask = np.isfinite(y_array)
    for values in named.values():
        mask &= np.isfinite(values)
    if "sigma" in named and (named["sigma"][np.isfinite(named["sigma"])] <= 0).any():
        raise DataError("sigma must be positive (it divides the residuals)")
    bad = ~mask.all(axis=1)
    if nan_policy == "raise" and bad.any():
        curves = np.flatnonzero(bad)
        raise DataError(
            f"NaN or inf in curves {', '.join(map(str, curves[:10].tolist()))}"
            f"{' ...' if len(curves) > 10 else ''} (0-based): clean the data or pass nan_policy='omit' "
            "(--nan-policy omit) to leave those entries out (also how curves of different lengths are given: "
            "pad with NaN)"
        )

    def tensor(values):
        return torch.as_tensor(values, dtype=dtype, device=device)

    return BatchData(
        x={name: tensor(values) for name, values in columns.items()},
        y=tensor(y_array),
        weights=tensor(1 / named["sigma"]) if "sigma" in named else None,
        mask=torch.as_tensor(mask, device=device),
        x_is_dict=x_is_dict,
        arrays={**named, "y": y_array},
    )


def batch_parameter_specs(params: Mapping, bounds: Mapping | None, batch: int) -> tuple[list, dict]:
    """Specs (shared bounds, fixed flags) and the initial values per curve, name -> array (B,)."""
    params = plain_params(params)
    if not isinstance(params, Mapping) or not params:
        raise UsageError("params must be a non-empty dict of name -> initial value(s), e.g. {'a': 0.0}")
    initial, placeholders = {}, {}
    for name, given in params.items():
        spec = dict(given) if isinstance(given, Mapping) else {"value": given}
        value = spec.get("value")
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if value is not None and array.ndim == 1:
            if len(array) != batch or array.dtype.kind not in "iuf":
                raise UsageError(
                    f"initial values of parameter {name!r} must be a number or {batch} numbers (one per curve), "
                    f"got shape {array.shape}"
                )
            spec["value"] = float(array[0])
            initial[name] = array.astype(np.float64)
        placeholders[name] = spec
    specs = parameter_specs(placeholders, bounds)
    for spec in specs:
        values = initial.setdefault(spec.name, np.full(batch, spec.value))
        outside = ~np.isfinite(values) | (values < spec.lower) | (values > spec.upper)
        if outside.any():
            curve = int(np.flatnonzero(outside)[0])
            raise UsageError(
                f"parameter {spec.name!r}: initial value {values[curve]} of curve {curve} is not finite or lies "
                f"outside its bounds [{spec.lower}, {spec.upper}]"
            )
    return specs, initial


def curve_specs(specs: list[ParameterSpec], initial: dict, i: int) -> list[ParameterSpec]:
    """The parameter specs of curve ``i`` alone."""
    return [
        ParameterSpec(spec.name, float(initial[spec.name][i]), spec.lower, spec.upper, spec.fixed) for spec in specs
    ]


def curve_data(arrays: dict[str, np.ndarray], i: int) -> tuple[dict, list[int]]:
    """Curve ``i``'s finite entries: the columns by name, and the indices left out."""
    rows = {name: values[0 if len(values) == 1 else i] for name, values in arrays.items()}
    keep = np.ones(len(rows["y"]), dtype=bool)
    for values in rows.values():
        keep &= np.isfinite(values)
    omitted = np.flatnonzero(~keep).tolist()
    return {name: rows[name][keep] for name in rows}, omitted


def read_curves(path: str | Path, x_values: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Curves from a file, one per row: x (N,) and y (B, N), empty cells NaN (shorter curves).

    x is the first row (a header of numbers) or, with ``x_values``, a file of N numbers (any layout).
    """
    rows = _number_rows(Path(path))
    if x_values is not None:
        x = np.array([value for row in _number_rows(Path(x_values)) for value in row])
        if len(rows[0]) == len(x) and np.array_equal(np.array(rows[0]), x):
            raise DataError(
                f"{str(path)!r}: its first row repeats the --x-values {str(x_values)!r}, so it is the x header, "
                "not a curve: drop --x-values (the header gives x) or delete that row"
            )
    else:
        if len(rows) < 2:
            raise DataError(f"{str(path)!r}: the first row holds the x values and every further row a curve")
        x, rows = np.array(rows[0]), rows[1:]
    if not np.isfinite(x).all():
        raise DataError(f"the x values ({x_values or 'the first row of ' + str(path)!r}) must all be finite numbers")
    width = len(x)
    for number, row in enumerate(rows, start=1):
        if len(row) > width:
            raise DataError(f"{str(path)!r}: curve {number} has {len(row)} values but there are {width} x values")
    y = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        y[i, : len(row)] = row
    return x, y


def _number_rows(path: Path) -> list[list[float]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {str(path)!r}: {getattr(error, 'strerror', None) or 'not a text file'}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in line.replace(";", ",").replace("\t", ",").split(",")]
        if len(cells) == 1:
            cells = line.split()
        try:
            rows.append([float(cell) if cell else math.nan for cell in cells])
        except ValueError:
            raise DataError(
                f"{str(path)!r} line {number}: every cell must be a number (or empty), got {line!r}"
            ) from None
    if not rows:
        raise DataError(f"{str(path)!r} holds no numbers")
    return rows
