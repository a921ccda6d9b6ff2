"""Oracle values unchanged by restructuring (linearised products, block Newton, AUC lower levels).

Oracle: the values recorded from the earlier implementation in
``tests/data/oracle_reference.npz`` (see ``tests/_oracle_reference.py``). Tolerance: 1e-15
relative to the largest entry of each array (max-norm), on NumPy float64.
"""

import numpy as np
import pytest

from _oracle_reference import PATH, reference_values

RTOL = 1e-15


@pytest.fixture(scope="module")
def current():
    return reference_values()


def test_every_recorded_oracle_is_reproduced(current):
    with np.load(PATH) as stored:
        recorded = dict(stored)
    assert sorted(current) == sorted(recorded)
    bad = {}
    for key, ref in recorded.items():
        got = current[key]
        assert got.shape == ref.shape, key
        err = float(np.max(np.abs(got - ref), initial=0.0))
        scale = float(np.max(np.abs(ref), initial=0.0))
        if not err <= RTOL * scale:
            bad[key] = err / max(scale, 1e-300)
    assert not bad, bad
