"""The blog's fit with ``--method lm`` (a + b*P2(c*x + d) to tan x, 2000 points): time after warm-up.

Prints the best and median of ``--repeat`` runs of `fit_experiment("blog", method="lm")`, the same call
``customgrad fit --method lm`` makes, and SciPy's ``least_squares(method="lm")`` on the same data and
start (tight tolerances, finite-difference Jacobian) in the same process.

    PYTHONPATH=src python benchmarks/bench_fit.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from customgrad.experiments import get_experiment
from customgrad.fit.api import fit_experiment

TARGET_MS = 20.0


def scipy_blog() -> float:
    """SciPy's LM on the blog's problem (float64, same start); returns the cost sum r^2."""
    from scipy.optimize import least_squares

    experiment = get_experiment("blog")
    x, y = (values.double().numpy() for values in experiment.data())
    start = np.array([float(value) for value in experiment.initial_params(0).values()])

    def residuals(p):
        inner = p[2] * x + p[3]
        return p[0] + p[1] * (inner**2 + 2 * inner) - y

    solution = least_squares(residuals, start, method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=100000)
    return 2 * solution.cost


def timed(run, repeat: int) -> list[float]:
    run()  # warm-up: parsing, code generation, first dispatch
    times = []
    for _ in range(repeat):
        begin = time.perf_counter()
        run()
        times.append(1e3 * (time.perf_counter() - begin))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    result = fit_experiment("blog", method="lm")
    ours = timed(lambda: fit_experiment("blog", method="lm"), args.repeat)
    scipy_cost = scipy_blog()
    scipy = timed(scipy_blog, args.repeat)
    print(
        f"customgrad lm: best {min(ours):.1f} ms, median {statistics.median(ours):.1f} ms "
        f"(target <= {TARGET_MS:g} ms); cost {result.cost:.10g}, {result.jacobians} Jacobians, "
        f"{result.evaluations} evaluations, status {result.status}"
    )
    print(f"scipy lm:      best {min(scipy):.1f} ms, median {statistics.median(scipy):.1f} ms; cost {scipy_cost:.10g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
