"""Data-parallel LM: one fit over N points by 1 process, by 1 process in row chunks, and by 2 gloo processes.

Prints, per setting, the wall time of the fit (slowest rank), the peak resident memory of each process
above its level after imports, and the largest parameter difference from the 1-process fit. The
2-process run holds half the rows per process; the chunked run builds R over chunks of rows
(``fit(chunk_size=...)``), so the Jacobian is never held whole.

    PYTHONPATH=src python benchmarks/bench_distributed.py [--points 2000000] [--chunk-size 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from customgrad import fit
from customgrad.fit.distributed import local_shard

MODEL = "a*exp(-(x-m)**2/(2*s**2))+c"
START = {"a": 1.0, "m": 0.0, "s": 1.0, "c": 0.0}


def make_data(points: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.linspace(-3, 3, points)
    return x, 2.0 * np.exp(-((x - 0.3) ** 2) / (2 * 0.7**2)) + 0.5 + 0.05 * rng.standard_normal(points)


def _peak_mib() -> float:
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _worker(rank: int, world: int, port: int, points: int, out: str, chunk_size: int | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    baseline = _peak_mib()
    x, y = make_data(points)
    rows = local_shard(points, rank, world)
    x, y = x[rows].copy(), y[rows].copy()
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    begin = time.perf_counter()
    result = fit(MODEL, x, y, params=START, distributed=world > 1, chunk_size=chunk_size)
    seconds = time.perf_counter() - begin
    record = {
        "seconds": seconds,
        "peak_mib": _peak_mib() - baseline,
        "params": result.params,
        "steps": result.jacobians,
    }
    with open(f"{out}/{world}-{chunk_size}-{rank}.json", "w") as handle:
        json.dump(record, handle)
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2_000_000)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        records = {}
        for label, world, chunk in (
            ("1 process", 1, None),
            ("1, chunked", 1, args.chunk_size),
            ("2 processes", 2, None),
        ):
            mp.spawn(_worker, args=(world, _free_port(), args.points, out, chunk), nprocs=world, join=True)
            records[label] = [json.load(open(f"{out}/{world}-{chunk}-{rank}.json")) for rank in range(world)]
    reference = records["1 process"][0]["params"]
    print(f"{args.points} points, model {MODEL}, LM (gloo on loopback, 1 thread per process)")
    print(f"{'run':>12s} {'seconds':>8s} {'jacobians':>9s} {'peak MiB per process':>22s} {'max rel. diff':>13s}")
    for label, ranks in records.items():
        seconds = max(rank["seconds"] for rank in ranks)
        peaks = " ".join(f"{rank['peak_mib']:.0f}" for rank in ranks)
        diff = max(
            abs(rank["params"][name] - reference[name]) / abs(reference[name]) for rank in ranks for name in reference
        )
        print(f"{label:>12s} {seconds:>8.3f} {ranks[0]['steps']:>9d} {peaks:>22s} {diff:>13.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
