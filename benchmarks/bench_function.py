"""Generated Functions on every backend vs eager PyTorch and torch.compile: forward+backward time and memory.

For each formula and size: eager composite (the formula in torch ops, autograd records every
intermediate), the hand-written Function (P2), torch.compile of the composite (steady state, after
warm-up), and ``customgrad.function`` per backend. Medians of forward + backward with a random upstream
gradient (``y.backward(g)``; not ``.sum()``'s stride-0 ones, which a fused kernel reads as one number),
ratios against eager in the same process, peak extra memory (RSS high-water mark above the start on
Linux, ``max_memory_allocated`` on CUDA), and the first call of a new formula in a fresh process.

On CUDA (``--device cuda``) the times are CUDA-event medians, the device copy bandwidth is measured
first, and a second table gives each variant's fraction of the floor: the time a fused forward +
backward needs at that bandwidth to move 5 passes over the big tensor (forward reads x and writes y;
backward reads x and the upstream gradient and writes dx; broadcast parameters and their gradients
are small and not counted).

Run: ``python benchmarks/bench_function.py [--sizes 1e4 1e5 1e6 1e7] [--backends eager compile cpu auto]``
``[--dtypes float32 bfloat16]``; ``--chart ratios.png`` also writes a PNG chart of the speed-ups vs eager.
Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import customgrad
from customgrad.library import P2Handwritten

GELU = "0.5*x*(1 + tanh(0.7978845608028654*(x + 0.044715*x**3)))"
#: label -> (formula, eager composite, input maker by size).
CASES = {
    "P2": ("x**2 + 2*x", lambda x: x**2 + 2 * x),
    "Legendre P3": ("(5*x**3 - 3*x)/2", lambda x: (5 * x**3 - 3 * x) / 2),
    "GELU-tanh": (GELU, lambda x: 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))),
    "Mish": ("x*tanh(softplus(x))", lambda x: x * torch.tanh(torch.nn.functional.softplus(x))),
    "3-input broadcast": (
        "exp(-(x - m)**2/(2*s**2))/s",
        lambda x, m, s: torch.exp(-((x - m) ** 2) / (2 * s**2)) / s,
    ),
    "per-row Gaussian": (
        "a*exp(-(x - m)**2/(2*s**2))",
        lambda a, x, m, s: a * torch.exp(-((x - m) ** 2) / (2 * s**2)),
    ),
}
#: Cases with broadcast parameters: x is (size / 1000, 1000).
BROADCAST_CASES = ("3-input broadcast", "per-row Gaussian")
#: Passes over the big tensor a fused forward + backward must make (see the module docstring).
FLOOR_PASSES = 5


def make_inputs(label: str, size: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Leaves for one case in its formula's input order: x of ``size`` elements (m per column and s per
    row for the 3-input broadcast; a, m, s per row for the per-row Gaussian)."""
    generator = torch.Generator().manual_seed(0)
    if label not in BROADCAST_CASES:
        return [torch.randn(size, generator=generator).to(device, dtype).requires_grad_()]
    columns = 1000 if size >= 1000 else size
    rows = size // columns
    x = torch.randn(rows, columns, generator=generator)
    if label == "per-row Gaussian":
        a, m = torch.rand(rows, 1, generator=generator) + 0.5, torch.randn(rows, 1, generator=generator)
        leaves = (a, x, m, torch.rand(rows, 1, generator=generator) + 0.5)  # the formula's input order
    else:
        leaves = (x, torch.randn(columns, generator=generator), torch.rand(rows, 1, generator=generator) + 0.5)
    return [t.to(device, dtype).requires_grad_() for t in leaves]


def upstream_gradient(inputs: list[torch.Tensor]) -> torch.Tensor:
    """A random upstream gradient of the output's (broadcast) shape, in the inputs' dtype and device (seeded)."""
    shape = torch.broadcast_shapes(*(t.shape for t in inputs))
    generator = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=generator).to(inputs[0].device, inputs[0].dtype)


def copy_bandwidth(device: str, size: int) -> float:
    """Device copy bandwidth in bytes/s, read + write (median of 20 copies of ``size`` float32)."""
    source = torch.empty(size, dtype=torch.float32, device=device).fill_(1.0)
    target = torch.empty_like(source)
    seconds = measure_cuda(lambda: target.copy_(source), 0.2)[0]
    return 2 * source.numel() * source.element_size() / seconds


def peak_rss() -> int:
    """Resident-set high-water mark in bytes (Linux /proc), 0 elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> int:
    """Reset the high-water mark to the current RSS (writing 5 to clear_refs); returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return 0
    return peak_rss()


def measure_cuda(once, budget: float) -> tuple[float, float]:
    """Median and best seconds of ``once()`` on the current CUDA stream (CUDA events, at least 5 runs)."""
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        once()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), min(times)


def measure(fn, inputs: list[torch.Tensor], budget: float) -> tuple[float, float, int]:
    """Median and best seconds of forward + backward of ``fn(*inputs)`` with a random upstream
    gradient, and the peak extra memory of one run."""

    cuda = inputs[0].is_cuda
    upstream = upstream_gradient(inputs)

    def once():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(upstream)

    warm_until = time.perf_counter() + min(budget, 1.0)
    for count in range(1000):  # torch.compile settles after several calls (its backward compiles lazily)
        once()
        if cuda:
            torch.cuda.synchronize()
        if count >= 4 and time.perf_counter() > warm_until:
            break
    if cuda:
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        once()
        torch.cuda.synchronize()
        extra = max(torch.cuda.max_memory_allocated() - start, 0)
        return (*measure_cuda(once, budget), extra)
    start = reset_peak_rss()
    once()
    extra = max(peak_rss() - start, 0)
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 50):
        begin = time.perf_counter()
        once()
        times.append(time.perf_counter() - begin)
    return statistics.median(times), min(times), extra


def check_cases(labels: list[str]) -> None:
    """Each case's customgrad formula and torch composite agree on its inputs (argument order included)."""
    for label in labels:
        formula, composite = CASES[label]
        inputs = [t.detach().double() for t in make_inputs(label, 2000)]
        got = customgrad.function(formula, backend="eager").apply(*inputs)
        if not torch.allclose(got, composite(*inputs), rtol=1e-12, atol=0):
            raise SystemExit(f"{label}: the formula and its torch composite disagree (input order?)")


def variants(label: str, backends: list[str]) -> dict:
    formula, composite = CASES[label]
    result = {"eager composite": composite}
    if label == "P2":
        result["hand-written"] = P2Handwritten.apply
    result["torch.compile"] = torch.compile(composite)
    for backend in backends:
        result[f"customgrad {backend}"] = customgrad.function(formula, backend=backend).apply
    return result


FIRST_CALL = """
import sys, time
start = time.perf_counter()
import torch, customgrad
imported = time.perf_counter()
f = customgrad.function(sys.argv[1], backend=sys.argv[2])
inputs = [torch.rand(100000, device=sys.argv[3]).add(0.5).requires_grad_() for _ in f.input_names]
f.apply(*inputs).sum().backward()
if sys.argv[3] == "cuda":
    torch.cuda.synchronize()
print(imported - start, time.perf_counter() - imported)
"""


def first_call(formula: str, backend: str, cache_dir: str, device: str = "cpu") -> tuple[float, float]:
    """(import seconds, seconds from import to the first forward+backward done) in a fresh process."""
    environment = {**os.environ, "CUSTOMGRAD_CACHE_DIR": cache_dir}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_CALL, formula, backend, device], capture_output=True, text=True, env=environment
    )
    if done.returncode:
        raise RuntimeError(done.stderr)
    imported, first = map(float, done.stdout.split())
    return imported, first


def write_chart(ratios: dict[str, dict[str, dict[int, float]]], path: str, title: str) -> None:
    """A PNG of eager median / variant median per formula (one panel each) against size, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(ratios)
    names = list(dict.fromkeys(name for label in labels for name in ratios[label]))
    colors = {name: f"C{index}" for index, name in enumerate(names)}  # one colour per variant in every panel
    columns = min(len(labels), 3)
    rows = -(-len(labels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows + 0.6), squeeze=False)
    lines = {}
    for axis, label in zip(axes.flat, labels, strict=False):
        for name, by_size in ratios[label].items():
            sizes = sorted(by_size)
            (lines[name],) = axis.plot(sizes, [by_size[s] for s in sizes], marker="o", color=colors[name], label=name)
        axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set(xscale="log", yscale="log", title=label, xlabel="elements", ylabel="speed-up vs eager (median)")
        axis.grid(True, which="both", linewidth=0.3)
    for axis in list(axes.flat)[len(labels) :]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.legend([lines[name] for name in names], names, loc="lower center", ncol=len(names), fontsize="small")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def floor_seconds(inputs: list[torch.Tensor], bandwidth: float) -> float:
    """Seconds to move `FLOOR_PASSES` passes over the biggest input at ``bandwidth`` bytes/s."""
    biggest = max(inputs, key=lambda t: t.numel())
    return FLOOR_PASSES * biggest.numel() * biggest.element_size() / bandwidth


def run_case(label: str, size: int, args, dtype: torch.dtype, functions: dict, bandwidth: float | None) -> dict:
    """Time every variant of one case at one size and dtype and print its rows (one row per variant,
    or on CUDA one row with the floor); return median seconds by variant."""
    inputs = make_inputs(label, size, args.device, dtype)
    timings = {name: measure(fn, inputs, args.budget) for name, fn in functions.items()}
    medians = {name: timing[0] for name, timing in timings.items()}
    if bandwidth is not None:
        medians["floor"] = floor_seconds(inputs, bandwidth)
        print(floor_row(label, args_dtype(dtype), size, medians, args.backends))
        return medians
    eager, compiled = medians["eager composite"], medians["torch.compile"]
    for name, (seconds, best, extra) in timings.items():
        print(
            f"| {label} | {args_dtype(dtype)} | {size:.0e} | {name} | {seconds * 1e3:.3f} | {best * 1e3:.3f} "
            f"| {eager / seconds:.2f}x | {compiled / seconds:.2f}x | {extra / 1e6:.1f} |"
        )
    return medians


def args_dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fused_backends(backends: list[str]) -> list[str]:
    return [b for b in backends if b not in ("eager", "compile")]


def floor_header(backends: list[str], bandwidth: float) -> str:
    """The CUDA table's header: times in ms, each fused backend's fraction of the floor and vs torch.compile."""
    fused = fused_backends(backends)
    header = ["formula", "dtype", "size", "eager", "torch.compile", *fused, "floor"]
    header += [f"{b} / floor" for b in fused] + [f"{b} vs compile" for b in fused]
    return (
        f"fraction of the floor = floor / time, the floor being {FLOOR_PASSES} passes over x at the measured copy "
        f"bandwidth {bandwidth / 1e12:.2f} TB/s; times in ms (CUDA-event medians)\n\n"
        + "| "
        + " | ".join(header)
        + " |\n|"
        + " --- |" * len(header)
    )


def floor_row(label: str, dtype: str, size: int, medians: dict, backends: list[str]) -> str:
    fused = fused_backends(backends)
    times = [medians["eager composite"], medians["torch.compile"], *(medians[f"customgrad {b}"] for b in fused)]
    cells = [label, dtype, f"{size:.0e}", *(f"{t * 1e3:.3f}" for t in times), f"{medians['floor'] * 1e3:.3f}"]
    cells += [f"{medians['floor'] / medians[f'customgrad {b}']:.0%}" for b in fused]
    cells += [f"{medians['torch.compile'] / medians[f'customgrad {b}']:.2f}x" for b in fused]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--backends", nargs="+", default=["eager", "compile", "cpu", "auto"])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per variant and size")
    parser.add_argument("--first-call", action="store_true", help="also time first calls in fresh processes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    dtypes = ["float32", "float64", "float16", "bfloat16"]
    parser.add_argument("--dtype", default=None, choices=dtypes, help="one dtype (same as --dtypes D)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=dtypes, help="dtypes to run (default float32)")
    parser.add_argument(
        "--max-size",
        nargs=2,
        action="append",
        default=[],
        metavar=("DTYPE", "SIZE"),
        help="skip sizes above SIZE for DTYPE (e.g. --max-size float16 1e7), to keep a run short",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's)")
    parser.add_argument("--chart", metavar="PATH", default=None, help="also write a PNG chart of the ratios vs eager")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    check_cases(args.cases)
    names = args.dtypes or [args.dtype or "float32"]
    limits = {name: float(limit) for name, limit in args.max_size}
    cuda = args.device == "cuda"
    bandwidth = copy_bandwidth("cuda", int(max(args.sizes))) if cuda else None
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} threads"
    print(
        f"{args.device} ({where}), {', '.join(names)}, torch {torch.__version__}; forward+backward with a random "
        "upstream gradient; peak extra memory is RSS on CPU, max_memory_allocated on CUDA"
    )
    if bandwidth is not None:
        print(f"device copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s\n")
        print(floor_header(args.backends, bandwidth))
    else:
        print("\n| formula | dtype | size | variant | median ms | best ms | vs eager | vs compile | peak extra MB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios: dict[str, dict[str, dict[int, float]]] = {}
    for label in args.cases:
        functions = variants(label, args.backends)
        for name in names:
            dtype = getattr(torch, name)
            for size in (int(s) for s in args.sizes if s <= limits.get(name, float("inf"))):
                medians = run_case(label, size, args, dtype, functions, bandwidth)
                eager = medians["eager composite"]
                for variant, seconds in medians.items():
                    if variant not in ("eager composite", "floor"):
                        ratios.setdefault(label, {}).setdefault(variant, {})[size] = eager / seconds
                if cuda:
                    torch.cuda.empty_cache()
    if args.chart:
        title = f"forward+backward speed-up vs eager, {args.device} {', '.join(names)}, {where}"
        write_chart(ratios, args.chart, title)
        print(f"\nchart: {args.chart}")
    if args.first_call:
        print_first_calls(args.cases, "cuda" if cuda else "cpu")


def print_first_calls(cases: list[str], device: str) -> None:
    """The first call of each case's formula in fresh processes, cold and warm disk cache."""
    print("\n| formula | backend | import s | first call cold cache s | first call warm cache s |")
    print("| --- | --- | --- | --- | --- |")
    for label in cases:
        for backend in ("eager", "triton" if device == "cuda" else "cpu"):
            with tempfile.TemporaryDirectory() as cache_dir:
                imported, cold = first_call(CASES[label][0], backend, cache_dir, device)
                _, warm = first_call(CASES[label][0], backend, cache_dir, device)
            print(f"| {label} | {backend} | {imported:.2f} | {cold:.2f} | {warm:.2f} |")


if __name__ == "__main__":
    main()
