"""The registry of named functions: what formulas may call besides the built-in table.

Naming a function (``customgrad.function(..., name="P2")``) registers it; formulas can then call
``P2(...)``, and differentiate through it with its own derived or declared partials.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sympy

from . import builtin_table
from .comparison import substitute
from .errors import DeriveError, UsageError

if TYPE_CHECKING:
    import torch


@dataclass
class RegisteredFunction:
    """A named function callable from formulas.

    Attributes
    ----------
    name : str
        The name formulas use.
    function : type[torch.autograd.Function] or None
        What runs: generated code calls ``function.apply`` (see `autograd_function`); None until
        ``generate`` has made it (built-ins are generated on first use).
    arity : int
        Number of inputs.
    symbol : type[sympy.Function]
        SymPy handle for the function in expressions; its ``fdiff`` gives the partials.
    partials : tuple of sympy.Expr, optional
        One partial per input over `input_symbols` (derived, or declared), or None for a
        hand-written Function whose derivative is not known symbolically.
    input_symbols : tuple of sympy.Symbol, optional
        The function's own inputs, which `partials` and `expr` are written in.
    expr : sympy.Expr, optional
        The function's value as an expression (None for hand-written Functions).
    """

    name: str
    function: type[torch.autograd.Function] | None
    arity: int
    symbol: type[sympy.Function] = field(repr=False)
    partials: tuple[sympy.Expr, ...] | None = field(default=None, repr=False)
    input_symbols: tuple[sympy.Symbol, ...] | None = field(default=None, repr=False)
    expr: sympy.Expr | None = field(default=None, repr=False)
    summary: str = ""
    generate: Callable[[], type[torch.autograd.Function]] | None = field(default=None, repr=False)

    def autograd_function(self) -> type[torch.autograd.Function]:
        """What runs: `function`, generated now if it was registered for generation on first use."""
        if self.function is None:
            self.function = self.generate()
        return self.function


REGISTRY: dict[str, RegisteredFunction] = {}


def _make_symbol(name: str, arity: int) -> type[sympy.Function]:
    # Each symbol class answers for the entry it was made for (``_customgrad_entry``, set by
    # `register`), so expressions built before a name is redefined keep their meaning.
    def fdiff(self, argindex=1):
        entry = type(self)._customgrad_entry
        if entry.partials is None:
            raise DeriveError(
                f"cannot differentiate through {name!r}: it is a hand-written Function whose derivative "
                f"is not known symbolically; define it with customgrad.function(...) instead"
            )
        substitution = dict(zip(entry.input_symbols, self.args, strict=True))
        return substitute(entry.partials[argindex - 1], substitution)

    def _eval_evalf(self, prec):
        # Numeric value at constant arguments (so that max(x, P2(0)) can compare and codegen can fold it).
        entry = type(self)._customgrad_entry
        if entry.expr is None:
            return None
        return substitute(entry.expr, dict(zip(entry.input_symbols, self.args, strict=True)))._eval_evalf(prec)

    return type(
        name, (sympy.Function,), {"nargs": arity, "fdiff": fdiff, "_eval_evalf": _eval_evalf, "_customgrad_name": name}
    )


def forward_arity(function: type[torch.autograd.Function]) -> int:
    """Number of inputs of an autograd.Function's forward (``ctx`` not counted when present)."""
    parameters = list(inspect.signature(function.forward).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        raise UsageError(f"{function.__name__}.forward takes *args; register a Function with named inputs")
    count = len(parameters)
    import torch

    uses_ctx = getattr(function, "setup_context", None) is torch.autograd.Function.setup_context
    return count - 1 if uses_ctx else count


def check_function_name(name: str) -> None:
    """Raise `UsageError` unless formulas could call a function called ``name``."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or keyword.iskeyword(name):
        raise UsageError(
            f"function name {name!r} is not a valid name: use letters, digits and '_', "
            "starting with a letter (and not a Python keyword)"
        )
    from .functions import CONSTANTS, FUNCTIONS

    if name in FUNCTIONS or name in CONSTANTS or name == "Piecewise":
        raise UsageError(
            f"function name {name!r} is taken by a built-in formula function or constant; choose another name"
        )


def register(
    name: str,
    function: type[torch.autograd.Function] | None,
    *,
    partials: tuple[sympy.Expr, ...] | None = None,
    input_symbols: tuple[sympy.Symbol, ...] | None = None,
    expr: sympy.Expr | None = None,
    summary: str = "",
    generate: Callable[[], type[torch.autograd.Function]] | None = None,
) -> RegisteredFunction:
    """Register ``function`` under ``name`` so formulas can call it (replaces an earlier entry).

    ``function`` may be None when ``input_symbols`` are given and ``generate`` makes it on first use.
    """
    check_function_name(name)
    arity = len(input_symbols) if input_symbols is not None else forward_arity(function)
    entry = RegisteredFunction(
        name=name,
        function=function,
        arity=arity,
        symbol=_make_symbol(name, arity),
        partials=partials,
        input_symbols=input_symbols,
        expr=expr,
        summary=summary or (function.__doc__ or "").strip().split("\n")[0],
        generate=generate,
    )
    entry.symbol._customgrad_entry = entry
    REGISTRY[name] = entry
    return entry


def lookup(name: str) -> RegisteredFunction | None:
    """The registered function called ``name``, or None; a built-in (P2, ...) is generated on first use."""
    entry = REGISTRY.get(name)
    if entry is None and name in builtin_names():
        # Made by `library` (above the registry), which the package installed as the built-ins' maker.
        entry = builtin_table.make_entry(name)
    return entry


def is_registered(name: str) -> bool:
    """Whether formulas may call ``name`` as a registered function (built-ins count before they are generated)."""
    return name in REGISTRY or name in builtin_names()


def registered_names() -> list[str]:
    """Names of the registered functions, built-ins included whether generated yet or not."""
    return list(dict.fromkeys([*builtin_names(), *REGISTRY]))


def builtin_names() -> tuple[str, ...]:
    """Names of customgrad's generated built-ins (`builtin_table.GENERATED`)."""
    return tuple(builtin_table.GENERATED)


#: The registry entries made for the built-ins (`library` makes each on first use), by name: a user's
#: function registered under a built-in's name replaces it in `REGISTRY`, not here.
BUILTIN_ENTRIES: dict[str, RegisteredFunction] = {}


def builtin_entry(name: str) -> RegisteredFunction | None:
    """The registry entry made for built-in ``name``, or None when it has not been made yet."""
    return BUILTIN_ENTRIES.get(name)
