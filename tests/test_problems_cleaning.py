"""DataCleaning (linear, linear with bias, MLP): oracles vs finite differences and PyTorch
autodiff, batches, stacked and exact oracles."""

import numpy as np
import pytest
from _problem_oracles import (JAX_SLOW, assert_batch_matches_subproblem, assert_exact_oracles,
                              assert_float32_finite, assert_oracles, assert_same_kind,
                              assert_stacked, point_like)

from refbilevel._backend import from_host, to_host
from refbilevel.problems import Batch, DataCleaning

#: Runs on PyTorch by default, and on JAX except the tests marked JAX_SLOW
#: (tests/conftest.py, tests/_problem_oracles.py).
pytestmark = pytest.mark.eager_libraries

n_tr, n_val, d, C, hidden = 30, 20, 5, 3, 4
MODELS = {
    "linear": dict(model="linear", reg=0.1),
    "linear-bias": dict(model="linear", reg=0.1, bias=True),
    "mlp-tanh": dict(model="mlp", hidden=hidden, activation="tanh", reg=0.05),
    "mlp-relu": dict(model="mlp", hidden=hidden, activation="relu", reg=0.05),
}
#: The bias's batch and stacked paths are checked once, on NumPy, by the ones-column
#: identity below (every backend runs its finite-difference and exact-oracle checks).
WITHOUT_BIAS = [k for k in MODELS if k != "linear-bias"]


def _host_data(rng):
    return (rng.standard_normal((n_tr, d)), rng.integers(0, C, n_tr),
            rng.standard_normal((n_val, d)), rng.integers(0, C, n_val))


def _make(asxp, data, **kw):
    return DataCleaning(*(asxp(a) for a in data), n_classes=C, seed=1, **kw)


def _point(P, rng):
    """A random (x, y); for ReLU, y keeps every pre-activation at least 0.3 from its kink."""
    x = point_like(P.init_x(), rng)
    if P.model_kind == "linear" or P.activation == "tanh":
        return x, point_like(P.init_y(), rng)
    W1 = 0.05 * rng.standard_normal((d, hidden))
    b1 = np.where(rng.random(hidden) < 0.5, -1.0, 1.0)
    W2, b2 = rng.standard_normal((hidden, C)), 0.3 * rng.standard_normal(C)
    host = np.concatenate([W1.ravel(), b1, W2.ravel(), b2])
    return x, from_host(host, P.xp, dtype=P.dtype, device=P.device)


def _assert_away_from_kinks(P, y, h=1e-3):
    """|U_ij| > 2.5 h ‖(A_i, 1)‖ bounds the pre-activation change of any unit-norm step."""
    if P.model_kind == "linear" or P.activation == "tanh":
        return
    W1, b1, _, _ = (to_host(a) for a in P.model.unpack(y, xp=P.xp))
    for A in (to_host(P.A_train), to_host(P.A_val)):
        U = A @ W1 + b1
        reach = 2.5 * h * np.sqrt((A**2).sum(1) + 1.0)
        assert (np.abs(U) > reach[:, None]).all()


@pytest.mark.parametrize("kind", list(MODELS))
def test_oracles_vs_finite_differences(kind, asxp, rng):
    P = _make(asxp, _host_data(rng), **MODELS[kind])
    x, y = _point(P, rng)
    _assert_away_from_kinks(P, y)
    assert_oracles(P, x, y, rng)


@pytest.mark.parametrize("kind", ["linear", "mlp-tanh"])
@JAX_SLOW
def test_oracles_on_a_batch(kind, asxp, rng):
    P = _make(asxp, _host_data(rng), **MODELS[kind])
    x, y = _point(P, rng)
    batch = Batch(outer=asxp(np.array([3, 0, 3])), inner=asxp(np.array([1, 7, 7, 29, 0])))
    assert_oracles(P, x, y, rng, batch=batch)


@pytest.mark.parametrize("kind", WITHOUT_BIAS)
@JAX_SLOW
def test_batch_equals_problem_on_the_selected_rows(kind, asxp, rng):
    data = _host_data(rng)
    P = _make(asxp, data, **MODELS[kind])
    inner, outer = np.array([4, 2, 2, 11, 29]), np.array([19, 0])
    sub = _make(asxp, (data[0][inner], data[1][inner], data[2][outer], data[3][outer]),
                **MODELS[kind])
    batch = Batch(outer=asxp(outer), inner=asxp(inner))
    x, y = _point(P, rng)
    _assert_away_from_kinks(P, y)
    xs = P.xp.take(x, asxp(inner), axis=0)
    v = point_like(y, rng)
    assert_batch_matches_subproblem(P, sub, batch, x, y, v, x_sub=xs)

    def scatter(vals):  # host scatter-add of the sub-problem's per-row x-gradients
        out = np.zeros(n_tr)
        np.add.at(out, inner, to_host(vals))
        return out

    np.testing.assert_allclose(to_host(P.grad_g_x(x, y, batch)), scatter(sub.grad_g_x(xs, y)),
                               rtol=1e-13, atol=1e-17)
    np.testing.assert_allclose(to_host(P.cross_g(x, y, v, batch)),
                               scatter(sub.cross_g(xs, y, v)), rtol=1e-13, atol=1e-17)
    assert (to_host(P.grad_g_x(x, y, batch))[np.setdiff1d(np.arange(n_tr), inner)] == 0).all()


@pytest.mark.parametrize("kind", WITHOUT_BIAS)
@JAX_SLOW
def test_stacked_oracles_equal_single_point(kind, asxp, rng):
    P = _make(asxp, _host_data(rng), **MODELS[kind])
    x, y = _point(P, rng)
    Ys = P.xp.stack([y, 0.5 * y, point_like(y, rng)])
    assert_stacked(P, x, Ys)
    assert_stacked(P, x, Ys, batch=Batch(inner=asxp(np.array([5, 5, 0, 17]))))


@pytest.mark.parametrize("kind", ["linear", "linear-bias", "mlp-tanh"])
@JAX_SLOW
def test_exact_oracles(kind, asxp, rng):
    # ReLU is left out on purpose: its inner minimiser generically sits on a kink, where g
    # is not twice differentiable (documented in DataCleaning's Notes).
    P = _make(asxp, _host_data(rng), **MODELS[kind])
    x, _ = _point(P, rng)
    ys, hg = assert_exact_oracles(P, x, rng)
    assert P.strongly_convex_inner == kind.startswith("linear")
    if kind == "linear":
        # docs/theory/cleaning.rst: ∇F(x)_i = -(1/n) σ'(x_i) <A_i V*, P_i - Y_i>, V* = H⁻¹ ∇_W f
        A, xh, W = to_host(P.A_train), to_host(x), to_host(ys).reshape(d, C)
        Y = np.eye(C)[to_host(P.Y_train).argmax(1)]
        Z = A @ W
        Pm = np.exp(Z - Z.max(1, keepdims=True))
        Pm /= Pm.sum(1, keepdims=True)
        s = 1 / (1 + np.exp(-xh))
        H = np.zeros((d * C, d * C))
        for i in range(n_tr):  # dense Hessian from the per-sample softmax Hessians
            Hi = np.diag(Pm[i]) - np.outer(Pm[i], Pm[i])
            H += s[i] * np.kron(np.outer(A[i], A[i]), Hi) / n_tr
        H += 0.1 * np.eye(d * C)
        V = np.linalg.solve(H, to_host(P.grad_f(x, ys)[1])).reshape(d, C)
        dense = -s * (1 - s) * ((A @ V) * (Pm - Y)).sum(1) / n_tr
        np.testing.assert_allclose(to_host(hg), dense, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kind", ["linear", "mlp-tanh"])
@JAX_SLOW
def test_float32_extreme_logits_stay_finite(kind, asxp, rng):
    data = _host_data(rng)
    P = DataCleaning(*(asxp(a, dtype="float32") for a in data), n_classes=C, **MODELS[kind])
    assert P.dtype == P.xp.float32
    y = from_host(3e3 * rng.standard_normal(P.dim_y), P.xp, dtype="float32", device=P.device)
    x = from_host(30.0 * rng.standard_normal(P.dim_x), P.xp, dtype="float32", device=P.device)
    Z = to_host(P.model.forward(y, P.A_train, xp=P.xp)[0] if kind != "linear"
                else P.model.forward(y, P.A_train, xp=P.xp))
    assert np.abs(Z).max() > 5e3
    assert_float32_finite(P, x, y)


@JAX_SLOW
def test_bad_input_names_the_argument(asxp, rng):
    A_tr, l_tr, A_val, l_val = _host_data(rng)
    ok = [asxp(A_tr), asxp(l_tr), asxp(A_val), asxp(l_val)]
    cases = [
        (0, asxp(np.ones((n_tr, d), dtype=np.int64)), TypeError, "A_train"),
        (0, asxp(np.where(np.eye(n_tr, d) > 0, np.inf, A_tr)), ValueError, "A_train"),
        (2, asxp(np.ones((n_val, d - 1))), ValueError, "A_val"),
        (1, asxp(l_tr.astype(float)), TypeError, "labels_train"),
        (1, asxp(l_tr[:-2]), ValueError, "labels_train"),
        (3, asxp(l_val - 1), ValueError, "labels_val"),
    ]
    for pos, bad, exc, name in cases:
        args = list(ok)
        args[pos] = bad
        with pytest.raises(exc, match=name):
            DataCleaning(*args, n_classes=C)
    with pytest.raises(ValueError, match="reg"):
        DataCleaning(*ok, n_classes=C, reg=-1.0)
    with pytest.raises(ValueError, match="model"):
        DataCleaning(*ok, n_classes=C, model="cnn")
    with pytest.raises(ValueError, match="activation"):
        DataCleaning(*ok, n_classes=C, model="mlp", activation="gelu")
    with pytest.raises(TypeError, match="hidden"):
        DataCleaning(*ok, n_classes=C, model="mlp", hidden=2.5)
    with pytest.raises(TypeError, match="bias"):
        DataCleaning(*ok, n_classes=C, bias=1)
    with pytest.raises(ValueError, match="bias"):
        DataCleaning(*ok, n_classes=C, model="mlp", bias=True)


@JAX_SLOW
def test_synthetic_corruption_seed_and_defaults(xp, device):
    P = DataCleaning.synthetic(400, 50, 4, n_classes=4, corruption=0.5, seed=3, xp=xp,
                               device=device, model="mlp", hidden=3)
    Q = DataCleaning.synthetic(400, 50, 4, n_classes=4, corruption=0.0, seed=3, model="mlp",
                               hidden=3)
    # same seed: same features; the clean labels of Q show which rows P corrupted
    np.testing.assert_array_equal(to_host(P.A_train), to_host(Q.A_train))
    rate = (to_host(P.Y_train).argmax(1) != to_host(Q.Y_train).argmax(1)).mean()
    assert 0.4 < rate < 0.6
    np.testing.assert_array_equal(to_host(P.Y_val), to_host(Q.Y_val))
    assert P.dim_x == P.n_inner == 400 and P.dim_y == 4 * 3 + 3 + 3 * 4 + 4
    y0 = P.init_y()
    assert_same_kind(y0, P.A_train[0, :])
    assert np.abs(to_host(y0)).max() > 0  # a zero MLP start is a saddle
    assert to_host(P.init_x()).tolist() == [0.0] * 400
    desc = P.describe()
    assert desc["name"] == "cleaning" and desc["hidden"] == 3 and desc["reg"] == 0.002


def test_bias_oracles_vs_torch_autodiff(rng):
    """Every oracle of the linear model with a bias against PyTorch's reverse mode on
    ``g = mean σ(x_i) CE(A_i W + b, y_i) + (c/2)(‖W‖² + ‖b‖²)`` (double backward for the
    HVP and the cross term), on the full data and on a batch with a repeated row."""
    torch = pytest.importorskip("torch")
    data = _host_data(rng)
    P = _make(np.asarray, data, **MODELS["linear-bias"])
    x, y = _point(P, rng)
    v = point_like(y, rng)
    A_tr, l_tr, A_val, l_val = (torch.as_tensor(a) for a in data)

    def t(a, grad=False):
        return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)

    def scores(wt, A):
        return A @ wt[:d * C].reshape(d, C) + wt[d * C:]

    for rows in (None, np.array([3, 0, 3, 29])):
        batch = None if rows is None else Batch(inner=rows)
        sel = slice(None) if rows is None else torch.as_tensor(rows)
        xt, wt = t(x, True), t(y, True)
        ce = torch.nn.functional.cross_entropy(scores(wt, A_tr[sel]), l_tr[sel],
                                               reduction="none")
        g = (torch.sigmoid(xt[sel]) * ce).mean() + 0.05 * (wt * wt).sum()
        gx, gw = torch.autograd.grad(g, (xt, wt), create_graph=True)
        hv, = torch.autograd.grad(gw @ t(v), wt, retain_graph=True)
        cr, = torch.autograd.grad(gw @ t(v), xt)
        ours = P.grad_g(x, y, batch)
        np.testing.assert_allclose(P.g(x, y, batch), g.item(), rtol=1e-13)
        np.testing.assert_allclose(ours[0], gx.detach().numpy(), rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(ours[1], gw.detach().numpy(), rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(P.hvp_g(x, y, v, batch), hv.numpy(), rtol=1e-12,
                                   atol=1e-16)
        np.testing.assert_allclose(P.cross_g(x, y, v, batch), cr.numpy(), rtol=1e-12,
                                   atol=1e-16)
        lin = P.linearize_g(x, y, batch)
        np.testing.assert_array_equal(lin.hvp(v), P.hvp_g(x, y, v, batch))
        np.testing.assert_array_equal(lin.cross(v), P.cross_g(x, y, v, batch))
    wt = t(y, True)
    f = torch.nn.functional.cross_entropy(scores(wt, A_val), l_val)
    fw, = torch.autograd.grad(f, wt)
    np.testing.assert_allclose(P.f(x, y), f.item(), rtol=1e-13)
    np.testing.assert_allclose(P.grad_f_y(x, y), fw.numpy(), rtol=1e-12, atol=1e-16)


def test_bias_is_the_linear_model_on_a_ones_column(rng):
    """An identity: the biased problem equals the bias-free one whose features carry a
    column of ones (same parameter layout), up to rounding, for every oracle and the
    exact hypergradient."""
    data = _host_data(rng)
    P = _make(np.asarray, data, **MODELS["linear-bias"])
    ones = [np.concatenate([a, np.ones((a.shape[0], 1))], axis=1) for a in data[::2]]
    Q = _make(np.asarray, (ones[0], data[1], ones[1], data[3]), **MODELS["linear"])
    assert P.dim_y == Q.dim_y == (d + 1) * C
    x, y = _point(P, rng)
    v = point_like(y, rng)
    Ys = np.stack([y, 0.5 * y])
    for batch in (None, Batch(outer=np.array([2, 2]), inner=np.array([5, 0, 5]))):
        for name, args in (("g", (x, y)), ("grad_g", (x, y)), ("f", (x, y)),
                           ("grad_f", (x, y)), ("hvp_g", (x, y, v)), ("cross_g", (x, y, v)),
                           ("grad_g_many", (x, Ys))):
            a, b = getattr(P, name)(*args, batch), getattr(Q, name)(*args, batch)
            for u, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (a, b))):
                np.testing.assert_allclose(u, w, rtol=1e-12, atol=1e-17, err_msg=name)
    np.testing.assert_allclose(P.hypergradient(x), Q.hypergradient(x), rtol=1e-9,
                               atol=1e-15)
    assert P.describe()["bias"] is True and "bias" not in Q.describe()
