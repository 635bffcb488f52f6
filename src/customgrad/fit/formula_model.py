"""A formula model compiled once: predictions, and residuals with their exact Jacobian in one call.

For a formula f(x; b) the Jacobian columns are the symbolic partials df/db_j: the outputs, with f,
of `derive.linearization_spec` of the model's `FunctionSpec`, emitted as one kernel whose common
subexpressions are shared (``exp(-b2*x)`` is computed once for f and for both partials), printed
as torch code for any device and dtype, numpy code for float64 on the CPU, where small problems
are dominated by per-call dispatch, or a fused C loop (the cpu backend's) for the batched fitter.
An iteration then costs a handful of vectorised ops and no autograd graph. Registered functions
enter the partials through their own partials (derived or declared), as they do under autograd; a
hand-written Function without symbolic partials leaves the model to autograd.

The model is the definition of ``customgrad.function(text)``: its spec comes from
`formula_spec.formula_spec` (the same validation; in one process the very spec a `function` of the
same text built, `function_cache.shared_spec`), and its generated code is stored on disk beside that
Function's entry, under the same key and namespace (`function_cache.model_key`, `load_product`): a
model fitted before is read back and compiled without SymPy. In memory, compiled models are kept by
text and the registry entries they were built against.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..codegen.runtime import compile_numpy, compile_source
from ..errors import CustomgradError
from ..function_cache import load_product, shared_spec, store_product
from ..function_cache import model_key as model_cache_key

if TYPE_CHECKING:
    import torch

    from ..derive import FunctionSpec

_CACHE_SIZE = 128


class FormulaModel:
    """``model(data, values)`` -> f(x; b) for a model formula, plus `linearization` for its Jacobian.

    Parameters
    ----------
    text : str
        The model formula.
    key : str, optional
        Its disk-cache key (`model_cache_key`), kept as ``cache_key``; None: generate everything, cache nothing.
    """

    def __init__(self, text: str, key: str | None = None):
        self.text = text
        self.cache_key = key
        record = load_product(key, "evaluate")
        if record is None:
            spec = self.spec  # raises FormulaError for a bad formula: nothing is cached then
            from ..codegen.torch import function_source

            # Registered functions called, not inlined: under autograd their own gradients apply.
            source = function_source("_expression", spec.input_names, spec.raw_outputs)
            record = {"names": list(spec.input_names), "source": source}
            store_product(key, "evaluate", record)
        self.names = tuple(record["names"])
        compiled = compile_source(record["source"], "_expression", f"<customgrad expression {text}>")
        self.evaluate = lambda *arguments: compiled(*arguments)[0]
        self.evaluate.source = record["source"]
        self._linearizations: dict[tuple, Callable | None] = {}
        self._row_specs: dict[tuple[str, ...], FunctionSpec] = {}

    def __reduce__(self):
        """Pickled as its text: unpickled, `formula_model` compiles it again (or finds it compiled)."""
        return formula_model, (self.text,)

    @functools.cached_property
    def spec(self) -> FunctionSpec:
        """The model's `FunctionSpec`: f over its names (data columns and parameters) in order of appearance,
        the spec of ``customgrad.function(text)`` (built on first use: a model read back from the disk
        cache needs none)."""
        from ..formula_spec import formula_spec

        return shared_spec(self.cache_key, lambda: formula_spec(self.text, class_name="Model", what="model"))

    def __call__(self, data: dict, values: dict) -> torch.Tensor:
        return self.evaluate(*(data[n] if n in data else values[n] for n in self.names))

    @functools.cached_property
    def precise(self) -> Callable | None:
        """The formula in 40-digit arithmetic (mpmath) over columns of values, or None.

        For a cost that float64 roundoff would swamp (Lanczos1: residuals ~1e-13 on values ~1). None
        when the formula calls something mpmath lacks.
        """
        import mpmath
        import sympy

        spec = self.spec
        try:
            # customgrad's own functions (sigmoid, softplus) in terms of exp; round as mpmath's nint.
            expression = spec.outputs[0].rewrite(sympy.exp)
            scalar = sympy.lambdify(spec.inputs, expression, modules=[{"Round": mpmath.nint}, "mpmath"])
        except Exception:  # noqa: BLE001 - anything unsupported just means: no precise evaluation
            return None

        def evaluate(columns: list) -> list:
            with mpmath.workdps(40):
                return [scalar(*(mpmath.mpf(c) for c in row)) for row in zip(*columns, strict=True)]

        return evaluate

    def linearization(self, free: tuple[str, ...], language: str = "torch") -> Callable | None:
        """``rows(out, *arguments)`` writing df/db_j into ``out[j]`` (j over ``free``) and f into ``out[-1]``.

        The kernel of `derive.linearization_spec` of the model's `spec`, printed by the code printer of
        ``language`` (``"torch"``: `codegen.torch`, ``"numpy"``: `codegen.numpy`); ``language="c"``: the
        cpu backend's fused C loop (`backends.cpu.CpuRows`; the torch rows where C cannot run).
        ``arguments`` are the formula's values in the order of `names`; ``out`` has shape (len(free) + 1, n):
        a tensor for ``"torch"`` and ``"c"``, an array for ``"numpy"``. None when a partial is not known
        symbolically (a hand-written registered Function) or the language cannot express the formula
        (numpy has no erf).
        """
        key = (free, language)
        if language == "c" and key not in self._linearizations:
            self._linearizations[key] = self._c_rows(free)
        if key not in self._linearizations:
            part = f"rows {language} {' '.join(free)}"
            record = load_product(self.cache_key, part)
            if record is None:
                try:
                    record = {"source": self._rows_source(free, language)}
                except (CustomgradError, NotImplementedError, TypeError, ValueError):
                    record = {"source": None}
                store_product(self.cache_key, part, record)
            source = record["source"]
            self._linearizations[key] = None if source is None else _Compiled(source, language, self.text)
        return self._linearizations[key]

    def values(self, language: str = "torch") -> Callable | None:
        """``value(out, *arguments)`` writing f into ``out[0]``; None where `linearization` gives None."""
        return self.linearization((), language)

    def rows_spec(self, free: tuple[str, ...]) -> FunctionSpec:
        """`derive.linearization_spec` of the model's `spec`: [df/db_j for b_j in ``free``] + [f]."""
        if free not in self._row_specs:
            from ..derive import linearization_spec

            self._row_specs[free] = linearization_spec(self.spec, free)
        return self._row_specs[free]

    def _rows_source(self, free: tuple[str, ...], language: str) -> str:
        """Source of ``def _rows(_out, *arguments)`` writing the rows into ``_out``, printed in ``language``."""
        from ..codegen.numpy import NumpyCodePrinter
        from ..codegen.torch import TorchCodePrinter, function_source

        spec = self.rows_spec(free)
        printer = {"torch": TorchCodePrinter, "numpy": NumpyCodePrinter}[language]()
        return function_source("_rows", list(spec.input_names), spec.outputs, into=True, printer=printer)

    def _c_rows(self, free: tuple[str, ...]) -> Callable | None:
        """The cpu backend's rows kernel, with the torch rows as its fallback (None: no symbolic rows)."""
        fallback = self.linearization(free, "torch")
        from ..backends.cpu import CpuRows, compiler

        if fallback is None or compiler() is None:
            return fallback
        c_source = functools.partial(self.c_source, free)
        return CpuRows(f"rows of {self.text}", len(self.names), c_source, fallback)

    def c_source(self, free: tuple[str, ...], single: bool, layouts: str) -> str | None:
        """The C source of the rows for one precision and input layouts, through the disk cache."""
        part = f"rows c {' '.join(free)} {'float' if single else 'double'} {layouts}"
        record = load_product(self.cache_key, part)
        if record is None:
            from ..backends.cpu import c_kernel_source
            from ..errors import BackendError

            try:
                record = {"source": c_kernel_source(self.rows_spec(free), single, layouts)}
            except BackendError:
                record = {"source": None}
            store_product(self.cache_key, part, record)
        return record["source"]


class _Compiled:
    """Generated rows code, compiled on first call (a fit on the numpy path never calls the torch rows)."""

    def __init__(self, source: str, language: str, text: str):
        self.source, self.language, self.text = source, language, text
        self._function: Callable | None = None

    def __call__(self, *arguments):
        if self._function is None:
            filename = f"<customgrad {self.language} rows of {self.text}>"
            compile_rows = compile_numpy if self.language == "numpy" else compile_source
            self._function = compile_rows(self.source, "_rows", filename)
        return self._function(*arguments)


_MODELS: dict[str, tuple[tuple, FormulaModel]] = {}


def check_formula(text: str) -> None:
    """Raise `FormulaError` unless ``text`` is a well-formed model formula; no torch, and no SymPy
    for a model whose code the disk cache holds (it was checked when it was stored)."""
    if load_product(model_cache_key(text), "evaluate") is None:
        from ..formula_spec import formula_spec

        formula_spec(text, class_name="Model", what="model")


def formula_model(text: str) -> FormulaModel:
    """The compiled `FormulaModel` of model formula ``text``, parsed and built once per registry state.

    Redefining a registered function invalidates the entry (the cache holds the registry entries it
    was built against, so their identities cannot be reused).
    """
    registry = sys.modules.get("customgrad.registry")  # not imported yet (no SymPy): nothing registered
    entries = tuple(registry.REGISTRY.items()) if registry is not None else ()
    cached = _MODELS.get(text)
    if (
        cached is not None
        and len(cached[0]) == len(entries)
        and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(cached[0], entries, strict=True))
    ):
        return cached[1]
    model = FormulaModel(text, model_cache_key(text))
    if len(_MODELS) >= _CACHE_SIZE:
        _MODELS.pop(next(iter(_MODELS)))
    _MODELS[text] = (entries, model)
    return model
