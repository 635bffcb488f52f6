"""fit(distributed=True) on 2 gloo processes over loopback, against one process holding all rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from customgrad import fit, fit_batch
from reference import assert_matches_reference

pytestmark = pytest.mark.slow

GAUSSIAN = "a*exp(-(x-m)**2/(2*s**2))+c"
START = {"a": 1.0, "m": 0.0, "s": 1.0, "c": 0.0}
STATISTICS = ("chisqr", "redchi", "aic", "bic", "rsquared", "nfree", "ndata")
PROBE = np.array([-2.0, 0.0, 0.5, 2.5])


def data():
    rng = np.random.default_rng(21)
    x = np.linspace(-3, 3, 101)
    return x, 2.0 * np.exp(-((x - 0.3) ** 2) / (2 * 0.7**2)) + 0.5 + 0.05 * rng.standard_normal(101)


def curves():
    x, y = data()
    rng = np.random.default_rng(4)
    return y[None, :] * rng.uniform(0.5, 2, (7, 1)) + 0.05 * rng.standard_normal((7, 101))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _attempt(run) -> dict:
    try:
        return {"ok": run()}
    except Exception as error:  # noqa: BLE001 - the test compares what each rank raised
        return {"error": type(error).__name__, "message": str(error)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # a rank left waiting (a regression) fails in a minute instead of the default half hour
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    x, y = data()
    shard = slice(0, 40) if rank == 0 else slice(40, None)
    results = {}

    def lm():
        result = fit(GAUSSIAN, x[shard], y[shard], params=START, distributed=True)
        statistics = {name: getattr(result, name) for name in STATISTICS}
        band = result.eval_uncertainty(PROBE, sigma=2, kind="prediction").tolist()  # holds redchi
        text = {name: json.loads(result.to_json())[name] for name in STATISTICS}
        return {
            "params": result.params,
            "stderr": result.stderr,
            "cost": result.cost,
            "dof": result.dof,
            "statistics": statistics,
            "band": band,
            "json": text,
        }

    def adam():
        result = fit(GAUSSIAN, x[shard], y[shard], params=START, method="adam", max_steps=300, distributed=True)
        return {"params": result.params}

    def empty_rank():
        rows = slice(None) if rank == 0 else slice(0, 0)
        return fit(GAUSSIAN, x[rows], y[rows], params=START, distributed=True).params

    def disagree():
        return fit(GAUSSIAN, x[shard], y[shard], params={**START, "a": 1.0 + rank}, distributed=True).params

    def bad_rows():
        rows = y[shard].copy()
        if rank == 1:
            rows[3] = np.nan
        return fit(GAUSSIAN, x[shard], rows, params=START, distributed=True).params

    def omitted_rows():
        rows = y[shard].copy()
        if rank == 1:
            rows[3] = np.nan
        result = fit(GAUSSIAN, x[shard], rows, params=START, distributed=True, nan_policy="omit")
        return {"params": result.params, "warnings": result.warnings}

    def batch():
        # one engine pinned on both sides: "auto" takes the native one only once its library is built
        result = fit_batch(GAUSSIAN, x, curves(), params=START, distributed=True, engine="torch")
        return {
            "params": {k: v.tolist() for k, v in result.params.items()},
            "status": result.status,
            "history": result[6].history,
        }

    def chunked():
        return fit(GAUSSIAN, x[shard], y[shard], params=START, distributed=True, chunk_size=16).params

    def batch_of_one():  # rank 1 has no curve of its own, on the torch engine
        result = fit_batch(GAUSSIAN, x, curves()[:1], params=START, distributed=True, engine="torch")
        return {k: v.tolist() for k, v in result.params.items()}

    def batch_disagree():  # every rank must hold the same curves: a difference in the data is caught
        return fit_batch(GAUSSIAN, x, curves() * (1 + rank), params=START, distributed=True).status

    def batch_bad():  # one rank's bad input: every rank raises at once instead of waiting for it
        return fit_batch(GAUSSIAN, x, curves() if rank == 0 else curves()[:, :5], params=START, distributed=True).status

    def bad_option():
        return fit(GAUSSIAN, x[shard], y[shard], params=START, method="lm" if rank == 0 else "nope", distributed=True)

    def profile():
        result = fit(GAUSSIAN, x[shard], y[shard], params=START, distributed=True)
        return {name: ends[1] for name, ends in result.conf_interval(sigmas=(1,), params=["m", "s"]).items()}

    runs = (
        ("chunked", chunked),
        ("lm", lm),
        ("adam", adam),
        ("empty", empty_rank),
        ("disagree", disagree),
        ("bad", bad_rows),
        ("omitted", omitted_rows),
        ("batch", batch),
        ("profile", profile),
        ("batch_of_one", batch_of_one),
        ("batch_disagree", batch_disagree),
        ("batch_bad", batch_bad),
        ("bad_option", bad_option),
    )
    for name, run in runs:
        results[name] = _attempt(run)
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(results, handle)
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_lm_on_two_ranks_matches_one_process(ranks):
    x, y = data()
    single = fit(GAUSSIAN, x, y, params=START)
    for rank in ranks:
        found = rank["lm"]["ok"]
        for name in START:
            assert_matches_reference(found["params"][name], single.params[name], rtol=1e-10, what=name)
            assert_matches_reference(found["stderr"][name], single.stderr[name], rtol=1e-8, what=name)
        assert found["dof"] == single.dof
        assert_matches_reference(found["cost"], single.cost, rtol=1e-12, what="cost")


def test_every_statistic_of_a_distributed_fit_is_over_all_rows(ranks):
    # R^2 read this rank's rows only; chisqr, redchi, aic, bic, the bands and the JSON must agree too
    x, y = data()
    single = fit(GAUSSIAN, x, y, params=START)
    residual = y - single.data["fitted"]
    rsquared = 1 - residual @ residual / ((y - y.mean()) @ (y - y.mean()))  # numpy, all 101 rows
    assert_matches_reference(single.rsquared, rsquared, rtol=1e-12, what="one process's R^2")
    band = single.eval_uncertainty(PROBE, sigma=2, kind="prediction")
    for rank in ranks:
        found = rank["lm"]["ok"]
        for name in STATISTICS:
            for where in ("statistics", "json"):
                expected = getattr(single, name)
                assert_matches_reference(found[where][name], expected, rtol=1e-9, what=f"{where} {name}")
        assert_matches_reference(np.array(found["band"]), band, rtol=1e-8, what="prediction band")


def test_profile_intervals_on_two_ranks_use_every_rows_and_match_one_process(ranks):
    x, y = data()
    single = fit(GAUSSIAN, x, y, params=START).conf_interval(sigmas=(1,), params=["m", "s"])
    for rank in ranks:
        found = rank["profile"]["ok"]
        for name in ("m", "s"):
            assert_matches_reference(np.array(found[name]), np.array(single[name][1]), rtol=1e-8, what=name)


def test_adam_on_two_ranks_matches_one_process(ranks):
    x, y = data()
    single = fit(GAUSSIAN, x, y, params=START, method="adam", max_steps=300)
    for rank in ranks:
        for name in START:
            assert_matches_reference(rank["adam"]["ok"]["params"][name], single.params[name], rtol=1e-6, what=name)


def test_rows_omitted_on_one_rank_are_reported_on_every_rank(ranks):
    # nan_policy="omit" on a rank dropped its row without a word: row numbers are per shard, so none was said
    x, y = data()
    keep = np.arange(len(y)) != 43  # rank 1's row 3
    single = fit(GAUSSIAN, x[keep], y[keep], params=START)
    for rank in ranks:
        found = rank["omitted"]["ok"]
        for name in START:
            assert_matches_reference(found["params"][name], single.params[name], rtol=1e-10, what=name)
        assert any("1 rows with NaN or inf were omitted" in w and "rows (rank:row) 1:3" in w for w in found["warnings"])


def test_a_rank_with_no_rows_is_fine(ranks):
    x, y = data()
    single = fit(GAUSSIAN, x, y, params=START)
    for rank in ranks:
        for name in START:
            assert_matches_reference(rank["empty"]["ok"][name], single.params[name], rtol=1e-10, what=name)


def test_ranks_that_disagree_or_reject_their_rows_all_raise(ranks):
    for rank in ranks:
        assert rank["disagree"]["error"] == "UsageError"
        assert "disagree on the model, parameters" in rank["disagree"]["message"]
    assert ranks[1]["bad"]["error"] == "DataError"
    assert "rank 1 of this distributed fit rejected its input" in ranks[0]["bad"]["message"]


def test_batch_ranks_that_disagree_reject_input_or_hold_no_curve(ranks):
    x, _ = data()
    single = fit(GAUSSIAN, x, curves()[0], params=START)
    for rank in ranks:
        for name in START:
            assert_matches_reference(rank["batch_of_one"]["ok"][name][0], single.params[name], rtol=1e-8, what=name)
        assert rank["batch_disagree"]["error"] == "UsageError"
        assert "checksum of data and initial values" in rank["batch_disagree"]["message"]
    assert ranks[1]["batch_bad"]["error"] == "DataError" and "has 5" in ranks[1]["batch_bad"]["message"]
    assert "rank 1 of this distributed fit rejected its input" in ranks[0]["batch_bad"]["message"]
    assert ranks[1]["bad_option"]["error"] == "UsageError" and "unknown method" in ranks[1]["bad_option"]["message"]
    assert "rank 1 of this distributed fit rejected its input" in ranks[0]["bad_option"]["message"]


def test_distributed_needs_a_process_group():
    from customgrad import UsageError

    x, y = data()
    assert not dist.is_initialized()
    with pytest.raises(UsageError, match="init_process_group"):
        fit(GAUSSIAN, x, y, params=START, distributed=True)
    assert torch.distributed.is_available()


def test_fit_batch_shards_curves_and_every_rank_gets_all(ranks):
    x, _ = data()
    whole = fit_batch(GAUSSIAN, x, curves(), params=START, engine="torch")
    for rank in ranks:
        found = rank["batch"]["ok"]
        assert found["status"] == whole.status
        assert found["history"] == pytest.approx(whole[6].history, rel=1e-10)
        for name in START:
            assert_matches_reference(np.array(found["params"][name]), whole.params[name], rtol=1e-10, what=name)


def _torchrun_fit(tmp_path, *options: str) -> subprocess.CompletedProcess:
    """``customgrad fit --distributed`` of `data` on 2 torchrun processes, with ``options`` added."""
    x, y = data()
    table = tmp_path / "data.csv"
    table.write_text("x,y\n" + "\n".join(f"{a!r},{b!r}" for a, b in zip(x.tolist(), y.tolist(), strict=True)) + "\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    command += ["--master-port", str(_free_port()), "-m", "customgrad", "fit", "--data", str(table), "--distributed"]
    command += ["--model", GAUSSIAN, "--quiet", *options]
    command += [f"--param={name}={value}" for name, value in START.items()]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def test_torchrun_cli_fits_rows_on_two_ranks_and_rank_0_writes(tmp_path):
    x, y = data()
    out = _torchrun_fit(tmp_path, "--json", str(tmp_path / "fit.json"), "--plot", str(tmp_path / "f.png"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("a=") == 1  # rank 0 alone prints
    assert out.stdout.count("the plot shows rank 0's 51 rows of the fit's 101") == 1
    found = json.loads((tmp_path / "fit.json").read_text())["params"]
    single = fit(GAUSSIAN, {"x": x}, y, params=START)
    for name in START:
        assert_matches_reference(found[name], single.params[name], rtol=1e-10, what=name)


def test_torchrun_cli_errors_are_printed_once_and_options_checked_on_every_rank(tmp_path):
    out = _torchrun_fit(tmp_path, "--bands", "prediction")  # --bands without --plot/--json
    assert out.returncode != 0
    assert out.stderr.count("error: --bands does not apply") == 1, out.stderr  # rank 0 says it; none hangs


def test_chunks_on_two_ranks_match_one_process(ranks):
    x, y = data()
    single = fit(GAUSSIAN, x, y, params=START)
    for rank in ranks:
        for name in START:
            assert_matches_reference(rank["chunked"]["ok"][name], single.params[name], rtol=1e-9, what=name)


def _dying_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=20)
    )
    if rank == 1:
        os._exit(0)  # dies before the fit's first collective
    x, y = data()
    outcome = _attempt(lambda: fit(GAUSSIAN, x[:50], y[:50], params=START, distributed=True).params)
    with open(f"{out}/survivor.json", "w") as handle:
        json.dump(outcome, handle)
    os._exit(0)  # the group cannot be torn down cleanly without the dead rank


def test_a_rank_that_dies_makes_the_others_fail_with_a_message(tmp_path):
    mp.spawn(_dying_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    outcome = json.loads((tmp_path / "survivor.json").read_text())
    assert outcome["error"] == "FitError"
    assert "lost contact with the others" in outcome["message"]
