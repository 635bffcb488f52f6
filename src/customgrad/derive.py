"""SymPy expression -> `FunctionSpec`: inputs, outputs, and one partial per input and output.

Partials are derived symbolically, or declared (a custom, surrogate gradient replaces the true
one). Generalised functions that appear in derivatives of step functions (DiracDelta, the
derivative of floor/ceiling) are zero almost everywhere and become 0, as autograd treats them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import sympy
from sympy.core.logic import fuzzy_and

from . import symengine_bridge
from .comparison import Comparison, substitute
from .errors import DeriveError

SIMPLIFY_MAX_OPS = 40  # simplify small partials only: simplify() is slow on large expressions
# cancel() expands powers of sums: (x + y + z + 1)**29 has 4960 terms. Display-only simplification skips it there.
CANCEL_MAX_POWER = 6


@dataclass(frozen=True)
class FunctionSpec:
    """Everything needed to generate an autograd Function.

    Attributes
    ----------
    name : str
        Name of the generated class.
    inputs : tuple of sympy.Symbol
        Inputs, in call order.
    outputs : tuple of sympy.Expr
        Output expressions (one for formulas; several for generated backward Functions).
    partials : tuple of tuple of sympy.Expr
        ``partials[k][i]`` = d outputs[k] / d inputs[i], derived or declared.
    declared : dict of str to sympy.Expr
        Declared custom gradients, input name -> expression (empty when all are derived).
    formula : str
        The formula text the spec came from ("" for generated backward Functions).
    full_shape : tuple of str
        Inputs known to have the outputs' full broadcast shape (a backward's upstream gradients).
    """

    name: str
    inputs: tuple[sympy.Symbol, ...]
    raw_outputs: tuple[sympy.Expr, ...] = field(repr=False)
    declared: dict[str, sympy.Expr] = field(default_factory=dict)
    formula: str = ""
    full_shape: tuple[str, ...] = ()

    #: (source, function name) of the forward's generated torch code when already known (`function_cache`).
    torch_source = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(symbol.name for symbol in self.inputs)

    @property
    def output_count(self) -> int:
        return len(self.raw_outputs)

    @property
    def declared_text(self) -> dict[str, str]:
        """Declared gradients as text, input name -> formula."""
        return {name: str(expr) for name, expr in self.declared.items()}

    @functools.cached_property
    def outputs(self) -> tuple[sympy.Expr, ...]:
        """Outputs with registered formula functions inlined, ready for code generation."""
        return tuple(inline_registered(output) for output in self.raw_outputs)

    @functools.cached_property
    def partials(self) -> tuple[tuple[sympy.Expr, ...], ...]:
        """``partials[k][i]`` = d outputs[k] / d inputs[i]: declared, else derived (computed once, lazily)."""
        return tuple(
            tuple(
                self.declared[variable.name]
                if variable.name in self.declared
                else inline_registered(derive_partial(output, variable))
                for variable in self.inputs
            )
            for output in self.raw_outputs
        )

    @functools.cached_property
    def needs(self) -> tuple[tuple[int, ...], ...]:
        """``needs[i]``: positions of the inputs that input i's partials depend on (what to save)."""
        free = [[partial.free_symbols for partial in row] for row in self.partials]
        return tuple(
            tuple(j for j, s in enumerate(self.inputs) if any(s in row[i] for row in free))
            for i in range(len(self.inputs))
        )


def zero_almost_everywhere(expr: sympy.Expr) -> sympy.Expr:
    """Replace DiracDelta and derivatives of floor/ceiling (zero almost everywhere) by 0.

    The chain rule through floor(u(x)) leaves ``Subs(Derivative(floor(xi), xi), xi, u(x))``: zero too."""
    expr = expr.replace(lambda e: isinstance(e, sympy.DiracDelta), lambda e: sympy.S.Zero)
    expr = expr.replace(
        lambda e: isinstance(e, sympy.Derivative) and isinstance(e.expr, (sympy.floor, sympy.ceiling)),
        lambda e: sympy.S.Zero,
    )
    return expr.replace(lambda e: isinstance(e, sympy.Subs) and e.expr == 0, lambda e: sympy.S.Zero)


def derive_partial(expr: sympy.Expr, variable: sympy.Symbol) -> sympy.Expr:
    """d expr / d variable, with torch's conventions at the edges (`EDGE_RULES`) and a-e-zero terms removed.

    Not simplified: on the formula corpus simplification changed no error bound (forward <= 1e-14,
    derivatives <= 1e-12 relative in float64) while costing three quarters of the time to define a
    formula (and minutes on (x + y + z + 1)**30); code generation shares subexpressions anyway.
    `simplify_for_display` tidies what ``customgrad derive`` prints. Differentiated by SymEngine
    when `symengine_bridge.supported` (never with an edge rule's stand-in inside), else by SymPy.
    """
    ruled = with_edge_rules(expr)
    fast = symengine_bridge.derivative(ruled, variable)  # C++ where it computes what SymPy would
    if fast is not None:
        return fast
    partial = zero_almost_everywhere(_differentiate(ruled, variable))
    partial = mask_products(partial)
    if partial.has(sympy.Derivative):
        raise DeriveError(f"cannot differentiate {expr} with respect to {variable}: SymPy left {partial}")
    return without_edge_rules(partial)


def mask_products(expr: sympy.Expr) -> sympy.Expr:
    """c * Piecewise((0, cond), (e, True)) -> Piecewise((0, cond), (c * e, True)).

    Where a piece is exactly 0, torch's backward (where's, pow's, atan2's) gives 0 whatever the
    other factors of the chain rule hold there, NaN or inf included; so does the product folded
    into the pieces.
    """

    def is_mask(factor) -> bool:
        return isinstance(factor, sympy.Piecewise) and any(piece.expr == 0 for piece in factor.args)

    def fold(product):
        mask = next(factor for factor in product.args if is_mask(factor))
        rest = sympy.Mul(*[factor for factor in product.args if factor is not mask])
        return sympy.Piecewise(
            *[(piece.expr if piece.expr == 0 else mask_products(rest * piece.expr), piece.cond) for piece in mask.args]
        )

    return expr.replace(lambda e: isinstance(e, sympy.Mul) and any(is_mask(f) for f in e.args), fold)


def _differentiate(expr: sympy.Expr, variable: sympy.Symbol) -> sympy.Expr:
    """``sympy.diff``, visiting only the terms of a sum and the factors of a product that hold ``variable``.

    SymPy builds a Derivative for every term, so the partials of a 900-term sum over 900 inputs
    would cost 810,000 of them.
    """
    if isinstance(expr, sympy.Add) and len(expr.args) > 8:
        terms = _terms_by_symbol(expr).get(variable, ())
        return sympy.Add(*[_differentiate(term, variable) for term in terms])
    if isinstance(expr, sympy.Mul) and len(expr.args) > 8:
        # (f g h)' = f' g h + f g' h + f g h', over the factors that hold the variable
        factors = expr.args
        return sympy.Add(
            *[
                sympy.Mul(*factors[:k], _differentiate(factor, variable), *factors[k + 1 :])
                for k, factor in enumerate(factors)
                if variable in factor.free_symbols
            ]
        )
    return sympy.diff(expr, variable)


@functools.lru_cache(maxsize=16)
def _terms_by_symbol(expr: sympy.Add) -> dict[sympy.Symbol, tuple[sympy.Expr, ...]]:
    index: dict[sympy.Symbol, list[sympy.Expr]] = {}
    for term in expr.args:
        for free in term.free_symbols:
            index.setdefault(free, []).append(term)
    return {free: tuple(terms) for free, terms in index.items()}


# Edge rules: where SymPy's derivative is NaN or inconsistent but torch defines a value, the
# operation is differentiated as a stand-in function whose partials follow torch's backward, then
# turned back into the ordinary SymPy operation. One row per operation.


class _Power(sympy.Function):
    """x**y with an input in the exponent, differentiated as torch.pow(x, y)."""

    nargs = 2

    def fdiff(self, argindex=1):
        base, exponent = self.args
        if argindex == 1:
            # d/dx x**y = y x**(y-1), and 0 where y == 0 (torch: pow_backward_self)
            return sympy.Piecewise((0, sympy.Eq(exponent, 0)), (exponent * _Power(base, exponent - 1), True))
        # d/dy x**y = x**y log(x), and 0 where x == 0 and y >= 0 (torch: pow_backward_exponent)
        at_zero = sympy.And(sympy.Eq(base, 0), exponent >= 0)
        return sympy.Piecewise((0, at_zero), (self * sympy.log(base), True))


class _Atan2(sympy.Function):
    """atan2(y, x), differentiated as torch.atan2: both partials are 0 at the origin."""

    nargs = 2

    def _eval_is_extended_real(self):
        return fuzzy_and(argument.is_extended_real for argument in self.args)

    def fdiff(self, argindex=1):
        y, x = self.args
        origin = sympy.And(sympy.Eq(x, 0), sympy.Eq(y, 0))
        # d/dy atan2(y, x) = x / (x^2 + y^2);  d/dx atan2(y, x) = -y / (x^2 + y^2), written without
        # squares (x^2 underflows to 0 at x = 1e-170, overflows at 1e170): with r = y/x where |x| >= |y|,
        # x / (x^2 + y^2) = 1 / (x + y r) and y / (x^2 + y^2) = r / (x + y r); with q = x/y elsewhere,
        # x / (x^2 + y^2) = q / (y + x q) and y / (x^2 + y^2) = 1 / (y + x q).
        r, q = _Ratio(y, x), _Ratio(x, y)
        wide = (1 if argindex == 1 else -r) / (x + y * r)
        tall = (q if argindex == 1 else -1) / (y + x * q)
        partial = sympy.Piecewise((wide, sympy.Abs(x) >= sympy.Abs(y)), (tall, True))
        return sympy.Piecewise((0, origin), (partial, True))


class _Ratio(sympy.Function):
    """a / b kept as one operation: SymPy would fold y * (y/x) into y**2/x, which overflows where
    y * (y/x) does not. Printed as a division by every printer."""

    nargs = 2

    def _eval_is_extended_real(self):
        return fuzzy_and(argument.is_extended_real for argument in self.args)

    def fdiff(self, argindex=1):
        a, b = self.args
        # d/da (a/b) = 1/b;  d/db (a/b) = -a/b^2
        return 1 / b if argindex == 1 else -a / b**2

    def _division(self, printer) -> str:
        a, b = (printer._print(argument) for argument in self.args)
        return f"({a} / {b})"

    _customgrad_torchcode = _customgrad_numpycode = _customgrad_tritoncode = _customgrad_ccode = _division


class _Maximum(sympy.Function):
    """max(a, b, ...): at a tie the arguments that reach the maximum share the gradient equally."""

    def _eval_is_extended_real(self):
        return fuzzy_and(argument.is_extended_real for argument in self.args)

    def fdiff(self, argindex=1):
        # d/da_k max(a) = [a_k = max] / #{j: a_j = max}, with [a_j = max] = 1 + sign(a_j - max)
        return _share(self.args, argindex - 1, self, 1)


class _Minimum(sympy.Function):
    """min(a, b, ...): at a tie the arguments that reach the minimum share the gradient equally."""

    def _eval_is_extended_real(self):
        return fuzzy_and(argument.is_extended_real for argument in self.args)

    def fdiff(self, argindex=1):
        # d/da_k min(a) = [a_k = min] / #{j: a_j = min}, with [a_j = min] = 1 - sign(a_j - min)
        return _share(self.args, argindex - 1, self, -1)


class _Sign(sympy.Function):
    """sign(x), whose derivative is 0 (torch's; SymPy's 2 DiracDelta(x) is 0 almost everywhere),
    found without differentiating x."""

    def _eval_derivative(self, variable):
        return sympy.S.Zero

    def _eval_is_extended_real(self):
        return self.args[0].is_extended_real


def _share(arguments, k: int, extreme: sympy.Expr, direction: int) -> sympy.Expr:
    """[a_k = extreme] / sum_j [a_j = extreme], the indicators written with sign() so that they take
    the inputs' dtype in generated code (constants among the arguments count in the tie too)."""
    if len(arguments) == 2:  # the same split, shorter: H(a - b) with H(0) = 1/2
        return sympy.Heaviside(direction * (arguments[k] - arguments[1 - k]), sympy.S.Half)
    indicators = [1 + direction * _Sign(a - extreme) for a in arguments]
    return indicators[k] / sympy.Add(*indicators)


#: SymPy operation -> (applies to this node?, its stand-in with torch's partials).
EDGE_RULES: dict[type, tuple] = {
    sympy.Pow: (lambda e: bool(e.exp.free_symbols), lambda e: _Power(*e.args)),
    sympy.atan2: (lambda e: True, lambda e: _Atan2(*e.args)),
    sympy.Max: (lambda e: True, lambda e: _Maximum(*e.args)),
    sympy.Min: (lambda e: True, lambda e: _Minimum(*e.args)),
    sympy.sign: (lambda e: True, lambda e: _Sign(*e.args)),
}
#: Stand-in -> the SymPy operation it stands for.
_STANDS_FOR = {
    _Power: sympy.Pow,
    _Atan2: sympy.atan2,
    _Maximum: sympy.Max,
    _Minimum: sympy.Min,
    _Sign: sympy.sign,
}


@functools.lru_cache(maxsize=256)
def with_edge_rules(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with the operations of `EDGE_RULES` replaced by their stand-ins (cached per expression)."""

    def applies(e) -> bool:
        rule = EDGE_RULES.get(type(e))
        return rule is not None and rule[0](e)

    return expr.replace(applies, lambda e: EDGE_RULES[type(e)][1](e))


def without_edge_rules(expr: sympy.Expr) -> sympy.Expr:
    """The stand-ins of `with_edge_rules` turned back into ordinary SymPy operations."""

    def restore(e):
        operation = _STANDS_FOR[type(e)]
        if operation in (sympy.Max, sympy.Min):  # arguments already reduced: skip SymPy's O(n^2) comparisons
            return operation(*e.args, evaluate=False)
        return operation(*e.args)

    return expr.replace(lambda e: type(e) in _STANDS_FOR, restore)


def simplify_for_display(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` simplified by `simplify_bounded` when small (for people to read; code uses it as derived)."""
    expr = expr.replace(lambda e: isinstance(e, _Ratio), lambda e: e.args[0] / e.args[1])
    if sympy.count_ops(expr) > SIMPLIFY_MAX_OPS:
        return expr
    # Conditions held as symbols: simplifying would evaluate their operands as written (x*0 == 0 -> True).
    held = {c: sympy.Dummy(f"condition{k}") for k, c in enumerate(expr.atoms(Comparison))}
    simplified = simplify_bounded(expr.xreplace(held))
    return simplified.xreplace({symbol: c for c, symbol in held.items()})


def simplify_bounded(expr: sympy.Expr) -> sympy.Expr:
    """The shortest of ``expr``, its common factors pulled out, and its cancelled rational form,
    among those that introduce no number larger than ``expr``'s own.

    Not ``sympy.simplify``: its trigsimp can run for minutes on small expressions (hyperbolic
    functions are factored over the Gaussian rationals); these passes are polynomial-time.
    """
    candidates = [expr, sympy.factor_terms(expr)]
    if not _has_large_power_of_sum(expr):
        candidates.append(sympy.factor_terms(sympy.cancel(expr)))
    # Rewrites that clear denominators (0.044715 x -> (8943 x + 200000)/200000) overflow float16.
    largest = _largest_number(expr)
    candidates = [c for c in candidates if _largest_number(c) <= largest]
    return min(candidates, key=sympy.count_ops)  # ties keep the earliest, least rewritten form


def _has_large_power_of_sum(expr: sympy.Expr) -> bool:
    return any(p.base.is_Add and p.exp.is_Integer and abs(int(p.exp)) > CANCEL_MAX_POWER for p in expr.atoms(sympy.Pow))


def _largest_number(expr: sympy.Expr) -> float:
    return max((abs(float(number)) for number in expr.atoms(sympy.Number) if number.is_finite), default=0.0)


def inline_registered(expr: sympy.Expr) -> sympy.Expr:
    """Replace calls of registered formula functions by their expressions (hand-written ones stay)."""

    def is_inlinable(e) -> bool:
        entry = getattr(type(e), "_customgrad_entry", None)
        return entry is not None and entry.expr is not None

    def inline(e):
        entry = type(e)._customgrad_entry
        return inline_registered(substitute(entry.expr, dict(zip(entry.input_symbols, e.args, strict=True))))

    return expr.replace(is_inlinable, inline)


def derive_spec(
    name: str,
    inputs: tuple[sympy.Symbol, ...],
    outputs: tuple[sympy.Expr, ...],
    declared: dict[str, sympy.Expr] | None = None,
    formula: str = "",
    full_shape: tuple[str, ...] = (),
) -> FunctionSpec:
    """The spec of ``outputs`` over ``inputs``; partials are derived on first use, declared ones kept.

    Declared gradients apply to single-output specs (formulas); registered functions called by the
    outputs contribute their own partials (derived or declared) through the chain rule.
    """
    return FunctionSpec(
        name=name,
        inputs=tuple(inputs),
        raw_outputs=tuple(outputs),
        declared=dict(declared or {}),
        formula=formula,
        full_shape=tuple(full_shape),
    )


def backward_spec(spec: FunctionSpec, needed: tuple[int, ...], level: int) -> tuple[FunctionSpec, list[int]]:
    """The spec of the backward for the ``needed`` inputs: sum_k g_k * d out_k / d x_i for each needed i.

    One spec per needs-input-grad mask, so one kernel computes every requested gradient in one pass.
    Its inputs are the inputs those partials use (positions returned) followed by one upstream
    gradient per output, named ``_g<level>_<k>`` (fresh per level: a nested backward takes earlier
    gradients as inputs).
    """
    grads = tuple(sympy.Symbol(f"_g{level}_{k}", real=True) for k in range(len(spec.outputs)))
    outputs = tuple(sympy.Add(*[g * row[i] for g, row in zip(grads, spec.partials, strict=True)]) for i in needed)
    used = sorted(set().union(*(spec.needs[i] for i in needed)))
    inputs = tuple(spec.inputs[j] for j in used) + grads
    backward = derive_spec(f"{spec.name}_backward", inputs, outputs, full_shape=tuple(g.name for g in grads))
    return backward, used


def backward_level(backward: FunctionSpec) -> int:
    """The level of a `backward_spec` result: the ``<level>`` of its gradient names ``_g<level>_<k>``."""
    return int(backward.full_shape[0][2:].split("_")[0])


def jvp_spec(spec: FunctionSpec) -> FunctionSpec:
    """The spec of forward mode: sum_i d out_k / d x_i * t_i over the inputs then one tangent per input."""
    tangents = tuple(sympy.Symbol(f"_tangent{i}", real=True) for i in range(len(spec.inputs)))  # not _t*: CSE
    outputs = tuple(sympy.Add(*[t * row[i] for i, t in enumerate(tangents)]) for row in spec.partials)
    return derive_spec(f"{spec.name}_jvp", spec.inputs + tangents, outputs)


def linearization_spec(spec: FunctionSpec, free: tuple[str, ...]) -> FunctionSpec:
    """The spec of [d f / d b_j for b_j in ``free``] + [f] for a one-output ``spec``: a fit's Jacobian
    rows and its model values, from one kernel whose common subexpressions are shared.

    Only the ``free`` inputs are differentiated (not the data columns); declared gradients apply, and
    registered functions enter through their own partials, as in `FunctionSpec.partials`, which are
    reused where they were derived already (by the backward of the spec's Function).
    """
    (output,) = spec.raw_outputs
    position = {name: i for i, name in enumerate(spec.input_names)}
    derived = vars(spec).get("partials")
    if derived is not None:
        rows = tuple(derived[0][position[name]] for name in free)
    else:
        rows = tuple(
            spec.declared[name] if name in spec.declared else derive_partial(output, spec.inputs[position[name]])
            for name in free
        )
    return derive_spec(f"{spec.name}_rows", spec.inputs, (*rows, output))
