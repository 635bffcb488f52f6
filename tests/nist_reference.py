"""Reference pieces for NIST StRD tests and benchmarks: digits of agreement, and SciPy's LM fit.

SciPy's fit uses the NIST formula evaluated by numpy (an independent evaluation from customgrad's torch
code) and SciPy's own finite-difference Jacobian; its standard errors come from SciPy's Jacobian.
"""

from __future__ import annotations

import ast
import math

import numpy as np
from scipy.optimize import least_squares

_NUMPY = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "atan": np.arctan,
    "pi": np.pi,
}


# SciPy with tolerances as tight as ours (its defaults, 1e-8, stop far earlier: 29 of 54 by the target).
SCIPY_TIGHT = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15, "max_nfev": 100000}


def digits(found: float, certified: float) -> float:
    """Digits of agreement -log10(|found - certified| / |certified|), capped at 11 (NIST's precision)."""
    if not math.isfinite(found):
        return 0.0
    if found == certified:
        return 11.0
    return max(0.0, min(11.0, -math.log10(abs(found - certified) / abs(certified))))


def numpy_model(problem):
    """The problem's formula as a numpy function f(b, **x), compiled from its (trusted, packaged) text."""
    code = compile(ast.parse(problem.formula, mode="eval"), problem.name, "eval")
    names = list(problem.certified_params)

    def evaluate(b, x):
        return eval(code, {"__builtins__": {}, **_NUMPY}, {**dict(zip(names, b, strict=True)), **x})  # noqa: S307

    return evaluate


def scipy_fit(problem, start: int, **options):
    """SciPy ``least_squares(method="lm", **options)``; returns (params, stderr) dicts."""
    model = numpy_model(problem)
    x0 = np.array([problem.starts[start][k] for k in problem.certified_params])
    with np.errstate(all="ignore"):
        solution = least_squares(lambda b: model(b, problem.x) - problem.y, x0, method="lm", **options)
    jacobian = solution.jac
    dof = len(problem.y) - len(x0)
    try:
        covariance = np.linalg.inv(jacobian.T @ jacobian) * (2 * solution.cost / dof)
        stderr = np.sqrt(np.abs(np.diag(covariance)))
    except np.linalg.LinAlgError:
        stderr = np.full(len(x0), np.nan)
    names = list(problem.certified_params)
    return dict(zip(names, solution.x.tolist(), strict=True)), dict(zip(names, stderr.tolist(), strict=True))
