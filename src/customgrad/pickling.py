"""Generated Functions pickle by their definition: ``pickle``, ``torch.save``, spawn workers and DDP.

A generated class lives in no importable module (``customgrad.generated``), so pickle's default, a
reference by module and name, fails. Pickle asks ``copyreg.dispatch_table`` for the metaclass before
treating a class as a global, so one entry for torch's ``FunctionMeta`` pickles a Function made by
`customgrad.function` as ``_rebuild(definition, dependencies)``: the formula, inputs, name, declared
gradients and backend as given, and the registered Functions the formulas call (pickled the same
way, so a formula calling ``Lor(...)`` finds ``Lor`` registered on load). Loading calls `function`
again, which reads the disk cache when it is warm; in a process that already holds the class, the
same class comes back. ``F.forward_ad`` pickles as that attribute of ``F``, the built-ins (``P2``)
by name; every other ``torch.autograd.Function`` as before, by reference. (A metaclass of our own
would do too, but Dynamo traces ``apply`` only on classes whose metaclass is exactly ``FunctionMeta``.)
"""

from __future__ import annotations

import ast
import copyreg
import pickle
import weakref
from dataclasses import dataclass

import torch

#: What pickle did with autograd Functions before (None: the default, a reference by name).
_FUNCTION_META = type(torch.autograd.Function)
_previous = copyreg.dispatch_table.get(_FUNCTION_META)
#: (definition, dependencies) -> the class made from them in this process.
_built: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class Definition:
    """The arguments of a `customgrad.function` call: all a fresh process needs to make the Function."""

    formula: str
    inputs: tuple[str, ...] | None
    grads: tuple[tuple[str, object], ...] | None
    name: str | None
    backend: str

    def make(self) -> type[torch.autograd.Function]:
        from .function import function

        grads = dict(self.grads) if self.grads is not None else None
        inputs = list(self.inputs) if self.inputs is not None else None
        return function(self.formula, inputs=inputs, grads=grads, name=self.name, backend=self.backend)


def remember(cls, formula, inputs, grads, name, backend) -> None:
    """Mark ``cls`` (made by ``function(formula, inputs=..., ...)``) to pickle by that definition."""
    definition = Definition(
        formula,
        tuple(cls.input_names) if inputs is not None else None,  # ``inputs`` may have been an iterator
        tuple(grads.items()) if grads is not None else None,
        name,
        backend,
    )
    dependencies = _dependencies([formula, *(t for t in (grads or {}).values() if isinstance(t, str))])
    cls._customgrad_definition = (definition, dependencies)
    _built[(definition, dependencies)] = cls


def _dependencies(texts) -> tuple:
    """(name, Function) of every user-registered function that ``texts`` call (built-ins need none)."""
    from . import library
    from .registry import REGISTRY

    called: set[str] = set()
    for text in texts:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        called |= {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    found = []
    for name in sorted(called):
        entry = REGISTRY.get(name)
        if entry is not None and entry.function is not None and library.builtin_entry(name) is not entry:
            found.append((name, entry.function))
    return tuple(found)


def _rebuild(definition: Definition, dependencies: tuple) -> type[torch.autograd.Function]:
    """The Function of ``definition``, with the functions it calls registered as when it was made."""
    for name, dependency in dependencies:
        _register(name, dependency)
    cls = _built.get((definition, dependencies))
    if cls is None:
        return definition.make()
    if definition.name is not None:
        _register(definition.name, cls)
    return cls


def _register(name: str, cls) -> None:
    """Register ``cls`` under ``name`` unless it is registered there already."""
    from .formula_spec import register_spec
    from .registry import REGISTRY, register

    entry = REGISTRY.get(name)
    if entry is not None and entry.function is cls:
        return
    if "_customgrad_definition" in vars(cls):
        register_spec(name, cls.spec, cls)
    else:
        register(name, cls)


def _reduce(cls):
    """How pickle stores the autograd Function class ``cls`` (see the module docstring)."""
    attributes = vars(cls)
    if "_customgrad_definition" in attributes:
        return _rebuild, attributes["_customgrad_definition"]
    if "_customgrad_twin_of" in attributes:
        return getattr, (attributes["_customgrad_twin_of"], "forward_ad")
    if cls.__module__ == "customgrad.generated":
        from . import library

        entry = library.builtin_entry(cls.__name__)
        if entry is not None and entry.function is cls:
            return library.builtin, (cls.__name__,)
        raise pickle.PicklingError(
            f"cannot pickle {cls.__name__}: only Functions made by customgrad.function (and their forward_ad) "
            "pickle; pickle the Function it belongs to instead"
        )
    return _previous(cls) if _previous is not None else cls.__qualname__


copyreg.pickle(_FUNCTION_META, _reduce)
