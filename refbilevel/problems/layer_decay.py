r"""Per-layer weight decay on a two-layer MLP: one decay coefficient per weight matrix."""

from __future__ import annotations

import math

from .._backend import default_namespace, host_rng
from .._validation import check_choice, check_int
from ..models.mlp import ACTIVATIONS, MLP
from ._classification import ValidationLoss, set_multiclass_data, to_problem_arrays
from .base import Batch, BilevelProblem, LinearizedG, _inner, _outer, take_rows

__all__ = ["LayerDecayMLP"]


class LayerDecayMLP(ValidationLoss, BilevelProblem):
    r"""A two-layer MLP trained with one weight-decay coefficient per layer (``dim_x = 2``).

    Parameters
    ----------
    A_train, A_val : array, shape (n_train, d) and (n_val, d)
        Features (real floating, finite, one namespace and device).
    labels_train, labels_val : array of int, shape (n_train,) and (n_val,)
        Class indices in ``0..C-1``.
    n_classes : int, optional
        ``C``; inferred as ``1 + max label`` when omitted.
    hidden : int
        Hidden width ``h`` (default 32, our choice).
    activation : {"tanh", "relu"}
        Hidden activation.
    parametrization : {"exp", "raw"}
        ``"exp"`` (default): :math:`R = \sum_l e^{x_l} \frac12 \|W_l\|^2`; ``"raw"``:
        :math:`R = \sum_l x_l \|W_l\|^2` (no ½), the form a code comment of the MinimaxOPT
        authors gives for the ResNet experiment [UNVERIFIED]; meaningful for
        :math:`x \ge 0`, nothing clamps ``x``.
    seed : int or numpy Generator
        Seed of the random initial parameters (:meth:`init_y`).

    Notes
    -----
    The layers are the weight matrices :math:`W_1` (``(d, h)``) and :math:`W_2` (``(h, C)``);
    the biases :math:`b_1, b_2` are not decayed. Parameter layout: see
    :mod:`refbilevel.models.mlp`. With :math:`\kappa(x_l) = \frac12 e^{x_l}` (exp) or
    :math:`x_l` (raw) and :math:`\mathrm{CE}` the mean softmax cross-entropy:

    .. math::

        g(x, \theta) &= \mathrm{CE}_{tr}(\theta) + \sum_{l=1}^2 \kappa(x_l) \|W_l\|^2, \qquad
        f(x, \theta) = \mathrm{CE}_{val}(\theta), \\
        \nabla_{W_l} g &= \nabla_{W_l} \mathrm{CE}_{tr} + 2\kappa(x_l) W_l, \qquad
        \nabla_{x_l} g = \kappa'(x_l) \|W_l\|^2, \qquad \nabla_x f = 0, \\
        \nabla^2_{\theta\theta} g\, V &= \nabla^2 \mathrm{CE}_{tr}[V] + 2\kappa(x_l) V_{W_l}
        \text{ (on the } W_l \text{ blocks)}, \qquad
        (\nabla^2_{x\theta} g\, V)_l = 2\kappa'(x_l) \langle W_l, V_{W_l} \rangle,

    with the exact R-operator of :mod:`refbilevel.models.mlp` for
    :math:`\nabla^2 \mathrm{CE}`. Derivation:
    ``docs/theory/layer_decay.rst``.

    The inner problem is **not** strongly convex (``strongly_convex_inner = False``): the
    network is nonconvex, and the undecayed output bias leaves the loss invariant along
    :math:`b_2 + t\mathbf 1` (a zero-curvature direction, to which every gradient here is
    orthogonal, so the CG solves stay consistent). :meth:`inner_solution` returns a local
    minimiser reached by Newton-CG from :meth:`init_y`; :meth:`hypergradient` is the
    implicit-function formula at that local minimum, valid where the Hessian is positive
    definite on the complement of that direction. With ReLU a minimiser may lie on a kink,
    where ``g`` is not twice differentiable and the exact oracles do not apply.

    Defaults: ``init_x`` = 0 (exp) or 0.5 (raw): both give :math:`\frac12\|W_l\|^2`;
    ``init_y``: seeded random weights (fan-in scaled normal), zero biases.

    References
    ----------
    .. [1] J. Wang, R. Pan, R. Pi, T. Zhang, "Effective bilevel optimization via minimax
       reformulation", arXiv:2305.13153, §4.2 (per-layer weight decay of a ResNet-18 on
       CIFAR-10).
    .. [2] B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation
       6(1), 1994.

    Examples
    --------
    One coefficient per weight matrix; at a point where the inner problem has a stable local
    minimum the hypergradient agrees with central differences of :math:`F`:

    >>> import numpy as np
    >>> from refbilevel.problems.layer_decay import LayerDecayMLP
    >>> problem = LayerDecayMLP.synthetic(n_train=30, n_val=20, n_features=3, seed=0)
    >>> x = problem.init_x() + 1.0
    >>> h, e = 1e-4, np.eye(2)
    >>> fd = [(problem.value(x + h * e[i]) - problem.value(x - h * e[i])) / (2 * h)
    ...       for i in range(2)]
    >>> bool(np.allclose(problem.hypergradient(x), fd, rtol=1e-6))
    True
    """

    name = "layer_decay"
    strongly_convex_inner = False

    def __init__(self, A_train, labels_train, A_val, labels_val, *, n_classes: int | None = None,
                 hidden: int = 32, activation: str = "tanh", parametrization: str = "exp",
                 seed=0):
        self.hidden = check_int(hidden, "hidden", minimum=1)
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        self.parametrization = check_choice(parametrization, "parametrization", ("exp", "raw"))
        xp, n_classes = set_multiclass_data(self, A_train, labels_train, A_val, labels_val,
                                            n_classes)
        self.model = MLP(self.n_features, self.hidden, n_classes, self.activation)
        self._y0 = self.model.init(seed, xp=xp, dtype=self.dtype, device=self.device)
        # layer indicator M (2, p): M[l, k] = 1 when parameter k belongs to W_l
        sizes = self.model.sizes
        dt, dev = self.dtype, self.device
        one = [xp.ones(sizes[0], dtype=dt, device=dev), xp.zeros(sum(sizes[1:]), dtype=dt, device=dev)]
        two = [xp.zeros(sum(sizes[:2]), dtype=dt, device=dev), xp.ones(sizes[2], dtype=dt, device=dev),
               xp.zeros(sizes[3], dtype=dt, device=dev)]
        self._layers = xp.stack([xp.concat(one), xp.concat(two)])
        self.dim_x, self.dim_y = 2, self.model.size
        self.n_inner, self.n_outer = A_train.shape[0], A_val.shape[0]

    # ------------------------------------------------------------ helpers
    def _kappa(self, x):
        return 0.5 * self.xp.exp(x) if self.parametrization == "exp" else x

    def _dkappa(self, x):
        return 0.5 * self.xp.exp(x) if self.parametrization == "exp" else self.xp.ones_like(x)

    def _coef(self, x):
        """Per-parameter decay factor ``2κ(x_l)`` on ``W_l``, 0 on biases (shape ``(p,)``)."""
        return (2.0 * self._kappa(x)) @ self._layers

    def _layer_inner(self, U, V):
        """``<U_{W_l}, V_{W_l}>`` for l = 1, 2 (shape ``(..., 2)``)."""
        return (U * V) @ self._layers.T

    def _train(self, batch):
        idx = _inner(batch)
        return take_rows(self.A_train, idx, self.xp), take_rows(self.Y_train, idx, self.xp)

    def _val(self, batch):
        idx = _outer(batch)
        return take_rows(self.A_val, idx, self.xp), take_rows(self.Y_val, idx, self.xp)

    def init_x(self):
        """``log(0.1)`` for ``"exp"``, 0.05 for ``"raw"`` (both: the decay ``0.05·||W_l||²``).

        A decay of order 1 (``x = 0``) drives both weight matrices of the synthetic
        instances to zero, where ``∇_x g = ½e^{x}||W_l||²`` vanishes and the start is a
        degenerate stationary point of ``F``; 0.1 keeps the trained network non-trivial
        [ours].
        """
        x = self.xp.zeros(2, dtype=self.dtype, device=self.device)
        return x + math.log(0.1) if self.parametrization == "exp" else x + 0.05

    def init_y(self):
        """The seeded random MLP parameters (a zero MLP is a saddle point)."""
        return self.xp.asarray(self._y0, copy=True)

    # ------------------------------------------------------------ oracles
    def g(self, x, y, batch: Batch | None = None):
        """Training cross-entropy plus the per-layer decay."""
        A, Y = self._train(batch)
        reg = self.xp.sum(self._kappa(x) * self._layer_inner(y, y))
        return self.model.value(y, A, Y, xp=self.xp) + reg

    def grad_g(self, x, y, batch: Batch | None = None):
        """``(∇_x g, ∇_θ g)``."""
        A, Y = self._train(batch)
        return self.grad_g_x(x, y), self.grad_g_y(x, y, batch)

    def grad_g_y(self, x, y, batch: Batch | None = None):
        """``∇_θ CE_train + 2κ(x_l) W_l`` (the x-part is not formed)."""
        A, Y = self._train(batch)
        return self.model.grad(y, A, Y, xp=self.xp) + self._coef(x) * y

    def grad_g_x(self, x, y, batch: Batch | None = None):
        """``κ'(x_l) ||W_l||²`` (reads no data)."""
        return self._dkappa(x) * self._layer_inner(y, y)

    def hvp_g(self, x, y, v, batch: Batch | None = None):
        """Exact R-operator HVP of the cross-entropy plus ``2κ(x_l) V_{W_l}``."""
        A, Y = self._train(batch)
        return self.model.hvp(y, A, Y, v, xp=self.xp) + self._coef(x) * v

    def cross_g(self, x, y, v, batch: Batch | None = None):
        """``2κ'(x_l) <W_l, V_{W_l}>`` (reads no data)."""
        return 2.0 * self._dkappa(x) * self._layer_inner(y, v)

    def linearize_g(self, x, y, batch: Batch | None = None) -> LinearizedG:
        r"""``hvp_g`` and ``cross_g`` at ``(x, y)`` for many directions, the forward pass shared.

        The training rows are gathered once, the decay factors :math:`2\kappa(x_l)` and
        :math:`2\kappa'(x_l)` evaluated once, and the network's forward pass with the
        direction-free backward quantities formed at the first HVP
        (:meth:`refbilevel.models.mlp.MLP.linearize`); each HVP then reads the training rows
        twice (three times in :meth:`hvp_g`). ``cross`` reads no data. Products equal
        :meth:`hvp_g` and :meth:`cross_g` bit for bit.
        """
        A, Y = self._train(batch)
        coef, dkappa2 = self._coef(x), 2.0 * self._dkappa(x)
        model = self.model.linearize(y, A, Y, xp=self.xp)
        return LinearizedG(hvp=lambda v: model.hvp(v) + coef * v,
                           cross=lambda v: dkappa2 * self._layer_inner(y, v))

    # ------------------------------------------------------------ stacked oracles
    def grad_g_y_many(self, x, Ys, batch: Batch | None = None):
        """``∇_θ g`` at ``m`` points, the first layer's data product done once: ``(m, dim_y)``."""
        A, Y = self._train(batch)
        G = self.model.grad_many(Ys, A, Y, xp=self.xp)
        return G + self._coef(x) * Ys

    def grad_g_x_many(self, x, Ys, batch: Batch | None = None):
        """``∇_x g`` at ``m`` points, ``(m, 2)`` (reads no data)."""
        return self._dkappa(x) * self._layer_inner(Ys, Ys)

    def grad_g_many(self, x, Ys, batch: Batch | None = None):
        """``(∇_x g, ∇_θ g)`` stacks at ``m`` points."""
        return self.grad_g_x_many(x, Ys), self.grad_g_y_many(x, Ys, batch)

    # ------------------------------------------------------------ misc
    def describe(self) -> dict:
        out = super().describe()
        out.update(n_features=self.n_features, n_classes=self.n_classes, hidden=self.hidden,
                   activation=self.activation, parametrization=self.parametrization,
                   decayed=("W1", "W2"))
        return out

    @classmethod
    def synthetic(cls, n_train: int = 100, n_val: int = 50, n_features: int = 5, *,
                  n_classes: int = 3, noise: float = 0.5, seed=0, xp=None, dtype="float64",
                  device=None, **kwargs) -> LayerDecayMLP:
        r"""A small seeded instance: Gaussian features, labels from a noisy random teacher network.

        Labels :math:`\arg\max_c (\mathrm{clip}(A W^\dagger_1, -1, 1) W^\dagger_2
        + \text{noise}\cdot\varepsilon)_c`
        with standard normal :math:`W^\dagger`. ``kwargs`` go to the constructor
        (``hidden``, ``activation``, ``parametrization``; ``seed`` also seeds the start).
        """
        n_tr = check_int(n_train, "n_train", minimum=1)
        n_va = check_int(n_val, "n_val", minimum=1)
        d = check_int(n_features, "n_features", minimum=1)
        C = check_int(n_classes, "n_classes", minimum=2)
        rng = host_rng(seed)
        xp = default_namespace(xp)
        n = n_tr + n_va
        A = rng.standard_normal((n, d))
        H = (A @ rng.standard_normal((d, 2 * C))).clip(-1.0, 1.0)
        score = H @ rng.standard_normal((2 * C, C)) + noise * rng.standard_normal((n, C))
        lab = score.argmax(axis=1).astype("int64")
        arrays = to_problem_arrays([A[:n_tr], lab[:n_tr], A[n_tr:], lab[n_tr:]], xp, dtype, device)
        kwargs.setdefault("seed", rng)
        return cls(*arrays, n_classes=C, **kwargs)

