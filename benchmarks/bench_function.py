"""Generated Functions on every backend vs eager PyTorch and torch.compile: forward+backward time and memory.

For each formula and size: eager composite (the formula in torch ops, autograd records every
intermediate), the hand-written Function (P2), torch.compile of the composite (steady state, after
warm-up), and ``customgrad.function`` per backend. Medians of forward + backward of ``f(...).sum()``,
ratios against eager in the same process, peak extra resident memory (RSS high-water mark above the
start, Linux), and the first call of a new formula in a fresh process (cold and warm disk cache).

Run: ``python benchmarks/bench_function.py [--sizes 1e4 1e5 1e6 1e7] [--backends eager compile cpu auto]``;
``--chart ratios.png`` also writes a PNG chart of the speed-ups vs eager (matplotlib, Agg).
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
}


def make_inputs(label: str, size: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Leaves for one case: x of ``size`` elements (and m per column, s per row for the broadcast case)."""
    generator = torch.Generator().manual_seed(0)
    if label != "3-input broadcast":
        return [torch.randn(size, generator=generator).to(device, dtype).requires_grad_()]
    columns = 1000 if size >= 1000 else size
    rows = size // columns
    x = torch.randn(rows, columns, generator=generator)
    m = torch.randn(columns, generator=generator)
    s = torch.rand(rows, 1, generator=generator) + 0.5
    return [t.to(device, dtype).requires_grad_() for t in (x, m, s)]


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


def measure(fn, inputs: list[torch.Tensor], budget: float) -> tuple[float, float, int]:
    """Median and best seconds of forward + backward of ``fn(*inputs).sum()``, and peak extra RSS of one run."""

    cuda = inputs[0].is_cuda

    def once():
        for t in inputs:
            t.grad = None
        fn(*inputs).sum().backward()
        if cuda:
            torch.cuda.synchronize()

    warm_until = time.perf_counter() + min(budget, 1.0)
    for count in range(1000):  # torch.compile settles after several calls (its backward compiles lazily)
        once()
        if count >= 4 and time.perf_counter() > warm_until:
            break
    if cuda:
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        once()
        extra = max(torch.cuda.max_memory_allocated() - start, 0)
    else:
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
inputs = [torch.rand(100000).add(0.5).requires_grad_() for _ in f.input_names]
f.apply(*inputs).sum().backward()
print(imported - start, time.perf_counter() - imported)
"""


def first_call(formula: str, backend: str, cache_dir: str) -> tuple[float, float]:
    """(import seconds, seconds from import to the first forward+backward done) in a fresh process."""
    environment = {**os.environ, "CUSTOMGRAD_CACHE_DIR": cache_dir}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_CALL, formula, backend], capture_output=True, text=True, env=environment
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--backends", nargs="+", default=["eager", "compile", "cpu", "auto"])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per variant and size")
    parser.add_argument("--first-call", action="store_true", help="also time first calls in fresh processes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's)")
    parser.add_argument("--chart", metavar="PATH", default=None, help="also write a PNG chart of the ratios vs eager")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(
        f"{args.device}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        "forward+backward; peak extra memory is RSS on CPU, max_memory_allocated on CUDA\n"
    )
    print("| formula | size | variant | median ms | best ms | vs eager | vs compile | peak extra MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios: dict[str, dict[str, dict[int, float]]] = {}
    for label in args.cases:
        functions = variants(label, args.backends)
        for size in map(int, args.sizes):
            inputs = make_inputs(label, size, args.device, dtype)
            timings = {name: measure(fn, inputs, args.budget) for name, fn in functions.items()}
            eager, compiled = timings["eager composite"][0], timings["torch.compile"][0]
            for name, (seconds, best, extra) in timings.items():
                if name != "eager composite":
                    ratios.setdefault(label, {}).setdefault(name, {})[size] = eager / seconds
                print(
                    f"| {label} | {size:.0e} | {name} | {seconds * 1e3:.3f} | {best * 1e3:.3f} "
                    f"| {eager / seconds:.2f}x "
                    f"| {compiled / seconds:.2f}x | {extra / 1e6:.1f} |"
                )
    if args.chart:
        title = f"forward+backward speed-up vs eager, {args.device} {args.dtype}, {torch.get_num_threads()} thread(s)"
        write_chart(ratios, args.chart, title)
        print(f"\nchart: {args.chart}")
    if args.first_call:
        print("\n| formula | backend | import s | first call cold cache s | first call warm cache s |")
        print("| --- | --- | --- | --- | --- |")
        for label in args.cases:
            for backend in ("eager", "cpu"):
                with tempfile.TemporaryDirectory() as cache_dir:
                    imported, cold = first_call(CASES[label][0], backend, cache_dir)
                    _, warm = first_call(CASES[label][0], backend, cache_dir)
                print(f"| {label} | {backend} | {imported:.2f} | {cold:.2f} | {warm:.2f} |")


if __name__ == "__main__":
    main()
