"""Figures: data with the fitted curve, and the loss curve. matplotlib is imported lazily, Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from .experiments import ExperimentRun
    from .fit.result import FitResult


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


def plot_experiment(run: ExperimentRun, path: str | Path) -> Path:
    """Save a PNG with two panels: data and fitted curve, and the loss per step (log scale)."""
    plt = _pyplot()
    x = run.x.double().numpy()
    y = run.y.double().numpy()
    fitted = run.fitted.double().numpy()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(x, y, ".", markersize=2, color="0.5", label=f"data: {run.experiment.target_name}(x)")
    left.plot(x, fitted, "-", color="C3", label="fitted model")
    # tan's poles would squash the plot: clip the view to the bulk of the data and the fit.
    span = max(abs(fitted).max(), float(sorted(abs(y))[int(0.9 * (len(y) - 1))])) * 1.3 + 1e-9
    left.set_ylim(-span, span)
    left.set_xlabel("x")
    left.set_ylabel("y")
    left.set_title(run.experiment.description, fontsize=9)
    left.legend(loc="best", fontsize=8)
    right.semilogy(range(len(run.losses)), run.losses, color="C0")
    right.set_xlabel("step")
    right.set_ylabel("loss = sum of squared errors")
    right.set_title("loss", fontsize=9)
    figure.tight_layout()
    path = check_image_path(path, "plot path")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_fit(result: FitResult, path: str | Path, bands: str | None = None) -> Path:
    """Save a PNG: data and fitted curve against the first predictor, and the residuals y - fit below.

    With ``bands`` ("confidence" or "prediction"), the 2-sigma band around the curve is shaded.
    """
    import numpy as np

    plt = _pyplot()
    data = result.data
    name, x = next(iter(data["x"].items()))
    y, fitted = data["y"], data["fitted"]
    order = np.argsort(x, kind="stable")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if data.get("sigma") is not None:
        top.errorbar(x, y, yerr=data["sigma"], fmt=".", markersize=3, color="0.45", label="data", zorder=1)
    else:
        top.plot(x, y, ".", markersize=3, color="0.45", label="data")
    top.plot(x[order], fitted[order], "-", color="C3", label="fit")
    if bands is not None and result.source is not None:
        _shade_band(top, result, bands, name, x, order)
    # A pole in the data (tan) would squash the plot: clip the view to the bulk of the data and the fit.
    bulk = float(np.quantile(np.abs(y), 0.9)) if len(y) else 1.0
    span = max(float(np.abs(fitted).max(initial=0.0)), bulk) * 1.3 + 1e-9
    if float(np.abs(y).max(initial=0.0)) > 3 * span:
        top.set_ylim(-span, span)
    top.set_ylabel("y")
    top.set_title(f"{result.model}  ({result.method}, cost {result.cost:.6g})", fontsize=9)
    top.legend(loc="best", fontsize=8)
    bottom.axhline(0.0, color="0.6", linewidth=0.8)
    bottom.plot(x, y - fitted, ".", markersize=3, color="C0")
    bottom.set_xlabel(name)
    bottom.set_ylabel("residual")
    figure.tight_layout()
    path = check_image_path(path, "plot path")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _shade_band(axes, result: FitResult, kind: str, name: str, x, order) -> None:
    """Fill the 2-sigma band: on a fine grid for one predictor, at the data points for several."""
    import numpy as np

    if len(result.data["x"]) == 1 and len(x) > 1:
        grid = np.linspace(float(x.min()), float(x.max()), 400)
        at = {name: grid} if result.source.x_is_dict else grid
        curve, half = result.predict(at), result.eval_uncertainty(at, sigma=2, kind=kind)
    else:
        grid, curve = x[order], result.data["fitted"][order]
        half = result.eval_uncertainty(sigma=2, kind=kind)[order]
    if np.isfinite(half).any():
        axes.fill_between(grid, curve - half, curve + half, color="C3", alpha=0.2, linewidth=0, label=f"2σ {kind} band")


def plot_profile(result: FitResult, name: str, path: str | Path) -> Path:
    """Save a figure of a parameter's profile: the sigma level it reaches against its value, the intervals
    found, and the quadratic profile that value +- t stderr assumes."""
    import numpy as np

    from .fit.distributions import profile_probability
    from .fit.profile import profile_curve

    path = check_image_path(path, "plot path")
    values, costs = profile_curve(result, name)
    best_cost, best = min(costs), result.params[name]
    dof, absolute = result.nfree, result.absolute_sigma
    levels = [profile_probability(cost, best_cost, dof, absolute=absolute) for cost in costs]
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(values, levels, ".-", color="C0", label="profile")
    stderr = result.stderr[name]
    if np.isfinite(stderr) and stderr > 0:  # what value +- t stderr assumes: a parabola in chi2
        excess = ((np.asarray(values) - best) / stderr) ** 2
        quadratic = best_cost + excess if absolute else best_cost * (1 + excess / dof)
        assumed = [profile_probability(cost, best_cost, dof, absolute=absolute) for cost in quadratic]
        axes.plot(values, assumed, ":", color="0.5", label="quadratic (from stderr)")
    for index, (sigma, (low, high)) in enumerate(sorted(result.source.intervals[name].items())):
        axes.axhline(sigma, color="0.8", linewidth=0.8)
        for end in (low, high):
            if np.isfinite(end):
                axes.axvline(end, color=f"C{index + 1}", linestyle="--", linewidth=0.9)
    axes.axvline(best, color="C3", linewidth=0.9, label=f"best {best:.6g}")
    axes.set_ylim(0, 1.6 * max(result.source.intervals[name]))
    axes.set_xlabel(name)
    axes.set_ylabel("sigma level of the profile")
    axes.set_title(f"profile of {name} in {result.model}", fontsize=9)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
