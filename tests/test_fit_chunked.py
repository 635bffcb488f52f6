"""fit(chunk_size=...): R accumulated over chunks of rows, against the same fit with the whole Jacobian."""

import numpy as np
import pytest
import torch

from customgrad import UsageError, fit
from reference import assert_matches_reference

MODEL = "a*exp(-(x-m)**2/(2*s**2))+c"
START = {"a": 1.0, "m": 0.0, "s": 1.0, "c": 0.0}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(8)
    x = np.linspace(-3, 3, 3001)
    return x, 2 * np.exp(-((x - 0.3) ** 2) / 0.98) + 0.5 + 0.05 * rng.standard_normal(3001)


def gaussian(x, a, m, s, c):
    return a * torch.exp(-((x - m) ** 2) / (2 * s**2)) + c


@pytest.mark.parametrize("model", [MODEL, gaussian], ids=["formula", "callable"])
def test_chunked_fit_matches_the_whole_jacobian(data, model):
    x, y = data
    whole = fit(MODEL, x, y, params=START)
    chunked = fit(model, x, y, params=START, chunk_size=400, sigma=np.full_like(y, 0.05))
    for name in START:
        assert_matches_reference(chunked.params[name], whole.params[name], rtol=1e-10, what=name)
        assert_matches_reference(chunked.stderr[name], whole.stderr[name], rtol=1e-8, what=name)
    assert chunked.success


def test_chunk_size_errors(data):
    x, y = data
    with pytest.raises(UsageError, match="chunk_size must be a positive integer"):
        fit(MODEL, x, y, params=START, chunk_size=0)
    with pytest.raises(UsageError, match="loss='linear'"):
        fit(MODEL, x, y, params=START, chunk_size=100, loss="huber")
