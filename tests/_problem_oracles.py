"""Shared assertions for the bilevel problem tests (logreg, cleaning, layer decay), and the
marker that keeps the problem modules' longest JAX cases out of the default run.

Every check compares against an independent oracle: directional five-point finite
differences (float64), an explicit adjoint built column by column, or the single-point
oracle. Tolerances: 1e-7 relative for first/second derivatives, 1e-12 for identities.
"""

from __future__ import annotations

import numpy as np
import pytest

from refbilevel._backend import array_namespace, device as dev_of, from_host, to_host, to_host_scalar
from refbilevel.checks import (check_gradient, check_jacobian_vector, check_symmetry,
                               directional_derivative, relative_error)

TOL = 1e-7

#: JAX runs each eager operation through XLA, which compiles it once per shape and dtype
#: (about 45 ms a compile on a 2-core machine: 150 s of the default run went to these four
#: problem modules on JAX alone). By default JAX certifies each problem's oracles against
#: finite differences; its cases of the tests built on those oracles (batches, stacked
#: points, exact oracles, float32 extremes) are ``slow`` (``-m slow`` runs them), while
#: NumPy, array-api-strict (second device) and PyTorch run them by default.
JAX_SLOW = pytest.mark.slow_xp_backends(
    "jax", reason="oracle identities on JAX: XLA compiles every eager operation per shape")


def unit_like(a, rng):
    """A random unit direction of ``a``'s shape, namespace, dtype and device."""
    u = rng.standard_normal(tuple(a.shape))
    u = u / np.linalg.norm(u)
    return from_host(u, _xp(a), dtype=a.dtype, device=dev_of(a))


def point_like(a, rng, scale=0.5, shift=0.0):
    return from_host(shift + scale * rng.standard_normal(tuple(a.shape)), _xp(a), dtype=a.dtype,
                     device=dev_of(a))


def _xp(a):
    return array_namespace(a)


def assert_same_kind(out, like):
    """Namespace, dtype and device of ``out`` equal those of ``like``."""
    array_namespace(out, like)  # raises TypeError on a namespace or device mismatch
    assert hasattr(out, "shape") and hasattr(out, "dtype")
    assert out.dtype == like.dtype, (out.dtype, like.dtype)
    assert dev_of(out) == dev_of(like)


def assert_oracles(P, x, y, rng, *, batch=None, h=1e-3, tol=TOL):
    """Every oracle of ``P`` at ``(x, y)`` against finite differences and identities."""
    xp = P.xp
    ux, wx = unit_like(x, rng), unit_like(x, rng)
    uy, vy = unit_like(y, rng), unit_like(y, rng)
    errs = {
        "grad_g_x": check_gradient(lambda t: P.g(t, y, batch), lambda t: P.grad_g(t, y, batch)[0],
                                   x, u=ux, h=h),
        "grad_g_y": check_gradient(lambda t: P.g(x, t, batch), lambda t: P.grad_g(x, t, batch)[1],
                                   y, u=uy, h=h),
        "grad_f_y": check_gradient(lambda t: P.f(x, t, batch), lambda t: P.grad_f(x, t, batch)[1],
                                   y, u=uy, h=h),
        "hvp_g": check_jacobian_vector(lambda t: P.grad_g_y(x, t, batch),
                                       P.hvp_g(x, y, uy, batch), y, uy, h=h),
        # cross_g(v) = ∇_x <∇_y g, v>, checked along x ...
        "cross_g (x-gradient of <grad_g_y, v>)": check_gradient(
            lambda t: xp.sum(P.grad_g_y(t, y, batch) * vy),
            lambda t: P.cross_g(t, y, vy, batch), x, u=wx, h=h),
        # ... and as the y-derivative of grad_g_x (the other mixed partial)
        "cross_g (y-derivative of grad_g_x)": check_jacobian_vector(
            lambda t: P.grad_g_x(x, t, batch), P.cross_g(x, y, uy, batch), y, uy, h=h),
    }
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, bad
    # the full y-space vector D_w ∇_y g (FD along x) equals the adjoint of cross_g, built
    # column by column: [<cross_g(e_k), w>]_k
    fd = to_host(directional_derivative(lambda t: P.grad_g_y(t, y, batch), x, wx, h=h))
    eye = np.eye(P.dim_y)
    adj = np.array([to_host_scalar(xp.sum(P.cross_g(x, y, from_host(eye[k], xp, dtype=y.dtype,
                                                                      device=dev_of(y)), batch) * wx))
                    for k in range(P.dim_y)])
    err = np.linalg.norm(adj - fd) / max(np.linalg.norm(fd), 1e-300)
    assert err <= tol, ("cross_g adjoint vs FD of grad_g_y along x", err)
    assert check_symmetry(lambda t: P.hvp_g(x, y, t, batch), uy, vy) <= 1e-12
    # ∇_x f is identically zero for these problems: exact zeros, and f does not move along x
    gfx = P.grad_f(x, y, batch)[0]
    assert to_host_scalar(xp.max(xp.abs(gfx))) == 0.0
    assert to_host_scalar(xp.max(xp.abs(P.grad_f_x(x, y, batch)))) == 0.0
    assert abs(to_host_scalar(P.f(x + 0.3 * ux, y, batch) - P.f(x, y, batch))) == 0.0
    # narrow oracles equal the fused ones
    gx, gy = P.grad_g(x, y, batch)
    assert relative_error(P.grad_g_x(x, y, batch), gx) <= 1e-14
    assert relative_error(P.grad_g_y(x, y, batch), gy) <= 1e-14
    assert relative_error(P.grad_f_y(x, y, batch), P.grad_f(x, y, batch)[1]) <= 1e-14
    # shapes, dtype, device
    for out, like in ((gx, x), (gy, y), (gfx, x), (P.hvp_g(x, y, uy, batch), y),
                      (P.cross_g(x, y, uy, batch), x)):
        assert out.shape == like.shape
        assert_same_kind(out, like)
    for val in (P.f(x, y, batch), P.g(x, y, batch)):
        assert val.shape == ()
        assert_same_kind(val, x)


def assert_stacked(P, x, Ys, *, batch=None):
    """The stacked oracles equal the single-point ones (relative 1e-12)."""
    gxs, gys = P.grad_g_many(x, Ys, batch)
    gys2, gxs2 = P.grad_g_y_many(x, Ys, batch), P.grad_g_x_many(x, Ys, batch)
    m = Ys.shape[0]
    assert gxs.shape == (m, P.dim_x) and gys.shape == (m, P.dim_y)
    for j in range(m):
        gx, gy = P.grad_g(x, Ys[j, ...], batch)
        for stacked, single in ((gxs, gx), (gxs2, gx), (gys, gy), (gys2, gy)):
            assert relative_error(stacked[j, ...], single) <= 1e-12
    assert_same_kind(gys, Ys)
    assert_same_kind(gxs, x)


def assert_exact_oracles(P, x, rng, *, y0=None, tol=1e-6):
    """``inner_solution`` residual <= 1e-12 (scaled) and ``hypergradient`` vs FD of the value.

    The value at ``x ± h u`` is computed by warm-starting Newton at ``y*(x)``, so that the
    same local minimiser is followed for nonconvex inner problems.
    """
    xp = P.xp
    ys = P.inner_solution(x) if y0 is None else P.inner_solution(x, y0=y0)
    assert_same_kind(ys, x)
    scale = 1.0 + to_host_scalar(xp.linalg.vector_norm(P.grad_g_y(x, P.init_y())))
    res = to_host_scalar(xp.linalg.vector_norm(P.grad_g_y(x, ys)))
    assert res <= 1e-12 * scale, ("inner residual", res, scale)
    hg = P.hypergradient(x, y_star=ys)
    assert_same_kind(hg, x)
    u = unit_like(x, rng)
    err = check_gradient(lambda t: P.f(t, P.inner_solution(t, y0=ys)), lambda t: hg, x, u=u)
    assert err <= tol, ("hypergradient vs FD of value", err)
    return ys, hg


def assert_batch_matches_subproblem(P, sub, batch, x, y, v, *, x_sub=None):
    """Batch oracles of ``P`` equal the full oracles of ``sub``, a problem built on the same rows.

    ``x_sub`` is the sub-problem's outer point when x indexes samples (data cleaning: the
    gathered weights); then the x-space oracles are compared elsewhere (they need a scatter).
    """
    same_x = x_sub is None
    xs = x if same_x else x_sub
    pairs = [(P.f(x, y, batch), sub.f(xs, y)), (P.g(x, y, batch), sub.g(xs, y)),
             (P.grad_f_y(x, y, batch), sub.grad_f_y(xs, y)),
             (P.grad_g_y(x, y, batch), sub.grad_g_y(xs, y)),
             (P.hvp_g(x, y, v, batch), sub.hvp_g(xs, y, v))]
    if same_x:
        pairs += [(P.grad_g_x(x, y, batch), sub.grad_g_x(x, y)),
                  (P.cross_g(x, y, v, batch), sub.cross_g(x, y, v))]
    for a, b in pairs:
        assert relative_error(a, b) <= 1e-13


def assert_float32_finite(P, x, y):
    """Every oracle at ``(x, y)`` (extreme logits) is finite and stays float32."""
    outs = [P.f(x, y), P.g(x, y), *P.grad_g(x, y), *P.grad_f(x, y), P.hvp_g(x, y, y),
            P.cross_g(x, y, y), *P.grad_g_many(x, P.xp.stack([y, -y]))]
    for out in outs:
        assert out.dtype == P.xp.float32
        assert bool(P.xp.all(P.xp.isfinite(out)))
