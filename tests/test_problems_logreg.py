"""LogRegHPO: oracles vs finite differences, stacked/batch oracles, exact oracles, inputs."""

import warnings

import numpy as np
import pytest
from _problem_oracles import (JAX_SLOW, assert_batch_matches_subproblem, assert_exact_oracles,
                              assert_float32_finite, assert_oracles, assert_same_kind,
                              assert_stacked, point_like)

from refbilevel._backend import backend_namespace, from_host, to_host, to_host_scalar
from refbilevel.checks import relative_error
from refbilevel.problems import Batch, LogRegHPO

#: Runs on PyTorch by default, and on JAX except the tests marked JAX_SLOW
#: (tests/conftest.py, tests/_problem_oracles.py).
pytestmark = pytest.mark.eager_libraries

CONFIGS = [(task, red, par) for task in ("binary", "multinomial")
           for red in ("sum", "mean") for par in ("exp", "raw")]
n_tr, n_val, d, C = 30, 20, 5, 3


def _host_data(rng, task):
    A_tr, A_val = rng.standard_normal((n_tr, d)), rng.standard_normal((n_val, d))
    if task == "binary":
        lab = lambda m: np.where(rng.random(m) < 0.5, -1.0, 1.0)  # noqa: E731
    else:
        lab = lambda m: rng.integers(0, C, m)  # noqa: E731
    return A_tr, lab(n_tr), A_val, lab(n_val)


def _make(asxp, data, task, **kw):
    if task == "multinomial":
        kw.setdefault("n_classes", C)
    return LogRegHPO(*(asxp(a) for a in data), task=task, **kw)


def _point(P, rng):
    shift = 1.0 if P.parametrization == "raw" else 0.0  # raw: lambda = x > 0
    return point_like(P.init_x(), rng, scale=0.3, shift=shift), point_like(P.init_y(), rng)


@pytest.mark.parametrize("task, reduction, par", CONFIGS)
def test_oracles_vs_finite_differences(task, reduction, par, asxp, rng):
    P = _make(asxp, _host_data(rng, task), task, reduction=reduction, parametrization=par)
    x, y = _point(P, rng)
    assert_oracles(P, x, y, rng)


@pytest.mark.parametrize("task", ["binary", "multinomial"])
@JAX_SLOW
def test_oracles_on_a_batch(task, asxp, rng):
    P = _make(asxp, _host_data(rng, task), task)
    x, y = _point(P, rng)
    batch = Batch(outer=asxp(np.array([3, 0, 3])), inner=asxp(np.array([1, 7, 7, 29, 0])))
    assert_oracles(P, x, y, rng, batch=batch)


@pytest.mark.parametrize("task, reduction, par", [("binary", "sum", "exp"),
                                                  ("multinomial", "mean", "raw")])
@JAX_SLOW
def test_batch_equals_problem_on_the_selected_rows(task, reduction, par, asxp, rng):
    data = _host_data(rng, task)
    P = _make(asxp, data, task, reduction=reduction, parametrization=par)
    inner, outer = np.array([4, 2, 2, 11]), np.array([19, 0])
    sub = _make(asxp, (data[0][inner], data[1][inner], data[2][outer], data[3][outer]), task,
                reduction=reduction, parametrization=par)
    batch = Batch(outer=asxp(outer), inner=asxp(inner))
    x, y = _point(P, rng)
    v = point_like(y, rng)
    assert_batch_matches_subproblem(P, sub, batch, x, y, v)


@pytest.mark.parametrize("task", ["binary", "multinomial"])
@JAX_SLOW
def test_stacked_oracles_equal_single_point(task, asxp, rng):
    P = _make(asxp, _host_data(rng, task), task, reduction="mean")
    x, _ = _point(P, rng)
    Ys = from_host(rng.standard_normal((3, P.dim_y)), P.xp, dtype=P.dtype, device=P.device)
    assert_stacked(P, x, Ys)
    assert_stacked(P, x, Ys, batch=Batch(inner=from_host(np.array([5, 5, 0]), P.xp,
                                                         device=P.device)))


@pytest.mark.parametrize("task, reduction, par", [("binary", "sum", "exp"),
                                                  ("binary", "mean", "raw"),
                                                  ("multinomial", "sum", "raw"),
                                                  ("multinomial", "mean", "exp")])
@JAX_SLOW
def test_exact_oracles(task, reduction, par, asxp, rng):
    P = _make(asxp, _host_data(rng, task), task, reduction=reduction, parametrization=par)
    x, _ = _point(P, rng)
    ys, hg = assert_exact_oracles(P, x, rng)
    # the closed form of docs/theory/logistic.rst: ∇F = -s λ'(x) ⊙ rowsum(W* ⊙ V*), V* = H⁻¹ ∇_y f
    assert relative_error(P.value(x), P.f(x, ys)) <= 1e-14
    if task == "binary" and reduction == "sum" and par == "exp":
        Ah, xh, yh = to_host(P.A_train), to_host(x), to_host(ys)
        s = 1 / (1 + np.exp(-Ah @ yh))
        H = Ah.T @ (Ah * (s * (1 - s))[:, None]) / n_tr + np.diag(np.exp(xh))
        fy = to_host(P.grad_f(x, ys)[1])
        dense = -np.exp(xh) * yh * np.linalg.solve(H, fy)
        np.testing.assert_allclose(to_host(hg), dense, rtol=1e-10, atol=1e-14)


@JAX_SLOW
def test_full_batch_layout_is_made_once_and_follows_the_data(asxp, rng):
    # the binary full-batch oracles read the features in the backend's matrix-vector
    # layout (column-major on NumPy), made once; a data attribute replaced afterwards
    # (here by NaNs, as bench.step_bytes poisons a copy) is what the oracles then read
    data = _host_data(rng, "binary")
    P = _make(asxp, data, "binary")
    x, y = _point(P, rng)
    A, _ = P._train(None)
    assert P._train(None)[0] is A                  # made once, then served as made
    np.testing.assert_array_equal(to_host(P._val(None)[0]), data[2])
    np.testing.assert_array_equal(to_host(A), data[0])
    if P.xp is backend_namespace("numpy"):
        assert A.flags.f_contiguous and not A.flags.c_contiguous
    # minibatches gather rows of the array as given
    rows, _ = P._train(Batch(inner=from_host(np.array([3, 1]), P.xp, device=P.device)))
    np.testing.assert_array_equal(to_host(rows), data[0][[3, 1]])
    P.A_train = P.A_train * float("nan")
    assert np.all(np.isnan(to_host(P.grad_g(x, y)[1])))


def test_full_batch_without_memory_for_the_copy_reads_the_data_as_given(rng, monkeypatch):
    # oracle: a problem whose model keeps the array as given (the row-major products), and
    # the warning that says so; the gradient agrees with it exactly (the same products)
    data = _host_data(rng, "binary")
    P, ref = LogRegHPO(*data), LogRegHPO(*data)
    monkeypatch.setattr(type(ref.model), "product_layout", lambda self, A, *, xp: A)
    ref_grad = to_host(ref.grad_g(*(_point(ref, np.random.default_rng(1))))[1])
    monkeypatch.undo()

    def no_memory(self, A, *, xp):
        raise MemoryError

    monkeypatch.setattr(type(P.model), "product_layout", no_memory)
    x, y = _point(P, np.random.default_rng(1))
    with pytest.warns(UserWarning, match="no memory for a column-major copy"):
        got = to_host(P.grad_g(x, y)[1])
    np.testing.assert_array_equal(got, ref_grad)
    with warnings.catch_warnings():                 # kept: no second attempt, no warning
        warnings.simplefilter("error")
        assert P._train(None)[0] is P.A_train


@pytest.mark.parametrize("task", ["binary", "multinomial"])
@JAX_SLOW
def test_float32_extreme_logits_stay_finite(task, asxp, rng):
    data = _host_data(rng, task)
    P = LogRegHPO(*(asxp(a, dtype="float32") for a in data), task=task,
                  n_classes=C if task == "multinomial" else None)
    assert P.dtype == P.xp.float32
    y_host = 3e3 * rng.standard_normal(P.dim_y)
    y = from_host(y_host, P.xp, dtype="float32", device=P.device)
    scores = np.abs(data[0].astype(np.float32) @ y_host.reshape(d, -1))
    assert scores.max() > 5e3  # logits of order 1e4
    x = P.init_x()
    assert_float32_finite(P, x, y)


@JAX_SLOW
def test_bad_input_names_the_argument(asxp, rng):
    A_tr, b_tr, A_val, b_val = _host_data(rng, "binary")
    ok = [asxp(A_tr), asxp(b_tr), asxp(A_val), asxp(b_val)]
    cases = [
        (0, asxp(np.ones((n_tr, d), dtype=np.int64)), TypeError, "A_train"),
        (2, asxp(np.where(np.eye(n_val, d) > 0, np.nan, A_val)), ValueError, "A_val"),
        (2, asxp(np.ones((n_val, d + 1))), ValueError, "A_val"),
        (1, asxp(b_tr[:-1]), ValueError, "b_train"),
        (3, asxp(np.zeros(n_val)), ValueError, "b_val"),
    ]
    for pos, bad, exc, name in cases:
        args = list(ok)
        args[pos] = bad
        with pytest.raises(exc, match=name):
            LogRegHPO(*args)
    with pytest.raises(ValueError, match="task"):
        LogRegHPO(*ok, task="ternary")
    with pytest.raises(ValueError, match="parametrization"):
        LogRegHPO(*ok, parametrization="softplus")
    A_tr, l_tr, A_val, l_val = _host_data(rng, "multinomial")
    with pytest.raises(TypeError, match="b_train"):
        LogRegHPO(asxp(A_tr), asxp(l_tr.astype(float)), asxp(A_val), asxp(l_val),
                  task="multinomial", n_classes=C)
    with pytest.raises(ValueError, match="b_val"):
        LogRegHPO(asxp(A_tr), asxp(l_tr), asxp(A_val), asxp(l_val + 1), task="multinomial",
                  n_classes=C)


def test_mixed_namespaces_raise():
    pytest.importorskip("array_api_strict")
    strict, npx = backend_namespace("array_api_strict"), backend_namespace("numpy")
    rng = np.random.default_rng(0)
    A_tr, b_tr, A_val, b_val = _host_data(rng, "binary")
    with pytest.raises(TypeError, match="b_val"):
        LogRegHPO(npx.asarray(A_tr), npx.asarray(b_tr), npx.asarray(A_val), strict.asarray(b_val))


@JAX_SLOW
def test_synthetic_is_seeded_and_backend_independent(xp, device):
    P = LogRegHPO.synthetic(40, 6, task="multinomial", n_classes=3, seed=7, xp=xp,
                            device=device, reduction="mean")
    Q = LogRegHPO.synthetic(40, 6, task="multinomial", n_classes=3, seed=7)  # numpy
    assert P.dim_x == 6 and P.dim_y == 18 and P.n_inner == 20 and P.n_outer == 20
    np.testing.assert_array_equal(to_host(P.A_train), to_host(Q.A_train))
    np.testing.assert_array_equal(to_host(P.T_val), to_host(Q.T_val))
    assert_same_kind(P.init_x(), P.A_train[0, :])
    assert to_host_scalar(P.xp.sum(P.init_x() ** 2)) == 0.0
    assert P.describe()["reduction"] == "mean" and P.describe()["name"] == "logreg"
    B = LogRegHPO.synthetic(10, 3, seed=1, xp=xp, device=device, dtype="float32",
                            parametrization="raw")
    assert B.dtype == B.xp.float32 and to_host(B.init_x()).tolist() == [1.0, 1.0, 1.0]
    assert set(np.unique(to_host(B.T_train))) <= {-1.0, 1.0}
