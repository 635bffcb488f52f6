"""The runtime rules of a hand-written forward/backward pair: run, save, call back, check what comes back.

`PairRules` holds the user's forward, backward and optional jvp (`customgrad.custom_gradient`) and does
the work of the generated Function's ``forward``, ``setup_context``, ``backward`` and ``jvp``: save only the
inputs, outputs and residuals the backward names; give the backward its values by name; reduce each
gradient to its input's broadcast shape and dtype; raise a `GradientError` naming the function, the
argument and the fix when a rule is broken; mark a backward that leaves autograd once-differentiable.
Under ``torch.compile`` the checks that read version counters or values are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch._C import _functions as _autograd_functions

from .errors import GradientError
from .gradient_signature import ForwardSignature, RuleSignature, check_slot_count

Tensor = torch.Tensor


def _shape(value) -> list[int]:
    return list(value.shape)


class PairRules(NamedTuple):
    """Forward, backward and jvp of one decorated function, with the checks between them and autograd.

    A named tuple of plain values, so that Dynamo can trace the methods the generated Function calls;
    build it with `pair_rules`. ``arguments(saved, grads, needs, count)`` gives the backward's arguments
    from the kept values, the upstream gradients, ``needs_input_grad`` and the number of outputs.
    """

    forward_function: Callable
    backward_function: Callable
    jvp_function: Callable | None
    signature: ForwardSignature
    backward_signature: RuleSignature
    jvp_signature: RuleSignature | None
    symbolic_zeros: bool
    name: str
    input_count: int
    residual_count: int
    differentiable: tuple
    saved_inputs: tuple
    saved_residuals: tuple
    saves_output: bool
    arguments: Callable
    output_start: int
    slot_count: int
    has_rest: bool
    verified: list
    save: Callable
    verdict: list
    returns_input: list

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, arguments: tuple) -> object:
        """The user's forward on ``arguments``, checked: it returns tensors and leaves its inputs as they were."""
        before = _versions(arguments)
        result = self.forward_function(*arguments)
        if _versions(arguments) != before:
            self._raise_modified(arguments, before, "forward")
        outputs = result if isinstance(result, tuple) else (result,)
        count = len(outputs) - self.residual_count
        if count < 1 or any(not isinstance(value, Tensor) for value in outputs[:count]):
            self._raise_bad_outputs(outputs, count)
        if any(value is argument for value in outputs for argument in arguments):
            if not self.returns_input:
                self.returns_input.append(True)  # the eager class made after the checks views them too
            return viewed_inputs(result, arguments)
        return result

    def _raise_bad_outputs(self, outputs: tuple, count: int) -> None:
        if count < 1:
            residuals = ", ".join(self.signature.residuals)
            raise GradientError(
                f"forward {self.name} returned {len(outputs)} value(s), but it declares the residuals ({residuals}): "
                f"return the output(s) followed by the residuals, e.g. return y, {residuals}"
            )
        position, value = next((k, v) for k, v in enumerate(outputs[:count]) if not isinstance(v, Tensor))
        which = f"output {position}" if count > 1 else "its output"
        fix = (
            "return a tuple of tensors"
            if isinstance(value, list)
            else "wrap numbers and arrays with torch.as_tensor(...)"
        )
        raise GradientError(
            f"forward {self.name} returned {type(value).__name__} {_short(value)} as {which}: a custom_gradient "
            f"forward returns tensors (one, or a tuple); {fix}, and return other values as declared residuals "
            "(residuals=('name',))"
        )

    def _raise_modified(self, values: Sequence, before: list[int], role: str, names: Sequence[str] = ()) -> None:
        tensors = [(k, v) for k, v in enumerate(values) if isinstance(v, Tensor)]
        position = next(k for (k, v), b, a in zip(tensors, before, _versions(values), strict=True) if a != b)
        names = names or self.signature.inputs
        function = self.name if role == "forward" else self.backward_signature.name
        raise GradientError(
            f"{role} {function} of {self.name} modified its argument {names[position]!r} in place: autograd "
            f"keeps that tensor, so gradients would be computed from changed values; compute into a new tensor "
            f"(out-of-place ops, or {names[position]}.clone() first)"
        )

    # -- setup_context -------------------------------------------------------------------------------
    def setup_context(self, ctx, inputs: tuple, output) -> None:
        """`save` (the named inputs, residuals and outputs), and the inputs' shapes and dtypes, to reduce
        gradients and name a wrong one. (Eager calls after the first leave reduction to the autograd engine.)"""
        self.save(ctx, inputs, output)
        ctx.like = [(v.shape, v.dtype) if isinstance(v, Tensor) else None for v in inputs]

    # -- backward ------------------------------------------------------------------------------------
    def _saved(self, ctx) -> Sequence:
        saved = ctx.saved_tensors
        others = ctx.others
        return [others.get(k, v) for k, v in enumerate(saved)] if others else saved

    def backward_fast(self, ctx, *grads) -> tuple:
        """The backward of eager calls once one has passed every check: no version counters compared, and the
        autograd engine sums each gradient to its input's shape and casts it to its dtype (as it does for any
        Function); the count and nondiff rules still hold."""
        needs, saved = ctx.needs_input_grad, ctx.saved_tensors
        if ctx.others:
            saved = [ctx.others.get(k, v) for k, v in enumerate(saved)]
        arguments = self.arguments(saved, grads, needs, len(grads) - self.residual_count)
        result = self.backward_function(*arguments)
        if not isinstance(result, tuple):
            result = tuple(result) if isinstance(result, list) else (result,)
        if len(result) != self.input_count:
            result = self._expanded(result)
        if self.signature.nondiff:
            self._check_nondiff(result)
        # The engine ignores a gradient for a tensor that needs none, but refuses one for a non-tensor input.
        gradients = (
            result if all(needs) else tuple([g if need else None for g, need in zip(result, needs, strict=True)])
        )
        if torch.is_grad_enabled() and self._leaves_autograd(arguments, gradients):
            return _once_differentiable(gradients, self.name, arguments)
        return gradients

    def backward_traced(self, ctx, *grads) -> tuple:
        """The backward as ``torch.compile`` traces it: gradients reduced here, nothing read from values."""
        needs = ctx.needs_input_grad
        arguments = self.arguments(self._saved(ctx), grads, needs, len(grads) - self.residual_count)
        return self._gradients(self.backward_function(*arguments), ctx.like, needs, False)

    def _check_nondiff(self, result) -> None:
        for position in self.signature.nondiff:
            if result[position] is not None:
                self._check_gradient(position, result[position], None)

    def backward(self, ctx, *grads) -> tuple:
        """The user's backward on its named values, every rule checked; its gradients reduced, one per input.
        The first call that passes switches the function to `backward_fast` (``verified`` callbacks)."""
        count = len(grads) - self.residual_count
        if count != self.slot_count and not (self.has_rest and count > self.slot_count):
            check_slot_count(self.backward_signature, count, self.signature, "backward", "upstream gradients")
        needs = ctx.needs_input_grad
        arguments = self.arguments(self._saved(ctx), grads, needs, count)
        before = _versions(arguments)
        result = self.backward_function(*arguments)
        if _versions(arguments) != before:
            self._raise_modified(arguments, before, "backward", self._argument_names(count))
        gradients = self._gradients(result, ctx.like, needs, True)
        if torch.is_grad_enabled() and self._leaves_autograd(arguments, gradients):
            gradients = _once_differentiable(gradients, self.name, arguments)
        for verified in self.verified:
            verified()
        return gradients

    def _argument_names(self, count: int) -> list[str]:
        names = list(self.backward_signature.parameters)
        rest = self.backward_signature.rest
        if rest is not None:
            names.remove(rest)
            names += [f"{rest}[{k}]" for k in range(count - len(self.backward_signature.slot_names))]
        return names

    def _gradients(self, result, like: list, needs: tuple, check: bool) -> tuple:
        """One gradient per input: ``result`` expanded over nondiff inputs, checked (every rule with ``check``,
        else only when reducing fails or for a nondiff input), summed to each input's shape, in its dtype."""
        if not isinstance(result, tuple):
            result = tuple(result) if isinstance(result, list) else (result,)
        if len(result) != self.input_count:
            result = self._expanded(result)
        gradients = []
        for position, gradient in enumerate(result):
            if gradient is None or like[position] is None:
                gradients.append(None)  # a number or other non-tensor input takes no gradient
                continue
            if check or position in self.signature.nondiff:
                self._check_gradient(position, gradient, like[position])
            if not needs[position]:
                gradients.append(None)
                continue
            shape, dtype = like[position]
            try:
                if gradient.shape != shape:
                    gradient = gradient.sum_to_size(shape)
                if gradient.dtype != dtype:
                    gradient = gradient.to(dtype)
            except (AttributeError, RuntimeError):
                self._check_gradient(position, gradient, like[position])
                raise
            gradients.append(gradient)
        return tuple(gradients)

    def _expanded(self, result: tuple) -> tuple:
        """A backward's gradients for the differentiable inputs only, as one per input (None for nondiff): a
        tuple, what the autograd engine takes (a list would be one output to it)."""
        differentiable = self.differentiable
        if len(result) != len(differentiable):
            raise self._count_error(len(result))
        full = [None] * self.input_count
        for position, gradient in zip(differentiable, result, strict=True):
            full[position] = gradient
        return tuple(full)

    def _count_error(self, returned: int) -> GradientError:
        inputs = self.signature.inputs
        differentiable = [inputs[i] for i in self.signature.differentiable]
        choices = f"one per input ({', '.join(inputs)})"
        if len(differentiable) != len(inputs):
            choices += f" or one per input not in nondiff_argnums ({', '.join(differentiable)})"
        return GradientError(
            f"backward {self.backward_signature.name} of {self.name} returned {returned} gradient(s): return "
            f"{choices}, None where there is none"
        )

    def _check_gradient(self, position: int, gradient, like: tuple) -> None:
        name = self.signature.inputs[position]
        where = f"backward {self.backward_signature.name} of {self.name}"
        if position in self.signature.nondiff:
            raise GradientError(
                f"{where} returned a gradient for {name!r}, which is declared in nondiff_argnums: return None for it "
                f"(or one gradient per differentiable input), or remove {name!r} from nondiff_argnums"
            )
        if not isinstance(gradient, Tensor):
            raise GradientError(
                f"{where} returned {type(gradient).__name__} {_short(gradient)} as the gradient of {name!r}: return a "
                "tensor (torch.as_tensor(...) for numbers and arrays) or None"
            )
        shape = like[0] if like is not None else gradient.shape
        if gradient.shape != shape and not _reducible(gradient.shape, shape):
            raise GradientError(
                f"{where} returned a gradient of shape {_shape(gradient)} for {name!r}, whose shape is {list(shape)}: "
                f"it cannot be summed to that shape; return a gradient of {name!r}'s shape or of the broadcast "
                "shape of the output"
            )

    def _leaves_autograd(self, arguments: Sequence, gradients: tuple) -> bool:
        """Whether a double-backward call's gradients were computed outside autograd (numpy, detach, no_grad).

        Not under torch.func transforms: there requires_grad says nothing about the transforms' own levels.

        A backward is linear in its upstream gradients: a nonzero gradient that does not require grad while
        they do left autograd (checked on every call). Its dependence on the saved values is probed once
        (`_probe_verdict`), the verdict kept for later calls.
        """
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return False
        slots = self._slot_positions(len(arguments))
        if any(arguments[k].requires_grad for k in slots if isinstance(arguments[k], Tensor)) and any(
            not g.requires_grad and g.is_floating_point() and bool(g.any()) for g in gradients if isinstance(g, Tensor)
        ):
            return True
        if self.verdict:
            return self.verdict[0]
        saved = [
            k
            for k, a in enumerate(arguments)
            if k not in slots and isinstance(a, Tensor) and a.is_floating_point() and a.requires_grad
        ]
        verdict = self._probe_verdict(arguments, saved) if saved else None
        if verdict is not None:
            self.verdict.append(verdict)
        return bool(verdict)

    def _probe_verdict(self, arguments: Sequence, saved: list[int]) -> bool | None:
        """Run the backward again with the saved values at ``saved`` as fresh leaves: gradients that do not
        require grad must not change when those values are scaled by 1 + sqrt(eps) (a comparison such as
        ``x > 0`` does not; numpy of ``x`` does). None: undecided (the saved values are zero)."""
        detached = [a.detach() if isinstance(a, Tensor) else a for a in arguments]
        probe = self._probe(detached, saved, 1.0)
        constant = [k for k, g in enumerate(probe) if isinstance(g, Tensor) and not g.requires_grad and bool(g.any())]
        if not constant:
            return False
        if not any(bool(detached[k].any()) for k in saved):
            return None
        moved = self._probe(detached, saved, None)
        return any(not torch.equal(probe[k], moved[k]) for k in constant)

    def _slot_positions(self, count: int) -> set[int]:
        slots = {k for k, (kind, _) in enumerate(self.backward_signature.sources) if kind == "slot"}
        return slots | set(range(len(self.backward_signature.sources), count))

    def _probe(self, arguments: list, saved: list[int], scale: float | None) -> tuple:
        """The backward with the saved values at ``saved`` as fresh leaves, scaled by ``scale`` (None: by
        1 + sqrt(eps) of their dtype)."""
        values = list(arguments)
        for k in saved:
            factor = 1.0 + torch.finfo(values[k].dtype).eps ** 0.5 if scale is None else scale
            values[k] = (values[k] * factor).requires_grad_()
        result = self.backward_function(*values)
        return tuple(result) if isinstance(result, (tuple, list)) else (result,)

    # -- forward mode ----------------------------------------------------------------------------------
    def save_for_jvp(self, ctx, inputs: tuple, output) -> None:
        """Keep the inputs and outputs for the jvp rule: tensors by ``save_for_forward`` (an output kept as a
        ctx attribute would hold its own graph node in a reference cycle), other values as they are."""
        values = (*inputs, *(output if isinstance(output, tuple) else (output,)))
        ctx.save_for_forward(*[v for v in values if isinstance(v, Tensor)])
        ctx.forward_values = [(False, v) if not isinstance(v, Tensor) else (True, None) for v in values]

    def jvp(self, ctx, tangents: tuple):
        """The user's jvp rule on the inputs, output and the tangents of the inputs not in nondiff_argnums."""
        rule = self.jvp_signature
        tensors = iter(ctx.saved_tensors)
        values = [next(tensors) if is_tensor else value for is_tensor, value in ctx.forward_values]
        inputs, outputs = values[: self.input_count], tuple(values[self.input_count :])
        count = len(outputs) - self.residual_count
        slots = []
        for position in self.signature.differentiable:
            tangent, value = tangents[position], inputs[position]
            if tangent is None and isinstance(value, Tensor) and not self.symbolic_zeros:
                tangent = torch.zeros_like(value)
            slots.append(tangent)
        check_slot_count(rule, len(slots), self.signature, "jvp", "tangents")
        arguments = []
        for kind, index in rule.sources:
            if kind == "slot":
                arguments.append(slots[index])
            elif kind == "input":
                arguments.append(inputs[index])
            elif kind == "residual":
                arguments.append(outputs[count + index])
            else:
                arguments.append(outputs[0] if count == 1 else outputs[:count])
        if rule.rest is not None:
            arguments.extend(slots[len(rule.slot_names) :])
        result = self.jvp_function(*arguments)
        result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        if len(result) != count:
            raise GradientError(
                f"jvp {rule.name} of {self.name} returned {len(result)} tangent(s) for {count} output(s): return one "
                "tangent per output, in order"
            )
        result = result + (None,) * self.residual_count
        return result[0] if len(result) == 1 else result

    # -- the declared (surrogate) gradient, for the check battery --------------------------------------
    def declared_vjp(self, inputs: Sequence, grad_outputs: Sequence) -> list:
        """The backward called directly (no autograd) on ``inputs``: the gradient this pair declares."""
        raw = self.forward_function(*inputs)
        outputs = tuple(raw) if isinstance(raw, (tuple, list)) else (raw,)
        count = len(outputs) - self.residual_count
        grads = list(grad_outputs) + [torch.zeros_like(o) for o in outputs[len(grad_outputs) : count]]
        kept = [inputs[i] for i in self.saved_inputs] + [outputs[count + r] for r in self.saved_residuals]
        kept += list(outputs[:count]) if self.saves_output else []
        needs = tuple(
            isinstance(v, Tensor) and v.is_floating_point() and i not in self.signature.nondiff
            for i, v in enumerate(inputs)
        )
        like = [(v.shape, v.dtype) if isinstance(v, Tensor) else None for v in inputs]
        result = self.backward_function(*self.arguments(kept, grads, needs, len(grads)))
        return list(self._gradients(result, like, needs, check=True))


def pair_rules(
    forward: Callable,
    backward: Callable,
    forward_signature: ForwardSignature,
    backward_signature: RuleSignature,
    *,
    jvp: Callable | None = None,
    jvp_signature: RuleSignature | None = None,
    symbolic_zeros: bool = False,
) -> PairRules:
    """The rules of a forward/backward pair: what setup_context keeps (the inputs the backward names, then
    the residuals it names, then the outputs if it names ``output``) and where each backward argument is."""
    saved_inputs = tuple(sorted(set(backward_signature.uses("input"))))
    saved_residuals = tuple(sorted(set(backward_signature.uses("residual"))))
    where = {("input", i): k for k, i in enumerate(saved_inputs)}
    where.update({("residual", r): len(saved_inputs) + k for k, r in enumerate(saved_residuals)})
    plan = tuple(
        ("saved", where[kind, index]) if kind in ("input", "residual") else (kind, index)
        for kind, index in backward_signature.sources
    )
    output_start = len(saved_inputs) + len(saved_residuals)
    return PairRules(
        forward,
        backward,
        jvp,
        forward_signature,
        backward_signature,
        jvp_signature,
        symbolic_zeros,
        forward_signature.name,
        len(forward_signature.inputs),
        len(forward_signature.residuals),
        forward_signature.differentiable,
        saved_inputs,
        saved_residuals,
        bool(backward_signature.uses("output")),
        _argument_builder(plan, output_start, len(backward_signature.slot_names), backward_signature.rest),
        output_start,
        len(backward_signature.slot_names),
        backward_signature.rest is not None,
        [],
        _saver(
            saved_inputs,
            saved_residuals,
            bool(backward_signature.uses("output")),
            len(forward_signature.residuals),
            symbolic_zeros,
        ),
        [],  # whether the backward leaves autograd, once probed
        [],  # whether the forward returned one of its inputs as it is (seen by the checked forward)
    )


def viewed_inputs(result, arguments: Sequence):
    """``result`` with every value that is one of ``arguments`` itself replaced by a view of it: autograd
    refuses to save an input a Function returns as it is (an identity forward whose backward names ``x``)."""
    if isinstance(result, tuple):
        return tuple(viewed_inputs(value, arguments) for value in result)
    if isinstance(result, Tensor) and any(result is argument for argument in arguments):
        return result.view_as(result)
    return result


def _argument_builder(plan: tuple, output_start: int, slot_count: int, rest: str | None) -> Callable:
    """``arguments(saved, grads, needs, count)``: the backward's positional arguments, as generated code
    (the backward's hottest path; Dynamo traces it as a plain function)."""
    parts = []
    for kind, index in plan:
        if kind == "saved":
            parts.append(f"saved[{index}]")
        elif kind == "slot":
            parts.append(f"grads[{index}]")
        elif kind == "output":
            parts.append(f"_one_or_tuple(saved[{output_start}:])")
        else:
            parts.append("needs")
    if rest is not None:
        parts.append(f"*grads[{slot_count}:count]")
    source = f"def arguments(saved, grads, needs, count):\n    return ({', '.join(parts)}{',' if parts else ''})\n"
    namespace = {"_one_or_tuple": _one_or_tuple}
    exec(compile(source, "<customgrad backward arguments>", "exec"), namespace)  # noqa: S102 - no user text
    return namespace["arguments"]


def _saver(inputs: tuple, residuals: tuple, outputs: bool, residual_count: int, symbolic_zeros: bool) -> Callable:
    """``save(ctx, inputs, output)``, generated code: save the named inputs, the named residuals (after the
    outputs), then all outputs if the backward names ``output`` (non-tensors as plain values, `_save_values`);
    residuals are marked non-differentiable."""
    lines = ["def save(ctx, inputs, output):"]
    if residual_count or outputs:
        lines += ["    outputs = output if isinstance(output, tuple) else (output,)"]
        lines += [f"    count = len(outputs) - {residual_count}"]
    if residual_count:
        lines += ["    residuals = [r for r in outputs[count:] if isinstance(r, Tensor)]"]
        lines += ["    if residuals:", "        ctx.mark_non_differentiable(*residuals)"]
    parts = [f"inputs[{i}]" for i in inputs] + [f"outputs[count + {r}]" for r in residuals]
    kept = f"({', '.join(parts)}{',' if parts else ''})" + (" + tuple(outputs[:count])" if outputs else "")
    lines += [f"    kept = {kept}", "    for value in kept:"]
    lines += ["        if value is not None and not isinstance(value, Tensor):"]
    lines += ["            _save_values(ctx, kept)", "            break"]
    lines += ["    else:", "        ctx.save_for_backward(*kept)", "        ctx.others = None"]
    if symbolic_zeros:
        lines += ["    ctx.set_materialize_grads(False)"]
    namespace = {"Tensor": Tensor, "_save_values": _save_values}
    exec(compile("\n".join(lines) + "\n", "<customgrad setup_context>", "exec"), namespace)  # noqa: S102
    return namespace["save"]


def _save_values(ctx, kept: tuple) -> None:
    """Save the tensors among ``kept``; keep the other values (numbers, strings) on ctx as they are."""
    ctx.save_for_backward(*[v if isinstance(v, Tensor) else None for v in kept])
    ctx.others = {k: v for k, v in enumerate(kept) if v is not None and not isinstance(v, Tensor)}


def _versions(values: Sequence) -> list[int]:
    """The version counter of each tensor among ``values``; -1 for an inference tensor, which has none (made
    under ``torch.inference_mode``, where nothing is recorded for autograd to be misled by)."""
    return [-1 if v.is_inference() else v._version for v in values if isinstance(v, Tensor)]


def _one_or_tuple(values: Sequence):
    return values[0] if len(values) == 1 else tuple(values)


def _reducible(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a gradient of ``shape`` sums to ``target`` (``target`` broadcasts to ``shape``)."""
    if len(target) > len(shape):
        return False
    return all(t in (1, s) for t, s in zip(reversed(target), reversed(shape), strict=False))


def _once_differentiable(gradients: tuple, name: str, arguments: Sequence) -> tuple:
    """``gradients`` behind a node that raises on differentiation (as ``@once_differentiable`` does), whose
    inputs include the backward's arguments that require grad: a second derivative with respect to any of
    them passes through it (torch's fresh leaves would leave it off that path, giving None)."""
    message = (
        f"{name}'s backward is not differentiable (it leaves autograd: numpy, .detach(), .item() or torch.no_grad), so "
        "customgrad marked it once_differentiable: a second derivative would silently be zero. Write the backward with "
        "torch operations on its arguments to get second derivatives"
    )
    present = [g.detach().requires_grad_() for g in gradients if g is not None]
    connected = [a for a in arguments if isinstance(a, Tensor) and a.requires_grad]
    error = _autograd_functions.DelayedError(message.encode(), len(present) + len(connected))
    wrapped = error(*present, *connected)
    wrapped = iter(wrapped if isinstance(wrapped, tuple) else (wrapped,))
    return tuple(None if g is None else next(wrapped) for g in gradients)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
