"""NIST StRD: customgrad.fit(method="lm") against SciPy least_squares(method="lm"), in the same process.

Prints, per problem and starting point, the digits of agreement with the certified values,
-log10(|found - certified| / |certified|) (the minimum over parameters, and over standard errors),
and the time of each; then the count of fits meeting the target (>= 6 digits on every parameter and
>= 4 on every standard error) and the ratio of total times.

    PYTHONPATH=src python benchmarks/bench_nist.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from customgrad.fit import fit, load_nist, nist_names

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nist_reference import SCIPY_TIGHT, digits, scipy_fit  # noqa: E402

PARAM_DIGITS, STDERR_DIGITS = 6.0, 4.0


def run_ours(problem, start):
    result = fit(problem.formula, problem.x, problem.y, params=problem.starts[start], decimal_data=problem.decimal)
    return result.params, result.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timing: best of this many runs")
    args = parser.parse_args()
    problems = [load_nist(name) for name in nist_names()]
    # warm-up (imports, first-call dispatch) for both sides
    run_ours(problems[0], 0)
    scipy_fit(problems[0], 0)
    header = (
        f"{'problem':10s} {'start':>5s} | {'ours: b':>7s} {'se':>5s} {'ms':>7s} | "
        f"{'scipy: b':>8s} {'se':>5s} {'ms':>7s} | {'ratio':>6s}"
    )
    print(header)
    print("-" * len(header))
    totals = {"ours": 0.0, "scipy": 0.0}
    passed = {"ours": 0, "scipy": 0}
    for problem in problems:
        for start in (0, 1):
            line = f"{problem.name:10s} {start + 1:>5d} |"
            times = {}
            for side, runner in (("ours", run_ours), ("scipy", lambda p, s: scipy_fit(p, s, **SCIPY_TIGHT))):
                best = math.inf
                for _ in range(args.repeat):
                    begin = time.perf_counter()
                    params, stderr = runner(problem, start)
                    best = min(best, time.perf_counter() - begin)
                totals[side] += best
                times[side] = best
                d_params = min(digits(params[k], v) for k, v in problem.certified_params.items())
                d_stderr = min(digits(stderr[k], v) for k, v in problem.certified_stderr.items())
                ok = d_params >= PARAM_DIGITS and d_stderr >= STDERR_DIGITS
                passed[side] += ok
                mark = " " if ok else "*"
                line += f" {d_params:7.1f} {d_stderr:5.1f} {1e3 * best:7.1f}{mark}|"
            print(f"{line} {times['ours'] / times['scipy']:6.2f}")
    fits = 2 * len(problems)
    print("-" * len(header))
    print(
        f"meeting the target (>= {PARAM_DIGITS:g} digits on params, >= {STDERR_DIGITS:g} on stderr; "
        f"* = missed): customgrad {passed['ours']}/{fits}, scipy {passed['scipy']}/{fits}"
    )
    print(
        f"total time (best of {args.repeat}): customgrad {totals['ours']:.3f} s, "
        f"scipy {totals['scipy']:.3f} s "
        f"(least_squares lm, ftol=xtol=gtol=1e-15), ratio customgrad/scipy = "
        f"{totals['ours'] / totals['scipy']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
