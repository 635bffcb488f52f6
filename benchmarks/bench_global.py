"""Global fit: customgrad.fit_batch with a shared parameter against SciPy least_squares on the dense stacked
problem with ``jac_sparsity`` and method "trf" (the way it is done by hand today), same process.

B curves of 64 points, Gaussians a_b exp(-(x - m_b)^2 / (2 s^2)) + c_b with one shared width s and three
local parameters (a, m, c). SciPy gets the stacked residual, the sparsity pattern of its (64 B) x (1 + 3 B)
Jacobian (so its finite differences take 5 evaluations per Jacobian) and tr_solver="lsmr" (its default
for a sparse Jacobian). The two sides alternate, best of ``--rounds``; SciPy runs on ``--scipy-curves``
curves (it is too slow at 10^4) and the table says so. Prints the times, the ratio per curve, and how
far apart the answers are.

    PYTHONPATH=src:tests python benchmarks/bench_global.py [--curves 10000] [--scipy-curves 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

# isort: off
import customgrad  # before torch: torch's OpenMP runtime then waits passively (`customgrad.openmp`)

# isort: on
import numpy as np
import scipy.sparse
import torch
from scipy.optimize import least_squares

from customgrad import fit_batch

MODEL = "a*exp(-(x-m)**2/(2*s**2))+c"


def make_curves(count: int, points: int = 64, seed: int = 0):
    """``count`` noisy Gaussians with the width 0.8 shared, on one x grid; the start for m near each peak."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-3, 3, points)
    a, m, c = rng.uniform(1, 3, count), rng.uniform(-1, 1, count), rng.uniform(-0.5, 0.5, count)
    y = a[:, None] * np.exp(-((x - m[:, None]) ** 2) / (2 * 0.8**2)) + c[:, None]
    y += 0.05 * rng.standard_normal((count, points))
    return x, y, m + rng.uniform(-0.2, 0.2, count)


def customgrad_fit(x, y, m_start, tolerance: float = 1e-15):
    params = {"s": {"value": 1.0, "shared": True}, "a": 1.5, "m": m_start, "c": 0.0}
    return fit_batch(MODEL, x, y, params=params, ftol=tolerance, xtol=tolerance, gtol=tolerance)


def scipy_fit(x, y, m_start):
    """least_squares(trf, jac_sparsity) on the stacked problem [s, a_0, m_0, c_0, a_1, ...]; returns s."""
    count, points = y.shape

    def residuals(p):
        s, local = p[0], p[1:].reshape(count, 3)
        a, m, c = local[:, :1], local[:, 1:2], local[:, 2:]
        return (a * np.exp(-((x - m) ** 2) / (2 * s * s)) + c - y).ravel()

    rows = np.arange(count * points)
    curve = rows // points
    pattern = scipy.sparse.lil_matrix((count * points, 1 + 3 * count), dtype=int)
    pattern[:, 0] = 1
    for j in range(3):
        pattern[rows, 1 + 3 * curve + j] = 1
    start = np.concatenate([[1.0], np.stack([np.full(count, 1.5), m_start, np.zeros(count)], 1).ravel()])
    solution = least_squares(residuals, start, jac_sparsity=pattern.tocsr(), method="trf", x_scale="jac")
    return solution.x[0], solution


MEMORY_PROBE = """
import resource, sys
sys.path.insert(0, {here!r})
from bench_global import customgrad_fit, make_curves
x, y, m = make_curves({count})
customgrad_fit(x, y[:8], m[:8])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
customgrad_fit(x, y, m)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def peak_memory(count: int) -> float:
    """Peak resident memory a global fit of ``count`` curves adds to a fresh process (after its data), in MB."""
    import os
    import subprocess
    import sys

    code = MEMORY_PROBE.format(here=os.path.dirname(os.path.abspath(__file__)), count=count)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=int, default=10_000)
    parser.add_argument("--scipy-curves", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also the peak memory per curve at 10^3..10^4.5")
    args = parser.parse_args()
    if args.memory:
        for count in (1000, 3000, 10000, 30000):
            peak = peak_memory(count)
            print(f"peak memory of the fit at {count:>6} curves: {peak:7.1f} MB = {1024 * peak / count:.2f} kB/curve")
    x, y, m_start = make_curves(args.curves)
    few = slice(0, args.scipy_curves)
    customgrad_fit(x, y[:8], m_start[:8])  # builds the formula's C rows once (cached on disk)
    times = {"customgrad": [], "scipy": [], "customgrad_small": [], "customgrad_loose": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        result = customgrad_fit(x, y, m_start)
        times["customgrad"].append(time.perf_counter() - start)
        start = time.perf_counter()
        small = customgrad_fit(x, y[few], m_start[few])
        times["customgrad_small"].append(time.perf_counter() - start)
        start = time.perf_counter()
        loose = customgrad_fit(x, y[few], m_start[few], tolerance=1e-8)  # SciPy's default tolerances
        times["customgrad_loose"].append(time.perf_counter() - start)
        start = time.perf_counter()
        scipy_s, solution = scipy_fit(x, y[few], m_start[few])
        times["scipy"].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    per_curve_cg, per_curve_scipy = best["customgrad"] / args.curves, best["scipy"] / args.scipy_curves
    passive = customgrad.openmp.waits_passively()
    print(f"threads: {torch.get_num_threads()} (OpenMP waits {'passively' if passive else 'actively'}), "
          f"64 points per curve, 1 shared + 3 local, best of {args.rounds}")  # fmt: skip
    print(f"{'solver':<50}{'curves':>8}{'seconds':>10}{'ms/curve':>10}")
    table = [
        ("customgrad.fit_batch (shared s)", args.curves, best["customgrad"]),
        ("customgrad.fit_batch (shared s)", args.scipy_curves, best["customgrad_small"]),
        ("  at SciPy's tolerances (1e-8)", args.scipy_curves, best["customgrad_loose"]),
        ("scipy least_squares(trf, jac_sparsity, lsmr)", args.scipy_curves, best["scipy"]),
    ]
    for name, count, seconds in table:
        print(f"{name:<50}{count:>8}{seconds:>10.3f}{1e3 * seconds / count:>10.4f}")
    print(f"ratio at {args.scipy_curves} curves (same problem): {best['scipy'] / best['customgrad_small']:.0f}x")
    print(f"ratio at SciPy's tolerances (1e-8 both): {best['scipy'] / best['customgrad_loose']:.0f}x")
    print(f"ratio per curve (customgrad at {args.curves}, scipy at {args.scipy_curves}): "
          f"{per_curve_scipy / per_curve_cg:.0f}x")  # fmt: skip
    print(
        f"shared s: customgrad {small.shared.params['s']:.12g} +- {small.shared.stderr['s']:.3g} "
        f"(status {small.shared.status}), scipy {scipy_s:.12g} (status {solution.status}, cost "
        f"{float(np.sum(solution.fun**2)):.10g} vs {small.shared.cost:.10g}); "
        f"at {args.curves}: s = {result.shared.params['s']:.12g} ({result.shared.status}); at 1e-8: "
        f"s = {loose.shared.params['s']:.12g} ({loose.shared.status}, cost {loose.shared.cost:.10g})"
    )


if __name__ == "__main__":
    main()
