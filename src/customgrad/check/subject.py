"""The thing under check: a custom autograd Function (or a callable built from them) with example inputs.

`Subject` knows how to call it, which inputs are differentiable, which outputs carry gradients, the
names of its inputs, and the gradient it is meant to have (the true derivative, or a declared custom
gradient). Every check receives one `Subject` and one `Evaluation` helper, `evaluate`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CheckError, UsageError
from .declared import VectorJacobianProduct, resolve_declared_gradient
from .parts import PHASE, short_path

_TORCH_DIR = os.path.dirname(torch.__file__)
_CHECK_DIR = os.path.dirname(__file__)
_STDLIB_DIR = os.path.dirname(os.path.abspath(inspect.__file__))  # its frames (inspect's) are not the user's

#: The seed of torch's random number generators at the start of every call of the Function in the checks
#: (determinism's own runs excepted): a forward that draws random numbers (dropout, noise) draws the same
#: ones at each call, so that the checks compare like with like. The caller's generator state is restored.
#: 34: its first uniform draws alternate above and below 0.5 and its first normal ones alternate in sign, so
#: that a dropout mask on a few elements keeps some and drops some (1234 dropped all of the first five).
CALL_SEED = 34


def is_function_class(value: Any) -> bool:
    """Whether ``value`` is a subclass of `torch.autograd.Function` (not the base itself)."""
    return (
        isinstance(value, type) and issubclass(value, torch.autograd.Function) and value is not torch.autograd.Function
    )


def has_setup_context(function_class: type) -> bool:
    """Whether the Function uses the ``forward(...)`` + ``setup_context(ctx, inputs, output)`` style."""
    return function_class.setup_context is not torch.autograd.Function.setup_context


def _find_function_class(fn: Callable) -> type | None:
    """The autograd.Function behind ``fn``: the class itself, ``Class.apply``, a `customgrad.custom_gradient`
    function's ``autograd_function``, or one a lambda calls."""
    if is_function_class(fn):
        return fn
    generated = getattr(fn, "autograd_function", None)
    if is_function_class(generated):
        return generated
    owner = getattr(fn, "__self__", None)
    if is_function_class(owner):
        return owner
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    namespace = dict(getattr(fn, "__globals__", {}))
    for cell_name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
        try:
            namespace[cell_name] = cell.cell_contents
        except ValueError:
            continue
    for name in code.co_names + code.co_freevars:
        candidate = namespace.get(name)
        if is_function_class(candidate):
            return candidate
    return None


def _parameter_names(fn: Callable, function_class: type | None) -> tuple[str, ...]:
    declared = getattr(function_class, "input_names", None)
    if declared:
        return tuple(declared)
    direct = function_class is not None and (fn is function_class or getattr(fn, "__self__", None) is function_class)
    target = function_class.forward if direct else fn
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return ()
    if direct and not has_setup_context(function_class) and parameters:
        parameters = parameters[1:]  # ctx
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def is_once_differentiable(function_class: type | None) -> bool:
    """Whether backward is decorated with ``torch.autograd.function.once_differentiable``."""
    backward = getattr(function_class, "backward", None)
    code = getattr(backward, "__code__", None)
    return (
        getattr(backward, "__wrapped__", None) is not None
        and code is not None
        and code.co_filename.replace(os.sep, "/").endswith("torch/autograd/function.py")
    )


def user_location(error: BaseException) -> str | None:
    """``file:line: source`` of the innermost traceback frame in the user's code (not torch's, not ours)."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        standard = path.startswith(_STDLIB_DIR + os.sep) and "site-packages" not in path
        if path.startswith((_TORCH_DIR, _CHECK_DIR)) or standard or frame.filename.startswith("<"):
            continue
        where = f"{short_path(frame.filename)}:{frame.lineno}"
        return f"{where}: {frame.line.strip()}" if frame.line else where
    return None


def describe_error(error: BaseException) -> str:
    """``Type: message`` plus the user's file and line when the traceback reaches user code."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    location = user_location(error)
    return f"{text} (at {location})" if location else text


def flatten_outputs(outputs: Any) -> tuple[Any, ...]:
    """A Function's outputs as a tuple, whether it returned one value or several."""
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def is_float_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


@dataclass
class Evaluation:
    """One forward and backward pass: inputs, outputs, upstream gradients and the resulting gradients."""

    inputs: list[Any]
    leaves: dict[int, torch.Tensor]
    outputs: tuple[Any, ...]
    output_positions: list[int]
    upstream: list[torch.Tensor]
    gradients: dict[int, torch.Tensor | None]
    #: Whether backward wrote into a grad_output in place (``upstream`` then holds the values passed).
    upstream_modified: bool = False


@dataclass
class Subject:
    """A Function (or callable built from Functions) and the example inputs it is checked at.

    Parameters
    ----------
    fn : autograd.Function subclass or callable
        What is checked. A Function class is called through ``fn.apply``.
    example_inputs : sequence
        Positional arguments: tensors (floating ones are differentiated) and non-tensor values.
    custom_gradient : dict or callable or None
        The intended gradient when the backward is deliberately not the true derivative; see
        `customgrad.check`.
    """

    fn: Callable
    example_inputs: tuple[Any, ...]
    custom_gradient: Any = None
    function_class: type | None = field(init=False)
    apply: Callable = field(init=False)
    parameter_names: tuple[str, ...] = field(init=False)
    clone_inputs: bool = field(init=False, default=False)
    declared_vjp: VectorJacobianProduct | None = field(init=False, default=None)
    declared_text: dict[str, str] = field(init=False, default_factory=dict)
    compile_backend: str | None = field(init=False, default=None)
    all_parameter_names: tuple[str, ...] = field(init=False, default=())
    #: The backward raises: `evaluate` runs the forward alone and every gradient is None.
    forward_only: bool = field(init=False, default=False)
    #: Whether each call starts from torch's generators seeded with `CALL_SEED` (`random_state`).
    reseed: bool = field(init=False, default=True)
    #: "missing": forward takes no ctx (``forward(x)``) but there is no setup_context (torch passes ctx
    #: anyway); "extra": forward takes ctx beside a setup_context (torch passes none); "" otherwise.
    ctx_mistake: str = field(init=False, default="")
    #: id -> initial state of each ``torch.Generator`` among the example inputs (`random_state` restores it).
    given_generators: dict[int, torch.Tensor] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise UsageError(f"check() needs an autograd.Function subclass or a callable, got {type(self.fn).__name__}")
        if isinstance(self.fn, type) and not is_function_class(self.fn):
            raise UsageError(
                f"check() needs a subclass of torch.autograd.Function (or a callable using one), got the class "
                f"{self.fn.__qualname__}, which is not one: define forward and backward on a Function subclass"
            )
        self.function_class = _find_function_class(self.fn)
        self.given_generators = {
            id(value): value.get_state() for value in self.example_inputs if isinstance(value, torch.Generator)
        }
        self.apply = self.fn.apply if is_function_class(self.fn) else self.fn
        names = _parameter_names(self.fn, self.function_class)
        self.all_parameter_names = names
        self.parameter_names = tuple(names[: len(self.example_inputs)]) + tuple(
            f"input{i}" for i in range(len(names), len(self.example_inputs))
        )
        self._check_example_kinds()
        self._check_example_count()
        if not self.differentiable_positions:
            complex_ = any(isinstance(v, torch.Tensor) and v.is_complex() for v in self.example_inputs)
            raise UsageError(
                f"check({self.name}, ...) needs at least one floating-point tensor among the example "
                f"inputs to differentiate; got {self.describe_inputs()}"
                + ("; complex inputs are not checked (the battery compares real gradients)" if complex_ else "")
            )
        self.declared_vjp, self.declared_text = resolve_declared_gradient(self)

    def _check_example_kinds(self) -> None:
        """Example inputs with values (not on the 'meta' device), given one by one (not as one tuple): a
        `UsageError` otherwise."""
        meta = [i for i, v in enumerate(self.example_inputs) if isinstance(v, torch.Tensor) and v.is_meta]
        if meta:
            raise UsageError(
                f"check({self.name}, ...): example input {meta[0]} is on the 'meta' device, which has shapes but no "
                "values to differentiate or compare: give example tensors on the CPU or a GPU"
            )
        if len(self.example_inputs) == 1 and isinstance(self.example_inputs[0], (tuple, list)):
            packed = self.example_inputs[0]
            if packed and all(isinstance(v, torch.Tensor) for v in packed):
                raise UsageError(
                    f"check({self.name}, ...) got its example inputs as one {type(packed).__name__} of "
                    f"{len(packed)} tensor(s), as torch.autograd.gradcheck takes them: pass them one by one, "
                    "check(fn, x, y) (or check(fn, *inputs))"
                )

    def _check_example_count(self) -> None:
        """One example input per argument of forward (or of the callable): a `UsageError` otherwise."""
        count = len(self.example_inputs)
        direct = self.function_class is not None and (
            self.fn is self.function_class or getattr(self.fn, "__self__", None) is self.function_class
        )
        declared = getattr(self.function_class, "input_names", None)
        target = self.function_class.forward if direct else self.fn
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return  # a built-in: the 'runs' check reports what happens
        parameters = list(signature.parameters.values())
        if direct and not has_setup_context(self.function_class) and parameters:
            parameters = parameters[1:]  # ctx
        names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        try:
            if direct and declared:
                if count != len(declared):
                    raise TypeError("")
            else:
                signature.replace(parameters=parameters).bind(*self.example_inputs)
        except TypeError as error:
            if direct and not declared and self._ctx_mistake(signature, count):
                return  # the Function is broken, not the call: 'runs' reports it with the fix
            raise UsageError(
                f"check({self.name}, ...) got {count} example input{'s' * (count != 1)}, but "
                f"{self.name} takes ({', '.join(declared if direct and declared else names)})"
                f"{f' ({error})' if str(error) else ''}: "
                "give one example per argument of forward"
            ) from None

    def _ctx_mistake(self, signature: inspect.Signature, count: int) -> bool:
        """Whether the examples fit forward once its ctx parameter is seen as missing (``forward(x)`` without
        setup_context) or extra (``forward(ctx, x)`` beside setup_context); sets `ctx_mistake` then."""
        parameters = list(signature.parameters.values())
        if not has_setup_context(self.function_class):
            mistake, fitting = "missing", parameters
        elif parameters and parameters[0].name == "ctx":
            mistake, fitting = "extra", parameters[1:]
        else:
            return False
        if not _binds(signature.replace(parameters=fitting), count):
            return False
        self.ctx_mistake = mistake
        self.parameter_names = tuple(p.name for p in fitting[:count])
        return True

    @property
    def name(self) -> str:
        if self.function_class is not None:
            return self.function_class.__name__
        return getattr(self.fn, "__qualname__", None) or getattr(self.fn, "__name__", repr(self.fn))

    @property
    def calls_function_directly(self) -> bool:
        """Whether ``apply`` is the Function's own ``apply`` (not a wrapper around it)."""
        return self.function_class is not None and self.apply == self.function_class.apply

    @property
    def differentiable_positions(self) -> list[int]:
        """The floating-point tensor inputs, less a `custom_gradient` function's ``nondiff_argnums``."""
        rules = getattr(self.function_class, "custom_gradient_rules", None)
        nondiff = () if rules is None else rules.signature.nondiff
        return [i for i, value in enumerate(self.example_inputs) if is_float_tensor(value) and i not in nondiff]

    def input_name(self, position: int) -> str:
        return self.parameter_names[position]

    def describe_inputs(self) -> str:
        parts = []
        for name, value in zip(self.parameter_names, self.example_inputs, strict=True):
            if isinstance(value, torch.Tensor):
                dtype = str(value.dtype).replace("torch.", "")
                parts.append(f"{name}: {dtype}{list(value.shape)}")
            else:
                parts.append(f"{name}={value!r}")
        return ", ".join(parts)

    # -- running -------------------------------------------------------------------------------
    def leaves(
        self, inputs: Sequence[Any], clone: bool = False, positions: Sequence[int] | None = None
    ) -> tuple[dict[int, torch.Tensor], list[Any]]:
        """Fresh leaves requiring grad for the floating inputs (those at ``positions`` only, when given; the
        others are passed detached), copies with ``clone``, and the argument list holding them."""
        chosen = self.differentiable_positions if positions is None else list(positions)
        leaves = {}
        arguments = list(inputs)
        for position in self.differentiable_positions:
            value = inputs[position].detach()
            value = value.clone() if clone else value
            if position in chosen:
                leaves[position] = value.requires_grad_(True)
            arguments[position] = value
        return leaves, arguments

    def with_values(self, values: dict[int, torch.Tensor]) -> list[Any]:
        """The example inputs with the tensors at the given positions replaced."""
        inputs = list(self.example_inputs)
        for position, value in values.items():
            inputs[position] = value
        return inputs

    def call(self, inputs: Sequence[Any]) -> tuple[Any, ...]:
        """Run the forward on ``inputs`` (clones of tensors when the Function works in place)."""
        arguments = [v.clone() if self.clone_inputs and isinstance(v, torch.Tensor) else v for v in inputs]
        previous = PHASE.set("forward")
        with self.random_state(arguments):
            outputs = flatten_outputs(self.apply(*arguments))
        PHASE.restore(previous)
        return outputs

    @contextlib.contextmanager
    def random_state(self, arguments: Sequence[Any]) -> Iterator[None]:
        """torch's generators (CPU, and the CUDA devices of ``arguments``) seeded with `CALL_SEED` inside, and
        generators among ``arguments`` (``torch.Generator``) at the state they had when given; all restored
        after. Nothing when ``reseed`` is off."""
        if not self.reseed:
            yield
            return
        devices = _cuda_devices(arguments)
        given = [a for a in arguments if isinstance(a, torch.Generator) and id(a) in self.given_generators]
        with torch.random.fork_rng(devices=devices), generator_states_kept(given):
            torch.default_generator.manual_seed(CALL_SEED)
            for device in devices:  # only these: torch.manual_seed would also seed CUDA for later
                torch.cuda.default_generators[device].manual_seed(CALL_SEED)
            for generator in given:
                generator.set_state(self.given_generators[id(generator)])
            yield

    def draws_random_numbers(self, inputs: Sequence[Any]) -> bool:
        """Whether the forward at ``inputs`` draws from torch's generators (dropout, noise) or from a generator
        among its arguments; their states are restored after. False when it raises (the checks report that)."""
        arguments = [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in inputs]
        devices = _cuda_devices(arguments)
        given = [a for a in arguments if isinstance(a, torch.Generator)]
        with torch.random.fork_rng(devices=devices), generator_states_kept(given):
            before = _generator_states(devices, given)
            try:
                with torch.no_grad():
                    self.apply(*arguments)
                after = _generator_states(devices, given)
            except Exception:  # noqa: BLE001 - the user's forward; its errors are the checks' to report
                return False
        return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

    def evaluate(
        self,
        inputs: Sequence[Any],
        upstream: Sequence[torch.Tensor] | None = None,
        *,
        generator: torch.Generator | None = None,
        create_graph: bool = False,
        upstream_requires_grad: bool = False,
        needing: Sequence[int] | None = None,
    ) -> Evaluation:
        """Forward, then gradients of ``sum_k <upstream_k, output_k>`` w.r.t. the floating inputs (all None
        when ``forward_only``); with ``needing``, only the inputs at those positions require a gradient
        (``ctx.needs_input_grad`` is False for the others, and ``gradients`` has those positions only)."""
        leaves, arguments = self.leaves(inputs, positions=needing)
        with torch.enable_grad():
            outputs = self.call(arguments)
            positions = [i for i, out in enumerate(outputs) if isinstance(out, torch.Tensor) and out.requires_grad]
            if not positions:
                raise CheckError(
                    f"no output of {self.name} requires grad: does forward return tensors computed from "
                    "its inputs (and not marked non-differentiable)?"
                )
            if upstream is None:
                upstream = [random_upstream(outputs[i], generator) for i in positions]
            upstream = [g.detach().requires_grad_(upstream_requires_grad) for g in upstream]
            passed = [g.detach().clone() for g in upstream]
            if self.forward_only:
                grads = (None,) * len(leaves)
            else:
                previous = PHASE.set("backward")
                grads = torch.autograd.grad(
                    [outputs[i] for i in positions],
                    list(leaves.values()),
                    upstream,
                    allow_unused=True,
                    create_graph=create_graph,
                )
                PHASE.restore(previous)
        # A backward writing into grad_output in place (grad_output.mul_) must not corrupt the references
        # computed from it: they use the values passed.
        modified = any(not torch.equal(g.detach(), p) for g, p in zip(upstream, passed, strict=True))
        return Evaluation(
            list(arguments),
            leaves,
            outputs,
            positions,
            passed if modified else list(upstream),
            dict(zip(leaves, grads, strict=True)),
            modified,
        )

    def forward_outputs(self, inputs: Sequence[Any], positions: Sequence[int]) -> list[torch.Tensor]:
        """The differentiable outputs (by position) of a forward pass without autograd."""
        with torch.no_grad():
            outputs = self.call(inputs)
        return [outputs[i] for i in positions]

    def expected_gradients(self, inputs: Sequence[Any], evaluation: Evaluation) -> dict[int, torch.Tensor]:
        """The gradients the Function should return: declared custom ones, else finite differences."""
        from .finite_differences import numerical_vjp

        result: dict[int, torch.Tensor] = {}
        declared_positions = getattr(self.declared_vjp, "declared_positions", set())
        if self.declared_vjp is not None:
            grads = self.declared_vjp(list(inputs), list(evaluation.upstream))
            for position in declared_positions:
                shape = inputs[position].shape
                value = grads[position]
                device = inputs[position].device
                value = torch.zeros(shape, device=device) if value is None else value
                result[position] = sum_to_shape(torch.as_tensor(value, dtype=torch.float64, device=device), shape)
        remaining = [p for p in self.differentiable_positions if p not in result]
        if remaining:

            def forward(*tensors: torch.Tensor) -> list[torch.Tensor]:
                values = list(inputs)
                for position, tensor in zip(remaining, tensors, strict=True):
                    values[position] = tensor
                return self.forward_outputs(values, evaluation.output_positions)

            numeric = numerical_vjp(forward, [inputs[p] for p in remaining], evaluation.upstream)
            result.update(zip(remaining, numeric, strict=True))
        return result


def _binds(signature: inspect.Signature, count: int) -> bool:
    """Whether ``count`` positional arguments fit ``signature``."""
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


@contextlib.contextmanager
def generator_states_kept(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """``generators`` (``torch.Generator`` arguments, which ``fork_rng`` leaves alone) back at their states
    on exit."""
    saved = [generator.get_state() for generator in generators]
    try:
        yield
    finally:
        for generator, state in zip(generators, saved, strict=True):
            generator.set_state(state)


def _cuda_devices(arguments: Sequence[Any]) -> list[int]:
    """The indices of the CUDA devices the tensors among ``arguments`` are on."""
    return sorted({a.device.index or 0 for a in arguments if isinstance(a, torch.Tensor) and a.is_cuda})


def _generator_states(devices: Sequence[int], generators: Sequence[torch.Generator]) -> list[torch.Tensor]:
    """The states of torch's CPU generator, of the given CUDA devices' generators, and of ``generators``."""
    states = [torch.get_rng_state()] + [torch.cuda.get_rng_state(device) for device in devices]
    return states + [generator.get_state() for generator in generators]


def sum_to_shape(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient to ``shape`` by summing, as the autograd engine does."""
    if value.shape == shape:
        return value
    if value.dim() == 0:
        return value.expand(shape).clone()
    try:
        return value.sum_to_size(shape)
    except RuntimeError:
        return torch.broadcast_to(value, shape).clone()


def random_upstream(output: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A random, non-constant upstream gradient bounded away from zero: sign * U(0.5, 1.5)."""
    magnitude = torch.rand(output.shape, generator=generator, dtype=torch.float64) + 0.5
    sign = torch.where(torch.rand(output.shape, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
    return (magnitude * sign).to(output.device, output.dtype)


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
