r"""Logistic-regression hyperparameter optimisation: one weight-decay coefficient per feature."""

from __future__ import annotations

import warnings

from .._backend import default_namespace, host_rng
from .._validation import check_choice, check_int, check_memory, check_real
from ..models.linear import LinearModel
from ._classification import (ValidationLoss, check_binary_data, check_multiclass_data,
                              onehot_targets, to_problem_arrays)
from .base import Batch, BilevelProblem, LinearizedG, _inner, _outer, take_rows

__all__ = ["LogRegHPO"]


class LogRegHPO(ValidationLoss, BilevelProblem):
    r"""Per-feature weight decay on (binary or multinomial) logistic regression.

    Parameters
    ----------
    A_train, A_val : array, shape (n_train, d) and (n_val, d)
        Features (real floating, finite, one namespace and device).
    b_train, b_val : array, shape (n_train,) and (n_val,)
        ``task="binary"``: labels :math:`\pm 1` of the data's float dtype.
        ``task="multinomial"``: integer class indices in ``0..C-1``.
    task : {"binary", "multinomial"}
        Binary logistic loss with :math:`y \in \mathbb{R}^d`, or softmax cross-entropy with
        :math:`W \in \mathbb{R}^{d \times C}` (``y`` is ``W`` flattened row-major).
    n_classes : int, optional
        ``C`` for ``task="multinomial"``; inferred as ``1 + max label`` when omitted.
    reduction : {"sum", "mean"}
        ``"sum"``: :math:`R = \frac12 \sum_j \lambda_j \|W_{j,:}\|^2` (benchopt ijcnn1 form);
        ``"mean"``: :math:`R = \frac{1}{dC} \sum_{j,c} \frac12 \lambda_j W_{jc}^2`
        (the 20newsgroups script of hypertorch; :math:`C = 1` for binary).
    parametrization : {"exp", "raw"}
        :math:`\lambda_j = e^{x_j}` (default; positive for every ``x``) or
        :math:`\lambda_j = x_j` (raw; meaningful only for :math:`x \ge 0`, and the inner
        problem is strongly convex only for :math:`x > 0` — nothing clamps ``x``).

    Notes
    -----
    With :math:`s = 1` (sum) or :math:`1/(dC)` (mean), :math:`\ell` the logistic or softmax
    cross-entropy loss and :math:`\lambda = e^x` (or :math:`x`):

    .. math::

        g(x, W) &= \frac{1}{n_{tr}} \sum_{i \in tr} \ell(A_i W; b_i)
                  + \frac{s}{2} \sum_j \lambda_j \|W_{j,:}\|^2, \qquad
        f(x, W) = \frac{1}{n_{val}} \sum_{i \in val} \ell(A_i W; b_i), \\
        \nabla_W g &= \frac{1}{n_{tr}} A^\top \partial_S \ell + s\, \lambda \odot W, \qquad
        \nabla_x g = \frac{s}{2} \lambda'(x) \odot \mathrm{rowsum}(W \odot W), \qquad
        \nabla_x f = 0, \\
        \nabla^2_{WW} g\, V &= \frac{1}{n_{tr}} A^\top \nabla^2_S \ell[A V] + s\, \lambda \odot V,
        \qquad
        \nabla^2_{xW} g\, V = s\, \lambda'(x) \odot \mathrm{rowsum}(W \odot V),

    with :math:`\partial_S \ell = -b \odot \sigma(-b \odot A w)`,
    :math:`\nabla^2_S \ell[R] = \sigma(Aw)\sigma(-Aw) \odot R` (binary) and
    :math:`P - Y`, :math:`P \odot (R - \mathrm{rowsum}(P \odot R))` (multinomial);
    :math:`\lambda' = e^x` (exp) or 1 (raw). The hypergradient (IFT) is
    :math:`\nabla F = -s\,\lambda' \odot \mathrm{rowsum}(W^* \odot V^*)`,
    :math:`V^* = [\nabla^2_{WW} g]^{-1} \nabla_W f(W^*)`. Derivation:
    ``docs/theory/logistic.rst``.

    Defaults: ``init_x`` is 0 for ``"exp"`` (:math:`\lambda = 1`) and 1 for ``"raw"`` (the
    same regulariser); ``init_y`` is 0 (MinimaxOPT's start values are not fixed by the paper: ours). Whether the MinimaxOPT
    synthetic experiment uses ``exp`` or raw :math:`\lambda` is UNVERIFIED, hence the
    ``parametrization`` option. The oracles are exact and sync-free; the stacked
    ``grad_g*_many`` oracles read the training data once for all points.

    Memory: on NumPy the full-batch oracles of the binary task read a column-major copy of
    each data matrix, made on first use (the features' memory once more), because
    OpenBLAS's matrix-vector products read that layout 1.1 to 1.8 times faster
    (:func:`refbilevel._backend.matvec_layout`); minibatches gather rows of the arrays as
    given, and so do the full-batch oracles, with a warning, when the copy cannot be
    allocated. The data must not be modified in place after construction. From 4 MiB on,
    the copy's columns sit at a stride padded to whole cache lines and, while NumPy's BLAS
    runs one thread, the binary gradients and Hessian-vector products pass over it in
    cached row blocks (:func:`refbilevel._backend.row_blocks`; results differ from whole
    products by rounding only).

    References
    ----------
    .. [1] J. Wang, R. Pan, R. Pi, T. Zhang, "Effective bilevel optimization via minimax
       reformulation", arXiv:2305.13153, §4.1.
    .. [2] R. Grazzi, L. Franceschi, M. Pontil, S. Salzo, "On the iteration complexity of
       hypergradient computation", ICML 2020 (hypertorch, 20newsgroups experiment).

    Examples
    --------
    The implicit-function hypergradient agrees with central differences of
    :math:`F(x) = f(x, y^*(x))` (each value solves the inner problem by Newton's method):

    >>> import numpy as np
    >>> from refbilevel.problems.logreg import LogRegHPO
    >>> problem = LogRegHPO.synthetic(n_samples=60, n_features=4, seed=0)
    >>> x = problem.init_x() + 0.1
    >>> h, e = 1e-4, np.eye(4)
    >>> fd = [(problem.value(x + h * e[i]) - problem.value(x - h * e[i])) / (2 * h)
    ...       for i in range(4)]
    >>> bool(np.allclose(problem.hypergradient(x), fd, rtol=1e-6, atol=1e-10))
    True
    """

    name = "logreg"

    def __init__(self, A_train, b_train, A_val, b_val, *, task: str = "binary",
                 n_classes: int | None = None, reduction: str = "sum",
                 parametrization: str = "exp"):
        self.task = check_choice(task, "task", ("binary", "multinomial"))
        self.reduction = check_choice(reduction, "reduction", ("sum", "mean"))
        self.parametrization = check_choice(parametrization, "parametrization", ("exp", "raw"))
        if task == "binary":
            if n_classes is not None:
                raise ValueError("n_classes must be None for task='binary'")
            xp = check_binary_data(A_train, b_train, A_val, b_val)
            T_train, T_val = b_train, b_val
        else:
            xp, n_classes = check_multiclass_data(A_train, b_train, A_val, b_val, n_classes,
                                                  label_names=("b_train", "b_val"))
            T_train = onehot_targets(b_train, n_classes, A_train, xp)
            T_val = onehot_targets(b_val, n_classes, A_train, xp)
        self._set_backend(A_train, A_val, names=("A_train", "A_val"))
        self.n_classes = n_classes
        self.model = LinearModel(A_train.shape[1], n_classes)
        self.A_train, self.A_val, self.T_train, self.T_val = A_train, A_val, T_train, T_val
        self.n_features = A_train.shape[1]
        self.dim_x, self.dim_y = self.n_features, self.model.size
        self.n_inner, self.n_outer = A_train.shape[0], A_val.shape[0]
        self._s = 1.0 if reduction == "sum" else 1.0 / self.model.size

    # ------------------------------------------------------------ helpers
    def _decay(self, x):
        r"""``(s λ(x), s λ'(x))``: the regulariser's weights, ``exp(x)`` evaluated once.

        For ``"raw"`` the derivative is the Python float ``s`` (no array operation).
        """
        if self.parametrization == "exp":
            w = self.xp.exp(x)
            if self._s != 1.0:                   # "mean"; for "sum" 1·e^x is e^x exactly
                w = self._s * w
            return w, w
        return self._s * x, self._s

    def _rows(self, V):
        """``V`` (flat, or stacked ``(m, dim_y)``) viewed with a trailing class axis."""
        C = 1 if self.n_classes is None else self.n_classes
        return self.xp.reshape(V, tuple(V.shape[:-1]) + (self.n_features, C))

    def _row_inner(self, U, V):
        """``rowsum(U ⊙ V)`` over classes: shape ``(..., d)`` (``U ⊙ V`` itself for binary)."""
        if self.n_classes is None:
            return U * V
        return self.xp.sum(self._rows(U) * self._rows(V), axis=-1)

    def _row_scale(self, lam, V):
        """``lam_j * V_{j,:}`` flat (or stacked)."""
        if self.n_classes is None:
            return lam * V
        return self.xp.reshape(lam[:, None] * self._rows(V), V.shape)

    def _grad_x(self, dw, Y):
        """``∇_x g = ½ s λ'(x) ⊙ rowsum(W ⊙ W)`` from ``dw = s λ'(x)`` (reads no data)."""
        return (0.5 * dw) * self._row_inner(Y, Y)

    def _laid_out(self, A, key):
        """The data matrix ``A`` in the layout of the model's products
        (:meth:`LinearModel.product_layout`), for the full-batch oracles.

        Made on first use and kept under ``key`` with the array it was made from, so a data
        attribute replaced later (a poisoned copy of the problem, a persisted Dask array) is
        laid out again instead of served stale. Minibatches gather their rows from ``A``
        as given: rows of a column-major copy are slow to gather. Without the memory for
        the copy the oracles read ``A`` itself, with a ``UserWarning``.
        """
        source, laid = self.__dict__.get(key, (None, None))
        if source is not A:
            try:
                laid = self.model.product_layout(A, xp=self.xp)
            except MemoryError:
                # the copy is a speed-up, not a need: read the array as given, and say so
                # (its products round differently from the copy's, by a few ulps)
                warnings.warn(f"LogRegHPO: no memory for a column-major copy of the data "
                              f"({A.nbytes / 1e6:.0f} MB); the full-batch oracles read the "
                              "array as given (slower; results differ by rounding)",
                              UserWarning, stacklevel=4)
                laid = A
            self.__dict__[key] = (A, laid)
        return laid

    def _train(self, batch):
        idx = _inner(batch)
        if idx is None:
            return self._laid_out(self.A_train, "_A_train_laid_out"), self.T_train
        return take_rows(self.A_train, idx, self.xp), take_rows(self.T_train, idx, self.xp)

    def _val(self, batch):
        idx = _outer(batch)
        if idx is None:
            return self._laid_out(self.A_val, "_A_val_laid_out"), self.T_val
        return take_rows(self.A_val, idx, self.xp), take_rows(self.T_val, idx, self.xp)

    # ------------------------------------------------------------ oracles
    def init_x(self):
        """0 for ``parametrization="exp"``, 1 for ``"raw"`` (both: :math:`\\lambda = 1`)."""
        x = self.xp.zeros(self.dim_x, dtype=self.dtype, device=self.device)
        return x if self.parametrization == "exp" else x + 1.0

    def g(self, x, y, batch: Batch | None = None):
        """Training loss (mean over ``batch.inner`` rows) plus the weight decay."""
        A, T = self._train(batch)
        w, _ = self._decay(x)
        reg = 0.5 * self.xp.sum(w * self._row_inner(y, y))
        return self.model.value(y, A, T, xp=self.xp) + reg

    def grad_g(self, x, y, batch: Batch | None = None):
        """``(∇_x g, ∇_y g)``, see the class Notes."""
        A, T = self._train(batch)
        w, dw = self._decay(x)
        return self._grad_x(dw, y), self.model.grad(y, A, T, xp=self.xp) + self._row_scale(w, y)

    def grad_g_x(self, x, y, batch: Batch | None = None):
        """``(s/2) λ'(x) ⊙ rowsum(W ⊙ W)`` (reads no data)."""
        return self._grad_x(self._decay(x)[1], y)

    def grad_g_y(self, x, y, batch: Batch | None = None):
        """``(1/n) Aᵀ ∂_S ℓ + s λ ⊙ W`` (the x-part is not formed)."""
        A, T = self._train(batch)
        return self.model.grad(y, A, T, xp=self.xp) + self._row_scale(self._decay(x)[0], y)

    def hvp_g(self, x, y, v, batch: Batch | None = None):
        """``(1/n) Aᵀ ∇²_S ℓ [A V] + s λ ⊙ V``."""
        A, T = self._train(batch)
        hv = self.model.hvp(y, A, T, v, xp=self.xp)
        return hv + self._row_scale(self._decay(x)[0], v)

    def cross_g(self, x, y, v, batch: Batch | None = None):
        """``s λ'(x) ⊙ rowsum(W ⊙ V)`` (reads no data)."""
        return self._decay(x)[1] * self._row_inner(y, v)

    def linearize_g(self, x, y, batch: Batch | None = None) -> LinearizedG:
        r"""``hvp_g`` and ``cross_g`` at ``(x, y)`` for many directions, the forward pass shared.

        The training rows are gathered once, :math:`s\lambda(x)` and :math:`s\lambda'(x)`
        are evaluated once, and the scores :math:`A W` with the loss curvature
        (:math:`\sigma'` or the softmax probabilities) are formed at the first HVP
        (:meth:`refbilevel.models.linear.LinearModel.linearize`); each HVP then reads the
        training rows twice (:math:`A V` and :math:`A^\top(\cdot)`), where :meth:`hvp_g`
        reads them three times. ``cross`` reads no data. Products equal :meth:`hvp_g` and
        :meth:`cross_g` bit for bit.
        """
        return self._linearized(x, y, batch)[2]

    def grad_and_linearize_g(self, x, y, batch: Batch | None = None):
        r"""``(∇_y g, linearize_g)`` at ``(x, y)`` from one forward pass.

        The gradient is formed from the scores :math:`A W` that the products reuse
        (:meth:`refbilevel.models.linear.LinearModelAt.grad`): the point costs the two data
        passes of its gradient, and each later HVP two more, where :meth:`grad_g_y`
        followed by :meth:`linearize_g` forms the scores twice. Equals those two calls bit
        for bit.
        """
        model, lam, lin = self._linearized(x, y, batch)
        return model.grad() + self._row_scale(lam, y), lin

    def _linearized(self, x, y, batch):
        """``(LinearModelAt, s λ(x), LinearizedG)`` at ``(x, y)`` (no data read yet)."""
        A, T = self._train(batch)
        lam, dlam = self._decay(x)
        model = self.model.linearize(y, A, T, xp=self.xp)
        return model, lam, LinearizedG(hvp=lambda v: model.hvp(v) + self._row_scale(lam, v),
                                       cross=lambda v: dlam * self._row_inner(y, v))

    # ------------------------------------------------------------ stacked oracles
    def grad_g_y_many(self, x, Ys, batch: Batch | None = None):
        """``∇_y g`` at ``m`` points in one pass over the training rows: ``(m, dim_y)``."""
        A, T = self._train(batch)
        G = self.model.grad_many(Ys, A, T, xp=self.xp)
        return G + self._row_scale(self._decay(x)[0], Ys)

    def grad_g_x_many(self, x, Ys, batch: Batch | None = None):
        """``∇_x g`` at ``m`` points: ``(m, dim_x)`` (reads no data)."""
        return self._grad_x(self._decay(x)[1], Ys)

    def grad_g_many(self, x, Ys, batch: Batch | None = None):
        """``(∇_x g, ∇_y g)`` stacks at ``m`` points, the data read once."""
        A, T = self._train(batch)
        w, dw = self._decay(x)
        G = self.model.grad_many(Ys, A, T, xp=self.xp)
        return self._grad_x(dw, Ys), G + self._row_scale(w, Ys)

    # ------------------------------------------------------------ misc
    def describe(self) -> dict:
        out = super().describe()
        out.update(task=self.task, n_features=self.n_features, n_classes=self.n_classes,
                   reduction=self.reduction, parametrization=self.parametrization)
        return out

    @classmethod
    def synthetic(cls, n_samples: int = 200, n_features: int = 10, *, task: str = "binary",
                  n_classes: int = 3, noise: float = 1.0, seed=0, xp=None,
                  dtype="float64", device=None, **kwargs) -> LogRegHPO:
        r"""A small seeded instance: Gaussian features, labels from a noisy linear model.

        :math:`A_{ij} \sim \mathcal N(0,1)`, :math:`w^\dagger \sim \mathcal N(0, I)`;
        binary :math:`b = \mathrm{sign}(A w^\dagger + \text{noise}\cdot\varepsilon)`,
        multinomial labels :math:`\arg\max_c (A W^\dagger + \text{noise}\cdot\varepsilon)_c`.
        The first half of the rows is the training split, the rest validation.
        ``kwargs`` go to the constructor (``reduction``, ``parametrization``). The
        paper-faithful generators live in :mod:`refbilevel.datasets`.
        """
        n = check_int(n_samples, "n_samples", minimum=2)
        d = check_int(n_features, "n_features", minimum=1)
        check_choice(task, "task", ("binary", "multinomial"))
        noise = check_real(noise, "noise", nonnegative=True)
        C = 1 if task == "binary" else check_int(n_classes, "n_classes", minimum=2)
        check_memory(3 * n * (d + C) + d * C, f"{cls.__name__}.synthetic data")
        rng = host_rng(seed)
        xp = default_namespace(xp)
        A = rng.standard_normal((n, d))
        if task == "binary":
            score = A @ rng.standard_normal(d) + noise * rng.standard_normal(n)
            lab = (2.0 * (score >= 0) - 1.0)
            n_classes = None
        else:
            C = check_int(n_classes, "n_classes", minimum=2)
            score = A @ rng.standard_normal((d, C)) + noise * rng.standard_normal((n, C))
            lab = score.argmax(axis=1).astype("int64")
        h = n // 2
        A_tr, b_tr, A_va, b_va = to_problem_arrays([A[:h], lab[:h], A[h:], lab[h:]],
                                                   xp, dtype, device)
        return cls(A_tr, b_tr, A_va, b_va, task=task, n_classes=n_classes, **kwargs)
