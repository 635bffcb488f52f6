"""One small fit per call: customgrad.fit against SciPy curve_fit on the same 64-point Gaussians, same process.

The issue-11 target: a single small fit costs no more per call than SciPy's ``curve_fit``. Rows: the
model's own compiled library ("native", and "auto" once it is built), a model fitted for the first time
("auto, one-off model": the shared solver library, rows in numpy), the tensor engine ("torch"). Each side
fits the same curves (a Gaussian plus offset, 4 parameters, with noise); rounds alternate between the
sides so that a load spike hits both, and the best round of each is reported.

    PYTHONPATH=src python benchmarks/bench_single.py [--curves 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_batch import MODEL, START, gaussian, make_curves
from scipy.optimize import curve_fit

import customgrad
from customgrad.fit import native, native_library

# The same Gaussian under other names: a model of its own (see "one-off model" below).
ONE_OFF = "h*exp(-(x-u)**2/(2*w**2))+z"
ONE_OFF_START = {"h": 1.0, "u": 0.0, "w": 1.0, "z": 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # The one-off row: a model whose own library is never built (as for a fit run once), so "auto" runs the
    # shared solver library with the model's rows in numpy (`native_library`); built here if missing.
    native.BUILD_AFTER_FITS = 10**9
    native_library.library(build=True)
    x, y = make_curves(args.curves, seed=1)
    start = list(START.values())
    sides = {
        "customgrad.fit (native engine)": lambda row: customgrad.fit(MODEL, x, row, params=START, engine="native"),
        "customgrad.fit (default 'auto')": lambda row: customgrad.fit(MODEL, x, row, params=START),
        "customgrad.fit (auto, one-off model)": lambda row: customgrad.fit(ONE_OFF, x, row, params=ONE_OFF_START),
        "customgrad.fit (engine='torch')": lambda row: customgrad.fit(MODEL, x, row, params=START, engine="torch"),
        "SciPy curve_fit, tolerances 1e-15": lambda row: curve_fit(
            gaussian, x, row, p0=start, ftol=1e-15, xtol=1e-15, gtol=1e-15
        ),
        "SciPy curve_fit, defaults": lambda row: curve_fit(gaussian, x, row, p0=start),
    }
    for run in sides.values():  # warm-up: model compiled, libraries loaded
        run(y[0])
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(args.rounds):
        for name, run in sides.items():
            begin = time.perf_counter()
            for row in y:
                run(row)
            best[name] = min(best[name], (time.perf_counter() - begin) / len(y))
    reference = best["SciPy curve_fit, tolerances 1e-15"]
    print(f"{args.curves} curves x {x.size} points, 4 parameters; best of {args.rounds} alternating rounds")
    print(f"{'':36s} {'ms/call':>9s} {'vs curve_fit (1e-15)':>21s}")
    for name, seconds in best.items():
        print(f"{name:36s} {1e3 * seconds:9.3f} {seconds / reference:20.2f}x")
    fits = [customgrad.fit(MODEL, x, row, params=START) for row in y[:20]]
    found = [curve_fit(gaussian, x, row, p0=start, ftol=1e-15, xtol=1e-15, gtol=1e-15)[0] for row in y[:20]]
    ours = np.array([[result.params[k] for k in START] for result in fits])
    errors = np.array([[result.stderr[k] for k in START] for result in fits])
    their_cost = np.array([((gaussian(x, *p) - row) ** 2).sum() for p, row in zip(found, y)])
    print(
        f"agreement on 20 curves: max |difference| {np.abs(ours - np.array(found)).max():.1e} "
        f"= {(np.abs(ours - np.array(found)) / errors).max():.1e} standard errors; "
        f"cost <= SciPy's (1 + 1e-12) on {np.mean([f.cost <= c * (1 + 1e-12) for f, c in zip(fits, their_cost)]):.0%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
