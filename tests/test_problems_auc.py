"""MultiTaskAUC: every oracle vs finite differences, exact oracles, validation."""

import numpy as np
import pytest
from _problem_oracles import JAX_SLOW

from refbilevel._backend import device as dev_of, to_host, to_host_scalar
from refbilevel.checks import relative_error
from refbilevel.datasets import make_multitask_auc, multitask_auc_data
from refbilevel.problems import Batch, MultiTaskAUC

#: Runs on PyTorch by default, and on JAX except the tests marked JAX_SLOW
#: (tests/conftest.py, tests/_problem_oracles.py).
pytestmark = pytest.mark.eager_libraries

EPS = 1e-6
RTOL = 1e-7


def _problem(backend, dtype="float64", **kw):
    kw = {"rank": 3, **kw}
    return make_multitask_auc(n_tasks=3, n_train=10, n_val=8, n_features=4, pos_ratio=0.3,
                              seed=3, xp=backend.xp, device=backend.device, dtype=dtype, **kw)


def _fd(fun, p, u, eps=EPS):
    return (to_host_scalar(fun(p + eps * u)) - to_host_scalar(fun(p - eps * u))) / (2 * eps)


def _check(fd, exact, rtol=RTOL):
    assert abs(fd - exact) <= rtol * max(abs(exact), 1e-2), (fd, exact)


def _point(P, backend, rng):
    x = P.init_x() + backend.asarray(0.2 * rng.standard_normal(P.dim_x))
    y = backend.asarray(rng.random(P.dim_y) + 0.3)
    blocks = backend.asarray(np.array([2, 0]))
    z = backend.asarray(rng.standard_normal((2, P.dim_z)))
    return x, y, z, blocks


def _dot(a, u):
    return float(np.sum(to_host(a) * to_host(u)))


@pytest.mark.parametrize("options", [{}, {"version": "v2", "score": "linear",
                                          "nonnegative_alpha": False},
                                     {"lower": "anchored", "rank": None}])
def test_grad_f_and_grad_g_vs_fd(backend, rng, options):
    P = _problem(backend, **options)
    x, y, z, bl = _point(P, backend, rng)
    asx = backend.asarray
    gx, gy, gz = P.grad_f(x, y, z, bl)
    u = asx(rng.standard_normal(P.dim_x))
    _check(_fd(lambda t: P.f(t, y, z, bl), x, u), _dot(gx, u))
    w = asx(rng.standard_normal(P.dim_y))
    _check(_fd(lambda t: P.f(x, t, z, bl), y, w), _dot(gy, w))
    for j in range(2):   # per-block gradient: FD of the single-block function
        v = asx(rng.standard_normal((1, P.dim_z)))
        bj = bl[j:j + 1]
        _check(_fd(lambda t: P.f(x, y, t, bj), z[j:j + 1, :], v), _dot(gz[j:j + 1, :], v))
    hx, hz = P.grad_g(x, z, bl)
    _check(_fd(lambda t: P.g(t, z, bl), x, u), _dot(hx, u))
    for j in range(2):
        v = asx(rng.standard_normal((1, P.dim_z)))
        bj = bl[j:j + 1]
        _check(_fd(lambda t: P.g(x, t, bj), z[j:j + 1, :], v), _dot(hz[j:j + 1, :], v))


@pytest.mark.parametrize("lower", ["head", "anchored"])
def test_hvp_and_cross_vs_fd(backend, rng, lower):
    P = _problem(backend, lower=lower, rank=3 if lower == "head" else None)
    x, _, z, bl = _point(P, backend, rng)
    asx = backend.asarray
    V = asx(rng.standard_normal((2, P.dim_z)))
    fd = (to_host(P.grad_g(x, z + EPS * V, bl)[1]) - to_host(P.grad_g(x, z - EPS * V, bl)[1])) / (2 * EPS)
    hv = to_host(P.hvp_g(x, z, V, bl))
    assert np.abs(fd - hv).max() <= RTOL * np.abs(hv).max()
    W = asx(rng.standard_normal((2, P.dim_z)))   # symmetry <W, H V> = <H W, V>
    assert _dot(P.hvp_g(x, z, V, bl), W) == pytest.approx(_dot(P.hvp_g(x, z, W, bl), V), rel=1e-12)
    u = asx(rng.standard_normal(P.dim_x))
    mean_pair = lambda t: P.xp.sum(P.grad_g(t, z, bl)[1] * V) / 2   # noqa: E731
    _check(_fd(mean_pair, x, u), _dot(P.cross_g(x, z, V, bl), u))


@JAX_SLOW
def test_batch_equals_sliced_problem(backend, rng):
    s = multitask_auc_data(3, 10, 8, 4, pos_ratio=0.3, seed=3)
    rows_in, rows_out = np.array([0, 3, 4, 9]), np.array([1, 2, 5, 7])
    P = _problem(backend)
    prior = s.y_val.mean(axis=1)
    sliced = MultiTaskAUC(*(backend.asarray(a) for a in (s.A_train[:, rows_in], s.y_train[:, rows_in],
                                                         s.A_val[:, rows_out], s.y_val[:, rows_out])),
                          rank=3, prior=backend.asarray(prior))
    x, y, z, bl = _point(P, backend, rng)
    batch = Batch(outer=backend.asarray(rows_out), inner=backend.asarray(rows_in))
    for a, b in zip([P.f(x, y, z, bl, batch), P.g(x, z, bl, batch), *P.grad_f(x, y, z, bl, batch),
                     *P.grad_g(x, z, bl, batch)],
                    [sliced.f(x, y, z, bl), sliced.g(x, z, bl), *sliced.grad_f(x, y, z, bl),
                     *sliced.grad_g(x, z, bl)]):
        np.testing.assert_allclose(to_host(a), to_host(b), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("options", [{}, {"score": "linear", "nonnegative_alpha": False},
                                     {"lower": "anchored", "rank": None, "version": "v2"}])
@JAX_SLOW
def test_inner_solution_and_saddle_gradient(backend, rng, options):
    P = _problem(backend, **options)
    x = P.init_x() + backend.asarray(0.2 * rng.standard_normal(P.dim_x))
    z = P.inner_solution(x)
    assert tuple(z.shape) == (P.n_blocks, P.dim_z)
    assert np.abs(to_host(P.grad_g(x, z, P.all_blocks())[1])).max() <= 1e-12
    alpha = P.alpha_star(x, z)
    gy = to_host(P.grad_f(x, alpha, z, P.all_blocks())[1])
    free = to_host(alpha) > 0
    assert np.abs(gy[free]).max(initial=0.0) <= 1e-12
    g = P.saddle_gradient(x)
    for _ in range(2):
        u = backend.asarray(rng.standard_normal(P.dim_x))
        _check(_fd(P.value, x, u, eps=1e-5), _dot(g, u))


@JAX_SLOW
def test_float32_extreme_logits_finite(backend, rng):
    P = _problem(backend, dtype="float32")
    x = P.init_x() * 1e3
    z = backend.asarray(np.full((3, P.dim_z), 10.0), "float32")
    y = backend.asarray(np.ones(3), "float32")
    bl = P.all_blocks()
    outs = [P.f(x, y, z, bl), P.g(x, z, bl), *P.grad_f(x, y, z, bl), *P.grad_g(x, z, bl),
            P.hvp_g(x, z, z, bl)]
    for o in outs:
        assert o.dtype == backend.xp.float32 and dev_of(o) == dev_of(x)
        assert np.all(np.isfinite(to_host(o)))


@JAX_SLOW
def test_dtype_device_preserved(backend, rng):
    P = _problem(backend)
    x = P.init_x()
    for o in (P.inner_solution(x), P.saddle_gradient(x), P.value(x)):
        assert o.dtype == backend.xp.float64 and dev_of(o) == dev_of(x)


def test_bad_inputs(rng):
    s = multitask_auc_data(2, 6, 6, 3, seed=0)
    args = (s.A_train, s.y_train, s.A_val, s.y_val)
    with pytest.raises(ValueError, match="mu"):
        MultiTaskAUC(*args, mu=0.0)
    with pytest.raises(ValueError, match="version"):
        MultiTaskAUC(*args, version="v9")
    with pytest.raises(ValueError, match="score"):
        MultiTaskAUC(*args, score="tanh")
    with pytest.raises(ValueError, match="y_train"):
        MultiTaskAUC(s.A_train, 2 * s.y_train, s.A_val, s.y_val)
    with pytest.raises(ValueError, match="A_train"):
        MultiTaskAUC(s.A_train[0], s.y_train, s.A_val, s.y_val)
    with pytest.raises(ValueError, match="prior"):
        MultiTaskAUC(s.A_train, s.y_train, s.A_val, np.zeros_like(s.y_val))
    with pytest.raises(TypeError, match="rank"):
        MultiTaskAUC(*args, rank=2.5)
    with pytest.raises(ValueError, match="rank"):
        MultiTaskAUC(*args, lower="anchored", rank=2)
    with pytest.raises(ValueError, match="lower"):
        MultiTaskAUC(*args, lower="copy")
    with pytest.raises(TypeError, match="A_val"):
        MultiTaskAUC(s.A_train, s.y_train, [[0.0]], s.y_val)


@pytest.mark.parametrize("lower", ["head", "anchored"])
@JAX_SLOW
def test_stacked_grad_g_equals_one_point_calls(backend, lower):
    """The one-pass ``grad_g_many`` equals ``grad_g`` at each point (to rounding)."""
    from refbilevel.datasets import make_multitask_auc

    problem = make_multitask_auc(seed=1, lower=lower, xp=backend.xp, device=backend.device)
    rng = np.random.default_rng(3)
    x = problem.init_x() + backend.asarray(0.1 * rng.standard_normal(problem.dim_x))
    blocks = backend.asarray(np.array([2, 0, 1]))
    Zs = backend.asarray(rng.standard_normal((2, 3, problem.dim_z)))
    gxs, gzs = problem.grad_g_many(x, Zs, blocks)
    for j in range(2):
        gx, gz = problem.grad_g(x, Zs[j, ...], blocks)
        assert relative_error(gxs[j, ...], gx) <= 1e-13
        assert relative_error(gzs[j, ...], gz) <= 1e-13
    # the z-only oracles (MemCS's inner steps) equal the z-parts of the full ones
    assert relative_error(problem.grad_g_z_many(x, Zs, blocks), gzs) <= 1e-15
    y = problem.init_y() + 0.3
    assert relative_error(problem.grad_f_z(x, y, Zs[0, ...], blocks),
                          problem.grad_f(x, y, Zs[0, ...], blocks)[2]) <= 1e-15


def test_lower_selects_the_lower_level_class():
    """``MultiTaskAUC(..., lower=...)`` builds the subclass of that lower level; the subclasses
    build themselves, accept their own ``lower`` and reject the other; copies keep the class."""
    import copy

    from refbilevel.problems import MultiTaskAUCAnchored, MultiTaskAUCHead

    s = multitask_auc_data(2, 6, 6, 3, seed=0)
    args = (s.A_train, s.y_train, s.A_val, s.y_val)
    for lower, cls in (("head", MultiTaskAUCHead), ("anchored", MultiTaskAUCAnchored)):
        P = MultiTaskAUC(*args, lower=lower)
        assert type(P) is cls and isinstance(P, MultiTaskAUC)
        assert P.lower == lower and P.describe()["lower"] == lower
        assert type(cls(*args)) is cls and type(cls(*args, lower=lower)) is cls
        other = "anchored" if lower == "head" else "head"
        with pytest.raises(ValueError, match="lower"):
            cls(*args, lower=other)
        Q = copy.copy(P)      # re-created through __new__ without arguments
        assert type(Q) is cls
        x = P.init_x() + 0.1
        assert np.array_equal(Q.inner_solution(x), P.inner_solution(x))
    assert type(MultiTaskAUC(*args)) is MultiTaskAUCHead     # the default lower level
    assert MultiTaskAUC(*args, rank=2).dim_x == 3 * 2 + 2 * 2
    assert MultiTaskAUC(*args, lower="anchored").dim_x == 3 + 2 * 2


@pytest.mark.parametrize("cls_name", ["MultiTaskAUCHead", "MultiTaskAUCAnchored",
                                      "RankedMetaLearning"])
def test_minimax_problems_implement_every_declared_oracle(cls_name):
    """Every oracle the minimax-bilevel protocol declares (raising NotImplementedError there)
    is implemented by each concrete problem."""
    import inspect

    import refbilevel.problems as problems
    from refbilevel.problems.base import MinimaxBilevelProblem

    declared = [name for name, fn in vars(MinimaxBilevelProblem).items()
                if inspect.isfunction(fn) and "raise NotImplementedError" in inspect.getsource(fn)]
    assert {"f", "g", "grad_f", "grad_g", "hvp_g", "cross_g", "inner_solution", "value",
            "saddle_gradient"} <= set(declared)
    cls = getattr(problems, cls_name)
    missing = [n for n in declared if getattr(cls, n) is getattr(MinimaxBilevelProblem, n)]
    assert not missing, missing
