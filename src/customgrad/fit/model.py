"""The model of a fit: residuals r(theta) = (f(x; theta) - y) / sigma and their exact Jacobian.

A model is a formula (``"b1*(1 - exp(-b2*x))"``) or a Python callable ``f(x, **params)`` built from
torch ops and autograd Functions. Free parameters form the vector ``theta``; fixed ones are constants;
bounded ones are optimised in an unbounded internal coordinate (MINUIT's transforms), so every solver
sees an unconstrained problem.

A formula's Jacobian is generated symbolically with the residuals, in one compiled function (see
`formula_model`). Any other model's comes from one forward and one backward pass: each parameter is
expanded to one copy per data point, so d r_i / d copy_i of parameter j is J[i, j] when the model is
pointwise in the data (each f_i depends on row i only). That is checked once, against an ordinary
backward pass; a model that mixes rows gets its Jacobian row by row instead.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FitError, UsageError
from .formula_model import formula_model

# The formula language's constants (`functions.CONSTANTS`), as a message describes them: a parameter
# or data column of that name would never be seen by the formula.
CONSTANT_NAMES = {"E": "Euler's number e = 2.71828...", "pi": "the number pi = 3.14159..."}


# A bounded parameter whose transform's slope is below this share of its largest is held at its bound.
HELD = 1e-3


@dataclass(frozen=True)
class ParameterSpec:
    """A parameter's initial value, bounds ``lower <= value <= upper`` and whether it is held fixed."""

    name: str
    value: float
    lower: float = -math.inf
    upper: float = math.inf
    fixed: bool = False

    @property
    def bounded(self) -> bool:
        """True when either bound is finite."""
        return math.isfinite(self.lower) or math.isfinite(self.upper)


def plain_params(params):
    """``params`` as customgrad spells them: lmfit's ``vary`` becomes ``fixed = not vary``, and an
    ``lmfit.Parameters`` (name -> Parameter) becomes name -> {"value", "min", "max", "vary"} or {"expr"}.

    Anything else is returned as given (`parameter_specs` and `ties.split_ties` report it).
    """
    if not isinstance(params, Mapping):
        return params
    plain = {}
    for name, given in params.items():
        if not isinstance(given, Mapping) and all(hasattr(given, key) for key in ("value", "vary", "expr", "min")):
            # an lmfit.Parameter
            given = (
                {"expr": given.expr} if given.expr else {k: getattr(given, k) for k in ("value", "min", "max", "vary")}
            )
        plain[name] = _vary_as_fixed(name, given) if isinstance(given, Mapping) and "vary" in given else given
    return plain


def _vary_as_fixed(name: str, given: Mapping) -> dict:
    """lmfit's ``{"vary": v}`` as ``{"fixed": not v}`` (a tied parameter's ``vary=False`` is dropped)."""
    given = dict(given)
    vary = given.pop("vary")
    if not isinstance(vary, (bool, np.bool_)):
        raise UsageError(f"parameter {name!r}: 'vary' must be True or False, got {vary!r}")
    if "expr" in given:
        if vary:
            raise UsageError(
                f"parameter {name!r} is tied by 'expr' and has vary=True: a tied parameter takes its value from "
                "the expression; drop 'vary' (or the expr)"
            )
    elif "fixed" in given and bool(given["fixed"]) == bool(vary):
        raise UsageError(f"parameter {name!r}: 'vary' ({vary}) and 'fixed' ({given['fixed']}) disagree; give one")
    else:
        given["fixed"] = not vary
    return given


def parameter_specs(params: Mapping, bounds: Mapping | None) -> list[ParameterSpec]:
    """Read ``params`` (name -> value, or name -> {"value", "min", "max", "fixed"}) and ``bounds``."""
    if not isinstance(params, Mapping) or not params:
        raise UsageError("params must be a non-empty dict of name -> initial value, e.g. {'a': 0.0, 'b': 1.0}")
    bounds = dict(bounds or {})
    unknown = set(bounds) - set(params)
    if unknown:
        raise UsageError(
            f"bounds given for {sorted(unknown)}, which are not parameters (parameters: {', '.join(params)})"
        )
    specs = []
    for name, given in params.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"parameter name {name!r} is not a name: use letters, digits and '_', such as 'b1'")
        spec = dict(given) if isinstance(given, Mapping) else {"value": given}
        extra = set(spec) - {"value", "min", "max", "fixed"}
        if extra:
            raise UsageError(
                f"parameter {name!r}: unknown keys {sorted(extra)} (allowed: value, min, max, fixed or vary; or expr)"
            )
        if spec.get("value") is None:
            raise UsageError(f"parameter {name!r} has no initial value: give one, e.g. params={{{name!r}: 1.0}}")
        value = _finite(spec["value"], f"initial value of parameter {name!r}")
        pair = bounds.get(name, (spec.get("min"), spec.get("max")))
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable) or len(pair := list(pair)) != 2:
            raise UsageError(
                f"bounds for parameter {name!r} must be a pair (lower, upper), None for an open side, got {pair!r}"
            )
        lower, upper = pair
        lower = -math.inf if lower is None else _bound(lower, f"lower bound of parameter {name!r}")
        upper = math.inf if upper is None else _bound(upper, f"upper bound of parameter {name!r}")
        if not lower < upper:
            raise UsageError(f"parameter {name!r}: lower bound {lower} must be below upper bound {upper}")
        if not lower <= value <= upper:
            raise UsageError(
                f"parameter {name!r}: initial value {value} lies outside its bounds "
                f"[{lower}, {upper}]; start inside them"
            )
        fixed = spec.get("fixed", False)
        if not isinstance(fixed, (bool, np.bool_)):
            raise UsageError(f"parameter {name!r}: 'fixed' must be True or False, got {fixed!r}")
        specs.append(ParameterSpec(name, value, lower, upper, bool(fixed)))
    if all(spec.fixed for spec in specs):
        raise UsageError("every parameter is fixed: leave at least one free to fit")
    return specs


def batch_parameter_specs(params: Mapping, bounds: Mapping | None, batch: int) -> tuple[list, dict]:
    """Specs (shared bounds, fixed flags) and the initial values per curve, name -> array (B,)."""
    params = plain_params(params)
    if not isinstance(params, Mapping) or not params:
        raise UsageError("params must be a non-empty dict of name -> initial value(s), e.g. {'a': 0.0}")
    initial, placeholders = {}, {}
    for name, given in params.items():
        spec = dict(given) if isinstance(given, Mapping) else {"value": given}
        if "expr" in spec:
            raise UsageError(
                f"parameter {name!r} is tied by 'expr' ({spec['expr']!r}): fit_batch does not take tied "
                "parameters; write the expression into the model instead (or fit each curve with fit())"
            )
        value = spec.get("value")
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if value is not None and array.ndim == 1:
            if len(array) != batch or array.dtype.kind not in "iuf":
                raise UsageError(
                    f"initial values of parameter {name!r} must be a number or {batch} numbers (one per curve), "
                    f"got shape {array.shape}"
                )
            spec["value"] = float(array[0])
            initial[name] = array.astype(np.float64)
        placeholders[name] = spec
    specs = parameter_specs(placeholders, bounds)
    for spec in specs:
        values = initial.setdefault(spec.name, np.full(batch, spec.value))
        outside = ~np.isfinite(values) | (values < spec.lower) | (values > spec.upper)
        if outside.any():
            curve = int(np.flatnonzero(outside)[0])
            raise UsageError(
                f"parameter {spec.name!r}: initial value {values[curve]} of curve {curve} is not finite or lies "
                f"outside its bounds [{spec.lower}, {spec.upper}]"
            )
    return specs, initial


def curve_specs(specs: list[ParameterSpec], initial: dict, i: int) -> list[ParameterSpec]:
    """The parameter specs of curve ``i`` alone."""
    return [
        ParameterSpec(spec.name, float(initial[spec.name][i]), spec.lower, spec.upper, spec.fixed) for spec in specs
    ]


def _bound(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number or None, got {value!r}") from None
    if math.isnan(number):
        raise UsageError(f"{what} is NaN: give a number, or None for no bound")
    return number


def _finite(value, what: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"{what} must be finite, got {number}")
    return number


# Internal (unbounded) <-> external (bounded) coordinates, one row per kind of bound (MINUIT, lmfit), for
# one fit's parameters and a batch's alike (native_lm.c's `to_external` is the compiled twin).
# Internal coordinates start at least this far from a bound's (`to_internal`): the value moves by at most
# 5e-13 (one-sided) or 2.5e-13 of the range, and the slope d external / d internal is ~FOLD, not 0.
FOLD = 1e-6


def to_external(spec: ParameterSpec, t: torch.Tensor) -> torch.Tensor:
    """The value of bounded parameter ``spec`` at internal coordinates ``t``, elementwise."""
    lo, hi = spec.lower, spec.upper
    if math.isfinite(lo) and math.isfinite(hi):
        return lo + (hi - lo) * (torch.sin(t) + 1) / 2
    if math.isfinite(lo):
        return lo - 1 + torch.sqrt(t * t + 1)
    return hi + 1 - torch.sqrt(t * t + 1)


def external_slope(spec: ParameterSpec, t: torch.Tensor | float) -> torch.Tensor | float:
    """d external / d internal of `to_external`, elementwise (the chain rule on Jacobian columns); of a
    tensor, or of a float (numpy: a fraction of a torch call, for one fit's few parameters)."""
    lo, hi = spec.lower, spec.upper
    xp = torch if isinstance(t, torch.Tensor) else np
    if math.isfinite(lo) and math.isfinite(hi):
        return (hi - lo) * xp.cos(t) / 2
    slope = t / xp.sqrt(t * t + 1)
    return slope if math.isfinite(lo) else -slope


def held_at_bounds(theta: torch.Tensor, bounded: list[tuple[int, ParameterSpec]]) -> torch.Tensor:
    """(..., p) bool: the bounded parameters held at a bound, where d value / d internal of ``theta``
    (..., p) is below `HELD` of its largest (|cos t| for two bounds, |t| / sqrt(t^2 + 1) for one): a value
    within about 1e-7 of the bound's range, whose internal Jacobian column is ~0 though it still matters."""
    held = torch.zeros(theta.shape, dtype=torch.bool, device=theta.device)
    for i, spec in bounded:
        t = theta[..., i]
        both = math.isfinite(spec.lower) and math.isfinite(spec.upper)
        held[..., i] = (torch.cos(t) if both else t / torch.sqrt(t * t + 1)).abs() < HELD
    return held


def to_internal(spec: ParameterSpec, values: np.ndarray) -> np.ndarray:
    """The internal coordinates of bounded parameter ``spec``'s ``values``, elementwise (`to_external`'s inverse),
    at least `FOLD` from a bound's (where d external / d internal = 0: LM could never move a start there)."""
    lo, hi = spec.lower, spec.upper
    if math.isfinite(lo) and math.isfinite(hi):
        return np.clip(
            np.arcsin(np.clip(2 * (values - lo) / (hi - lo) - 1, -1.0, 1.0)), FOLD - np.pi / 2, np.pi / 2 - FOLD
        )
    if math.isfinite(lo):
        return np.maximum(np.sqrt((values - lo + 1) ** 2 - 1), FOLD)
    return np.maximum(np.sqrt((hi - values + 1) ** 2 - 1), FOLD)


def external_values(theta: torch.Tensor, bounded: list[tuple[int, ParameterSpec]], dim: int) -> torch.Tensor:
    """Parameter values from internal coordinates ``theta``, the parameters along ``dim``; ``bounded``:
    (position, spec) of each bounded one (the others are their own values)."""
    if not bounded:
        return theta
    parts = list(theta.unbind(dim))
    for i, spec in bounded:
        parts[i] = to_external(spec, parts[i])
    return torch.stack(parts, dim)


class Model:
    """Residuals r(theta) = (f(x; theta) - y) / sigma of a fit, with their exact Jacobian.

    Parameters
    ----------
    function : callable
        ``function(data, values)`` -> predictions, where ``data`` maps data names to tensors and
        ``values`` maps every parameter name to a tensor (scalar, or one copy per data point).
    data : dict of str -> Tensor
        Predictors, each of shape (n,).
    y, sigma : Tensor
        Observations (n,) and their standard deviations (n,) or None.
    specs : list of ParameterSpec
        All parameters, free and fixed.
    """

    def __init__(
        self,
        function: Callable,
        data: dict[str, torch.Tensor],
        y: torch.Tensor,
        sigma: torch.Tensor | None,
        specs: list[ParameterSpec],
        text: str,
    ):
        self.function = function
        self.data = data
        self.y = y
        self.inverse_sigma = None if sigma is None else 1 / sigma
        self.specs = specs
        self.text = text
        self.free = [spec for spec in specs if not spec.fixed]
        self.names = tuple(spec.name for spec in self.free)
        self.fixed = {
            spec.name: torch.tensor(spec.value, dtype=y.dtype, device=y.device) for spec in specs if spec.fixed
        }
        self.bounded = [(i, spec) for i, spec in enumerate(self.free) if spec.bounded]
        self.pointwise = True
        # Formula models: residuals and Jacobian rows from one generated function (None: autograd),
        # in numpy for float64 on the CPU (a numpy call costs a fraction of a torch dispatch).
        linearization = getattr(function, "linearization", None)
        self.rows = linearization(self.names) if linearization is not None else None
        on_cpu = y.device.type == "cpu" and y.dtype == torch.float64
        self._numpy_rows = linearization(self.names, "numpy") if self.rows is not None and on_cpu else None
        self._numpy_value = function.values("numpy") if self._numpy_rows is not None else None
        if self._numpy_value is None:
            self._numpy_rows = None
        # A formula's arguments in call order: a data column or fixed value, or the index of a free one.
        position = {name: i for i, name in enumerate(self.names)}
        self._slots = [
            (data[n], None) if n in data else (self.fixed.get(n), position.get(n))
            for n in getattr(function, "names", ())
        ]
        if self._numpy_rows is not None:
            self._numpy_slots = [(value if index is not None else value.numpy(), index) for value, index in self._slots]
            self._y_array = y.numpy()
            self._weights = None if self.inverse_sigma is None else self.inverse_sigma.numpy()
        self._ones = torch.ones_like(y)

    @property
    def size(self) -> int:
        """Number of data points n."""
        return self.y.shape[-1]

    @functools.cached_property
    def weighted_y_norm(self) -> float:
        """||y / sigma||, without overflow or underflow (`statistics.safe_norm`)."""
        from .statistics import safe_norm

        return safe_norm(self.y if self.inverse_sigma is None else self.y * self.inverse_sigma)

    def initial_theta(self) -> torch.Tensor:
        """Internal coordinates of the initial values, shape (p,)."""
        values = [float(to_internal(s, np.float64(s.value))) if s.bounded else s.value for s in self.free]
        return torch.tensor(values, dtype=self.y.dtype, device=self.y.device)

    def external(self, theta: torch.Tensor) -> torch.Tensor:
        """Parameter values from internal coordinates (rows of ``theta``: one per free parameter)."""
        return external_values(theta, self.bounded, 0)

    def predict(self, values: torch.Tensor) -> torch.Tensor:
        """Model predictions f(x; values) for external parameter values (p,) or (p, n)."""
        if self._numpy_value is not None and values.dim() == 1 and not values.requires_grad:
            out = np.empty((1, self.size))
            self._numpy_value(out, *self._numpy_arguments(values))
            return torch.from_numpy(out[0])
        named = dict(zip(self.names, values.unbind(0), strict=True))
        named.update(self.fixed)
        return torch.broadcast_to(self.function(self.data, named), self.y.shape)

    def _arguments(self, values: torch.Tensor) -> list:
        parts = values.unbind(0)
        return [value if index is None else parts[index] for value, index in self._slots]

    def _numpy_arguments(self, values: torch.Tensor) -> list:
        parts = list(values.numpy())
        return [value if index is None else parts[index] for value, index in self._numpy_slots]

    def residuals(self, theta: torch.Tensor) -> torch.Tensor:
        """r = (f(x; theta) - y) / sigma at internal coordinates ``theta``, without autograd."""
        if self._numpy_rows is not None:
            out = np.empty((1, self.size))
            self._numpy_value(out, *self._numpy_arguments(self.external(theta)))
            r = out[0]
            r -= self._y_array
            if self._weights is not None:
                r *= self._weights
            return torch.from_numpy(r)
        if self.rows is not None:  # a formula: no autograd in sight, and no per-call dict of names
            r = self.function.evaluate(*self._arguments(self.external(theta))) - self.y
            return r if self.inverse_sigma is None else r * self.inverse_sigma
        with torch.no_grad():
            r = self.predict(self.external(theta)) - self.y
            return r if self.inverse_sigma is None else r * self.inverse_sigma

    def augmented(self, theta: torch.Tensor) -> torch.Tensor:
        """[J | r], shape (n, p + 1): the Jacobian with the residuals as a last column."""
        if self.rows is not None:
            return self._symbolic_block(theta, external=False).T
        r, jacobian = self.jacobian(theta)
        return torch.cat([jacobian, r.unsqueeze(-1)], dim=-1)

    def jacobian(self, theta: torch.Tensor, *, external: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals r (n,) and Jacobian J = dr/dtheta (n, p), exact: symbolic for a formula, else
        by one backward pass.

        With ``external`` the Jacobian is taken with respect to the parameter values themselves
        (for standard errors), not the internal coordinates of bounded parameters.
        """
        if self.rows is not None:
            block = self._symbolic_block(theta, external)
            return block[-1], block[:-1].T
        if not self.pointwise:
            return self._jacobian_by_rows(theta, external)
        copies = theta.detach().unsqueeze(-1).expand(*theta.shape, self.size).clone().requires_grad_()
        with torch.enable_grad():
            values = copies if external else self.external(copies)
            r = self.predict(values) - self.y
            if self.inverse_sigma is not None:
                r = r * self.inverse_sigma
            if not r.requires_grad:
                return r.detach(), torch.zeros(self.size, len(self.names), dtype=r.dtype, device=r.device)
            (grad,) = torch.autograd.grad(r, copies, self._ones, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(copies)
        return r.detach(), grad.transpose(-1, -2)

    def _symbolic_block(self, theta: torch.Tensor, external: bool) -> torch.Tensor:
        # One generated call writes df/db_j into rows 0..p-1 and f into row p of a (p+1, n) block,
        # which transposed is [J | r] in the column-major layout LAPACK's QR wants.
        p = len(self.names)
        values = theta if external else self.external(theta)
        if self._numpy_rows is not None:
            array = np.empty((p + 1, self.size))
            self._numpy_rows(array, *self._numpy_arguments(values))
            array[p] -= self._y_array
            if self._weights is not None:
                array *= self._weights
            block = torch.from_numpy(array)
        else:
            block = self.y.new_empty(p + 1, self.size)
            self.rows(block, *self._arguments(values))
            block[p] -= self.y
            if self.inverse_sigma is not None:
                block *= self.inverse_sigma
        if self.bounded and not external:
            internal = theta.tolist()
            for i, spec in self.bounded:
                block[i] *= float(external_slope(spec, internal[i]))
        return block

    def check_pointwise(self, theta: torch.Tensor) -> None:
        """Compare J^T v of the expanded-copies Jacobian with a plain backward pass, once."""
        if self.rows is not None:
            return  # a formula is pointwise by construction
        r, jacobian = self.jacobian(theta)
        leaf = theta.detach().clone().requires_grad_()
        v = torch.linspace(-1.0, 2.0, self.size, dtype=r.dtype, device=r.device)
        with torch.enable_grad():
            out = self.predict(self.external(leaf)) - self.y
            if self.inverse_sigma is not None:
                out = out * self.inverse_sigma
            if not out.requires_grad:
                return
            (expected,) = torch.autograd.grad(out, leaf, v, allow_unused=True)
        if expected is None:
            return
        got = jacobian.T @ v
        scale = expected.abs() + (jacobian.abs().T @ v.abs()) + 1e-300
        if not bool((((got - expected).abs() / scale) <= 1e-8).all()):
            self.pointwise = False

    def _jacobian_by_rows(self, theta: torch.Tensor, external: bool) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = theta.detach().clone().requires_grad_()
        with torch.enable_grad():
            r = self.predict(leaf if external else self.external(leaf)) - self.y
            if self.inverse_sigma is not None:
                r = r * self.inverse_sigma
            rows = [torch.autograd.grad(r[i], leaf, retain_graph=True, allow_unused=True)[0] for i in range(self.size)]
        zero = torch.zeros_like(theta)
        return r.detach(), torch.stack([zero if row is None else row for row in rows])


def build_function(
    model, data_names: tuple[str, ...], param_names: tuple[str, ...], x_is_dict: bool
) -> tuple[Callable, str, tuple[str, ...]]:
    """Turn a formula or a callable into ``function(data, values)``; returns it, its text, data names.

    A formula's names must each be a data name or a parameter; anything else is an error listing both.
    """
    if callable(model):
        text = getattr(model, "__name__", type(model).__name__)
        _check_signature(model, text, param_names)
        if x_is_dict:
            return _returning_tensor(lambda data, values: model(data, **values), text), text, data_names
        (only,) = data_names
        return _returning_tensor(lambda data, values: model(data[only], **values), text), text, data_names
    if not isinstance(model, str):
        raise UsageError(f"model must be a formula string or a callable f(x, **params), got {type(model).__name__}")
    compiled = formula_model(model)
    names = compiled.names
    kinds = [("parameter", name) for name in param_names] + [("data column", name) for name in data_names]
    for kind, name in kinds:
        if name in CONSTANT_NAMES and (kind == "parameter" or x_is_dict):
            raise UsageError(
                f"{kind} {name!r} cannot be used in model {model!r}: in a formula {name!r} is "
                f"{CONSTANT_NAMES[name]}, a constant; give the {kind} another name, such as {name + '0'!r}"
            )
    if not x_is_dict:
        candidates = [name for name in names if name not in param_names]
        # A single predictor takes the model's first name that is not a parameter.
        data_names = tuple(candidates[:1]) or ("x",)
    both = [name for name in param_names if name in data_names]
    if both:
        raise UsageError(
            f"{', '.join(map(repr, both))} in model {model!r} is both a data name and a parameter: "
            "rename the parameter (or the data column)"
        )
    unknown = [name for name in names if name not in param_names and name not in data_names]
    if unknown:
        one = len(unknown) == 1
        raise UsageError(
            f"model {model!r} uses {', '.join(map(repr, unknown))}, which "
            f"{'is neither a data name' if one else 'are neither data names'} ({', '.join(data_names)}) "
            f"nor {'a parameter' if one else 'parameters'} ({', '.join(param_names)}): add "
            f"{'it' if one else 'them'} to params or to the data (several predictors: pass x as a dict of "
            "named arrays; CLI: --x COLUMN for each)"
        )
    unused = [name for name in param_names if name not in names]
    if unused:
        raise UsageError(
            f"parameter(s) {', '.join(map(repr, unused))} do not appear in model {model!r}: "
            "remove them or fix the model"
        )
    _check_uses_data(model, names, data_names, x_is_dict)
    return compiled, model, data_names


def _check_uses_data(model: str, names: tuple[str, ...], data_names: tuple[str, ...], x_is_dict: bool) -> None:
    """A `UsageError` when formula ``model`` uses none of the data: x would be silently ignored.

    A model constant in x is allowed when written with x (``"c + 0*x"``): then the choice is explicit.
    """
    if any(name in names for name in data_names):
        return
    everything = ", ".join(map(repr, names))
    if x_is_dict:
        raise UsageError(
            f"model {model!r} uses none of the data columns given in x ({', '.join(map(repr, data_names))}), "
            f"only parameters ({everything}), so the data would be ignored: write the predictor(s) into the "
            "model under the names given in x (for a model constant in the data on purpose, write it with "
            f"one of them, e.g. {model + ' + 0*' + data_names[0]!r})"
        )
    raise UsageError(
        f"model {model!r} uses no predictor: every name in it ({everything}) is a parameter, so x would be "
        "ignored. The predictor is the model's one name that is not in params: write it into the model "
        f"(e.g. 'x'), or, if one of {everything} is the predictor, remove it from params (for a model "
        f"constant in x on purpose, write it with x: {model + ' + 0*x'!r})"
    )


def _check_signature(model: Callable, text: str, param_names: tuple[str, ...]) -> None:
    """A callable model must accept ``model(x, name=value, ...)`` for every parameter."""
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return  # builtins and the like: the first call tells
    try:
        signature.bind(None, **dict.fromkeys(param_names))
    except TypeError as error:
        raise UsageError(
            f"model {text}{signature} cannot be called as {text}(x, {', '.join(f'{n}=...' for n in param_names)}) "
            f"({error}): take the data first and each parameter by name"
        ) from None


def _returning_tensor(function: Callable, text: str) -> Callable:
    def checked(data, values):
        result = function(data, values)
        if not isinstance(result, torch.Tensor):
            raise FitError(
                f"model {text} returned {type(result).__name__}, not a tensor: compute the predictions with "
                "torch operations on x and the parameters (both are tensors)"
            )
        return result

    return checked


def check_finite_start(r: torch.Tensor) -> None:
    """Raise `FitError` when the model gives NaN/inf at the initial values (nothing to fit from)."""
    bad = ~torch.isfinite(r)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:10].tolist()
        raise FitError(
            f"the model gives NaN or inf at the initial parameter values (data rows {rows}); "
            "choose other initial values"
        )
