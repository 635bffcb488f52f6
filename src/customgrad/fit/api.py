"""`fit(model, x, y, params=...)`: least-squares fit of a formula or callable model, with standard errors."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..errors import CustomgradError, FitError, UsageError
from . import goodness
from .chunked import ChunkedModel
from .data import prepare_data
from .distributed import Shards
from .lm import BatchOutcome
from .loss import get_loss, robust_cost, robust_linearization
from .model import Model, check_finite_start
from .parameters import held_at_bounds, parameter_specs, plain_params
from .plateau import keep_restarts, saturated, sensitivities, stuck_on_plateau
from .result import FitResult
from .solvers import DEFAULT_STEPS, get_solver
from .source import FitSource
from .statistics import CONDITION_WARNING, Uncertainty, safe_norm, uncertainty
from .threads import threads_for
from .ties import split_ties

# Above this ratio of float64 roundoff in the predictions to the residuals, the final cost is
# recomputed in extended precision (formula models only).
_ROUNDOFF_SHARE = 1e-6
_EPS = float(np.finfo(np.float64).eps)
# Gauss-Newton steps with 40-digit residuals at most, in that regime (`_refined`).
_REFINEMENTS = 2
# Residuals beyond 2^±_SAFE_EXPONENT are rescaled by a power of two (exact) before LM and the
# statistics square them: cost = sum r^2 overflows float64 from |r| ~ 1e154 and underflows below 1e-162.
_SAFE_EXPONENT = 256
# Restarts of LM in new units when the residuals left the range of the first ones (see `_in_range`).
_RESTARTS = 3


def fit(
    model: str | Callable,
    x,
    y,
    *,
    params: Mapping,
    method: str = "lm",
    sigma=None,
    bounds: Mapping | None = None,
    loss: str = "linear",
    max_steps: int | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
    progress: bool = False,
    nan_policy: str = "raise",
    learning_rate: float | None = None,
    ftol: float = 1e-15,
    xtol: float = 1e-15,
    gtol: float = 1e-15,
    on_step: Callable[[int, float], None] | None = None,
    decimal_data: Mapping[str, list[str]] | None = None,
    distributed: bool = False,
    absolute_sigma: bool = False,
    chunk_size: int | None = None,
    engine: str = "auto",
) -> FitResult:
    """Fit y ~ model(x; params) by minimising cost = sum rho(((model - y) / sigma)^2).

    Parameters
    ----------
    model : str or callable
        A formula over data names, parameters and registered functions (``"b1*(1 - exp(-b2*x))"``), or
        a callable ``f(x, **params)`` of torch tensors (``x`` is the dict when ``x`` is a dict).
    x : array, tensor or dict of str -> array
        The predictor, or several by name.
    y : array or tensor
        Observations, one per data point.
    params : dict
        Name -> initial value, or -> ``{"value": v, "min": lo, "max": hi, "fixed": bool}``, or -> ``{"expr":
        "2*a"}`` (tied: substituted into the model, its error propagated); lmfit's ``{"vary": False}``
        and ``lmfit.Parameters`` are accepted.
    method : {"lm", "lbfgs", "adam", "sgd"}
        Levenberg-Marquardt with exact Jacobians (default), or a gradient-based optimiser.
    sigma : array, optional
        Standard deviation of each observation; residuals are divided by it.
    absolute_sigma : bool
        As SciPy's ``curve_fit``: False scales the covariance by chisqr / nfree (only relative ``sigma``
        matters); True takes ``sigma`` as absolute, cov = (J^T J)^-1 of the weighted Jacobian.
    bounds : dict of str -> (lower, upper), optional
        Bounds per parameter (None for an open side).
    loss : {"linear", "soft_l1", "huber", "cauchy"}
        rho of the squared residuals; "linear" is least squares.
    max_steps : int, optional
        Step limit (LM: Jacobian evaluations); defaults per method in `solvers.DEFAULT_STEPS`.
    nan_policy : {"raise", "omit"}
        What to do with rows holding NaN or inf.
    progress : bool
        Show a progress bar on a terminal.
    decimal_data : dict of str -> list of str, optional
        The data as decimal text (data names and "y"), as the file readers pass it: where float64
        rounding swamps the final cost, a formula model's cost is recomputed from it in 40 digits.
    chunk_size : int, optional
        LM steps from chunks of this many rows (R accumulated by TSQR; memory O(chunk_size p + n)).
        Linear loss only; no geodesic acceleration.
    distributed : bool
        In a torch.distributed group: ``x``, ``y``, ``sigma`` are this rank's rows (maybe none); every
        rank gets the fit of all rows (`distributed`), ``data`` holds its own rows, and
        `FitResult.conf_interval`, called on every rank, re-fits collectively.
    engine : {"auto", "native", "torch"}
        Where LM runs: "native" in compiled C (a formula model, linear loss, CPU float64, no ``on_step``,
        ``progress``, ``chunk_size`` or ``distributed``), "torch" over tensors (`lm`, a batch of
        one), "auto" native once the model's library is built (`native.BUILD_AFTER_FITS`; a one-off fit
        never waits for the compiler). They take the same steps up to roundoff.
    """
    start_time = time.perf_counter()
    given = dict(locals())  # every argument by name, as given: checked into `_Options` inside
    with threads_for(_jacobian_size(y, params), device):
        return _fit(given)


def _jacobian_size(y, params) -> int:
    """len(y) * len(params), 0 where they have no length (bad input is reported by the checks inside)."""
    try:
        return len(y) * len(params)
    except TypeError:
        return 0


@dataclass
class _Options:
    """`fit`'s options, checked (`checked`: a `UsageError` naming the bad one): the solver and the loss's
    rho (None: linear) they name, max_steps (the method's default for None), the tolerances."""

    method: str
    solver: Callable
    loss: str
    rho: Callable | None
    max_steps: int
    learning_rate: float | None
    tolerances: dict
    on_step: Callable | None
    progress: bool
    engine: str
    absolute_sigma: bool
    chunk_size: int | None
    distributed: bool

    @classmethod
    def checked(cls, given: Mapping) -> _Options:
        method, engine, loss = given["method"], given["engine"], given["loss"]
        solver = get_solver(method)
        check_engine(engine)
        rho = get_loss(loss)
        max_steps = positive_integer(
            DEFAULT_STEPS[method] if given["max_steps"] is None else given["max_steps"], "max_steps"
        )
        learning_rate = given["learning_rate"]
        if learning_rate is not None:
            learning_rate = _number(learning_rate, "learning_rate", positive=True)
        tolerances = {name: _number(given[name], name) for name in ("ftol", "xtol", "gtol")}
        on_step, absolute_sigma = given["on_step"], given["absolute_sigma"]
        if on_step is not None and not callable(on_step):
            raise UsageError(f"on_step must be a callable on_step(step, cost), got {type(on_step).__name__}")
        if not isinstance(absolute_sigma, (bool, np.bool_)):
            raise UsageError(f"absolute_sigma must be True or False, got {absolute_sigma!r}")
        chunk_size = _chunk_size(given["chunk_size"], loss)
        return cls(
            method, solver, loss, rho, max_steps, learning_rate, tolerances, on_step, bool(given["progress"]),
            engine, bool(absolute_sigma), chunk_size, bool(given["distributed"]),
        )  # fmt: skip

    def summary(self, given: Mapping) -> str:
        """What every rank must agree on, in words (`Shards.raise_together`)."""
        model = given["model"]
        about = model if isinstance(model, str) else getattr(model, "__name__", "callable")
        columns = sorted(map(str, given["x"])) if isinstance(given["x"], Mapping) else ["x"]
        options = (self.method, self.loss, str(given["dtype"]), self.max_steps, *self.tolerances.values())
        options += (self.learning_rate, given["sigma"] is None, given["nan_policy"])
        options += (self.chunk_size, self.absolute_sigma, self.engine)
        return (
            f"model {about!r}, params {given['params']!r}, bounds {given['bounds']!r}, columns {columns}, "
            f"options {options}"
        )


def _fit(given: Mapping) -> FitResult:
    """`fit` of the arguments ``given`` by name (its ``locals()`` on entry)."""
    shards = Shards() if given["distributed"] else None
    failure = options = None
    try:
        dtype, device = _dtype_and_device(given["dtype"], given["device"])
        options = _Options.checked(given)
        params, ties = split_ties(plain_params(given["params"]), given["bounds"])
        specs = parameter_specs(params, given["bounds"])
        data = prepare_data(
            given["x"], given["y"], given["sigma"], nan_policy=given["nan_policy"], dtype=dtype, device=device,
            allow_empty=shards is not None,
        )  # fmt: skip
        problem, theta, start = _problem(given["model"], data, specs, ties, options.chunk_size)
    except CustomgradError as error:
        if shards is None:
            raise
        failure = error
    if shards is not None:
        # every rank learns of any rank's bad input, and of ranks fitting different things: none hangs
        about = options.summary(given) if options is not None else "options that could not be read"
        shards.raise_together(failure, about)
        # row numbers are per shard: reported as rank:row, from every rank (a collective on every rank)
        parts = shards.gather_objects(data.omitted_rows)
        data.omitted_rows = [f"{rank}:{row}" for rank, rows in enumerate(parts) for row in rows]
        options.progress = options.progress and shards.rank == 0  # only rank 0 prints
    calls = _Calls(problem, options.rho, shards, options.method == "lm" and options.rho is None, start)
    native, outcome = _solve(
        calls, theta, options.method, options.solver, options.engine, options.max_steps, options.learning_rate,
        options.tolerances, options.progress, options.on_step,
    )  # fmt: skip
    exact = None
    if given["decimal_data"] is not None and not data.omitted_rows:
        exact = {name: list(texts) for name, texts in given["decimal_data"].items()}
    source = FitSource(problem, options.loss, options.absolute_sigma, data.x_is_dict, ties, shards=shards)
    seconds = time.perf_counter() - given["start_time"]
    return _result(
        problem, outcome, options.method, options.loss, data.omitted_rows, seconds, exact, source, shards,
        native=native, unit=calls.scale,
    )  # fmt: skip


class _Calls:
    """What a solver calls on a fit's problem: residuals in the units ``scale`` (with ``rescaled``, LM on
    least squares, which is invariant to a common scale of the residuals, runs where the cost neither
    overflows nor underflows: see `_in_range`), their cost summed over ranks, [J | r] (robust:
    reweighted), and the objective of the gradient methods; ``steps`` taken in earlier units."""

    def __init__(self, problem: Model, rho, shards: Shards | None, rescaled: bool, start: torch.Tensor):
        self.problem, self.rho, self.shards, self.rescaled, self.steps = problem, rho, shards, rescaled, 0
        self.scale = self.agree(_unit(start)) if rescaled else 1.0

    def agree(self, scale: float) -> float:
        """One unit for every rank: the smallest."""
        return scale if self.shards is None else self.shards.minimum(scale)

    def residuals(self, theta: torch.Tensor) -> torch.Tensor:
        r = self.problem.residuals(theta)
        return r if self.scale == 1.0 else r * self.scale

    def cost_of(self, r: torch.Tensor) -> float:
        cost = robust_cost(self.rho, r)
        return cost if self.shards is None else self.shards.sum(cost)

    def linearize(self, theta: torch.Tensor) -> torch.Tensor:
        if self.rho is None:
            block = self.problem.augmented(theta)
            return block if self.scale == 1.0 else block * self.scale
        r_new, jacobian = robust_linearization(self.rho, *self.problem.jacobian(theta))
        return torch.cat([jacobian, r_new.unsqueeze(-1)], dim=-1)

    def objective(self, leaf: torch.Tensor) -> torch.Tensor:
        problem = self.problem
        r = problem.predict(problem.external(leaf)) - problem.y[0]
        if problem.weights is not None:
            r = r * problem.weights[0]
        z = r * r
        return z.sum() if self.rho is None else self.rho(z)[0].sum()


def _solve(calls: _Calls, theta, method, solver, engine, max_steps, learning_rate, tolerances, progress, on_step):
    """Run the solver from ``theta`` (the native engine where `_native_engine` picks it), again from
    there with factor 1 where LM stopped on a plateau, and in new units where the cost left squaring
    range (`_in_range`): the native engine (or None) and the outcome, its costs in the data's units."""
    problem, shards = calls.problem, calls.shards
    if method == "lm":
        problem.check_pointwise(theta)
    options = dict(max_steps=max_steps, objective=calls.objective, learning_rate=learning_rate)
    if method == "lm":
        # geodesic acceleration probes residuals(): only where they are the linearised ones
        geodesic = calls.rho is None and not isinstance(problem, ChunkedModel)  # needs J row by row
        options.update(geodesic_acceleration=geodesic, **tolerances)
        if shards is not None:
            options.update(reduce=shards.factor, sum_rows=shards.sum)
    elif shards is not None:
        options.update(shards=shards)
    from ..progress import progress_bar

    with progress_bar(max_steps, f"fitting ({method})", enabled=progress) as advance:

        def step_callback(step: int, cost: float) -> None:
            cost = cost / calls.scale / calls.scale
            advance(f"cost {cost:.6g}")
            if on_step is not None:
                on_step(calls.steps + step, cost)

        callback = step_callback if progress or on_step is not None else None
        native = _native_engine(engine, problem, method, calls.rho, shards, callback)

        def run(start: torch.Tensor, factor: float = 100.0):
            if native is not None:
                return native.solve_one(start, calls.scale, factor, max_steps=max_steps, **tolerances)
            return solver(
                calls.residuals, calls.linearize, calls.cost_of, start, on_step=callback, factor=factor, **options
            )

        outcome = run(theta) if method != "lm" else _restarted_on_plateau(run, calls, theta, run(theta))
        if calls.rescaled:
            outcome = _in_range(run, calls, outcome)
        elif outcome.cost == 0 and outcome.status != "nonfinite" and _any_nonzero(problem, outcome.theta, shards):
            outcome.status = "underflow"  # the solver saw a zero cost that is not zero: r^2 underflowed
    return native, outcome


def _restarted_on_plateau(run, calls: _Calls, theta: torch.Tensor, outcome):
    """LM's ``outcome``, or where a parameter stopped mattering a restart from ``theta`` with factor 1
    if that reached a lower cost, and status "plateau" where still stuck (`plateau`, as `fit_batch`)."""
    problem, shards = calls.problem, calls.shards
    stalled = outcome.saturated  # (tested by the native engine; else here)
    if stalled is None and outcome.status != "nonfinite":
        reach, _, _, data_norm = _sensitivities(problem, outcome.theta, shards)
        stalled = bool(saturated(reach, data_norm))
    if not stalled:
        return outcome
    joined, here = BatchOutcome.of_one(outcome), torch.zeros(1, dtype=torch.long)
    retry = BatchOutcome.of_one(run(theta, factor=1.0))
    stuck = lambda found: stuck_on_plateau(*_sensitivities(problem, found[0], shards, held=True))  # noqa: E731
    keep_restarts(joined, here, retry, stuck)
    return joined.one(0)


def check_engine(engine: str) -> None:
    """A `UsageError` unless ``engine`` is one of `ENGINES` (`fit`'s and `fit_batch`'s)."""
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")


def _native_engine(engine: str, problem, method: str, rho, shards, callback):
    """The compiled LM (`native.NativeSolver`) for this fit, or None for the torch one (``engine``
    "native": an error saying why it cannot run). "auto" does not wait for the compiler: see
    `native.BUILD_AFTER_FITS`."""
    if engine == "torch":
        return None
    from .native import engine_for

    reasons = (
        (method != "lm", f"method {method!r} (it runs Levenberg-Marquardt only)"),
        (rho is not None, "a robust loss"),
        (shards is not None, "distributed=True"),
        (isinstance(problem, ChunkedModel), "chunk_size"),
        (callback is not None, "on_step or progress (it reports no steps while it runs)"),
    )
    reason = next((why for found, why in reasons if found), None)
    return engine_for(problem, engine, 1, build=False, what="run this fit", reason=reason, count=engine == "auto")


def _chunk_size(chunk_size, loss: str) -> int | None:
    if chunk_size is None:
        return None
    chunk_size = positive_integer(chunk_size, "chunk_size", " (rows per chunk)")
    if loss != "linear":
        raise UsageError(f"chunk_size needs loss='linear' (a robust loss reweights rows one by one), got {loss!r}")
    return chunk_size


def _problem(model, data, specs, ties, chunk_size: int | None = None) -> tuple[Model, torch.Tensor, torch.Tensor]:
    """The fit's model over checked data (tied parameters substituted), the initial internal
    coordinates, and the residuals there."""
    names = tuple(spec.name for spec in specs)
    function, text, data_names = ties.build_function(model, tuple(data.x), names, data.x_is_dict)
    columns = data.x if data.x_is_dict else {data_names[0]: data.x["x"]}
    columns = {name: column.reshape(1, -1) for name, column in columns.items()}
    y, weights = data.y.reshape(1, -1), None if data.sigma is None else 1 / data.sigma.reshape(1, -1)
    if chunk_size is None:
        problem = Model(function, columns, y, weights, specs, text)
    else:
        problem = ChunkedModel(function, columns, y, weights, specs, text, chunk_size)
    theta = problem.initial_theta()[0]
    try:
        start = problem.residuals(theta)
        check_finite_start(start)
    except RuntimeError as error:
        if isinstance(error, FitError):
            raise
        raise FitError(f"the model {text!r} fails at the initial values: {error}") from None
    return problem, theta, start


def _any_nonzero(problem: Model, theta: torch.Tensor, shards: Shards | None) -> bool:
    """Any residual nonzero, on any rank."""
    found = float(bool(problem.residuals(theta).any()))
    return (found if shards is None else shards.sum(found)) > 0


_DTYPES = (torch.float64, torch.float32)
# Where LM runs (`fit`'s and `fit_batch`'s ``engine``).
ENGINES = ("auto", "native", "torch")


def positive_integer(value, name: str, what: str = "") -> int:
    """An integer option >= 1 (``max_steps``, ``chunk_size``); ``what`` says what it counts, in the error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{name} must be a positive integer{what}, got {value!r}")
    return int(value)


def _number(value, name: str, *, positive: bool = False) -> float:
    """A finite real option (``ftol``, ``learning_rate``): positive, or at least 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        rule = "a finite positive number" if positive else "a finite number >= 0"
        raise UsageError(f"{name} must be {rule} such as 1e-6, got {value!r}")
    return float(value)


def _dtype_and_device(dtype, device) -> tuple[torch.dtype, torch.device | None]:
    """Check the fit's dtype (float64 or float32: the solvers' linear algebra) and device (one that exists)."""
    if dtype not in _DTYPES:
        raise UsageError(
            f"dtype must be torch.float64 or torch.float32 (the solvers' QR and SVD need them), got {dtype!r}"
        )
    if device is None:
        return dtype, None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:0'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {str(device)!r} is not available: this torch has no CUDA device; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {str(device)!r} does not exist: there are {torch.cuda.device_count()} CUDA devices")
    return dtype, device


def _in_range(run: Callable, calls: _Calls, outcome):
    """The outcome with its costs back in the data's units; first, while LM ended where its scaled
    cost is out of squaring range (a start 1e170 times off the data: the residuals shrank by more
    than float64's squares span), restart it from there in new units. The Jacobian count adds up.
    """
    history = [cost / calls.scale / calls.scale for cost in outcome.history]
    for _ in range(_RESTARTS):
        if 2.0**-_SAFE_EXPONENT < outcome.cost < 2.0 ** (2 * _SAFE_EXPONENT) or outcome.status == "nonfinite":
            break
        scale = calls.agree(_unit(calls.problem.residuals(outcome.theta)))
        if scale == calls.scale:
            break
        calls.scale, calls.steps = scale, calls.steps + outcome.steps
        again = run(outcome.theta)
        again.evaluations += outcome.evaluations
        again.jacobians += outcome.jacobians
        again.steps += outcome.steps
        history += [cost / scale / scale for cost in again.history[1:]]
        outcome = again
    outcome.cost = outcome.cost / calls.scale / calls.scale
    outcome.history = history
    return outcome


def power_of_two_scale(values: torch.Tensor) -> torch.Tensor:
    """2^k bringing max |values| over the last axis into [2^-_SAFE_EXPONENT, 2^_SAFE_EXPONENT], shape
    ``values.shape[:-1]`` (1 where it is there already, 0, empty or not finite; a single fit's on the CPU:
    `_unit`)."""
    largest = values.abs().amax(-1) if values.shape[-1] else values.new_zeros(values.shape[:-1])
    exponent = torch.frexp(largest).exponent
    usable = (largest > 0) & torch.isfinite(largest)
    shift = torch.where(exponent > _SAFE_EXPONENT, _SAFE_EXPONENT - exponent, 0)
    shift = torch.where(exponent < -_SAFE_EXPONENT, -_SAFE_EXPONENT - exponent, shift)
    return torch.where(usable, torch.ldexp(torch.ones_like(largest), shift), 1.0)


def _unit(values: torch.Tensor) -> float:
    """`power_of_two_scale` of a single fit's ``values`` (N,) as a float (on the CPU: math on one float)."""
    if values.device.type != "cpu":
        return float(power_of_two_scale(values))
    array = values.detach().numpy()
    largest = float(np.maximum.reduce(np.abs(array))) if len(array) else 0.0
    exponent = math.frexp(largest)[1] if 0 < largest < math.inf else 0
    return math.ldexp(1.0, max(-_SAFE_EXPONENT - exponent, min(_SAFE_EXPONENT - exponent, 0)))


def _sensitivities(problem: Model, theta: torch.Tensor, shards: Shards | None = None, *, held: bool = False):
    """`plateau.sensitivities` of the fit at ``theta`` over every rank's rows, each of shape (1, ...) (J is
    weighted by 1 / sigma as r and y: the tests do not depend on the units of y or sigma); with ``held``
    the parameters held at a bound count as live (the plateau verdict; not the restart's trigger, where a
    restart also brings a parameter closer to its bound)."""
    block = problem.augmented(theta)  # J in internal coordinates (chunked: R)
    weighted = problem.weighted_y()[0]
    scale = _unit(weighted)  # norms of data near 1e200 would overflow
    if shards is not None:
        scale = shards.minimum(scale)

    def sum_rows(sums: torch.Tensor) -> torch.Tensor:
        return sums if shards is None else torch.as_tensor(shards.sum(sums.cpu().numpy())).to(sums)

    values = problem.external(theta).unsqueeze(0)
    at_bounds = held_at_bounds(theta.unsqueeze(0), problem.bounded) if held else None
    return sensitivities(block.unsqueeze(0), values, weighted.unsqueeze(0), torch.tensor([scale]), sum_rows, at_bounds)


class _Final(NamedTuple):
    """A fit's state at its solution, what `FitResult` reports: ``cost`` in the data's units (inf where
    it overflows), ``scaled_cost`` in units where the residuals were multiplied by ``scale``."""

    values: torch.Tensor
    cost: float
    scaled_cost: float
    scale: float
    dof: int
    spread: Uncertainty
    fitted: torch.Tensor


def _result(
    problem: Model,
    outcome,
    method: str,
    loss: str,
    omitted: list[int],
    seconds: float,
    exact: dict | None,
    source: FitSource | None = None,
    shards: Shards | None = None,
    refine: bool = True,
    native=None,
    unit: float = 1.0,
) -> FitResult:
    values = problem.external(outcome.theta)
    absolute = source is not None and source.absolute_sigma
    final = None if native is None else _native_final(native, problem, values, unit, absolute)
    if final is None:
        final = _final(problem, values, method, loss, exact, shards, refine, absolute)
    values, cost, scaled_cost, scale, dof, spread, fitted = final
    value_list = values.tolist()
    found = dict(zip(problem.names, value_list, strict=True))
    all_params = {spec.name: found.get(spec.name, spec.value) for spec in problem.specs}
    stderr = dict(zip(problem.names, spread.stderr.tolist(), strict=True))
    ties = source.ties if source is not None else None
    if ties:
        tied_values, tied_errors = ties.values_and_errors(all_params, problem.names, spread.covariance)
        all_params.update(tied_values)
        stderr.update(tied_errors)
    warnings = _diagnose(problem, outcome.status, spread, value_list, dof, omitted)
    if math.isinf(cost) and math.isfinite(scaled_cost):
        warnings.append(
            "the cost (sum of squared residuals) exceeds float64's range (~1.8e308) and is reported as inf; "
            "the fit, residual std and standard errors were computed in rescaled units and are finite"
        )
    return FitResult(
        params=all_params,
        stderr=stderr,
        covariance=spread.covariance,
        correlation=spread.correlation,
        cost=cost,
        residual_std=math.sqrt(scaled_cost / dof) / scale if dof > 0 else math.nan,
        dof=dof,
        evaluations=outcome.evaluations,
        jacobians=outcome.jacobians,
        steps=outcome.steps,
        status=outcome.status,
        method=method,
        model=problem.text,
        loss=loss,
        loss_value=outcome.cost,
        history=outcome.history,
        warnings=warnings,
        not_identifiable=spread.not_identifiable,
        condition=spread.condition,
        fixed={spec.name: spec.value for spec in problem.specs if spec.fixed},
        seconds=seconds,
        data={
            "x": {k: v.cpu().numpy()[0] for k, v in problem.data.items()},
            "y": problem.y.cpu().numpy()[0],
            "fitted": fitted.detach().cpu().numpy(),
            "sigma": None if problem.weights is None else (1 / problem.weights).cpu().numpy()[0],
        },
        tied=dict(ties.given) if ties else {},
        absolute_sigma=absolute,
        source=source,
        pooled_rsquared=None if shards is None else _pooled_rsquared(shards, problem.y[0], fitted),
    )


def _pooled_rsquared(shards: Shards, y: torch.Tensor, fitted: torch.Tensor) -> float:
    """R^2 over every rank's rows (`goodness.r_squared`): the mean of y first, then both sums of squares."""
    count, total = shards.sum([y.numel(), float(y.sum())])
    mean = total / count if count else 0.0
    residual, spread = shards.sum([float(((y - fitted) ** 2).sum()), float(((y - mean) ** 2).sum())])
    return goodness.r_squared_from_sums(float(residual), float(spread), int(count))


def _native_final(native, problem: Model, values: torch.Tensor, unit: float, absolute: bool) -> _Final | None:
    """The state at the solution from the native engine's one C call (`native.NativeSolver.report`), in
    the units ``unit`` where LM ended (the cost in range); None where float64 roundoff limits the fit
    (`_final` refines it in extended precision)."""
    dof = problem.size - len(problem.names)
    report = native.report(values, unit, dof, absolute)
    size = math.sqrt(report.cost)
    if math.isfinite(size) and _EPS * report.data_norm >= _ROUNDOFF_SHARE * size:
        return None
    fitted = torch.from_numpy(report.fitted)
    return _Final(values, report.cost / unit / unit, report.cost, unit, dof, report.uncertainty, fitted)


def _final(problem: Model, values, method: str, loss: str, exact, shards, refine: bool, absolute: bool) -> _Final:
    """The state at the solution from the model's residuals and Jacobian (any engine, distributed: from
    the combined R); where float64 roundoff limits a formula fit, refined and its cost recomputed in
    40-digit arithmetic."""
    r, jacobian = problem.jacobian(values, external=True)
    limited = shards is None and _roundoff_limited(problem, r)
    if limited and refine and method == "lm" and loss == "linear" and not isinstance(problem, ChunkedModel):
        values, r, jacobian = _refined(problem, values, r, jacobian, exact or {})
    weighted_y = problem.weighted_y()[0]
    # statistics in units where the squares stay in range (the covariance does not depend on them)
    scale = _unit(torch.cat((r, weighted_y)))
    n, p = problem.size, len(problem.names)
    if shards is None:
        scaled_cost = float((r * scale) @ (r * scale))
        cost = scaled_cost / scale / scale
        cost = _precise_cost(problem, values, cost, exact or {}) if limited else cost
        if math.isfinite(cost) and cost > 0:
            scaled_cost = cost * scale * scale
        data_norm = float(torch.linalg.vector_norm(weighted_y * scale))
    else:  # statistics from the combined R: the singular values and V of J (rows never gathered)
        scale = shards.minimum(scale)
        sums = shards.sum([float((r * scale) @ (r * scale)), n, float(((weighted_y * scale) ** 2).sum())])
        scaled_cost, n, data_norm = float(sums[0]), int(sums[1]), math.sqrt(sums[2])
        cost = scaled_cost / scale / scale
        jacobian = shards.factor(jacobian * scale) / scale  # R of J over every rank's rows (J, or R when chunked)
    dof = n - p
    spread = uncertainty(
        jacobian * scale,
        scaled_cost,
        dof,
        problem.names,
        values=values.tolist(),
        data_norm=data_norm,
        absolute=absolute,
        unit=scale,
    )
    with torch.no_grad():
        fitted = problem.predict(values)
    return _Final(values, cost, scaled_cost, scale, dof, spread, fitted)


def _roundoff_limited(problem: Model, r: torch.Tensor) -> bool:
    """Whether float64 roundoff in the predictions, eps ||y / sigma||, is not small next to the residuals
    ||r|| (`_ROUNDOFF_SHARE`): both weighted alike, both norms safe from overflow and underflow; a formula
    model on the CPU only (the extended-precision model and the refinement run there)."""
    if problem.rows is None or problem.y.device.type != "cpu":
        return False
    size = safe_norm(r)
    return math.isfinite(size) and _EPS * safe_norm(problem.weighted_y()) >= _ROUNDOFF_SHARE * size


def _precise_cost(problem: Model, values: torch.Tensor, cost: float, exact: dict) -> float:
    """The cost recomputed in 40-digit arithmetic (for a fit where float64 roundoff would swamp it)."""
    residuals = _precise_residuals(problem, values, exact)
    if residuals is None:
        return cost
    import mpmath

    with mpmath.workdps(40):
        return float(mpmath.fsum(r * r for r in residuals))


def _refined(problem: Model, values: torch.Tensor, r: torch.Tensor, jacobian: torch.Tensor, exact: dict) -> tuple:
    """Where roundoff limits the fit: up to `_REFINEMENTS` Gauss-Newton steps from residuals computed in
    40-digit arithmetic (J in float64), each kept only if the 40-digit cost falls (iterative refinement).
    Returns the values with their float64 residuals and Jacobian (``r``, ``jacobian`` at ``values``).

    On exact data (NIST Lanczos1, cost 1e-25) float64 residuals are noise at the 1e-16 level of the
    predictions, which leaves the parameters off by that noise times the condition number; the solver's
    arithmetic then decides the last digits of the cost. Refined, they no longer depend on it.
    """
    import mpmath

    residuals = _precise_residuals(problem, values, exact)
    with mpmath.workdps(40):
        for _ in range(_REFINEMENTS):
            if residuals is None or not bool(torch.isfinite(jacobian).all()):
                break
            cost = mpmath.fsum(v * v for v in residuals)
            try:
                step = np.linalg.lstsq(jacobian.numpy(), -np.array([float(v) for v in residuals]), rcond=None)[0]
            except np.linalg.LinAlgError:
                break
            trial = values + torch.from_numpy(step)
            if not all(spec.lower <= float(v) <= spec.upper for spec, v in zip(problem.free, trial, strict=True)):
                break
            trial_residuals = _precise_residuals(problem, trial, exact)
            if trial_residuals is None or mpmath.fsum(v * v for v in trial_residuals) >= cost:
                break
            values, residuals = trial, trial_residuals
            r, jacobian = problem.jacobian(values, external=True)
    return values, r, jacobian


def _precise_residuals(problem: Model, values: torch.Tensor, exact: dict) -> list | None:
    """The weighted residuals (f - y) / sigma at ``values`` in 40-digit arithmetic (mpmath), from the data's
    decimal text where ``exact`` has it; None where the model has no extended-precision form."""
    # Only now: building the extended-precision model costs SymPy (and its import).
    precise = getattr(problem.function, "precise", None)
    if precise is None:
        return None
    import mpmath

    named = dict(zip(problem.names, values.tolist(), strict=True))
    named.update({name: float(v) for name, v in problem.fixed.items()})
    size = problem.size

    def column(name: str, floats) -> list:
        text = exact.get(name)
        return list(text) if text is not None and len(text) == size else [float(v) for v in floats]

    with mpmath.workdps(40):
        columns = [
            column(name, problem.data[name][0].cpu().numpy()) if name in problem.data else [named[name]] * size
            for name in _formula_names(problem)
        ]
        try:
            predictions = precise(columns)
        except Exception:  # noqa: BLE001 - extended precision is a refinement: keep the float64 numbers
            return None
        # sin and cos rewritten with exp come back complex, with an imaginary part at the roundoff level
        if any(abs(mpmath.im(f)) > mpmath.mpf(10) ** -30 * (1 + abs(f)) for f in predictions):
            return None
        y = column("y", problem.y[0].cpu().numpy())
        weights = [1.0] * size if problem.weights is None else problem.weights[0].cpu().tolist()
        return [(mpmath.re(f) - mpmath.mpf(t)) * mpmath.mpf(w) for f, t, w in zip(predictions, y, weights, strict=True)]


def _formula_names(problem: Model) -> tuple[str, ...]:
    return problem.function.names  # type: ignore[attr-defined]


# The warning a fit that stopped with these statuses carries.
_STATUS_WARNINGS = {
    "max_steps": "the step limit was reached: the parameters may not be converged",
    "step_limit": "the solver ran its fixed number of steps without a convergence test: the parameters may not "
    "be converged (compare with method='lm', or check that the cost history has levelled off)",
    "nonfinite": "the model produced NaN or inf during the fit; the best parameters before that are kept",
}


def _diagnose(problem: Model, status: str, spread, values: list[float], dof: int, omitted: list) -> list[str]:
    warnings = [_STATUS_WARNINGS[status]] if status in _STATUS_WARNINGS else []
    if not spread.finite:
        warnings.append(
            "the Jacobian holds NaN or inf at the fitted values (a derivative undefined there, such as "
            "sqrt's at 0): no standard error is defined; start elsewhere or keep the data off that point"
        )
    for group in spread.not_identifiable if spread.finite else ():
        rank = f"the Jacobian has rank {spread.rank} of {len(problem.names)}"
        if len(group) == 1:
            warnings.append(
                f"parameter {group[0]} is not identifiable: the model does not depend on it at the fitted "
                f"values ({rank}), so the data do not determine it; its standard error is undefined "
                "(fix it or re-parametrise the model)"
            )
            continue
        warnings.append(
            f"parameters {', '.join(group)} are not identifiable: {rank}, so the data fix only a "
            "combination of them; their standard errors are undefined (fix one of them or re-parametrise "
            "the model)"
        )
    if not spread.not_identifiable and spread.condition > CONDITION_WARNING:
        warnings.append(
            f"the scaled Jacobian is ill-conditioned (condition number {spread.condition:.3g}): "
            "standard errors are fragile"
        )
    for spec, value in zip(problem.free, values, strict=True):
        width = (spec.upper - spec.lower) if spec.bounded and math.isfinite(spec.upper - spec.lower) else 1.0
        for side, bound in (("lower", spec.lower), ("upper", spec.upper)):
            if math.isfinite(bound) and abs(value - bound) <= 1e-6 * max(abs(width), abs(bound), 1.0):
                warnings.append(
                    f"parameter {spec.name} = {value:.8g} is at its {side} bound {bound}: "
                    "its standard error assumes the bound is not there"
                )
    if dof <= 0:
        warnings.append(
            f"{problem.size} data points for {len(problem.names)} free parameters: no degrees of "
            "freedom left, standard errors are undefined"
        )
    if omitted:
        where = " (rank:row)" if isinstance(omitted[0], str) else ""  # a distributed fit's, over every rank
        warnings.append(
            f"{len(omitted)} rows with NaN or inf were omitted (nan_policy='omit'): rows{where} "
            f"{', '.join(map(str, omitted[:10]))}{' ...' if len(omitted) > 10 else ''}"
        )
    return warnings


def fit_experiment(name: str, *, method: str = "lm", seed: int = 0, **options) -> FitResult:
    """Fit a built-in experiment's model to its data (``"blog"``: a + b P2(c x + d) to tan x) with ``method``.

    Same data and initial values as the experiment's own gradient descent, in float64. The model is
    given as the experiment's formula (``"a + b*P2(c*x + d)"``), so LM gets its symbolic Jacobian.
    """
    from ..experiments import get_experiment

    experiment = get_experiment(name)
    x, y = experiment.data()
    initial = {key: float(value) for key, value in experiment.initial_params(seed).items()}
    return fit(experiment.formula, x, y, params=initial, method=method, **options)
