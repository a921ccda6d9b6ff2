"""refbilevel.linalg.block_newton against closed forms and a host SciPy reference.

Oracles: quadratic blocks (closed form :math:`z_i^* = H_i^{-1} c_i`, relative 1e-12), a
pseudo-Huber block whose undamped Newton iteration diverges (minimiser 0 by symmetry,
1e-12), ridge-logistic blocks solved one by one with SciPy's trust-region Newton
(``scipy.optimize.minimize``, polished by three host Newton steps; agreement 1e-12).
"""

from __future__ import annotations

import numpy as np
import pytest

from refbilevel._backend import device as dev_of, to_host
from refbilevel.linalg import block_newton
from refbilevel.models.losses import sigmoid, sigmoid_prime, softplus


def _spd_stack(rng, n, k):
    M = rng.standard_normal((n, k, k))
    return M @ np.transpose(M, (0, 2, 1)) + 0.5 * np.eye(k)


def test_quadratic_blocks_match_the_closed_form(xp, asxp, rng, device):
    H_h, c_h = _spd_stack(rng, 5, 3), rng.standard_normal((5, 3))
    H, c = asxp(H_h), asxp(c_h)

    def value(z):
        return 0.5 * xp.sum(z * (H @ z[..., None])[..., 0], axis=1) - xp.sum(c * z, axis=1)

    z = block_newton(value, lambda z: (H @ z[..., None])[..., 0] - c, lambda z: H,
                     xp.zeros((5, 3), dtype=H.dtype, device=device))
    exact = np.linalg.solve(H_h, c_h[..., None])[..., 0]
    assert np.linalg.norm(to_host(z) - exact) <= 1e-12 * np.linalg.norm(exact)
    assert z.dtype == H.dtype and dev_of(z) == dev_of(H)


def test_damping_rescues_a_diverging_newton_iteration(xp, asxp):
    # g(z) = sqrt(1 + z^2) per entry (a pseudo-Huber sum): undamped Newton maps z to -z^3,
    # which diverges from |z| > 1; the minimiser is 0
    z0 = asxp(np.array([[3.0, -2.0], [0.5, 1.5]]))

    def value(z):
        return xp.sum(xp.sqrt(1.0 + z * z), axis=1)

    def hessian(z):
        d = (1.0 + z * z) ** -1.5
        return d[..., None] * xp.eye(2, dtype=z.dtype, device=dev_of(z))

    z = block_newton(value, lambda z: z / xp.sqrt(1.0 + z * z), hessian, z0)
    assert np.max(np.abs(to_host(z))) <= 1e-12


def test_logistic_blocks_match_scipy_one_block_at_a_time(xp, asxp, rng):
    optimize = pytest.importorskip("scipy.optimize")
    n_blocks, n, k, mu = 4, 30, 3, 0.1
    A_h = 2.0 * rng.standard_normal((n_blocks, n, k))
    s_h = np.sign(rng.standard_normal((n_blocks, n)))
    A, s = asxp(A_h), asxp(s_h)

    def margins(z):
        return s * (A @ z[..., None])[..., 0]

    def value(z):
        return xp.mean(softplus(-margins(z), xp=xp), axis=1) + 0.5 * mu * xp.sum(z * z, axis=1)

    def grad(z):
        q = -s * sigmoid(-margins(z), xp=xp) / n
        return (q[:, None, :] @ A)[:, 0, :] + mu * z

    def hessian(z):
        w = sigmoid_prime(margins(z), xp=xp) / n
        At = xp.permute_dims(A, (0, 2, 1))
        return (At * w[:, None, :]) @ A + mu * xp.eye(k, dtype=A.dtype, device=dev_of(A))

    z = to_host(block_newton(value, grad, hessian, xp.zeros((n_blocks, k), dtype=A.dtype,
                                                          device=dev_of(A))))
    for i in range(n_blocks):
        Ai, si = A_h[i], s_h[i]

        def fun(v):
            t = si * (Ai @ v)
            return np.mean(np.logaddexp(0.0, -t)) + 0.5 * mu * v @ v

        def jac(v):
            t = si * (Ai @ v)
            return Ai.T @ (-si / (1.0 + np.exp(t))) / n + mu * v

        def hess(v):
            t = si * (Ai @ v)
            p = 1.0 / (1.0 + np.exp(-t))
            return (Ai.T * (p * (1.0 - p))) @ Ai / n + mu * np.eye(k)

        ref = optimize.minimize(fun, np.zeros(k), jac=jac, hess=hess, method="trust-exact",
                                options={"gtol": 1e-12}).x
        for _ in range(3):   # SciPy stops near 1e-9 ("failure to predict improvement"):
            ref = ref - np.linalg.solve(hess(ref), jac(ref))   # polish by plain Newton
        assert np.linalg.norm(jac(ref)) <= 1e-15
        assert np.linalg.norm(z[i] - ref) <= 1e-12 * np.linalg.norm(ref), i
