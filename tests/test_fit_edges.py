"""`fit` at the edges: data near the ends of float64's range, parameters the data do not determine,
step limits, constant names, and the plotted curve, against NumPy / SciPy references.
"""

import math
import re

import matplotlib.figure
import numpy as np
import pytest
from scipy.optimize import curve_fit

from customgrad.errors import UsageError
from customgrad.fit import fit, fit_batch
from reference import ENGINES, assert_matches_reference


def straight_line_reference(x, y_scaled):
    """Least squares of y = a x + c by numpy lstsq in scaled units, with cov = s^2 (A^T A)^-1."""
    design = np.column_stack([x, np.ones_like(x)])
    solution, *_ = np.linalg.lstsq(design, y_scaled, rcond=None)
    residuals = design @ solution - y_scaled
    variance = residuals @ residuals / (len(x) - 2)
    stderr = np.sqrt(np.diag(variance * np.linalg.inv(design.T @ design)))
    return solution, stderr


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("unit", [1e160, 1e300, 1e-170])
def test_lm_fits_data_whose_squares_leave_float64_like_lstsq_in_scaled_units(unit, engine):
    x = np.linspace(0, 1, 21)
    noise = 0.01 * np.cos(7 * x)
    y_scaled = 2 * x + 1 + noise
    result = fit("a*x + c", x, unit * y_scaled, params={"a": 1.0, "c": 0.0}, engine=engine)
    expected, expected_stderr = straight_line_reference(x, y_scaled)
    assert result.success and math.isfinite(result.residual_std), (result.status, result.residual_std)
    assert_matches_reference(np.array([result.params["a"], result.params["c"]]) / unit, expected, rtol=1e-10)
    assert_matches_reference(
        np.array([result.stderr["a"], result.stderr["c"]]) / unit, expected_stderr, rtol=1e-6, what="stderr"
    )


def test_lm_on_the_issue_line_at_1e160_is_fitted_not_declared_converged_at_the_start():
    x = np.linspace(0, 1, 11)
    result = fit("a*x + c", x, 2e160 * x + 1e160, params={"a": 1, "c": 0})
    expected, _ = straight_line_reference(x, 2 * x + 1)
    assert result.success and result.steps > 0 and math.isfinite(result.cost)
    assert_matches_reference(np.array([result.params["a"], result.params["c"]]) / 1e160, expected, rtol=1e-12)


def test_a_cost_that_overflows_is_never_reported_as_success():
    # a robust loss is not scale invariant, so no rescaling: the cost overflows and LM must say so
    x = np.linspace(0, 1, 11)
    result = fit("a*x + c", x, 1e300 * (1 + x), params={"a": 1, "c": 0}, loss="soft_l1")
    assert not result.success and result.status == "nonfinite"


@pytest.mark.parametrize("engine", ENGINES)
def test_constant_data_leave_the_rate_of_a_vanished_exponential_undetermined(engine):
    x = np.linspace(0, 5, 20)
    y = np.full_like(x, 3.0)
    result = fit("c + a*exp(-k*x)", x, y, params={"c": 1.0, "a": 1.0, "k": 0.1}, engine=engine)
    assert result.not_identifiable == [["k"]] and math.isnan(result.stderr["k"])
    assert sum("parameter k is not identifiable" in text for text in result.warnings) == 1
    # c and a: their covariance with k's (null) column left out, s^2 (A^T A)^-1 with A = [1, exp(-k x)]
    design = np.column_stack([np.ones_like(x), np.exp(-result.params["k"] * x)])
    variance = result.cost / result.dof
    expected = np.sqrt(np.diag(variance * np.linalg.inv(design.T @ design)))
    assert_matches_reference(np.array([result.stderr["c"], result.stderr["a"]]), expected, rtol=1e-6)
    assert abs(result.params["c"] - 3.0) < 1e-12


@pytest.mark.parametrize("engine", ENGINES)
def test_a_jacobian_undefined_at_the_solution_leaves_every_error_undefined_and_says_why(engine):
    x = np.linspace(0, 2, 20)  # d sqrt(a x) / da = x / (2 sqrt(a x)) is 0/0 at x = 0
    result = fit("sqrt(a*x) + c", x, np.sqrt(1.5 * x) + 0.3, params={"a": 1.0, "c": 0.0}, engine=engine)
    assert result.status == "nonfinite" and not result.success
    assert all(math.isnan(value) for value in result.stderr.values()) and np.isnan(result.covariance).all()
    assert math.isinf(result.condition) and result.not_identifiable == [["a", "c"]]
    assert sum("Jacobian holds NaN or inf at the fitted values" in text for text in result.warnings) == 1
    assert not any("not identifiable" in text for text in result.warnings)  # the data are not to blame


@pytest.mark.parametrize("engine", ENGINES)
def test_unidentifiable_groups_are_named_once_each_whatever_the_null_basis(engine):
    x = np.linspace(0.1, 2, 15)
    y = 2 * np.exp(x) + 3 * x
    params = {"a": 1.0, "b": 0.5, "c": 1.0, "d": 1.5}
    result = fit("a*exp(x) + b*exp(x) + c*x + d*x", x, y, params=params, engine=engine)
    assert sorted(result.not_identifiable) == [["a", "b"], ["c", "d"]]
    assert sum("not identifiable" in text for text in result.warnings) == 2
    one_point = fit("a + b*x + c*x**2", [1.0], [3.0], params={"a": 1.0, "b": 1.0, "c": 0.0}, engine=engine)
    assert one_point.not_identifiable == [["a", "b", "c"]]
    assert sum("not identifiable" in text for text in one_point.warnings) == 1


@pytest.mark.parametrize("method", ["adam", "sgd"])
def test_gradient_methods_at_their_step_limit_do_not_claim_success(method):
    x = np.linspace(0, 5, 30)
    result = fit("a*exp(-k*x)", x, 3 * np.exp(-0.7 * x), params={"a": 1.0, "k": 0.1}, method=method, max_steps=20)
    assert result.status == "step_limit" and not result.success
    assert "no convergence test" in result.message and result.steps == 20
    assert any("fixed number of steps" in text for text in result.warnings)


def test_lbfgs_at_its_step_limit_says_so():
    x = np.linspace(0, 5, 30)
    y = 3 * np.exp(-0.7 * x) + 0.5
    result = fit("a*exp(-k*x) + c", x, y, params={"a": 1.0, "k": 0.1, "c": 0.0}, method="lbfgs", max_steps=1)
    assert result.status == "max_steps" and not result.success


@pytest.mark.parametrize(("name", "meaning"), [("E", "Euler's number"), ("pi", "the number pi")])
def test_a_parameter_named_like_a_constant_is_told_what_the_name_means(name, meaning):
    with pytest.raises(UsageError, match=f"'{name}' is {meaning}.*another name, such as '{name}0'"):
        fit(f"{name}*x", [0.0, 1.0, 2.0], [0.0, 2.0, 4.0], params={name: 1.0})
    with pytest.raises(UsageError, match=f"data column '{name}' cannot be used"):
        fit(f"a*{name}", {name: np.arange(3.0)}, np.arange(3.0), params={"a": 1.0})


def test_the_plot_draws_the_model_on_a_dense_grid_over_the_data(tmp_path, monkeypatch):
    x = np.linspace(0, 6, 8)
    y = np.sin(2 * x) + 0.3 * x + 0.01 * np.cos(5 * x)
    result = fit("a*sin(w*x) + b*x", x, y, params={"a": 1.0, "w": 2.05, "b": 0.3})
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, *args, **kwargs: figures.append(figure))
    result.plot(tmp_path / "fit.png")
    (top, _bottom) = figures[0].axes
    (curve,) = [line for line in top.get_lines() if line.get_label() == "fit"]
    grid, drawn = curve.get_data()
    assert len(grid) >= 500 and grid[0] == x.min() and grid[-1] == x.max()
    p = result.params
    assert_matches_reference(drawn, p["a"] * np.sin(p["w"] * grid) + p["b"] * grid, rtol=1e-12, atol=1e-15)
    expected, _ = curve_fit(lambda t, a, w, b: a * np.sin(w * t) + b * t, x, y, p0=[1, 2.05, 0.3])
    assert_matches_reference(np.array([p["a"], p["w"], p["b"]]), expected, rtol=1e-6)


def test_every_constant_of_the_formula_language_has_a_description_for_fit_messages():
    from customgrad.fit.model import CONSTANT_NAMES
    from customgrad.functions import CONSTANTS

    assert set(CONSTANT_NAMES) == set(CONSTANTS)


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_a_gradient_method_that_sees_an_underflowed_zero_cost_does_not_claim_success(method):
    x = np.linspace(0, 1, 11)
    result = fit("a*x + c", x, 2e-170 * x + 1e-170, params={"a": 1e-171, "c": 0.0}, method=method, max_steps=5)
    assert result.status == "underflow" and not result.success and "underflow" in result.message


def test_engine_choice_is_checked_and_explained():
    x = np.linspace(0, 1, 11)
    y = 2 * x + 1
    with pytest.raises(UsageError, match="engine must be one of 'auto', 'native', 'torch', got 'c'"):
        fit("a*x + c", x, y, params={"a": 1.0, "c": 0.0}, engine="c")
    with pytest.raises(UsageError, match="engine='native' cannot run this fit: a robust loss"):
        fit("a*x + c", x, y, params={"a": 1.0, "c": 0.0}, loss="huber", engine="native")
    with pytest.raises(UsageError, match="engine='native' cannot run this fit: the model is a callable"):
        fit(lambda x, a, c: a * x + c, x, y, params={"a": 1.0, "c": 0.0}, engine="native")
    with pytest.raises(UsageError, match="on_step or progress"):
        fit("a*x + c", x, y, params={"a": 1.0, "c": 0.0}, engine="native", on_step=lambda step, cost: None)
    # "auto" falls back to the torch engine for all of these, with the same answer
    auto = fit("a*x + c", x, y, params={"a": 1.0, "c": 0.0}, loss="huber")
    assert auto.params["a"] == pytest.approx(2.0, rel=1e-10)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_jacobian_that_shrinks_by_1e150_during_the_fit_restarts_the_scaling(engine):
    # exp(a x) from a = 400 to 1.3: the columns shrink by ~1e170 against the running maxima D; R D^-1
    # squared underflowed (the torch engine divided by zero, the native one stopped at a = 26.8 on ftol)
    x = np.linspace(0.9, 1, 10)
    result = fit("exp(a*x)", x, np.exp(1.3 * x), params={"a": 400.0}, engine=engine, max_steps=3000)
    assert result.success and result.params["a"] == pytest.approx(1.3, rel=1e-10)
    assert len(result.history) == result.steps + 1 > 40  # every cost, on the native engine too
    truth = np.array([-60.0, -50.0, -30.0])
    y = np.exp(truth[:, None] * x) * (1 + 1e-3 * np.cos(7 * x))
    batch = fit_batch("exp(a*x)", x, y, params={"a": 340.0}, max_steps=3000, engine=engine)
    for i, row in enumerate(y):  # the least-squares answer by SciPy from the truth
        found, _ = curve_fit(lambda x, a: np.exp(a * x), x, row, p0=[truth[i]], ftol=1e-15, xtol=1e-15, gtol=1e-15)
        assert_matches_reference(batch.params["a"][i], found[0], rtol=1e-9, what=f"curve {i}")
    assert batch.success.all()


@pytest.mark.parametrize("engine", ENGINES)
def test_an_infinite_derivative_at_a_bound_on_exact_data_is_a_result_not_a_crash(engine):
    # d sqrt(b)/db is inf at b = 0, where the fit ends; the 40-digit refinement must not reach LAPACK with it
    x = np.linspace(0, 1, 20)
    result = fit("sqrt(b)*x + a", x, np.ones(20), params={"a": 0.5, "b": 1.0}, bounds={"b": (0, 10)}, engine=engine)
    assert result.params["a"] == pytest.approx(1.0, abs=1e-12) and result.params["b"] == pytest.approx(0.0, abs=1e-12)


def test_a_huge_step_limit_means_no_limit_on_the_native_engine():
    x = np.linspace(0, 1, 20)
    result = fit("a*x + c", x, 2 * x + 1, params={"a": 1.0, "c": 0.0}, engine=ENGINES[0].values[0], max_steps=10**10)
    assert result.success and result.params["a"] == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_data_and_sigma_near_1e200_do_the_same_work_as_at_1(engine):
    # the plateau test compared ||J|| with ||y|| where ||y|| overflowed: every curve was fitted twice
    x = np.linspace(0, 1, 30)
    y = np.stack([(k + 1) * np.exp(-2 * x) + 0.01 * np.cos(5 * x) for k in range(3)])
    at_one = fit_batch("a*exp(-b*x)", x, y, params={"a": 1.0, "b": 1.0}, engine=engine)
    unit = 2.0**664  # about 1e200, a power of two: the scaled problem is exactly the same one
    scaled = fit_batch("a*exp(-b*x)", x, unit * y, params={"a": unit, "b": 1.0}, sigma=np.full(30, unit), engine=engine)
    assert scaled.jacobians.tolist() == at_one.jacobians.tolist()
    assert_matches_reference(scaled.params["b"], at_one.params["b"], rtol=1e-9, what="b")


@pytest.mark.parametrize("unit", [1.0, 1e200, 1e-200, 1e-310])
def test_safe_norm_matches_math_hypot_at_the_ends_of_float64(unit):
    import torch

    from customgrad.fit.statistics import safe_norm

    values = [3.0 * unit, -4.0 * unit, 12.0 * unit]
    assert safe_norm(torch.tensor(values, dtype=torch.float64)) == pytest.approx(math.hypot(*values), rel=1e-15)


SCALES = [1e-25, 1e-20, 1e-15, 1e-10, 1e-5, 1.0, 1e5, 1e10, 1e15, 1e20, 1e25]


def _decay_at_scale(scale):
    """scale * (3 exp(-0.7 x) + 0.5 + noise), a start (a = 1 below scale 1, where d/dk shrinks by the
    scale in the first step; in the data's units above, as SciPy needs too), and SciPy's fit of the
    unit-scale data, in the data's units."""
    x = np.linspace(0, 4, 20)
    unit = 3 * np.exp(-0.7 * x) + 0.5 + 0.01 * np.random.default_rng(3).standard_normal(20)
    solution, _ = curve_fit(
        lambda x, a, k, c: a * np.exp(-k * x) + c, x, unit, p0=[1.0, 0.5, 0.0], ftol=1e-14, xtol=1e-14
    )
    reference = {"a": solution[0] * scale, "k": solution[1], "c": solution[2] * scale}
    return x, scale * unit, {"a": max(scale, 1.0), "k": 0.5, "c": 0.0}, reference


@pytest.mark.parametrize("engine", ENGINES)
def test_data_at_any_scale_are_fitted_like_scipy_fits_them_at_scale_1(engine):
    # a column of J that shrinks by the data's scale (d/dk as a goes 1 -> 3e-10) must not look like a
    # direction the data do not determine: the fit used to stop at its start, k = 0.5, "converged"
    for scale in SCALES:
        x, y, start, reference = _decay_at_scale(scale)
        result = fit("a*exp(-k*x) + c", x, y, params=start, engine=engine)
        assert result.success, (scale, result.status)
        for name, value in reference.items():
            assert_matches_reference(result.params[name], value, rtol=1e-6, what=f"{name} at scale {scale:g}")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_of_curves_at_every_scale_is_fitted_like_scipy_fits_them_at_scale_1(engine):
    cases = [_decay_at_scale(scale) for scale in SCALES]
    x = cases[0][0]
    params = {name: np.array([start[name] for _, _, start, _ in cases]) for name in ("a", "k", "c")}
    batch = fit_batch("a*exp(-k*x) + c", x, np.stack([y for _, y, _, _ in cases]), params=params, engine=engine)
    assert batch.success.all(), batch.status
    for name in ("a", "k", "c"):
        expected = np.array([reference[name] for *_, reference in cases])
        assert_matches_reference(batch.params[name], expected, rtol=1e-6, what=name)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fit_stuck_where_the_model_no_longer_depends_on_its_parameters_is_not_converged(engine):
    # from b = 40, exp(-b x) on x >= 1 underflows: the cost is flat (every convergence test passes) but
    # far above the minimum SciPy finds from b = 1; the restart stays there too, so: status "plateau"
    x = np.linspace(1, 5, 40)
    noise = 0.01 * np.random.default_rng(1).standard_normal((2, 40))
    y = np.stack([2.0 * np.exp(-0.5 * x), 3.0 * np.exp(-0.3 * x)]) + noise
    start = {"a": 1.0, "b": 40.0}
    batch = fit_batch("a*exp(-b*x)", x, y, params=start, engine=engine)
    for i, row in enumerate(y):
        single = fit("a*exp(-b*x)", x, row, params=start, engine=engine)
        (a, b), _ = curve_fit(lambda x, a, b: a * np.exp(-b * x), x, row, p0=[1.0, 1.0])
        minimum = float(np.sum((a * np.exp(-b * x) - row) ** 2))
        for result in (single, batch[i]):
            # where it stopped, changing a or b by their own size moves the model by < 1e-6 of the data
            a_end, b_end = result.params["a"], result.params["b"]
            reach = np.abs([np.exp(-b_end * x).max() * a_end, (a_end * x * np.exp(-b_end * x)).max() * b_end])
            assert reach.max() < 1e-6 * np.abs(row).max() and result.cost > 100 * minimum
            assert not result.success and result.status == "plateau" and "plateau" in result.message


def test_on_step_numbers_the_steps_of_the_plateau_restart_on_from_the_first_run():
    # the restart from the start with factor 1 numbered its steps from 1 again: on_step saw 1, 1
    x = np.linspace(1, 5, 40)
    y = 2.0 * np.exp(-0.5 * x) + 0.01 * np.random.default_rng(1).standard_normal(40)
    steps = []
    result = fit("a*exp(-b*x)", x, y, params={"a": 1.0, "b": 40.0}, on_step=lambda step, cost: steps.append(step))
    assert result.status == "plateau" and len(steps) >= 2  # a first run and its restart, each with a step
    assert steps == list(range(1, len(steps) + 1))


@pytest.mark.parametrize(
    ("model", "params", "x_is_dict", "message"),
    [
        ("a*t + b", {"a": 1.0, "b": 0.0, "t": 0.5}, False, "uses no predictor: every name in it ('a', 't', 'b')"),
        ("a + b", {"a": 1.0, "b": 0.0}, False, "write it with x: 'a + b + 0*x'"),
        ("a*t + b", {"a": 1.0, "b": 0.0, "t": 0.5}, True, "uses none of the data columns given in x ('u')"),
    ],
)
def test_a_model_that_uses_none_of_the_data_is_an_error_naming_it(model, params, x_is_dict, message):
    # x used to be dropped without a word and the fit reported success
    x = np.linspace(0, 1, 10)
    y = 2 * x + 1
    data = {"u": x} if x_is_dict else x
    with pytest.raises(UsageError, match=re.escape(message)):
        fit(model, data, y, params=params)
    with pytest.raises(UsageError, match=re.escape(message)):
        fit_batch(model, data, np.stack([y, y]), params=params)


def test_a_model_constant_in_x_on_purpose_is_written_with_x_and_fits_the_mean():
    x = np.linspace(0, 1, 10)
    y = 2 * x + 1
    result = fit("c + 0*x", x, y, params={"c": 0.0})
    assert result.success and result.params["c"] == pytest.approx(np.mean(y), rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fit_stuck_with_dead_parameters_beside_a_live_one_is_not_converged(engine):
    # from b = 60, a and b of a exp(-b x) + c no longer matter on x >= 1 and, scaled to unit columns,
    # spoil every trial step: the fit stopped at its start with c = 0, though c alone lowers the cost
    x = np.linspace(1, 5, 40)
    y = 2.0 * np.exp(-0.5 * x) + 0.01 * np.random.default_rng(1).standard_normal(40)
    start = {"a": 1.0, "b": 60.0, "c": 0.0}
    single = fit("a*exp(-b*x) + c", x, y, params=start, engine=engine)
    batch = fit_batch("a*exp(-b*x) + c", x, np.stack([y, y]), params=start, engine=engine)
    for result in (single, batch[0], batch[1]):
        a, b, c = (result.params[name] for name in ("a", "b", "c"))
        model = a * np.exp(-b * x)
        best_c = np.mean(y - model)  # least squares in c alone, a and b as they are
        assert np.sum((model + c - y) ** 2) > 1.01 * np.sum((model + best_c - y) ** 2)
        assert not result.success and result.status == "plateau"


def test_lmfit_parameters_and_vary_are_read_as_lmfit_reads_them():
    lmfit = pytest.importorskip("lmfit")
    t = np.linspace(0, 5, 30)
    y = 3 * np.exp(-0.7 * t) + 0.45 + 0.3 * t + 0.01 * np.cos(9 * t)
    start = lmfit.Parameters()
    start.add("a", value=1.0, min=0.0)
    start.add("k", value=0.1)
    start.add("c", value=0.45, vary=False)
    start.add("d", expr="a/10")  # tied: lmfit gives it vary=False, min=-inf, max=inf
    theirs = lmfit.minimize(
        lambda p: p["a"] * np.exp(-p["k"] * t) + p["c"] + p["d"] * t - y, start, xtol=1e-14, ftol=1e-14
    )
    ours = fit("a*exp(-k*t) + c + d*t", t, y, params=start)
    assert ours.success and ours.fixed == {"c": 0.45}
    for name in ("a", "k", "d"):
        # lmfit differentiates by finite differences: agreement to about 1e-7
        assert ours.params[name] == pytest.approx(theirs.params[name].value, rel=1e-6)
        assert ours.stderr[name] == pytest.approx(theirs.params[name].stderr, rel=1e-3)
    # the same as a dict in lmfit's spelling, on fit_batch (one curve) against SciPy with c held at 0.45
    spelled = {"a": {"value": 1.0, "min": 0.0}, "k": {"value": 0.1, "vary": True}, "c": {"value": 0.45, "vary": False}}
    y = y - 0.3 * t
    batch = fit_batch("a*exp(-k*t) + c", t, y[None], params=spelled)
    expected, _ = curve_fit(lambda t, a, k: a * np.exp(-k * t) + 0.45, t, y, p0=[1.0, 0.1], xtol=1e-14)
    assert batch.success[0] and batch.params["c"][0] == 0.45
    assert np.allclose([batch.params["a"][0], batch.params["k"][0]], expected, rtol=1e-7)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"value": 1.0, "vary": "no"}, "'vary' must be True or False"),
        ({"value": 1.0, "vary": False, "fixed": False}, "'vary' (False) and 'fixed' (False) disagree"),
        ({"expr": "2*a", "vary": True}, "tied by 'expr' and has vary=True"),
        ({"value": 1.0, "stepsize": 2}, "allowed: value, min, max, fixed or vary; or expr"),
    ],
)
def test_a_malformed_lmfit_style_parameter_is_named(spec, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        fit("a*x + b", np.arange(5.0), np.arange(5.0), params={"a": 1.0, "b": spec})


@pytest.mark.parametrize("engine", ENGINES)
def test_a_start_non_finite_on_some_rows_names_those_rows(engine):
    # log(a x) at a = 1 is NaN where x < 0 (rows 0 and 2) and -inf at x = 0 (row 4): the start check (numpy
    # on the CPU) must see them all, as numpy does, and name them; a finite start fits
    from customgrad.errors import FitError

    x = np.array([-1.0, 2.0, -3.0, 4.0, 0.0, 5.0])
    y = np.log(np.abs(x) + 1)
    with np.errstate(all="ignore"):
        expected = np.flatnonzero(~np.isfinite(np.log(x))).tolist()
    with pytest.raises(FitError, match=re.escape(f"(data rows {expected})")):
        fit("log(a*x)", x, y, params={"a": 1.0}, engine=engine)
    result = fit("log(a*x + 4)", x, y, params={"a": 1.0}, engine=engine)
    assert math.isfinite(result.params["a"]) and math.isfinite(result.cost)


@pytest.mark.parametrize("column", ["sigma", "y"])
def test_a_predictor_named_sigma_or_y_is_a_predictor(column):
    """x={"sigma": t} is a predictor, not the observations' sigma (it weighted the fit by 1 / t), and
    its NaN are reported by its name; in a batch, each curve's FitResult keeps the column."""
    from customgrad.errors import DataError

    t = np.linspace(1.0, 5.0, 20)
    y = 2 * t + 1 + 0.1 * np.sin(9 * t)
    (a, c), stderr = straight_line_reference(t, y)
    result = fit(f"a*{column} + c", {column: t}, y, params={"a": 1.0, "c": 0.0}, engine="torch")
    assert result.data["sigma"] is None
    assert_matches_reference(result.params["a"], a, rtol=1e-10, what="a")
    assert_matches_reference(result.stderr["a"], stderr[0], rtol=1e-8, what="stderr a")
    batch = fit_batch(f"a*{column} + c", {column: t}, np.stack([y, 2 * y]), params={"a": 1.0, "c": 0.0})
    assert_matches_reference(batch.params["a"][1], 2 * a, rtol=1e-10, what="a of curve 1")
    assert_matches_reference(batch[1].params["c"], 2 * c, rtol=1e-10, what="c of curve 1's FitResult")
    holed = t.copy()
    holed[3] = np.nan
    with pytest.raises(DataError, match=f"NaN or inf in {column} at rows 3"):
        fit(f"a*{column} + c", {column: holed}, y, params={"a": 1.0, "c": 0.0})
