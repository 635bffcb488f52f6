"""Batched fitting: customgrad.fit_batch against a loop of SciPy curve_fit on the same curves, same process.

B curves of 64 points, each a Gaussian plus offset (4 parameters) with noise. Prints the time of each
side (fit_batch with its default engine, native where a C compiler is found, and with engine="torch"),
the speed-up, and how well the answers agree (relative parameter difference, and how many curves
reach a lower or equal cost than SciPy's).

    PYTHONPATH=src python benchmarks/bench_batch.py [--curves 10000] [--scipy-curves 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import curve_fit

from customgrad import fit_batch

MODEL = "a*exp(-(x-m)**2/(2*s**2))+c"
START = {"a": 1.0, "m": 0.0, "s": 1.0, "c": 0.0}


def gaussian(x, a, m, s, c):
    return a * np.exp(-((x - m) ** 2) / (2 * s**2)) + c


def make_curves(count: int, points: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` noisy Gaussians plus offset on a shared x grid."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-3, 3, points)
    truth = [
        rng.uniform(1, 3, count),
        rng.uniform(-1, 1, count),
        rng.uniform(0.4, 1.2, count),
        rng.uniform(-0.5, 0.5, count),
    ]
    y = gaussian(x[None, :], *(column[:, None] for column in truth)) + 0.05 * rng.standard_normal((count, points))
    return x, y


def scipy_loop(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SciPy curve_fit (default tolerances) per curve; parameters (B, 4)."""
    found = np.empty((len(y), 4))
    for i, row in enumerate(y):
        found[i] = curve_fit(gaussian, x, row, p0=list(START.values()))[0]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=int, default=10_000)
    parser.add_argument("--scipy-curves", type=int, default=2_000, help="SciPy loop on this many (time scaled up)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    x, y = make_curves(args.curves)
    fit_batch(MODEL, x, y[:512], params=START, device=args.device)  # warm-up: model, C rows, first dispatch
    begin = time.perf_counter()
    batch = fit_batch(MODEL, x, y, params=START, device=args.device)
    if args.device != "cpu":
        torch.cuda.synchronize()
    ours = time.perf_counter() - begin
    begin = time.perf_counter()
    loose = fit_batch(MODEL, x, y, params=START, device=args.device, ftol=1e-8, xtol=1e-8, gtol=1e-8)
    if args.device != "cpu":
        torch.cuda.synchronize()
    ours_loose = time.perf_counter() - begin
    begin = time.perf_counter()
    fit_batch(MODEL, x, y, params=START, device=args.device, engine="torch")
    tensor_engine = time.perf_counter() - begin
    count = min(args.scipy_curves, args.curves)
    begin = time.perf_counter()
    reference = scipy_loop(x, y[:count])
    theirs = (time.perf_counter() - begin) * args.curves / count
    found = np.stack([batch.params[name][:count] for name in START], axis=1)
    relative = np.abs(found - reference) / np.maximum(np.abs(reference), 1e-12)
    found_loose = np.stack([loose.params[name][:count] for name in START], axis=1)
    relative_loose = np.abs(found_loose - reference) / np.maximum(np.abs(reference), 1e-12)
    scipy_cost = ((gaussian(x[None, :], *(reference[:, j : j + 1] for j in range(4))) - y[:count]) ** 2).sum(1)
    print(f"{args.curves} curves x {x.size} points, 4 parameters, on {args.device} ({torch.get_num_threads()} threads)")
    print(f"{'':28s} {'seconds':>9s} {'ms/curve':>9s}")
    print(f"{'customgrad.fit_batch':28s} {ours:9.3f} {1e3 * ours / args.curves:9.4f}   (tolerances 1e-15)")
    print(
        f"{'  at SciPy tolerances':28s} {ours_loose:9.3f} {1e3 * ours_loose / args.curves:9.4f}   (1e-8, as curve_fit)"
    )
    print(f"{'  engine=torch':28s} {tensor_engine:9.3f} {1e3 * tensor_engine / args.curves:9.4f}   (tolerances 1e-15)")
    print(f"{'SciPy curve_fit loop':28s} {theirs:9.3f} {1e3 * theirs / args.curves:9.4f}   (timed on {count})")
    print(
        f"speed-up: {theirs / ours:.1f}x (at SciPy's tolerances {theirs / ours_loose:.1f}x; "
        f"engine=torch {theirs / tensor_engine:.1f}x)"
    )
    print(batch.summary().splitlines()[1])
    print(
        f"agreement with SciPy on {count} curves: median rel. diff {np.median(relative.max(1)):.1e}, "
        f"{(relative.max(1) < 1e-6).mean():.1%} within 1e-6; our cost <= SciPy's (1 + 1e-9) on "
        f"{(batch.cost[:count] <= scipy_cost * (1 + 1e-9)).mean():.1%}"
    )
    print(
        f"at SciPy's tolerances: median rel. diff {np.median(relative_loose.max(1)):.1e}, "
        f"{(relative_loose.max(1) < 1e-6).mean():.1%} within 1e-6; converged {loose.success.mean():.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
