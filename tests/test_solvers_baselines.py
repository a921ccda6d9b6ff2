"""Baseline solvers (AID, ITD, stocBiO, SOBA, BOME, V-PBGD, F2BA, exact implicit GD).

Independent oracles used here: closed forms of the quadratic problem (x*, the penalty
point x_λ, and the fixed points of truncated Neumann / unrolled hypergradients, rebuilt
from the host matrices with NumPy), the problems' exact hypergradients (IFT + CG to 1e-13),
central finite differences of the unrolled objective, a second backend (NumPy), and an
oracle-counting proxy problem.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from _documented_calls import documented_calls
from refbilevel._backend import backend_namespace, to_host, to_host_scalar
from refbilevel.oracle import Oracle
from refbilevel.problems.logreg import LogRegHPO
from refbilevel.problems.quadratic import Quadratic
from refbilevel.solvers import (AID, BOME, F2BA, ITD, SABA, SOBA, VPBGD, ImplicitGD, OracleCalls,
                                StocBiO)
from refbilevel.solvers.itd import reverse_hypergradient

# --------------------------------------------------------------------------- problems

DX, DY = 2, 3          # quadratic sizes (tiny: array_api_strict is slow)

#: The long convergence runs (hundreds of steps) on array_api_strict run with ``-m slow``:
#: there a step costs ~100x NumPy's, and test_same_trajectory_as_numpy checks on that
#: backend that every solver follows the NumPy trajectory; the shorter runs of the same
#: tests stay in the default suite on array_api_strict.
STRICT_SLOW = pytest.mark.slow_xp_backends(
    "array_api_strict", reason="long run; the NumPy trajectory agreement is tested")
N_LOG, D_LOG = 40, 4   # logistic HPO: 20 train / 20 validation rows, 4 features


def quadratic(xp, device, dtype="float64"):
    """H eigenvalues in [1, 5] (L_g = 5), R = I (so F is 1-strongly convex)."""
    return Quadratic.random(DX, DY, seed=3, cond=5.0, ridge=1.0, xp=xp, dtype=dtype,
                            device=device)


def logreg(xp, device, dtype="float64", n_features=D_LOG):
    return LogRegHPO.synthetic(n_samples=N_LOG, n_features=n_features, seed=0, xp=xp,
                               dtype=dtype, device=device)


@functools.cache
def quad_host():
    """Host float64 matrices of the quadratic instance and its constants."""
    P = quadratic(backend_namespace("numpy"), None)
    m = {k: to_host(getattr(P, k)) for k in ("H", "B", "c", "A", "a", "R", "r")}
    M = np.linalg.solve(m["H"], m["B"])
    ev = np.linalg.eigvalsh(m["R"] + M.T @ m["A"] @ M)
    m["lr_F"] = 2.0 / float(ev.min() + ev.max())   # optimal GD step on F (rate (κ-1)/(κ+1))
    m["L_g"] = float(np.linalg.eigvalsh(m["H"]).max())
    return m


def quad_fixed_point(N):
    """Stationary x of ``h(x) = Rx + r + Bᵀ N (A y*(x) + a)`` for an approximation N ≈ H⁻¹."""
    m = quad_host()
    H, B, c, A, a, R, r = (m[k] for k in ("H", "B", "c", "A", "a", "R", "r"))
    M, mu = np.linalg.solve(H, B), np.linalg.solve(H, c)
    return np.linalg.solve(R + B.T @ N @ A @ M, -(r + B.T @ N @ (A @ mu + a)))


def neumann_matrix(eta, Q):
    """η Σ_{q=0}^{Q} (I − ηH)^q (Q + 1 terms)."""
    H = quad_host()["H"]
    E = np.eye(H.shape[0]) - eta * H
    return eta * sum(np.linalg.matrix_power(E, q) for q in range(Q + 1))


def quad_unrolled_solution(eta, T):
    """Minimiser of x ↦ f(x, y_T(x)), y_T = T GD steps from y_0 = 0: y_T = N_{T-1}(Bx + c)."""
    m = quad_host()
    H, B, c, A, a, R, r = (m[k] for k in ("H", "B", "c", "A", "a", "R", "r"))
    N = neumann_matrix(eta, T - 1)
    G = N @ B
    return np.linalg.solve(R + G.T @ A @ G, -(r + G.T @ (A @ (N @ c) + a)))


def run_steps(solver, problem, n, *, x0=None, y0=None, seed=0, oracle=None):
    """``n`` steps through ``oracle`` (a counting :class:`Oracle`, new unless given)."""
    oracle = Oracle(problem) if oracle is None else oracle
    state = solver.init(problem, x0, y0, seed)
    for _ in range(n):
        state = solver.step(oracle, state)
    return state


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# --------------------------------------------------------- AID: exactness of CG at y*

@pytest.mark.parametrize("make", [quadratic, logreg], ids=["quadratic", "logreg"])
def test_aid_cg_dim_steps_at_ystar_is_exact(make, xp, device, asxp):
    P = make(xp, device)
    x = asxp(0.3 * np.random.default_rng(1).standard_normal(P.dim_x))
    y_star = P.inner_solution(x)
    exact = to_host(P.hypergradient(x))
    h, _ = AID(n_linear=P.dim_y, method="cg").hypergradient_estimate(P, x, y_star)
    assert rel_err(to_host(h), exact) <= 1e-10
    # one CG step fewer is not exact: the tolerance discriminates
    h1, _ = AID(n_linear=P.dim_y - 1, method="cg").hypergradient_estimate(P, x, y_star)
    assert rel_err(to_host(h1), exact) > 1e-8


def test_aid_cg_error_decreases_with_k_on_logreg(xp, device, asxp):
    P = logreg(xp, device)
    x = asxp(-0.5 + 0.3 * np.random.default_rng(2).standard_normal(P.dim_x))
    y_star = P.inner_solution(x)
    exact = to_host(P.hypergradient(x))
    errs = [rel_err(to_host(AID(n_linear=K).hypergradient_estimate(P, x, y_star)[0]), exact)
            for K in range(P.dim_y + 1)]
    assert all(e1 < e0 for e0, e1 in zip(errs, errs[1:])), errs
    assert errs[0] > 1e-2 and errs[-1] < 1e-10


def test_aid_neumann_converges_as_k_grows_for_eta_below_one_over_L(xp, device, asxp):
    P = logreg(xp, device)
    x = asxp(-0.5 + 0.3 * np.random.default_rng(2).standard_normal(P.dim_x))
    y_star = P.inner_solution(x)
    exact = to_host(P.hypergradient(x))
    # L from the dense inner Hessian, assembled on the host from HVP columns
    Hd = np.stack([to_host(P.hvp_g(x, y_star, asxp(e))) for e in np.eye(P.dim_y)])
    eta = 0.9 / float(np.linalg.eigvalsh(0.5 * (Hd + Hd.T)).max())
    errs = [rel_err(to_host(AID(n_linear=K, method="neumann", eta=eta)
                            .hypergradient_estimate(P, x, y_star)[0]), exact)
            for K in (2, 10, 40, 160)]
    assert all(e1 < e0 for e0, e1 in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-8
    # the CG and Neumann estimates agree in the limit
    h_cg, _ = AID(n_linear=P.dim_y).hypergradient_estimate(P, x, y_star)
    h_nm, _ = AID(n_linear=160, method="neumann", eta=eta).hypergradient_estimate(P, x, y_star)
    assert rel_err(to_host(h_nm), to_host(h_cg)) < 1e-8


# ----------------------------------------------------------------------------- ITD

def _unrolled_value(P, x, y0, lr, T):
    y = y0
    for _ in range(T):
        y = y - lr * P.grad_g_y(x, y)
    return to_host_scalar(P.f(x, y))


@pytest.mark.parametrize("make", [quadratic, logreg], ids=["quadratic", "logreg"])
def test_itd_full_reverse_equals_finite_differences_of_unrolled_objective(make, xp, device,
                                                                          asxp):
    P = make(xp, device)
    rng = np.random.default_rng(4)
    x_h = 0.3 * rng.standard_normal(P.dim_x)
    y0 = asxp(0.5 * rng.standard_normal(P.dim_y))
    lr, T = 0.15, 6
    h, _ = reverse_hypergradient(P, asxp(x_h), y0, lr=lr, n_steps=T, truncate=T)
    eps = 1e-5
    fd = np.array([(_unrolled_value(P, asxp(x_h + eps * e), y0, lr, T)
                    - _unrolled_value(P, asxp(x_h - eps * e), y0, lr, T)) / (2 * eps)
                   for e in np.eye(P.dim_x)])
    assert rel_err(to_host(h), fd) <= 1e-7
    # truncation changes the result (so the test above can fail)
    h_tr, _ = reverse_hypergradient(P, asxp(x_h), y0, lr=lr, n_steps=T, truncate=2)
    assert rel_err(to_host(h_tr), fd) > 1e-4


def test_itd_approaches_exact_hypergradient_as_t_grows(xp, device, asxp):
    P = logreg(xp, device)
    x = asxp(-0.5 + 0.3 * np.random.default_rng(5).standard_normal(P.dim_x))
    exact = to_host(P.hypergradient(x))
    y0 = P.init_y()
    errs = [rel_err(to_host(reverse_hypergradient(P, x, y0, lr=0.5, n_steps=T, truncate=T)[0]),
                    exact) for T in (3, 12, 48)]
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 1e-6


def test_itd_step_matches_reverse_hypergradient(xp, device, asxp):
    """A step with warm_start=False differentiates the unrolled map from the init point."""
    P = quadratic(xp, device)
    y0 = asxp(np.array([0.1, -0.2, 0.3]))
    solver = ITD(lr_outer=0.7, lr_inner=0.2, n_inner=5, warm_start=False)
    s1 = run_steps(solver, P, 1, y0=y0)
    h, yT = reverse_hypergradient(P, P.init_x(), y0, lr=0.2, n_steps=5, truncate=5)
    np.testing.assert_allclose(to_host(s1.x), -0.7 * to_host(h), rtol=1e-13, atol=1e-15)
    s2 = solver.step(P, s1)   # second step restarts from y0, not from y_T
    h2, _ = reverse_hypergradient(P, s1.x, y0, lr=0.2, n_steps=5, truncate=5)
    np.testing.assert_allclose(to_host(s2.x), to_host(s1.x - 0.7 * h2), rtol=1e-13, atol=1e-15)


# -------------------------------------------------------------------- stocBiO = AID

def test_stocbio_full_batch_equals_aid_neumann(xp, device):
    P = logreg(xp, device)
    D, Q, eta = 5, 4, 0.3
    o_sb, o_aid = Oracle(P), Oracle(P)
    s_sb = run_steps(StocBiO(lr_outer=2.0, lr_inner=0.4, n_inner=D, n_neumann=Q, eta=eta,
                             batch_size_outer=None, batch_size_inner=None), P, 4, oracle=o_sb)
    s_aid = run_steps(AID(lr_outer=2.0, lr_inner=0.4, n_inner=D, n_linear=Q, eta=eta,
                          method="neumann"), P, 4, oracle=o_aid)
    np.testing.assert_allclose(to_host(s_sb.x), to_host(s_aid.x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(to_host(s_sb.y), to_host(s_aid.y), rtol=1e-13, atol=1e-15)
    assert o_sb.calls == o_aid.calls
    # a different Q changes the trajectory (the comparison can fail)
    s_q = run_steps(StocBiO(lr_outer=2.0, lr_inner=0.4, n_inner=D, n_neumann=Q + 1, eta=eta,
                            batch_size_outer=None, batch_size_inner=None), P, 4)
    assert rel_err(to_host(s_q.x), to_host(s_aid.x)) > 1e-6


def test_stocbio_minibatch_is_seeded_and_differs_from_full_batch(xp, device):
    P = logreg(xp, device)
    mk = functools.partial(StocBiO, lr_outer=2.0, lr_inner=0.4, n_inner=3, n_neumann=3)
    a = run_steps(mk(batch_size_outer=5, batch_size_inner=5), P, 3, seed=7)
    b = run_steps(mk(batch_size_outer=5, batch_size_inner=5), P, 3, seed=7)
    c = run_steps(mk(batch_size_outer=None, batch_size_inner=None), P, 3, seed=7)
    np.testing.assert_array_equal(to_host(a.x), to_host(b.x))
    assert rel_err(to_host(a.x), to_host(c.x)) > 1e-6


# ------------------------------------------------------------ convergence: quadratic

def _quad_cases():
    """(id, solver factory taking the host constants, iterations, target, rtol)."""
    xstar = "xstar"
    return [
        ("implicit", lambda m: ImplicitGD(lr=m["lr_F"]), 100, xstar, 1e-9),
        ("aid-cg", lambda m: AID(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"], n_inner=10,
                                 n_linear=DY), 100, xstar, 1e-9),
        ("aid-cg-warm", lambda m: AID(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"],
                                      n_inner=10, n_linear=1, warm_start_v=True),
         100, xstar, 1e-8),
        ("aid-neumann", lambda m: AID(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"],
                                      n_inner=10, n_linear=3, method="neumann"),
         100, lambda m: quad_fixed_point(neumann_matrix(1 / m["L_g"], 3)), 1e-9),
        ("aid-fixed-point-warm", lambda m: AID(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"],
                                               n_inner=10, n_linear=3, method="neumann",
                                               warm_start_v=True), 100, xstar, 1e-8),
        ("itd", lambda m: ITD(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"], n_inner=8),
         100, lambda m: quad_fixed_point(neumann_matrix(1 / m["L_g"], 7)), 1e-9),
        ("itd-truncated", lambda m: ITD(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"],
                                        n_inner=8, truncate=3),
         100, lambda m: quad_fixed_point(neumann_matrix(1 / m["L_g"], 2)), 1e-9),
        ("itd-fixed-init", lambda m: ITD(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"],
                                         n_inner=8, warm_start=False),
         100, lambda m: quad_unrolled_solution(1 / m["L_g"], 8), 1e-9),
        ("stocbio-full", lambda m: StocBiO(lr_outer=m["lr_F"], lr_inner=1 / m["L_g"],
                                           n_inner=10, n_neumann=3, batch_size_outer=None,
                                           batch_size_inner=None),
         100, lambda m: quad_fixed_point(neumann_matrix(1 / m["L_g"], 3)), 1e-9),
        ("soba", lambda m: SOBA(lr_inner=1 / m["L_g"], lr_outer=0.2 * m["lr_F"],
                                batch_size_outer=None, batch_size_inner=None),
         1600, xstar, 1e-7),
        ("saba-full", lambda m: SABA(lr_inner=1 / m["L_g"], lr_outer=0.2 * m["lr_F"],
                                     batch_size_outer=None, batch_size_inner=None),
         1600, xstar, 1e-7),
        ("vpbgd", lambda m: VPBGD(lam=10.0, lr_outer=0.25 * m["lr_F"],
                                  lr_inner=0.1 / m["L_g"], lr_hat=1 / m["L_g"], n_inner=2,
                                  yhat_start="previous"), 550, "penalty10", 1e-7),
        ("vpbgd-normalized", lambda m: VPBGD(lam=10.0, lr_outer=0.25 * m["lr_F"],
                                             lr_inner=1 / m["L_g"], lr_hat=1 / m["L_g"],
                                             n_inner=2, yhat_start="previous",
                                             y_direction="normalized"),
         550, "penalty10", 1e-7),
        ("f2ba", lambda m: F2BA(lam=10.0, lr_inner=1 / m["L_g"], lr_outer=0.5 * m["lr_F"],
                                n_inner=5, z_start="previous"), 200, "penalty10", 1e-7),
        ("f2ba-reset", lambda m: F2BA(lam=10.0, lr_inner=1 / m["L_g"],
                                      lr_outer=0.5 * m["lr_F"], n_inner=20),
         100, "penalty10", 3e-3),
    ]


QUAD_CASES = _quad_cases()


#: over 100 steps: on array_api_strict with ``-m slow``
QUAD_STRICT_SLOW = {"soba", "saba-full", "vpbgd", "vpbgd-normalized", "f2ba"}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c[0], marks=STRICT_SLOW if c[0] in QUAD_STRICT_SLOW else ())
    for c in QUAD_CASES])
def test_converges_on_quadratic(case, xp, device):
    name, make_solver, n_iter, target, rtol = case
    m = quad_host()
    P = quadratic(xp, device)
    state = run_steps(make_solver(m), P, n_iter)
    xstar = to_host(P.solution())
    if target == "xstar":
        want = xstar
    elif target == "penalty10":
        want = to_host(P.penalty_solution(10.0)[0])
        assert rel_err(want, xstar) > 1e-2  # x_λ differs from x*: the target is specific
    else:
        want = target(m)
    assert rel_err(to_host(state.x), want) <= rtol, name
    assert np.all(np.isfinite(to_host(state.y)))


@pytest.mark.parametrize("phi", ["grad_norm", "value_gap"])
def test_bome_on_quadratic_approaches_xstar(phi, xp, device):
    """BOME has no closed-form fixed point (λ_k adapts, constant steps chatter): measured.

    Here it settles at a relative distance of about 0.08 (grad_norm, a fixed point reached
    within 100 steps) or 0.11 (value_gap, still drifting slowly) from x* (x0 = 0), and the
    exact hypergradient norm drops about 10x.
    """
    m = quad_host()
    P = quadratic(xp, device)
    solver = BOME(lr_inner=1 / m["L_g"], lr_outer=0.5 * m["lr_F"], n_inner=10, phi=phi)
    state = run_steps(solver, P, 150)
    xstar = to_host(P.solution())
    d0 = np.linalg.norm(xstar)
    g0 = np.linalg.norm(to_host(P.hypergradient(P.init_x())))
    assert np.linalg.norm(to_host(state.x) - xstar) < 0.2 * d0
    assert np.linalg.norm(to_host(P.hypergradient(state.x))) < 0.2 * g0
    assert to_host_scalar(state.lam) >= 0.0


def test_penalty_reset_fixed_point_gap_decays_with_t(xp, device):
    """With ``z ← y`` each outer step, the fixed point misses x_λ by a gap geometric in T."""
    m = quad_host()
    P = quadratic(xp, device)
    want = to_host(P.penalty_solution(10.0)[0])
    errs = [rel_err(to_host(run_steps(F2BA(lam=10.0, lr_inner=1 / m["L_g"],
                                           lr_outer=0.5 * m["lr_F"], n_inner=T), P, 60).x),
                    want) for T in (5, 15)]
    assert errs[0] > 1e-2 and errs[1] < errs[0] / 8, errs


# ---------------------------------------------------------- logistic HPO: progress

LOGREG_CASES = [
    ("implicit", ImplicitGD(lr=10.0), 10),
    ("aid-cg", AID(lr_outer=5.0, lr_inner=0.5, n_inner=10, n_linear=4), 20),
    ("aid-neumann", AID(lr_outer=5.0, lr_inner=0.5, n_inner=10, n_linear=4, method="neumann"),
     40),
    ("itd", ITD(lr_outer=5.0, lr_inner=0.5, n_inner=10), 40),
    ("stocbio", StocBiO(lr_outer=5.0, lr_inner=0.5, n_inner=10, n_neumann=4,
                        batch_size_outer=10, batch_size_inner=10), 40),
    ("soba", SOBA(lr_outer=2.0, lr_inner=0.5, batch_size_outer=10, batch_size_inner=10), 150),
    ("bome", BOME(lr_outer=5.0, lr_inner=0.5, n_inner=10), 40),
    ("bome-value-gap", BOME(lr_outer=5.0, lr_inner=0.5, n_inner=10, phi="value_gap"), 40),
    ("vpbgd", VPBGD(lam=10.0, lr_outer=2.0, lr_inner=0.05, lr_hat=0.5, n_inner=10), 150),
    ("f2ba", F2BA(lam=10.0, lr_outer=2.0, lr_inner=0.5, n_inner=10), 60),
]


#: over 40 steps, or exact Newton inner solves: on array_api_strict with ``-m slow``
LOGREG_STRICT_SLOW = {"implicit", "soba", "vpbgd", "f2ba"}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c[0], marks=STRICT_SLOW if c[0] in LOGREG_STRICT_SLOW else ())
    for c in LOGREG_CASES])
def test_lowers_exact_hypergradient_norm_on_logreg(case, xp, device):
    name, solver, n_iter = case
    P = logreg(xp, device, n_features=8)
    x0 = P.init_x()
    g0 = np.linalg.norm(to_host(P.hypergradient(x0)))
    v0 = to_host_scalar(P.value(x0))
    state = run_steps(solver, P, n_iter)
    g1 = np.linalg.norm(to_host(P.hypergradient(state.x)))
    v1 = to_host_scalar(P.value(state.x))
    assert g1 < 0.8 * g0, (name, g0, g1)
    assert v1 < v0 - 0.05, (name, v0, v1)


# ------------------------------------------------------------------ oracle counting

COUNT_CASES = [
    ("aid-cg", AID(n_inner=3, n_linear=2, lr_inner=0.2, lr_outer=0.1)),
    ("aid-cg-warm", AID(n_inner=3, n_linear=2, lr_inner=0.2, lr_outer=0.1, warm_start_v=True)),
    ("aid-neumann", AID(n_inner=3, n_linear=2, lr_inner=0.2, lr_outer=0.1, method="neumann")),
    ("aid-neumann-warm", AID(n_inner=3, n_linear=2, lr_inner=0.2, lr_outer=0.1,
                             method="neumann", warm_start_v=True)),
    ("itd", ITD(n_inner=4, lr_inner=0.2, lr_outer=0.1)),
    ("itd-truncated", ITD(n_inner=4, truncate=2, lr_inner=0.2, lr_outer=0.1)),
    ("stocbio", StocBiO(n_inner=3, n_neumann=2, lr_inner=0.2, lr_outer=0.1,
                        batch_size_outer=4, batch_size_inner=4)),
    ("soba", SOBA(lr_inner=0.2, lr_outer=0.1, batch_size_outer=4, batch_size_inner=4)),
    ("soba-sqrt", SOBA(lr_inner=0.2, lr_outer=0.1, batch_size_outer=4, batch_size_inner=4,
                       lr_schedule="sqrt")),
    ("saba", SABA(lr_inner=0.2, lr_outer=0.1, batch_size_outer=4, batch_size_inner=4)),
    ("bome", BOME(n_inner=3, lr_inner=0.2, lr_outer=0.1)),
    ("bome-value-gap", BOME(n_inner=3, lr_inner=0.2, lr_outer=0.1, phi="value_gap")),
    ("vpbgd", VPBGD(n_inner=3)),
    ("f2ba", F2BA(n_inner=3, lr_inner=0.2, lr_outer=0.1)),
]


@pytest.mark.parametrize("make", [quadratic, logreg], ids=["quadratic", "logreg"])
@pytest.mark.parametrize("case", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_oracle_counts_documented_and_actual(case, make, xp, device):
    name, solver = case
    P = make(xp, device)
    oracle = Oracle(P)
    n = 3
    state = run_steps(solver, P, n, oracle=oracle)
    assert oracle.calls == n * documented_calls(solver, P), name
    assert state.iteration == n


def test_implicit_counts_nothing_and_keeps_y_at_ystar(xp, device):
    P = quadratic(xp, device)
    oracle = Oracle(P)
    state = run_steps(ImplicitGD(lr=0.1), P, 2, oracle=oracle)
    assert oracle.calls == OracleCalls() == documented_calls(ImplicitGD(), P)
    np.testing.assert_allclose(to_host(state.y), to_host(P.inner_solution(state.x)),
                               rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------ backends and dtypes

ALL_SOLVERS = [c[1] for c in COUNT_CASES] + [ImplicitGD(lr=0.1)]
ALL_IDS = [c[0] for c in COUNT_CASES] + ["implicit"]


@pytest.mark.eager_libraries
@pytest.mark.skip_xp_backends("numpy", reason="the NumPy run is the reference")
@pytest.mark.parametrize("solver", ALL_SOLVERS, ids=ALL_IDS)
def test_same_trajectory_as_numpy(solver, xp, device):
    # ImplicitGD's step is the problem's exact oracles: the quadratic keeps it fast
    make = quadratic if isinstance(solver, ImplicitGD) else logreg
    P = make(xp, device)
    P_np = make(backend_namespace("numpy"), None)
    a = run_steps(solver, P, 3, seed=11)
    b = run_steps(solver, P_np, 3, seed=11)
    np.testing.assert_allclose(to_host(a.x), to_host(b.x), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(to_host(a.y), to_host(b.y), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("solver", ALL_SOLVERS, ids=ALL_IDS)
def test_float32_in_float32_out(solver, xp, device):
    # ImplicitGD's exact oracles on LogRegHPO are a Newton solve: the quadratic keeps it fast
    make = quadratic if isinstance(solver, ImplicitGD) else logreg
    P = make(xp, device, dtype="float32")
    state = run_steps(solver, P, 2)
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if hasattr(v, "dtype") and hasattr(v, "shape"):
            assert v.dtype == xp.float32, f.name
            assert np.all(np.isfinite(to_host(v))), f.name
    assert state.x.device == P.init_x().device


# ---------------------------------------------------------------------- validation

@pytest.mark.parametrize("cls, kwargs, exc, word", [
    (AID, {"lr_outer": 0.0}, ValueError, "lr_outer"),
    (AID, {"n_linear": -1}, ValueError, "n_linear"),
    (AID, {"method": "lu"}, ValueError, "method"),
    (AID, {"eta": -1.0}, ValueError, "eta"),
    (AID, {"warm_start_v": 1}, TypeError, "warm_start_v"),
    (ITD, {"n_inner": 3, "truncate": 4}, ValueError, "truncate"),
    (ITD, {"truncate": 0}, ValueError, "truncate"),
    (StocBiO, {"batch_size_inner": 0}, ValueError, "batch_size_inner"),
    (StocBiO, {"n_neumann": 1.5}, TypeError, "n_neumann"),
    (SOBA, {"lr_inner": float("nan")}, ValueError, "lr_inner"),
    (BOME, {"phi": "other"}, ValueError, "phi"),
    (BOME, {"eps": -1.0}, ValueError, "eps"),
    (VPBGD, {"lam": 0.0}, ValueError, "lam"),
    (VPBGD, {"y_direction": "x"}, ValueError, "y_direction"),
    (VPBGD, {"yhat_start": "zero"}, ValueError, "yhat_start"),
    (F2BA, {"lam": "10"}, TypeError, "lam"),
    (F2BA, {"z_start": "zero"}, ValueError, "z_start"),
    (ImplicitGD, {"lr": -0.1}, ValueError, "lr"),
])
def test_bad_hyperparameters_are_rejected(cls, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        cls(**kwargs)


def test_bad_start_point_is_rejected(xp, device, asxp):
    P = quadratic(xp, device)
    with pytest.raises(ValueError, match="x0"):
        AID().init(P, asxp(np.zeros(DX + 1)), None, None)
    with pytest.raises(ValueError, match="y0"):
        ITD().init(P, None, asxp(np.full(DY, np.nan)), None)
    with pytest.raises(TypeError, match="x0"):
        BOME().init(P, asxp(np.zeros(DX), dtype="float32"), None, None)


def test_step_does_not_mutate_its_state(xp, device):
    for solver in ALL_SOLVERS:
        P = quadratic(xp, device) if isinstance(solver, ImplicitGD) else logreg(xp, device)
        s0 = solver.init(P, None, None, np.random.default_rng(0))
        x_before, y_before = to_host(s0.x).copy(), to_host(s0.y).copy()
        s1 = solver.step(P, s0)
        assert s1 is not s0 and s0.iteration == 0
        np.testing.assert_array_equal(to_host(s0.x), x_before)
        np.testing.assert_array_equal(to_host(s0.y), y_before)


# ------------------------------------------------------- MinimaxOPT paper comparison

@STRICT_SLOW
def test_minimaxopt_reaches_baselines_validation_loss_with_fewer_calls(xp, device):
    """MinimaxOPT paper, Figure 1 (synthetic logistic HPO), at small scale.

    Baselines with the Appendix D.1 settings (T = 100 inner GD steps, inner and outer
    step 1; K = 10 CG / fixed-point steps and K = 10 truncated reverse steps: ours, the
    paper does not fix them) run 10 outer steps. MinimaxOPT (lr 0.5, α0 = 1, τ = 2, 300
    steps per stage; ours) is given a quarter of the smallest baseline budget, counting
    every oracle call (HVPs and cross-derivatives included) as one pass over the data, and
    must reach a validation loss F(x) = f(x, y*(x)) at least as low as every baseline's
    final one.

    Measured with 20 baseline steps (n = 100, d = 10): MinimaxOPT needs 5.0-5.4 % of the
    baselines' calls (1.5-1.6 % with lr 1, τ = 1.5). The advantage is not robust to tuning
    the baselines' outer step: reverse ITD with outer step 30 reaches F = 0.3668 in 2400
    calls, which MinimaxOPT (lr 1, τ = 1.5) needs 1.47x as many calls to match, while
    AID-CG and fixed point diverge at outer step 10. Only the paper's setting is asserted.
    """
    P = LogRegHPO.synthetic(n_samples=100, n_features=10, seed=0, xp=xp, device=device)
    f0 = to_host_scalar(P.value(P.init_x()))
    T, K, n_outer = 100, 10, 10
    baselines = {
        "aid-cg": AID(lr_outer=1.0, lr_inner=1.0, n_inner=T, n_linear=K, method="cg"),
        "fixed-point": AID(lr_outer=1.0, lr_inner=1.0, n_inner=T, n_linear=K,
                           method="neumann"),
        "reverse": ITD(lr_outer=1.0, lr_inner=1.0, n_inner=T, truncate=K),
    }
    final, budget = {}, {}
    for name, solver in baselines.items():
        oracle = Oracle(P)
        state = run_steps(solver, P, n_outer, oracle=oracle)
        final[name] = to_host_scalar(P.value(state.x))
        budget[name] = oracle.calls.total
        assert final[name] < f0 - 0.01, name           # the baselines do make progress
    from refbilevel.solvers.minimaxopt import MinimaxOPT

    mmo = MinimaxOPT(lr=0.5, lam0=1.0, tau=2.0, steps_per_stage=300, n_stages=20)
    per_step = documented_calls(mmo, P).total
    n_mmo = min(budget.values()) // (4 * per_step)
    oracle = Oracle(P)
    state = run_steps(mmo, P, n_mmo, oracle=oracle)
    assert oracle.calls.total <= min(budget.values()) / 4
    f_mmo = to_host_scalar(P.value(state.x))
    for name in baselines:
        assert f_mmo <= final[name], (name, f_mmo, final[name])


# -------------------------------------------------------------- the shared run loop

@pytest.mark.parametrize("solver", [c[1] for c in COUNT_CASES], ids=[c[0] for c in COUNT_CASES])
def test_run_history_and_checkpoint_resume(solver, xp, device, tmp_path):
    """run() records the documented call counts, and a resumed run repeats the full one."""
    from refbilevel.run import run

    P = logreg(xp, device)
    full = run(P, solver, n_iter=8, seed=5, record_every=4, metrics=("value",))
    assert full.calls == 8 * documented_calls(solver, P)
    np.testing.assert_array_equal(full.history["iteration"], [0, 4, 8])
    path = str(tmp_path / "ckpt.npz")
    run(P, solver, n_iter=3, seed=5, record_every=4, metrics=("value",), checkpoint=path)
    resumed = run(P, solver, n_iter=8, seed=5, record_every=4, metrics=("value",),
                  checkpoint=path)
    np.testing.assert_allclose(to_host(resumed.x), to_host(full.x), rtol=1e-14, atol=0)
    np.testing.assert_allclose(to_host(resumed.y), to_host(full.y), rtol=1e-14, atol=0)
    assert resumed.calls == full.calls
