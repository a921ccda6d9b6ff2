"""Properties of :func:`refbilevel.verify.compare`: it never passes a wrong candidate.

Oracle: the construction of the candidate itself. A candidate equal to the reference passes;
one that differs from it anywhere by more than the tolerance, has fewer or more rows, holds a
NaN or an infinity, or has rows of another width, never passes (and a prefix passes only when
asked for, with the report saying so).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refbilevel.verify import compare

RTOL, ATOL = 1e-6, 1e-12

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def trajectories(draw):
    """A reference ``{x, y}`` with 1..8 rows and widths 1..4 (a trajectory of rows - 1 steps)."""
    n = draw(st.integers(1, 8))
    ref = {k: draw(arrays(np.float64, (n, draw(st.integers(1, 4))), elements=finite))
           for k in ("x", "y")}
    return ref


def _copy(ref):
    return {k: v.copy() for k, v in ref.items()}


@settings(max_examples=100, deadline=None)
@given(trajectories())
def test_identical_candidate_passes(ref):
    rep = compare(ref, _copy(ref), rtol=RTOL, atol=ATOL)
    assert rep.passed and rep.reason is None and rep.first_failure is None
    assert "PASS: all" in rep.format()


@settings(max_examples=150, deadline=None)
@given(trajectories(), st.data())
def test_a_difference_anywhere_fails(ref, data):
    var = data.draw(st.sampled_from(["x", "y"]))
    n, w = ref[var].shape
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, w - 1))
    row_norm = float(np.linalg.norm(ref[var][i]))
    # strictly beyond the tolerance of that row: |delta| > atol + rtol ||r_i||
    delta = (ATOL + RTOL * row_norm) * data.draw(st.floats(1.5, 1e6)) \
        * data.draw(st.sampled_from([-1.0, 1.0]))
    cand = _copy(ref)
    cand[var][i, j] += delta
    if cand[var][i, j] - ref[var][i, j] == 0.0:  # absorbed by rounding: not a difference
        return
    rep = compare(ref, cand, rtol=RTOL, atol=ATOL)
    assert not rep.passed
    assert rep.first_failure is not None and rep.first_failure <= i
    assert rep.format().splitlines()[-1].startswith("FAIL")


@settings(max_examples=100, deadline=None)
@given(trajectories(), st.data())
def test_fewer_or_more_rows_fail(ref, data):
    n = ref["x"].shape[0]
    k = data.draw(st.integers(0, n + 3).filter(lambda k: k != n))
    cand = {v: (a[:k] if k <= n else np.vstack([a] + [a[-1:]] * (k - n))) for v, a in ref.items()}
    rep = compare(ref, cand, rtol=RTOL, atol=ATOL)
    assert not rep.passed and "wrong number of rows" in rep.reason
    if 1 <= k < n:  # an explicit prefix passes, and says it is one
        rep = compare(ref, cand, rtol=RTOL, atol=ATOL, prefix=True)
        assert rep.passed and f"prefix of {k} of {n} rows" in rep.format()


@settings(max_examples=100, deadline=None)
@given(trajectories(), st.data(), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_anywhere_fails(ref, data, bad):
    var = data.draw(st.sampled_from(["x", "y", "extra"]))
    cand = _copy(ref)
    if var == "extra":  # an array the reference does not have is not compared, but checked
        cand["extra"] = np.zeros((ref["x"].shape[0], 2))
    n, w = cand[var].shape
    cand[var][data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, w - 1))] = bad
    rep = compare(ref, cand, rtol=RTOL, atol=ATOL)
    assert not rep.passed and "NaN or infinite" in rep.reason


@settings(max_examples=100, deadline=None)
@given(trajectories(), st.integers(1, 3))
def test_other_row_width_fails_and_names_both_shapes(ref, extra):
    cand = _copy(ref)
    cand["x"] = np.hstack([ref["x"], np.zeros((ref["x"].shape[0], extra))])
    rep = compare(ref, cand, rtol=RTOL, atol=ATOL)
    assert not rep.passed
    assert f"{cand['x'].shape}" in rep.reason and f"{ref['x'].shape}" in rep.reason


def test_zero_d_array_is_a_clear_error():
    ref = {"x": np.zeros((3, 2))}
    with pytest.raises(ValueError, match="candidate array 'x' is 0-d"):
        compare(ref, {"x": np.float64(0.0)})
