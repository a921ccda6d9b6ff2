"""Synthetic generators and offline real datasets.

Every generator draws on the host from one seeded :class:`numpy.random.Generator`, so the
same seed gives the same data on every backend; the problem builders (``make_*``) then move
the arrays once with :func:`refbilevel._backend.from_host` (``xp``, ``dtype``, ``device``).

Plain-data functions return a :class:`Split` of host NumPy arrays. Real data needs no
download at run time: scikit-learn's bundled ``load_digits`` / ``load_breast_cancer`` (extra
``data``), Fashion-MNIST from IDX files in a directory (Debian's ``dataset-fashion-mnist``
package installs them), and any LIBSVM-format file through scikit-learn's
``load_svmlight_file``. Splits are seeded; standardisation is fitted on the training rows only.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field, replace

import numpy as np

from ._backend import backend_namespace, from_host, host_rng, resolve_dtype
from ._validation import check_choice, check_int, check_memory, check_real

__all__ = [
    "DATASETS",
    "dataset_availability",
    "FASHION_MNIST_DIRS",
    "Split",
    "classification_data",
    "cleaning_data",
    "corrupt_labels",
    "load_breast_cancer",
    "load_digits",
    "load_fashion_mnist",
    "load_libsvm",
    "logreg_hpo_data",
    "make_cleaning",
    "make_logreg_hpo",
    "make_meta_learning",
    "make_multinomial_hpo",
    "make_multitask_auc",
    "meta_learning_data",
    "multitask_auc_data",
    "read_idx",
    "split_indices",
    "standardize",
    "subset_split",
]


@dataclass(frozen=True)
class Split:
    """Host arrays of a train/validation(/test) split; ``info`` holds extras (e.g. masks)."""

    A_train: np.ndarray
    y_train: np.ndarray
    A_val: np.ndarray
    y_val: np.ndarray
    A_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _backend_args(xp, dtype, device):
    xp = backend_namespace("numpy") if xp is None else xp
    return xp, resolve_dtype(xp, dtype), device


def _fl(a, xp, dtype, device):
    return from_host(np.asarray(a, dtype=np.float64), xp, dtype=dtype, device=device)


def _int(a, xp, device):
    return from_host(np.asarray(a, dtype=np.int64), xp, device=device)


# ---------------------------------------------------------------- splits, scaling
def split_indices(n, *, val_fraction=0.2, test_fraction=0.2, seed=0):
    """Seeded permutation of ``range(n)`` cut into (train, val, test) index arrays.

    Examples
    --------
    >>> from refbilevel.datasets import split_indices
    >>> train, val, test = split_indices(10, val_fraction=0.2, test_fraction=0.2, seed=0)
    >>> len(train), len(val), len(test)
    (6, 2, 2)
    >>> sorted([*train, *val, *test]) == list(range(10))
    True
    """
    n = check_int(n, "n", minimum=3)
    val_fraction = check_real(val_fraction, "val_fraction", low=0.0, high=1.0)
    test_fraction = check_real(test_fraction, "test_fraction", low=0.0, high=1.0)
    n_val, n_test = int(round(val_fraction * n)), int(round(test_fraction * n))
    if n_val + n_test >= n or n_val < 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} leave "
                         f"no training rows (or no validation rows) out of {n}")
    perm = host_rng(seed).permutation(n)
    return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


def standardize(split: Split) -> Split:
    """Centre and scale every feature with the training rows' mean and std (std 0 -> 1).

    Examples
    --------
    The training rows end with mean 0 and standard deviation 1 in every feature:

    >>> import numpy as np
    >>> from refbilevel.datasets import classification_data, standardize
    >>> split = standardize(classification_data(n=60, p=4, seed=0))
    >>> bool(np.allclose(split.A_train.mean(axis=0), 0.0, atol=1e-12))
    True
    >>> bool(np.allclose(split.A_train.std(axis=0), 1.0))
    True
    """
    mean = split.A_train.mean(axis=0)
    std = split.A_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def f(a):
        return None if a is None else (a - mean) / std

    return replace(split, A_train=f(split.A_train), A_val=f(split.A_val), A_test=f(split.A_test))


def subset_split(split: Split, n_train=None, n_val=None, n_test=None, *, seed=0) -> Split:
    """Seeded subsets of the parts of ``split`` (``None`` keeps a part whole).

    Each part keeps ``n_*`` of its rows drawn without replacement by one seeded generator
    (train, then validation, then test), in their original order; ``info`` entries that are
    per-training-row arrays (e.g. the corrupted mask) are subset with the training rows.
    ``n_test=0`` drops the test part. Asking more rows than a part has is a ``ValueError``.
    """
    rng = host_rng(seed)

    def pick(A, y, n, name, minimum):
        if n is None or A is None:
            if n:   # a test part asked for but absent
                raise ValueError(f"{name}={n} but the split has no such part")
            return A, y, None
        n = check_int(n, name, minimum=minimum)
        if n > A.shape[0]:
            raise ValueError(f"{name}={n} exceeds the {A.shape[0]} rows available")
        if n == 0:
            return None, None, None
        idx = np.sort(rng.choice(A.shape[0], size=n, replace=False))
        return A[idx], y[idx], idx

    A_tr, y_tr, i_tr = pick(split.A_train, split.y_train, n_train, "n_train", 1)
    A_va, y_va, _ = pick(split.A_val, split.y_val, n_val, "n_val", 1)
    A_te, y_te, _ = pick(split.A_test, split.y_test, n_test, "n_test", 0)
    info = dict(split.info)
    if i_tr is not None:
        n0 = split.A_train.shape[0]
        for k, v in split.info.items():
            if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n0:
                info[k] = v[i_tr]
    return Split(A_tr, y_tr, A_va, y_va, A_te, y_te, info)


def _split_arrays(A, y, *, seed, val_fraction, test_fraction, do_standardize, info=None):
    tr, va, te = split_indices(A.shape[0], val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=seed)
    out = Split(A[tr], y[tr], A[va], y[va], A[te] if te.size else None,
                y[te] if te.size else None, dict(info or {}))
    return standardize(out) if do_standardize else out


# ---------------------------------------------------------------- synthetic
def logreg_hpo_data(n=1000, p=100, *, seed=0, noise=0.1, informative=None) -> Split:
    r"""Binary logistic HPO data (MinimaxOPT §4.1 setting; n and p are ours).

    Features :math:`a_i \sim N(0, I_p)`, a sparse ground truth (``informative`` nonzero
    coefficients, default p/10 rounded up), labels :math:`b_i = \operatorname{sign}(a_i^\top
    w + \text{noise}\,\epsilon_i) \in \{\pm1\}`; half train, half validation.

    Examples
    --------
    Half of the rows train, half validate; labels are :math:`\pm 1`:

    >>> import numpy as np
    >>> from refbilevel.datasets import logreg_hpo_data
    >>> split = logreg_hpo_data(n=100, p=5, seed=0)
    >>> split.A_train.shape, split.A_val.shape
    ((50, 5), (50, 5))
    >>> np.unique(split.y_train).tolist()
    [-1.0, 1.0]
    """
    n = check_int(n, "n", minimum=4)
    p = check_int(p, "p", minimum=1)
    noise = check_real(noise, "noise", nonnegative=True)
    k = max(1, -(-p // 10)) if informative is None else check_int(informative, "informative",
                                                                    minimum=1)
    check_memory(3 * n * p, f"logistic HPO data (n={n}, p={p})")
    rng = host_rng(seed)
    w = np.zeros(p)
    w[rng.choice(p, size=min(k, p), replace=False)] = rng.standard_normal(min(k, p))
    A = rng.standard_normal((n, p))
    b = np.where(A @ w + noise * rng.standard_normal(n) >= 0, 1.0, -1.0)
    h = n // 2
    return Split(A[:h], b[:h], A[h:], b[h:], info={"w_true": w})


def classification_data(n=600, p=20, n_classes=3, *, seed=0, class_sep=2.0,
                        val_fraction=0.25, test_fraction=0.25) -> Split:
    """Gaussian-mixture multinomial data: class centres ~ N(0, class_sep² I), unit noise.

    Labels are int64 in ``0..n_classes-1``, assigned round-robin so classes are balanced
    (counts differ by at most one), then shuffled by the seeded split.

    Examples
    --------
    >>> import numpy as np
    >>> from refbilevel.datasets import classification_data
    >>> split = classification_data(n=60, p=4, n_classes=3, seed=0)
    >>> split.A_train.shape, np.unique(split.y_train).tolist()
    ((30, 4), [0, 1, 2])
    """
    n = check_int(n, "n", minimum=3)
    p = check_int(p, "p", minimum=1)
    n_classes = check_int(n_classes, "n_classes", minimum=2)
    class_sep = check_real(class_sep, "class_sep", nonnegative=True)
    check_memory(3 * n * p + n_classes * p + 2 * n * n_classes,
                 f"classification data (n={n}, p={p}, n_classes={n_classes})")
    rng = host_rng(seed)
    centres = class_sep * rng.standard_normal((n_classes, p))
    y = np.arange(n) % n_classes
    A = centres[y] + rng.standard_normal((n, p))
    return _split_arrays(A, y.astype(np.int64), seed=rng, val_fraction=val_fraction,
                         test_fraction=test_fraction, do_standardize=False)


def corrupt_labels(labels, rate, n_classes, *, seed=0, mode="exact"):
    """Corrupt labels for hyper-cleaning; returns ``(new_labels, corrupted_mask)``.

    A corrupted label is replaced by a class drawn uniformly from the **other**
    ``n_classes - 1`` classes, so ``corrupted_mask`` marks exactly the changed labels.
    ``mode="exact"`` corrupts ``round(rate * n)`` rows chosen uniformly without replacement;
    ``mode="bernoulli"`` corrupts each row independently with probability ``rate``
    (the papers' "corrupted with probability p").

    Examples
    --------
    Every corrupted label differs from the original one:

    >>> import numpy as np
    >>> from refbilevel.datasets import corrupt_labels
    >>> labels = np.arange(10) % 5
    >>> new, mask = corrupt_labels(labels, 0.4, 5, seed=0)
    >>> int(mask.sum()), bool(np.all((new != labels) == mask))
    (4, True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError("labels must be a 1-D integer array")
    rate = check_real(rate, "rate", low=0.0, high=1.0)
    n_classes = check_int(n_classes, "n_classes", minimum=2)
    check_choice(mode, "mode", ("exact", "bernoulli"))
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    rng = host_rng(seed)
    n = labels.shape[0]
    mask = np.zeros(n, dtype=bool)
    if mode == "exact":
        mask[rng.choice(n, size=int(round(rate * n)), replace=False)] = True
    else:
        mask = rng.random(n) < rate
    shift = rng.integers(1, n_classes, size=n)
    new = np.where(mask, (labels + shift) % n_classes, labels).astype(labels.dtype)
    return new, mask


def cleaning_data(n_train=400, n_val=200, n_test=200, p=20, n_classes=5, *, corruption=0.5,
                  seed=0, class_sep=2.0, mode="exact", data: Split | None = None) -> Split:
    """Hyper-cleaning data: training labels corrupted at rate ``corruption``.

    Synthetic Gaussian-mixture data by default, or any :class:`Split` with integer labels
    (``data``; e.g. :func:`load_digits`). ``info["corrupted"]`` is the corrupted-row mask,
    ``info["clean_labels"]`` the original training labels.

    Examples
    --------
    >>> from refbilevel.datasets import cleaning_data
    >>> split = cleaning_data(n_train=50, n_val=20, n_test=10, p=4, n_classes=3,
    ...                       corruption=0.4, seed=0)
    >>> split.A_train.shape, float(split.info["corrupted"].mean())
    ((50, 4), 0.4)
    """
    rng = host_rng(seed)
    if data is None:
        n = check_int(n_train, "n_train", minimum=1) + check_int(n_val, "n_val", minimum=1) \
            + check_int(n_test, "n_test", minimum=0)
        data = classification_data(n, p, n_classes, seed=rng, class_sep=class_sep,
                                   val_fraction=n_val / n, test_fraction=n_test / n)
    else:
        n_classes = int(max(data.y_train.max(), data.y_val.max())) + 1
    noisy, mask = corrupt_labels(data.y_train, corruption, n_classes, seed=rng, mode=mode)
    info = dict(data.info, corrupted=mask, clean_labels=data.y_train, n_classes=n_classes)
    return replace(data, y_train=noisy, info=info)


def multitask_auc_data(n_tasks=4, n_train=40, n_val=40, n_features=10, *, pos_ratio=0.2,
                       seed=0, task_spread=0.5, class_sep=1.5, n_test=0) -> Split:
    r"""Imbalanced multi-task binary data, arrays of shape ``(T, n, d)`` and labels in {0, 1}.

    Task *i* has direction :math:`w_i = w_0 + \text{spread}\,\epsilon_i` (unit norm);
    positives are :math:`N(\text{sep}\,w_i/2, I)`, negatives :math:`N(-\text{sep}\,w_i/2, I)`.
    Exactly ``round(pos_ratio_i * n)`` rows are positive (at least 1, at most n-1) in each
    of the train and validation parts; ``pos_ratio`` is a float or one value per task.
    ``n_test > 0`` draws a held-out test part the same way, after the other two (so the
    train and validation parts do not depend on it).

    Examples
    --------
    One row of arrays per task; the positive ratio is exact:

    >>> from refbilevel.datasets import multitask_auc_data
    >>> split = multitask_auc_data(n_tasks=3, n_train=20, n_val=20, n_features=4, seed=0)
    >>> split.A_train.shape, split.y_train.mean(axis=1).tolist()
    ((3, 20, 4), [0.2, 0.2, 0.2])
    """
    T = check_int(n_tasks, "n_tasks", minimum=1)
    n_train = check_int(n_train, "n_train", minimum=2)
    n_val = check_int(n_val, "n_val", minimum=2)
    d = check_int(n_features, "n_features", minimum=1)
    n_test = check_int(n_test, "n_test", minimum=0)
    if n_test == 1:
        raise ValueError("n_test must be 0 or >= 2 (both classes in every task)")
    ratios = np.broadcast_to(np.asarray(pos_ratio, dtype=np.float64), (T,)).copy() \
        if np.ndim(pos_ratio) == 0 else np.asarray(pos_ratio, dtype=np.float64)
    if ratios.shape != (T,) or not np.all((ratios > 0) & (ratios < 1)):
        raise ValueError(f"pos_ratio must be a float or {T} floats strictly between 0 and 1")
    check_memory(3 * T * (n_train + n_val) * (d + 1), f"multi-task AUC data (n_tasks={T}, "
                 f"n_train={n_train}, n_val={n_val}, n_features={d})")
    rng = host_rng(seed)
    w0 = rng.standard_normal(d)
    W = w0 + task_spread * rng.standard_normal((T, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)

    def draw(n):
        k = np.clip(np.round(ratios * n).astype(int), 1, n - 1)
        y = (np.arange(n)[None, :] < k[:, None]).astype(np.float64)
        y = np.stack([rng.permutation(row) for row in y])
        A = rng.standard_normal((T, n, d)) + class_sep * (y - 0.5)[..., None] * W[:, None, :]
        return A, y

    A_tr, y_tr = draw(n_train)
    A_va, y_va = draw(n_val)
    A_te, y_te = draw(n_test) if n_test else (None, None)
    return Split(A_tr, y_tr, A_va, y_va, A_te, y_te,
                 info={"pos_ratio": ratios, "directions": W})


def meta_learning_data(n_tasks=8, n_support=10, n_query=10, n_features=5, *, seed=0,
                       task_spread=0.3, noise=0.1, n_outlier_tasks=0, outlier_noise=3.0,
                       task="regression", outlier="noise", n_test_tasks=0) -> Split:
    r"""Few-shot linear-regression task family: arrays ``(T, n, d)``, targets ``(T, n)``.

    Task *i* has :math:`w_i = w_0 + \text{spread}\,\epsilon_i`, targets
    :math:`b = A w_i + \text{noise}\,\epsilon`; the first ``n_outlier_tasks`` tasks are
    corrupted (the tasks a ranked-range loss should discard); ``info["outliers"]`` lists
    them. ``outlier="noise"``: their targets carry noise ``outlier_noise`` instead;
    ``outlier="flip"``: their targets are negated, :math:`b = -(A w_i + \text{noise}\,
    \epsilon)` (a systematically wrong task, the analogue of flipped labels).
    ``task="classification"`` returns the signs of the targets (labels ±1).

    ``n_test_tasks`` clean tasks more of the same family (same :math:`w_0`, spread and
    noise, never corrupted) are drawn after everything else, so the training tasks do not
    depend on it; they are returned as ``info["test_tasks"]``, a :class:`Split` of support
    (``A_train``, ``y_train``) and query (``A_val``, ``y_val``) rows, the meta-test tasks of
    :class:`refbilevel.heldout.MetaTestLoss`.

    Examples
    --------
    >>> from refbilevel.datasets import meta_learning_data
    >>> split = meta_learning_data(n_tasks=4, n_support=6, n_query=6, n_features=3, seed=0)
    >>> split.A_train.shape, split.y_val.shape
    ((4, 6, 3), (4, 6))
    >>> split = meta_learning_data(4, 6, 6, 3, seed=0, n_test_tasks=5)
    >>> split.info["test_tasks"].A_val.shape
    (5, 6, 3)
    """
    check_choice(task, "task", ("regression", "classification"))
    check_choice(outlier, "outlier", ("noise", "flip"))
    T = check_int(n_tasks, "n_tasks", minimum=1)
    ns = check_int(n_support, "n_support", minimum=1)
    nq = check_int(n_query, "n_query", minimum=1)
    d = check_int(n_features, "n_features", minimum=1)
    n_out = check_int(n_outlier_tasks, "n_outlier_tasks", minimum=0)
    n_test = check_int(n_test_tasks, "n_test_tasks", minimum=0)
    if n_out > T:
        raise ValueError(f"n_outlier_tasks must be <= n_tasks={T}; got {n_out}")
    check_memory(3 * (T + n_test) * (ns + nq) * (d + 1), f"meta-learning data (n_tasks={T}, "
                 f"n_support={ns}, n_query={nq}, n_features={d}, n_test_tasks={n_test})")
    rng = host_rng(seed)
    w0 = rng.standard_normal(d)
    W = w0 + task_spread * rng.standard_normal((T, d))
    corrupt = np.arange(T) < n_out
    sig = np.where(corrupt & (outlier == "noise"), outlier_noise, noise)[:, None]
    sign = np.where(corrupt & (outlier == "flip"), -1.0, 1.0)[:, None]
    A_s, A_q = rng.standard_normal((T, ns, d)), rng.standard_normal((T, nq, d))
    b_s = sign * (np.einsum("tnd,td->tn", A_s, W) + sig * rng.standard_normal((T, ns)))
    b_q = sign * (np.einsum("tnd,td->tn", A_q, W) + sig * rng.standard_normal((T, nq)))

    def labels(b):
        return np.where(b >= 0, 1.0, -1.0) if task == "classification" else b

    info = {"w0": w0, "task_weights": W, "outliers": np.arange(n_out)}
    if n_test:
        W_t = w0 + task_spread * rng.standard_normal((n_test, d))
        At_s, At_q = rng.standard_normal((n_test, ns, d)), rng.standard_normal((n_test, nq, d))
        bt_s = np.einsum("tnd,td->tn", At_s, W_t) + noise * rng.standard_normal((n_test, ns))
        bt_q = np.einsum("tnd,td->tn", At_q, W_t) + noise * rng.standard_normal((n_test, nq))
        info["test_tasks"] = Split(At_s, labels(bt_s), At_q, labels(bt_q),
                                   info={"task_weights": W_t})
    return Split(A_s, labels(b_s), A_q, labels(b_q), info=info)


# ---------------------------------------------------------------- problem builders
def make_logreg_hpo(n=1000, p=100, *, seed=0, xp=None, dtype="float64", device=None,
                    data: Split | None = None, noise=0.1, return_split=False, **problem_kw):
    """:class:`~refbilevel.problems.logreg.LogRegHPO` (binary) on :func:`logreg_hpo_data`.

    ``data`` (labels ±1) replaces the synthetic data; ``problem_kw`` go to the constructor
    (``reduction``, ``parametrization``). ``return_split=True`` returns ``(problem, split)``,
    the host data with its test part (none for the synthetic data).

    Examples
    --------
    >>> from refbilevel.datasets import make_logreg_hpo
    >>> problem = make_logreg_hpo(n=100, p=5, seed=0)
    >>> problem.init_x().shape, problem.init_y().shape        # one decay per feature
    ((5,), (5,))
    """
    from .problems.logreg import LogRegHPO

    xp, dt, device = _backend_args(xp, dtype, device)
    s = logreg_hpo_data(n, p, seed=seed, noise=noise) if data is None else data
    problem = LogRegHPO(_fl(s.A_train, xp, dt, device), _fl(s.y_train, xp, dt, device),
                        _fl(s.A_val, xp, dt, device), _fl(s.y_val, xp, dt, device),
                        task="binary", **problem_kw)
    return (problem, s) if return_split else problem


def make_multinomial_hpo(n=600, p=20, n_classes=3, *, seed=0, xp=None, dtype="float64",
                         device=None, data: Split | None = None, return_split=False,
                         **problem_kw):
    """Multinomial :class:`~refbilevel.problems.logreg.LogRegHPO` on :func:`classification_data`.

    ``return_split=True`` returns ``(problem, split)``: the host data with its test part
    (a quarter of the synthetic rows, held out of both levels).

    Examples
    --------
    >>> from refbilevel.datasets import make_multinomial_hpo
    >>> problem = make_multinomial_hpo(n=60, p=4, n_classes=3, seed=0)
    >>> problem.init_x().shape, problem.init_y().shape        # W is 4 x 3, flattened
    ((4,), (12,))
    """
    from .problems.logreg import LogRegHPO

    xp, dt, device = _backend_args(xp, dtype, device)
    s = classification_data(n, p, n_classes, seed=seed) if data is None else data
    n_classes = int(max(s.y_train.max(), s.y_val.max())) + 1 if data is not None else n_classes
    problem = LogRegHPO(_fl(s.A_train, xp, dt, device), _int(s.y_train, xp, device),
                        _fl(s.A_val, xp, dt, device), _int(s.y_val, xp, device),
                        task="multinomial", n_classes=n_classes, **problem_kw)
    return (problem, s) if return_split else problem


def make_cleaning(n_train=400, n_val=200, p=20, n_classes=5, *, corruption=0.5, seed=0,
                  xp=None, dtype="float64", device=None, data: Split | None = None,
                  model="linear", n_test=0, subset=False, **problem_kw):
    """:class:`~refbilevel.problems.cleaning.DataCleaning` on :func:`cleaning_data`.

    Returns ``(problem, split)``: the split's ``info["corrupted"]`` says which training
    labels were corrupted, its ``A_test``/``y_test`` (``n_test`` synthetic rows, or the
    real data's test part) are held out for :class:`refbilevel.heldout.TestAccuracy`.
    With ``subset=True`` and real ``data``, ``n_train``/``n_val``/``n_test`` rows of its
    parts are kept (:func:`subset_split`, seeded; ``n_test=0`` keeps the whole test part);
    without it real data is used whole. ``problem_kw`` (``reg``, ``hidden``,
    ``activation``, ...) go to the constructor, whose defaults apply otherwise.

    Examples
    --------
    >>> from refbilevel.datasets import make_cleaning
    >>> problem, split = make_cleaning(n_train=40, n_val=20, p=4, n_classes=3, seed=0)
    >>> problem.init_x().shape, float(split.info["corrupted"].mean())
    ((40,), 0.5)
    """
    from .problems.cleaning import DataCleaning

    xp, dt, device = _backend_args(xp, dtype, device)
    if data is not None and subset:
        data = subset_split(data, n_train, n_val, n_test or None, seed=seed)
    s = cleaning_data(n_train, n_val, n_test, p, n_classes, corruption=corruption, seed=seed,
                      data=data)
    problem = DataCleaning(_fl(s.A_train, xp, dt, device), _int(s.y_train, xp, device),
                           _fl(s.A_val, xp, dt, device), _int(s.y_val, xp, device),
                           n_classes=s.info["n_classes"], model=model, **problem_kw)
    return problem, s


def make_multitask_auc(n_tasks=4, n_train=40, n_val=40, n_features=10, *, pos_ratio=0.2,
                       seed=0, xp=None, dtype="float64", device=None, n_test=0,
                       return_split=False, **problem_kw):
    """:class:`~refbilevel.problems.auc.MultiTaskAUC` on :func:`multitask_auc_data`.

    ``n_test`` rows per task are drawn as a held-out test part (after the others, which
    do not depend on it); ``return_split=True`` returns ``(problem, split)``.

    Examples
    --------
    >>> from refbilevel.datasets import make_multitask_auc
    >>> problem = make_multitask_auc(n_tasks=3, n_train=20, n_val=20, n_features=4, seed=0)
    >>> problem.n_blocks, problem.init_y().shape              # one dual variable per task
    (3, (3,))
    """
    from .problems.auc import MultiTaskAUC

    xp, dt, device = _backend_args(xp, dtype, device)
    s = multitask_auc_data(n_tasks, n_train, n_val, n_features, pos_ratio=pos_ratio, seed=seed,
                           n_test=n_test)
    problem = MultiTaskAUC(*(_fl(a, xp, dt, device) for a in (s.A_train, s.y_train, s.A_val,
                                                                s.y_val)), **problem_kw)
    return (problem, s) if return_split else problem


def make_meta_learning(n_tasks=8, n_support=10, n_query=10, n_features=5, *, seed=0, xp=None,
                       dtype="float64", device=None, n_outlier_tasks=0, outlier="noise",
                       **problem_kw):
    """:class:`~refbilevel.problems.meta.RankedMetaLearning` on :func:`meta_learning_data`.

    ``loss="logistic"`` (in ``problem_kw``) draws classification tasks (labels ±1);
    ``n_outlier_tasks`` and ``outlier`` go to :func:`meta_learning_data`.

    Examples
    --------
    >>> from refbilevel.datasets import make_meta_learning
    >>> problem = make_meta_learning(n_tasks=4, n_support=6, n_query=6, n_features=3, seed=0)
    >>> problem.n_blocks
    4
    """
    from .problems.meta import RankedMetaLearning

    xp, dt, device = _backend_args(xp, dtype, device)
    task = "classification" if problem_kw.get("loss") == "logistic" else "regression"
    s = meta_learning_data(n_tasks, n_support, n_query, n_features, seed=seed,
                           n_outlier_tasks=n_outlier_tasks, task=task, outlier=outlier)
    return RankedMetaLearning(*(_fl(a, xp, dt, device) for a in (s.A_train, s.y_train, s.A_val,
                                                                   s.y_val)), **problem_kw)


# ---------------------------------------------------------------- real data
def _sklearn_datasets():
    try:
        import sklearn.datasets as skd
    except ImportError as exc:
        raise ImportError("this loader needs scikit-learn (pip install 'refbilevel[data]' or "
                          "pip install scikit-learn)") from exc
    return skd


def load_digits(*, seed=0, val_fraction=0.2, test_fraction=0.2, standardize_features=True):
    """scikit-learn's bundled digits (1797 x 64, 10 classes), split and standardised.

    Examples
    --------
    >>> from refbilevel.datasets import load_digits
    >>> split = load_digits(seed=0)                     # 60 / 20 / 20 per cent
    >>> split.A_train.shape, split.A_val.shape, split.A_test.shape
    ((1079, 64), (359, 64), (359, 64))
    """
    d = _sklearn_datasets().load_digits()
    return _split_arrays(d.data.astype(np.float64), d.target.astype(np.int64), seed=seed,
                         val_fraction=val_fraction, test_fraction=test_fraction,
                         do_standardize=standardize_features, info={"n_classes": 10})


def load_breast_cancer(*, seed=0, val_fraction=0.2, test_fraction=0.2,
                       standardize_features=True, labels="pm1"):
    """scikit-learn's bundled breast cancer (569 x 30, binary); labels ±1 or {0,1} (``labels``).

    Examples
    --------
    >>> import numpy as np
    >>> from refbilevel.datasets import load_breast_cancer
    >>> split = load_breast_cancer(seed=0)
    >>> split.A_train.shape, np.unique(split.y_train).tolist()
    ((341, 30), [-1.0, 1.0])
    """
    check_choice(labels, "labels", ("pm1", "01"))
    d = _sklearn_datasets().load_breast_cancer()
    y = d.target.astype(np.float64)
    y = 2.0 * y - 1.0 if labels == "pm1" else y
    return _split_arrays(d.data.astype(np.float64), y, seed=seed, val_fraction=val_fraction,
                         test_fraction=test_fraction, do_standardize=standardize_features)


def load_libsvm(path, *, seed=0, val_fraction=0.2, test_fraction=0.2,
                standardize_features=False, n_features=None):
    """Any LIBSVM-format file (e.g. ijcnn1) via scikit-learn's ``load_svmlight_file``, densified."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LIBSVM file not found: {path!r}")
    try:
        A, y = _sklearn_datasets().load_svmlight_file(path, n_features=n_features)
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"path {path!r} is not a LIBSVM-format file (lines 'label "
                         f"index:value ...'): {' '.join(str(exc).split())}") from None
    if A.shape[0] < 3 or A.shape[1] < 1:
        raise ValueError(f"path {path!r}: a LIBSVM file with {A.shape[0]} rows and "
                         f"{A.shape[1]} features; need at least 3 rows and 1 feature")
    check_memory(3 * A.shape[0] * A.shape[1], f"the dense copy of {path!r}")
    return _split_arrays(np.asarray(A.todense(), dtype=np.float64), np.asarray(y), seed=seed,
                         val_fraction=val_fraction, test_fraction=test_fraction,
                         do_standardize=standardize_features)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, detected from the magic bytes)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path!r}")
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(raw) != 4 + 4 * ndim + count * dt.itemsize:
        raise ValueError(f"{path!r}: size does not match the IDX header dimensions {dims}")
    out = np.frombuffer(raw, dtype=dt, offset=4 + 4 * ndim).reshape(dims)
    return out.astype(dt.newbyteorder("="))


#: Folders searched for Fashion-MNIST when ``directory`` is None (Debian's package).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist")


def _find_idx(directory, stem):
    for name in (stem, stem + ".gz"):
        full = os.path.join(directory, name)
        if os.path.isfile(full):
            return full
    raise FileNotFoundError(f"{stem}[.gz] not found in {directory!r}; install Debian's "
                            "dataset-fashion-mnist package or name the folder that holds the "
                            "IDX files (command line: --data fashion_mnist:DIR)")


def load_fashion_mnist(directory=None, *, seed=0, n_val=10000, standardize_features=False,
                       scale=True):
    """Fashion-MNIST from its IDX files (train 60000 -> train/val by seed; t10k -> test).

    Parameters
    ----------
    directory : path, optional
        Folder with ``train-images-idx3-ubyte[.gz]`` etc.; default the first existing of
        :data:`FASHION_MNIST_DIRS` (find yours with ``dpkg -L dataset-fashion-mnist``).
    scale : bool
        Divide pixel values by 255.
    """
    if directory is None:
        directory = next((d for d in FASHION_MNIST_DIRS if os.path.isdir(d)), None)
        if directory is None:
            raise FileNotFoundError(
                "Fashion-MNIST not found in " + ", ".join(FASHION_MNIST_DIRS) + ": install "
                "Debian's dataset-fashion-mnist package (apt-get install "
                "dataset-fashion-mnist), or name the folder of the IDX files (command line: "
                "--data fashion_mnist:DIR; Python: load_fashion_mnist(directory=DIR))")
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Fashion-MNIST directory not found: {directory!r}")
    parts = {}
    for split in ("train", "t10k"):
        X = read_idx(_find_idx(directory, f"{split}-images-idx3-ubyte"))
        y = read_idx(_find_idx(directory, f"{split}-labels-idx1-ubyte"))
        X = X.reshape(X.shape[0], -1).astype(np.float64) / (255.0 if scale else 1.0)
        parts[split] = (X, y.astype(np.int64))
    (X, y), (Xt, yt) = parts["train"], parts["t10k"]
    n_val = check_int(n_val, "n_val", minimum=1)
    if n_val >= X.shape[0]:
        raise ValueError(f"n_val must be < {X.shape[0]}; got {n_val}")
    perm = host_rng(seed).permutation(X.shape[0])
    tr, va = perm[n_val:], perm[:n_val]
    out = Split(X[tr], y[tr], X[va], y[va], Xt, yt, {"n_classes": 10})
    return standardize(out) if standardize_features else out


#: name -> {"loader": callable, "description": str}, for ``refbilevel list``.
DATASETS = {
    "logreg_hpo": {"loader": logreg_hpo_data,
                   "description": "synthetic binary logistic HPO, half train / half val"},
    "classification": {"loader": classification_data,
                       "description": "synthetic Gaussian-mixture multinomial data"},
    "cleaning": {"loader": cleaning_data,
                 "description": "synthetic multinomial data with corrupted training labels"},
    "multitask_auc": {"loader": multitask_auc_data,
                      "description": "synthetic imbalanced multi-task binary data (T, n, d)"},
    "meta_learning": {"loader": meta_learning_data,
                      "description": "synthetic few-shot linear-regression task family"},
    "digits": {"loader": load_digits,
               "description": "scikit-learn bundled digits, 1797 x 64, 10 classes"},
    "breast_cancer": {"loader": load_breast_cancer,
                      "description": "scikit-learn bundled breast cancer, 569 x 30, binary"},
    "fashion_mnist": {"loader": load_fashion_mnist,
                      "description": "Fashion-MNIST IDX files (Debian dataset-fashion-mnist)"},
    "libsvm": {"loader": load_libsvm, "description": "any LIBSVM-format file (path argument)"},
}


def dataset_availability() -> dict[str, tuple[bool, str]]:
    """``{name: (usable here, how to use or get it)}`` for every entry of :data:`DATASETS`.

    Synthetic generators are always usable; scikit-learn's bundled sets need scikit-learn;
    Fashion-MNIST needs its IDX files in one of :data:`FASHION_MNIST_DIRS` (or a folder
    named with ``--data fashion_mnist:DIR``); ``libsvm`` reads a file the user names.

    Examples
    --------
    >>> from refbilevel.datasets import dataset_availability
    >>> status = dataset_availability()
    >>> status["logreg_hpo"][0], sorted(status) == sorted(DATASETS)
    (True, True)
    """
    import importlib.util

    sklearn = importlib.util.find_spec("sklearn") is not None
    get_sklearn = "needs scikit-learn: pip install 'refbilevel[data]'"
    out = {}
    for name, entry in DATASETS.items():
        if entry["loader"] in (load_digits, load_breast_cancer):
            out[name] = (sklearn, f"--data {name}" if sklearn else get_sklearn)
        elif name == "fashion_mnist":
            found = next((d for d in FASHION_MNIST_DIRS if os.path.isdir(d)), None)
            out[name] = (found is not None,
                         f"--data fashion_mnist (found in {found})" if found else
                         "not found: apt-get install dataset-fashion-mnist, or download the "
                         "IDX files and use --data fashion_mnist:DIR")
        elif name == "libsvm":
            out[name] = (sklearn, "--data libsvm:PATH (a LIBSVM file you have, e.g. ijcnn1)"
                         if sklearn else get_sklearn + "; then --data libsvm:PATH")
        else:
            out[name] = (True, "synthetic: the problems' default data, nothing to install")
    return out
