"""Shared input checks and helpers of the classification problems (logreg, cleaning, layer decay)."""

from __future__ import annotations

from .._backend import (array_namespace, device, from_host, resolve_dtype, to_host_scalar,
                        zeros_like)
from .._validation import (check_array, check_has_features, check_int,
                          check_labels, check_memory)
from ..models.losses import one_hot

__all__ = ["ValidationLoss", "check_binary_data", "check_multiclass_data", "onehot_targets",
           "scatter_rows", "set_multiclass_data", "to_problem_arrays"]


class ValidationLoss:
    r"""Upper level of the classification problems: the model's mean loss on validation rows.

    :math:`f(x, y) = \frac{1}{n_{val}} \sum_{i \in val} \ell(\text{model}(y; A_i); T_i)`,
    independent of :math:`x`, so :math:`\nabla_x f = 0`. A mixin (listed before
    :class:`~refbilevel.problems.base.BilevelProblem`) for classes with ``self.model``
    (``value``/``grad``), ``self.xp`` and ``self._val(batch) -> (A_val rows, targets)``.
    """

    def f(self, x, y, batch=None):
        """Validation loss (mean over ``batch.outer`` rows); independent of ``x``."""
        A, T = self._val(batch)
        return self.model.value(y, A, T, xp=self.xp)

    def grad_f(self, x, y, batch=None):
        """``(0, ∇_y f)``."""
        return zeros_like(x, xp=self.xp), self.grad_f_y(x, y, batch)

    def grad_f_x(self, x, y, batch=None):
        """``∇_x f = 0`` (reads no data)."""
        return zeros_like(x, xp=self.xp)

    def grad_f_y(self, x, y, batch=None):
        """``∇_y f``, the model's mean validation-loss gradient (the zero x-part not formed)."""
        A, T = self._val(batch)
        return self.model.grad(y, A, T, xp=self.xp)


def _check_features(A_train, A_val, names):
    xp = array_namespace(A_train, A_val, names=names)
    check_array(A_train, names[0], ndim=2)
    check_array(A_val, names[1], shape=(None, A_train.shape[1]), like=A_train)
    if A_train.shape[0] < 1 or A_val.shape[0] < 1:
        raise ValueError(f"{names[0]} and {names[1]} must have at least one row")
    check_has_features(A_train, names[0])
    return xp


def check_binary_data(A_train, b_train, A_val, b_val):
    """Validate a binary problem's data (labels +-1 floats of the data's dtype); return ``xp``."""
    array_namespace(A_train, b_train, A_val, b_val,
                    names=("A_train", "b_train", "A_val", "b_val"))
    xp = _check_features(A_train, A_val, ("A_train", "A_val"))
    for b, A, name in ((b_train, A_train, "b_train"), (b_val, A_val, "b_val")):
        check_array(b, name, shape=(A.shape[0],), like=A_train)
        check_labels(b, name, values=(-1.0, 1.0))
    return xp


def check_multiclass_data(A_train, labels_train, A_val, labels_val, n_classes,
                          label_names=("labels_train", "labels_val")):
    """Validate a multiclass problem's data (integer class indices); return ``(xp, n_classes)``.

    ``n_classes=None`` infers ``1 + max label`` over both splits (one host sync).
    ``label_names`` are the label arguments' names used in messages.
    """
    tr_name, val_name = label_names
    names = ("A_train", tr_name, "A_val", val_name)
    array_namespace(A_train, labels_train, A_val, labels_val, names=names)
    xp = _check_features(A_train, A_val, ("A_train", "A_val"))
    for lab, A, name in ((labels_train, A_train, tr_name), (labels_val, A_val, val_name)):
        check_array(lab, name, shape=(A.shape[0],), floating=False)
        if not xp.isdtype(lab.dtype, "integral"):
            raise TypeError(f"{name} must hold integer class indices; got dtype {lab.dtype}")
    if n_classes is None:
        n_classes = 1 + int(max(to_host_scalar(xp.max(labels_train)),
                                to_host_scalar(xp.max(labels_val))))
    n_classes = check_int(n_classes, "n_classes", minimum=2)
    check_memory(2 * (A_train.shape[0] + A_val.shape[0]) * n_classes,
                 f"one-hot targets of {n_classes} classes")
    for lab, name in ((labels_train, tr_name), (labels_val, val_name)):
        check_labels(lab, name, values=tuple(range(n_classes)))
    return xp, n_classes


def set_multiclass_data(problem, A_train, labels_train, A_val, labels_val, n_classes):
    """Validate a multiclass problem's data and store it on ``problem``; return ``(xp, C)``.

    Sets the backend, ``n_classes``, ``n_features``, ``A_train``, ``A_val`` and the one-hot
    targets ``Y_train``, ``Y_val``.
    """
    xp, n_classes = check_multiclass_data(A_train, labels_train, A_val, labels_val, n_classes)
    problem._set_backend(A_train, A_val, names=("A_train", "A_val"))
    problem.n_classes, problem.n_features = n_classes, A_train.shape[1]
    problem.A_train, problem.A_val = A_train, A_val
    problem.Y_train = onehot_targets(labels_train, n_classes, A_train, xp)
    problem.Y_val = onehot_targets(labels_val, n_classes, A_train, xp)
    return xp, n_classes


def onehot_targets(labels, n_classes, like, xp):
    """One-hot float targets of the dtype of ``like``."""
    return one_hot(labels, n_classes, dtype=like.dtype, xp=xp)


def scatter_rows(vals, idx, n, xp):
    r"""Sum ``vals[..., k]`` into position ``idx[k]`` of a length-``n`` last axis.

    Done as a product with the one-hot matrix of ``idx`` (``(k, n)``), which is
    array-API neutral (no integer-array setitem) and sums repeated indices, as the
    gradient of a sum over a batch drawn with replacement requires.
    """
    pos = xp.arange(n, dtype=idx.dtype, device=device(idx))
    return vals @ xp.astype(idx[:, None] == pos, vals.dtype)


def to_problem_arrays(host_arrays, xp, dtype, device_):
    """Move host NumPy arrays to ``xp`` (floats get ``dtype``; integer labels stay int64)."""
    dtype = resolve_dtype(xp, dtype)
    out = []
    for a in host_arrays:
        if a.dtype.kind == "f":
            out.append(from_host(a, xp, dtype=dtype, device=device_))
        else:
            out.append(from_host(a, xp, device=device_))
    return out
