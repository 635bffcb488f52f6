"""`custom_gradient`: a Python forward and a hand-written backward made into a complete autograd Function.

The decorated object calls a generated ``torch.autograd.Function`` in the modern form (``forward`` without
ctx, ``setup_context``, ``generate_vmap_rule``), so ``torch.func`` transforms and
``torch.compile(fullgraph=True)`` work. It saves only the inputs, outputs and declared residuals the
backward names, so a backward written in torch operations is differentiable again (double backward right
by construction); the rules between the pair and autograd live in `gradient_rules.PairRules`.

Three generated classes share the rules: the first eager calls go through one that checks every rule (in-place
changes by version counters included) until a forward and backward pass; later eager calls through a fast one
(the user's forward itself; gradient checks only when one fails); calls under ``torch.compile`` through one
without ``jvp`` (Dynamo refuses to trace a Function with ``jvp`` in torch 2.13).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
from torch._functorch.autograd_function import custom_function_call

from .errors import UsageError
from .gradient_rules import PairRules, pair_rules, viewed_inputs
from .gradient_signature import ForwardSignature, forward_signature, rule_signature


def _forward_with_signature(run: Callable, names: Sequence[str]) -> Callable:
    """``forward(name0, name1, ...)`` calling ``run((name0, name1, ...))``.

    Dynamo counts forward's parameters to decide whether to pass ctx; a ``*args`` forward would receive it.
    """
    parameters = ", ".join(names)
    source = f"def forward({parameters}):\n    return __customgrad_run(({parameters}{',' if names else ''}))\n"
    namespace = {"__customgrad_run": run}
    exec(compile(source, "<customgrad custom_gradient forward>", "exec"), namespace)  # noqa: S102 - identifiers
    return namespace["forward"]


def build_pair_function(rules: PairRules, *, vmap: Callable | None, declared, kind: str, jvp: bool) -> type:
    """The autograd.Function of ``rules`` of ``kind``: "checked" (the first eager calls: every rule checked),
    "fast" (eager calls after one passed) or "traced" (what torch.compile traces); a ``jvp`` with ``jvp``."""
    names = rules.signature.inputs
    save = rules.save if kind == "fast" else rules.setup_context
    if jvp:

        def setup_context(ctx, inputs, output):
            save(ctx, inputs, output)
            rules.save_for_jvp(ctx, inputs, output)

    elif kind != "traced":
        setup_context = save
    else:

        def setup_context(ctx, inputs, output):  # a plain function: Dynamo traces it
            rules.setup_context(ctx, inputs, output)

    if kind == "checked":
        forward, backward = _forward_with_signature(rules.forward, names), rules.backward
    elif kind == "fast":
        forward, backward = rules.forward_function, rules.backward_fast
        if rules.returns_input:  # the checked forward saw an input returned as it is: view it, as that one does

            def viewing(arguments):
                return viewed_inputs(rules.forward_function(*arguments), arguments)

            forward = _forward_with_signature(viewing, names)
    else:
        forward = rules.forward_function

        def backward(ctx, *grads):
            return rules.backward_traced(ctx, *grads)

    namespace = {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
        "generate_vmap_rule": vmap is None,
        "input_names": names,
        "declared_grads": declared,
        "custom_gradient_rules": rules,
        "__doc__": f"{rules.name}({', '.join(names)}) with a hand-written backward (customgrad.custom_gradient)",
        "__module__": "customgrad.generated",
    }
    if vmap is not None:
        namespace["vmap"] = staticmethod(vmap)
    if jvp:

        def jvp_rule(ctx, *tangents):
            return rules.jvp(ctx, tangents)

        namespace["jvp"] = staticmethod(jvp_rule)
    class_name = rules.name.rsplit(".", 1)[-1] + ("" if kind == "fast" else f"_{kind}")
    cls = type(torch.autograd.Function)(class_name, (torch.autograd.Function,), namespace)
    if kind != "traced":
        cls.apply = _bound_apply(cls)
    return cls


def _bound_apply(cls: type) -> Callable:
    """``cls.apply`` without the ``inspect.signature`` binding of arguments torch does on every call (about
    as long as the rest of a small call): `CustomGradient.__call__` has bound them. Otherwise as torch's."""
    engine_apply = torch._C._FunctionBase.__dict__["apply"].__get__(cls, cls)
    are_transforms_active = torch._C._are_functorch_transforms_active
    unwrap_if_dead, tensor = torch._C._functorch.unwrap_if_dead, torch.Tensor

    def apply(*arguments):
        if not are_transforms_active():
            # torch's unwrap_dead_wrappers, inline: a tensor that escaped a torch.func transform is unwrapped
            return engine_apply(*[unwrap_if_dead(a) if isinstance(a, tensor) else a for a in arguments])
        return custom_function_call(cls, *arguments)

    return apply


def _summed_jvp(rules: Sequence[Callable | None], inputs: Sequence[str]) -> Callable:
    """A jvp rule ``(inputs..., output, *tangents)`` summing ``rule_i(tangent_i, output, *inputs)``."""

    def summed(arguments, output, tangents):
        total = None
        for rule, tangent in zip(rules, tangents, strict=True):
            if rule is None or tangent is None:
                continue
            part = rule(tangent, output, *arguments)
            if total is None:
                total = part
            elif isinstance(part, tuple):
                total = tuple(a + b for a, b in zip(total, part, strict=True))
            else:
                total = total + part
        return total if total is not None else _zero_tangent(output)

    names = ", ".join(inputs)
    source = f"def jvp({names}, output, *tangents):\n    return _summed(({names},), output, tangents)\n"
    namespace = {"_summed": summed}
    exec(compile(source, "<customgrad defjvps>", "exec"), namespace)  # noqa: S102 - names are identifiers
    return namespace["jvp"]


def _zero_tangent(output):
    return tuple(torch.zeros_like(o) for o in output) if isinstance(output, tuple) else torch.zeros_like(output)


class CustomGradient:
    """A function with a hand-written backward (and optionally jvp and vmap rules); see `custom_gradient`.

    Call it like the forward. ``autograd_function`` is the generated ``torch.autograd.Function`` that eager
    calls use (with a ``jvp`` staticmethod when there is a jvp rule), once a first call has passed every check
    in its checking twin; ``traced_function`` the twin that calls under ``torch.compile`` use (no ``jvp``,
    which Dynamo refuses in torch 2.13).
    """

    def __init__(self, forward: Callable, *, nondiff_argnums=(), residuals=(), symbolic_zeros: bool = False):
        functools.update_wrapper(self, forward)
        if not isinstance(symbolic_zeros, bool):
            raise UsageError(f"symbolic_zeros must be True or False, got {symbolic_zeros!r}")
        self.signature: ForwardSignature = forward_signature(forward, nondiff_argnums, residuals)
        self._python_signature = inspect.signature(forward)
        self.forward_function = forward
        self.symbolic_zeros = symbolic_zeros
        self.surrogate = False
        self.backward_function: Callable | None = None
        self.jvp_function: Callable | None = None
        self.vmap_function: Callable | None = None
        self.autograd_function: type | None = None
        self.traced_function: type | None = None
        self._eager_apply: Callable = self._no_backward
        self._arity = len(self.signature.inputs)
        self._residual_count = len(self.signature.residuals)

    # -- rules -----------------------------------------------------------------------------------------
    def backward(self, function: Callable | None = None, *, surrogate: bool = False):
        """Decorator: ``function`` is the backward (``@f.backward`` or ``@f.backward(surrogate=True)``).

        Parameters
        ----------
        function : callable
            Receives by parameter name the inputs it needs, ``output``, declared residuals and
            ``needs_input_grad``; its other parameters receive the upstream gradients, one per output.
            Returns one gradient per input (or one per input not in ``nondiff_argnums``), None where there is none.
        surrogate : bool
            The backward is deliberately not the derivative (a straight-through estimator, the blog's
            identity with a 2x gradient): `customgrad.check` then compares against it instead of finite
            differences.
        """
        if not isinstance(surrogate, bool):
            raise UsageError(f"surrogate must be True or False, got {surrogate!r}")

        def register(backward: Callable) -> CustomGradient:
            self._backward_signature = rule_signature(backward, self.signature, "backward")
            self.backward_function, self.surrogate = backward, surrogate
            self._build()
            return self

        return register if function is None else register(function)

    def jvp(self, function: Callable) -> CustomGradient:
        """Decorator: the forward-mode rule, for ``torch.func.jvp``, ``jacfwd`` and ``hessian``.

        It receives by name the inputs, ``output`` and residuals it needs; its other parameters receive the
        tangents of the inputs not in ``nondiff_argnums`` (zeros where an input has none); it returns one
        tangent per output.
        """
        self._jvp_signature = rule_signature(function, self.signature, "jvp")
        self.jvp_function = function
        self._build()
        return self

    def defjvps(self, *rules: Callable | None) -> CustomGradient:
        """Forward mode from one rule per input (JAX's ``defjvps``): ``rule(tangent, output, *inputs)`` gives
        that input's contribution to the output's tangent (a tuple for several outputs); None for an input
        without one. The contributions are summed; inputs in ``nondiff_argnums`` take no rule."""
        inputs = self.signature.inputs
        differentiable = [inputs[i] for i in self.signature.differentiable]
        if len(rules) != len(differentiable):
            raise UsageError(
                f"defjvps of {self.signature.name} got {len(rules)} rule(s): give one per input not in "
                f"nondiff_argnums ({', '.join(differentiable)}), None where an input has none"
            )
        for rule in rules:
            if rule is not None and not callable(rule):
                raise UsageError(f"defjvps of {self.signature.name}: {rule!r} is neither a function nor None")
        return self.jvp(_summed_jvp(rules, inputs))

    def vmap(self, function: Callable) -> CustomGradient:
        """Decorator: a vmap rule ``rule(info, in_dims, *inputs) -> (outputs, out_dims)`` replacing the one
        torch generates (for a forward that torch.vmap cannot batch, such as numpy code)."""
        if not callable(function):
            raise UsageError(f"vmap rule of {self.signature.name} must be a function, got {type(function).__name__}")
        self.vmap_function = function
        self._build()
        return self

    def _build(self) -> None:
        if self.backward_function is None:
            return
        rules = pair_rules(
            self.forward_function,
            self.backward_function,
            self.signature,
            self._backward_signature,
            jvp=self.jvp_function,
            jvp_signature=getattr(self, "_jvp_signature", None),
            symbolic_zeros=self.symbolic_zeros,
        )
        build = functools.partial(build_pair_function, rules, vmap=self.vmap_function, declared=self._declared(rules))
        with_jvp = self.jvp_function is not None
        self._build_fast = functools.partial(build, kind="fast", jvp=with_jvp)
        self._rules = rules
        self.autograd_function = self._build_fast()
        self.traced_function = build(kind="traced", jvp=False)
        self._eager_apply = build(kind="checked", jvp=with_jvp).apply
        rules.verified.append(self._verified)

    def _declared(self, rules: PairRules) -> Callable | None:
        """With ``surrogate=True``: the backward as the declared gradient `customgrad.check` compares against."""
        if not self.surrogate:
            return None

        def declared(inputs, grad_outputs):
            return rules.declared_vjp(inputs, grad_outputs)

        declared.__name__ = f"the backward {self._backward_signature.name} (surrogate=True)"
        return declared

    def _verified(self) -> None:
        """A call passed every check: later eager calls take the fast class (made again to view the inputs
        the forward returns as they are, when the checked calls saw it do so)."""
        if self._rules.returns_input:
            self.autograd_function = self._build_fast()
        self._eager_apply = self.autograd_function.apply

    # -- calling -----------------------------------------------------------------------------------------
    def __call__(self, *arguments, **keywords):
        if keywords or len(arguments) != self._arity:
            arguments = self._bind(arguments, keywords)
        if torch.compiler.is_compiling():
            result = self.traced_function.apply(*arguments)
        else:
            result = self._eager_apply(*arguments)
        if self._residual_count:
            outputs = result[: len(result) - self._residual_count]
            return outputs[0] if len(outputs) == 1 else outputs
        return result

    def _no_backward(self, *arguments):
        raise UsageError(
            f"{self.signature.name} has no backward yet: define one with @{self.__name__}.backward "
            f"(def _({', '.join(self.signature.inputs)}, grad): ...)"
        )

    def _bind(self, arguments: tuple, keywords: dict) -> tuple:
        try:
            bound = self._python_signature.bind(*arguments, **keywords)
        except TypeError as error:
            raise UsageError(
                f"{self.signature.name}({', '.join(self.signature.inputs)}) called with {len(arguments)} "
                f"argument(s){' and ' + ', '.join(keywords) if keywords else ''}: {error}"
            ) from None
        bound.apply_defaults()
        return bound.args

    # -- tools -------------------------------------------------------------------------------------------
    def check(self, *example_inputs, **options):
        """Run `customgrad.check` on this function at ``example_inputs`` (same options)."""
        from .check import check

        return check(self, *example_inputs, **options)

    def as_custom_op(self, qualified_name: str, *, fake: Callable | None = None, outputs: int | None = None):
        """This function as the ``torch.library`` custom operator ``qualified_name`` (see
        `customgrad.custom_op.custom_gradient_op`: ``fake`` implementation, number of ``outputs``)."""
        from .custom_op import custom_gradient_op

        self._require_backward("as_custom_op")
        return custom_gradient_op(self, qualified_name, fake=fake, outputs=outputs)

    def _require_backward(self, what: str) -> None:
        if self.backward_function is None:
            raise UsageError(f"{what}: {self.signature.name} has no backward yet: define one with @...backward")

    def __reduce__(self) -> str:
        """Pickled by reference (module and qualified name), as the function it decorates would be: ``pickle``,
        ``torch.save`` of a model holding it, spawn workers; ``copy.deepcopy`` gives the same object. Its
        forward and generated classes cannot be pickled by value (the name the forward was defined under now
        holds this object)."""
        return self.__qualname__

    def __repr__(self) -> str:
        rules = ", ".join(
            name
            for name, present in (("backward", self.backward_function), ("jvp", self.jvp_function))
            if present is not None
        )
        return f"<custom_gradient {self.signature.name}({', '.join(self.signature.inputs)}) with {rules or 'no rules'}>"


def custom_gradient(
    function: Callable | None = None,
    *,
    nondiff_argnums: Sequence[int | str] = (),
    residuals: Sequence[str] = (),
    symbolic_zeros: bool = False,
):
    """Decorator: the function f(inputs) it decorates becomes differentiable by a backward you write.

    Parameters
    ----------
    function : callable
        The forward, in any Python (torch, numpy, a loop, another library); it returns a tensor or a tuple
        of tensors, followed by the declared residuals.
    nondiff_argnums : sequence of int or str
        Inputs (positions or names) that are not differentiated (JAX's ``nondiff_argnums``): the backward
        returns None for them or leaves them out. Non-tensor arguments never get a gradient.
    residuals : sequence of str
        Names of extra values the forward returns after its outputs, for the backward (by those names).
        They are constants to autograd (a random mask, indices): values computed from the inputs belong
        in the backward, where they stay differentiable.
    symbolic_zeros : bool
        Pass None instead of zeros for the upstream gradient of an unused output and the tangent of an
        input without one (JAX's ``symbolic_zeros``).

    Returns
    -------
    CustomGradient
        Callable like the forward; ``@f.backward`` gives it its backward, ``@f.jvp`` a forward-mode rule,
        ``@f.vmap`` a vmap rule; ``f.check(*examples)`` runs the check battery, ``f.as_custom_op(name)``
        registers it with ``torch.library``.

    Examples
    --------
    >>> @custom_gradient
    ... def p2(x):
    ...     return x**2 + 2 * x
    >>> @p2.backward
    ... def _(x, grad):
    ...     return grad * (2 * x + 2)  # d/dx (x^2 + 2x) = 2x + 2
    """

    def decorate(forward: Callable) -> CustomGradient:
        return CustomGradient(
            forward, nondiff_argnums=nondiff_argnums, residuals=residuals, symbolic_zeros=symbolic_zeros
        )

    return decorate if function is None else decorate(function)
