"""One fit whose rows are spread over processes, and a batch of curves spread over them, from Python.

Each process joins a torch.distributed group (gloo here, on this machine; NCCL on GPUs, one per
process), keeps only its own share of the rows, and calls ``fit(..., distributed=True)``: the ranks
exchange small R factors, take the same steps, and all get the fit of every row. ``fit_batch(...,
distributed=True)`` takes the same curves on every rank and fits each rank's share of them.
Under torchrun, skip the spawning: call ``init_process_group()`` and ``work(rank, world)``.

    python examples/distributed_fit.py
"""

from __future__ import annotations

import os
import socket

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

import customgrad

MODEL = "a*exp(-(x-m)**2/(2*s**2)) + c"
START = {"a": 1.0, "m": 0.0, "s": 1.0, "c": 0.0}


def rows(count: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """All the data (each rank reads its slice; in practice, its own file or its own rows of one)."""
    x = np.linspace(-3, 3, count)
    noise = np.random.default_rng(0).standard_normal(count)
    return x, 2.0 * np.exp(-((x - 0.3) ** 2) / (2 * 0.7**2)) + 0.5 + 0.05 * noise


def work(rank: int, world: int) -> None:
    x, y = rows()
    mine = slice(rank * len(x) // world, (rank + 1) * len(x) // world)  # this rank's rows only
    result = customgrad.fit(MODEL, x[mine], y[mine], params=START, distributed=True)
    grid = np.linspace(-3, 3, 64)
    heights = np.linspace(1, 3, 1000)[:, None]  # 1000 curves, the same on every rank
    curves = heights * np.exp(-((grid - 0.3) ** 2) / 0.98) + 0.5 + 0.05 * np.sin(7 * grid + heights)
    batch = customgrad.fit_batch(MODEL, grid, curves, params=START, distributed=True)
    if rank == 0:  # every rank holds both results; one prints
        found = ", ".join(f"{name} = {value:.6f} +- {result.stderr[name]:.1e}" for name, value in result.params.items())
        print(f"one fit over {len(x)} rows on {world} processes ({result.status}): {found}")
        print(f"{len(batch)} curves on {world} processes: {batch.summary().splitlines()[0]}")


def _join(rank: int, world: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        work(rank, world)
        dist.barrier()  # no rank leaves while another still talks to it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    mp.spawn(_join, args=(2, free_port), nprocs=2, join=True)
