"""``customgrad check`` through the real entry point: exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SOURCE = Path(__file__).parent.parent / "src"


def run_cli(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``customgrad check ARGUMENTS`` through the real entry point, in a fresh process."""
    environment = dict(os.environ, PYTHONPATH=f"{SOURCE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run(
        [sys.executable, "-m", "customgrad", "check", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).parent.parent,
        timeout=timeout,
    )


def test_blog_p2_reports_the_name_error_and_its_line():
    result = run_cli(f"{FIXTURES / 'blog_p2.py'}:P2", "--no-compile")
    assert result.returncode == 1, result.stderr
    assert "NameError: name 'inptu' is not defined" in result.stdout
    line = next(
        i
        for i, text in enumerate((FIXTURES / "blog_p2.py").read_text().splitlines(), 1)
        if "return" in text and "inptu" in text
    )
    assert f"blog_p2.py:{line}" in result.stdout
    assert "return grad_output * (2 * inptu + 2)" in result.stdout
    assert "did you mean" in result.stdout and "undefined name 'inptu'" in result.stdout
    # The forward runs, so the checks with a forward-only part still report (compile is off here).
    assert "forward only: backward does not run (see 'runs')" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "FAILED: 3 passed, 2 failed, 1 warning, 6 skipped"


def test_fixed_blog_p2_passes():
    result = run_cli(f"{FIXTURES / 'blog_p2_fixed.py'}:P2", "--no-compile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("OK:")


def test_module_target_shapes_and_json():
    result = run_cli("customgrad.library:LegendreP3", "--shapes", "3x4", "--json", "-", "--no-compile")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and data["inputs"] == "x: float64[3, 4]"


def test_planted_mistake_exits_1():
    result = run_cli(f"{FIXTURES / 'planted_mistakes.py'}:MissingTerm", "--no-compile")
    assert result.returncode == 1
    assert "off by -2" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["no/such/file.py:P2"], "no such file"),
        (["customgrad.library:Nope"], "has no 'Nope'"),
        (["customgrad.library"], "path/to/file.py:Name"),
        (["customgrad.library:P2", "--shapes", "3y4"], "cannot read '3y4'"),
        (["customgrad.library:P2", "--shapes", "3,4"], "gives 2 shape(s)"),
    ],
)
def test_usage_errors_exit_2(arguments, message):
    result = run_cli(*arguments)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr


@pytest.mark.slow
def test_compile_runs_by_default():
    result = run_cli(f"{FIXTURES / 'blog_p2_fixed.py'}:P2", "--json", "-")
    assert result.returncode == 0, result.stderr
    compile_result = next(r for r in json.loads(result.stdout)["results"] if r["name"] == "compile")
    assert compile_result["status"] == "passed"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(:\n", r"broken.py:1 has a syntax error (invalid syntax); fix the file"),
        ("raise RuntimeError('boom at import')\n", "raised RuntimeError: boom at import at "),
        ("import no_such_package_for_customgrad\n", "raised ModuleNotFoundError: No module named"),
        ("import sys\nsys.exit(3)\n", "calls sys.exit(3); put script code under if __name__ == '__main__':"),
    ],
)
def test_a_target_file_that_fails_to_import_is_one_usage_error(tmp_path, source, message):
    path = tmp_path / "broken.py"
    path.write_text(source)
    result = run_cli(f"{path}:F", "--no-compile")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: target ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["torch:sin", "--no-compile"], "cannot read the parameters of"),
        (["customgrad.library:P2", "--shapes", "100000000x100000000"], "more than the limit of 10,000,000"),
        (["customgrad.library:P2", "--shapes", "3,4", "--no-compile"], "gives 2 shape(s)"),
    ],
)
def test_targets_without_a_signature_and_huge_shapes_are_usage_errors(arguments, message):
    result = run_cli(*arguments)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_json_stays_valid_when_the_module_prints(tmp_path):
    # Prints at import (parent and worker both import the module), in forward, and straight to file descriptor 1.
    path = tmp_path / "noisy.py"
    path.write_text(
        "import os\n"
        "import torch\n"
        "print('importing noisy')\n"
        "os.write(1, b'raw write at import\\n')\n\n\n"
        "class Noisy(torch.autograd.Function):\n"
        "    @staticmethod\n"
        "    def forward(ctx, x):\n"
        "        print('in forward')\n"
        "        ctx.save_for_backward(x)\n"
        "        return x * x\n\n"
        "    @staticmethod\n"
        "    def backward(ctx, grad_output):\n"
        "        (x,) = ctx.saved_tensors\n"
        "        return 2 * x * grad_output\n"
    )
    result = run_cli(f"{path}:Noisy", "--json", "-", "--no-compile")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"], result.stdout
    assert "importing noisy" in result.stderr and "raw write at import" in result.stderr
    assert "in forward" in result.stderr
