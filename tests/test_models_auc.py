"""AUC-M square loss: value vs direct formulas, derivatives vs finite differences, α*."""

import numpy as np
import pytest

from refbilevel._backend import device as dev_of, to_host
from refbilevel.models.auc import (auc_m_alpha_star, auc_m_grad, auc_m_hess_alpha_alpha,
                                   auc_m_hess_h_alpha, auc_m_hess_hh, auc_m_loss)

EPS = 1e-6
RTOL = 1e-7


def _data(rng, n=9, T=2):
    h = rng.standard_normal((T, n))
    y = np.zeros((T, n))
    y[:, :3] = 1.0
    y = np.stack([rng.permutation(r) for r in y])
    return h, y, rng.standard_normal(T), rng.standard_normal(T), rng.random(T) + 0.2


def _kw(version, asxp, y):
    return {"p": asxp(y.mean(axis=1)) if version == "v1" else None, "version": version,
            "margin": 0.7}


def _close(a, b, rtol=RTOL, scale=None):
    a, b = np.asarray(to_host(a)), np.asarray(to_host(b))
    scale = max(np.abs(b).max(), 1e-3) if scale is None else scale
    assert np.abs(a - b).max() <= rtol * scale, (a, b)


def _direct(h, y, a, b, al, p, m, version):
    """Host formula written from docs/theory/auc.rst with boolean indexing (independent)."""
    out = []
    for t in range(h.shape[0]):
        P, N = y[t] == 1, y[t] == 0
        if version == "v1":
            pt, n = p[t], h.shape[1]
            val = ((1 - pt) * np.sum((h[t][P] - a[t]) ** 2) / n + pt * np.sum((h[t][N] - b[t]) ** 2) / n
                   + 2 * al[t] * (pt * (1 - pt) * m + (pt * h[t][N].sum() - (1 - pt) * h[t][P].sum()) / n)
                   - pt * (1 - pt) * al[t] ** 2)
        else:
            val = (np.mean((h[t][P] - a[t]) ** 2) + np.mean((h[t][N] - b[t]) ** 2)
                   + 2 * al[t] * (m + h[t][N].mean() - h[t][P].mean()) - al[t] ** 2)
        out.append(val)
    return np.array(out)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_value_matches_direct_formula(version, asxp, rng):
    h, y, a, b, al = _data(rng)
    val = auc_m_loss(asxp(h), asxp(y), asxp(a), asxp(b), asxp(al), **_kw(version, asxp, y))
    _close(val, _direct(h, y, a, b, al, y.mean(axis=1), 0.7, version), rtol=1e-13)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_gradients_vs_finite_differences(version, asxp, rng):
    h, y, a, b, al = _data(rng)
    kw = _kw(version, asxp, y)
    args = [asxp(v) for v in (h, y, a, b, al)]
    grads = auc_m_grad(*args, **kw)
    for slot, g in zip((0, 2, 3, 4), grads):
        u = rng.standard_normal(args[slot].shape)
        plus, minus = list(args), list(args)
        plus[slot] = args[slot] + EPS * asxp(u)
        minus[slot] = args[slot] - EPS * asxp(u)
        fd = (to_host(auc_m_loss(*plus, **kw)) - to_host(auc_m_loss(*minus, **kw))) / (2 * EPS)
        ga = to_host(g)
        exact = np.sum(ga * u, axis=-1) if ga.ndim == 2 else ga * u
        _close(exact, fd)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_second_derivatives_vs_finite_differences(version, asxp, rng):
    h, y, a, b, al = _data(rng)
    kw = _kw(version, asxp, y)
    H, Y, A, B, AL = (asxp(v) for v in (h, y, a, b, al))
    u = rng.standard_normal(h.shape)
    fd_hh = (to_host(auc_m_grad(H + EPS * asxp(u), Y, A, B, AL, **kw)[0])
             - to_host(auc_m_grad(H - EPS * asxp(u), Y, A, B, AL, **kw)[0])) / (2 * EPS)
    hkw = {"p": kw["p"], "version": version}
    _close(to_host(auc_m_hess_hh(Y, **hkw)) * u, fd_hh)
    fd_ha = (to_host(auc_m_grad(H, Y, A, B, AL + EPS, **kw)[0])
             - to_host(auc_m_grad(H, Y, A, B, AL - EPS, **kw)[0])) / (2 * EPS)
    _close(auc_m_hess_h_alpha(Y, **hkw), fd_ha)
    fd_aa = (to_host(auc_m_grad(H, Y, A, B, AL + EPS, **kw)[3])
             - to_host(auc_m_grad(H, Y, A, B, AL - EPS, **kw)[3])) / (2 * EPS)
    _close(auc_m_hess_alpha_alpha(Y, **hkw), fd_aa)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_alpha_star_is_maximiser(version, asxp, rng):
    h, y, a, b, _ = _data(rng)
    kw = _kw(version, asxp, y)
    H, Y, A, B = (asxp(v) for v in (h, y, a, b))
    star = auc_m_alpha_star(H, Y, nonnegative=False, **kw)
    dal = to_host(auc_m_grad(H, Y, A, B, star, **kw)[3])
    assert np.abs(dal).max() <= 1e-12
    best = to_host(auc_m_loss(H, Y, A, B, star, **kw))
    for delta in (1e-3, -1e-3, 0.5, -0.5):
        assert np.all(best > to_host(auc_m_loss(H, Y, A, B, star + delta, **kw)))


def test_alpha_star_clipped_at_zero(asxp):
    # positives score far above negatives: unconstrained alpha* = m - gap < 0
    h = np.array([[5.0, 5.0, 0.0, 0.0]])
    y = np.array([[1.0, 1.0, 0.0, 0.0]])
    H, Y = asxp(h), asxp(y)
    free = to_host(auc_m_alpha_star(H, Y, version="v2", nonnegative=False))
    clip = to_host(auc_m_alpha_star(H, Y, version="v2"))
    assert free[0] == pytest.approx(1.0 - 5.0, abs=1e-14) and clip[0] == 0.0
    zero = asxp(np.zeros(1))
    v0 = to_host(auc_m_loss(H, Y, zero, zero, zero, version="v2"))
    v1 = to_host(auc_m_loss(H, Y, zero, zero, zero + 1e-3, version="v2"))
    assert v0[0] > v1[0]


def test_margin_is_applied(asxp, rng):
    """No LibAUC quirk: F(m) - F(1) = 2 α c (m - 1)."""
    h, y, a, b, al = _data(rng)
    p = y.mean(axis=1)
    args = [asxp(v) for v in (h, y, a, b, al)]
    d = to_host(auc_m_loss(*args, p=asxp(p), margin=2.5)) - to_host(auc_m_loss(*args, p=asxp(p)))
    _close(d, 2 * al * p * (1 - p) * 1.5, rtol=1e-13)


def test_float32_extreme_scores_finite_and_dtype_device(backend, rng):
    h = np.array([[1e4, -1e4, 3e3, -2e3]])
    y = np.array([[1.0, 0.0, 1.0, 0.0]])
    H, Y = backend.asarray(h, "float32"), backend.asarray(y, "float32")
    zero = backend.asarray(np.zeros(1), "float32")
    for version in ("v1", "v2"):
        p = 0.5 if version == "v1" else None
        out = [auc_m_loss(H, Y, zero, zero, zero, p=p, version=version),
               *auc_m_grad(H, Y, zero, zero, zero, p=p, version=version),
               auc_m_alpha_star(H, Y, p=p, version=version)]
        for o in out:
            assert o.dtype == backend.xp.float32 and dev_of(o) == dev_of(H)
            assert np.all(np.isfinite(to_host(o)))


def test_bad_inputs(asxp):
    H, Y = asxp(np.zeros((1, 4))), asxp(np.array([[1.0, 0, 0, 1]]))
    with pytest.raises(ValueError, match="version"):
        auc_m_loss(H, Y, 0.0, 0.0, 0.0, version="v3")
    with pytest.raises(ValueError, match="p"):
        auc_m_loss(H, Y, 0.0, 0.0, 0.0, version="v1")
    with pytest.raises(ValueError, match="p must lie"):
        auc_m_loss(H, Y, 0.0, 0.0, 0.0, p=1.0)
    with pytest.raises(ValueError, match="y must have the shape"):
        auc_m_loss(H, asxp(np.zeros((1, 3))), 0.0, 0.0, 0.0, p=0.5)
    with pytest.raises(TypeError, match="h must be an array"):
        auc_m_loss([0.0, 1.0], Y, 0.0, 0.0, 0.0, p=0.5)
    with pytest.raises(TypeError, match="nonnegative"):
        auc_m_alpha_star(H, Y, p=0.5, nonnegative=1)
