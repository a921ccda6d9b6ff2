"""Datasets: shapes, balance, corruption, determinism, backends, real-data loaders."""

import gzip
import os
import struct

import numpy as np
import pytest

from refbilevel import datasets as D
from refbilevel._backend import device as dev_of, to_host


def _same(a, b):
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("A_train", "y_train", "A_val", "y_val"))


def test_logreg_hpo_data_shapes_and_determinism():
    s = D.logreg_hpo_data(40, 7, seed=1)
    assert s.A_train.shape == (20, 7) and s.A_val.shape == (20, 7)
    assert set(np.unique(np.concatenate([s.y_train, s.y_val]))) <= {-1.0, 1.0}
    assert _same(s, D.logreg_hpo_data(40, 7, seed=1))
    assert not _same(s, D.logreg_hpo_data(40, 7, seed=2))


def test_classification_balance_and_splits():
    s = D.classification_data(300, 5, 3, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert s.A_train.shape == (180, 5) and s.A_val.shape == (60, 5) and s.A_test.shape == (60, 5)
    counts = np.bincount(np.concatenate([s.y_train, s.y_val, s.y_test]), minlength=3)
    assert counts.tolist() == [100, 100, 100]


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
def test_corruption_exact_count(rate):
    labels = np.arange(1000) % 10
    new, mask = D.corrupt_labels(labels, rate, 10, seed=5)
    assert mask.sum() == round(rate * 1000)
    assert np.array_equal(new != labels, mask)    # corrupted rows are exactly the changed ones
    assert new.min() >= 0 and new.max() <= 9


def test_corruption_bernoulli_rate():
    labels = np.zeros(20000, dtype=np.int64)
    new, mask = D.corrupt_labels(labels, 0.4, 3, seed=1, mode="bernoulli")
    assert abs(mask.mean() - 0.4) < 0.02   # binomial std 0.0035
    assert np.array_equal(new != labels, mask)


def test_cleaning_data_reports_corruption():
    s = D.cleaning_data(200, 50, 0, 4, 5, corruption=0.5, seed=3)
    assert s.A_train.shape == (200, 4) and s.A_val.shape == (50, 4)
    assert s.info["corrupted"].sum() == 100
    assert np.array_equal(s.y_train != s.info["clean_labels"], s.info["corrupted"])


def test_multitask_auc_data_imbalance():
    s = D.multitask_auc_data(3, 50, 20, 4, pos_ratio=[0.1, 0.2, 0.5], seed=0)
    assert s.A_train.shape == (3, 50, 4) and s.y_val.shape == (3, 20)
    assert s.y_train.sum(axis=1).tolist() == [5, 10, 25]
    assert s.y_val.sum(axis=1).tolist() == [2, 4, 10]
    assert _same(s, D.multitask_auc_data(3, 50, 20, 4, pos_ratio=[0.1, 0.2, 0.5], seed=0))
    with pytest.raises(ValueError, match="pos_ratio"):
        D.multitask_auc_data(2, 5, 5, 2, pos_ratio=1.0)


def test_meta_learning_data():
    s = D.meta_learning_data(6, 4, 3, 2, seed=0, n_outlier_tasks=2)
    assert s.A_train.shape == (6, 4, 2) and s.y_val.shape == (6, 3)
    assert s.info["outliers"].tolist() == [0, 1]
    assert not _same(s, D.meta_learning_data(6, 4, 3, 2, seed=1, n_outlier_tasks=2))


def test_meta_learning_flipped_outliers_and_test_tasks():
    kw = {"seed": 3, "n_outlier_tasks": 2, "noise": 0.0}
    noisy = D.meta_learning_data(5, 4, 3, 2, **kw)
    flip = D.meta_learning_data(5, 4, 3, 2, outlier="flip", n_test_tasks=4, **kw)
    W = flip.info["task_weights"]
    # noise-free targets: clean tasks b = A w_i, flipped tasks b = -A w_i (closed form)
    sign = np.array([-1, -1, 1, 1, 1])[:, None]
    for A, b in ((flip.A_train, flip.y_train), (flip.A_val, flip.y_val)):
        np.testing.assert_allclose(b, sign * np.einsum("tnd,td->tn", A, W), rtol=1e-15)
    # the held-out tasks are drawn last: the training tasks do not depend on them
    np.testing.assert_array_equal(flip.A_train, noisy.A_train)
    np.testing.assert_array_equal(flip.y_train[2:], noisy.y_train[2:])
    t = flip.info["test_tasks"]
    assert t.A_train.shape == (4, 4, 2) and t.y_val.shape == (4, 3)
    np.testing.assert_allclose(t.y_val, np.einsum("tnd,td->tn", t.A_val, t.info["task_weights"]),
                               rtol=1e-15)
    assert "test_tasks" not in noisy.info
    with pytest.raises(ValueError, match="outlier"):
        D.meta_learning_data(5, 4, 3, 2, outlier="swap")


def test_builders_identical_across_backends(backend):
    kw = {"xp": backend.xp, "device": backend.device}
    pairs = [(D.make_multitask_auc(2, 6, 6, 3, seed=4, **kw), D.make_multitask_auc(2, 6, 6, 3, seed=4),
              ("A_train", "y_train", "A_val", "y_val")),
             (D.make_meta_learning(3, 4, 4, 2, seed=4, **kw), D.make_meta_learning(3, 4, 4, 2, seed=4),
              ("A_train", "b_train", "A_val", "b_val")),
             (D.make_logreg_hpo(20, 3, seed=4, **kw), D.make_logreg_hpo(20, 3, seed=4),
              ("A_train", "A_val"))]
    for P, ref, names in pairs:
        for name in names:
            a = getattr(P, name)
            assert dev_of(a) == (dev_of(a) if backend.device is None else backend.device)
            np.testing.assert_array_equal(to_host(a), to_host(getattr(ref, name)))


def test_builders_dtype(backend):
    P = D.make_multitask_auc(2, 6, 6, 3, seed=0, xp=backend.xp, device=backend.device, dtype="float32")
    assert P.A_train.dtype == backend.xp.float32
    with pytest.raises(ValueError, match="dtype"):
        D.make_meta_learning(xp=backend.xp, dtype="int8")


def test_cleaning_builder(backend):
    P, s = D.make_cleaning(30, 10, 4, 3, corruption=0.4, seed=2, xp=backend.xp,
                           device=backend.device)
    assert s.info["corrupted"].sum() == 12
    np.testing.assert_array_equal(to_host(P.A_train), s.A_train)
    P2, s2 = D.make_cleaning(30, 10, 4, 3, corruption=0.4, seed=2, model="mlp", hidden=5)
    assert np.array_equal(s2.y_train, s.y_train)


def test_multinomial_builder():
    P = D.make_multinomial_hpo(90, 4, 3, seed=0)
    assert P.n_classes == 3


def test_sklearn_loaders():
    pytest.importorskip("sklearn", reason="needs scikit-learn (extra 'data')")
    s = D.load_digits(seed=0)
    n = s.A_train.shape[0] + s.A_val.shape[0] + s.A_test.shape[0]
    assert n == 1797 and s.A_train.shape[1] == 64
    np.testing.assert_allclose(s.A_train.mean(axis=0), 0.0, atol=1e-12)
    assert _same(s, D.load_digits(seed=0)) and not _same(s, D.load_digits(seed=1))
    b = D.load_breast_cancer(seed=0)
    assert b.A_train.shape[1] == 30 and set(np.unique(b.y_train)) == {-1.0, 1.0}
    assert b.A_train.shape[0] + b.A_val.shape[0] + b.A_test.shape[0] == 569
    P = D.make_logreg_hpo(data=b)
    assert (P.n_inner, P.n_outer, P.dim_x) == (b.A_train.shape[0], b.A_val.shape[0], 30)
    C, cs = D.make_cleaning(corruption=0.2, seed=1, data=s)
    assert cs.info["n_classes"] == 10 and cs.info["corrupted"].sum() == round(0.2 * s.y_train.size)
    np.testing.assert_array_equal(to_host(C.A_val), s.A_val)


def test_libsvm_round_trip(tmp_path):
    skd = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn (extra 'data')")
    rng = np.random.default_rng(0)
    A = np.round(rng.standard_normal((20, 4)), 3)
    y = np.where(rng.random(20) < 0.5, -1.0, 1.0)
    path = tmp_path / "tiny.svm"
    skd.dump_svmlight_file(A, y, str(path))
    s = D.load_libsvm(path, seed=0, val_fraction=0.25, test_fraction=0.25)
    tr, va, te = D.split_indices(20, val_fraction=0.25, test_fraction=0.25, seed=0)
    np.testing.assert_allclose(s.A_train, A[tr])
    np.testing.assert_array_equal(s.y_val, y[va])
    with pytest.raises(FileNotFoundError, match="missing.svm"):
        D.load_libsvm(tmp_path / "missing.svm")


def _write_idx(path, arr, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with open(path, "wb") as fh:
        fh.write(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_and_fashion_layout(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    imgs = rng.integers(0, 256, size=(12, 28, 28))
    labs = rng.integers(0, 10, size=12)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", imgs, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labs, compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", imgs[:5], compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labs[:5], compress)
    np.testing.assert_array_equal(D.read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), imgs)
    s = D.load_fashion_mnist(tmp_path, n_val=4, seed=0)
    assert s.A_train.shape == (8, 784) and s.A_val.shape == (4, 784) and s.A_test.shape == (5, 784)
    np.testing.assert_allclose(np.sort(np.concatenate([s.y_train, s.y_val])), np.sort(labs))
    assert s.A_train.max() <= 1.0
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="IDX"):
        D.read_idx(bad)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        D.load_fashion_mnist(_empty(tmp_path), n_val=1)
    with pytest.raises(FileNotFoundError, match="not_there"):
        D.load_fashion_mnist(tmp_path / "not_there", n_val=1)


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    return d


_FASHION = next((d for d in D.FASHION_MNIST_DIRS if os.path.isdir(d)), None)


@pytest.mark.skipif(_FASHION is None, reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    s = D.load_fashion_mnist(seed=0)
    assert s.A_train.shape == (50000, 784) and s.A_val.shape == (10000, 784)
    assert s.A_test.shape == (10000, 784)
    assert np.bincount(s.y_test, minlength=10).tolist() == [1000] * 10


def test_registry_and_errors():
    for name, entry in D.DATASETS.items():
        assert callable(entry["loader"]) and entry["description"]
    with pytest.raises(ValueError, match="val_fraction"):
        D.split_indices(10, val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="rate"):
        D.corrupt_labels(np.zeros(3, dtype=np.int64), 1.5, 2)
    with pytest.raises(TypeError, match="seed"):
        D.logreg_hpo_data(10, 2, seed="a")


def test_missing_sklearn_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)   # import now fails
    with pytest.raises(ImportError, match="scikit-learn"):
        D.load_digits()
