"""AffineModel: every primitive and loss composition equals LinearModel on the features with
a column of ones appended (the same flat layout), binary and multiclass."""

import numpy as np
import pytest

from refbilevel.models.affine import AffineModel
from refbilevel.models.linear import LinearModel


@pytest.mark.parametrize("n_classes", [None, 3])
def test_affine_is_linear_on_a_ones_column(n_classes, rng):
    n, d = 7, 4
    A = rng.standard_normal((n, d))
    ones = np.concatenate([A, np.ones((n, 1))], axis=1)
    aff, lin = AffineModel(d, n_classes), LinearModel(d + 1, n_classes)
    assert aff.size == lin.size and aff.shape == lin.shape
    T = (np.where(rng.random(n) < 0.5, -1.0, 1.0) if n_classes is None
         else np.eye(n_classes)[rng.integers(0, n_classes, n)])
    w, v, c = (rng.standard_normal(aff.size), rng.standard_normal(aff.size),
               rng.random(n))
    Ws = rng.standard_normal((3, aff.size))
    G = rng.standard_normal((n,) if n_classes is None else (n, n_classes))
    Gs = rng.standard_normal((3,) + G.shape)
    pairs = [
        (aff.forward(w, A, xp=np), lin.forward(w, ones, xp=np)),
        (aff.jvp(A, v, xp=np), lin.jvp(ones, v, xp=np)),
        (aff.vjp(A, G, xp=np), lin.vjp(ones, G, xp=np)),
        (aff.forward_many(Ws, A, xp=np), lin.forward_many(Ws, ones, xp=np)),
        (aff.vjp_many(A, Gs, xp=np), lin.vjp_many(ones, Gs, xp=np)),
        (aff.grad(w, A, T, weights=c, xp=np), lin.grad(w, ones, T, weights=c, xp=np)),
        (aff.hvp(w, A, T, v, weights=c, xp=np), lin.hvp(w, ones, T, v, weights=c, xp=np)),
        (aff.per_sample_jvp(w, A, T, v, xp=np), lin.per_sample_jvp(w, ones, T, v, xp=np)),
        (aff.grad_many(Ws, A, T, xp=np), lin.grad_many(Ws, ones, T, xp=np)),
    ]
    for i, (a, b) in enumerate(pairs):
        assert a.shape == b.shape, i
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=str(i))
    W, b = aff.split(w, xp=np)
    np.testing.assert_array_equal(np.concatenate([W.reshape(-1), np.atleast_1d(b)]), w)
