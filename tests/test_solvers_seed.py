"""The seed algorithms (MinimaxOPT, F2SA, F2SA-Adam, FOSL, MemCS) against closed forms.

Oracles: the quadratic closed forms of refbilevel.problems.quadratic (x*, the penalty
saddle for a fixed multiplier, MinimaxOPT's Example 1), a second backend (numpy vs
array_api_strict trajectories), and the exact hypergradient of LogRegHPO.

Long runs (multi-stage schedules, partial participation, LogRegHPO budgets) run on NumPy
and CuPy only: array_api_strict costs ~100 µs per operation, and the cross-backend
trajectory tests below show it follows the NumPy trajectory to 1e-12. Of the
closed-form runs, one representative case per test runs on array_api_strict in the
default suite; the others run there with ``-m slow`` (``STRICT_SLOW``).
"""

import dataclasses

import numpy as np
import pytest

from refbilevel._backend import backend_namespace, is_array, to_host
from refbilevel.problems.logreg import LogRegHPO
from refbilevel.problems.quadratic import MinimaxQuadratic, Quadratic, toy_1d
from refbilevel.run import run
from refbilevel.solvers import F2SA, FOSL, F2SAAdam, MemCS, MinimaxOPT, MinimaxOPTStochastic

STRICT = ("array_api_strict",)
SLOW_REASON = "long run: array_api_strict is ~100x slower; backend agreement is tested below"
#: A further closed-form case of a test whose representative case runs on array_api_strict:
#: there it runs with ``-m slow`` (test_same_seed_same_trajectory checks the agreement).
STRICT_SLOW = pytest.mark.slow_xp_backends(*STRICT, reason=SLOW_REASON)


def _host(a):
    return to_host(a) if is_array(a) else np.asarray(a, dtype=np.float64)


def _err(a, b):
    return float(np.max(np.abs(_host(a) - _host(b))))


def _quadratic(xp=None, device=None, cond=2.0):
    return Quadratic.random(3, 4, seed=0, cond=cond, ridge=1.0, xp=xp, device=device)


def _minimax(xp=None, device=None):
    return MinimaxQuadratic.random(4, 2, 2, 3, seed=1, cond=2.0, xp=xp, device=device)


# ------------------------------------------------------ fixed multiplier: penalty saddle
FIXED = 10.0


@pytest.mark.parametrize("solver, n_iter", [
    (MinimaxOPT(lr=0.05, lam0=FIXED, tau=1.0), 500),
    pytest.param(F2SA(lr_y=0.05, lr_z=0.5, lam0=FIXED, delta=0.0, schedule="constant",
                      n_inner=3), 400, marks=STRICT_SLOW),
    # eps = 1: near the fixed point Adam's step is ~ lr*m/eps (with eps = 1e-8 the reset
    # y/z states make the first inner step sign-like, of size lr, and the error stalls at O(lr))
    pytest.param(F2SAAdam(lr_y=0.05, lr_z=0.5, xi=2.0, lam0=FIXED, delta=0.0, n_inner=3,
                          eps=1.0), 400, marks=STRICT_SLOW),
], ids=["minimaxopt", "f2sa", "f2sa_adam"])
def test_fixed_multiplier_reaches_penalty_saddle(xp, device, solver, n_iter):
    P = _quadratic(xp, device)
    r = run(P, solver, n_iter=n_iter, record_every=n_iter, metrics=())
    assert r.state.multiplier == FIXED
    x_l, y_l, z_l = P.penalty_solution(FIXED)
    assert _err(r.x, x_l) < 1e-8
    assert _err(r.y, y_l) < 1e-8
    assert _err(r.state.z, z_l) < 1e-8
    # the penalty saddle is not the bilevel solution: O(1/λ) away (the test can tell them apart)
    assert _err(x_l, P.solution()) > 1e-4


# ---------------------------------------------------- increasing multiplier: x -> x*
@pytest.mark.skip_xp_backends(*STRICT, reason=SLOW_REASON)
@pytest.mark.parametrize("solver, n_iter, factor", [
    (MinimaxOPT(lr=0.1, lam0=0.5, tau=2.0, steps_per_stage=500, n_stages=8), 4000, 3.5),
    (F2SA(schedule="paper", lr_y=0.02, lr_z=0.1, lam0=5.0, xi=10.0, n_inner=5), 3000, 1.5),
    (F2SAAdam(schedule="paper", lr_y=0.05, lr_z=0.1, lam0=5.0, xi=2.0, n_inner=5), 3000, 1.5),
], ids=["minimaxopt", "f2sa", "f2sa_adam"])
def test_increasing_multiplier_reaches_x_star(xp, device, solver, n_iter, factor):
    P = _quadratic(xp, device, cond=5.0)
    r = run(P, solver, n_iter=n_iter, record_every=n_iter, metrics=())
    lam = r.state.multiplier
    assert lam > solver.lam0 if isinstance(solver, MinimaxOPT) else lam > solver.lam0
    x_star = P.solution()
    gap = _err(P.penalty_solution(lam)[0], x_star)       # ‖x_λ − x*‖ = O(1/λ), closed form
    assert _err(r.x, x_star) <= factor * gap
    assert _err(r.x, x_star) < 0.1 * _err(P.init_x(), x_star)


def test_minimaxopt_schedule_bookkeeping():
    s = MinimaxOPT(lam0=0.5, tau=2.0, steps_per_stage=3, n_stages=2, lr_schedule="cosine",
                   lr_min=0.01, lr=0.1)
    assert [s.alpha(i) for i in range(3)] == [1.0, 2.0, 4.0]
    post = dataclasses.replace(s, alpha_update="post")
    assert [post.alpha(i) for i in range(3)] == [0.5, 1.0, 2.0]
    # τ^{-i} × cosine over N·K = 6 steps, relative to lr
    t = 4
    cos = (0.01 + 0.09 * 0.5 * (1 + np.cos(np.pi * t / 6))) / 0.1
    assert s.step_scale(t) == pytest.approx(0.5 * cos, rel=1e-14)
    # α_i τ^{-i} is constant across stages (the property of §1.2)
    assert len({s.alpha(t // 3) * 2.0 ** -(t // 3) for t in range(9)}) == 1


def test_f2sa_schedules():
    b = F2SA(lr_y=0.1, lr_z=0.2, xi=0.5, lam0=1.0, delta=0.3, schedule="benchopt")
    k = 9
    a, g, e = b.steps(k)
    assert (a, g, e) == pytest.approx((0.1 / 10 ** (5 / 7), 0.2 / 10 ** (4 / 7),
                                       0.05 / 10 ** (4 / 7)), rel=1e-14)
    assert b.next_multiplier(2.0, k) == pytest.approx(2.0 + 0.3 / 10 ** (1 / 7), rel=1e-14)
    p = dataclasses.replace(b, schedule="paper")
    a, g, e = p.steps(k)
    assert e == pytest.approx(0.5 * a, rel=1e-15)
    lam = 1.0
    for j in range(20):
        lam = p.next_multiplier(lam, j)
    assert lam == pytest.approx(21 ** (1 / 7), rel=1e-13)     # λ_k = λ0 (k+1)^{5/7-4/7}
    c = dataclasses.replace(b, schedule="constant")
    assert c.steps(100) == (0.1, 0.2, 0.05) and c.next_multiplier(1.0, 50) == 1.3


# ------------------------------------------- toy_1d (docs/theory/quadratic.rst, toy_1d)
@pytest.mark.parametrize("a, b", [
    (2.0, 3.0), pytest.param(2.0, 1.0, marks=STRICT_SLOW),
    pytest.param(-1.5, 4.0, marks=pytest.mark.skip_xp_backends(*STRICT, reason=SLOW_REASON)),
], ids=["outside", "inside", "outside-neg"])
def test_minimaxopt_toy_1d(xp, device, a, b):
    # docs/algorithms/minimaxopt.rst runs N = 10 stages of K = 200 steps; K = 100 suffices for 1e-8 here
    P = toy_1d(a, b, -1.0, 1.0, xp=xp, device=device)
    s = MinimaxOPT(lr=0.1, lam0=1.0, tau=2.0, steps_per_stage=100, n_stages=10)
    r = run(P, s, n_iter=1000, record_every=1000, metrics=())
    alpha = s.alpha(9)                                   # the last stage's multiplier
    assert alpha == 1024.0
    x_star = min(max(b / a, -1.0), 1.0)
    y_alpha = (b + alpha * a * x_star) / (1 + alpha)
    assert _err(r.x, [x_star]) < 1e-8
    assert _err(r.state.z, [a * x_star]) < 1e-8          # z = y*
    assert _err(r.y, [y_alpha]) < 1e-8                   # y = (b + α a x*)/(1 + α)
    if -1.0 <= b / a <= 1.0:
        assert _err(r.y, [b]) < 1e-8                     # exact for every α
    else:
        assert _err(r.y, [a * x_star]) > 1e-4            # biased by |b − a x*|/(1+α)


# ------------------------------------------------------------ FOSL / MemCS (minimax)
def _fosl(lam):
    return FOSL(lam0=lam, lr_x=0.05, lr_y=0.1, lr_z=0.4 / lam, lr_v=0.4)


def _memcs(lam, **kw):
    kw = {"lr_x": 0.2, "lr_y": 0.3, "n_inner": 20, "lr_z": 0.6 / lam, "lr_v": 0.6, **kw}
    return MemCS(lam0=lam, **kw)


@pytest.mark.parametrize("lam", [10.0, pytest.param(100.0, marks=STRICT_SLOW)])
def test_fosl_penalty_saddle_and_true_saddle(xp, device, lam):
    P = _minimax(xp, device)
    r = run(P, _fosl(lam), n_iter=500, record_every=500, metrics=())
    x_l, y_l, z_l, v_l = P.penalty_saddle(lam)
    for got, want in ((r.x, x_l), (r.y, y_l), (r.state.z, z_l), (r.state.v, v_l)):
        assert _err(got, want) < 1e-8
    x_s, y_s, _ = P.saddle()
    gap = _err(x_l, x_s)
    assert 0.1 < gap * lam < 0.5                            # O(1/λ) on this instance
    assert _err(r.x, x_s) < 1.01 * gap


@STRICT_SLOW     # 1600 inner steps; FOSL's saddle above is the representative on strict
@pytest.mark.parametrize("lam", [
    10.0, pytest.param(100.0, marks=pytest.mark.skip_xp_backends(*STRICT, reason=SLOW_REASON))])
def test_memcs_penalty_saddle_and_true_saddle(xp, device, lam):
    P = _minimax(xp, device)
    r = run(P, _memcs(lam), n_iter=80, record_every=80, metrics=())
    x_l, y_l, _, _ = P.penalty_saddle(lam)
    # bias of K = 20 cold-started inner steps (contraction <= 0.4 per step): ~1e-8
    assert _err(r.x, x_l) < 1e-7 and _err(r.y, y_l) < 1e-7
    x_s, _, _ = P.saddle()
    assert _err(r.x, x_s) < 1.01 * _err(x_l, x_s) + 1e-7


def test_true_saddle_error_shrinks_with_lambda():
    P = _minimax()
    x_s = P.saddle()[0]
    errs = [_err(run(P, _fosl(lam), n_iter=500, record_every=500, metrics=()).x, x_s)
            for lam in (10.0, 100.0, 1000.0)]
    assert errs[0] > 5 * errs[1] > 25 * errs[2]


@pytest.mark.skip_xp_backends(*STRICT, reason=SLOW_REASON)
@pytest.mark.parametrize("make, n_iter", [
    (lambda: FOSL(lam0=10.0, lr_x=0.002, lr_y=0.004, lr_z=0.04, lr_v=0.4, n_sampled=2), 2000),
    (lambda: _memcs(10.0, lr_x=0.01, lr_y=0.02, n_inner=10, n_sampled=2), 600),
], ids=["fosl", "memcs"])
def test_partial_participation_converges(xp, device, make, n_iter):
    P = _minimax(xp, device)
    x_l = P.penalty_saddle(10.0)[0]
    start = _err(P.init_x(), x_l)
    r = run(P, make(), n_iter=n_iter, record_every=n_iter, metrics=())
    # constant steps with sampled blocks: a noise ball around the saddle. Its radius over
    # the seeds 0, 1, 2 of the batch streams: 0.012-0.025 (FOSL), 0.021-0.045 (MemCS) of
    # the start error; a method that does not converge stays at O(1).
    assert _err(r.x, x_l) < 0.06 * start


def test_memcs_stores_only_sampled_blocks(xp, device):
    P = MinimaxQuadratic.random(5, 2, 2, 3, seed=0, xp=xp, device=device)
    s = MemCS(n_inner=2, n_sampled=2)
    state = s.init(P, None, None, np.random.default_rng(0))
    for _ in range(2):
        state = s.step(P, state)
        for f in dataclasses.fields(state):
            a = getattr(state, f.name)
            if is_array(a) and a.ndim >= 1:
                assert a.shape[0] != P.n_blocks, f.name      # nothing of shape (n, ...)
        assert tuple(state.last_z.shape) == (2, 3) and tuple(state.last_v.shape) == (2, 3)
        assert tuple(state.last_blocks.shape) == (2,)
    fosl = FOSL(n_sampled=2).init(P, None, None, np.random.default_rng(0))
    assert tuple(fosl.z.shape) == (5, 3)                     # FOSL stores all blocks


# --------------------------------------------------------- stochastic reproducibility
def _logreg_small(xp, device=None):
    return LogRegHPO.synthetic(n_samples=40, n_features=3, seed=0, xp=xp, device=device)


def _minimax_small(xp, device=None):
    return MinimaxQuadratic.random(5, 2, 2, 3, seed=0, xp=xp, device=device)


def _stochastic_cases():
    return [
        ("minimaxopt", _logreg_small,
         MinimaxOPTStochastic(lr=0.1, steps_per_stage=10, n_stages=3, batch_size_outer=6,
                              batch_size_inner=8)),
        ("f2sa", _logreg_small,
         F2SA(lr_y=0.1, n_inner=2, batch_size_outer=6, batch_size_inner=8)),
        ("f2sa_adam", _logreg_small,
         F2SAAdam(lr_y=0.05, n_inner=2, batch_size_outer=6, batch_size_inner=8,
                  sampling="iid")),
        ("fosl", _minimax_small,
         FOSL(n_sampled=2)),
        ("memcs", _minimax_small,
         MemCS(n_sampled=3, n_inner=3)),
    ]


@pytest.mark.parametrize("case", _stochastic_cases(), ids=lambda c: c[0])
def test_same_seed_same_trajectory(xp, device, case):
    _, make, solver = case
    np_xp = backend_namespace("numpy")
    P_np = make(np_xp)
    a = run(P_np, solver, n_iter=30, seed=11, record_every=10, metrics=("value",))
    b = run(P_np, solver, n_iter=30, seed=11, record_every=10, metrics=("value",))
    np.testing.assert_array_equal(to_host(a.x), to_host(b.x))          # bitwise
    np.testing.assert_array_equal(a.history["value"], b.history["value"])
    c = run(P_np, solver, n_iter=30, seed=12, record_every=10, metrics=("value",))
    assert not np.array_equal(to_host(a.x), to_host(c.x))              # the seed matters
    if xp is not np_xp:
        P = make(xp, device)
        d = run(P, solver, n_iter=30, seed=11, record_every=10, metrics=("value",))
        np.testing.assert_allclose(to_host(d.x), to_host(a.x), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(to_host(d.y), to_host(a.y), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(d.history["value"], a.history["value"], rtol=1e-12)


def _f2sa_two_sequences(solver, problem, state):
    """One F2SA step written as the algorithm states it: z and y as two sequences, each
    with its own optimiser state and scalar step size (the solver moves them as the rows
    of one stacked iterate)."""
    from refbilevel.oracle import as_oracle
    from refbilevel.problems.base import Batch

    problem = as_oracle(problem)
    xp = problem.xp
    x, y, z, k, lam = state.x, state.y, state.z, state.iteration, state.multiplier
    alpha, gamma, eta = solver.steps(k)
    opt, T = solver.optimizer, solver.n_inner
    draws = solver._draw(problem, state)
    opt_y, opt_z = opt.init(y), opt.init(z)
    for t in range(T):
        if draws is None:
            # the pair's gradients in one stacked call, as the solver makes them (the
            # stacked products round differently from single ones)
            gys = problem.grad_g_y_many(x, xp.stack([z, y]))
            h_gz, h_gy, h_fy = gys[0, ...], gys[1, ...], problem.grad_f_y(x, y)
        else:
            outs, ins = draws
            h_gz = problem.grad_g_y(x, z, Batch(inner=ins[2 * t]))
            h_fy = problem.grad_f_y(x, y, Batch(outer=outs[t]))
            h_gy = problem.grad_g_y(x, y, Batch(inner=ins[2 * t + 1]))
        step_z, opt_z = opt.update(h_gz, opt_z, gamma)
        step_y, opt_y = opt.update(h_fy + lam * h_gy, opt_y, alpha)
        z, y = z + step_z, y + step_y
    if draws is None:
        h_fx, h_gxy, h_gxz = problem.grad_f_x(x, y), problem.grad_g_x(x, y), problem.grad_g_x(x, z)
    else:
        outs, ins = draws
        h_fx = problem.grad_f_x(x, y, Batch(outer=outs[T]))
        h_gxy = problem.grad_g_x(x, y, Batch(inner=ins[2 * T]))
        h_gxz = problem.grad_g_x(x, z, Batch(inner=ins[2 * T + 1]))
    step_x, _ = opt.update(h_fx + lam * (h_gxy - h_gxz), state.opt_x, eta)
    return x + step_x, y, z


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("solver", [
    F2SA(lr_y=0.1, lr_z=0.3, n_inner=3),
    F2SAAdam(lr_y=0.05, lr_z=0.2, n_inner=3),
    F2SAAdam(lr_y=0.05, lr_z=0.2, n_inner=2, adam_state="corrected", batch_size_outer=6,
             batch_size_inner=8),
    F2SA(lr_y=0.1, n_inner=2, batch_size_outer=6, batch_size_inner=8),
], ids=["f2sa", "f2sa_adam", "f2sa_adam-corrected-stochastic", "f2sa-stochastic"])
def test_f2sa_stacked_inner_iterate_is_two_sequences_bit_for_bit(solver, dtype):
    # Oracle: the step with z and y as separate sequences and optimisers (a stacked update
    # is elementwise, so every bit must agree), over three steps so that the x optimiser's
    # state and the multiplier carry over.
    P = LogRegHPO.synthetic(n_samples=40, n_features=3, seed=0, dtype=dtype)
    state = solver.init(P, None, None, seed=5)
    for _ in range(3):
        x, y, z = _f2sa_two_sequences(solver, P, state)
        state = solver.step(P, state)
        for got, want in ((state.x, x), (state.y, y), (state.z, z)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(to_host(got), to_host(want))


# ------------------------------------------------ expected decrease on LogRegHPO
@pytest.mark.skip_xp_backends(*STRICT, reason=SLOW_REASON)
@pytest.mark.parametrize("solver, n_iter", [
    (MinimaxOPTStochastic(lr=0.2, lam0=1.0, tau=2.0, steps_per_stage=100, n_stages=3,
                          batch_size_outer=10, batch_size_inner=10), 300),
    (F2SA(schedule="paper", lr_y=0.3, lam0=1.0, n_inner=3, xi=30.0, batch_size_outer=25,
          batch_size_inner=25), 600),
    (F2SAAdam(lr_y=0.05, lam0=2.0, delta=0.1, n_inner=2, xi=2.0, batch_size_outer=10,
              batch_size_inner=10), 300),
], ids=["minimaxopt", "f2sa", "f2sa_adam"])
def test_expected_hypergradient_decrease_logreg(xp, device, solver, n_iter):
    P = LogRegHPO.synthetic(n_samples=100, n_features=10, task="binary", seed=0, xp=xp,
                            device=device)
    finals = []
    for seed in range(3):
        r = run(P, solver, n_iter=n_iter, seed=seed, record_every=n_iter,
                metrics=("hypergradient_norm",))
        assert r.status == "max_iter"
        finals.append(r.history["hypergradient_norm"][-1])
    start = r.history["hypergradient_norm"][0]
    assert np.mean(finals) < 0.75 * start


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("make, exc", [
    (lambda: MinimaxOPT(lr=0.0), ValueError),
    (lambda: MinimaxOPT(lr_x=-1.0), ValueError),
    (lambda: MinimaxOPT(tau=0.5), ValueError),
    (lambda: MinimaxOPT(steps_per_stage=0), ValueError),
    (lambda: MinimaxOPT(steps_per_stage=2.5), TypeError),
    (lambda: MinimaxOPT(alpha_update="later"), ValueError),
    (lambda: MinimaxOPT(momentum=1.0), ValueError),
    (lambda: MinimaxOPT(x_bounds=(1.0, 0.0)), ValueError),
    (lambda: MinimaxOPT(batch_size_inner=0), ValueError),
    (lambda: F2SA(n_inner=0), ValueError),
    (lambda: F2SA(schedule="fast"), ValueError),
    (lambda: F2SA(lam0=0.0), ValueError),
    (lambda: F2SA(exponents=(1.0, 1.0)), TypeError),
    (lambda: F2SAAdam(beta2=1.0), ValueError),
    (lambda: F2SAAdam(bias_correction="yes"), TypeError),
    (lambda: FOSL(lr_z=0.0), ValueError),
    (lambda: FOSL(n_sampled=0), ValueError),
    (lambda: FOSL(gauss_seidel=1), TypeError),
    (lambda: MemCS(n_inner=0), ValueError),
    (lambda: MemCS(lam0=-1.0), ValueError),
])
def test_hyperparameter_validation(make, exc):
    with pytest.raises(exc):
        make()


def test_init_validates_start_point(xp, device, asxp):
    P = _quadratic(xp, device)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="x0"):
        MinimaxOPT().init(P, asxp(np.zeros(2)), None, rng)
    with pytest.raises(ValueError, match="n_sampled"):
        FOSL(n_sampled=9).init(_minimax(xp, device), None, None, rng)
