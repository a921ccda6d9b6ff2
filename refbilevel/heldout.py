r"""Held-out metrics: test accuracy and test AUC recorded in a run's history.

A held-out metric is an object with a ``name`` (its history column) and a call
``metric(problem, state) -> float``; :func:`refbilevel.run` accepts such objects in
``metrics`` beside the metric names, evaluates them at record points only (they
synchronise) and records one column each, like ``value``.

* :class:`TestAccuracy` — share of held-out rows whose predicted class (sign of the binary
  score, arg-max of the multiclass scores) equals the label; the model is the problem's
  ``model`` evaluated at the inner iterate ``y``.
* :class:`TestAUC` — area under the ROC curve of held-out rows (Mann-Whitney statistic, ties
  counted one half), averaged over the tasks of a
  :class:`~refbilevel.problems.auc.MultiTaskAUC`; the task heads are the exact lower-level
  solutions :math:`z_i^*(x)` at the outer iterate.
* :class:`MetaTestLoss` — meta-test loss (or accuracy) of a
  :class:`~refbilevel.problems.meta.RankedMetaLearning`: held-out tasks are adapted from
  the meta-model on their support rows, exactly as the training tasks are, and scored on
  their query rows.

The held-out rows never enter an oracle: a solver cannot see them.

:data:`HELDOUT` names them for ``refbilevel run --metrics``; :func:`heldout_metric` builds
one from a name, the problem and the test part of the data split it was built on.
"""

from __future__ import annotations

import numpy as np

from ._backend import from_host, to_host

__all__ = ["HELDOUT", "MetaTestLoss", "TestAccuracy", "TestAUC", "auc_score", "heldout_metric"]

#: Held-out metric names -> what they need of the problem.
HELDOUT = {"test_accuracy": "a classification model (logreg, multinomial, cleaning)",
           "test_auc": "a multi-task AUC problem (multitask_auc)"}


def _host(a, name):
    out = np.asarray(to_host(a) if not isinstance(a, np.ndarray) else a)
    if out.size == 0:
        raise ValueError(f"{name} must not be empty")
    return out


class TestAccuracy:
    r"""Test accuracy of a classification problem's model at the iterate ``y``.

    Parameters
    ----------
    A_test : array, shape (n, d)
        Held-out features (host or the problem's namespace; moved once to the problem's
        namespace, dtype and device at the first call).
    labels_test : array, shape (n,)
        Labels: ±1 for a binary model (scores ``(n,)``), class indices ``0..C-1`` for a
        multiclass model (scores ``(n, C)``).
    name : str
        History column (default ``"test_accuracy"``).

    Notes
    -----
    :math:`\mathrm{acc} = \frac1n \sum_i [\hat c(a_i) = c_i]` with
    :math:`\hat c(a) = \operatorname{sign} s(a)` (binary, a zero score counts as +1) or
    :math:`\arg\max_c s_c(a)` (multiclass), :math:`s = \text{model}(y; a)`.
    """

    __test__ = False   # not a pytest class

    def __init__(self, A_test, labels_test, *, name: str = "test_accuracy"):
        A = _host(A_test, "A_test")
        lab = _host(labels_test, "labels_test")
        if A.ndim != 2:
            raise ValueError(f"A_test must be 2-D; got shape {A.shape}")
        if lab.shape != (A.shape[0],):
            raise ValueError(f"labels_test must have shape ({A.shape[0]},); got {lab.shape}")
        if not isinstance(name, str) or not name:
            raise TypeError("name must be a non-empty string")
        self.A_host, self.labels = A, lab
        self.name = name
        self._dev = None

    def __call__(self, problem, state) -> float:
        if self._dev is None or self._dev[0] is not problem:
            A = from_host(self.A_host.astype(np.float64), problem.xp, dtype=problem.dtype,
                          device=problem.device)
            self._dev = (problem, A)
        scores = problem.model.forward(state.y, self._dev[1], xp=problem.xp)
        if isinstance(scores, tuple):                 # MLP: (scores, cache)
            scores = scores[0]
        s = np.asarray(to_host(scores))
        pred = np.where(s >= 0, 1.0, -1.0) if s.ndim == 1 else np.argmax(s, axis=1)
        return float(np.mean(pred == self.labels))


def auc_score(scores, labels) -> float:
    """ROC AUC of one task: P(score of a positive > score of a negative), ties one half."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auc_score needs both classes among the labels")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(allv.size)
    # average ranks over ties (1-based)
    i = 0
    while i < allv.size:
        j = i
        while j + 1 < allv.size and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = 0.5 * (i + j) + 1.0
        i = j + 1
    r = np.empty(allv.size)
    r[order] = ranks
    u = r[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


class TestAUC:
    r"""Mean test AUC over the tasks of a multi-task AUC problem.

    Parameters
    ----------
    A_test : array, shape (T, n, d)
        Held-out features per task.
    y_test : array, shape (T, n)
        Labels in {0, 1}; every task needs both classes.
    name : str
        History column (default ``"test_auc"``).

    Notes
    -----
    The score of row :math:`a` in task :math:`i` is :math:`\langle \phi(a; x), z_i^*(x)\rangle`
    (the problem's shared representation and the exact task head); the AUC is invariant
    under the increasing sigmoid map, so it is left out. The reported value is
    :math:`\frac1T \sum_i \mathrm{AUC}_i`.
    """

    __test__ = False

    def __init__(self, A_test, y_test, *, name: str = "test_auc"):
        A = _host(A_test, "A_test")
        y = _host(y_test, "y_test")
        if A.ndim != 3 or y.shape != A.shape[:2]:
            raise ValueError(f"A_test must be (T, n, d) and y_test (T, n); got {A.shape} and "
                             f"{y.shape}")
        for t in range(y.shape[0]):
            if not (y[t] > 0).any() or (y[t] > 0).all():
                raise ValueError(f"y_test task {t} needs both classes")
        self.A_host, self.y = A, y
        self.name = name
        self._dev = None

    def __call__(self, problem, state) -> float:
        if self._dev is None or self._dev[0] is not problem:
            self._dev = (problem, from_host(self.A_host.astype(np.float64), problem.xp,
                                            dtype=problem.dtype, device=problem.device))
        xp = problem.xp
        z = problem.inner_solution(state.x)                       # (T, r)
        feats = problem._features(self._dev[1], state.x)          # (T, n, r)
        s = np.asarray(to_host(xp.sum(feats * z[:, None, :], axis=-1)))
        return float(np.mean([auc_score(s[t], self.y[t]) for t in range(s.shape[0])]))


class MetaTestLoss:
    r"""Mean query loss (or accuracy) of held-out tasks adapted from the meta-model.

    Parameters
    ----------
    tasks : Split
        Held-out tasks: support rows ``A_train`` ``(T, n_s, d)``, ``y_train`` ``(T, n_s)``
        and query rows ``A_val`` ``(T, n_q, d)``, ``y_val`` ``(T, n_q)``, e.g.
        ``meta_learning_data(..., n_test_tasks=T).info["test_tasks"]``.
    kind : {"loss", "accuracy"}
        ``"loss"``: mean over tasks of the query loss; ``"accuracy"`` (labels ±1): share
        of query rows whose score sign (zero counts as +1) equals the label.
    name : str, optional
        History column (default ``"test_loss"`` or ``"test_accuracy"``).

    Notes
    -----
    With :math:`x = (w, \lambda)` the meta-model, task :math:`j` is adapted as the problem
    adapts its own tasks, :math:`z_j^*(w) = \arg\min_z \frac1{n_s}\sum_r
    \ell(a_r^\top z, b_r) + \frac\mu2\|z - w\|^2` on its support rows (the problem's
    ``loss`` and ``mu``; :meth:`RankedMetaLearning.inner_solution` on the held-out
    tasks), and the reported loss is
    :math:`\frac1T\sum_j \frac1{n_q}\sum_r \ell(a_r^\top z_j^*, b_r)` over the query rows.
    It is the plain mean over the held-out tasks, none of which is corrupted: the ranked
    range is a training device, the meta-test asks how well the meta-model adapts to
    clean new tasks.
    """

    __test__ = False

    def __init__(self, tasks, *, kind: str = "loss", name: str | None = None):
        if kind not in ("loss", "accuracy"):
            raise ValueError(f"kind must be 'loss' or 'accuracy'; got {kind!r}")
        arrays = [_host(getattr(tasks, f, None), f) if getattr(tasks, f, None) is not None
                  else None for f in ("A_train", "y_train", "A_val", "y_val")]
        if any(a is None for a in arrays):
            raise ValueError("tasks must hold support (A_train, y_train) and query (A_val, "
                             "y_val) rows")
        A_s, b_s, A_q, b_q = arrays
        if A_s.ndim != 3 or A_q.ndim != 3 or b_s.shape != A_s.shape[:2] \
                or b_q.shape != A_q.shape[:2] or A_q.shape[0] != A_s.shape[0] \
                or A_q.shape[2] != A_s.shape[2]:
            raise ValueError("tasks must hold A_train (T, n_s, d), y_train (T, n_s), A_val "
                             f"(T, n_q, d), y_val (T, n_q); got {A_s.shape}, {b_s.shape}, "
                             f"{A_q.shape}, {b_q.shape}")
        if kind == "accuracy" and not np.all(np.abs(b_q) == 1):
            raise ValueError("kind='accuracy' needs query labels in {-1, +1}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError("name must be a non-empty string")
        self.arrays, self.kind = (A_s, b_s, A_q, b_q), kind
        self.name = name or ("test_loss" if kind == "loss" else "test_accuracy")
        self._dev = None

    def __call__(self, problem, state) -> float:
        from .problems.meta import RankedMetaLearning

        if not isinstance(problem, RankedMetaLearning):
            raise TypeError("MetaTestLoss needs a RankedMetaLearning problem; got "
                            f"{type(problem).__name__}")
        if problem.dim_z != self.arrays[0].shape[2]:
            raise ValueError(f"the held-out tasks have {self.arrays[0].shape[2]} features, the "
                             f"problem {problem.dim_z}")
        if self._dev is None or self._dev[0] is not problem:
            held_out = type(problem)(*(from_host(a.astype(np.float64), problem.xp,
                                                 dtype=problem.dtype, device=problem.device)
                                       for a in self.arrays),
                                     mu=problem.mu, loss=problem.loss)
            self._dev = (problem, held_out)
        held_out = self._dev[1]
        z = held_out.inner_solution(state.x)
        if self.kind == "loss":
            return float(np.mean(to_host(held_out.task_losses(z, held_out.all_blocks()))))
        xp = problem.xp
        score = np.asarray(to_host(xp.sum(held_out.A_val * z[:, None, :], axis=-1)))
        return float(np.mean(np.where(score >= 0, 1.0, -1.0) == self.arrays[3]))


def heldout_metric(name: str, problem, split, *, problem_name: str | None = None):
    """The held-out metric ``name`` (a key of :data:`HELDOUT`) on the test part of ``split``.

    Parameters
    ----------
    name : str
        ``"test_accuracy"`` (:class:`TestAccuracy`) or ``"test_auc"`` (:class:`TestAUC`).
    problem : BilevelProblem or MinimaxBilevelProblem
        The problem the run solves (it must have the model the metric evaluates).
    split : Split or None
        The host data the problem was built on (``registry.build_problem(...,
        return_split=True)``); its ``A_test`` and ``y_test`` are the held-out rows.
    problem_name : str, optional
        The problem's registry name, for the error messages.

    Raises
    ------
    ValueError
        Unknown name, a problem the metric does not apply to, or no test part in ``split``.
    """
    from .problems.auc import MultiTaskAUC
    from .problems.base import MinimaxBilevelProblem

    what = f"problem {problem_name!r}" if problem_name else type(problem).__name__
    if name not in HELDOUT:
        raise ValueError(f"unknown held-out metric {name!r}; valid: {', '.join(HELDOUT)}")
    auc = isinstance(problem, MultiTaskAUC)
    fits = auc if name == "test_auc" else (not isinstance(problem, MinimaxBilevelProblem)
                                           and hasattr(problem, "model"))
    if not fits:
        raise ValueError(f"{name} needs {HELDOUT[name]}; {what} is not one")
    if split is None or split.A_test is None or len(split.A_test) == 0:
        raise ValueError(f"{name} needs the held-out test part of the data; {what} was "
                         "built without one")
    if name == "test_auc":
        return TestAUC(split.A_test, split.y_test)
    return TestAccuracy(split.A_test, split.y_test)
