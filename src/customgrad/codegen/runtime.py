"""Running generated code: source -> function, with the names generated code may use.

No SymPy here, so that code read back from the disk cache runs without importing it: torch code
gets ``_torch``, ``_functools``, ``_full``, ``_widen``/``_narrow`` (half precision computed in float32)
and the registered Functions it calls; numpy code gets ``_numpy``, ``_functools`` and its helpers.
Generated names start with ``_``, so inputs may be called ``torch`` or ``numpy``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy

if TYPE_CHECKING:
    import torch

_REGISTERED_CALL = re.compile(r"\b_registered_(\w+)\(")


def runtime_namespace(source: str | None = None) -> dict:
    """Names generated code may use: torch and the registered functions (those ``source`` calls, if given)."""
    import torch  # here, not at the top: printing code (customgrad derive) needs no torch

    namespace = {"_torch": torch, "_functools": functools}
    called = set(_REGISTERED_CALL.findall(source)) if source is not None else None
    if called is None or called:
        # Only what the code calls (and nothing for code that calls none: no SymPy for cached code);
        # a built-in's Function is generated when first called.
        from ..registry import REGISTRY, lookup

        for name in called if called is not None else list(REGISTRY):
            entry = lookup(name)
            if entry is None:
                continue
            if called is None and entry.function is None:
                # Every name, for code not shown here: a built-in not generated yet stays so until called
                # (generating it now could recurse into the code generation that asked).
                namespace[f"_registered_{name}"] = _apply_on_first_call(entry)
            else:
                namespace[f"_registered_{name}"] = entry.autograd_function().apply
    return namespace


def _apply_on_first_call(entry) -> Callable:
    def apply(*arguments):
        return entry.autograd_function().apply(*arguments)

    return apply


def _full(value, *arguments) -> torch.Tensor:
    """``value`` as a new tensor with the broadcast shape of ``arguments`` (functional: vmap-safe)."""
    import torch

    tensors = [a for a in arguments if isinstance(a, torch.Tensor)]
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    if isinstance(value, torch.Tensor):
        return value + torch.zeros(shape, dtype=value.dtype, device=value.device)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    if not dtype.is_floating_point and not dtype.is_complex:
        dtype = torch.get_default_dtype()
    if dtype.is_floating_point and abs(value) > torch.finfo(dtype).max and abs(value) != torch.inf:
        # Rounded as the dtype rounds it (1e300 is inf in float32); torch.full refuses it instead.
        info = torch.finfo(dtype)
        half_step = info.eps * (info.max / (2 - info.eps)) / 2  # half the spacing of floats next to max
        magnitude = torch.inf if abs(value) >= info.max + half_step else info.max
        value = magnitude if value > 0 else -magnitude
    return torch.full(shape, value, dtype=dtype, device=tensors[0].device)


def _widen(*arguments) -> tuple:
    """``(*arguments, low)``: when the inputs promote to float16/bfloat16 (``low``), their half
    tensors as float32; otherwise the arguments unchanged and ``low`` None."""
    import torch

    dtypes = [a.dtype for a in arguments if isinstance(a, torch.Tensor)]
    low = functools.reduce(torch.promote_types, dtypes) if dtypes else None
    if low not in (torch.float16, torch.bfloat16):
        return (*arguments, None)
    widened = [
        a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a
        for a in arguments
    ]
    return (*widened, low)


def _narrow(outputs: tuple, low) -> tuple:
    """Floating ``outputs`` rounded to ``low`` (from `_widen`); unchanged when ``low`` is None."""
    if low is None:
        return outputs
    import torch

    return tuple(o.to(low) if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in outputs)


def _compile(source: str, filename: str):
    try:
        return compile(source, filename, "exec")
    except RecursionError:
        # A 5000-term sum compiles recursively: retry under a raised limit (SymPy is loaded then anyway).
        from ..formula import recursion_limit

        with recursion_limit():
            return compile(source, filename, "exec")


def compile_source(source: str, name: str, filename: str) -> Callable:
    """Compile generated source and return the function it defines."""
    namespace = runtime_namespace(source)
    namespace.update(_full=_full, _widen=_widen, _narrow=_narrow)
    exec(_compile(source, filename), namespace)  # noqa: S102 - generated code, not user text
    return namespace[name]


def _sigmoid(x):
    # 1 / (1 + exp(-x)), without overflow warnings mattering (exp(-x) = inf gives 0)
    return 1.0 / (1.0 + numpy.exp(-x))


def _softplus(x):
    # log(1 + exp(x)), stable for large x
    return numpy.logaddexp(0.0, x)


def compile_numpy(source: str, name: str, filename: str) -> Callable:
    """Compile generated numpy source and return the function it defines."""
    namespace = {"_numpy": numpy, "_functools": functools, "_sigmoid": _sigmoid, "_softplus": _softplus}
    exec(_compile(source, filename), namespace)  # noqa: S102 - generated code, not user text
    return namespace[name]
