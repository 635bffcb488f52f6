"""The result of a fit: values, standard errors, covariance, the reason it stopped, and a report; and of a
batch of fits: arrays over curves, a summary by status, CSV/JSON, and each curve's `FitResult`."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..strict_json import dumps, json_ready
from . import goodness
from .status import TERMINATION, termination_message

if TYPE_CHECKING:
    from .global_fit import SharedParameters
    from .source import FitSource


BAND_KINDS = ("confidence", "prediction")


def _written(text: str, path: str | Path | None) -> str:
    """``text``, also written to ``path`` when given (a `UsageError` naming it where it cannot be written)."""
    if path is not None:
        from ..plot import check_writable

        check_writable(path, "path").write_text(text)
    return text


#: What `FitResult.to_dict` holds, in this order (then the profile intervals and a band, where there are).
_REPORTED = (
    "model", "method", "loss", "success", "status", "message", "params", "stderr", "fixed", "covariance",
    "correlation", "cost", "loss_value", "residual_std", "dof", "evaluations", "jacobians", "steps", "condition",
    "not_identifiable", "warnings", "seconds", "history", "chisqr", "redchi", "aic", "bic", "rsquared", "nfree",
    "ndata", "tied", "absolute_sigma",
)  # fmt: skip


@dataclass
class FitResult:
    """Fitted values, standard errors, covariance, cost = sum of squared residuals, and diagnostics."""

    params: dict[str, float]
    stderr: dict[str, float]
    covariance: np.ndarray = field(repr=False)
    correlation: np.ndarray = field(repr=False)
    cost: float
    residual_std: float
    dof: int
    evaluations: int
    jacobians: int
    steps: int
    status: str
    method: str
    model: str
    loss: str = "linear"
    loss_value: float = math.nan
    history: list[float] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)
    not_identifiable: list[list[str]] = field(default_factory=list)
    condition: float = math.nan
    fixed: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    data: dict = field(default_factory=dict, repr=False)
    tied: dict[str, str] = field(default_factory=dict)
    absolute_sigma: bool = False
    source: FitSource | None = field(default=None, repr=False, compare=False)
    # a distributed fit's R^2 over every rank's rows (``data`` holds this rank's only)
    pooled_rsquared: float | None = field(default=None, repr=False)
    #: How `message` names the step limit: ``max_steps`` (Python), ``--steps`` (the CLI sets it).
    steps_option: str = field(default="max_steps", repr=False, compare=False)

    @property
    def success(self) -> bool:
        """True when the solver stopped because it converged (see `TERMINATION`)."""
        return TERMINATION[self.status][0]

    @property
    def message(self) -> str:
        """Why the solver stopped, from the table of termination reasons."""
        return termination_message(self.status, self.steps_option)

    @property
    def names(self) -> tuple[str, ...]:
        """Free parameter names, in the order of the covariance matrix."""
        return tuple(name for name in self.stderr if name not in self.tied)

    # Goodness of fit, lmfit's definitions (see `goodness`).
    @property
    def chisqr(self) -> float:
        """chisqr = sum ((f - y) / sigma)^2 at the fitted values (the cost)."""
        return self.cost

    @property
    def ndata(self) -> int:
        """n, the number of data points fitted (after nan_policy)."""
        return self.dof + len(self.names)

    @property
    def nfree(self) -> int:
        """nfree = n - p, data points less free parameters (tied and fixed ones do not count)."""
        return self.dof

    @property
    def redchi(self) -> float:
        """redchi = chisqr / max(1, nfree)."""
        return self.cost / max(1, self.dof)

    @property
    def aic(self) -> float:
        """Akaike's criterion n log(chisqr / n) + 2 p (chisqr floored at 1e-250 n, as lmfit)."""
        return goodness.information_criteria(self.cost, self.ndata, len(self.names))[0]

    @property
    def bic(self) -> float:
        """Schwarz's criterion n log(chisqr / n) + p log(n) (chisqr floored at 1e-250 n, as lmfit)."""
        return goodness.information_criteria(self.cost, self.ndata, len(self.names))[1]

    @property
    def rsquared(self) -> float:
        """R^2 = 1 - sum (y - f)^2 / sum (y - mean y)^2, unweighted (lmfit); NaN without data."""
        if self.pooled_rsquared is not None:
            return self.pooled_rsquared
        if "y" not in self.data:
            return math.nan
        return goodness.r_squared(self.data["y"], self.data["fitted"])

    def _free_values(self):
        """The fitted free parameters as a tensor on the data's device, for evaluating the model."""
        import torch

        if self.source is None:
            raise UsageError("this FitResult holds no model to evaluate (it was built by hand, not returned by fit)")
        problem = self.source.problem
        values = [self.params[name] for name in problem.names]
        return torch.tensor(values, dtype=problem.y.dtype, device=problem.y.device)

    def predict(self, x) -> np.ndarray:
        """The fitted model f(x; params) at new predictor values ``x`` (an array, or a dict as in the fit)."""
        import torch

        values = self._free_values()
        model = self.source.model_at(self.source.columns(x))
        with torch.no_grad(), np.errstate(all="ignore"):
            return model.predict(values).detach().cpu().numpy().copy()

    def eval_uncertainty(self, x=None, *, sigma: float = 1, kind: str = "confidence") -> np.ndarray:
        """Half-width of the band at ``sigma`` standard deviations: t sqrt(J C J^T) (+ redchi for prediction).

        Parameters
        ----------
        x : array or dict, optional
            Predictor values (default: the data's).
        sigma : float
            Standard deviations; P = erf(sigma / sqrt(2)), and below 1 sigma is P itself (lmfit).
        kind : {"confidence", "prediction"}
            The band of the curve (lmfit's ``dely``), or of new observations (``dely_predicted``:
            the curve's variance plus redchi, or plus 1 with absolute sigma).

        Notes
        -----
        The delta method: var f = diag(J C J^T) with the exact Jacobian J = df/db at ``x`` (generated
        for formulas, autograd for callables) and the parameter covariance C, scaled by the Student-t
        quantile at (1 + P) / 2 for nfree degrees of freedom (normal quantile with absolute sigma: the
        variance is known). NaN where the covariance is undefined (parameters not identifiable).
        """
        import torch

        if kind not in BAND_KINDS:
            raise UsageError(f"kind must be one of {{{', '.join(BAND_KINDS)}}}, got {kind!r}")
        values = self._free_values()
        absolute = self.source.absolute_sigma
        scale = goodness.band_quantile(sigma, self.nfree, student=not absolute)
        columns = self.source.problem.data if x is None else self.source.columns(x)
        with np.errstate(all="ignore"):
            _, jacobian = self.source.model_at(columns).jacobian(values, external=True)
        jacobian = jacobian.detach().cpu().to(torch.float64).numpy()
        variance = np.einsum("ij,jk,ik->i", jacobian, np.asarray(self.covariance), jacobian)
        if kind == "prediction":
            variance = variance + (1.0 if absolute else self.redchi)
        return scale * np.sqrt(variance)

    def conf_interval(self, sigmas=(1, 2), params=None, *, progress: bool = False) -> dict:
        """{name: {sigma: (lower, upper)}}: profile-likelihood intervals by lmfit's F-test (see `profile`).

        An end the profile never reaches inside the bounds is -inf / +inf; a parameter the data do not
        determine gets NaN. Raises `FitError` for a fit that did not converge.
        """
        from .profile import conf_interval

        return conf_interval(self, sigmas, params, progress=progress)

    def plot_profile(self, name: str, path: str | Path) -> Path:
        """Save a figure of parameter ``name``'s profile: sigma level against value, with the intervals."""
        from .figures import plot_profile

        return plot_profile(self, name, path)

    def report(self, ci: bool = False) -> str:
        """A readable summary: value +- stderr (relative error), goodness of fit, strong correlations,
        warnings; with ``ci``, the profile intervals at 1 and 2 sigma (computed if not yet)."""
        lines = [
            f"model: {self.model}",
            f"method: {self.method}   status: {self.status} ({self.message})",
            f"cost (sum of squared residuals) = {self.cost:.10g}   residual std = {self.residual_std:.6g}   "
            f"dof = {self.dof}",
            f"steps = {self.steps}   evaluations = {self.evaluations}   "
            f"jacobians = {self.jacobians}   time = {1e3 * self.seconds:.1f} ms",
            f"chisqr = {self.chisqr:.10g}   redchi = {self.redchi:.6g}   aic = {self.aic:.6g}   "
            f"bic = {self.bic:.6g}   R^2 = {self.rsquared:.8g}   nfree = {self.nfree}"
            + ("   (sigma absolute)" if self.absolute_sigma else ""),
            "",
        ]
        width = max(len(name) for name in [*self.params, "parameter"])
        lines.append(f"{'parameter':<{width}}  {'value':>20}  {'stderr':>14}  {'rel. error':>10}")
        for name, value, error_text, relative_text, note in self._parameter_cells():
            if note == "fixed":
                lines.append(f"{name:<{width}}  {value:>20}  {'(fixed)':>14}")
                continue
            tied = f"  {note}" if note else ""
            lines.append(f"{name:<{width}}  {value:>20}  {'± ' + error_text:>14}  {relative_text:>10}{tied}")
        strong = self._strong_correlations()
        if strong:
            lines.extend(["", strong])
        if ci:
            from .profile import interval_table

            lines.extend(["", *interval_table(self)])
        if self.warnings:
            lines.extend(["", *(f"warning: {text}" for text in self.warnings)])
        return "\n".join(lines)

    def _parameter_cells(self) -> list[tuple[str, str, str, str, str]]:
        """(name, value, stderr, relative error, note) per parameter as the reports show them; the note
        is "fixed", "= expression" for a tied parameter, else empty."""
        cells = []
        for name, value in self.params.items():
            if name in self.fixed:
                cells.append((name, f"{value:.12g}", "", "", "fixed"))
                continue
            error = self.stderr[name]
            relative = abs(error / value) if value != 0 and math.isfinite(error) else math.nan
            error_text = "not identif." if math.isnan(error) else f"{error:.6g}"
            relative_text = "" if math.isnan(relative) else f"{100 * relative:.3g}%"
            note = f"= {self.tied[name]}" if name in self.tied else ""
            cells.append((name, f"{value:.12g}", error_text, relative_text, note))
        return cells

    def _strong_correlations(self) -> str:
        """ "correlations above 0.9: a-b +0.9500, ..." or empty."""
        strong = [
            (a, b, self.correlation[i, j])
            for i, a in enumerate(self.names)
            for j, b in enumerate(self.names)
            if i < j and abs(self.correlation[i, j]) > 0.9
        ]
        return "correlations above 0.9: " + ", ".join(f"{a}-{b} {c:+.4f}" for a, b, c in strong) if strong else ""

    def _repr_html_(self) -> str:
        """The report as HTML tables (Jupyter shows a result this way): fit statistics, parameters, notes."""
        from .. import html_table

        statistics = [
            ("model", self.model),
            ("method", self.method),
            ("status", f"{self.status} ({self.message})"),
            ("cost (sum of squared residuals)", f"{self.cost:.10g}"),
            ("residual std", f"{self.residual_std:.6g}"),
            ("data points / free (nfree)", f"{self.ndata} / {self.nfree}"),
            ("steps / evaluations / jacobians", f"{self.steps} / {self.evaluations} / {self.jacobians}"),
            ("chisqr / redchi", f"{self.chisqr:.10g} / {self.redchi:.6g}"),
            ("aic / bic", f"{self.aic:.6g} / {self.bic:.6g}"),
            ("R^2", f"{self.rsquared:.8g}"),
            ("time", f"{1e3 * self.seconds:.1f} ms"),
        ]
        return html_table.document(
            html_table.table(statistics, caption="Fit statistics"),
            html_table.table(
                self._parameter_cells(), ("parameter", "value", "stderr", "rel. error", "note"), caption="Parameters"
            ),
            html_table.notes([self._strong_correlations(), *(f"warning: {text}" for text in self.warnings)]),
        )

    def to_dict(self, bands: str | None = None) -> dict:
        """Everything but the data, as plain JSON-ready values (NaN and inf -> null); profile intervals
        once computed; with ``bands`` ("confidence" or "prediction"), that band's 2-sigma half-width at
        the data."""
        document = {name: getattr(self, name) for name in _REPORTED}
        if self.source is not None and self.source.intervals:
            document["conf_interval"] = {
                name: {str(sigma): list(pair) for sigma, pair in levels.items()}
                for name, levels in self.source.intervals.items()
            }
            document["conf_interval_notes"] = {name: note for name, note in self.source.notes.items() if note}
        if bands is not None:
            document["band"] = {"kind": bands, "sigma": 2, "halfwidth": self.eval_uncertainty(sigma=2, kind=bands)}
        return json_ready(document)

    def to_json(self, path: str | Path | None = None, *, bands: str | None = None) -> str:
        """The result as JSON text (see `to_dict`); also written to ``path`` when given."""
        return _written(dumps(self.to_dict(bands)), path)

    def plot(self, path: str | Path, bands: str | None = "confidence", ylabel: str = "y") -> Path:
        """Save a PNG: data, fitted curve with its 2-sigma ``bands`` shaded ("confidence", "prediction"
        or None), and a residuals panel below; ``ylabel`` names the response (the CLI: its column)."""
        from .figures import plot_fit

        return plot_fit(self, path, bands=bands, ylabel=ylabel)


@dataclass
class BatchFitResult:
    """Fitted values and standard errors per curve (arrays of shape (B,)), with costs and statuses.

    ``result[i]`` is the `FitResult` of curve i (covariance, report, plot), built on demand. A global fit
    (shared parameters) also has ``shared``: the shared values once, with the joint fit's covariance;
    ``params``/``stderr`` then repeat them on every curve.
    """

    params: dict[str, np.ndarray]
    stderr: dict[str, np.ndarray]
    cost: np.ndarray
    dof: np.ndarray
    status: list[str]
    evaluations: np.ndarray
    jacobians: np.ndarray
    steps: np.ndarray
    model: str
    method: str = "lm"
    seconds: float = 0.0
    single: Callable[[int], FitResult] | None = field(default=None, repr=False)
    shared: SharedParameters | None = None  # a global fit's shared parameters (`fit_batch`'s {"shared": True})

    def __len__(self) -> int:
        return len(self.status)

    def __getitem__(self, i: int) -> FitResult:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            hint = (
                f": the values of parameter {i!r} are batch.params[{i!r}]"
                if isinstance(i, str) and i in self.params
                else ""
            )
            raise TypeError(f"index a batch by curve number, batch[17], not by {i!r}{hint}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"curve {i} out of range: the batch has {len(self)} curves")
        if self.single is None:
            raise RuntimeError("this BatchFitResult holds no per-curve data (it was read back from a file)")
        return self.single(i % len(self))

    @property
    def success(self) -> np.ndarray:
        """(B,) bool: True where the curve's fit converged (see `TERMINATION`)."""
        return np.array([TERMINATION[status][0] for status in self.status], dtype=bool)

    @property
    def message(self) -> list[str]:
        """Why each curve's fit stopped."""
        return [termination_message(status) for status in self.status]

    def summary(self) -> str:
        """Counts by status, and the spread of each parameter over the converged curves (those with fewer
        points than free parameters named and left out)."""
        counts = Counter(self.status)
        converged = self.success
        lines = [
            f"model: {self.model}   curves: {len(self)}   converged: {int(converged.sum())}   "
            f"time = {self.seconds:.3g} s",
            "status: " + ", ".join(f"{name} {count}" for name, count in counts.most_common()),
        ]
        underdetermined, spread = self._spread()
        if underdetermined:
            lines.append(underdetermined)
        if self.shared is not None:
            lines.append(self.shared.summary())
        for name, median, low, high in spread:
            lines.append(f"  {name}: median {median}, 5%-95% [{low}, {high}]")
        return "\n".join(lines)

    def _spread(self) -> tuple[str, list[tuple[str, str, str, str]]]:
        """(a line naming the underdetermined curves or "", (name, median, 5%, 95%) of each parameter over
        the converged curves that are not underdetermined)."""
        fitted = np.array([status != "no_data" for status in self.status], dtype=bool)
        underdetermined = fitted & (np.asarray(self.dof) < 0)
        line = ""
        if underdetermined.any():
            curves = np.flatnonzero(underdetermined)
            line = (
                f"underdetermined (fewer points than free parameters, left out below): {len(curves)} curves, "
                f"{', '.join(map(str, curves[:10].tolist()))}{' ...' if len(curves) > 10 else ''}"
            )
        spread = []
        shared = self.shared.params if self.shared is not None else {}
        for name, values in self.params.items():
            if name in shared:
                continue
            good = values[self.success & ~underdetermined & np.isfinite(values)]
            if len(good):
                quantiles = (np.median(good), np.quantile(good, 0.05), np.quantile(good, 0.95))
                spread.append((name, *(f"{q:.6g}" for q in quantiles)))
        return line, spread

    def _repr_html_(self, max_rows: int = 20) -> str:
        """The summary as HTML tables (Jupyter shows a result this way): counts by status, each parameter's
        spread over the converged curves, and the first ``max_rows`` curves."""
        from .. import html_table

        underdetermined, spread = self._spread()
        overview = [
            ("model", self.model),
            ("method", self.method),
            ("curves / converged", f"{len(self)} / {int(self.success.sum())}"),
            ("time", f"{self.seconds:.3g} s"),
            *((status, count) for status, count in Counter(self.status).most_common()),
        ]
        rows = self.rows()
        header = list(rows[0]) if rows else []
        shown = [[f"{v:.6g}" if isinstance(v, float) else v for v in row.values()] for row in rows[:max_rows]]
        hidden = len(rows) - max_rows
        more = f"... {hidden} more curves (to_csv() or to_json() has them all)" if hidden > 0 else ""
        shared = (
            ""
            if self.shared is None
            else html_table.table(
                [
                    (name, f"{value:.6g}", f"{self.shared.stderr[name]:.3g}")
                    for name, value in self.shared.params.items()
                ],
                ("parameter", "value", "stderr"),
                caption="Shared by every curve",
            )
        )
        return html_table.document(
            html_table.table(overview, caption="Batch fit"),
            html_table.notes([underdetermined]),
            shared,
            html_table.table(spread, ("parameter", "median", "5%", "95%"), caption="Converged curves"),
            html_table.table(shown, header, caption="Curves"),
            html_table.notes([more]),
        )

    def rows(self) -> list[dict]:
        """One dict per curve: index, success, status, cost, dof, each parameter and its stderr."""
        table = []
        for i, status in enumerate(self.status):
            row = {"curve": i, "success": TERMINATION[status][0], "status": status, "cost": float(self.cost[i])}
            row["dof"] = int(self.dof[i])
            for name, values in self.params.items():
                row[name] = float(values[i])
                if name in self.stderr:
                    row[f"{name}_stderr"] = float(self.stderr[name][i])
            table.append(row)
        return table

    def to_csv(self, path: str | Path | None = None) -> str:
        """One line per curve (`rows`) as CSV; written to ``path`` when given."""
        table = self.rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return _written(buffer.getvalue(), path)

    def to_json(self, path: str | Path | None = None) -> str:
        """The per-curve rows and the counts by status as JSON (NaN -> null); written to ``path`` when given."""
        document = {
            "model": self.model,
            "method": self.method,
            "curves": len(self),
            "status_counts": dict(Counter(self.status)),
            "seconds": self.seconds,
            "results": self.rows(),
        }
        if self.shared is not None:
            document["shared"] = self.shared.as_dict()
        return _written(dumps(document), path)
