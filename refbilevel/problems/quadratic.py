r"""Quadratic bilevel problems with closed-form solutions: the test oracles of refbilevel.

* :class:`Quadratic` — ``g = ½yᵀHy − yᵀ(Bx + c)``, ``f = ½yᵀAy + aᵀy + ½xᵀRx + rᵀx``
  (``docs/theory/quadratic.rst``), with closed forms for ``y*(x)``, ``∇F(x)``, ``x*`` and the penalty
  saddle for a fixed multiplier.
* :func:`toy_1d` — MinimaxOPT's Example 1, a 1-D least-squares problem with a box on x
  (``docs/theory/quadratic.rst``).
* :class:`MinimaxQuadratic` — a multi-block minimax-bilevel quadratic with closed-form
  lower-level solutions, saddle point and penalty saddle, for FOSL and MemCS.

Derivations: ``docs/theory/quadratic.rst``.
"""

from __future__ import annotations

from .._backend import default_namespace, from_host, host_namespace, host_rng, resolve_dtype
from .._validation import check_array, check_int, check_real
from ._random import random_spd
from .base import BilevelProblem

__all__ = ["MinimaxQuadratic", "Quadratic", "Toy1D", "toy_1d"]


class Quadratic(BilevelProblem):
    r"""Quadratic bilevel problem with closed forms.

    .. math::

        g(x, y) = \tfrac12 y^\top H y - y^\top (B x + c), \qquad
        f(x, y) = \tfrac12 y^\top A y + a^\top y + \tfrac12 x^\top R x + r^\top x + f_0,

    with :math:`H \succ 0` (``dim_y × dim_y``), :math:`B` (``dim_y × dim_x``),
    :math:`A \succeq 0`, :math:`R` symmetric.

    Parameters
    ----------
    H, B, c, A, a, R, r : arrays
        Problem data, all of one backend, dtype and device.
    f0 : float
        Constant added to ``f`` (lets :func:`toy_1d` report ``½(y − b)²`` exactly).
    Gx : array, optional
        Symmetric ``dim_x × dim_x`` matrix of an x-only term ``½xᵀ Gx x`` added to ``g``.
        It leaves ``y*(x)``, the HVP and the cross-derivative unchanged and cancels in every
        penalty difference ``g(x, y) − g(x, z)``; it adds ``Gx x`` to ``∇_x g`` (lets
        :func:`toy_1d` use ``g = ½(y − ax)²`` exactly).

    Notes
    -----
    Oracles (``docs/theory/quadratic.rst``):

    .. math::

        \nabla_x g = -B^\top y,\quad \nabla_y g = H y - Bx - c,\quad
        \nabla^2_{yy} g\,v = H v,\quad \nabla^2_{xy} g\,v = -B^\top v,\\
        \nabla_x f = R x + r,\quad \nabla_y f = A y + a .

    Closed forms, with :math:`M = H^{-1}B`, :math:`\mu = H^{-1}c`:

    .. math::

        y^*(x) = M x + \mu,\qquad
        \nabla F(x) = R x + r + M^\top (A (M x + \mu) + a),\qquad
        (R + M^\top A M)\, x^* = -(r + M^\top (A\mu + a)).

    For a fixed multiplier λ, the penalty problem
    :math:`\min_x \min_y \max_z f(x,y) + λ(g(x,y) - g(x,z))` (MinimaxOPT's (6), Kwon et al.'s
    :math:`\min_x L^*_λ(x)`; ``docs/theory/penalty.rst``) has the stationary point

    .. math::

        z_λ = y^*(x_λ),\quad y_λ = (A + λH)^{-1}(λ(Bx_λ + c) - a),\quad
        [R + B^\top S_λ A H^{-1} B]\, x_λ = -[r + B^\top S_λ (A H^{-1} c + a)],

    with :math:`S_λ = λ(A + λH)^{-1}`, and :math:`\|x_λ - x^*\| = O(1/λ)`.

    The data carry no samples: ``batch`` arguments are accepted and ignored.

    References
    ----------
    .. [1] J. Kwon, D. Kwon, S. Wright, R. Nowak, "A fully first-order method for stochastic
       bilevel optimization", ICML 2023 (the penalty function :math:`L^*_λ`).
    .. [2] M. Dagréou, P. Ablin, S. Vaiter, T. Moreau, benchopt ``benchmark_bilevel``
       (quadratic test problems with closed-form hypergradients).

    Examples
    --------
    The exact hypergradient agrees with central differences of :math:`F(x) = f(x, y^*(x))`,
    and vanishes at the closed-form solution :math:`x^*`:

    >>> import numpy as np
    >>> from refbilevel import Quadratic
    >>> problem = Quadratic.random(2, 3, seed=0)
    >>> x = problem.init_x() + 0.5
    >>> h, e = 1e-5, np.eye(2)
    >>> fd = [(problem.value(x + h * e[i]) - problem.value(x - h * e[i])) / (2 * h)
    ...       for i in range(2)]
    >>> bool(np.allclose(problem.hypergradient(x), fd, rtol=1e-7))
    True
    >>> bool(np.allclose(problem.hypergradient(problem.solution()), 0.0, atol=1e-12))
    True
    """

    name = "quadratic"

    def __init__(self, H, B, c, A, a, R, r, *, f0: float = 0.0, Gx=None):
        self._set_backend(H, B, c, A, a, R, r, names=("H", "B", "c", "A", "a", "R", "r"))
        check_array(H, "H", ndim=2)
        dim_y = H.shape[0]
        check_array(H, "H", shape=(dim_y, dim_y), like=H)
        check_array(B, "B", ndim=2, like=H)
        dim_x = B.shape[1]
        check_array(B, "B", shape=(dim_y, dim_x))
        check_array(c, "c", shape=(dim_y,), like=H)
        check_array(A, "A", shape=(dim_y, dim_y), like=H)
        check_array(a, "a", shape=(dim_y,), like=H)
        check_array(R, "R", shape=(dim_x, dim_x), like=H)
        check_array(r, "r", shape=(dim_x,), like=H)
        self.H, self.B, self.c, self.A, self.a, self.R, self.r = H, B, c, A, a, R, r
        self.f0 = check_real(f0, "f0")
        if Gx is not None:
            check_array(Gx, "Gx", shape=(dim_x, dim_x), like=H)
        self.Gx = Gx
        self.dim_x, self.dim_y = dim_x, dim_y
        self.n_outer = self.n_inner = 1

    # -------------------------------------------------------------- generator
    @classmethod
    def random(cls, dim_x: int, dim_y: int, *, seed=0, cond: float = 10.0,
               ridge: float = 0.1, xp=None, dtype="float64", device=None) -> Quadratic:
        """A random instance whose inner Hessian ``H`` has condition number ``cond``.

        ``H`` has eigenvalues spread geometrically on ``[1, cond]``; ``A = CᵀC/dim_y`` is
        PSD; ``R = ridge·I`` keeps ``x*`` unique; ``B``, ``c``, ``a``, ``r`` are standard
        normal (``B`` scaled by ``1/sqrt(dim_x)``). Data are drawn on the host in float64
        from ``seed`` and moved once, so every backend gets the same instance.
        """
        dim_x = check_int(dim_x, "dim_x", minimum=1)
        dim_y = check_int(dim_y, "dim_y", minimum=1)
        cond = check_real(cond, "cond", low=1.0)
        ridge = check_real(ridge, "ridge", positive=True)
        rng = host_rng(seed)
        hxp = host_namespace()
        H = random_spd(hxp, rng, dim_y, 1.0, cond)
        B = hxp.asarray(rng.standard_normal((dim_y, dim_x))) / dim_x**0.5
        c = hxp.asarray(rng.standard_normal(dim_y))
        C = hxp.asarray(rng.standard_normal((dim_y, dim_y)))
        A = C.T @ C / dim_y
        a = hxp.asarray(rng.standard_normal(dim_y))
        R = ridge * hxp.eye(dim_x)
        r = hxp.asarray(rng.standard_normal(dim_x))
        xp = default_namespace(xp)
        dt = resolve_dtype(xp, dtype)
        return cls(*(from_host(m, xp, dtype=dt, device=device) for m in (H, B, c, A, a, R, r)))

    # ---------------------------------------------------------------- oracles
    def f(self, x, y, batch=None):
        return (0.5 * (y @ (self.A @ y)) + self.a @ y
                + 0.5 * (x @ (self.R @ x)) + self.r @ x + self.f0)

    def g(self, x, y, batch=None):
        value = 0.5 * (y @ (self.H @ y)) - y @ (self.B @ x + self.c)
        return value if self.Gx is None else value + 0.5 * (x @ (self.Gx @ x))

    def _gx_term(self, x):
        return 0.0 if self.Gx is None else self.Gx @ x

    def grad_f(self, x, y, batch=None):
        return self.R @ x + self.r, self.A @ y + self.a

    def grad_g(self, x, y, batch=None):
        return self._gx_term(x) - (y @ self.B), self.H @ y - self.B @ x - self.c

    def grad_g_many(self, x, Ys, batch=None):
        # rows of Ys are points: ∇_x g = Gx x - Ys B, ∇_y g = Ys Hᵀ - (Bx + c)
        return self.grad_g_x_many(x, Ys), self.grad_g_y_many(x, Ys)

    def grad_g_y_many(self, x, Ys, batch=None):
        return Ys @ self.H - (self.B @ x + self.c)[None, :]

    def grad_g_x_many(self, x, Ys, batch=None):
        gx = -(Ys @ self.B)
        return gx if self.Gx is None else gx + (self.Gx @ x)[None, :]

    def hvp_g(self, x, y, v, batch=None):
        return self.H @ v

    def cross_g(self, x, y, v, batch=None):
        return -(v @ self.B)

    # ----------------------------------------------------------- closed forms
    def _solve(self, M, b):
        return self.xp.linalg.solve(M, b)

    def inner_solution(self, x, **kwargs):
        """``y*(x) = H⁻¹(Bx + c)`` (closed form; keyword arguments are ignored)."""
        return self._solve(self.H, self.B @ x + self.c)

    def hypergradient(self, x, *, y_star=None):
        """``∇F(x) = Rx + r + Bᵀ H⁻¹ (A y* + a)`` (closed form)."""
        if y_star is None:
            y_star = self.inner_solution(x)
        return self.R @ x + self.r + self._solve(self.H, self.A @ y_star + self.a) @ self.B

    def value(self, x):
        return self.f(x, self.inner_solution(x))

    def solution(self):
        """``x*``: the solution of ``(R + MᵀAM) x = −(r + Mᵀ(Aμ + a))``."""
        M = self._solve(self.H, self.B)
        mu = self._solve(self.H, self.c)
        lhs = self.R + M.T @ self.A @ M
        rhs = -(self.r + (self.A @ mu + self.a) @ M)
        return self._solve(lhs, rhs)

    def penalty_solution(self, lam: float):
        """Stationary point ``(x_λ, y_λ(x_λ), z = y*(x_λ))`` of the penalty problem.

        See the class Notes; ``lam`` must be > 0.
        """
        lam = check_real(lam, "lam", positive=True)
        W = self.A + lam * self.H
        S = lam * self.xp.linalg.inv(W)
        HinvB = self._solve(self.H, self.B)
        lhs = self.R + self.B.T @ S @ self.A @ HinvB
        rhs = -(self.r + (self.A @ self._solve(self.H, self.c) + self.a) @ S @ self.B)
        x = self._solve(lhs, rhs)
        y = self._solve(W, lam * (self.B @ x + self.c) - self.a)
        return x, y, self.inner_solution(x)

    def smoothness(self) -> dict:
        """Host estimates of ``L_g = λ_max(H)``, ``μ_g = λ_min(H)`` and ``L_f = λ_max(A)``."""
        from .._backend import to_host_scalar

        eig_h = self.xp.linalg.eigvalsh(self.H)
        eig_a = self.xp.linalg.eigvalsh(self.A)
        return {"L_g": to_host_scalar(self.xp.max(eig_h)), "mu_g": to_host_scalar(self.xp.min(eig_h)),
                "L_f": to_host_scalar(self.xp.max(eig_a))}


class Toy1D(Quadratic):
    r"""MinimaxOPT's Example 1 (Appendix A.2): 1-D least squares with a box on x.

    Parameters
    ----------
    a, b : float
        Coefficients, ``a != 0``.
    lo, hi : float
        The box :math:`X = [\text{lo}, \text{hi}]` (``x_lower``, ``x_upper``).
    xp, dtype, device
        Backend, floating dtype and device of the data.

    Notes
    -----
    .. math::

        f(x, y) = \tfrac12 (y - b)^2, \qquad g(x, y) = \tfrac12 (y - a x)^2, \qquad
        x \in [\text{lo}, \text{hi}].

    Then :math:`y^*(x) = a x`, :math:`F(x) = \tfrac12 (a x - b)^2`,
    :math:`x^* = \mathrm{Proj}_{[\text{lo},\text{hi}]}(b/a)`, and for a fixed multiplier α the
    minimax problem (6) has :math:`z_α = a x_α`, :math:`y_α = (b + α a x_α)/(1 + α)` and
    :math:`x_α = x^*` for every α (the reduced objective is
    :math:`\frac{α}{1+α}\tfrac12(a x - b)^2`). If :math:`b/a` lies in the box the minimax
    solution is exact (:math:`y_α = b = y^*`); otherwise
    :math:`|y_α - y^*| = |b - a x^*|/(1 + α)`.

    The paper's example has these properties; its constants are not reproduced, and the
    defaults are ours [RECONSTRUCTED] (derivation: ``docs/theory/quadratic.rst``).

    References
    ----------
    .. [1] J. Wang, R. Pan, R. Pi, T. Zhang, "Effective bilevel optimization via minimax
       reformulation", arXiv:2305.13153, Appendix A.2, Example 1.

    Examples
    --------
    With :math:`a = 2`, :math:`b = 3` and the box :math:`[-1, 1]`, :math:`b/a` lies outside
    the box, so :math:`x^* = 1`, :math:`y^* = a x^* = 2`, and the minimax solution for
    :math:`\alpha = 1024` has :math:`y_\alpha = (3 + 2048)/1025`:

    >>> from refbilevel import toy_1d
    >>> problem = toy_1d(a=2.0, b=3.0, lo=-1.0, hi=1.0)
    >>> x_a, y_a, z_a = problem.penalty_solution(1024.0)
    >>> float(problem.solution()[0]), float(z_a[0])
    (1.0, 2.0)
    >>> abs(float(y_a[0]) - 2051 / 1025) < 1e-12
    True
    """

    name = "toy_1d"

    def __init__(self, a: float, b: float, lo: float, hi: float, *, xp=None,
                 dtype="float64", device=None):
        a = check_real(a, "a")
        if a == 0:
            raise ValueError("a must be nonzero")
        b = check_real(b, "b")
        lo, hi = check_real(lo, "lo"), check_real(hi, "hi")
        if not lo <= hi:
            raise ValueError(f"lo must be <= hi; got lo={lo}, hi={hi}")
        xp = default_namespace(xp)
        dt = resolve_dtype(xp, dtype)

        def arr(v):
            return from_host(host_namespace().asarray(v, dtype=host_namespace().float64),
                             xp, dtype=dt, device=device)

        super().__init__(arr([[1.0]]), arr([[a]]), arr([0.0]), arr([[1.0]]), arr([-b]),
                         arr([[0.0]]), arr([0.0]), f0=0.5 * b * b, Gx=arr([[a * a]]))
        self.a_coef, self.b_coef = a, b
        #: Box on x, used by solvers that project (MinimaxOPT's ``Proj_X``).
        self.x_lower, self.x_upper = lo, hi

    def _clip(self, x):
        return self.xp.clip(x, self.x_lower, self.x_upper)

    def solution(self):
        """``x* = Proj_[lo, hi](b/a)``."""
        return self._clip(super().solution())

    def penalty_solution(self, lam: float):
        """``(x_α, y_α, z_α) = (x*, (b + α a x*)/(1 + α), a x*)``."""
        lam = check_real(lam, "lam", positive=True)
        x = self.solution()
        y = (self.b_coef + lam * self.a_coef * x) / (1.0 + lam)
        return x, y, self.inner_solution(x)


def toy_1d(a: float = 2.0, b: float = 3.0, lo: float = -1.0, hi: float = 1.0, **kwargs) -> Toy1D:
    """MinimaxOPT's Example 1 with constants ``a, b`` and box ``[lo, hi]`` (see :class:`Toy1D`).

    Examples
    --------
    >>> from refbilevel import toy_1d
    >>> problem = toy_1d()                       # a = 2, b = 3, box [-1, 1]
    >>> float(problem.solution()[0]), problem.x_lower, problem.x_upper
    (1.0, -1.0, 1.0)
    """
    return Toy1D(a, b, lo, hi, **kwargs)


from .minimax_quadratic import MinimaxQuadratic  # noqa: E402  (re-export: one home for the quadratics)
