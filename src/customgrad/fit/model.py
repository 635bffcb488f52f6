"""The model of a fit: residuals r_b = s_b w_b (f(x_b; theta_b) - y_b) of B curves and their exact
Jacobians; a single fit is a batch of one.

A model is a formula (``"b1*(1 - exp(-b2*x))"``) or a Python callable ``f(x, **params)`` built from
torch ops and autograd Functions (`build_function`). Every curve has its own parameters theta_b (a row
of ``theta``, shape (B, p); a single fit's (p,)) in internal coordinates (`parameters`), and shares the
formula, the bounds and, when x has shape (1, N), the predictor. w_b is 1 / sigma_b; s_b is 1, or in a
batch a power of two for a curve whose cost would overflow or underflow float64 (exact: costs are
divided by s_b^2 at the end). Entries masked out (NaN/inf in x, y or sigma, or the NaN padding of
shorter curves) give residual 0 and a zero Jacobian row, so they change neither the cost nor R.

A formula's Jacobian comes from its generated rows: one call writes f and every df/db_j for all curves
(`formula_model`): for a CPU float64 batch of one in numpy (a numpy call costs a fraction of a torch
dispatch), else on the CPU from `AUTO_CPU_MIN_SIZE` entries the cpu backend's fused C loops, else numpy
(float64) or torch. A callable's comes in a batch from torch.func (forward mode, vmapped over curves,
each curve called as a single fit calls it: exact for any model); in a single fit, and in a batch whose
Functions have no forward-mode rules, from one backward pass through per-entry copies of the parameters,
exact for a model pointwise in the data (each f_i depends on row i only). A single fit checks that once
(`Model.check_pointwise`) and differentiates a model that mixes rows row by row instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FitError, UsageError
from .formula_model import formula_model
from .lm import BatchProblem
from .parameters import ParameterSpec, external_slope, external_values, to_internal

# The formula language's constants (`functions.CONSTANTS`), as a message describes them: a parameter
# or data column of that name would never be seen by the formula.
CONSTANT_NAMES = {"E": "Euler's number e = 2.71828...", "pi": "the number pi = 3.14159..."}
# Entries (curves x points) per call of the generated numpy code in a batch: its temporaries then stay
# in a core's L2 cache (10^4 x 64 Gaussian rows: 4.3 ms in one call, 3.0 ms in chunks of 512 curves).
CHUNK_ENTRIES = 1 << 15


@dataclass
class _Curve:
    """A CPU float64 batch of one's curve as numpy arrays, for its generated numpy code (numpy's operations
    on (1, N) arrays and (1, 1) parameters cost up to twice those on (N,) and scalars): per argument in call
    order a data column (N,) or fixed value (a scalar), or None and the free parameter's position; y (N,);
    the weights (N,) or None."""

    slots: list[tuple[object, int | None]]
    y: np.ndarray
    weights: np.ndarray | None


class Model(BatchProblem):
    """Residuals and [J | r] of B curves at their own parameters (a single fit: B = 1).

    Parameters
    ----------
    function : callable
        ``function(data, values)`` -> predictions (`build_function`).
    data : dict of str -> Tensor
        Predictors of shape (1, N) (shared) or (B, N).
    y : Tensor
        Observations (B, N).
    weights : Tensor or None
        1 / sigma, (1, N) or (B, N).
    specs : list of ParameterSpec
        All parameters, free and fixed.
    text : str
        The model as given (a callable's name).
    initial : dict of str -> ndarray, optional
        Initial (or fixed) values per curve, shape (B,); default: the specs' values.
    mask : Tensor, optional
        (B, N) bool: the entries that count (default: all).
    scales : Tensor, optional
        (B,) powers of two multiplying each curve's residuals.
    functional : bool
        A callable's Jacobian by torch.func (a batch's), else by autograd (a single fit's).
    """

    def __init__(self, function, data, y, weights, specs, text, *, initial=None, mask=None, scales=None,
                 functional=False):  # fmt: skip
        self.function, self.data, self.y, self.weights, self.mask = function, data, y, weights, mask
        self.specs, self.text, self.scales, self.functional = specs, text, scales, functional
        self.initial = initial
        self.masked = mask is not None and not _every(mask)
        self.pointwise = True  # a callable's per-entry copies give J (`check_pointwise` decides in a single fit)
        self.free = [spec for spec in specs if not spec.fixed]
        self.names = tuple(spec.name for spec in self.free)
        self.bounded = [(i, spec) for i, spec in enumerate(self.free) if spec.bounded]
        self.fixed = {
            spec.name: torch.as_tensor(self._initial(spec), dtype=y.dtype, device=y.device).reshape(-1, 1)
            for spec in specs
            if spec.fixed
        }
        position = {name: j for j, name in enumerate(self.names)}
        # the generated functions' arguments in call order: a data column or fixed value, or a free one's position
        self._slots = [(data.get(n, self.fixed.get(n)), position.get(n)) for n in getattr(function, "names", ())]
        self.rows = self.value_rows = self.numpy_rows = self.numpy_values = self._curve = None
        if hasattr(function, "linearization"):
            self.rows, self.value_rows = function.linearization(self.names), function.values()
            self._numpy_rows()
            if self._curve is None and y.is_cpu:
                self._cpu_rows()

    def __reduce__(self):
        """Pickled as what it is built from (a formula's kernels come back from the caches, not the pickle)."""
        options = {"initial": self.initial, "mask": self.mask, "scales": self.scales, "functional": self.functional}
        arguments = (self.function, self.data, self.y, self.weights, self.specs, self.text)
        return _rebuilt, (type(self), arguments, options, self.pointwise)

    def _numpy_rows(self) -> None:
        """A CPU float64 model's generated numpy rows and values of one curve (``numpy_rows``,
        ``numpy_values``: what the native engine's shared library calls back), and for a batch of one
        the `_Curve` they read here."""
        y, function = self.y, self.function
        if not y.is_cpu or y.dtype != torch.float64:
            return
        self.numpy_rows, self.numpy_values = function.linearization(self.names, "numpy"), function.values("numpy")
        if self.numpy_rows is None or self.numpy_values is None:
            self.numpy_rows = self.numpy_values = None
            return
        if y.shape[0] != 1 or self.masked or self.scales is not None:
            return
        arrays = {name: column.numpy()[0] for name, column in self.data.items()}
        arrays.update({name: value.numpy()[0, 0] for name, value in self.fixed.items()})
        slots = [(arrays.get(name), j) for name, (_, j) in zip(function.names, self._slots, strict=True)]
        weights = None if self.weights is None else self.weights.numpy()[0]
        self._curve = _Curve(slots, y.numpy()[0], weights)

    def _cpu_rows(self) -> None:
        """The rows and value rows for CPU data: from `AUTO_CPU_MIN_SIZE` entries (B x N) the cpu backend's
        fused C loops where a C compiler is found (one SIMD pass: 10^4 x 64 Gaussian rows 0.7 ms against
        3.0 ms for numpy in chunks; its first build, about 0.4 s, is cached on disk), else for float64 the
        generated numpy code (`_on_arrays`); else the torch ones."""
        from ..backends import AUTO_CPU_MIN_SIZE
        from ..backends.cpu import compiler

        y, function = self.y, self.function
        if y.dtype in (torch.float64, torch.float32) and y.numel() >= AUTO_CPU_MIN_SIZE and compiler() is not None:
            c_rows, c_values = function.linearization(self.names, "c"), function.linearization((), "c")
            if c_rows is not None and c_values is not None:
                self.rows, self.value_rows = c_rows, c_values
                return
        if self.numpy_rows is not None:
            self.rows, self.value_rows = _on_arrays(self.numpy_rows), _on_arrays(self.numpy_values)

    @property
    def batch(self) -> int:
        """Number of curves B."""
        return self.y.shape[0]

    @property
    def size(self) -> int:
        """Number of data points N per curve."""
        return self.y.shape[-1]

    def initial_theta(self) -> torch.Tensor:
        """Internal coordinates of the initial values, shape (B, p)."""
        theta = np.empty((self.batch, len(self.free)))
        for j, spec in enumerate(self.free):
            values = self._initial(spec)  # (a number, or one per curve)
            theta[:, j] = to_internal(spec, np.asarray(values, dtype=np.float64)) if spec.bounded else values
        return torch.from_numpy(theta).to(self.y)

    def _initial(self, spec: ParameterSpec) -> np.ndarray | float:
        """The initial (or fixed) values of parameter ``spec``: one per curve, or the spec's for all."""
        return spec.value if self.initial is None else self.initial[spec.name]

    def external(self, theta: torch.Tensor) -> torch.Tensor:
        """Parameter values (..., p) from internal coordinates (..., p)."""
        return external_values(theta, self.bounded)

    def weighted_y(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """y w s (b, N) of the curves at ``index`` (None: all), 0 where masked."""
        y = _pick(self.y, index)
        if self.weights is not None:
            y = y * _pick(self.weights, index)
        if self.scales is not None:
            y = y * _pick(self.scales, index).unsqueeze(-1)
        return torch.where(_pick(self.mask, index), y, 0.0) if self.masked else y

    def residuals(self, theta: torch.Tensor, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """r (b, N) of the curves at ``index`` (None: all) at internal coordinates ``theta`` (b, p); of a
        single fit's ``theta`` (p,): r (N,)."""
        values = self.external(theta)
        if self._curve is not None:
            r = self._curve_block(self.numpy_values, 1, values.numpy().reshape(-1))
            return torch.from_numpy(r if theta.dim() > 1 else r[0])
        if self.value_rows is not None:
            r = self._finish(self._generated(self.value_rows, 1, _curves(values), index), index)[0]
        else:
            with torch.no_grad():
                r = self._weigh(self._call(_curves(values), index) - _pick(self.y, index), index)
        return r if theta.dim() > 1 else r[0]

    def augmented(self, theta: torch.Tensor, index=None, *, external: bool = False) -> torch.Tensor:
        """[J | r] (b, N, p + 1) of the curves at ``index`` (None: all) at ``theta`` (b, p); of a single
        fit's ``theta`` (p,): (N, p + 1). With ``external`` J is taken with respect to the values themselves
        (for standard errors), not the internal coordinates. Each curve's block is column-major (LAPACK's QR)."""
        values = theta if external else self.external(theta)
        rows, single = len(self.names) + 1, theta.dim() == 1
        if self._curve is not None:  # in numpy up to the end: a block (p + 1, N)
            block = self._curve_block(self.numpy_rows, rows, values.numpy().reshape(-1))
            theta = theta.numpy().reshape(-1)
        elif self.rows is not None:
            block = self._finish(self._generated(self.rows, rows, _curves(values), index), index)
        else:
            block = self._weigh(self._callable_rows(values, index), index)
        if self.bounded and not external:
            for i, spec in self.bounded:
                block[i] *= external_slope(spec, theta[..., i : i + 1])
        if self._curve is not None:
            return torch.from_numpy(block.T if single else block.T[None])
        block = block.permute(1, 2, 0)
        return block[0] if single else block

    def jacobian(self, theta: torch.Tensor, *, external: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A single fit's residuals r (N,) and Jacobian J = dr/dtheta (N, p) at ``theta`` (p,) (`augmented`)."""
        block = self.augmented(theta, external=external)
        return block[:, -1], block[:, :-1]

    def predict(self, values: torch.Tensor) -> torch.Tensor:
        """A single fit's predictions f(x; values) (N,) at external parameter values (p,), differentiable."""
        if self._curve is not None and not values.requires_grad:
            return torch.from_numpy(self._curve_block(self.numpy_values, 1, values.numpy(), finish=False)[0])
        return self._curve_call(values)

    def _generated(self, generated: Callable, rows: int, values: torch.Tensor, index) -> torch.Tensor:
        """The block (rows, b, N) a generated function writes at external ``values`` (b, p) of the curves at
        ``index``."""
        out = self.y.new_empty((rows, len(values), self.size))
        free = [values[:, j : j + 1] for j in range(values.shape[-1])]
        generated(out, *[_pick(value, index) if j is None else free[j] for value, j in self._slots])
        return out

    def _curve_block(self, generated: Callable, rows: int, values: np.ndarray, *, finish: bool = True) -> np.ndarray:
        """A batch of one's block (rows, N) from its generated numpy code at external ``values`` (p,): f, or
        (f - y) w in the last row with ``finish`` (as `_finish`)."""
        curve, free = self._curve, list(values)
        out = np.empty((rows, self.size))
        generated(out, *[value if j is None else free[j] for value, j in curve.slots])
        if finish:
            out[-1] -= curve.y
            if curve.weights is not None:
                out *= curve.weights
        return out

    def _finish(self, block: torch.Tensor, index) -> torch.Tensor:
        """(f - y) w s of the curves at ``index``, 0 where masked; ``block`` (k, b, N) holds f in its last row."""
        block[-1] -= _pick(self.y, index)
        return self._weigh(block, index)

    def _weigh(self, block: torch.Tensor, index) -> torch.Tensor:
        """``block`` (..., b, N) times w s of the curves at ``index``, 0 where masked (as `_finish`)."""
        if self.weights is not None:
            block *= _pick(self.weights, index)
        if self.scales is not None:
            block *= _pick(self.scales, index).unsqueeze(-1)
        return torch.where(_pick(self.mask, index), block, 0.0) if self.masked else block

    def _call(self, values: torch.Tensor, index) -> torch.Tensor:
        """A callable's predictions f (b, N) at values (b, p) or per-entry copies (b, p, N) of the curves at
        ``index``: a batch of one called as a single fit calls it (data (N,), each parameter a scalar or its
        (N,) copies), a batch with data (1 or b, N) and parameters (b, 1) (copies: (b, N))."""
        shape = (len(values), self.size)
        if self.batch == 1:
            return self._curve_call(values[0]).expand(shape)
        data, named = self._inputs(index)
        per_curve = values if values.dim() == 3 else values.unsqueeze(-1)
        named.update({name: per_curve[:, j] for j, name in enumerate(self.names)})
        return torch.broadcast_to(self.function(data, named), shape)

    def _inputs(self, index) -> tuple[dict, dict]:
        """The data columns (1 or b, N) and fixed values (b, 1) of the curves at ``index``, by name."""
        data = {name: _pick(column, index) for name, column in self.data.items()}
        return data, {name: _pick(value, index) for name, value in self.fixed.items()}

    def _curve_call(self, values: torch.Tensor) -> torch.Tensor:
        """A batch of one's predictions f (N,) at values (p,) or per-entry copies (p, N), the callable called
        as a single fit calls it: data (N,), each parameter a scalar (or its (N,) copies)."""
        data, fixed = self._one_curve
        named = dict(zip(self.names, values.unbind(0), strict=True))
        named.update(fixed)
        return torch.broadcast_to(self.function(data, named), (self.size,))

    @functools.cached_property
    def _one_curve(self) -> tuple[dict, dict]:
        """A batch of one's data columns (N,) and fixed values (scalars)."""
        data = {name: column[0] for name, column in self.data.items()}
        return data, {name: value[0, 0] for name, value in self.fixed.items()}

    def _callable_rows(self, values: torch.Tensor, index) -> torch.Tensor:
        """[J | f - y] rows (p + 1, b, N) of a callable at external ``values`` (b, p) (a single fit's: (p,)): by
        torch.func (a batch), by autograd through per-entry copies (a single fit, or a model without
        forward-mode rules), or row by row (a single fit's model that mixes rows, `check_pointwise`)."""
        if self.functional:
            try:
                return self._vmapped_rows(_curves(values), index)
            except Exception:  # noqa: BLE001 - e.g. an autograd Function without forward-mode rules
                self.functional = False
        values = _curves(values)
        if not self.pointwise:
            return self._rows_one_by_one(values[0])
        copies = values.detach().unsqueeze(-1).expand(*values.shape, self.size).clone().requires_grad_()
        with torch.enable_grad():
            f = self._call(copies, index)
            grad = None
            if f.requires_grad:
                (grad,) = torch.autograd.grad(f, copies, torch.ones_like(f), allow_unused=True)
        r = f.detach() - _pick(self.y, index)
        out = torch.cat([torch.zeros_like(copies.detach()) if grad is None else grad, r.unsqueeze(-2)], -2)
        return out.transpose(0, 1).contiguous()

    def _vmapped_rows(self, values: torch.Tensor, index) -> torch.Tensor:
        """[J | f - y] rows (p + 1, b, N) by torch.func: each curve called as a single fit calls it."""
        from torch.func import jacfwd, vmap

        data, fixed = self._inputs(index)
        fixed = {name: value[:, 0] for name, value in fixed.items()}
        size, count = self.size, len(values)

        def one_curve(theta, columns, constants):
            named = {name: theta[j] for j, name in enumerate(self.names)}
            named.update(constants)
            f = torch.broadcast_to(self.function(columns, named), (size,))
            return f, f

        dims = {name: None if column.shape[0] == 1 and count != 1 else 0 for name, column in data.items()}
        shared = {name: column[0] if dims[name] is None else column for name, column in data.items()}
        jacobian, f = vmap(jacfwd(one_curve, has_aux=True), in_dims=(0, dims, 0))(values, shared, fixed)
        return torch.cat([jacobian.permute(2, 0, 1), (f - _pick(self.y, index)).unsqueeze(0)]).contiguous()

    def _rows_one_by_one(self, values: torch.Tensor) -> torch.Tensor:
        """[J | f - y] rows (p + 1, 1, N) at values (p,) of a single fit's callable that mixes rows: one
        backward pass per row."""
        leaf = values.detach().clone().requires_grad_()
        with torch.enable_grad():
            f = self._curve_call(leaf)
            rows = [torch.autograd.grad(f[i], leaf, retain_graph=True, allow_unused=True)[0] for i in range(self.size)]
        zero = torch.zeros_like(leaf)
        jacobian = torch.stack([zero if row is None else row for row in rows], -1)  # (p, N)
        return torch.cat([jacobian, f.detach() - self.y]).unsqueeze(1)

    def check_pointwise(self, theta: torch.Tensor) -> None:
        """Compare J^T v of a single fit's per-entry-copies Jacobian at ``theta`` (p,) with a plain backward
        pass, once; a model that mixes rows is differentiated row by row from then on."""
        if self.rows is not None:
            return  # a formula is pointwise by construction
        r, jacobian = self.jacobian(theta)
        leaf = theta.detach().clone().requires_grad_()
        v = torch.linspace(-1.0, 2.0, self.size, dtype=r.dtype, device=r.device)
        with torch.enable_grad():
            out = self.predict(self.external(leaf))
            out = out if self.weights is None else out * self.weights[0]
            if not out.requires_grad:
                return
            (expected,) = torch.autograd.grad(out, leaf, v, allow_unused=True)
        if expected is None:
            return
        got = jacobian.T @ v
        scale = expected.abs() + (jacobian.abs().T @ v.abs()) + 1e-300
        if not bool((((got - expected).abs() / scale) <= 1e-8).all()):
            self.pointwise = False


def _pick(tensor, index):
    """``tensor``'s rows of the curves at ``index`` (curve numbers, or a slice: a view): all of them for None,
    and the one row of a shared tensor (1, ...) or of a batch of one."""
    if index is None or tensor.shape[0] == 1:
        return tensor
    return tensor[index] if isinstance(index, slice) else tensor.index_select(0, index)


def _curves(theta):
    """``theta`` (b, p) as it is, a single fit's (p,) as (1, p): a tensor or a numpy array."""
    return theta if theta.ndim > 1 else theta[None]


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


def _rebuilt(kind: type, arguments: tuple, options: dict, pointwise: bool) -> Model:
    """A pickled `Model` (or subclass, whose ``options`` are its own) built again (`Model.__reduce__`)."""
    model = kind(*arguments, **options)
    model.pointwise = pointwise
    return model


def _every(mask: torch.Tensor) -> bool:
    """True where every entry of the bool ``mask`` is set (on the CPU through numpy: torch's bool reduction
    takes ~0.2 ms over 10^4 x 64 entries, numpy's ~5 us)."""
    return bool(mask.numpy().all()) if mask.device.type == "cpu" else bool(mask.all())


def build_function(
    model, data_names: tuple[str, ...], param_names: tuple[str, ...], x_is_dict: bool
) -> tuple[Callable, str, tuple[str, ...]]:
    """Turn a formula or a callable into ``function(data, values)``; returns it, its text, data names.

    A formula's names must each be a data name or a parameter; anything else is an error listing both.
    """
    if callable(model):
        text = getattr(model, "__name__", type(model).__name__)
        _check_signature(model, text, param_names)
        only = None if x_is_dict else data_names[0]
        return _CallableModel(model, only, text), text, data_names
    if not isinstance(model, str):
        raise UsageError(f"model must be a formula string or a callable f(x, **params), got {type(model).__name__}")
    compiled = formula_model(model)
    names = compiled.names
    kinds = [("parameter", name) for name in param_names] + [("data column", name) for name in data_names]
    for kind, name in kinds:
        if name in CONSTANT_NAMES and (kind == "parameter" or x_is_dict):
            raise UsageError(
                f"{kind} {name!r} cannot be used in model {model!r}: in a formula {name!r} is "
                f"{CONSTANT_NAMES[name]}, a constant; give the {kind} another name, such as {name + '0'!r}"
            )
    if not x_is_dict:
        candidates = [name for name in names if name not in param_names]
        # A single predictor takes the model's first name that is not a parameter.
        data_names = tuple(candidates[:1]) or ("x",)
    both = [name for name in param_names if name in data_names]
    if both:
        raise UsageError(
            f"{', '.join(map(repr, both))} in model {model!r} is both a data name and a parameter: "
            "rename the parameter (or the data column)"
        )
    unknown = [name for name in names if name not in param_names and name not in data_names]
    if unknown:
        one = len(unknown) == 1
        raise UsageError(
            f"model {model!r} uses {', '.join(map(repr, unknown))}, which "
            f"{'is neither a data name' if one else 'are neither data names'} ({', '.join(data_names)}) "
            f"nor {'a parameter' if one else 'parameters'} ({', '.join(param_names)}): add "
            f"{'it' if one else 'them'} to params or to the data (several predictors: pass x as a dict of "
            "named arrays; CLI: --x COLUMN for each)"
        )
    unused = [name for name in param_names if name not in names]
    if unused:
        raise UsageError(
            f"parameter(s) {', '.join(map(repr, unused))} do not appear in model {model!r}: "
            "remove them or fix the model"
        )
    _check_uses_data(model, names, data_names, x_is_dict)
    return compiled, model, data_names


def _check_uses_data(model: str, names: tuple[str, ...], data_names: tuple[str, ...], x_is_dict: bool) -> None:
    """A `UsageError` when formula ``model`` uses none of the data: x would be silently ignored.

    A model constant in x is allowed when written with x (``"c + 0*x"``): then the choice is explicit.
    """
    if any(name in names for name in data_names):
        return
    everything = ", ".join(map(repr, names))
    if x_is_dict:
        raise UsageError(
            f"model {model!r} uses none of the data columns given in x ({', '.join(map(repr, data_names))}), "
            f"only parameters ({everything}), so the data would be ignored: write the predictor(s) into the "
            "model under the names given in x (for a model constant in the data on purpose, write it with "
            f"one of them, e.g. {model + ' + 0*' + data_names[0]!r})"
        )
    raise UsageError(
        f"model {model!r} uses no predictor: every name in it ({everything}) is a parameter, so x would be "
        "ignored. The predictor is the model's one name that is not in params: write it into the model "
        f"(e.g. 'x'), or, if one of {everything} is the predictor, remove it from params (for a model "
        f"constant in x on purpose, write it with x: {model + ' + 0*x'!r})"
    )


def _check_signature(model: Callable, text: str, param_names: tuple[str, ...]) -> None:
    """A callable model must accept ``model(x, name=value, ...)`` for every parameter."""
    try:
        signature = inspect.signature(model)
    except (TypeError, ValueError):
        return  # builtins and the like: the first call tells
    try:
        signature.bind(None, **dict.fromkeys(param_names))
    except TypeError as error:
        raise UsageError(
            f"model {text}{signature} cannot be called as {text}(x, {', '.join(f'{n}=...' for n in param_names)}) "
            f"({error}): take the data first and each parameter by name"
        ) from None


class _CallableModel:
    """``function(data, values)`` of a callable model ``model(x, **params)``: ``x`` the column ``only``,
    or the dict of columns (None); the result checked to be a tensor. Pickles when ``model`` does."""

    def __init__(self, model: Callable, only: str | None, text: str):
        self.model, self.only, self.text = model, only, text

    def __call__(self, data, values):
        try:
            result = self.model(data if self.only is None else data[self.only], **values)
        except RuntimeError as error:
            if "numpy()" not in str(error):
                raise
            # NumPy functions turn the tensors into arrays, which autograd cannot differentiate
            raise FitError(
                f"model {self.text} converts its tensors to NumPy ({error}): the Jacobian needs autograd, so "
                "compute with torch operations (torch.exp, not np.exp) on x and the parameters"
            ) from None
        if not isinstance(result, torch.Tensor):
            raise FitError(
                f"model {self.text} returned {type(result).__name__}, not a tensor: compute the predictions with "
                "torch operations on x and the parameters (both are tensors)"
            )
        return result


def check_finite_start(r: torch.Tensor) -> None:
    """Raise `FitError` when the model gives NaN/inf at the initial values (nothing to fit from)."""
    if r.device.type == "cpu" and np.isfinite(r.detach().numpy()).all():  # (numpy: 2 us, torch's 4 ops: 10 us)
        return
    bad = ~torch.isfinite(r)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:10].tolist()
        raise FitError(
            f"the model gives NaN or inf at the initial parameter values (data rows {rows}); "
            "choose other initial values"
        )
