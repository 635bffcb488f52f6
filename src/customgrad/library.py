"""Built-in custom autograd Functions: the blog's P2, the PyTorch tutorial's Legendre P3, and the
blog's deliberately custom (surrogate) gradient example.

The built-ins are generated from formulas (`P2`, `LegendreP3`, `IdentityWithSquareGrad`) on first
use (``from customgrad.library import P2``, or a formula calling ``P2(...)``) and registered, so
formulas can call them; importing this module generates nothing. The hand-written originals, the
way the blog and the tutorial write them (bugs fixed), stay beside them as ``*Handwritten``
(`customgrad.handwritten`): references for tests and examples of what `customgrad.check` accepts.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .registry import RegisteredFunction

    P2: type[torch.autograd.Function]
    LegendreP3: type[torch.autograd.Function]
    IdentityWithSquareGrad: type[torch.autograd.Function]
    P2Handwritten: type[torch.autograd.Function]
    LegendreP3Handwritten: type[torch.autograd.Function]
    IdentityWithSquareGradHandwritten: type[torch.autograd.Function]
    BUILTINS: dict[str, type[torch.autograd.Function]]

#: Built-ins generated from formulas: name -> (formula, declared gradients).
GENERATED: dict[str, tuple[str, dict[str, str]]] = {
    # d/dx (x^2 + 2x) = 2x + 2, derived
    "P2": ("x**2 + 2*x", {}),
    # d/dx (5x^3 - 3x) / 2 = 1.5 (5x^2 - 1), derived
    "LegendreP3": ("(5*x**3 - 3*x) / 2", {}),
    # identity with the surrogate gradient 2x (the derivative of x^2), declared
    "IdentityWithSquareGrad": ("x", {"x": "2*x"}),
}

#: The hand-written originals (`customgrad.handwritten`): name -> the first line of their docstring.
HANDWRITTEN: dict[str, str] = {
    "P2Handwritten": "Quadratic P2(x) = x^2 + 2x, with the hand-written backward grad * (2x + 2).",
    "LegendreP3Handwritten": "Legendre polynomial P3(x) = (5x^3 - 3x) / 2, with backward grad * 1.5 (5x^2 - 1).",
    "IdentityWithSquareGradHandwritten": "Identity forward f(x) = x with an intentional custom (surrogate) "
    "backward grad * 2x.",
}

_entries: dict[str, RegisteredFunction] = {}
_lock = threading.RLock()  # first use from two threads (the check battery's) generates once


def summaries() -> dict[str, str]:
    """Built-in name -> one line, as `customgrad list` prints it (nothing generated, no torch)."""
    lines = {name: f"{name}(x) = {formula}" for name, (formula, _) in GENERATED.items()}
    return {**lines, **HANDWRITTEN}


def builtin(name: str) -> type[torch.autograd.Function]:
    """The built-in Function ``name``, generated and registered on first use."""
    if name in HANDWRITTEN:
        return getattr(importlib.import_module(".handwritten", __package__), name)
    with _lock:
        return _entry(name).autograd_function()


def registered_builtin(name: str) -> RegisteredFunction:
    """The registry entry of built-in ``name``: its symbolic part now (SymPy only), its Function on first call.

    Put back in the registry if a registry was restored (tests) after it was first made.
    """
    from .registry import REGISTRY

    with _lock:
        return REGISTRY.setdefault(name, _entry(name))


def _entry(name: str) -> RegisteredFunction:
    """The built-in's own entry, made once; a user's function registered under its name keeps the name."""
    if name not in _entries:
        from .formula_spec import formula_spec, register_spec
        from .registry import REGISTRY

        formula, grads = GENERATED[name]
        spec = formula_spec(formula, grads=grads, class_name=name)

        def generate() -> type[torch.autograd.Function]:
            from .function import build_function

            return build_function(spec)

        users = REGISTRY.get(name)
        _entries[name] = register_spec(name, spec, generate=generate)
        if users is not None:
            REGISTRY[name] = users
    return _entries[name]


def builtin_entry(name: str) -> RegisteredFunction | None:
    """The registry entry made for built-in ``name``, or None when it has not been made yet."""
    return _entries.get(name)


def __getattr__(name: str):
    if name in GENERATED or name in HANDWRITTEN:
        return builtin(name)
    if name == "BUILTINS":
        return {n: builtin(n) for n in (*GENERATED, *HANDWRITTEN)}
    raise AttributeError(f"module 'customgrad.library' has no attribute {name!r}")
