"""`Options.checked(given)`: the options of `fit` and `fit_batch` checked once, each bad one named in a `UsageError`."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from .loss import get_loss
from .solvers import DEFAULT_STEPS, get_solver

# Where LM runs (`fit`'s and `fit_batch`'s ``engine``).
ENGINES = ("auto", "native", "torch")
_DTYPES = (torch.float64, torch.float32)
# fit_batch's curves per chunk: bounds the memory of the [J | r] blocks (chunk x N x (p + 1) numbers).
DEFAULT_CHUNK = 100_000


@dataclass
class Options:
    """The checked options of one call of `fit` (``batch`` False) or `fit_batch` (True): the solver and
    the loss's rho (None: linear) they name, max_steps (the method's default for None), the tolerances by
    name, and ``chunk_size``: rows per chunk for `fit` (None: all at once), curves per chunk for `fit_batch`."""

    method: str
    solver: Callable
    loss: str
    rho: Callable | None
    max_steps: int
    learning_rate: float | None
    tolerances: dict
    on_step: Callable | None
    progress: bool
    engine: str
    absolute_sigma: bool
    chunk_size: int | None
    dtype: torch.dtype
    device: torch.device | None

    @classmethod
    def checked(cls, given: Mapping, *, batch: bool = False) -> Options:
        """``given`` (the entry point's arguments by name) checked; `fit_batch`'s lacks the single-fit extras."""
        method, engine, loss = given["method"], given["engine"], given.get("loss", "linear")
        if batch and method != "lm":
            raise UsageError(f"fit_batch supports method='lm' only, got {method!r}: use fit() per curve for {method!r}")
        device, y = given["device"], given["y"]
        if batch and device is None and isinstance(y, torch.Tensor) and y.device.type == "cuda":
            device = y.device  # CUDA curves are fitted where they are
        dtype, device = _dtype_and_device(given["dtype"], device)
        solver = get_solver(method)
        if engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
        rho = get_loss(loss)
        steps = given["max_steps"]
        max_steps = _positive_integer(DEFAULT_STEPS[method] if steps is None else steps, "max_steps")
        learning_rate = given.get("learning_rate")
        if learning_rate is not None:
            learning_rate = _finite_number(learning_rate, "learning_rate", positive=True)
        tolerances = {name: _finite_number(given[name], name) for name in ("ftol", "xtol", "gtol")}
        on_step, absolute_sigma = given.get("on_step"), given.get("absolute_sigma", False)
        if on_step is not None and not callable(on_step):
            raise UsageError(f"on_step must be a callable on_step(step, cost), got {type(on_step).__name__}")
        if on_step is not None:
            _check_on_step(on_step)
        if not isinstance(absolute_sigma, (bool, np.bool_)):
            raise UsageError(f"absolute_sigma must be True or False, got {absolute_sigma!r}")
        chunk_size = given["chunk_size"]
        if batch:
            chunk_size = _positive_integer(DEFAULT_CHUNK if chunk_size is None else chunk_size, "chunk_size")
        elif chunk_size is not None:
            chunk_size = _positive_integer(chunk_size, "chunk_size", " (rows per chunk)")
            if loss != "linear":
                raise UsageError(
                    f"chunk_size needs loss='linear' (a robust loss reweights rows one by one), got {loss!r}"
                )
        return cls(
            method, solver, loss, rho, max_steps, learning_rate, tolerances, on_step, bool(given["progress"]),
            engine, bool(absolute_sigma), chunk_size, dtype, device,
        )  # fmt: skip

    def summary(self, given: Mapping, params=None) -> str:
        """What every rank of a distributed fit must agree on, in words (`Shards.raise_together`), with
        ``params`` in place of the given ones (a batch's: the shared names; `api._Batch.checksum` has the rest)."""
        params = given["params"] if params is None else params
        model = given["model"]
        about = model if isinstance(model, str) else getattr(model, "__name__", "callable")
        columns = sorted(map(str, given["x"])) if isinstance(given["x"], Mapping) else ["x"]
        options = (self.method, self.loss, str(given["dtype"]), self.max_steps, *self.tolerances.values())
        options += (self.learning_rate, given["sigma"] is None, given["nan_policy"])
        options += (self.chunk_size, self.absolute_sigma, self.engine)
        return f"model {about!r}, params {params!r}, bounds {given['bounds']!r}, columns {columns}, options {options}"


def _positive_integer(value, name: str, what: str = "") -> int:
    """An integer option >= 1 (``max_steps``, ``chunk_size``); ``what`` says what it counts, in the error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UsageError(f"{name} must be a positive integer{what}, got {value!r}")
    return int(value)


def _finite_number(value, name: str, *, positive: bool = False) -> float:
    """A finite real option (``ftol``, ``learning_rate``): positive, or at least 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        rule = "a finite positive number" if positive else "a finite number >= 0"
        raise UsageError(f"{name} must be {rule} such as 1e-6, got {value!r}")
    return float(value)


def _check_on_step(on_step: Callable) -> None:
    """A `UsageError` unless ``on_step`` can be called as on_step(step, cost) (before the fit, not at its
    first step)."""
    try:
        signature = inspect.signature(on_step)
    except (TypeError, ValueError):
        return  # builtins and the like: the first call tells
    try:
        signature.bind(0, 0.0)
    except TypeError as error:
        raise UsageError(
            f"on_step{signature} cannot be called as on_step(step, cost) ({error}): take the step number and the cost"
        ) from None


def _dtype_and_device(dtype, device) -> tuple[torch.dtype, torch.device | None]:
    """Check the fit's dtype (float64 or float32: the solvers' linear algebra) and device (one that exists)."""
    if dtype not in _DTYPES:
        raise UsageError(
            f"dtype must be torch.float64 or torch.float32 (the solvers' QR and SVD need them), got {dtype!r}"
        )
    if device is None:
        return dtype, None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device {device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:0'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {str(device)!r} is not available: this torch has no CUDA device; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"device {str(device)!r} does not exist: there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "meta":
        raise UsageError("device 'meta' holds no values, so there is nothing to fit there: use 'cpu' or 'cuda'")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # torch built without that backend ('mps', 'xpu')
        reason = str(error).split(". ")[0].strip()
        raise UsageError(f"device {str(device)!r} is not available ({reason}): use 'cpu'") from None
    return dtype, device
