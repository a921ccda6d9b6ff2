"""Quadratic with an x–y coupling in f and x-terms in g (benchopt's benchmark_bilevel form),
and the symmetry checks of Quadratic and MinimaxQuadratic."""

import numpy as np
import pytest
from array_api_extra.testing import assert_close

from refbilevel import checks
from refbilevel._backend import to_host
from refbilevel.problems.quadratic import MinimaxQuadratic, Quadratic

DX, DY = 3, 5


def _spd_from_samples(rng, n_samples, dim, low, high, singular=False):
    """Mean of rank-one sample Gram matrices ``u uᵀ`` with population spectrum in [low, high]."""
    Q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spec = np.sqrt(np.geomspace(low, high, dim))
    if singular:
        spec[0] = 0.0
    U = rng.standard_normal((n_samples, dim)) @ (Q * spec) @ Q.T
    return U.T @ U / n_samples


def _benchopt_like(seed=0):
    """Full-batch matrices in benchopt's naming: q(y, x) = ½yᵀH_y y + ½xᵀH_x x + xᵀCy + l_yᵀy + l_xᵀx."""
    rng = np.random.default_rng(seed)
    inner = dict(hess_inner=_spd_from_samples(rng, 64, DY, 0.1, 1.0),
                 hess_outer=_spd_from_samples(rng, 64, DX, 0.1, 1.0, singular=True),
                 cross=0.3 * rng.standard_normal((DX, DY)),
                 linear_inner=rng.standard_normal(DY), linear_outer=rng.standard_normal(DX))
    outer = dict(hess_inner=_spd_from_samples(rng, 64, DY, 0.1, 1.0),
                 hess_outer=_spd_from_samples(rng, 64, DX, 0.5, 1.0),
                 cross=0.3 * rng.standard_normal((DX, DY)),
                 linear_inner=rng.standard_normal(DY), linear_outer=rng.standard_normal(DX))
    return inner, outer


def _make(asxp, inner, outer):
    return Quadratic.from_benchopt(
        asxp(inner["hess_inner"]), asxp(inner["hess_outer"]), asxp(inner["cross"]),
        asxp(inner["linear_inner"]), asxp(inner["linear_outer"]),
        asxp(outer["hess_inner"]), asxp(outer["hess_outer"]), asxp(outer["cross"]),
        asxp(outer["linear_inner"]), asxp(outer["linear_outer"]))


def _q(d, y, x):
    """benchopt's quadratic, evaluated from its definition."""
    return (0.5 * y @ d["hess_inner"] @ y + 0.5 * x @ d["hess_outer"] @ x + x @ d["cross"] @ y
            + d["linear_inner"] @ y + d["linear_outer"] @ x)


def _grads(d, y, x):
    """(∇_y q, ∇_x q) of :func:`_q` (symmetric Hessians)."""
    return (d["hess_inner"] @ y + d["cross"].T @ x + d["linear_inner"],
            d["hess_outer"] @ x + d["cross"] @ y + d["linear_outer"])


def _peer_hypergradient(inner, outer, x):
    """The benchmark's metric: y* from ∇_y g = 0, v = −H⁻¹∇_y f, ∇F = ∇_x f + C_in v."""
    y = np.linalg.solve(inner["hess_inner"], -inner["linear_inner"] - inner["cross"].T @ x)
    fy, fx = _grads(outer, y, x)
    v = -np.linalg.solve(inner["hess_inner"], fy)
    return y, fx + inner["cross"] @ v


@pytest.fixture
def coupled(asxp):
    inner, outer = _benchopt_like()
    return _make(asxp, inner, outer), inner, outer


def test_objectives_are_the_peer_quadratics(coupled, asxp, rng):
    P, inner, outer = coupled
    x, y = rng.standard_normal(DX), rng.standard_normal(DY)
    assert abs(float(to_host(P.g(asxp(x), asxp(y)))) - _q(inner, y, x)) <= 1e-13 * (1 + abs(_q(inner, y, x)))
    assert abs(float(to_host(P.f(asxp(x), asxp(y)))) - _q(outer, y, x)) <= 1e-13 * (1 + abs(_q(outer, y, x)))


def test_oracles_vs_finite_differences(coupled):
    table = checks.check_problem(coupled[0], n_points=2, seed=4)
    bad = {k: v for k, v in table.items() if not v <= 1e-7}
    assert not bad, bad


def test_inner_solution_and_hypergradient_vs_peer_formulas(coupled, asxp, rng):
    P, inner, outer = coupled
    for _ in range(3):
        x = rng.standard_normal(DX)
        y_ref, hg_ref = _peer_hypergradient(inner, outer, x)
        assert_close(P.inner_solution(asxp(x)), asxp(y_ref), rtol=1e-12)
        assert_close(P.hypergradient(asxp(x)), asxp(hg_ref), rtol=1e-12)


def test_solution_solves_the_affine_stationarity(coupled, asxp):
    """x* against the zero of ∇F assembled column by column from the peer metric (∇F is affine)."""
    P, inner, outer = coupled
    g0 = _peer_hypergradient(inner, outer, np.zeros(DX))[1]
    J = np.column_stack([_peer_hypergradient(inner, outer, np.eye(DX)[k])[1] - g0
                         for k in range(DX)])
    x_ref = np.linalg.solve(J, -g0)
    assert_close(P.solution(), asxp(x_ref), rtol=1e-10)


@pytest.mark.parametrize("lam", [1.0, 100.0, 1e4])
def test_penalty_solution_first_order_conditions(coupled, lam):
    """∇ of f(x, y) + λ(g(x, y) − g(x, z)) vanishes in x, y and z at the returned point."""
    P = coupled[0]
    xp = P.xp
    x, y, z = P.penalty_solution(lam)
    fx, fy = P.grad_f(x, y)
    gx_y, gy_y = P.grad_g(x, y)
    gx_z, gy_z = P.grad_g(x, z)
    scale = 1.0 + float(to_host(xp.linalg.vector_norm(fx))) + lam
    for residual in (fy + lam * gy_y, gy_z, fx + lam * (gx_y - gx_z)):
        assert float(to_host(xp.linalg.vector_norm(residual))) <= 1e-10 * scale


def test_penalty_solution_converges_like_one_over_lambda(coupled):
    P = coupled[0]
    xs = to_host(P.solution())
    scaled = [lam * np.linalg.norm(to_host(P.penalty_solution(lam)[0]) - xs)
              for lam in (1e2, 1e3, 1e4)]
    assert abs(scaled[-1] - scaled[-2]) <= 0.01 * scaled[-1]


def test_certificate_reports_the_spectrum_of_H(coupled):
    P, inner, _ = coupled
    hg, cert = P.hypergradient(P.init_x(), return_certificate=True)
    eig = np.linalg.eigvalsh(inner["hess_inner"])
    assert cert.ok and cert.relative_residual <= 1e-14
    assert abs(cert.min_curvature - eig[0]) <= 1e-12 and abs(cert.max_curvature - eig[-1]) <= 1e-12


# ------------------------------------------------------------------------- symmetry
def _plain(asxp, **override):
    q = Quadratic.random(DX, DY, seed=1)
    data = {k: to_host(getattr(q, k)) for k in "HBcAaRr"}
    data.update(override)
    return Quadratic(*(asxp(data[k]) for k in "HBcAaRr"))


@pytest.mark.parametrize("name", ["H", "A", "R"])
def test_nonsymmetric_matrix_is_refused(name, asxp, rng):
    q = Quadratic.random(DX, DY, seed=1)
    M = to_host(getattr(q, name))
    skew = rng.standard_normal(M.shape)
    bad = M + 0.05 * (skew - skew.T)
    with pytest.raises(ValueError, match=f"{name} must be symmetric"):
        _plain(asxp, **{name: bad})


def test_why_symmetry_is_required(rng):
    """With a non-symmetric H, H y − Bx − c is not the gradient of the evaluated g.

    The finite difference of ½yᵀHy − yᵀ(Bx + c) is ((H + Hᵀ)/2) y − Bx − c: the oracle the
    class would return is off by the antisymmetric part, which is why it is refused.
    """
    q = Quadratic.random(DX, DY, seed=1)
    H, B, c = (to_host(getattr(q, k)) for k in "HBc")
    skew = rng.standard_normal((DY, DY))
    Hn = H + 0.05 * (skew - skew.T)
    x, y, u = rng.standard_normal(DX), rng.standard_normal(DY), rng.standard_normal(DY)

    def g(t):
        return 0.5 * t @ Hn @ t - t @ (B @ x + c)

    fd = checks.directional_derivative(g, y, u)
    assert abs(fd - ((Hn + Hn.T) / 2 @ y - B @ x - c) @ u) <= 1e-9 * (1 + abs(fd))
    assert abs(fd - (Hn @ y - B @ x - c) @ u) > 1e-3


def test_rounding_level_asymmetry_is_accepted_and_oracles_match_fd(asxp, rng):
    """A product Q diag(λ) Qᵀ is symmetric only to rounding: accepted, and its oracles pass FD."""
    Q, _ = np.linalg.qr(rng.standard_normal((DY, DY)))
    H = (Q * np.geomspace(1.0, 50.0, DY)) @ Q.T
    assert 0.0 < np.linalg.norm(H - H.T) <= 1e-14 * np.linalg.norm(H)   # rounding only
    P = _plain(asxp, H=H)
    table = checks.check_problem(P, n_points=1, seed=2)
    assert max(table.values()) <= 1e-7, table


@pytest.mark.parametrize("name", ["H", "A", "Q", "R"])
def test_minimax_nonsymmetric_matrix_is_refused(name, asxp, rng):
    m = MinimaxQuadratic.random(3, 2, 2, 3, seed=0)
    data = {k: to_host(getattr(m, k)) for k in ("H", "B", "c", "A", "a", "E", "P", "Q", "q", "R", "r")}
    M = data[name].copy()
    if M.ndim == 3:
        M[1] = M[1] + 0.1 * np.triu(np.ones_like(M[1]), 1)
        where = f"{name}\\[1\\]"
    else:
        M = M + 0.1 * np.triu(np.ones_like(M), 1)
        where = name
    data[name] = M
    with pytest.raises(ValueError, match=f"{where} must be symmetric"):
        MinimaxQuadratic(**{k: asxp(v) for k, v in data.items()})
