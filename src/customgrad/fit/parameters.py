"""A fit's parameters: their specs (initial value, bounds, fixed) as the user gives them, and the transforms
between a bounded parameter's value and the unbounded internal coordinate every solver works in.

Bounded parameters are optimised in an unbounded internal coordinate (MINUIT's transforms), so every
solver sees an unconstrained problem; the same transforms serve one fit's parameters and a batch's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError

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
    try:
        bounds = dict(bounds or {})
    except (TypeError, ValueError):
        raise UsageError(
            f"bounds must be a dict of name -> (lower, upper), got {type(bounds).__name__}: SciPy's "
            "(lower_list, upper_list) is spelled {'a': (0, 10), 'b': (None, 5)} here (None for an open side)"
        ) from None
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
            shared = " ('shared' is for fit_batch: one value for every curve)" if "shared" in extra else ""
            raise UsageError(
                f"parameter {name!r}: unknown keys {sorted(extra)} (allowed: value, min, max, fixed or vary; or "
                f"expr){shared}"
            )
        if spec.get("value") is None:
            raise UsageError(f"parameter {name!r} has no initial value: give one, e.g. params={{{name!r}: 1.0}}")
        value = _number(spec["value"], f"initial value of parameter {name!r}")
        pair = bounds.get(name, (spec.get("min"), spec.get("max")))
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable) or len(pair := list(pair)) != 2:
            raise UsageError(
                f"bounds for parameter {name!r} must be a pair (lower, upper), None for an open side, got {pair!r}"
            )
        lower, upper = pair
        lower = -math.inf if lower is None else _number(lower, f"lower bound of parameter {name!r}", bound=True)
        upper = math.inf if upper is None else _number(upper, f"upper bound of parameter {name!r}", bound=True)
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


def _number(value, what: str, *, bound: bool = False) -> float:
    """``value`` as a float: a bound (not NaN) or an initial value (finite, not a bool); else a `UsageError`."""
    try:
        number = None if isinstance(value, (bool, np.bool_)) and not bound else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise UsageError(f"{what} must be a number{' or None' if bound else ''}, got {value!r}")
    if bound and math.isnan(number):
        raise UsageError(f"{what} is NaN: give a number, or None for no bound")
    if not (bound or math.isfinite(number)):
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


def external_values(theta: torch.Tensor, bounded: list[tuple[int, ParameterSpec]]) -> torch.Tensor:
    """Parameter values (..., p) from internal coordinates ``theta`` (..., p); ``bounded``: (position, spec)
    of each bounded parameter (the others are their own values)."""
    if not bounded:
        return theta
    parts = list(theta.unbind(-1))
    for i, spec in bounded:
        parts[i] = to_external(spec, parts[i])
    return torch.stack(parts, -1)
