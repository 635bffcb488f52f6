"""``customgrad fit --batch``: one curve per row of a file, through the real entry point."""

import csv
import json

import numpy as np
import pytest

from command_line import run_customgrad
from customgrad import fit

MODEL = "a*exp(-b*t)+c"
PARAMS = ["--param", "a=1", "--param", "b=0.5", "--param", "c=0"]


def run(*args):
    return run_customgrad("fit", *args)


@pytest.fixture
def curves(tmp_path):
    """Five decays on 40 shared times; curve 2 is shorter (empty cells)."""
    rng = np.random.default_rng(5)
    t = np.linspace(0, 6, 40)
    y = (
        rng.uniform(1, 3, (5, 1)) * np.exp(-rng.uniform(0.3, 1.5, (5, 1)) * t)
        + 0.2
        + 0.01 * rng.standard_normal((5, 40))
    )
    lines = [",".join(map(str, t))]
    lines += [",".join(str(v) if (i != 2 or j < 25) else "" for j, v in enumerate(row)) for i, row in enumerate(y)]
    path = tmp_path / "curves.csv"
    path.write_text("\n".join(lines) + "\n")
    return t, y, path


def test_batch_writes_one_result_per_curve_matching_single_fits(curves, tmp_path):
    t, y, path = curves
    out = run(
        "--batch",
        "--data",
        str(path),
        "--model",
        MODEL,
        *PARAMS,
        "--csv",
        str(tmp_path / "r.csv"),
        "--json",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "r.png"),
    )
    assert out.returncode == 0, out.stderr
    assert "curves: 5   converged: 5" in out.stdout
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text().splitlines()))
    assert [int(row["dof"]) for row in rows] == [37, 37, 22, 37, 37]
    for i, row in enumerate(rows):
        keep = slice(None) if i != 2 else slice(0, 25)
        single = fit(MODEL, {"t": t[keep]}, y[i, keep], params={"a": 1, "b": 0.5, "c": 0})
        for name in ("a", "b", "c"):
            assert float(row[name]) == pytest.approx(single.params[name], rel=1e-8)
    assert json.loads((tmp_path / "r.json").read_text())["curves"] == 5
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_x_values_from_a_file(curves, tmp_path):
    t, y, _ = curves
    data = tmp_path / "y.csv"
    data.write_text("\n".join(",".join(map(str, row)) for row in y) + "\n")
    (tmp_path / "t.txt").write_text("\n".join(map(str, t)) + "\n")
    out = run("--batch", "--data", str(data), "--x-values", str(tmp_path / "t.txt"), "--model", MODEL, *PARAMS)
    assert out.returncode == 0, out.stderr
    assert "curves: 5" in out.stdout


def test_batch_errors_are_one_line(curves):
    _, _, path = curves
    out = run("--batch", "--data", str(path), "--model", MODEL, *PARAMS, "--method", "adam")
    assert out.returncode != 0
    assert "Levenberg-Marquardt" in out.stderr and "Traceback" not in out.stderr


def test_batch_options_need_batch(curves, tmp_path):
    _, _, path = curves
    out = run("--data", str(path), "--model", MODEL, *PARAMS, "--csv", str(tmp_path / "r.csv"))
    assert out.returncode != 0 and "--batch" in out.stderr


@pytest.mark.parametrize(
    "extra", [["--sigma", "s"], ["--ci"], ["--lr", "0.1"], ["--x", "t"], ["--seed", "3"], ["--bands", "prediction"]]
)
def test_single_fit_options_are_refused_by_batch_not_ignored(curves, extra, capsys):
    from customgrad.cli import main

    _, _, path = curves
    assert main(["fit", "--batch", "--data", str(path), "--model", MODEL, *PARAMS, *extra]) == 2
    assert f"error: {extra[0]} does not apply to --batch" in capsys.readouterr().err


def test_x_values_that_repeat_the_files_x_header_are_an_error_not_a_curve(curves, tmp_path, capsys):
    from customgrad.cli import main

    t, _, path = curves  # its first row is the x header
    (tmp_path / "t.txt").write_text("\n".join(map(str, t)) + "\n")
    code = main(
        ["fit", "--batch", "--data", str(path), "--x-values", str(tmp_path / "t.txt"), "--model", MODEL, *PARAMS]
    )
    assert code == 1
    assert "its first row repeats the --x-values" in capsys.readouterr().err


def test_batch_calls_a_function_defined_on_the_command_line(curves, tmp_path):
    from scipy.optimize import curve_fit

    t, y, path = curves
    out = run(
        *("--batch", "--data", str(path), "--model", "a*Decay(b*t)+c", "--define", "Decay(u) = exp(-u)"),
        *PARAMS,
        *("--csv", str(tmp_path / "fits.csv"), "--quiet"),
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "fits.csv").read_text().splitlines()))
    for i in (0, 4):  # against SciPy on the same curve
        expected, _ = curve_fit(lambda t, a, b, c: a * np.exp(-b * t) + c, t, y[i], p0=[1, 0.5, 0], xtol=1e-14)
        assert np.allclose([float(rows[i][n]) for n in "abc"], expected, rtol=1e-6)
