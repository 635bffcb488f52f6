"""Inputs an outside tester brings to `fit`, `fit_batch`, their results and ``customgrad fit``: each test is
a defect found by probing, checked against SciPy's `curve_fit` or a plain NumPy reference.
"""

import numpy as np
import pytest
from scipy.optimize import curve_fit

from customgrad.errors import UsageError
from customgrad.fit import fit, fit_batch
from reference import assert_matches_reference

MODEL = "a*exp(-k*x) + c"
START = {"a": 1.0, "k": 0.1, "c": 0.0}


def decay(points: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A noisy-looking decay (deterministic ripple instead of noise)."""
    x = np.linspace(0, 5, points)
    return x, 3 * np.exp(-0.7 * x) + 0.5 + 0.01 * np.sin(9 * x)


def scipy_decay(x, y) -> np.ndarray:
    """The decay's least-squares values by SciPy's `curve_fit`."""
    values, _ = curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, x, y, p0=[1, 0.1, 0], xtol=1e-14, ftol=1e-14)
    return values


def test_reversed_numpy_views_are_fitted_like_their_copies():
    # x[::-1] has a negative stride, which torch.as_tensor refuses: it was a raw ValueError from torch
    x, y = decay()
    result = fit(MODEL, x[::-1], y[::-1], params=START, sigma=np.ones_like(x)[::-1])
    assert_matches_reference(np.array(list(result.params.values())), scipy_decay(x, y), rtol=1e-7)
    assert np.allclose(result.predict(x[::-1][:3]), result.predict(x[::-1][:3].copy()), rtol=0, atol=0)
    curves = np.stack([y, 2 * y])
    batch = fit_batch(MODEL, x[::-1], curves[::-1, ::-1], params=START)
    assert_matches_reference(batch.params["k"], [scipy_decay(x, 2 * y)[1], scipy_decay(x, y)[1]], rtol=1e-7)


def test_scipy_style_bounds_are_a_usage_error_that_shows_the_dict_form():
    x, y = decay()
    for run in (fit, fit_batch):
        data = y if run is fit else y[None]
        with pytest.raises(UsageError, match=r"bounds must be a dict of name -> \(lower, upper\)"):
            run(MODEL, x, data, params=START, bounds=([0, 0, 0], [10, 10, 10]))
