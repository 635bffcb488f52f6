"""The battery's false alarms and own crashes found by adversarial testing (issue 13, items 15-18): NaN
outputs, scalar and empty inputs, large inputs, a forward that returns its input."""

from __future__ import annotations

import functools
import subprocess
import time
from pathlib import Path

import pytest
import torch

import customgrad
from customgrad.check import battery, layouts
from fixtures.planted_mistakes import MissingTerm
from fixtures.restricted_domains import RESTRICTED, Asin
from test_check_cli import run_cli as run_check_cli

FIXTURES = Path(__file__).parent / "fixtures"
check = functools.partial(customgrad.check, compile=False, isolation="thread")


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.mark.parametrize("formula", ["log(x)", "sqrt(x)"])
def test_nan_outputs_at_random_points_are_no_false_alarm(formula):
    report = check(customgrad.function(formula), _x(5))
    assert report.ok and not [r for r in report.results if r.status == "warning"], str(report)
    assert "moved to |x| + 0.5 where the forward is finite" in report["first_order"].message


def test_nan_equals_nan_in_determinism_and_vmap():
    # log of negative inputs is NaN at the example point itself: the same NaN twice is deterministic.
    report = customgrad.check(customgrad.function("log(x)"), -_x(5).abs(), checks=["determinism", "torch_func"])
    assert report["determinism"].status == "passed" and report["torch_func"].status == "passed", str(report)


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return run_check_cli(*arguments, timeout=300)


@pytest.mark.parametrize("shapes", ["(),()", "0,0"])
def test_scalar_and_empty_inputs_do_not_crash_the_checker(shapes):
    result = run_cli(f"{FIXTURES / 'correct_functions.py'}:MulBroadcast", "--shapes", shapes, "--no-compile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checker itself failed" not in result.stdout and "FAILED" not in result.stdout


def test_the_checkers_own_exception_is_not_blamed_on_the_function(monkeypatch):
    broken = functools.partial(layouts._is_elementwise, None)  # raises inside customgrad's own code
    patched = tuple(battery.Check(c.name, c.summary, broken) if c.name == "layouts" else c for c in battery.CHECKS)
    monkeypatch.setattr(battery, "CHECKS", patched)
    report = check(MissingTerm, _x(5), checks=["layouts"])
    result = report["layouts"]
    assert result.status == "skipped" and "the checker itself failed, not the Function" in result.message


def test_check_time_barely_depends_on_input_size():
    product = customgrad.function("x*y")
    start = time.perf_counter()
    report = check(product, _x(140, 140), _x(140, 140), timeout=30)
    assert report.ok, str(report)
    assert time.perf_counter() - start < 30


def test_large_inputs_still_catch_planted_mistakes():
    report = check(MissingTerm, _x(30, 30), checks=["first_order", "second_order"])
    assert report["first_order"].status == "failed" and "off by -2" in report["first_order"].message


class WrongAtOneElement(torch.autograd.Function):
    """x^2 whose gradient is wrong at one element only: found by the random directional probes."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad = grad_output * 2 * x
        if grad.numel() > 777:
            grad = grad.clone()
            grad.view(-1)[777] += 1.0
        return grad


def test_directional_probes_catch_an_error_at_one_element_of_a_large_input():
    report = check(WrongAtOneElement, _x(30, 30), checks=["first_order"])
    assert report["first_order"].status == "failed" and "random direction" in report["first_order"].message


class ReturnsInput(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class ReturnsInputOldStyle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


@pytest.mark.parametrize("function", [ReturnsInput, ReturnsInputOldStyle], ids=lambda f: f.__name__)
def test_forward_returning_its_input_is_not_a_leak(function):
    report = check(function, _x(5), checks=["hygiene"])
    assert report["hygiene"].status == "passed", str(report)


# -- issue 18, item 13: restricted domains -------------------------------------------------------
@pytest.mark.parametrize(("function", "example"), RESTRICTED, ids=[f.__name__ for f, _ in RESTRICTED])
def test_hand_written_functions_on_restricted_domains_raise_no_false_alarm(function, example):
    report = check(function, example)
    alarms = [r for r in report.results if r.status in ("failed", "warning")]
    assert report.ok and not alarms, str(report)


@pytest.mark.parametrize(
    ("formula", "examples"),
    [
        ("asin(x)", [torch.tensor([-0.5, 0.1, 0.3, 0.6, -0.2], dtype=torch.float64)]),
        ("log(x)", [torch.rand(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5]),
        ("acosh(x)", [torch.tensor([1.5, 2.0, 3.0, 1.2], dtype=torch.float64)]),
        # A domain that joins two inputs: the drawn points keep x > y.
        ("log(x - y)", [torch.tensor([2.0, 3.0, 1.5]).double(), torch.tensor([1.0, -1.0, 1.2]).double()]),
    ],
)
def test_generated_functions_on_restricted_domains_raise_no_false_alarm(formula, examples):
    report = check(customgrad.function(formula), *examples)
    alarms = [r for r in report.results if r.status == "failed" or (r.status == "warning" and r.name != "lint")]
    assert report.ok and not alarms, str(report)
    assert "between the example values" in report["first_order"].message or formula == "log(x)"


def test_restricted_domains_still_catch_a_wrong_backward():
    class WrongAsin(Asin):
        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return grad_output / torch.sqrt(1 - x * x) + 1e-3 * x

    report = check(WrongAsin, RESTRICTED[4][1], checks=["first_order", "layouts"])
    assert report["first_order"].status == "failed" and report["layouts"].status == "failed", str(report)


# -- issue 18, item 14: values a low-precision dtype cannot hold --------------------------------
class Scale1e5(torch.autograd.Function):
    """1e5 x: outputs and gradients beyond float16's largest value (65504) for |x| >= 1."""

    @staticmethod
    def forward(x):
        return x * 1e5

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * 1e5


@pytest.mark.parametrize("function", [customgrad.function("x*1e5"), Scale1e5], ids=["generated", "handwritten"])
def test_values_float16_cannot_hold_are_skipped_with_a_note(function):
    report = check(function, torch.tensor([1.0, 2.0], dtype=torch.float64), checks=["precision"])
    precision = report["precision"]
    assert precision.status == "passed", str(report)
    assert "float16: output 0 not compared" in precision.message and "65504" in precision.message
    assert "float16: gradient of 'x' not compared" in precision.message
    assert "bfloat16:" not in precision.message  # bfloat16 holds 2e5: compared as usual


def test_inputs_float16_cannot_hold_skip_the_dtype_with_a_note():
    # Random points are outside log's domain here, so the point is drawn between the examples: above 65504.
    examples = torch.tensor([1.5e5, 2e5, 1.7e5], dtype=torch.float64)
    report = check(customgrad.function("log(x - 1e5)"), examples, checks=["precision"])
    precision = report["precision"]
    assert precision.status == "passed", str(report)
    assert "float16 not compared: 'x' exceed" in precision.message


class HalfInside(torch.autograd.Function):
    """1e5 x, but computed from float16-rounded x for every dtype but float64: wrong in float32."""

    @staticmethod
    def forward(x):
        return x * 1e5 if x.dtype == torch.float64 else x.half().to(x.dtype) * 1e5

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * 1e5


def test_a_real_low_precision_error_in_range_is_still_reported():
    report = check(HalfInside, torch.tensor([1.1, 2.3], dtype=torch.float64), checks=["precision"])
    precision = report["precision"]
    assert precision.status == "failed" and "float32: output 0 is off by" in precision.message, str(report)
    assert "float16: output 0 not compared" in precision.message


@pytest.mark.parametrize("formula", ["1e3 + 1e-5*sin(x)", "erf(x) * 1e-6 + 1"])
def test_float64_results_that_cannot_show_a_1e_11_change_are_not_called_float32(formula):
    # A change of 1e-11 (relative) in x moves these by less than one float64 ulp: nothing to see.
    report = check(customgrad.function(formula), _x(5), checks=["precision"])
    assert report["precision"].status == "passed", str(report)


@pytest.mark.parametrize("name", ["Asin", "OutsideUnitInterval"])
def test_restricted_domains_through_the_cli_whose_random_examples_leave_the_domain(name):
    # The command line draws standard normal examples: partly outside these domains.
    result = run_cli(f"{FIXTURES / 'restricted_domains.py'}:{name}", "--no-compile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout and "warning" not in result.stdout, result.stdout


class OverflowsInside(torch.autograd.Function):
    """(x * 1e5) / 1e3 in the input's dtype: the result fits in float16, the intermediate does not."""

    @staticmethod
    def forward(x):
        return (x * 1e5) / 1e3

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * 100.0


def test_an_overflow_inside_the_function_is_reported_as_one():
    report = check(OverflowsInside, torch.tensor([1.0, 2.0], dtype=torch.float64), checks=["precision"])
    precision = report["precision"]
    assert precision.status == "failed", str(report)
    assert "float16: output 0 is off by inf" in precision.message
    assert "overflows to inf inside the Function although its value fits in float16" in precision.message
