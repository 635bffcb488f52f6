"""The fit engine's generated residuals and Jacobians (torch and numpy code, C kernels) against eager autograd."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from customgrad import fit
from customgrad.fit.formula_model import formula_model
from customgrad.fit.model import Model, build_function
from customgrad.fit.parameters import parameter_specs
from reference import assert_matches_reference

# One formula per printer rule: every numpy function row, each power case, Piecewise, a registered
# function (P2, inlined; its partials through the chain rule), constants. Each with an independent
# reference written in plain torch ops (not customgrad's printers).
T = torch
FORMULAS = {
    "b1*(1 - exp(-b2*x)) - b3": lambda x, b1, b2, b3: b1 * (1 - T.exp(-b2 * x)) - b3,
    "b1 / (1 + exp(b2 - b3*x))": lambda x, b1, b2, b3: b1 / (1 + T.exp(b2 - b3 * x)),
    "b1*(b2 + x + 1)**(-1/b3)": lambda x, b1, b2, b3: b1 * (b2 + x + 1) ** (-1 / b3),
    "sqrt(b1 + x**2) + 1/sqrt(b2 + x**2) + b3/(x + 4)": lambda x, b1, b2, b3: (
        T.sqrt(b1 + x**2) + 1 / T.sqrt(b2 + x**2) + b3 / (x + 4)
    ),
    "log(b1 + x**2) + log1p(b2*x**2) + expm1(b3*x)": lambda x, b1, b2, b3: (
        T.log(b1 + x**2) + T.log1p(b2 * x**2) + T.expm1(b3 * x)
    ),
    "sin(b1*x) + cos(b2*x) + tan(b3*x/4)": lambda x, b1, b2, b3: T.sin(b1 * x) + T.cos(b2 * x) + T.tan(b3 * x / 4),
    "asin(b1*x/3) + acos(b2*x/3) + atan(b3*x)": lambda x, b1, b2, b3: (
        T.asin(b1 * x / 3) + T.acos(b2 * x / 3) + T.atan(b3 * x)
    ),
    "sinh(b1*x) + cosh(b2*x) + tanh(b3*x)": lambda x, b1, b2, b3: T.sinh(b1 * x) + T.cosh(b2 * x) + T.tanh(b3 * x),
    "asinh(b1*x) + acosh(2 + b2*x**2) + atanh(b3*x/3)": lambda x, b1, b2, b3: (
        T.asinh(b1 * x) + T.acosh(2 + b2 * x**2) + T.atanh(b3 * x / 3)
    ),
    "sigmoid(b1*x) + softplus(b2*x) + abs(b3 - x)": lambda x, b1, b2, b3: (
        T.sigmoid(b1 * x) + T.nn.functional.softplus(b2 * x) + T.abs(b3 - x)
    ),
    "atan2(b1, x + 3) + max(b2*x, 0.1) + min(b3, x)": lambda x, b1, b2, b3: (
        T.atan2(b1.expand_as(x), x + 3) + T.clamp(b2 * x, min=0.1) + T.minimum(b3, x)
    ),
    "where(x > b1, b2*x, b3*x**2) + floor(x) + ceil(x) + round(x) + sign(x)": lambda x, b1, b2, b3: (
        T.where(x > b1, b2 * x, b3 * x**2) + T.floor(x) + T.ceil(x) + T.round(x) + T.sign(x)
    ),
    "b1 + b2*P2(b3*x + 0.5)": lambda x, b1, b2, b3: b1 + b2 * ((b3 * x + 0.5) ** 2 + 2 * (b3 * x + 0.5)),
    "b1 + b2*cos(2*pi*x/12) + b3**3*x": lambda x, b1, b2, b3: b1 + b2 * T.cos(2 * math.pi * x / 12) + b3**3 * x,
}
VALUES = {"b1": 0.7, "b2": 0.3, "b3": 0.45}


def eager_jacobian(text: str, x: torch.Tensor, values: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """f and df/db by autograd through the independent torch reference of the formula."""
    reference = FORMULAS[text]

    def f(theta):
        return reference(x, *theta.unbind(0))

    theta = torch.tensor([values[n] for n in ("b1", "b2", "b3")], dtype=torch.float64)
    return f(theta), torch.autograd.functional.jacobian(f, theta)


@pytest.mark.parametrize("language", ["torch", "numpy", "c"])
@pytest.mark.parametrize("text", FORMULAS)
def test_generated_rows_match_eager_autograd(text, language):
    # x avoids the kinks of abs/max/min/floor/where, where autograd and the symbolic partial may differ
    x = torch.linspace(-0.93, 0.91, 23, dtype=torch.float64) + 0.013
    compiled = formula_model(text)
    names = ("b1", "b2", "b3")
    assert sorted(n for n in compiled.names if n != "x") == list(names)
    rows = compiled.linearization(names, language)
    assert rows is not None
    arguments = [x if n == "x" else torch.tensor(VALUES[n], dtype=torch.float64) for n in compiled.names]
    if language == "numpy":
        out = np.empty((len(names) + 1, len(x)))
        with np.errstate(all="ignore"):
            rows(out, *(a.numpy() for a in arguments))
        out = torch.from_numpy(out)
    else:
        out = torch.empty(len(names) + 1, len(x), dtype=torch.float64)
        rows(out, *arguments)
    value, jacobian = eager_jacobian(text, x, VALUES)
    assert_matches_reference(out[-1], value, rtol=1e-13, atol=1e-14, what=f"{text} value ({language})")
    # rows follow `names` (b1, b2, b3), the reference's parameter order
    assert_matches_reference(out[:-1].T, jacobian, rtol=1e-11, atol=1e-13, what=f"{text} jacobian ({language})")


def test_c_rows_of_a_batch_layout_match_eager_autograd():
    # The batched fitter's layout: parameters (b, 1), a shared x (1, N), rows (p + 1, b, N), float64 and float32.
    text = "b1 / (1 + exp(b2 - b3*x))"
    compiled = formula_model(text)
    names = ("b1", "b2", "b3")
    rows = compiled.linearization(names, "c")
    generator = torch.Generator().manual_seed(0)
    columns = {n: 0.5 + torch.rand(5, 1, generator=generator, dtype=torch.float64) for n in names}
    x = torch.linspace(-2, 2, 7, dtype=torch.float64).unsqueeze(0)
    for dtype, rtol in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
        out = torch.empty(len(names) + 1, 5, 7, dtype=dtype)
        rows(out, *(x.to(dtype) if n == "x" else columns[n].to(dtype) for n in compiled.names))
        for b in range(5):
            value, jacobian = eager_jacobian(text, x[0], {n: columns[n][b, 0].item() for n in names})
            what = f"curve {b} ({dtype})"
            assert_matches_reference(out[-1, b].double(), value, rtol=rtol, atol=rtol, what=what)
            assert_matches_reference(out[:-1, b].T.double(), jacobian, rtol=rtol * 10, atol=rtol, what=what)


def test_c_rows_fall_back_to_torch_for_what_c_cannot_take():
    # half precision (no C kernel), and an int64 data column promoted in torch
    compiled = formula_model("b1*exp(-b2*x)")
    rows = compiled.linearization(("b1", "b2"), "c")
    x = torch.arange(4)
    for dtype in (torch.float16, torch.float64):
        out = torch.empty(3, 4, dtype=dtype)
        b1, b2 = torch.tensor(2.0, dtype=dtype), torch.tensor(0.5, dtype=dtype)
        rows(out, *({"x": x, "b1": b1, "b2": b2}[n] for n in compiled.names))
        expected = 2.0 * torch.exp(-0.5 * x.double())
        assert_matches_reference(out[-1].double(), expected, rtol=1e-3, atol=1e-3, what=f"value ({dtype})")
        assert_matches_reference(out[0].double(), expected / 2, rtol=1e-3, atol=1e-3, what=f"d/db1 ({dtype})")


def test_numpy_has_no_erf_so_torch_rows_are_used():
    compiled = formula_model("b1*erf(b2*x)")
    assert compiled.linearization(("b1", "b2"), "numpy") is None
    assert compiled.linearization(("b1", "b2"), "torch") is not None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_model_jacobian_with_bounds_sigma_and_fixed_matches_autograd(dtype):
    # Bounded parameters enter through the internal coordinates: the chain rule on the columns.
    x = torch.linspace(0, 3, 17, dtype=dtype)
    y = 2 * torch.exp(-0.6 * x) + 0.3
    sigma = torch.linspace(0.5, 1.5, 17, dtype=dtype)
    specs = parameter_specs(
        {
            "a": 1.5,
            "k": {"value": 0.4, "min": 0.0, "max": 2.0},
            "c": {"value": 0.2, "min": 0.0},
            "d": 0.1,
            "e": {"value": 0.05, "fixed": True},
        },
        {"d": (None, 1.0)},
    )
    text = "a*exp(-k*t) + c + d*t + e"
    function, _, data_names = build_function(text, ("t",), tuple(s.name for s in specs), x_is_dict=False)
    model = Model(function, {"t": x[None]}, y[None], 1 / sigma[None], specs, text)
    assert model.rows is not None
    theta = model.initial_theta()[0] + 0.1
    r, jacobian = model.jacobian(theta)

    def residuals(t):
        named = dict(zip(model.names, model.external(t).unbind(0), strict=True))
        return (named["a"] * torch.exp(-named["k"] * x) + named["c"] + named["d"] * x + 0.05 - y) / sigma

    expected = torch.autograd.functional.jacobian(residuals, theta)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert_matches_reference(r, residuals(theta), rtol=tolerance, atol=tolerance, what="residuals")
    assert_matches_reference(jacobian, expected, rtol=tolerance, atol=tolerance, what="jacobian")
    assert_matches_reference(
        model.residuals(theta), residuals(theta), rtol=tolerance, atol=tolerance, what="residuals without the jacobian"
    )


def test_fit_of_a_formula_with_erf_matches_scipy():
    # the torch rows (numpy has no erf), end to end
    x = np.linspace(-2, 2, 40)
    y = 1.3 * np.array([math.erf(0.8 * v) for v in x]) + 0.01 * np.cos(5 * x)
    result = fit("a*erf(b*x)", x, y, params={"a": 1.0, "b": 1.0})
    erf = np.vectorize(math.erf)
    reference = least_squares(
        lambda p: p[0] * erf(p[1] * x) - y, [1.0, 1.0], method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15
    )
    assert_matches_reference(np.array([result.params["a"], result.params["b"]]), reference.x, rtol=1e-8, what="params")


def test_small_fits_run_on_one_thread_and_restore_the_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        during = []
        fit(
            "a*x + b",
            np.arange(5.0),
            np.arange(5.0) * 2 + 1,
            params={"a": 1.0, "b": 0.0},
            on_step=lambda step, cost: during.append(torch.get_num_threads()),
        )
        assert during and set(during) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_concurrent_small_fits_restore_the_thread_setting():
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:

        def one_fit():
            fit("a*exp(-k*x)", np.arange(30.0), 3 * np.exp(-0.1 * np.arange(30.0)), params={"a": 1.0, "k": 0.5})

        workers = [threading.Thread(target=one_fit) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_redefining_a_registered_function_rebuilds_the_compiled_formula():
    from customgrad import function

    function("2*x", name="Twice_fit_test")
    first = fit("a*Twice_fit_test(x)", np.arange(1.0, 6.0), np.arange(1.0, 6.0) * 6, params={"a": 1.0})
    function("3*x", name="Twice_fit_test")
    second = fit("a*Twice_fit_test(x)", np.arange(1.0, 6.0), np.arange(1.0, 6.0) * 6, params={"a": 1.0})
    assert_matches_reference(
        np.array([first.params["a"], second.params["a"]]), np.array([3.0, 2.0]), rtol=1e-12, what="a"
    )


def test_float32_fit_uses_torch_rows_and_matches_scipy():
    # float32 stays in torch (the numpy rows are float64 only); geodesic acceleration included
    t = np.linspace(0, 5, 40)
    y = 3 * np.exp(-0.7 * t) + 0.5 + 0.02 * np.sin(3 * t)
    result = fit("a*exp(-k*t) + c", t, y, params={"a": 1.0, "k": 0.1, "c": 0.0}, dtype=torch.float32)
    reference = least_squares(
        lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, [1.0, 0.1, 0.0], method="lm", xtol=1e-15, ftol=1e-15
    )
    assert_matches_reference(np.array([result.params[n] for n in "akc"]), reference.x, rtol=1e-4, what="float32 params")
