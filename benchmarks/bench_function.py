"""Generated Functions vs eager PyTorch: forward+backward time and memory saved for backward.

For each formula, three ways to compute f and its gradients on the same inputs:
eager (the formula written in torch ops, autograd records every intermediate), customgrad
(``customgrad.function``), and for the blog's P2 the hand-written Function. Prints a table with
ratios against eager, run side by side in this process.

Run: ``python benchmarks/bench_function.py [--device cuda] [--size 1000000]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import customgrad
from customgrad.library import P2Handwritten

CASES = {
    "P2: x**2 + 2*x": ("x**2 + 2*x", lambda x: x**2 + 2 * x),
    "GELU-tanh": (
        "0.5*x*(1 + tanh(0.7978845608028654*(x + 0.044715*x**3)))",
        lambda x: 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x**3))),
    ),
    "Mish: x*tanh(softplus(x))": ("x*tanh(softplus(x))", lambda x: x * torch.tanh(torch.nn.functional.softplus(x))),
    "Legendre P3": ("(5*x**3 - 3*x)/2", lambda x: (5 * x**3 - 3 * x) / 2),
}


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes of tensors autograd keeps for the backward of ``fn(x)`` (storage counted once)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def time_forward_backward(fn, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of forward + backward of ``fn(x).sum()``."""

    def once():
        x.grad = None
        fn(x).sum().backward()

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        once()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.size, device=args.device, dtype=dtype, requires_grad=True)
    print(
        f"device {args.device}, {args.size} elements of {args.dtype}, torch {torch.__version__}; "
        f"median of {args.repeats} forward+backward runs\n"
    )
    header = f"{'function':28s} {'variant':12s} {'time ms':>9s} {'vs eager':>9s} {'saved MB':>9s} {'vs eager':>9s}"
    print(header)
    print("-" * len(header))
    for label, (formula, eager) in CASES.items():
        generated = customgrad.function(formula)
        variants = {"eager": eager, "customgrad": generated.apply}
        if label.startswith("P2"):
            variants["hand-written"] = P2Handwritten.apply
        base_time = time_forward_backward(eager, x, args.repeats)
        base_bytes = saved_bytes(eager, x)
        for name, fn in variants.items():
            seconds = base_time if name == "eager" else time_forward_backward(fn, x, args.repeats)
            stored = saved_bytes(fn, x)
            print(
                f"{label:28s} {name:12s} {seconds * 1e3:9.3f} {seconds / base_time:9.2f}x "
                f"{stored / 1e6:9.2f} {stored / max(base_bytes, 1):9.2f}x"
            )


if __name__ == "__main__":
    main()
