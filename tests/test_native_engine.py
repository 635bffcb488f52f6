"""The native LM engine's build policy: a one-off fit never waits for the C compiler, a loop of fits
gets the compiled engine built in the background, a large batch builds it at once; answers equal the
torch engine's."""

import threading
import time

import numpy as np
import pytest

from customgrad.backends.cpu import compiler
from customgrad.fit import fit, fit_batch, lm, native
from customgrad.fit.formula_model import formula_model
from reference import assert_matches_reference

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C compiler")


def built(text: str) -> bool:
    function = formula_model(text)
    return any(key[0] is function for key in native._LIBRARIES)


def wait_for_builds() -> None:
    for thread in threading.enumerate():
        if thread.name == native.BUILD_THREAD:
            thread.join(timeout=120)


def test_a_loop_of_single_fits_gets_the_compiled_engine_built_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path))
    model = "k1*exp(-k2*x) + k3"  # used by no other test: nothing built in this process yet
    x = np.linspace(0, 3, 30)
    y = 2 * np.exp(-1.3 * x) + 0.5 + 0.01 * np.cos(9 * x)
    params = {"k1": 1.0, "k2": 1.0, "k3": 0.0}
    fit(model, x, y, params=params)
    assert not built(model)  # one fit: the torch engine, no compiler run
    for _ in range(native.BUILD_AFTER_FITS - 1):
        fit(model, x, y, params=params)
    wait_for_builds()
    assert built(model)
    assert list((tmp_path / "native-fit").glob("*.entry"))  # on disk for the next process
    compiled, reference = fit(model, x, y, params=params), fit(model, x, y, params=params, engine="torch")
    for name in params:
        assert_matches_reference(compiled.params[name], reference.params[name], rtol=1e-8, what=name)
        assert_matches_reference(compiled.stderr[name], reference.stderr[name], rtol=1e-6, what=name)


def test_a_small_batch_does_not_wait_for_the_compiler_and_a_large_one_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path))
    model = "q1*x/(q2 + x)"  # used by no other test
    x = np.linspace(0.1, 5, 20)
    rng = np.random.default_rng(4)
    y = 3 * x / (0.7 + x) + 0.01 * rng.standard_normal((native.BUILD_FOR_CURVES, 20))
    params = {"q1": 1.0, "q2": 1.0}
    small = fit_batch(model, x, y[:8], params=params)
    assert not built(model)
    large = fit_batch(model, x, y, params=params)
    assert built(model)
    for name in params:
        assert_matches_reference(large.params[name][:8], small.params[name], rtol=1e-8, what=name)


def test_a_one_off_formula_fit_runs_the_c_solver_on_its_numpy_rows_without_the_compiler(monkeypatch):
    from scipy.optimize import curve_fit

    from customgrad.backends import cpu
    from customgrad.fit import native_library

    def no_compiler(*arguments, **options):
        raise AssertionError("a one-off fit ran the C compiler")

    monkeypatch.setattr(cpu, "_build", no_compiler)
    models = []
    monkeypatch.setattr(native_library.PythonRows, "set_in", _recording(native_library.PythonRows.set_in, models))
    model = "m1*x/(1 + m2*x) + m3"  # used by no other test
    x = np.linspace(0.1, 6, 40)
    y = 3 * x / (1 + 0.8 * x) - 0.2 + 0.02 * np.sin(7 * x)
    params = {"m1": 1.0, "m2": 1.0, "m3": 0.0}
    result = fit(model, x, y, params=params)
    assert models and not built(model)
    tight = {"xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15}
    values, covariance = curve_fit(lambda x, m1, m2, m3: m1 * x / (1 + m2 * x) + m3, x, y, p0=[1, 1, 0], **tight)
    for k, name in enumerate(params):
        assert_matches_reference(result.params[name], values[k], rtol=1e-7, what=name)
        assert_matches_reference(result.stderr[name], np.sqrt(covariance[k, k]), rtol=1e-5, what=name)


def _recording(method, calls: list):
    def recorded(self, loaded):
        calls.append(self)
        return method(self, loaded)

    return recorded


def test_non_finite_rows_on_the_way_are_retried_as_by_the_torch_engine():
    from scipy.optimize import least_squares

    x = np.linspace(1.0, 4.0, 25)
    y = 2.0 * np.log(x - 0.5) + 0.01 * np.cos(5 * x)
    params = {"g1": 1.0, "g2": 0.9}  # steps from here cross x - g2 <= 0: log of a negative number
    result = fit("g1*log(x - g2)", x, y, params=params)
    reference = least_squares(lambda b: b[0] * np.log(x - b[1]) - y, [2.0, 0.5], xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert result.status in {"ftol", "xtol", "gtol", "roundoff"}
    for k, name in enumerate(params):
        assert_matches_reference(result.params[name], reference.x[k], rtol=1e-7, what=name)


def test_the_shared_solver_library_is_built_in_a_detached_process_when_missing(tmp_path, monkeypatch):
    from customgrad import cache
    from customgrad.fit import native_library

    monkeypatch.setattr(native_library, "_STARTED", [])
    monkeypatch.setenv("CUSTOMGRAD_CACHE_DIR", str(tmp_path))
    x = np.linspace(0, 2, 12)
    fit("h1 + h2*x", x, 1 + 2 * x, params={"h1": 0.0, "h2": 0.0})  # the tensor engine; starts the build
    assert str(cache.directory()) in native_library._STARTED
    deadline = time.monotonic() + 300
    while native_library.library(build=False) is None:  # built by another process, which this one does not wait for
        assert time.monotonic() < deadline, "the solver library was not built within 300 s"
        time.sleep(0.2)


def test_ctrl_c_inside_the_rows_stops_the_fit_with_keyboard_interrupt(monkeypatch):
    from customgrad.fit import native_library

    calls = []
    original = native_library.PythonRows._call

    def interrupted_at_the_third(self, *arguments):
        calls.append(1)
        if len(calls) == 3:
            arguments = (_raise_interrupt, *arguments[1:])
        return original(self, *arguments)

    monkeypatch.setattr(native_library.PythonRows, "_call", interrupted_at_the_third)
    x = np.linspace(0, 1, 20)
    with pytest.raises(KeyboardInterrupt):
        fit("i1*exp(i2*x)", x, 2 * np.exp(0.5 * x), params={"i1": 1.0, "i2": 0.0})
    # after it, each call only writes NaN, and the solver gives up within its non-finite retries
    assert len(calls) <= 3 + lm.NONFINITE_RETRIES + 2


def _raise_interrupt(*arguments):
    raise KeyboardInterrupt


def test_a_small_batch_runs_the_shared_c_solver_on_its_numpy_rows(monkeypatch):
    from scipy.optimize import curve_fit

    from customgrad.fit import native_library

    models = []
    monkeypatch.setattr(native_library.PythonRows, "set_in", _recording(native_library.PythonRows.set_in, models))
    model = "n1*x/(1 + n2*x) + n3"  # used by no other test
    x = np.linspace(0.1, 6, 30)
    rng = np.random.default_rng(7)
    y = 3 * x / (1 + 0.8 * x) - 0.2 + 0.02 * rng.standard_normal((5, 30))
    params = {"n1": 1.0, "n2": 1.0, "n3": 0.0}
    result = fit_batch(model, x, y, params=params, bounds={"n2": (0.0, 10.0)})
    assert models and not built(model)
    for i in range(5):
        tight = {"xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15}
        values, covariance = curve_fit(lambda x, a, b, c: a * x / (1 + b * x) + c, x, y[i], p0=[1, 1, 0], **tight)
        for k, name in enumerate(params):
            assert_matches_reference(result.params[name][i], values[k], rtol=1e-7, what=name)
            assert_matches_reference(result.stderr[name][i], np.sqrt(covariance[k, k]), rtol=1e-5, what=name)
