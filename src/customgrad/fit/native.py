"""The native engine: Levenberg-Marquardt per curve in C (`native_lm.c`), curves in parallel; `fit_batch`'s
curves, and a single `fit` as a batch of one.

For formula models on the CPU in float64 with a C compiler. One shared library per model and input
layout holds three translation units: the model's generated rows [df/db_j, f] and values f (the cpu
backend's kernels, `FormulaModel.c_source`), a few lines of glue that call them for one curve, and the
fixed solver source `native_lm.c`, the C twin of `lm.batch_levenberg_marquardt` (same trust region, Hebden
damping from the SVD of R D^-1, geodesic acceleration, stopping rules, polish step), followed in its
translation unit by a global fit's per-curve factors (`global_native.c`'s `global_factors`). A curve's whole
fit runs in a core's cache with no Python in the loop, which is what makes a batch of small fits fast:
the tensor engine (`lm`) pays ~350 small torch operations per round instead. The library is
built once (about 1 s) and cached on disk like every kernel.

Its constants come from `lm` and `statistics` through `Options`, so the two engines share them.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import math
import os
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import cache
from ..errors import BackendError, UsageError
from . import lm, plateau, statistics
from .lm import BatchOutcome, Outcome
from .native_library import FLAGS, prepared, solver_source
from .status import CONVERGED, STATUSES, progress_message

# Costs kept per curve for `FitResult.history`: the first HISTORY_LIMIT - 1 and the last (a typical fit
# has 10-20; 10^6 curves then keep 256 MB of history).
HISTORY_LIMIT = 32
SINGLE_HISTORY_LIMIT = 100_000
# Step limits beyond this are "no limit" (and fit C's int64).
MAX_STEPS = 1 << 40
# A model's library costs about 1 s of gcc, once (the disk cache keeps it). engine="auto" builds it at
# once for a batch of at least BUILD_FOR_CURVES curves (the torch engine would take about as long), and
# for single fits in the background once a process has fitted the same model BUILD_AFTER_FITS times
# (a loop of fits); a one-off fit never waits for the compiler.
BUILD_FOR_CURVES = 256
# Until then the shared library with numpy rows (`native_library`) fits up to this many curves: it calls
# Python once per curve and round, on one thread, so by ~170 curves the torch engine's batched rows catch
# up (a 64-point Gaussian: 8 curves 2.0 vs 7.5 ms, 64 curves 12 vs 27 ms, 200 curves 36 vs 32 ms).
SHARED_MAX_CURVES = 128
BUILD_AFTER_FITS = 16
BUILD_THREAD = "customgrad native build"
_NAMESPACE = "native-fit"
_LIBRARIES: dict[tuple, ctypes.CDLL] = {}
_ABSENT: set[tuple] = set()  # libraries this process found missing, with the cache folder it looked in
_FITS: collections.Counter = collections.Counter()
_LOCK = threading.Lock()
# Curves per call: the progress bar advances between calls.
CALL_CURVES = 2048
# What each input of the generated functions is, for `native_lm.c`'s Problem.kind.
SHARED_COLUMN, CURVE_COLUMN, FREE, FIXED = range(4)
# Bound kinds for Problem.bound (see `parameters.to_external`).
UNBOUNDED, BOTH, LOWER, UPPER = range(4)


def _after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a child forked while a build thread held the lock must not wait for it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _fields(kind, names: str) -> list[tuple[str, type]]:
    """ctypes fields of type ``kind``, one per word of ``names``."""
    return [(name, kind) for name in names.split()]


class _Problem(ctypes.Structure):
    """`native_lm.c`'s Problem (its comments say what each field holds)."""

    _fields_ = [
        *_fields(ctypes.c_int64, "points p inputs"),
        *_fields(ctypes.c_void_p, "kind slot columns fixed y weights"),
        *_fields(ctypes.c_int64, "weights_per_curve"),
        *_fields(ctypes.c_void_p, "mask scales bound lower upper"),
    ]


class _Options(ctypes.Structure):
    """`native_lm.c`'s Options: a fit's settings and the constants of `lm` and `statistics` (see `_options`)."""

    _fields_ = [
        *_fields(ctypes.c_double, "ftol xtol gtol factor rank_tolerance drift_tolerance polish_slack probe"),
        *_fields(ctypes.c_double, "acceleration_ratio unexploited_share visible_step statistics_rank_tolerance"),
        *_fields(ctypes.c_double, "null_component saturation shrunk column_shrunk insensitive"),
        *_fields(ctypes.c_int64, "max_steps history drift_window nonfinite_retries polished"),
    ]


def _statistics_options() -> _Options:
    """The options of the statistics entries (`lm_errors`, `lm_report`): no tolerances, no steps."""
    return _options(0.0, 0.0, 0.0, 1, 100.0, 0.0)


class _Report(ctypes.Structure):
    """`native_lm.c`'s Report: where `lm_report` writes a single fit's statistics."""

    _fields_ = [
        *_fields(ctypes.c_void_p, "values dof"),
        *_fields(ctypes.c_int64, "absolute"),
        *_fields(ctypes.c_double, "insensitive"),
        *_fields(ctypes.c_void_p, "cost norm fitted covariance correlation stderr s vt finite"),
    ]


@functools.lru_cache(maxsize=64)
def _options(
    ftol: float, xtol: float, gtol: float, max_steps: int, factor: float, saturation: float, history: int = 0
) -> _Options:
    """The solver's options (``history``: costs kept per curve, default up to `HISTORY_LIMIT`); cached,
    so treat it as read-only."""
    return _Options(
        ftol=ftol,
        xtol=xtol,
        gtol=gtol,
        factor=factor,
        rank_tolerance=lm.RANK_TOLERANCE,
        drift_tolerance=lm.DRIFT_TOLERANCE,
        polish_slack=lm.POLISH_SLACK,
        probe=lm.PROBE,
        acceleration_ratio=lm.ACCELERATION_RATIO,
        unexploited_share=lm.UNEXPLOITED_SHARE,
        visible_step=lm.VISIBLE_STEP,
        statistics_rank_tolerance=statistics.RANK_TOLERANCE,
        null_component=statistics.NULL_COMPONENT,
        saturation=saturation,
        shrunk=lm.SHRUNK,
        column_shrunk=lm.COLUMN_SHRUNK,
        insensitive=statistics.INSENSITIVE,
        max_steps=min(max_steps, MAX_STEPS),
        history=history or min(max_steps + 2, HISTORY_LIMIT),
        drift_window=lm.DRIFT_WINDOW,
        nonfinite_retries=lm.NONFINITE_RETRIES,
        polished=sum(1 << STATUSES.index(name) for name in lm.POLISHED),
    )


@functools.cache
def _host_solver_source() -> str:
    """`native_lm.c` followed, in the same translation unit, by `global_native.c`, whose per-curve factors
    of a global fit (`global_factors`) call its functions: CPU only."""
    return "\n".join([solver_source(), (Path(__file__).parent / "global_native.c").read_text()])


def glue(entry: str, call: str, inputs: int, outputs: int, qualifier: str = "") -> str:
    """C function ``entry`` calling generated kernel ``call`` over one curve of n points from arrays of pointers."""
    arguments = ", ".join([f"in[{k}]" for k in range(inputs)] + [f"out[{k}]" for k in range(outputs)])
    return (
        f"{qualifier}void {entry}(const double *const *in, double *const *out, int64_t n) "
        f"{{ {call}(n, n, 1, {arguments}); }}\n"
    )


def model_sources(function, free: tuple[str, ...], layouts: str) -> tuple[str, str] | None:
    """The model's generated C (`FormulaModel.c_source`) of its rows [df/db_j, f] and of its values f;
    None where C cannot print it."""
    rows, values = function.c_source(free, False, layouts), function.c_source((), False, layouts)
    return None if rows is None or values is None else (rows, values)


def cached(namespace: str, key: list[str] | None, build: Callable[[], bytes | None] | None) -> bytes | None:
    """The disk cache's bytes under ``key`` (None: the model has no cache key), else ``build()`` stored
    there; None where neither gives any (no ``build``, or it gives None)."""
    data = cache.load(namespace, key) if key else None
    if data is None and build is not None:
        data = build()
        if data is not None and key:
            cache.store(namespace, key, data)
    return data


def model_key(function, free: tuple[str, ...], layouts: str, *build: str) -> list[str] | None:
    """The disk cache key of a model's solver for its free parameters, input layouts and ``build``
    settings; None where the model has no cache key."""
    return None if function.cache_key is None else [function.cache_key, " ".join(free), layouts, *build]


def library(function, free: tuple[str, ...], layouts: str, *, build: bool) -> ctypes.CDLL | None:
    """The solver library of a formula model for its free parameters and input layouts: loaded before,
    else from the disk cache, else (with ``build``) compiled now and cached; None where it is not
    built yet (without ``build``) or C cannot print the model. Raises `BackendError` when the
    compiler fails."""
    key = (function, free, layouts)
    with _LOCK:
        found = _LIBRARIES.get(key)
    if found is not None:
        return found
    absent = (key, str(cache.directory()))
    if not build and absent in _ABSENT:
        return None
    from ..backends.cpu import compiler_identity, open_library

    disk = model_key(function, free, layouts, *FLAGS, compiler_identity())
    data = cached(_NAMESPACE, disk, (lambda: _compiled(function, free, layouts)) if build else None)
    if data is None:
        if not build:
            _ABSENT.add(absent)  # a loop of one-off fits looks on disk once (`count_fit` builds it later)
        return None
    loaded = prepared(open_library(data))
    with _LOCK:
        return _LIBRARIES.setdefault(key, loaded)


def _compiled(function, free: tuple[str, ...], layouts: str) -> bytes | None:
    """The library's bytes: the model's rows and values, the glue and the solver (None: C cannot print it)."""
    model = model_sources(function, free, layouts)
    if model is None:
        return None
    sources = [f"#define kernel {name}\n{source}" for name, source in zip(("rows_kernel", "values_kernel"), model)]
    inputs = len(layouts)
    rows = _declared_glue("cg_model_rows", "rows_kernel", inputs, len(free) + 1)
    sources.append("#include <stdint.h>\n" + rows + _declared_glue("cg_model_values", "values_kernel", inputs, 1))
    from ..backends.cpu import library_bytes

    return library_bytes([*sources, _host_solver_source()], f"native fit of {function.text}", FLAGS)


def _declared_glue(entry: str, kernel: str, inputs: int, outputs: int) -> str:
    """The declaration of generated kernel ``kernel`` (in its own translation unit), then `glue` calling it."""
    parameters = ", ".join(["const double*"] * inputs + ["double*"] * outputs)
    return f"void {kernel}(int64_t n, int64_t inner, int threads, {parameters});\n" + glue(
        entry, kernel, inputs, outputs
    )


class NotBuilt(BackendError):
    """The model's solver (CPU, or GPU: `cuda_engine`) is not built yet, and this call may not build it."""


def engine_for(
    problem, engine: str, threads: int, *, build: bool, what: str, reason: str | None = None, count=False, shared=True
):
    """The native engine (`NativeSolver`) for ``problem``, or None for the torch one.

    ``engine`` "torch": None; "auto": None where ``reason`` (the caller's) or `unavailable` says it
    cannot run; where its library is missing and ``build`` is False (``count``: counted by `count_fit`),
    the shared solver library with numpy rows (`native_library`: not with ``shared`` False, nor for more
    than `SHARED_MAX_CURVES` curves, nor where that library is not in the disk cache yet), else None;
    "native": built if need be, and where it cannot run a `UsageError` saying it cannot ``what`` and why.
    """
    if engine == "torch":
        return None
    reason = reason or unavailable(problem)
    if reason is None:
        try:
            return NativeSolver(problem, threads, build=build or engine == "native")
        except (BackendError, OSError) as error:  # OSError: the library would not load
            reason = str(error)
            if isinstance(error, NotBuilt) and engine == "auto":
                if count:
                    count_fit(problem)
                rows = shared and getattr(problem, "numpy_rows", None) is not None
                if rows and problem.batch <= SHARED_MAX_CURVES:
                    with contextlib.suppress(BackendError, OSError):
                        return NativeSolver(problem, 1, build=False, python_rows=True)
    if engine == "native":
        raise UsageError(f"engine='native' cannot {what}: {reason}; use engine='torch' (or 'auto')")
    return None


def _layouts(problem) -> str:
    """How the generated kernels read each input for one curve: "v" a data column, "s" a parameter."""
    return "".join("v" if name in problem.data else "s" for name in problem.function.names)


def count_fit(problem) -> None:
    """Count a single fit of ``problem``'s model on the torch engine; the `BUILD_AFTER_FITS`-th starts
    building its library in a background thread (the fits go on meanwhile; later ones find it)."""
    key = (problem.function, problem.names, _layouts(problem))
    with _LOCK:
        _FITS[key] += 1
        start = _FITS[key] == BUILD_AFTER_FITS and key not in _LIBRARIES
    if start:
        # not a daemon: a process that ends mid-build waits for it (a second or two of gcc) instead of
        # tearing the thread down inside gcc or dlopen (seen: 'terminate called' in a spawned rank's exit)
        threading.Thread(target=_build_quietly, args=key, name=BUILD_THREAD, daemon=False).start()


def _build_quietly(function, free: tuple[str, ...], layouts: str) -> None:
    try:
        library(function, free, layouts, build=True)
    except (BackendError, OSError):
        pass  # no library: those fits stay on the torch engine, which is as right


def unavailable(problem) -> str | None:
    """Why the native engine cannot fit ``problem`` (a `model.Model`); None when it can."""
    from ..backends.cpu import compiler

    if not hasattr(problem.function, "c_source"):
        return "the model is a callable (the native engine needs a formula)"
    if problem.y.device.type != "cpu" or problem.y.dtype != torch.float64:
        return "the data are not CPU float64"
    if compiler() is None:
        return "no C compiler found (set CC, or install gcc)"
    return None


class HistoryTable(Sequence):
    """Per-curve cost histories from the solver's (count, H) table; item assignment replaces one."""

    def __init__(self, table: np.ndarray, recorded: np.ndarray):
        self.table, self.recorded, self.replaced = table, recorded, {}

    def __len__(self) -> int:
        return len(self.recorded)

    def __getitem__(self, i: int) -> list[float]:
        if i in self.replaced:
            return self.replaced[i]
        return self.table[i, : min(int(self.recorded[i]), self.table.shape[1])].tolist()

    def __setitem__(self, i: int, history: list[float]) -> None:
        self.replaced[i] = history


def batch_outcome(theta, cost, counts, history, recorded) -> BatchOutcome:
    """The `lm.BatchOutcome` of `lm_batch`'s outputs (tensors on the solver's device): ``counts`` per curve
    status, evaluations, jacobians, steps and saturated, ``history`` its costs (``recorded`` of them)."""
    table = counts.cpu().numpy()
    return BatchOutcome(
        theta=theta,
        status=[STATUSES[code] for code in table[:, 0].tolist()],
        cost=cost,
        evaluations=counts[:, 1],  # (columns of counts, which nothing else reads)
        jacobians=counts[:, 2],
        steps=counts[:, 3],
        initial_cost=history[:, 0].clone(),
        accepted=[],
        histories=HistoryTable(history.cpu().numpy(), recorded.cpu().numpy()),
        saturated=torch.from_numpy(table[:, 4] != 0),
    )


def converged_message(counts: torch.Tensor, end: int, count: int) -> str:
    """The progress bar's status once `lm_batch` has fitted ``end`` of ``count`` curves (``counts``: its output)."""
    return progress_message(int(np.isin(counts[:end, 0].cpu().numpy(), CONVERGED).sum()), end, count)


class CurveSolver:
    """``solve`` and ``errors`` for the curves of one `model.Model` by `native_lm.c`, on the CPU
    (`NativeSolver`) or a GPU (`cuda_engine.CudaSolver`): results on the data's ``device`` in its ``dtype``."""

    device, dtype, scales, struct = torch.device("cpu"), torch.float64, None, None

    def solve(
        self, index: torch.Tensor, theta: torch.Tensor, *, factor=100.0, saturation=0.0, advance=None, **tolerances
    ) -> BatchOutcome:
        """Fit curves ``index`` from internal coordinates ``theta`` (len(index), p) with the ``tolerances``
        ftol, xtol, gtol and max_steps. The outcome's ``saturated`` (on the CPU) flags the curves (not
        failed) where a parameter's relative sensitivity ||J_j|| max(|b_j|, 1) fell below ``saturation``
        ||y|| at the solution."""
        options = _options(factor=factor, saturation=saturation, **tolerances)
        self._use_scales(self.scales)
        count = len(theta)
        solution = theta.to(self.device, torch.float64).contiguous().clone()
        cost, history = self._empty(count), self._empty(count, options.history)
        counts, recorded = self._empty(count, 5, dtype=torch.int64), self._empty(count, dtype=torch.int64)
        self._run("lm_batch", options, index, [solution, cost, counts, history, recorded], advance)
        return batch_outcome(solution.to(self.dtype), cost, counts, history, recorded)

    def errors(self, values: torch.Tensor, dof: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard errors (B, p) and costs (B,) of every curve at parameter ``values`` (B, p) with ``dof``
        degrees of freedom, costs in the units of the problem's ``scales``."""
        self._use_scales(self.scales)
        count, p = values.shape
        at, freedom = (tensor.to(self.device, torch.float64).contiguous() for tensor in (values, dof))
        stderr, cost = self._empty(count, p), self._empty(count)
        self._run("lm_errors", _statistics_options(), torch.arange(count), [at, freedom, stderr, cost], None)
        return stderr.to(self.dtype), cost.to(self.dtype)

    def _empty(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _use_scales(self, scales) -> None:
        """Residuals times ``scales`` (float64 tensor or array, one per curve of the problem, powers of two,
        where the cost would overflow or underflow; None: 1)."""
        self._scales = scales  # (kept alive while the solver reads it)
        self.struct.scales = None if scales is None else _address(scales)

    def _prepare(self, problem, solver, build: bool, place: Callable, dtype: torch.dtype | None = None) -> None:
        """Raise `NotBuilt` (without ``build``) or a `BackendError` where ``solver`` (the library or the
        kernels) is None; else the problem's residual scales and Problem where the solver reads them
        (``place``, ``dtype``: see `problem_struct`)."""
        if solver is None and not build:
            raise NotBuilt("its solver is not built yet (engine='native' builds it)")
        if solver is None:
            raise BackendError(f"the native engine cannot compile model {problem.text!r}")
        scales = getattr(problem, "scales", None)
        self.scales = None if scales is None else scales.to(self.device, torch.float64).contiguous()
        self.struct, self._keep = problem_struct(problem, place, dtype)  # (what the solver reads: kept alive)

    def _run(self, entry: str, options: _Options, index: torch.Tensor, arrays: list, advance) -> None:
        """`native_lm.c`'s ``entry`` over curves ``index`` with ``arrays``, its per-curve arguments (row k
        for curve index[k]); ``advance`` the progress bar's."""
        raise NotImplementedError


class NativeSolver(CurveSolver):
    """`CurveSolver` on the CPU (a single fit: one curve), by the model's library or the shared one.

    Raises `BackendError` when the library cannot be built, or without ``build`` is not built yet
    (see `unavailable` first).
    """

    def __init__(self, problem, threads: int, *, build: bool = True, python_rows: bool = False):
        self.problem, self.threads = problem, max(1, threads)
        self.rows = None
        if python_rows:  # one library for every model, the rows computed by its numpy (`native_library`)
            from . import native_library as rows

            self.library = rows.library(build=build)
            columns = tuple(letter == "v" for letter in _layouts(problem))
            self.rows = rows.PythonRows(problem.numpy_rows, problem.numpy_values, columns, len(problem.names) + 1)
        else:
            self.library = library(problem.function, problem.names, _layouts(problem), build=build)
        self._prepare(problem, self.library, build, lambda array: array)

    def _run(self, entry: str, options: _Options, index: torch.Tensor, arrays: list, advance) -> None:
        """`CurveSolver._run` in calls of `CALL_CURVES` curves, the progress bar advanced between them."""
        curves, count = np.ascontiguousarray(index.numpy(), dtype=np.int64), len(index)
        for begin in range(0, count, CALL_CURVES):
            end = min(begin + CALL_CURVES, count)
            rows = (array.data_ptr() + begin * array.stride(0) * array.element_size() for array in arrays)
            self._call(entry, options, curves[begin:end], *rows)
            if advance is not None:
                message = converged_message(arrays[2], end, count)
                for _ in range(end - begin):
                    advance(message)

    def solve_one(self, theta: torch.Tensor, scale: float, factor: float, **tolerances) -> Outcome:
        """A single fit (a batch of one curve) from ``theta`` (p,), residuals times ``scale``: `lm.Outcome`,
        with ``saturated`` (see `solve`, at `plateau.SATURATION` as `api` tests it). In numpy, not through
        `solve`'s tensors: a small fit takes 0.2 ms, which those would lengthen by a third."""
        # one curve: its whole history as the torch engine keeps it, up to SINGLE_HISTORY_LIMIT costs
        history = min(tolerances["max_steps"] + 2, SINGLE_HISTORY_LIMIT)
        options = _options(factor=factor, saturation=plateau.SATURATION, history=history, **tolerances)
        self._use_scales(np.array([scale]))
        solution, cost, costs = np.array(theta.tolist()), np.empty(1), np.empty(history)
        counts, recorded = np.empty(5, dtype=np.int64), np.empty(1, dtype=np.int64)
        outputs = (solution, cost, counts, costs, recorded)
        self._call("lm_batch", options, np.zeros(1, dtype=np.int64), *(array.ctypes.data for array in outputs))
        code, evaluations, jacobians, steps, saturated = counts.tolist()
        return Outcome(
            theta=torch.from_numpy(solution),
            status=STATUSES[code],
            cost=float(cost[0]),
            evaluations=evaluations,
            jacobians=jacobians,
            steps=steps,
            history=costs[: min(int(recorded[0]), history)].tolist(),
            saturated=bool(saturated) and STATUSES[code] != "nonfinite",
        )

    def report(self, values: torch.Tensor, scale: float, dof: int, absolute: bool) -> Report:
        """The statistics of the single curve at parameter ``values`` (p,), residuals times ``scale``:
        the cost ||r||^2, ||y / sigma||, the predictions f, and `statistics.uncertainty` (the
        covariance from the R of the weighted Jacobian; ``dof`` degrees of freedom, ``absolute``
        sigma), all in one C call."""
        self._use_scales(np.array([scale]))
        p, n = len(self.problem.names), self.problem.y.shape[-1]
        at, freedom = np.array(values.tolist()), np.array([float(dof)])
        scalars, fitted, finite = np.empty(2), np.empty(n), np.empty(1, dtype=np.int64)
        covariance, correlation, vt = np.empty((3, p, p))
        stderr, singular = np.empty((2, p))
        outputs = (scalars[:1], scalars[1:], fitted, covariance, correlation, stderr, singular, vt, finite)
        arguments = (at.ctypes.data, freedom.ctypes.data, int(absolute), statistics.INSENSITIVE)
        report = _Report(*arguments, *(array.ctypes.data for array in outputs))
        self._call("lm_report", _statistics_options(), np.zeros(1, dtype=np.int64), ctypes.byref(report))
        names = self.problem.names
        spread = (
            statistics.with_null_groups(covariance, stderr, correlation, singular, vt, names)
            if finite[0]
            else statistics.undetermined(names)
        )
        return Report(float(scalars[0]), float(scalars[1]), fitted, spread)

    def _call(self, entry: str, options: _Options, curves: np.ndarray, *arguments) -> None:
        """The library's ``entry`` over ``curves`` (int64) with this problem, ``options`` and the entry's
        own ``arguments`` (C runs one curve on one thread)."""
        problem, settings = ctypes.byref(self.struct), ctypes.byref(options)
        run = getattr(self.library, entry)
        if self.rows is None:
            done = run(problem, settings, curves.ctypes.data, len(curves), self.threads, *arguments)
        else:
            from .native_library import LOCK

            with LOCK, np.errstate(all="ignore"):  # the solver handles non-finite points itself
                self.rows.set_in(self.library)
                done = run(problem, settings, curves.ctypes.data, len(curves), 1, *arguments)
            self.rows.raise_interrupt()
        if done != 0:
            raise MemoryError("the native fit engine ran out of memory")


def problem_struct(problem, place: Callable[[np.ndarray], object], dtype: torch.dtype | None = None) -> tuple:
    """`native_lm.c`'s Problem of ``problem`` wherever the solver reads it (host or GPU), and what it
    points to (to keep alive): the data on their device (floating ones converted to ``dtype`` when
    given), the `_layout` and the tables of column and fixed-value pointers put there by ``place``
    (a numpy array to something with a ``data_ptr`` or ``ctypes.data``)."""
    floating = (lambda tensor: tensor.contiguous()) if dtype is None else (lambda tensor: tensor.to(dtype).contiguous())
    columns = [floating(column) for column in problem.data.values()]
    fixed = [floating(value[:, 0]) for value in problem.fixed.values()]
    shared = tuple(column.shape[0] == 1 and problem.batch != 1 for column in columns)
    bounds = tuple(_bound(spec) for spec in problem.free)
    layout = _layout(problem.function, problem.names, tuple(problem.data), tuple(problem.fixed), shared, bounds)
    weights = None if problem.weights is None else floating(problem.weights)
    mask = None if not problem.masked else problem.mask.contiguous().view(torch.uint8)
    y = floating(problem.y)
    placed = {name: place(array) for name, array in layout.items()}
    for name, tensors in (("columns", columns), ("fixed", fixed)):
        pointers = np.asarray([tensor.data_ptr() for tensor in tensors], dtype=np.int64)
        placed[name] = place(pointers) if len(tensors) else None
    address = {name: None if array is None else _address(array) for name, array in placed.items()}
    struct = _Problem(
        points=problem.y.shape[-1],
        p=len(problem.names),
        inputs=len(layout["kind"]),
        y=y.data_ptr(),
        weights=None if weights is None else weights.data_ptr(),
        weights_per_curve=int(weights is not None and weights.shape[0] != 1),
        mask=None if mask is None else mask.data_ptr(),
        **address,
    )
    return struct, (columns, fixed, weights, mask, y, placed)


def _address(array) -> int:
    return array.ctypes.data if isinstance(array, np.ndarray) else array.data_ptr()


@dataclass
class Report:
    """A single fit's statistics at its solution, from `NativeSolver.report` (costs and norms in the
    units of the residual scale given there)."""

    cost: float
    data_norm: float
    fitted: np.ndarray
    uncertainty: statistics.Uncertainty


@functools.lru_cache(maxsize=1024)
def _layout(
    function, free: tuple, columns: tuple, fixed: tuple, shared: tuple, bounds: tuple
) -> types.MappingProxyType:
    """What `native_lm.c`'s Problem reads besides the data, by field: per input of the generated functions
    its kind (`SHARED_COLUMN`...) and slot, per free parameter its bound kind and bounds (``bounds``, from
    `_bound`), for a model over data ``columns`` (``shared``: one row for every curve) and ``fixed``
    parameters; read-only and cached, as a loop of fits repeats it."""
    kinds, slots = [], []
    for name in function.names:
        if name in columns:
            k = columns.index(name)
            kinds.append(SHARED_COLUMN if shared[k] else CURVE_COLUMN)
            slots.append(k)
        elif name in free:
            kinds.append(FREE)
            slots.append(free.index(name))
        else:
            kinds.append(FIXED)
            slots.append(fixed.index(name))
    arrays = [np.asarray(kinds, dtype=np.int64), np.asarray(slots, dtype=np.int64)]
    arrays += [np.asarray([b[k] for b in bounds], dtype=np.int64 if k == 0 else np.float64) for k in range(3)]
    for array in arrays:
        array.flags.writeable = False
    return types.MappingProxyType(dict(zip(("kind", "slot", "bound", "lower", "upper"), arrays)))


def _bound(spec) -> tuple[int, float, float]:
    lo, hi = spec.lower, spec.upper
    if not spec.bounded:
        return UNBOUNDED, 0.0, 0.0
    if math.isfinite(lo) and math.isfinite(hi):
        return BOTH, lo, hi
    return (LOWER, lo, 0.0) if math.isfinite(lo) else (UPPER, 0.0, hi)
