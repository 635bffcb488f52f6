"""Batched fitting: customgrad.fit_batch against a loop of SciPy curve_fit on the same curves, same process.

B curves of 64 points, each a Gaussian plus offset (4 parameters) with noise. Prints the time of each
side (fit_batch with its default engine, native where a C compiler is found, and with engine="torch"),
the speed-up, and how well the answers agree (relative parameter difference, and how many curves
reach a lower or equal cost than SciPy's).

    PYTHONPATH=src python benchmarks/bench_batch.py [--curves 10000] [--scipy-curves 2000]

With ``--device cuda`` (the default engine there: the native solver compiled for the GPU, `cuda_engine`)
a second table follows (`gpu_table`): fits per second of the GPU engine on the 64-point Gaussian in
float64 and float32 at ``--gpu-curves`` (default 1e5 1e6 1e7; larger sizes are skipped once one would
take over a minute), and on Gpufit's benchmark case (2D Gaussian on 5 x 5 points, 5 parameters, float32,
tolerance 1e-4, at most 10 iterations), each against the CPU native engine and the SciPy loop on the
first curves (timed on a few thousand, scaled), with the largest difference from the CPU fits.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import curve_fit

from customgrad import fit_batch
from customgrad.fit import cuda_engine

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
    parser.add_argument("--gpu-curves", type=float, nargs="*", default=[1e5, 1e6, 1e7], help="GPU table sizes")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU table")
    args = parser.parse_args()
    if args.device != "cpu":
        if not args.gpu_only:
            compare(args)
        gpu_table(args.device, [int(count) for count in args.gpu_curves], args.scipy_curves)
        return 0
    return compare(args)


def compare(args) -> int:
    """The first table: fit_batch (default engine, at two tolerances, and engine="torch") against SciPy."""
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


GAUSSIAN_2D = "a*exp(-((u-x0)**2 + (v-y0)**2)/(2*s**2)) + b"
START_2D = {"a": 1.0, "x0": 2.0, "y0": 2.0, "s": 1.0, "b": 0.0}
# Gpufit's benchmark settings: tolerance 1e-4 on the relative cost change, at most 10 iterations
GPUFIT = {"ftol": 1e-4, "xtol": 1e-4, "gtol": 1e-4, "max_steps": 10}
SCIPY_TOLERANCES = {"ftol": 1e-8, "xtol": 1e-8, "gtol": 1e-8}


def gaussian_2d(uv, a, x0, y0, s, b):
    u, v = uv
    return a * np.exp(-((u - x0) ** 2 + (v - y0) ** 2) / (2 * s**2)) + b


def gpu_curves(case: str, count: int, device: str, dtype: torch.dtype, seed: int = 0) -> tuple:
    """``count`` noisy curves of ``case`` ("gaussian": 64 points; "gpufit": 5 x 5 spots), made on the GPU:
    x (a tensor, or a dict of the 2D grid's u and v), y (count, points), and the initial values (Gpufit's
    benchmark: the true ones, each off by up to 10%, per curve)."""
    generator = torch.Generator(device).manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, 1, generator=generator, device=device, dtype=torch.float64)

    if case == "gaussian":
        x = torch.linspace(-3, 3, 64, device=device, dtype=torch.float64)
        a, m, s, c = uniform(1, 3), uniform(-1, 1), uniform(0.4, 1.2), uniform(-0.5, 0.5)
        y, start = a * torch.exp(-((x - m) ** 2) / (2 * s**2)) + c, START
    else:
        grid = torch.arange(5, device=device, dtype=torch.float64)
        u, v = grid.repeat(5), grid.repeat_interleave(5)
        truth = uniform(50, 150), uniform(1.6, 2.4), uniform(1.6, 2.4), uniform(0.8, 1.2), uniform(5, 15)
        a, x0, y0, s, b = truth
        y = a * torch.exp(-((u - x0) ** 2 + (v - y0) ** 2) / (2 * s**2)) + b
        x = {"u": u, "v": v}
        start = {name: (value * uniform(0.9, 1.1)).flatten().cpu().numpy() for name, value in zip(START_2D, truth)}
    noise = torch.randn(y.shape, generator=generator, device=device, dtype=torch.float64)
    y = y + (0.05 if case == "gaussian" else 1.0) * noise
    cast = (lambda t: t.to(dtype)) if dtype != torch.float64 else (lambda t: t)
    return ({k: cast(t) for k, t in x.items()} if isinstance(x, dict) else cast(x)), cast(y), start


def _timed(function, *args, **kwargs) -> tuple:
    torch.cuda.synchronize()
    begin = time.perf_counter()
    result = function(*args, **kwargs)
    torch.cuda.synchronize()
    return result, time.perf_counter() - begin


# Seconds inside the GPU solver's launches (fits and standard errors), the rest of fit_batch excluded
# (data checks and copies, results): filled by `_timed_launches`.
LAUNCHES = {"seconds": 0.0}


def _timed_launches(launch):
    def timed(self, *args, **kwargs):
        torch.cuda.synchronize()
        begin = time.perf_counter()
        result = launch(self, *args, **kwargs)  # ends with a synchronize
        LAUNCHES["seconds"] += time.perf_counter() - begin
        return result

    return timed


def gpu_table(device: str, sizes: list[int], scipy_curves: int) -> None:
    """Fits per second of the GPU native engine, with the CPU native engine and SciPy on the first curves."""
    cuda_engine.CudaSolver._launch = _timed_launches(cuda_engine.CudaSolver._launch)
    print(f"\nGPU native engine (native_lm.c compiled by NVRTC) on {torch.cuda.get_device_name(device)}")
    print("seconds: the whole fit_batch call; solver: its GPU launches (fits, then standard errors) alone")
    print(f"{'case':36s} {'curves':>9s} {'seconds':>8s} {'solver':>8s} {'fits/s':>9s} {'max rel. diff vs CPU':>21s}")
    cases = [("gaussian", torch.float64, SCIPY_TOLERANCES), ("gaussian", torch.float32, SCIPY_TOLERANCES)]
    cases.append(("gpufit", torch.float32, GPUFIT))
    for case, dtype, tolerances in cases:
        model = MODEL if case == "gaussian" else GAUSSIAN_2D
        x, y, start = gpu_curves(case, 512, device, dtype)
        fit_batch(model, x, y, params=start, engine="native", device=device, dtype=dtype, **tolerances)  # NVRTC
        label = "SciPy tol." if tolerances is SCIPY_TOLERANCES else "Gpufit: 1e-4, 10 it."
        name = f"{case} {str(dtype)[6:]} ({label})"
        for count in sizes if case == "gaussian" else sizes[1:] or sizes:
            seconds = _gpu_row(name, case, model, tolerances, count, device, dtype)
            if seconds is None or seconds * 10 > 60:  # out of memory, or the next size would take over a minute
                break
        _reference_rates(case, model, tolerances, device, scipy_curves)


def _gpu_row(name: str, case: str, model, tolerances, count: int, device: str, dtype) -> float | None:
    """One row of `gpu_table`: its seconds (None: out of memory)."""
    x, y, start = gpu_curves(case, count, device, dtype)
    try:
        options = {"engine": "native", "device": device, "dtype": dtype, **tolerances}
        LAUNCHES["seconds"] = 0.0
        batch, seconds = _timed(fit_batch, model, x, y, params=start, **options)
        solver = LAUNCHES["seconds"]
    except torch.cuda.OutOfMemoryError:
        print(f"{name:36s} {count:9d}   out of memory")
        return None
    difference = _against_cpu(model, x, y, start, tolerances, batch, min(count, 2000))
    print(f"{name:36s} {count:9d} {seconds:8.3f} {solver:8.3f} {count / seconds:9.3g} {difference:21.1e}")
    print(f"{'':36s} {_statuses(batch)}")
    return seconds


def _statuses(batch) -> str:
    return batch.summary().splitlines()[1]


def _against_cpu(model, x, y, start, tolerances, batch, count: int) -> float:
    """The largest relative parameter difference between the GPU fits and the CPU native engine's (float64)
    on the first ``count`` curves."""
    x_cpu = {k: t.double().cpu() for k, t in x.items()} if isinstance(x, dict) else x.double().cpu()
    start = {name: value[:count] if isinstance(value, np.ndarray) else value for name, value in start.items()}
    cpu = fit_batch(model, x_cpu, y[:count].double().cpu(), params=start, engine="native", **tolerances)
    worst = 0.0
    for name in start:
        ours, theirs = batch.params[name][:count], cpu.params[name]
        worst = max(worst, float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12))))
    return worst


def _reference_rates(case: str, model, tolerances, device: str, scipy_curves: int) -> None:
    """Fits per second of the CPU native engine (on 20,000 curves) and the SciPy loop (``scipy_curves``)."""
    x, y, start = gpu_curves(case, 20_000, device, torch.float64)
    x = {k: t.cpu() for k, t in x.items()} if isinstance(x, dict) else x.cpu()
    y = y.cpu()
    _, seconds = _timed(fit_batch, model, x, y, params=start, engine="native", **tolerances)
    name = f"  CPU native engine ({torch.get_num_threads()} threads)"
    print(f"{name:36s} {20_000:9d} {seconds:8.3f} {20_000 / seconds:9.3g}")
    count = min(scipy_curves, 2000)
    xs = np.stack([x["u"].numpy(), x["v"].numpy()]) if isinstance(x, dict) else x.numpy()
    function = gaussian if case == "gaussian" else gaussian_2d
    failed, begin = 0, time.perf_counter()
    for i, row in enumerate(y[:count].numpy()):
        p0 = [value[i] if isinstance(value, np.ndarray) else value for value in start.values()]
        try:  # Gpufit's case: at most 10 iterations (SciPy counts evaluations: 10 of 6 each)
            curve_fit(function, xs, row, p0=p0, **({} if case == "gaussian" else {"maxfev": 60}))
        except RuntimeError:
            failed += 1
    seconds = time.perf_counter() - begin
    print(f"{'  SciPy curve_fit loop':36s} {count:9d} {seconds:8.3f} {count / seconds:9.3g}   ({failed} not converged)")


if __name__ == "__main__":
    raise SystemExit(main())
