"""The native solver's source, compile flags and entry points; and one solver library for every formula,
the model's rows computed in Python.

`native_lm.c` reads the model through two functions, the rows [df/db_j..., f] and the values f of one
curve. A model's own library compiles its generated C for them (about 1 s of gcc per model, worth it
for a batch or a loop of fits). Here they are two pointers that the solver calls back, set to a
formula's generated numpy rows (`FormulaModel.linearization(..., "numpy")`, a few microseconds a call):
the library is one build for all formulas, cached on disk, so a one-off single fit runs the same C
solver with only the rows in Python, about a third of the cost per round of the tensor engine (`lm`).

On a machine where the library is not in the cache yet, the first fit that could use it starts its build
in a detached process and goes on with the tensor engine; later fits (in any process) find it.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

# The solver's two model functions, forwarded to pointers that `cg_set_model` sets (one model at a time:
# `LOCK` is held from `set_model` to the end of the call that uses it).
SHIM = """
#include <stdint.h>
typedef void (*cg_model_fn)(const double *const *in, double *const *out, int64_t n);
static cg_model_fn cg_rows_callback, cg_values_callback;
void cg_set_model(cg_model_fn rows, cg_model_fn values) { cg_rows_callback = rows; cg_values_callback = values; }
void cg_model_rows(const double *const *in, double *const *out, int64_t n) { cg_rows_callback(in, out, n); }
void cg_model_values(const double *const *in, double *const *out, int64_t n) { cg_values_callback(in, out, n); }
"""
# Each operation rounded on its own, as numpy and torch do (no fused multiply-adds): on roundoff-limited
# fits (NIST Lanczos1, cost 1e-25) contraction moved the final cost by 2.5e-6 relative.
FLAGS = ("-ffp-contract=off",)
LOCK = threading.Lock()
_MODEL_FUNCTION = ctypes.CFUNCTYPE(
    None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64
)
_DOUBLE_POINTER = ctypes.POINTER(ctypes.c_double)
_LOADED: dict[str, ctypes.CDLL] = {}  # by cache folder (a test's own folder starts without it)
_STARTED: list[str] = []  # the cache folders this process started a build for


@functools.cache
def solver_source() -> str:
    """`native_lm.c`, the per-curve solver every native library is built from."""
    return (Path(__file__).parent / "native_lm.c").read_text()


def prepared(loaded: ctypes.CDLL) -> ctypes.CDLL:
    """``loaded`` with its solver entries' argument types set."""
    for name, outputs in (("lm_batch", 5), ("lm_errors", 4), ("lm_report", 1)):
        entry = getattr(loaded, name)
        entry.restype = ctypes.c_int
        entry.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int] + [ctypes.c_void_p] * outputs
    return loaded


def library(*, build: bool) -> ctypes.CDLL | None:
    """The shared solver library: loaded, or from the disk cache, or (``build``) compiled now; else None,
    after starting its build in a detached process (`start_build`). Raises `BackendError` when the
    compiler fails (``build`` only)."""
    from .. import cache

    folder = str(cache.directory())
    loaded = _LOADED.get(folder)
    if loaded is None:
        from ..backends.cpu import library_bytes, open_library

        data = library_bytes([SHIM, solver_source()], "the native fit engine", FLAGS, build=build)
        if data is None:
            start_build()
            return None
        loaded = prepared(open_library(data))
        loaded.cg_set_model.restype = None
        loaded.cg_set_model.argtypes = [_MODEL_FUNCTION, _MODEL_FUNCTION]
        _LOADED[folder] = loaded
    return loaded


def start_build() -> None:
    """Build the library into the disk cache in a detached process, once per process and cache folder:
    this process neither waits for it nor keeps it as a child, and never loads a half-written entry (the
    cache writes atomically)."""
    from .. import cache

    folder = str(cache.directory())
    if folder in _STARTED:
        return
    _STARTED.append(folder)
    # at the lowest priority (gcc inherits it): the processes in front, this one included, keep their cores
    build = "import os; os.nice(19); from customgrad.fit.native_library import library; library(build=True)"
    # sh starts the build in the background and exits at once: the build is nobody's child to wait for
    detached = 'exec "$0" -c "$1" </dev/null >/dev/null 2>&1 &'
    try:
        subprocess.run(["sh", "-c", detached, sys.executable, build], timeout=60, check=False)  # noqa: S603,S607
    except (OSError, subprocess.SubprocessError):
        pass  # no build: fits stay on the tensor engine, which is as right


class PythonRows:
    """The solver's model functions for one formula: ``rows(out (p+1, n), *inputs)`` and
    ``values(out (1, n), *inputs)`` (generated numpy), called back from C with one curve's inputs.

    ``columns`` says per input whether it is a data column (n values) or a scalar (a parameter). A call
    that raises writes NaN, which the solver treats as a non-finite point (the tensor engine's retry).
    """

    def __init__(self, rows, values, columns: tuple[bool, ...], outputs: int):
        self._rows, self._values, self._columns = rows, values, columns
        self._views: dict[tuple[int, int], np.ndarray] = {}
        self.interrupted: BaseException | None = None
        self.functions = (
            _MODEL_FUNCTION(lambda inputs, out, n: self._call(self._rows, inputs, out, n, outputs)),
            _MODEL_FUNCTION(lambda inputs, out, n: self._call(self._values, inputs, out, n, 1)),
        )

    def _view(self, address: int, size: int) -> np.ndarray:
        key = (address, size)
        view = self._views.get(key)
        if view is None:
            view = np.ctypeslib.as_array(ctypes.cast(address, _DOUBLE_POINTER), (size,))
            self._views[key] = view
        return view

    def _call(self, function, inputs, out, n: int, outputs: int) -> None:
        block = self._view(out[0], outputs * n).reshape(outputs, n)
        if self.interrupted is not None:
            block.fill(np.nan)  # the solver gives up after a few non-finite points; `raise_interrupt` then
            return
        try:
            view, columns = self._view, enumerate(self._columns)
            function(block, *(view(inputs[k], n) if column else view(inputs[k], 1)[0] for k, column in columns))
        except Exception:  # noqa: BLE001 - C cannot take a Python exception: the point is non-finite
            block.fill(np.nan)
        except BaseException as interrupt:  # Ctrl-C (KeyboardInterrupt) while C waits: raised once it returns
            self.interrupted = interrupt
            block.fill(np.nan)

    def raise_interrupt(self) -> None:
        """Raise the KeyboardInterrupt (or SystemExit) that came during the last call, if any."""
        interrupt, self.interrupted = self.interrupted, None
        if interrupt is not None:
            raise interrupt

    def set_in(self, loaded: ctypes.CDLL) -> None:
        """Point ``loaded``'s model functions at this model (hold `LOCK` until its call returns)."""
        self._views.clear()  # addresses of an earlier call's workspace mean nothing now
        loaded.cg_set_model(*self.functions)
