r"""Data hyper-cleaning: learn one weight :math:`\sigma(x_i)` per (possibly corrupted) training sample."""

from __future__ import annotations

from .._backend import default_namespace, host_rng
from .._validation import check_bool, check_choice, check_int, check_memory, check_real
from ..models.affine import AffineModel
from ..models.linear import LinearModel
from ..models.losses import sigmoid, sigmoid_prime
from ..models.mlp import ACTIVATIONS, MLP
from ._classification import ValidationLoss, scatter_rows, set_multiclass_data, to_problem_arrays
from .base import Batch, BilevelProblem, LinearizedG, _inner, _outer, take_rows

__all__ = ["DataCleaning"]


class DataCleaning(ValidationLoss, BilevelProblem):
    r"""Data hyper-cleaning with a linear (multinomial) or two-layer MLP classifier.

    Parameters
    ----------
    A_train, A_val : array, shape (n_train, d) and (n_val, d)
        Features (real floating, finite, one namespace and device).
    labels_train, labels_val : array of int, shape (n_train,) and (n_val,)
        Class indices in ``0..C-1`` (the training labels may be corrupted).
    n_classes : int, optional
        ``C``; inferred as ``1 + max label`` when omitted.
    reg : float
        :math:`c` in the regulariser :math:`\frac c2 \|w\|^2` (all parameters, biases
        included). Default 0.002: stocBiO's ``+0.001‖w‖²`` written in this
        convention [CODE: stocBiO mnist_exp.py]; benchopt's ``reg·Σw²`` with reg = 0.2 is
        ``reg=0.4`` here. MinimaxOPT's value is not restated here [UNVERIFIED].
    model : {"linear", "mlp"}
        Linear scores :math:`A W`, :math:`W \in \mathbb{R}^{d \times C}` (with ``bias``,
        :math:`A W + \mathbf 1 b^\top`), or the two-layer MLP of
        :mod:`refbilevel.models.mlp` (dropout-free; MinimaxOPT used dropout, which this
        problem does not model: see ``docs/studies/cleaning_mlp.rst``).
    bias : bool
        Give the linear model a bias :math:`b \in \mathbb{R}^C`
        (:class:`~refbilevel.models.affine.AffineModel`; the parameter vector is ``W``
        row-major followed by ``b``, length :math:`(d + 1) C`). Default False (no bias, the
        earlier behaviour). The MLP always has its biases; ``bias=True`` with
        ``model="mlp"`` is a ``ValueError``.
    hidden : int
        MLP hidden width (default 64; the paper's width is UNVERIFIED, our choice).
    activation : {"tanh", "relu"}
        MLP activation.
    seed : int or numpy Generator
        Seed of the MLP's random initial parameters (:meth:`init_y`); unused for linear.

    Notes
    -----
    With :math:`\ell_i(w)` the softmax cross-entropy of training sample :math:`i` and
    :math:`n = n_{tr}` (or the batch size):

    .. math::

        g(x, w) &= \frac1n \sum_i \sigma(x_i)\, \ell_i(w) + \frac c2 \|w\|^2, \qquad
        f(x, w) = \frac{1}{n_{val}} \sum_{j \in val} \ell_j(w), \\
        \nabla_w g &= \frac1n \sum_i \sigma(x_i) \nabla_w \ell_i(w) + c\,w, \qquad
        \nabla_{x_i} g = \frac1n \sigma'(x_i)\, \ell_i(w), \qquad \nabla_x f = 0, \\
        \nabla^2_{ww} g\, v &= \frac1n \sum_i \sigma(x_i) \nabla^2 \ell_i(w)\, v + c\,v, \qquad
        (\nabla^2_{xw} g\, v)_i = \frac1n \sigma'(x_i) \langle \nabla_w \ell_i(w), v \rangle .

    For the linear model :math:`\nabla_w \ell_i = A_i^\top (P_i - Y_i)` and
    :math:`\langle \nabla_w \ell_i, v\rangle = \langle A_i V, P_i - Y_i\rangle`; with the
    bias, :math:`\nabla_b \ell_i = P_i - Y_i` and the direction :math:`v = (V, c)` gives
    :math:`\langle A_i V + c, P_i - Y_i\rangle` (the ones column of
    :class:`~refbilevel.models.affine.AffineModel`); for the MLP
    the last term is the per-sample-loss JVP (forward R-pass) and the HVP is Pearlmutter's
    R-operator. With a batch, rows ``batch.inner`` are read, :math:`\sigma(x_i)` is gathered
    at the same indices, and :math:`\nabla_x g` is nonzero only there (repeated indices
    add). Hypergradient (IFT):
    :math:`\nabla F(x)_i = -\frac1n \sigma'(x_i)\langle \nabla_w \ell_i(w^*), v^*\rangle`,
    :math:`v^* = [\nabla^2_{ww} g]^{-1} \nabla_w f(w^*)`. Derivation:
    ``docs/theory/cleaning.rst`` (and ``docs/theory/mlp.rst`` for the MLP).

    The linear inner problem is strongly convex (:math:`c > 0`). The MLP's is not
    (``strongly_convex_inner`` is False): :meth:`inner_solution` returns a local minimiser
    reached from :meth:`init_y`, and :meth:`hypergradient` is the implicit-function
    formula there, valid where the Hessian is positive definite (CG stops on a
    non-positive curvature direction). Every exact oracle checks its inner point (the
    stationarity residual; with ``return_certificate=True`` also a Lanczos curvature range)
    and warns, or raises with ``on_failure="raise"``, when it is not a certified minimiser:
    with ReLU, Newton often stalls on a kink where no exact oracle applies
    (``docs/theory/certificates.rst``). Defaults: ``init_x`` = 0 (:math:`\sigma = 0.5`),
    ``init_y`` = 0 (linear) or the seeded random MLP parameters.

    References
    ----------
    .. [1] J. Wang, R. Pan, R. Pi, T. Zhang, "Effective bilevel optimization via minimax
       reformulation", arXiv:2305.13153, §4.3 (data hyper-cleaning on MNIST).
    .. [2] A. Shaban, C.-A. Cheng, N. Hatch, B. Boots, "Truncated back-propagation for
       bilevel optimization", AISTATS 2019 (data hyper-cleaning).
    .. [3] K. Ji, J. Yang, Y. Liang, "Bilevel optimization: convergence analysis and
       enhanced design", ICML 2021 (stocBiO).

    Examples
    --------
    One weight per training sample; the hypergradient agrees with central differences of
    :math:`F(x) = f(x, w^*(x))`:

    >>> import numpy as np
    >>> from refbilevel.problems.cleaning import DataCleaning
    >>> problem = DataCleaning.synthetic(n_train=30, n_val=20, n_features=3, seed=0)
    >>> x = problem.init_x() + 0.1
    >>> x.shape
    (30,)
    >>> h, e = 1e-4, np.eye(30)
    >>> fd = [(problem.value(x + h * e[i]) - problem.value(x - h * e[i])) / (2 * h)
    ...       for i in range(3)]
    >>> bool(np.allclose(problem.hypergradient(x)[:3], fd, rtol=1e-5, atol=1e-10))
    True
    """

    name = "cleaning"

    def __init__(self, A_train, labels_train, A_val, labels_val, *, n_classes: int | None = None,
                 reg: float = 0.002, model: str = "linear", hidden: int = 64,
                 activation: str = "tanh", bias: bool = False, seed=0):
        self.reg = check_real(reg, "reg", nonnegative=True)
        self.model_kind = check_choice(model, "model", ("linear", "mlp"))
        self.bias = check_bool(bias, "bias")
        if self.bias and model == "mlp":
            raise ValueError("bias applies to the linear model (the MLP has its biases); "
                             "use bias=False with model='mlp'")
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        self.hidden = check_int(hidden, "hidden", minimum=1)
        xp, n_classes = set_multiclass_data(self, A_train, labels_train, A_val, labels_val,
                                            n_classes)
        if model == "linear":
            self.model = (AffineModel if self.bias else LinearModel)(self.n_features, n_classes)
            self._y0 = None
            self.strongly_convex_inner = self.reg > 0
        else:
            self.model = MLP(self.n_features, self.hidden, n_classes, self.activation)
            self._y0 = self.model.init(seed, xp=xp, dtype=self.dtype, device=self.device)
            self.strongly_convex_inner = False
        self.dim_x = self.n_inner = A_train.shape[0]
        self.dim_y = self.model.size
        self.n_outer = A_val.shape[0]

    # ------------------------------------------------------------ helpers
    def _train(self, x, batch):
        idx, xp = _inner(batch), self.xp
        xb = take_rows(x, idx, xp)
        return idx, take_rows(self.A_train, idx, xp), take_rows(self.Y_train, idx, xp), xb

    def _val(self, batch):
        idx = _outer(batch)
        return take_rows(self.A_val, idx, self.xp), take_rows(self.Y_val, idx, self.xp)

    def _to_x(self, vals, idx):
        """Per-row values -> an x-space array (scattered when a batch is used)."""
        return vals if idx is None else scatter_rows(vals, idx, self.dim_x, self.xp)

    def init_y(self):
        """Zeros (linear) or the seeded random MLP parameters (a zero MLP is a saddle)."""
        if self._y0 is None:
            return super().init_y()
        return self.xp.asarray(self._y0, copy=True)

    # ------------------------------------------------------------ oracles
    def g(self, x, y, batch: Batch | None = None):
        """Weighted training cross-entropy plus ``(reg/2)||w||²``."""
        _, A, Y, xb = self._train(x, batch)
        w = sigmoid(xb, xp=self.xp)
        return self.model.value(y, A, Y, weights=w, xp=self.xp) + 0.5 * self.reg * self.xp.sum(y * y)

    def grad_g(self, x, y, batch: Batch | None = None):
        """``(∇_x g, ∇_w g)``, one forward-backward pass."""
        idx, A, Y, xb = self._train(x, batch)
        xp = self.xp
        ell, gy = self.model.per_sample_and_grad(y, A, Y, weights=sigmoid(xb, xp=xp), xp=xp)
        gx = self._to_x(sigmoid_prime(xb, xp=xp) * ell / A.shape[0], idx)
        return gx, gy + self.reg * y

    def grad_g_y(self, x, y, batch: Batch | None = None):
        """``∇_w g = (1/n) Σ σ(x_i) ∇ℓ_i + reg·w`` (no per-sample losses formed)."""
        _, A, Y, xb = self._train(x, batch)
        return self.model.grad(y, A, Y, weights=sigmoid(xb, xp=self.xp), xp=self.xp) + self.reg * y

    def hvp_g(self, x, y, v, batch: Batch | None = None):
        """``(1/n) Σ σ(x_i) ∇²ℓ_i v + reg·v`` (exact R-operator for the MLP)."""
        _, A, Y, xb = self._train(x, batch)
        hv = self.model.hvp(y, A, Y, v, weights=sigmoid(xb, xp=self.xp), xp=self.xp)
        return hv + self.reg * v

    def cross_g(self, x, y, v, batch: Batch | None = None):
        """``(1/n) σ'(x_i) <∇_w ℓ_i, v>`` per training sample (x-space)."""
        idx, A, Y, xb = self._train(x, batch)
        jv = self.model.per_sample_jvp(y, A, Y, v, xp=self.xp)
        return self._to_x(sigmoid_prime(xb, xp=self.xp) * jv / A.shape[0], idx)

    def linearize_g(self, x, y, batch: Batch | None = None) -> LinearizedG:
        r"""``hvp_g`` and ``cross_g`` at ``(x, y)`` for many directions, the forward pass shared.

        The training rows, :math:`\sigma(x_i)` and :math:`\sigma'(x_i)` are gathered and
        evaluated once; the model's forward pass (scores and softmax probabilities for the
        linear model; activations, :math:`\varphi'`, :math:`\varphi''` and the
        direction-free backward quantities for the MLP) is formed at the first product
        (``model.linearize``). Each HVP then reads the training rows twice (three times in
        :meth:`hvp_g`), each cross product once (twice in :meth:`cross_g`). Products equal
        :meth:`hvp_g` and :meth:`cross_g` bit for bit.
        """
        idx, A, Y, xb = self._train(x, batch)
        xp, n = self.xp, A.shape[0]
        model = self.model.linearize(y, A, Y, weights=sigmoid(xb, xp=xp), xp=xp)
        dsig = sigmoid_prime(xb, xp=xp)
        return LinearizedG(
            hvp=lambda v: model.hvp(v) + self.reg * v,
            cross=lambda v: self._to_x(dsig * model.per_sample_jvp(v) / n, idx))

    # ------------------------------------------------------------ stacked oracles
    def grad_g_many(self, x, Ys, batch: Batch | None = None):
        """``(∇_x g, ∇_w g)`` at ``m`` points ``Ys`` (``(m, dim_y)``), the data read once."""
        idx, A, Y, xb = self._train(x, batch)
        xp = self.xp
        ell, G = self.model.per_sample_and_grad_many(Ys, A, Y, weights=sigmoid(xb, xp=xp), xp=xp)
        gx = self._to_x(sigmoid_prime(xb, xp=xp) * ell / A.shape[0], idx)
        return gx, G + self.reg * Ys

    def grad_g_y_many(self, x, Ys, batch: Batch | None = None):
        """``∇_w g`` at ``m`` points, shape ``(m, dim_y)`` (no per-sample losses formed)."""
        _, A, Y, xb = self._train(x, batch)
        G = self.model.grad_many(Ys, A, Y, weights=sigmoid(xb, xp=self.xp), xp=self.xp)
        return G + self.reg * Ys

    def grad_g_x_many(self, x, Ys, batch: Batch | None = None):
        """``∇_x g`` at ``m`` points, shape ``(m, dim_x)``."""
        return self.grad_g_many(x, Ys, batch)[0]

    # ------------------------------------------------------------ misc
    def describe(self) -> dict:
        out = super().describe()
        out.update(model=self.model_kind, n_features=self.n_features, n_classes=self.n_classes,
                   reg=self.reg)
        if self.bias:
            out.update(bias=True)
        if self.model_kind == "mlp":
            out.update(hidden=self.hidden, activation=self.activation)
        return out

    @classmethod
    def synthetic(cls, n_train: int = 100, n_val: int = 50, n_features: int = 5, *,
                  n_classes: int = 3, corruption: float = 0.3, seed=0, xp=None,
                  dtype="float64", device=None, **kwargs) -> DataCleaning:
        r"""A small seeded instance with a fraction ``corruption`` of training labels corrupted.

        Features :math:`\mathcal N(0, 1)`; clean labels :math:`\arg\max_c (A W^\dagger)_c` with
        :math:`W^\dagger \sim \mathcal N(0, 1)`; each training label is replaced, with
        probability ``corruption``, by a uniformly drawn different class. Validation labels
        are clean. ``kwargs`` go to the constructor (``reg``, ``model``, ``hidden``, ...;
        ``seed`` also seeds the MLP start). Paper-faithful data: :mod:`refbilevel.datasets`.
        """
        n_tr = check_int(n_train, "n_train", minimum=1)
        n_va = check_int(n_val, "n_val", minimum=1)
        d = check_int(n_features, "n_features", minimum=1)
        C = check_int(n_classes, "n_classes", minimum=2)
        p = check_real(corruption, "corruption", low=0.0, high=1.0)
        check_memory(3 * (n_tr + n_va) * (d + C) + d * C, f"{cls.__name__}.synthetic data")
        rng = host_rng(seed)
        xp = default_namespace(xp)
        A = rng.standard_normal((n_tr + n_va, d))
        lab = (A @ rng.standard_normal((d, C))).argmax(axis=1).astype("int64")
        flip = rng.random(n_tr) < p
        shift = rng.integers(1, C, size=n_tr)
        lab_tr = ((lab[:n_tr] + flip * shift) % C).astype("int64")
        arrays = to_problem_arrays([A[:n_tr], lab_tr, A[n_tr:], lab[n_tr:]], xp, dtype, device)
        kwargs.setdefault("seed", rng)
        return cls(*arrays, n_classes=C, **kwargs)
