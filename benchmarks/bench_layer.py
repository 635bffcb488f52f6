"""A learnable activation as customgrad.Layer vs the same activation in eager torch ops and torch.compile.

The activation is the tests' learnable swish x * sigmoid(b x), one b per feature (b of shape (C,) on
an (N, C) input), in float32 on the CPU (fused C kernels) or with ``--device cuda`` (Triton). Timed:
forward and backward with a full upstream gradient (gradients for x and b), per call. Rounds
alternate between the sides so that a load spike hits them all; the best round of each is reported,
with its ratio to eager.

    PYTHONPATH=src python benchmarks/bench_layer.py [--sizes 256x256 4096x256 16384x256] [--rounds 5]
        [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import customgrad  # noqa: E402
from test_layer import SWISH, EagerSwish  # noqa: E402


def sides(channels: int) -> dict[str, torch.nn.Module]:
    """Name -> module computing the swish with a learnable b of (channels,), all starting at b = 1."""
    layer = customgrad.Layer(SWISH, params={"b": channels})
    eager = EagerSwish(channels)
    layer_again = customgrad.Layer(SWISH, params={"b": channels})
    return {
        "customgrad.Layer (auto: fused)": layer,
        "eager torch ops": eager,
        "torch.compile(eager ops)": torch.compile(EagerSwish(channels), fullgraph=True),
        "torch.compile(customgrad.Layer)": torch.compile(layer_again, fullgraph=True),
    }


def step(module: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> None:
    """One forward and backward (gradients for x and the module's b)."""
    module(x).backward(upstream)


def time_calls(module, x, upstream, budget: float) -> float:
    """Seconds per call, averaged over as many calls as fit in about ``budget`` seconds."""
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    synchronize()
    begin = time.perf_counter()
    calls = 0
    while time.perf_counter() - begin < budget or calls < 3:
        step(module, x, upstream)
        calls += 1
    synchronize()
    return (time.perf_counter() - begin) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["256x256", "4096x256", "16384x256"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per side per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (the Layer's auto backend: Triton)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"x * sigmoid(b x), b per feature, float32, {where}; forward + backward")
    print(f"best of {args.rounds} alternating rounds (ms per call; ratio = eager / side, above 1 is faster)")
    print(f"| {'N x C':>10} | {'side':34} | {'ms':>8} | {'vs eager':>8} |")
    print(f"| {'-' * 10} | {'-' * 34} | {'-' * 8} | {'-' * 8} |")
    for size in args.sizes:
        rows, channels = (int(n) for n in size.split("x"))
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(rows, channels, generator=generator).to(args.device).requires_grad_()
        upstream = torch.randn(rows, channels, generator=generator).to(args.device)
        modules = {name: module.to(args.device) for name, module in sides(channels).items()}
        for module in modules.values():  # warm-up: kernels built, graphs compiled
            step(module, x, upstream)
            step(module, x, upstream)
        best = dict.fromkeys(modules, float("inf"))
        for _ in range(args.rounds):
            for name, module in modules.items():
                best[name] = min(best[name], time_calls(module, x, upstream, args.budget))
        eager = best["eager torch ops"]
        for name, seconds in best.items():
            print(f"| {size:>10} | {name:34} | {1e3 * seconds:8.3f} | {eager / seconds:7.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
