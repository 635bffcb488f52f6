"""All 54 NIST StRD fits (27 problems x 2 starts) against the certified values, and the file reader."""

import numpy as np
import pytest

from customgrad.fit import fit, load_nist, nist_names
from customgrad.fit.nist import nist_model_to_formula
from nist_reference import digits
from reference import ENGINES, assert_matches_reference

PROBLEMS = nist_names()


def test_all_27_problems_ship_with_the_package():
    assert len(PROBLEMS) == 27


def test_nist_notation_becomes_formula_syntax():
    assert nist_model_to_formula("y = b1*(1-exp[-b2*x])  +  e") == ("y", "b1*(1-exp(-b2*x))")
    assert nist_model_to_formula("y = b1 - b2*x - arctan[b3/(x-b4)]/pi + e")[1] == "b1 - b2*x - atan(b3/(x-b4))/pi"
    assert nist_model_to_formula("log[y] = b1 - b2*x1 * exp[-b3*x2] + e")[0] == "log(y)"


def test_reader_reads_header_values_and_data():
    problem = load_nist("Misra1a")
    assert problem.formula == "b1*(1-exp(-b2*x))"
    assert problem.starts[0] == {"b1": 500.0, "b2": 1e-4}
    assert problem.certified_params["b1"] == 2.3894212918e02
    assert problem.certified_stderr["b2"] == 7.2668688436e-06
    assert len(problem.y) == 14 and problem.dof == 12
    assert problem.certified_cost == 1.2455138894e-01


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("start", [0, 1], ids=["start1", "start2"])
@pytest.mark.parametrize("name", PROBLEMS)
def test_certified_values_to_6_digits_and_stderr_to_4(name, start, engine):
    problem = load_nist(name)
    options = dict(params=problem.starts[start], decimal_data=problem.decimal, engine=engine)
    result = fit(problem.formula, problem.x, problem.y, **options)
    assert result.success, result.message
    names = list(problem.certified_params)
    found = np.array([result.params[n] for n in names])
    errors = np.array([result.stderr[n] for n in names])
    # the target, -log10(|found - certified| / |certified|) >= 6 (params) and >= 4 (stderr)
    assert_matches_reference(
        found,
        np.array([problem.certified_params[n] for n in names]),
        rtol=1e-6,
        what=f"{name} start {start + 1} params",
    )
    assert_matches_reference(
        errors,
        np.array([problem.certified_stderr[n] for n in names]),
        rtol=1e-4,
        what=f"{name} start {start + 1} stderr",
    )
    assert min(digits(result.params[n], problem.certified_params[n]) for n in names) >= 6
    assert_matches_reference(
        np.float64(result.cost), np.float64(problem.certified_cost), rtol=1e-6, what=f"{name} cost"
    )


def test_geodesic_acceleration_crosses_mgh09s_valley_in_fewer_jacobians_than_scipy():
    # MGH09 from start 1 winds along a curved valley: SciPy's LM (MINPACK, same tolerances) needs ~336
    # Jacobians; geodesic acceleration bends the steps along it.
    problem = load_nist("MGH09")
    result = fit(problem.formula, problem.x, problem.y, params=problem.starts[0])
    names = list(problem.certified_params)
    assert_matches_reference(
        np.array([result.params[n] for n in names]),
        np.array([problem.certified_params[n] for n in names]),
        rtol=1e-6,
        what="MGH09 params",
    )
    assert result.jacobians < 250
