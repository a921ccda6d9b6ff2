"""LayerDecayMLP: oracles vs finite differences, batches, stacked and exact oracles, inputs."""

import numpy as np
import pytest
from _problem_oracles import (assert_batch_matches_subproblem, assert_exact_oracles,
                              assert_float32_finite, assert_oracles, assert_same_kind,
                              assert_stacked, point_like)

from refbilevel._backend import from_host, to_host
from refbilevel.checks import relative_error
from refbilevel.problems import Batch, LayerDecayMLP

n_tr, n_val, d, C, hidden = 30, 20, 5, 3, 4
CONFIGS = {
    "tanh-exp": dict(activation="tanh", parametrization="exp"),
    "tanh-raw": dict(activation="tanh", parametrization="raw"),
    "relu-exp": dict(activation="relu", parametrization="exp"),
}


def _host_data(rng):
    A_tr, A_val = rng.standard_normal((n_tr, d)), rng.standard_normal((n_val, d))
    teacher = rng.standard_normal((d, C))  # learnable labels, so the decayed fit is nontrivial
    return A_tr, (A_tr @ teacher).argmax(1), A_val, (A_val @ teacher).argmax(1)


def _make(asxp, data, **kw):
    return LayerDecayMLP(*(asxp(a) for a in data), n_classes=C, hidden=hidden, seed=2, **kw)


def _point(P, rng):
    """A random (x, y); for ReLU every pre-activation stays at least ~0.3 from its kink."""
    x = point_like(P.init_x(), rng, scale=0.3)
    if P.activation == "tanh":
        return x, point_like(P.init_y(), rng)
    W1 = 0.05 * rng.standard_normal((d, hidden))
    b1 = np.where(rng.random(hidden) < 0.5, -1.0, 1.0)
    host = np.concatenate([W1.ravel(), b1, rng.standard_normal(hidden * C),
                           0.3 * rng.standard_normal(C)])
    y = from_host(host, P.xp, dtype=P.dtype, device=P.device)
    for A in (to_host(P.A_train), to_host(P.A_val)):
        reach = 2.5e-3 * np.sqrt((A**2).sum(1) + 1.0)  # |ΔU| bound of a unit step of 2.5h
        assert (np.abs(A @ W1 + b1) > reach[:, None]).all()
    return x, y


@pytest.mark.parametrize("config", list(CONFIGS))
def test_oracles_vs_finite_differences(config, asxp, rng):
    P = _make(asxp, _host_data(rng), **CONFIGS[config])
    x, y = _point(P, rng)
    assert_oracles(P, x, y, rng)


def test_oracles_on_a_batch(asxp, rng):
    P = _make(asxp, _host_data(rng))
    x, y = _point(P, rng)
    batch = Batch(outer=asxp(np.array([3, 0, 3])), inner=asxp(np.array([1, 7, 7, 29, 0])))
    assert_oracles(P, x, y, rng, batch=batch)


@pytest.mark.parametrize("config", ["tanh-exp", "tanh-raw"])
def test_batch_equals_problem_on_the_selected_rows(config, asxp, rng):
    data = _host_data(rng)
    P = _make(asxp, data, **CONFIGS[config])
    inner, outer = np.array([4, 2, 2, 11]), np.array([19, 0])
    sub = _make(asxp, (data[0][inner], data[1][inner], data[2][outer], data[3][outer]),
                **CONFIGS[config])
    batch = Batch(outer=asxp(outer), inner=asxp(inner))
    x, y = _point(P, rng)
    v = point_like(y, rng)
    assert_batch_matches_subproblem(P, sub, batch, x, y, v)


def test_decay_acts_on_weights_only(asxp, rng):
    """The regulariser of the documented layout: W1 and W2 decayed, biases not."""
    P = _make(asxp, _host_data(rng), parametrization="raw")
    x, y = _point(P, rng)
    W1, b1, W2, b2 = (to_host(a) for a in P.model.unpack(y, xp=P.xp))
    xh = to_host(x)
    reg = xh[0] * (W1**2).sum() + xh[1] * (W2**2).sum()  # docs/theory/layer_decay.rst, raw form: no ½
    ce = to_host(P.model.value(y, P.A_train, P.Y_train, xp=P.xp))
    np.testing.assert_allclose(to_host(P.g(x, y)), ce + reg, rtol=1e-14)
    np.testing.assert_allclose(to_host(P.grad_g_x(x, y)), [(W1**2).sum(), (W2**2).sum()],
                               rtol=1e-14)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_stacked_oracles_equal_single_point(config, asxp, rng):
    P = _make(asxp, _host_data(rng), **CONFIGS[config])
    x, y = _point(P, rng)
    Ys = P.xp.stack([y, 0.5 * y, y + point_like(y, rng, scale=0.01)])
    assert_stacked(P, x, Ys)
    assert_stacked(P, x, Ys, batch=Batch(inner=asxp(np.array([5, 5, 0]))))


@pytest.mark.parametrize("config, x0", [("tanh-exp", [-3.0, -2.0]), ("tanh-raw", [0.03, 0.05])])
def test_exact_oracles_at_a_local_minimum(config, x0, asxp, rng):
    # ReLU is left out on purpose: its inner minimiser generically sits on a kink.
    P = _make(asxp, _host_data(rng), **CONFIGS[config])
    assert P.strongly_convex_inner is False
    x = asxp(np.array(x0))
    ys, _ = assert_exact_oracles(P, x, rng)
    # a local minimum: the Hessian is PSD, with the single zero-curvature direction b2 + t·1
    eye = np.eye(P.dim_y)
    H = np.stack([to_host(P.hvp_g(x, ys, from_host(e, P.xp, dtype=P.dtype, device=P.device)))
                  for e in eye])
    eig = np.linalg.eigvalsh(0.5 * (H + H.T))
    assert abs(eig[0]) < 1e-10 and eig[1] > 1e-6
    # the weights did not collapse to zero (a nontrivial fit)
    assert np.abs(to_host(P.model.unpack(ys, xp=P.xp)[2])).max() > 0.1


def test_float32_extreme_logits_stay_finite(asxp, rng):
    data = _host_data(rng)
    P = LayerDecayMLP(*(asxp(a, dtype="float32") for a in data), n_classes=C, hidden=hidden)
    y = from_host(3e3 * rng.standard_normal(P.dim_y), P.xp, dtype="float32", device=P.device)
    x = P.init_x()
    assert np.abs(to_host(P.model.forward(y, P.A_train, xp=P.xp)[0])).max() > 5e3
    assert_float32_finite(P, x, y)


def test_bad_input_names_the_argument(asxp, rng):
    A_tr, l_tr, A_val, l_val = _host_data(rng)
    ok = [asxp(A_tr), asxp(l_tr), asxp(A_val), asxp(l_val)]
    cases = [
        (2, asxp(np.ones((n_val, d), dtype=np.int64)), TypeError, "A_val"),
        (0, asxp(np.where(np.eye(n_tr, d) > 0, np.nan, A_tr)), ValueError, "A_train"),
        (3, asxp(l_val[:3]), ValueError, "labels_val"),
        (1, asxp(l_tr + C), ValueError, "labels_train"),
    ]
    for pos, bad, exc, name in cases:
        args = list(ok)
        args[pos] = bad
        with pytest.raises(exc, match=name):
            LayerDecayMLP(*args, n_classes=C)
    with pytest.raises(ValueError, match="parametrization"):
        LayerDecayMLP(*ok, n_classes=C, parametrization="log")
    with pytest.raises(ValueError, match="hidden"):
        LayerDecayMLP(*ok, n_classes=C, hidden=0)
    with pytest.raises(ValueError, match="n_classes"):
        LayerDecayMLP(*ok, n_classes=1)


def test_synthetic_seed_defaults_and_description(xp, device):
    P = LayerDecayMLP.synthetic(40, 10, 3, n_classes=3, hidden=5, seed=4, xp=xp, device=device,
                                parametrization="raw")
    Q = LayerDecayMLP.synthetic(40, 10, 3, n_classes=3, hidden=5, seed=4, parametrization="raw")
    np.testing.assert_array_equal(to_host(P.A_train), to_host(Q.A_train))
    np.testing.assert_array_equal(to_host(P.init_y()), to_host(Q.init_y()))
    assert P.dim_x == 2 and P.dim_y == 3 * 5 + 5 + 5 * 3 + 3
    assert_same_kind(P.init_y(), P.A_train[0, :])
    assert to_host(P.init_x()).tolist() == [0.05, 0.05]
    # raw x = 0.05 and exp x = log(0.1) give the same regulariser at the default start
    E = LayerDecayMLP.synthetic(40, 10, 3, n_classes=3, hidden=5, seed=4, xp=xp, device=device)
    assert relative_error(E.g(E.init_x(), E.init_y()), P.g(P.init_x(), P.init_y())) <= 1e-14
    desc = P.describe()
    assert desc["name"] == "layer_decay" and desc["decayed"] == ("W1", "W2")


def test_test_accuracy_is_the_host_mlp_prediction(asxp, rng):
    """Held-out accuracy at the iterate against a NumPy forward pass of the documented layout."""
    from refbilevel.heldout import TestAccuracy

    P = _make(asxp, _host_data(rng))
    _, y = _point(P, rng)
    A, labels = rng.standard_normal((40, d)), rng.integers(0, C, 40)
    theta = to_host(y)
    W1, b1 = theta[:d * hidden].reshape(d, hidden), theta[d * hidden:d * hidden + hidden]
    W2 = theta[d * hidden + hidden:-C].reshape(hidden, C)
    pred = (np.tanh(A @ W1 + b1) @ W2 + theta[-C:]).argmax(1)
    state = type("S", (), {"x": P.init_x(), "y": y})()
    assert TestAccuracy(A, labels)(P, state) == np.mean(pred == labels)
    assert 0 < np.mean(pred == labels) < 1       # the comparison is not vacuous
