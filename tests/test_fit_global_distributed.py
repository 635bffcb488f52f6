"""fit_batch with shared parameters and distributed=True on 2 gloo processes, against one process."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from customgrad import fit_batch
from global_reference import decays
from reference import assert_matches_reference

pytestmark = pytest.mark.slow

DECAY = "a*exp(-k*x)+c"
PARAMS = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}


def curves():
    """9 noisy decays with one rate, curve 4 without data (left out of the joint problem)."""
    rng = np.random.default_rng(8)
    x = np.linspace(0, 5, 16)
    local = np.stack([rng.uniform(1, 3, 9), rng.uniform(-0.5, 0.5, 9)], 1)
    y = decays(x, [0.7], local) + 0.02 * rng.standard_normal((9, 16))
    y[4] = np.nan
    return x, y


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    x, y = curves()
    # each rank's R_b from the model's native library (`global_native.factors`), its own curve numbers
    result = fit_batch(DECAY, x, y, params=PARAMS, distributed=True, engine="native")
    found = {
        "shared": result.shared.params,
        "shared_stderr": result.shared.stderr,
        "params": {name: values.tolist() for name, values in result.params.items()},
        "stderr": {name: values.tolist() for name, values in result.stderr.items()},
        "cross": result.shared.cross_covariance.tolist(),
        "status": result.status,
        # one curve with data: rank 1 holds none of it
        "lone": fit_batch(DECAY, x, y[3:5], params=PARAMS, distributed=True, engine="native").shared.params,
    }
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(found, handle)
    dist.barrier()
    dist.destroy_process_group()


def test_a_global_fit_on_two_ranks_matches_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    x, y = curves()
    whole = fit_batch(DECAY, x, y, params=PARAMS, engine="torch")  # (the model's rows of all curves at once)
    for rank in range(2):
        found = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert found["status"] == whole.status and found["status"][4] == "no_data"
        assert_matches_reference(found["shared"]["k"], whole.shared.params["k"], rtol=1e-10, what="k")
        assert_matches_reference(found["shared_stderr"]["k"], whole.shared.stderr["k"], rtol=1e-10, what="se k")
        for name in ("a", "c"):
            assert_matches_reference(np.array(found["params"][name]), whole.params[name], rtol=1e-10, what=name)
            assert_matches_reference(np.array(found["stderr"][name]), whole.stderr[name], rtol=1e-10, what=name)
        assert_matches_reference(np.array(found["cross"]), whole.shared.cross_covariance, rtol=1e-9, what="cross")
        lone = fit_batch(DECAY, x, y[3:5], params=PARAMS, engine="torch").shared.params["k"]
        assert_matches_reference(found["lone"]["k"], lone, rtol=1e-10, what="k of a rank without curves")
