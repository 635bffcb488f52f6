"""The built-in Functions as data: the formulas `library` generates (`GENERATED`) and the hand-written
originals beside them (`HANDWRITTEN`). Imports nothing: the registry, the formula key and the command
line read the names without generating anything.

Making a built-in's registry entry (parse, derive, register) is `library`'s work, above the registry
that asks for it (`registry.lookup`): the package installs it here (`install_entry_maker`) when
``customgrad`` is imported, so the registry asks through `make_entry` and imports nothing above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

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


def summaries() -> dict[str, str]:
    """Built-in name -> one line, as `customgrad list` prints it (nothing generated, no torch)."""
    lines = {name: f"{name}(x) = {formula}" for name, (formula, _) in GENERATED.items()}
    return {**lines, **HANDWRITTEN}


# The entries are `registry.RegisteredFunction`s, typed Any here: this table imports nothing of customgrad.


def _no_entry_maker(name: str) -> Any:
    raise RuntimeError(
        f"cannot make built-in {name!r}: no maker is installed; import customgrad (its __init__ installs "
        "library.registered_builtin with builtin_table.install_entry_maker)"
    )


_entry_maker: Callable[[str], Any] = _no_entry_maker


def install_entry_maker(maker: Callable[[str], Any]) -> None:
    """Make built-ins' registry entries with ``maker`` (name -> entry; `library.registered_builtin`)."""
    global _entry_maker
    _entry_maker = maker


def make_entry(name: str) -> Any:
    """The registry entry of generated built-in ``name``, made (and registered) by the installed maker."""
    return _entry_maker(name)
