"""What the command line checks: ``path/to/file.py:Name`` or ``package.module:Name``, and example inputs
from ``--shapes "3x4,4"``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .subject import has_setup_context, is_function_class

#: Shape of each tensor argument when ``--shapes`` is not given.
DEFAULT_SHAPE = (5,)
#: Largest example tensor ``--shapes`` may ask for: the battery runs many variants of each.
MAX_EXAMPLE_ELEMENTS = 10_000_000


def load_target(spec: str) -> Any:
    """The object named by ``file.py:Name`` or ``package.module:Name``."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise UsageError(f"cannot read target {spec!r}: write path/to/file.py:Name or package.module:Name")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise UsageError(f"no such file {location!r} in target {spec!r}")
        if path.suffix != ".py":
            raise UsageError(f"target file {location!r} is not a Python file: write path/to/file.py:Name")
        module_name = f"_customgrad_target_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # inspect.getsource needs it
        with _import_errors(location, spec):
            module_spec.loader.exec_module(module)
    else:
        try:
            with _import_errors(location, spec, modules=True):
                module = importlib.import_module(location)
        except ImportError as error:
            raise UsageError(f"cannot import module {location!r} of target {spec!r}: {error}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        known = sorted(k for k, v in vars(module).items() if is_function_class(v))
        raise UsageError(
            f"{location!r} has no {name!r} (autograd Functions there: {', '.join(known) or 'none'})"
        ) from None


@contextlib.contextmanager
def _import_errors(location: str, spec: str, modules: bool = False) -> Iterator[None]:
    """Errors while running the target's module become one `UsageError` naming the file and line."""
    try:
        yield
    except SyntaxError as error:
        where = f"{error.filename}:{error.lineno}" if error.filename else location
        raise UsageError(f"target {spec!r}: {where} has a syntax error ({error.msg}); fix the file") from None
    except ImportError:
        if modules and location.split(".")[0] not in sys.modules:
            raise
        raise _raised_while_importing(location, spec, sys.exc_info()[1]) from None
    except SystemExit as error:
        raise UsageError(
            f"target {spec!r}: importing {location!r} calls sys.exit({error.code!r}); "
            "put script code under if __name__ == '__main__':"
        ) from None
    except Exception as error:  # noqa: BLE001 - the user's module, reported with its file and line
        raise _raised_while_importing(location, spec, error) from None


def _raised_while_importing(location: str, spec: str, error: BaseException) -> UsageError:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<frozen")]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    message = " ".join(str(error).split())
    return UsageError(
        f"target {spec!r}: importing {location!r} raised {type(error).__name__}: {message}{where}; "
        "fix the module (check imports it, running its top-level code)"
    )


@contextlib.contextmanager
def user_output_to_stderr() -> Iterator[None]:
    """Send what is written to standard output (Python's ``print`` and file descriptor 1, as C code writes) to
    standard error until the block ends, so that standard output carries only the report."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """``"3x4,4,()"`` -> ``[(3, 4), (4,), ()]``."""
    shapes = []
    for part in text.split(","):
        part = part.strip()
        if part in ("()", "scalar"):
            shapes.append(())
            continue
        try:
            dims = tuple(int(d) for d in part.lower().split("x"))
        except ValueError:
            raise UsageError(
                f"--shapes: cannot read {part!r} in {text!r}; write sizes joined by 'x' and shapes "
                "separated by commas, e.g. --shapes 3x4,4 (use () for a scalar)"
            ) from None
        if any(d < 0 for d in dims):
            raise UsageError(f"--shapes: sizes must be 0 or more, got {part!r}")
        shapes.append(dims)
    return shapes


def tensor_parameters(fn: Any) -> list[str]:
    """Forward's parameters without defaults (each gets a tensor), ctx excluded."""
    declared = getattr(fn, "input_names", None)
    if declared:
        return list(declared)
    if is_function_class(fn):
        parameters = list(inspect.signature(fn.forward).parameters.values())
        if not has_setup_context(fn) and len(parameters) > 1:
            parameters = parameters[1:]  # ctx; a lone parameter is an input (forward(x) missing setup_context)
        elif has_setup_context(fn) and parameters and parameters[0].name == "ctx":
            parameters = parameters[1:]  # a ctx that should not be there: 'runs' says so
    elif callable(fn):
        try:
            parameters = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            raise UsageError(
                f"cannot read the parameters of {getattr(fn, '__qualname__', fn)!r} (a built-in?): wrap it in a "
                "Python function of tensors, or call customgrad.check(fn, *inputs) from Python"
            ) from None
    else:
        raise UsageError(f"target is {fn!r:.60} (of type {type(fn).__name__}), not an autograd.Function or a callable")
    return [
        p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def example_inputs(fn: Any, shapes: str | None, seed: int = 0) -> list[torch.Tensor]:
    """One random float64 tensor per tensor argument of forward, of the given or default shapes."""
    names = tensor_parameters(fn)
    sizes = parse_shapes(shapes) if shapes else [DEFAULT_SHAPE] * len(names)
    if len(sizes) != len(names):
        raise UsageError(
            f"--shapes gives {len(sizes)} shape(s) but forward takes {len(names)} tensor "
            f"argument(s) ({', '.join(names)}): give one shape per argument"
        )
    too_large = [size for size in sizes if math.prod(size) > MAX_EXAMPLE_ELEMENTS]
    if too_large:
        shape = "x".join(map(str, too_large[0]))
        raise UsageError(
            f"--shapes: {shape} has {math.prod(too_large[0]):,} elements, more than the limit of "
            f"{MAX_EXAMPLE_ELEMENTS:,}; the checks need small examples such as 5 or 3x4"
        )
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=generator, dtype=torch.float64) for size in sizes]
