"""`Layer`: a formula as an ``nn.Module`` whose learnable parameters are the formula's named parameters.

``Layer("x*sigmoid(b*x)", params={"b": 64})`` is a learnable swish with one ``b`` per feature: the
module holds ``b`` as an ``nn.Parameter`` of shape (64,), and its forward is the generated Function
of the formula (`customgrad.function`) applied to the input and the parameters, broadcast as torch
broadcasts. The Function's fused kernels sum the parameters' gradients inside their loop where the
shapes allow (a parameter that varies along the input's trailing dimensions only, such as (C,) on
(N, C), or its leading ones only); other shapes get full-shape gradients summed afterwards.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence

import torch

from .errors import UsageError
from .formula import shorten
from .function import function

#: An initial value: a number, a tensor (broadcast to the parameter's shape), or an in-place
#: initializer such as ``torch.nn.init.uniform_``.
Init = float | torch.Tensor | Callable[[torch.Tensor], object]


class Layer(torch.nn.Module):
    """y = formula(inputs; parameters): a module whose parameters are the formula's named parameters.

    Parameters
    ----------
    formula : str
        The layer's output, e.g. ``"x*sigmoid(b*x)"`` (see `customgrad.formula` for the language).
    params : mapping of str to int or tuple of int
        The learnable parameters: formula name -> shape (``64`` means ``(64,)``, ``()`` one number).
        Each broadcasts against the inputs as in torch: ``(C,)`` on an ``(N, C)`` input is one value
        per feature, ``(C, 1, 1)`` on ``(N, C, H, W)`` one per channel. Every other name of the
        formula is an input of `forward`.
    init : number, tensor, callable or mapping of str to those, default 1.0
        Initial values: one for every parameter, or per parameter name (those not named get 1.0). A
        callable is applied to the parameter in place (``torch.nn.init.normal_``).
    inputs : sequence of str, optional
        Order of `forward`'s inputs. Default: the formula's non-parameter names in order of first
        appearance.
    grads : mapping of str to str, optional
        Declared (surrogate) gradients, as in `customgrad.function`.
    backend : {"auto", "eager", "compile", "cpu", "triton"}
        Where the kernels run, as in `customgrad.function`.
    dtype, device : optional
        Of the parameters (default: torch's default dtype, CPU).

    Notes
    -----
    The module pickles (``torch.save``, ``copy.deepcopy``, DDP) and compiles with
    ``torch.compile(fullgraph=True)``.
    """

    def __init__(
        self,
        formula: str,
        params: Mapping[str, int | Sequence[int]],
        *,
        init: Init | Mapping[str, Init] = 1.0,
        inputs: Sequence[str] | None = None,
        grads: Mapping[str, str] | None = None,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if not isinstance(params, Mapping) or not params:
            raise UsageError(
                f"params must be a dict {{name: shape}} of the formula's learnable names, such as {{'b': 64}}, "
                f"got {params!r}"
            )
        self.formula = formula
        self.function = function(formula, grads=grads, backend=backend)
        self.shapes = {name: _shape(name, value) for name, value in params.items()}
        self.input_names = _input_names(formula, self.function.input_names, self.shapes, inputs)
        for name, shape in self.shapes.items():
            try:
                self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=device)))
            except KeyError:
                raise UsageError(
                    f"parameter name {name!r} is taken by an attribute of the module; rename it in the formula"
                ) from None
        # Where each of the Function's arguments comes from: (True, parameter name) or (False, input index).
        self.arguments = tuple(
            (True, name) if name in self.shapes else (False, self.input_names.index(name))
            for name in self.function.input_names
        )
        self.initialize(init)

    def initialize(self, init: Init | Mapping[str, Init] = 1.0) -> None:
        """Set the parameters to ``init``: one value for all, or per name (those not named get 1.0).

        Not kept on the module (an initializer may be a lambda, which would not pickle)."""
        if isinstance(init, Mapping):
            unknown = sorted(set(init) - set(self.shapes))
            if unknown:
                raise UsageError(f"init names {', '.join(map(repr, unknown))}, not among params {list(self.shapes)}")
        with torch.no_grad():
            for name in self.shapes:
                value = init.get(name, 1.0) if isinstance(init, Mapping) else init
                _initialize(name, getattr(self, name), value)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """formula(inputs; parameters), the inputs in the order of ``input_names``."""
        if len(inputs) != len(self.input_names):
            raise UsageError(
                f"Layer({shorten(self.formula)!r}) takes {len(self.input_names)} input"
                f"{'s' * (len(self.input_names) != 1)} ({', '.join(self.input_names)}), got {len(inputs)}"
            )
        arguments = [
            getattr(self, source) if is_parameter else inputs[source] for is_parameter, source in self.arguments
        ]
        return self.function.apply(*arguments)

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{name}: {tuple(shape)}" for name, shape in self.shapes.items())
        return f"{self.formula!r}, params {{{shapes}}}, inputs ({', '.join(self.input_names)})"


def _shape(name: str, value) -> tuple[int, ...]:
    """A parameter's shape from ``params[name]``: an int n is (n,)."""
    shape = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise UsageError(f"params[{name!r}] must be a shape such as 64 or (64, 1), got {value!r}")
    return tuple(int(n) for n in shape)


def _input_names(formula, names: Sequence[str], shapes: Mapping, inputs: Sequence[str] | None) -> tuple[str, ...]:
    """The layer's inputs: the formula's names that are not parameters, in ``inputs`` order when given."""
    unknown = [name for name in shapes if name not in names]
    if unknown:
        raise UsageError(
            f"params names {', '.join(map(repr, unknown))}, which formula {shorten(formula)!r} does not use "
            f"(its names: {', '.join(names)})"
        )
    free = tuple(name for name in names if name not in shapes)
    if not free:
        raise UsageError(f"every name of {shorten(formula)!r} is a parameter: leave at least one as the input")
    if inputs is None:
        return free
    if isinstance(inputs, str) or sorted(inputs) != sorted(free):
        raise UsageError(f"inputs must order the formula's non-parameter names {list(free)}, got {inputs!r}")
    return tuple(inputs)


def _initialize(name: str, parameter: torch.Tensor, value) -> None:
    """Fill ``parameter`` with ``value``: a number, a tensor broadcast to its shape, or an initializer."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        parameter.fill_(float(value))
    elif isinstance(value, torch.Tensor):
        try:
            parameter.copy_(value.expand(parameter.shape))
        except RuntimeError:
            raise UsageError(
                f"init[{name!r}] has shape {tuple(value.shape)}, which does not broadcast to the parameter's "
                f"{tuple(parameter.shape)}"
            ) from None
    elif callable(value):
        value(parameter)
    else:
        raise UsageError(
            f"init[{name!r}] must be a number, a tensor or an initializer such as torch.nn.init.normal_, got {value!r}"
        )
