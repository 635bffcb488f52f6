"""The compile backend: the eager backend's generated torch code under ``torch.compile``.

Compiled with ``dynamic=True`` so a new size reuses the graph instead of recompiling. Inside an outer
``torch.compile`` the plain code runs (Dynamo traces it into the outer graph). Inputs are passed
detached (the kernels run inside a Function's forward or backward, where autograd does not look), so
``requires_grad`` never causes a recompile; a new dtype, number of dimensions or layout does, and past
Dynamo's ``recompile_limit`` such a call runs the plain code (one warning per process), never a hard
failure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch._dynamo.exc import FailOnRecompileLimitHit

from ..derive import FunctionSpec
from .eager import torch_kernel


class CompileBackend:
    """Generated torch code compiled by inductor (fused loops on CPU and CUDA)."""

    name = "compile"

    def unavailable(self) -> str | None:
        return None

    def kernel(self, spec: FunctionSpec) -> Callable:
        plain = torch_kernel(spec)
        compiled = torch.compile(plain, dynamic=True, fullgraph=True)

        def kernel(*tensors):
            # Inside an outer compile Dynamo traces the plain code; under vmap it runs op by op.
            if torch.compiler.is_compiling() or any(map(torch._C._functorch.is_functorch_wrapped_tensor, tensors)):
                return plain(*tensors)
            try:
                outputs = compiled(*[t.detach() for t in tensors])
            except FailOnRecompileLimitHit:
                _warn_recompile_limit(spec.name)
                return plain(*tensors)
            # Inductor may return an input itself (g + zeros -> g); autograd.Function forbids it.
            storages = {t.untyped_storage().data_ptr() for t in tensors}
            return tuple(o.clone() if o.untyped_storage().data_ptr() in storages else o for o in outputs)

        kernel.source = plain.source
        kernel.plain = plain
        return kernel


_warned: list[str] = []


def _warn_recompile_limit(name: str) -> None:
    """One warning per process, at the first kernel that reached Dynamo's recompile limit."""
    if not _warned:
        _warned.append(name)
        warnings.warn(
            f"customgrad backend 'compile': {name} was called with more kinds of inputs (dtypes, numbers of "
            "dimensions, layouts) than torch._dynamo.config.recompile_limit allows recompiling for; those "
            "calls (of any Function) run the generated torch code uncompiled, with the same values. Raise the "
            "limit to compile them too",
            RuntimeWarning,
            stacklevel=2,
        )
