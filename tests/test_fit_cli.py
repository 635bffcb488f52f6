"""``customgrad fit`` with models and data, invoked through the real entry point."""

import json
from pathlib import Path

import numpy as np
import pytest

from command_line import run_customgrad, run_in_new_process

NIST = Path(__file__).resolve().parents[1] / "src" / "customgrad" / "data" / "nist"


def run(*args, cwd=None):
    return run_customgrad("fit", *args, cwd=cwd)


@pytest.fixture
def csv_file(tmp_path):
    t = np.linspace(0, 5, 30)
    y = 3 * np.exp(-0.7 * t) + 0.5 + 0.01 * np.cos(9 * t)
    path = tmp_path / "decay.csv"
    path.write_text("time,signal,err\n" + "\n".join(f"{a},{b},0.01" for a, b in zip(t, y, strict=True)) + "\n")
    return path


def test_blog_with_lm_reaches_the_infimum_and_says_not_identifiable(tmp_path):
    out = run("--method", "lm", "--json", str(tmp_path / "blog.json"), "--plot", str(tmp_path / "blog.png"))
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "blog.json").read_text())
    assert data["cost"] <= 3993588.9
    assert "not identifiable" in out.stdout
    assert (tmp_path / "blog.png").read_bytes()[:4] == b"\x89PNG"


def test_csv_fit_with_named_columns_json_and_plot(csv_file, tmp_path):
    out = run(
        "--model",
        "a*exp(-k*time) + c",
        "--data",
        str(csv_file),
        "--x",
        "time",
        "--y",
        "signal",
        "--sigma",
        "err",
        "--param",
        "a=1",
        "--param",
        "k=0.1",
        "--param",
        "c=0",
        "--json",
        str(tmp_path / "out.json"),
        "--plot",
        str(tmp_path / "fit.png"),
    )
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert abs(data["params"]["k"] - 0.7) < 0.01 and data["success"]
    assert "±" in out.stdout


def test_whitespace_file_columns_by_index(tmp_path):
    path = tmp_path / "line.txt"
    path.write_text("".join(f"{x} {2 * x + 1}\n" for x in range(10)))
    out = run("--model", "a*x + b", "--data", str(path), "--x", "0", "--y", "1", "--param", "a=0", "--param", "b=0")
    assert out.returncode == 0, out.stderr
    assert "a  " in out.stdout


def test_model_name_that_is_no_column_of_a_headed_file_is_an_error(csv_file):
    out = run(
        "--model",
        "a*exp(-k*t) + c",
        "--data",
        str(csv_file),
        "--x",
        "time",
        "--y",
        "signal",
        "--param",
        "a=1",
        "--param",
        "k=0.1",
        "--param",
        "c=0",
    )
    assert out.returncode == 2
    assert "'t', which is neither a data name (time) nor a parameter (a, k, c)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_nist_file_fits_with_its_own_model_and_start():
    out = run("--data", str(NIST / "Misra1a.dat"), "--start", "2", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "b1=238.94212" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "a*x", "--data", "missing.csv", "--param", "a=1"], "no such file"),
        (
            ["--model", "a*x + q", "--data", "{csv}", "--x", "time", "--y", "signal", "--param", "a=1"],
            "which are neither data names (time) nor parameters (a)",
        ),
        (["--model", "a*x", "--data", "{csv}", "--x", "nope", "--param", "a=1"], "no column 'nope'"),
        (["--model", "a*x", "--data", "{csv}"], "--param NAME=VALUE"),
        (["--model", "a*x", "--data", "{csv}", "--param", "a"], "write NAME=VALUE"),
        (
            ["--model", "a*t + b", "--data", "{csv}", "--x", "time", "--y", "signal"]
            + ["--param", "a=1", "--param", "b=0", "--param", "t=0.5"],
            "model 'a*t + b' uses none of the data columns given in x ('time')",
        ),
    ],
)
def test_bad_input_gives_one_clear_error(csv_file, args, message):
    out = run(*[arg.replace("{csv}", str(csv_file)) for arg in args])
    assert out.returncode in (1, 2)
    assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_nan_in_data_names_rows_and_omit_works(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text("x,y\n0,1\n1,nan\n2,5\n3,7\n")
    out = run("--model", "a*x + b", "--data", str(path), "--param", "a=0", "--param", "b=0")
    assert out.returncode == 1 and "rows 1" in out.stderr
    out = run("--model", "a*x + b", "--data", str(path), "--param", "a=0", "--param", "b=0", "--nan-policy", "omit")
    assert out.returncode == 0, out.stderr


def test_model_nan_during_fit_exits_nonzero_and_keeps_best(tmp_path):
    path = tmp_path / "line.csv"
    path.write_text("x,y\n" + "".join(f"{x},{2 * x}\n" for x in range(1, 8)))
    # NaN once a > 1.2, and the best fit (a = 2) lies beyond
    out = run(
        "--model",
        "a*x + 1e-12*sqrt(1.2 - a)",
        "--data",
        str(path),
        "--param",
        "a=1",
        "--json",
        str(tmp_path / "o.json"),
    )
    assert out.returncode == 1
    assert "NaN or inf" in out.stdout + out.stderr
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["status"] == "nonfinite" and 1.0 <= data["params"]["a"] <= 1.2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "", "--data", "{csv}", "--param", "a=1"], 1, "error: model is empty: write an expression"),
        (
            [
                "--model",
                "a*time",
                "--data",
                "{csv}",
                "--x",
                "time",
                "--y",
                "signal",
                "--param",
                "a=1",
                "--param",
                "a=2",
            ],
            2,
            "error: --param 'a=2': 'a' is given more than once",
        ),
        (
            ["--model", "a*time", "--data", "{csv}", "--x", "time", "--y", "signal", "--param", "a b=1"],
            2,
            "error: parameter name 'a b' is not a name",
        ),
        (
            [
                "--model",
                "a*time",
                "--data",
                "{csv}",
                "--x",
                "time",
                "--y",
                "signal",
                "--param",
                "a=1",
                "--plot",
                "{dir}/fit.txt",
            ],
            2,
            "error: --plot: cannot write a figure to",
        ),
        (["--steps", "3", "--param", "a=1"], 2, "error: --param does not apply to the built-in experiment's"),
        (["--steps", "3", "--bound", "a=0:1"], 2, "error: --bound does not apply to the built-in experiment's"),
    ],
)
def test_options_a_new_user_gets_wrong_give_one_line(csv_file, args, code, message):
    out = run(*[arg.replace("{csv}", str(csv_file)).replace("{dir}", str(csv_file.parent)) for arg in args])
    assert out.returncode == code, out.stderr
    assert out.stderr.startswith(message) and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stdout == ""  # nothing ran, nothing was printed
    assert not (csv_file.parent / "fit.txt").exists()


def test_a_fit_that_fails_leaves_no_empty_json_or_plot_file(csv_file):
    json_path, plot_path = csv_file.parent / "out.json", csv_file.parent / "out.png"
    out = run(
        "--model", "a*q", "--data", str(csv_file), "--param", "a=1", "--json", str(json_path), "--plot", str(plot_path)
    )
    assert out.returncode == 2 and out.stderr.startswith("error: ")
    assert not json_path.exists() and not plot_path.exists()


def strict_json(path):
    """Parse like a strict JSON parser: NaN / Infinity tokens are an error."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_a_diverging_run_says_where_plots_what_is_finite_writes_strict_json_and_exits_1(tmp_path):
    from test_experiments import eager_blog_losses

    losses = eager_blog_losses(seed=0, steps=10, learning_rate=1.0)
    first_bad = next(t for t, loss in enumerate(losses) if not np.isfinite(loss))
    json_path, plot_path = tmp_path / "run.json", tmp_path / "run.png"
    out = run("--lr", "1", "--steps", "50", "--json", str(json_path), "--plot", str(plot_path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"error: the run diverged at step {first_bad}:" in out.stderr
    data = strict_json(json_path)
    assert data["diverged_at"] == first_bad and len(data["loss_history"]) == first_bad + 1
    assert data["loss_history"][:first_bad] == pytest.approx(losses[:first_bad], rel=1e-5)
    assert data["loss_history"][-1] is None
    assert plot_path.read_bytes()[:4] == b"\x89PNG"


def test_a_one_point_fit_says_not_identifiable_once(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("x,y\n1,3\n")
    json_path = tmp_path / "one.json"
    out = run(
        "--model", "c + a*exp(-k*x)", "--data", str(path), "--param", "a=1", "--param", "c=1", "--param", "k=1",
        "--json", str(json_path),
    )  # fmt: skip
    assert out.stdout.count("not identifiable") == 1, out.stdout
    warnings = strict_json(json_path)["warnings"]
    assert sum("not identifiable" in text for text in warnings) == 1, warnings


def test_data_near_1e300_fit_like_lstsq_in_scaled_units(tmp_path):
    x = np.linspace(0, 1, 11)
    y_scaled = 0.5 * (1 + x) + 0.01 * np.cos(5 * x)
    path = tmp_path / "big.csv"
    path.write_text("x,y\n" + "".join(f"{a!r},{1e300 * b!r}\n" for a, b in zip(x.tolist(), y_scaled.tolist())))
    json_path = tmp_path / "big.json"
    out = run("--model", "a*x + c", "--data", str(path), "--param", "a=1", "--param", "c=0", "--json", str(json_path))
    assert out.returncode == 0, out.stderr
    data = strict_json(json_path)
    expected, *_ = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y_scaled, rcond=None)
    found = np.array([data["params"]["a"], data["params"]["c"]]) / 1e300
    assert np.allclose(found, expected, rtol=1e-10, atol=0), (found, expected)
    assert data["success"] and data["cost"] is None and "exceeds float64's range" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2"], "--start"),
        (["--seed", "3"], "--seed"),
        (["--lr", "0.1"], "--lr"),
        (["--experiment", "tutorial"], "--experiment"),
        (["--x", "1", "--data", str(NIST / "Misra1a.dat")], "--x"),
    ],
)
def test_an_option_that_does_not_apply_is_refused_naming_it_and_why(csv_file, args, message):
    table_fit = ["--data", str(csv_file), "--model", "a*time", "--x", "time", "--y", "signal", "--param", "a=1"]
    arguments = args if "--data" in args else [*args, *table_fit]
    out = run(*arguments)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.startswith(f"error: {message} does not apply to ") and ": " in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_a_malformed_formula_is_reported_before_missing_parameters(csv_file):
    out = run("--model", "__import__('os').system('echo hacked')", "--data", str(csv_file))
    assert out.returncode == 1 and out.stderr.startswith("error: model: only plain function names can be called")
    assert "--param" not in out.stderr and "hacked" not in out.stdout


def test_a_parameter_named_e_is_told_that_e_is_eulers_number(csv_file):
    out = run("--model", "E*time", "--data", str(csv_file), "--x", "time", "--y", "signal", "--param", "E=1")
    assert out.returncode == 2
    assert "'E' is Euler's number" in out.stderr and "another name, such as 'E0'" in out.stderr


def test_a_model_calls_functions_defined_on_the_command_line_as_scipy_fits_it(tmp_path):
    from scipy.optimize import curve_fit

    x = np.linspace(-5, 5, 41)
    y = 3 / (1 + ((x - 0.5) / 1.2) ** 2) + 0.05 * np.cos(7 * x)
    data = tmp_path / "peak.csv"
    data.write_text("x,y\n" + "\n".join(f"{a!r},{b!r}" for a, b in zip(x.tolist(), y.tolist(), strict=True)) + "\n")
    definitions = tmp_path / "defs.txt"
    definitions.write_text("Peak(x, x0, g) = Lor((x - x0)/g)\n")
    out = run(
        *("--model", "h*Peak(x, x0, g)", "--data", str(data), "--x", "x", "--y", "y", "--quiet"),
        *("--define", "Lor(u) = 1/(1 + u**2)", "--defines", str(definitions)),
        *("--param", "h=1", "--param", "x0=0", "--param", "g=1", "--json", str(tmp_path / "fit.json")),
    )
    # --defines is read first: Peak calls a Lor that --define has not made yet
    assert out.returncode == 1 and "unknown function 'Lor'" in out.stderr
    definitions.write_text("Lor(u) = 1/(1 + u**2)\nPeak(x, x0, g) = Lor((x - x0)/g)\n")
    out = run(
        *("--model", "h*Peak(x, x0, g)", "--data", str(data), "--x", "x", "--y", "y", "--quiet"),
        *("--defines", str(definitions), "--param", "h=1", "--param", "x0=0", "--param", "g=1"),
        *("--json", str(tmp_path / "fit.json")),
    )
    assert out.returncode == 0, out.stderr
    expected, _ = curve_fit(lambda x, h, x0, g: h / (1 + ((x - x0) / g) ** 2), x, y, p0=[1, 0, 1], xtol=1e-14)
    fitted = json.loads((tmp_path / "fit.json").read_text())["params"]
    assert np.allclose([fitted[n] for n in ("h", "x0", "g")], expected, rtol=1e-7)


def test_the_step_limit_message_names_the_option_of_the_caller():
    from customgrad import fit
    from customgrad.fit.nist import read_nist
    from customgrad.fit.solvers import DEFAULT_STEPS

    nist = read_nist(NIST / "Misra1a.dat")
    result = fit(nist.formula, nist.x, nist.y, params=nist.starts[0], max_steps=2)
    assert result.status == "max_steps" and "raise max_steps" in result.message
    out = run("--data", str(NIST / "Misra1a.dat"), "--steps", "2")
    assert out.returncode == 1 and "raise --steps" in out.stderr and "raise max_steps" not in out.stderr + out.stdout
    help_text = " ".join(run("--help").stdout.split())
    assert "gradient-descent steps (default 2000); with --model/--data or --method, the solver's" in help_text
    assert ", ".join(f"{method} {steps}" for method, steps in DEFAULT_STEPS.items()) in help_text


@pytest.mark.parametrize(("method", "steps"), [("adam", "3"), ("lbfgs", "1")])
def test_a_gradient_method_that_ran_its_steps_exits_0_with_its_status_shown(csv_file, method, steps):
    out = run(
        *("--model", "a*exp(-k*time) + c", "--data", str(csv_file), "--x", "time", "--y", "signal"),
        *("--param", "a=1", "--param", "k=0.1", "--param", "c=0", "--method", method, "--steps", steps),
    )
    assert out.returncode == 0, out.stderr
    status = "step_limit" if method == "adam" else "max_steps"
    assert f"method: {method}   status: {status} (stopped: " in out.stdout and "error" not in out.stderr
    assert "exit status: 0 when the fit converged" in " ".join(run("--help").stdout.split())


@pytest.mark.parametrize(("rank", "warned"), [("0", True), ("1", False)])
def test_torchrun_without_distributed_is_told_once_to_add_it(csv_file, rank, warned):
    import os

    # the environment torchrun gives each process; the fit runs as it would on that rank
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank}
    args = ["--model", "a*exp(-k*time) + c", "--data", str(csv_file), "--x", "time", "--y", "signal", "--quiet"]
    args += ["--param", "a=1", "--param", "k=0.5", "--param", "c=0"]
    out = run_in_new_process("fit", *args, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("a=")
    message = "warning: running under torchrun (WORLD_SIZE=2) without --distributed"
    assert (message in out.stderr) is warned and ("add --distributed" in out.stderr) is warned


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--x", "t", "--y", "t"], "--x 't' and --y 't' name the same column 't'"),
        (["--x", "t", "--x", "0", "--y", "z"], "--x 't' and --x '0' name the same column 't'"),
        (["--x", "t", "--y", "z", "--sigma", "1"], "--y 'z' and --sigma '1' name the same column 'z'"),
        (["--x", "t", "--y", "z", "--frob"], "unrecognized arguments: --frob (see 'customgrad fit --help')"),
    ],
)
def test_columns_used_twice_and_unknown_options_are_refused(tmp_path, args, message):
    data = tmp_path / "tz.csv"
    data.write_text("t,z,w\n0,1,2\n1,2,3\n2,3.5,1\n3,5,1\n")
    out = run("--model", "a*t", "--data", str(data), "--param", "a=1", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"error: {message}") and len(out.stderr.splitlines()) == 1, out.stderr


def test_a_model_with_unknown_names_says_which_in_grammar_that_fits_their_number(tmp_path):
    data = tmp_path / "tz.csv"
    data.write_text("t,z,w\n0,1,2\n1,2,3\n2,3.5,1\n3,5,1\n")
    out = run("--model", "a*t + p + q", "--data", str(data), "--x", "t", "--y", "z", "--param", "a=1")
    assert out.returncode == 2  # a usage error
    assert "uses 'p', 'q', which are neither data names (t) nor parameters (a): add them to params" in out.stderr


def test_the_plot_of_a_two_predictor_fit_names_the_response_column(tmp_path, monkeypatch):
    import matplotlib.figure

    from customgrad.cli import main

    rows = [(t, w, 2 * t - 0.5 * w + 0.01 * np.cos(3 * t + w)) for t in range(4) for w in range(3)]
    data = tmp_path / "tz.csv"
    data.write_text("t,w,z\n" + "\n".join(",".join(map(str, row)) for row in rows) + "\n")
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, *args, **kwargs: figures.append(figure))
    options = ["--model", "a*t + b*w", "--data", str(data), "--x", "t", "--x", "w", "--y", "z", "--param", "a=1"]
    assert main(["fit", *options, "--param", "b=0", "--plot", str(tmp_path / "fit.png"), "--quiet"]) == 0
    top, bottom = figures[0].axes
    assert top.get_ylabel() == "z" and bottom.get_ylabel() == "residual (z - fit)" and bottom.get_xlabel() == "t"


def test_an_unknown_function_in_a_model_points_to_define(tmp_path):
    data = tmp_path / "peak.csv"
    data.write_text("x,y\n0,1\n1,0.5\n2,0.2\n3,0.1\n")
    out = run("--model", "h*Lor((x-x0)/g)", "--data", str(data), "--param", "h=1", "--param", "x0=0", "--param", "g=1")
    assert out.returncode == 1, out  # a formula error (`cli.EXIT_STATUS`)
    assert "unknown function 'Lor'" in out.stderr and "--define 'Lor(u) = ...'" in out.stderr, out.stderr


def test_a_bad_cell_is_reported_at_its_line_of_the_file(tmp_path):
    # the line number counted data lines only: comments and blank lines above made it point elsewhere
    path = tmp_path / "commented.csv"
    path.write_text("# decay run 3\n\nt,y\n0,1.0\n# a gap\n1,abc\n2,0.2\n")
    out = run("--model", "a*exp(-k*t)", "--data", str(path), "--x", "t", "--y", "y", "--param", "a=1", "--param", "k=1")
    assert out.returncode != 0
    assert "line 6, column 1: 'abc' is not a number" in out.stderr, out.stderr


def test_a_csv_saved_with_a_byte_order_mark_names_its_first_column(tmp_path):
    # Excel's "CSV UTF-8" starts with U+FEFF, which became part of the first column's name ('\ufefft')
    from scipy.optimize import curve_fit

    t = np.linspace(0, 5, 30)
    y = 3 * np.exp(-0.7 * t) + 0.01 * np.cos(9 * t)
    path = tmp_path / "excel.csv"
    rows = "\n".join(f"{a!r},{b!r}" for a, b in zip(t.tolist(), y.tolist(), strict=True))
    path.write_bytes(b"\xef\xbb\xbf" + f"t,y\n{rows}\n".encode())
    out = run("--model", "a*exp(-k*t)", "--data", str(path), "--x", "t", "--y", "y", "--param", "a=1", "--param", "k=1",
              "--json", str(tmp_path / "fit.json"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    expected, _ = curve_fit(lambda t, a, k: a * np.exp(-k * t), t, y, p0=[1, 1], xtol=1e-14, ftol=1e-14)
    found = json.loads((tmp_path / "fit.json").read_text())["params"]
    assert [found["a"], found["k"]] == pytest.approx(expected, rel=1e-7)
