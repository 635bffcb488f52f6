"""Data for a fit: reading CSV / whitespace tables and curve files, picking columns, and checking values.

A single fit's data is one curve, a batch's B curves (y (B, N); x (N,) or (B, N) or a dict of them;
sigma likewise): one check of shapes, NaN policy and sigma serves both. NaN/inf entries in x, y or
sigma are reported (``nan_policy="raise"``, a single fit's default) or left out (``"omit"``, a batch's
default: also how curves of different lengths are given, padded with NaN): a single fit drops those
rows, a batch masks them per curve.
"""

from __future__ import annotations

import csv
import functools
import io
import math
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


def read_table(path: str | Path, *, missing: bool = False) -> Table:
    """Read a CSV file (comma or semicolon, header optional) or a whitespace-separated table; with
    ``missing``, an empty cell is a missing value (NaN, for ``nan_policy="omit"`` to drop its row)."""
    path = Path(path)
    numbered = _data_lines(path)
    lines = [line for _, line in numbered]
    if not lines:
        raise DataError(f"data file {str(path)!r} is empty: it needs a header line and rows of numbers")
    delimiter = next((d for d in (",", ";", "\t") if d in lines[0]), None)
    rows = (
        list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
        if delimiter
        else [line.split() for line in lines]
    )
    rows = [[cell.strip() for cell in row] for row in rows]
    # each row's line of the file (a quoted cell spanning lines: its count among the data lines)
    numbers = [number for number, _ in numbered] if len(rows) == len(numbered) else list(range(1, len(rows) + 1))
    header = None
    if not all(_is_number(cell) for cell in rows[0]):
        header, rows, numbers = rows[0], rows[1:], numbers[1:]
    if not rows:
        raise DataError(f"data file {str(path)!r} has a header but no rows of data")
    width = len(header) if header else len(rows[0])
    values = np.empty((len(rows), width))
    for i, (number, row) in enumerate(zip(numbers, rows, strict=True)):
        if len(row) != width:
            raise DataError(f"{str(path)!r} line {number}: {len(row)} fields, expected {width}")
        for j, cell in enumerate(row):
            if missing and not cell:
                values[i, j] = math.nan
                continue
            if not _is_number(cell):
                hint = ": fill it in, or pass --nan-policy omit to drop rows with empty cells" if not cell else ""
                raise DataError(f"{str(path)!r} line {number}, column {j}: {cell!r} is not a number{hint}")
            values[i, j] = float(cell)
    names = header or [f"c{j}" for j in range(width)]
    return Table(names=names, values=values, path=str(path), has_header=bool(header))


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a text file with their 1-based numbers, blank lines and ``#`` comments left out."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise DataError(f"cannot read data file {str(path)!r}: {reason}") from None
    lines = enumerate(text.removeprefix("\ufeff").splitlines(), start=1)  # a UTF-8 byte order mark (Excel)
    return [(number, line) for number, line in lines if line.strip() and not line.lstrip().startswith("#")]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def real_array(values, what: str, per: str = "") -> np.ndarray:
    """``values`` (array, list or tensor) as a float64 array of any shape; a `DataError` naming ``what``
    for None, complex or non-numeric input (``per`` completes "give an array of numbers")."""
    if values is None:
        raise DataError(f"{what} is None: give an array of numbers{per}")
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(values, torch.Tensor):
        if values.is_meta:
            raise DataError(f"{what} is a 'meta' tensor: it has a shape but no values to fit; give real data")
        if values.is_complex():
            raise DataError(f"{what} is a complex tensor: a fit needs real data (pass .real or .abs())")
        values = values.detach().cpu().to(torch.float64).numpy()
    if isinstance(values, np.ma.MaskedArray):  # masked entries are missing values: NaN, for nan_policy
        values = np.ma.filled(values.astype(np.float64), np.nan)
    try:
        complex_values = np.iscomplexobj(values)
        # C order: a reversed view (x[::-1]) has negative strides, which torch tensors cannot take
        array = None if complex_values else np.asarray(values, dtype=np.float64, order="C")
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


@dataclass
class FitData:
    """Checked data as tensors: one curve's or a batch's, the mask of the entries that count (None: all;
    a single fit drops its rows with NaN/inf instead, listed in ``omitted_rows``)."""

    x: dict[str, torch.Tensor]  # each (1, N) or (B, N)
    y: torch.Tensor  # (B, N)
    weights: torch.Tensor | None  # 1 / sigma, (1, N) or (B, N)
    mask: torch.Tensor | None  # (B, N) bool
    x_is_dict: bool
    arrays: tuple  # the float64 inputs (x's columns, y, sigma or None), for a curve's own FitResult
    omitted_rows: list[int]


def prepare_data(
    x, y, sigma=None, *, nan_policy: str, dtype=None, device=None, batch: bool = False, allow_empty: bool = False
) -> FitData:
    """Check and convert one curve's data (``batch`` False) or a batch's (y (B, N)) to tensors of ``dtype``
    (default float64); NaN/inf entries raise `DataError` naming their rows (curves), or are left out: a
    curve's rows dropped, a batch's entries masked. ``allow_empty``: no rows is fine (a rank's shard)."""
    import torch

    columns, y, sigma, mask, x_is_dict = _checked(x, y, sigma, nan_policy, batch=batch, allow_empty=allow_empty)
    keep = mask[0]
    every = batch or bool(keep.all())  # (a curve with no row left out: no copy made)

    def tensor(values):
        return torch.as_tensor(values if every else values[:, keep], dtype=dtype or torch.float64, device=device)

    return FitData(
        x={name: tensor(values) for name, values in columns.items()},
        y=tensor(y),
        # sigma <= 0 only where a point does not count (checked): its weight NaN, as a NaN sigma's
        weights=None if sigma is None else tensor(1 / np.where(sigma > 0, sigma, np.nan)),
        mask=torch.as_tensor(mask, device=device) if batch else None,
        x_is_dict=x_is_dict,
        arrays=(columns, y, sigma),
        omitted_rows=[] if every else np.flatnonzero(~keep).tolist(),
    )


def _checked(x, y, sigma, nan_policy: str, *, batch: bool, allow_empty: bool = False) -> tuple:
    """x's columns, y and sigma as float64 rows (x and sigma (1, N) or (B, N), y (B, N), one curve's or a
    batch's), the mask (B, N) of where all are finite, and whether x is a dict; shapes, NaN/inf and sigma
    checked."""
    if nan_policy not in NAN_POLICIES:
        raise UsageError(f"nan_policy must be one of {{{', '.join(NAN_POLICIES)}}}, got {nan_policy!r}")
    if batch:
        y_array = _batch_array(y, "y", None)
        if y_array.size == 0:
            raise DataError(f"no data: y has shape {y_array.shape}; give one row of points per curve")

        def convert(values, what):
            return _batch_array(values, what, len(y_array))
    else:
        y_array, convert = _curve_array(y, "y"), _curve_array
    x_is_dict = isinstance(x, Mapping)
    columns = {str(k): convert(v, f"x[{k!r}]") for k, v in x.items()} if x_is_dict else {"x": convert(x, "x")}
    if not columns:
        raise DataError("x is an empty dict: give at least one predictor, e.g. x={'t': [...]}")
    sigma = None if sigma is None else convert(sigma, "sigma")
    # (name, array) pairs: a predictor may be named "y" or "sigma" too
    named = [*columns.items(), ("y", y_array), *([] if sigma is None else [("sigma", sigma)])]
    if len({values.shape[-1] for _, values in named}) > 1:
        unit = " points per curve" if batch else ""
        listed = ", ".join(f"{name} has {values.shape[-1]}{unit}" for name, values in named)
        raise DataError(f"data lengths differ ({listed}): every array needs one value per data point")
    if y_array.size == 0 and not allow_empty:
        raise DataError("no data: x and y are empty")
    mask = functools.reduce(np.logical_and, (np.isfinite(values) for _, values in named))  # y's shape
    if nan_policy == "raise" and not mask.all():
        raise _not_finite(named, mask, batch)
    if not batch and y_array.size and not mask.any() and not allow_empty:
        raise DataError("every row has NaN or inf: nothing left to fit")
    if sigma is not None:
        _check_sigma(sigma, mask, batch)
    return columns, y_array, sigma, mask, x_is_dict


def _curve_array(values, what: str) -> np.ndarray:
    """One curve's array (1, N): any shape with one axis longer than 1."""
    array = real_array(values, what, ", one per data point")
    if array.ndim != 1:
        array = array.squeeze()
        if array.ndim != 1:
            raise DataError(f"{what} must be one-dimensional (one value per data point), got shape {array.shape}")
    return array[None, :]


def _batch_array(values, what: str, batch: int | None) -> np.ndarray:
    """A batch's array: (B, N) for y (``batch`` None), else (N,) for all curves or (B, N), as (1, N) or (B, N)."""
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


def _not_finite(named: list[tuple[str, np.ndarray]], mask: np.ndarray, batch: bool) -> DataError:
    """The `DataError` of nan_policy="raise": the arrays holding NaN or inf, and the rows (curves) where."""
    hit = [name for name, values in named if not np.isfinite(values).all()]
    places = np.flatnonzero(~mask.all(-1) if batch else ~mask[0]).tolist()
    shown = ", ".join(map(str, places[:10])) + (f" and {len(places) - 10} more" if len(places) > 10 else "")
    fix = (
        "leave those entries out (also how curves of different lengths are given: pad with NaN)"
        if batch
        else "drop those rows"
    )
    return DataError(
        f"NaN or inf in {', '.join(hit)} at {'curves' if batch else 'rows'} {shown} (0-based): clean the data "
        f"or pass nan_policy='omit' (--nan-policy omit) to {fix}"
    )


def _check_sigma(sigma: np.ndarray, mask: np.ndarray, batch: bool) -> None:
    """sigma > 0 wherever a point counts (``mask``), else a `DataError` naming the rows (curve and point)."""
    bad = mask & ~(sigma > 0)
    if bad.any():
        where = (
            f"points (curve, point) {[tuple(pair) for pair in np.argwhere(bad)[:10].tolist()]}"
            if batch
            else f"rows {np.flatnonzero(bad[0])[:10].tolist()}"
        )
        raise DataError(
            f"sigma must be positive (it divides the residuals); {where} (0-based) are not: "
            "give each observation its standard deviation, or drop those rows"
        )


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
    """The rows of numbers of a file (comma, semicolon, tab or space separated; empty cells NaN)."""
    rows = []
    for number, line in _data_lines(path):
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
