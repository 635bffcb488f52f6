"""Profile intervals and bands against lmfit 1.3 on the same data and model: time and agreement.

For NIST Misra1a, Rat43 and the tests' seeded noisy peak: `FitResult.conf_interval(sigmas=(1, 2))`
beside lmfit's `ModelResult.conf_interval` (its F-test, lmfit given the exact Jacobian), run in the same
process; the worst gap between the two interval ends as a share of the interval's width; and the worst
relative gap of the 2-sigma confidence band from lmfit's `eval_uncertainty`.

    PYTHONPATH=src:tests python benchmarks/bench_fit_uncertainty.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import customgrad  # noqa: E402
from test_fit_uncertainty import CASES, _lmfit_intervals, lmfit_result  # noqa: E402


def best_time(call, repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = call()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'problem':<10} {'ours (s)':>9} {'lmfit (s)':>9} {'ratio':>6} {'ends / width':>13} {'band rel.':>10}")
    for name in ("Misra1a", "Rat43", "peak"):
        case = CASES[name]
        ours = customgrad.fit(case.formula, case.x, case.y, params=case.start)
        theirs = lmfit_result(case)
        mine, found = best_time(lambda: ours.conf_interval((1, 2)), args.repeat)  # noqa: B023
        reference, expected = best_time(lambda: _lmfit_intervals(theirs, (1, 2)), args.repeat)  # noqa: B023
        gap = max(
            abs(a - b) / (high - low)
            for parameter, levels in expected.items()
            for sigma, (low, high) in levels.items()
            for a, b in zip(found[parameter][sigma], (low, high), strict=True)
        )
        band = ours.eval_uncertainty(sigma=2)
        lmfit_band = theirs.eval_uncertainty(sigma=2, dscale=1e-4)
        band_gap = float(np.max(np.abs(band - lmfit_band) / lmfit_band))
        print(f"{name:<10} {mine:>9.3f} {reference:>9.3f} {mine / reference:>6.2f} {gap:>13.2e} {band_gap:>10.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
