"""Figure of a batch of fits: a grid of a few curves with their fits, and histograms of the parameters."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from .plot import _pyplot, save_figure

if TYPE_CHECKING:
    from .fit.result import BatchFitResult

# Curves drawn in the grid (evenly spaced through the batch).
SHOWN = 6


def plot_batch(result: BatchFitResult, path: str | Path) -> Path:
    """Save a figure: up to `SHOWN` curves with their fitted curves, then one histogram per parameter."""
    import numpy as np

    plt = _pyplot()
    fitted = [i for i, status in enumerate(result.status) if status != "no_data"]  # curves with data
    shown = sorted({fitted[round(k)] for k in np.linspace(0, len(fitted) - 1, min(SHOWN, len(fitted)))})
    shared = result.shared.params if result.shared is not None else {}
    names = [name for name in result.stderr if name not in shared]  # a shared value is in the title
    columns = 3
    rows = math.ceil(len(shown) / columns) + math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False)
    flat = list(axes.flat)
    for axis, i in zip(flat, shown, strict=False):
        curve = result[i]
        x = next(iter(curve.data["x"].values()))
        order = np.argsort(x, kind="stable")
        axis.plot(x, curve.data["y"], ".", markersize=2, color="0.45")
        axis.plot(x[order], curve.data["fitted"][order], "-", color="C3")
        axis.set_title(f"curve {i}: {curve.status}, cost {curve.cost:.3g}", fontsize=8)
    first = math.ceil(len(shown) / columns) * columns
    converged = result.success
    for axis, name in zip(flat[first:], names, strict=False):
        values = result.params[name][converged]
        values = values[np.isfinite(values)]
        axis.hist(values, bins=min(50, max(5, len(values) // 10)), color="C0")
        axis.set_title(f"{name} ({len(values)} converged curves)", fontsize=8)
    for axis in flat[len(shown) : first] + flat[first + len(names) :]:
        axis.set_visible(False)
    joint = [f"{name} = {value:.6g}" + (f" ± {result.shared.stderr[name]:.2g}" if name in result.shared.stderr else "")
             for name, value in shared.items()]  # fmt: skip
    figure.suptitle(
        f"{result.model}: {len(result)} curves" + (f"; shared {', '.join(joint)}" if joint else ""), fontsize=9
    )
    return save_figure(figure, path, dpi=100)
