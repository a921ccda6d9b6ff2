r"""Quadratic bilevel problems with closed-form solutions: the test oracles of refbilevel.

* :class:`Quadratic` — ``g = ½yᵀHy − yᵀ(Bx + c) + ½xᵀG_x x + eᵀx``,
  ``f = ½yᵀAy + aᵀy + xᵀDy + ½xᵀRx + rᵀx`` (the form of benchopt's ``benchmark_bilevel``
  quadratic, :meth:`Quadratic.from_benchopt`; ``docs/theory/quadratic.rst``), with closed forms for ``y*(x)``, ``∇F(x)``,
  ``x*`` and the penalty saddle for a fixed multiplier.
* :func:`toy_1d` — MinimaxOPT's Example 1, a 1-D least-squares problem with a box on x
  (``docs/theory/quadratic.rst``).
* :class:`MinimaxQuadratic` — a multi-block minimax-bilevel quadratic with closed-form
  lower-level solutions, saddle point and penalty saddle, for FOSL and MemCS.

Derivations: ``docs/theory/quadratic.rst``.
"""

from __future__ import annotations

from .._backend import (default_namespace, from_host, host_namespace, host_rng, resolve_dtype,
                        to_host_scalar)
from .._validation import check_array, check_int, check_memory, check_real
from ._random import random_spd
from ._symmetric import check_symmetric
from .base import _ON_FAILURE, BilevelProblem, certificate_rtol, enforce, make_certificate

__all__ = ["MinimaxQuadratic", "Quadratic", "Toy1D", "toy_1d"]


class Quadratic(BilevelProblem):
    r"""Quadratic bilevel problem with closed forms.

    .. math::

        g(x, y) &= \tfrac12 y^\top H y - y^\top (B x + c) + \tfrac12 x^\top G_x x + e^\top x,
        \\
        f(x, y) &= \tfrac12 y^\top A y + a^\top y + x^\top D y + \tfrac12 x^\top R x + r^\top x
        + f_0,

    with :math:`H \succ 0` (``dim_y × dim_y``), :math:`B` (``dim_y × dim_x``),
    :math:`A, R, G_x` symmetric and :math:`D` (``dim_x × dim_y``) an x–y coupling of ``f``.

    Parameters
    ----------
    H, B, c, A, a, R, r : arrays
        Problem data, all of one backend, dtype and device. ``H``, ``A`` and ``R`` must be
        symmetric (to :math:`64\,n\,\epsilon` relative to their Frobenius norm; a
        ``ValueError`` otherwise, since the oracles below are the gradients of the
        objective only for symmetric matrices).
    f0 : float
        Constant added to ``f`` (lets :func:`toy_1d` report ``½(y − b)²`` exactly).
    Gx : array, optional
        Symmetric ``dim_x × dim_x`` matrix of an x-only term ``½xᵀ Gx x`` of ``g``.
    e : array, optional
        ``dim_x`` vector of a linear x-only term ``eᵀx`` of ``g``. Both x-only terms of
        ``g`` leave ``y*(x)``, the HVP and the cross-derivative unchanged and cancel in
        every penalty difference ``g(x, y) − g(x, z)``; they add ``Gx x + e`` to ``∇_x g``
        (``Gx`` lets :func:`toy_1d` use ``g = ½(y − ax)²`` exactly).
    D : array, optional
        ``dim_x × dim_y`` coupling ``xᵀ D y`` of ``f`` (zero when omitted).

    Notes
    -----
    Oracles (``docs/theory/quadratic.rst``):

    .. math::

        \nabla_x g = G_x x + e - B^\top y,\quad \nabla_y g = H y - Bx - c,\quad
        \nabla^2_{yy} g\,v = H v,\quad \nabla^2_{xy} g\,v = -B^\top v,\\
        \nabla_x f = R x + r + D y,\quad \nabla_y f = A y + a + D^\top x .

    Closed forms, with :math:`M = H^{-1}B`, :math:`\mu = H^{-1}c`:

    .. math::

        y^*(x) &= M x + \mu,\qquad
        \nabla F(x) = R x + r + D y^* + M^\top (A y^* + a + D^\top x),\\
        (R + M^\top A M + D M + M^\top D^\top)\, x^* &= -(r + M^\top (A\mu + a) + D\mu).

    For a fixed multiplier λ, the penalty problem
    :math:`\min_x \min_y \max_z f(x,y) + λ(g(x,y) - g(x,z))` (MinimaxOPT's (6), Kwon et al.'s
    :math:`\min_x L^*_λ(x)`; ``docs/theory/penalty.rst``) has the stationary point :math:`z_λ = y^*(x_λ)`,
    :math:`y_λ = W^{-1}(λ(Bx_λ + c) - a - D^\top x_λ)` with :math:`W = A + λH`, and

    .. math::

        [R + D M + K (A M + D^\top)]\, x_λ = -[r + D\mu + K (A\mu + a)],
        \qquad K = (λ B^\top - D)\, W^{-1},

    from :math:`y_λ - z_λ = -W^{-1}(A z_λ + a + D^\top x_λ)` (no cancellation between
    :math:`y_λ` and :math:`z_λ`); :math:`\|x_λ - x^*\| = O(1/λ)`.

    The exact oracles carry the :class:`~refbilevel.problems.base.Certificate` of
    :math:`y^*`: the residual :math:`\|H y^* - Bx - c\|` and the extreme eigenvalues of
    :math:`H` (computed exactly with ``eigvalsh``).

    The data carry no samples: ``batch`` arguments are accepted and ignored.

    References
    ----------
    .. [1] J. Kwon, D. Kwon, S. Wright, R. Nowak, "A fully first-order method for stochastic
       bilevel optimization", ICML 2023 (the penalty function :math:`L^*_λ`).
    .. [2] M. Dagréou, P. Ablin, S. Vaiter, T. Moreau, "A framework for bilevel optimization
       that enables stochastic and global variance reduction algorithms", NeurIPS 2022, and
       the benchopt ``benchmark_bilevel`` quadratic (same form: coupling in both levels).

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

    def __init__(self, H, B, c, A, a, R, r, *, f0: float = 0.0, Gx=None, e=None, D=None):
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
        for M, name in ((H, "H"), (A, "A"), (R, "R")):
            check_symmetric(M, name)
        self.H, self.B, self.c, self.A, self.a, self.R, self.r = H, B, c, A, a, R, r
        self.f0 = check_real(f0, "f0")
        if Gx is not None:
            check_array(Gx, "Gx", shape=(dim_x, dim_x), like=H)
            check_symmetric(Gx, "Gx")
        if e is not None:
            check_array(e, "e", shape=(dim_x,), like=H)
        if D is not None:
            check_array(D, "D", shape=(dim_x, dim_y), like=H)
        self.Gx, self.e, self.D = Gx, e, D
        self.dim_x, self.dim_y = dim_x, dim_y
        self.n_outer = self.n_inner = 1

    # -------------------------------------------------------------- generators
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
        check_memory(6 * dim_y * dim_y + 2 * dim_x * dim_y + 2 * dim_x * dim_x,
                     f"Quadratic.random(dim_x={dim_x}, dim_y={dim_y})")
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

    @classmethod
    def from_benchopt(cls, hess_inner_inner, hess_inner_outer, cross_inner, linear_inner_inner,
                      linear_inner_outer, hess_outer_inner, hess_outer_outer, cross_outer,
                      linear_outer_inner, linear_outer_outer) -> Quadratic:
        r"""The quadratic of benchopt's ``benchmark_bilevel`` from its full-batch matrices.

        That benchmark writes both levels as
        :math:`q(y, x) = \tfrac12 y^\top H_{y} y + \tfrac12 x^\top H_{x} x + x^\top C y
        + l_y^\top y + l_x^\top x` (inner: ``hess_inner_inner`` :math:`H_y`,
        ``hess_inner_outer`` :math:`H_x`, ``cross_inner`` :math:`C` of shape
        ``(dim_x, dim_y)``, ``linear_inner_inner`` :math:`l_y`, ``linear_inner_outer``
        :math:`l_x`; outer likewise), with the sample means as full-batch data. In this
        class's notation: :math:`H = H^{in}_y`, :math:`B = -(C^{in})^\top`,
        :math:`c = -l^{in}_y`, :math:`G_x = H^{in}_x`, :math:`e = l^{in}_x`,
        :math:`A = H^{out}_y`, :math:`a = l^{out}_y`, :math:`D = C^{out}`,
        :math:`R = H^{out}_x`, :math:`r = l^{out}_x`.
        """
        return cls(hess_inner_inner, -cross_inner.T, -linear_inner_inner, hess_outer_inner,
                   linear_outer_inner, hess_outer_outer, linear_outer_outer,
                   Gx=hess_inner_outer, e=linear_inner_outer, D=cross_outer)

    # ---------------------------------------------------------------- oracles
    def f(self, x, y, batch=None):
        value = (0.5 * (y @ (self.A @ y)) + self.a @ y
                 + 0.5 * (x @ (self.R @ x)) + self.r @ x + self.f0)
        return value if self.D is None else value + x @ (self.D @ y)

    def g(self, x, y, batch=None):
        value = 0.5 * (y @ (self.H @ y)) - y @ (self.B @ x + self.c)
        if self.Gx is not None:
            value = value + 0.5 * (x @ (self.Gx @ x))
        return value if self.e is None else value + self.e @ x

    def _gx_term(self, x):
        """``Gx x + e`` (the Python float 0 when both are absent)."""
        term = 0.0 if self.Gx is None else self.Gx @ x
        return term if self.e is None else term + self.e

    def grad_f(self, x, y, batch=None):
        if self.D is None:
            return self.R @ x + self.r, self.A @ y + self.a
        return self.R @ x + self.r + self.D @ y, self.A @ y + self.a + x @ self.D

    def grad_g(self, x, y, batch=None):
        return self._gx_term(x) - (y @ self.B), self.H @ y - self.B @ x - self.c

    def grad_g_many(self, x, Ys, batch=None):
        # rows of Ys are points: ∇_x g = Gx x + e - Ys B, ∇_y g = Ys Hᵀ - (Bx + c)
        return self.grad_g_x_many(x, Ys), self.grad_g_y_many(x, Ys)

    def grad_g_y_many(self, x, Ys, batch=None):
        return Ys @ self.H - (self.B @ x + self.c)[None, :]

    def grad_g_x_many(self, x, Ys, batch=None):
        gx = -(Ys @ self.B)
        return gx if self.Gx is None and self.e is None else gx + self._gx_term(x)[None, :]

    def hvp_g(self, x, y, v, batch=None):
        return self.H @ v

    def cross_g(self, x, y, v, batch=None):
        return -(v @ self.B)

    # ----------------------------------------------------------- closed forms
    def _solve(self, M, b):
        return self.xp.linalg.solve(M, b)

    def certify_inner(self, x, y, *, rtol: float | None = None, curvature: bool = True,
                      n_lanczos: int = 30):
        """Certificate of ``y`` with the exact extreme eigenvalues of ``H`` (``n_lanczos`` unused)."""
        xp = self.xp
        rtol = certificate_rtol(self.dtype) if rtol is None else rtol
        residual = to_host_scalar(self.inner_residual(x, y))
        scale = 1.0 + to_host_scalar(self.inner_residual(x, self.init_y()))
        extremes = None
        if curvature:
            eig = xp.linalg.eigvalsh(self.H)
            extremes = (to_host_scalar(xp.min(eig)), to_host_scalar(xp.max(eig)))
        return make_certificate(residual, scale, rtol, extremes, dtype=self.dtype)

    def _certified(self, x, y, out, return_certificate, on_failure, oracle):
        if on_failure not in _ON_FAILURE:
            raise ValueError(f"on_failure must be one of {_ON_FAILURE}; got {on_failure!r}")
        if not return_certificate and on_failure == "ignore":
            return out
        certificate = self.certify_inner(x, y, curvature=return_certificate)
        enforce(certificate, on_failure, f"{type(self).__name__}.{oracle}")
        return (out, certificate) if return_certificate else out

    def inner_solution(self, x, *, y0=None, tol=None, max_iter=None,
                       return_certificate: bool = False, on_failure: str = "warn"):
        """``y*(x) = H⁻¹(Bx + c)`` (closed form; ``y0``, ``tol``, ``max_iter`` are ignored).

        ``return_certificate`` and ``on_failure`` are as in
        :meth:`BilevelProblem.inner_solution`.
        """
        y = self._solve(self.H, self.B @ x + self.c)
        return self._certified(x, y, y, return_certificate, on_failure, "inner_solution")

    def hypergradient(self, x, *, y_star=None, return_certificate: bool = False,
                      on_failure: str = "warn"):
        """``∇F(x) = Rx + r + D y* + Bᵀ H⁻¹ (A y* + a + Dᵀx)`` (closed form)."""
        if y_star is None:
            y_star = self._solve(self.H, self.B @ x + self.c)
        fx, fy = self.grad_f(x, y_star)
        hg = fx + self._solve(self.H, fy) @ self.B
        return self._certified(x, y_star, hg, return_certificate, on_failure, "hypergradient")

    def value(self, x, *, return_certificate: bool = False, on_failure: str = "warn"):
        """``F(x) = f(x, y*(x))`` (closed-form ``y*``; certificate as in :meth:`inner_solution`)."""
        y = self._solve(self.H, self.B @ x + self.c)
        return self._certified(x, y, self.f(x, y), return_certificate, on_failure, "value")

    def solution(self):
        """``x*``: the solution of ``(R + MᵀAM + DM + MᵀDᵀ) x = −(r + Mᵀ(Aμ + a) + Dμ)``."""
        M = self._solve(self.H, self.B)
        mu = self._solve(self.H, self.c)
        lhs = self.R + M.T @ self.A @ M
        rhs = -(self.r + (self.A @ mu + self.a) @ M)
        if self.D is not None:
            DM = self.D @ M
            lhs = lhs + DM + DM.T
            rhs = rhs - self.D @ mu
        return self._solve(lhs, rhs)

    def penalty_solution(self, lam: float):
        """Stationary point ``(x_λ, y_λ(x_λ), z = y*(x_λ))`` of the penalty problem.

        See the class Notes; ``lam`` must be > 0.
        """
        lam = check_real(lam, "lam", positive=True)
        xp = self.xp
        W = self.A + lam * self.H
        M = self._solve(self.H, self.B)
        mu = self._solve(self.H, self.c)
        D = xp.zeros((self.dim_x, self.dim_y), dtype=self.dtype, device=self.device) \
            if self.D is None else self.D
        K = self._solve(W, lam * self.B - D.T).T          # (λBᵀ − D) W⁻¹ (W symmetric)
        lhs = self.R + D @ M + K @ (self.A @ M + D.T)
        rhs = -(self.r + D @ mu + K @ (self.A @ mu + self.a))
        x = self._solve(lhs, rhs)
        y = self._solve(W, lam * (self.B @ x + self.c) - self.a - x @ D)
        return x, y, self.inner_solution(x, on_failure="ignore")

    def smoothness(self) -> dict:
        """Host estimates of ``L_g = λ_max(H)``, ``μ_g = λ_min(H)`` and ``L_f = λ_max(A)``."""
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
