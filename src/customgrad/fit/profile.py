"""Profile-likelihood confidence intervals: chi2_p(v) = min over the other parameters of chi2 with
parameter p held at v, and the interval's ends where chi2_p reaches chi2_best (1 + F_(1,nfree)(P) / nfree)
(lmfit's ``conf_interval`` with its F-test; P = erf(sigma / sqrt(2))). With absolute sigma the level is
chi2_best + chi2_1(P) instead.

Each chi2_p(v) is one Levenberg-Marquardt fit with p fixed, warm-started from the nearest profile point
already found. The search walks out from the best value in steps of the standard error (doubled every
few steps), then solves chi2_p(v) = level between the last two points by the Illinois method on
sqrt(chi2_p - chi2_best), which is nearly linear in v. Where the profile never reaches the level
inside the parameter's bounds or the search range, that end is reported as -inf / +inf (no bound), and a
parameter the data do not determine gets NaN (undetermined) — nothing is invented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import torch

from ..errors import FitError, UsageError
from .bounds import hold_and_release, refit, residual_unit
from .goodness import profile_target
from .threads import threads_for

if TYPE_CHECKING:
    import numpy as np

    from .source import FitSource


class Fitted(Protocol):
    """What the profile and the figures (`figures`) need of a finished fit: `result.FitResult`'s shape,
    so that they need not import the result class whose methods hand themselves over to them."""

    params: dict[str, float]
    stderr: dict[str, float]
    cost: float
    status: str
    method: str
    model: str
    not_identifiable: list[list[str]]
    fixed: dict[str, float]
    tied: dict[str, str]
    data: dict
    absolute_sigma: bool
    source: FitSource | None

    @property
    def success(self) -> bool: ...

    @property
    def message(self) -> str: ...

    @property
    def nfree(self) -> int: ...

    def predict(self, x) -> np.ndarray: ...

    def eval_uncertainty(self, x=None, *, sigma: float = 1, kind: str = "confidence") -> np.ndarray: ...


# Outward steps before giving up on an end; the step doubles every STEP_DOUBLING of them.
SEARCH_STEPS, STEP_DOUBLING = 40, 4
# The root of chi2_p(v) = level, to this share of the search step (or of sqrt(level - chi2_best)).
ROOT_TOLERANCE = 1e-8


class Profile:
    """chi2_p(v) for one parameter p of a fit, each value by a warm-started LM re-fit, remembered; in
    units where the residuals are multiplied by ``unit`` (`bounds.residual_unit`: chi2 in float64's range)."""

    def __init__(self, result: Fitted, name: str):
        self.source = source = result.source
        values = {free: result.params[free] for free in source.problem.names}
        self.name = name
        self.unit = residual_unit(source)
        self.specs = {spec.name: spec for spec in source.problem.specs}
        self.points: dict[float, tuple[float, dict[str, float]]] = {}
        self.best_value = values[name]
        self.best = self._fit(values[name], values)[0]
        self.points[self.best_value] = (self.best, values)

    def __call__(self, value: float) -> float:
        """chi2_p(value)."""
        value = float(value)
        if value not in self.points:
            nearest = min(self.points, key=lambda known: abs(known - value))
            self.points[value] = self._fit(value, self.points[nearest][1])
        return self.points[value][0]

    def _fit(self, value: float, start: dict[str, float]) -> tuple[float, dict[str, float]]:
        """min chi2 over the other parameters with p at ``value``, within their bounds: the LM re-fit,
        and where it ends with parameters at a bound, `bounds.hold_and_release`."""
        held = {self.name: value}
        cost, values, _ = hold_and_release(self.source, self.unit, held, refit(self.source, self.unit, held, start))
        return cost, values

    def level(self, sigma: float, nfree: int, absolute: bool) -> float:
        """chi2_p at the edge of the ``sigma`` interval (`profile_target`), in this profile's units."""
        if absolute:  # chi2_best + chi2_1(P) in the data's units
            return self.best + self.unit * self.unit * profile_target(sigma, 0.0, nfree, absolute=True)
        return profile_target(sigma, self.best, nfree)

    def in_data_units(self, cost: float) -> float:
        """A chi2 of this profile in the data's units (inf or 0 where it leaves float64's range)."""
        return cost / self.unit / self.unit


def conf_interval(
    result: Fitted, sigmas: Iterable[float] = (1, 2), params: Iterable[str] | None = None, *, progress=False
) -> dict[str, dict[float, tuple[float, float]]]:
    """{name: {sigma: (lower, upper)}}: profile-likelihood intervals (see the module docstring)."""
    source, names, sigmas = _check(result, sigmas, params)
    from ..progress import progress_bar

    unidentified = {name for group in result.not_identifiable for name in group}
    with _thread_setting(source), progress_bar(2 * len(names), "profile intervals", enabled=progress) as advance:
        for name in names:
            if name in unidentified or not math.isfinite(result.stderr[name]):
                source.intervals.setdefault(name, {}).update({sigma: (math.nan, math.nan) for sigma in sigmas})
                _note(source, name, ["undetermined: the data do not identify it (see the fit's warnings)"])
                advance(name)
                advance(name)
                continue
            profile = Profile(result, name)
            levels = {sigma: profile.level(sigma, result.nfree, source.absolute_sigma) for sigma in sigmas}
            ends, notes = {}, []
            for direction in (-1, 1):
                ends[direction], note = _ends(profile, result, direction, levels)
                notes.append(note)
                advance(name)
            if min(cost for cost, _ in profile.points.values()) < profile.best * (1 - 1e-9):
                notes.append("the profile dips below the fit's chi-square: the fit is not at the minimum")
            # levels asked for before stay (report(ci=True) and to_json show every level computed)
            source.intervals.setdefault(name, {}).update({sigma: (ends[-1][sigma], ends[1][sigma]) for sigma in levels})
            _note(source, name, notes)
            traces = source.traces.setdefault(name, {})
            traces.update({value: profile.in_data_units(point[0]) for value, point in profile.points.items()})
    return {name: {sigma: source.intervals[name][sigma] for sigma in sigmas} for name in names}


def _note(source: FitSource, name: str, notes: list[str]) -> None:
    """Add ``notes`` (empty ones left out) to parameter ``name``'s notes, each once."""
    known = [note for note in source.notes.get(name, "").split("; ") if note]
    source.notes[name] = "; ".join(dict.fromkeys([*known, *(note for note in notes if note)]))


def _check(result: Fitted, sigmas, params) -> tuple[FitSource, list[str], list[float]]:
    source = result.source
    if source is None:
        raise UsageError("conf_interval needs a FitResult returned by fit (this one holds no model)")
    if source.loss != "linear":
        raise UsageError(f"conf_interval needs a least-squares fit (loss='linear'); this fit used loss={source.loss!r}")
    if not result.success:
        raise FitError(
            f"conf_interval needs a converged fit; this one stopped with status {result.status!r} "
            f"({result.message}): refit (more max_steps, better initial values) first"
        )
    if result.nfree <= 0:
        raise FitError(f"conf_interval needs more data points than free parameters (nfree = {result.nfree})")
    free = source.problem.names
    names = list(free) if params is None else [params] if isinstance(params, str) else list(params)
    for name in names:
        if name in free:
            continue
        why = "it is tied by an expr" if name in result.tied else "it is fixed" if name in result.fixed else "unknown"
        raise UsageError(f"conf_interval: parameter {name!r} cannot be profiled ({why}); free: {', '.join(free)}")
    sigmas = [sigmas] if isinstance(sigmas, (int, float)) else list(sigmas)
    if not sigmas:
        raise UsageError("conf_interval: sigmas is empty; give levels such as (1, 2)")
    for sigma in sigmas:
        profile_target(sigma, 1.0, result.nfree)  # a bad level is an error naming it
    return source, names, sorted(set(sigmas))


def _ends(profile: Profile, result: Fitted, direction: int, levels: dict[float, float]):
    """Each level's end on one side: walk out, then solve; ±inf (with a note) where it is not reached."""
    spec = profile.specs[profile.name]
    start, stderr = profile.best_value, result.stderr[profile.name]
    step = stderr if 0 < stderr < abs(start) else max(abs(start) * 0.2, 1e-3)
    limit = spec.upper if direction > 0 else spec.lower
    walk = [(start, profile.best)]
    top = max(levels.values())
    note = ""
    for count in range(1, SEARCH_STEPS + 1):
        value = walk[-1][0] + direction * step * 2 ** ((count - 1) // STEP_DOUBLING)
        if (value - limit) * direction >= 0:
            value = limit
        walk.append((value, profile(value)))
        if walk[-1][1] >= top:
            break
        if value == limit:
            note = f"the profile stays below the largest level up to the bound {limit:g}"
            break
    else:
        note = f"the profile stays below the largest level out to {walk[-1][0]:g}"
    ends = {}
    for sigma, level in levels.items():
        above = next((i for i, (_, cost) in enumerate(walk) if cost >= level), None)
        ends[sigma] = direction * math.inf
        if above is not None:
            ends[sigma] = _solve(profile, walk[above - 1], walk[above], level, step)
    return ends, note


def _solve(profile: Profile, low: tuple[float, float], high: tuple[float, float], level: float, step: float) -> float:
    """v between the two points with chi2_p(v) = level: Illinois on g = sqrt(chi2_p - best) - sqrt(level - best)."""
    target = math.sqrt(level - profile.best)

    def g(cost: float) -> float:
        return math.sqrt(max(cost - profile.best, 0.0)) - target if math.isfinite(cost) else math.inf

    (a, fa), (b, fb) = (low[0], g(low[1])), (high[0], g(high[1]))
    side = 0
    for _ in range(100):
        if abs(b - a) <= ROOT_TOLERANCE * step:
            break
        c = b - fb * (b - a) / (fb - fa) if math.isfinite(fb) and fb != fa else (a + b) / 2
        if not min(a, b) < c < max(a, b):
            c = (a + b) / 2
        fc = g(profile(c))
        if abs(fc) <= ROOT_TOLERANCE * target:
            return c
        if (fc > 0) == (fb > 0):
            b, fb = c, fc
            if side == -1:
                fa /= 2
            side = -1
        else:
            a, fa = c, fc
            if side == 1:
                fb /= 2
            side = 1
    return a - fa * (b - a) / (fb - fa) if math.isfinite(fb) and fb != fa else (a + b) / 2


def _thread_setting(source: FitSource):
    """One torch thread setting (and numpy's overflow warnings off) for all of a profile's re-fits
    (`threads.threads_for`), not one per re-fit."""
    problem = source.problem
    return threads_for(problem.size * len(problem.names), problem.y.device)


def profile_curve(result: Fitted, name: str) -> tuple[list[float], list[float]]:
    """(values, chi2_p) at 21 values over the widest interval found for ``name``, and the search's points."""
    if result.source is None or name not in result.source.intervals:
        conf_interval(result, (1, 2, 3), [name])
    source = result.source
    with _thread_setting(source):
        profile = Profile(result, name)
        spec = profile.specs[name]
        finite = [v for pair in source.intervals[name].values() for v in pair if math.isfinite(v)]
        stderr = result.stderr[name] if math.isfinite(result.stderr[name]) else abs(profile.best_value) * 0.2 or 1.0
        low = min(finite, default=profile.best_value - 3 * stderr)
        high = max(finite, default=profile.best_value + 3 * stderr)
        margin = 0.1 * (high - low)
        grid = torch.linspace(low - margin, high + margin, 21, dtype=torch.float64).tolist()
        grid = [min(max(v, spec.lower), spec.upper) for v in grid]
        for value in sorted(grid, key=lambda v: abs(v - profile.best_value)):  # outwards: warm starts stay close
            profile(value)
    points = {v: profile.in_data_units(c) for v, (c, _) in profile.points.items()}
    pairs = sorted({**points, **source.traces.get(name, {})}.items())
    return [v for v, _ in pairs], [c for _, c in pairs]


def interval_table(result: Fitted) -> list[str]:
    """Lines of a table: each free parameter's profile interval per sigma computed, 1 and 2 always (computed
    where not yet), as offsets from the value."""
    source = result.source
    names = [] if source is None else source.problem.names
    missing = [n for n in names if not {1, 2} <= set(source.intervals.get(n, {}))]
    if source is None or missing:
        conf_interval(result, (1, 2), missing or None)
    names = [n for n in source.problem.names if n in source.intervals]
    levels = sorted({sigma for n in names for sigma in source.intervals[n]})
    width = max(len(n) for n in [*names, "parameter"])
    header = "".join(f"  {f'{s:g} sigma (lower, upper)':>34}" for s in levels)
    lines = [f"profile intervals (F-test{', sigma absolute' if result.absolute_sigma else ''}):"]
    lines.append(f"{'parameter':<{width}}  {'value':>16}{header}")
    for name in names:
        value = result.params[name]
        cells = "".join(f"  {_pair(source.intervals[name].get(s), value):>34}" for s in levels)
        lines.append(f"{name:<{width}}  {value:>16.10g}{cells}")
    lines.extend(f"note: {name}: {source.notes[name]}" for name in names if source.notes.get(name))
    return lines


def _pair(pair, value: float) -> str:
    if pair is None:
        return ""
    if any(math.isnan(v) for v in pair):
        return "undetermined"
    low, high = (f"{v - value:+.5g}" if math.isfinite(v) else "none" for v in pair)
    return f"({low}, {high})"
