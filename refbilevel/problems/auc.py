r"""Multi-task AUC maximisation (AUC-M) as a minimax-bilevel problem.

.. math::

    \min_x \max_\alpha \frac1T \sum_{i=1}^T f_i(x, \alpha_i, z_i^*(x)), \qquad
    z_i^*(x) = \arg\min_z g_i(x, z).

What is known and what is ours (``docs/theory/auc.rst``; tags as in ``docs/provenance.rst``):

* **[PAPER]** Yang, Si, Lyu, Ji (NeurIPS 2024) evaluate FOSL/MemCS on multi-task deep AUC
  maximisation: one block per task, the upper level is the AUC-M min-max margin loss, the
  lower level is a strongly convex task-specific problem.
* **[CODE]** The AUC-M loss itself, as in LibAUC (``refbilevel.models.auc``).
* **[RECONSTRUCTED]** (our precise, well-posed choice; each choice a named option): the
  shared outer variable is :math:`x = (\operatorname{vec} W, a_1..a_T, b_1..b_T)` with a linear
  representation :math:`\varphi(A; W) = A W` (:math:`W \in \mathbb R^{d\times r}`, option
  ``rank``); the lower level of task *i* fits a linear head :math:`z_i \in \mathbb R^r` on the
  shared features of the task's **training** rows by ridge-regularised logistic regression
  (``mu``); the upper level evaluates AUC-M on the task's **validation** rows with scores
  :math:`h = \sigma(\varphi(A^{val}_i; W) z_i)` (option ``score="sigmoid"``, LibAUC's usual
  squashing, or ``"linear"``), dual :math:`y_i = \alpha_i` (``f_i`` reads only ``y_i``), the
  class prior :math:`p_i` fixed from the task's validation labels (option ``prior``).
  The alternative reading of the paper, a task-specific copy of a shared linear model
  anchored to it, is option ``lower="anchored"`` (below).

Precisely, with :math:`s = 2y - 1 \in \{\pm1\}`, :math:`\ell(t) = \log(1 + e^{-t})`,

.. math::

    g_i(x, z) = \frac1{n_{tr}} \sum_j \ell\big(s_{ij}\, a_{ij}^\top W z\big)
        + \frac{\mu}{2}\|z\|^2, \qquad
    f_i(x, \alpha_i, z) = F_{\text{AUC-M}}\big(h_i(W, z);\, a_i, b_i, \alpha_i\big),

which is :math:`\mu`-strongly convex in *z* and (for v1 with :math:`0 < p_i < 1`, or v2)
strongly concave in :math:`\alpha_i`. With ``lower="anchored"`` the representation is the
raw features (:math:`\Phi_i = A_i`, :math:`z_i \in \mathbb R^d`) and the ridge is anchored
at a shared model :math:`w` that replaces *W* in *x*:
:math:`g_i(x, z) = \frac1{n_{tr}}\sum_j \ell(s_{ij} a_{ij}^\top z) + \frac\mu2\|z - w\|^2`,
so :math:`\nabla_w g_i = -\mu(z - w)` and :math:`\nabla^2_{wz} g_i = -\mu I`.
Derivatives of the default (``lower="head"``; docs: theory/auc):

.. math::

    \nabla_z g_i = \Phi_i^\top q_i + \mu z,\quad q_{ij} = -s_{ij}\sigma(-t_{ij})/n,\qquad
    \nabla_W g_i = A_i^\top q_i\, z^\top,\qquad
    \nabla^2_{zz} g_i = \Phi_i^\top \operatorname{diag}(\omega_i) \Phi_i + \mu I,

:math:`\omega_{ij} = \sigma(t_{ij})\sigma(-t_{ij})/n`, and the cross term
:math:`\nabla^2_{Wz} g_i\, v = A_i^\top q_i v^\top + A_i^\top(\omega_i \odot \Phi_i v)\, z^\top`.
For *f*, :math:`\nabla_z f_i = \Phi^{val\top}_i \bar u_i`,
:math:`\nabla_W f_i = A^{val\top}_i \bar u_i\, z^\top` with
:math:`\bar u = \partial F/\partial h \odot \sigma'(u)` (sigmoid scores).

References
----------
.. [1] J. Yang, Z. Si, S. Lyu, K. Ji. First-Order Minimax Bilevel Optimization. NeurIPS 2024.
.. [2] Z. Yuan, Y. Yan, M. Sonka, T. Yang. Large-scale Robust Deep AUC Maximization. ICCV 2021.
"""

from __future__ import annotations

from .._backend import linalg_solve, to_host
from .._validation import (check_array, check_bool, check_choice,
                          check_has_features, check_int, check_real)
from ..linalg import block_newton
from ..models.auc import VERSIONS, auc_m_alpha_star, auc_m_grad, auc_m_loss
from ..models.losses import sigmoid, sigmoid_prime, softplus
from .base import Batch, MinimaxBilevelProblem

__all__ = ["MultiTaskAUC", "MultiTaskAUCAnchored", "MultiTaskAUCHead"]


def _weighted_rows(w, M):
    """``Σ_k w[b, k] M[b, k, :]`` for stacked blocks: ``(nb, n)``, ``(nb, n, p)`` -> ``(nb, p)``.

    A batched matrix product reads ``M`` once and makes no temporary of its size
    (``xp.sum(M * w[..., None], axis=1)`` does both; 4.3 -> 0.2 ms at 1,000,000 x 100 on an
    H100, docs/benchmarks.md).
    """
    return (w[:, None, :] @ M)[:, 0, :]


def _bmv(M, v):
    """Batched matrix-vector product ``(nb, n, p) @ (nb, p) -> (nb, n)``."""
    return (M @ v[..., None])[..., 0]


def _take(xp, a, blocks, rows):
    a = xp.take(a, blocks, axis=0)
    return a if rows is None else xp.take(a, rows, axis=1)


class MultiTaskAUC(MinimaxBilevelProblem):
    r"""T binary AUC-M tasks sharing a linear representation; one block per task.

    See the module docstring for the formulation and what is reconstructed.
    ``MultiTaskAUC(..., lower=...)`` constructs the subclass of the chosen lower level:
    :class:`MultiTaskAUCHead` (``"head"``) or :class:`MultiTaskAUCAnchored`
    (``"anchored"``). This class holds what they share: the data, the upper level (the
    AUC-M loss on the validation rows and its exact saddle-point oracles) and the
    lower-level oracles written through the features :math:`\Phi_i` and the ridge offset;
    each subclass supplies its shared-variable layout, features, offset and x-derivatives.

    Parameters
    ----------
    A_train, A_val : array, shape (T, n_train, d) and (T, n_val, d)
        Per-task features (training rows feed ``g``, validation rows feed ``f``).
    y_train, y_val : array, shape (T, n_train) and (T, n_val)
        Labels in {0, 1} (float or integer; stored as float masks).
    lower : {"head", "anchored"}
        Lower-level formulation [RECONSTRUCTED]: a ridge-logistic head on the shared
        representation ``A W`` (default; :class:`MultiTaskAUCHead`), or a task copy of a
        shared linear model ``w`` anchored by :math:`\frac\mu2\|z_i - w\|^2`
        (:class:`MultiTaskAUCAnchored`). ``MultiTaskAUC(...)`` returns an instance of that
        class; the subclasses may be constructed directly (``lower`` then omitted or
        equal to theirs).
    rank : int, optional
        Width r of the shared representation ``W`` (default ``d``; ``lower="head"`` only)
        [RECONSTRUCTED].
    mu : float
        Ridge of the task heads (strong convexity of ``g_i``), default 0.1 [ours].
    version : {"v1", "v2"}
        AUC-M form (default ``"v1"``, LibAUC's ``AUCMLoss``).
    margin : float
        Margin m, default 1.0 [CODE: LibAUC].
    nonnegative_alpha : bool
        ``True`` for AUC-M (α ≥ 0, default), ``False`` for the AUC square loss.
    score : {"sigmoid", "linear"}
        Score map on the head output (default ``"sigmoid"`` as in LibAUC) [RECONSTRUCTED].
    prior : array of shape (T,), optional
        Positive priors :math:`p_i` for v1; default the validation positive ratio per task.
        A constant: unlike LibAUC's ``auto`` mode it is not re-estimated per minibatch
        [ours]. (v2 uses the class counts of the rows read, minibatch or full.)

    Notes
    -----
    Variables: ``x = (vec(W) row-major, a (T), b (T))``, ``dim_x = d r + 2T`` (anchored:
    ``x = (w, a, b)``, ``dim_x = d + 2T``); ``y = (α_1..α_T)``; ``z`` has shape
    ``(n_blocks, r)`` (anchored: ``(n_blocks, d)``). Default start (:meth:`init_x`):
    ``W = eye(d, r)`` (anchored: ``w = 0``), ``a = b = 0`` (LibAUC initialises a, b, α at 0).
    ``batch.outer``/``batch.inner`` index validation/training rows (the same rows in every
    task). Derivation: docs/theory/auc.rst.

    References
    ----------
    .. [1] J. Yang, Z. Si, S. Lyu, K. Ji. First-Order Minimax Bilevel Optimization.
       NeurIPS 2024.
    .. [2] Z. Yuan, Y. Yan, M. Sonka, T. Yang. Large-scale Robust Deep AUC Maximization.
       ICCV 2021.

    Examples
    --------
    Built from :func:`refbilevel.datasets.make_multitask_auc`; the lower-level gradient of
    every task vanishes at :meth:`inner_solution`:

    >>> import numpy as np
    >>> from refbilevel.datasets import make_multitask_auc
    >>> problem = make_multitask_auc(n_tasks=3, n_train=20, n_val=20, n_features=4, seed=0)
    >>> x = problem.init_x()
    >>> z = problem.inner_solution(x)
    >>> z.shape
    (3, 4)
    >>> gx, gz = problem.grad_g(x, z, problem.all_blocks())
    >>> bool(np.allclose(gz, 0.0, atol=1e-10))
    True
    """

    name = "multitask_auc"
    #: The lower-level formulation of the class (set by each subclass).
    lower: str

    def __new__(cls, *args, lower="head", **kwargs):
        if cls is MultiTaskAUC:   # dispatch on the lower level; subclasses construct themselves
            cls = _LOWER_LEVELS[check_choice(lower, "lower", tuple(_LOWER_LEVELS))]
        return super().__new__(cls)

    def __init__(self, A_train, y_train, A_val, y_val, *, lower=None, rank=None, mu=0.1,
                 version="v1", margin=1.0, nonnegative_alpha=True, score="sigmoid",
                 prior=None):
        check_array(A_train, "A_train", ndim=3)
        for name, arr in (("y_train", y_train), ("A_val", A_val), ("y_val", y_val)):
            check_array(arr, name, floating=False)
        check_has_features(A_train, "A_train")
        self._set_backend(A_train, y_train, A_val, y_val,
                          names=("A_train", "y_train", "A_val", "y_val"))
        xp = self.xp
        T, n_tr, d = A_train.shape
        check_array(A_val, "A_val", shape=(T, None, d), like=A_train)
        for name, lab, A in (("y_train", y_train, A_train), ("y_val", y_val, A_val)):
            if lab.ndim != 2 or tuple(lab.shape) != tuple(A.shape[:2]):
                raise ValueError(f"{name} must have shape {tuple(A.shape[:2])}; "
                                 f"got {tuple(lab.shape)}")
            host = to_host(lab)
            if not ((host == 0) | (host == 1)).all():
                raise ValueError(f"{name} must contain only the values 0 and 1")
        if lower is not None and check_choice(lower, "lower", tuple(_LOWER_LEVELS)) != self.lower:
            raise ValueError(f"lower must be {self.lower!r} (or omitted) for "
                             f"{type(self).__name__}; got {lower!r}")
        self.rank = self._check_rank(rank, d)
        self.mu = check_real(mu, "mu", positive=True)
        self.version = check_choice(version, "version", VERSIONS)
        self.margin = check_real(margin, "margin")
        self.nonnegative_alpha = check_bool(nonnegative_alpha, "nonnegative_alpha")
        self.score = check_choice(score, "score", ("sigmoid", "linear"))
        dt = A_train.dtype
        self.A_train, self.A_val = A_train, A_val
        self.y_train = xp.astype(y_train, dt)
        self.y_val = xp.astype(y_val, dt)
        if prior is None:
            prior = xp.mean(self.y_val, axis=1)
        else:
            check_array(prior, "prior", shape=(T,), like=A_train)
        if self.version == "v1":
            hp = to_host(prior)
            if not ((hp > 0) & (hp < 1)).all():
                raise ValueError("prior must lie strictly in (0, 1) for version='v1' (every task "
                                 "needs both classes in its validation rows)")
        self.prior = prior
        self.n_blocks, self.n_inner, self.n_outer, self.dim_features = T, n_tr, A_val.shape[1], d
        self.dim_z = self.rank
        self.dim_y = T
        self.dim_x = self._n_shared + 2 * T

    # ------------------------------------------------------------ lower-level hooks
    # Each subclass defines these and cross_g; every other oracle is written through them.
    def _check_rank(self, rank, d):
        """The validated width ``r`` of the head ``z_i``."""
        raise NotImplementedError

    @property
    def _n_shared(self) -> int:
        """Length of the shared model in ``x`` (``W`` or ``w``)."""
        raise NotImplementedError

    def _shared(self, x):
        """The shared model's view of ``x`` (``W (d, r)`` or ``w (d,)``)."""
        raise NotImplementedError

    def _init_shared(self):
        """The shared model's default start, flat."""
        raise NotImplementedError

    def _features(self, A, x):
        r"""The features :math:`\Phi_i` of stacked rows ``A`` ``(nb, n, d)``: ``(nb, n, r)``."""
        raise NotImplementedError

    def _offset(self, x, z):
        r"""The argument of the ridge term :math:`\frac\mu2\|\cdot\|^2` (``z - w`` or ``z``)."""
        raise NotImplementedError

    def _grad_g_shared(self, A, q, z, offset):
        r"""The shared model's part of :math:`\nabla_x` of the mean of ``g`` over the ``nb`` blocks.

        ``q`` ``(nb, n)`` are the logistic residuals :math:`q_i` and ``offset`` is
        :meth:`_offset` at ``z``.
        """
        raise NotImplementedError

    def _grad_g_shared_many(self, A, Q, Zs, offsets):
        """:meth:`_grad_g_shared` at ``m`` points: ``Q`` ``(nb, n, m)``, ``Zs``/``offsets``
        ``(m, nb, r)`` -> a list of ``m`` flat arrays."""
        raise NotImplementedError

    def _grad_f_shared(self, Av, du, z):
        r"""The shared model's part of :math:`\nabla_x` of the mean of ``f``: ``du`` ``(nb, n)``
        is :math:`\partial F/\partial u` on the validation rows ``Av``."""
        raise NotImplementedError

    # ------------------------------------------------------------ layout
    def split_x(self, x):
        """``(shared model, a (T), b (T))`` views of x (``W (d, r)`` or ``w (d)`` first)."""
        T, k = self.n_blocks, self._n_shared
        return self._shared(x), x[k: k + T], x[k + T:]

    def init_x(self):
        """The shared model's start (:meth:`_init_shared`), ``a = b = 0`` (as LibAUC)."""
        xp, T = self.xp, self.n_blocks
        return xp.concat([self._init_shared(),
                          xp.zeros(2 * T, dtype=self.dtype, device=self.device)])

    def _onehot(self, blocks):
        xp = self.xp
        cols = xp.arange(self.n_blocks, device=self.device)
        return xp.astype(blocks[:, None] == cols[None, :], self.dtype)

    # ------------------------------------------------------------ lower level
    def _g_parts(self, x, z, blocks, rows):
        xp = self.xp
        A = _take(xp, self.A_train, blocks, rows)
        lab = _take(xp, self.y_train, blocks, rows)
        feats = self._features(A, x)                    # (nb, n, r)
        t = (2.0 * lab - 1.0) * _bmv(feats, z)
        return A, lab, feats, t

    def g(self, x, z, blocks, batch: Batch | None = None):
        """Mean over ``blocks`` of :math:`g_i(x, z_i)` (module docstring), a 0-d array."""
        xp = self.xp
        _, _, _, t = self._g_parts(x, z, blocks, None if batch is None else batch.inner)
        dz = self._offset(x, z)
        per = xp.mean(softplus(-t, xp=xp), axis=1) + 0.5 * self.mu * xp.sum(dz * dz, axis=1)
        return xp.mean(per)

    def _q(self, lab, t):
        xp = self.xp
        return -(2.0 * lab - 1.0) * sigmoid(-t, xp=xp) / t.shape[1]

    def grad_g(self, x, z, blocks, batch: Batch | None = None):
        r"""``(gx, gz)``: gradient of the mean in x; per-block :math:`\nabla_z g_i` (nb, r)."""
        A, lab, feats, t = self._g_parts(x, z, blocks, None if batch is None else batch.inner)
        q = self._q(lab, t)
        dz = self._offset(x, z)
        gz = _weighted_rows(q, feats) + self.mu * dz
        return self._pack(self._grad_g_shared(A, q, z, dz)), gz

    def _residuals_many(self, x, Zs, blocks, batch):
        """Data rows, logistic residuals ``(nb, n, m)`` and per-block z-gradients ``(m, nb, r)``."""
        xp = self.xp
        rows = None if batch is None else batch.inner
        A = _take(xp, self.A_train, blocks, rows)
        sign = 2.0 * _take(xp, self.y_train, blocks, rows) - 1.0         # (nb, n)
        feats = self._features(A, x)                                      # (nb, n, r)
        T = sign[..., None] * (feats @ xp.permute_dims(Zs, (1, 2, 0)))    # (nb, n, m)
        Q = -sign[..., None] * sigmoid(-T, xp=xp) / T.shape[1]
        offsets = xp.stack([self._offset(x, Zs[j, ...]) for j in range(Zs.shape[0])])
        gzs = xp.permute_dims(xp.matrix_transpose(Q) @ feats, (1, 0, 2)) + self.mu * offsets
        return A, Q, offsets, gzs

    def grad_g_z_many(self, x, Zs, blocks, batch: Batch | None = None):
        """Per-block :math:`\nabla_z g_i` at ``m`` points: ``(m, len(blocks), rank)``.

        The features are formed once; the x-gradient's product with the data is skipped.
        """
        return self._residuals_many(x, Zs, blocks, batch)[3]

    def grad_g_many(self, x, Zs, blocks, batch: Batch | None = None):
        r"""``grad_g`` at the points ``(x, Zs[j])`` with one pass over each block's data.

        The features :math:`\Phi_i = A_i W` are formed once for all points, and the
        x-gradients contract the stacked residuals with :math:`A_i` in one batched product.
        Returns ``(m, dim_x)`` and ``(m, len(blocks), rank)`` stacks.
        """
        A, Q, offsets, gzs = self._residuals_many(x, Zs, blocks, batch)
        gxs = [self._pack(g) for g in self._grad_g_shared_many(A, Q, Zs, offsets)]
        return self.xp.stack(gxs), gzs

    def _pack(self, gW, ga=None, gb=None):
        xp, T = self.xp, self.n_blocks
        zero = xp.zeros(T, dtype=self.dtype, device=self.device)
        return xp.concat([xp.reshape(gW, (-1,)), zero if ga is None else ga,
                          zero if gb is None else gb])

    def hvp_g(self, x, z, v, blocks, batch: Batch | None = None):
        r"""Per-block Hessian-vector product in z.

        :math:`\nabla^2_{zz} g_i\, v_i = \Phi_i^\top(\omega_i\odot\Phi_i v_i) + \mu v_i`.
        """
        xp = self.xp
        _, _, feats, t = self._g_parts(x, z, blocks, None if batch is None else batch.inner)
        w = sigmoid_prime(t, xp=xp) / t.shape[1]
        fv = _bmv(feats, v)
        return _weighted_rows(w * fv, feats) + self.mu * v

    def _hessians(self, x, z, blocks):
        xp = self.xp
        _, _, feats, t = self._g_parts(x, z, blocks, None)
        w = sigmoid_prime(t, xp=xp) / t.shape[1]
        eye = xp.eye(self.rank, dtype=self.dtype, device=self.device)
        return xp.matrix_transpose(feats * w[..., None]) @ feats + self.mu * eye

    def inner_solution(self, x, *, tol=None, max_iter=100):
        r"""``z*(x)`` for all blocks (shape ``(T, r)``): damped Newton, vectorised over blocks.

        See :func:`refbilevel.linalg.block_newton` (relative tolerance ``tol`` on every block's
        :math:`\|\nabla_z g_i\|`: 1e-13 in float64, 1e-5 in float32), started at zero.
        Synchronises: an exact oracle.
        """
        xp = self.xp
        blocks = self.all_blocks()

        def per_block(zz):
            _, _, _, t = self._g_parts(x, zz, blocks, None)
            dz = self._offset(x, zz)
            return xp.mean(softplus(-t, xp=xp), axis=1) + 0.5 * self.mu * xp.sum(dz * dz, axis=1)

        return block_newton(per_block, lambda zz: self.grad_g(x, zz, blocks)[1],
                            lambda zz: self._hessians(x, zz, blocks), self.init_z(),
                            tol=tol, max_iter=max_iter)

    # ------------------------------------------------------------ upper level
    def _f_parts(self, x, z, blocks, rows):
        xp = self.xp
        _, a, b = self.split_x(x)
        Av = _take(xp, self.A_val, blocks, rows)
        lab = _take(xp, self.y_val, blocks, rows)
        feats = self._features(Av, x)
        u = _bmv(feats, z)
        h = sigmoid(u, xp=xp) if self.score == "sigmoid" else u
        p = xp.take(self.prior, blocks, axis=0)
        return Av, lab, feats, u, h, xp.take(a, blocks, axis=0), xp.take(b, blocks, axis=0), p

    def _auc_kw(self, p):
        return {"p": p if self.version == "v1" else None, "margin": self.margin,
                "version": self.version}

    def f(self, x, y, z, blocks, batch: Batch | None = None):
        """Mean over ``blocks`` of the AUC-M loss of each task, a 0-d array."""
        xp = self.xp
        rows = None if batch is None else batch.outer
        _, lab, _, _, h, a, b, p = self._f_parts(x, z, blocks, rows)
        alpha = xp.take(y, blocks, axis=0)
        return xp.mean(auc_m_loss(h, lab, a, b, alpha, **self._auc_kw(p)))

    def grad_f(self, x, y, z, blocks, batch: Batch | None = None):
        r"""``(gx, gy, gz)``: mean gradients in x and α; per-block :math:`\nabla_z f_i`."""
        xp = self.xp
        Av, lab, feats, u, h, a, b, p = self._f_parts(x, z, blocks,
                                                      None if batch is None else batch.outer)
        alpha = xp.take(y, blocks, axis=0)
        dh, da, db, dalpha = auc_m_grad(h, lab, a, b, alpha, **self._auc_kw(p))
        du = dh * sigmoid_prime(u, xp=xp) if self.score == "sigmoid" else dh
        gz = _weighted_rows(du, feats)
        nb = z.shape[0]
        E = self._onehot(blocks)
        gx = self._pack(self._grad_f_shared(Av, du, z), (da @ E) / nb, (db @ E) / nb)
        return gx, (dalpha @ E) / nb, gz

    def alpha_star(self, x, z, blocks=None):
        """Closed-form maximiser α_i* for each block given heads ``z`` (shape ``(nb,)``)."""
        blocks = self.all_blocks() if blocks is None else blocks
        _, lab, _, _, h, _, _, p = self._f_parts(x, z, blocks, None)
        return auc_m_alpha_star(h, lab, nonnegative=self.nonnegative_alpha, **self._auc_kw(p))

    def _saddle_point(self, x):
        xp = self.xp
        z = self.inner_solution(x)
        alpha = self.alpha_star(x, z)     # all blocks in order: alpha is y itself
        return z, xp.asarray(alpha, copy=True)

    def value(self, x):
        r""":math:`\Phi(x) = \frac1T\sum_i \max_{\alpha_i} f_i(x, \alpha_i, z_i^*(x))`, 0-d."""
        z, alpha = self._saddle_point(x)
        return self.f(x, alpha, z, self.all_blocks())

    def saddle_gradient(self, x):
        r"""Exact :math:`\nabla\Phi(x)` (Danskin in α, implicit function theorem in z).

        Notes
        -----
        .. math::

            \nabla\Phi(x) = \frac1T\sum_i \Big[\nabla_x f_i - \nabla^2_{xz} g_i\,
                [\nabla^2_{zz} g_i]^{-1} \nabla_z f_i\Big]_{(\alpha_i^*, z_i^*)},

        with the ``T`` systems of size ``r`` solved densely in one stacked call.
        """
        blocks = self.all_blocks()
        z, alpha = self._saddle_point(x)
        gx, _, gz = self.grad_f(x, alpha, z, blocks)
        V = linalg_solve(self._hessians(x, z, blocks), gz[..., None])[..., 0]
        return gx - self.cross_g(x, z, V, blocks)

    def describe(self) -> dict:
        out = super().describe()
        out.update(lower=self.lower, rank=self.rank, mu=self.mu, version=self.version,
                   margin=self.margin,
                   score=self.score, nonnegative_alpha=self.nonnegative_alpha,
                   n_train=self.n_inner, n_val=self.n_outer)
        return out


class MultiTaskAUCHead(MultiTaskAUC):
    r""":class:`MultiTaskAUC` with ridge-logistic heads on a shared representation (``lower="head"``).

    Notes
    -----
    ``x = (vec(W) row-major, a, b)`` with :math:`W \in \mathbb R^{d\times r}`, features
    :math:`\Phi_i = A_i W`, ridge :math:`\frac\mu2\|z_i\|^2`; start ``W = eye(d, r)``. With
    :math:`q_i` the logistic residuals and :math:`\omega_i` the curvatures (module
    docstring):

    .. math::

        \nabla_W g_i = A_i^\top q_i\, z_i^\top, \qquad
        \nabla^2_{Wz} g_i\, v = A_i^\top q_i\, v^\top
            + A_i^\top(\omega_i\odot\Phi_i v)\, z_i^\top, \qquad
        \nabla_W f_i = A^{val\top}_i \bar u_i\, z_i^\top .

    References
    ----------
    .. [1] J. Yang, Z. Si, S. Lyu, K. Ji. First-Order Minimax Bilevel Optimization.
       NeurIPS 2024.
    .. [2] Z. Yuan, Y. Yan, M. Sonka, T. Yang. Large-scale Robust Deep AUC Maximization.
       ICCV 2021.

    Examples
    --------
    ``MultiTaskAUC(..., lower="head")`` builds this class; every task's lower-level gradient
    vanishes at :meth:`inner_solution`:

    >>> import numpy as np
    >>> from refbilevel.datasets import make_multitask_auc
    >>> problem = make_multitask_auc(n_tasks=3, n_train=20, n_val=20, n_features=4, seed=0,
    ...                              lower="head")
    >>> type(problem).__name__, problem.init_x().shape
    ('MultiTaskAUCHead', (22,))
    >>> x = problem.init_x()
    >>> gx, gz = problem.grad_g(x, problem.inner_solution(x), problem.all_blocks())
    >>> bool(np.allclose(gz, 0.0, atol=1e-10))
    True
    """

    lower = "head"

    def _check_rank(self, rank, d):
        return d if rank is None else check_int(rank, "rank", minimum=1)

    @property
    def _n_shared(self) -> int:
        return self.dim_features * self.rank

    def _shared(self, x):
        return self.xp.reshape(x[:self._n_shared], (self.dim_features, self.rank))

    def _init_shared(self):
        W = self.xp.eye(self.dim_features, self.rank, dtype=self.dtype, device=self.device)
        return self.xp.reshape(W, (-1,))

    def _features(self, A, x):
        return A @ self._shared(x)

    def _offset(self, x, z):
        return z

    def _grad_g_shared(self, A, q, z, offset):
        Mq = _weighted_rows(q, A)           # (nb, d)
        return (self.xp.matrix_transpose(Mq) @ z) / z.shape[0]

    def _grad_g_shared_many(self, A, Q, Zs, offsets):
        xp, nb = self.xp, Zs.shape[1]
        MQ = xp.matrix_transpose(Q) @ A                                   # (nb, m, d): one pass
        return [(xp.matrix_transpose(MQ[:, j, :]) @ Zs[j, ...]) / nb for j in range(Zs.shape[0])]

    def _grad_f_shared(self, Av, du, z):
        return (self.xp.matrix_transpose(_weighted_rows(du, Av)) @ z) / z.shape[0]

    def cross_g(self, x, z, v, blocks, batch: Batch | None = None):
        r"""x-gradient of :math:`\frac1{n_b}\sum_j \langle \nabla_z g_{b_j}(x, z_j), v_j\rangle`.

        Notes
        -----
        .. math::

            \nabla^2_{Wz} g_i\, v = A_i^\top q_i\, v^\top
                + A_i^\top(\omega_i\odot\Phi_i v)\, z^\top

        (the a, b parts are zero).
        """
        xp = self.xp
        A, lab, feats, t = self._g_parts(x, z, blocks, None if batch is None else batch.inner)
        q = self._q(lab, t)
        w = sigmoid_prime(t, xp=xp) / t.shape[1]
        rho = w * _bmv(feats, v)
        Mq = _weighted_rows(q, A)
        Mr = _weighted_rows(rho, A)
        mT = xp.matrix_transpose
        return self._pack((mT(Mq) @ v + mT(Mr) @ z) / z.shape[0])


class MultiTaskAUCAnchored(MultiTaskAUC):
    r""":class:`MultiTaskAUC` with task models anchored at a shared linear model (``lower="anchored"``).

    Notes
    -----
    ``x = (w, a, b)`` with :math:`w \in \mathbb R^d`, features :math:`\Phi_i = A_i` (raw),
    ridge :math:`\frac\mu2\|z_i - w\|^2`, so ``rank`` is ``d`` (``rank`` must be omitted);
    start ``w = 0``. The shared model enters ``g`` only through the ridge and ``f`` not at
    all:

    .. math::

        \nabla_w g_i = -\mu (z_i - w), \qquad \nabla^2_{wz} g_i = -\mu I, \qquad
        \nabla_w f_i = 0 .

    References
    ----------
    .. [1] J. Yang, Z. Si, S. Lyu, K. Ji. First-Order Minimax Bilevel Optimization.
       NeurIPS 2024.
    .. [2] Z. Yuan, Y. Yan, M. Sonka, T. Yang. Large-scale Robust Deep AUC Maximization.
       ICCV 2021.

    Examples
    --------
    ``MultiTaskAUC(..., lower="anchored")`` builds this class; every task's lower-level gradient
    vanishes at :meth:`inner_solution`:

    >>> import numpy as np
    >>> from refbilevel.datasets import make_multitask_auc
    >>> problem = make_multitask_auc(n_tasks=3, n_train=20, n_val=20, n_features=4, seed=0,
    ...                              lower="anchored")
    >>> type(problem).__name__, problem.init_x().shape
    ('MultiTaskAUCAnchored', (10,))
    >>> x = problem.init_x()
    >>> gx, gz = problem.grad_g(x, problem.inner_solution(x), problem.all_blocks())
    >>> bool(np.allclose(gz, 0.0, atol=1e-10))
    True
    """

    lower = "anchored"

    def _check_rank(self, rank, d):
        if rank is not None:
            raise ValueError("rank must be None for lower='anchored' (the head has d entries)")
        return d

    @property
    def _n_shared(self) -> int:
        return self.dim_features

    def _shared(self, x):
        return x[:self._n_shared]

    def _init_shared(self):
        return self.xp.zeros(self.dim_features, dtype=self.dtype, device=self.device)

    def _features(self, A, x):
        return A

    def _offset(self, x, z):
        return z - self._shared(x)[None, :]

    def _grad_g_shared(self, A, q, z, offset):
        return -self.mu * self.xp.mean(offset, axis=0)

    def _grad_g_shared_many(self, A, Q, Zs, offsets):
        return [-self.mu * self.xp.mean(offsets[j, ...], axis=0) for j in range(Zs.shape[0])]

    def _grad_f_shared(self, Av, du, z):
        return self.xp.zeros(self.dim_features, dtype=self.dtype, device=self.device)

    def cross_g(self, x, z, v, blocks, batch: Batch | None = None):
        r"""x-gradient of :math:`\frac1{n_b}\sum_j \langle \nabla_z g_{b_j}(x, z_j), v_j\rangle`: :math:`(-\mu\,\mathrm{mean}_j v_j, 0, 0)` (reads no data)."""
        return self._pack(-self.mu * self.xp.mean(v, axis=0))


_LOWER_LEVELS = {"head": MultiTaskAUCHead, "anchored": MultiTaskAUCAnchored}
