"""The eager backend: a spec's outputs as generated torch code (CSE-shared), on any device."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..codegen.torch import compile_source, function_source
from ..derive import FunctionSpec


def python_name(name: str) -> str:
    """``name`` made a Python identifier (generated backward names carry no odd characters, user names may)."""
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned.isidentifier() else f"_{cleaned}"


def torch_kernel(spec: FunctionSpec) -> Callable:
    """``kernel(*tensors) -> tuple`` of the spec's outputs, each with the inputs' broadcast shape."""
    if spec.torch_source is not None:  # read back from the disk cache (`function_cache`)
        source, name = spec.torch_source
    else:
        name = f"{python_name(spec.name)}_forward"
        source = kernel_source(spec, name)
    kernel = compile_source(source, name, f"<customgrad {spec.name} forward>")
    kernel.source = source
    return kernel


def kernel_source(spec: FunctionSpec, name: str) -> str:
    """The torch source of ``def name(*inputs) -> tuple`` of the spec's outputs (what `torch_kernel` runs)."""
    return function_source(name, list(spec.input_names), spec.outputs, full_shape=spec.full_shape)


class EagerBackend:
    """Generated torch code, run op by op (any device, any dtype)."""

    name = "eager"

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None."""
        return None

    def kernel(self, spec: FunctionSpec) -> Callable:
        return torch_kernel(spec)
