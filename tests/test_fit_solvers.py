"""The fit engine against SciPy on synthetic problems: values, standard errors, robust losses, bounds."""

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit, least_squares

from customgrad import P2, DataError, FitError, UsageError, fit, fit_batch
from reference import ENGINES, assert_matches_reference


def pick(values: dict, names: str) -> np.ndarray:
    """The values of one-letter names, as a float64 array (the reference helper needs arrays, not lists)."""
    return np.array([values[name] for name in names])


@pytest.fixture
def decay():
    """y = 3 exp(-0.7 t) + 0.5 with fixed noise."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 5, 40)
    y = 3 * np.exp(-0.7 * t) + 0.5 + 0.02 * rng.standard_normal(40)
    return t, y


def test_lm_matches_scipy_curve_fit_values_and_stderr(decay):
    t, y = decay
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.0})
    expected, covariance = curve_fit(
        lambda t, a, k, c: a * np.exp(-k * t) + c, t, y, p0=[1, 0.1, 0], ftol=1e-14, xtol=1e-14
    )
    assert result.success, result.message
    assert_matches_reference(pick(result.params, "akc"), expected, rtol=1e-7, what="params")
    assert_matches_reference(pick(result.stderr, "akc"), np.sqrt(np.diag(covariance)), rtol=1e-5, what="stderr")
    assert_matches_reference(result.covariance, covariance, rtol=1e-5, atol=1e-12, what="covariance")


def test_callable_model_with_hand_written_function_matches_scipy():
    x = np.linspace(-1, 1, 50)
    y = 0.3 + 1.5 * ((0.8 * x + 0.1) ** 2 + 2 * (0.8 * x + 0.1)) + 0.01 * np.sin(7 * x)

    def model(x, a, b, c):
        return a + b * P2.apply(c * x + 0.1)

    result = fit(model, torch.tensor(x), torch.tensor(y), params={"a": 0.0, "b": 1.0, "c": 1.0})
    reference = least_squares(
        lambda p: p[0] + p[1] * ((p[2] * x + 0.1) ** 2 + 2 * (p[2] * x + 0.1)) - y,
        [0, 1, 1],
        method="lm",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert_matches_reference(pick(result.params, "abc"), reference.x, rtol=1e-8, what="params")
    assert_matches_reference(np.float64(result.cost), np.float64(2 * reference.cost), rtol=1e-10, what="cost")


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy"])
def test_robust_losses_match_scipy_trf(decay, loss):
    t, y = decay
    y = y.copy()
    y[[5, 17]] += 2.0  # outliers
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.0}, loss=loss)
    reference = least_squares(
        lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y,
        [1, 0.1, 0],
        loss=loss,
        method="trf",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert_matches_reference(pick(result.params, "akc"), reference.x, rtol=1e-6, what=f"params ({loss})")


def test_sigma_weights_match_scipy(decay):
    t, y = decay
    sigma = 0.01 + 0.05 * t
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.0}, sigma=sigma)
    expected, _ = curve_fit(
        lambda t, a, k, c: a * np.exp(-k * t) + c, t, y, p0=[1, 0.1, 0], sigma=sigma, ftol=1e-14, xtol=1e-14
    )
    assert_matches_reference(pick(result.params, "akc"), expected, rtol=1e-7, what="params")


def test_bounds_hold_and_are_reported(decay):
    t, y = decay
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.7}, bounds={"c": (0.6, 2.0)})
    reference = least_squares(
        lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y,
        [1, 0.1, 0.7],
        bounds=([-np.inf, -np.inf, 0.6], [np.inf, np.inf, 2.0]),
        xtol=1e-15,
        ftol=1e-15,
    )
    assert result.params["c"] >= 0.6
    assert_matches_reference(pick(result.params, "akc"), reference.x, rtol=1e-5, what="params")
    assert any("at its lower bound" in w for w in result.warnings)


def test_fixed_parameter_is_kept(decay):
    t, y = decay
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": {"value": 0.5, "fixed": True}})
    expected, _ = curve_fit(lambda t, a, k: a * np.exp(-k * t) + 0.5, t, y, p0=[1, 0.1], ftol=1e-14, xtol=1e-14)
    assert result.params["c"] == 0.5 and "c" not in result.stderr
    assert_matches_reference(pick(result.params, "ak"), expected, rtol=1e-7, what="params")


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_gradient_methods_approach_the_least_squares_cost(decay, method):
    t, y = decay
    best = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.0})
    steps = 200 if method == "lbfgs" else 4000
    result = fit(
        "a*exp(-k*t) + c",
        t,
        y,
        params={"a": 2.0, "k": 0.5, "c": 0.3},
        method=method,
        max_steps=steps,
        learning_rate=0.05 if method == "adam" else None,
    )
    assert result.cost <= best.cost * 1.05
    assert len(result.history) == result.steps


def test_several_predictors_by_name():
    rng = np.random.default_rng(1)
    u, v = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    y = 2 * u - 3 * v**2 + 1
    result = fit("a*u + b*v**2 + c", {"u": u, "v": v}, y, params={"a": 0.0, "b": 0.0, "c": 0.0})
    assert_matches_reference(pick(result.params, "abc"), np.array([2.0, -3.0, 1.0]), rtol=1e-10, what="params")


def test_rank_deficient_model_names_the_unidentifiable_parameters():
    x = np.linspace(0, 1, 20)
    result = fit("a*b*x + c", x, 2 * x + 1, params={"a": 1.0, "b": 1.0, "c": 0.0})
    assert any("a, b are not identifiable" in w for w in result.warnings), result.warnings
    assert np.isnan(result.stderr["a"]) and np.isnan(result.stderr["b"])
    assert result.cost < 1e-20


def test_unknown_symbol_lists_data_names_and_parameters():
    with pytest.raises(UsageError, match=r"'q'.*neither a data name \(x\) nor a parameter \(a, b\)"):
        fit("a + b*x + q", {"x": [1.0, 2, 3]}, [1.0, 2, 3], params={"a": 0.0, "b": 1.0})


def test_bad_data_gives_clear_errors():
    with pytest.raises(DataError, match=r"NaN or inf in x at rows 1"):
        fit("a*x", [1.0, float("nan"), 3.0], [1.0, 2, 3], params={"a": 1.0})
    with pytest.raises(DataError, match="lengths differ"):
        fit("a*x", [1.0, 2.0], [1.0, 2, 3], params={"a": 1.0})
    with pytest.raises(DataError, match="no data"):
        fit("a*x", [], [], params={"a": 1.0})
    with pytest.raises(UsageError, match="has no initial value"):
        fit("a*x", [1.0, 2.0], [1.0, 2.0], params={"a": None})
    with pytest.raises(FitError, match="NaN or inf at the initial parameter values"):
        fit("log(a*x)", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], params={"a": -1.0})


X3, Y3, AB = [0.0, 1.0, 2.0], [1.0, 3.0, 5.0], {"a": 0.0, "b": 1.0}


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"bounds": {"a": 1}}, UsageError, r"bounds for parameter 'a' must be a pair \(lower, upper\)"),
        ({"bounds": {"a": (0, 1, 2)}}, UsageError, r"must be a pair"),
        ({"bounds": {"a": ("x", 2)}}, UsageError, r"lower bound of parameter 'a' must be a number or None, got 'x'"),
        ({"bounds": {"a": (float("nan"), 2)}}, UsageError, r"lower bound of parameter 'a' is NaN"),
        ({"params": {"a": {"value": 0.0, "fixed": "no"}, "b": 1.0}}, UsageError, r"'fixed' must be True or False"),
        ({"params": {"a": True, "b": 1.0}}, UsageError, r"initial value of parameter 'a' must be a number, got True"),
        ({"params": {"a b": 0.0, "b": 1.0}}, UsageError, r"parameter name 'a b' is not a name"),
        ({"params": {**AB, "x": 1.0}}, UsageError, r"'x' in model 'a \+ b\*x' is both a data name and a parameter"),
        ({"max_steps": True}, UsageError, r"max_steps must be a positive integer, got True"),
        ({"learning_rate": -1, "method": "adam"}, UsageError, r"learning_rate must be a finite positive number"),
        ({"learning_rate": "0.1", "method": "sgd"}, UsageError, r"learning_rate must be a finite positive number"),
        ({"ftol": "a"}, UsageError, r"ftol must be a finite number >= 0"),
        ({"on_step": 3}, UsageError, r"on_step must be a callable"),
        ({"dtype": torch.float16}, UsageError, r"dtype must be torch.float64 or torch.float32"),
        ({"dtype": "float32"}, UsageError, r"dtype must be torch.float64 or torch.float32"),
        ({"device": "gpu"}, UsageError, r"device 'gpu' is not a torch device"),
        ({"y": np.array(Y3) + 1j}, DataError, r"y holds complex numbers"),
        ({"y": torch.tensor(Y3, dtype=torch.complex64)}, DataError, r"y is a complex tensor"),
        ({"y": None}, DataError, r"y is None"),
    ],
)
def test_bad_fit_arguments_give_clear_errors(options, error, message):
    arguments = {"model": "a + b*x", "x": X3, "y": Y3, "params": AB, **options}
    model, x, y = arguments.pop("model"), arguments.pop("x"), arguments.pop("y")
    with pytest.raises(error, match=message):
        fit(model, x, y, **arguments)


def test_numpy_integer_step_limit_is_accepted():
    result = fit("a + b*x", X3, Y3, params=AB, max_steps=np.int64(50))
    assert_matches_reference(pick(result.params, "ab"), np.array([1.0, 2.0]), rtol=1e-10, what="params")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_usage_error():
    with pytest.raises(UsageError, match=r"device 'cuda' is not available"):
        fit("a + b*x", X3, Y3, params=AB, device="cuda")


def test_callable_models_with_the_wrong_signature_or_return_type_are_named():
    with pytest.raises(UsageError, match=r"model <lambda>\(x, a\) cannot be called as <lambda>\(x, a=..., b=...\)"):
        fit(lambda x, a: a * x, X3, Y3, params=AB)
    with pytest.raises(FitError, match=r"model <lambda> returned float, not a tensor"):
        fit(lambda x, a, b: 1.0, X3, Y3, params=AB)
    with pytest.raises(FitError, match=r"returned ndarray, not a tensor"):
        fit(lambda x, a, b: np.asarray(x) * 2, X3, Y3, params=AB)


def test_nan_policy_omit_drops_rows():
    x = np.array([0.0, 1.0, 2.0, 3.0, np.nan])
    result = fit("a*x + b", x, 2 * np.nan_to_num(x) + 1, params={"a": 0.0, "b": 0.0}, nan_policy="omit")
    assert_matches_reference(pick(result.params, "ab"), np.array([2.0, 1.0]), rtol=1e-10, what="params")
    assert any("omitted" in w for w in result.warnings)


def test_model_going_nonfinite_mid_fit_keeps_best_params():
    x = np.linspace(0.1, 2, 20)

    def model(x, a):
        # finite near the start, NaN once a passes 1.2: the optimum (a = 2) lies beyond
        return torch.where(a < 1.2, a * x, torch.full_like(x, float("nan")))

    result = fit(model, x, 2 * x, params={"a": 1.0})
    assert not result.success and result.status == "nonfinite"
    assert 1.0 <= result.params["a"] < 1.2


def test_report_json_and_plot(decay, tmp_path):
    import json

    t, y = decay
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.0})
    report = result.report()
    assert "± " in report and "status: " in report
    data = json.loads(result.to_json(tmp_path / "r.json"))
    assert data["params"].keys() == {"a", "k", "c"} and data["success"] is True
    path = result.plot(tmp_path / "fit.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.gpu
def test_lm_on_cuda_matches_scipy(decay):
    t, y = decay
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.0}, device="cuda")
    expected, _ = curve_fit(lambda t, a, k, c: a * np.exp(-k * t) + c, t, y, p0=[1, 0.1, 0], ftol=1e-14, xtol=1e-14)
    assert result.success, result.message
    assert_matches_reference(pick(result.params, "akc"), expected, rtol=1e-7, what="params fitted on cuda")


@pytest.mark.parametrize(
    ("model", "truth", "make_y"),
    [
        ("a*softplus(b*x)", {"a": 1.5, "b": 0.7}, lambda x: 1.5 * np.log1p(np.exp(0.7 * x))),
        ("a*round(x) + b", {"a": 2.0, "b": 1.0}, lambda x: 2 * np.round(x) + 1),
    ],
)
def test_exact_fits_with_customgrad_functions_recover_the_generating_values(model, truth, make_y):
    # An exact fit takes the extended-precision cost path, which must know sigmoid, softplus and round.
    x = np.linspace(-2, 2, 20)
    result = fit(model, x, make_y(x), params={name: 1.0 for name in truth})
    assert result.success, result.message
    assert_matches_reference(pick(result.params, "ab"), pick(truth, "ab"), rtol=1e-9, atol=1e-12, what="params")
    assert result.cost < 1e-20


def test_soft_l1_keeps_its_cost_for_small_residuals(decay):
    # data in units of 1e-8 (nanometres in metres): z = r^2 ~ 1e-20, where 2 (sqrt(1 + z) - 1) rounds
    # to 0 in float64; soft_l1 = z - z^2/4 + ... is least squares there, to a relative 1e-20
    t, y = decay
    result = fit("a*exp(-k*t) + c", t, 1e-8 * y, params={"a": 1e-8, "k": 0.1, "c": 0.0}, loss="soft_l1")
    # the least-squares fit in units of 1e-8 (the same minimiser; its cost 1e16 times the fit's)
    reference = least_squares(lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, [1, 0.1, 0], xtol=1e-15, ftol=1e-15)
    assert result.success, result.message
    found = pick(result.params, "akc") / [1e-8, 1, 1e-8]
    assert_matches_reference(found, reference.x, rtol=1e-7, what="params")
    assert_matches_reference(np.float64(result.loss_value), 2 * reference.cost * 1e-16, rtol=1e-7, what="loss_value")


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy"])
def test_a_robust_fit_of_data_near_1e_150_ends_and_says_so(loss):
    # robust losses are not rescaled (they are not scale invariant): the step's squares underflow near
    # 1e-150, lambda overflowed and the predicted reduction was NaN, so no stopping test could hold and
    # the solver looped forever. Now such a fit ends; whichever way roundoff decides, a converged status
    # comes with the least-squares minimiser (the same there: rho(z) = z + O(z^2)), else "underflow"
    x = np.linspace(0, 3, 40)
    y = 2 * np.exp(-0.7 * x) + 0.01 * np.random.default_rng(1).standard_normal(40)
    result = fit("a*exp(-b*x)", x, 1e-150 * y, params={"a": 1e-150, "b": 1.0}, loss=loss, max_steps=200)
    assert result.success or result.status == "underflow", result.status
    reference = least_squares(lambda p: p[0] * np.exp(-p[1] * x) - y, [1, 1], xtol=1e-15, ftol=1e-15)
    if result.success:
        found = pick(result.params, "ab") / [1e-150, 1]
        assert_matches_reference(found, reference.x, rtol=1e-6, what="params")
    else:
        assert "underflow" in result.message


ON_A_BOUND = [((0.0, None), 0.0), ((None, 1.0), 1.0), ((0.0, 1.0), 0.0), ((0.0, 1.0), 1.0)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("bound", "start"), ON_A_BOUND)
def test_a_start_on_a_bound_is_fitted(decay, engine, bound, start):
    # d value / d internal is 0 on a bound (sin, sqrt transforms): a start there never moved, and the fit
    # reported success with c left at its start ("c": 0 with bounds (0, None), a common way to write it)
    t, y = decay
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": start}, bounds={"c": bound}, engine=engine)
    lower, upper = (-np.inf if bound[0] is None else bound[0]), (np.inf if bound[1] is None else bound[1])
    reference = least_squares(
        lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y,
        [1, 0.1, 0.5],
        bounds=([-np.inf, -np.inf, lower], [np.inf, np.inf, upper]),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert result.success, result.message
    assert_matches_reference(pick(result.params, "akc"), reference.x, rtol=1e-6, what="params")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("batch", [False, True])
def test_a_solution_held_at_a_bound_is_converged_not_a_plateau(engine, batch):
    # the bounded parameter's column is 0 in the internal coordinates at its bound (sin transform): the
    # plateau test took it for a parameter that stopped mattering, restarted, and reported "plateau"
    x = np.linspace(0, 4, 40)
    y = 3.0 * np.exp(-0.7 * x) + 0.2 + 0.01 * np.cos(11 * x)
    options = dict(params={"a": 1.0, "k": 0.3, "c": 0.5}, bounds={"k": (0.0, 0.5)}, engine=engine)
    result = (
        fit_batch("a*exp(-k*x) + c", x, y[None], **options)[0] if batch else fit("a*exp(-k*x) + c", x, y, **options)
    )
    reference = least_squares(
        lambda p: p[0] * np.exp(-p[1] * x) + p[2] - y,
        [1.0, 0.3, 0.5],
        bounds=([-np.inf, 0.0, -np.inf], [np.inf, 0.5, np.inf]),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert result.success, result.message
    # the sin transform nears its bound linearly, not quadratically: within 1e-3 standard errors of SciPy's
    # exact bound (lmfit, with the same transform, is as far)
    distance = np.abs(pick(result.params, "akc") - reference.x) / np.maximum(pick(result.stderr, "akc"), 1e-12)
    assert distance.max() < 1e-3, distance


AT_ITS_BOUND = [
    {"value": 1.0, "max": 1.0},
    {"value": 1.0, "min": 0.0, "max": 1.0},
    {"value": 0.99, "min": 0.0, "max": 1.0},
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("spec", AT_ITS_BOUND, ids=["start-on-one-bound", "start-on-two-bounds", "walks-into-it"])
def test_a_fit_whose_best_answer_is_on_a_bound_reaches_it(engine, spec):
    # the best a without bounds is ~3 (curve 0) or ~0.8 (curve 1, inside); held at a <= 1, LM's trust region
    # shrank on a's quadratic transform until k and c moved by next to nothing: from a start on the bound
    # the fit stopped at max_steps where it started (cost 24.7), walking into it it said "converged" at a
    # cost 2e-4 above the minimum; lmfit, with the same transform, does the same
    x = np.linspace(0, 5, 30)
    curves = np.stack([3.0, 0.8])[:, None] * np.exp(-0.7 * x) + 0.5 + 0.01 * np.sin(9 * x)
    options = dict(params={"a": spec, "k": 0.1, "c": 0.0}, engine=engine)
    singles = [fit("a*exp(-k*x) + c", x, y, **options) for y in curves]
    batch = fit_batch("a*exp(-k*x) + c", x, curves, **options)
    upper = spec["max"]
    for i, y in enumerate(curves):
        reference = least_squares(
            lambda p, y=y: p[0] * np.exp(-p[1] * x) + p[2] - y,
            [0.5, 0.1, 0.0],
            bounds=([spec.get("min", -np.inf), -np.inf, -np.inf], [upper, np.inf, np.inf]),
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
        )
        chi2 = float(reference.fun @ reference.fun)
        for result in (singles[i], batch[i]):
            assert result.success, result.message
            assert abs(result.cost - chi2) <= 1e-9 * chi2, (result.cost, chi2)
            distance = np.abs(pick(result.params, "akc") - reference.x) / pick(result.stderr, "akc")
            assert distance.max() < 1e-3, distance
        assert abs(batch.cost[i] - chi2) <= 1e-9 * chi2
