"""The built-in experiments: the blog's fit of a + b P2(c x + d) to tan(x), and the PyTorch
tutorial's fit of a + b P3(c + d x) to sin(x), both by plain full-batch gradient descent.

Each run is faithful to its source (float32, same initialisation order, same learning rate, same
loss = sum of squared errors, same update), with the source's bugs fixed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import library
from .errors import UsageError
from .strict_json import json_ready

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Experiment:
    """A built-in experiment: data y = target(x) on a grid, a model, an initialisation, an optimiser."""

    name: str
    description: str
    target_name: str
    target: Callable[[torch.Tensor], torch.Tensor]
    model_text: str
    model: Callable[[Params, torch.Tensor], torch.Tensor]
    # The same model as a formula over x and the parameters, for `customgrad.fit`.
    formula: str
    initial_params: Callable[[int], Params]
    learning_rate: float
    steps: int = 2000
    points: int = 2000
    log_every: int = 100
    dtype: torch.dtype = torch.float32

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid x = linspace(-pi, pi, points) and y = target(x), in the experiment's dtype."""
        x = torch.linspace(-math.pi, math.pi, self.points, dtype=self.dtype)
        return x, self.target(x)

    def result_line(self, params: Params) -> str:
        """The source's closing line, ``Result: y = ...``, with the numbers filled in."""
        text = self.model_text
        for name, value in params.items():
            text = text.replace(f"<{name}>", repr(float(value.item())))
        return f"Result: y = {text}"


def _blog_initial_params(seed: int) -> Params:
    # The blog draws a, b, c, d in this order from the default generator.
    torch.manual_seed(seed)
    return {name: torch.randn((), dtype=torch.float32) for name in "abcd"}


def _tutorial_initial_params(seed: int) -> Params:
    # The tutorial starts from fixed values (the seed is unused), chosen so that it converges.
    del seed
    values = {"a": 0.0, "b": -1.0, "c": 0.0, "d": 0.3}
    return {name: torch.full((), value, dtype=torch.float32) for name, value in values.items()}


EXPERIMENTS: dict[str, Experiment] = {
    "blog": Experiment(
        name="blog",
        description="the blog: y = a + b*P2(c*x + d), P2(x) = x^2 + 2x, fitted to tan(x) by SGD",
        target_name="tan",
        target=torch.tan,
        model_text="<a> + <b> * P2(<c> x + <d>)",
        model=lambda p, x: p["a"] + p["b"] * library.P2.apply(p["c"] * x + p["d"]),
        formula="a + b*P2(c*x + d)",
        initial_params=_blog_initial_params,
        learning_rate=1e-6,
    ),
    "tutorial": Experiment(
        name="tutorial",
        description="PyTorch's tutorial: y = a + b*P3(c + d*x), P3 = Legendre, fitted to sin(x) by SGD",
        target_name="sin",
        target=torch.sin,
        model_text="<a> + <b> * P3(<c> + <d> x)",
        model=lambda p, x: p["a"] + p["b"] * library.LegendreP3.apply(p["c"] + p["d"] * x),
        formula="a + b*LegendreP3(c + d*x)",
        initial_params=_tutorial_initial_params,
        learning_rate=5e-6,
    ),
}


def get_experiment(name: str) -> Experiment:
    """Look up a built-in experiment by name, with an error that lists the known ones."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        known = ", ".join(EXPERIMENTS)
        raise UsageError(f"unknown experiment {name!r}: choose one of {{{known}}}") from None


@dataclass
class ExperimentRun:
    """What one gradient-descent run of an experiment produced."""

    experiment: Experiment
    params: dict[str, float]
    losses: list[float]
    logged: list[tuple[int, float]]
    settings: dict[str, float | int | str]
    seconds: float
    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    fitted: torch.Tensor = field(repr=False)
    # The step (numbered as the log is) whose loss was NaN or inf, where the run stopped; None if none.
    diverged_at: int | None = None

    @property
    def divergence(self) -> str | None:
        """Why the run stopped early, in words (None when it ran all its steps)."""
        if self.diverged_at is None:
            return None
        rate = self.settings["learning_rate"]
        return (
            f"the run diverged at step {self.diverged_at}: the loss became {self.losses[-1]} "
            f"(learning rate {rate:g}; the experiment's own is {self.experiment.learning_rate:g}: try a smaller --lr)"
        )

    def to_dict(self) -> dict:
        """Parameters, loss history and settings, ready for strict JSON (NaN and inf as None)."""
        return json_ready(
            {
                "experiment": self.experiment.name,
                "model": self.experiment.description,
                "settings": self.settings,
                "params": self.params,
                "final_loss": self.losses[-1] if self.losses else None,
                "diverged_at": self.diverged_at,
                "logged_losses": [{"step": t, "loss": loss} for t, loss in self.logged],
                "loss_history": self.losses,
                "seconds": self.seconds,
            }
        )


def run_experiment(
    experiment: Experiment,
    *,
    steps: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> ExperimentRun:
    """Run an experiment's gradient descent: loss = sum (model(x) - y)^2, p -= lr * dloss/dp.

    Parameters
    ----------
    experiment : Experiment
        Which built-in experiment to run (see `EXPERIMENTS`).
    steps : int, optional
        Number of full-batch steps; the experiment's own (2000) by default.
    learning_rate : float, optional
        Step size; the experiment's own by default.
    seed : int
        Seed of ``torch.manual_seed`` before the random initial values are drawn.
    on_step : callable, optional
        Called as ``on_step(t, loss)`` after every step (progress bars, logging).

    A step whose loss is NaN or inf ends the run there (`ExperimentRun.diverged_at`): no step after
    it could be finite again.
    """
    steps = experiment.steps if steps is None else steps
    learning_rate = experiment.learning_rate if learning_rate is None else learning_rate
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps must be a positive integer, got {steps!r}")
    if not math.isfinite(learning_rate) or learning_rate <= 0:
        raise UsageError(f"learning rate must be a finite positive number, got {learning_rate!r}")
    x, y = experiment.data()
    params = experiment.initial_params(seed)
    for value in params.values():
        value.requires_grad_(True)
    losses: list[float] = []
    logged: list[tuple[int, float]] = []
    start = time.perf_counter()
    diverged_at = None
    for t in range(steps):
        y_pred = experiment.model(params, x)
        loss = (y_pred - y).pow(2).sum()
        loss_value = loss.item()
        losses.append(loss_value)
        if t % experiment.log_every == experiment.log_every - 1:
            logged.append((t, loss_value))
        if not math.isfinite(loss_value):
            diverged_at = t
            break
        loss.backward()
        with torch.no_grad():
            for value in params.values():
                value -= learning_rate * value.grad
                value.grad = None
        if on_step is not None:
            on_step(t, loss_value)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        fitted = experiment.model(params, x)
    return ExperimentRun(
        experiment=experiment,
        params={name: float(value.item()) for name, value in params.items()},
        losses=losses,
        logged=logged,
        settings={
            "experiment": experiment.name,
            "steps": steps,
            "learning_rate": learning_rate,
            "seed": seed,
            "dtype": str(experiment.dtype).replace("torch.", ""),
            "points": experiment.points,
        },
        seconds=seconds,
        x=x,
        y=y,
        fitted=fitted,
        diverged_at=diverged_at,
    )


def explain_blog_fit(x: torch.Tensor, y: torch.Tensor) -> str:
    """Why a + b P2(c x + d) fits tan(x) on [-pi, pi] poorly, with numbers computed from the data."""
    y64 = y.double()
    total = float((y64**2).sum())
    nearest = torch.topk(y64.abs(), 2).indices
    share = float((y64[nearest] ** 2).sum()) / total
    xs = ", ".join(f"{float(x[i]):+.7f}" for i in sorted(nearest.tolist()))
    return (
        "Why this fit stays poor: tan(x) has poles at x = +-pi/2 inside [-pi, pi]. The two grid points "
        f"nearest them (x = {xs}, |tan x| = {float(y64[nearest].abs().min()):.1f}) carry "
        f"{100 * share:.0f}% of sum(tan^2), and a + b*P2(c*x + d) = a + b*((c*x + d)^2 + 2*(c*x + d)) "
        "is only a re-parametrised quadratic in x, which cannot follow tan. Plain gradient descent "
        "with lr 1e-6 barely moves from its random start either; 'customgrad fit --method lm' finds "
        "the best this model can do and shows which parameters the data cannot determine."
    )
