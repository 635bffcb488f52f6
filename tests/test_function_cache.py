"""The disk cache of `customgrad.function`'s generated code: a formula defined before runs no SymPy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import customgrad
from customgrad.function_cache import definition_key

SOURCE = str(Path(__file__).resolve().parents[1] / "src")

# Defines the formula and takes value and first-order gradients with every call into SymPy or
# SymEngine counted (sys.setprofile); then the second order (which may derive, uncounted).
_DEFINE = """
import json, sys
import torch
import customgrad
import customgrad.function  # imports SymPy's modules: not what is counted
symbolic = []
def profile(frame, event, arg):
    name = frame.f_code.co_filename
    if event == "call" and ("/sympy/" in name or "symengine" in name):
        symbolic.append(name)
torch.manual_seed(0)
needed = json.loads(sys.argv[2])
inputs = [(torch.rand(5, dtype=torch.float64) * 0.5 + 0.5 * i).requires_grad_(i in needed) for i in range(3)]
sys.setprofile(profile)
F = customgrad.function(sys.argv[1], inputs=["m0", "v", "c"])
y = F.apply(*inputs)
first = torch.autograd.grad(y.sum(), [inputs[i] for i in needed], create_graph=True)
sys.setprofile(None)
second = torch.autograd.grad(first[-1].sum(), [inputs[i] for i in needed], allow_unused=True)
print(json.dumps({
    "calls": len(symbolic),
    "value": y.tolist(),
    "first": [g.tolist() for g in first],
    "second": [g.tolist() if g is not None else None for g in second],
}))
"""
FORMULA = "m0/sqrt(1 - v**2/c**2)"  # relativistic mass


def _define_in_fresh_process(folder: Path, needed=(0, 1, 2), formula: str = FORMULA) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _DEFINE, formula, json.dumps(list(needed))],
        env={**os.environ, "PYTHONPATH": SOURCE, "CUSTOMGRAD_CACHE_DIR": str(folder)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def _define(folder: Path, needed=(0, 1, 2), formula: str = FORMULA) -> dict:
    return _result(_define_in_fresh_process(folder, needed, formula))


def _reference(needed) -> dict:
    """The same values and derivatives by eager float64 autograd of a hand-written torch expression."""
    torch.manual_seed(0)
    m0, v, c = inputs = [
        (torch.rand(5, dtype=torch.float64) * 0.5 + 0.5 * i).requires_grad_(i in needed) for i in range(3)
    ]
    y = m0 / torch.sqrt(1 - v**2 / c**2)
    first = torch.autograd.grad(y.sum(), [inputs[i] for i in needed], create_graph=True)
    second = torch.autograd.grad(first[-1].sum(), [inputs[i] for i in needed], allow_unused=True)
    return {"value": y.tolist(), "first": [g.tolist() for g in first], "second": [g.tolist() for g in second]}


def _assert_matches(result: dict, reference: dict) -> None:
    for part in ("value", "first", "second"):
        torch.testing.assert_close(torch.tensor(result[part]), torch.tensor(reference[part]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("needed", [(0, 1, 2), (1,)])
def test_a_formula_defined_before_runs_no_symbolic_work(tmp_path, needed):
    uncached = _define(tmp_path, needed)
    assert uncached["calls"] > 0  # parsed, differentiated, common subexpressions shared
    cached = _define(tmp_path, needed, formula=FORMULA.replace(" ", ""))  # spacing does not change the key
    assert cached["calls"] == 0
    assert cached == {**uncached, "calls": 0}
    _assert_matches(cached, _reference(needed))


def test_a_damaged_entry_is_rebuilt(tmp_path):
    first = _define(tmp_path)
    entries = list(tmp_path.glob("function/*.entry"))
    assert entries
    for path in entries:
        path.write_bytes(path.read_bytes()[:-7])
    rebuilt = _define(tmp_path)
    assert rebuilt["calls"] > 0
    assert {**rebuilt, "calls": 0} == {**first, "calls": 0}
    assert _define(tmp_path)["calls"] == 0  # written again


def test_two_processes_defining_the_same_formula_at_once_both_succeed(tmp_path):
    processes = [_define_in_fresh_process(tmp_path) for _ in range(2)]
    results = [_result(p) for p in processes]
    reference = _reference((0, 1, 2))
    for result in results:
        _assert_matches(result, reference)
    assert _define(tmp_path)["calls"] == 0


def test_the_key_holds_declared_gradients_inputs_name_and_backend():
    keys = {
        definition_key("x*y", None, None, None, "auto"),
        definition_key("x*y", None, {"x": "2*y"}, None, "auto"),
        definition_key("x*y", None, {"x": 2}, None, "auto"),
        definition_key("x*y", ["y", "x"], None, None, "auto"),
        definition_key("x*y", None, None, "Product", "auto"),
        definition_key("x*y", None, None, None, "eager"),
    }
    assert len(keys) == 6 and None not in keys
    assert definition_key("x*y", None, None, None, "cpu") is None  # fused kernels: their own cache
    assert definition_key("x*y", None, {"x": object()}, None, "auto") is None  # reported by the uncached path


def test_declared_gradients_are_not_taken_from_another_definition():
    x, y = (torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True) for _ in range(2))
    for grads, expected in ((None, y), ({"x": "2*y"}, 2 * y), (None, y)):
        product = customgrad.function("x*y", grads=grads)
        (gradient,) = torch.autograd.grad(product.apply(x, y).sum(), [x])
        torch.testing.assert_close(gradient, expected.detach(), rtol=0, atol=0)


def test_fused_kernels_of_a_cached_definition_match_eager_autograd():
    from customgrad.backends import AUTO_CPU_MIN_SIZE, get_backend

    if get_backend("cpu").unavailable() is not None:
        pytest.skip(get_backend("cpu").unavailable())
    customgrad.function("a*exp(-k*t) + sin(a*t)")  # writes the entry
    cached = customgrad.function("a*exp(-k*t) + sin(a*t)")  # read back: no SymPy until a fused kernel needs it
    generator = torch.Generator().manual_seed(0)
    a, k, t = (torch.rand(AUTO_CPU_MIN_SIZE, dtype=torch.float64, generator=generator) for _ in range(3))
    for leaf in (a, k, t):
        leaf.requires_grad_(True)
    got = torch.autograd.grad(cached.apply(a, k, t).sum(), [a, k, t])
    expected = torch.autograd.grad((a * torch.exp(-k * t) + torch.sin(a * t)).sum(), [a, k, t])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


# Defines formulas in order, each with a backward for the inputs listed: [(formula, needed), ...].
_STEPS = """
import json, sys
import torch
import customgrad
results = []
for formula, needed in json.loads(sys.argv[1]):
    F = customgrad.function(formula)
    point = [0.5, 2.0]
    inputs = [torch.tensor(point, dtype=torch.float64, requires_grad=i in needed) for i in range(len(F.input_names))]
    y = F.apply(*inputs)
    gradients = torch.autograd.grad(y.sum(), [inputs[i] for i in needed]) if needed else ()
    results.append([y.tolist(), [g.tolist() for g in gradients]])
print(json.dumps(results))
"""


def _steps(folder: Path, steps: list) -> list:
    completed = subprocess.run(
        [sys.executable, "-c", _STEPS, json.dumps(steps)],
        env={**os.environ, "PYTHONPATH": SOURCE, "CUSTOMGRAD_CACHE_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_an_entry_stored_under_another_class_name_stays_usable(tmp_path):
    # a*x**2 at a = x = (0.5, 2): value a x^2, d/da = x^2, d/dx = 2 a x. The second process names the
    # class Formula1 (sin(x) took Formula0) and adds the backward for x alone to the stored entry.
    value, d_a, d_x = [0.125, 8.0], [0.25, 4.0], [0.5, 8.0]
    assert _steps(tmp_path, [["a*x**2", [0, 1]]]) == [[value, [d_a, d_x]]]
    second = _steps(tmp_path, [["sin(x)", []], ["a*x**2", [1]]])
    assert second[1] == [value, [d_x]]
    assert _steps(tmp_path, [["a*x**2", [1]], ["a*x**2", [0, 1]], ["a*x**2", [0]]]) == [
        [value, [d_x]],
        [value, [d_a, d_x]],
        [value, [d_a]],
    ]


@pytest.mark.parametrize("broken_parts", [("forward", "backward"), ("backward",)])
def test_an_entry_whose_code_cannot_be_compiled_is_rebuilt(tmp_path, monkeypatch, broken_parts):
    from customgrad import cache

    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path))
    formula = "a*x**2 + 3*x"
    key = definition_key(formula, None, None, None, "auto")

    def run():
        a, x = (torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True) for _ in range(2))
        y = customgrad.function(formula).apply(a, x)
        return [y.tolist(), *(g.tolist() for g in torch.autograd.grad(y.sum(), [a, x]))]

    expected = [[3 * 0.5 + 0.125, 2 * 4 + 6.0], [0.25, 4.0], [3.5, 11.0]]  # a x^2 + 3x, x^2, 2 a x + 3
    assert run() == expected
    record = json.loads(cache.load("function", key))
    broken = "return (\n"  # a syntax error in every stored source
    if "forward" in broken_parts:
        record["source"] = record["source"].replace("return", broken, 1)
    for backward in record["backwards"].values():
        backward["source"] = backward["source"].replace("return", broken, 1)
    cache.store("function", key, json.dumps(record).encode())
    assert run() == expected
    assert broken not in cache.load("function", key).decode()  # stored again, whole
    assert run() == expected
