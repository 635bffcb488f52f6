"""How a fit can stop: the status table every engine reports in (`TERMINATION`), the status codes the
compiled and tensor solvers exchange (`STATUSES`, `CODE`, `CONVERGED`) and the progress bar's text.

The bottom of the fit package: it imports nothing of customgrad.
"""

from __future__ import annotations

# Termination reasons: status -> (success, message). One row per way a solver can stop. ``{steps}`` is
# the step-limit option as the caller spells it (`termination_message`).
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
        "stopped: the step limit was reached before convergence; raise {steps} or start closer to the solution",
    ),
    "nonfinite": (
        False,
        "stopped: the model gave NaN or inf; the best parameters found before that are kept",
    ),
    "underflow": (
        False,
        "stopped: the squared residuals underflow float64 (residuals below ~1e-154), so the solver saw a "
        "zero cost; use method 'lm' with the linear loss (it rescales), or rescale the data",
    ),
    "plateau": (
        False,
        "stopped on a plateau: no parameter changes the model any more at these values (every Jacobian "
        "column vanished, e.g. an exponential that underflowed), so the cost is flat here but not at a "
        "minimum, and a restart with a smaller trust region stayed there; start closer to the solution",
    ),
    "no_data": (False, "not fitted: the curve has no finite data points (fit_batch: NaN results, the others fitted)"),
}


def termination_message(status: str, steps_option: str = "max_steps") -> str:
    """Why a solver stopped (`TERMINATION`), naming the step-limit option as ``steps_option`` (CLI: --steps)."""
    return TERMINATION[status][1].format(steps=steps_option)


# Status codes per problem (0 while running): the names of `TERMINATION` the solvers exchange as integers.
STATUSES = ("", "ftol", "xtol", "gtol", "roundoff", "exact", "drift", "max_steps", "nonfinite", "underflow")
CODE = {name: code for code, name in enumerate(STATUSES)}


# The codes of the statuses that count as converged (`TERMINATION`).
CONVERGED = tuple(code for code, name in enumerate(STATUSES) if name and TERMINATION[name][0])


def progress_message(converged: int, stopped: int, total: int) -> str:
    """The progress bar's text: of ``total`` curves, ``stopped`` are done, ``converged`` of them converged."""
    return f"{converged}/{total} converged, {stopped - converged} stopped otherwise"
