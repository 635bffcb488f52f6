"""The native LM engine's build policy: a one-off fit never waits for the C compiler, a loop of fits
gets the compiled engine built in the background, a large batch builds it at once; answers equal the
torch engine's."""

import threading

import numpy as np
import pytest

from customgrad.backends.cpu import compiler
from customgrad.fit import fit, fit_batch, native
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
