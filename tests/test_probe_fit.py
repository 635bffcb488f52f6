"""Inputs an outside tester brings to `fit`, `fit_batch`, their results and ``customgrad fit``: each test is
a defect found by probing, checked against SciPy's `curve_fit` or a plain NumPy reference.
"""

import json
import pickle

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit

from command_line import run_customgrad
from customgrad.errors import DataError, FitError, UsageError
from customgrad.fit import fit, fit_batch
from reference import assert_matches_reference

MODEL = "a*exp(-k*x) + c"
START = {"a": 1.0, "k": 0.1, "c": 0.0}


def decay(points: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A noisy-looking decay (deterministic ripple instead of noise)."""
    x = np.linspace(0, 5, points)
    return x, 3 * np.exp(-0.7 * x) + 0.5 + 0.01 * np.sin(9 * x)


def scipy_decay(x, y) -> np.ndarray:
    """The decay's least-squares values by SciPy's `curve_fit`."""
    values, _ = curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, x, y, p0=[1, 0.1, 0], xtol=1e-14, ftol=1e-14)
    return values


def test_reversed_numpy_views_are_fitted_like_their_copies():
    # x[::-1] has a negative stride, which torch.as_tensor refuses: it was a raw ValueError from torch
    x, y = decay()
    result = fit(MODEL, x[::-1], y[::-1], params=START, sigma=np.ones_like(x)[::-1])
    assert_matches_reference(np.array(list(result.params.values())), scipy_decay(x, y), rtol=1e-7)
    assert np.allclose(result.predict(x[::-1][:3]), result.predict(x[::-1][:3].copy()), rtol=0, atol=0)
    curves = np.stack([y, 2 * y])
    batch = fit_batch(MODEL, x[::-1], curves[::-1, ::-1], params=START)
    assert_matches_reference(batch.params["k"], [scipy_decay(x, 2 * y)[1], scipy_decay(x, y)[1]], rtol=1e-7)


def test_scipy_style_bounds_are_a_usage_error_that_shows_the_dict_form():
    x, y = decay()
    for run in (fit, fit_batch):
        data = y if run is fit else y[None]
        with pytest.raises(UsageError, match=r"bounds must be a dict of name -> \(lower, upper\)"):
            run(MODEL, x, data, params=START, bounds=([0, 0, 0], [10, 10, 10]))


def test_cli_nan_policy_omit_drops_rows_with_empty_csv_cells(tmp_path):
    # an empty cell is how spreadsheets and pandas write a missing value: it was "'' is not a number"
    data = tmp_path / "hole.csv"
    data.write_text("x,y\n1,2.1\n2,\n3,6.5\n4,8.2\n5,9.7\n")
    result_path = tmp_path / "fit.json"
    arguments = ("fit", "--data", data, "--model", "a*x + b", "--param", "a=1", "--param", "b=0", "--quiet")
    done = run_customgrad(*arguments, "--nan-policy", "omit", "--json", result_path)
    assert done.returncode == 0, done.stderr
    params = json.loads(result_path.read_text())["params"]
    kept = np.array([[1, 2.1], [3, 6.5], [4, 8.2], [5, 9.7]])
    slope, intercept = np.polyfit(kept[:, 0], kept[:, 1], 1)
    assert_matches_reference(np.array([params["a"], params["b"]]), np.array([slope, intercept]), rtol=1e-10)
    refused = run_customgrad(*arguments)
    assert refused.returncode == 1 and "--nan-policy omit" in refused.stderr, refused.stderr


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # NumPy 2 on a tensor, as users see it
@pytest.mark.parametrize("run", [fit, fit_batch])
def test_a_callable_written_with_numpy_is_told_to_use_torch_ops(run):
    # curve_fit users write np.exp: the Jacobian's autograd then failed deep in torch with a RuntimeError
    x, y = decay(10)
    with pytest.raises(FitError, match=r"torch operations \(torch.exp, not np.exp\)"):
        run(lambda x, a, k, c: a * np.exp(-k * x) + c, x, y if run is fit else y[None], params=START)


def test_a_tie_to_a_constant_is_refused_before_fitting_naming_the_fixed_form():
    # lmfit users write {"expr": "0.7"}: the fit ran, then its result failed with "model '0.7' has no inputs"
    x, y = decay()
    with pytest.raises(UsageError, match=r"expr of parameter 'k' \('0.7'\) names no parameter.*'fixed': True"):
        fit(MODEL, x, y, params={"a": 1.0, "k": {"expr": "0.7"}, "c": 0.0})
    fixed = fit(MODEL, x, y, params={"a": 1.0, "k": {"value": 0.7, "fixed": True}, "c": 0.0})
    values, _ = curve_fit(lambda x, a, c: a * np.exp(-0.7 * x) + c, x, y, p0=[1, 0])
    assert_matches_reference(np.array([fixed.params["a"], fixed.params["c"]]), values, rtol=1e-7)


@pytest.mark.parametrize("engine", ["native", "torch"])
def test_batch_stderr_arrays_mark_a_parameter_the_model_no_longer_depends_on_as_undetermined(engine):
    # constant data: c + a exp(-k x) fits exactly with a ~ 1e-16, so k is free; the batch's arrays said
    # k +- 0 (exact fit, zero cost) where the curve's FitResult and a single fit say NaN
    x, y = decay(15)
    curves = np.stack([np.ones_like(x), y])
    batch = fit_batch(MODEL, x, curves, params=START, engine=engine)
    alone = fit(MODEL, x, np.ones_like(x), params=START, engine=engine)
    assert np.isnan(alone.stderr["k"]) and np.isnan(batch[0].stderr["k"])
    assert np.isnan(batch.stderr["k"][0]), batch.stderr
    _, covariance = curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, x, y, p0=list(batch[1].params.values()))
    expected = np.sqrt(np.diag(covariance))
    got = np.array([batch.stderr[name][1] for name in ("a", "k", "c")])
    assert_matches_reference(got, expected, rtol=1e-5, what="stderr of the other curve")


def test_cli_batch_shared_named_twice_is_one_shared_parameter(tmp_path):
    # --shared k --shared k failed: "initial value of parameter 'k' must be a number, got {'value': 1.0, ...}"
    x, y = decay(12)
    curves = tmp_path / "curves.csv"
    curves.write_text("\n".join(",".join(f"{v:.17g}" for v in row) for row in (x, y, 2 * y - 0.5)) + "\n")
    arguments = ["fit", "--batch", "--data", curves, "--model", MODEL, "--param", "a=1", "--param", "k=0.1"]
    arguments += ["--param", "c=0", "--quiet"]
    once = run_customgrad(*arguments, "--shared", "k", "--json", tmp_path / "once.json")
    twice = run_customgrad(*arguments, "--shared", "k", "--shared", "k", "--json", tmp_path / "twice.json")
    assert once.returncode == 0 and twice.returncode == 0, twice.stderr
    shared = json.loads((tmp_path / "twice.json").read_text())["shared"]
    assert shared == json.loads((tmp_path / "once.json").read_text())["shared"]


def test_a_batch_indexed_by_a_slice_or_a_list_says_how_to_index_it():
    # batch[1:3] raised "unhashable type: 'slice'" from the hint's own lookup
    x, y = decay(10)
    batch = fit_batch(MODEL, x, np.stack([y, y, y]), params=START)
    for index in (slice(1, 3), [0, 1]):
        with pytest.raises(TypeError, match=r"index a batch by curve number, batch\[17\]"):
            batch[index]


def torch_decay(x, a, k, c):
    """The decay as a callable model (module level, so that it pickles)."""
    return a * torch.exp(-k * x) + c


@pytest.mark.parametrize(
    "model, params",
    [(MODEL, START), (MODEL, {"a": 1.0, "k": {"expr": "a/4"}, "c": 0.0}), (torch_decay, START)],
    ids=["formula", "tied", "callable"],
)
def test_fit_results_pickle_and_still_predict_and_profile(model, params):
    # multiprocessing / joblib return results by pickle: it failed on the model's lambdas and closures
    x, y = decay()
    result = fit(model, x, y, params=params)
    again = pickle.loads(pickle.dumps(result))
    assert again.params == result.params and again.stderr == result.stderr
    new_x = np.array([0.5, 6.0])
    values = [result.params[name] for name in ("a", "k", "c")]
    assert_matches_reference(again.predict(new_x), values[0] * np.exp(-values[1] * new_x) + values[2], rtol=1e-13)
    assert np.array_equal(again.eval_uncertainty(new_x), result.eval_uncertainty(new_x))
    assert again.conf_interval(sigmas=1) == result.conf_interval(sigmas=1)


def test_batch_results_pickle_with_their_curves():
    x, y = decay()
    batch = fit_batch(MODEL, x, np.stack([y, 2 * y, np.full_like(y, np.nan)]), params=START)
    joint = fit_batch(MODEL, x, np.stack([y, 2 * y]), params={**START, "k": {"value": 0.1, "shared": True}})
    for result in (batch, joint):
        again = pickle.loads(pickle.dumps(result))
        assert again.to_csv() == result.to_csv()
        assert again[1].params == result[1].params and again[1].stderr == result[1].stderr
        a, k, c = (result[1].params[name] for name in ("a", "k", "c"))
        assert_matches_reference(again[1].predict([0.5]), np.array([a * np.exp(-k * 0.5) + c]), rtol=1e-13)


def test_profile_levels_asked_for_one_after_another_are_all_kept_and_reported():
    # conf_interval(sigmas=3) after conf_interval() replaced the 1 and 2 sigma intervals, and report(ci=True)
    # (documented: "the profile intervals at 1 and 2 sigma") then showed the 3 sigma column only
    x, y = decay()
    result = fit(MODEL, x, y, params=START)
    first = result.conf_interval(sigmas=(1, 2), params="k")
    third = result.conf_interval(sigmas=3, params="k")
    assert list(third["k"]) == [3]
    table = result.report(ci=True)
    assert all(f"{level} sigma (lower, upper)" in table for level in (1, 2, 3)), table
    intervals = json.loads(result.to_json())["conf_interval"]
    assert intervals["k"]["1"] == list(first["k"][1]) and intervals["k"]["3"] == list(third["k"][3])
    assert set(intervals["a"]) == {"1", "2"}


@pytest.mark.parametrize("run", [fit, fit_batch])
def test_devices_without_values_or_backend_are_usage_errors(run):
    # device="meta" was a FitError "fails at the initial values" (a raw RuntimeError in a batch), a torch
    # without MPS / XPU a raw RuntimeError / AssertionError, meta tensors a NotImplementedError
    x, y = decay(10)
    data = y if run is fit else y[None]
    with pytest.raises(UsageError, match="device 'meta' holds no values"):
        run(MODEL, x, data, params=START, device="meta")
    for device in ("mps", "xpu"):
        backend = getattr(torch.backends, device, None) or getattr(torch, device, None)
        if backend is not None and backend.is_available():
            continue
        with pytest.raises(UsageError, match=f"device '{device}' is not available"):
            run(MODEL, x, data, params=START, device=device)
    with pytest.raises(DataError, match="'meta' tensor: it has a shape but no values"):
        run(MODEL, torch.zeros(10, device="meta"), torch.zeros(data.shape, device="meta"), params=START)


def test_masked_array_entries_are_missing_values_not_silently_fitted():
    # np.ma arrays were read through np.asarray, which drops the mask: the masked outlier was fitted
    x = np.ma.array([1.0, 2.0, 3.0, 4.0, 5.0], mask=[0, 0, 1, 0, 0])
    y = np.array([1.1, 2.0, 300.0, 3.9, 5.2])
    with pytest.raises(DataError, match="NaN or inf in x at rows 2"):
        fit("a*x + b", x, y, params={"a": 1, "b": 0})
    result = fit("a*x + b", x, y, params={"a": 1, "b": 0}, nan_policy="omit")
    kept = np.array([0, 1, 3, 4])
    assert_matches_reference(
        np.array([result.params["a"], result.params["b"]]), np.polyfit(x.data[kept], y[kept], 1), rtol=1e-10
    )


def test_predict_takes_x_in_the_column_shape_fit_took_it_in():
    # fit(x[:, None], y) worked (one axis longer than 1), but predict(x[:, None]) was refused
    x, y = decay()
    result = fit(MODEL, x[:, None], y, params=START)
    a, k, c = (result.params[name] for name in ("a", "k", "c"))
    expected = a * np.exp(-k * x) + c
    assert_matches_reference(result.predict(x[:, None]), expected, rtol=1e-13)
    assert_matches_reference(result.eval_uncertainty(x[None, :]), result.eval_uncertainty(x), rtol=1e-13)
    assert_matches_reference(result.predict(np.array([[1.0]])), np.array([a * np.exp(-k) + c]), rtol=1e-13)
    with pytest.raises(DataError, match=r"got shape \(2, 30\)"):
        result.predict(np.stack([x, x]))


def test_an_on_step_that_cannot_take_step_and_cost_is_refused_before_fitting():
    # on_step=lambda step: ... failed at the first step with a TypeError from inside the solver
    x, y = decay()
    with pytest.raises(UsageError, match=r"on_step\(step\) cannot be called as on_step\(step, cost\)"):
        fit(MODEL, x, y, params=START, on_step=lambda step: None)
    seen = []
    fit(MODEL, x, y, params=START, on_step=lambda step, cost, *rest: seen.append(cost))
    assert seen and all(np.isfinite(seen))


def test_results_written_where_they_cannot_be_are_usage_errors(tmp_path):
    # to_json / to_csv into a missing directory raised a raw FileNotFoundError; plot() already said why
    x, y = decay()
    result = fit(MODEL, x, y, params=START)
    batch = fit_batch(MODEL, x, y[None], params=START)
    missing = tmp_path / "missing" / "out.json"
    for write in (result.to_json, batch.to_json, batch.to_csv):
        with pytest.raises(UsageError, match="does not exist; create it or choose another path"):
            write(missing)
        with pytest.raises(UsageError, match="is a directory"):
            write(tmp_path)
    assert json.loads(result.to_json(tmp_path / "fit.json")) == json.loads((tmp_path / "fit.json").read_text())


def test_shared_in_a_single_fit_says_it_belongs_to_fit_batch():
    x, y = decay()
    with pytest.raises(UsageError, match=r"unknown keys \['shared'\].*'shared' is for fit_batch"):
        fit(MODEL, x, y, params={**START, "k": {"value": 0.1, "shared": True}})
