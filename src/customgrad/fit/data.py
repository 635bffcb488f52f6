"""Data for a fit: reading CSV / whitespace tables, picking columns, and checking values (NaN policy)."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, UsageError

if TYPE_CHECKING:  # torch is imported where tensors are made: reading a table needs none (the CLI's checks)
    import torch

NAN_POLICIES = ("raise", "omit")


@dataclass
class Table:
    """Columns of a data file: names (``c0, c1, ...`` when there is no header) and float64 values."""

    names: list[str]
    values: np.ndarray
    path: str
    has_header: bool = True

    def column(self, spec: str) -> np.ndarray:
        """A column by header name or by 0-based index (``"2"``)."""
        if spec in self.names:
            return self.values[:, self.names.index(spec)]
        try:
            index = int(spec)
        except ValueError:
            index = None
        if index is not None and -len(self.names) <= index < len(self.names):
            return self.values[:, index]
        raise DataError(
            f"no column {spec!r} in {self.path!r}: columns are {', '.join(self.names)} "
            f"(or indices 0 to {len(self.names) - 1})"
        )


def read_table(path: str | Path) -> Table:
    """Read a CSV file (comma or semicolon, header optional) or a whitespace-separated table."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise DataError(f"cannot read data file {str(path)!r}: {reason}") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"data file {str(path)!r} is empty: it needs a header line and rows of numbers")
    delimiter = next((d for d in (",", ";", "\t") if d in lines[0]), None)
    rows = (
        list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
        if delimiter
        else [line.split() for line in lines]
    )
    rows = [[cell.strip() for cell in row] for row in rows]
    header = None
    if not all(_is_number(cell) for cell in rows[0]):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise DataError(f"data file {str(path)!r} has a header but no rows of data")
    width = len(header) if header else len(rows[0])
    values = np.empty((len(rows), width))
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) != width:
            raise DataError(f"{str(path)!r} line {number}: {len(row)} fields, expected {width}")
        for j, cell in enumerate(row):
            if not _is_number(cell):
                raise DataError(f"{str(path)!r} line {number}, column {j}: {cell!r} is not a number")
            values[number - (2 if header else 1), j] = float(cell)
    names = header or [f"c{j}" for j in range(width)]
    return Table(names=names, values=values, path=str(path), has_header=bool(header))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class FitData:
    """Checked, aligned fit data as tensors: predictors by name, y, sigma; rows dropped by nan_policy."""

    x: dict[str, torch.Tensor]
    y: torch.Tensor
    sigma: torch.Tensor | None
    x_is_dict: bool
    omitted_rows: list[int]


def _as_array(values, what: str) -> np.ndarray:
    array = real_array(values, what, ", one per data point")
    if array.ndim != 1:
        array = array.squeeze()
        if array.ndim != 1:
            raise DataError(f"{what} must be one-dimensional (one value per data point), got shape {array.shape}")
    return array


def real_array(values, what: str, per: str = "") -> np.ndarray:
    """``values`` (array, list or tensor) as a float64 array of any shape; a `DataError` naming ``what``
    for None, complex or non-numeric input (``per`` completes "give an array of numbers")."""
    if values is None:
        raise DataError(f"{what} is None: give an array of numbers{per}")
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(values, torch.Tensor):
        if values.is_complex():
            raise DataError(f"{what} is a complex tensor: a fit needs real data (pass .real or .abs())")
        values = values.detach().cpu().to(torch.float64).numpy()
    try:
        complex_values = np.iscomplexobj(values)
        array = None if complex_values else np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        if _ragged(values):
            raise DataError(
                f"{what} has rows of different lengths: give a rectangular array (pad shorter curves with NaN)"
            ) from None
        raise DataError(f"{what} must be an array of numbers, got {type(values).__name__}") from None
    if complex_values:
        raise DataError(f"{what} holds complex numbers: a fit needs real data (pass .real or abs(...))")
    return array


def _ragged(values) -> bool:
    """Whether ``values`` is a sequence of sequences of different lengths (a list of curves of their own lengths)."""
    try:
        return isinstance(values, (list, tuple)) and len({len(row) for row in values}) > 1
    except TypeError:  # some rows are numbers
        return False


def prepare_data(
    x, y, sigma=None, *, nan_policy: str = "raise", dtype=None, device=None, allow_empty: bool = False
) -> FitData:
    """Check and convert fit data; rows with NaN/inf raise `DataError` naming them, or are dropped.

    ``dtype``: of the tensors (default torch.float64). ``allow_empty``: no rows is fine (a rank's
    shard of a distributed fit).
    """
    import torch

    if nan_policy not in NAN_POLICIES:
        raise UsageError(f"nan_policy must be one of {{{', '.join(NAN_POLICIES)}}}, got {nan_policy!r}")
    x_is_dict = isinstance(x, Mapping)
    columns = {str(k): _as_array(v, f"x[{k!r}]") for k, v in x.items()} if x_is_dict else {"x": _as_array(x, "x")}
    if not columns:
        raise DataError("x is an empty dict: give at least one predictor, e.g. x={'t': [...]} ")
    y_array = _as_array(y, "y")
    named = {**columns, "y": y_array}
    if sigma is not None:
        named["sigma"] = _as_array(sigma, "sigma")
    lengths = {name: len(values) for name, values in named.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise DataError(f"data lengths differ ({listed}): every array needs one value per data point")
    if len(y_array) == 0 and not allow_empty:
        raise DataError("no data: x and y are empty")
    bad = np.zeros(len(y_array), dtype=bool)
    for values in named.values():
        bad |= ~np.isfinite(values)
    omitted: list[int] = []
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        columns_hit = [name for name, values in named.items() if not np.isfinite(values).all()]
        if nan_policy == "raise":
            raise DataError(
                f"NaN or inf in {', '.join(columns_hit)} at rows {shown} (0-based): clean the data or "
                "pass nan_policy='omit' (--nan-policy omit) to drop those rows"
            )
        omitted = rows
        named = {name: values[~bad] for name, values in named.items()}
        if len(named["y"]) == 0 and not allow_empty:
            raise DataError("every row has NaN or inf: nothing left to fit")
    if "sigma" in named and not (named["sigma"] > 0).all():
        rows = np.flatnonzero(~(named["sigma"] > 0))[:10].tolist()
        raise DataError(
            f"sigma must be positive (it divides the residuals); rows {rows} (0-based) are not: "
            "give each observation its standard deviation, or drop those rows"
        )

    def tensor(values):
        return torch.as_tensor(values, dtype=dtype or torch.float64, device=device)

    return FitData(
        x={name: tensor(named[name]) for name in columns},
        y=tensor(named["y"]),
        sigma=tensor(named["sigma"]) if "sigma" in named else None,
        x_is_dict=x_is_dict,
        omitted_rows=omitted,
    )
