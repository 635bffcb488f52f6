"""The compile backend: the eager backend's generated torch code under ``torch.compile``.

Compiled with ``dynamic=True`` so a new size reuses the graph instead of recompiling. Inside an outer
``torch.compile`` the plain code runs (Dynamo traces it into the outer graph).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

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
            outputs = compiled(*tensors)
            # Inductor may return an input itself (g + zeros -> g); autograd.Function forbids it.
            storages = {t.untyped_storage().data_ptr() for t in tensors}
            return tuple(o.clone() if o.untyped_storage().data_ptr() in storages else o for o in outputs)

        kernel.source = plain.source
        kernel.plain = plain
        return kernel
