"""`fit_batch(model, x, y, params=...)`: many independent least-squares fits of one model, as one batch."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CustomgradError, DataError, UsageError
from ..openmp import waits_passively
from ..progress import progress_bar
from . import cuda_engine
from .api import _dtype_and_device, _number, _result, check_engine, positive_integer, power_of_two_scale
from .arrays import namespace_of
from .data import BatchData, curve_data, prepare_batch_data
from .distributed import Shards, local_shard
from .global_fit import fit_global, global_curve, split_shared
from .lm import BatchOutcome, BatchProblem, batch_levenberg_marquardt
from .model import Model, build_function
from .native import BUILD_FOR_CURVES, NativeSolver, engine_for
from .parameters import batch_parameter_specs, curve_specs, held_at_bounds
from .plateau import SATURATION, keep_restarts, saturated, sensitivities, stuck_on_plateau
from .reduction import reduce_gram
from .result import BatchFitResult
from .solvers import DEFAULT_STEPS
from .source import FitSource
from .statistics import batch_stderr
from .status import CONVERGED, progress_message
from .threads import threads_for

# Curves per chunk: bounds the memory of the [J | r] blocks (chunk x N x (p + 1) numbers).
DEFAULT_CHUNK = 100_000


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
    shards = Shards() if distributed else None
    failure = batch = None
    shared: tuple[str, ...] = ()
    try:
        params, shared = split_shared(params)
        batch = _Batch.checked(
            model, x, y, params, method=method, sigma=sigma, bounds=bounds, max_steps=max_steps, dtype=dtype,
            device=device, nan_policy=nan_policy, tolerances=(ftol, xtol, gtol), chunk_size=chunk_size,
            engine=engine, joint=bool(shared),
        )  # fmt: skip
    except CustomgradError as error:
        if shards is None:
            raise
        failure = error
    if shards is not None:
        settings = (max_steps, chunk_size, ftol, xtol, gtol, nan_policy, str(dtype), engine, shared)
        _raise_together(shards, failure, batch, settings)
    if shared:
        return _global_result(batch, shared, shards, start_time)
    enabled = progress and (shards is None or shards.rank == 0)
    with progress_bar(batch.problem.batch, "fitting curves (lm)", enabled=enabled) as advance:
        outcome, values, stderr, cost = batch.solve(shards, advance)
    return batch.result(outcome, values, stderr, cost, time.perf_counter() - start_time)


def _raise_together(shards: Shards, failure: CustomgradError | None, batch: _Batch | None, settings: tuple) -> None:
    """Every rank raises where any rank failed, or where ranks fit different things: every rank holds every
    curve, so any difference in what they fit is a mistake, found here (`Shards.raise_together`)."""
    about = "" if batch is None else batch.description()
    same = "and the same curves (each rank fits its share of them)"
    shards.raise_together(failure, f"{about}, options {settings}", same)


@dataclass
class _Batch:
    """A checked batch of fits: its data, parameters, model and engine (``solver``: None for torch)."""

    data: BatchData
    specs: list
    initial: dict
    function: Callable
    text: str
    data_names: tuple
    problem: Model
    solver: NativeSolver | cuda_engine.CudaSolver | None
    options: dict
    chunk_size: int
    device: torch.device | None

    @classmethod
    def checked(cls, model, x, y, params, *, method, sigma, bounds, max_steps, dtype, device, nan_policy,
                tolerances, chunk_size, engine, joint=False) -> _Batch:  # fmt: skip
        """Every argument checked (a `CustomgradError` naming the bad one), the model built, the engine picked."""
        if method != "lm":
            raise UsageError(f"fit_batch supports method='lm' only, got {method!r}: use fit() per curve for {method!r}")
        check_engine(engine)
        if device is None and isinstance(y, torch.Tensor) and y.device.type == "cuda":
            device = y.device  # CUDA data are fitted where they are
        dtype, device = _dtype_and_device(dtype, device)
        max_steps = positive_integer(DEFAULT_STEPS["lm"] if max_steps is None else max_steps, "max_steps")
        chunk_size = positive_integer(DEFAULT_CHUNK if chunk_size is None else chunk_size, "chunk_size")
        options = {name: _number(value, name) for name, value in zip(("ftol", "xtol", "gtol"), tolerances)}
        data = prepare_batch_data(x, y, sigma, nan_policy=nan_policy, dtype=dtype, device=device)
        specs, initial = batch_parameter_specs(params, bounds, data.y.shape[0])
        free_names = tuple(spec.name for spec in specs)
        function, text, data_names = build_function(model, tuple(data.x), free_names, data.x_is_dict)
        columns = data.x if data.x_is_dict else {data_names[0]: data.x["x"]}
        scales = None if joint else _curve_scales(data)  # a joint cost has one unit for all curves
        problem = Model(
            function, columns, data.y, data.weights, specs, text, initial=initial, mask=data.mask, scales=scales,
            functional=True,
        )  # fmt: skip
        solver = _solver(problem, engine, joint)
        options["max_steps"] = max_steps
        return cls(data, specs, initial, function, text, data_names, problem, solver, options, chunk_size, device)

    def solve(self, shards: Shards | None, advance) -> tuple:
        """Fit this rank's curves (all of them when not distributed), gather every rank's; the outcome,
        parameter values (B, p), standard errors (B, p) and costs (B,) in the data's units."""
        problem, solver, batch = self.problem, self.solver, self.problem.batch
        with threads_for(self.data.y.shape[-1] * (len(self.specs) + 1), self.device):
            curves = range(batch) if shards is None else range(batch)[local_shard(batch, shards.rank, shards.world)]
            if solver is not None:
                outcome = _solve_native(solver, problem, self.options, advance, curves)
            else:
                outcome = _solve_in_chunks(problem, self.chunk_size, self.options, advance, curves)
            if problem.scales is not None:
                outcome.in_data_units(problem.scales[curves.start : curves.stop])
            if shards is not None:
                outcome = _gathered(shards, outcome)
            values = problem.external(outcome.theta)
            if solver is not None:
                stderr, cost = solver.errors(values, self.dof)
            else:
                upper, cost = _final_factors(problem, values)
                stderr = batch_stderr(upper, cost, self.dof)
            if problem.scales is not None:
                cost = cost / problem.scales.to(cost) / problem.scales.to(cost)
        return outcome, values, stderr, cost

    def description(self) -> str:
        """What a distributed batch fits, for `Shards.raise_together`: the model, parameters and bounds
        in words, the curves' shape and a checksum of the data, sigma and initial values."""
        data, digest = self.data, hashlib.sha256()
        tensors = [data.y, data.mask, *(data.x[name] for name in sorted(data.x))]
        tensors += [data.weights] if data.weights is not None else []
        arrays = [tensor.cpu().numpy() for tensor in tensors]
        arrays += [np.asarray(self.initial[spec.name], dtype=np.float64) for spec in self.specs]
        for array in arrays:
            digest.update(np.ascontiguousarray(array).tobytes())
        bounds = [(spec.name, spec.lower, spec.upper, spec.fixed) for spec in self.specs]
        return (
            f"model {self.text!r}, parameters and bounds {bounds}, curves {tuple(data.y.shape)}, sigma "
            f"{'given' if data.weights is not None else 'none'}, checksum of data and initial values "
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

        def single(i: int):
            if outcome.status[i] == "no_data":
                raise DataError(f"curve {i} has no finite data points: it was not fitted (its results are NaN)")
            data = self.data
            result = _curve_result(
                self.problem, data.arrays, outcome, i, self.specs, self.initial, self.function, self.data_names,
                data.x_is_dict,
            )  # fmt: skip
            result.seconds = seconds / self.problem.batch
            return result

        return BatchFitResult(
            params=all_params,
            stderr=stderr,
            cost=cost,
            dof=self.dof.cpu().numpy(),
            status=outcome.status,
            evaluations=outcome.evaluations.cpu().numpy(),
            jacobians=outcome.jacobians.cpu().numpy(),
            steps=outcome.steps.cpu().numpy(),
            model=self.text,
            seconds=seconds,
            single=single,
        )


def _global_result(batch: _Batch, shared: tuple[str, ...], shards: Shards | None, start_time: float):
    """The `BatchFitResult` of a global fit (`global_fit`): ``result.shared`` and each curve's joint errors."""
    # torch's operations on one thread for small curves, as `_Batch.solve`; the C kernels over the curves
    # (`global_native`) on torch's setting from before, as the native engine, where OpenMP
    # waits passively (each of their ~30 short loops would wait a time slice on a busy machine otherwise)
    threads = torch.get_num_threads() if waits_passively() else 1
    with threads_for(batch.data.y.shape[-1] * (len(batch.specs) + 1), batch.device):
        outcome, values, stderr, cost, joint = fit_global(batch, shared, shards, threads)
        result = batch.result(outcome, values, stderr, cost, time.perf_counter() - start_time)
    result.shared, single = joint, result.single
    result.single = lambda i: global_curve(single(i), i, joint, batch.problem.names)
    return result


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
    """``curves`` by the native engine, then a restart with factor 1 for curves on a plateau (as `fit` does)."""
    index = torch.arange(curves.start, curves.stop)
    theta = problem.initial_theta()[index]
    outcome = solver.solve(index, theta, advance=advance, saturation=SATURATION, **options)
    plateau = outcome.saturated.nonzero().flatten()
    if len(plateau):
        retry = solver.solve(index[plateau], theta[plateau], factor=1.0, **options)
        keep_restarts(outcome, plateau, retry, _stuck(_Subset(problem, index[plateau])))
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
        parts.append(_solve(_Subset(problem, index), theta[index], options, advance))
    if len(parts) == 1:
        return parts[0]
    offsets = [0]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part.status))
    if not parts:  # a rank of a distributed batch with no curves of its own
        counts = (theta.new_zeros(0, dtype=torch.long) for _ in range(3))
        return BatchOutcome(theta[:0], [], theta.new_zeros(0), *counts, theta.new_zeros(0), [])
    per_curve = ("theta", "cost", "evaluations", "jacobians", "steps", "initial_cost")
    return BatchOutcome(
        **{name: torch.cat([getattr(part, name) for part in parts]) for name in per_curve},
        status=[status for part in parts for status in part.status],
        accepted=[(index + offset, cost) for part, offset in zip(parts, offsets) for index, cost in part.accepted],
    )


def _gathered(shards: Shards, outcome: BatchOutcome) -> BatchOutcome:
    """Every rank's outcome for its curves, joined in curve order (ranks hold consecutive curves)."""
    local = {
        "theta": outcome.theta.cpu(),
        "status": outcome.status,
        "counts": torch.stack([outcome.evaluations, outcome.jacobians, outcome.steps]).cpu(),
        "cost": outcome.cost.cpu(),
        "histories": [outcome.history(i) for i in range(len(outcome.status))],
    }
    parts = shards.gather_objects(local)
    device = outcome.theta.device
    counts = torch.cat([part["counts"] for part in parts], dim=1).to(device)
    histories = [history for part in parts for history in part["histories"]]
    return BatchOutcome(
        theta=torch.cat([part["theta"] for part in parts]).to(device),
        status=[status for part in parts for status in part["status"]],
        cost=torch.cat([part["cost"] for part in parts]).to(device),
        evaluations=counts[0],
        jacobians=counts[1],
        steps=counts[2],
        initial_cost=torch.tensor([history[0] for history in histories]),
        accepted=[],
        histories=histories,
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


def _sensitivities(problem: _Subset, theta: torch.Tensor, *, held: bool = False) -> tuple[torch.Tensor, ...]:
    """`plateau.sensitivities` of each curve of ``problem`` at ``theta`` (J carries 1 / sigma and the
    curves' scales: so must y); ``held`` as `api._sensitivities`."""
    everyone = torch.arange(theta.shape[0], device=theta.device)
    block = problem.augmented(theta, everyone)  # J in internal coordinates, as `api._sensitivities`
    y = problem.problem.weighted_y(problem.index)
    at_bounds = held_at_bounds(theta, problem.problem.bounded) if held else None
    return sensitivities(block, problem.external(theta), y, power_of_two_scale(y), held=at_bounds)


def _stuck(problem: _Subset) -> Callable[[torch.Tensor], torch.Tensor]:
    """`plateau.stuck_on_plateau` of each curve of ``problem`` at theta (the argument of the function returned)."""
    return lambda theta: stuck_on_plateau(*_sensitivities(problem, theta, held=True))


def _solve(problem: _Subset, theta: torch.Tensor, options: dict, advance) -> BatchOutcome:
    """One chunk: the batched LM, then a restart with factor 1 for curves on a plateau (as `fit` does)."""
    done = [0]

    def on_round(state) -> None:
        status = state.status  # torch or numpy (`arrays`)
        stopped = int((status != 0).sum())
        converged = int(namespace_of(status).isin(status, CONVERGED).sum())
        message = progress_message(converged, stopped, len(status))
        for _ in range(stopped - done[0]):
            advance(message)
        done[0] = stopped

    outcome = batch_levenberg_marquardt(problem, theta, reduce=reduce_gram, on_round=on_round, **options)
    plateau = _plateau(problem, outcome)
    if len(plateau):
        subset = _Subset(problem.problem, problem.index[plateau])
        retry = batch_levenberg_marquardt(subset, theta[plateau], factor=1.0, **options)
        keep_restarts(outcome, plateau, retry, _stuck(subset))
    return outcome


def _plateau(problem: _Subset, outcome: BatchOutcome) -> torch.Tensor:
    """Positions of the curves that stopped on a plateau (`plateau.saturated`), not counting failed ones."""
    candidates = torch.tensor([status != "nonfinite" for status in outcome.status], device=outcome.theta.device)
    reach, _, _, data_norm = _sensitivities(problem, outcome.theta)
    return (candidates & (saturated(reach, data_norm) > 0)).nonzero().flatten()


def _final_factors(problem: Model, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R of the Jacobian with respect to the parameter values at the solutions, and the final costs."""
    everyone = torch.arange(problem.batch, device=values.device)
    block = problem.augmented(values, everyone, external=True)
    p = len(problem.names)
    cost = (block[..., p] ** 2).sum(-1)
    return reduce_gram(block)[:, :p, :p], cost


def _curve_result(problem, arrays, outcome: BatchOutcome, i: int, specs, initial, function, data_names, x_is_dict):
    """Curve ``i``'s `FitResult`, made as `fit` makes one (statistics, diagnostics, data) from the batch's solution."""
    rows, omitted = curve_data(arrays, i)
    columns = {name: torch.as_tensor(rows[name]) for name in arrays if name not in ("y", "sigma")}
    if "x" in columns and len(data_names) == 1 and data_names[0] != "x":
        columns = {data_names[0]: columns.pop("x")}
    columns = {name: column.reshape(1, -1) for name, column in columns.items()}
    weights = 1 / torch.as_tensor(rows["sigma"]).reshape(1, -1) if "sigma" in rows else None
    y = torch.as_tensor(rows["y"]).reshape(1, -1)
    single = Model(function, columns, y, weights, curve_specs(specs, initial, i), problem.text)
    result = outcome.one(i)
    result.theta = result.theta.cpu().to(torch.float64)
    if not math.isfinite(result.cost):
        result.cost = math.nan
    source = FitSource(single, x_is_dict=x_is_dict)
    # not refined in 40 digits: curve i's FitResult keeps the batch's parameters for it
    return _result(single, result, "lm", "linear", omitted, 0.0, None, source, refine=False)
