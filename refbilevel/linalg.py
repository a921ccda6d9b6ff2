"""Linear solvers on a matrix-free operator ``v -> H v``, array-API neutral.

Two families live here and nowhere else:

* fixed-iteration solvers for the solvers' hot path (:func:`conjugate_gradient`,
  :func:`neumann_series`): a fixed number of steps, no data-dependent branch, so no
  host-device synchronisation;
* tolerance-driven solvers for the exact oracles (:func:`cg_solve`, and
  :func:`block_newton` for many small independent minimisations at once), which may
  synchronise because they run outside solver steps.

``matvec`` is any callable taking and returning arrays of the shape of ``b``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._backend import (array_namespace, device, linalg_solve, materialize, positive_or_inf,
                       scaled, to_host_scalar, zeros_like)

__all__ = ["block_newton", "cg_solve", "conjugate_gradient", "fixed_point", "neumann_series"]


def _vdot(xp, u, v):
    """Euclidean inner product of two real arrays of the same shape, as a 0-d array.

    One operation (``vecdot``: a BLAS dot on NumPy) rather than a product and a sum; arrays
    of more than one axis are flattened first (a view for contiguous arrays).
    """
    if u.ndim != 1:
        u, v = xp.reshape(u, (-1,)), xp.reshape(v, (-1,))
    return xp.vecdot(u, v)


def _cg_start(xp, matvec, b, x0):
    """CG's starting iterate, residual ``b − H v₀`` and its squared norm (no matvec from 0)."""
    if x0 is None:
        return zeros_like(b, xp=xp), b, _vdot(xp, b, b)
    r = b - matvec(x0)
    return x0, r, _vdot(xp, r, r)


def conjugate_gradient(matvec: Callable, b, *, n_iter: int, x0=None):
    r"""Run exactly ``n_iter`` conjugate-gradient steps on ``H v = b`` (H symmetric PD).

    Parameters
    ----------
    matvec : callable
        ``v -> H v``.
    b : array
        Right-hand side (any shape; the inner product is over all entries).
    n_iter : int
        Number of CG iterations (each costs one ``matvec``).
    x0 : array, optional
        Warm start; zero by default (then the first ``matvec`` is skipped).

    Returns
    -------
    array
        The K-th CG iterate.

    Notes
    -----
    The textbook recursion (Hestenes & Stiefel 1952):

    .. math::

        r_0 = b - H v_0,\; p_0 = r_0,\quad
        \alpha_k = \frac{r_k^\top r_k}{p_k^\top H p_k},\;
        v_{k+1} = v_k + \alpha_k p_k,\; r_{k+1} = r_k - \alpha_k H p_k,\;
        p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}{r_k^\top r_k} p_k .

    Once the residual is exactly zero the divisions are guarded with ``where`` (a
    non-positive denominator becomes :math:`+\infty`, so the step is 0 and the iterate
    stays put) instead of a data-dependent ``if``, so the loop never synchronises a GPU.
    In exact arithmetic ``n_iter = dim`` solves the system.
    """
    xp = array_namespace(b)
    v, r, rs = _cg_start(xp, matvec, b, x0)
    p = r
    for _ in range(n_iter):
        hp = matvec(p)
        php = _vdot(xp, p, hp)
        alpha = rs / positive_or_inf(php, xp=xp)             # 0 once p^T H p is not > 0
        v = v + alpha * p
        r = r - alpha * hp
        rs_new = _vdot(xp, r, r)
        beta = rs_new / positive_or_inf(rs, xp=xp)           # 0 once the residual is 0
        p = r + beta * p
        rs = rs_new
    return v


def neumann_series(matvec: Callable | list, b, *, eta: float, n_terms: int):
    r"""Truncated Neumann series :math:`\eta \sum_{q=0}^{Q} (I - \eta H)^q b`, Q = ``n_terms``.

    Parameters
    ----------
    matvec : callable or sequence of callables
        ``v -> H v``; a sequence of ``n_terms`` callables gives the q-th factor its own
        operator (stocBiO's fresh minibatch per factor).
    b : array
        Right-hand side.
    eta : float
        Step, ``0 < eta < 2 / L`` for convergence (``1/L`` recommended).
    n_terms : int
        Q: the number of ``matvec`` calls; the sum has Q + 1 terms.

    Notes
    -----
    With :math:`p_0 = b` and :math:`p_{q+1} = p_q - \eta H_q p_q`, the result is
    :math:`\eta \sum_{q=0}^{Q} p_q` (benchopt's ``shia``; Ji et al. 2021, eq. for
    :math:`v_Q`). It equals ``K = Q + 1`` steps of the fixed-point iteration
    :math:`v \leftarrow (I - \eta H) v + b` from zero, multiplied by η (Grazzi et al. 2020).
    """
    ops = list(matvec) if isinstance(matvec, (list, tuple)) else [matvec] * n_terms
    if len(ops) != n_terms:
        raise ValueError(f"matvec must hold n_terms={n_terms} operators; got {len(ops)}")
    p = b
    total = b
    for op in ops:
        p = p - scaled(eta, op(p))
        total = total + p
    return eta * total


def fixed_point(matvec: Callable, b, *, eta: float, n_iter: int, x0=None):
    r"""Run ``n_iter`` steps of the fixed-point (Richardson) iteration for ``H v = b``.

    .. math::

        v_{k+1} = v_k - \eta\,(H v_k - b) = (I - \eta H)\, v_k + \eta\, b .

    Parameters
    ----------
    matvec : callable
        ``v -> H v``.
    b : array
        Right-hand side.
    eta : float
        Step, ``0 < eta < 2 / L`` for convergence.
    n_iter : int
        Number of iterations.
    x0 : array, optional
        Warm start. With ``x0=None`` the iteration starts at zero and the first step,
        :math:`v_1 = \eta b`, needs no ``matvec``: the cost is ``n_iter - 1`` matvecs
        (``n_iter`` with a warm start).

    Notes
    -----
    From zero, :math:`v_K = \eta \sum_{k=0}^{K-1} (I - \eta H)^k b`, i.e.
    ``fixed_point(n_iter=K) == neumann_series(n_terms=K-1)`` (Grazzi et al. 2020,
    hypertorch's ``fixed_point`` with the GD map, up to the factor η that it applies at the
    end). A warm start lets the iteration track a slowly moving solution across outer
    steps (as in single-loop methods).
    """
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0; got {n_iter}")
    if x0 is None:
        if n_iter == 0:
            xp = array_namespace(b)
            return xp.zeros_like(b)
        v = eta * b
        n_iter -= 1
    else:
        v = x0
    for _ in range(n_iter):
        v = v - scaled(eta, matvec(v) - b)
    return v


def cg_solve(matvec: Callable, b, *, rtol: float = 1e-13, atol: float = 0.0,
             max_iter: int | None = None, x0=None):
    """Conjugate gradient to a tolerance, for exact oracles (synchronises every step).

    Stops when ``||H v - b|| <= max(rtol * ||b||, atol)``; ``max_iter`` defaults to
    ``10 * b.size + 10``. Returns ``(v, n_iter, residual_norm)``.
    """
    xp = array_namespace(b)
    size = math.prod(b.shape)
    if max_iter is None:
        max_iter = 10 * size + 10
    bnorm = to_host_scalar(xp.sqrt(_vdot(xp, b, b)))
    target = max(rtol * bnorm, atol)
    v, r, rs = _cg_start(xp, matvec, b, x0)
    p = r
    rnorm = math.sqrt(to_host_scalar(rs))
    k = 0
    while rnorm > target and k < max_iter:
        v, r, p, rs = materialize((v, r, p, rs))  # lazy libraries: one step's graph at a time
        hp = materialize(matvec(p))
        php = to_host_scalar(_vdot(xp, p, hp))
        if not php > 0:
            break
        alpha = to_host_scalar(rs) / php
        v = v + alpha * p
        r = r - alpha * hp
        rs_new = _vdot(xp, r, r)
        beta = to_host_scalar(rs_new) / to_host_scalar(rs)
        p = r + beta * p
        rs = rs_new
        k += 1
        if k % 50 == 0:  # recompute the true residual against drift
            r = b - matvec(v)
            rs = _vdot(xp, r, r)
        rnorm = math.sqrt(to_host_scalar(rs))
    return v, k, rnorm


def block_newton(value, grad, hessian, z0, *, tol=None, max_iter=100):
    r"""Damped Newton on independent strongly convex block problems, vectorised over blocks.

    Minimises :math:`n` independent functions :math:`g_i(z_i)`, :math:`z_i \in \mathbb R^k`,
    at once: the exact inner solutions of the minimax-bilevel problems, whose blocks
    (tasks) share no variable of the lower level. Each Newton system is a dense ``k x k``
    solve, stacked over blocks in one ``linalg.solve`` call.

    Parameters
    ----------
    value, grad, hessian : callable
        ``z -> (n,)`` per-block values, ``(n, k)`` per-block gradients, ``(n, k, k)`` Hessians.
    z0 : array, shape (n, k)
        Start.
    tol : float, optional
        Stop when every block has :math:`\|\nabla g_i\| \le \text{tol}\,(1 + G_0)`,
        :math:`G_0` the largest gradient norm at ``z0`` (``tol`` default 1e-13 in float64,
        1e-5 in float32), then take two more steps so the solution is exact to rounding
        (value functions built on it are then smooth enough for finite differences).
    max_iter : int
        Largest number of Newton steps before the two final ones.

    Returns
    -------
    array, shape (n, k)
        The minimisers, one row per block.

    Notes
    -----
    Each step solves the stacked Newton systems at once and picks, per block, the largest
    step in :math:`1, 1/2, \dots, 2^{-30}` satisfying Armijo (factor 1e-4); the full step
    once the Newton decrement :math:`d^\top H d` is below :math:`10^{-10}(1 + |g_i|)`, where
    rounding hides the decrease. It also stops after three consecutive steps in which every
    block was in that regime (full steps from there converge quadratically, so the
    gradient is then at its rounding floor, which may lie above the target, e.g. in
    float32 far from the origin). Synchronises twice per step (exact oracles only).

    The Newton step of block :math:`i` is :math:`d_i = -[\nabla^2 g_i(z_i)]^{-1}
    \nabla g_i(z_i)` and the update :math:`z_i \leftarrow z_i + t_i d_i`, with the Armijo
    rule :math:`g_i(z_i + t_i d_i) \le g_i(z_i) + 10^{-4}\, t_i\, d_i^\top \nabla g_i`
    (Nocedal and Wright, *Numerical Optimization*, 2nd ed., Springer 2006, §3.1 and §3.3).
    """
    xp = array_namespace(z0)
    if tol is None:
        tol = 1e-13 if z0.dtype == xp.float64 else 1e-5
    z = z0
    polish = 2  # full Newton steps after the tolerance is met: z* to rounding level
    target, stalled = None, 0
    for _ in range(max_iter + polish):
        z = materialize(z)  # lazy libraries: one iteration's graph at a time
        gz = grad(z)
        if polish == 0:
            break
        gmax = to_host_scalar(xp.max(xp.linalg.vector_norm(gz, axis=1)))
        if target is None:
            target = tol * (1.0 + gmax)
        if stalled >= 3:   # rounding floor above the target (e.g. float32 at large scale)
            break
        if gmax <= target:
            polish -= 1
        d = -linalg_solve(hessian(z), gz[..., None])[..., 0]
        slope = xp.sum(d * gz, axis=1)
        g0 = value(z)
        step = xp.zeros_like(g0)
        found = xp.zeros(g0.shape, dtype=xp.bool, device=device(z0))
        tval = 1.0
        for _k in range(31):
            ok = (value(z + tval * d) <= g0 + 1e-4 * tval * slope) & ~found
            step = xp.where(ok, tval, step)
            found = found | ok
            tval *= 0.5
        small = -slope <= 1e-10 * (1.0 + xp.abs(g0))
        damped = found & ~small
        stalled = 0 if to_host_scalar(xp.any(damped)) else stalled + 1
        step = xp.where(damped, step, 1.0)
        z = z + step[:, None] * d
    return z
