"""The check battery's run time on correct Functions: in this process (threads) vs in a worker process.

The difference is the worker's start-up (a fresh Python importing torch and the Function). Also the
battery's time against the input size, which directional probes keep nearly flat. Prints tables with
ratios, all measured side by side in this process.

Run: ``python benchmarks/bench_check.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import customgrad
from customgrad.library import P2, LegendreP3


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def isolation_table(repeats: int) -> None:
    print(f"{'Function':<22} {'thread (s)':>11} {'process (s)':>12} {'difference (s)':>15} {'ratio':>7}")
    for fn, shape in ((P2, (5,)), (LegendreP3, (3, 4))):
        x = torch.randn(shape, dtype=torch.float64)
        seconds = {}
        for mode in ("thread", "process"):
            customgrad.check(fn, x, compile=False, isolation=mode)  # warm-up
            seconds[mode] = best_of(
                repeats, lambda fn=fn, x=x, m=mode: customgrad.check(fn, x, compile=False, isolation=m)
            )
        name = f"{fn.__name__}{list(shape)}"
        difference = seconds["process"] - seconds["thread"]
        ratio = seconds["process"] / seconds["thread"]
        print(f"{name:<22} {seconds['thread']:>11.3f} {seconds['process']:>12.3f} {difference:>15.3f} {ratio:>7.1f}")


def size_table(repeats: int) -> None:
    product = customgrad.function("x*y")
    print(f"\n{'x*y, inputs':<22} {'battery (s)':>11} {'vs 10x10':>9}")
    base = None
    for n in (10, 30, 60, 140):
        x, y = torch.randn(n, n, dtype=torch.float64), torch.randn(n, n, dtype=torch.float64)
        seconds = best_of(repeats, lambda x=x, y=y: customgrad.check(product, x, y, compile=False, isolation="thread"))
        base = base or seconds
        print(f"{f'{n}x{n}':<22} {seconds:>11.3f} {seconds / base:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    isolation_table(args.repeats)
    size_table(args.repeats)


if __name__ == "__main__":
    main()
