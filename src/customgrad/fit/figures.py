"""A fit's figures: data with the fitted curve, its 2-sigma band and the residuals (`FitResult.plot`),
and a parameter's profile (`FitResult.plot_profile`). matplotlib is imported when one is drawn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plot import _pyplot, check_image_path, save_figure

if TYPE_CHECKING:
    from pathlib import Path

    from .profile import Fitted


#: Points of the grid the fitted model is drawn on (one predictor), over the data's range.
CURVE_POINTS = 1000


def plot_fit(result: Fitted, path: str | Path, bands: str | None = None, ylabel: str = "y") -> Path:
    """Save a PNG: data and fitted model against the first predictor, and the residuals y - fit below.

    With one predictor the model is drawn on a dense grid over the data's range (as lmfit does), so
    its shape between data points shows; with several, its values at the data points. With ``bands``
    ("confidence" or "prediction"), the 2-sigma band around the curve is shaded. ``ylabel`` names the
    response on the vertical axes.
    """
    import numpy as np

    plt = _pyplot()
    data = result.data
    name, x = next(iter(data["x"].items()))
    y, fitted = data["y"], data["fitted"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if data.get("sigma") is not None:
        top.errorbar(x, y, yerr=data["sigma"], fmt=".", markersize=3, color="0.45", label="data", zorder=1)
    else:
        top.plot(x, y, ".", markersize=3, color="0.45", label="data", zorder=3)
    curve = _dense_curve(result, name, x, fitted)
    if curve is not None:
        top.plot(*curve, "-", color="C3", label="fit")
    else:
        top.plot(x, fitted, "o", markersize=3, markerfacecolor="none", color="C3", label="fit at the data")
    if bands is not None and result.source is not None:
        _shade_band(top, result, bands, name, x)
    # A pole in the data (tan) would squash the plot: clip the view to the bulk of the data and the fit.
    finite_y = y[np.isfinite(y)]
    bulk = float(np.quantile(np.abs(finite_y), 0.9)) if len(finite_y) else 1.0
    span = max(float(np.abs(fitted[np.isfinite(fitted)]).max(initial=0.0)), bulk) * 1.3 + 1e-9
    drawn = finite_y if curve is None else np.concatenate([finite_y, curve[1][np.isfinite(curve[1])]])
    if float(np.abs(drawn).max(initial=0.0)) > 3 * span:
        top.set_ylim(-span, span)
    top.set_ylabel(ylabel)
    top.set_title(f"{result.model}  ({result.method}, cost {result.cost:.6g})", fontsize=9)
    top.legend(loc="best", fontsize=8)
    bottom.axhline(0.0, color="0.6", linewidth=0.8)
    bottom.plot(x, y - fitted, ".", markersize=3, color="C0")
    bottom.set_xlabel(name)
    bottom.set_ylabel(f"residual ({ylabel} - fit)")
    return save_figure(figure, path)


def _dense_curve(result: Fitted, name: str, x, fitted):
    """(grid, model on it) over [min x, max x] by `FitResult.predict`, or None: several predictors, or
    a model that is not pointwise in x (its values at the data differ from the fit's), where a grid
    would mislead.
    """
    import numpy as np

    if result.source is None or len(result.data["x"]) != 1 or len(x) < 2:
        return None
    grid = np.linspace(float(np.min(x)), float(np.max(x)), CURVE_POINTS)

    def at(points):
        return result.predict({name: points} if result.source.x_is_dict else points)

    try:
        at_data, values = at(x), at(grid)
    except Exception:  # noqa: BLE001 - a callable model that only takes the data's shape: draw at the data
        return None
    agree = np.isclose(at_data, fitted, rtol=1e-9, atol=0.0) | (np.isnan(at_data) & np.isnan(fitted))
    if not agree.all():
        return None
    return grid, np.where(np.isfinite(values), values, np.nan)


def _shade_band(axes, result: Fitted, kind: str, name: str, x) -> None:
    """Fill the 2-sigma band: on a fine grid for one predictor, at the data points for several."""
    import numpy as np

    if len(result.data["x"]) == 1 and len(x) > 1:
        grid = np.linspace(float(x.min()), float(x.max()), 400)
        at = {name: grid} if result.source.x_is_dict else grid
        curve, half = result.predict(at), result.eval_uncertainty(at, sigma=2, kind=kind)
    else:
        order = np.argsort(x, kind="stable")
        grid, curve = x[order], result.data["fitted"][order]
        half = result.eval_uncertainty(sigma=2, kind=kind)[order]
    if np.isfinite(half).any():
        axes.fill_between(grid, curve - half, curve + half, color="C3", alpha=0.2, linewidth=0, label=f"2σ {kind} band")


def plot_profile(result: Fitted, name: str, path: str | Path) -> Path:
    """Save a figure of a parameter's profile: the sigma level it reaches against its value, the intervals
    found, and the quadratic profile that value +- t stderr assumes."""
    import numpy as np

    from .goodness import profile_probability
    from .profile import profile_curve

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
        grid = np.linspace(min(values), max(values), CURVE_POINTS)  # a curve, not segments between the profile's points
        excess = ((grid - best) / stderr) ** 2
        quadratic = best_cost + excess if absolute else best_cost * (1 + excess / dof)
        assumed = [profile_probability(cost, best_cost, dof, absolute=absolute) for cost in quadratic]
        axes.plot(grid, assumed, ":", color="0.5", label="quadratic (from stderr)")
    for index, (sigma, (low, high)) in enumerate(sorted(result.source.intervals[name].items())):
        axes.axhline(sigma, color="0.8", linewidth=0.8, label="sigma levels" if index == 0 else None)
        ends = [end for end in (low, high) if np.isfinite(end)]
        for number, end in enumerate(ends):
            label = f"{sigma:g}σ interval" if number == 0 else None
            axes.axvline(end, color=f"C{index + 1}", linestyle="--", linewidth=0.9, label=label)
    axes.axvline(best, color="C3", linewidth=0.9, label=f"best {best:.6g}")
    axes.set_ylim(0, 1.6 * max(result.source.intervals[name]))
    axes.set_xlabel(name)
    axes.set_ylabel("sigma level of the profile")
    axes.set_title(f"profile of {name} in {result.model}", fontsize=9)
    axes.legend(loc="best", fontsize=8)
    return save_figure(figure, path)
