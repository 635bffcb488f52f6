"""Strict JSON (RFC 8259): NaN and infinities become null, numpy values plain Python ones.

Python's ``json`` writes bare ``NaN`` and ``Infinity`` tokens by default, which strict parsers reject.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_ready(value):
    """``value`` with every non-finite float replaced by None and numpy arrays and scalars made plain."""
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def dumps(value) -> str:
    """Indented strict JSON text of ``value`` (after `json_ready`), ending in a newline."""
    return json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n"


def write(path: str | Path, value) -> Path:
    """Write `dumps` of ``value`` to ``path``."""
    path = Path(path)
    path.write_text(dumps(value))
    return path
