"""The disk cache of generated code: formula models read back without SymPy, keyed by what they compute."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

import customgrad
from customgrad import derive
from customgrad.errors import FormulaError
from customgrad.fit.formula_model import model_cache_key
from customgrad.library import P2Handwritten
from customgrad.registry import register

SOURCE = str(Path(__file__).resolve().parents[1] / "src")

_FIT = """
import json, sys
import numpy as np
import customgrad
x = np.linspace(0.0, 2.0, 30)
y = 3.0 * np.exp(-0.7 * x) + 0.5 + 0.01 * np.sin(7 * x)  # not exact: no extended-precision cost
result = customgrad.fit(sys.argv[1], x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
print(json.dumps({"params": result.params, "sympy": "sympy" in sys.modules}))
"""


def _fit_in_fresh_process(folder: Path, formula: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _FIT, formula],
        env={**os.environ, "PYTHONPATH": SOURCE, "CUSTOMGRAD_CACHE_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_cached_formula_model_fits_the_same_without_sympy(tmp_path):
    first = _fit_in_fresh_process(tmp_path, "a*exp(-k*x) + c")
    assert first["sympy"] is True  # generated: parsed and differentiated
    again = _fit_in_fresh_process(tmp_path, "a * exp( -k*x )+c")  # spacing does not change the key
    assert again["sympy"] is False
    assert again["params"] == first["params"]
    assert first["params"] == pytest.approx({"a": 3.0, "k": 0.7, "c": 0.5}, rel=0.05)


_FIT_BATCH = """
import json, sys
import numpy as np
import customgrad
x = np.linspace(0.0, 2.0, 30)
k = np.linspace(0.5, 0.9, 560)[:, None]  # 560 x 30 entries: the cpu backend's C rows
y = 3.0 * np.exp(-k * x) + 0.5 + 0.01 * np.sin(7 * x)
result = customgrad.fit_batch("a*exp(-k*x) + c", x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
print(json.dumps({"k": [float(v) for v in result.params["k"]], "sympy": "sympy" in sys.modules}))
"""


def test_a_cached_batch_model_loads_its_c_rows_without_sympy(tmp_path):
    # the batched fitter's fused C rows: their C source is cached with the model, the library by the backend
    runs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", _FIT_BATCH],
            env={**os.environ, "PYTHONPATH": SOURCE, "CUSTOMGRAD_CACHE_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert runs[0]["sympy"] is True
    assert runs[1]["sympy"] is False
    if shutil.which("gcc") or shutil.which("cc"):
        assert list((tmp_path / "cpu-kernels").glob("*.entry"))  # the rows' C libraries were built and cached
    assert runs[1]["k"] == runs[0]["k"]
    assert runs[0]["k"] == pytest.approx(np.linspace(0.5, 0.9, 560), rel=0.05)


def test_damaged_entries_are_rebuilt(tmp_path):
    first = _fit_in_fresh_process(tmp_path, "a*exp(-k*x) + c")
    entries = list(tmp_path.glob("function/*.entry"))  # the model's code lives with customgrad.function's
    assert entries
    for path in entries:
        path.write_bytes(path.read_bytes()[:-5])
    assert _fit_in_fresh_process(tmp_path, "a*exp(-k*x) + c") == first


def test_a_formula_defined_then_fitted_is_derived_once_and_cached_in_one_namespace(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path))
    formula = "a*exp(-k*x) + c*x + 0.25"  # not fitted elsewhere: nothing in memory for it yet
    defined = customgrad.function(formula)
    leaves = [torch.full((3,), 0.5, dtype=torch.float64, requires_grad=True) for _ in defined.input_names]
    defined.apply(*leaves).sum().backward()  # the Function's backward derives every partial
    calls = []
    original = derive.derive_partial
    monkeypatch.setattr(derive, "derive_partial", lambda *arguments: calls.append(arguments) or original(*arguments))
    x = np.linspace(0.0, 2.0, 30)
    y = 3.0 * np.exp(-0.7 * x) + 0.5 * x + 0.25 + 0.01 * np.sin(7 * x)
    result = customgrad.fit(formula, x, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    assert calls == []  # the fit's Jacobian rows come from the partials function() derived
    assert {path.name for path in tmp_path.iterdir()} <= {"function", "native-fit", "cpu-kernels"}

    def residuals(b):
        return b[0] * np.exp(-b[1] * x) + b[2] * x + 0.25 - y

    reference = least_squares(residuals, [1.0, 1.0, 0.0], xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    assert [result.params[n] for n in ("a", "k", "c")] == pytest.approx(reference, rel=1e-6)


def test_a_model_without_names_is_refused_as_function_refuses_it():
    with pytest.raises(FormulaError, match="model '2' has no inputs"):
        customgrad.fit("2", np.linspace(0.0, 1.0, 5), np.ones(5), params={"a": 1.0})


def test_key_holds_the_definitions_of_called_functions_not_just_their_names():
    assert model_cache_key("a*x + b") == model_cache_key("(a*x) + b")
    assert model_cache_key("a*x + b") != model_cache_key("a*x + c")
    builtin = model_cache_key("a + b*P2(c*x)")
    customgrad.function("x**3", name="P2")  # redefined: the key follows the definition
    redefined = model_cache_key("a + b*P2(c*x)")
    assert redefined not in (None, builtin)
    customgrad.function("x**3 + 1", name="P2")
    assert model_cache_key("a + b*P2(c*x)") not in (None, builtin, redefined)


def test_hand_written_functions_are_not_cached():
    register("HandP2ForTest", P2Handwritten)
    assert model_cache_key("a*HandP2ForTest(x)") is None


def test_fit_through_a_redefined_function_uses_the_new_definition():
    x = np.linspace(0.1, 2.0, 20)
    customgrad.function("2*x", name="ScaleForTest")
    first = customgrad.fit("a*ScaleForTest(x)", x, 6.0 * x, params={"a": 1.0})
    customgrad.function("3*x", name="ScaleForTest")
    second = customgrad.fit("a*ScaleForTest(x)", x, 6.0 * x, params={"a": 1.0})
    assert first.params["a"] == pytest.approx(3.0) and second.params["a"] == pytest.approx(2.0)


def test_two_processes_fitting_a_new_formula_at_once_both_succeed(tmp_path):
    environment = {**os.environ, "PYTHONPATH": SOURCE, "CUSTOMGRAD_CACHE_DIR": str(tmp_path)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _FIT, "a*exp(-k*x) + c"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    first, second = (json.loads(out.strip().splitlines()[-1])["params"] for out, _ in outputs)
    assert first == second


def test_an_unwritable_cache_folder_still_fits_with_one_warning(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    data = Path(SOURCE) / "customgrad" / "data" / "nist" / "Misra1a.dat"
    result = subprocess.run(
        [sys.executable, "-m", "customgrad", "fit", "--data", str(data), "--quiet"],
        env={**os.environ, "PYTHONPATH": SOURCE, "CUSTOMGRAD_CACHE_DIR": str(blocker / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("b1=")
    assert result.stderr.count("cannot write its cache folder") == 1
