"""The launcher: what every backend's kernels share around them.

Argument checks (tensors or real numbers, shapes that broadcast), numbers turned into tensors
(torch's rule for Python scalars), the dtype torch's promotion gives the call, and the reduction of
full-shape gradients back to each input's shape and dtype.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes

from .errors import UsageError


def checked_arguments(arguments: Sequence, names: Sequence[str], function_name: str) -> list:
    """The call's arguments if each is a real tensor or a real Python number (numpy scalars become
    Python numbers); anything else is a `UsageError` naming the input."""
    checked = list(arguments)
    for position, (name, value) in enumerate(zip(names, arguments, strict=False)):
        if isinstance(value, torch.Tensor):
            if value.is_complex():
                raise UsageError(
                    f"{function_name}: input {name!r} is a {value.dtype} tensor, but formulas are "
                    "real-valued: pass the real and imaginary parts (x.real, x.imag) as real tensors"
                )
            continue
        if isinstance(value, (bool, int, float)) and type(value) in (bool, int, float):
            number = value
        elif isinstance(value, numbers.Real):  # numpy scalars
            number = int(value) if isinstance(value, numbers.Integral) else float(value)
        else:
            hint = (
                " (convert it with torch.as_tensor(...))"
                if isinstance(value, (list, tuple)) or hasattr(value, "__array__")
                else ""
            )
            raise UsageError(
                f"{function_name}: input {name!r} must be a tensor or a real Python number, "
                f"got {type(value).__name__}{hint}"
            )
        if isinstance(number, int) and not isinstance(number, bool):
            try:
                float(number)
            except OverflowError:
                raise UsageError(
                    f"{function_name}: input {name!r} is an integer with {len(str(abs(number)))} "
                    "digits, too large for a floating-point tensor"
                ) from None
        checked[position] = number
    return checked


def broadcast_error(arguments: Sequence, names: Sequence[str], function_name: str) -> UsageError | None:
    """A `UsageError` naming the inputs and their shapes when the tensor inputs do not broadcast."""
    shapes = [(name, tuple(a.shape)) for name, a in zip(names, arguments, strict=False) if isinstance(a, torch.Tensor)]
    try:
        torch.broadcast_shapes(*(shape for _, shape in shapes))
    except RuntimeError:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes)
        return UsageError(
            f"{function_name}: the shapes of the inputs do not broadcast together ({listed}): "
            "each dimension must match or be 1 (torch broadcasting rules)"
        )
    return None


def device_error(tensors: Sequence, names: Sequence[str], function_name: str) -> UsageError | None:
    """A `UsageError` naming two inputs on different devices (0-d CPU tensors go with any device, as in torch)."""
    placed = [
        (name, t.device)
        for name, t in zip(names, tensors, strict=False)
        if isinstance(t, torch.Tensor) and (t.dim() or t.device.type != "cpu")
    ]
    for name, place in placed[1:]:
        if place != placed[0][1]:
            first, where = placed[0]
            return UsageError(
                f"{function_name}: inputs are on different devices: {first!r} on {where}, {name!r} on {place}: "
                f"move them to one device (e.g. {name}.to({first}.device))"
            )
    return None


def _as_tensor_arguments(arguments: Sequence) -> list:
    """Numbers become tensors in the dtype and on the device of the first tensor (torch's rule for
    Python scalars); when there is no tensor at all, the default dtype on the CPU."""
    if all(isinstance(a, torch.Tensor) for a in arguments):
        return list(arguments)
    reference = next((a for a in arguments if isinstance(a, torch.Tensor)), None)
    if reference is None:
        dtype, device = torch.get_default_dtype(), None
    else:
        dtype = reference.dtype if reference.is_floating_point() else torch.get_default_dtype()
        device = reference.device
    return [a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=dtype, device=device) for a in arguments]


def promoted_dtype(arguments: Sequence) -> torch.dtype:
    """The dtype torch's type promotion gives an elementwise op of ``arguments`` (tensors and numbers)."""
    first = arguments[0]
    if isinstance(first, torch.Tensor) and all(
        isinstance(a, torch.Tensor) and a.dtype == first.dtype for a in arguments
    ):
        return first.dtype
    if torch.compiler.is_compiling():
        # elementwise_dtypes is not traceable by Dynamo before torch 2.13: let torch promote empty
        # stand-ins (same dtype and dimensionality) instead, which follows the same rules.
        tensors = [a for a in arguments if isinstance(a, torch.Tensor)]
        numbers = [a for a in arguments if not isinstance(a, torch.Tensor)]
        probes = [torch.empty((0,) if t.dim() else (), dtype=t.dtype, device=t.device) for t in tensors]
        return functools.reduce(torch.add, [*probes, *numbers]).dtype
    return elementwise_dtypes(*arguments, type_promotion_kind=ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT)[1]


def result_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype torch's promotion gives an elementwise op of ``tensors`` (0-d tensors count only when
    all are 0-d)."""
    first = tensors[0].dtype
    if all(t.dtype == first for t in tensors):
        return first
    dimensioned = [t.dtype for t in tensors if t.dim()] or [t.dtype for t in tensors]
    return functools.reduce(torch.promote_types, dimensioned)


def reduce_gradient(gradient: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A full-shape gradient summed back to an input's ``shape`` (broadcasting's adjoint) in its ``dtype``."""
    if gradient.shape != shape:
        gradient = gradient.sum_to_size(shape)
    return gradient if gradient.dtype == dtype else gradient.to(dtype)


def flat_operand(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A kernel operand for a loop over ``shape``'s elements: one number, or a full-shape contiguous
    tensor (a copy when the input is broadcast or strided)."""
    if tensor.numel() == 1:
        return tensor.reshape(1).contiguous()
    if tensor.numel() and all(stride == 0 for stride in tensor.stride()):
        return tensor.as_strided((1,), (1,)).contiguous()  # one number expanded (sum()'s upstream gradient)
    if tensor.shape == shape and tensor.is_contiguous():
        return tensor
    return tensor.expand(shape).contiguous()


def broadcast_shape(tensors: Sequence[torch.Tensor]) -> torch.Size:
    """The broadcast shape of ``tensors`` (torch's rule, a `RuntimeError` where it fails); a plain loop,
    since ``torch.broadcast_shapes`` costs tens of microseconds a call."""
    widest = max(tensors, key=lambda t: t.dim()).shape
    if all(t.shape == widest or (t.dim() == 0 and t.numel() == 1) for t in tensors):
        return widest
    result = list(widest)
    for tensor in tensors:
        offset = len(result) - tensor.dim()
        for k, size in enumerate(tensor.shape):
            current = result[offset + k]
            if size != current and size != 1:
                if current != 1:
                    raise RuntimeError(f"shapes {[tuple(t.shape) for t in tensors]} do not broadcast")
                result[offset + k] = size
    return torch.Size(result)
