"""Models and losses: derivatives vs finite differences, identities, stability, layout.

Finite differences are the five-point directional stencil of :mod:`refbilevel.checks`
(float64, h = 1e-3 unless stated); tolerance 1e-7 relative (derivations in docs/theory/).
"""

import numpy as np
import pytest
from array_api_extra.testing import assert_close

from refbilevel._backend import array_namespace, device as dev_of, to_host
from refbilevel.checks import (check_gradient, check_jacobian_vector, check_symmetry,
                               relative_error)
from refbilevel.models.linear import LinearModel
from refbilevel.models.losses import (BINARY_LOGISTIC, SOFTMAX_CE, log_softmax, one_hot, sigmoid,
                                      sigmoid_prime, softmax, softplus)
from refbilevel.models.mlp import MLP

TOL = 1e-7
n, d, C, h = 30, 5, 3, 4


def _same_kind(a, like):
    """Namespace, dtype and device of ``a`` equal those of ``like``."""
    array_namespace(a, like)  # raises TypeError on a namespace or device mismatch
    assert a.dtype == like.dtype
    assert dev_of(a) == dev_of(like)


def _unit(rng, size):
    u = rng.standard_normal(size)
    return u / np.linalg.norm(u)


# ---------------------------------------------------------------- losses
def test_scalar_functions_match_host_references(xp, asxp, rng):
    t = rng.standard_normal(50) * 20
    T = asxp(t)
    assert_close(softplus(T, xp=xp), asxp(np.logaddexp(0.0, t)), rtol=1e-14)
    assert_close(sigmoid(T, xp=xp), asxp(1.0 / (1.0 + np.exp(-t))), rtol=1e-14, atol=1e-300)
    ref = 1.0 / ((1.0 + np.exp(-t)) * (1.0 + np.exp(t)))  # sigma(t) sigma(-t), no cancellation
    assert_close(sigmoid_prime(T, xp=xp), asxp(ref), rtol=1e-13, atol=1e-300)
    Z = rng.standard_normal((7, 4)) * 5
    ref = Z - Z.max(1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(1, keepdims=True))
    assert_close(log_softmax(asxp(Z), xp=xp), asxp(ref), rtol=1e-13)
    assert_close(softmax(asxp(Z), xp=xp), asxp(np.exp(ref)), rtol=1e-13)
    lab = rng.integers(0, 4, 9)
    assert_close(one_hot(asxp(lab), 4, dtype=xp.float64, xp=xp), asxp(np.eye(4)[lab]))


def _decimal_references(t):
    """softplus, sigmoid and sigmoid' of every float in ``t``, to 60 digits (stdlib decimal)."""
    from decimal import Decimal, localcontext

    out = np.empty((3, t.size))
    with localcontext() as ctx:
        ctx.prec = 60
        for k, v in enumerate(t.tolist()):
            e = Decimal(v).exp()                      # exact input, 60-digit exp
            # log(1 + e) = e - e^2/2 + O(e^3): 1 + e would round e away when e < 1e-60
            log1p_e = e - e * e / 2 if e < Decimal("1e-30") else (1 + e).ln()
            out[:, k] = [float(log1p_e), float(e / (1 + e)), float(e / ((1 + e) * (1 + e)))]
    return out


@pytest.mark.parametrize("dtype, t_max", [("float64", 740.0), ("float32", 100.0)])
def test_scalar_functions_ulp_accuracy_over_the_whole_range(dtype, t_max, xp, asxp):
    """Against a 60-digit reference, on every input whose value is a normal number: softplus,
    sigmoid and the binary logistic score derivative ``-b sigma(-b s)`` within 4 ulps, sigmoid'
    within 6 (NumPy measures at most 2; the margin is for other backends' exp and log1p).
    Values below the smallest normal number are off by less than that number."""
    fdt = np.dtype(dtype).type
    near0 = np.geomspace(1e-12, 50.0, 400)
    t = np.concatenate([np.linspace(-t_max, t_max, 2001), near0, -near0]).astype(fdt)
    sp_ref, sig_ref, sigp_ref = _decimal_references(t)
    eps, tiny = float(np.finfo(fdt).eps), float(np.finfo(fdt).tiny)
    T = asxp(t, dtype=dtype)
    b = asxp(np.where(np.arange(t.size) % 2 == 0, 1.0, -1.0), dtype=dtype)
    # -b sigma(-b s) at s = b t (b^2 = 1) is -b sigma(-t)
    grad_ref = -to_host(b) * _decimal_references(-t)[1]
    cases = [(softplus(T, xp=xp), sp_ref, 4), (sigmoid(T, xp=xp), sig_ref, 4),
             (sigmoid_prime(T, xp=xp), sigp_ref, 6),
             (BINARY_LOGISTIC.score_grad(b * T, b, xp=xp), grad_ref, 4)]
    for out, ref, ulps in cases:
        assert out.dtype == T.dtype
        got = to_host(out).astype(np.float64)
        normal = np.abs(ref) >= tiny
        rel = np.abs(got[normal] - ref[normal]) / np.abs(ref[normal])
        assert rel.max() <= ulps * eps, (rel.max() / eps, t[normal][rel.argmax()])
        assert np.all(np.abs(got[~normal] - ref[~normal]) < tiny)


@pytest.mark.parametrize("loss", ["binary", "softmax"])
def test_loss_score_derivatives_vs_fd(loss, xp, asxp, rng):
    if loss == "binary":
        obj, S = BINARY_LOGISTIC, asxp(rng.standard_normal(n) * 2)
        T = asxp(np.where(rng.random(n) < 0.5, -1.0, 1.0))
        u, v = asxp(_unit(rng, n)), asxp(_unit(rng, n))
    else:
        obj, S = SOFTMAX_CE, asxp(rng.standard_normal((n, C)) * 2)
        T = one_hot(asxp(rng.integers(0, C, n)), C, dtype=xp.float64, xp=xp)
        u, v = asxp(_unit(rng, (n, C))), asxp(_unit(rng, (n, C)))
    total = lambda s: xp.sum(obj.per_sample(s, T, xp=xp))  # noqa: E731
    assert check_gradient(total, lambda s: obj.score_grad(s, T, xp=xp), S, u=u) <= TOL
    assert check_jacobian_vector(lambda s: obj.score_grad(s, T, xp=xp),
                                 obj.score_hvp(S, T, u, xp=xp), S, u) <= TOL
    assert check_symmetry(lambda r: obj.score_hvp(S, T, r, xp=xp), u, v) <= 1e-13
    per = obj.directional(S, T, u, xp=xp)
    assert check_jacobian_vector(lambda s: obj.per_sample(s, T, xp=xp), per, S, u) <= TOL


def test_binary_score_grad_keeps_one_temporary_alive():
    # oracle: the bytes of its n-vectors (tracemalloc sees NumPy's buffers). The score
    # gradient b / (-1 - exp(min(b s, c))) needs at most two n-vectors alive at once, the
    # result included; a named margin b s kept a third through the exponential and the
    # division (one more n-vector at every logistic step's peak)
    import tracemalloc

    m = 200_000
    rng = np.random.default_rng(0)
    S, b = rng.standard_normal(m), np.where(rng.random(m) < 0.5, -1.0, 1.0)
    xp = array_namespace(S)
    BINARY_LOGISTIC.score_grad(S, b, xp=xp)           # constants made once, outside
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = BINARY_LOGISTIC.score_grad(S, b, xp=xp)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert out.shape == (m,)
    assert peak < 2.5 * S.nbytes, peak / S.nbytes


@pytest.mark.parametrize("loss", ["binary", "softmax"])
def test_losses_float32_extreme_logits(loss, xp, asxp, rng):
    big = np.array([-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4])
    if loss == "binary":
        obj, S = BINARY_LOGISTIC, asxp(big, dtype="float32")
        T = asxp(np.array([1.0, -1, 1, -1, 1, -1, -1]), dtype="float32")
        R = xp.ones_like(S)
    else:
        obj = SOFTMAX_CE
        S = asxp(np.stack([big, -big, big[::-1]], axis=1), dtype="float32")
        T = one_hot(asxp(np.array([0, 1, 2, 0, 1, 2, 0])), 3, dtype=xp.float32, xp=xp)
        R = xp.ones_like(S)
    for out in (obj.per_sample(S, T, xp=xp), obj.score_grad(S, T, xp=xp),
                obj.score_hvp(S, T, R, xp=xp)):
        assert out.dtype == xp.float32
        assert bool(xp.all(xp.isfinite(out)))
    # exact limits: a wrong-sign logit of 1e4 costs 1e4 (binary); a correct one costs 0
    ell = to_host(obj.per_sample(S, T, xp=xp))
    if loss == "binary":
        np.testing.assert_allclose(ell[[0, 6]], [1e4, 1e4], rtol=1e-6)
    assert ell.min() >= 0.0


# ---------------------------------------------------------------- linear model
@pytest.mark.parametrize("n_classes", [None, C])
def test_linear_model_derivatives(n_classes, xp, asxp, rng):
    model = LinearModel(d, n_classes)
    A = asxp(rng.standard_normal((n, d)))
    if n_classes is None:
        T = asxp(np.where(rng.random(n) < 0.5, -1.0, 1.0))
    else:
        T = one_hot(asxp(rng.integers(0, C, n)), C, dtype=xp.float64, xp=xp)
    c = asxp(rng.random(n) + 0.1)
    w = asxp(rng.standard_normal(model.size))
    u, v = asxp(_unit(rng, model.size)), asxp(_unit(rng, model.size))
    value = lambda t: model.value(t, A, T, weights=c, xp=xp)  # noqa: E731
    grad = lambda t: model.per_sample_and_grad(t, A, T, weights=c, xp=xp)[1]  # noqa: E731
    assert check_gradient(value, grad, w, u=u) <= TOL
    hv = model.hvp(w, A, T, u, weights=c, xp=xp)
    _same_kind(hv, w)
    assert check_jacobian_vector(grad, hv, w, u) <= TOL
    assert check_symmetry(lambda r: model.hvp(w, A, T, r, weights=c, xp=xp), u, v) <= 1e-13
    per = model.per_sample_jvp(w, A, T, u, xp=xp)
    assert per.shape == (n,)
    assert check_jacobian_vector(lambda t: model.per_sample_and_grad(t, A, T, xp=xp)[0],
                                 per, w, u) <= TOL
    # weighted mean = mean of weights * per-sample losses (independent composition)
    ell = model.per_sample_and_grad(w, A, T, xp=xp)[0]
    assert relative_error(value(w), xp.mean(c * ell)) <= 1e-14


@pytest.mark.parametrize("n_classes", [None, C])
def test_linear_model_stacked_equals_single(n_classes, xp, asxp, rng):
    model = LinearModel(d, n_classes)
    A = asxp(rng.standard_normal((n, d)))
    T = (asxp(np.where(rng.random(n) < 0.5, -1.0, 1.0)) if n_classes is None else
         one_hot(asxp(rng.integers(0, C, n)), C, dtype=xp.float64, xp=xp))
    c = asxp(rng.random(n))
    Ws = asxp(rng.standard_normal((3, model.size)))
    ells, grads = model.per_sample_and_grad_many(Ws, A, T, weights=c, xp=xp)
    assert ells.shape == (3, n) and grads.shape == (3, model.size)
    # the loss-free gradients equal the gradients returned with the losses
    assert relative_error(model.grad_many(Ws, A, T, weights=c, xp=xp), grads) <= 1e-14
    for j in range(3):
        ell, g = model.per_sample_and_grad(Ws[j, ...], A, T, weights=c, xp=xp)
        assert relative_error(ells[j, ...], ell) <= 1e-12
        assert relative_error(grads[j, ...], g) <= 1e-12
        assert relative_error(model.grad(Ws[j, ...], A, T, weights=c, xp=xp), g) <= 1e-14


# ---------------------------------------------------------------- MLP
def _mlp_setup(activation, xp, asxp, rng, device):
    model = MLP(d, h, C, activation)
    A = asxp(rng.standard_normal((n, d)))
    Y = one_hot(asxp(rng.integers(0, C, n)), C, dtype=xp.float64, xp=xp)
    theta = model.init(rng, xp=xp, dtype=xp.float64, device=device)
    theta = theta + asxp(0.2 * rng.standard_normal(model.size))  # nonzero biases too
    return model, A, Y, theta


def _away_from_kinks(model, theta, A, dirs, step, xp):
    """Finite differences of a ReLU net are exact only if no pre-activation changes sign."""
    W1, b1, _, _ = model.unpack(theta, xp=xp)
    U = to_host(A @ W1 + b1)
    for v in dirs:
        V1, c1, _, _ = model.unpack(v, xp=xp)
        RU = to_host(A @ V1 + c1)
        assert (np.abs(U) > 2.5 * step * np.abs(RU)).all(), "test point too close to a ReLU kink"


def test_mlp_pack_unpack_layout(xp, asxp, rng, device):
    model = MLP(d, h, C)
    W1, b1 = rng.standard_normal((d, h)), rng.standard_normal(h)
    W2, b2 = rng.standard_normal((h, C)), rng.standard_normal(C)
    flat = np.concatenate([W1.ravel(), b1, W2.ravel(), b2])  # the documented layout
    theta = model.pack(asxp(W1), asxp(b1), asxp(W2), asxp(b2), xp=xp)
    assert_close(theta, asxp(flat), rtol=0)
    for got, want in zip(model.unpack(theta, xp=xp), (W1, b1, W2, b2)):
        assert_close(got, asxp(want), rtol=0)
    assert model.size == flat.size
    init = model.init(0, xp=xp, dtype=xp.float32, device=device)
    assert init.dtype == xp.float32 and init.shape == (model.size,)
    assert dev_of(init) == dev_of(theta)
    assert_close(model.unpack(init, xp=xp)[1], xp.zeros(h, dtype=xp.float32, device=device))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_mlp_derivatives_vs_fd(activation, xp, asxp, rng, device):
    model, A, Y, theta = _mlp_setup(activation, xp, asxp, rng, device)
    c = asxp(rng.random(n) + 0.1)
    u, v = asxp(_unit(rng, model.size)), asxp(_unit(rng, model.size))
    step = 1e-3 if activation == "tanh" else 1e-5
    if activation == "relu":
        _away_from_kinks(model, theta, A, [u], step, xp)
    # the forward pass against a host re-implementation
    W1, b1, W2, b2 = (to_host(a) for a in model.unpack(theta, xp=xp))
    Ah = to_host(A)
    Hh = np.tanh(Ah @ W1 + b1) if activation == "tanh" else np.maximum(Ah @ W1 + b1, 0)
    assert_close(model.forward(theta, A, xp=xp)[0], asxp(Hh @ W2 + b2), rtol=1e-13)
    value = lambda t: model.value(t, A, Y, weights=c, xp=xp)  # noqa: E731
    grad = lambda t: model.per_sample_and_grad(t, A, Y, weights=c, xp=xp)[1]  # noqa: E731
    assert check_gradient(value, grad, theta, u=u, h=step) <= TOL
    hv = model.hvp(theta, A, Y, u, weights=c, xp=xp)
    _same_kind(hv, theta)
    assert check_jacobian_vector(grad, hv, theta, u, h=step) <= TOL
    assert check_symmetry(lambda r: model.hvp(theta, A, Y, r, weights=c, xp=xp), u, v) <= 1e-12
    per = model.per_sample_jvp(theta, A, Y, u, xp=xp)
    assert check_jacobian_vector(lambda t: model.per_sample_and_grad(t, A, Y, xp=xp)[0],
                                 per, theta, u, h=step) <= TOL


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_mlp_stacked_equals_single(activation, xp, asxp, rng, device):
    model, A, Y, theta = _mlp_setup(activation, xp, asxp, rng, device)
    c = asxp(rng.random(n))
    Ts = xp.stack([theta, theta * 0.5, theta + asxp(rng.standard_normal(model.size))])
    ells, grads = model.per_sample_and_grad_many(Ts, A, Y, weights=c, xp=xp)
    assert grads.shape == (3, model.size)
    assert relative_error(model.grad_many(Ts, A, Y, weights=c, xp=xp), grads) <= 1e-14
    for j in range(3):
        ell, g = model.per_sample_and_grad(Ts[j, ...], A, Y, weights=c, xp=xp)
        assert relative_error(ells[j, ...], ell) <= 1e-12
        assert relative_error(grads[j, ...], g) <= 1e-12
        assert relative_error(model.grad(Ts[j, ...], A, Y, weights=c, xp=xp), g) <= 1e-14


def test_mlp_float32_extreme_logits(xp, asxp, rng, device):
    model = MLP(d, h, C, "tanh")
    A = asxp(rng.standard_normal((n, d)), dtype="float32")
    Y = one_hot(asxp(rng.integers(0, C, n)), C, dtype=xp.float32, xp=xp)
    W1 = rng.standard_normal((d, h)) * 10
    W2 = rng.standard_normal((h, C)) * 5e3  # logits up to ~1e4
    theta = model.pack(*(asxp(a, dtype="float32") for a in (W1, np.zeros(h), W2, np.zeros(C))), xp=xp)
    Z = to_host(model.forward(theta, A, xp=xp)[0])
    assert np.abs(Z).max() > 1e3
    v = xp.ones_like(theta)
    outs = [model.value(theta, A, Y, xp=xp), *model.per_sample_and_grad(theta, A, Y, xp=xp),
            model.hvp(theta, A, Y, v, xp=xp), model.per_sample_jvp(theta, A, Y, v, xp=xp)]
    for out in outs:
        assert out.dtype == xp.float32
        assert bool(xp.all(xp.isfinite(out)))
