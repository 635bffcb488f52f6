"""The disk cache of `function`'s generated code: a formula defined before is rebuilt without SymPy.

Key (`definition_key`): the formula's `formula_key` (syntax tree and the definitions of the
registered functions it calls), the declared gradients' keys, the inputs as given, the name and the
backend; `customgrad.cache` adds the versions. Entry (JSON, namespace ``function``): what assembling
the Function needs at definition and first call, i.e. the input names, which inputs each partial
uses (``needs``), the declared gradients' text, the forward's generated torch source and the
backward's for all inputs (its source and the inputs it takes). Each source is stored alone: the
function it runs is the one it defines (`defined_function`), not one named after the class, whose
number (``Formula3``) depends on what the process defined before. Read back as `CachedSpec`: those
fields at hand, the SymPy `FunctionSpec` built on first use of anything else (fused kernels, second
order, forward mode, registration under a name, the eager twin).

Only backends whose kernels are the generated torch code are cached (`CACHED_BACKENDS`); calls of a
hand-written Function, or malformed arguments, are never cached (the uncached path reports them).

A fit of a formula uses the definition of ``function(formula)`` (`model_key`): the same key, the same
namespace, and in one process the same spec (`shared_spec`). Its own products of that spec (the
model's values and Jacobian rows, `fit.formula_model`) are stored beside the Function's entry, one
record per product (`load_product`, `store_product`).
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from collections.abc import Callable, Mapping

from . import cache
from .formula_key import formula_key

NAMESPACE = "function"
#: Backends whose kernels (forward and first backward) are the generated torch code.
CACHED_BACKENDS = ("auto", "eager", "compile")
#: Fields of an entry and of its backward records, with their JSON types.
_FIELDS = {"inputs": list, "formula": str, "declared": dict, "outputs": int, "source": str}
_DEFINITION = re.compile(r"def (\w+)\(")
#: The specs built in this process, by definition key (`shared_spec`); held as long as their users hold them.
_specs: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def defined_function(source: str) -> str | None:
    """The name of the function generated ``source`` defines (its first line), or None."""
    match = _DEFINITION.match(source)
    return match.group(1) if match else None


def definition_key(formula, inputs, grads, name, backend) -> str | None:
    """key(definition) = formula key + gradient keys + inputs + name + backend, or None: not cached."""
    if backend not in CACHED_BACKENDS or not isinstance(formula, str):
        return None
    if inputs is not None and not (isinstance(inputs, (list, tuple)) and all(isinstance(n, str) for n in inputs)):
        return None
    if grads is not None and not (isinstance(grads, Mapping) and all(isinstance(k, str) for k in grads)):
        return None
    parts: list = [formula_key(formula)]
    for input_name in sorted(grads or {}):
        text = grads[input_name]
        if isinstance(text, str):
            parts.append([input_name, formula_key(text)])
        elif type(text) in (int, float):
            parts.append([input_name, repr(text)])
        else:
            return None
    if any(part is None or (isinstance(part, list) and part[1] is None) for part in parts):
        return None
    return json.dumps([parts, list(inputs) if inputs is not None else None, name, backend])


def model_key(formula: str) -> str | None:
    """The key of ``function(formula)`` (inputs in order of appearance, no declared gradients, no name):
    a fit's model is that definition."""
    return definition_key(formula, None, None, None, "auto")


def shared_spec(key: str | None, build: Callable):
    """The spec of definition ``key`` built in this process, else ``build()`` (remembered under ``key``):
    a formula defined by `function` and fitted by `fit` is parsed, and its partials derived, once."""
    spec = _specs.get(key) if key is not None else None
    if spec is None:
        spec = remember_spec(key, build())
    return spec


def remember_spec(key: str | None, spec):
    """``spec``, remembered as the one built in this process for definition ``key`` (`shared_spec`)."""
    if key is not None:
        _specs[key] = spec
    return spec


def load_product(key: str | None, part: str) -> dict | None:
    """Record ``part`` (a fit's ``"evaluate"``, ``"rows torch a b"``, ...) of definition ``key``, or None
    (absent or damaged: the caller rebuilds it)."""
    if key is None:
        return None
    data = cache.load(NAMESPACE, (key, part))
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def store_product(key: str | None, part: str, record: dict) -> None:
    """Store record ``part`` of definition ``key`` beside its Function's entry (nothing when ``key`` is None)."""
    if key is not None:
        cache.store(NAMESPACE, (key, part), json.dumps(record).encode())


class CachedSpec:
    """A `FunctionSpec` read back from the cache: names, needs and torch source at hand, the rest of
    the spec (SymPy) built by ``build()`` on first use."""

    def __init__(self, name: str, record: dict, build: Callable):
        self.name = name
        self.input_names = tuple(record["inputs"])
        self.formula = record["formula"]
        self.declared_text = dict(record["declared"])
        self.output_count = record["outputs"]
        self.full_shape = tuple(record.get("full_shape", ()))
        self.torch_source = (record["source"], defined_function(record["source"]))
        self.backward_records = record.get("backwards", {})
        if "needs" in record:
            self.needs = tuple(tuple(n) for n in record["needs"])
        self._build = build

    @functools.cached_property
    def built(self):
        """The SymPy `FunctionSpec` (parsed and derived now)."""
        return self._build()

    def known_needs(self) -> tuple[tuple[int, ...], ...] | None:
        """``needs`` if read back or derived already, else None (deriving it would run SymPy)."""
        if "needs" in vars(self):
            return self.needs
        return self.built.needs if "built" in vars(self) else None

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.built, attribute)


def load(key: str | None, name: str, build: Callable, formula: str | None = None) -> CachedSpec | None:
    """The cached spec of definition ``key`` named ``name``, or None (absent or damaged: rebuild).

    ``formula``: the caller's text, which the spec reports (the entry may have been written for another
    spelling of the same formula: spacing, parentheses, a comment)."""
    if key is None:
        return None
    data = cache.load(NAMESPACE, key)
    try:
        record = json.loads(data) if data is not None else None
        backwards = record["backwards"].values() if isinstance(record, dict) else ()
        if not _valid(record) or not all(_valid(r) and isinstance(r.get("level"), int) for r in backwards):
            return None
        if formula is not None:
            record["formula"] = formula.strip()
        return CachedSpec(name, record, build)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _valid(record) -> bool:
    if not (isinstance(record, dict) and all(isinstance(record.get(f), t) for f, t in _FIELDS.items())):
        return False
    return defined_function(record["source"]) is not None


def backward_of(spec, needed: tuple[int, ...], derive: Callable, reserve: Callable) -> tuple:
    """(backward spec, used inputs) of ``needed``: from the cache record of ``spec`` when it holds
    them (``reserve(level)`` is told the gradient-name level the record's code uses; the SymPy spec
    is built with it on first use by ``derive(needed, level)``), else ``derive(needed)``."""
    record = getattr(spec, "backward_records", {}).get(_mask(needed))
    if record is None:
        return derive(needed)
    level = record["level"]
    reserve(level)
    return CachedSpec(f"{spec.name}_backward", record, lambda: derive(needed, level)[0]), list(record["used"])


def holds(spec, needed: tuple[int, ...]) -> bool:
    """Whether ``spec`` came from the cache with the backward of ``needed``."""
    return _mask(needed) in getattr(spec, "backward_records", {})


def store(key: str, spec, cls) -> None:
    """Write the entry of definition ``key``: ``spec``'s Function ``cls`` with its backwards built so far."""
    from .derive import backward_level

    record = _record(spec, cls)
    backwards = {}
    for needed, (function, used) in cls._backward_for.cache.items():
        level = backward_level(function.spec)
        backwards[_mask(needed)] = {**_record(function.spec, function), "used": list(used), "level": level}
    record.update(needs=[list(n) for n in spec.needs], backwards=backwards)
    cache.store(NAMESPACE, key, json.dumps(record).encode())


def _record(spec, cls) -> dict:
    return {
        "inputs": list(spec.input_names),
        "formula": spec.formula,
        "declared": dict(cls.declared_grads),
        "outputs": spec.output_count,
        "full_shape": list(spec.full_shape),
        "source": cls.forward_source,
    }


def _mask(needed: tuple[int, ...]) -> str:
    return ",".join(map(str, needed))
