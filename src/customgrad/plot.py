"""Figures: where they may be written, matplotlib (imported lazily, Agg backend), and an experiment's
data, fitted curve and loss. A fit's own figures are `fit.figures`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from .experiments import ExperimentRun


def check_writable(path: str | Path, option: str) -> Path:
    """Fail early, before a long run, when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{option}: {str(path)!r} is a directory; give a file name such as {str(path / 'out')!r}")
    if not parent.is_dir():
        raise UsageError(
            f"{option}: cannot write {str(path)!r}: directory {str(parent)!r} does not exist; "
            "create it or choose another path"
        )
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()  # a run that fails later leaves no empty file behind
    except OSError as error:
        raise UsageError(f"{option}: cannot write {str(path)!r}: {error.strerror}; choose another path") from None
    return path


#: Image formats matplotlib's Agg backend writes, by file suffix (no suffix: PNG).
IMAGE_SUFFIXES = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps", "gif")


def check_image_path(path: str | Path, option: str) -> Path:
    """`check_writable`, and the suffix names an image format matplotlib writes (``fit.png``)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in IMAGE_SUFFIXES:
        raise UsageError(
            f"{option}: cannot write a figure to {str(path)!r}: '.{suffix}' is not an image format; "
            f"use one of {', '.join('.' + s for s in IMAGE_SUFFIXES)} (e.g. fit.png)"
        )
    return check_writable(path, option)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 110) -> Path:
    """Lay ``figure`` out, write it to ``path`` (checked by `check_image_path`) and close it; the path."""
    figure.tight_layout()
    path = check_image_path(path, "plot path")
    figure.savefig(path, dpi=dpi)
    _pyplot().close(figure)
    return path


def plot_experiment(run: ExperimentRun, path: str | Path) -> Path:
    """Save a PNG with two panels: data and fitted curve, and the loss per step (log scale).

    A run that diverged shows what is finite: the data, the fitted curve where it is finite, and the
    losses up to the step where they stopped being finite.
    """
    import numpy as np

    plt = _pyplot()
    x = run.x.double().numpy()
    y = run.y.double().numpy()
    fitted = run.fitted.double().numpy()
    finite = np.isfinite(fitted)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(x, y, ".", markersize=2, color="0.5", label=f"data: {run.experiment.target_name}(x)")
    if finite.any():
        left.plot(x[finite], fitted[finite], "-", color="C3", label="fitted model")
    # tan's poles would squash the plot: clip the view to the bulk of the data and the fit.
    span = max(np.abs(fitted[finite]).max(initial=0.0), float(np.quantile(np.abs(y), 0.9))) * 1.3 + 1e-9
    left.set_ylim(-min(span, 1e300), min(span, 1e300))
    left.set_xlabel("x")
    left.set_ylabel("y")
    title = run.experiment.description
    if run.diverged_at is not None:
        title += f"\ndiverged at step {run.diverged_at}" + ("" if finite.all() else ": the model is not finite")
    left.set_title(title, fontsize=9)
    left.legend(loc="best", fontsize=8)
    losses = np.array(run.losses, dtype=np.float64)
    kept = np.isfinite(losses) & (losses > 0)
    right.semilogy(np.flatnonzero(kept), losses[kept], color="C0")
    right.set_xlabel("step")
    right.set_ylabel("loss = sum of squared errors")
    right.set_title("loss" if run.diverged_at is None else f"loss (not finite from step {run.diverged_at})", fontsize=9)
    return save_figure(figure, path)
