"""The command line through its real entry point: exit codes, output, JSON and PNG."""

import json
import subprocess
import sys

import pytest

from command_line import run_customgrad, run_in_new_process


def run_cli(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    return run_customgrad(*arguments, cwd=cwd)


@pytest.mark.parametrize("arguments", [("fit",), ()], ids=["fit", "no-command"])
def test_fit_without_arguments_runs_the_blog_experiment_fixed(arguments):
    result = run_in_new_process(*arguments)  # python -m customgrad, as a user runs it
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    logged = [line.split() for line in lines[:20]]
    assert [int(step) for step, _ in logged] == list(range(99, 2000, 100))
    assert abs(float(logged[0][1]) - 3994944) < 2 and abs(float(logged[-1][1]) - 3993725) < 2
    result_line = next(line for line in lines if line.startswith("Result: y = "))
    assert "<" not in result_line and "bound method" not in result_line
    numbers = result_line.replace("Result: y = ", "").replace("* P2(", "").replace("x +", "").replace(")", "")
    assert len([float(v) for v in numbers.replace("+ ", "").split()]) == 4
    assert "81%" in result.stdout and "re-parametrised quadratic" in result.stdout
    assert "ran its fixed 2000 steps of gradient descent" in result.stdout and "no convergence test" in result.stdout
    assert result.stderr == ""  # no progress bar when piped


def test_fit_writes_json_and_png(tmp_path):
    json_path, png_path = tmp_path / "run.json", tmp_path / "fit.png"
    result = run_cli(
        "fit",
        "--experiment",
        "tutorial",
        "--steps",
        "300",
        "--quiet",
        "--json",
        str(json_path),
        "--plot",
        str(png_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Result: y = ") and len(result.stdout.splitlines()) == 1
    content = json.loads(json_path.read_text())
    assert set(content["params"]) == {"a", "b", "c", "d"}
    assert len(content["loss_history"]) == 300 and content["settings"]["learning_rate"] == 5e-6
    assert content["final_loss"] == content["loss_history"][-1]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["fit", "--steps", "-1"], "--steps must be a positive integer"),
        (["fit", "--lr", "nan"], "--lr must be a finite positive number"),
        (["fit", "--experiment", "nope"], "invalid choice: 'nope'"),
        (["fit", "--plot", "/nonexistent-dir/fit.png"], "--plot: cannot write"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gives_one_error_line_and_a_nonzero_exit(arguments, fragment):
    result = run_cli(*arguments)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = run_in_new_process("--debug", "fit", "--plot", "/nonexistent-dir/fit.png")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_list_shows_builtins():
    result = run_cli("list")
    assert result.returncode == 0
    assert "P2" in result.stdout and "LegendreP3" in result.stdout and "IdentityWithSquareGrad" in result.stdout


def test_derive_prints_each_partial_pretty_and_as_code():
    result = run_cli("derive", "a + b*P2(c*x + d)")
    assert result.returncode == 0, result.stderr
    for name in "abcxd":
        assert f"d/d{name} (derived):" in result.stdout
    assert "torch: 2.0*b*c*(c*x + d + 1.0)" in result.stdout


def test_derive_emit_python_prints_a_module_that_runs_without_customgrad(tmp_path):
    result = run_cli("derive", "x", "--grad", "x=2*x", "--name", "Surrogate", "--emit", "python")
    assert result.returncode == 0, result.stderr
    module = tmp_path / "surrogate.py"
    module.write_text(result.stdout)
    check = (
        "import torch, surrogate\n"
        "x = torch.randn(7, dtype=torch.float64, requires_grad=True)\n"
        "g, = torch.autograd.grad(surrogate.Surrogate.apply(x).sum(), x)\n"
        "assert torch.equal(g, 2 * x.detach()), g\n"
        "import sys; assert 'customgrad' not in sys.modules\n"
    )
    ran = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr


def test_formula_errors_quote_the_formula_with_a_caret():
    result = run_cli("derive", "sinn(x) + 1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: formula: unknown function 'sinn': did you mean 'sin'")
    assert lines[1].strip() == "sinn(x) + 1" and lines[2].strip() == "^^^^"


@pytest.mark.parametrize("name", ["class", "1abc", "my-func"])
def test_derive_rejects_class_names_python_cannot_use(name):
    result = run_cli("derive", "x", "--name", name, "--emit", "python")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: --name must be a Python identifier such as P2 (not a keyword), got {name!r}\n"


def test_derive_calls_functions_defined_on_the_command_line(tmp_path):
    definitions = tmp_path / "defs.txt"
    definitions.write_text("# a Lorentzian\nLor(u) = 1/(1 + u**2)\n\nPeak(x, x0, g) = Lor((x - x0)/g)\n")
    result = run_cli("derive", "h*Peak(x, x0, g) + c*Sq(x)", "--defines", str(definitions), "--define", "Sq(v)=v**2")
    assert result.returncode == 0, result.stderr
    # d/dx of h/(1 + ((x - x0)/g)^2) + c x^2 = -2 h (x - x0) / (g^2 (1 + ((x - x0)/g)^2)^2) + 2 c x
    code = result.stdout.split("d/dx (derived):")[1].split("torch: ")[1].splitlines()[0]
    import torch

    h, x, x0, g, c = (torch.tensor(v, dtype=torch.float64) for v in (1.5, 0.3, -0.2, 0.7, 0.4))
    expected = -2 * h * (x - x0) / (g**2 * (1 + ((x - x0) / g) ** 2) ** 2) + 2 * c * x
    value = eval(code, {"torch": torch, "h": h, "x": x, "x0": x0, "g": g, "c": c})  # the printed torch code
    assert torch.allclose(value, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("definition", "code", "message"),
    [
        ("Lor = 1/(1 + u**2)", 2, "--define 'Lor = 1/(1 + u**2)': write NAME(INPUTS) = FORMULA"),
        ("Lor(u) 1/(1 + u**2)", 2, "write NAME(INPUTS) = FORMULA"),
        ("Lor(u) == 1/(1 + u**2)", 2, "write NAME(INPUTS) = FORMULA"),
        ("Lor() = 1", 2, "Lor() needs its inputs in the parentheses"),
        ("sin(u) = u", 2, "function name 'sin' is taken by a built-in"),
        ("u(u) = u", 2, "'u' is both the function's name and one of its inputs"),
        ("Lor(u) = 1/(1 + w**2)", 1, "the formula uses 'w', which is not an input of Lor(u)"),
        ("Lor(u) = __import__('os')", 1, "unknown function '__import__'"),
    ],
)
def test_a_malformed_definition_is_one_error_naming_it(definition, code, message):
    result = run_cli("derive", "Lor(x)", "--define", definition)
    assert result.returncode == code and result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_definitions_file_error_names_its_line(tmp_path):
    definitions = tmp_path / "defs.txt"
    definitions.write_text("Lor(u) = 1/(1 + u**2)\n# comment\nBad(u) = u +\n")
    result = run_cli("derive", "Lor(x)", "--defines", str(definitions))
    assert result.returncode == 1 and f"--defines {definitions}:3 'Bad(u) = u +'" in result.stderr
    missing = run_cli("derive", "Lor(x)", "--defines", str(tmp_path / "none.txt"))
    assert missing.returncode == 1 and "cannot read it (No such file or directory)" in missing.stderr


def test_fit_and_check_take_json_alike_a_path_or_dash_for_stdout(tmp_path):
    fitted = run_cli("fit", "--experiment", "tutorial", "--steps", "50", "--json", "-")
    assert fitted.returncode == 0, fitted.stderr
    document = json.loads(fitted.stdout)  # stdout is the JSON alone; the result line went to stderr
    assert len(document["loss_history"]) == 50 and "Result: y = " in fitted.stderr
    target = "customgrad.library:LegendreP3"
    checked = run_cli("check", target, "--shapes", "3", "--no-compile", "--json", str(tmp_path / "check.json"))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[-1] == f"wrote {tmp_path / 'check.json'}"
    assert json.loads((tmp_path / "check.json").read_text())["ok"] is True
    old_spelling = run_cli("check", target, "--json")
    assert old_spelling.returncode == 2 and "--json: expected one argument" in old_spelling.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("check", "tests/fixtures/blog_p2.py:P2", "--timeout", "-1"), "--timeout must be a positive number"),
        (("derive", "x*y", "--grad", "x=1", "--grad", "x=2"), "--grad names input 'x' twice"),
        (("derive", "x*y", "--inputs="), "--inputs is empty"),
    ],
    ids=["negative-timeout", "gradient-given-twice", "empty-inputs"],
)
def test_option_values_that_cannot_be_used_are_usage_errors_naming_the_option(arguments, message):
    # each ran on silently (the last --grad kept, the default input order taken) or named the API's argument
    result = run_cli(*arguments)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
