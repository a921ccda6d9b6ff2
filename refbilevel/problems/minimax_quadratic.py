r"""A multi-block minimax-bilevel quadratic with closed forms (test oracle for FOSL and MemCS).

Derivations: ``docs/theory/quadratic.rst`` (section "Multi-block minimax quadratic").
"""

from __future__ import annotations

from .._backend import default_namespace, from_host, host_namespace, host_rng, resolve_dtype
from .._validation import check_array, check_int, check_real
from ._random import random_spd
from .base import MinimaxBilevelProblem

__all__ = ["MinimaxQuadratic"]


def _bmv(M, v):
    """Batched matrix-vector product: ``M`` ``(S, p, q)``, ``v`` ``(S, q)`` -> ``(S, p)``."""
    return (M @ v[..., None])[..., 0]


class MinimaxQuadratic(MinimaxBilevelProblem):
    r"""Multi-block minimax-bilevel quadratic.

    For blocks :math:`i = 1..n`, with :math:`x \in \mathbb R^{d_x}`, a shared
    :math:`y \in \mathbb R^{d_y}` and block variables :math:`z_i \in \mathbb R^{d_z}`:

    .. math::

        f_i(x, y, z) &= \tfrac12 z^\top A_i z + a_i^\top z + z^\top E_i y + x^\top P_i y
                        - \tfrac12 y^\top Q_i y + q_i^\top y + \tfrac12 x^\top R x + r^\top x,\\
        g_i(x, z) &= \tfrac12 z^\top H_i z - z^\top (B_i x + c_i),

    :math:`H_i, Q_i \succ 0`, :math:`A_i \succeq 0`: each :math:`f_i` is strongly concave in
    y and each :math:`g_i` strongly convex in :math:`z_i`. The problem is
    :math:`\min_x \max_y \frac1n\sum_i f_i(x, y, z_i^*(x))`.

    Parameters
    ----------
    H, B, c, A, a, E, P, Q, q : arrays
        Stacked block data with leading dimension ``n_blocks``: shapes ``(n, dz, dz)``,
        ``(n, dz, dx)``, ``(n, dz)``, ``(n, dz, dz)``, ``(n, dz)``, ``(n, dz, dy)``,
        ``(n, dx, dy)``, ``(n, dy, dy)``, ``(n, dy)``.
    R, r : arrays
        Shared x-terms, ``(dx, dx)`` and ``(dx,)``.

    Notes
    -----
    Oracles (per block; the class methods average over ``blocks`` and return per-block
    ``gz`` as documented in :class:`~refbilevel.problems.base.MinimaxBilevelProblem`):

    .. math::

        \nabla_x f_i = P_i y + R x + r,\quad
        \nabla_y f_i = E_i^\top z + P_i^\top x - Q_i y + q_i,\quad
        \nabla_z f_i = A_i z + a_i + E_i y,\\
        \nabla_x g_i = -B_i^\top z,\quad \nabla_z g_i = H_i z - B_i x - c_i .

    Closed forms. :math:`z_i^*(x) = M_i x + m_i` with :math:`M_i = H_i^{-1}B_i`,
    :math:`m_i = H_i^{-1}c_i`. Then :math:`F(x, y) = \frac1n\sum_i f_i(x, y, z_i^*(x))` is
    quadratic, :math:`\nabla_x F = G x + C y + g_x`, :math:`\nabla_y F = C^\top x - \bar Q y + g_y`
    with :math:`G = R + \overline{M^\top A M}`, :math:`C = \overline{M^\top E + P}`,
    :math:`g_x = r + \overline{M^\top (A m + a)}`, :math:`g_y = \overline{E^\top m + q}` (bars are
    block means). The saddle point solves
    :math:`\begin{bmatrix} G & C \\ C^\top & -\bar Q\end{bmatrix}
    \begin{bmatrix} x \\ y\end{bmatrix} = -\begin{bmatrix} g_x \\ g_y\end{bmatrix}`, and
    :math:`\nabla\Phi(x) = G x + C y^*(x) + g_x` with :math:`y^*(x) = \bar Q^{-1}(C^\top x + g_y)`.

    Penalty counterpart for a fixed λ (FOSL/MemCS; ``docs/algorithms/fosl_memcs.rst``):
    :math:`\min_x\max_y\frac1n\sum_i[\min_{z_i}(f_i + λ g_i) - λ\min_{v_i} g_i]`. With
    :math:`W_i = A_i + λ H_i`, :math:`z_i = W_i^{-1}(λ(B_i x + c_i) - a_i - E_i y)` and
    :math:`v_i = z_i^*(x)`; substituting gives a linear system in (x, y), solved in
    :meth:`penalty_saddle` in a cancellation-free form
    (:math:`λ(z_i - v_i) = -λ W_i^{-1}(A_i v_i + a_i + E_i y)`).

    References
    ----------
    .. [1] Y. Yang, P. Si, W. Lyu, K. Ji, "First-order minimax bilevel optimization",
       NeurIPS 2024 (problem (1) and its penalty reformulation).

    Examples
    --------
    The closed-form saddle point is stationary: the gradient of
    :math:`\Phi(x) = \max_y \frac1n\sum_i f_i(x, y, z_i^*(x))` vanishes there, and every
    block's lower-level gradient vanishes at :math:`z_i^*(x)`:

    >>> import numpy as np
    >>> from refbilevel import MinimaxQuadratic
    >>> problem = MinimaxQuadratic.random(3, 2, 2, 2, seed=0)
    >>> x_star, y_star, z_star = problem.saddle()
    >>> bool(np.allclose(problem.saddle_gradient(x_star), 0.0, atol=1e-12))
    True
    >>> gx, gz = problem.grad_g(x_star, z_star, problem.all_blocks())
    >>> bool(np.allclose(gz, 0.0, atol=1e-12))
    True
    """

    name = "minimax_quadratic"

    def __init__(self, H, B, c, A, a, E, P, Q, q, R, r):
        names = ("H", "B", "c", "A", "a", "E", "P", "Q", "q", "R", "r")
        arrays = (H, B, c, A, a, E, P, Q, q, R, r)
        self._set_backend(*arrays, names=names)
        check_array(H, "H", ndim=3)
        n, dz = H.shape[0], H.shape[1]
        check_array(B, "B", ndim=3, like=H)
        dx = B.shape[2]
        check_array(E, "E", ndim=3, like=H)
        dy = E.shape[2]
        shapes = {"H": (n, dz, dz), "B": (n, dz, dx), "c": (n, dz), "A": (n, dz, dz),
                  "a": (n, dz), "E": (n, dz, dy), "P": (n, dx, dy), "Q": (n, dy, dy),
                  "q": (n, dy), "R": (dx, dx), "r": (dx,)}
        for name, arr in zip(names, arrays):
            check_array(arr, name, shape=shapes[name], like=H)
        self.H, self.B, self.c, self.A, self.a = H, B, c, A, a
        self.E, self.P, self.Q, self.q, self.R, self.r = E, P, Q, q, R, r
        self.n_blocks, self.dim_x, self.dim_y, self.dim_z = n, dx, dy, dz

    @classmethod
    def random(cls, n_blocks: int, dim_x: int, dim_y: int, dim_z: int, *, seed=0,
               cond: float = 10.0, xp=None, dtype="float64", device=None) -> MinimaxQuadratic:
        """A random instance; every ``H_i`` has condition number ``cond``, ``Q_i`` eigenvalues in [1, 2].

        ``R = I``, couplings ``B_i, E_i, P_i`` are Gaussian scaled by ``1/sqrt(dim)``, and
        ``A_i = C_iᵀC_i/dim_z``. Drawn on the host in float64 from ``seed``.
        """
        n = check_int(n_blocks, "n_blocks", minimum=1)
        dx = check_int(dim_x, "dim_x", minimum=1)
        dy = check_int(dim_y, "dim_y", minimum=1)
        dz = check_int(dim_z, "dim_z", minimum=1)
        cond = check_real(cond, "cond", low=1.0)
        rng = host_rng(seed)
        hxp = host_namespace()

        def normal(*shape):
            return hxp.asarray(rng.standard_normal(shape))

        H = hxp.stack([random_spd(hxp, rng, dz, 1.0, cond) for _ in range(n)])
        Q = hxp.stack([random_spd(hxp, rng, dy, 1.0, 2.0) for _ in range(n)])
        Cm = normal(n, dz, dz)
        A = hxp.linalg.matrix_transpose(Cm) @ Cm / dz
        data = dict(H=H, B=normal(n, dz, dx) / dx**0.5, c=normal(n, dz), A=A, a=normal(n, dz),
                    E=0.5 * normal(n, dz, dy) / dy**0.5, P=0.5 * normal(n, dx, dy) / dx**0.5,
                    Q=Q, q=normal(n, dy), R=hxp.eye(dx), r=normal(dx))
        xp = default_namespace(xp)
        dt = resolve_dtype(xp, dtype)
        return cls(**{k: from_host(v, xp, dtype=dt, device=device) for k, v in data.items()})

    # -------------------------------------------------------------- oracles
    def _take(self, M, blocks):
        return self.xp.take(M, blocks, axis=0)

    def f(self, x, y, z, blocks, batch=None):
        xp, take = self.xp, self._take
        A, a, E, P, Q, q = (take(M, blocks) for M in (self.A, self.a, self.E, self.P, self.Q, self.q))
        per_block = (0.5 * xp.sum(z * _bmv(A, z), axis=-1) + xp.sum(a * z, axis=-1)
                     + xp.sum(z * (E @ y), axis=-1) + (P @ y) @ x
                     - 0.5 * ((Q @ y) @ y) + q @ y)
        return xp.mean(per_block) + 0.5 * (x @ (self.R @ x)) + self.r @ x

    def grad_f(self, x, y, z, blocks, batch=None):
        xp, take = self.xp, self._take
        A, a, E, P, Q, q = (take(M, blocks) for M in (self.A, self.a, self.E, self.P, self.Q, self.q))
        gx = xp.mean(P @ y, axis=0) + self.R @ x + self.r
        gy = xp.mean(_bmv(xp.linalg.matrix_transpose(E), z) + x @ P - Q @ y + q, axis=0)
        gz = _bmv(A, z) + a + E @ y
        return gx, gy, gz

    def g(self, x, z, blocks, batch=None):
        xp, take = self.xp, self._take
        H, B, c = take(self.H, blocks), take(self.B, blocks), take(self.c, blocks)
        per_block = 0.5 * xp.sum(z * _bmv(H, z), axis=-1) - xp.sum(z * (B @ x + c), axis=-1)
        return xp.mean(per_block)

    def grad_g(self, x, z, blocks, batch=None):
        xp, take = self.xp, self._take
        H, B, c = take(self.H, blocks), take(self.B, blocks), take(self.c, blocks)
        gx = -xp.mean(_bmv(xp.linalg.matrix_transpose(B), z), axis=0)
        gz = _bmv(H, z) - B @ x - c
        return gx, gz

    # --------------------------------------------------------- closed forms
    def inner_solution(self, x):
        """``z_i*(x) = H_i⁻¹(B_i x + c_i)`` for all blocks, shape ``(n_blocks, dim_z)``."""
        return self.xp.linalg.solve(self.H, (self.B @ x + self.c)[..., None])[..., 0]

    def _reduced(self):
        """``G, C, Q̄, g_x, g_y`` of the reduced quadratic ``F(x, y)`` (class Notes)."""
        xp = self.xp
        mT = xp.linalg.matrix_transpose
        M = xp.linalg.solve(self.H, self.B)
        m = xp.linalg.solve(self.H, self.c[..., None])[..., 0]
        G = self.R + xp.mean(mT(M) @ self.A @ M, axis=0)
        C = xp.mean(mT(M) @ self.E + self.P, axis=0)
        Qbar = xp.mean(self.Q, axis=0)
        gx = self.r + xp.mean(_bmv(mT(M), _bmv(self.A, m) + self.a), axis=0)
        gy = xp.mean(_bmv(mT(self.E), m) + self.q, axis=0)
        return G, C, Qbar, gx, gy

    def _solve_xy(self, Kxx, Kxy, Kyx, Kyy, bx, by):
        xp = self.xp
        K = xp.concat([xp.concat([Kxx, Kxy], axis=1), xp.concat([Kyx, Kyy], axis=1)], axis=0)
        sol = xp.linalg.solve(K, -xp.concat([bx, by]))
        return sol[:self.dim_x], sol[self.dim_x:]

    def max_solution(self, x):
        """``y*(x) = argmax_y F(x, y) = Q̄⁻¹(Cᵀx + g_y)``."""
        _, C, Qbar, _, gy = self._reduced()
        return self.xp.linalg.solve(Qbar, x @ C + gy)

    def saddle(self):
        """The saddle point ``(x*, y*, z*(x*))`` of ``min_x max_y F(x, y, z*(x))``."""
        G, C, Qbar, gx, gy = self._reduced()
        x, y = self._solve_xy(G, C, C.T, -Qbar, gx, gy)
        return x, y, self.inner_solution(x)

    def saddle_gradient(self, x):
        """``∇Φ(x) = G x + C y*(x) + g_x`` with ``Φ(x) = max_y F(x, y, z*(x))``."""
        G, C, Qbar, gx, gy = self._reduced()
        y = self.xp.linalg.solve(Qbar, x @ C + gy)
        return G @ x + C @ y + gx

    def value(self, x):
        """``Φ(x) = F(x, y*(x), z*(x))`` over all blocks."""
        return self.f(x, self.max_solution(x), self.inner_solution(x), self.all_blocks())

    def penalty_saddle(self, lam: float):
        """Stationary point ``(x_λ, y_λ, z_λ, v_λ)`` of the penalty problem for a fixed λ.

        ``z_λ`` and ``v_λ`` have shape ``(n_blocks, dim_z)``; ``v_λ = z*(x_λ)``.
        """
        lam = check_real(lam, "lam", positive=True)
        xp = self.xp
        mT = xp.linalg.matrix_transpose
        W = self.A + lam * self.H
        M = xp.linalg.solve(self.H, self.B)
        m = xp.linalg.solve(self.H, self.c[..., None])[..., 0]
        WinvAM = xp.linalg.solve(W, self.A @ M)                      # W⁻¹ A M
        WinvE = xp.linalg.solve(W, self.E)                            # W⁻¹ E
        Winv_am = xp.linalg.solve(W, (_bmv(self.A, m) + self.a)[..., None])[..., 0]
        Bt, Et = mT(self.B), mT(self.E)
        # z − v = −W⁻¹(A M x + A m + a + E y);  z = Zx x + Zy y + z0
        Zx = M - WinvAM
        Zy = -WinvE
        z0 = m - Winv_am
        Pbar, Qbar, qbar = xp.mean(self.P, axis=0), xp.mean(self.Q, axis=0), xp.mean(self.q, axis=0)
        Kxx = self.R + lam * xp.mean(Bt @ WinvAM, axis=0)
        Kxy = Pbar + lam * xp.mean(Bt @ WinvE, axis=0)
        bx = self.r + lam * xp.mean(_bmv(Bt, Winv_am), axis=0)
        Kyx = xp.mean(Et @ Zx, axis=0) + Pbar.T
        Kyy = xp.mean(Et @ Zy, axis=0) - Qbar
        by = xp.mean(_bmv(Et, z0), axis=0) + qbar
        x, y = self._solve_xy(Kxx, Kxy, Kyx, Kyy, bx, by)
        z = Zx @ x + Zy @ y + z0
        v = self.inner_solution(x)
        return x, y, z, v
