"""RankedMetaLearning: oracles vs finite differences, closed forms, ranked-range identity."""

import numpy as np
import pytest
from _problem_oracles import JAX_SLOW

from refbilevel._backend import device as dev_of, to_host, to_host_scalar
from refbilevel.datasets import make_meta_learning, meta_learning_data
from refbilevel.problems import RankedMetaLearning

#: Runs on PyTorch by default, and on JAX except the tests marked JAX_SLOW
#: (tests/conftest.py, tests/_problem_oracles.py).
pytestmark = pytest.mark.eager_libraries

EPS = 1e-6
RTOL = 1e-7


def _problem(backend, dtype="float64", **kw):
    kw = {"k": 4, "m": 1, "temperature": 0.5, **kw}
    return make_meta_learning(n_tasks=5, n_support=6, n_query=5, n_features=3, seed=2,
                              n_outlier_tasks=1, xp=backend.xp, device=backend.device,
                              dtype=dtype, **kw)


def _fd(fun, p, u, eps=EPS):
    return (to_host_scalar(fun(p + eps * u)) - to_host_scalar(fun(p - eps * u))) / (2 * eps)


def _check(fd, exact, rtol=RTOL):
    assert abs(fd - exact) <= rtol * max(abs(exact), 1e-2), (fd, exact)


def _dot(a, u):
    return float(np.sum(to_host(a) * to_host(u)))


CASES = [{"smoothing": "softplus"}, {"smoothing": "huber"},
         {"smoothing": "softplus", "loss": "logistic"}]


@pytest.mark.parametrize("options", CASES)
def test_oracles_vs_fd(backend, rng, options):
    P = _problem(backend, **options)
    asx = backend.asarray
    x = asx(0.3 * rng.standard_normal(P.dim_x))
    # lambda and lambda-hat inside the range of the task losses: no hinge saturation
    loss = to_host(P.task_losses(P.inner_solution(x), P.all_blocks()))
    x = P.xp.concat([x[:-1], asx(np.array([np.median(loss)]))])
    y = asx(np.array([np.median(loss) + 0.1]))
    bl = asx(np.array([3, 1, 4]))
    z = asx(np.stack([to_host(P.inner_solution(x))[i] for i in (3, 1, 4)])
            + 0.1 * rng.standard_normal((3, P.dim_z)))
    gx, gy, gz = P.grad_f(x, y, z, bl)
    u = asx(rng.standard_normal(P.dim_x))
    _check(_fd(lambda t: P.f(t, y, z, bl), x, u), _dot(gx, u))
    _check(_fd(lambda t: P.f(x, t, z, bl), y, asx(np.ones(1))), _dot(gy, np.ones(1)))
    hx, hz = P.grad_g(x, z, bl)
    _check(_fd(lambda t: P.g(t, z, bl), x, u), _dot(hx, u))
    for j in range(3):
        v = asx(rng.standard_normal((1, P.dim_z)))
        bj = bl[j:j + 1]
        _check(_fd(lambda t: P.f(x, y, t, bj), z[j:j + 1, :], v), _dot(gz[j:j + 1, :], v))
        _check(_fd(lambda t: P.g(x, t, bj), z[j:j + 1, :], v), _dot(hz[j:j + 1, :], v))
    V = asx(rng.standard_normal((3, P.dim_z)))
    fd = (to_host(P.grad_g(x, z + EPS * V, bl)[1]) - to_host(P.grad_g(x, z - EPS * V, bl)[1])) / (2 * EPS)
    assert np.abs(fd - to_host(P.hvp_g(x, z, V, bl))).max() <= RTOL * np.abs(fd).max()
    _check(_fd(lambda t: P.xp.sum(P.grad_g(t, z, bl)[1] * V) / 3, x, u), _dot(P.cross_g(x, z, V, bl), u))


@pytest.mark.parametrize("options", CASES)
@JAX_SLOW
def test_inner_dual_and_saddle_gradient(backend, rng, options):
    P = _problem(backend, **options)
    x = backend.asarray(0.3 * rng.standard_normal(P.dim_x))
    z = P.inner_solution(x)
    assert np.abs(to_host(P.grad_g(x, z, P.all_blocks())[1])).max() <= 1e-12
    lhat = P.dual_solution(x, z)
    assert abs(to_host(P.grad_f(x, lhat, z, P.all_blocks())[1])[0]) <= 1e-10
    best = to_host_scalar(P.f(x, lhat, z, P.all_blocks()))
    for d in (1e-3, -1e-3):
        assert best >= to_host_scalar(P.f(x, lhat + d, z, P.all_blocks()))
    g = P.saddle_gradient(x)
    for _ in range(2):
        u = backend.asarray(rng.standard_normal(P.dim_x))
        _check(_fd(P.value, x, u, eps=1e-5), _dot(g, u))


def test_ranked_range_identity_small_temperature(rng):
    """Hinge limit: min_λ max_λ̂ of the mean equals the average of ranked losses m+1..k."""
    s = meta_learning_data(6, 5, 5, 3, seed=4, n_outlier_tasks=1)
    P = RankedMetaLearning(s.A_train, s.y_train, s.A_val, s.y_val, k=4, m=1,
                           temperature=1e-7, rho=0.0)
    w = 0.1 * rng.standard_normal(3)
    loss = np.sort(to_host(P.task_losses(P.inner_solution(np.append(w, 0.0)), P.all_blocks())))[::-1]
    target = loss[1:4].mean()
    lams = loss   # convex piecewise-linear in λ: the minimum is at a breakpoint
    vals = [to_host_scalar(P.value(np.append(w, lam))) for lam in lams]
    assert min(vals) == pytest.approx(target, abs=1e-5)
    # ranked_range_loss is that average directly, for any λ
    assert to_host_scalar(P.ranked_range_loss(np.append(w, 3.0))) == pytest.approx(target,
                                                                                 rel=1e-14)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@JAX_SLOW
def test_dtype_device_and_float32(backend, loss):
    P = _problem(backend, dtype="float32", loss=loss)
    x = P.init_x() + 1e3
    bl = P.all_blocks()
    z = P.inner_solution(x)
    y = backend.asarray(np.array([1e4]), "float32")
    for o in (z, P.f(x, y, z, bl), *P.grad_f(x, y, z, bl), *P.grad_g(x, z, bl),
              P.dual_solution(x), P.saddle_gradient(x), P.ranked_range_loss(x)):
        assert o.dtype == backend.xp.float32 and dev_of(o) == dev_of(x)
        assert np.all(np.isfinite(to_host(o)))


def test_bad_inputs():
    s = meta_learning_data(4, 3, 3, 2, seed=0)
    args = (s.A_train, s.y_train, s.A_val, s.y_val)
    with pytest.raises(ValueError, match="k and m"):
        RankedMetaLearning(*args, k=2, m=2)
    with pytest.raises(ValueError, match="rho"):
        RankedMetaLearning(*args, m=0, rho=0.0)
    with pytest.raises(ValueError, match="smoothing"):
        RankedMetaLearning(*args, smoothing="relu")
    with pytest.raises(ValueError, match="temperature"):
        RankedMetaLearning(*args, temperature=-1.0)
    with pytest.raises(ValueError, match="b_train"):
        RankedMetaLearning(s.A_train, s.y_train[:, :2], s.A_val, s.y_val)
    with pytest.raises(ValueError, match="b_train must contain only -1 and"):
        RankedMetaLearning(*args, loss="logistic")
    with pytest.raises(ValueError, match="loss"):
        RankedMetaLearning(*args, loss="hinge")
    with pytest.raises(TypeError, match="m must be an integer"):
        RankedMetaLearning(*args, m=1.5)
