"""The edge points of issue 13 on every kernel backend: powers at 0 and below, min/max ties, atan2 at the
origin, where/sqrt at their boundaries, inf and NaN, half-precision overflow, size-0 and broadcast inputs.

Each input is a tensor of `SIZE` random values (large enough that "auto" runs the fused C kernel, with a
SIMD remainder) with the edge values placed inside, spread over the loop and at its end. References:
eager torch autograd in float64 for the value and first derivatives everywhere and for second
derivatives where torch's own are finite; where torch's second derivative is NaN (autograd through
torch's masked pow backward meets 0 * log(0)) the library documents its own rule (the derivative of the
masked rule, tests/test_define_edges.py), so there every backend must give the eager backend's numbers.
Ties in min/max are split evenly (documented), so their reference is the even split written in torch.
"""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest
import sympy
import torch

import customgrad
from customgrad.backends import AUTO_CPU_MIN_SIZE
from reference import assert_matches_reference
from test_function import derivatives

F64 = torch.float64
SIZE = AUTO_CPU_MIN_SIZE + 37  # "auto" picks the fused kernel; 37 more exercise the SIMD remainder
INF, NAN = float("inf"), float("nan")
HAS_COMPILER = shutil.which("gcc") is not None or shutil.which("cc") is not None
#: Formulas Triton's CPU interpreter cannot run to float64 accuracy at these edges: it has no libdevice,
#: and the stand-ins of backends/triton_interpreter.py for tanh, log1p, expm1 are accurate to float32
#: ulps there. On a GPU (tests marked gpu) they run through libdevice.
NOT_INTERPRETABLE = ("tanh", "softplus", "log1p", "expm1")


def fold(reducer, tensors):
    return functools.reduce(reducer, tensors)


def even_split(reducer):
    """max/min with the gradient split evenly over tied arguments, in plain torch (the documented rule)."""

    def reference(**named):
        tensors = list(named.values())
        value = fold(reducer, tensors)
        ties = [(t == value).to(t.dtype) for t in tensors]
        count = sum(ties)
        return value.detach() + sum((tie / count) * (t - t.detach()) for tie, t in zip(ties, tensors, strict=True))

    return reference


def safe_sqrt_where(x):
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, 1.0)), 0.0)


POWER_X = [0.0, 0.0, 0.0, 0.0, 2.0, -2.0, -2.0, 0.5, 3.0, 0.0, -0.0, -3.0]
POWER_N = [0.0, 1.0, 1.5, -1.0, 0.0, 2.0, 1.5, -0.5, 2.5, 2.0, 3.0, -1.0]
SPECIAL = [0.0, -0.0, -2.0, 1e-300, 1e300, INF, -INF, NAN, 1.0, -1.0]
TIES = {"x": [1.0, 1.0, 2.0, 0.0, -1.0], "y": [1.0, 1.0, 2.0, 0.0, -1.0], "z": [1.0, 0.0, 1.0, 0.0, -1.0]}

#: id -> (formula, torch reference taking the inputs by name, edge values per input, background range).
CASES = {
    "pow_input_exponent": ("x**n", lambda x, n: torch.pow(x, n), {"x": POWER_X, "n": POWER_N}, (0.5, 2.0)),
    "scaled_pow": ("a*x**n + x", lambda a, x, n: a * torch.pow(x, n) + x, {"x": POWER_X, "n": POWER_N}, (0.5, 2.0)),
    "pow_shifted": ("x**(n - 1)", lambda x, n: torch.pow(x, n - 1), {"x": POWER_X, "n": POWER_N}, (0.5, 2.0)),
    "exp_base": ("2**n * x", lambda x, n: torch.pow(2.0, n) * x, {"x": POWER_X, "n": POWER_N}, (0.5, 2.0)),
    "abs_pow": ("abs(x)**n", lambda x, n: torch.pow(torch.abs(x), n), {"x": POWER_X, "n": POWER_N}, (0.5, 2.0)),
    "cube_plus_square": ("x**3 + x**2", lambda x: x**3 + x**2, {"x": SPECIAL}, (-2.0, 2.0)),
    "pow_2_5": ("x**2.5", lambda x: torch.pow(x, 2.5), {"x": SPECIAL}, (0.5, 2.0)),
    "pow_minus_1_5": ("x**(-1.5)", lambda x: torch.pow(x, -1.5), {"x": SPECIAL}, (0.5, 2.0)),
    "pow_minus_3": ("x**(-3)", lambda x: torch.pow(x, -3), {"x": SPECIAL}, (0.5, 2.0)),
    "pow_0_1": ("x**0.1", lambda x: torch.pow(x, 0.1), {"x": SPECIAL}, (0.5, 2.0)),
    "sqrt": ("sqrt(x)", lambda x: torch.sqrt(x), {"x": SPECIAL}, (0.5, 2.0)),
    "max3_ties": ("max(x, y, z)", even_split(torch.maximum), TIES, (-2.0, 2.0)),
    "min4_ties": (
        "min(x, y, z, w)",
        even_split(torch.minimum),
        {**TIES, "w": [1.0, 3.0, 1.0, 0.0, -1.0]},
        (-2.0, 2.0),
    ),
    "max_with_zero": (
        "max(x, y, 0)",
        lambda x, y: even_split(torch.maximum)(x=x, y=y, zero=torch.zeros_like(x)),
        {"x": [0.0, 0.0, 1.0, -1.0], "y": [0.0, -1.0, 1.0, -1.0]},
        (-2.0, 2.0),
    ),
    "atan2": (
        "atan2(y, x)",
        lambda y, x: torch.atan2(y, x),
        {"y": [0.0, 0.0, -0.0, 1.0, 0.0, INF, 1.0], "x": [0.0, -1.0, 0.0, 0.0, -0.0, INF, NAN]},
        (-2.0, 2.0),
    ),
    "where_sqrt": ("where(x > 0, sqrt(x), 0)", safe_sqrt_where, {"x": SPECIAL}, (-2.0, 2.0)),
    "exp_sin": (
        "exp(x)*sin(y)",
        lambda x, y: torch.exp(x) * torch.sin(y),
        {"x": [800.0, -800.0, INF, -INF, NAN, 1.0], "y": [1.0, 1.0, 0.5, 1.0, 1.0, INF]},
        (-2.0, 2.0),
    ),
    "log": ("log(x)", lambda x: torch.log(x), {"x": SPECIAL}, (0.5, 2.0)),
    "mish": (
        "x*tanh(softplus(x))",
        lambda x: x * torch.tanh(torch.nn.functional.softplus(x)),
        {"x": [20.0, 20.000001, 19.99999, -INF, INF, NAN, 0.0, -50.0]},
        (-5.0, 5.0),
    ),
    "sign_abs": ("sign(x)*x + abs(x)", lambda x: torch.sign(x) * x + torch.abs(x), {"x": SPECIAL}, (-2.0, 2.0)),
}


def edge_inputs(points: dict[str, list[float]], background: tuple[float, float], size: int = SIZE, seed: int = 0):
    """Random tensors of ``size`` with the edge values at spread positions and at the end of the loop."""
    generator = torch.Generator().manual_seed(seed)
    values = {}
    for name, chosen in points.items():
        tensor = torch.empty(size, dtype=F64).uniform_(*background, generator=generator)
        edge = torch.tensor(chosen, dtype=F64)
        tensor[torch.arange(len(chosen)) * 997 + 5] = edge
        tensor[size - len(chosen) :] = edge
        values[name] = tensor
    return values


def call_by_name(function):
    return lambda named: function.apply(*(named[name] for name in function.input_names))


def assert_like_torch(got, torch_ref, library_ref, what: str, order: int) -> None:
    """As torch where torch is finite; where it is not, as the eager backend (the library's documented
    rule: torch's NaN second derivatives of pow at 0; SymPy's factored x*(3*x + 2) is inf at -inf where
    torch's 3*x**2 + 2*x is NaN), and not finite at orders 0 and 1."""
    got, torch_ref, library_ref = got.detach(), torch_ref.detach(), library_ref.detach()
    finite = torch.isfinite(torch_ref)
    scale = max(torch_ref[finite].abs().max().item(), 1.0) if finite.any() else 1.0
    if order < 2:
        assert not torch.isfinite(got[~finite]).any(), f"{what}: finite where torch is not"
    assert_matches_reference(got[finite], torch_ref[finite], rtol=1e-10, atol=1e-13 * scale, what=what)
    assert_matches_reference(got[~finite], library_ref[~finite], rtol=1e-10, atol=0.0, what=f"{what} (torch NaN)")


@pytest.fixture(params=["cpu", "auto", "triton"])
def backend(request, monkeypatch):
    """A backend name; "auto" is checked to run the fused C kernel; triton runs in its CPU interpreter."""
    if request.param == "triton":
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif not HAS_COMPILER:
        pytest.skip("no C compiler")
    if request.param == "auto":
        from customgrad.backends import cpu

        calls = []
        original = cpu.CpuKernel.__call__
        monkeypatch.setattr(cpu.CpuKernel, "__call__", lambda self, *t: calls.append(1) or original(self, *t))
        yield "auto"
        assert calls or getattr(request.node, "empty_inputs", False), "auto did not run the fused C kernel"
        return
    yield request.param


def skip_uninterpretable(backend: str, formula: str) -> None:
    if backend == "triton" and any(name in formula for name in NOT_INTERPRETABLE):
        pytest.skip("Triton's interpreter has no float64-accurate stand-in for this function (GPU test)")


@functools.cache
def built(formula: str, backend: str):
    return customgrad.function(formula, backend=backend)


def compare_case(case_id: str, backend: str, order: int = 2) -> None:
    formula, reference, points, background = CASES[case_id]
    values = edge_inputs(points, background)
    eager = built(formula, "eager")
    values = {name: values.get(name, torch.full((SIZE,), 1.5, dtype=F64)) for name in eager.input_names}
    torch_ref = derivatives(lambda named: reference(**named), values, order, 1)
    library_ref = derivatives(call_by_name(eager), values, order, 1)
    got = derivatives(call_by_name(built(formula, backend)), values, order, 1)
    for level in range(order + 1):
        for index, (a, t, e) in enumerate(zip(got[level], torch_ref[level], library_ref[level], strict=True)):
            assert_like_torch(a, t, e, f"{backend} {formula} order {level} [{index}]", level)


@pytest.mark.parametrize("case_id", list(CASES))
def test_every_backend_matches_torch_at_the_edges_to_second_order(case_id, backend):
    skip_uninterpretable(backend, CASES[case_id][0])
    compare_case(case_id, backend)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["pow_input_exponent", "max3_ties", "atan2", "where_sqrt"])
def test_compile_backend_matches_torch_at_the_edges(case_id):
    compare_case(case_id, "compile")


# Half precision: the fused kernels compute float16/bfloat16 in float32, like the eager backend.

HALF_CASES = {
    "square_of_quotient": ("(x/100)**2", {"x": [300.0, 250.0, -1000.0, 7.0, 65504.0]}, (-400.0, 400.0)),
    "cube_of_quotient": ("(x/1000)**3", {"x": [100.0, 2000.0, -3000.0, 1.5]}, (-3000.0, 3000.0)),
    "gelu_cubic": ("0.044715*x**3 + x", {"x": [30.0, -20.0, 0.5, 9.0]}, (-30.0, 30.0)),
    "pow_input_exponent": ("x**n", {"x": [0.0, 0.0, -2.0, 0.5, 300.0], "n": [1.5, 0.0, 2.0, -0.5, 2.0]}, (0.1, 3.0)),
    "exp_overflow": ("exp(x) - 1", {"x": [11.0, 12.0, -20.0, 88.7, 90.0]}, (-5.0, 5.0)),
    "max3_ties": ("max(x, y, z)", {"x": [1.0, 1.0], "y": [1.0, 1.0], "z": [1.0, 0.0]}, (-3.0, 3.0)),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case_id", list(HALF_CASES))
def test_low_precision_is_as_accurate_as_same_dtype_eager(case_id, dtype, backend):
    formula, points, background = HALF_CASES[case_id]
    values = {name: v.to(dtype) for name, v in edge_inputs(points, background).items()}
    eager = built(formula, "eager")
    exact = derivatives(call_by_name(eager), {k: v.double() for k, v in values.items()}, 1, 2)
    same_dtype = derivatives(call_by_name(eager), values, 1, 2)
    got = derivatives(call_by_name(built(formula, backend)), values, 1, 2)
    eps = torch.finfo(dtype).eps
    for level in range(2):
        for index, (a, s, e) in enumerate(zip(got[level], same_dtype[level], exact[level], strict=True)):
            what = f"{backend} {formula} {dtype} order {level} [{index}]"
            assert a.dtype == dtype, what
            a, s, e = a.detach().double(), s.detach().double(), e.detach()
            # Overflow to inf (and NaN) where same-dtype eager overflows; elsewhere within 4x its error
            # plus 8 ulps of the largest entry (float32's libm and libmvec differ by a few ulps).
            in_range = torch.isfinite(s) & torch.isfinite(e)
            assert_matches_reference(a[~in_range], s[~in_range], rtol=0, what=f"{what} overflow")
            scale = e[in_range].abs().max().item() if in_range.any() else 0.0
            tolerance = 4 * (s - e)[in_range].abs().max().item() + 8 * eps * scale if in_range.any() else 0.0
            assert_matches_reference(a[in_range], e[in_range], rtol=0, atol=tolerance, what=what)


# Shapes: size 0, row and column broadcasts, 0-d and expanded inputs, with edge values inside.

SHAPES = {
    "row_times_column": ((128, 1), (1, 130)),
    "column": ((128, 130), (128, 1)),
    "zero_dim": ((128, 130), ()),
    "expanded": ((128, 130), "expanded"),
    "size_zero": ((0, 130), (1, 130)),
    "size_zero_flat": ((0,), ()),
}
SHAPE_CASES = {
    "pow_input_exponent": ("x**n", lambda x, n: torch.pow(x, n)),
    "max_with_zero": ("max(x, n, 0)", lambda x, n: even_split(torch.maximum)(x=x, n=n, zero=torch.zeros_like(x))),
    "where_sqrt": ("where(x > 0, sqrt(x), n)", lambda x, n: torch.where(x > 0, safe_sqrt_where(x), n)),
    "pow_2_5": ("x**2.5*n", lambda x, n: torch.pow(x, 2.5) * n),
}


@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("case_id", list(SHAPE_CASES))
def test_broadcast_and_empty_inputs_match_torch_at_the_edges(case_id, shape_id, backend, request):
    formula, reference = SHAPE_CASES[case_id]
    x_shape, n_shape = SHAPES[shape_id]
    request.node.empty_inputs = 0 in x_shape  # "auto" runs eager code for them
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(x_shape, generator=generator, dtype=F64)
    # NaN inputs are in CASES; here max's NaN convention (torch passes the gradient to both) stays out
    x.view(-1)[: min(6, x.numel())] = torch.tensor([0.0, 0.0, -2.0, 0.0, INF, -0.0], dtype=F64)[: x.numel()]
    if n_shape == "expanded":
        n = torch.tensor(1.5, dtype=F64).expand(x_shape)
    else:
        n = torch.randn(n_shape, generator=generator, dtype=F64).round()
    values = {"x": x, "n": n}
    function = built(formula, backend)
    eager = built(formula, "eager")
    got = derivatives(call_by_name(function), values, 2, 4)
    torch_ref = derivatives(lambda named: reference(**named), values, 2, 4)
    library_ref = derivatives(call_by_name(eager), values, 2, 4)
    for level in range(3):
        for index, (a, t, e) in enumerate(zip(got[level], torch_ref[level], library_ref[level], strict=True)):
            what = f"{backend} {formula} {shape_id} order {level} [{index}]"
            assert a.shape == t.shape and a.dtype == t.dtype, what
            assert_like_torch(a, t, e, what, level)


# Declared gradients (grads=): the declared expression, with the same edge rules, on every backend.

DECLARED = {
    "straight_through_round": (
        "round(x)",
        {"x": "1"},
        lambda x: torch.round(x.detach()) + (x - x.detach()),  # gradient 1, second derivative 0
        {"x": [0.5, 1.5, 2.5, -0.5, INF, NAN]},
    ),
    "smoothed_atan2": (
        "atan2(y, x)",
        {"y": "x/(x**2 + y**2 + 1e-12)", "x": "-y/(x**2 + y**2 + 1e-12)"},  # input order y, x
        None,
        {"y": [0.0, 0.0, 1.0, -1e-7], "x": [0.0, -1.0, 0.0, 1e-7]},
    ),
    "masked_sqrt": (
        "sqrt(abs(x))",
        {"x": "where(x > 0, 0.5*x**(-0.5), 0)"},
        None,
        {"x": [0.0, -0.0, -1.0, 1e-300, INF]},
    ),
    "power_with_declared_exponent_gradient": (
        "x**n",
        {"x": "n*x**(n - 1)", "n": "0"},
        None,
        {"x": POWER_X, "n": POWER_N},
    ),
}


def declared_reference(formula: str, grads: dict[str, str]):
    """A torch autograd.Function: forward as eager torch, backward the declared expressions in torch."""
    forward_of = {
        "atan2(y, x)": lambda y, x: torch.atan2(y, x),
        "sqrt(abs(x))": lambda x: torch.sqrt(torch.abs(x)),
        "x**n": lambda x, n: torch.pow(x, n),
    }[formula]

    def gradients(named):
        x = named.get("x")
        if formula == "atan2(y, x)":
            y = named["y"]
            denominator = x**2 + y**2 + 1e-12
            return [x / denominator, -y / denominator]
        if formula == "sqrt(abs(x))":
            positive = x > 0
            return [torch.where(positive, 0.5 * torch.pow(torch.where(positive, x, 1.0), -0.5), 0.0)]
        n = named["n"]
        return [n * torch.pow(x, n - 1), torch.zeros_like(n)]  # as declared: NaN (0 * inf) at x = 0, n = 0

    names = list(grads)

    class Declared(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.save_for_backward(*inputs)
            return forward_of(*inputs)

        @staticmethod
        def backward(ctx, grad):
            # differentiable torch ops: autograd differentiates them for the second order
            return tuple(grad * g for g in gradients(dict(zip(names, ctx.saved_tensors, strict=True))))

    def reference(**named):
        return Declared.apply(*(named[name] for name in names))

    return reference


@pytest.mark.parametrize("case_id", list(DECLARED))
def test_declared_gradients_are_the_same_on_every_backend_at_the_edges(case_id, backend):
    skip_uninterpretable(backend, DECLARED[case_id][0] + str(DECLARED[case_id][1]))
    compare_declared(case_id, backend)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["masked_sqrt", "power_with_declared_exponent_gradient"])
def test_compile_backend_declared_gradients_at_the_edges(case_id):
    compare_declared(case_id, "compile")


def compare_declared(case_id: str, backend: str) -> None:
    formula, grads, reference, points = DECLARED[case_id]
    reference = reference or declared_reference(formula, grads)
    function = customgrad.function(formula, grads=grads, backend=backend)
    eager = customgrad.function(formula, grads=grads, backend="eager")
    values = edge_inputs(points, (0.5, 2.0))
    values = {name: values[name] for name in function.input_names}
    got = derivatives(call_by_name(function), values, 2, 5)
    torch_ref = derivatives(lambda named: reference(**named), values, 2, 5)
    library_ref = derivatives(call_by_name(eager), values, 2, 5)
    for level in range(3):
        for index, (a, t, e) in enumerate(zip(got[level], torch_ref[level], library_ref[level], strict=True)):
            assert_like_torch(a, t, e, f"{backend} {case_id} order {level} [{index}]", level)


# On a GPU: Triton through libdevice, float64 constants included (run with -m gpu on a CUDA machine).


@pytest.mark.gpu
@pytest.mark.parametrize("case_id", list(CASES))
def test_triton_on_cuda_matches_torch_at_the_edges(case_id):
    pytest.importorskip("triton")
    formula, reference, points, background = CASES[case_id]
    values = {k: v.cuda() for k, v in edge_inputs(points, background).items()}
    eager = built(formula, "eager")
    values = {name: values.get(name, torch.full((SIZE,), 1.5, dtype=F64, device="cuda")) for name in eager.input_names}
    got = derivatives(call_by_name(built(formula, "triton")), values, 2, 1)
    torch_ref = derivatives(lambda named: reference(**named), values, 2, 1)
    library_ref = derivatives(call_by_name(eager), values, 2, 1)
    for level in range(3):
        for index, (a, t, e) in enumerate(zip(got[level], torch_ref[level], library_ref[level], strict=True)):
            assert_like_torch(a.cpu(), t.cpu(), e.cpu(), f"cuda triton {formula} order {level} [{index}]", level)


# One-argument functions at special values: signed zeros, halves, overflow thresholds, subnormal
# scales, infinities, NaN; value and derivative, float64 and float32.

SPECIAL_POINTS = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, 20.0, -20.0, 1e-300, 1e300, -1e300]
SPECIAL_POINTS += [INF, -INF, NAN, 88.5, 89.0, 709.0, 710.0, -745.0, 1e-40, -1e-40]
FUNCTIONS = [
    "sign(x)", "floor(x) + ceil(x)", "round(x)", "erf(x)", "erfc(x)", "sigmoid(x)", "softplus(x)", "atanh(x)",
    "acosh(x)", "asinh(x)", "asin(x)", "acos(x)", "tan(x)", "cosh(x)", "sinh(x)", "tanh(x)", "log1p(x)",
    "expm1(x)", "exp(x)", "log(x)", "abs(x)", "max(x, 0)", "min(x, 1)", "cos(x)", "atan(x)", "x**4",
    "x**(-2)", "x**(-4)", "sqrt(x)", "1/sqrt(x)", "1/x",
]  # fmt: skip
#: Those Triton's interpreter runs to float64 accuracy (tl primitives, or the float64-accurate
#: stand-ins of backends/triton_interpreter.py; the rest are float32-accurate there, GPU-tested).
INTERPRETED_FUNCTIONS = {
    "sign(x)", "floor(x) + ceil(x)", "erf(x)", "sigmoid(x)", "exp(x)", "log(x)", "abs(x)", "max(x, 0)",
    "min(x, 1)", "cos(x)", "x**4", "x**(-2)", "x**(-4)", "sqrt(x)", "1/sqrt(x)", "1/x", "round(x)",
    "erfc(x)", "atanh(x)", "acosh(x)", "asinh(x)", "asin(x)", "acos(x)", "tan(x)", "cosh(x)", "sinh(x)", "atan(x)",
}  # fmt: skip
#: Where torch's float64/float32 kernels overflow before the true value does (cosh(710) = 1.1e308,
#: cosh(89) = 2.2e38 in float32): the fused kernels give the finite value, checked against numpy.
EARLY_OVERFLOW = {"cosh(x)": (np.cosh, np.sinh), "sinh(x)": (np.sinh, np.cosh)}


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("formula", FUNCTIONS)
def test_functions_at_special_values_match_eager_torch(formula, dtype, backend):
    skip_uninterpretable(backend, formula)
    if backend == "triton" and (dtype == torch.float32 or formula not in INTERPRETED_FUNCTIONS):
        pytest.skip("Triton's interpreter: no float64 stand-in for this libdevice function; float32 is tested above")
    x = torch.linspace(-3, 3, SIZE, dtype=F64)
    x[: len(SPECIAL_POINTS)] = torch.tensor(SPECIAL_POINTS, dtype=F64)
    x = x.to(dtype)
    eager = built(formula, "eager")
    got = derivatives(lambda named: built(formula, backend).apply(named["x"]), {"x": x}, 1, 1)
    want = derivatives(lambda named: eager.apply(named["x"]), {"x": x}, 1, 1)
    exact = derivatives(lambda named: eager.apply(named["x"]), {"x": x.double()}, 1, 1)
    eps = torch.finfo(dtype).eps
    for level in range(2):
        a, e, w = got[level][0].detach(), want[level][0].detach(), exact[level][0].detach()
        assert a.dtype == dtype
        a, e = a.double(), e.double()
        if formula in EARLY_OVERFLOW:
            weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype).double()
            with np.errstate(over="ignore"):
                value = torch.from_numpy(EARLY_OVERFLOW[formula][level](x.double().numpy())) * (weights if level else 1)
            value = value.to(dtype).double()  # what the dtype can hold
            early = torch.isinf(e) & torch.isfinite(value)
            e = torch.where(early, value, e)
        what = f"{backend} {formula} {dtype} order {level}"
        if dtype == F64:
            assert_matches_reference(a, e, rtol=1e-12, atol=1e-300, what=what)
            continue
        # float32: inf/NaN as same-dtype eager; values within 4x its error vs float64 + 8 ulps (libmvec).
        in_range = torch.isfinite(e) & torch.isfinite(w)
        assert_matches_reference(a[~in_range], e[~in_range], rtol=0, what=f"{what} inf/NaN")
        tolerance = 4 * (e - w).abs() + 8 * eps * w.abs() + torch.finfo(dtype).tiny
        bad = in_range & ((a - w).abs() > tolerance)
        where = f"at x={x[bad][:5].tolist()} got {a[bad][:5].tolist()}, float64 {w[bad][:5].tolist()}"
        assert not bad.any(), f"{what}: {where}"


def test_triton_hands_numbers_to_libdevice_in_the_kernel_dtype():
    # Without a GPU this is visible only in the source: Triton passes a bare float literal to a libdevice
    # call as float32 (0.1 -> 0.10000000149), which a float64 kernel must not see.
    from customgrad.codegen.triton import kernel_source

    x = sympy.Symbol("x", real=True)
    source = kernel_source(["x"], [x**0.1 + sympy.atan2(sympy.Rational(3, 10), x)], "v", "v", "float64")
    assert "libdevice.pow(v_x, (0.1 + _unit))" in source
    assert "libdevice.atan2((0.3 + _unit), v_x)" in source
