"""Exact at the edges: certificates of the exact oracles, the softmax cross-entropy against an
arbitrary-precision reference, and inner solves polished to the rounding floor."""

import functools
import warnings

import mpmath
import numpy as np
import pytest

from refbilevel._backend import to_host, to_host_scalar
from refbilevel.models.losses import SOFTMAX_CE
from refbilevel.problems import DataCleaning, LayerDecayMLP, LogRegHPO
from refbilevel.problems.base import Certificate, CertificateError, CertificateWarning

EPS = 2.0**-52

# ----------------------------------------------------------------------------- softmax CE
#: 460 digits resolve 1 − p_c down to 1e-400; anything smaller is 0 in float64.
_DPS = 460


def _mp_softmax_ce(Z, Y, R):
    """Loss, P − Y, the HVP and <P − Y, R> per row, from the definitions, in 460 digits."""
    n, C = Z.shape
    loss, grad, hvp, direc = np.zeros(n), np.zeros((n, C)), np.zeros((n, C)), np.zeros(n)
    with mpmath.workdps(_DPS):
        for i in range(n):
            z, y, r = ([mpmath.mpf(float(v)) for v in row] for row in (Z[i], Y[i], R[i]))
            e = [mpmath.exp(zk) for zk in z]
            s = mpmath.fsum(e)
            p = [ek / s for ek in e]
            lse = mpmath.log(s)
            g = [pk - yk for pk, yk in zip(p, y)]
            pr = mpmath.fsum(pk * rk for pk, rk in zip(p, r))
            loss[i] = float(mpmath.fsum(yk * (lse - zk) for yk, zk in zip(y, z)))
            grad[i] = [float(v) for v in g]
            hvp[i] = [float(pk * (rk - pr)) for pk, rk in zip(p, r)]
            direc[i] = float(mpmath.fsum(gk * rk for gk, rk in zip(g, r)))
    return loss, grad, hvp, direc


@functools.lru_cache(maxsize=None)
def _softmax_case(scale):
    """Logits of size ``scale`` (most rows confidently right, some wrong), targets, directions."""
    rng = np.random.default_rng(13)
    n, C = 24, 4
    Z = scale * rng.standard_normal((n, C))
    labels = np.argmax(Z, axis=1)
    labels[:4] = (labels[:4] + 1) % C
    Y = np.eye(C)[labels]
    R = rng.standard_normal((n, C))
    # condition of e^{z_k − z_c} in z: 1 + the largest gap that does not underflow
    kappa = 1.0 + np.minimum(Z.max(axis=1, keepdims=True) - Z, 800.0).max(axis=1)
    return Z, Y, R, kappa, _mp_softmax_ce(Z, Y, R)


def _componentwise(actual, desired, kappa):
    """max |a − d| / (κ |d|) with an absolute floor at the subnormal range."""
    actual = np.asarray(to_host(actual))
    return float(np.max(np.abs(actual - desired) / (kappa * np.abs(desired) + 1e-300)))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 1e4])
def test_softmax_ce_against_arbitrary_precision(scale, asxp, xp):
    """Loss, gradient, HVP and directional derivative within 16 ε·κ of a 460-digit reference.

    κ = 1 + (largest logit gap) is the condition of e^{z_k − z_c} in the logits; the plain
    formulas (log-sum-exp − z_y, P − Y, P ⊙ (R − <P, R>)) are off by 1e-2 relative already
    at scale 30 and lose every digit at 1e3.
    """
    Z, Y, R, kappa, (loss, grad, hvp, direc) = _softmax_case(scale)
    xp_Z, xp_Y, xp_R = asxp(Z), asxp(Y), asxp(R)
    k2 = kappa[:, None]
    tol = 16 * EPS
    assert _componentwise(SOFTMAX_CE.per_sample(xp_Z, xp_Y, xp=xp), loss, kappa) <= tol
    assert _componentwise(SOFTMAX_CE.score_grad(xp_Z, xp_Y, xp=xp), grad, k2) <= tol
    assert _componentwise(SOFTMAX_CE.score_hvp(xp_Z, xp_Y, xp_R, xp=xp), hvp, k2) <= tol
    assert _componentwise(SOFTMAX_CE.directional(xp_Z, xp_Y, xp_R, xp=xp), direc, kappa) <= tol


def test_softmax_reference_rejects_the_plain_formulas():
    """The reference and the tolerance discriminate: the textbook forms fail them at scale 30."""
    Z, Y, R, kappa, (loss, grad, hvp, _) = _softmax_case(30.0)
    shifted = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    plain_loss = -(Y * (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))).sum(1)
    assert _componentwise(plain_loss, loss, kappa) > 1e-6
    assert _componentwise(P - Y, grad, kappa[:, None]) > 1e-6
    assert _componentwise(P * (R - (P * R).sum(1, keepdims=True)), hvp, kappa[:, None]) > 1e-6


@functools.lru_cache(maxsize=None)
def _confident_cleaning_case():
    """Linear data cleaning whose every training row is classified with a logit gap of 30 to 210.

    Scores are 1e3 + O(100): p_c = 1 − O(e^{-30}), so P − Y, the HVP's centring and the
    per-sample losses are all far below the machine epsilon relative to 1. ``reg = 0``
    keeps the loss terms from being swamped by ``reg·w``. Returns the data, the point and
    the 460-digit references of ∇_x g, ∇_w g, ∇²_ww g·v and ∇²_xw g·v.
    """
    rng = np.random.default_rng(5)
    n, d, C = 12, 3, 3
    A = np.c_[np.ones(n), rng.standard_normal((n, d - 1))]
    W = np.vstack([np.full(C, 1e3), 100.0 * rng.standard_normal((d - 1, C))])
    labels = (A @ W).argmax(axis=1)
    x, v = rng.standard_normal(n), rng.standard_normal(d * C)
    mp = mpmath.mpf
    with mpmath.workdps(_DPS):
        Am = [[mp(float(a)) for a in row] for row in A]
        Wm = [[mp(float(a)) for a in row] for row in W]
        Vm = [[mp(float(a)) for a in row] for row in v.reshape(d, C)]
        gy = [[mp(0)] * C for _ in range(d)]
        hv = [[mp(0)] * C for _ in range(d)]
        gx, cx = [], []
        for i in range(n):
            z = [mpmath.fsum(Am[i][j] * Wm[j][k] for j in range(d)) for k in range(C)]
            r = [mpmath.fsum(Am[i][j] * Vm[j][k] for j in range(d)) for k in range(C)]
            e = [mpmath.exp(t) for t in z]
            s = mpmath.fsum(e)
            p = [t / s for t in e]
            g = [p[k] - (1 if k == labels[i] else 0) for k in range(C)]
            pr = mpmath.fsum(p[k] * r[k] for k in range(C))
            sig = 1 / (1 + mpmath.exp(-mp(float(x[i]))))
            gx.append(sig * (1 - sig) * (mpmath.log(s) - z[labels[i]]) / n)
            cx.append(sig * (1 - sig) * mpmath.fsum(g[k] * r[k] for k in range(C)) / n)
            for j in range(d):
                for k in range(C):
                    gy[j][k] += sig * Am[i][j] * g[k] / n
                    hv[j][k] += sig * Am[i][j] * p[k] * (r[k] - pr) / n
        flat = [float(t) for row in gy for t in row], [float(t) for row in hv for t in row]
        refs = (np.array([float(t) for t in gx]), np.array(flat[0]), np.array(flat[1]),
                np.array([float(t) for t in cx]))
    return (A, labels, W.ravel(), x, v), refs


def test_confident_data_cleaning_oracles_against_arbitrary_precision(asxp):
    """∇_x g (per-sample losses), ∇_w g, HVP and cross product within 2e-13 (norm-wise).

    The bound is the conditioning of e^{z_k − z_c} in the logits (gaps ≤ 210, 210 ε ≈ 5e-14)
    with a factor 4 of margin; the plain softmax formulas are off by 5e-4 to 1e-3 here.
    """
    (A, labels, w, x, v), (gx, gy, hv, cx) = _confident_cleaning_case()
    P = DataCleaning(asxp(A), asxp(labels), asxp(A[:3]), asxp(labels[:3]), n_classes=3, reg=0.0)
    X, Wf, V = asxp(x), asxp(w), asxp(v)
    ogx, ogy = P.grad_g(X, Wf)
    for name, actual, desired in (("grad_g_x", ogx, gx), ("grad_g_y", ogy, gy),
                                  ("hvp_g", P.hvp_g(X, Wf, V), hv),
                                  ("cross_g", P.cross_g(X, Wf, V), cx)):
        err = np.linalg.norm(to_host(actual) - desired) / np.linalg.norm(desired)
        assert err <= 2e-13, (name, err)


# ------------------------------------------------------------- polished inner solves
def _mp_logreg_reference(A, b, Av, bv, x, dps=50):
    """y*(x) and ∇F(x) of binary LogRegHPO (sum reduction, λ = e^x) by Newton in ``dps`` digits."""
    mp = mpmath.mpf
    with mpmath.workdps(dps):
        A_, Av_ = mpmath.matrix(A.tolist()), mpmath.matrix(Av.tolist())
        n, d = A.shape
        lam = [mpmath.exp(mp(float(t))) for t in x]
        w = mpmath.matrix(d, 1)

        def sig(t):
            return 1 / (1 + mpmath.exp(-t))

        for _ in range(60):
            grad = mpmath.matrix([lam[j] * w[j] for j in range(d)])
            H = mpmath.diag(lam)
            for i in range(n):
                m = mp(float(b[i])) * mpmath.fsum(A_[i, j] * w[j] for j in range(d))
                for j in range(d):
                    grad[j] -= mp(float(b[i])) * sig(-m) * A_[i, j] / n
                    for k in range(d):
                        H[j, k] += sig(m) * sig(-m) * A_[i, j] * A_[i, k] / n
            step = mpmath.lu_solve(H, grad)
            w -= step
            if mpmath.norm(step) < mpmath.mpf(10) ** (-dps + 5):
                break
        fy = mpmath.matrix(d, 1)
        for i in range(Av.shape[0]):
            m = mp(float(bv[i])) * mpmath.fsum(Av_[i, j] * w[j] for j in range(d))
            for j in range(d):
                fy[j] -= mp(float(bv[i])) * sig(-m) * Av_[i, j] / Av.shape[0]
        vstar = mpmath.lu_solve(H, fy)
        hg = [-lam[j] * w[j] * vstar[j] for j in range(d)]
        return np.array([float(t) for t in w]), np.array([float(t) for t in hg])


@functools.lru_cache(maxsize=None)
def _logreg_case():
    rng = np.random.default_rng(7)
    n, d = 40, 4
    A, Av = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    teacher = rng.standard_normal(d)
    b = np.where(A @ teacher + 0.5 * rng.standard_normal(n) >= 0, 1.0, -1.0)
    bv = np.where(Av @ teacher + 0.5 * rng.standard_normal(n) >= 0, 1.0, -1.0)
    x = 0.3 * rng.standard_normal(d)
    return (A, b, Av, bv, x), _mp_logreg_reference(A, b, Av, bv, x)


def test_logreg_inner_solution_and_hypergradient_to_the_rounding_floor(asxp):
    """Polished Newton and refined CG against a 50-digit Newton: y* and ∇F within 4e-15 relative.

    The instance is well conditioned (Hessian eigenvalues about [0.8, 1.5]). Measured: y*
    and ∇F within 2e-16; without polishing and refinement the solve stopped at
    ||∇g|| = 1.2e-14 with y* and ∇F off by 3.6e-14 and 2.8e-14.
    """
    (A, b, Av, bv, x), (w_ref, hg_ref) = _logreg_case()
    P = LogRegHPO(asxp(A), asxp(b), asxp(Av), asxp(bv))
    y, cert = P.inner_solution(asxp(x), return_certificate=True)
    assert cert.ok and cert.min_curvature > 0.1, cert
    err_y = np.linalg.norm(to_host(y) - w_ref) / np.linalg.norm(w_ref)
    hg = to_host(P.hypergradient(asxp(x)))
    err_hg = np.linalg.norm(hg - hg_ref) / np.linalg.norm(hg_ref)
    assert err_y <= 4e-15, err_y
    assert err_hg <= 4e-15, err_hg


# ------------------------------------------------------------------- certificates
@functools.lru_cache(maxsize=None)
def _relu_case(index):
    """Small ReLU instances of both MLP problems (three seeds each), solved once.

    Returns the problem, x, the solution, its certificate and the warnings emitted.
    """
    seed, kind = divmod(index, 2)
    if kind == 0:
        P = DataCleaning.synthetic(n_train=40, n_val=20, n_features=4, model="mlp", hidden=6,
                                   activation="relu", reg=0.05, seed=seed)
    else:
        P = LayerDecayMLP.synthetic(n_train=40, n_val=20, n_features=4, hidden=6,
                                    activation="relu", seed=seed)
    x = P.init_x()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y, cert = P.inner_solution(x, return_certificate=True)
    return P, x, y, cert, [w for w in caught if issubclass(w.category, CertificateWarning)]


def _gradient_descent_gain(P, x, y, lr=0.002, steps=100):
    """How much plain gradient descent lowers g from y (an independent test of minimality)."""
    z = y
    for _ in range(steps):
        z = z - lr * P.grad_g_y(x, z)
    return to_host_scalar(P.g(x, y)) - to_host_scalar(P.g(x, z))


@pytest.mark.parametrize("index", range(6))
def test_relu_inner_solution_is_certified_or_flagged(index):
    """ReLU models: a returned point either passes its certificate or is flagged, never silent.

    Flagged points are checked independently: the residual is recomputed from grad_g_y and
    100 plain gradient steps (step 0.002) lower g (by 1e-7 to 1e-5 on these instances);
    ``on_failure="raise"`` refuses them in every exact
    oracle. Certified points have a residual at the rounding floor and gradient descent gains
    nothing beyond rounding.
    """
    P, x, y, cert, flagged = _relu_case(index)
    residual = to_host_scalar(P.inner_residual(x, y))
    assert cert.residual == pytest.approx(residual, rel=1e-12)
    if cert.ok:
        assert not flagged and cert.relative_residual <= 1e-12
        assert _gradient_descent_gain(P, x, y) <= 1e-14 * (1 + abs(to_host_scalar(P.g(x, y))))
        return
    assert flagged and cert.status in ("not stationary", "negative curvature")
    assert "not a certified minimiser" in str(flagged[0].message)
    if cert.status == "not stationary":
        assert residual > cert.rtol * cert.scale
        assert _gradient_descent_gain(P, x, y) > 1e-9
    calls = [lambda: P.hypergradient(x, y_star=y, on_failure="raise")]
    if index == 0:  # the oracles that solve again: once
        calls += [lambda: P.inner_solution(x, on_failure="raise"),
                  lambda: P.hypergradient(x, on_failure="raise"),
                  lambda: P.value(x, on_failure="raise")]
    for call in calls:
        with pytest.raises(CertificateError, match="not a certified minimiser") as info:
            call()
        assert not info.value.certificate.ok


def test_relu_instances_include_flagged_ones():
    """The ReLU cases above are not vacuous: most of them stall on a kink and are flagged."""
    assert [_relu_case(i)[3].ok for i in range(6)].count(False) >= 3


@pytest.mark.skip_xp_backends("array_api_strict", "array_api_strict-device1",
                              reason="MLP Newton solves are slow there; the certificate's "
                                     "backend handling is covered by the logistic test")
def test_certificate_of_smooth_models(xp, device):
    """tanh MLP and linear cleaning: certified, residual at the floor, curvature range sane.

    LayerDecayMLP has a zero-curvature direction (the output bias), which passes: the
    smallest Ritz value is ~0, not clearly negative.
    """
    on = dict(xp=xp, device=device)
    for P in (DataCleaning.synthetic(n_train=40, n_val=20, n_features=4, model="mlp", hidden=6,
                                     activation="tanh", reg=0.05, seed=0, **on),
              LayerDecayMLP.synthetic(n_train=40, n_val=20, n_features=4, hidden=6, seed=0, **on),
              DataCleaning.synthetic(n_train=40, n_val=20, n_features=4, seed=0, **on)):
        x = P.init_x()
        hg, cert = P.hypergradient(x, return_certificate=True)
        assert isinstance(cert, Certificate) and cert.ok, cert
        assert cert.relative_residual <= 1e-13
        assert cert.max_curvature > 0 and cert.min_curvature > -1e-8 * cert.max_curvature
        value, cert_v = P.value(x, return_certificate=True)
        assert cert_v.ok


def test_lanczos_extremes_against_eigvalsh(rng):
    from refbilevel.problems.base import lanczos_extremes

    Q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    eig = np.concatenate([[-0.5, 0.0], np.geomspace(0.1, 10.0, 10)])
    M = (Q * eig) @ Q.T
    lo, hi = lanczos_extremes(lambda v: M @ v, np.zeros(12), n_steps=12)
    assert lo == pytest.approx(-0.5, abs=1e-10) and hi == pytest.approx(10.0, rel=1e-10)


def test_bad_on_failure_is_refused():
    P = DataCleaning.synthetic(n_train=10, n_val=5, n_features=3, seed=0)
    with pytest.raises(ValueError, match="on_failure"):
        P.inner_solution(P.init_x(), on_failure="loud")


def test_check_problem_reports_the_certificate():
    """check_problem records the exact inner solution's certificate and format_table prints it."""
    from refbilevel import checks

    P, x, y, cert, _ = next(_relu_case(i) for i in range(6) if not _relu_case(i)[3].ok)
    table = checks.check_problem(P, n_points=1, seed=0, x=x, y=y)
    assert isinstance(table, dict) and not table.certified
    reported = table.certificates["inner_solution"]
    assert reported.status == cert.status
    assert reported.residual == pytest.approx(cert.residual, rel=1e-10)
    assert f"certificate of inner_solution: {cert.status}" in checks.format_table(table)
    good = checks.check_problem(LogRegHPO.synthetic(n_samples=40, n_features=3, seed=1), n_points=1)
    assert good.certified and good["inner_solution residual"] <= 1e-14
