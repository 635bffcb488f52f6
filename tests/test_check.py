"""The check battery: no false alarm on correct Functions, each planted mistake caught by its check,
report and API behaviour."""

from __future__ import annotations

import functools
import json

import pytest
import torch

import customgrad
from customgrad import CheckReport, UsageError
from customgrad.check import CHECK_NAMES
from customgrad.library import P2, IdentityWithSquareGrad
from fixtures.correct_functions import CORRECT, BlogSurrogate, Square
from fixtures.planted_mistakes import PLANTED, MissingTerm
from reference import assert_matches_reference

#: The battery in this process (fast); tests/test_check_isolation.py runs the corpus in worker processes too.
check = functools.partial(customgrad.check, isolation="thread")


@pytest.mark.parametrize(
    ("name", "fn", "inputs", "options", "expected_warnings"), CORRECT, ids=[entry[0] for entry in CORRECT]
)
def test_correct_functions_raise_no_false_alarm(name, fn, inputs, options, expected_warnings):
    report = check(fn, *inputs, compile=False, **options)
    alarms = [
        r for r in report.results if r.status == "failed" or (r.status == "warning" and r.name not in expected_warnings)
    ]
    assert report.ok and not alarms, str(report)


@pytest.mark.parametrize(
    "function", [f for f, (_, name, _) in PLANTED.items() if name != "compile"], ids=lambda f: f.__name__
)
def test_planted_mistake_is_caught_by_its_check(function):
    inputs, name, status = PLANTED[function]
    report = check(function, *inputs, compile=False)
    assert report[name].status == status, str(report)


@pytest.mark.slow
def test_planted_compile_mistake_is_caught():
    function = next(f for f, (_, name, _) in PLANTED.items() if name == "compile")
    inputs, name, status = PLANTED[function]
    report = check(function, *inputs, checks=["compile"])
    assert report[name].status == status
    assert "one graph" in report[name].message


@pytest.mark.slow
def test_compile_check_passes_for_a_correct_function():
    report = check(Square, torch.randn(3, 4, dtype=torch.float64), checks=["compile"])
    assert report["compile"].status == "passed", str(report)
    generated = check(P2, torch.randn(5, dtype=torch.float64), checks=["compile"])
    assert generated["compile"].status == "passed", str(generated)


def test_every_check_is_planted_in_the_corpus():
    assert {name for _, name, _ in PLANTED.values()} == set(CHECK_NAMES)


def test_missing_term_hint_names_the_constant():
    report = check(MissingTerm, torch.randn(5, dtype=torch.float64), checks=["first_order"])
    message = report["first_order"].message
    assert "off by -2" in message and "'x'" in message and "expected" in message


def test_scaled_and_swapped_and_ignored_upstream_hints():
    class Scaled(Square):
        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return grad_output * 4 * x

    class Swapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return x * y

        @staticmethod
        def backward(ctx, grad_output):
            x, y = ctx.saved_tensors
            return grad_output * x, grad_output * y

    class IgnoresUpstream(Square):
        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return 2 * x

    x, y = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert "scaled: got = 2 x expected" in check(Scaled, x, checks=["first_order"])["first_order"].message
    assert "inputs swapped" in check(Swapped, x, y, checks=["first_order"])["first_order"].message
    assert "ignores grad_output" in check(IgnoresUpstream, x, checks=["first_order"])["first_order"].message


def test_custom_gradient_is_compared_instead_of_finite_differences():
    x = torch.randn(5, dtype=torch.float64)
    undeclared = check(BlogSurrogate, x, compile=False)
    declared = check(BlogSurrogate, x, compile=False, custom_gradient={"input": "2*input"})
    assert undeclared["first_order"].status == "failed"
    assert "custom_gradient=" in undeclared["first_order"].message
    assert declared.ok and declared["first_order"].status == "passed"
    assert "2*input" in declared["first_order"].message

    # A wrong declaration is reported: the backward is 2x, not 3x.
    wrong = check(BlogSurrogate, x, checks=["first_order"], custom_gradient={"input": "3*input"})
    assert wrong["first_order"].status == "failed" and "declared custom gradient" in wrong["first_order"].message


def test_custom_gradient_as_vjp_callable():
    def vjp(inputs, grad_outputs):
        return (2 * inputs[0] * grad_outputs[0],)

    report = check(
        BlogSurrogate,
        torch.randn(4, dtype=torch.float64),
        checks=["first_order"],
        custom_gradient=vjp,
    )
    assert report.ok


def test_custom_gradient_with_unknown_input_name_is_a_usage_error():
    with pytest.raises(UsageError, match="'x'.*inputs are input"):
        check(BlogSurrogate, torch.randn(3), custom_gradient={"x": "2*x"})


@pytest.mark.parametrize(
    ("formula", "options"),
    [
        ("x**2 + 2*x", {}),
        ("sin(x) * y + exp(-x**2)", {}),
        ("x", {"grads": {"x": "2*x"}}),
        ("x * y", {"inputs": ["x", "y"], "grads": {"y": "0"}}),
    ],
)
def test_functions_generated_by_customgrad_function_pass(formula, options):
    generated = customgrad.function(formula, **options)
    generator = torch.Generator().manual_seed(5)
    inputs = [torch.randn(4, generator=generator, dtype=torch.float64) for _ in generated.input_names]
    report = check(generated, *inputs, compile=False)
    assert report.ok and not [r for r in report.results if r.status == "warning"], str(report)


def test_declared_gradient_of_a_generated_function_is_used():
    assert IdentityWithSquareGrad.declared_grads
    report = check(IdentityWithSquareGrad, torch.randn(5, dtype=torch.float64), checks=["first_order"])
    assert report.ok and "declared custom gradient" in report["first_order"].message


def test_unknown_check_name_is_a_usage_error():
    with pytest.raises(UsageError, match="first-order"):
        check(P2, torch.randn(3), checks=["first-order"])


def test_a_hanging_check_times_out_and_the_others_still_run(monkeypatch):
    import time

    from customgrad.check import battery

    def hang(subject):
        time.sleep(5)

    patched = tuple(
        battery.Check(c.name, c.summary, hang, time_limit=0.2) if c.name == "determinism" else c for c in battery.CHECKS
    )
    monkeypatch.setattr(battery, "CHECKS", patched)
    report = check(P2, torch.randn(3, dtype=torch.float64), compile=False)
    assert report["determinism"].status == "failed" and "did not return within 0.2 s" in report["determinism"].message
    assert report["first_order"].status == "passed"


def test_report_table_and_json():
    report = check(P2, torch.randn(3, dtype=torch.float64), compile=False)
    assert isinstance(report, CheckReport) and report.ok
    text = str(report)
    assert "first_order" in text and "OK:" in text.splitlines()[-1]
    data = json.loads(report.to_json())
    assert data["ok"] is True and len(data["results"]) == len(CHECK_NAMES)
    assert {r["status"] for r in data["results"]} <= {"passed", "failed", "warning", "skipped"}


def test_check_is_exported_from_the_package():
    assert customgrad.check is check.func and customgrad.CheckReport is CheckReport


def test_battery_gradients_agree_with_eager_autograd_reference():
    # The battery's finite differences are the reference it trusts: compare them once with eager autograd.
    from customgrad.check.finite_differences import numerical_vjp

    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, dtype=torch.float64)
    (expected,) = torch.autograd.grad(torch.sin(x) * x, x, upstream)
    (numeric,) = numerical_vjp(lambda t: [torch.sin(t) * t], [x.detach()], [upstream])
    assert_matches_reference(numeric, expected, rtol=1e-8, atol=1e-9, what="finite differences")


@pytest.mark.gpu
def test_battery_runs_on_cuda_inputs():
    x = torch.randn(5, dtype=torch.float64, device="cuda")
    report = check(P2, x, compile=False)
    assert report.ok, str(report)
    planted = check(MissingTerm, x, compile=False)
    assert not planted.ok
    assert any(r.name == "first_order" and r.status == "failed" for r in planted.results), str(planted)


class CancellingHandwritten(torch.autograd.Function):
    """f(x) = 1000 (exp(x) - exp(x - 0.001)): correct, but cancellation loses most digits in float16."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 1000 * (torch.exp(x) - torch.exp(x - 0.001))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * 1000 * (torch.exp(x) - torch.exp(x - 0.001))


def test_precision_tolerance_comes_from_the_same_dtype_eager_formula():
    # fixed points (an unseeded draw made the float16 error below, at some draws, smaller than 64 eps)
    x = torch.tensor([-1.3, -0.4, 0.2, 0.7, 1.1], dtype=torch.float64)
    # Without a same-dtype reference the fixed tolerance (64 eps) flags float16's cancellation ...
    handwritten = check(CancellingHandwritten, x, checks=["precision"], compile=False)
    precision = next(r for r in handwritten.results if r.name == "precision")
    assert precision.status == "failed" and "float16" in precision.message, precision.message
    # ... while a generated Function is held to what the same formula in eager torch ops achieves.
    generated = customgrad.function("1000*(exp(x) - exp(x - 0.001))", name="Cancelling")
    eager = generated.eager(x.to(torch.float16)).double()
    exact = 1000 * (torch.exp(x) - torch.exp(x - 0.001))
    assert float((eager - exact).abs().max()) > 64 * torch.finfo(torch.float16).eps * float(exact.abs().max())
    report = check(generated, x, checks=["precision"], compile=False)
    assert next(r for r in report.results if r.name == "precision").status == "passed", str(report)


class CancellingWithOverflowingTwin(CancellingHandwritten):
    """The cancelling Function, with a same-dtype twin that overflows to inf in float16."""

    @staticmethod
    def eager(x):
        return (x * 60000) * (x * 60000) + 1000 * (torch.exp(x) - torch.exp(x - 0.001))


def test_an_overflowing_eager_twin_gives_no_infinite_tolerance():
    x = torch.randn(5, dtype=torch.float64)
    twin = CancellingWithOverflowingTwin.eager(x.to(torch.float16))
    assert not bool(torch.isfinite(twin).all())
    report = check(CancellingWithOverflowingTwin, x, checks=["precision"], compile=False)
    precision = next(r for r in report.results if r.name == "precision")
    # The fixed 64-eps tolerance still applies, so float16's cancellation is reported.
    assert precision.status == "failed" and "float16" in precision.message, precision.message


def test_precision_of_a_generated_function_with_an_unused_input():
    generated = customgrad.function("x*y", inputs=["x", "u", "y"])
    values = [torch.randn(4, dtype=torch.float64) for _ in range(3)]
    report = check(generated, *values, checks=["precision"], compile=False)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    ("fn", "inputs", "options", "message"),
    [
        (dict, 1, {}, r"got the class dict, which is not one"),
        (torch.autograd.Function, 1, {}, r"got the class Function, which is not one"),
        (Square, 0, {}, r"check\(Square, ...\) got 0 example inputs, but Square takes \(x\)"),
        (Square, 2, {}, r"got 2 example inputs, but Square takes \(x\) \(too many positional arguments\)"),
        (customgrad.function("x*y"), 1, {}, r"got 1 example input, but Formula\d+ takes \(x, y\): give one"),
        (Square, 1, {"checks": []}, r"checks is empty"),
        (Square, 1, {"compile": "nonsense"}, r"compile='nonsense' is not a torch.compile backend: choose one of"),
        (Square, 1, {"compile": 3}, r"compile must be True, False or a backend name"),
        (Square, 1, {"custom_gradient": {"x": True}}, r"custom_gradient\['x'\] must be a formula text"),
        (Square, 1, {"custom_gradient": {"x": float("nan")}}, r"custom_gradient\['x'\] is nan"),
        (Square, 1, {"custom_gradient": lambda a: a}, r"must take two arguments, vjp\(inputs, grad_outputs\)"),
    ],
)
def test_misuse_of_check_is_a_usage_error(fn, inputs, options, message):
    with pytest.raises(UsageError, match=message):
        check(fn, *[torch.randn(4, dtype=torch.float64) for _ in range(inputs)], **options)


GRADIENT_CHECKS = ("arity", "first_order", "linearity", "second_order", "precision")


@pytest.mark.slow
def test_blog_p2_with_a_broken_backward_still_checks_its_forward():
    from fixtures.blog_p2 import P2 as BlogP2

    report = check(BlogP2, torch.randn(5, dtype=torch.float64))
    statuses = {r.name: r.status for r in report.results}
    assert statuses == {
        "runs": "failed",
        "lint": "failed",
        **dict.fromkeys(GRADIENT_CHECKS, "skipped"),
        **dict.fromkeys(("hygiene", "determinism", "layouts", "compile"), "passed"),
        "torch_func": "warning",
    }, str(report)
    for name in ("hygiene", "determinism", "layouts", "compile", "torch_func"):
        assert report[name].message.startswith("forward only: backward does not run (see 'runs')"), str(report)
        assert report[name].details["forward_only"] is True
    assert "setup_context" in report["torch_func"].message


class ModifiesInputBrokenBackward(torch.autograd.Function):
    """Doubles x in place without mark_dirty, and backward raises."""

    @staticmethod
    def forward(ctx, x):
        x.mul_(2)
        return x * 1

    @staticmethod
    def backward(ctx, grad_output):
        raise RuntimeError("backward not written yet")


def test_forward_modifying_its_input_fails_hygiene_even_when_backward_raises():
    report = check(ModifiesInputBrokenBackward, torch.randn(4, dtype=torch.float64), compile=False)
    assert report["runs"].status == "failed" and report["runs"].details["stage"] == "backward"
    assert report["hygiene"].status == "failed", str(report)
    assert "without ctx.mark_dirty(x)" in report["hygiene"].message
    assert report["hygiene"].message.startswith("forward only:")
    assert all(report[name].status == "skipped" for name in GRADIENT_CHECKS), str(report)


class ForwardRaises(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        raise ValueError("forward not written yet")

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


def test_a_raising_forward_skips_every_runtime_check():
    report = check(ForwardRaises, torch.randn(4, dtype=torch.float64), compile=False)
    assert report["runs"].status == "failed" and report["runs"].details["stage"] == "forward"
    others = [r for r in report.results if r.name not in ("runs", "lint")]
    assert all(r.status == "skipped" for r in others), str(report)
    assert all("forward does not run" in r.message for r in others if r.name != "arity"), str(report)


def test_arity_says_which_pass_raised():
    class ForwardRaises(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            raise ValueError("no forward today")

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output

    report = check(ForwardRaises, torch.randn(3, dtype=torch.float64), compile=False)
    assert report["arity"].status == "skipped" and report["arity"].message.startswith("forward raises")
