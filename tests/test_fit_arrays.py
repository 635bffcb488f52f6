"""The LM solver's op tables (`fit/arrays.py`): `SCALAR`, one problem without its batch axis, computes what
`NUMPY` computes on a batch of one (references: numpy itself, torch's QR, a straight-line fit by hand)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from customgrad.fit import fit

arrays = importlib.import_module("customgrad.fit.arrays")
reduction = importlib.import_module("customgrad.fit.reduction")
SCALAR, NUMPY = arrays.SCALAR, arrays.NUMPY

SPECIAL = [0.0, -0.0, 1.5, -2.0, 1e-300, 1e300, np.inf, -np.inf, np.nan]


def _same(found, expected) -> None:
    """``found`` (SCALAR's answer for one problem) is NUMPY's answer for the batch of one, NaN for NaN."""
    expected = np.asarray(expected)[0]
    assert np.shape(found) == np.shape(expected), (found, expected)
    np.testing.assert_array_equal(np.asarray(found), expected)
    assert not isinstance(found, (float, bool)) or isinstance(found, np.generic), type(found)  # numpy types


@pytest.mark.parametrize("a", SPECIAL)
@pytest.mark.parametrize("b", SPECIAL)
def test_scalar_elementwise_operations_match_numpy_on_a_batch_of_one(a, b):
    x, y = np.float64(a), np.float64(b)
    bx, by = np.array([a]), np.array([b])
    with np.errstate(all="ignore"):
        _same(SCALAR.maximum(x, y), NUMPY.maximum(bx, by))
        _same(SCALAR.minimum(x, y), NUMPY.minimum(bx, by))
        _same(SCALAR.clamp_min(x, 0.0), NUMPY.clamp_min(bx, 0.0))
        _same(SCALAR.isfinite(x), NUMPY.isfinite(bx))
        pair, batch_pair = np.array([a, b]), np.array([[a, b]])
        _same(SCALAR.within(pair, 1e-140, 1e140), NUMPY.within(batch_pair, 1e-140, 1e140))
        _same(~SCALAR.isfinite(x), ~NUMPY.isfinite(bx))
        for condition in (x < y, x == y, SCALAR.isfinite(x)):
            batch_condition = np.array([bool(condition)])
            _same(SCALAR.where(condition, x, y), NUMPY.where(batch_condition, bx, by))
            _same(SCALAR.where(condition, 0.0, y), NUMPY.where(batch_condition, 0.0, by))
            _same(SCALAR.where(condition, x, -1.0), NUMPY.where(batch_condition, bx, -1.0))


def test_scalar_reductions_and_products_match_numpy_on_a_batch_of_one():
    generator = np.random.default_rng(7)
    vector, other = generator.standard_normal(5), generator.standard_normal(5)
    matrix, columns = generator.standard_normal((5, 5)), generator.standard_normal((5, 1, 9))
    weights = generator.standard_normal((1, 9))
    vector[2] = np.inf
    with np.errstate(all="ignore"):  # (as the solver calls them: inf - inf is NaN, silently)
        _same(SCALAR.all_finite(matrix), NUMPY.all_finite(matrix[None]))
        _same(SCALAR.all_finite(vector[:, None] * matrix), NUMPY.all_finite((vector[:, None] * matrix)[None]))
    vector[2] = 0.25
    close = dict(rtol=1e-14, atol=1e-14)  # (BLAS products: the same sums, in their own order)
    np.testing.assert_allclose(SCALAR.sum(vector, -1), NUMPY.sum(vector[None], -1)[0], **close)
    np.testing.assert_allclose(SCALAR.norm(vector), NUMPY.norm(vector[None])[0], **close)
    np.testing.assert_allclose(SCALAR.vecmat(vector, matrix), NUMPY.vecmat(vector[None], matrix[None])[0], **close)
    np.testing.assert_allclose(SCALAR.matvec(matrix, other), NUMPY.matvec(matrix[None], other[None])[0], **close)
    combined = NUMPY.combine_columns(columns, vector[None])[0]
    np.testing.assert_allclose(SCALAR.combine_columns(columns[:, 0], vector), combined, **close)
    projected = NUMPY.project_on_columns(columns, weights)[0]
    np.testing.assert_allclose(SCALAR.project_on_columns(columns[:, 0], weights[0]), projected, **close)
    assert SCALAR.all(np.True_, -1) and not SCALAR.any(np.False_, -1) and bool(SCALAR.all(vector > -9, -1))


@pytest.mark.parametrize("rows", [1, 3, 6, 40])
def test_scalar_householder_r_and_svd_match_torch_and_numpy(rows):
    block = np.random.default_rng(rows).standard_normal((rows, 6))
    expected = reduction.reduce_local(torch.from_numpy(block)).numpy()
    np.testing.assert_allclose(SCALAR.householder(block), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(SCALAR.householder(np.asfortranarray(block)), expected, rtol=1e-12, atol=1e-12)
    upper, rhs = expected[:5, :5], expected[:5, 5]
    values, vt, products = SCALAR.svd(upper, rhs)
    u, s, reference_vt = np.linalg.svd(upper)  # (the same LAPACK call: the same signs, also where rank-deficient)
    np.testing.assert_allclose(values, s, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(vt, reference_vt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(products, s * (u.T @ rhs), rtol=1e-12, atol=1e-12)


def test_a_failed_scalar_svd_raises_numpys_error():
    matrix = np.eye(3)
    matrix[1, 1] = np.nan
    with np.errstate(all="ignore"), pytest.raises(np.linalg.LinAlgError):
        SCALAR.svd(matrix, np.ones(3))


def test_a_single_torch_engine_fit_through_as_many_points_as_parameters_is_exact():
    # two points, two parameters: [J | r] has fewer rows than columns (R padded with zero rows)
    x, y = np.array([1.0, 3.0]), np.array([2.0, -4.0])
    result = fit("a * x + b", x, y, params={"a": 0.5, "b": 0.5}, engine="torch")
    assert result.success
    np.testing.assert_allclose([result.params["a"], result.params["b"]], [-3.0, 5.0], rtol=1e-12, atol=1e-12)
