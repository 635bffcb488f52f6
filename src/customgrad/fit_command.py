"""From ``customgrad fit`` options to a `fit` call: data file, columns, parameters, bounds.

Kept out of the CLI module so that it holds no logic: it parses, calls this, prints. The checks
(`fit_run`, `batch_run`) import no torch: a usage error is reported in a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError, UsageError
from .fit.formula_model import check_formula

if TYPE_CHECKING:
    from .fit.result import BatchFitResult, FitResult


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


# The kinds of run ``customgrad fit`` makes, as the messages name them.
RUNS = {
    "experiment": "the built-in experiment's gradient-descent run",
    "experiment_fit": "a fit of the built-in experiment's data",
    "table": "a fit of a --data table",
    "nist": "a fit of a NIST StRD file",
}
_GRADIENT_METHODS = ("sgd", "adam", "lbfgs")

# Options that apply to some runs only: flag -> (attribute, applies(run, args), why not, elsewhere).
# One rule for all of them: an option given where it does not apply is refused, naming it and why.
OPTION_RULES: dict[str, tuple[str, Callable[[str, object], bool], str]] = {
    "--experiment": (
        "experiment",
        lambda run, args: run in ("experiment", "experiment_fit"),
        "it picks built-in data, and --data gives yours",
    ),
    "--seed": (
        "seed",
        lambda run, args: run in ("experiment", "experiment_fit"),
        "it draws the built-in experiment's random initial values; a --data fit starts from --param "
        "(or a NIST file's certified start)",
    ),
    "--param": (
        "param",
        lambda run, args: run in ("table", "nist"),
        "it sets initial values of a --model/--data fit; the built-in experiment starts from random "
        "values (choose them with --seed)",
    ),
    "--bound": (
        "bound",
        lambda run, args: run != "experiment",
        "the blog's gradient-descent run has no bounds: add --method lm to fit its data with them",
    ),
    "--lr": (
        "lr",
        lambda run, args: run == "experiment" or args.method in _GRADIENT_METHODS,
        "it is the step size of gradient methods (--method sgd, adam, lbfgs); Levenberg-Marquardt "
        "(--method lm, the default) chooses its own steps",
    ),
    "--loss": (
        "loss",
        lambda run, args: run != "experiment",
        "the built-in gradient-descent run minimises the sum of squares: add --method lm for a robust loss",
    ),
    "--nan-policy": (
        "nan_policy",
        lambda run, args: run in ("table", "nist"),
        "it says what to do with NaN rows of a --data file; the built-in data have none",
    ),
    "--start": (
        "start",
        lambda run, args: run == "nist",
        "it picks one of a NIST StRD file's certified starting points; give initial values with --param",
    ),
    "--x": ("x", lambda run, args: run == "table", "NIST files and the built-in data have fixed columns"),
    "--y": ("y", lambda run, args: run == "table", "NIST files and the built-in data have fixed columns"),
    "--sigma": ("sigma", lambda run, args: run == "table", "NIST files and the built-in data have no sigma column"),
    "--absolute-sigma": (
        "absolute_sigma",
        lambda run, args: run == "table",
        "it says how to read the --sigma column of a --data table; NIST files and the built-in data have none",
    ),
    "--bands": (
        "bands",
        lambda run, args: run != "experiment" and bool(args.plot or args.json),
        "it chooses the band that --plot shades and --json write, for a fit (--model/--data, or --method)",
    ),
}
# What an option left out means (the parser's defaults are None, so that "given" can be told apart).
DEFAULTS = {"experiment": "blog", "seed": 0, "loss": "linear", "nan_policy": "raise", "start": 1}


def fit_run(args) -> str:
    """Which run the options describe (a key of `RUNS`), checking first the formula, then the data
    file, then that every option given applies to that run, then the values given; fills in the
    defaults of the others, and reads a --data table into ``args.table``. Imports no torch.
    """
    for option in ("x_values", "csv", "shared"):
        if getattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} applies to --batch fits only: add --batch")
    if args.model is not None:
        check_formula(args.model)  # a malformed formula is the first thing to report
    if args.data is None:
        if args.model is not None:
            raise UsageError("--model needs --data FILE (or leave both out to fit the built-in experiment)")
        run = "experiment_fit" if args.method or args.ci else "experiment"
    else:
        path = Path(args.data)
        if not path.is_file():
            raise DataError(f"--data {args.data!r}: no such file")
        run = "nist" if _is_nist(path) else "table"
    if run == "nist" and args.param and args.start is not None:
        raise UsageError("--start picks a NIST file's certified starting point, but --param gives the start: use one")
    for flag, (attribute, applies, reason) in OPTION_RULES.items():
        if getattr(args, attribute) not in (None, [], False) and not applies(run, args):
            where = RUNS[run] if flag != "--lr" else f"{RUNS[run]} with --method {args.method or 'lm'}"
            raise UsageError(f"{flag} does not apply to {where}: {reason}")
    for attribute, value in DEFAULTS.items():
        if getattr(args, attribute) is None:
            setattr(args, attribute, value)
    parse_assignments(args.param, "--param", _number)
    parse_assignments(args.bound, "--bound", _bounds)
    if run == "table":
        args.table = _checked_table(args)
    return run


def _checked_table(args):
    """The --data table, once the model, the initial values and the columns asked for are there."""
    from .fit.data import read_table

    if args.model is None:
        raise UsageError(f'--data {args.data!r} is a table: give the model with --model, e.g. --model "a + b*x"')
    if not args.param:
        raise UsageError("give each parameter an initial value with --param NAME=VALUE (e.g. --param a=0 --param b=1)")
    table = read_table(Path(args.data), missing=args.nan_policy == "omit")
    roles = [*(("--x", spec) for spec in args.x or ["0"]), ("--y", args.y or "1")]
    roles += [("--sigma", args.sigma)] if args.sigma else []
    seen: dict[str, str] = {}
    for option, spec in roles:
        name = _column_name(table, spec)  # a missing column raises DataError naming the columns there are
        given = f"{option} {spec!r}"
        if name in seen:
            raise UsageError(
                f"{seen[name]} and {given} name the same column {name!r}: the predictors, the response (--y) "
                f"and --sigma need a column each (columns: {', '.join(table.names)})"
            )
        seen[name] = given
    return table


def response_name(args) -> str:
    """The name the response goes by: the --y column's header in a table with one, else ``y``."""
    table = getattr(args, "table", None)
    if table is None or not table.has_header:
        return "y"
    return _column_name(table, args.y or "1")


def fit_inputs(args) -> FitResult:
    """Run the fit the ``customgrad fit`` options describe and return its result (after `fit_run`)."""
    from .fit.api import fit, fit_experiment
    from .fit.nist import read_nist

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
        return fit_experiment(args.experiment, seed=args.seed, bounds=bounds or None, **options)
    path = Path(args.data)
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
    table = args.table
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

    from .fit.distributed import local_shard

    rows = local_shard(len(y), dist.get_rank(), dist.get_world_size())
    x = {name: values[rows] for name, values in x.items()} if isinstance(x, dict) else x[rows]
    return x, y[rows], None if sigma is None else sigma[rows]


# Options of a single fit that ``--batch`` does not take: flag -> (attribute, why not). Refused, not ignored.
NOT_IN_BATCH = {
    "--x": ("x", "the x values are the first row of --data, or --x-values FILE"),
    "--y": ("y", "every row of --data after the x values is a curve"),
    "--sigma": ("sigma", "a curves file has no sigma column (fit_batch(..., sigma=...) takes one from Python)"),
    "--absolute-sigma": ("absolute_sigma", "there is no --sigma in a batch"),
    "--ci": ("ci", "profile intervals are per fit: result[i].conf_interval() from Python"),
    "--bands": ("bands", "the batch plot shows each curve's fit, not bands"),
    "--lr": ("lr", "a batch is fitted by Levenberg-Marquardt, which chooses its own steps"),
    "--seed": ("seed", "it draws the built-in experiment's initial values; --param gives a batch's"),
    "--start": ("start", "it picks a NIST file's starting point; --param gives a batch's"),
    "--experiment": ("experiment", "it picks built-in data, and --data gives the curves"),
}


def batch_run(args) -> None:
    """Check the options of ``customgrad fit --batch`` (no torch): each applies, the formula, the
    --data file is there, the initial values and bounds are well written."""
    for flag, (attribute, reason) in NOT_IN_BATCH.items():
        if getattr(args, attribute, None) not in (None, [], False):
            raise UsageError(f"{flag} does not apply to --batch: {reason}")
    if args.data is None or args.model is None:
        raise UsageError('--batch needs --data FILE (one curve per row) and --model, e.g. --model "a*exp(-b*x)"')
    if args.method not in (None, "lm") or args.loss not in (None, "linear"):
        raise UsageError("--batch fits by Levenberg-Marquardt with the linear loss: drop --method/--loss")
    if not args.param:
        raise UsageError("give each parameter an initial value with --param NAME=VALUE (e.g. --param a=0 --param b=1)")
    check_formula(args.model)
    for option, path in (("--data", args.data), ("--x-values", args.x_values)):
        if path is not None and not Path(path).is_file():
            raise DataError(f"{option} {path!r}: no such file")
    parse_assignments(args.param, "--param", _number)
    parse_assignments(args.bound, "--bound", _bounds)


def batch_inputs(args) -> BatchFitResult:
    """Run the batch of fits ``customgrad fit --batch`` describes: a curve per row of ``--data`` (after `batch_run`)."""
    from .fit.api import fit_batch
    from .fit.data import read_curves

    x, y = read_curves(args.data, args.x_values)
    return fit_batch(
        args.model,
        x,
        y,
        params=_with_shared(parse_assignments(args.param, "--param", _number), getattr(args, "shared", [])),
        bounds=parse_assignments(args.bound, "--bound", _bounds) or None,
        max_steps=args.steps,
        progress=not args.quiet,
        nan_policy=args.nan_policy or "omit",
        distributed=getattr(args, "distributed", False),
    )


def _with_shared(params: dict, shared: list[str]) -> dict:
    """``params`` with the ``--shared`` names marked {"shared": True} (each must have a --param)."""
    for name in dict.fromkeys(shared):  # --shared k --shared k: once
        if name not in params:
            known = ", ".join(params) or "none"
            raise UsageError(f"--shared {name}: no --param {name}=VALUE gives its initial value (parameters: {known})")
        params[name] = {"value": params[name], "shared": True}
    return params


def _column_name(table, spec: str) -> str:
    table.column(spec)  # a missing column raises DataError naming the columns there are
    return spec if spec in table.names else table.names[int(spec)]


def _is_nist(path: Path) -> bool:
    try:
        with open(path, errors="replace") as handle:
            return handle.readline().startswith("NIST/ITL StRD")
    except OSError as error:
        raise DataError(f"cannot read data file {str(path)!r}: {error.strerror}") from None
