"""The example programs run and print the blog's and the tutorial's trajectories."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "final_loss"),
    [("blog_p2.py", 3993725.0), ("blog_p2_from_formula.py", 3993725.0), ("tutorial_legendre.py", 8.9436)],
)
def test_example_prints_the_expected_final_loss(script, final_loss):
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    step, loss = lines[-2].split()
    assert step == "1999" and abs(float(loss) - final_loss) <= 1e-5 * final_loss + 1e-4
    assert lines[-1].startswith("Result: y = ") and "bound method" not in lines[-1]


def test_distributed_example_fits_rows_and_curves_on_two_processes_as_one_process_would():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "distributed_fit.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    one_fit, batch = result.stdout.splitlines()[-2:]
    sys.path.insert(0, str(EXAMPLES))
    try:
        import distributed_fit as example
    finally:
        sys.path.pop(0)
    from customgrad import fit

    x, y = example.rows()
    single = fit(example.MODEL, x, y, params=example.START)
    for name, value in single.params.items():
        assert f"{name} = {value:.6f} +- {single.stderr[name]:.1e}" in one_fit
    assert "curves: 1000   converged: 1000" in batch
