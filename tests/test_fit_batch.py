"""fit_batch: each curve against a single customgrad.fit of that curve, and against SciPy's curve_fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit

import customgrad
from customgrad import BatchFitResult, DataError, FitResult, UsageError, fit, fit_batch
from reference import ENGINES, assert_matches_reference
from test_fit_edges import straight_line_reference

GAUSSIAN = "a*exp(-(x-m)**2/(2*s**2))+c"
START = {"a": 1.0, "m": 0.0, "s": 1.0, "c": 0.0}
NAMES = tuple(START)


def gaussian_numpy(x, a, m, s, c):
    return a * np.exp(-((x - m) ** 2) / (2 * s**2)) + c


@pytest.fixture(scope="module")
def curves():
    """24 noisy Gaussians plus offset, 64 points each (the issue's benchmark shape)."""
    rng = np.random.default_rng(11)
    x = np.linspace(-3, 3, 64)
    truth = np.stack(
        [rng.uniform(1, 3, 24), rng.uniform(-1, 1, 24), rng.uniform(0.4, 1.2, 24), rng.uniform(-0.5, 0.5, 24)], 1
    )
    y = gaussian_numpy(x[None, :], *truth.T[:, :, None]) + 0.05 * rng.standard_normal((24, 64))
    return x, y


def single_fits(x, y, **options):
    """The references: one customgrad.fit per curve (x shared or per row)."""
    return [fit(GAUSSIAN, x if x.ndim == 1 else x[i], y[i], params=START, **options) for i in range(len(y))]


def assert_batch_matches(batch: BatchFitResult, singles: list[FitResult], rtol: float = 1e-8) -> None:
    for name in NAMES:
        expected = np.array([single.params[name] for single in singles])
        assert_matches_reference(batch.params[name], expected, rtol=rtol, what=f"params[{name!r}]")
        expected = np.array([single.stderr[name] for single in singles])
        assert_matches_reference(batch.stderr[name], expected, rtol=1e-6, what=f"stderr[{name!r}]")
    assert_matches_reference(batch.cost, np.array([s.cost for s in singles]), rtol=1e-12, what="cost")
    assert batch.success.tolist() == [single.success for single in singles]


@pytest.mark.parametrize("engine", ENGINES)
def test_every_curve_matches_its_single_fit(engine, curves):
    x, y = curves
    batch = fit_batch(GAUSSIAN, x, y, params=START, engine=engine)
    assert_batch_matches(batch, single_fits(x, y))
    assert batch.success.all()


@pytest.mark.parametrize("engine", ENGINES)
def test_curves_stopped_by_the_step_limit_match_too(engine, curves):
    x, y = curves
    batch = fit_batch(GAUSSIAN, x, y, params=START, engine=engine, max_steps=3)
    singles = single_fits(x, y, max_steps=3)
    assert set(batch.status) == {"max_steps"}
    assert_batch_matches(batch, singles)


@pytest.mark.parametrize("engine", ENGINES)
def test_no_curve_costs_more_than_scipy_curve_fit(engine, curves):
    x, y = curves
    batch = fit_batch(GAUSSIAN, x, y, params=START, engine=engine)
    for i in range(len(y)):
        found, _ = curve_fit(gaussian_numpy, x, y[i], p0=list(START.values()), ftol=1e-15, xtol=1e-15, gtol=1e-15)
        scipy_cost = float(np.sum((gaussian_numpy(x, *found) - y[i]) ** 2))
        assert batch.cost[i] <= scipy_cost * (1 + 1e-9), (i, batch.cost[i], scipy_cost)


@pytest.mark.parametrize("count", [1, 3, 24])
def test_torch_engine_on_numpy_and_torch_arrays_reaches_scipy_curve_fit(count, curves):
    """Up to 8 curves on the CPU (a single fit among them) the torch engine's rounds run on numpy arrays,
    more on torch tensors: both reach SciPy's minimum."""
    x, y = curves[0], curves[1][:count]
    batch = fit_batch(GAUSSIAN, x, y, params=START, engine="torch")
    fits = [({name: batch.params[name][i] for name in NAMES}, batch.cost[i]) for i in range(count)]
    if count == 1:
        single = fit(GAUSSIAN, x, y[0], params=START, engine="torch")
        fits.append((single.params, single.cost))
    for i, (params, cost) in enumerate(fits):
        row = y[min(i, count - 1)]
        found, covariance = curve_fit(gaussian_numpy, x, row, p0=list(START.values()), ftol=1e-15, xtol=1e-15)
        scipy_cost = float(np.sum((gaussian_numpy(x, *found) - row) ** 2))
        assert cost <= scipy_cost * (1 + 1e-9), (i, cost, scipy_cost)
        ours = np.array([params[name] for name in NAMES])
        in_errors = (ours - found) / np.sqrt(np.diag(covariance))
        assert_matches_reference(in_errors, np.zeros(4), rtol=0, atol=1e-5, what=f"curve {i} (standard errors)")


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_padding_gives_ragged_curves(engine, curves):
    x, y = curves
    y = y[:6].copy()
    lengths = [64, 50, 40, 33, 64, 20]
    for i, length in enumerate(lengths):
        y[i, length:] = np.nan
    y[4, 7] = np.inf
    batch = fit_batch(GAUSSIAN, x, y, params=START, engine=engine)
    singles = [fit(GAUSSIAN, x[np.isfinite(y[i])], y[i][np.isfinite(y[i])], params=START) for i in range(len(y))]
    assert_batch_matches(batch, singles)
    assert batch.dof.tolist() == [int(np.isfinite(row).sum()) - 4 for row in y]
    with pytest.raises(DataError, match="curves 1, 2, 3, 4, 5"):
        fit_batch(GAUSSIAN, x, y, params=START, nan_policy="raise")


@pytest.mark.parametrize("engine", ENGINES)
def test_per_curve_x_sigma_initial_values_and_bounds(engine, curves):
    x, y = curves
    y = y[:8]
    rng = np.random.default_rng(3)
    xs = np.sort(rng.uniform(-3, 3, (8, 64)), axis=1)
    ys = gaussian_numpy(xs, 2.0, 0.2, 0.7, 0.1) + 0.05 * rng.standard_normal((8, 64))
    sigma = rng.uniform(0.5, 2.0, (8, 64))
    starts = {"a": np.linspace(1, 2, 8), "m": 0.0, "s": {"value": 1.0, "min": 0.05, "max": 5.0}, "c": 0.0}
    batch = fit_batch(GAUSSIAN, xs, ys, params=starts, sigma=sigma, engine=engine)
    for i in range(8):
        params = {"a": float(starts["a"][i]), "m": 0.0, "s": {"value": 1.0, "min": 0.05, "max": 5.0}, "c": 0.0}
        single = fit(GAUSSIAN, xs[i], ys[i], params=params, sigma=sigma[i])
        for name in NAMES:
            assert_matches_reference(batch.params[name][i], single.params[name], rtol=1e-8, what=name)


def test_callable_model_and_fixed_parameter(curves):
    x, y = curves
    y = y[:5]

    def gaussian(x, a, m, s, c):
        return a * torch.exp(-((x - m) ** 2) / (2 * s**2)) + c

    params = {**START, "c": {"value": 0.0, "fixed": True}}
    batch = fit_batch(gaussian, x, y, params=params)
    for i in range(5):
        single = fit(gaussian, x, y[i], params=params)
        for name in ("a", "m", "s"):
            assert_matches_reference(batch.params[name][i], single.params[name], rtol=1e-8, what=name)
        assert batch.params["c"][i] == 0.0


@pytest.mark.parametrize("engine", ENGINES)
def test_result_per_curve_summary_csv_and_json(engine, curves, tmp_path):
    x, y = curves
    batch = fit_batch(GAUSSIAN, x, y[:4], params=START, engine=engine)
    single = fit(GAUSSIAN, x, y[2], params=START)
    curve = batch[2]
    assert isinstance(curve, FitResult)
    for name in NAMES:
        assert_matches_reference(curve.params[name], single.params[name], rtol=1e-8, what=name)
        assert_matches_reference(curve.stderr[name], single.stderr[name], rtol=1e-6, what=name)
    assert curve.history[0] == pytest.approx(single.history[0], rel=1e-12)
    assert "curves: 4" in batch.summary()
    rows = batch.to_csv(tmp_path / "fits.csv").splitlines()
    assert rows[0].startswith("curve,success,status,cost,dof,a,a_stderr")
    assert len(rows) == 5
    document = json.loads(batch.to_json(tmp_path / "fits.json"))
    assert document["curves"] == 4 and len(document["results"]) == 4
    with pytest.raises(IndexError):
        batch[4]
    with pytest.raises(TypeError, match=r"by curve number, batch\[17\], not by 'a': .*batch.params\['a'\]"):
        batch["a"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"y": np.zeros(64)}, DataError, "shape \\(curves, points\\)"),
        ({"y": torch.ones(3, 64, dtype=torch.complex128)}, DataError, "y is a complex tensor"),
        ({"x": np.zeros(10)}, DataError, "points per curve"),
        ({"params": {**START, "a": np.ones(5)}}, UsageError, "one per curve"),
        ({"method": "adam"}, UsageError, "method='lm' only"),
        ({"nan_policy": "drop"}, UsageError, "nan_policy"),
        ({"chunk_size": 0}, UsageError, "chunk_size"),
        ({"y": [[1.0] * 64, [1.0] * 60]}, DataError, "y has rows of different lengths: .*pad shorter curves with NaN"),
        ({"y": [[1.0] * 63 + ["x"]]}, DataError, "y must be an array of numbers"),
    ],
)
def test_bad_input_is_a_clear_error(curves, kwargs, error, match):
    x, y = curves
    arguments = {"x": x, "y": y[:3], "params": START, **kwargs}
    with pytest.raises(error, match=match):
        fit_batch(GAUSSIAN, arguments.pop("x"), arguments.pop("y"), **arguments)


def test_formula_with_a_fixed_parameter_matches_on_both_engines(curves):
    # c fixed per curve at its single-fit value: the other parameters are then that fit's (the same minimum)
    x, y = curves
    singles = single_fits(x, y[:5])
    params = {**START, "c": {"value": np.array([single.params["c"] for single in singles]), "fixed": True}}
    for engine in ("torch", "native"):
        batch = fit_batch(GAUSSIAN, x, y[:5], params=params, engine=engine)
        for name in ("a", "m", "s"):
            expected, got = np.array([single.params[name] for single in singles]), batch.params[name]
            if name == "s":  # s enters as s**2: its sign is arbitrary
                expected, got = np.abs(expected), np.abs(got)
            assert_matches_reference(got, expected, rtol=1e-8, what=f"{engine} {name}")
        assert batch.params["c"].tolist() == params["c"]["value"].tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_curves_stuck_on_a_plateau_are_restarted_as_single_fits_are(engine):
    # from b = 40, exp(-b x) underflows to a plateau: fit restarts with a smaller first trust region
    x = np.linspace(1, 5, 40)
    rng = np.random.default_rng(1)
    truth = [(2.0, 0.5), (3.0, 0.3), (1.5, 0.8)]
    y = np.stack([a * np.exp(-b * x) for a, b in truth]) + 0.01 * rng.standard_normal((3, 40))
    params = {"a": 1.0, "b": 40.0}
    batch = fit_batch("a*exp(-b*x)", x, y, params=params, engine=engine)
    singles = [fit("a*exp(-b*x)", x, row, params=params) for row in y]
    # the third curve's restart reaches the minimum; the first two stay on the plateau, where they
    # stop depends on roundoff (a flat cost), so only their verdicts are compared
    for name in ("a", "b"):
        assert_matches_reference(batch.params[name][2], singles[2].params[name], rtol=1e-8, what=name)
    # without the restart the third curve stays on the plateau (b near 40); which stopping test ends the
    # run at the minimum is decided by roundoff, so only the verdict is asserted
    assert batch.params["b"][2] == pytest.approx(0.8, abs=0.01)
    assert batch.success[2]
    assert batch.success.tolist() == [single.success for single in singles]


@pytest.mark.parametrize("engine", ENGINES)
def test_curves_near_the_ends_of_float64_are_fitted_in_their_own_units(engine):
    # each curve's residuals get their own power of two: squares of 1e300 or 1e-170 would leave float64
    x = np.linspace(0, 1, 21)
    line = 2 * x + 1 + 0.01 * np.cos(7 * x)
    units = [1e160, 1e300, 1e-170, 1.0]
    batch = fit_batch(
        "a*x + c", x, np.stack([unit * line for unit in units]), params={"a": 1.0, "c": 0.0}, engine=engine
    )
    expected, expected_stderr = straight_line_reference(x, line)
    for i, unit in enumerate(units):
        found = np.array([batch.params["a"][i], batch.params["c"][i]]) / unit
        assert_matches_reference(found, expected, rtol=1e-10, what=f"params at {unit:g}")
        errors = np.array([batch.stderr["a"][i], batch.stderr["c"][i]]) / unit
        assert_matches_reference(errors, expected_stderr, rtol=1e-6, what=f"stderr at {unit:g}")
        single = fit("a*x + c", x, unit * line, params={"a": 1.0, "c": 0.0})
        assert_matches_reference(batch.cost[i], single.cost, rtol=1e-12, what=f"cost at {unit:g}")  # inf at 1e300
    assert batch.success.all()


def test_engines_agree_with_each_other_and_single_fits_near_a_domain_edge():
    # sqrt(x - b): steps that cross x = b give NaN, which both engines must shrink away from alike
    x = np.linspace(0, 4, 30)
    rng = np.random.default_rng(2)
    y = np.stack([2 * np.sqrt(x + 0.5 * k) for k in range(1, 5)]) + 0.01 * rng.standard_normal((4, 30))
    params = {"a": 1.0, "b": -0.1}
    batches = {engine: fit_batch("a*sqrt(x - b)", x, y, params=params, engine=engine) for engine in ("native", "torch")}
    for i, row in enumerate(y):
        single = fit("a*sqrt(x - b)", x, row, params=params, engine="torch")
        for engine, batch in batches.items():
            for name in ("a", "b"):
                assert_matches_reference(batch.params[name][i], single.params[name], rtol=1e-8, what=f"{engine} {name}")
            # the verdict, not the status word: which stopping test fires first is decided by roundoff
            assert batch.success[i] == single.success, (engine, i)


def test_engine_choice_is_checked(curves):
    x, y = curves

    def gaussian(x, a, m, s, c):
        return a * torch.exp(-((x - m) ** 2) / (2 * s**2)) + c

    with pytest.raises(UsageError, match="engine='native' cannot fit this batch: the model is a callable"):
        fit_batch(gaussian, x, y[:2], params=START, engine="native")
    with pytest.raises(UsageError, match="not CPU float64"):
        fit_batch(GAUSSIAN, x, y[:2], params=START, engine="native", dtype=torch.float32)
    with pytest.raises(UsageError, match="engine must be one of 'auto', 'native', 'torch', got 'numba'"):
        fit_batch(GAUSSIAN, x, y[:2], params=START, engine="numba")


def test_chunks_give_the_same_results(curves):
    x, y = curves
    whole = fit_batch(GAUSSIAN, x, y[:10], params=START)
    chunked = fit_batch(GAUSSIAN, x, y[:10], params=START, chunk_size=3)
    for name in NAMES:
        assert_matches_reference(chunked.params[name], whole.params[name], rtol=1e-12, what=name)
    assert customgrad.fit_batch is fit_batch


@pytest.mark.gpu
def test_cuda_batch_matches_cpu(curves):
    x, y = curves
    cpu = fit_batch(GAUSSIAN, x, y[:6], params=START)
    gpu = fit_batch(GAUSSIAN, x, y[:6], params=START, device="cuda")
    for name in NAMES:
        assert_matches_reference(gpu.params[name], cpu.params[name], rtol=1e-8, what=name)


def test_callable_that_mixes_rows_gets_its_exact_jacobian():
    rng = np.random.default_rng(9)
    x = np.linspace(0, 2, 40)

    def accumulated(x, a, b):
        return a * torch.cumsum(torch.exp(-b * x), dim=-1) / x.shape[-1]

    y = np.stack([k * np.cumsum(np.exp(-1.3 * x)) / 40 for k in (1.0, 2.0, 3.0)]) + 0.01 * rng.standard_normal((3, 40))
    batch = fit_batch(accumulated, x, y, params={"a": 1.0, "b": 1.0})
    for i in range(3):
        single = fit(accumulated, x, y[i], params={"a": 1.0, "b": 1.0})
        for name in ("a", "b"):
            assert_matches_reference(batch.params[name][i], single.params[name], rtol=1e-8, what=name)


def test_a_single_fit_and_a_batch_of_one_of_a_callable_that_mixes_rows_match_scipy():
    # a single fit is a batch of one: its callable is called with x (N,) and scalar parameters, its
    # Jacobian taken row by row (the per-entry copies are wrong for a model that mixes rows)
    from scipy.optimize import least_squares

    rng = np.random.default_rng(5)
    x = np.linspace(0, 2, 30)
    sigma = np.linspace(0.01, 0.03, 30)
    y = 2.0 * np.cumsum(np.exp(-1.3 * x)) / 30 + sigma * rng.standard_normal(30)

    def accumulated(x, a, b):
        return a * torch.cumsum(torch.exp(-b * x), dim=0) / x.shape[0]

    def weighted(p):
        return (p[0] * np.cumsum(np.exp(-p[1] * x)) / 30 - y) / sigma

    reference = least_squares(weighted, [1.0, 1.0], method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    step = 1e-6 * np.abs(reference.x)
    jacobian = np.stack([(weighted(reference.x + e) - weighted(reference.x - e)) / (2 * h) for e, h in
                         zip(np.diag(step), step)], axis=1)  # fmt: skip
    cost = float(weighted(reference.x) @ weighted(reference.x))
    stderr = np.sqrt(np.diag(np.linalg.inv(jacobian.T @ jacobian)) * cost / (30 - 2))
    params = {"a": 1.0, "b": {"value": 1.0, "min": 0.0, "max": 10.0}}
    single = fit(accumulated, x, y, params=params, sigma=sigma)
    one = fit_batch(accumulated, x, y[None], params=params, sigma=sigma[None])
    for j, name in enumerate("ab"):
        assert_matches_reference(single.params[name], reference.x[j], rtol=1e-7, what=name)
        assert_matches_reference(one.params[name][0], reference.x[j], rtol=1e-7, what=f"batch of one {name}")
        assert_matches_reference(single.stderr[name], stderr[j], rtol=1e-5, what=f"stderr {name}")
        assert_matches_reference(one.stderr[name][0], stderr[j], rtol=1e-5, what=f"batch of one stderr {name}")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_curve_without_data_is_reported_not_fitted_and_the_others_are(curves, engine):
    x, y = curves
    y = y[:5].copy()
    y[1] = np.nan  # a dead pixel
    y[3, :61] = np.nan  # 3 points for 4 parameters: underdetermined
    batch = fit_batch(GAUSSIAN, x, y, params=START, engine=engine)
    assert batch.status[1] == "no_data" and not batch.success[1] and "no finite data points" in batch.message[1]
    assert all(np.isnan(batch.params[name][1]) and np.isnan(batch.stderr[name][1]) for name in NAMES)
    assert np.isnan(batch.cost[1])
    with pytest.raises(DataError, match="curve 1 has no finite data points"):
        batch[1]
    kept = [0, 2, 4]
    assert_batch_matches(_subset(batch, kept), single_fits(x, y[kept]))
    summary = batch.summary()
    assert "no_data 1" in summary and "underdetermined (fewer points than free parameters" in summary
    assert json.loads(batch.to_json())["results"][1]["a"] is None


def _subset(batch: BatchFitResult, curves: list[int]) -> BatchFitResult:
    return BatchFitResult(
        params={name: values[curves] for name, values in batch.params.items()},
        stderr={name: values[curves] for name, values in batch.stderr.items()},
        cost=batch.cost[curves],
        dof=batch.dof[curves],
        status=[batch.status[i] for i in curves],
        evaluations=batch.evaluations[curves],
        jacobians=batch.jacobians[curves],
        steps=batch.steps[curves],
        model=batch.model,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_the_progress_bar_counts_curves_done_and_how_many_converged(curves, engine, monkeypatch):
    import contextlib

    from customgrad.fit import api as batch_module

    messages = []

    @contextlib.contextmanager
    def recorder(total, description, enabled=True):
        yield messages.append

    monkeypatch.setattr(batch_module, "progress_bar", recorder)
    x, y = curves
    result = fit_batch(GAUSSIAN, x, y[:6], params=START, engine=engine, max_steps=3, progress=True)
    assert len(messages) == 6  # one advance per curve done
    converged = int(result.success.sum())
    assert messages[-1] == f"{converged}/6 converged, {6 - converged} stopped otherwise"
    assert converged < 6  # three Jacobians are not enough for all of them


@pytest.mark.parametrize("engine", ENGINES)
def test_batch_stderr_of_a_product_of_parameters_is_nan_and_the_rest_match_least_squares(engine):
    # a and b enter only as a*b: one null direction (NaN for both); c's error is the straight line's
    rng = np.random.default_rng(5)
    x = np.linspace(0, 1, 20)
    y = 2 * x + 1 + 0.05 * rng.standard_normal((3, 20))
    batch = fit_batch("a*b*x + c", x, y, params={"a": 1.0, "b": 1.0, "c": 0.0}, engine=engine)
    design = np.stack([x, np.ones_like(x)], 1)
    for i in range(3):
        coefficients, residual, *_ = np.linalg.lstsq(design, y[i], rcond=None)
        covariance = residual[0] / (20 - 3) * np.linalg.inv(design.T @ design)  # dof counts all 3 parameters
        assert np.isnan(batch.stderr["a"][i]) and np.isnan(batch.stderr["b"][i])
        assert_matches_reference(batch.stderr["c"][i], np.sqrt(covariance[1, 1]), rtol=1e-6, what="stderr c")


def test_batch_nan_with_policy_raise_names_the_array_and_the_curves():
    x = np.linspace(0, 1, 5)
    y = np.stack([x, x, x])
    y[1, 2] = np.nan
    with pytest.raises(DataError, match=r"NaN or inf in y at curves 1 \(0-based\).*nan_policy='omit'"):
        fit_batch("a*x", x, y, params={"a": 1.0}, nan_policy="raise")


def test_histories_hold_every_accepted_step_when_a_curve_is_restarted_off_a_plateau():
    # the first curve's fit (a = 0.01) stops on a plateau and its restart with factor 1 is kept: its history
    # was [initial, final] and the other curves lost the costs of the rounds they shared with its first fit
    x = np.linspace(0, 10, 50)
    y = 2 * np.exp(-0.5 * x) + 0.3 + 0.01 * np.sin(9 * x)
    starts = [0.01, 1.0, 100.0]
    result = fit_batch(
        "a/(1+exp(b*(x-c)))", x, np.tile(y, (3, 1)), params={"a": starts, "b": 5.0, "c": 3.0}, engine="torch"
    )

    def cost(a, b, c):
        return float(np.sum((a / (1 + np.exp(b * (x - c))) - y) ** 2))

    for i, start in enumerate(starts):
        curve = result[i]
        assert len(curve.history) == curve.steps + 1, (i, len(curve.history), curve.steps)
        assert curve.history[0] == pytest.approx(cost(start, 5.0, 3.0), rel=1e-12)
        assert curve.history[-1] == pytest.approx(cost(*(curve.params[n] for n in "abc")), rel=1e-12)
        # each accepted step lowers the cost (the final polish may raise it by roundoff: `lm.POLISH_SLACK`)
        assert all(later <= earlier * (1 + 1e-13) for earlier, later in zip(curve.history, curve.history[1:]))


@pytest.mark.parametrize("tied", [{"expr": "a/4"}, "lmfit"])
def test_a_tied_parameter_is_refused_by_name_not_as_an_unknown_key(tied):
    # the message said "unknown keys ['expr'] (allowed: value, min, max, fixed or vary; or expr)"
    x = np.linspace(0, 3, 20)
    y = np.stack([2 * np.exp(-0.7 * x) + 0.5, 3 * np.exp(-0.7 * x) + 0.75])
    params = {"a": 1.0, "k": 1.0, "c": tied}
    if tied == "lmfit":
        lmfit = pytest.importorskip("lmfit")
        params = lmfit.Parameters()
        params.add("a", 1.0)
        params.add("k", 1.0)
        params.add("c", expr="a/4")
    refused = r"parameter 'c' is tied by 'expr' \('a/4'\): fit_batch does not take"
    with pytest.raises(UsageError, match=refused) as error:
        fit_batch("a*exp(-k*x) + c", x, y, params=params)
    assert "unknown keys" not in str(error.value)
