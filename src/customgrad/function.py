"""`FunctionSpec` -> a real ``torch.autograd.Function``, and `function`, the public constructor.

The generated class uses the ``setup_context`` style with ``generate_vmap_rule = True`` so that
``torch.func`` transforms work. Its backward is itself a generated Function (built lazily, cached
per set of needed inputs), so derivatives of every order are exact symbolic derivatives. It saves
only the inputs its partials need, never intermediates.

Forward-mode AD and ``torch.compile`` pull in opposite directions: in torch 2.13 Dynamo refuses a
Function that defines ``jvp``, and without ``jvp``, ``torch.func.jvp``/``jacfwd`` fail. So every
generated Function comes in two variants sharing one spec: the class itself (no ``jvp``,
compiles with ``fullgraph=True``) and ``cls.forward_ad`` (defines ``jvp``: ``torch.func.jvp``,
``jacfwd``, ``hessian`` by forward-over-reverse). ``F.apply`` hands the call to ``F.forward_ad``
while forward mode is on, so those transforms work on ``F`` too (Dynamo never runs that ``apply``).
"""

from __future__ import annotations

import ast
import copyreg
import pickle
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as _forward_ad

from . import function_cache
from .backends import build_kernel, check_backend_name, check_device
from .backends.eager import python_name as _python_name
from .codegen.torch import torch_callable
from .derive import FunctionSpec, backward_spec, jvp_spec
from .errors import BackendError, UsageError
from .formula import shorten
from .formula_spec import formula_spec, next_class_name, register_spec
from .launcher import (
    _as_tensor_arguments,
    broadcast_error,
    checked_arguments,
    device_error,
    promoted_dtype,
    reduce_gradient,
)
from .registry import REGISTRY, builtin_entry, check_function_name, lookup, register

#: The next level for a backward's upstream-gradient names (``_g<level>_<k>``): levels only grow along a
#: chain of backwards, also when a cached backward brings its recorded level (see `_Backwards.derive`).
_next_level = [0]


def _call_apply(cls, *args, **kwargs):
    """``P2(x)`` means ``P2.apply(x)`` in eager mode (as ``__new__``).

    Dynamo ignores it: it models calling an autograd.Function class as instantiation whatever
    ``__new__`` or the metaclass say, and recognises ``apply`` only on classes whose metaclass is
    exactly ``FunctionMeta``; so compiled code must call ``P2.apply(x)``.
    """
    return cls.apply(*args, **kwargs)


def _with_signature(function, names: Sequence[str]):
    """``function(*args)`` behind an explicit signature ``(name0, name1, ...)``.

    Dynamo counts forward's parameters to decide whether to pass ``ctx`` when no input needs a
    gradient; a ``*args`` forward would receive it.
    """
    # Defaults of None let a call with too few inputs reach forward's own clear error.
    parameters = ", ".join(f"{name}=None" for name in names)
    source = (
        f"def forward({parameters}):\n"
        f"    return _implementation(*[a for a in ({', '.join(names)},) if a is not None])\n"
    )
    namespace = {"_implementation": function}
    exec(compile(source, "<customgrad forward>", "exec"), namespace)  # noqa: S102 - names are identifiers
    return namespace["forward"]


def _eager_twin(spec: FunctionSpec):
    """The formula as plain torch ops, differentiated by ordinary autograd (true derivatives, every
    intermediate saved): a same-dtype reference for checks and benchmarks. Generated on first call.
    Not widened: float16/bfloat16 run op by op in their own dtype, as a user's eager code would."""
    code: list = []

    def eager(*arguments):
        if not code:
            code.append(torch_callable(spec.outputs[0], spec.input_names, widen=False))
        return code[0](*_as_tensor_arguments(arguments))

    return _with_signature(eager, spec.input_names)


def _launch(kernel, arguments: Sequence, argument_names: Sequence[str], function_name: str, backend: str) -> tuple:
    """Run a kernel on checked arguments: numbers become tensors, broadcast errors name the inputs,
    outputs get the dtype torch's promotion gives the inputs."""
    arguments = checked_arguments(arguments, argument_names, function_name)
    tensors = _as_tensor_arguments(arguments)
    if not torch.compiler.is_compiling():
        mixed = device_error(tensors, argument_names, function_name)
        if mixed is not None:
            raise mixed
    check_device(backend, tensors, function_name)
    if torch.compiler.is_compiling():
        outputs = kernel(*tensors)
    else:
        try:
            outputs = kernel(*tensors)
        except RuntimeError as failure:
            error = broadcast_error(tensors, argument_names, function_name)
            if error is None or isinstance(failure, BackendError):
                raise
            raise error from None
    # Constant-valued pieces (where(x > 0, 1, -1)) come out in the default dtype: give every
    # output the dtype torch's promotion gives the inputs, as a torch expression of them would.
    dtype = promoted_dtype(arguments)
    if dtype.is_floating_point:
        outputs = tuple(o.to(dtype) if o.dtype != dtype and o.is_floating_point() else o for o in outputs)
    return outputs


def _forward_mode_active() -> bool:
    """Whether forward-mode AD is on: a ``torch.func.jvp`` (also inside ``jacfwd``, ``hessian``) or a
    ``torch.autograd.forward_ad.dual_level``. Cheap when neither is: two reads."""
    if _forward_ad._current_level >= 0:
        return True
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    jvp = torch._C._functorch.TransformType.Jvp
    return any(level.key() == jvp for level in torch._C._functorch.get_interpreter_stack())


def _reserve_level(level: int) -> None:
    """Every later backward gets a level above ``level``."""
    _next_level[0] = max(_next_level[0], level + 1)


class _Backwards:
    """The backward Functions of one spec, one per needs-input-grad mask, generated on first use.

    The backward for ``needed`` computes sum_k g_k * d out_k / d x_i for every needed i in one
    kernel of the same backend; its own backward (second order and up) runs ``higher_backend``.
    """

    def __init__(self, spec: FunctionSpec, backend: str, higher_backend: str):
        self.spec, self.backend, self.higher_backend = spec, backend, higher_backend
        self.cache: dict[tuple[int, ...], tuple[type, list[int]]] = {}
        self.remember: Callable[[], None] | None = None  # writes the disk cache entry (set by `function`)

    def derive(self, needed: tuple[int, ...], level: int | None = None) -> tuple[FunctionSpec, list[int]]:
        """The backward spec of ``needed`` at ``level`` (a cached backward's recorded one), else a fresh level;
        later levels are always higher, so a backward of this backward never reuses its gradient names."""
        if level is None:
            level = _next_level[0]
        _reserve_level(level)
        return backward_spec(self.spec, needed, level)

    def __call__(self, needed: tuple[int, ...]) -> tuple[type, list[int]]:
        if needed not in self.cache:
            backward, used = function_cache.backward_of(self.spec, needed, self.derive, _reserve_level)
            try:
                function = self._build(backward)
                stored = function_cache.holds(self.spec, needed)
            except Exception:
                if not isinstance(backward, function_cache.CachedSpec):
                    raise
                backward, used = self.derive(needed)  # a cached record that cannot be assembled: rebuilt
                function, stored = self._build(backward), False
            self.cache[needed] = (function, used)
            if self.remember is not None and not stored:
                self.remember()
        return self.cache[needed]

    def _build(self, backward) -> type:
        return build_function(backward, eager_backward=False, backend=self.backend, higher_backend=self.higher_backend)


def build_function(
    spec: FunctionSpec, *, eager_backward: bool = True, backend: str = "eager", higher_backend: str | None = None
) -> type[torch.autograd.Function]:
    """Generate the autograd Function (and its ``forward_ad`` variant) for ``spec`` on ``backend``.

    With ``eager_backward`` the backward Function for all inputs is generated now, so that
    ``torch.compile`` can trace the backward without running SymPy; otherwise every backward
    Function (one per set of inputs that need a gradient) is generated on first use. The first
    backward runs on ``backend``; the backwards of backwards on ``higher_backend`` (default: eager
    for the fused backends, whose compile cost would buy little at second order).
    """
    if higher_backend is None:
        higher_backend = backend if backend in ("eager", "compile") else "eager"
    input_count = len(spec.input_names)
    argument_names = list(spec.input_names)
    kernel = build_kernel(backend, spec)
    backward_function = _Backwards(spec, higher_backend if not eager_backward else backend, higher_backend)
    all_inputs = tuple(range(input_count))
    if eager_backward:
        backward_function(all_inputs)
    arity_message = f"{spec.name} takes {input_count} input{'s' * (input_count != 1)} ({', '.join(argument_names)})"
    # Closures Dynamo traces (forward, setup_context, backward) capture only plain values.
    compiled_keep = backward_function.cache[all_inputs][1] if eager_backward else list(all_inputs)
    compiled_function = backward_function.cache[all_inputs][0] if eager_backward else None

    # While tracing, Dynamo sees only plain functions: the generated torch code.
    plain_kernel = getattr(kernel, "plain", kernel)

    def forward(*arguments):
        if len(arguments) != input_count:
            raise UsageError(f"{arity_message}, got {len(arguments)} (None counts as a missing input)")
        run = plain_kernel if torch.compiler.is_compiling() else kernel
        outputs = _launch(run, arguments, argument_names, spec.name, backend)
        return outputs[0] if len(outputs) == 1 else outputs

    hooks = _AutogradHooks(spec, backward_function, compiled_keep, compiled_function)
    namespace = {
        "apply": classmethod(_apply_rule(input_count, arity_message)),
        "generate_vmap_rule": True,
        "forward": staticmethod(_with_signature(forward, argument_names)),
        "setup_context": staticmethod(hooks.setup_context(False)),
        "backward": staticmethod(hooks.backward(False)),
        "spec": spec,
        "backend": backend,
        "formula": spec.formula,
        "input_names": tuple(argument_names),
        "declared_grads": spec.declared_text,
        "eager": staticmethod(_eager_twin(spec)) if eager_backward and spec.output_count == 1 else None,
        "forward_source": kernel.source,
        "reduced": staticmethod(_reducer(kernel)),
        # The formula as written; printing a backward's outputs would cost more than generating its code.
        "__doc__": f"{spec.name}({', '.join(argument_names)}) = {spec.formula or 'generated backward'}",
        "__module__": "customgrad.generated",
        "__new__": staticmethod(_call_apply),
    }
    python_name = _python_name(spec.name)
    cls = type(torch.autograd.Function)(python_name, (torch.autograd.Function,), namespace)
    cls.forward_ad = type(torch.autograd.Function)(
        f"{python_name}_forward_ad",
        (torch.autograd.Function,),
        {
            **namespace,
            "setup_context": staticmethod(hooks.setup_context(True)),
            "backward": staticmethod(hooks.backward(True)),
            "jvp": staticmethod(_jvp_rule(spec)),
        },
    )
    cls.forward_ad.forward_ad = cls.forward_ad
    cls.forward_ad._customgrad_twin_of = cls  # pickles as F.forward_ad (see "Pickling" below)
    cls._backward_for = staticmethod(backward_function)
    cls.as_custom_op = classmethod(_as_custom_op)
    return cls


def _jvp_rule(spec: FunctionSpec) -> Callable:
    """jvp(ctx, *tangents) = sum_i partial_i * tangent_i, its kernel generated on first use (forward mode
    is the rarer path)."""
    jvp_kernel: list = []

    def jvp(ctx, *tangents):
        if not jvp_kernel:
            jvp_kernel.append(build_kernel("eager", jvp_spec(spec)))
        arguments = _as_tensor_arguments(ctx.forward_inputs)
        reference = next(a for a in arguments if isinstance(a, torch.Tensor))
        filled = [
            t if t is not None else torch.zeros((), dtype=reference.dtype, device=reference.device) for t in tangents
        ]
        outputs = jvp_kernel[0](*arguments, *filled)
        return outputs[0] if len(outputs) == 1 else outputs

    return jvp


def _apply_rule(input_count: int, arity_message: str) -> Callable:
    """``F.apply``: too many arguments named (torch would raise a bare TypeError binding them to forward's
    signature), and the call handed to ``F.forward_ad`` while forward mode is on."""

    def apply(cls, *arguments, **keywords):
        if len(arguments) > input_count:
            raise UsageError(f"{arity_message}, got {len(arguments)}")
        if _forward_mode_active() and cls.__dict__.get("forward_ad", cls) is not cls:
            cls = cls.forward_ad  # jvp, jacfwd, hessian: the twin with a jvp (Dynamo never runs this apply)
        return torch.autograd.Function.apply.__func__(cls, *arguments, **keywords)

    return apply


def _as_custom_op(cls, qualified_name: str):
    """This Function as a ``torch.library`` custom operator (see `customgrad.custom_op.as_custom_op`)."""
    from .custom_op import as_custom_op

    return as_custom_op(cls, qualified_name)


def _reducer(kernel):
    """``reduced(arguments, shapes)``: the kernel's outputs summed to ``shapes``, or None (no such kernel)."""
    reduce = getattr(kernel, "reduced", None)

    def reduced(arguments, shapes):
        if reduce is None or any(not isinstance(a, torch.Tensor) for a in arguments):
            return None
        return reduce(arguments, shapes)

    return reduced


class _AutogradHooks:
    """``setup_context`` and ``backward`` of a generated Function: save only the inputs the needed
    partials use; backward runs the backward Function of the needs-input-grad mask and reduces each
    gradient to its input's shape and dtype."""

    def __init__(self, spec: FunctionSpec, backward_function: _Backwards, compiled_keep, compiled_function):
        self.spec = spec
        self.backward_function = backward_function
        self.compiled_keep = compiled_keep
        self.compiled_function = compiled_function

    def setup_context(self, for_jvp: bool):
        all_inputs = tuple(range(len(self.spec.input_names)))
        compiled_keep = self.compiled_keep
        spec = self.spec

        known_needs = getattr(spec, "known_needs", None)  # a cached spec: None until derived

        def spec_needs():  # Dynamo traces this closure: it must capture plain functions, not the spec
            return known_needs() if known_needs is not None else spec.needs

        def setup_context(ctx, inputs, output):
            ctx.needed = tuple(i for i in all_inputs if ctx.needs_input_grad[i] and isinstance(inputs[i], torch.Tensor))
            if not ctx.needed:
                keep = []
            elif torch.compiler.is_compiling():
                keep = compiled_keep  # no SymPy while tracing: the backward for all inputs, built eagerly
            else:
                needs = spec_needs()  # None: a cached backward's partials are not derived yet, keep all
                keep = list(all_inputs) if needs is None else sorted(set().union(*(needs[i] for i in ctx.needed)))
            ctx.numbers = {j: inputs[j] for j in keep if not isinstance(inputs[j], torch.Tensor)}
            ctx.tensor_positions = [j for j in keep if isinstance(inputs[j], torch.Tensor)]
            ctx.save_for_backward(*(inputs[j] for j in ctx.tensor_positions))
            # Shapes and dtypes of the needed inputs reduce gradients without keeping the tensors.
            ctx.like = {i: (inputs[i].shape, inputs[i].dtype) for i in ctx.needed}
            if for_jvp:
                ctx.save_for_forward(*[a for a in inputs if isinstance(a, torch.Tensor)])
                ctx.forward_inputs = inputs

        return setup_context

    def backward(self, for_jvp: bool):
        input_count = len(self.spec.input_names)
        all_inputs = tuple(range(input_count))
        compiled_keep, compiled_function = self.compiled_keep, self.compiled_function
        backwards = self.backward_function

        def backward_function(needed):  # a plain function for Dynamo, as in setup_context
            return backwards(needed)

        def backward(ctx, *grad_outputs):
            result: list = [None] * input_count
            if not ctx.needed:
                return tuple(result)
            values = dict(zip(ctx.tensor_positions, ctx.saved_tensors, strict=True))
            values.update(ctx.numbers)
            if torch.compiler.is_compiling() and compiled_function is not None:
                # Compiled graphs support no double backward: the plain torch code of the
                # backward Function for all inputs (built eagerly, so Dynamo runs no SymPy).
                computed = all_inputs
                gradients = compiled_function.forward(*(values[j] for j in compiled_keep), *grad_outputs)
            elif not torch.is_grad_enabled() and not for_jvp:
                # No create_graph: nothing will differentiate these gradients, so run the backward
                # Function's kernel without recording a graph (saves apply's overhead).
                (function, used), computed = backward_function(ctx.needed), ctx.needed
                arguments = [*(values[j] for j in used), *grad_outputs]
                # A fused kernel sums broadcast gradients inside its loop; others give full shapes.
                gradients = function.reduced(arguments, [ctx.like[i][0] for i in computed])
                if gradients is None:
                    gradients = function.forward(*arguments)
            else:
                (function, used), computed = backward_function(ctx.needed), ctx.needed
                if for_jvp:  # forward-over-reverse (hessian via jacfwd) needs jvp at every level
                    function = function.forward_ad
                gradients = function.apply(*(values[j] for j in used), *grad_outputs)
            if not isinstance(gradients, tuple):
                gradients = (gradients,)
            for i, gradient in zip(computed, gradients, strict=True):
                if i in ctx.like:
                    result[i] = reduce_gradient(gradient, *ctx.like[i])
            return tuple(result)

        return backward


def function(
    formula: str,
    *,
    inputs: Sequence[str] | None = None,
    name: str | None = None,
    grads: Mapping[str, str] | None = None,
    backend: str = "auto",
) -> type[torch.autograd.Function]:
    """Autograd Function f(inputs) = formula, with its backward derived symbolically.

    Parameters
    ----------
    formula : str
        The function's value, e.g. ``"x**2 + 2*x"`` (see `customgrad.formula` for the language).
    inputs : sequence of str, optional
        Input names in call order. Default: the order of first appearance in the formula
        (``"a + b*x"`` takes ``(a, b, x)``). Inputs the formula does not use are allowed.
    name : str, optional
        Name of the class; a named function is also registered, so later formulas can call it.
    grads : mapping of str to str, optional
        Declared custom (surrogate) gradients: input name -> formula of d f / d input over the
        inputs, replacing the derived partial. ``function("x", grads={"x": "2*x"})`` is the
        blog's identity with a 2x gradient; ``function("round(x)", grads={"x": "1"})`` is a
        straight-through estimator.
    backend : {"auto", "eager", "compile", "cpu", "triton"}
        Where the kernels run (see `customgrad.backends`): ``"eager"`` generated torch code,
        ``"compile"`` that code under ``torch.compile``, ``"cpu"`` fused C kernels (CPU tensors),
        ``"triton"`` Triton kernels (CUDA tensors). ``"auto"`` picks per call the fastest that runs
        on the inputs' device and size, else eager (one warning says why).

    Returns
    -------
    type[torch.autograd.Function]
        Call it as ``F.apply(...)`` or ``F(...)``. Inputs are tensors or Python numbers and
        broadcast; numbers get no gradient. ``F.forward_ad`` is the variant with a ``jvp`` for
        forward-mode AD (``torch.func.jvp``, ``jacfwd``), which ``F.apply`` calls while forward mode
        is on; ``F`` itself compiles with ``torch.compile(fullgraph=True)`` when called as
        ``F.apply(...)``. A Function pickles by this definition (see "Pickling" at the end of this module).

    Notes
    -----
    Under ``torch.compile`` write ``F.apply(x)``, not ``F(x)``: Dynamo treats calling an
    autograd.Function class as instantiating it (torch 2.13), which fails to trace.
    """
    if name is not None and not isinstance(name, str):
        raise UsageError(f"name must be a string such as 'P2', got {type(name).__name__} {name!r}")
    if name is not None:
        check_function_name(name)
    check_backend_name(backend)
    key = function_cache.definition_key(formula, inputs, grads, name, backend)
    class_name = name if name is not None else next_class_name()

    def build() -> FunctionSpec:  # remembered: a fit of the same formula in this process derives from it
        return function_cache.remember_spec(
            key, formula_spec(formula, inputs=inputs, grads=grads, class_name=class_name)
        )

    spec = function_cache.load(key, class_name, build, formula) or build()
    if name is not None and name in spec.input_names:
        raise UsageError(
            f"name {name!r} is also an input of {shorten(formula)!r}: registering it would make {name!r} a "
            "function in every later formula; choose another name"
        )
    try:
        cls = build_function(spec, backend=backend)
    except Exception:
        if not isinstance(spec, function_cache.CachedSpec):
            raise
        spec = build()  # a cache entry that cannot be assembled: rebuilt, and stored again below
        cls = build_function(spec, backend=backend)
    if key is not None:
        cls._backward_for.remember = lambda: function_cache.store(key, spec, cls)
        if not isinstance(spec, function_cache.CachedSpec):
            cls._backward_for.remember()
    if name is not None:
        register_spec(name, spec, cls)
    _remember(cls, formula, inputs, grads, name, backend)
    return cls


# Pickling ------------------------------------------------------------------------------------------
#
# Generated Functions pickle by their definition: ``pickle``, ``torch.save``, spawn workers and DDP.
#
# A generated class lives in no importable module (``customgrad.generated``), so pickle's default, a
# reference by module and name, fails. Pickle asks ``copyreg.dispatch_table`` for the metaclass before
# treating a class as a global, so one entry for torch's ``FunctionMeta`` pickles a Function made by
# `customgrad.function` as ``_rebuild(definition, dependencies)``: the formula, inputs, name, declared
# gradients and backend as given, and the registered Functions the formulas call (pickled the same
# way, so a formula calling ``Lor(...)`` finds ``Lor`` registered on load). Loading calls `function`
# again, which reads the disk cache when it is warm; in a process that already holds the class, the
# same class comes back. ``F.forward_ad`` pickles as that attribute of ``F``, the built-ins (``P2``)
# by name; every other ``torch.autograd.Function`` as before, by reference. (A metaclass of our own
# would do too, but Dynamo traces ``apply`` only on classes whose metaclass is exactly ``FunctionMeta``.)

#: What pickle did with autograd Functions before (None: the default, a reference by name).
_FUNCTION_META = type(torch.autograd.Function)
_previous = copyreg.dispatch_table.get(_FUNCTION_META)
#: (definition, dependencies) -> the class made from them in this process.
_built: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class Definition:
    """The arguments of a `customgrad.function` call: all a fresh process needs to make the Function."""

    formula: str
    inputs: tuple[str, ...] | None
    grads: tuple[tuple[str, object], ...] | None
    name: str | None
    backend: str

    def make(self) -> type[torch.autograd.Function]:
        grads = dict(self.grads) if self.grads is not None else None
        inputs = list(self.inputs) if self.inputs is not None else None
        return function(self.formula, inputs=inputs, grads=grads, name=self.name, backend=self.backend)


def _remember(cls, formula, inputs, grads, name, backend) -> None:
    """Mark ``cls`` (made by ``function(formula, inputs=..., ...)``) to pickle by that definition."""
    definition = Definition(
        formula,
        tuple(cls.input_names) if inputs is not None else None,  # ``inputs`` may have been an iterator
        tuple(grads.items()) if grads is not None else None,
        name,
        backend,
    )
    dependencies = _dependencies([formula, *(t for t in (grads or {}).values() if isinstance(t, str))])
    cls._customgrad_definition = (definition, dependencies)
    _built[(definition, dependencies)] = cls


def _dependencies(texts) -> tuple:
    """(name, Function) of every user-registered function that ``texts`` call (built-ins need none)."""
    called: set[str] = set()
    for text in texts:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        called |= {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    found = []
    for name in sorted(called):
        entry = REGISTRY.get(name)
        if entry is not None and entry.function is not None and builtin_entry(name) is not entry:
            found.append((name, entry.function))
    return tuple(found)


def _rebuild(definition: Definition, dependencies: tuple) -> type[torch.autograd.Function]:
    """The Function of ``definition``, with the functions it calls registered as when it was made."""
    for name, dependency in dependencies:
        _register(name, dependency)
    cls = _built.get((definition, dependencies))
    if cls is None:
        return definition.make()
    if definition.name is not None:
        _register(definition.name, cls)
    return cls


def _register(name: str, cls) -> None:
    """Register ``cls`` under ``name`` unless it is registered there already."""
    entry = REGISTRY.get(name)
    if entry is not None and entry.function is cls:
        return
    if "_customgrad_definition" in vars(cls):
        register_spec(name, cls.spec, cls)
    else:
        register(name, cls)


def _builtin(name: str) -> type[torch.autograd.Function]:
    """Built-in ``name`` (``P2``), generated on first use (`registry.lookup` asks `library`)."""
    return lookup(name).autograd_function()


def _reduce(cls):
    """How pickle stores the autograd Function class ``cls`` (see the module docstring)."""
    attributes = vars(cls)
    if "_customgrad_definition" in attributes:
        return _rebuild, attributes["_customgrad_definition"]
    if "_customgrad_twin_of" in attributes:
        return getattr, (attributes["_customgrad_twin_of"], "forward_ad")
    if cls.__module__ == "customgrad.generated":
        entry = builtin_entry(cls.__name__)
        if entry is not None and entry.function is cls:
            return _builtin, (cls.__name__,)
        raise pickle.PicklingError(
            f"cannot pickle {cls.__name__}: only Functions made by customgrad.function (and their forward_ad) "
            "pickle; pickle the Function it belongs to instead"
        )
    return _previous(cls) if _previous is not None else cls.__qualname__


copyreg.pickle(_FUNCTION_META, _reduce)
