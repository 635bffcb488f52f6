"""The result of a fit: values, standard errors, covariance, the reason it stopped, and a report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..strict_json import dumps, json_ready

# Termination reasons: status -> (success, message). One row per way a solver can stop.
TERMINATION: dict[str, tuple[bool, str]] = {
    "ftol": (True, "converged: the relative reduction of the cost fell below ftol"),
    "xtol": (True, "converged: the relative step size fell below xtol"),
    "gtol": (True, "converged: the residuals are orthogonal to every Jacobian column (below gtol)"),
    "roundoff": (True, "converged: no further reduction is possible in floating point (roundoff level)"),
    "exact": (True, "converged: the residuals are zero, the model fits the data exactly"),
    "drift": (
        True,
        "converged: the cost changes by less than 1e-8 (relative) over 10 steps while the "
        "parameters drift along directions the data do not determine",
    ),
    "step_limit": (
        False,
        "stopped: ran the requested number of steps; this method has no convergence test, so "
        "convergence is not established (method 'lm' or 'lbfgs' test for it)",
    ),
    "max_steps": (
        False,
        "stopped: the step limit was reached before convergence; raise max_steps or start closer to the solution",
    ),
    "nonfinite": (
        False,
        "stopped: the model gave NaN or inf; the best parameters found before that are kept",
    ),
}


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

    @property
    def success(self) -> bool:
        """True when the solver stopped because it converged (see `TERMINATION`)."""
        return TERMINATION[self.status][0]

    @property
    def message(self) -> str:
        """Why the solver stopped, from the table of termination reasons."""
        return TERMINATION[self.status][1]

    @property
    def names(self) -> tuple[str, ...]:
        """Free parameter names, in the order of the covariance matrix."""
        return tuple(self.stderr)

    def report(self) -> str:
        """A readable summary: value +- stderr (relative error), strong correlations, warnings."""
        lines = [
            f"model: {self.model}",
            f"method: {self.method}   status: {self.status} ({self.message})",
            f"cost (sum of squared residuals) = {self.cost:.10g}   residual std = {self.residual_std:.6g}   "
            f"dof = {self.dof}",
            f"steps = {self.steps}   evaluations = {self.evaluations}   "
            f"jacobians = {self.jacobians}   time = {1e3 * self.seconds:.1f} ms",
            "",
        ]
        width = max(len(name) for name in [*self.params, "parameter"])
        lines.append(f"{'parameter':<{width}}  {'value':>20}  {'stderr':>14}  {'rel. error':>10}")
        for name, value in self.params.items():
            if name in self.fixed:
                lines.append(f"{name:<{width}}  {value:>20.12g}  {'(fixed)':>14}")
                continue
            error = self.stderr[name]
            relative = abs(error / value) if value != 0 and math.isfinite(error) else math.nan
            error_text = "not identif." if math.isnan(error) else f"{error:.6g}"
            relative_text = "" if math.isnan(relative) else f"{100 * relative:.3g}%"
            lines.append(f"{name:<{width}}  {value:>20.12g}  {'± ' + error_text:>14}  {relative_text:>10}")
        strong = [
            (a, b, self.correlation[i, j])
            for i, a in enumerate(self.names)
            for j, b in enumerate(self.names)
            if i < j and abs(self.correlation[i, j]) > 0.9
        ]
        if strong:
            lines.append("")
            lines.append("correlations above 0.9: " + ", ".join(f"{a}-{b} {c:+.4f}" for a, b, c in strong))
        if self.warnings:
            lines.append("")
            lines.extend(f"warning: {text}" for text in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Everything but the data, as plain JSON-ready values (NaN and inf -> null)."""
        return json_ready(
            {
                "model": self.model,
                "method": self.method,
                "loss": self.loss,
                "success": self.success,
                "status": self.status,
                "message": self.message,
                "params": self.params,
                "stderr": self.stderr,
                "fixed": self.fixed,
                "covariance": self.covariance,
                "correlation": self.correlation,
                "cost": self.cost,
                "loss_value": self.loss_value,
                "residual_std": self.residual_std,
                "dof": self.dof,
                "evaluations": self.evaluations,
                "jacobians": self.jacobians,
                "steps": self.steps,
                "condition": self.condition,
                "not_identifiable": self.not_identifiable,
                "warnings": self.warnings,
                "seconds": self.seconds,
                "history": self.history,
            }
        )

    def to_json(self, path: str | Path | None = None) -> str:
        """The result as JSON text; also written to ``path`` when given."""
        text = dumps(self.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    def plot(self, path: str | Path) -> Path:
        """Save a PNG: data and fitted curve, and a residuals panel below."""
        from ..plot import plot_fit

        return plot_fit(self, path)
