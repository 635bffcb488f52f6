"""`fit` and `fit_batch`: least-squares fits of a formula or callable model to one curve or to many.

One pipeline serves both, and a single fit is a batch of one curve: the options are checked by
`options.Options`, the data by `data.prepare_data`, one `model.Model` holds the curves, the plateau
safeguard is `plateau.restart_plateaus` and every curve's `FitResult` comes from
`solution.curve_result`. A single fit adds its extras on top: robust losses and gradient methods,
rows in chunks or spread over ranks (`distributed`), power-of-two units restarted where the cost
leaves float64's range (`_in_range`), progress per step, and the 40-digit refinement. A batch adds
per-curve units, chunks of curves, curves spread over ranks and the global fit (shared parameters).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import CustomgradError, DataError, FitError
from ..openmp import waits_passively
from ..progress import progress_bar
from . import cuda_engine
from .arrays import namespace_of
from .bounds import settled, unsettled
from .chunked import ChunkedModel
from .data import FitData, prepare_data
from .distributed import Shards, local_shard
from .global_fit import fit_global, global_curve, split_shared
from .lm import BatchOutcome, BatchProblem, batch_levenberg_marquardt
from .loss import robust_cost, robust_linearization
from .model import Model, check_finite_start
from .native import BUILD_FOR_CURVES, NativeSolver, engine_for
from .options import Options
from .parameters import batch_parameter_specs, parameter_specs, plain_params
from .plateau import SATURATION, restart_plateaus, stalled
from .reduction import reduce_gram
from .result import BatchFitResult, FitResult
from .solution import curve_result
from .source import FitSource
from .statistics import batch_stderr, safe_column_norms
from .status import CONVERGED, progress_message
from .threads import threads_for
from .ties import Ties, split_ties
from .units import SAFE_EXPONENT, curve_unit, power_of_two_scale

# A `BatchOutcome`'s tensors with one entry per curve.
_PER_CURVE = ("theta", "cost", "evaluations", "jacobians", "steps", "initial_cost")
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
    given = dict(locals())  # every argument by name, as given: checked into `Options` inside
    with threads_for(_jacobian_size(y, params), device):
        return _fit(given)


def _jacobian_size(y, params) -> int:
    """len(y) * len(params), 0 where they have no length (bad input is reported by the checks inside)."""
    try:
        return len(y) * len(params)
    except TypeError:
        return 0


def _fit(given: Mapping) -> FitResult:
    """`fit` of the arguments ``given`` by name (its ``locals()`` on entry)."""
    shards = Shards() if given["distributed"] else None
    failure = options = None
    try:
        options = Options.checked(given)
        params, ties = split_ties(plain_params(given["params"]), given["bounds"])
        specs = parameter_specs(params, given["bounds"])
        data = _data(given, options, batch=False, allow_empty=shards is not None)
        problem = _model(given["model"], data, specs, ties, chunk_size=options.chunk_size)
        theta, start = _start(problem)
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
    native, outcome = _solve(calls, theta, options)
    exact = None
    if given["decimal_data"] is not None and not data.omitted_rows:
        exact = {name: list(texts) for name, texts in given["decimal_data"].items()}
    source = FitSource(problem, options.loss, options.absolute_sigma, data.x_is_dict, ties, shards=shards)
    if options.method == "lm" and options.rho is None:
        outcome = settled(source, outcome)
    seconds = time.perf_counter() - given["start_time"]
    return curve_result(
        source, outcome, options.method, data.omitted_rows, seconds, exact, native=native, unit=calls.scale
    )


def _data(given: Mapping, options: Options, *, batch: bool, allow_empty: bool = False) -> FitData:
    """The checked data of ``given`` (`data.prepare_data`): one curve's, or a batch's."""
    return prepare_data(
        given["x"], given["y"], given["sigma"], nan_policy=given["nan_policy"], dtype=options.dtype,
        device=options.device, batch=batch, allow_empty=allow_empty,
    )  # fmt: skip


def _model(model, data: FitData, specs, ties: Ties, *, initial=None, scales=None, chunk_size=None) -> Model:
    """The `model.Model` of ``model`` over checked ``data`` (tied parameters substituted): one curve's
    (in chunks of rows with ``chunk_size``: `ChunkedModel`) or a batch's (``initial`` values per curve)."""
    names = tuple(spec.name for spec in specs)
    function, text, data_names = ties.build_function(model, tuple(data.x), names, data.x_is_dict)
    columns = data.x if data.x_is_dict else {data_names[0]: data.x["x"]}
    if chunk_size is not None:
        return ChunkedModel(function, columns, data.y, data.weights, specs, text, chunk_size)
    return Model(
        function, columns, data.y, data.weights, specs, text, initial=initial, mask=data.mask, scales=scales,
        functional=data.mask is not None,
    )  # fmt: skip


def _start(problem: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """A single fit's initial internal coordinates (p,), and the residuals there (a `FitError` where the
    model fails or is not finite at the start)."""
    theta = problem.initial_theta()[0]
    try:
        start = problem.residuals(theta)
        check_finite_start(start)
    except RuntimeError as error:
        if isinstance(error, FitError):
            raise
        raise FitError(f"the model {problem.text!r} fails at the initial values: {error}") from None
    return theta, start


class _Calls:
    """What a solver calls on a fit's problem: residuals in the units ``scale`` (with ``rescaled``, LM on
    least squares, which is invariant to a common scale of the residuals, runs where the cost neither
    overflows nor underflows: see `_in_range`), their cost summed over ranks, [J | r] (robust:
    reweighted), and the objective of the gradient methods; ``steps`` taken in earlier units."""

    def __init__(self, problem: Model, rho, shards: Shards | None, rescaled: bool, start: torch.Tensor):
        self.problem, self.rho, self.shards, self.rescaled = problem, rho, shards, rescaled
        self.steps = self.reported = 0  # steps of the runs before this one; the last step number reported
        self.scale = self.agree(curve_unit(start)) if rescaled else 1.0

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


def _solve(calls: _Calls, theta: torch.Tensor, options: Options):
    """Run the solver from ``theta`` (the native engine where `_native_engine` picks it), again from
    there with factor 1 where LM stopped on a plateau, and in new units where the cost left squaring
    range (`_in_range`): the native engine (or None) and the outcome, its costs in the data's units."""
    problem, shards, method, max_steps = calls.problem, calls.shards, options.method, options.max_steps
    if method == "lm":
        problem.check_pointwise(theta)
    settings = dict(max_steps=max_steps, objective=calls.objective, learning_rate=options.learning_rate)
    if method == "lm":
        # geodesic acceleration probes residuals(): only where they are the linearised ones
        geodesic = calls.rho is None and not isinstance(problem, ChunkedModel)  # needs J row by row
        settings.update(geodesic_acceleration=geodesic, **options.tolerances)
        if shards is not None:
            settings.update(reduce=shards.factor, sum_rows=shards.sum)
    elif shards is not None:
        settings.update(shards=shards)
    on_step = options.on_step
    with progress_bar(max_steps, f"fitting ({method})", enabled=options.progress) as advance:

        def step_callback(step: int, cost: float) -> None:
            cost = cost / calls.scale / calls.scale
            advance(f"cost {cost:.6g}")
            if on_step is not None:
                calls.reported = calls.steps + step
                on_step(calls.reported, cost)

        callback = step_callback if options.progress or on_step is not None else None
        native = _native_engine(options.engine, problem, method, calls.rho, shards, callback)

        def run(start: torch.Tensor, factor: float = 100.0):
            if native is not None:
                return native.solve_one(start, calls.scale, factor, max_steps=max_steps, **options.tolerances)
            return options.solver(
                calls.residuals, calls.linearize, calls.cost_of, start, on_step=callback, factor=factor, **settings
            )

        outcome = run(theta) if method != "lm" else _restarted_on_plateau(run, calls, theta, run(theta))
        if calls.rescaled:
            outcome = _in_range(run, calls, outcome)
        elif outcome.cost == 0 and outcome.status != "nonfinite" and _any_nonzero(problem, outcome.theta, shards):
            outcome.status = "underflow"  # the solver saw a zero cost that is not zero: r^2 underflowed
    return native, outcome


def _restarted_on_plateau(run, calls: _Calls, theta: torch.Tensor, outcome):
    """LM's ``outcome``, or where a parameter stopped mattering a restart from ``theta`` with factor 1
    if that reached a lower cost, and status "plateau" where still stuck: `plateau.restart_plateaus` of
    a batch of one (converted only where the test, in C for the native engine, says it stalled)."""
    problem, shards = calls.problem, calls.shards
    found = outcome.saturated
    if found is None:
        found = bool(stalled(problem, outcome.theta.unsqueeze(0), [outcome.status], shards=shards))
    if not found:
        return outcome
    joined = BatchOutcome.of_one(outcome)
    joined.saturated = torch.ones(1, dtype=torch.bool)
    calls.steps = calls.reported  # its steps numbered on from the first run's

    def retry(plateau: torch.Tensor) -> BatchOutcome:
        return BatchOutcome.of_one(run(theta, factor=1.0))

    restart_plateaus(joined, problem, None, retry, shards)
    return joined.one(0)


def _native_engine(engine: str, problem, method: str, rho, shards, callback):
    """The compiled LM (`native.NativeSolver`) for this fit, or None for the torch one (``engine``
    "native": an error saying why it cannot run). "auto" does not wait for the compiler: see
    `native.BUILD_AFTER_FITS`."""
    if engine == "torch":
        return None
    reasons = (
        (method != "lm", f"method {method!r} (it runs Levenberg-Marquardt only)"),
        (rho is not None, "a robust loss"),
        (shards is not None, "distributed=True"),
        (isinstance(problem, ChunkedModel), "chunk_size"),
        (callback is not None, "on_step or progress (it reports no steps while it runs)"),
    )
    reason = next((why for found, why in reasons if found), None)
    return engine_for(problem, engine, 1, build=False, what="run this fit", reason=reason, count=engine == "auto")


def _any_nonzero(problem: Model, theta: torch.Tensor, shards: Shards | None) -> bool:
    """Any residual nonzero, on any rank."""
    found = float(bool(problem.residuals(theta).any()))
    return (found if shards is None else shards.sum(found)) > 0


def _in_range(run: Callable, calls: _Calls, outcome):
    """The outcome with its costs back in the data's units; first, while LM ended where its scaled
    cost is out of squaring range (a start 1e170 times off the data: the residuals shrank by more
    than float64's squares span), restart it from there in new units. The Jacobian count adds up.
    """
    history = [cost / calls.scale / calls.scale for cost in outcome.history]
    for _ in range(_RESTARTS):
        if 2.0**-SAFE_EXPONENT < outcome.cost < 2.0 ** (2 * SAFE_EXPONENT) or outcome.status == "nonfinite":
            break
        scale = calls.agree(curve_unit(calls.problem.residuals(outcome.theta)))
        if scale == calls.scale:
            break
        calls.scale, calls.steps = scale, calls.reported
        again = run(outcome.theta)
        again.evaluations += outcome.evaluations
        again.jacobians += outcome.jacobians
        again.steps += outcome.steps
        history += [cost / scale / scale for cost in again.history[1:]]
        outcome = again
    outcome.cost = outcome.cost / calls.scale / calls.scale
    outcome.history = history
    return outcome


def fit_batch(
    model: str | Callable,
    x,
    y,
    *,
    params: Mapping,
    method: str = "lm",
    sigma=None,
    bounds: Mapping | None = None,
    max_steps: int | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
    progress: bool = False,
    nan_policy: str = "omit",
    ftol: float = 1e-15,
    xtol: float = 1e-15,
    gtol: float = 1e-15,
    chunk_size: int | None = None,
    distributed: bool = False,
    engine: str = "auto",
) -> BatchFitResult:
    """Fit y_b ~ model(x_b; params_b) for every curve b, minimising each cost_b = sum ((f - y_b) / sigma_b)^2.

    Parameters
    ----------
    model : str or callable
        As for `fit`: a formula, or a callable ``f(x, **params)`` of torch ops (torch.func, vmapped).
    x : array of shape (N,) or (B, N), or dict of str -> such arrays
        The predictor(s): shared by all curves, or one row per curve.
    y : array of shape (B, N)
        One curve per row (pad shorter ones with NaN: left out); a CUDA tensor is fitted on its GPU.
    params : dict
        Name -> initial value (a number, or B numbers), or -> {"value", "min", "max", "fixed", "shared"}
        (or lmfit's "vary", or ``lmfit.Parameters``). ``"shared": True``: one value for the whole batch,
        fitted jointly with the per-curve ones (a global fit, `global_lm`; ``result.shared``).
    method : {"lm"}
        Levenberg-Marquardt, batched (the same steps as `fit` takes for each curve alone).
    sigma : array of shape (N,) or (B, N), optional
        Standard deviations; residuals are divided by them.
    bounds : dict of str -> (lower, upper), optional
        Bounds per parameter, shared by all curves.
    nan_policy : {"omit", "raise"}
        Leave out NaN/inf entries per curve, or raise naming the curves that hold them.
    chunk_size : int, optional
        Fit this many curves at a time (bounds memory); default `DEFAULT_CHUNK`.
    distributed : bool
        Inside an initialised torch.distributed process group, with the same arguments on every rank:
        each rank fits its share of the curves, and every rank gets all results.
    engine : {"auto", "native", "torch"}
        "native": each curve's LM in compiled C, curves in parallel (formula models, float64, a C
        compiler; on CUDA data compiled for the GPU by NVRTC, `cuda_engine`); "torch": LM as tensors over
        the batch (any model, device, dtype; `lm`); "auto": native where it runs and is built (or
        from `native.BUILD_FOR_CURVES` curves, which builds it), else torch. Both take `fit`'s steps.
    """
    start_time = time.perf_counter()
    given = dict(locals())  # every argument by name, as given: checked into `Options` inside
    shards = Shards() if distributed else None
    failure = batch = None
    shared: tuple[str, ...] = ()
    try:
        params, shared = split_shared(params)
        batch = _Batch.checked(given, params, joint=bool(shared))
    except CustomgradError as error:
        if shards is None:
            raise
        failure = error
    if shards is not None:
        # every rank holds every curve: any difference in what they fit is a mistake, found here
        about = "" if batch is None else f"{batch.settings.summary(given, shared)}, {batch.checksum()}"
        shards.raise_together(failure, about, "and the same curves (each rank fits its share of them)")
    if shared:
        return _global_result(batch, shared, shards, start_time)
    enabled = progress and (shards is None or shards.rank == 0)
    with progress_bar(batch.problem.batch, "fitting curves (lm)", enabled=enabled) as advance:
        outcome, values, stderr, cost = batch.solve(shards, advance)
    return batch.result(outcome, values, stderr, cost, time.perf_counter() - start_time)


@dataclass
class _Batch:
    """A checked batch of fits: its data, parameters, model and engine (``solver``: None for torch), and its
    checked `Options` (``settings``), from which the solver's ``options`` and the curves per chunk come."""

    data: FitData
    specs: list
    initial: dict
    problem: Model
    solver: NativeSolver | cuda_engine.CudaSolver | None
    settings: Options

    @property
    def options(self) -> dict:
        """The solver's options: the tolerances and max_steps."""
        return dict(self.settings.tolerances, max_steps=self.settings.max_steps)

    @property
    def chunk_size(self) -> int:
        """Curves per chunk."""
        return self.settings.chunk_size

    @classmethod
    def checked(cls, given: Mapping, params, *, joint: bool = False) -> _Batch:
        """Every argument checked (a `CustomgradError` naming the bad one), the model built, the engine picked."""
        options = Options.checked(given, batch=True)
        data = _data(given, options, batch=True)
        specs, initial = batch_parameter_specs(params, given["bounds"], data.y.shape[0])
        scales = None if joint else _curve_scales(data)  # a joint cost has one unit for all curves
        problem = _model(given["model"], data, specs, Ties(), initial=initial, scales=scales)
        solver = _solver(problem, options.engine, joint)
        return cls(data, specs, initial, problem, solver, options)

    def solve(self, shards: Shards | None, advance) -> tuple:
        """Fit this rank's curves (all of them when not distributed), gather every rank's; the outcome,
        parameter values (B, p), standard errors (B, p) and costs (B,) in the data's units."""
        problem, solver, batch = self.problem, self.solver, self.problem.batch
        with threads_for(self.data.y.shape[-1] * (len(self.specs) + 1), self.settings.device):
            curves = range(batch) if shards is None else range(batch)[local_shard(batch, shards.rank, shards.world)]
            if solver is not None:
                outcome = _solve_native(solver, problem, self.options, advance, curves)
            else:
                outcome = _solve_in_chunks(problem, self.chunk_size, self.options, advance, curves)
            if problem.scales is not None:
                outcome.in_data_units(problem.scales[curves.start : curves.stop])
            if shards is not None:
                outcome = _gathered(shards, outcome)
            if problem.bounded:
                _settle_at_bounds(self, outcome)
            values = problem.external(outcome.theta)
            if solver is not None:
                stderr, cost = solver.errors(values, self.dof)
            else:
                upper, cost = _final_factors(problem, values)
                data_norm = safe_column_norms(problem.weighted_y().unsqueeze(-1))[:, 0]
                stderr = batch_stderr(upper, cost, self.dof, values, data_norm)
            if problem.scales is not None:
                cost = cost / problem.scales.to(cost) / problem.scales.to(cost)
        return outcome, values, stderr, cost

    def checksum(self) -> str:
        """The parameters' bounds, the curves' shape and a checksum of the data, sigma and initial values,
        in words (what a distributed batch fits besides `Options.summary`: values on any device alike)."""
        data, digest = self.data, hashlib.sha256()
        tensors = [data.y, data.mask, *(data.x[name] for name in sorted(data.x))]
        tensors += [data.weights] if data.weights is not None else []
        arrays = [tensor.cpu().numpy() for tensor in tensors]
        arrays += [np.asarray(self.initial[spec.name], dtype=np.float64) for spec in self.specs]
        for array in arrays:
            digest.update(np.ascontiguousarray(array).tobytes())
        bounds = [(spec.name, spec.lower, spec.upper, spec.fixed) for spec in self.specs]
        return (
            f"parameters and bounds {bounds}, curves {tuple(data.y.shape)}, checksum of data and initial values "
            f"{digest.hexdigest()[:16]}"
        )

    @property
    def dof(self) -> torch.Tensor:
        """Degrees of freedom per curve: its finite points less the free parameters."""
        mask = self.data.mask
        if not self.problem.masked:  # every point counts: no pass over the (B, N) mask
            return torch.full(mask.shape[:-1], mask.shape[-1] - len(self.problem.names), device=mask.device)
        return mask.sum(-1) - len(self.problem.names)

    def result(self, outcome: BatchOutcome, values, stderr, cost, seconds: float) -> BatchFitResult:
        """The `BatchFitResult`; curves with no finite point (a dead pixel) get status no_data and NaN."""
        names = self.problem.names
        arrays = {name: values[:, j].cpu().numpy() for j, name in enumerate(names)}
        all_params = {spec.name: arrays.get(spec.name, self.initial[spec.name]) for spec in self.specs}
        stderr = {name: stderr[:, j].cpu().numpy() for j, name in enumerate(names)}
        cost = cost.cpu().numpy()
        masked = self.problem.masked  # (else every curve has data: no (B, N) reduction)
        empty = np.flatnonzero(~self.data.mask.any(-1).cpu().numpy()) if masked else np.zeros(0, dtype=np.int64)
        for i in empty.tolist():  # nothing to fit: said, not fitted, not fatal
            outcome.status[i] = "no_data"
        for table in (arrays, stderr, {"cost": cost}):
            for column in table.values():
                column[empty] = math.nan

        data = self.data
        single = _Curves(self.problem, data.arrays, outcome, self.specs, self.initial, data.x_is_dict, seconds)
        return BatchFitResult(
            params=all_params,
            stderr=stderr,
            cost=cost,
            dof=self.dof.cpu().numpy(),
            status=outcome.status,
            evaluations=outcome.evaluations.cpu().numpy(),
            jacobians=outcome.jacobians.cpu().numpy(),
            steps=outcome.steps.cpu().numpy(),
            model=self.problem.text,
            seconds=seconds,
            single=single,
        )


def _global_result(batch: _Batch, shared: tuple[str, ...], shards: Shards | None, start_time: float):
    """The `BatchFitResult` of a global fit (`global_fit`): ``result.shared`` and each curve's joint errors."""
    # torch's operations on one thread for small curves, as `_Batch.solve`; the C kernels over the curves
    # (`global_native`) on torch's setting from before, as the native engine, where OpenMP
    # waits passively (each of their ~30 short loops would wait a time slice on a busy machine otherwise)
    threads = torch.get_num_threads() if waits_passively() else 1
    with threads_for(batch.data.y.shape[-1] * (len(batch.specs) + 1), batch.settings.device):
        outcome, values, stderr, cost, joint = fit_global(batch, shared, shards, threads)
        result = batch.result(outcome, values, stderr, cost, time.perf_counter() - start_time)
    result.shared = joint
    result.single = functools.partial(_global_single, result.single, joint, batch.problem.names)
    return result


def _global_single(single: Callable, joint, names: tuple[str, ...], i: int) -> FitResult:
    """Curve ``i``'s `FitResult` of a global fit: ``single(i)`` with the joint fit's errors (`global_curve`)."""
    return global_curve(single(i), i, joint, names)


def _solver(problem: Model, engine: str, joint: bool):
    """The native engine for ``problem`` (`native`, or `cuda_engine` for CUDA data), or None for torch.

    "auto" compiles for a large enough batch only (`native.BUILD_FOR_CURVES`). A global fit (``joint``)
    always runs `global_lm`; on the CPU it takes each curve's R_b from the native library where that
    can run (`global_native.factors`), on any engine but "torch", and never fails for want of it.
    """
    threads, build = torch.get_num_threads(), problem.batch >= BUILD_FOR_CURVES
    if joint:
        if problem.y.is_cuda or engine == "torch":
            return None
        build = build or engine == "native"  # (its R_b come from the model's own library, not the shared one)
        return engine_for(problem, "auto", threads, build=build, what="fit this batch", shared=False)
    if problem.y.is_cuda:  # the same solver compiled for the GPU (`cuda_engine`)
        return cuda_engine.engine_for(problem, engine, build=build, what="fit this batch")
    return engine_for(problem, engine, threads, build=build, what="fit this batch")


def _solve_native(solver: NativeSolver, problem: Model, options: dict, advance, curves: range) -> BatchOutcome:
    """``curves`` by the native engine (`_restarted`)."""
    index, solve = torch.arange(curves.start, curves.stop), functools.partial(solver.solve, **options)
    return _restarted(problem, index, problem.initial_theta()[index], solve, advance=advance, saturation=SATURATION)


def _restarted(problem: Model, index: torch.Tensor, theta: torch.Tensor, solve: Callable, **first) -> BatchOutcome:
    """``solve(index, theta, **first)``: the curves ``index`` from ``theta``, then again with factor 1 for the
    curves on a plateau (`plateau.restart_plateaus`, as `fit` does)."""
    outcome = solve(index, theta, **first)
    restart_plateaus(outcome, problem, index, lambda plateau: solve(index[plateau], theta[plateau], factor=1.0))
    return outcome


def _curve_scales(data) -> torch.Tensor | None:
    """Per curve, the power of two bringing its largest weighted |y| into squaring range; None when all are."""
    weighted = data.y if data.weights is None else data.y * data.weights
    weighted = torch.where(data.mask, weighted, 0.0)
    scales = power_of_two_scale(weighted)
    return None if bool((scales == 1.0).all()) else scales


def _solve_in_chunks(problem: Model, chunk_size: int, options: dict, advance, curves: range) -> BatchOutcome:
    """Solve ``curves`` chunk by chunk (each chunk a separate batch); the outcomes joined in curve order."""
    theta = problem.initial_theta()
    parts = []
    for begin in range(curves.start, curves.stop, chunk_size):
        index = torch.arange(begin, min(begin + chunk_size, curves.stop), device=theta.device)
        parts.append(_solve_chunk(problem, index, theta[index], options, advance))
    if not parts:  # a rank of a distributed batch with no curves of its own
        counts = (theta.new_zeros(0, dtype=torch.long) for _ in range(3))
        return BatchOutcome(theta[:0], [], theta.new_zeros(0), *counts, theta.new_zeros(0), [])
    return _joined(parts)


def _gathered(shards: Shards, outcome: BatchOutcome) -> BatchOutcome:
    """Every rank's outcome for its curves, joined in curve order (ranks hold consecutive curves)."""
    histories = [outcome.history(i) for i in range(len(outcome.status))]
    local = {name: getattr(outcome, name).cpu() for name in _PER_CURVE}
    local = BatchOutcome(**local, status=outcome.status, accepted=[], histories=histories)
    joined = _joined(shards.gather_objects(local))
    for name in _PER_CURVE:
        setattr(joined, name, getattr(joined, name).to(outcome.theta.device))
    return joined


def _joined(parts: list[BatchOutcome]) -> BatchOutcome:
    """The outcomes of consecutive runs of curves (chunks, or ranks) as one, in curve order."""
    if len(parts) == 1:
        return parts[0]
    offsets = itertools.accumulate((len(part.status) for part in parts[:-1]), initial=0)
    return BatchOutcome(
        **{name: torch.cat([getattr(part, name) for part in parts]) for name in _PER_CURVE},
        status=[status for part in parts for status in part.status],
        accepted=[(index + offset, cost) for part, offset in zip(parts, offsets) for index, cost in part.accepted],
        histories=None if parts[0].histories is None else [history for part in parts for history in part.histories],
    )


class _Subset(BatchProblem):
    """The curves ``index`` of a batch model, renumbered 0..len(index) - 1."""

    def __init__(self, problem: Model, index: torch.Tensor):
        self.problem, self.index = problem, index
        self.names = problem.names

    def residuals(self, theta, index):
        return self.problem.residuals(theta, self.index.index_select(0, index))

    def augmented(self, theta, index, *, external=False):
        return self.problem.augmented(theta, self.index.index_select(0, index), external=external)

    def external(self, theta):
        return self.problem.external(theta)


def _solve_chunk(problem: Model, index: torch.Tensor, theta: torch.Tensor, options: dict, advance) -> BatchOutcome:
    """The curves ``index`` by the batched LM (`_restarted`), reporting the curves done to ``advance``."""
    done = [0]

    def on_round(state) -> None:
        status = state.status  # torch or numpy (`arrays`)
        stopped = int((status != 0).sum())
        converged = int(namespace_of(status).isin(status, CONVERGED).sum())
        message = progress_message(converged, stopped, len(status))
        for _ in range(stopped - done[0]):
            advance(message)
        done[0] = stopped

    def solve(index: torch.Tensor, theta: torch.Tensor, **extra) -> BatchOutcome:
        return batch_levenberg_marquardt(_Subset(problem, index), theta, **options, **extra)

    return _restarted(problem, index, theta, solve, reduce=reduce_gram, on_round=on_round)


def _final_factors(problem: Model, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R of the Jacobian with respect to the parameter values at the solutions, and the final costs."""
    everyone = torch.arange(problem.batch, device=values.device)
    block = problem.augmented(values, everyone, external=True)
    p = len(problem.names)
    cost = (block[..., p] ** 2).sum(-1)
    return reduce_gram(block)[:, :p, :p], cost


@dataclass
class _Curves:
    """``BatchFitResult.single``: curve i's `FitResult`, made on demand from what the batch keeps (it
    pickles with the batch)."""

    problem: Model
    arrays: tuple
    outcome: BatchOutcome
    specs: list
    initial: dict
    x_is_dict: bool
    seconds: float

    def __call__(self, i: int) -> FitResult:
        if self.outcome.status[i] == "no_data":
            raise DataError(f"curve {i} has no finite data points: it was not fitted (its results are NaN)")
        outcome, specs, initial = self.outcome, self.specs, self.initial
        result = _curve_result(self.problem, self.arrays, outcome, i, specs, initial, self.x_is_dict)
        result.seconds = self.seconds / self.problem.batch
        return result


def _curve_source(problem: Model, arrays, i: int, specs, initial, x_is_dict: bool) -> tuple[FitSource, list]:
    """Curve ``i`` as `fit` takes one: its `FitSource` (a `Model` of its finite points and initial values)
    and the rows left out."""
    columns, y, sigma = arrays  # x and sigma (1, N) shared by all curves, or (B, N)
    x = {name: values[0 if len(values) == 1 else i] for name, values in columns.items()}
    sigma = None if sigma is None else sigma[0 if len(sigma) == 1 else i]
    data = prepare_data(x if x_is_dict else x["x"], y[i], sigma, nan_policy="omit")
    columns = data.x if x_is_dict else {next(iter(problem.data)): data.x["x"]}
    specs = [replace(spec, value=float(initial[spec.name][i])) for spec in specs]  # curve i's initial values
    single = Model(problem.function, columns, data.y, data.weights, specs, problem.text)
    return FitSource(single, x_is_dict=x_is_dict), data.omitted_rows


def _curve_outcome(outcome: BatchOutcome, i: int):
    """Curve ``i``'s `lm.Outcome`, its coordinates on the CPU in float64 (as curve i's own `Model` takes them)."""
    one = outcome.one(i)
    one.theta = one.theta.cpu().to(torch.float64)
    return one


def _curve_result(problem: Model, arrays, outcome: BatchOutcome, i: int, specs, initial, x_is_dict: bool):
    """Curve ``i``'s `FitResult`, made as `fit` makes one (statistics, diagnostics, data) from the batch's solution."""
    source, omitted = _curve_source(problem, arrays, i, specs, initial, x_is_dict)
    result = _curve_outcome(outcome, i)
    if not math.isfinite(result.cost):
        result.cost = math.nan
    # not refined in 40 digits: curve i's FitResult keeps the batch's parameters for it
    return curve_result(source, result, "lm", omitted, 0.0, refine=False)


def _settle_at_bounds(batch: _Batch, outcome: BatchOutcome) -> None:
    """Into ``outcome``: each curve that ended with a parameter at a bound through `bounds.settled`, as `fit`
    takes one (its history is left as the solver's)."""
    problem = batch.problem
    found = unsettled(problem, outcome.theta)
    for i in found.nonzero().flatten().tolist():
        if outcome.status[i] == "nonfinite":
            continue
        source, _ = _curve_source(problem, batch.data.arrays, i, batch.specs, batch.initial, batch.data.x_is_dict)
        one = settled(source, _curve_outcome(outcome, i))
        outcome.theta[i] = one.theta.to(outcome.theta)
        outcome.cost[i] = one.cost
        outcome.status[i] = one.status


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
