"""Generated Functions inside models survive pickle, torch.save, deepcopy, spawn workers and DDP.

Reference: the same model written in eager torch ops, in float64; values and gradients after the
round trip must match it (a rebuilt Function computes what the original did).
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import customgrad
from reference import assert_matches_reference

HERE = Path(__file__).parent


def peak_function() -> type[torch.autograd.Function]:
    """h / (1 + ((x - x0)/g)^2) through a registered helper ``Lor``, with a declared gradient for h."""
    customgrad.function("1/(1 + u**2)", name="Lor")
    return customgrad.function("h*Lor((x - x0)/g)", name="Peak", grads={"h": "2*Lor((x - x0)/g)"})


def peak_reference(h, x, x0, g):
    return h / (1 + ((x - x0) / g) ** 2)


class Peaks(torch.nn.Module):
    """A model holding generated Functions as attributes: a learnable peak and a learnable swish."""

    def __init__(self, peak, swish):
        super().__init__()
        self.peak, self.swish = peak, swish
        self.h = torch.nn.Parameter(torch.tensor([1.5, 0.5], dtype=torch.float64))
        self.x0 = torch.nn.Parameter(torch.tensor([0.2, -0.3], dtype=torch.float64))
        self.g = torch.nn.Parameter(torch.tensor([0.7, 1.1], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([1.3, 0.8], dtype=torch.float64))

    def forward(self, x):
        return self.swish.apply(self.peak.apply(self.h, x, self.x0, self.g), self.b).sum(-1)


def eager_peaks(model: Peaks, x):
    """The same model in eager torch ops (the declared gradient for h is 2x the true one: undo it)."""
    h = model.h.detach() + 2 * (model.h - model.h.detach())  # value h, gradient 2 d/dh
    y = peak_reference(h, x, model.x0, model.g)
    return (y * torch.sigmoid(model.b * y)).sum(-1)


def make_model() -> Peaks:
    return Peaks(peak_function(), customgrad.function("x*sigmoid(b*x)"))


def inputs() -> torch.Tensor:
    return torch.linspace(-2, 2, 14, dtype=torch.float64).reshape(7, 2)


def assert_same_as_eager(model: Peaks, x: torch.Tensor, what: str) -> None:
    """model(x) and d sum(model(x)) / d parameters against `eager_peaks`."""
    got = model(x)
    got_grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    want = eager_peaks(model, x)
    want_grads = torch.autograd.grad(want.sum(), list(model.parameters()))
    assert_matches_reference(got, want, rtol=1e-12, what=f"{what} value")
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert_matches_reference(got_grad, want_grad, rtol=1e-12, atol=1e-15, what=f"{what} gradient")


def test_pickle_in_the_same_process_gives_back_the_same_classes():
    peak = peak_function()
    swish = customgrad.function("x*sigmoid(b*x)")
    from customgrad import P2

    for cls in (peak, peak.forward_ad, swish, P2, P2.forward_ad):
        assert pickle.loads(pickle.dumps(cls)) is cls


def test_torch_save_and_deepcopy_of_a_module_keep_values_and_gradients():
    model = make_model()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # a whole module needs weights_only=False
    assert_same_as_eager(loaded, inputs(), "torch.load")
    copied = copy.deepcopy(model)
    assert_same_as_eager(copied, inputs(), "deepcopy")
    assert copied.h is not model.h


def test_a_fresh_process_rebuilds_the_functions_from_the_pickle(tmp_path):
    """torch.load in a process that never defined them: the helper ``Lor`` is registered again and
    the warm disk cache gives the code (the cache folder is the tests' own, shared with the child)."""
    model = make_model()
    model.scaled = customgrad.function("a*x", inputs=iter(["x", "a"]))  # inputs given as an iterator
    torch.save(model, tmp_path / "model.pt")
    x = inputs()
    reference = eager_peaks(model, x)
    grads = torch.autograd.grad(reference.sum(), list(model.parameters()))
    torch.save({"x": x, "value": reference.detach(), "grads": [g.detach() for g in grads]}, tmp_path / "want.pt")
    script = f"""
import sys, json, torch
sys.path.insert(0, {str(HERE)!r})
want = torch.load({str(tmp_path / "want.pt")!r})
model = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
value = model(want["x"])
grads = torch.autograd.grad(value.sum(), list(model.parameters()))
from customgrad.registry import REGISTRY
errors = [float((a - b).abs().max() / b.abs().max()) for a, b in zip([value, *grads], [want["value"], *want["grads"]])]
scaled = model.scaled.input_names, model.scaled.apply(torch.tensor(2.0), 3.0).item()
print(json.dumps({{"errors": errors, "registered": sorted(REGISTRY), "cached": type(model.swish.spec).__name__,
                  "scaled": scaled}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert max(report["errors"]) < 1e-12, report
    assert {"Lor", "Peak"} <= set(report["registered"])
    assert report["cached"] == "CachedSpec"
    assert report["scaled"] == [["x", "a"], 6.0]


def test_functions_not_made_by_function_are_refused_with_a_reason():
    peak = peak_function()
    backward = peak._backward_for((0, 1))[0]
    with pytest.raises(pickle.PicklingError, match="only Functions made by customgrad.function"):
        pickle.dumps(backward)


class PeakRows(torch.utils.data.Dataset):
    """Rows of Peak(h, x, x0, g) made in the worker: the Function travels pickled to it."""

    def __init__(self, peak):
        self.peak = peak

    def __len__(self):
        return 4

    def __getitem__(self, i):
        x = torch.linspace(-1, 1, 5, dtype=torch.float64) + i
        return self.peak.apply(1.5, x, 0.2, 0.7)


@pytest.mark.slow
def test_dataloader_spawn_worker_runs_the_function():
    loader = torch.utils.data.DataLoader(
        PeakRows(peak_function()), batch_size=2, num_workers=1, multiprocessing_context="spawn"
    )
    got = torch.cat(list(loader))
    x = torch.linspace(-1, 1, 5, dtype=torch.float64) + torch.arange(4, dtype=torch.float64)[:, None]
    assert_matches_reference(got, peak_reference(1.5, x, 0.2, 0.7), rtol=1e-14, what="worker rows")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(rank: int, model: Peaks, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        x = inputs()[rank::2]
        wrapped(x).sum().backward()  # DDP averages the two ranks' gradients
        if rank == 0:
            torch.save([p.grad for p in model.parameters()], f"{out}/grads.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_on_two_gloo_ranks_averages_the_gradients(tmp_path):
    model = make_model()
    mp.spawn(_ddp_worker, args=(model, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "grads.pt")
    # rank r holds rows r, r+2, ...: the average of the two sums is half the sum over all rows
    want = torch.autograd.grad(eager_peaks(model, inputs()).sum() / 2, list(model.parameters()))
    for got_grad, want_grad in zip(got, want, strict=True):
        assert_matches_reference(got_grad, want_grad, rtol=1e-12, atol=1e-15, what="DDP gradient")
