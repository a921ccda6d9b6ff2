"""Optimisers and schedules of refbilevel.optim against their formulas."""

import math

import numpy as np
import pytest

from refbilevel import optim
from refbilevel._backend import backend_namespace, to_host


def test_sgd_formula(xp, asxp):
    g = asxp([1.0, -2.0, 0.5])
    opt = optim.sgd()
    state = opt.init(g)
    delta, state = opt.update(g, state, 0.1)
    np.testing.assert_allclose(to_host(delta), [-0.1, 0.2, -0.05], rtol=1e-15)
    assert state.count == 1


def test_momentum_torch_convention_hand_computed(xp, asxp):
    # buf <- mu*buf + g ; p <- p - lr*buf, with buf_{-1} = 0 (torch: buf_0 = g_0)
    # mu = 0.5, lr = 0.1, p0 = 1, grads 2, -1, 4:
    #   buf: 2, 0.5*2-1 = 0, 0*0.5+4 = 4 ; p: 1-0.2 = 0.8, 0.8-0 = 0.8, 0.8-0.4 = 0.4
    opt = optim.momentum(0.5)
    p = asxp([1.0])
    state = opt.init(p)
    ps, bufs = [], []
    for g in (2.0, -1.0, 4.0):
        delta, state = opt.update(asxp([g]), state, 0.1)
        p = p + delta
        ps.append(float(to_host(p)[0]))
        bufs.append(float(to_host(state.buf)[0]))
    np.testing.assert_allclose(bufs, [2.0, 0.0, 4.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ps, [0.8, 0.8, 0.4], rtol=0, atol=1e-15)
    assert state.count == 3


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_against_formula(xp, asxp, rng, bias_correction):
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.01
    opt = optim.adam(b1, b2, eps, bias_correction=bias_correction)
    grads = rng.standard_normal((5, 4))
    state = opt.init(asxp(grads[0]))
    m = np.zeros(4)
    v = np.zeros(4)
    for t, g in enumerate(grads, start=1):           # counter from 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        expected = -lr * mh / (np.sqrt(vh) + eps)
        delta, state = opt.update(asxp(g), state, lr)
        np.testing.assert_allclose(to_host(delta), expected, rtol=1e-12)
        assert state.count == t
    if bias_correction:
        # first corrected step is lr * g/(|g| + eps) ~ lr*sign(g): independent check
        opt2 = optim.adam(b1, b2, eps)
        d1, _ = opt2.update(asxp(grads[0]), opt2.init(asxp(grads[0])), lr)
        np.testing.assert_allclose(to_host(d1), -lr * np.sign(grads[0]), rtol=1e-6)


def test_adam_minimises_quadratic(xp, asxp):
    # f(p) = 0.5 * sum(h * (p - c)^2), minimiser c
    h = asxp([1.0, 10.0, 0.1])
    c = asxp([1.0, -2.0, 3.0])
    opt = optim.adam(0.9, 0.999)
    p = asxp([0.0, 0.0, 0.0])
    state = opt.init(p)
    sched = optim.inverse_power(0.2, 0.5)
    for k in range(2000):
        delta, state = opt.update(h * (p - c), state, sched(k))
        p = p + delta
    np.testing.assert_allclose(to_host(p), [1.0, -2.0, 3.0], atol=2e-3)


def test_updates_keep_dtype_device_and_do_not_mutate(xp, asxp):
    g = asxp([1.0, 2.0], dtype="float32")
    for opt in (optim.sgd(), optim.momentum(0.9), optim.adam()):
        state = opt.init(g)
        before = [np.array(to_host(a), copy=True) for a in state if not isinstance(a, int)]
        delta, new = opt.update(g, state, 0.5)
        assert delta.dtype == xp.float32
        assert delta.device == g.device
        after = [to_host(a) for a in state if not isinstance(a, int)]
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)
        assert new is not state


@pytest.mark.parametrize("make", [
    optim.sgd, lambda: optim.momentum(0.9), lambda: optim.adam(0.9, 0.99, 1e-8),
    lambda: optim.adam(0.8, 0.9, 1e-3, keep_corrected=True),
    lambda: optim.adam(bias_correction=False),
], ids=["sgd", "momentum", "adam", "adam-corrected", "adam-raw"])
def test_per_row_step_sizes_equal_separate_updates(xp, asxp, rng, make):
    # A stack of two parameter rows with step sizes (0.3, 0.07) as an (2, 1) array gives,
    # row by row and bit for bit, the updates of each row alone with its scalar step size
    # (the updates are elementwise): the form F2SA's inner sequences use.
    opt = make()
    lrs = (0.3, 0.07)
    grads = rng.standard_normal((4, 2, 5))
    dtypes = ("float64", "float32") if xp is backend_namespace("numpy") else ("float64",)
    for dtype in dtypes:
        lr_rows = asxp([[lrs[0]], [lrs[1]]], dtype=dtype)
        stacked = opt.init(asxp(grads[0], dtype=dtype))
        alone = [opt.init(asxp(grads[0, j], dtype=dtype)) for j in range(2)]
        for g in grads:
            delta, stacked = opt.update(asxp(g, dtype=dtype), stacked, lr_rows)
            assert delta.dtype == lr_rows.dtype and tuple(delta.shape) == (2, 5)
            for j in range(2):
                delta_j, alone[j] = opt.update(asxp(g[j], dtype=dtype), alone[j], lrs[j])
                np.testing.assert_array_equal(to_host(delta)[j], to_host(delta_j))
        for j in range(2):
            for a, b in zip(stacked, alone[j]):
                if isinstance(a, int):
                    assert a == b
                else:
                    np.testing.assert_array_equal(to_host(a)[j], to_host(b))


def test_schedules_formulas():
    assert optim.constant(0.3)(0) == 0.3 and optim.constant(0.3)(10**6) == 0.3
    inv = optim.inverse_power(2.0, 5 / 7)
    for k in (0, 1, 10, 999):
        assert inv(k) == pytest.approx(2.0 / (k + 1) ** (5 / 7), rel=1e-15)
    assert optim.inverse_power(2.0, 0.0)(50) == 2.0
    cos = optim.cosine(1.0, 100, floor=0.1)
    assert cos(0) == pytest.approx(1.0)
    assert cos(50) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-15)
    assert cos(100) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)
    assert cos(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    st = optim.stagewise(2.0, 10)
    assert [st(k) for k in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_multiplier_schedules():
    pre = optim.stage_multiplier(0.5, 2.0, update="pre")
    post = optim.stage_multiplier(0.5, 2.0, update="post")
    assert [pre(i) for i in range(3)] == [1.0, 2.0, 4.0]
    assert [post(i) for i in range(3)] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("call, exc", [
    (lambda: optim.momentum(1.0), ValueError),
    (lambda: optim.momentum("0.9"), TypeError),
    (lambda: optim.adam(b1=1.0), ValueError),
    (lambda: optim.adam(eps=0.0), ValueError),
    (lambda: optim.adam(bias_correction=1), TypeError),
    (lambda: optim.cosine(1.0, 0), ValueError),
    (lambda: optim.stagewise(2.0, 0), ValueError),
    (lambda: optim.stage_multiplier(1.0, 2.0, update="mid"), ValueError),
    (lambda: optim.inverse_power(1.0, -1.0), ValueError),
])
def test_validation(call, exc):
    with pytest.raises(exc):
        call()
