"""Linear solvers of refbilevel.linalg against host NumPy references (dense solves)."""

from __future__ import annotations

import numpy as np
import pytest

from refbilevel import linalg
from refbilevel._backend import to_host

#: Runs on JAX and PyTorch by default (tests/conftest.py).
pytestmark = pytest.mark.eager_libraries


def _spd(rng, n, cond):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1.0, cond, n)) @ Q.T


def _matvec(H):
    return lambda v: H @ v


def test_cg_dim_steps_solves_spd_system(xp, asxp, rng):
    n = 6
    H_h = _spd(rng, n, 100.0)
    b_h = rng.standard_normal(n)
    exact = np.linalg.solve(H_h, b_h)
    v = linalg.conjugate_gradient(_matvec(asxp(H_h)), asxp(b_h), n_iter=n)
    assert np.linalg.norm(to_host(v) - exact) <= 1e-10 * np.linalg.norm(exact)
    # fewer steps than the dimension do not solve it (the test can fail)
    v2 = linalg.conjugate_gradient(_matvec(asxp(H_h)), asxp(b_h), n_iter=2)
    assert np.linalg.norm(to_host(v2) - exact) > 1e-4 * np.linalg.norm(exact)


def test_cg_warm_start_and_zero_residual_stay_finite(xp, asxp, rng):
    n = 5
    H_h = _spd(rng, n, 10.0)
    b_h = rng.standard_normal(n)
    exact = np.linalg.solve(H_h, b_h)
    H, b = asxp(H_h), asxp(b_h)
    # from the exact solution the residual is ~0: the where-guards keep the iterate put
    v = linalg.conjugate_gradient(_matvec(H), b, n_iter=4, x0=asxp(exact))
    assert np.all(np.isfinite(to_host(v)))
    assert np.linalg.norm(to_host(v) - exact) <= 1e-10 * np.linalg.norm(exact)
    # a zero right-hand side gives exactly zero, never NaN
    z = linalg.conjugate_gradient(_matvec(H), xp.zeros_like(b), n_iter=3)
    assert np.array_equal(to_host(z), np.zeros(n))
    # a warm start from a nearby point converges in dim steps too
    v3 = linalg.conjugate_gradient(_matvec(H), b, n_iter=n, x0=asxp(exact + 0.1))
    assert np.linalg.norm(to_host(v3) - exact) <= 1e-10 * np.linalg.norm(exact)


def test_neumann_converges_for_eta_below_one_over_L(xp, asxp, rng):
    n = 5
    H_h = _spd(rng, n, 5.0)          # eigenvalues in [1, 5]: L = 5
    b_h = rng.standard_normal(n)
    exact = np.linalg.solve(H_h, b_h)
    H, b = asxp(H_h), asxp(b_h)
    errs = []
    for Q in (5, 20, 120):
        v = linalg.neumann_series(_matvec(H), b, eta=0.9 / 5.0, n_terms=Q)
        errs.append(np.linalg.norm(to_host(v) - exact) / np.linalg.norm(exact))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-10
    # the predicted rate: error <= (1 - eta*mu)^(Q+1) * cond-free bound
    assert errs[1] <= (1 - 0.9 / 5.0) ** 21 * 1.0001
    # and it diverges for eta > 2/L
    v = linalg.neumann_series(_matvec(H), b, eta=2.5 / 5.0, n_terms=60)
    assert np.linalg.norm(to_host(v)) > 1e3 * np.linalg.norm(exact)


def test_neumann_equals_fixed_point_recursion(xp, asxp, rng):
    n, Q, eta = 4, 7, 0.15
    H_h = _spd(rng, n, 6.0)
    b_h = rng.standard_normal(n)
    # host recursion v <- (I - eta H) v + b from 0, Q + 1 times, then times eta
    v_h = np.zeros(n)
    for _ in range(Q + 1):
        v_h = v_h - eta * (H_h @ v_h) + b_h
    v_h = eta * v_h
    H, b = asxp(H_h), asxp(b_h)
    v_n = linalg.neumann_series(_matvec(H), b, eta=eta, n_terms=Q)
    v_f = linalg.fixed_point(_matvec(H), b, eta=eta, n_iter=Q + 1)
    np.testing.assert_allclose(to_host(v_n), v_h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(to_host(v_f), v_h, rtol=1e-12, atol=1e-14)
    # a warm start continues the same recursion: K more steps from v_j == j + K from 0
    v_a = linalg.fixed_point(_matvec(H), b, eta=eta, n_iter=3)
    v_b = linalg.fixed_point(_matvec(H), b, eta=eta, n_iter=Q + 1 - 3, x0=v_a)
    np.testing.assert_allclose(to_host(v_b), v_h, rtol=1e-12, atol=1e-14)
    z = linalg.fixed_point(_matvec(H), b, eta=eta, n_iter=0)
    assert np.array_equal(to_host(z), np.zeros(n))


def test_neumann_with_one_operator_per_factor(xp, asxp, rng):
    n, eta = 4, 0.1
    Hs = [_spd(rng, n, 4.0) for _ in range(3)]
    b_h = rng.standard_normal(n)
    p, total = b_h.copy(), b_h.copy()
    for H_h in Hs:
        p = p - eta * (H_h @ p)
        total = total + p
    v = linalg.neumann_series([_matvec(asxp(H)) for H in Hs], asxp(b_h), eta=eta, n_terms=3)
    np.testing.assert_allclose(to_host(v), eta * total, rtol=1e-12)
    with pytest.raises(ValueError, match="n_terms"):
        linalg.neumann_series([_matvec(asxp(Hs[0]))], asxp(b_h), eta=eta, n_terms=3)


def test_cg_solve_meets_its_tolerance(xp, asxp, rng):
    n = 8
    H_h = _spd(rng, n, 1e3)
    b_h = rng.standard_normal(n)
    H, b = asxp(H_h), asxp(b_h)
    for rtol in (1e-3, 1e-12):
        v, k, res = linalg.cg_solve(_matvec(H), b, rtol=rtol)
        true_res = np.linalg.norm(H_h @ to_host(v) - b_h)
        assert true_res <= rtol * np.linalg.norm(b_h) * 1.01 + 1e-14
        assert res <= rtol * np.linalg.norm(b_h)
        assert 0 < k <= 10 * n + 10
    _, k_loose, _ = linalg.cg_solve(_matvec(H), b, rtol=1e-1)
    _, k_tight, _ = linalg.cg_solve(_matvec(H), b, rtol=1e-12)
    assert k_loose < k_tight


def test_dtype_and_namespace_preserved(xp, asxp, rng, device):
    n = 4
    H = asxp(_spd(rng, n, 3.0), dtype="float32")
    b = asxp(rng.standard_normal(n), dtype="float32")
    for v in (linalg.conjugate_gradient(_matvec(H), b, n_iter=3),
              linalg.neumann_series(_matvec(H), b, eta=0.1, n_terms=3),
              linalg.fixed_point(_matvec(H), b, eta=0.1, n_iter=3)):
        assert v.dtype == xp.float32
        assert type(v) is type(b) and v.device == b.device
        assert v.shape == (n,)
