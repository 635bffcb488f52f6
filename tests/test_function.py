"""Generated autograd Functions against eager autograd of independent torch-ops references.

Reference = eager autograd of the corpus' torch lambda in float64 (see tests/corpus.py); every
numerical comparison goes through `assert_matches_reference`.
"""

from __future__ import annotations

import functools

import numpy
import pytest
import torch

import customgrad
from corpus import CASES, CASES_BY_ID, Case
from customgrad import FormulaError, UsageError, function
from reference import assert_matches_reference

RTOL = 1e-10
#: Worst relative error seen, by derivative order (0 = forward), over elements not near zero.
WORST_RELATIVE_ERROR: dict[int, float] = {}


@functools.cache
def built(formula: str) -> type[torch.autograd.Function]:
    return function(formula)


def call_generated(case: Case, values: dict[str, torch.Tensor]) -> torch.Tensor:
    generated = built(case.formula)
    return generated.apply(*(values[name] for name in generated.input_names))


def call_reference(case: Case, values: dict[str, torch.Tensor]) -> torch.Tensor:
    return case.reference(**values)


def gradients(output: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool) -> list[torch.Tensor]:
    """d output / d inputs, zeros where the output does not depend on an input (or on none)."""
    if not output.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    return list(
        torch.autograd.grad(output, inputs, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    )


def derivatives(call, values: dict[str, torch.Tensor], order: int, seed: int) -> list[list[torch.Tensor]]:
    """[[forward], first, second, ...]: each order is the gradient of a random-weighted sum of the previous."""
    leaves = [value.detach().clone().requires_grad_() for value in values.values()]
    output = call(dict(zip(values, leaves, strict=True)))
    results = [[output]]
    generator = torch.Generator().manual_seed(seed)
    for level in range(order):
        weights = [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in results[-1]]
        weighted = sum((t * w).sum() for t, w in zip(results[-1], weights, strict=True))
        results.append(gradients(weighted, leaves, create_graph=level < order - 1))
    return results


def assert_close_float64(actual: torch.Tensor, expected: torch.Tensor, what: str, order: int) -> None:
    scale = max(expected.detach().abs().max().item(), 1.0) if expected.numel() else 1.0
    atol = 1e-3 * RTOL * scale  # cancellation near zero: absolute error relative to the largest entry
    assert_matches_reference(actual, expected, rtol=RTOL, atol=atol, what=what)
    if expected.numel():
        error = (actual.detach() - expected.detach()).abs()
        significant = expected.detach().abs() >= 1e-6 * scale
        if significant.any():
            relative = (error[significant] / expected.detach().abs()[significant]).max().item()
            WORST_RELATIVE_ERROR[order] = max(WORST_RELATIVE_ERROR.get(order, 0.0), relative)


def compare_orders(case: Case, order: int, seed: int = 0) -> None:
    values = case.sample(seed)
    actual = derivatives(functools.partial(call_generated, case), values, order, seed + 1)
    expected = derivatives(functools.partial(call_reference, case), values, order, seed + 1)
    names = list(values)
    for level, (got, want) in enumerate(zip(actual, expected, strict=True)):
        labels = ["forward"] if level == 0 else [f"order {level} d/d{name}" for name in names]
        for label, a, e in zip(labels, got, want, strict=True):
            assert_close_float64(a, e, f"{case.id} {label}", level)


# Numerical correctness over the corpus.


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert sum(case.third_order for case in CASES) >= 10
    assert any(len(case.domains) == 5 for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_first_and_second_order_match_eager_autograd(case):
    compare_orders(case, order=2)


@pytest.mark.parametrize("case", [c for c in CASES if c.third_order], ids=lambda c: c.id)
def test_third_order_matches_eager_autograd(case):
    compare_orders(case, order=3, seed=7)


def test_inputs_default_to_order_of_first_appearance():
    assert built("a + b*P2(c*x + d)").input_names == ("a", "b", "c", "x", "d")
    assert function("x*y", inputs=["y", "x", "unused"]).input_names == ("y", "x", "unused")


# Shapes, numbers, needed inputs, saved tensors.


def test_gradients_are_reduced_to_each_input_shape():
    generated = built("a*x + b")
    a = torch.rand(3, 1, dtype=torch.float64, requires_grad=True)
    x = torch.rand(4, dtype=torch.float64, requires_grad=True)
    b = torch.rand((), dtype=torch.float64, requires_grad=True)
    output = generated.apply(a, x, b)
    assert output.shape == (3, 4)
    grad_a, grad_x, grad_b = torch.autograd.grad(output.sum(), (a, x, b))
    assert (grad_a.shape, grad_x.shape, grad_b.shape) == ((3, 1), (4,), ())
    assert_matches_reference(grad_a, x.sum().expand(3, 1), rtol=1e-15, what="grad a")
    assert_matches_reference(grad_x, a.sum().expand(4), rtol=1e-15, what="grad x")
    assert_matches_reference(grad_b, torch.tensor(12.0), rtol=0, what="grad b")


@pytest.mark.parametrize("shape", [(0,), (1,), (1023,), (2, 0, 3), "non-contiguous"], ids=str)
def test_odd_shapes_match_eager(shape):
    case = CASES_BY_ID["blog_model"]
    values = case.sample(5)
    if shape == "non-contiguous":
        x = torch.rand(5, 3, dtype=torch.float64).t()
        assert not x.is_contiguous()
    else:
        x = torch.rand(shape, dtype=torch.float64)
    values["x"] = 4 * x - 2
    actual = derivatives(functools.partial(call_generated, case), values, 2, 6)
    expected = derivatives(functools.partial(call_reference, case), values, 2, 6)
    for level, (got, want) in enumerate(zip(actual, expected, strict=True)):
        for a, e in zip(got, want, strict=True):
            assert_close_float64(a, e, f"shape {shape} order {level}", level)


def test_gradients_keep_each_input_dtype():
    generated = built("a*x**2 + sin(b*x)")
    a = torch.rand(3, dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, dtype=torch.float32, requires_grad=True)
    b = torch.rand((), dtype=torch.float16, requires_grad=True)
    output = generated.apply(a, x, b)
    assert output.dtype == (a * x**2 + torch.sin(b * x)).dtype == torch.float64
    first = torch.autograd.grad(output.sum(), (a, x, b), create_graph=True)
    assert [g.dtype for g in first] == [torch.float64, torch.float32, torch.float16]
    second = torch.autograd.grad(sum(g.sum() for g in first), (a, x, b))
    assert [g.dtype for g in second] == [torch.float64, torch.float32, torch.float16]


def test_python_number_inputs_get_none_gradients():
    generated = built("a*x**2 + sin(b*x)")
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    output = generated.apply(2.5, x, 3)
    assert output.dtype == torch.float64
    assert_matches_reference(output, 2.5 * x**2 + torch.sin(3 * x), rtol=1e-15, what="forward")
    raw = output.grad_fn.apply(torch.ones_like(output))  # what backward returns, one entry per input
    assert raw[0] is None and raw[2] is None
    assert_matches_reference(raw[1], 5 * x + 3 * torch.cos(3 * x), rtol=1e-14, what="grad x")


def test_python_numbers_follow_torch_type_promotion():
    generated = built("a*x**2 + sin(b*x)")
    x32 = torch.linspace(-1, 1, 5, dtype=torch.float32)
    combinations = [
        (2.5, x32, 3),
        (torch.tensor(2.5, dtype=torch.float64), x32, 3),  # a 0-dim tensor does not promote a vector
        (torch.full((5,), 2.5, dtype=torch.float64), x32, 3),
        (2.5, x32.half(), torch.tensor(3.0)),
        (2.5, x32.bfloat16(), torch.ones(1, dtype=torch.float16)),
        (2.5, torch.tensor(0.5, dtype=torch.float16), torch.tensor(3.0)),
        (2.5, torch.arange(5), 3),  # integers: the default dtype
    ]
    for a, x, b in combinations:
        expected = a * x**2 + torch.sin(b * x)
        assert generated.apply(a, x, b).dtype == expected.dtype, (a, x, b)


@pytest.mark.parametrize(
    "formula",
    [
        "where(x > 0, x, 0)",
        "max(x, 0)",
        "min(x, 2, 3)",
        "atan2(2, x)",
        "where(1 < x, 1, -1)",
        "0*x + 3",
        "where(x > 0.1, x, 0.2)",
    ],
)
def test_constants_never_promote_the_input_dtype(formula):
    generated = built(formula)
    for x in [
        torch.tensor(0.5, dtype=torch.float16),
        torch.tensor([0.5, -1.0], dtype=torch.bfloat16),
        torch.tensor(0.5),
        torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True),
    ]:
        output = generated.apply(x)
        assert output.dtype == x.dtype and output.shape == x.shape, (formula, x)
        if x.requires_grad:
            (grad,) = torch.autograd.grad(output.sum(), x)
            assert grad.dtype == x.dtype and grad.shape == x.shape


def test_backward_skips_inputs_that_need_no_gradient(monkeypatch):
    generated = function("a*exp(x) + b*x**3")
    a, b = torch.tensor(2.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    output = generated.apply(a, x, b)
    raw = output.grad_fn.apply(torch.ones_like(output))
    assert raw[0] is None and raw[2] is None
    assert_matches_reference(raw[1], 2 * torch.exp(x) + 9 * x**2, rtol=1e-14, what="grad x")
    # The backward for x alone is a separate generated Function with only x's partial in it.
    (function_for_x,) = {type(raw[1].grad_fn)._forward_cls}
    assert function_for_x.spec.outputs[0].free_symbols >= {customgrad.formula.symbol("x")}
    assert len(function_for_x.spec.outputs) == 1


def test_only_inputs_are_saved_for_backward():
    generated = built("a + b*P2(c*x + d)")
    inputs = [torch.rand(shape, dtype=torch.float64, requires_grad=True) for shape in [(), (), (), (6,), ()]]
    packed = []

    def pack(tensor):
        packed.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = generated.apply(*inputs)
    assert 0 < len(packed) <= len(inputs)
    pointers = {t.data_ptr() for t in inputs}
    assert all(t.data_ptr() in pointers and t.shape in {i.shape for i in inputs} for t in packed)
    # d/da = 1 needs nothing saved: a is not among the saved tensors.
    assert all(t.data_ptr() != inputs[0].data_ptr() for t in packed)
    assert torch.autograd.grad(output.sum(), inputs)[3].shape == (6,)


@pytest.mark.parametrize("count", [1, 3, 4])
@pytest.mark.parametrize("call", ["apply", "class"])
def test_call_with_wrong_number_of_inputs_is_a_usage_error(count, call):
    generated = built("x*y")
    target = generated.apply if call == "apply" else generated
    with pytest.raises(UsageError, match=rf"takes 2 inputs \(x, y\), got {count}"):
        target(*[torch.ones(2)] * count)


# Custom (declared) gradients and composition.


def test_declared_gradient_is_returned_exactly():
    generated = function("x", grads={"x": "2*x"})
    assert generated.declared_grads == {"x": "2*x"}
    x = torch.randn(9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(9, dtype=torch.float64)
    (grad,) = torch.autograd.grad(generated.apply(x), x, g)
    assert torch.equal(grad, g * (2 * x))


def test_straight_through_round():
    generated = function("round(x)", grads={"x": "1"})
    x = torch.randn(9, dtype=torch.float64, requires_grad=True) * 3
    g = torch.randn(9, dtype=torch.float64)
    output = generated.apply(x)
    assert torch.equal(output, torch.round(x))
    (grad,) = torch.autograd.grad(output, x, g)
    assert torch.equal(grad, g)


def test_declared_gradient_for_one_input_keeps_the_others_derived():
    generated = function("sin(x)*y", grads={"x": "cos(x)"})
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, dtype=torch.float64)
    grad_x, grad_y = torch.autograd.grad(generated.apply(x, y), (x, y), g)
    assert torch.equal(grad_x, g * torch.cos(x))  # declared: y is *not* in it
    assert_matches_reference(grad_y, g * torch.sin(x), rtol=1e-15, what="grad y")


def test_formulas_differentiate_through_a_registered_declared_gradient():
    # IdentityWithSquareGrad(z) = z with dz-surrogate 2z: d/dx b*I(c*x) = b * 2(c*x) * c.
    generated = function("a + b*IdentityWithSquareGrad(c*x)")
    a, b, c = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.5, -1.5, 0.75))
    x = torch.linspace(-2, 2, 7, dtype=torch.float64, requires_grad=True)
    output = generated.apply(a, b, c, x)
    assert_matches_reference(output, a + b * c * x, rtol=1e-15, what="forward")
    grad_x, grad_c = torch.autograd.grad(output.sum(), (x, c))
    assert_matches_reference(grad_x, b * 2 * c * x * c, rtol=1e-14, what="grad x")
    assert_matches_reference(grad_c, (b * 2 * c * x * x).sum(), rtol=1e-14, what="grad c")


def test_naming_registers_and_later_formulas_call_it():
    function("x**3 - x", name="CubicForTest")
    assert "CubicForTest" in customgrad.REGISTRY
    generated = function("CubicForTest(2*x) + 1")
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    output = generated.apply(x)
    assert_matches_reference(output, (2 * x) ** 3 - 2 * x + 1, rtol=1e-15, what="forward")
    (grad,) = torch.autograd.grad(output.sum(), x)
    assert_matches_reference(grad, 24 * x**2 - 2, rtol=1e-14, what="grad")


def test_registered_functions_at_constant_arguments_are_folded():
    generated = function("max(x, P2(-1)) + P2(2)")
    x = torch.tensor([-2.0, 0.5], dtype=torch.float64, requires_grad=True)
    output = generated.apply(x)
    assert_matches_reference(output, torch.tensor([7.0, 8.5]), rtol=1e-15, what="forward")
    assert_matches_reference(torch.autograd.grad(output.sum(), x)[0], torch.tensor([0.0, 1.0]), rtol=0, what="grad")


def test_bad_declared_gradients_are_rejected():
    with pytest.raises(UsageError, match="not an input"):
        function("x*y", grads={"z": "1"})
    with pytest.raises(FormulaError, match="'w'"):
        function("x*y", grads={"x": "w"})
    with pytest.raises(FormulaError, match="not among inputs"):
        function("x*y", inputs=["x"])


# torch.func transforms.

TRANSFORM_CASES = ["gelu_tanh", "legendre_p4", "rational_pole", "piecewise_three", "mish"]


@pytest.mark.parametrize("case_id", ["blog_model", "rational_3_inputs", "atan2"])
def test_vmap_equals_a_python_loop(case_id):
    case = CASES_BY_ID[case_id]
    generated = built(case.formula)
    batched = {name: torch.stack([case.sample(seed)[name] for seed in range(4)]) for name in case.domains}
    arguments = [batched[name] for name in generated.input_names]
    result = torch.func.vmap(generated.apply)(*arguments)
    looped = torch.stack([generated.apply(*(a[i] for a in arguments)) for i in range(4)])
    assert_matches_reference(result, looped, rtol=1e-15, what="vmap")
    grad_x = torch.func.vmap(torch.func.grad(lambda *a: generated.apply(*a).sum(), argnums=0))(*arguments)
    looped_grad = []
    for i in range(4):
        first = arguments[0][i].clone().requires_grad_()
        output = generated.apply(first, *(a[i] for a in arguments[1:]))
        looped_grad.append(torch.autograd.grad(output.sum(), first)[0])
    looped_grad = torch.stack(looped_grad)
    assert_matches_reference(grad_x, looped_grad, rtol=1e-14, what="vmap of grad")


@pytest.mark.parametrize("case_id", TRANSFORM_CASES)
def test_jacrev_and_hessian_match_eager(case_id):
    case = CASES_BY_ID[case_id]
    generated = built(case.formula)
    x = case.sample(3)["x"]
    jacobian = torch.func.jacrev(generated.apply)(x)
    assert_matches_reference(jacobian, torch.func.jacrev(case.reference)(x), rtol=RTOL, atol=1e-14, what="jacrev")
    hessian = torch.func.jacrev(torch.func.jacrev(lambda v: generated.apply(v).sum()))(x)
    expected = torch.func.jacrev(torch.func.jacrev(lambda v: case.reference(v).sum()))(x)
    assert_matches_reference(hessian, expected, rtol=RTOL, atol=1e-14, what="hessian")
    grad = torch.func.grad(lambda v: generated.apply(v).sum())(x)
    assert_matches_reference(
        grad, torch.func.grad(lambda v: case.reference(v).sum())(x), rtol=RTOL, atol=1e-14, what="grad"
    )


@pytest.mark.parametrize("twin", [True, False], ids=["F.forward_ad", "F"])
@pytest.mark.parametrize("case_id", TRANSFORM_CASES)
def test_forward_ad_variant_gives_jvp_jacfwd_and_forward_over_reverse_hessian(case_id, twin):
    """On ``F.forward_ad``, and on ``F`` itself, whose apply hands forward mode to that twin."""
    case = CASES_BY_ID[case_id]
    forward_ad = built(case.formula).forward_ad if twin else built(case.formula)
    x = case.sample(4)["x"]
    tangent = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(5))
    value, derivative = torch.func.jvp(forward_ad.apply, (x,), (tangent,))
    expected_value, expected_derivative = torch.func.jvp(case.reference, (x,), (tangent,))
    assert_matches_reference(value, expected_value, rtol=RTOL, atol=1e-14, what="jvp value")
    assert_matches_reference(derivative, expected_derivative, rtol=RTOL, atol=1e-14, what="jvp tangent")
    jacobian = torch.func.jacfwd(forward_ad.apply)(x)
    assert_matches_reference(jacobian, torch.func.jacrev(case.reference)(x), rtol=RTOL, atol=1e-14, what="jacfwd")
    hessian = torch.func.hessian(lambda v: forward_ad.apply(v).sum())(x)
    expected = torch.func.hessian(lambda v: case.reference(v).sum())(x)
    assert_matches_reference(hessian, expected, rtol=RTOL, atol=1e-14, what="hessian (jacfwd of jacrev)")


def test_forward_ad_with_several_inputs_and_a_number():
    generated = built("a + b*P2(c*x + d)").forward_ad
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    b = torch.tensor(1.5, dtype=torch.float64)
    tangent = torch.ones(5, dtype=torch.float64)
    _, derivative = torch.func.jvp(lambda v: generated.apply(0.5, b, 2.0, v, -0.25), (x,), (tangent,))
    assert_matches_reference(derivative, b * (2 * (2 * x - 0.25) + 2) * 2, rtol=1e-14, what="jvp")


def test_dual_tensors_of_forward_ad_go_through_the_function_itself():
    generated = built("a + b*P2(c*x + d)")
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    b = torch.tensor(1.5, dtype=torch.float64)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
        tangent = torch.autograd.forward_ad.unpack_dual(generated(0.5, b, 2.0, dual, -0.25)).tangent
    assert_matches_reference(tangent, b * (2 * (2 * x - 0.25) + 2) * 2, rtol=1e-14, what="dual tangent")


# dtypes.

DTYPE_CASES = ["gelu_tanh", "mish", "legendre_p5", "rational_3_inputs", "blog_model", "gaussian_4", "trig"]
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case_id", DTYPE_CASES)
def test_low_precision_is_as_accurate_as_same_dtype_eager(case_id, dtype):
    case = CASES_BY_ID[case_id]
    values = case.sample(11)
    low = {name: value.to(dtype) for name, value in values.items()}
    exact = derivatives(functools.partial(call_reference, case), {n: v.double() for n, v in low.items()}, 1, 12)
    eager = derivatives(functools.partial(call_reference, case), low, 1, 12)
    actual = derivatives(functools.partial(call_generated, case), low, 1, 12)
    for level in range(2):
        for got, same_dtype, want in zip(actual[level], eager[level], exact[level], strict=True):
            assert got.dtype == dtype
            eager_error = (same_dtype.double() - want).abs()
            scale = want.abs().max().item() + EPS[dtype]
            # Error allowed: a few times eager's own error, plus a few ulps of the largest entry.
            tolerance = 4 * eager_error + 8 * EPS[dtype] * scale
            error = (got.double() - want).abs()
            assert bool((error <= tolerance).all()), (
                f"{case_id} {dtype} order {level}: error {error.max().item():.3g} > {tolerance.max().item():.3g}"
            )
            assert_matches_reference(got.double(), want, rtol=0, atol=tolerance.max().item(), what=f"order {level}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_matches_cpu(dtype):
    case = CASES_BY_ID["blog_model"]
    cpu = derivatives(functools.partial(call_generated, case), case.sample(1, dtype), 2, 2)
    cuda = derivatives(
        functools.partial(call_generated, case), {n: v.cuda() for n, v in case.sample(1, dtype).items()}, 2, 2
    )
    tolerance = 1e-12 if dtype == torch.float64 else 64 * EPS[dtype]
    for level in range(3):
        for got, want in zip(cuda[level], cpu[level], strict=True):
            assert got.device.type == "cuda" and got.dtype == dtype
            assert_matches_reference(got, want, rtol=tolerance, atol=tolerance, what=f"cuda order {level}")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cuda_corpus_matches_eager_autograd_on_cuda(case):
    values = {name: value.cuda() for name, value in case.sample(0).items()}
    actual = derivatives(functools.partial(call_generated, case), values, 2, 1)
    expected = derivatives(functools.partial(call_reference, case), values, 2, 1)
    for level, (got, want) in enumerate(zip(actual, expected, strict=True)):
        for a, e in zip(got, want, strict=True):
            assert a.device.type == "cuda"
            assert_close_float64(a, e, f"{case.id} cuda order {level}", level)


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_compiled_with_inductor_matches_eager():
    torch._dynamo.reset()
    model = _compiled_model(built("a + b*P2(c*x + d)")).cuda()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.linspace(-2, 2, 11, dtype=torch.float64, device="cuda", requires_grad=True)
    expected, actual = model(x), compiled(x)
    assert_matches_reference(actual, expected, rtol=1e-14, what="compiled forward")
    for got, want in zip(
        torch.autograd.grad(actual.sum(), [x, *model.parameters()]),
        torch.autograd.grad(expected.sum(), [x, *model.parameters()]),
        strict=True,
    ):
        assert_matches_reference(got, want, rtol=1e-13, atol=1e-15, what="compiled gradient")


# torch.compile.


def _compiled_model(generated):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.tensor(-1.25, dtype=torch.float64))
            self.c = torch.nn.Parameter(torch.tensor(0.75, dtype=torch.float64))
            self.d = torch.nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

        def forward(self, x):
            return generated.apply(self.a, self.b, self.c, x, self.d) * 2 + 1

    return Model()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_model_without_graph_break_matches_eager(backend):
    torch._dynamo.reset()
    generated = built("a + b*P2(c*x + d)")
    model = _compiled_model(generated)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.linspace(-2, 2, 11, dtype=torch.float64, requires_grad=True)
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.sum(), [x, *model.parameters()])
    actual = compiled(x)
    actual_grads = torch.autograd.grad(actual.sum(), [x, *model.parameters()])
    assert_matches_reference(actual, expected, rtol=1e-14, what="compiled forward")
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert_matches_reference(got, want, rtol=1e-14, atol=1e-15, what="compiled gradient")


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["gelu_tanh", "piecewise_three", "atan2"])
def test_compiled_corpus_formulas_match_eager(case_id):
    case = CASES_BY_ID[case_id]
    generated = built(case.formula)
    values = case.sample(21)

    def call(*arguments):
        return generated.apply(*arguments)

    compiled = torch.compile(call, backend="aot_eager", fullgraph=True)
    arguments = [values[name].clone().requires_grad_() for name in generated.input_names]
    actual = compiled(*arguments)
    actual_grads = torch.autograd.grad(actual.sum(), arguments)
    expected = case.reference(**dict(zip(generated.input_names, arguments, strict=True)))
    expected_grads = torch.autograd.grad(expected.sum(), arguments)
    assert_matches_reference(actual, expected, rtol=RTOL, atol=1e-14, what="compiled forward")
    for got, want in zip(actual_grads, expected_grads, strict=True):
        assert_matches_reference(got, want, rtol=RTOL, atol=1e-14, what="compiled gradient")


@pytest.mark.slow
def test_compiled_inference_without_gradients_matches_eager():
    # With no input needing a gradient Dynamo calls forward directly, counting its parameters.
    generated = built("where(x > 0, 1, -1)*y + sin(x)")
    x = torch.linspace(-1, 1, 7, dtype=torch.float32)
    y = torch.tensor(0.5, dtype=torch.float64)
    compiled = torch.compile(lambda a, b: generated.apply(a, b), backend="aot_eager", fullgraph=True)
    actual = compiled(x, y)
    expected = torch.where(x > 0, 1.0, -1.0) * 0.5 + torch.sin(x)
    assert actual.dtype == torch.float32
    assert_matches_reference(actual, expected, rtol=1e-6, what="compiled inference")


def test_calling_the_class_is_apply_in_eager_mode():
    generated = built("a*x**2 + sin(x)")
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    assert torch.equal(generated(2.0, x), generated.apply(2.0, x))


@pytest.mark.slow
@pytest.mark.xfail(
    raises=torch._dynamo.exc.Unsupported,
    strict=True,
    reason="Dynamo treats F(x) as instantiation; compiled code calls F.apply(x) (see function's docs)",
)
def test_calling_the_class_under_compile():
    generated = built("a*x**2 + sin(x)")
    torch.compile(lambda v: generated(2.0, v) * 3, backend="eager", fullgraph=True)(torch.ones(3))


# Mistakes a new user makes: each is a UsageError or FormulaError that names the thing and the fix.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": 3}, r"inputs must be a list of names"),
        ({"inputs": ["x", None]}, r"inputs must be a list of names"),
        ({"grads": ["x"]}, r"grads must be a dict \{input name: formula\}"),
        ({"grads": "2*x"}, r"grads must be a dict"),
        ({"grads": {"x": None}}, r"grads\['x'\] must be a formula such as '2\*x' or a finite number, got NoneType"),
        ({"grads": {"x": True}}, r"grads\['x'\] must be .* got bool"),
        ({"grads": {"x": float("nan")}}, r"grads\['x'\] must be .* got float nan"),
        ({"grads": {"x": torch.tensor(1.0)}}, r"grads\['x'\] must be .* got Tensor"),
        ({"name": 3}, r"name must be a string such as 'P2', got int"),
        ({"name": "lambda"}, r"not a valid name.*not a Python keyword"),
        ({"name": "Piecewise"}, r"taken by a built-in"),
        ({"name": "x"}, r"name 'x' is also an input of 'x\*y'"),
    ],
)
def test_bad_arguments_of_function_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        function("x*y", **kwargs)
    assert "x" not in customgrad.REGISTRY  # nothing half-registered


def test_generator_of_inputs_and_numeric_declared_gradients_are_accepted():
    generated = function("x*y", inputs=(n for n in "yx"), grads={"x": 2, "y": 0.5})
    assert generated.input_names == ("y", "x")
    y, x = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    grad_y, grad_x = torch.autograd.grad(generated.apply(y, x).sum(), (y, x))
    assert torch.equal(grad_x, torch.full((3,), 2.0)) and torch.equal(grad_y, torch.full((3,), 0.5))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", r"input 'x' must be a tensor or a real Python number, got str$"),
        ([1.0, 2.0], r"got list \(convert it with torch.as_tensor"),
        (numpy.ones(3), r"got ndarray \(convert it with torch.as_tensor"),
        (torch.ones(2, dtype=torch.complex64), r"input 'x' is a torch.complex64 tensor, but formulas are real-valued"),
        (10**400, r"integer with 401 digits, too large"),
    ],
)
def test_calling_with_values_that_are_not_real_tensors_or_numbers_is_a_usage_error(value, message):
    with pytest.raises(UsageError, match=message):
        function("x**2 + 1").apply(value)


def test_numpy_scalars_and_keywords_are_accepted_like_python_numbers():
    generated = function("x**2 + 2*x")
    assert generated.apply(numpy.float64(2.0)).item() == 8.0
    assert torch.equal(generated(x=torch.ones(2)), torch.full((2,), 3.0))


def test_shapes_that_do_not_broadcast_name_the_inputs():
    with pytest.raises(UsageError, match=r"do not broadcast together \(x \(3,\), y \(4,\)\)"):
        function("x*y").apply(torch.ones(3, requires_grad=True), torch.ones(4))


def test_a_registered_name_used_as_a_variable_says_it_is_registered():
    function("2*t", name="DoubleForTest")
    with pytest.raises(FormulaError, match=r"registered with customgrad.function\(..., name='DoubleForTest'\)"):
        function("DoubleForTest + 1")
