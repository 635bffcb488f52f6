"""Built-in custom autograd Functions: the blog's P2, the PyTorch tutorial's Legendre P3, and the
blog's deliberately custom (surrogate) gradient example.

The built-ins are generated from formulas (`P2`, `LegendreP3`, `IdentityWithSquareGrad`) on first
use (``from customgrad.library import P2``, or a formula calling ``P2(...)``) and registered, so
formulas can call them; importing this module generates nothing. The hand-written originals, the
way the blog and the tutorial write them (bugs fixed), stay beside them as ``*Handwritten``
(`customgrad.handwritten`): references for tests and examples of what `customgrad.check` accepts.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .builtin_table import GENERATED, HANDWRITTEN, summaries  # noqa: F401 (re-exported: library.summaries)
from .registry import BUILTIN_ENTRIES, RegisteredFunction, builtin_entry  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import torch

    P2: type[torch.autograd.Function]
    LegendreP3: type[torch.autograd.Function]
    IdentityWithSquareGrad: type[torch.autograd.Function]
    P2Handwritten: type[torch.autograd.Function]
    LegendreP3Handwritten: type[torch.autograd.Function]
    IdentityWithSquareGradHandwritten: type[torch.autograd.Function]
    BUILTINS: dict[str, type[torch.autograd.Function]]

_lock = threading.RLock()  # first use from two threads (the check battery's) generates once


def builtin(name: str) -> type[torch.autograd.Function]:
    """The built-in Function ``name``, generated and registered on first use."""
    if name in HANDWRITTEN:
        from . import handwritten  # torch: imported when a hand-written original is first asked for

        return getattr(handwritten, name)
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
    if name not in BUILTIN_ENTRIES:
        from .formula_spec import formula_spec
        from .registry import REGISTRY

        formula, grads = GENERATED[name]
        spec = formula_spec(formula, grads=grads, class_name=name)
        users = REGISTRY.get(name)
        BUILTIN_ENTRIES[name] = register_generated(name, spec)
        if users is not None:
            REGISTRY[name] = users
    return BUILTIN_ENTRIES[name]


def register_generated(name: str, spec) -> RegisteredFunction:
    """Register ``spec`` (a `derive.FunctionSpec`) under ``name``: formulas may call it at once (SymPy
    only), and its autograd Function is generated when code first calls it (the built-ins, and the
    command line's ``--define``)."""
    from .formula_spec import register_spec

    def generate() -> type[torch.autograd.Function]:
        from .function import build_function

        return build_function(spec)

    return register_spec(name, spec, generate=generate)


def __getattr__(name: str):
    if name in GENERATED or name in HANDWRITTEN:
        return builtin(name)
    if name == "BUILTINS":
        return {n: builtin(n) for n in (*GENERATED, *HANDWRITTEN)}
    raise AttributeError(f"module 'customgrad.library' has no attribute {name!r}")
