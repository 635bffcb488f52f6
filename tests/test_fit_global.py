"""Global fits (fit_batch with shared parameters) against SciPy's least_squares on the dense stacked problem."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from customgrad import UsageError, fit, fit_batch
from global_reference import (
    decays,
    decays_gradient,
    dense_global_fit,
    gaussians,
    gaussians_gradient,
    two_decays,
    two_decays_gradient,
)
from reference import assert_matches_reference

DECAY = "a*exp(-k*x)+c"
GAUSSIAN = "a*exp(-(x-m)**2/(2*s**2))+c"


@pytest.fixture(params=["native", "C", "torch"])
def linear_algebra(request, monkeypatch):
    """Each way of the per-curve work (CPU float64, where a compiler is found), as the engine to fit with:
    "native", each curve's R_b from the model's native library (`global_native.factors`); "C", the model's rows of
    all curves, then the C kernels of `global_native`; "torch", the same as torch operations."""
    if request.param == "torch":
        monkeypatch.setattr(importlib.import_module("customgrad.fit.global_native"), "usable", lambda tensor: False)
    return "native" if request.param == "native" else "torch"


def assert_global_matches(result, reference, shared_names, local_names, rtol=1e-8, value_slack=0.0, stderr_rtol=None):
    """Values and stderr of the shared and every local parameter equal the dense fit's to ``rtol`` (values
    also within ``value_slack`` of their standard errors, where the minimum is too flat for more, and the
    stderr, taken at such a point, to ``stderr_rtol``)."""
    shared, local, shared_error, local_error, cost, _, solution = reference
    stderr_rtol = rtol if stderr_rtol is None else stderr_rtol
    assert solution.status > 0 and result.shared.success
    for j, name in enumerate(shared_names):
        slack = value_slack * float(shared_error[j])
        assert_matches_reference(result.shared.params[name], shared[j], rtol=rtol, atol=slack, what=f"shared {name}")
        assert_matches_reference(result.shared.stderr[name], shared_error[j], rtol=stderr_rtol, what=f"stderr {name}")
    for j, name in enumerate(local_names):
        scale = np.abs(local[:, j]).max()  # relative to the parameter's size over the batch (c can cross 0)
        slack = max(rtol * scale, value_slack * float(local_error[:, j].min()))
        assert_matches_reference(result.params[name], local[:, j], rtol=rtol, atol=slack, what=name)
        assert_matches_reference(result.stderr[name], local_error[:, j], rtol=stderr_rtol, what=f"stderr {name}")
    assert_matches_reference(result.shared.cost, cost, rtol=1e-12, what="cost")


@pytest.fixture(scope="module")
def decay_curves():
    """200 noisy decays a_b exp(-0.7 x) + c_b, 12 points each."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 5, 12)
    local = np.stack([rng.uniform(1, 3, 200), rng.uniform(-0.5, 0.5, 200)], 1)
    return x, decays(x, [0.7], local) + 0.02 * rng.standard_normal((200, 12))


def decay_start(y):
    """A start from the data (a = first - last point, c = last point, k = 0.8): fewer dense SciPy steps."""
    return {"k": {"value": 0.8, "shared": True}, "a": y[:, 0] - y[:, -1], "c": y[:, -1]}


@pytest.fixture(scope="module")
def decay_reference(decay_curves):
    x, y = decay_curves
    start = decay_start(y)
    local = np.stack([start["a"], start["c"]], 1)
    return dense_global_fit(decays, decays_gradient, x, y, np.array([0.8]), local)


def test_200_decays_with_a_shared_rate_match_the_dense_fit(decay_curves, decay_reference, linear_algebra):
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}
    result = fit_batch(DECAY, x, y, params=params, engine=linear_algebra)
    assert_global_matches(result, decay_reference, ["k"], ["a", "c"])  # from another start: the same minimum
    assert result.shared.dof == y.size - 1 - 2 * len(y)
    # the blocks of the dense covariance: cov(a_3, k) and cov(c_3, a_3)
    covariance = decay_reference[5]
    assert_matches_reference(result.shared.cross_covariance[3, 0, 0], covariance[1 + 2 * 3, 0], rtol=1e-7)
    assert_matches_reference(result.shared.local_covariance[3, 1, 0], covariance[2 + 2 * 3, 1 + 2 * 3], rtol=1e-7)


def test_a_callable_model_matches_the_dense_fit(decay_curves, decay_reference):
    import torch

    x, y = decay_curves
    result = fit_batch(
        lambda x, a, k, c: a * torch.exp(-k * x) + c, x, y,
        params={"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0},
    )  # fmt: skip
    assert_global_matches(result, decay_reference, ["k"], ["a", "c"])


@pytest.mark.parametrize("engine", ["native", "torch"])
def test_bounds_leave_an_interior_solution_unchanged(decay_curves, decay_reference, engine):
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True, "min": 0.1, "max": 5.0}, "a": {"value": 1.0, "min": -10}, "c": 0.0}
    result = fit_batch(DECAY, x, y, params=params, engine=engine)
    assert_global_matches(result, decay_reference, ["k"], ["a", "c"])


def test_50_gaussians_with_a_shared_width_match_the_dense_fit(linear_algebra):
    rng = np.random.default_rng(2)
    x = np.linspace(-3, 3, 32)
    local = np.stack([rng.uniform(1, 3, 50), rng.uniform(-1, 1, 50), rng.uniform(-0.5, 0.5, 50)], 1)
    y = gaussians(x, [0.8], local) + 0.05 * rng.standard_normal((50, 32))
    start = np.stack([np.full(50, 1.5), local[:, 1] + 0.1, np.zeros(50)], 1)
    reference = dense_global_fit(gaussians, gaussians_gradient, x, y, np.array([1.0]), start)
    params = {"s": {"value": 1.0, "shared": True}, "a": 1.5, "m": start[:, 1], "c": 0.0}
    result = fit_batch(GAUSSIAN, x, y, params=params, engine=linear_algebra)
    assert_global_matches(result, reference, ["s"], ["a", "m", "c"])


def test_150_curves_with_two_shared_rates_match_the_dense_fit(linear_algebra):
    # two shared columns: the shared step's block is 2 x 2; 150 curves fill neither the C kernels' groups of
    # curves nor their blocks of 8
    rng = np.random.default_rng(4)
    x = np.linspace(0, 6, 16)
    local = np.stack([rng.uniform(1, 3, 150), rng.uniform(1, 3, 150)], 1)
    y = two_decays(x, [0.5, 2.0], local) + 0.02 * rng.standard_normal((150, 16))
    start = np.tile([1.0, 1.0], (150, 1))
    reference = dense_global_fit(two_decays, two_decays_gradient, x, y, np.array([0.6, 1.8]), start)
    params = {"k": {"value": 0.6, "shared": True}, "q": {"value": 1.8, "shared": True}, "a": 1.0, "c": 1.0}
    result = fit_batch("a*exp(-k*x)+c*exp(-q*x)", x, y, params=params, engine=linear_algebra)
    assert_global_matches(result, reference, ["k", "q"], ["a", "c"])


def test_a_poorly_determined_shared_rate_matches_the_dense_fit(linear_algebra):
    # a short window and large noise: k's standard error is 70% of k, and k, a, c are strongly correlated
    rng = np.random.default_rng(3)
    x = np.linspace(0, 0.8, 10)
    local = np.stack([rng.uniform(1, 3, 8), rng.uniform(-0.5, 0.5, 8)], 1)
    y = decays(x, [0.7], local) + 0.1 * rng.standard_normal((8, 10))
    reference = dense_global_fit(decays, decays_gradient, x, y, np.array([1.0]), np.tile([1.0, 0.0], (8, 1)))
    params = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}
    result = fit_batch(DECAY, x, y, params=params, engine=linear_algebra)
    assert result.shared.stderr["k"] > 0.5 * abs(result.shared.params["k"])  # poorly determined indeed
    # so flat a minimum fixes the cost to float64's 1e-16 but the values only to about sqrt(1e-16) of their
    # standard errors (the solvers stop up to 4e-8 stderr apart): values within 1e-7 stderr; the stderr at
    # points that far apart differ by up to 1.5 times as much relative (seen: 5.8e-8), so to 2e-7
    assert_global_matches(result, reference, ["k"], ["a", "c"], value_slack=1e-7, stderr_rtol=2e-7)


def test_a_batch_of_one_curve_is_an_ordinary_fit(decay_curves):
    x, y = decay_curves
    single = fit(DECAY, x, y[0], params={"k": 1.0, "a": 1.0, "c": 0.0})
    result = fit_batch(DECAY, x, y[:1], params={"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0})
    for name in ("a", "c"):
        assert_matches_reference(result.params[name][0], single.params[name], rtol=1e-9, what=name)
        assert_matches_reference(result.stderr[name][0], single.stderr[name], rtol=1e-8, what=f"stderr {name}")
    assert_matches_reference(result.shared.params["k"], single.params["k"], rtol=1e-9)
    assert_matches_reference(result.shared.stderr["k"], single.stderr["k"], rtol=1e-8)
    curve = result[0]  # the curve's FitResult carries the joint covariance (its order: local, then shared)
    order = [single.names.index(name) for name in curve.names]
    assert_matches_reference(curve.covariance, single.covariance[np.ix_(order, order)], rtol=1e-7, what="cov")


def test_curves_without_data_are_left_out(decay_curves):
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}
    padded = np.concatenate([y[:20], np.full((1, y.shape[1]), np.nan), y[20:40]])
    result = fit_batch(DECAY, x, padded, params=params)
    plain = fit_batch(DECAY, x, y[:40], params=params)
    assert result.status[20] == "no_data" and np.isnan(result.params["a"][20])
    assert_matches_reference(result.shared.params["k"], plain.shared.params["k"], rtol=1e-12)
    assert_matches_reference(result.params["a"][21:], plain.params["a"][20:], rtol=1e-12)
    assert result.shared.dof == plain.shared.dof


def test_a_local_parameter_its_curve_cannot_fix_is_named_and_the_others_keep_their_errors(decay_curves, linear_algebra):
    # curve 3 keeps one point: its a and c are one equation (a e^{-k x0} + c = y0), neither determined, and
    # the curve says nothing about k; the other curves' local errors are those of the fit without it
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}
    sparse = y[:12].copy()
    sparse[3, 1:] = np.nan
    result = fit_batch(DECAY, x, sparse, params=params, engine=linear_algebra)  # (curve 3: Householder, not Gram)
    without = fit_batch(DECAY, x, np.delete(y[:12], 3, axis=0), params=params, engine=linear_algebra)
    assert any("local parameter a is not identifiable on 1 curve(s) (3)" in text for text in result.shared.warnings)
    assert np.isnan(result.stderr["a"][3]) and np.isnan(result.stderr["c"][3])
    assert_matches_reference(result.shared.params["k"], without.shared.params["k"], rtol=1e-9, what="k")
    # (the same variance: curve 3 adds one point and two parameters; dof differs by one)
    scale = np.sqrt(without.shared.dof / result.shared.dof * result.shared.cost / without.shared.cost)
    kept = np.delete(np.arange(12), 3)
    assert_matches_reference(result.stderr["a"][kept], scale * without.stderr["a"], rtol=1e-7, what="stderr a")


def test_a_shared_parameter_with_no_effect_is_named_and_gets_no_error(decay_curves, linear_algebra):
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True}, "d": {"value": 0.0, "shared": True}, "a": 1.0, "c": 0.0}
    result = fit_batch("a*exp(-k*x)+c+0*d", x, y[:10], params=params, engine=linear_algebra)
    assert np.isnan(result.shared.stderr["d"]) and np.isfinite(result.shared.stderr["k"])
    assert any("shared parameter d has no effect on any curve" in text for text in result.shared.warnings)


def test_a_shared_parameter_tied_to_a_local_one_is_refused(decay_curves):
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True, "expr": "2*a"}, "a": 1.0, "c": 0.0}
    with pytest.raises(UsageError, match="local \\(per-curve\\) parameter 'a'"):
        fit_batch(DECAY, x, y[:3], params=params)


def test_a_shared_parameter_tied_to_another_shared_one_is_refused_as_every_tie(decay_curves):
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True, "expr": "2*m"}, "m": {"value": 1.0, "shared": True}, "a": 1.0}
    with pytest.raises(UsageError, match=r"parameter 'k' is tied by 'expr' \('2\*m'\): fit_batch does not take"):
        fit_batch("a*exp(-k*x)+0*m", x, y[:3], params=params)


def test_a_shared_parameter_with_one_value_per_curve_is_refused(decay_curves):
    x, y = decay_curves
    with pytest.raises(UsageError, match="shared parameter 'k' is one value for the whole batch"):
        fit_batch(DECAY, x, y[:3], params={"k": {"value": np.ones(3), "shared": True}, "a": 1.0, "c": 0.0})


def test_a_fixed_shared_parameter_is_a_fixed_parameter(decay_curves):
    x, y = decay_curves
    params = {"k": {"value": 0.7, "shared": True, "fixed": True}, "a": 1.0, "c": 0.0}
    result = fit_batch(DECAY, x, y[:5], params=params)
    plain = fit_batch(DECAY, x, y[:5], params={"k": {"value": 0.7, "fixed": True}, "a": 1.0, "c": 0.0})
    assert_matches_reference(result.params["a"], plain.params["a"], rtol=1e-10)


def test_report_json_and_csv_show_the_shared_values(decay_curves, tmp_path):
    x, y = decay_curves
    result = fit_batch(DECAY, x, y[:5], params={"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0})
    assert "shared k = " in result.summary()
    document = json.loads(result.to_json())
    assert document["shared"]["params"]["k"] == pytest.approx(result.shared.params["k"])
    header = result.to_csv().splitlines()[0].split(",")
    assert "k" in header and "k_stderr" in header and "a_stderr" in header


def test_the_cli_fits_shared_parameters_and_writes_them(decay_curves, tmp_path):
    import subprocess
    import sys

    x, y = decay_curves
    data = tmp_path / "curves.csv"
    data.write_text("\n".join(",".join(map(repr, row.tolist())) for row in [x, *y[:6]]) + "\n")
    paths = {name: tmp_path / f"out.{name}" for name in ("json", "csv")}
    command = [sys.executable, "-m", "customgrad", "fit", "--batch", "--data", str(data), "--model", DECAY]
    command += ["--param", "k=1", "--param", "a=1", "--param", "c=0", "--shared", "k", "--bound", "k=0:"]
    command += ["--json", str(paths["json"]), "--csv", str(paths["csv"]), "--plot", str(tmp_path / "fits.png")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "shared k = " in done.stdout
    expected = fit_batch(DECAY, x, y[:6], params={"k": {"value": 1.0, "shared": True, "min": 0}, "a": 1.0, "c": 0.0})
    shared = json.loads(paths["json"].read_text())["shared"]
    assert_matches_reference(shared["params"]["k"], expected.shared.params["k"], rtol=1e-12)
    assert_matches_reference(shared["stderr"]["k"], expected.shared.stderr["k"], rtol=1e-10)
    assert "k_stderr" in paths["csv"].read_text().splitlines()[0]
    assert (tmp_path / "fits.png").stat().st_size > 0
    wrong = subprocess.run([*command[:-6], "--shared", "tau"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "--shared tau: no --param tau=VALUE" in wrong.stderr


def test_every_parameter_shared_is_one_fit_of_all_curves_stacked(decay_curves):
    x, y = decay_curves
    params = {
        "k": {"value": 1.0, "shared": True},
        "a": {"value": 1.0, "shared": True},
        "c": {"value": 0.0, "shared": True},
    }
    result = fit_batch(DECAY, x, y[:4], params=params)
    single = fit(DECAY, np.tile(x, 4), y[:4].ravel(), params={"k": 1.0, "a": 1.0, "c": 0.0})
    for name in ("k", "a", "c"):
        assert_matches_reference(result.shared.params[name], single.params[name], rtol=1e-8, what=name)
        assert_matches_reference(result.shared.stderr[name], single.stderr[name], rtol=1e-8, what=f"stderr {name}")


def test_a_model_undefined_at_the_start_stops_with_nonfinite_and_nan_errors(decay_curves):
    x, y = decay_curves
    result = fit_batch("a*log(x-k)+c", x, y[:4], params={"k": {"value": 3.0, "shared": True}, "a": 1.0, "c": 0.0})
    assert result.shared.status == "nonfinite" and not result.success.any()
    assert np.isnan(result.shared.stderr["k"]) and any("NaN or inf" in text for text in result.shared.warnings)


def test_every_engine_runs_the_one_global_solver(decay_curves):
    # the same steps whichever way R_b is computed: the same answer to roundoff
    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}
    found = [fit_batch(DECAY, x, y[:6], params=params, engine=engine) for engine in ("native", "torch", "auto")]
    for result in found[1:]:
        for table in ("params", "stderr"):
            assert_matches_reference(
                getattr(result.shared, table)["k"], getattr(found[0].shared, table)["k"], rtol=1e-12
            )


def test_float32_matches_float64_to_float32_precision(decay_curves):
    import torch

    x, y = decay_curves
    params = {"k": {"value": 1.0, "shared": True}, "a": 1.0, "c": 0.0}
    single = fit_batch(DECAY, x, y[:20], params=params, dtype=torch.float32)
    double = fit_batch(DECAY, x, y[:20], params=params)
    # k's float32 roundoff (1e-7 relative) over a minimum this flat: well within a percent of its stderr
    assert abs(single.shared.params["k"] - double.shared.params["k"]) < 1e-2 * double.shared.stderr["k"]
    assert_matches_reference(single.shared.stderr["k"], double.shared.stderr["k"], rtol=1e-3, what="stderr")


def test_a_global_fit_stopped_at_the_step_limit_says_which_option_to_raise(decay_curves):
    x, y = decay_curves
    result = fit_batch(DECAY, x, y[:3], params={"k": {"value": 3.0, "shared": True}, "a": 1.0, "c": 0.0}, max_steps=1)
    assert result.shared.status == "max_steps"
    assert "raise max_steps" in result.summary() and "{steps}" not in result.summary()


THREADS_PROBE = """
import customgrad, json, numpy as np, torch
from customgrad import fit_batch
rng = np.random.default_rng(5)
x = np.linspace(-3, 3, 64)
a, m = rng.uniform(1, 3, 2000), rng.uniform(-1, 1, 2000)
y = a[:, None] * np.exp(-((x - m[:, None]) ** 2) / (2 * 0.8**2)) + 0.05 * rng.standard_normal((2000, 64))
params = {"s": {"value": 1.0, "shared": True}, "a": 1.5, "m": m, "c": 0.0}
found = {}
for threads in (1, 2):
    torch.set_num_threads(threads)
    result = fit_batch("a*exp(-(x-m)**2/(2*s**2))+c", x, y, params=params, engine="native")
    found[threads] = [result.shared.params["s"], result.shared.stderr["s"], result.params["m"].tolist()]
print(json.dumps([customgrad.openmp.waits_passively(), found[1], found[2]]))
"""


def test_two_threads_give_the_one_thread_fit():
    # customgrad imported first: OpenMP waits passively and the per-curve C loops run on both threads
    done = subprocess.run([sys.executable, "-c", THREADS_PROBE], capture_output=True, text=True, check=True)
    passive, one, two = json.loads(done.stdout.splitlines()[-1])
    assert passive
    assert_matches_reference(two[0], one[0], rtol=1e-14, what="s")
    assert_matches_reference(two[1], one[1], rtol=1e-14, what="stderr s")
    assert_matches_reference(np.array(two[2]), np.array(one[2]), rtol=1e-14, what="m")
