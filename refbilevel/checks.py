r"""Derivative checks: certify hand-derived oracles against finite differences and identities.

Public and backend-neutral, for refbilevel's own tests and for users checking their own
problems: anything that follows the problem protocol (``f``, ``g``, ``grad_f``,
``grad_g``, ``hvp_g``, ``cross_g``; or the minimax-bilevel block protocol) can be passed to
:func:`check_problem`.

All finite differences are directional and use the five-point central stencil

.. math::

    D_u\varphi(x) \approx \frac{-\varphi(x + 2hu) + 8\varphi(x + hu) - 8\varphi(x - hu)
    + \varphi(x - 2hu)}{12 h},

whose truncation error is :math:`O(h^4)`; with :math:`h = 10^{-3}` and float64 data the
relative error of a correct derivative is typically :math:`10^{-10}` to :math:`10^{-12}`.
Run the checks in float64: in float32 the round-off alone exceeds 1e-4. The relative
error reported is

.. math::

    \frac{\max(0,\ \|a - b\| - \delta)}{\max(\|a\|, \|b\|, 10^{-300})},
    \qquad \delta = \frac{3\,\epsilon\,\max_k \|\varphi(x + k h u)\|}{2h},

where δ bounds the round-off of the stencil itself (ε is the machine epsilon of the data):
differences the stencil cannot resolve are not counted, so a derivative that is exactly
zero (e.g. :math:`\nabla_x f` when f does not depend on x) reports 0 instead of
round-off divided by a tiny number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from ._backend import array_namespace, device, eps, from_host, host_rng, to_host_scalar
from .problems.base import (Certificate, CertificateWarning, MinimaxBilevelProblem,
                            certificate_rtol, lanczos_extremes, make_certificate)

__all__ = [
    "CheckTable",
    "certify_exact",
    "check_adjoint",
    "check_directional",
    "check_gradient",
    "check_jacobian_vector",
    "check_problem",
    "check_symmetry",
    "directional_derivative",
    "format_table",
    "relative_error",
]

_STENCIL = ((-2.0, 1.0), (-1.0, -8.0), (1.0, 8.0), (2.0, -1.0))


def relative_error(actual, desired, *, atol: float = 0.0) -> float:
    """``max(0, ||actual − desired|| − atol) / max(||actual||, ||desired||)`` as a host float.

    ``atol`` is the size of a difference that is not meaningful (e.g. the round-off of a
    finite difference); 0 when both arrays are exactly zero.
    """
    xp = array_namespace(actual, desired)
    diff = to_host_scalar(xp.linalg.vector_norm(xp.reshape(actual - desired, (-1,))))
    na = to_host_scalar(xp.linalg.vector_norm(xp.reshape(actual, (-1,))))
    nd = to_host_scalar(xp.linalg.vector_norm(xp.reshape(desired, (-1,))))
    return max(0.0, diff - atol) / max(na, nd, 1e-300)


def _finite_difference(fun: Callable, x, u, h: float):
    """Five-point stencil along ``u`` and the bound δ on its own round-off."""
    total = None
    largest = 0.0
    xp = array_namespace(x, u)
    for step, weight in _STENCIL:
        value = fun(x + (step * h) * u)
        size = to_host_scalar(xp.linalg.vector_norm(xp.reshape(xp.asarray(value), (-1,))))
        largest = max(largest, size)
        term = weight * value
        total = term if total is None else total + term
    roundoff = 18.0 * eps(x.dtype) * largest / (12.0 * h)
    return total / (12.0 * h), roundoff


def directional_derivative(fun: Callable, x, u, *, h: float = 1e-3):
    r"""Five-point central difference of ``fun`` at ``x`` along ``u``.

    ``fun`` may return a 0-d array or an array of any shape (then the result is the
    directional derivative of each entry, i.e. a Jacobian-vector product).
    """
    return _finite_difference(fun, x, u, h)[0]


def check_gradient(fun: Callable, grad: Callable, x, *, u=None, rng=None, h: float = 1e-3) -> float:
    """Relative error of ``<grad(x), u>`` against the directional difference of ``fun``.

    ``u`` defaults to a random unit direction drawn from ``rng`` (a seed or a numpy
    Generator) on the host.
    """
    if u is None:
        u = random_direction(x, rng)
    xp = array_namespace(x, u)
    exact = xp.sum(grad(x) * u)
    approx, roundoff = _finite_difference(fun, x, u, h)
    return relative_error(exact, approx, atol=roundoff)


def check_jacobian_vector(fun: Callable, jvp, x, u, *, h: float = 1e-3) -> float:
    """Relative error of a Jacobian-vector product ``jvp`` (array) against ``D_u fun(x)``.

    Used for HVPs (``fun = ∇_y g(x, ·)``, ``jvp = hvp_g(x, y, u)``) and for
    cross-derivatives (``fun = ∇_x g(x, ·)`` along a y-direction ``u``).
    """
    approx, roundoff = _finite_difference(fun, x, u, h)
    return relative_error(jvp, approx, atol=roundoff)


def check_directional(fun: Callable, exact, x, u, *, h: float = 1e-3) -> float:
    """Relative error of a known directional derivative ``exact`` (0-d) against ``D_u fun(x)``."""
    approx, roundoff = _finite_difference(fun, x, u, h)
    return relative_error(exact, approx, atol=roundoff)


def check_symmetry(op: Callable, u, v) -> float:
    """``|<u, op(v)> − <op(u), v>|`` relative to their size: symmetry of a Hessian operator."""
    xp = array_namespace(u, v)
    return relative_error(xp.sum(u * op(v)), xp.sum(op(u) * v))


def check_adjoint(op: Callable, adjoint: Callable, u, w) -> float:
    """``<w, op(u)> = <adjoint(w), u>``: ``op`` maps u-space to w-space and ``adjoint`` back."""
    xp = array_namespace(u, w)
    return relative_error(xp.sum(w * op(u)), xp.sum(adjoint(w) * u))


def random_direction(like, rng=None, *, scale: float = 1.0):
    """A random direction of ``like``'s shape with unit norm times ``scale`` (host-drawn)."""
    gen = host_rng(0 if rng is None else rng)
    a = gen.standard_normal(tuple(like.shape))
    a = a / max(float((a**2).sum()) ** 0.5, 1e-300) * scale
    xp = array_namespace(like)
    return from_host(a, xp, dtype=like.dtype, device=device(like))


def random_point(like, rng=None, *, scale: float = 0.5):
    """A random point of ``like``'s shape with entries ``N(0, scale²)`` (host-drawn)."""
    gen = host_rng(0 if rng is None else rng)
    xp = array_namespace(like)
    return from_host(scale * gen.standard_normal(tuple(like.shape)), xp, dtype=like.dtype,
                     device=device(like))


class CheckTable(dict):
    """:func:`check_problem`'s result: oracle name -> worst relative error.

    Attributes
    ----------
    certificates : dict
        Label -> :class:`~refbilevel.problems.base.Certificate` of the exact oracles'
        inner solutions at the checked points (empty when none were evaluated).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.certificates: dict[str, Certificate] = {}

    @property
    def certified(self) -> bool:
        """Whether every recorded certificate passed (True when there are none)."""
        return all(c.ok for c in self.certificates.values())


def certify_exact(problem, x) -> Certificate:
    r"""The :class:`~refbilevel.problems.base.Certificate` of ``problem``'s exact inner solution at ``x``.

    Uses the problem's own ``certify_inner`` when it has one (refbilevel's problems); for
    other objects following the protocol, the residual :math:`\|\nabla_y g(x, y^*)\|`
    relative to :math:`1 + \|\nabla_y g(x, y_0)\|` and the Lanczos range of ``hvp_g``
    are computed here from ``inner_solution``, ``grad_g`` and ``hvp_g``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        if isinstance(problem, MinimaxBilevelProblem) or hasattr(problem, "n_blocks"):
            return problem.certify_inner(x)
        if hasattr(problem, "certify_inner"):
            try:
                return problem.inner_solution(x, return_certificate=True, on_failure="ignore")[1]
            except TypeError:  # an inner_solution without the certificate keywords
                return problem.certify_inner(x, problem.inner_solution(x))
        y = problem.inner_solution(x)
    xp = array_namespace(x, y)

    def norm(a):
        return to_host_scalar(xp.linalg.vector_norm(xp.reshape(a, (-1,))))

    residual = norm(problem.grad_g(x, y)[1])
    scale = 1.0 + norm(problem.grad_g(x, problem.init_y())[1])
    extremes = lanczos_extremes(lambda v: problem.hvp_g(x, y, v), y)
    return make_certificate(residual, scale, certificate_rtol(y.dtype), extremes, dtype=y.dtype)


def check_problem(problem, *, n_points: int = 2, seed: int = 0, h: float = 1e-3,
                  point_scale: float = 0.5, x=None, y=None, z=None,
                  hypergradient: bool = True) -> CheckTable:
    """Check every oracle of a problem at random points and directions.

    Parameters
    ----------
    problem : BilevelProblem or MinimaxBilevelProblem
        Any object following the protocol (float64 data recommended).
    n_points : int
        Number of random points; the table reports the worst error per oracle.
    seed : int
        Seed of the host generator drawing points and directions.
    h : float
        Finite-difference step.
    point_scale : float
        Standard deviation of the random points (used when ``x``/``y``/``z`` are not given).
    x, y, z : arrays, optional
        Fixed points to check at instead of random ones.
    hypergradient : bool
        Also check the exact oracles: ``hypergradient`` (or ``saddle_gradient``) against
        finite differences of ``value`` when the problem provides them and its inner problem
        is strongly convex, and the certificate of the exact inner solution at the first
        point (every problem with ``inner_solution``; costs exact solves).

    Returns
    -------
    CheckTable
        Oracle name -> worst relative error (a ``dict``), with the exact oracles'
        certificates in its ``certificates`` attribute.
    """
    rng = host_rng(seed)
    if isinstance(problem, MinimaxBilevelProblem):
        return _check_minimax(problem, n_points, rng, h, point_scale, x, y, z, hypergradient)
    table = CheckTable()

    def record(name, err):
        table[name] = max(table.get(name, 0.0), err)

    for k in range(n_points):
        xk = x if x is not None else random_point(problem.init_x(), rng, scale=point_scale)
        yk = y if y is not None else random_point(problem.init_y(), rng, scale=point_scale)
        ux = random_direction(xk, rng)
        uy = random_direction(yk, rng)
        vy = random_direction(yk, rng)
        record("grad_f_x", check_gradient(lambda t: problem.f(t, yk),
                                          lambda t: problem.grad_f(t, yk)[0], xk, u=ux, h=h))
        record("grad_f_y", check_gradient(lambda t: problem.f(xk, t),
                                          lambda t: problem.grad_f(xk, t)[1], yk, u=uy, h=h))
        record("grad_g_x", check_gradient(lambda t: problem.g(t, yk),
                                          lambda t: problem.grad_g(t, yk)[0], xk, u=ux, h=h))
        record("grad_g_y", check_gradient(lambda t: problem.g(xk, t),
                                          lambda t: problem.grad_g(xk, t)[1], yk, u=uy, h=h))
        record("hvp_g", check_jacobian_vector(lambda t: problem.grad_g(xk, t)[1],
                                              problem.hvp_g(xk, yk, uy), yk, uy, h=h))
        record("hvp_g symmetry", check_symmetry(lambda t: problem.hvp_g(xk, yk, t), uy, vy))
        # cross_g(v) is the x-gradient of <∇_y g(x, y), v> ...
        record("cross_g", check_gradient(lambda t: _inner(problem.grad_g(t, yk)[1], vy),
                                         lambda t: problem.cross_g(t, yk, vy), xk, u=ux, h=h))
        # ... and equals the y-directional derivative of ∇_x g (the other mixed partial)
        record("cross_g vs d/dy grad_g_x",
               check_jacobian_vector(lambda t: problem.grad_g(xk, t)[0],
                                     problem.cross_g(xk, yk, uy), yk, uy, h=h))
        Ys = problem.xp.stack([yk, yk + vy])
        gx_many, gy_many = problem.grad_g_many(xk, Ys)
        gx0, gy0 = problem.grad_g(xk, yk)
        gx1, gy1 = problem.grad_g(xk, yk + vy)
        xp = problem.xp
        record("grad_g_many", max(relative_error(gx_many, xp.stack([gx0, gx1])),
                                  relative_error(gy_many, xp.stack([gy0, gy1]))))
        if hypergradient and k == 0 and hasattr(problem, "inner_solution"):
            try:
                certificate = certify_exact(problem, xk)
            except NotImplementedError:
                continue
            table.certificates["inner_solution"] = certificate
            record("inner_solution residual", certificate.relative_residual)
            if getattr(problem, "strongly_convex_inner", True):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CertificateWarning)
                    hg = problem.hypergradient(xk)
                    record("hypergradient",
                           check_gradient(problem.value, lambda t: hg, xk, u=ux, h=h))
    return table


def _inner(a, b):
    return array_namespace(a, b).sum(a * b)


def _check_minimax(problem, n_points, rng, h, point_scale, x, y, z, hypergradient):
    table = CheckTable()
    xp = problem.xp

    def record(name, err):
        table[name] = max(table.get(name, 0.0), err)

    blocks_all = problem.all_blocks()
    for k in range(n_points):
        xk = x if x is not None else random_point(problem.init_x(), rng, scale=point_scale)
        yk = y if y is not None else random_point(problem.init_y(), rng, scale=point_scale)
        zk = z if z is not None else random_point(problem.init_z(), rng, scale=point_scale)
        ux, uy, uz = (random_direction(a, rng) for a in (xk, yk, zk))
        n = problem.n_blocks
        record("grad_f_x", check_gradient(lambda t: problem.f(t, yk, zk, blocks_all),
                                          lambda t: problem.grad_f(t, yk, zk, blocks_all)[0],
                                          xk, u=ux, h=h))
        record("grad_f_y", check_gradient(lambda t: problem.f(xk, t, zk, blocks_all),
                                          lambda t: problem.grad_f(xk, t, zk, blocks_all)[1],
                                          yk, u=uy, h=h))
        # gz is per block: n times the gradient of the mean
        record("grad_f_z", check_gradient(lambda t: n * problem.f(xk, yk, t, blocks_all),
                                          lambda t: problem.grad_f(xk, yk, t, blocks_all)[2],
                                          zk, u=uz, h=h))
        record("grad_g_x", check_gradient(lambda t: problem.g(t, zk, blocks_all),
                                          lambda t: problem.grad_g(t, zk, blocks_all)[0],
                                          xk, u=ux, h=h))
        record("grad_g_z", check_gradient(lambda t: n * problem.g(xk, t, blocks_all),
                                          lambda t: problem.grad_g(xk, t, blocks_all)[1],
                                          zk, u=uz, h=h))
        # a subset of blocks, in a shuffled order, agrees with the full evaluation
        if n >= 2:
            sub = xp.asarray([n - 1, 0], dtype=blocks_all.dtype, device=device(blocks_all))
            zsub = xp.take(zk, sub, axis=0)
            full_gz = problem.grad_f(xk, yk, zk, blocks_all)[2]
            record("block subset", relative_error(problem.grad_f(xk, yk, zsub, sub)[2],
                                                  xp.take(full_gz, sub, axis=0)))
        if hypergradient and k == 0:
            try:
                sg = problem.saddle_gradient(xk)
            except NotImplementedError:
                continue
            record("saddle_gradient", check_gradient(problem.value, lambda t: sg, xk, u=ux, h=h))
            certificate = certify_exact(problem, xk)
            table.certificates["inner_solution"] = certificate
            record("inner_solution residual", certificate.relative_residual)
    return table


def format_table(table: dict[str, float], *, title: str | None = None) -> str:
    """A plain-text two-column table of :func:`check_problem`'s result, then its certificates."""
    width = max([len(k) for k in table] + [6])
    lines = [] if title is None else [title]
    lines.append(f"{'oracle':<{width}}  relative error")
    lines.append(f"{'-' * width}  --------------")
    lines += [f"{k:<{width}}  {v:.2e}" for k, v in table.items()]
    for label, certificate in getattr(table, "certificates", {}).items():
        lines.append(f"certificate of {label}: {certificate.summary()}")
    return "\n".join(lines)
