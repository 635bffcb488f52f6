"""The solvers behind `fit`: Levenberg-Marquardt (default) and the gradient-based optimisers
L-BFGS, Adam and SGD, which minimise cost = sum rho(r^2) directly. One row per method in `SOLVERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import UsageError
from .lm import Outcome
from .one_problem import levenberg_marquardt

# Default step limits and learning rates; SGD's is the blog's.
DEFAULT_STEPS = {"lm": 1000, "lbfgs": 500, "adam": 5000, "sgd": 2000}
LEARNING_RATES = {"lbfgs": 1.0, "adam": 1e-2, "sgd": 1e-6}


def _gradient_descent(optimizer_name: str):
    def solve(
        residuals: Callable,
        linearize: Callable,
        cost_of: Callable,
        theta: torch.Tensor,
        *,
        max_steps: int,
        learning_rate: float | None = None,
        on_step: Callable | None = None,
        objective: Callable,
        shards=None,
        **_,
    ) -> Outcome:
        rate = LEARNING_RATES[optimizer_name] if learning_rate is None else learning_rate
        leaf = theta.detach().clone().requires_grad_()
        if optimizer_name == "lbfgs":
            optimizer = torch.optim.LBFGS(
                [leaf],
                lr=rate,
                max_iter=20,
                line_search_fn="strong_wolfe",
                tolerance_grad=1e-15,
                tolerance_change=1e-15,
                history_size=20,
            )
        elif optimizer_name == "adam":
            optimizer = torch.optim.Adam([leaf], lr=rate)
        else:
            optimizer = torch.optim.SGD([leaf], lr=rate)
        evaluations = 0
        best_theta, best_cost = theta.detach().clone(), math.inf
        history: list[float] = []

        def closure():
            nonlocal evaluations
            optimizer.zero_grad()
            with torch.enable_grad():
                value = objective(leaf)
                value.backward()
            evaluations += 1
            if shards is not None:  # the cost is a sum over every rank's rows: so is its gradient
                shards.all_reduce_gradient(leaf)
                value = value.detach().new_tensor(shards.sum(float(value)))
            return value

        # adam and sgd have no convergence test: reaching the step limit is all they can report
        status = "step_limit"
        for step in range(max_steps):
            before = leaf.detach().clone()
            # the value returned is the cost at the parameters before the step
            value = float(optimizer.step(closure).detach())
            if not math.isfinite(value):
                status = "nonfinite"
                break
            if value < best_cost:
                best_theta, best_cost = before, value
            history.append(value)
            if on_step is not None:
                on_step(step + 1, value)
            if optimizer_name == "lbfgs" and len(history) > 1 and abs(history[-2] - value) <= 1e-15 * abs(value):
                status = "ftol"
                break
        final = cost_of(residuals(leaf.detach()))
        if math.isfinite(final) and final <= best_cost:
            best_theta, best_cost = leaf.detach().clone(), final
        if status == "step_limit" and optimizer_name == "lbfgs":
            status = "max_steps"
        return Outcome(
            theta=best_theta,
            status=status,
            cost=best_cost,
            evaluations=evaluations + 1,
            jacobians=evaluations,
            steps=len(history),
            history=history,
        )

    return solve


def _lm(residuals, linearize, cost_of, theta, *, max_steps, on_step=None, **options) -> Outcome:
    options.pop("objective", None)
    options.pop("learning_rate", None)
    return levenberg_marquardt(residuals, linearize, cost_of, theta, max_steps=max_steps, on_step=on_step, **options)


SOLVERS: dict[str, Callable[..., Outcome]] = {
    "lm": _lm,
    "lbfgs": _gradient_descent("lbfgs"),
    "adam": _gradient_descent("adam"),
    "sgd": _gradient_descent("sgd"),
}


def get_solver(method: str) -> Callable[..., Outcome]:
    """The solver for ``method`` in {"lm", "lbfgs", "adam", "sgd"}."""
    if method not in SOLVERS:
        raise UsageError(f"unknown method {method!r}: choose one of {{{', '.join(SOLVERS)}}}")
    return SOLVERS[method]
