r"""Rank-based robust meta-learning (sum of ranked range of task losses) as minimax-bilevel.

What is known and what is ours (``docs/theory/meta.rst``; tags as in ``docs/provenance.rst``):

* **[PAPER]** Yang, Si, Lyu, Ji (NeurIPS 2024) apply FOSL/MemCS to a "novel rank-based"
  robust meta-learning problem; a companion paper (Si, Hu, Ji, Lyu, arXiv 2410.18894)
  minimises the average of the ranked range :math:`\ell_{[m+1]},\dots,\ell_{[k]}` of the
  adapted task losses (:math:`\ell_{[1]} \ge \ell_{[2]} \ge \dots`).
* **[DERIVED]** The ranked range as a min-max (Hu et al. 2020, sum of ranked range):
  :math:`\sum_{i\le k}\ell_{[i]} = \min_\lambda k\lambda + \sum_i[\ell_i - \lambda]_+`.
* **[RECONSTRUCTED]** (named options): the hinge :math:`[\cdot]_+` is replaced by a smooth
  surrogate :math:`s` (``smoothing="softplus"``: :math:`s(u) = \tau\log(1 + e^{u/\tau})`, or
  ``"huber"``: 0 for :math:`u \le 0`, :math:`u^2/(2\tau)` on :math:`[0, \tau]`,
  :math:`u - \tau/2` beyond; ``temperature`` τ); a strongly concave regulariser
  :math:`-\frac\rho2\hat\lambda^2` (``rho``) makes the max well posed even for m = 0; the task
  adaptation is a linear model anchored at the shared model (``mu``), fitted on the task's
  support rows; task losses are measured on its query rows; the per-row loss is the half
  squared error (``loss="squared"``, closed-form adaptation) or the logistic loss
  :math:`\log(1 + e^{-b\,a^\top z})` with labels ±1 (``loss="logistic"``, Newton).

Precisely (squared loss shown; the logistic form replaces the per-row loss and uses
:math:`\nabla^2_{zz} g_i = A_i^\top\operatorname{diag}(\sigma(t)\sigma(-t))A_i/n + \mu I`),
with :math:`x = (w, \lambda) \in \mathbb R^{d+1}`, :math:`y = \hat\lambda`,
:math:`c = T/(k - m)`:

.. math::

    g_i(x, z) = \frac1{2n}\|A_i z - b_i\|^2 + \frac\mu2\|z - w\|^2, \qquad
    \ell_i(z) = \frac1{2n_v}\|A^{v}_i z - b^{v}_i\|^2,

    f_i(x, \hat\lambda, z) = c\Big[\frac{k\lambda - m\hat\lambda}{T}
        + s(\ell_i(z) - \lambda) - s(\ell_i(z) - \hat\lambda)\Big] - \frac\rho2\hat\lambda^2,

so that :math:`\frac1T\sum_i f_i = \frac1{k-m}\big[k\lambda - m\hat\lambda + \sum_i
(s(\ell_i - \lambda) - s(\ell_i - \hat\lambda))\big] - \frac\rho2\hat\lambda^2`, which for
:math:`s = [\cdot]_+`, :math:`\rho = 0` and the optimal λ, λ̂ is the ranked-range average.
Derivatives:

.. math::

    z_i^*(w) = (A_i^\top A_i/n + \mu I)^{-1}(A_i^\top b_i/n + \mu w),\quad
    \nabla_z g_i = A_i^\top(A_i z - b_i)/n + \mu(z - w),\quad
    \nabla_w g_i = -\mu(z - w),

    \nabla_z f_i = c\,[s'(\ell_i - \lambda) - s'(\ell_i - \hat\lambda)]\,\nabla\ell_i(z),\quad
    \partial_\lambda f_i = c\,[k/T - s'(\ell_i - \lambda)],\quad
    \partial_{\hat\lambda} f_i = c\,[-m/T + s'(\ell_i - \hat\lambda)] - \rho\hat\lambda .

References
----------
.. [1] J. Yang, Z. Si, S. Lyu, K. Ji. First-Order Minimax Bilevel Optimization. NeurIPS 2024.
.. [2] S. Hu, Y. Ying, X. Wang, S. Lyu. Learning by Minimizing the Sum of Ranked Range.
   NeurIPS 2020.
"""

from __future__ import annotations

from .._backend import linalg_solve, to_host_scalar
from ..linalg import block_newton
from .._validation import check_array, check_choice, check_has_features, check_int, check_real
from ..models.losses import sigmoid, sigmoid_prime, softplus
from .base import Batch, MinimaxBilevelProblem

__all__ = ["RankedMetaLearning"]


def _take(xp, a, blocks, rows):
    a = xp.take(a, blocks, axis=0)
    return a if rows is None else xp.take(a, rows, axis=1)


class RankedMetaLearning(MinimaxBilevelProblem):
    r"""Ranked-range robust meta-learning over T regression tasks (module docstring).

    Parameters
    ----------
    A_train, A_val : array, shape (T, n_train, d), (T, n_val, d)
        Per-task support (adaptation) and query (evaluation) features.
    b_train, b_val : array, shape (T, n_train), (T, n_val)
        Targets (real for ``loss="squared"``, ±1 for ``loss="logistic"``).
    k, m : int
        Ranked range: average the task losses ranked ``m+1 .. k`` (``0 <= m < k <= T``);
        ``k`` defaults to T, ``m`` to 0.
    mu : float
        Anchor strength of the task adaptation, default 1.0 [ours].
    smoothing : {"softplus", "huber"}
        Smooth surrogate of the hinge [RECONSTRUCTED], default ``"softplus"``.
    temperature : float
        τ of the smoothing, default 0.1 [ours].
    rho : float
        Strong-concavity regulariser in λ̂, default 1e-3 [ours]; ``rho = 0`` needs
        ``0 < m < T``.
    loss : {"squared", "logistic"}
        Per-row loss of adaptation and evaluation [RECONSTRUCTED], default ``"squared"``.

    Notes
    -----
    ``x = (w (d), λ)``, ``y = (λ̂,)``, ``z`` of shape ``(n_blocks, d)``. Default start: zeros.
    ``batch.outer``/``batch.inner`` index query/support rows (the same rows in every task).
    Derivation: docs/theory/meta.rst.

    References
    ----------
    .. [1] J. Yang, Z. Si, S. Lyu, K. Ji. First-Order Minimax Bilevel Optimization.
       NeurIPS 2024.
    .. [2] S. Hu, Y. Ying, X. Wang, S. Lyu. Learning by Minimizing the Sum of Ranked Range.
       NeurIPS 2020.

    Examples
    --------
    Built from :func:`refbilevel.datasets.make_meta_learning`; each task's adapted
    parameters :math:`z_i^*(x)` make the lower-level gradient vanish:

    >>> import numpy as np
    >>> from refbilevel.datasets import make_meta_learning
    >>> problem = make_meta_learning(n_tasks=4, n_support=6, n_query=6, n_features=3, seed=0)
    >>> z = problem.inner_solution(problem.init_x())
    >>> z.shape
    (4, 3)
    >>> gx, gz = problem.grad_g(problem.init_x(), z, problem.all_blocks())
    >>> bool(np.allclose(gz, 0.0, atol=1e-10))
    True
    """

    name = "ranked_meta_learning"

    def __init__(self, A_train, b_train, A_val, b_val, *, k=None, m=0, mu=1.0,
                 smoothing="softplus", temperature=0.1, rho=1e-3, loss="squared"):
        check_array(A_train, "A_train", ndim=3)
        for name, arr in (("b_train", b_train), ("A_val", A_val), ("b_val", b_val)):
            check_array(arr, name, floating=False)
        check_has_features(A_train, "A_train")
        self._set_backend(A_train, b_train, A_val, b_val,
                          names=("A_train", "b_train", "A_val", "b_val"))
        T, n_tr, d = A_train.shape
        check_array(b_train, "b_train", shape=(T, n_tr), like=A_train)
        check_array(A_val, "A_val", shape=(T, None, d), like=A_train)
        check_array(b_val, "b_val", shape=(T, A_val.shape[1]), like=A_train)
        self.k = T if k is None else check_int(k, "k", minimum=1)
        self.m = check_int(m, "m", minimum=0)
        if not self.m < self.k <= T:
            raise ValueError(f"k and m must satisfy 0 <= m < k <= n_blocks={T}; got k={self.k}, "
                             f"m={self.m}")
        self.mu = check_real(mu, "mu", positive=True)
        self.loss = check_choice(loss, "loss", ("squared", "logistic"))
        if self.loss == "logistic":
            for name, lab in (("b_train", b_train), ("b_val", b_val)):
                if not to_host_scalar(self.xp.all(self.xp.abs(lab) == 1)):
                    raise ValueError(f"{name} must contain only -1 and +1 for loss='logistic'")
        self.smoothing = check_choice(smoothing, "smoothing", ("softplus", "huber"))
        self.temperature = check_real(temperature, "temperature", positive=True)
        self.rho = check_real(rho, "rho", nonnegative=True)
        if self.rho == 0 and self.m == 0:
            raise ValueError("rho must be > 0 when m == 0 (otherwise the max over the dual "
                             "variable is not attained)")
        self.A_train, self.b_train, self.A_val, self.b_val = A_train, b_train, A_val, b_val
        self.n_blocks, self.n_inner, self.n_outer = T, n_tr, A_val.shape[1]
        self.dim_z = d
        self.dim_x = d + 1
        self.dim_y = 1

    # ------------------------------------------------------------ smoothing
    def _s(self, u):
        xp, tau = self.xp, self.temperature
        if self.smoothing == "softplus":
            return tau * softplus(u / tau, xp=xp)
        return xp.where(u <= 0, 0.0, xp.where(u >= tau, u - 0.5 * tau, u * u / (2.0 * tau)))

    def _ds(self, u):
        xp, tau = self.xp, self.temperature
        if self.smoothing == "softplus":
            return sigmoid(u / tau, xp=xp)
        return xp.clip(u / tau, 0.0, 1.0)

    # ------------------------------------------------------------ per-row loss
    def _rows(self, A, b, z):
        """Per-row loss, its derivative and second derivative in the prediction ``a^T z``."""
        xp = self.xp
        pred = xp.sum(A * z[:, None, :], axis=-1)
        if self.loss == "squared":
            res = pred - b
            return 0.5 * res * res, res, xp.ones_like(res)
        t = b * pred
        return softplus(-t, xp=xp), -b * sigmoid(-t, xp=xp), sigmoid_prime(t, xp=xp)

    # ------------------------------------------------------------ lower level

    def g(self, x, z, blocks, batch: Batch | None = None):
        """Mean over ``blocks`` of :math:`g_i(x, z_i)`, a 0-d array."""
        xp, rows = self.xp, None if batch is None else batch.inner
        A, b = _take(xp, self.A_train, blocks, rows), _take(xp, self.b_train, blocks, rows)
        val, _, _ = self._rows(A, b, z)
        dz = z - x[None, :-1]
        per = xp.mean(val, axis=1) + 0.5 * self.mu * xp.sum(dz * dz, axis=1)
        return xp.mean(per)

    def grad_g(self, x, z, blocks, batch: Batch | None = None):
        r"""``(gx, gz)``: gradient of the mean in x; per-block :math:`\nabla_z g_i`."""
        xp, rows = self.xp, None if batch is None else batch.inner
        A, b = _take(xp, self.A_train, blocks, rows), _take(xp, self.b_train, blocks, rows)
        _, d1, _ = self._rows(A, b, z)
        dz = z - x[None, :-1]
        gz = xp.sum(A * d1[..., None], axis=1) / A.shape[1] + self.mu * dz
        gw = -self.mu * xp.mean(dz, axis=0)
        return xp.concat([gw, xp.zeros(1, dtype=self.dtype, device=self.device)]), gz

    def hvp_g(self, x, z, v, blocks, batch: Batch | None = None):
        r"""Per-block :math:`(A_i^\top \operatorname{diag}(\ell''_i) A_i/n + \mu I) v_i`."""
        xp, rows = self.xp, None if batch is None else batch.inner
        A, b = _take(xp, self.A_train, blocks, rows), _take(xp, self.b_train, blocks, rows)
        _, _, d2 = self._rows(A, b, z)
        av = d2 * xp.sum(A * v[:, None, :], axis=-1)
        return xp.sum(A * av[..., None], axis=1) / A.shape[1] + self.mu * v

    def cross_g(self, x, z, v, blocks, batch: Batch | None = None):
        r"""x-gradient of :math:`\frac1{n_b}\sum_j\langle\nabla_z g_{b_j}, v_j\rangle`.

        Equals ``(-μ mean_j v_j, 0)`` since :math:`\nabla^2_{wz} g_i = -\mu I`.
        """
        xp = self.xp
        return xp.concat([-self.mu * xp.mean(v, axis=0),
                          xp.zeros(1, dtype=self.dtype, device=self.device)])

    def _hessians(self, z):
        """Stacked ``(T, d, d)`` Hessians :math:`\nabla^2_{zz} g_i` at ``z`` (all blocks)."""
        xp, A = self.xp, self.A_train
        _, _, d2 = self._rows(A, self.b_train, z)
        eye = xp.eye(self.dim_z, dtype=self.dtype, device=self.device)
        return xp.matrix_transpose(A * d2[..., None]) @ A / A.shape[1] + self.mu * eye

    def inner_solution(self, x):
        r"""``z*(x)`` for all blocks.

        Squared loss: the closed form
        :math:`z_i^* = (A_i^\top A_i/n + \mu I)^{-1}(A_i^\top b_i/n + \mu w)` (one stacked
        solve). Logistic loss: vectorised damped Newton
        (:func:`refbilevel.linalg.block_newton`), started at ``w``, to
        :math:`\|\nabla_z g_i\| \le 10^{-13}(1 + \|\nabla_z g(w)\|)` in float64.
        """
        xp, A, blocks = self.xp, self.A_train, self.all_blocks()
        w = x[None, :-1]
        if self.loss == "squared":
            rhs = xp.sum(A * self.b_train[..., None], axis=1) / A.shape[1] + self.mu * w
            return linalg_solve(self._hessians(self.init_z()), rhs[..., None])[..., 0]

        def per_block(z):
            val, _, _ = self._rows(A, self.b_train, z)
            return xp.mean(val, axis=1) + 0.5 * self.mu * xp.sum((z - w) ** 2, axis=1)

        return block_newton(per_block, lambda z: self.grad_g(x, z, blocks)[1], self._hessians,
                            self.init_z() + w)

    # ------------------------------------------------------------ upper level
    def task_losses(self, z, blocks, batch: Batch | None = None):
        """Query losses :math:`\\ell_i(z_i)` of the given blocks, shape ``(len(blocks),)``."""
        return self._query(z, blocks, batch)[0]

    def _query(self, z, blocks, batch):
        xp, rows = self.xp, None if batch is None else batch.outer
        A, b = _take(xp, self.A_val, blocks, rows), _take(xp, self.b_val, blocks, rows)
        val, d1, _ = self._rows(A, b, z)
        return xp.mean(val, axis=1), A, d1

    def f(self, x, y, z, blocks, batch: Batch | None = None):
        """Mean over ``blocks`` of :math:`f_i(x, \\hat\\lambda, z_i)`, a 0-d array."""
        xp, T = self.xp, self.n_blocks
        loss, _, _ = self._query(z, blocks, batch)
        lam, lhat = x[-1], y[0]
        c = T / (self.k - self.m)
        per = c * ((self.k * lam - self.m * lhat) / T + self._s(loss - lam) - self._s(loss - lhat))
        return xp.mean(per) - 0.5 * self.rho * lhat**2

    def grad_f(self, x, y, z, blocks, batch: Batch | None = None):
        r"""``(gx, gy, gz)``: mean gradients in x and λ̂; per-block :math:`\nabla_z f_i`."""
        xp, T = self.xp, self.n_blocks
        loss, A, d1 = self._query(z, blocks, batch)
        lam, lhat = x[-1], y[0]
        c = T / (self.k - self.m)
        d_lam, d_hat = self._ds(loss - lam), self._ds(loss - lhat)
        grad_loss = xp.sum(A * d1[..., None], axis=1) / A.shape[1]
        gz = (c * (d_lam - d_hat))[:, None] * grad_loss
        g_lam = c * (self.k / T - xp.mean(d_lam))
        g_hat = c * (-self.m / T + xp.mean(d_hat)) - self.rho * lhat
        gx = xp.concat([xp.zeros(self.dim_z, dtype=self.dtype, device=self.device),
                        xp.reshape(g_lam, (1,))])
        return gx, xp.reshape(g_hat, (1,)), gz

    def dual_solution(self, x, z=None, *, n_iter=200):
        r"""Dual maximiser :math:`\hat\lambda^* = \arg\max \frac1T\sum_i f_i(x, \hat\lambda, z_i)`.

        Bisection on the nonincreasing derivative (strictly decreasing for softplus or
        ρ > 0; where it is flat at zero every maximiser gives the same gradients)
        :math:`c[-m/T + \frac1T\sum_i s'(\ell_i - \hat\lambda)] - \rho\hat\lambda` over a
        bracket that provably contains the root; ``z`` defaults to ``z*(x)``. Returns shape
        ``(1,)``. Synchronises once (the bracket).
        """
        xp, T, tau = self.xp, self.n_blocks, self.temperature
        z = self.inner_solution(x) if z is None else z
        loss = self.task_losses(z, self.all_blocks())
        c = T / (self.k - self.m)
        lo = to_host_scalar(xp.min(loss)) - 50.0 * tau - 1.0
        hi = to_host_scalar(xp.max(loss)) + 50.0 * tau + 1.0
        if self.rho > 0:
            lo = min(lo, -c * self.m / (T * self.rho) - 1.0)
            hi = max(hi, c * (T - self.m) / (T * self.rho) + 1.0)
        lo = xp.asarray(lo, dtype=self.dtype, device=self.device)
        hi = xp.asarray(hi, dtype=self.dtype, device=self.device)
        for _ in range(n_iter):
            mid = 0.5 * (lo + hi)
            slope = c * (-self.m / T + xp.mean(self._ds(loss - mid))) - self.rho * mid
            lo = xp.where(slope > 0, mid, lo)
            hi = xp.where(slope > 0, hi, mid)
        return xp.reshape(0.5 * (lo + hi), (1,))

    def ranked_range_loss(self, x):
        r"""The ranked-range average of the adapted task losses at ``x``, a 0-d array.

        :math:`R(w) = \frac1{k-m}\sum_{i=m+1}^{k}\ell_{[i]}(z^*(w))` with
        :math:`\ell_{[1]} \ge \ell_{[2]} \ge \dots` the query losses of the tasks adapted
        exactly (:meth:`inner_solution`): the hinge, not its smoothing, and independent of
        λ. It is the value of :math:`\min_\lambda\Phi(w, \lambda)` in the limit
        τ → 0, ρ = 0 (Hu et al. 2020), the training loss the ranked range defines.
        """
        xp = self.xp
        loss = self.task_losses(self.inner_solution(x), self.all_blocks())
        ranked = xp.sort(loss, descending=True)
        return xp.mean(ranked[self.m:self.k])

    def value(self, x):
        r""":math:`\Phi(x) = \max_{\hat\lambda} \frac1T\sum_i f_i(x, \hat\lambda, z_i^*)`, 0-d."""
        z = self.inner_solution(x)
        return self.f(x, self.dual_solution(x, z), z, self.all_blocks())

    def saddle_gradient(self, x):
        r"""Exact :math:`\nabla\Phi(x)`: Danskin in λ̂, implicit function theorem in z.

        Notes
        -----
        :math:`\nabla_w\Phi = \frac1T\sum_i \mu H_i^{-1}\nabla_z f_i`,
        :math:`\partial_\lambda\Phi = \frac1T\sum_i\partial_\lambda f_i`, at
        :math:`(\hat\lambda^*, z^*)`, :math:`H_i = \nabla^2_{zz} g_i(x, z_i^*)`.
        """
        blocks = self.all_blocks()
        z = self.inner_solution(x)
        gx, _, gz = self.grad_f(x, self.dual_solution(x, z), z, blocks)
        V = linalg_solve(self._hessians(z), gz[..., None])[..., 0]
        return gx - self.cross_g(x, z, V, blocks)

    def describe(self) -> dict:
        out = super().describe()
        out.update(loss=self.loss, k=self.k, m=self.m, mu=self.mu, smoothing=self.smoothing,
                   temperature=self.temperature, rho=self.rho)
        return out
