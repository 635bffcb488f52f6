"""``customgrad.custom_gradient``: a Python forward and a hand-written backward made into a complete Function.

References: eager float64 autograd of the same formula in torch ops, the built-in formula Functions
(`customgrad.library`), finite differences (gradcheck), torch.library.opcheck. Never the code under test.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import customgrad
from customgrad import GradientError, UsageError, custom_gradient
from customgrad.library import P2, IdentityWithSquareGrad
from fixtures.decorated_functions import DECORATED, identity_with_square_grad, mul_broadcast, p2, sin_cos
from reference import assert_matches_reference

check = functools.partial(customgrad.check, isolation="thread")
_names = itertools.count()


def _x(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


def _grads(output, inputs, weights=None, create_graph=False):
    weights = torch.ones_like(output) if weights is None else weights
    return torch.autograd.grad((output * weights).sum(), inputs, create_graph=create_graph)


# -- the blog's two examples against the built-in formula Functions ------------------------------------------
def test_blog_p2_matches_the_built_in_formula_p2_to_second_order():
    x, y = _x(7), _x(7)
    assert_matches_reference(p2(x), P2.apply(y), rtol=1e-15, what="forward")
    (gx,) = _grads(p2(x), x, create_graph=True)
    (gy,) = _grads(P2.apply(y), y, create_graph=True)
    assert_matches_reference(gx, gy, rtol=1e-15, what="gradient")
    assert_matches_reference(_grads(gx, x)[0], _grads(gy, y)[0], rtol=1e-15, what="second derivative")


def test_blog_identity_with_2x_gradient_matches_the_built_in_surrogate():
    x, y = _x(7, seed=1), _x(7, seed=1)
    assert_matches_reference(identity_with_square_grad(x), IdentityWithSquareGrad.apply(y), rtol=0, what="forward")
    assert_matches_reference(
        _grads(identity_with_square_grad(x), x)[0], _grads(IdentityWithSquareGrad.apply(y), y)[0], rtol=1e-15
    )


# -- torch.func, torch.compile, double backward ---------------------------------------------------------------
def _p2_reference(x):
    return x**2 + 2 * x


def test_vmap_grad_jacrev_and_jacrev_of_jacrev_match_eager_autograd():
    x = _x(4, seed=2).detach()
    batch = _x(3, 4, seed=3).detach()
    assert_matches_reference(torch.func.vmap(p2)(batch), _p2_reference(batch), rtol=1e-15, what="vmap")
    grad = torch.func.grad(lambda t: p2(t).sum())(x)
    assert_matches_reference(grad, torch.func.grad(lambda t: _p2_reference(t).sum())(x), rtol=1e-15, what="grad")
    assert_matches_reference(torch.func.jacrev(p2)(x), torch.func.jacrev(_p2_reference)(x), rtol=1e-15)
    hessian = torch.func.jacrev(torch.func.jacrev(p2))(x)
    assert_matches_reference(hessian, torch.func.jacrev(torch.func.jacrev(_p2_reference))(x), rtol=1e-15)


@pytest.mark.slow
def test_compiles_with_fullgraph_inside_a_model_and_matches_eager():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([0.5, -1.5, 2.0, 1.0], dtype=torch.float64))

        def forward(self, x, y):
            return mul_broadcast(p2(x * self.scale), y).sin()

    model = Model()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    x, y = _x(3, 4, seed=4), _x(4, seed=5)
    want = (_p2_reference(x.detach() * model.scale.detach()) * y.detach()).sin()
    got = compiled(x, y)
    assert_matches_reference(got, want, rtol=1e-14, what="compiled forward")
    got.sum().backward()
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    scale = model.scale.detach().clone().requires_grad_()
    (_p2_reference(x2 * scale) * y2).sin().sum().backward()
    for leaf, reference in ((x, x2), (y, y2), (model.scale, scale)):
        assert_matches_reference(leaf.grad, reference.grad, rtol=1e-13, atol=1e-15, what="compiled gradient")


def test_double_backward_through_a_saved_output_is_right():
    @custom_gradient
    def exp(x):
        return torch.exp(x)

    @exp.backward
    def _(output, grad):
        return grad * output  # d/dx e^x = e^x, from the saved output

    x = _x(5, seed=6)
    assert torch.autograd.gradcheck(exp, (x,)) and torch.autograd.gradgradcheck(exp, (x,))
    (g,) = _grads(exp(x), x, create_graph=True)
    assert_matches_reference(_grads(g, x)[0], torch.exp(x.detach()), rtol=1e-15, what="second derivative")


def test_numpy_backward_is_once_differentiable_with_a_clear_error():
    @custom_gradient
    def numpy_sin(x):
        return torch.from_numpy(np.sin(x.detach().numpy()))

    @numpy_sin.backward
    def _(x, grad):
        return grad * torch.from_numpy(np.cos(x.detach().numpy()))

    x = _x(5, seed=7)
    (g,) = _grads(numpy_sin(x), x, create_graph=True)
    assert_matches_reference(g, torch.cos(x.detach()), rtol=1e-15, what="first derivative")
    with pytest.raises(RuntimeError, match="numpy_sin's backward is not differentiable.*once_differentiable"):
        g.sum().backward()
    for _ in range(2):  # the fast path after the first call detects it too
        (g,) = _grads(numpy_sin(x), x, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            g.sum().backward()
    upstream = _x(5, seed=8)  # differentiating with respect to chosen inputs passes the error node too
    (g,) = torch.autograd.grad(numpy_sin(x), x, upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        torch.autograd.grad(g.sum(), [x, upstream], allow_unused=True)
    report = check(numpy_sin, x.detach(), checks=["second_order"], compile=False)
    assert report.results[0].status == "skipped" and "once_differentiable" in report.results[0].message


def test_comparison_in_the_backward_is_not_taken_for_leaving_autograd():
    @custom_gradient
    def relu(x):
        return x.clamp_min(0)

    @relu.backward
    def _(x, grad):
        return grad * (x > 0)  # piecewise constant in x: the second derivative is zero, not an error

    x = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    for _ in range(2):
        (g,) = _grads(relu(x), x, create_graph=True)
        assert not g.requires_grad  # no graph needed: torch ops on a constant mask
    away_from_the_kink = torch.tensor([-1.0, 0.5, 2.0, -0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(relu, (away_from_the_kink,))


# -- shapes, dtypes, needs_input_grad, nondiff arguments, several outputs, residuals ------------------------
@pytest.mark.parametrize("call", ["first (checked)", "later (fast)"])
def test_gradients_are_reduced_to_each_inputs_shape_and_dtype(call):
    @custom_gradient
    def scaled(x, s):
        return x * s

    @scaled.backward
    def _(x, s, grad):
        return (grad * s).double(), (grad * x).double()  # broadcast shape, float64: reduced and cast

    if call == "later (fast)":
        scaled(_x(2, 3, seed=1), _x(3, seed=2)).sum().backward()
    x, s = _x(2, 3, seed=8, dtype=torch.float32), _x(3, seed=9, dtype=torch.float32)
    weights = torch.randn(2, 3, generator=torch.Generator().manual_seed(10))
    gx, gs = _grads(scaled(x, s), (x, s), weights)
    rx, rs = _grads(x * s, (x, s), weights)
    assert (gx.dtype, gs.dtype, gs.shape) == (torch.float32, torch.float32, torch.Size([3]))
    assert_matches_reference(gx, rx, rtol=1e-6, what="x gradient")
    assert_matches_reference(gs, rs, rtol=1e-6, what="s gradient")


def test_broadcast_gradients_under_torch_func_grad_and_vmap_match_eager():
    x, y = _x(3, 4, seed=24).detach(), _x(4, seed=25).detach()
    for _ in range(2):  # the first call checks every rule, the second takes the fast class
        got = torch.func.grad(lambda a, b: mul_broadcast(a, b).sin().sum(), argnums=(0, 1))(x, y)
        want = torch.func.grad(lambda a, b: (a * b).sin().sum(), argnums=(0, 1))(x, y)
        for g, w in zip(got, want, strict=True):
            assert_matches_reference(g, w, rtol=1e-15, what="torch.func.grad")
    batch = _x(2, 3, 4, seed=26).detach()
    got = torch.func.vmap(torch.func.grad(lambda a, b: mul_broadcast(a, b).sum(), argnums=1), in_dims=(0, None))
    assert_matches_reference(got(batch, y), batch.sum(1), rtol=1e-15, what="vmap of grad")


def test_needs_input_grad_is_passed_and_unneeded_gradients_are_none():
    seen = []

    @custom_gradient
    def product(x, y):
        return x * y

    @product.backward
    def _(x, y, grad, needs_input_grad):
        seen.append(needs_input_grad)
        return grad * y if needs_input_grad[0] else None, grad * x if needs_input_grad[1] else None

    x, y = _x(3, seed=11), _x(3, seed=12).detach()
    (gx,) = _grads(product(x, y), x)
    assert_matches_reference(gx, y, rtol=0, what="x gradient")
    assert seen == [(True, False)]


def test_nondiff_arguments_tensor_index_and_number():
    @custom_gradient(nondiff_argnums=("index",))
    def take_scaled(x, index, scale):
        return x[index] * scale

    @take_scaled.backward
    def _(x, index, scale, grad):
        full = torch.zeros_like(x).index_add(0, index, grad * scale)  # repeated indices accumulate
        return full, None  # one gradient per input not in nondiff_argnums (x, scale: a number, so None)

    x, index = _x(5, seed=13), torch.tensor([4, 0, 4])
    (g,) = _grads(take_scaled(x, index, 3.0), x)
    (want,) = _grads(x[index] * 3.0, x)
    assert_matches_reference(g, want, rtol=0, what="gradient")


def test_several_outputs_and_symbolic_zeros():
    x = _x(5, seed=14)
    (g,) = _grads(sum(w * o for w, o in zip((2.0, -1.0), sin_cos(x))), x)
    assert_matches_reference(g, 2 * torch.cos(x.detach()) + torch.sin(x.detach()), rtol=1e-15)

    received = []

    @custom_gradient(symbolic_zeros=True)
    def pair(x):
        return x * 2, x * 3

    @pair.backward
    def _(grad_a, grad_b):
        received.append((grad_a is None, grad_b is None))
        return (0 if grad_a is None else 2 * grad_a) + (0 if grad_b is None else 3 * grad_b)

    (g,) = torch.autograd.grad(pair(x)[1].sum(), x)
    assert received == [(True, False)]
    assert_matches_reference(g, torch.full((5,), 3.0, dtype=torch.float64), rtol=0)


def test_residuals_reach_the_backward_and_not_the_caller():
    @custom_gradient(residuals=("mask",))
    def dropout(x):
        mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype) > 0.5).to(x.dtype)
        return x * mask * 2, mask

    @dropout.backward
    def _(mask, grad):
        return grad * mask * 2

    x = _x(8, seed=15)
    y = dropout(x)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape
    mask = (torch.rand(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) > 0.5).double()
    assert_matches_reference(_grads(y, x)[0], mask * 2, rtol=0, what="gradient")


def test_keyword_arguments_and_defaults_are_bound():
    @custom_gradient
    def affine(x, a=2.0, b=1.0):
        return a * x + b

    @affine.backward
    def _(a, grad):
        return grad * a, None, None

    x = _x(3, seed=16)
    assert_matches_reference(affine(x, b=0.0), 2 * x.detach(), rtol=0)
    assert_matches_reference(_grads(affine(x, a=-3.0), x)[0], torch.full((3,), -3.0, dtype=torch.float64), rtol=0)


# -- forward mode and vmap rules ---------------------------------------------------------------------------
def test_jvp_rule_gives_jvp_jacfwd_and_hessian():
    @custom_gradient
    def cube(x):
        return x**3

    @cube.backward
    def _(x, grad):
        return grad * 3 * x**2

    @cube.jvp
    def _(x, x_dot):
        return 3 * x**2 * x_dot

    x, v = _x(4, seed=17).detach(), _x(4, seed=18).detach()
    _, tangent = torch.func.jvp(cube, (x,), (v,))
    assert_matches_reference(tangent, 3 * x**2 * v, rtol=1e-15, what="jvp")
    assert_matches_reference(torch.func.jacfwd(cube)(x), torch.diag(3 * x**2), rtol=1e-15, what="jacfwd")
    hessian = torch.func.hessian(lambda t: cube(t).sum())(x)
    assert_matches_reference(hessian, torch.diag(6 * x), rtol=1e-15, what="hessian")


def test_jvp_rule_reading_the_output_gives_hessian_and_passes_the_battery():
    @custom_gradient
    def exp(x):
        return torch.exp(x)

    @exp.backward
    def _(output, grad):
        return grad * output

    @exp.jvp
    def _(output, x_dot):
        return output * x_dot  # d/dx e^x = e^x

    x = _x(4, seed=34).detach()
    assert_matches_reference(torch.func.jacfwd(exp)(x), torch.diag(torch.exp(x)), rtol=1e-15, what="jacfwd")
    hessian = torch.func.hessian(lambda t: exp(t).sum())(x)
    assert_matches_reference(hessian, torch.diag(torch.exp(x)), rtol=1e-15, what="hessian")
    report = check(exp, x, compile=False)
    assert report.ok and not [r for r in report.results if r.status in ("failed", "warning")], str(report)


def test_defjvps_one_rule_per_input_gives_jvp_and_jacfwd():
    @custom_gradient(nondiff_argnums=("n",))
    def scaled_power(a, x, n):
        return a * x**n

    @scaled_power.backward
    def _(a, x, n, grad):
        return grad * x**n, grad * a * n * x ** (n - 1)

    scaled_power.defjvps(
        lambda a_dot, output, a, x, n: a_dot * x**n,  # d/da (a x^n) = x^n
        lambda x_dot, output, a, x, n: x_dot * a * n * x ** (n - 1),  # d/dx (a x^n) = a n x^(n-1)
    )
    a, x = _x(3, seed=30).detach(), _x(3, seed=31).detach()
    va, vx = _x(3, seed=32).detach(), _x(3, seed=33).detach()
    _, tangent = torch.func.jvp(lambda s, t: scaled_power(s, t, 3), (a, x), (va, vx))
    _, want = torch.func.jvp(lambda s, t: s * t**3, (a, x), (va, vx))
    assert_matches_reference(tangent, want, rtol=1e-14, what="jvp")
    got = torch.func.jacfwd(lambda t: scaled_power(a, t, 3))(x)
    assert_matches_reference(got, torch.func.jacfwd(lambda t: a * t**3)(x), rtol=1e-14, what="jacfwd")


def test_jvp_rule_with_symbolic_zeros_gets_none_for_an_input_without_tangent():
    received = []

    @custom_gradient(symbolic_zeros=True)
    def product(x, y):
        return x * y

    @product.backward
    def _(x, y, grad):
        return grad * y, grad * x

    @product.jvp
    def _(x, y, x_dot, y_dot):
        received.append((x_dot is None, y_dot is None))
        return (0 if x_dot is None else x_dot * y) + (0 if y_dot is None else x * y_dot)

    x, y, v = _x(3, seed=27).detach(), _x(3, seed=28).detach(), _x(3, seed=29).detach()
    _, tangent = torch.func.jvp(lambda t: product(t, y), (x,), (v,))
    assert received == [(False, True)]
    assert_matches_reference(tangent, v * y, rtol=1e-15, what="jvp")


def test_custom_vmap_rule_batches_a_numpy_forward():
    from fixtures.decorated_functions import numpy_tanh

    batch = _x(3, 4, seed=19).detach()
    assert_matches_reference(torch.func.vmap(numpy_tanh)(batch), torch.tanh(batch), rtol=1e-15, what="vmap")


# -- check battery and torch.library -----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fn", "inputs", "options"), DECORATED, ids=[entry[0] for entry in DECORATED])
def test_decorated_corpus_raises_no_false_alarm(name, fn, inputs, options):
    report = check(fn, *inputs, compile=False, **options)
    alarms = [r for r in report.results if r.status in ("failed", "warning")]
    assert report.ok and not alarms, str(report)


@pytest.mark.slow
def test_check_method_runs_the_battery_with_compile():
    report = p2.check(_x(5, seed=20).detach(), checks=["first_order", "second_order", "torch_func", "compile"])
    assert report.ok and all(r.status == "passed" for r in report.results), str(report)


def test_check_flags_a_wrong_backward_and_compares_a_surrogate_against_it():
    @custom_gradient
    def wrong(x):
        return x**2 + 2 * x

    @wrong.backward
    def _(x, grad):
        return grad * (2 * x + 1)  # should be 2x + 2

    report = check(wrong, _x(5, seed=21).detach(), checks=["first_order"], compile=False)
    assert report.results[0].status == "failed", str(report)
    report = check(identity_with_square_grad, _x(5, seed=21).detach(), checks=["first_order"], compile=False)
    assert report.ok and "declared custom gradient" in report.results[0].message, str(report)


@pytest.mark.slow
def test_command_line_checks_a_decorated_function_by_reference():
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "customgrad", "check", "tests/fixtures/decorated_functions.py:mul_broadcast"]
        + ["--shapes", "3x4,4", "--no-compile"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(root / "src")),
        cwd=root,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mul_broadcast(x: float64[3, 4], y: float64[4])" in result.stdout
    assert "run in a worker process" in result.stdout and "FAILED" not in result.stdout


def test_as_custom_op_passes_opcheck_and_matches_eager():
    @custom_gradient
    def weighted_power(x, y, n: int):
        return x * y**n

    @weighted_power.backward
    def _(x, y, n, grad):
        return grad * y**n, grad * x * n * y ** (n - 1), None

    op = weighted_power.as_custom_op(f"customgrad_test::weighted_power_{next(_names)}")
    x, y = _x(3, 4, seed=22), _x(4, seed=23)
    torch.library.opcheck(op, (x, y, 2))
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    assert_matches_reference(op(x, y, 2), x2 * y2**2, rtol=1e-15, what="forward")
    for got, want in zip(_grads(op(x, y, 2), (x, y)), _grads(x2 * y2**2, (x2, y2)), strict=True):
        assert_matches_reference(got, want, rtol=1e-14, what="gradient")
    two = sin_cos.as_custom_op(f"customgrad_test::sin_cos_{next(_names)}", outputs=2)
    torch.library.opcheck(two, (x,))


# -- bad input: a clear error at the first call -------------------------------------------------------------
def _pair(forward, backward, **options):
    decorated = custom_gradient(forward, **options)
    decorated.backward(backward)
    return decorated


def _first_call(decorated, *inputs):
    output = decorated(*inputs)
    (output * torch.ones_like(output)).sum().backward()  # an upstream gradient of its own memory


def test_wrong_number_of_gradients_is_named():
    def mul(x, y):
        return x * y

    def bad(x, y, grad):
        return grad * y, grad * x, grad

    decorated = _pair(mul, bad)
    with pytest.raises(GradientError, match=r"backward .*bad of .*mul returned 3 gradient\(s\): return one per input"):
        _first_call(decorated, _x(3), _x(3, seed=1))


def test_unreducible_gradient_shape_is_named():
    def mul(x, y):
        return x * y

    def bad(x, y, grad):
        return grad * y, (grad * x)[:2]

    with pytest.raises(GradientError, match=r"shape \[2\] for 'y', whose shape is \[3\]: it cannot be summed"):
        _first_call(_pair(mul, bad), _x(3), _x(3, seed=1))


def test_gradient_for_a_nondiff_argument_is_named():
    def shift(x, offset):
        return x + offset

    def bad(grad):
        return grad, grad

    decorated = _pair(shift, bad, nondiff_argnums=(1,))
    with pytest.raises(GradientError, match=r"gradient for 'offset', which is declared in nondiff_argnums"):
        _first_call(decorated, _x(3), _x(3, seed=1))


@pytest.mark.parametrize(
    ("value", "expected"), [(lambda x: 3.0, "returned float 3.0"), (lambda x: [x * 2], "return a tuple of tensors")]
)
def test_forward_returning_a_non_tensor_is_named(value, expected):
    decorated = _pair(lambda x: value(x), lambda grad: grad)
    with pytest.raises(GradientError, match=f"forward .* {expected}"):
        decorated(_x(3))


@pytest.mark.parametrize("argument", ["x", "grad"])
def test_backward_mutating_its_inputs_is_named(argument):
    def square(x):
        return x * x

    def bad(x, grad):
        result = grad * 2 * x
        (x if argument == "x" else grad).mul_(0)
        return result

    with pytest.raises(GradientError, match=f"modified its argument '{argument}' in place"):
        _first_call(_pair(square, bad), _x(3))


def test_upstream_gradients_not_matching_the_outputs_are_named():
    def two(x):
        return x * 2, x * 3

    def bad(x, grad):
        return grad

    with pytest.raises(GradientError, match=r"takes 1 upstream gradients \(grad\), but it needs 2"):
        _first_call(lambda x: sum(_pair(two, bad)(x)), _x(3))


def test_definition_mistakes_are_usage_errors():
    with pytest.raises(UsageError, match="receives values by name, not a ctx"):
        custom_gradient(lambda x: x).backward(lambda ctx, grad: grad)
    with pytest.raises(UsageError, match="keyword-only parameter 'k'"):
        custom_gradient(lambda x, *, k: x)
    with pytest.raises(UsageError, match="nondiff_argnums of .*: 'z' is not one of its inputs"):
        custom_gradient(lambda x: x, nondiff_argnums=("z",))
    with pytest.raises(UsageError, match="has an input named 'output'.*rename the input"):
        custom_gradient(lambda x, output: x)
    with pytest.raises(UsageError, match="defjvps of .* got 2 rule"):
        _pair(lambda x: x * 2, lambda grad: grad * 2).defjvps(None, None)
    with pytest.raises(UsageError, match="has no backward yet"):
        custom_gradient(lambda x: x)(_x(2))
