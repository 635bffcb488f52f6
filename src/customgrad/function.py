"""`FunctionSpec` -> a real ``torch.autograd.Function``, and `function`, the public constructor.

The generated class uses the ``setup_context`` style with ``generate_vmap_rule = True`` so that
``torch.func`` transforms work. Its backward is itself a generated Function (built lazily, cached
per set of needed inputs), so derivatives of every order are exact symbolic derivatives. It saves
only the inputs its partials need, never intermediates.

Forward-mode AD and ``torch.compile`` pull in opposite directions: in torch 2.13 Dynamo refuses a
Function that defines ``jvp``, and without ``jvp``, ``torch.func.jvp``/``jacfwd`` fail. So every
generated Function comes in two variants sharing one spec: the class itself (no ``jvp``,
compiles with ``fullgraph=True``) and ``cls.forward_ad`` (defines ``jvp``; use it with
``torch.func.jvp``, ``jacfwd``, ``hessian`` by forward-over-reverse).
"""

from __future__ import annotations

import functools
import itertools
import keyword
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence

import sympy
import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes

from .codegen.torch import compile_source, function_source, torch_callable
from .derive import FunctionSpec, derive_spec
from .errors import FormulaError, UsageError
from .formula import parse_formula, shorten, symbol
from .registry import check_function_name, register

_counter = itertools.count()


def _call_apply(cls, *args, **kwargs):
    """``P2(x)`` means ``P2.apply(x)`` in eager mode (as ``__new__``).

    Dynamo ignores it: it models calling an autograd.Function class as instantiation whatever
    ``__new__`` or the metaclass say, and recognises ``apply`` only on classes whose metaclass is
    exactly ``FunctionMeta``; so compiled code must call ``P2.apply(x)``.
    """
    return cls.apply(*args, **kwargs)


def _checked_arguments(arguments: Sequence, names: Sequence[str], function_name: str) -> list:
    """The call's arguments if each is a real tensor or a real Python number (numpy scalars become
    Python numbers); anything else is a `UsageError` naming the input."""
    checked = list(arguments)
    for position, (name, value) in enumerate(zip(names, arguments, strict=False)):
        if isinstance(value, torch.Tensor):
            if value.is_complex():
                raise UsageError(
                    f"{function_name}: input {name!r} is a {value.dtype} tensor, but formulas are "
                    "real-valued: pass the real and imaginary parts (x.real, x.imag) as real tensors"
                )
            continue
        if isinstance(value, (bool, int, float)) and type(value) in (bool, int, float):
            number = value
        elif isinstance(value, numbers.Real):  # numpy scalars
            number = int(value) if isinstance(value, numbers.Integral) else float(value)
        else:
            hint = (
                " (convert it with torch.as_tensor(...))"
                if isinstance(value, (list, tuple)) or hasattr(value, "__array__")
                else ""
            )
            raise UsageError(
                f"{function_name}: input {name!r} must be a tensor or a real Python number, "
                f"got {type(value).__name__}{hint}"
            )
        if isinstance(number, int) and not isinstance(number, bool):
            try:
                float(number)
            except OverflowError:
                raise UsageError(
                    f"{function_name}: input {name!r} is an integer with {len(str(abs(number)))} "
                    "digits, too large for a floating-point tensor"
                ) from None
        checked[position] = number
    return checked


def _broadcast_error(arguments: Sequence, names: Sequence[str], function_name: str) -> UsageError | None:
    """A `UsageError` naming the inputs and their shapes when the tensor inputs do not broadcast."""
    shapes = [(name, tuple(a.shape)) for name, a in zip(names, arguments, strict=False) if isinstance(a, torch.Tensor)]
    try:
        torch.broadcast_shapes(*(shape for _, shape in shapes))
    except RuntimeError:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes)
        return UsageError(
            f"{function_name}: the shapes of the inputs do not broadcast together ({listed}): "
            "each dimension must match or be 1 (torch broadcasting rules)"
        )
    return None


def _as_tensor_arguments(arguments: Sequence) -> list:
    """Numbers become tensors in the dtype and on the device of the first tensor (torch's rule for
    Python scalars); when there is no tensor at all, the default dtype on the CPU."""
    if all(isinstance(a, torch.Tensor) for a in arguments):
        return list(arguments)
    reference = next((a for a in arguments if isinstance(a, torch.Tensor)), None)
    if reference is None:
        dtype, device = torch.get_default_dtype(), None
    else:
        dtype = reference.dtype if reference.is_floating_point() else torch.get_default_dtype()
        device = reference.device
    return [a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=dtype, device=device) for a in arguments]


def _promoted_dtype(arguments: Sequence) -> torch.dtype:
    """The dtype torch's type promotion gives an elementwise op of ``arguments`` (tensors and numbers)."""
    first = arguments[0]
    if isinstance(first, torch.Tensor) and all(
        isinstance(a, torch.Tensor) and a.dtype == first.dtype for a in arguments
    ):
        return first.dtype
    if torch.compiler.is_compiling():
        # elementwise_dtypes is not traceable by Dynamo before torch 2.13: let torch promote empty
        # stand-ins (same dtype and dimensionality) instead, which follows the same rules.
        tensors = [a for a in arguments if isinstance(a, torch.Tensor)]
        numbers = [a for a in arguments if not isinstance(a, torch.Tensor)]
        probes = [torch.empty((0,) if t.dim() else (), dtype=t.dtype, device=t.device) for t in tensors]
        return functools.reduce(torch.add, [*probes, *numbers]).dtype
    return elementwise_dtypes(*arguments, type_promotion_kind=ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT)[1]


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
    intermediate saved): a same-dtype reference for checks and benchmarks."""
    code = torch_callable(spec.outputs[0], spec.input_names)

    def eager(*arguments):
        return code(*_as_tensor_arguments(arguments))

    return _with_signature(eager, spec.input_names)


def _python_name(name: str) -> str:
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned.isidentifier() else f"_{cleaned}"


def build_function(spec: FunctionSpec, *, eager_backward: bool = True) -> type[torch.autograd.Function]:
    """Generate the autograd Function (and its ``forward_ad`` variant) for ``spec``.

    With ``eager_backward`` the backward Function for all inputs is generated now, so that
    ``torch.compile`` can trace the backward without running SymPy; otherwise every backward
    Function (one per set of inputs that need a gradient) is generated on first use.
    """
    input_count = len(spec.inputs)
    output_count = len(spec.outputs)
    argument_names = [s.name for s in spec.inputs]
    python_name = _python_name(spec.name)
    source = function_source(f"{python_name}_forward", argument_names, spec.outputs, full_shape=spec.full_shape)
    forward_code = compile_source(source, f"{python_name}_forward", f"<customgrad {spec.name} forward>")
    backward_cache: dict[tuple[int, ...], tuple[type, list[int]]] = {}
    all_inputs = tuple(range(input_count))

    def backward_function(needed: tuple[int, ...]) -> tuple[type, list[int]]:
        """The generated Function computing sum_k g_k * d out_k / d x_i for the needed i."""
        if needed not in backward_cache:
            level = next(_counter)  # fresh names: nested backward Functions take earlier grads as inputs
            grads = tuple(sympy.Symbol(f"_g{level}_{k}", real=True) for k in range(output_count))
            outputs = tuple(
                sympy.Add(*[g * row[i] for g, row in zip(grads, spec.partials, strict=True)]) for i in needed
            )
            used = sorted(set().union(*(spec.needs[i] for i in needed)))
            inputs = tuple(spec.inputs[j] for j in used) + grads
            backward_spec = derive_spec(
                f"{spec.name}_backward", inputs, outputs, full_shape=tuple(g.name for g in grads)
            )
            backward_cache[needed] = (build_function(backward_spec, eager_backward=False), used)
        return backward_cache[needed]

    if eager_backward:
        backward_function(all_inputs)
    # Closures Dynamo traces (forward, setup_context, backward) capture only plain values.
    arity_message = f"{spec.name} takes {input_count} input{'s' * (input_count != 1)} ({', '.join(argument_names)})"
    compiled_keep = backward_cache[all_inputs][1] if eager_backward else list(all_inputs)
    compiled_function = backward_cache[all_inputs][0] if eager_backward else None

    def forward(*arguments):
        if len(arguments) != input_count:
            raise UsageError(f"{arity_message}, got {len(arguments)} (None counts as a missing input)")
        arguments = _checked_arguments(arguments, argument_names, spec.name)
        tensors = _as_tensor_arguments(arguments)
        if torch.compiler.is_compiling():
            outputs = forward_code(*tensors)
        else:
            try:
                outputs = forward_code(*tensors)
            except RuntimeError:
                error = _broadcast_error(tensors, argument_names, spec.name)
                if error is None:
                    raise
                raise error from None
        # Constant-valued pieces (where(x > 0, 1, -1)) come out in the default dtype: give every
        # output the dtype torch's promotion gives the inputs, as a torch expression of them would.
        dtype = _promoted_dtype(arguments)
        if dtype.is_floating_point:
            outputs = tuple(o.to(dtype) if o.dtype != dtype and o.is_floating_point() else o for o in outputs)
        return outputs[0] if output_count == 1 else outputs

    def make_setup_context(for_jvp: bool):
        def setup_context(ctx, inputs, output):
            ctx.needed = tuple(i for i in all_inputs if ctx.needs_input_grad[i] and isinstance(inputs[i], torch.Tensor))
            if not ctx.needed:
                keep = []
            elif torch.compiler.is_compiling():
                keep = compiled_keep  # no SymPy while tracing: the backward for all inputs, built eagerly
            else:
                keep = sorted(set().union(*(spec_needs()[i] for i in ctx.needed)))
            ctx.numbers = {j: inputs[j] for j in keep if not isinstance(inputs[j], torch.Tensor)}
            ctx.tensor_positions = [j for j in keep if isinstance(inputs[j], torch.Tensor)]
            ctx.save_for_backward(*(inputs[j] for j in ctx.tensor_positions))
            # Shapes and dtypes of the needed inputs reduce gradients without keeping the tensors.
            ctx.like = {i: (inputs[i].shape, inputs[i].dtype) for i in ctx.needed}
            if for_jvp:
                ctx.save_for_forward(*[a for a in inputs if isinstance(a, torch.Tensor)])
                ctx.forward_inputs = inputs

        return setup_context

    def make_backward(for_jvp: bool):
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
                # Function's plain torch code without recording a graph (saves apply's overhead).
                (function, used), computed = backward_function(ctx.needed), ctx.needed
                gradients = function.forward(*(values[j] for j in used), *grad_outputs)
            else:
                (function, used), computed = backward_function(ctx.needed), ctx.needed
                if for_jvp:  # forward-over-reverse (hessian via jacfwd) needs jvp at every level
                    function = function.forward_ad
                gradients = function.apply(*(values[j] for j in used), *grad_outputs)
            if not isinstance(gradients, tuple):
                gradients = (gradients,)
            for i, gradient in zip(computed, gradients, strict=True):
                if i not in ctx.like:
                    continue
                shape, dtype = ctx.like[i]
                if gradient.shape != shape:
                    gradient = gradient.sum_to_size(shape)
                result[i] = gradient if gradient.dtype == dtype else gradient.to(dtype)
            return tuple(result)

        return backward

    def spec_needs():
        return spec.needs

    jvp_cache: list = []

    def jvp_code():
        """sum_i partial_i * tangent_i, generated on first use (forward mode is the rarer path)."""
        if not jvp_cache:
            tangents = [f"_tangent{i}" for i in range(input_count)]  # not _t*: CSE temporaries
            outputs = tuple(
                sympy.Add(*[sympy.Symbol(t, real=True) * row[i] for i, t in enumerate(tangents)])
                for row in spec.partials
            )
            source = function_source(f"{python_name}_jvp", argument_names + tangents, outputs)
            jvp_cache.append(compile_source(source, f"{python_name}_jvp", f"<customgrad {spec.name} jvp>"))
        return jvp_cache[0]

    def jvp(ctx, *tangents):
        arguments = _as_tensor_arguments(ctx.forward_inputs)
        reference = next(a for a in arguments if isinstance(a, torch.Tensor))
        filled = [
            t if t is not None else torch.zeros((), dtype=reference.dtype, device=reference.device) for t in tangents
        ]
        outputs = jvp_code()(*arguments, *filled)
        return outputs[0] if output_count == 1 else outputs

    def apply(cls, *arguments, **keywords):
        # torch binds the arguments to forward's signature and would raise a bare TypeError.
        if len(arguments) > input_count:
            raise UsageError(f"{arity_message}, got {len(arguments)}")
        return torch.autograd.Function.apply.__func__(cls, *arguments, **keywords)

    namespace = {
        "apply": classmethod(apply),
        "generate_vmap_rule": True,
        "forward": staticmethod(_with_signature(forward, argument_names)),
        "setup_context": staticmethod(make_setup_context(False)),
        "backward": staticmethod(make_backward(False)),
        "spec": spec,
        "formula": spec.formula,
        "input_names": tuple(argument_names),
        "declared_grads": {name: str(expr) for name, expr in spec.declared.items()},
        "eager": staticmethod(_eager_twin(spec)) if eager_backward and output_count == 1 else None,
        "forward_source": source,
        "__doc__": f"{spec.name}({', '.join(argument_names)}) = {', '.join(map(str, spec.outputs))}",
        "__module__": "customgrad.generated",
        "__new__": staticmethod(_call_apply),
    }
    cls = type(torch.autograd.Function)(python_name, (torch.autograd.Function,), namespace)
    cls.forward_ad = type(torch.autograd.Function)(
        f"{python_name}_forward_ad",
        (torch.autograd.Function,),
        {
            **namespace,
            "setup_context": staticmethod(make_setup_context(True)),
            "backward": staticmethod(make_backward(True)),
            "jvp": staticmethod(jvp),
        },
    )
    cls.forward_ad.forward_ad = cls.forward_ad
    return cls


def _gradient_text(input_name: str, value) -> str:
    """A declared gradient as formula text: strings as they are, finite real numbers (``1``, ``0.5``) too."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return repr(float(value)) if not isinstance(value, numbers.Integral) else str(int(value))
    raise UsageError(
        f"grads[{input_name!r}] must be a formula such as '2*{input_name}' or a finite number, "
        f"got {type(value).__name__} {value!r}"
    )


def function(
    formula: str,
    *,
    inputs: Sequence[str] | None = None,
    name: str | None = None,
    grads: Mapping[str, str] | None = None,
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

    Returns
    -------
    type[torch.autograd.Function]
        Call it as ``F.apply(...)`` or ``F(...)``. Inputs are tensors or Python numbers and
        broadcast; numbers get no gradient. ``F.forward_ad`` is the variant with a ``jvp`` for
        forward-mode AD (``torch.func.jvp``, ``jacfwd``); ``F`` itself compiles with
        ``torch.compile(fullgraph=True)`` when called as ``F.apply(...)``.

    Notes
    -----
    Under ``torch.compile`` write ``F.apply(x)``, not ``F(x)``: Dynamo treats calling an
    autograd.Function class as instantiating it (torch 2.13), which fails to trace.
    """
    if name is not None and not isinstance(name, str):
        raise UsageError(f"name must be a string such as 'P2', got {type(name).__name__} {name!r}")
    if name is not None:
        check_function_name(name)
    spec = formula_spec(formula, inputs=inputs, grads=grads, class_name=name)
    if name is not None and name in spec.input_names:
        raise UsageError(
            f"name {name!r} is also an input of {shorten(formula)!r}: registering it would make {name!r} a "
            "function in every later formula; choose another name"
        )
    cls = build_function(spec)
    if name is not None:
        # Registered with the un-inlined expression so callers differentiate through our partials.
        register(
            name,
            cls,
            partials=spec.partials[0],
            input_symbols=spec.inputs,
            expr=spec.raw_outputs[0],
            summary=f"{name}({', '.join(spec.input_names)}) = {spec.formula}",
        )
    return cls


def formula_spec(
    formula: str,
    *,
    inputs: Sequence[str] | None = None,
    grads: Mapping[str, str] | None = None,
    class_name: str | None = None,
) -> FunctionSpec:
    """The `FunctionSpec` of f(inputs) = formula with declared ``grads``, validated; nothing generated yet.

    Parameters as for `function`; ``class_name`` names the spec (default ``Formula<n>``). Partials
    are derived when first used.
    """
    parsed = parse_formula(formula)
    if inputs is None:
        input_names = list(parsed.names)
    else:
        if isinstance(inputs, str) or not isinstance(inputs, Iterable):
            raise UsageError(f"inputs must be a list of names such as ['x', 'y'], got {inputs!r}")
        input_names = list(inputs)
        if not all(isinstance(n, str) for n in input_names):
            raise UsageError(f"inputs must be a list of names such as ['x', 'y'], got {input_names!r}")
        duplicates = sorted({n for n in input_names if input_names.count(n) > 1})
        if duplicates:
            raise UsageError(f"inputs {input_names} name {', '.join(duplicates)} more than once")
        missing = [n for n in parsed.names if n not in input_names]
        if missing:
            raise FormulaError(
                f"formula {shorten(formula)!r} uses {', '.join(map(repr, missing))}, which "
                f"{'is' if len(missing) == 1 else 'are'} not among inputs {input_names}: "
                "add them to inputs"
            )
        for n in input_names:
            if not n.isidentifier() or n.startswith("_") or keyword.iskeyword(n):
                raise UsageError(f"input name {n!r} is not a valid name: use letters, digits and '_'")
    if not input_names:
        raise FormulaError(f'formula {shorten(formula)!r} has no inputs: a function needs at least one, as in "2*x"')
    if grads is not None and not isinstance(grads, Mapping):
        raise UsageError(
            f"grads must be a dict {{input name: formula}} such as {{'x': '2*x'}}, got {type(grads).__name__} {grads!r}"
        )
    declared: dict[str, sympy.Expr] = {}
    for input_name, text in (grads or {}).items():
        if input_name not in input_names:
            raise UsageError(
                f"grads names {input_name!r}, which is not an input of {shorten(formula)!r} "
                f"(inputs: {', '.join(input_names)})"
            )
        parsed_gradient = parse_formula(_gradient_text(input_name, text), what=f"gradient for {input_name!r}")
        unknown = [n for n in parsed_gradient.names if n not in input_names]
        if unknown:
            raise FormulaError(
                f"gradient for {input_name!r} ({text!r}) uses {', '.join(map(repr, unknown))}, "
                f"which {'is' if len(unknown) == 1 else 'are'} not an input "
                f"(inputs: {', '.join(input_names)})"
            )
        declared[input_name] = parsed_gradient.expr
    symbols = tuple(symbol(n) for n in input_names)
    return derive_spec(class_name or f"Formula{next(_counter)}", symbols, (parsed.expr,), declared, formula=parsed.text)
