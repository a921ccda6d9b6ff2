"""Quadratic problems: oracles vs finite differences and closed forms, on every backend."""

import numpy as np
import pytest
from array_api_extra.testing import assert_close

from refbilevel import checks
from refbilevel._backend import to_host
from refbilevel.problems.quadratic import MinimaxQuadratic, Quadratic, toy_1d

FD_RTOL = 1e-7


@pytest.fixture
def quad(xp, device):
    return Quadratic.random(4, 6, seed=3, cond=20.0, xp=xp, device=device)


def _np_data(seed=3, dim_x=4, dim_y=6, cond=20.0):
    q = Quadratic.random(dim_x, dim_y, seed=seed, cond=cond)
    return {k: to_host(getattr(q, k)) for k in "HBcAaRr"}


def test_oracles_vs_finite_differences(quad):
    table = checks.check_problem(quad, n_points=2, seed=1)
    assert set(table) >= {"grad_f_x", "grad_f_y", "grad_g_x", "grad_g_y", "hvp_g", "cross_g",
                          "hvp_g symmetry", "hypergradient"}
    bad = {k: v for k, v in table.items() if not v <= FD_RTOL}
    assert not bad, bad


def test_oracles_vs_closed_forms(quad, xp, device, asxp, rng):
    """Every oracle against the formulas evaluated independently in NumPy float64."""
    d = _np_data()
    x_h, y_h, v_h = rng.standard_normal(4), rng.standard_normal(6), rng.standard_normal(6)
    x, y, v = asxp(x_h), asxp(y_h), asxp(v_h)
    H, B, c, A, a, R, r = (d[k] for k in "HBcAaRr")
    gx, gy = quad.grad_g(x, y)
    assert_close(gx, asxp(-B.T @ y_h), rtol=1e-12)
    assert_close(gy, asxp(H @ y_h - B @ x_h - c), rtol=1e-12)
    fx, fy = quad.grad_f(x, y)
    assert_close(fx, asxp(R @ x_h + r), rtol=1e-12)
    assert_close(fy, asxp(A @ y_h + a), rtol=1e-12)
    assert_close(quad.hvp_g(x, y, v), asxp(H @ v_h), rtol=1e-12)
    assert_close(quad.cross_g(x, y, v), asxp(-B.T @ v_h), rtol=1e-12)
    ystar = np.linalg.solve(H, B @ x_h + c)
    assert_close(quad.inner_solution(x), asxp(ystar), rtol=1e-11)
    hg = R @ x_h + r + B.T @ np.linalg.solve(H, A @ ystar + a)
    assert_close(quad.hypergradient(x), asxp(hg), rtol=1e-11)
    F = 0.5 * ystar @ A @ ystar + a @ ystar + 0.5 * x_h @ R @ x_h + r @ x_h
    assert abs(float(to_host(quad.value(x))) - F) <= 1e-11 * max(1.0, abs(F))


def test_solution_is_stationary(quad):
    xs = quad.solution()
    hg = to_host(quad.hypergradient(xs))
    assert np.linalg.norm(hg) <= 1e-11


def test_hypergradient_vs_value_fd(quad, asxp, rng):
    x = asxp(rng.standard_normal(4))
    for _ in range(3):
        assert checks.check_gradient(quad.value, quad.hypergradient, x, rng=rng) <= FD_RTOL


def test_generic_exact_oracles_agree_with_closed_forms(quad, asxp, rng):
    """The base class's Newton-CG / IFT-CG oracles reproduce the closed forms."""
    from refbilevel.problems.base import BilevelProblem

    x = asxp(rng.standard_normal(4))
    y_newton = BilevelProblem.inner_solution(quad, x)
    assert_close(y_newton, quad.inner_solution(x), rtol=1e-10)
    assert_close(BilevelProblem.hypergradient(quad, x), quad.hypergradient(x), rtol=1e-9)


@pytest.mark.parametrize("lam", [1.0, 10.0, 100.0, 1e3, 1e4])
def test_penalty_solution_first_order_conditions(quad, lam):
    """∇L*_λ(x_λ) = 0 via Danskin, y_λ minimises f + λg, z = y*(x_λ)."""
    xp = quad.xp
    x, y, z = quad.penalty_solution(lam)
    fx, fy = quad.grad_f(x, y)
    gx_y, gy_y = quad.grad_g(x, y)
    gx_z, gy_z = quad.grad_g(x, z)
    scale = 1.0 + float(to_host(xp.linalg.vector_norm(fx))) + lam
    assert float(to_host(xp.linalg.vector_norm(fy + lam * gy_y))) <= 1e-10 * scale
    assert float(to_host(xp.linalg.vector_norm(gy_z))) <= 1e-10 * scale
    assert float(to_host(xp.linalg.vector_norm(fx + lam * (gx_y - gx_z)))) <= 1e-10 * scale


def test_penalty_solution_converges_like_one_over_lambda(quad):
    xs = to_host(quad.solution())
    scaled = []
    for lam in [1.0, 10.0, 100.0, 1e3, 1e4]:
        x, _, _ = quad.penalty_solution(lam)
        scaled.append(lam * np.linalg.norm(to_host(x) - xs))
    # |x_λ − x*|·λ stays bounded and approaches a positive constant
    assert max(scaled) <= 2.0 * scaled[-1] + 1e-9
    assert abs(scaled[-1] - scaled[-2]) <= 0.01 * scaled[-1]


@pytest.mark.parametrize("b, expected_inside", [(1.0, True), (3.0, False)])
def test_toy_1d_closed_forms(xp, device, b, expected_inside):
    a, lo, hi = 2.0, -1.0, 1.0
    toy = toy_1d(a, b, lo, hi, xp=xp, device=device)
    x_star = min(max(b / a, lo), hi)
    assert (lo <= b / a <= hi) == expected_inside
    assert float(to_host(toy.solution())[0]) == pytest.approx(x_star, abs=1e-14)
    # f = ½(y − b)², g = ½(y − ax)²
    x = xp.asarray([0.3], dtype=xp.float64, device=device)
    y = xp.asarray([-0.7], dtype=xp.float64, device=device)
    assert float(to_host(toy.f(x, y))) == pytest.approx(0.5 * (-0.7 - b) ** 2, rel=1e-14)
    assert float(to_host(toy.g(x, y))) == pytest.approx(0.5 * (-0.7 - a * 0.3) ** 2, rel=1e-14)
    assert float(to_host(toy.value(x))) == pytest.approx(0.5 * (a * 0.3 - b) ** 2, rel=1e-14)
    for alpha in [1.0, 8.0, 1024.0]:
        xa, ya, za = (float(to_host(v)[0]) for v in toy.penalty_solution(alpha))
        assert xa == pytest.approx(x_star, abs=1e-14)
        assert za == pytest.approx(a * x_star, abs=1e-13)
        assert ya == pytest.approx((b + alpha * a * x_star) / (1 + alpha), rel=1e-13)
        if expected_inside:
            assert ya == pytest.approx(b, rel=1e-13)      # exact for every α
        else:
            assert abs(ya - a * x_star) == pytest.approx(abs(b - a * x_star) / (1 + alpha), rel=1e-12)


def test_toy_1d_saddle_is_minimax_of_reduced_objective(xp, device):
    """L*_α(x) = α/(1+α) · ½(ax − b)² is minimised on the box at x*."""
    a, b, alpha = 2.0, 3.0, 5.0
    toy = toy_1d(a, b, -1.0, 1.0, xp=xp, device=device)
    grid = np.linspace(-1, 1, 2001)
    reduced = alpha / (1 + alpha) * 0.5 * (a * grid - b) ** 2
    xa = float(to_host(toy.penalty_solution(alpha)[0])[0])
    assert xa == pytest.approx(grid[np.argmin(reduced)], abs=1e-12)


@pytest.fixture
def mmq(xp, device):
    return MinimaxQuadratic.random(4, 3, 2, 3, seed=5, xp=xp, device=device)


def test_minimax_quadratic_oracles_vs_fd(mmq):
    table = checks.check_problem(mmq, n_points=2, seed=2)
    assert {"grad_f_x", "grad_f_y", "grad_f_z", "grad_g_x", "grad_g_z", "saddle_gradient"} <= set(table)
    bad = {k: v for k, v in table.items() if not v <= FD_RTOL}
    assert not bad, bad


def test_minimax_quadratic_saddle_optimality(mmq):
    xp = mmq.xp
    x, y, z = mmq.saddle()
    blocks = mmq.all_blocks()
    gx, gy, _ = mmq.grad_f(x, y, z, blocks)
    _, gz = mmq.grad_g(x, z, blocks)
    assert float(to_host(xp.max(xp.abs(gz)))) <= 1e-12         # z = z*(x)
    assert float(to_host(xp.linalg.vector_norm(gy))) <= 1e-12   # y maximises F(x, ·)
    assert float(to_host(xp.linalg.vector_norm(mmq.saddle_gradient(x)))) <= 1e-12
    # the partial x-gradient at fixed z is not the total derivative; the total one vanishes
    assert float(to_host(xp.linalg.vector_norm(gx))) > 1e-6


def test_minimax_quadratic_saddle_is_min_max(mmq, asxp, rng):
    """Φ(x*) <= Φ(x) for nearby x, and F(x*, y) <= F(x*, y*) for nearby y."""
    x, y, z = mmq.saddle()
    blocks = mmq.all_blocks()
    phi = float(to_host(mmq.value(x)))
    fxy = float(to_host(mmq.f(x, y, z, blocks)))
    for _ in range(5):
        dx = asxp(1e-2 * rng.standard_normal(mmq.dim_x))
        dy = asxp(1e-2 * rng.standard_normal(mmq.dim_y))
        assert float(to_host(mmq.value(x + dx))) >= phi - 1e-13
        assert float(to_host(mmq.f(x, y + dy, z, blocks))) <= fxy + 1e-13


@pytest.mark.parametrize("lam", [1.0, 100.0, 1e4])
def test_minimax_quadratic_penalty_saddle(mmq, lam):
    """First-order conditions of the penalty problem; → the true saddle as λ grows."""
    xp = mmq.xp
    x, y, z, v = mmq.penalty_saddle(lam)
    blocks = mmq.all_blocks()
    fx, fy, fz = mmq.grad_f(x, y, z, blocks)
    gx_z, gz_z = mmq.grad_g(x, z, blocks)
    gx_v, gz_v = mmq.grad_g(x, v, blocks)

    def norm(a):
        return float(to_host(xp.linalg.vector_norm(xp.reshape(a, (-1,)))))

    tol = 1e-10 * (1 + lam)
    assert norm(fz + lam * gz_z) <= tol
    assert norm(gz_v) <= tol
    assert norm(fy) <= tol
    assert norm(fx + lam * (gx_z - gx_v)) <= tol
    xs = mmq.saddle()[0]
    assert norm(x - xs) <= 20.0 / lam


def test_minimax_penalty_error_decays_like_one_over_lambda(mmq):
    xs = to_host(mmq.saddle()[0])
    errs = [lam * np.linalg.norm(to_host(mmq.penalty_saddle(lam)[0]) - xs) for lam in (1e2, 1e3, 1e4)]
    assert abs(errs[2] - errs[1]) <= 0.05 * errs[2]


def test_float32_stays_float32(xp, device):
    q = Quadratic.random(3, 4, seed=0, xp=xp, dtype="float32", device=device)
    x = q.init_x()
    y = q.init_y()
    for out in (*q.grad_f(x, y), *q.grad_g(x, y), q.hvp_g(x, y, y), q.cross_g(x, y, y),
                q.f(x, y), q.g(x, y), q.inner_solution(x), q.hypergradient(x)):
        assert out.dtype == xp.float32


def test_same_seed_same_data_on_every_backend(quad):
    d = _np_data()
    for k in "HBcAaRr":
        np.testing.assert_array_equal(to_host(getattr(quad, k)), d[k])


def test_constructor_rejects_bad_input(xp, device):
    q = Quadratic.random(2, 3, seed=0, xp=xp, device=device)
    args = [q.H, q.B, q.c, q.A, q.a, q.R, q.r]
    with pytest.raises(ValueError, match="B"):
        Quadratic(q.H, q.B[:2, :], q.c, q.A, q.a, q.R, q.r)
    with pytest.raises(ValueError, match="c"):
        Quadratic(q.H, q.B, q.c[:2], q.A, q.a, q.R, q.r)
    bad = list(args)
    bad[2] = xp.asarray([1, 2, 3], device=device)
    with pytest.raises(TypeError, match="c"):
        Quadratic(*bad)
    bad = list(args)
    bad[4] = q.a * float("nan")
    with pytest.raises(ValueError, match="a"):
        Quadratic(*bad)
    with pytest.raises(ValueError, match="lam"):
        q.penalty_solution(0.0)
    with pytest.raises(ValueError, match="a must be nonzero"):
        toy_1d(0.0, 1.0, -1.0, 1.0)


def test_minimax_default_stacked_grad_g_equals_one_point_calls(mmq, asxp, rng):
    """The base class's looping ``grad_g_many`` (MinimaxQuadratic does not override it)."""
    from refbilevel.checks import relative_error

    x = asxp(rng.standard_normal(mmq.dim_x))
    blocks = asxp(np.array([3, 1]))
    Zs = asxp(rng.standard_normal((2, 2, mmq.dim_z)))
    gxs, gzs = mmq.grad_g_many(x, Zs, blocks)
    for j in range(2):
        gx, gz = mmq.grad_g(x, Zs[j, ...], blocks)
        assert relative_error(gxs[j, ...], gx) <= 1e-15
        assert relative_error(gzs[j, ...], gz) <= 1e-15
