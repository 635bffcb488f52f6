"""Goodness of fit, confidence/prediction bands and profile intervals against lmfit 1.3 on the same data
and model (NIST Misra1a, Rat43, a seeded noisy peak); tied parameters against the hand-substituted
model; absolute_sigma against SciPy's curve_fit.

lmfit is given the exact Jacobian (complex-step derivatives of an independent numpy model) so that its
covariance, and hence its bands, are not limited by finite-difference error.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import curve_fit

import customgrad
from customgrad.errors import DataError, FitError, UsageError
from customgrad.fit import load_nist
from reference import ENGINES, assert_matches_reference

lmfit = pytest.importorskip("lmfit")


@dataclass
class Case:
    name: str
    formula: str
    function: object  # numpy f(x, *params), written independently of the formula text
    x: np.ndarray
    y: np.ndarray
    start: dict
    sigma: np.ndarray | None = None


def _misra1a(x, b1, b2):
    return b1 * (1 - np.exp(-b2 * x))


def _rat43(x, b1, b2, b3, b4):
    return b1 / (1 + np.exp(b2 - b3 * x)) ** (1 / b4)


def _peak(x, a, c, w, d):
    return a * np.exp(-((x - c) ** 2) / (2 * w**2)) + d


def _nist_case(name, function):
    problem = load_nist(name)
    return Case(name, problem.formula, function, problem.x["x"], problem.y, dict(problem.starts[0]))


def _peak_case(weighted=False):
    rng = np.random.default_rng(20260901)
    x = np.linspace(-4, 5, 70)
    sigma = 0.03 + 0.04 * rng.random(x.size)
    y = _peak(x, 2.5, 0.6, 0.9, 0.3) + sigma * rng.standard_normal(x.size)
    return Case(
        "peak-weighted" if weighted else "peak",
        "a*exp(-(x - c)**2/(2*w**2)) + d",
        _peak,
        x,
        y,
        {"a": 2.0, "c": 0.0, "w": 1.0, "d": 0.0},
        sigma if weighted else None,
    )


CASES = {
    "Misra1a": _nist_case("Misra1a", _misra1a),
    "Rat43": _nist_case("Rat43", _rat43),
    "peak": _peak_case(),
    "peak-weighted": _peak_case(weighted=True),
}


def complex_step_jacobian(function, x, values):
    """df/db_j = Im f(b + i h e_j) / h: exact to roundoff, independent of customgrad."""
    values = np.asarray(values, dtype=np.complex128)
    columns = []
    for j in range(len(values)):
        shifted = values.copy()
        shifted[j] += 1e-30j
        columns.append(np.imag(function(x, *shifted)) / 1e-30)
    return np.stack(columns, axis=1)


def lmfit_result(case: Case, x=None):
    """lmfit's Model.fit of the case with the exact Jacobian, tolerances as tight as ours."""
    names = list(case.start)
    weights = None if case.sigma is None else 1 / case.sigma

    def jacobian(params, data, weights, **independent):
        rows = complex_step_jacobian(case.function, independent["x"], [params[n].value for n in names])
        rows = rows[:, [i for i, n in enumerate(names) if params[n].vary]]  # conf_interval fixes some
        return -rows if weights is None else -rows * weights[:, None]

    model = lmfit.Model(case.function)
    with np.errstate(all="ignore"):
        return model.fit(
            case.y,
            x=case.x,
            weights=weights,
            **case.start,
            fit_kws={"Dfun": jacobian, "xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15},
        )


@pytest.fixture(scope="module", params=list(CASES))
def pair(request):
    case = CASES[request.param]
    ours = customgrad.fit(case.formula, case.x, case.y, params=case.start, sigma=case.sigma)
    assert ours.success
    theirs = lmfit_result(case)
    assert theirs.success
    for name in case.start:  # both at the same minimum
        assert ours.params[name] == pytest.approx(theirs.params[name].value, rel=1e-6)
    return case, ours, theirs


def assert_close(found, expected, rtol, what):
    found, expected = np.asarray(found, dtype=float), np.asarray(expected, dtype=float)
    error = np.abs(found - expected) / np.maximum(np.abs(expected), 1e-300)
    worst = int(np.argmax(error)) if error.size else 0
    assert error.size == 0 or error.max() <= rtol, (
        f"{what}: worst relative error {error.max():.3g} at index {worst}: "
        f"{found.flat[worst]!r} vs {expected.flat[worst]!r}"
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(CASES))
def test_covariance_stderr_and_correlation_match_lmfit_on_both_engines(name, engine):
    case = CASES[name]
    ours = customgrad.fit(case.formula, case.x, case.y, params=case.start, sigma=case.sigma, engine=engine)
    theirs = lmfit_result(case)
    names = list(case.start)
    assert_close([ours.stderr[n] for n in names], [theirs.params[n].stderr for n in names], 1e-6, "stderr")
    assert_close(ours.covariance, theirs.covar, 1e-6, "covariance")
    expected = theirs.covar / np.outer(np.sqrt(np.diag(theirs.covar)), np.sqrt(np.diag(theirs.covar)))
    assert_close(ours.correlation, expected, 1e-6, "correlation")
    assert_close(ours.data["fitted"], case.function(case.x, *[ours.params[n] for n in names]), 1e-12, "fitted")
    jacobian = complex_step_jacobian(case.function, case.x, [ours.params[n] for n in names])
    if case.sigma is not None:
        jacobian = jacobian / case.sigma[:, None]
    assert_close(ours.condition, np.linalg.cond(jacobian / np.linalg.norm(jacobian, axis=0)), 1e-6, "condition")


def test_goodness_of_fit_matches_lmfit(pair):
    case, ours, theirs = pair
    for name in ("chisqr", "redchi", "aic", "bic", "rsquared"):
        assert_close(getattr(ours, name), getattr(theirs, name), 1e-8, name)
    assert ours.nfree == theirs.nfree
    report = ours.report()
    assert "redchi" in report and "aic" in report and "R^2" in report
    data = ours.to_dict()
    assert data["chisqr"] == ours.chisqr and data["nfree"] == ours.nfree


@pytest.mark.parametrize("sigma", [1, 2, 0.9])
def test_bands_match_lmfit_eval_uncertainty(pair, sigma):
    case, ours, theirs = pair
    confidence = theirs.eval_uncertainty(sigma=sigma, dscale=1e-4)
    assert_close(ours.eval_uncertainty(sigma=sigma), confidence, 1e-6, "confidence band")
    assert_close(ours.eval_uncertainty(sigma=sigma, kind="prediction"), theirs.dely_predicted, 1e-6, "prediction")


def test_bands_and_predict_at_new_x_match_lmfit(pair):
    case, ours, theirs = pair
    new_x = np.linspace(case.x.min() - 1, case.x.max() + 1, 33)
    values = [ours.params[name] for name in case.start]
    assert_close(ours.predict(new_x), case.function(new_x, *values), 1e-12, "predict")
    expected = theirs.eval_uncertainty(x=new_x, sigma=2, dscale=1e-4)
    assert_close(ours.eval_uncertainty(new_x, sigma=2), expected, 1e-6, "confidence band at new x")


def _lmfit_intervals(theirs, sigmas):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            table = theirs.conf_interval(sigmas=list(sigmas))
    count = len(sigmas)
    return {
        name: {sigma: (rows[count - 1 - i][1], rows[count + 1 + i][1]) for i, sigma in enumerate(sorted(sigmas))}
        for name, rows in table.items()
    }


@pytest.mark.parametrize("name", ["Misra1a", pytest.param("Rat43", marks=pytest.mark.slow), "peak"])
def test_profile_intervals_match_lmfit_conf_interval(name):
    case = CASES[name]
    ours = customgrad.fit(case.formula, case.x, case.y, params=case.start)
    theirs = lmfit_result(case)
    found = ours.conf_interval(sigmas=(1, 2))
    expected = _lmfit_intervals(theirs, (1, 2))
    for parameter, levels in expected.items():
        for sigma, (low, high) in levels.items():
            width = high - low
            got_low, got_high = found[parameter][sigma]
            assert abs(got_low - low) <= 1e-3 * width, (parameter, sigma, got_low, low)
            assert abs(got_high - high) <= 1e-3 * width, (parameter, sigma, got_high, high)
    if name == "Rat43":  # the profile, unlike value +- t stderr, is lopsided
        for parameter in ("b2", "b3", "b4"):
            low, high = found[parameter][2]
            best = ours.params[parameter]
            assert high - best > 1.3 * (best - low)


def test_profile_interval_of_a_linear_model_is_t_times_stderr():
    """For a model linear in its parameters the profile is exactly quadratic: b +- t_(1+P)/2 se."""
    rng = np.random.default_rng(7)
    x = np.linspace(0, 3, 25)
    y = 1.5 + 0.8 * x - 0.3 * x**2 + 0.1 * rng.standard_normal(x.size)
    result = customgrad.fit("a + b*x + c*x**2", x, y, params={"a": 0.0, "b": 0.0, "c": 0.0})
    intervals = result.conf_interval(sigmas=(1, 2, 3))
    for name in ("a", "b", "c"):
        for sigma in (1, 2, 3):
            half = stats.t.ppf((1 + math.erf(sigma / math.sqrt(2))) / 2, result.nfree) * result.stderr[name]
            low, high = intervals[name][sigma]
            assert low == pytest.approx(result.params[name] - half, abs=1e-6 * half)
            assert high == pytest.approx(result.params[name] + half, abs=1e-6 * half)
    single = customgrad.fit("a*x", x, y, params={"a": 1.0})  # nothing to re-fit: chi2(a) directly
    half = stats.t.ppf((1 + math.erf(1 / math.sqrt(2))) / 2, single.nfree) * single.stderr["a"]
    assert single.conf_interval(sigmas=1)["a"][1] == pytest.approx(
        (single.params["a"] - half, single.params["a"] + half), abs=1e-6 * half
    )


@pytest.mark.parametrize("unit", [1e160, 1e-160])
def test_profile_interval_of_data_beyond_the_range_of_squares(unit):
    # chi2 = sum r^2 overflows float64 for data near 1e160 and underflows near 1e-160; the fit works in
    # rescaled units, and so must its profile: b +- t se, with se from numpy's lstsq in units of 1
    rng = np.random.default_rng(7)
    x = np.linspace(0, 3, 25)
    y = 1.5 + 0.8 * x + 0.1 * rng.standard_normal(x.size)
    design = np.stack([np.ones_like(x), x], axis=1)
    coefficients, rss, _, _ = np.linalg.lstsq(design, y, rcond=None)
    stderr = np.sqrt(np.diag(rss[0] / (x.size - 2) * np.linalg.inv(design.T @ design)))
    result = customgrad.fit("a + b*x", x, unit * y, params={"a": 0.0, "b": unit})
    intervals = result.conf_interval(sigmas=(1, 2))
    for sigma in (1, 2):
        half = stats.t.ppf((1 + math.erf(sigma / math.sqrt(2))) / 2, x.size - 2) * stderr[1]
        low, high = intervals["b"][sigma]
        assert low / unit == pytest.approx(coefficients[1] - half, abs=1e-6 * half)
        assert high / unit == pytest.approx(coefficients[1] + half, abs=1e-6 * half)


def test_profile_report_table_plot_and_json(tmp_path):
    case = CASES["Misra1a"]
    result = customgrad.fit(case.formula, case.x, case.y, params=case.start)
    report = result.report(ci=True)
    assert "profile intervals" in report and "2 sigma" in report
    data = result.to_dict(bands="prediction")
    assert set(data["conf_interval"]) == {"b1", "b2"}
    assert len(data["band"]["halfwidth"]) == len(case.y)
    path = result.plot_profile("b1", tmp_path / "b1.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert result.plot(tmp_path / "fit.png", bands="prediction").read_bytes()[:4] == b"\x89PNG"


def test_profile_end_beyond_a_bound_is_reported_not_invented():
    case = CASES["Misra1a"]
    result = customgrad.fit(case.formula, case.x, case.y, params={**case.start, "b1": 230.0}, bounds={"b1": (0, 240)})
    assert result.success
    intervals = result.conf_interval(sigmas=(1, 2), params=["b1"])
    assert intervals["b1"][1][1] == math.inf and intervals["b1"][2][1] == math.inf
    assert intervals["b1"][1][0] < result.params["b1"] < 240
    assert "bound" in result.report(ci=True)


def test_conf_interval_bad_input_is_a_clear_error():
    case = CASES["Misra1a"]
    unconverged = customgrad.fit(case.formula, case.x, case.y, params=case.start, max_steps=2)
    with pytest.raises(FitError, match="converged.*max_steps"):
        unconverged.conf_interval()
    result = customgrad.fit(case.formula, case.x, case.y, params={"b1": 238.0, "b2": {"value": 5.5e-4, "fixed": True}})
    with pytest.raises(UsageError, match="'b2' cannot be profiled \\(it is fixed\\)"):
        result.conf_interval(params=["b2"])
    with pytest.raises(UsageError, match="'q' cannot be profiled"):
        result.conf_interval(params=["q"])
    with pytest.raises(UsageError, match="sigmas"):
        result.conf_interval(sigmas=(1, -2))
    robust = customgrad.fit(case.formula, case.x, case.y, params=case.start, loss="soft_l1")
    with pytest.raises(UsageError, match="loss='linear'"):
        robust.conf_interval()
    with pytest.raises(UsageError, match="kind"):
        result.eval_uncertainty(kind="credible")
    with pytest.raises(UsageError, match="sigma"):
        result.eval_uncertainty(sigma=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_non_identifiable_parameters_are_undetermined(engine):
    x = np.linspace(0, 1, 20)
    y = 2 * x + 1
    result = customgrad.fit(
        "a*b*x + c", x, y + 0.01 * np.sin(40 * x), params={"a": 1.0, "b": 1.0, "c": 0.0}, engine=engine
    )
    intervals = result.conf_interval(sigmas=(1,))
    assert all(math.isnan(v) for v in intervals["a"][1]) and all(math.isnan(v) for v in intervals["b"][1])
    assert all(math.isfinite(v) for v in intervals["c"][1])
    assert "undetermined" in result.report(ci=True)
    assert np.isnan(result.eval_uncertainty()).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_tied_parameters_match_the_hand_substituted_model(engine):
    rng = np.random.default_rng(3)
    x = np.linspace(0, 4, 40)
    y = 2.0 * np.exp(-0.7 * x) + 4.0 + 0.02 * rng.standard_normal(x.size)
    params = {"a": 1.0, "k": 1.0, "b": {"expr": "2*a"}, "c": {"expr": "b/2 + k"}}
    tied = customgrad.fit("a*exp(-k*x) + b", x, y, params=params, engine=engine)
    plain = customgrad.fit("a*exp(-k*x) + 2*a", x, y, params={"a": 1.0, "k": 1.0}, engine="torch")
    assert tied.names == ("a", "k") and tied.nfree == plain.nfree
    # two float paths to one minimum: both stop within their tolerances (1e-15 on the cost), which leaves the
    # parameters free by about sqrt(1e-15) of a standard error (~1e-10 relative here, seen 2e-12 between CPUs);
    # 1e-9 still tells a tie applied wrongly (a different minimum) from the hand-substituted model
    for name in ("a", "k"):
        assert tied.params[name] == pytest.approx(plain.params[name], rel=1e-9)
        assert tied.stderr[name] == pytest.approx(plain.stderr[name], rel=1e-7)
    assert tied.params["b"] == pytest.approx(2 * plain.params["a"], rel=1e-9)
    assert tied.stderr["b"] == pytest.approx(2 * plain.stderr["a"], rel=1e-7)
    # c = a + k: se^2 = var a + var k + 2 cov(a, k)
    cov = plain.covariance
    assert tied.params["c"] == pytest.approx(plain.params["a"] + plain.params["k"], rel=1e-9)
    assert tied.stderr["c"] == pytest.approx(math.sqrt(cov[0, 0] + cov[1, 1] + 2 * cov[0, 1]), rel=1e-7)
    assert "= 2*a" in tied.report() and tied.to_dict()["tied"] == {"b": "2*a", "c": "b/2 + k"}


def test_tied_parameters_in_a_callable_model():
    import torch

    x = np.linspace(0, 4, 40)
    y = 2.0 * np.exp(-0.7 * x) + 4.0 + 0.01 * np.cos(5 * x)

    def model(x, a, k, b):
        return a * torch.exp(-k * x) + b

    tied = customgrad.fit(model, x, y, params={"a": 1.0, "k": 1.0, "b": {"expr": "2*a"}})
    plain = customgrad.fit("a*exp(-k*x) + 2*a", x, y, params={"a": 1.0, "k": 1.0})
    assert tied.params["b"] == pytest.approx(plain.params["b"] if "b" in plain.params else 2 * plain.params["a"])
    assert tied.stderr["b"] == pytest.approx(2 * plain.stderr["a"], rel=1e-7)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"a": 1.0, "b": {"expr": "2*q"}}, "expr of parameter 'b'.*names 'q'"),
        ({"a": 1.0, "b": {"expr": "b + a"}}, "'b'.*refers to 'b' itself"),
        ({"a": 1.0, "b": {"expr": "c + 1"}, "c": {"expr": "2*b"}}, "cycle: b -> c -> b"),
        ({"a": 1.0, "b": {"expr": "2*a", "value": 3.0}}, "'b' is tied by 'expr' and also has"),
        ({"a": 1.0, "b": {"expr": 2}}, "'expr' must be formula text"),
    ],
)
def test_bad_expr_is_a_clear_error_naming_it(params, message):
    x = np.linspace(0, 1, 10)
    with pytest.raises(UsageError, match=message):
        customgrad.fit("a*x + b", x, 2 * x + 1, params=params)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("absolute", [False, True])
def test_absolute_sigma_matches_curve_fit(absolute, engine):
    case = CASES["peak-weighted"]
    start = list(case.start.values())
    result = customgrad.fit(
        case.formula, case.x, case.y, params=case.start, sigma=case.sigma, absolute_sigma=absolute, engine=engine
    )
    with np.errstate(all="ignore"):
        values, covariance = curve_fit(
            case.function,
            case.x,
            case.y,
            p0=start,
            sigma=case.sigma,
            absolute_sigma=absolute,
            jac=lambda x, *b: complex_step_jacobian(case.function, x, b),
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
    assert_close(list(result.params.values()), values, 1e-8, "values")
    assert_close(result.covariance, covariance, 1e-7, "covariance")
    assert result.absolute_sigma is absolute and result.to_dict()["absolute_sigma"] is absolute


def test_sigma_not_positive_is_an_error_naming_the_rows():
    x = np.linspace(0, 1, 6)
    with pytest.raises(DataError, match=r"sigma must be positive.*rows \[1, 4\]"):
        customgrad.fit("a*x + b", x, 2 * x, params={"a": 1.0, "b": 0.0}, sigma=[1, 0, 1, 1, -2, 1])


def test_sigma_not_positive_names_the_rows_of_the_given_data_when_nan_rows_are_omitted():
    x, y = np.linspace(0, 1, 6), np.array([0.0, np.nan, 1, 1, 2, 2])
    with pytest.raises(DataError, match=r"sigma must be positive.*rows \[4\] \(0-based\)"):
        customgrad.fit("a*x + b", x, y, params={"a": 1.0, "b": 0.0}, sigma=[1, 1, 1, 1, 0, 1], nan_policy="omit")


def test_batch_sigma_not_positive_is_an_error_naming_curve_and_point():
    x = np.linspace(0, 1, 6)
    sigma = np.ones((2, 6))
    sigma[1, 3] = -1.0
    with pytest.raises(DataError, match=r"sigma must be positive.*points \(curve, point\) \[\(1, 3\)\]"):
        customgrad.fit_batch("a*x + b", x, np.stack([x, 2 * x]), params={"a": 1.0, "b": 0.0}, sigma=sigma)


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_sigma_at_a_padded_point_is_left_out_with_it_as_in_a_single_fit(engine):
    # a point a curve does not have (y NaN, nan_policy "omit") may carry any sigma, as a single fit's omitted row
    x = np.linspace(0, 1, 8)
    y = np.stack([1 + 2 * x + 0.1 * np.sin(9 * x), 3 - x + 0.1 * np.cos(7 * x)])
    y[1, 6:] = np.nan
    sigma = np.full((2, 8), 0.5)
    sigma[1, 6:] = 0.0
    batch = customgrad.fit_batch("a*x + b", x, y, params={"a": 1.0, "b": 0.0}, sigma=sigma, engine=engine)
    design = np.stack([x[:6], np.ones(6)], 1)
    coefficients = np.linalg.lstsq(design, y[1, :6], rcond=None)[0]
    assert_matches_reference(np.array([batch.params["a"][1], batch.params["b"][1]]), coefficients, rtol=1e-8)


def _cli(*args):
    from command_line import run_customgrad

    return run_customgrad("fit", *args)


def test_cli_ci_bands_and_json(tmp_path):
    nist = Path(__file__).resolve().parents[1] / "src" / "customgrad" / "data" / "nist" / "Misra1a.dat"
    json_path, plot_path = tmp_path / "fit.json", tmp_path / "fit.png"
    out = _cli("--data", str(nist), "--ci", "--bands", "prediction", "--json", str(json_path), "--plot", str(plot_path))
    assert out.returncode == 0, out.stderr
    assert "profile intervals" in out.stdout and "redchi" in out.stdout
    data = json.loads(json_path.read_text())
    case = CASES["Misra1a"]
    expected = customgrad.fit(case.formula, case.x, case.y, params=case.start)
    assert data["band"]["kind"] == "prediction"
    assert_close(data["band"]["halfwidth"], expected.eval_uncertainty(sigma=2, kind="prediction"), 1e-9, "band")
    low, high = data["conf_interval"]["b1"]["2"]
    assert low < data["params"]["b1"] < high
    assert plot_path.read_bytes()[:4] == b"\x89PNG"


def test_cli_absolute_sigma(tmp_path):
    case = CASES["peak-weighted"]
    path = tmp_path / "peak.csv"
    rows = zip(case.x, case.y, case.sigma, strict=True)
    path.write_text("x,y,s\n" + "\n".join(f"{float(a)!r},{float(b)!r},{float(c)!r}" for a, b, c in rows) + "\n")
    params = [f"--param={name}={value}" for name, value in case.start.items()]
    common = ["--model", case.formula, "--data", str(path), "--x", "x", "--y", "y", "--sigma", "s", *params]
    relative, absolute = tmp_path / "relative.json", tmp_path / "absolute.json"
    assert _cli(*common, "--json", str(relative)).returncode == 0
    assert _cli(*common, "--absolute-sigma", "--json", str(absolute)).returncode == 0
    relative, absolute = json.loads(relative.read_text()), json.loads(absolute.read_text())
    assert absolute["absolute_sigma"] is True
    scale = relative["redchi"]
    assert_close(np.array(relative["covariance"]), scale * np.array(absolute["covariance"]), 1e-9, "covariance")


def test_bands_of_a_callable_model_and_of_named_predictors_match_the_formula():
    import torch

    case = CASES["peak"]
    formula = customgrad.fit(case.formula, case.x, case.y, params=case.start)

    def peak(x, a, c, w, d):
        return a * torch.exp(-((x - c) ** 2) / (2 * w**2)) + d

    callable_fit = customgrad.fit(peak, case.x, case.y, params=case.start)
    named = customgrad.fit("a*exp(-(t - c)**2/(2*w**2)) + d", {"t": case.x}, case.y, params=case.start)
    new_x = np.linspace(-6, 6, 17)
    expected = formula.eval_uncertainty(new_x, sigma=2, kind="prediction")
    assert_close(callable_fit.eval_uncertainty(new_x, sigma=2, kind="prediction"), expected, 1e-7, "callable")
    assert_close(named.eval_uncertainty({"t": new_x}, sigma=2, kind="prediction"), expected, 1e-7, "named")
    assert_close(named.predict({"t": new_x}), formula.predict(new_x), 1e-9, "named predict")
    with pytest.raises(DataError, match="lacks predictor"):
        named.predict({"x": new_x})
    with pytest.raises(DataError, match="x is None"):  # (it predicted [nan] before)
        formula.predict(None)
    with pytest.raises(DataError, match="complex"):
        formula.predict([1 + 2j])


def _bounded_profile_interval(t, y, bounds, result, name, sigma):
    """SciPy's profile interval of ``name`` in a exp(-k t) + c: at each value least_squares with bounds
    re-fits the others (chi2 = 2 * its cost); brentq finds chi2 = cost (1 + F_(1,nfree)(P) / nfree)."""
    from scipy.optimize import brentq, least_squares

    names = ["a", "k", "c"]
    i, others = names.index(name), [j for j in range(3) if names[j] != name]
    lower = np.array([bounds.get(names[j], (-np.inf, np.inf))[0] for j in others])
    upper = np.array([bounds.get(names[j], (-np.inf, np.inf))[1] for j in others])
    start = np.clip([result.params[names[j]] for j in others], lower + 1e-9, upper - 1e-9)
    level = result.cost * (1 + stats.f.ppf(math.erf(sigma / math.sqrt(2)), 1, result.nfree) / result.nfree)

    def excess(value):
        def residuals(q):
            p = np.empty(3)
            p[i], p[others] = value, q
            return p[0] * np.exp(-p[1] * t) + p[2] - y

        fitted = least_squares(residuals, start, bounds=(lower, upper), xtol=1e-15, ftol=1e-15, gtol=1e-15)
        return 2 * fitted.cost - level

    value, stderr = result.params[name], result.stderr[name]
    return [brentq(excess, value - 10 * stderr, value), brentq(excess, value, value + 10 * stderr)]


@pytest.mark.parametrize(("bounds", "start"), [({"k": (0, 0.6)}, 0.0), ({"c": (0.6, 2.0)}, 1.0)])
def test_profile_intervals_refit_the_others_when_one_ends_at_its_bound(bounds, start):
    # k (or c) ends at its bound, where its internal coordinate's derivative vanishes: the re-fits used
    # to stay at their start (chi2 not re-minimised) and the intervals came out too narrow
    t = np.linspace(0, 5, 30)
    y = 3 * np.exp(-0.7 * t) + 0.5 + 0.02 * np.random.default_rng(0).standard_normal(30)
    params = {"a": 1.0, "k": 0.5, "c": start}
    result = customgrad.fit("a*exp(-k*t) + c", {"t": t}, y, params=params, bounds=bounds)
    bound_name = next(iter(bounds))
    assert result.params[bound_name] == pytest.approx(bounds[bound_name][0 if bound_name == "c" else 1])
    model = lmfit.Model(lambda t, a, k, c: a * np.exp(-k * t) + c)
    start_params = model.make_params(**params)
    start_params[bound_name].set(min=bounds[bound_name][0], max=bounds[bound_name][1])
    reference = model.fit(y, start_params, t=t)
    free = [name for name in ("a", "k", "c") if name != bound_name]
    intervals = result.conf_interval(sigmas=(1, 2), params=free)
    for name in free:
        lmfit_ends = lmfit.conf_interval(reference, reference, p_names=[name], sigmas=[1, 2])[name]
        for sigma, (low, high) in intervals[name].items():
            expected = _bounded_profile_interval(t, y, bounds, result, name, sigma)
            np.testing.assert_allclose([low, high], expected, rtol=1e-7, err_msg=f"{name} at {sigma} sigma")
            # lmfit's conf_interval sticks at the bound on some ends as customgrad did: never wider
            lmfit_low, lmfit_high = lmfit_ends[2 - sigma][1], lmfit_ends[2 + sigma][1]
            assert low <= lmfit_low + 1e-7 * abs(lmfit_low) and high >= lmfit_high - 1e-7 * abs(lmfit_high)


def test_the_profile_plot_draws_the_quadratic_as_a_curve_and_labels_the_sigma_lines(tmp_path, monkeypatch):
    import matplotlib.figure
    from scipy import stats

    case = CASES["Misra1a"]
    result = customgrad.fit(case.formula, case.x, case.y, params=case.start)
    result.conf_interval((1, 2))
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, *args, **kwargs: figures.append(figure))
    result.plot_profile("b1", tmp_path / "b1.png")
    (axes,) = figures[0].axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    grid, drawn = lines["quadratic (from stderr)"].get_data()
    profile_values = lines["profile"].get_data()[0]
    assert len(grid) >= 500 and grid[0] == min(profile_values) and grid[-1] == max(profile_values)
    # value +- t stderr: the level of a point is the normal quantile of Student's t at |value - best| / stderr
    t = np.abs(grid - result.params["b1"]) / result.stderr["b1"]
    assert np.allclose(drawn, stats.norm.ppf(stats.t.cdf(t, result.nfree)), rtol=1e-9, atol=1e-9)
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert {"sigma levels", "1σ interval", "2σ interval"} <= set(legend)
