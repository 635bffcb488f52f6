"""The check battery on hand-written Functions an outside tester brings: random forwards (dropout), forward
arguments with defaults, ... Each verdict is checked against what the Function really does."""

from __future__ import annotations

import functools
import inspect

import torch

import customgrad
from test_check_cli import run_cli

check = functools.partial(customgrad.check, compile=False, isolation="thread")


def _x(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64).to(dtype)


class Dropout(torch.autograd.Function):
    """Inverted dropout (p = 0.5): a random mask drawn in forward, saved, and applied in backward: right."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        mask = (torch.rand_like(x) > 0.5).to(x.dtype) * 2
        return x * mask, mask

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad, _):
        (mask,) = ctx.saved_tensors
        return grad * mask


class DropoutWithoutScale(torch.autograd.Function):
    """Dropout whose backward forgets the 1 / (1 - p) = 2 its forward applies: wrong by a factor 0.5."""

    @staticmethod
    def forward(ctx, x):
        mask = (torch.rand_like(x) > 0.5).to(x.dtype)
        ctx.save_for_backward(mask)
        return x * mask * 2

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask


def test_a_right_dropout_fails_no_check_and_its_randomness_is_named():
    for dtype in (torch.float64, torch.float32):
        report = check(Dropout, _x(5, dtype=dtype))
        assert report.ok, str(report)
        determinism = report["determinism"].message
        assert "draws random numbers (dropout, noise) from torch's generator" in determinism, str(report)
        assert report["torch_func"].status == "warning" and "randomness=" in report["torch_func"].message
        assert "not judged" in report["precision"].message  # float32 masks differ from float64 ones


def test_a_right_dropout_compiles():
    report = customgrad.check(Dropout, _x(5), checks=["compile"], isolation="thread")
    assert report["compile"].status == "passed", str(report)


def test_a_dropout_missing_its_scale_fails_first_order_as_scaled():
    report = check(DropoutWithoutScale, _x(5), checks=["first_order"])
    result = report["first_order"]
    assert result.status == "failed" and "scaled: got = 0.5 x expected" in result.message, str(report)


def test_check_leaves_the_callers_random_state_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    check(Dropout, _x(5), checks=["runs", "first_order", "determinism"])
    assert torch.equal(torch.get_rng_state(), state)


class ScaleWithDefault(torch.autograd.Function):
    """x * scale with scale defaulted: backward returns one gradient per parameter of forward (None for
    scale), which torch accepts also when scale is not passed (it drops extra Nones)."""

    @staticmethod
    def forward(ctx, x, scale=2.0):
        ctx.scale = scale
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class ExtraGradient(torch.autograd.Function):
    """x * 2 whose backward returns a second, non-None gradient for its one input: torch refuses it."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2, grad


def test_a_defaulted_argument_left_out_with_its_none_gradient_passes_arity_and_lint():
    x = _x(5)
    torch.autograd.gradcheck(ScaleWithDefault.apply, (x.clone().requires_grad_(),))  # torch: right
    report = check(ScaleWithDefault, x, checks=["arity", "first_order", "lint"])
    assert report.ok, str(report)


def test_an_extra_gradient_that_is_not_none_still_fails_arity():
    report = check(ExtraGradient, _x(5), checks=["arity", "lint"])
    assert report["arity"].status == "failed" and "2 gradient(s)" in report["arity"].message, str(report)


class ForwardWithoutCtx(torch.autograd.Function):
    """forward(x) in the setup_context style, but setup_context is missing: torch passes ctx anyway."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_a_forward_without_ctx_nor_setup_context_fails_runs_naming_the_fix():
    report = check(ForwardWithoutCtx, _x(5))  # was a UsageError: "takes () ... give one example per argument"
    result = report["runs"]
    assert result.status == "failed" and "add @staticmethod setup_context(ctx, inputs, output)" in result.message
    assert "forward(ctx, x)" in result.message and report.inputs == "x: float64[5]"


def test_the_cli_checks_a_forward_without_ctx_nor_setup_context(tmp_path):
    target = tmp_path / "no_ctx.py"
    target.write_text("import torch\n\n\n" + inspect.getsource(ForwardWithoutCtx))
    result = run_cli(f"{target}:ForwardWithoutCtx", "--no-compile", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr  # was 2: no tensor argument found
    assert "runs          FAILED" in result.stdout and "setup_context staticmethod" in result.stdout


class Float32Result(torch.autograd.Function):
    """x^2 whose forward casts its result to float32: float64 inputs get a float32 output."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).float()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_forward_returning_float32_for_float64_inputs_fails_precision():
    report = check(Float32Result, _x(5), checks=["precision"])
    result = report["precision"]
    assert result.status == "failed" and "output 0 is float32 for float64 inputs" in result.message, str(report)


class Sqrt(torch.autograd.Function):
    """sqrt(x), backward from the saved output: right, and its gradient at 0 is inf (as torch.sqrt's)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad / (2 * y)


class DividesByZero(torch.autograd.Function):
    """x^2 whose backward divides by (x - x): every gradient is inf."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x / (x - x)


def test_a_right_sqrt_with_zero_among_its_examples_passes_layouts():
    x = torch.tensor([0.0, 1.0, 4.0, 0.25], dtype=torch.float64)
    report = check(Sqrt, x, checks=["layouts"])  # was: "expected -inf, got -inf" for a non-contiguous x
    assert report.ok, str(report)


def test_an_infinite_gradient_is_named_as_such_and_not_called_nonlinear():
    report = check(DividesByZero, _x(5), checks=["first_order", "linearity"])
    first_order = report["first_order"].message
    assert report["first_order"].status == "failed" and "inf or NaN where the expected one is finite" in first_order
    assert "scaled" not in first_order, first_order  # was "scaled: got = inf x expected"
    assert report["linearity"].status == "passed", str(report)  # was "not linear ... expected nan, got -inf"


def _usage_error(*arguments, **options) -> str:
    try:
        check(Sqrt, *arguments, **options)
    except customgrad.errors.UsageError as error:
        return str(error)
    raise AssertionError("no UsageError")


def test_meta_inputs_are_refused_naming_the_device():
    x = torch.empty(5, dtype=torch.float64, device="meta")  # was: 'the checker itself failed' in 9 checks
    assert "on the 'meta' device" in _usage_error(x)


def test_inputs_packed_in_a_tuple_as_gradcheck_takes_them_are_refused_with_the_fix():
    message = _usage_error((_x(5).abs(),))  # was: "needs at least one floating-point tensor ... got x=(tensor(["
    assert "as torch.autograd.gradcheck takes them: pass them one by one" in message


def test_an_infinite_timeout_is_refused():
    # was accepted, then the worker could not start (OverflowError) and the Function ran in this process
    assert "at most 1e+09, got inf" in _usage_error(_x(5).abs(), timeout=float("inf"))


class TwoOutputsOneGradient(torch.autograd.Function):
    """(2x, x^2) whose backward forgets the second output's grad_output."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2, x * x

    @staticmethod
    def backward(ctx, grad_double, grad_square):
        return 2 * grad_double


def test_a_backward_dropping_an_outputs_gradient_is_named():
    report = check(TwoOutputsOneGradient, _x(5), checks=["first_order"])
    result = report["first_order"]
    assert result.status == "failed" and "only output 0's grad_output reaches the gradient" in result.message


class InPlaceOnGradOutput(torch.autograd.Function):
    """x^2 whose backward multiplies grad_output in place and returns it: the right values, but it writes
    into a tensor autograd owns (and cannot, when grad_output is expanded)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad.mul_(2 * x)
        return grad


def test_a_backward_writing_into_grad_output_is_named_not_called_a_wrong_gradient():
    report = check(InPlaceOnGradOutput, _x(5), checks=["first_order", "linearity", "second_order", "hygiene"])
    # was: first_order 'differs from finite differences' and linearity 'not linear' (the checker's own
    # grad_output had been overwritten), and no check named the in-place write
    assert report["first_order"].status == "passed" and report["linearity"].status == "passed", str(report)
    assert report["hygiene"].status == "failed" and "writes into grad_output in place" in report["hygiene"].message
    assert "writes into grad_output in place" in report["second_order"].message


class GatherWithIndexGradient(torch.autograd.Function):
    """x[index] whose backward also returns zeros for the integer index: torch drops that gradient."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.size = x.shape[0]
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return torch.zeros(ctx.size, dtype=grad.dtype).index_add_(0, index, grad), torch.zeros_like(index)


class ForgetsTheScale(torch.autograd.Function):
    """x * s with a floating s, whose backward returns None for s although s needs a gradient."""

    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(s)
        return x * s

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        return grad * s, None


def test_a_zero_gradient_for_an_integer_input_is_a_warning_not_a_failure():
    x, index = _x(5), torch.tensor([0, 2, 2, 4])
    torch.autograd.gradcheck(GatherWithIndexGradient.apply, (x.clone().requires_grad_(), index))  # torch: right
    report = check(GatherWithIndexGradient, x, index, checks=["arity", "first_order"])
    assert report.ok and report["arity"].status == "warning", str(report)  # was FAILED
    assert "ignored by the engine: return None" in report["arity"].message


def test_a_none_gradient_for_an_input_needing_one_says_so_without_a_zeros_hint():
    report = check(ForgetsTheScale, _x(5), _x(5), checks=["first_order"])
    message = report["first_order"].message
    assert "backward returned None for it, although it needs a gradient" in message, message
    assert "all zeros" not in message  # was: "Hint: the gradient is all zeros: is the returned value detached"
    assert "declare custom_gradient={'s': 0}" in message


def _scale_by(factor: float) -> type:
    """A Function class made by a factory: its methods read ``factor`` from the enclosing function."""

    class ScaleBy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * factor

        @staticmethod
        def backward(ctx, grad):
            return grad * factor

    return ScaleBy


def test_lint_knows_the_names_a_factory_made_class_reads_from_its_enclosing_function():
    report = check(_scale_by(3.0), _x(5), checks=["lint"])
    assert report["lint"].status == "passed", str(report)  # was: undefined name 'factor' in forward, backward


class SquareWithJvp(torch.autograd.Function):
    """x^2 with a right backward and a forward-mode jvp that forgets the 2."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return x * tangent


class SquareWithRightJvp(SquareWithJvp):
    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 2 * x * tangent


def test_a_wrong_jvp_fails_torch_func_and_a_right_one_passes():
    wrong = check(SquareWithJvp, _x(5), checks=["torch_func"])["torch_func"]
    assert wrong.status == "failed" and "torch.func.jvp (forward mode) is wrong" in wrong.message
    right = check(SquareWithRightJvp, _x(5), checks=["torch_func"])["torch_func"]
    assert right.status == "passed" and "jvp" in right.message, right.message


def test_forward_mode_of_generated_functions_is_checked_and_right():
    for formula in ("x**2 + 2*x", "exp(x)*sin(y)", "atan2(y, x)"):
        function = customgrad.function(formula)
        result = check(function, *[_x(5)] * len(function.input_names), checks=["torch_func"])["torch_func"]
        assert result.status == "passed" and "jvp" in result.message, result.message


def test_first_order_judges_acosh_even_when_every_example_lies_outside_its_domain():
    # As the command line's random examples may: all below 1, where acosh is NaN.
    x = torch.tensor([-1.3986, 0.4033, 0.8380, -0.7193, -0.4033], dtype=torch.float64)
    result = check(customgrad.function("acosh(x)"), x, checks=["first_order"])["first_order"]
    assert result.status == "passed" and "moved to |x| + 1.5" in result.message, result.message  # was skipped


class AddsOneToACopy(torch.autograd.Function):
    """x + 1 computed in place on a copy of x (x = x.clone(); x += 1): the caller's x is untouched."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        x += 1
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_lint_does_not_warn_of_in_place_work_on_a_copy_of_the_input():
    report = check(AddsOneToACopy, _x(5), checks=["lint", "hygiene"])
    assert report["lint"].status == "passed", str(report)  # was: "forward modifies its input in place (x += ...)"
    assert report["hygiene"].status == "passed", str(report)


def test_the_cli_names_a_target_that_is_neither_a_function_nor_callable(tmp_path):
    target = tmp_path / "constants.py"
    target.write_text("LIMIT = 3\n")
    result = run_cli(f"{target}:LIMIT", timeout=300)
    assert result.returncode == 2 and "target is 3 (of type int)" in result.stderr, result.stderr  # was "a int"


class NoiseFromGivenGenerator(torch.autograd.Function):
    """x (1 + 0.1 n) with the noise n drawn from a generator passed to forward; backward from the output."""

    @staticmethod
    def forward(x, generator):
        return x * (1 + 0.1 * torch.randn(x.shape, generator=generator, dtype=x.dtype))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, grad):
        x, output = ctx.saved_tensors
        return grad * output / x, None


def test_a_forward_drawing_from_a_given_generator_is_checked_at_its_state_as_given():
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    checks = ["first_order", "linearity", "layouts", "determinism"]
    report = check(NoiseFromGivenGenerator, _x(5), generator, checks=checks)
    # was: layouts, precision and torch_func FAILED ('differs from the contiguous result', ...)
    assert report.ok, str(report)
    assert "draws random numbers" in report["determinism"].message
    assert torch.equal(generator.get_state(), state)  # the caller's generator is left as it was


class CtxBesideSetupContext(torch.autograd.Function):
    """x * y whose forward still takes ctx although setup_context is defined: torch passes none."""

    @staticmethod
    def forward(ctx, x, y):
        return x * y

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y, grad * x


def test_a_forward_taking_ctx_beside_setup_context_fails_runs_naming_the_fix():
    report = check(CtxBesideSetupContext, _x(5), _x(5))  # was a UsageError: "takes (ctx, x, y) ... missing 'y'"
    runs = report["runs"].message
    assert report["runs"].status == "failed" and "write forward(x, y) and save what backward needs" in runs
    assert "inspect.py" not in runs  # the error's location is not Python's inspect module
    assert report["lint"].status == "passed", str(report)  # its backward returns one gradient per input


def test_the_cli_checks_a_forward_taking_ctx_beside_setup_context(tmp_path):
    target = tmp_path / "extra_ctx.py"
    target.write_text("import torch\n\n\n" + inspect.getsource(CtxBesideSetupContext))
    result = run_cli(f"{target}:CtxBesideSetupContext", "--no-compile", timeout=300)
    # was: three example tensors (ctx counted), then 'backward raised ValueError: too many values to unpack'
    assert result.returncode == 1 and "CtxBesideSetupContext(x: float64[5], y: float64[5])" in result.stdout
    assert "beside a setup_context staticmethod torch calls it without one" in " ".join(result.stdout.split())


class SquareByVjp(torch.autograd.Function):
    """x^2 with its backward named vjp (torch's alias): autograd uses it, torch.func does not."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def vjp(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_a_backward_named_vjp_is_inspected_and_torch_funcs_refusal_explained():
    report = check(SquareByVjp, _x(5), checks=["arity", "first_order", "torch_func"])
    assert report["arity"].status == "passed", str(report)  # was skipped: 'backward raises NotImplementedError'
    assert report["first_order"].status == "passed"
    assert "rename vjp to backward" in report["torch_func"].message


class MulAveragingTheBroadcast(torch.autograd.Function):
    """x (3, 4) * y (4,) whose backward reduces y's broadcast gradient with mean instead of sum."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y, (grad * x).mean(0)


def test_a_broadcast_gradient_averaged_instead_of_summed_is_named():
    report = check(MulAveragingTheBroadcast, _x(3, 4), _x(4), checks=["first_order"])
    message = report["first_order"].message  # was: "scaled: got = 0.333333 x expected"
    assert "averaged over the broadcast dimension(s): got = expected / 3" in message, message


# A custom_gradient's nondiff_argnums are not differentiated: the battery compared their (None) gradient with
# finite differences and FAILED a right backward.


@customgrad.custom_gradient(nondiff_argnums=("k",))
def _scaled(x, k):
    return x * k


@_scaled.backward
def _(x, k, grad):
    return grad * k


@customgrad.custom_gradient(nondiff_argnums=("k",))
def _scaled_wrong(x, k):
    return x * k


@_scaled_wrong.backward
def _(x, k, grad):
    return grad * 2 * k


def test_nondiff_argnums_are_not_differentiated_by_the_battery():
    x, k = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    right = customgrad.check(_scaled, x, k, compile=False)
    assert right.ok, right
    wrong = customgrad.check(_scaled_wrong, x, k, compile=False)
    assert wrong["first_order"].status == "failed", wrong
