"""Held-out metrics (test accuracy, test AUC) and dataset subsets.

Oracles: NumPy recomputation of the predictions, a brute-force pairwise count for the AUC,
and the row bookkeeping of the subsets.
"""

from __future__ import annotations

import numpy as np
import pytest

from refbilevel import datasets as D
from refbilevel._backend import backend_namespace, to_host
from refbilevel.heldout import MetaTestLoss, TestAccuracy, TestAUC, auc_score
from refbilevel.run import run
from refbilevel.solvers import AID, FOSL


def test_auc_score_is_the_pairwise_count():
    rng = np.random.default_rng(0)
    s = np.round(rng.standard_normal(40), 1)          # ties on purpose
    y = (rng.random(40) < 0.3).astype(float)
    pos, neg = s[y > 0], s[y == 0]
    want = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auc_score(s, y) == pytest.approx(want, abs=1e-15)
    assert auc_score(-s, y) == pytest.approx(1 - want, abs=1e-15)
    with pytest.raises(ValueError, match="both classes"):
        auc_score(s, np.zeros(40))


def test_test_accuracy_binary_and_multiclass(backend):
    xp, dev = backend.xp, backend.device
    P = D.make_logreg_hpo(60, 5, seed=1, xp=xp, device=dev)
    rng = np.random.default_rng(2)
    A, b = rng.standard_normal((30, 5)), np.where(rng.random(30) < 0.5, -1.0, 1.0)
    y = rng.standard_normal(5)
    state = type("S", (), {"x": P.init_x(), "y": xp.asarray(y, device=dev)})()
    want = np.mean(np.where(A @ y >= 0, 1.0, -1.0) == b)
    assert TestAccuracy(A, b)(P, state) == pytest.approx(want, abs=1e-15)

    C, split = D.make_cleaning(40, 20, 4, 3, seed=0, n_test=25, xp=xp, device=dev)
    W = rng.standard_normal(4 * 3)
    st = type("S", (), {"x": C.init_x(), "y": xp.asarray(W, device=dev)})()
    want = np.mean(np.argmax(split.A_test @ W.reshape(4, 3), axis=1) == split.y_test)
    assert TestAccuracy(split.A_test, split.y_test)(C, st) == pytest.approx(want, abs=1e-15)
    assert split.A_test.shape == (25, 4)


def test_run_records_held_out_columns():
    C, split = D.make_cleaning(40, 20, 4, 3, seed=0, n_test=30)
    m = TestAccuracy(split.A_test, split.y_test)
    r = run(C, AID(n_inner=5, n_linear=3, lr_inner=0.05, lr_outer=5.0), n_iter=4,
            record_every=2, metrics=("value", m))
    assert list(r.history) == ["iteration", "time", "calls_grad_f", "calls_grad_g",
                               "calls_hvp", "calls_cross", "value", "test_accuracy",
                               "multiplier"]
    last = m(C, r.state)
    assert r.history["test_accuracy"][-1] == last
    assert 0.0 <= last <= 1.0
    with pytest.raises(TypeError, match="metric object"):
        run(C, AID(), n_iter=1, metrics=(object(),))
    with pytest.raises(ValueError, match="distinct"):
        run(C, AID(), n_iter=1, metrics=(m, m))


def test_test_auc_on_multitask_problem():
    from refbilevel.problems.auc import MultiTaskAUC

    s = D.multitask_auc_data(3, 30, 30, 4, seed=0, n_test=40)
    xp = backend_namespace("numpy")
    P = MultiTaskAUC(*(xp.asarray(a) for a in (s.A_train, s.y_train, s.A_val, s.y_val)))
    m = TestAUC(s.A_test, s.y_test)
    r = run(P, FOSL(), n_iter=2, record_every=1, metrics=(m,))
    x = r.state.x
    z = to_host(P.inner_solution(x))
    W = to_host(P.split_x(x)[0])
    want = np.mean([auc_score(s.A_test[t] @ W @ z[t], s.y_test[t]) for t in range(3)])
    assert r.history["test_auc"][-1] == pytest.approx(want, abs=1e-14)
    assert 0.5 < want <= 1.0                      # separable-ish tasks: better than chance


def test_subset_split_is_seeded_and_keeps_info_rows():
    s = D.cleaning_data(100, 40, 30, 4, 3, corruption=0.5, seed=0)
    a = D.subset_split(s, 20, 10, 5, seed=3)
    b = D.subset_split(s, 20, 10, 5, seed=3)
    assert a.A_train.shape == (20, 4) and a.A_val.shape == (10, 4) and a.A_test.shape == (5, 4)
    np.testing.assert_array_equal(a.A_train, b.A_train)
    # every kept row is a row of the original part, with its own label and mask entry
    for i, row in enumerate(a.A_train):
        j = np.flatnonzero((s.A_train == row).all(axis=1))[0]
        assert a.y_train[i] == s.y_train[j] and a.info["corrupted"][i] == s.info["corrupted"][j]
    assert D.subset_split(s, None, None, 0).A_test is None
    with pytest.raises(ValueError, match="n_train"):
        D.subset_split(s, 101)


def test_make_cleaning_subset_of_real_data():
    s = D.classification_data(300, 4, 3, seed=0, val_fraction=0.2, test_fraction=0.2)
    P, split = D.make_cleaning(50, 20, corruption=0.3, seed=1, data=s, subset=True, n_test=15)
    assert (P.n_inner, P.n_outer, split.A_test.shape[0]) == (50, 20, 15)
    assert split.info["corrupted"].sum() == 15
    P2, _ = D.make_cleaning(50, 20, corruption=0.3, seed=1, data=s)
    assert P2.n_inner == s.A_train.shape[0]       # without subset the data is used whole


def _adapt(A, b, w, mu, loss):
    """One task's adaptation argmin_z mean_r loss(a_r^T z, b_r) + mu/2 |z - w|^2 (SciPy)."""
    from scipy.optimize import minimize

    def fun(z):
        t = A @ z
        if loss == "squared":
            r = t - b
            return 0.5 * np.mean(r * r) + 0.5 * mu * np.sum((z - w) ** 2), \
                A.T @ r / len(b) + mu * (z - w)
        return np.mean(np.logaddexp(0.0, -b * t)) + 0.5 * mu * np.sum((z - w) ** 2), \
            A.T @ (-b / (1.0 + np.exp(b * t))) / len(b) + mu * (z - w)

    return minimize(fun, w, jac=True, method="BFGS", options={"gtol": 1e-12}).x


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_meta_test_loss_adapts_held_out_tasks(loss):
    """Oracle: each held-out task adapted by SciPy BFGS, its query loss and accuracy in NumPy."""
    task = "classification" if loss == "logistic" else "regression"
    s = D.meta_learning_data(4, 6, 5, 3, seed=1, n_test_tasks=3, task=task)
    P = D.make_meta_learning(4, 6, 5, 3, seed=1, loss=loss, mu=0.7)
    x = np.array([0.3, -0.2, 0.5, 1.7])                    # (w, λ): λ plays no part
    t = s.info["test_tasks"]
    Z = np.stack([_adapt(t.A_train[j], t.y_train[j], x[:-1], 0.7, loss) for j in range(3)])
    score = np.einsum("tnd,td->tn", t.A_val, Z)
    per_row = 0.5 * (score - t.y_val) ** 2 if loss == "squared" else \
        np.logaddexp(0.0, -t.y_val * score)
    state = type("State", (), {"x": x})()
    metric = MetaTestLoss(t)
    assert metric.name == "test_loss"
    assert metric(P, state) == pytest.approx(per_row.mean(), rel=1e-9)
    if loss == "logistic":
        acc = MetaTestLoss(t, kind="accuracy")
        assert acc.name == "test_accuracy"
        assert acc(P, state) == np.mean(np.where(score >= 0, 1.0, -1.0) == t.y_val)
    else:
        with pytest.raises(ValueError, match="accuracy"):
            MetaTestLoss(t, kind="accuracy")
    with pytest.raises(ValueError, match="kind"):
        MetaTestLoss(t, kind="auc")
    with pytest.raises(ValueError, match="tasks must hold"):
        MetaTestLoss(D.Split(t.A_train, t.y_train, t.A_val[:2], t.y_val[:2]))
    with pytest.raises(TypeError, match="RankedMetaLearning"):
        metric(D.make_multitask_auc(2, 6, 6, 3, seed=0), state)
    with pytest.raises(ValueError, match="features"):
        metric(D.make_meta_learning(4, 6, 5, 2, seed=1), state)
