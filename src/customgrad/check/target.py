"""What the command line checks: ``path/to/file.py:Name`` or ``package.module:Name``, and example inputs
from ``--shapes "3x4,4"``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .subject import has_setup_context, is_function_class

#: Shape of each tensor argument when ``--shapes`` is not given.
DEFAULT_SHAPE = (5,)


def load_target(spec: str) -> Any:
    """The object named by ``file.py:Name`` or ``package.module:Name``."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise UsageError(f"cannot read target {spec!r}: write path/to/file.py:Name or package.module:Name")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise UsageError(f"no such file {location!r} in target {spec!r}")
        module_name = f"_customgrad_target_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # inspect.getsource needs it
        module_spec.loader.exec_module(module)
    else:
        try:
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
        if not has_setup_context(fn):
            parameters = parameters[1:]
    elif callable(fn):
        parameters = list(inspect.signature(fn).parameters.values())
    else:
        raise UsageError(f"target is a {type(fn).__name__}, not an autograd.Function or a callable")
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
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=generator, dtype=torch.float64) for size in sizes]
