"""The model of a batch of fits: residuals r_b = s_b w_b (f(x_b; theta_b) - y_b) of B curves, with Jacobians.

s_b is 1, or a power of two for a curve whose cost would overflow or underflow float64 (exact: LM
and the standard errors do not depend on it; costs are divided by s_b^2 at the end).
Every curve has its own parameters theta_b (a row of ``theta``, shape (B, p)) and shares the formula,
bounds and, when x has shape (N,), the predictor. Entries masked out (NaN/inf in x, y or sigma, or the
NaN padding of shorter curves) give residual 0 and a zero Jacobian row, so they change neither the
cost nor R. A formula's Jacobian comes from its generated rows (one call writes f and every df/db_j for
all curves); a callable's from torch.func (forward mode, vmapped over curves, each curve called with
scalar parameters as in a single fit: exact for any model), or, for a model whose Functions have no
forward-mode rules, from one backward pass through per-entry copies of the parameters (exact for a
model pointwise in the data).
"""

from __future__ import annotations

import numpy as np
import torch

from .lm import BatchProblem
from .model import external_slope, external_values, to_internal

# Entries (curves x points) per call of the generated numpy code: its temporaries then stay in a
# core's L2 cache (10^4 x 64 Gaussian rows: 4.3 ms in one call, 3.0 ms in chunks of 512 curves).
CHUNK_ENTRIES = 1 << 15


def _on_arrays(generated):
    """A generated numpy ``rows(out, *arguments)`` called with tensors (CPU float64, shared memory).

    ``out`` is (rows, b, N); each argument (b, 1), (b, N) or shared (1, N). Called on chunks of curves.
    """

    def call(out: torch.Tensor, *arguments: torch.Tensor) -> None:
        rows, arrays = out.numpy(), [argument.numpy() for argument in arguments]
        batch = rows.shape[1]
        step = max(1, CHUNK_ENTRIES // max(1, rows.shape[-1]))
        if batch <= step:
            generated(rows, *arrays)
            return
        for begin in range(0, batch, step):
            end = begin + step
            generated(rows[:, begin:end], *(a[begin:end] if a.shape[0] == batch else a for a in arrays))

    return call


def _cpu_rows(function, names: tuple[str, ...], y: torch.Tensor, rows, value_rows) -> tuple:
    """The model's (rows, value rows) for CPU data ``y``: from `AUTO_CPU_MIN_SIZE` entries (B x N) the cpu
    backend's fused C loops where a C compiler is found (one SIMD pass: 10^4 x 64 Gaussian rows 0.7 ms
    against 3.0 ms for numpy in chunks; its first build, about 0.4 s, is cached on disk), else for
    float64 the generated numpy code; else the torch ``rows`` as given."""
    from ..backends import AUTO_CPU_MIN_SIZE
    from ..backends.cpu import compiler

    dtype = y.dtype
    if dtype in (torch.float64, torch.float32) and y.numel() >= AUTO_CPU_MIN_SIZE and compiler() is not None:
        c_rows, c_values = function.linearization(names, "c"), function.linearization((), "c")
        if c_rows is not None and c_values is not None:
            return c_rows, c_values
    if dtype == torch.float64:
        numpy_rows, numpy_values = function.linearization(names, "numpy"), function.values("numpy")
        if numpy_rows is not None and numpy_values is not None:
            return _on_arrays(numpy_rows), _on_arrays(numpy_values)
    return rows, value_rows


def _take(tensor: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
    """``tensor``'s rows at ``index``: curve numbers (a copy), or a slice of consecutive curves (a view)."""
    return tensor[index] if isinstance(index, slice) else tensor.index_select(0, index)


def _count(index: torch.Tensor | slice) -> int:
    """How many curves ``index`` (curve numbers, or a slice with start and stop) names."""
    return index.stop - index.start if isinstance(index, slice) else len(index)


class BatchModel(BatchProblem):
    """Residuals and [J | r] of B curves at their own parameters.

    Parameters
    ----------
    function : callable
        ``function(data, values)`` -> predictions, as for `model.Model`; values are (b, 1) tensors.
    data : dict of str -> Tensor
        Predictors of shape (1, N) (shared) or (B, N).
    y : Tensor
        Observations (B, N).
    weights : Tensor
        1 / sigma (B, N) or (1, N), or None.
    mask : Tensor
        (B, N) bool: the entries that count.
    specs : list of ParameterSpec
        All parameters (their ``value`` unused: see ``initial``).
    initial : dict of str -> ndarray
        Initial (or fixed) values per curve, shape (B,).
    """

    def __init__(self, function, data, y, weights, mask, specs, initial, text):
        self.function, self.data, self.y, self.weights, self.mask = function, data, y, weights, mask
        self.specs, self.initial, self.text = specs, initial, text
        self.masked = not _every(mask)
        # (B,) powers of two multiplying each curve's residuals, where its cost would overflow or underflow
        self.scales: torch.Tensor | None = None
        self.functional = True  # callables: torch.func until a model shows it does not support it
        self.free = [spec for spec in specs if not spec.fixed]
        self.names = tuple(spec.name for spec in self.free)
        self.bounded = [(i, spec) for i, spec in enumerate(self.free) if spec.bounded]
        self.fixed = {
            spec.name: torch.as_tensor(initial[spec.name], dtype=y.dtype, device=y.device).unsqueeze(-1)
            for spec in specs
            if spec.fixed
        }
        linearization = getattr(function, "linearization", None)
        self.rows = linearization(self.names) if linearization is not None else None
        self.value_rows = function.values() if self.rows is not None else None
        if self.rows is not None and y.device.type == "cpu":
            self.rows, self.value_rows = _cpu_rows(function, self.names, y, self.rows, self.value_rows)

    @property
    def batch(self) -> int:
        """Number of curves B."""
        return self.y.shape[0]

    def initial_theta(self) -> torch.Tensor:
        """Internal coordinates of the initial values, shape (B, p)."""
        columns = []
        for spec in self.free:
            values = np.asarray(self.initial[spec.name], dtype=np.float64)
            if spec.bounded:
                values = to_internal(spec, values)
            columns.append(values)
        return torch.as_tensor(np.stack(columns, axis=-1), dtype=self.y.dtype, device=self.y.device)

    def external(self, theta: torch.Tensor) -> torch.Tensor:
        """Parameter values (b, p) from internal coordinates."""
        return external_values(theta, self.bounded, -1)

    def _pick(self, tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.shape[0] == 1 and self.batch != 1 else _take(tensor, index)

    def _arguments(self, values: torch.Tensor, index: torch.Tensor) -> list:
        position = {name: j for j, name in enumerate(self.names)}
        arguments = []
        for name in self.function.names:
            if name in self.data:
                arguments.append(self._pick(self.data[name], index))
            elif name in self.fixed:
                arguments.append(_take(self.fixed[name], index))
            else:
                j = position[name]
                arguments.append(values[:, j : j + 1])
        return arguments

    def _named(self, values: torch.Tensor, index: torch.Tensor) -> tuple[dict, dict]:
        data = {name: self._pick(column, index) for name, column in self.data.items()}
        named = {name: values[:, j : j + 1] for j, name in enumerate(self.names)}
        named.update({name: _take(value, index) for name, value in self.fixed.items()})
        return data, named

    def _finish(self, f: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(f - y) w s, zero where masked; ``f`` (..., b, N) with the predictions in its last row."""
        f[..., -1, :, :] -= _take(self.y, index)
        if self.weights is not None:
            f *= self._pick(self.weights, index)
        if self.scales is not None:
            f *= _take(self.scales, index).unsqueeze(-1)
        return torch.where(_take(self.mask, index), f, 0.0) if self.masked else f

    def residuals(self, theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """r (b, N) of the curves at ``index`` with internal coordinates ``theta`` (b, p)."""
        values = self.external(theta)
        shape = (1, _count(index), self.y.shape[-1])
        if self.value_rows is not None:
            out = self.y.new_empty(shape)
            self.value_rows(out, *self._arguments(values, index))
        else:
            with torch.no_grad():
                out = torch.broadcast_to(self.function(*self._named(values, index)), shape[1:]).unsqueeze(0).clone()
        return self._finish(out, index)[0]

    def augmented(self, theta: torch.Tensor, index: torch.Tensor, *, external: bool = False) -> torch.Tensor:
        """[J | r] (b, N, p + 1); with ``external`` J is taken with respect to the values themselves."""
        values = theta if external else self.external(theta)
        p = len(self.names)
        if self.rows is not None:
            out = self.y.new_empty(p + 1, _count(index), self.y.shape[-1])
            self.rows(out, *self._arguments(values, index))
        else:
            out = self._function_rows(values, index)
        block = self._finish(out, index)
        if self.bounded and not external:
            for i, spec in self.bounded:
                block[i] *= external_slope(spec, theta[:, i : i + 1])
        return block.permute(1, 2, 0)

    def _function_rows(self, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[J | f] rows (p + 1, b, N) of a callable: torch.func (each curve called as in a single fit),
        or, where the model does not support it, one backward pass through per-entry copies."""
        if self.functional:
            try:
                return self._vmapped_rows(values, index)
            except Exception:  # noqa: BLE001 - e.g. an autograd Function without forward-mode rules
                self.functional = False
        return self._autograd_rows(values, index)

    def _vmapped_rows(self, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        from torch.func import jacfwd, vmap

        data, _ = self._named(values, index)
        fixed = {name: _take(value, index)[:, 0] for name, value in self.fixed.items()}
        size = self.y.shape[-1]

        def one_curve(theta, columns, constants):
            named = {name: theta[j] for j, name in enumerate(self.names)}
            named.update(constants)
            f = torch.broadcast_to(self.function(columns, named), (size,))
            return f, f

        data_dims = {name: None if column.shape[0] == 1 and _count(index) != 1 else 0 for name, column in data.items()}
        shared = {name: column[0] if data_dims[name] is None else column for name, column in data.items()}
        jacobian, f = vmap(jacfwd(one_curve, has_aux=True), in_dims=(0, data_dims, 0))(values, shared, fixed)
        return torch.cat([jacobian.permute(2, 0, 1), f.unsqueeze(0)]).contiguous()

    def _autograd_rows(self, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # per-entry copies of each parameter: d f_bn / d copy_bnj is J[b, n, j] for a pointwise model
        size = self.y.shape[-1]
        copies = values.detach().unsqueeze(-1).expand(*values.shape, size).clone().requires_grad_()
        data, named = self._named(copies, index)
        named.update({name: copies[:, j] for j, name in enumerate(self.names)})
        with torch.enable_grad():
            f = torch.broadcast_to(self.function(data, named), (_count(index), size))
            grad = None
            if f.requires_grad:
                (grad,) = torch.autograd.grad(f, copies, torch.ones_like(f), allow_unused=True)
        out = torch.cat([torch.zeros_like(copies.detach()) if grad is None else grad, f.detach().unsqueeze(1)], dim=1)
        return out.transpose(0, 1).contiguous()


def _every(mask: torch.Tensor) -> bool:
    """True where every entry of the bool ``mask`` is set (on the CPU through numpy: torch's bool reduction
    takes ~0.2 ms over 10^4 x 64 entries, numpy's ~5 us)."""
    return bool(mask.numpy().all()) if mask.device.type == "cpu" else bool(mask.all())
