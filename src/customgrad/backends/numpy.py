"""The numpy rows backend: a spec's outputs as generated numpy code writing into a caller's array.

For the fit engine on float64 CPU data, where a problem of a few hundred points is dominated by
per-call dispatch and a numpy call costs a fraction of a torch one. Not a `function` backend
(autograd Functions take tensors): it only emits rows kernels (`rows_source`), which
`codegen.runtime.compile_numpy` compiles, from the disk cache too, without SymPy.
"""

from __future__ import annotations

from ..codegen.numpy import NumpyCodePrinter
from ..codegen.torch import function_source
from ..derive import FunctionSpec


class NumpyBackend:
    """Generated numpy code over float64 arrays (CPU); functions numpy lacks (erf) raise NotImplementedError."""

    name = "numpy"

    def unavailable(self) -> str | None:
        return None

    def rows_source(self, spec: FunctionSpec, name: str) -> str:
        """Source of ``def name(_out, *inputs)`` writing output k into ``_out[k]``, in numpy."""
        return function_source(name, list(spec.input_names), spec.outputs, into=True, printer=NumpyCodePrinter())
