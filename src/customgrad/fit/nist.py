"""Reader for NIST StRD nonlinear regression files: model, starting values, certified values, data.

The 27 problems (public domain, https://www.itl.nist.gov/div898/strd/nls/nls_main.shtml) ship with
the package in ``customgrad/data/nist``. Each file states, in its "File Format" header, the lines
holding the starting values, certified values and data; the model is written in NIST's notation
(``exp[-b2*x]``, ``arctan[...]``), which `nist_model_to_formula` turns into customgrad's formula syntax.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError

# Transforms of the response written on the left of "=" (Nelson: log[y] = ...): name -> numpy function.
_RESPONSE_TRANSFORMS = {"y": lambda y: y, "log(y)": np.log}
_FOLDER = resources.files("customgrad") / "data" / "nist"
_LINES = re.compile(r"(Starting Values|Certified Values|Data)\s*\(lines\s+(\d+)\s+to\s+(\d+)\)", re.IGNORECASE)
_PARAMETER = re.compile(r"^\s*(b\d+)\s*=\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")
_SUMMARY = {
    "Residual Sum of Squares": "certified_cost",
    "Residual Standard Deviation": "certified_residual_std",
    "Degrees of Freedom": "dof",
    "Number of Observations": "observations",
}


@dataclass(frozen=True)
class NistProblem:
    """One NIST StRD problem: y ~ formula(x, b), two starting points, certified b and stderr(b).

    ``y`` already has the response transform applied (``log(y)`` for Nelson), so the fit is
    ``y ~ formula`` for every problem.
    """

    name: str
    formula: str
    response: str
    x: dict[str, np.ndarray] = field(repr=False)
    y: np.ndarray = field(repr=False)
    starts: tuple[dict[str, float], dict[str, float]]
    certified_params: dict[str, float]
    certified_stderr: dict[str, float]
    certified_cost: float
    certified_residual_std: float
    dof: int
    difficulty: str
    path: Path | None = None
    decimal: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Parameter names b1, b2, ... in the file's order."""
        return tuple(self.certified_params)


def nist_model_to_formula(text: str) -> tuple[str, str]:
    """Split NIST's ``response = model + e`` into (response, formula) in customgrad syntax.

    ``"y = b1*(1-exp[-b2*x])  +  e"`` -> ``("y", "b1*(1-exp(-b2*x))")``.
    """
    joined = re.sub(r"\barctan\b", "atan", " ".join(text.split()).replace("[", "(").replace("]", ")"))
    if "=" not in joined:
        raise DataError(f"NIST model line {text!r} has no '=': expected 'y = <model> + e'")
    response, model = (part.strip() for part in joined.split("=", 1))
    model = re.sub(r"\+\s*e\s*$", "", model).strip()
    return response.replace(" ", ""), model


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None


def read_nist(path: str | Path) -> NistProblem:
    """Read a NIST StRD nonlinear regression file (``.dat``) into a `NistProblem`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as error:
        raise DataError(f"cannot read NIST file {str(path)!r}: {error.strerror}") from None
    where = f"NIST file {str(path)!r}"
    ranges = {m.group(1).lower(): (int(m.group(2)), int(m.group(3))) for m in map(_LINES.search, lines[:12]) if m}
    if "data" not in ranges or "certified values" not in ranges:
        raise DataError(
            f"{where} has no 'File Format' header with '(lines A to B)' ranges: "
            "is it a NIST StRD nonlinear regression file?"
        )
    first, last = ranges["certified values"]
    starts, params, stderr, summary = _certified(lines[first - 1 : last], where)
    first, last = ranges["data"]
    header = lines[first - 2].replace("Data:", "").split()
    texts = [line.split() for line in lines[first - 1 : last] if line.strip()]
    rows = [[_number(text, where) for text in row] for row in texts]
    data = np.array(rows, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(header):
        raise DataError(f"{where}: data rows do not have the {len(header)} columns {header}")
    columns = {name: data[:, i] for i, name in enumerate(header)}
    response, formula = _read_model(lines, where)
    if response not in _RESPONSE_TRANSFORMS:
        raise DataError(f"{where}: response {response!r} not supported (known: {', '.join(_RESPONSE_TRANSFORMS)})")
    difficulty = next(
        (line.split("Level of Difficulty")[0].strip() for line in lines if "Level of Difficulty" in line), ""
    )
    y = _RESPONSE_TRANSFORMS[response](columns.pop("y"))
    # The data's decimal text, for an exact final cost (Lanczos1's residuals are at float64's rounding
    # of the data); y's only when the response is y itself.
    decimal = {name: tuple(row[i] for row in texts) for i, name in enumerate(header) if name != "y" or response == "y"}
    return NistProblem(
        name=path.stem,
        formula=formula,
        response=response,
        x=columns,
        y=y,
        starts=starts,
        certified_params=params,
        certified_stderr=stderr,
        certified_cost=summary.get("certified_cost", math.nan),
        certified_residual_std=summary.get("certified_residual_std", math.nan),
        dof=int(summary.get("dof", len(y) - len(params))),
        difficulty=difficulty,
        path=path,
        decimal=decimal,
    )


def _certified(lines: list[str], where: str):
    """(the two starting points, certified values, their standard errors, `_SUMMARY`'s numbers) from the
    "Certified Values" lines."""
    starts: tuple[dict[str, float], dict[str, float]] = ({}, {})
    params, stderr, summary = {}, {}, {}
    for line in lines:
        if m := _PARAMETER.match(line):
            name = m.group(1)
            for start, text in zip(starts, m.group(2, 3), strict=True):
                start[name] = _number(text, where)
            params[name] = _number(m.group(4), where)
            stderr[name] = _number(m.group(5), where)
        elif ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            if key in _SUMMARY and value:
                summary[_SUMMARY[key]] = _number(value, where)
    return starts, params, stderr, summary


def _read_model(lines: list[str], where: str) -> tuple[str, str]:
    # The model starts at the first "<response> = " line after "Model:" (skipping "pi = 3.14..." lines,
    # a constant the formula language knows) and runs until "+ e".
    start = next((i for i, line in enumerate(lines) if line.startswith("Model:")), None)
    if start is None:
        raise DataError(f"{where} has no 'Model:' section")
    pieces: list[str] = []
    for line in lines[start + 1 :]:
        text = line.strip()
        if not pieces and ("=" not in text or text.startswith("pi")):
            continue
        pieces.append(text)
        if re.search(r"\+\s*e\s*$", text):
            break
    if not pieces:
        raise DataError(f"{where}: no model line 'y = ... + e' in the 'Model:' section")
    return nist_model_to_formula(" ".join(pieces))


def nist_names() -> tuple[str, ...]:
    """Names of the NIST problems shipped with customgrad, sorted: ``("Bennett5", "BoxBOD", ...)``."""
    return tuple(sorted(entry.name[:-4] for entry in _FOLDER.iterdir() if entry.name.endswith(".dat")))


def load_nist(name: str) -> NistProblem:
    """Load a shipped NIST problem by name (case-insensitive), e.g. ``load_nist("MGH09")``."""
    known = {known.lower(): known for known in nist_names()}
    if name.lower() not in known:
        raise UsageError(f"unknown NIST problem {name!r}: choose one of {', '.join(known.values())}")
    with resources.as_file(_FOLDER / f"{known[name.lower()]}.dat") as path:
        return read_nist(path)
