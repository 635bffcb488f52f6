"""The result of a batch of fits: arrays over curves, a summary by status, CSV/JSON, and each curve's FitResult."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .global_result import SharedParameters
from .result import FitResult, termination_message
from .status import TERMINATION


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
            hint = f": the values of parameter {i!r} are batch.params[{i!r}]" if i in self.params else ""
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
        return html_table.document(
            html_table.table(overview, caption="Batch fit"),
            html_table.notes([underdetermined]),
            *(
                [
                    html_table.table(
                        self._shared_rows(), ("parameter", "value", "stderr"), caption="Shared by every curve"
                    )
                ]
                if self.shared is not None
                else []
            ),
            html_table.table(spread, ("parameter", "median", "5%", "95%"), caption="Converged curves"),
            html_table.table(shown, header, caption="Curves"),
            html_table.notes([more]),
        )

    def _shared_rows(self) -> list[tuple[str, str, str]]:
        """(name, value, stderr) of each shared parameter of a global fit; none for independent curves."""
        if self.shared is None:
            return []
        return [(name, f"{value:.6g}", f"{self.shared.stderr[name]:.3g}") for name, value in self.shared.params.items()]

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
        text = buffer.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """The per-curve rows and the counts by status as JSON (NaN -> null); written to ``path`` when given."""

        def clean(value):
            return value if not isinstance(value, float) or math.isfinite(value) else None

        document = {
            "model": self.model,
            "method": self.method,
            "curves": len(self),
            "status_counts": dict(Counter(self.status)),
            "seconds": self.seconds,
            "results": [{key: clean(value) for key, value in row.items()} for row in self.rows()],
        }
        if self.shared is not None:
            document["shared"] = self.shared.as_dict()
        text = json.dumps(document, indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text
