"""From ``customgrad fit`` options to a `fit` call: data file, columns, parameters, bounds.

Kept out of the CLI module so that it holds no logic: it parses, calls this, prints.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import DataError, UsageError
from .api import fit, fit_experiment
from .batch import fit_batch
from .batch_data import read_curves
from .batch_result import BatchFitResult
from .data import read_table
from .nist import read_nist
from .result import FitResult


def parse_assignments(items: list[str], option: str, parse_value) -> dict:
    """``["a=1", "b=2"]`` -> ``{"a": parse_value("1"), ...}``, with errors naming the option."""
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"{option} {item!r}: write NAME=VALUE, e.g. {option} a=1.5")
        if name.strip() in result:
            raise UsageError(f"{option} {item!r}: {name.strip()!r} is given more than once; give each name once")
        result[name.strip()] = parse_value(value.strip(), f"{option} {item!r}")
    return result


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{where}: the value must be finite")
    return value


def _bounds(text: str, where: str) -> tuple[float | None, float | None]:
    low, sep, high = text.partition(":")
    if not sep:
        raise UsageError(f"{where}: write NAME=LOW:HIGH, leaving a side empty for none (b=0:)")
    return (_number(low, where) if low else None, _number(high, where) if high else None)


def fit_inputs(args) -> FitResult:
    """Run the fit the ``customgrad fit`` options describe and return its result."""
    params = parse_assignments(args.param, "--param", _number)
    bounds = parse_assignments(args.bound, "--bound", _bounds)
    options = dict(
        method=args.method or "lm",
        loss=args.loss,
        max_steps=args.steps,
        learning_rate=args.lr,
        progress=not args.quiet,
        nan_policy=args.nan_policy or "raise",
    )
    shard = _rows_of_this_rank if getattr(args, "distributed", False) else None
    if shard is not None:
        options["distributed"] = True
    if args.data is None:
        if args.model is not None:
            raise UsageError("--model needs --data FILE (or leave both out to fit the built-in experiment)")
        if params:
            raise UsageError(
                "--param sets initial values of a --model/--data fit; the built-in experiment starts from "
                "random values (choose them with --seed)"
            )
        if bounds and not args.method:
            raise UsageError(
                "--bound on the built-in experiment needs a solver with bounds: add --method lm "
                "(the blog's gradient-descent run has none)"
            )
        return fit_experiment(args.experiment, seed=args.seed, bounds=bounds or None, **options)
    path = Path(args.data)
    if not path.is_file():
        raise DataError(f"--data {args.data!r}: no such file")
    if _is_nist(path):
        problem = read_nist(path)
        x, y, _ = shard(problem.x, problem.y, None) if shard else (problem.x, problem.y, None)
        return fit(
            problem.formula if args.model is None else args.model,
            x,
            y,
            params=params or problem.starts[args.start - 1],
            bounds=bounds or None,
            decimal_data=None if args.model is not None or shard else problem.decimal,
            **options,
        )
    if args.model is None:
        raise UsageError(f'--data {args.data!r} is a table: give the model with --model, e.g. --model "a + b*x"')
    if not params:
        raise UsageError("give each parameter an initial value with --param NAME=VALUE (e.g. --param a=0 --param b=1)")
    table = read_table(path)
    x_columns = args.x or ["0"]
    y_column = args.y or "1"
    if len(x_columns) == 1 and not table.has_header:
        x = table.column(x_columns[0])  # no names: the model's one non-parameter name is the predictor
    else:  # named columns: the model must use the predictors' names
        x = {_column_name(table, column): table.column(column) for column in x_columns}
    sigma = table.column(args.sigma) if args.sigma else None
    if args.absolute_sigma:
        options["absolute_sigma"] = True
    y = table.column(y_column)
    if shard is not None:
        x, y, sigma = shard(x, y, sigma)
    return fit(args.model, x, y, params=params, bounds=bounds or None, sigma=sigma, **options)


def _rows_of_this_rank(x, y, sigma):
    """This process's share of the rows of x (array or dict), y and sigma: consecutive, near-equal sizes."""
    import torch.distributed as dist

    from .distributed import local_shard

    rows = local_shard(len(y), dist.get_rank(), dist.get_world_size())
    x = {name: values[rows] for name, values in x.items()} if isinstance(x, dict) else x[rows]
    return x, y[rows], None if sigma is None else sigma[rows]


def batch_inputs(args) -> BatchFitResult:
    """Run the batch of fits ``customgrad fit --batch`` describes: one curve per row of ``--data``."""
    if args.data is None or args.model is None:
        raise UsageError('--batch needs --data FILE (one curve per row) and --model, e.g. --model "a*exp(-b*x)"')
    if args.method not in (None, "lm") or args.loss != "linear":
        raise UsageError("--batch fits by Levenberg-Marquardt with the linear loss: drop --method/--loss")
    if not args.param:
        raise UsageError("give each parameter an initial value with --param NAME=VALUE (e.g. --param a=0 --param b=1)")
    x, y = read_curves(args.data, args.x_values)
    return fit_batch(
        args.model,
        x,
        y,
        params=parse_assignments(args.param, "--param", _number),
        bounds=parse_assignments(args.bound, "--bound", _bounds) or None,
        max_steps=args.steps,
        progress=not args.quiet,
        nan_policy=args.nan_policy or "omit",
        distributed=getattr(args, "distributed", False),
    )


def _column_name(table, spec: str) -> str:
    table.column(spec)  # a missing column raises DataError naming the columns there are
    return spec if spec in table.names else table.names[int(spec)]


def _is_nist(path: Path) -> bool:
    try:
        with open(path, errors="replace") as handle:
            return handle.readline().startswith("NIST/ITL StRD")
    except OSError as error:
        raise DataError(f"cannot read data file {str(path)!r}: {error.strerror}") from None
