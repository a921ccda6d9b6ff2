r"""Two-layer perceptron with softmax cross-entropy: forward, backward and exact R-operator.

Parameter layout (a flat 1-D vector :math:`\theta` of length
:math:`dh + h + hC + C`), in this order, each block row-major::

    W1 (d, h) | b1 (h,) | W2 (h, C) | b2 (C,)

:meth:`MLP.pack` and :meth:`MLP.unpack` convert between the flat vector and the four
views. Forward pass on data :math:`A \in \mathbb{R}^{n \times d}`:

.. math::

    U = A W_1 + \mathbf 1 b_1^\top, \quad H = \varphi(U), \quad
    Z = H W_2 + \mathbf 1 b_2^\top, \quad P = \mathrm{softmax}(Z),

with :math:`\varphi` = ``tanh`` or ``relu``. The objective is the weighted mean
:math:`L = \frac1n \sum_i c_i \ell_i` (:math:`c_i = 1` by default).

Notes
-----
Backward pass (reverse mode) with :math:`G_Z = (c \odot (P - Y))/n`:

.. math::

    \nabla W_2 = H^\top G_Z,\; \nabla b_2 = \mathbf 1^\top G_Z,\;
    G_H = G_Z W_2^\top,\; G_U = G_H \odot \varphi'(U),\;
    \nabla W_1 = A^\top G_U,\; \nabla b_1 = \mathbf 1^\top G_U .

Exact Hessian-vector product by Pearlmutter's R-operator in the direction
:math:`(V_1, c_1, V_2, c_2)`:

.. math::

    R(U) &= A V_1 + \mathbf 1 c_1^\top, \quad R(H) = \varphi'(U) \odot R(U), \quad
    R(Z) = R(H) W_2 + H V_2 + \mathbf 1 c_2^\top, \\
    R(G_Z) &= c \odot P \odot (R(Z) - \mathrm{rowsum}(P \odot R(Z))) / n, \\
    R(\nabla W_2) &= R(H)^\top G_Z + H^\top R(G_Z), \quad R(\nabla b_2) = \mathbf 1^\top R(G_Z), \\
    R(G_H) &= R(G_Z) W_2^\top + G_Z V_2^\top, \quad
    R(G_U) = R(G_H) \odot \varphi'(U) + G_H \odot \varphi''(U) \odot R(U), \\
    R(\nabla W_1) &= A^\top R(G_U), \quad R(\nabla b_1) = \mathbf 1^\top R(G_U).

``tanh``: :math:`\varphi' = 1 - \tanh^2`, :math:`\varphi'' = -2\tanh(1-\tanh^2)`;
``relu``: :math:`\varphi' = \mathbf 1\{u > 0\}`, :math:`\varphi'' = 0` (almost everywhere;
the derivatives are those of the active piece, so finite-difference checks must stay
away from kinks). The per-sample loss JVP :math:`\langle \nabla_\theta \ell_i, v\rangle =
\langle P_i - Y_i, R(Z)_i\rangle` is the forward pass of the R-operator alone.

No dropout: the model is deterministic so that its oracles can be checked exactly.

References
----------
.. [1] B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation
   6(1), 1994.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from .._backend import from_host, host_rng, resolve_dtype
from .losses import SOFTMAX_CE

__all__ = ["ACTIVATIONS", "MLP", "MLPAt"]

#: Supported hidden activations.
ACTIVATIONS = ("tanh", "relu")


def _activation(U, name, *, xp):
    """``(phi(U), phi'(U), phi''(U))``; ``phi''`` is ``None`` for ReLU (zero a.e.)."""
    if name == "tanh":
        T = xp.tanh(U)
        d1 = 1.0 - T * T
        return T, d1, -2.0 * T * d1
    return xp.maximum(U, 0.0), xp.astype(U > 0.0, U.dtype), None


@dataclass(frozen=True)
class MLP:
    """A two-layer perceptron ``d -> h -> C``; all methods take the namespace ``xp``.

    Parameters
    ----------
    n_features, hidden, n_classes : int
        ``d``, ``h`` and ``C``.
    activation : {"tanh", "relu"}
        Hidden activation.
    """

    n_features: int
    hidden: int
    n_classes: int
    activation: str = "tanh"

    # ------------------------------------------------------------ layout
    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """Lengths of the blocks ``W1, b1, W2, b2`` in the flat vector."""
        d, h, C = self.n_features, self.hidden, self.n_classes
        return (d * h, h, h * C, C)

    @property
    def size(self) -> int:
        """Length of the flat parameter vector."""
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start offsets of the blocks ``W1, b1, W2, b2`` (and the end)."""
        out = [0]
        for s in self.sizes:
            out.append(out[-1] + s)
        return tuple(out)

    def unpack(self, theta, *, xp):
        """Views ``(W1 (d,h), b1 (h,), W2 (h,C), b2 (C,))`` of a flat vector.

        A stack of vectors ``(m, size)`` gives stacked views with a leading ``m`` axis.
        """
        d, h, C = self.n_features, self.hidden, self.n_classes
        o = self.offsets
        lead = tuple(theta.shape[:-1])
        return (xp.reshape(theta[..., o[0]:o[1]], lead + (d, h)), theta[..., o[1]:o[2]],
                xp.reshape(theta[..., o[2]:o[3]], lead + (h, C)), theta[..., o[3]:o[4]])

    def pack(self, W1, b1, W2, b2, *, xp):
        """Flat vector (or ``(m, size)`` stack) from the four blocks (inverse of :meth:`unpack`)."""
        lead = tuple(b1.shape[:-1])
        parts = [xp.reshape(W1, lead + (-1,)), b1, xp.reshape(W2, lead + (-1,)), b2]
        return xp.concat(parts, axis=-1)

    def init(self, seed=None, *, xp, dtype, device=None, scale: float = 1.0):
        r"""Random parameters: :math:`W_l \sim \mathcal N(0, \text{scale}^2/\text{fan\_in})`, biases 0.

        Drawn on the host from :func:`refbilevel._backend.host_rng` (``seed``), moved once.
        A nonzero start matters: :math:`\theta = 0` is a stationary point of the
        unregularised loss in ``W1, W2`` (a saddle), where gradient methods stall.
        """
        rng = host_rng(seed)
        d, h, C = self.n_features, self.hidden, self.n_classes
        W1 = rng.standard_normal((d, h)) * (scale / math.sqrt(d))
        W2 = rng.standard_normal((h, C)) * (scale / math.sqrt(h))
        dtype = resolve_dtype(xp, dtype)
        W1 = from_host(W1.reshape(-1), xp, dtype=dtype, device=device)
        W2 = from_host(W2.reshape(-1), xp, dtype=dtype, device=device)
        b1 = xp.zeros(h, dtype=dtype, device=device)
        b2 = xp.zeros(C, dtype=dtype, device=device)
        return xp.concat([W1, b1, W2, b2])

    # ------------------------------------------------------------ passes
    def forward(self, theta, A, *, xp):
        """Scores ``Z`` (shape ``(n, C)``) and the cache ``(U, H, phi', phi'')``.

        A stack ``theta`` of shape ``(m, size)`` gives ``Z`` of shape ``(m, n, C)``, with
        ``A`` read once for the ``m`` first-layer products.
        """
        W1, b1, W2, b2 = self.unpack(theta, xp=xp)
        if theta.ndim == 1:
            U = A @ W1 + b1
        else:
            m, d, h = theta.shape[0], self.n_features, self.hidden
            cols = xp.reshape(xp.permute_dims(W1, (1, 0, 2)), (d, m * h))
            U = xp.permute_dims(xp.reshape(A @ cols, (A.shape[0], m, h)), (1, 0, 2))
            U = U + b1[:, None, :]
        H, d1, d2 = _activation(U, self.activation, xp=xp)
        Z = H @ W2 + (b2 if theta.ndim == 1 else b2[:, None, :])
        return Z, (U, H, d1, d2)

    def vjp(self, theta, cache, A, GZ, *, xp):
        """Flat parameter gradient for a score cotangent ``GZ`` (backward pass).

        Stacked ``theta`` ``(m, size)`` with ``GZ`` ``(m, n, C)`` gives ``(m, size)``.
        """
        W2T = xp.linalg.matrix_transpose(self.unpack(theta, xp=xp)[2])
        _, H, d1, _ = cache
        gW2 = xp.linalg.matrix_transpose(H) @ GZ
        gb2 = xp.sum(GZ, axis=-2)
        GU = (GZ @ W2T) * d1
        gb1 = xp.sum(GU, axis=-2)
        if theta.ndim == 1:
            gW1 = A.T @ GU
        else:
            m, n, h = GU.shape
            cols = xp.reshape(xp.permute_dims(GU, (1, 0, 2)), (n, m * h))
            gW1 = xp.permute_dims(xp.reshape(A.T @ cols, (self.n_features, m, h)), (1, 0, 2))
        return self.pack(gW1, gb1, gW2, gb2, xp=xp)

    def jvp(self, theta, cache, A, v, *, xp):
        """``(R(Z), R(U), R(H))``: the forward R-pass in parameter direction ``v`` (single point)."""
        _, _, W2, _ = self.unpack(theta, xp=xp)
        V1, c1, V2, c2 = self.unpack(v, xp=xp)
        _, H, d1, _ = cache
        RU = A @ V1 + c1
        RH = d1 * RU
        RZ = RH @ W2 + H @ V2 + c2
        return RZ, RU, RH

    # ------------------------------------------------------------ loss compositions
    def _grad_at(self, theta, Z, cache, A, Y, loss, weights, xp):
        r""":math:`\nabla_\theta \frac1n\sum_i c_i\ell_i` from a forward pass ``(Z, cache)``."""
        GZ = loss.score_grad(Z, Y, xp=xp)
        if weights is not None:
            GZ = weights[:, None] * GZ
        return self.vjp(theta, cache, A, GZ / A.shape[0], xp=xp)

    def grad(self, theta, A, Y, *, loss=SOFTMAX_CE, weights=None, xp):
        r""":math:`\nabla_\theta \frac1n\sum_i c_i\ell_i`, flat (no per-sample losses formed).

        Works for a stack ``theta`` of shape ``(m, size)`` too (then ``(m, size)``).
        """
        Z, cache = self.forward(theta, A, xp=xp)
        return self._grad_at(theta, Z, cache, A, Y, loss, weights, xp)

    def grad_many(self, Thetas, A, Y, *, loss=SOFTMAX_CE, weights=None, xp):
        """Stacked :meth:`grad` at ``m`` points ``(m, size)``; ``A`` read as in the one-point case."""
        return self.grad(Thetas, A, Y, loss=loss, weights=weights, xp=xp)

    def per_sample_and_grad(self, theta, A, Y, *, loss=SOFTMAX_CE, weights=None, xp):
        r"""Per-sample losses :math:`\ell_i` (``(n,)``) and :math:`\nabla_\theta \frac1n\sum_i c_i\ell_i`.

        Works for a stack ``theta`` of shape ``(m, size)`` too (``(m, n)``, ``(m, size)``).
        """
        Z, cache = self.forward(theta, A, xp=xp)
        return loss.per_sample(Z, Y, xp=xp), self._grad_at(theta, Z, cache, A, Y, loss, weights, xp)

    def per_sample_and_grad_many(self, Thetas, A, Y, *, loss=SOFTMAX_CE, weights=None, xp):
        """Stacked :meth:`per_sample_and_grad` at ``m`` points ``(m, size)``: ``(m, n)``, ``(m, size)``.

        ``A`` is read once for the ``m`` first-layer products and once for their gradients.
        """
        return self.per_sample_and_grad(Thetas, A, Y, loss=loss, weights=weights, xp=xp)

    def value(self, theta, A, Y, *, loss=SOFTMAX_CE, weights=None, xp):
        r""":math:`\frac1n \sum_i c_i \ell_i(\theta)` as a 0-d array."""
        ell = loss.per_sample(self.forward(theta, A, xp=xp)[0], Y, xp=xp)
        return xp.mean(ell if weights is None else weights * ell)

    def linearize(self, theta, A, Y, *, loss=SOFTMAX_CE, weights=None, xp):
        r"""The network's second-order products at the fixed point ``theta``, for many directions.

        Returns an :class:`MLPAt` whose :meth:`~MLPAt.hvp` and :meth:`~MLPAt.per_sample_jvp`
        equal :meth:`hvp` and :meth:`per_sample_jvp` at ``theta`` (bit for bit: the same
        operations in the same order). The forward pass (:math:`U, H, \varphi', \varphi'', Z`)
        and the direction-free parts of the backward pass (:math:`P`, :math:`G_Z`,
        :math:`G_H`) are computed once, at the first product that needs them; each HVP then
        reads ``A`` twice (:math:`A V_1` and :math:`A^\top R(G_U)`), each per-sample JVP once.
        """
        return MLPAt(self, theta, A, Y, loss, weights, xp)

    def per_sample_jvp(self, theta, A, Y, v, *, loss=SOFTMAX_CE, xp):
        r"""Per-sample loss JVP, shape ``(n,)``.

        :math:`\langle \nabla_\theta \ell_i(\theta), v\rangle = \langle \partial_Z \ell_i, R(Z)_i\rangle`.
        One product; for several at the same ``theta`` use :meth:`linearize`.
        """
        return self.linearize(theta, A, Y, loss=loss, xp=xp).per_sample_jvp(v)

    def hvp(self, theta, A, Y, v, *, loss=SOFTMAX_CE, weights=None, xp):
        r"""Exact :math:`\nabla^2_\theta \big(\frac1n \sum_i c_i \ell_i\big)\, v` (R-operator), flat.

        One product; for several at the same ``theta`` use :meth:`linearize`.
        """
        return self.linearize(theta, A, Y, loss=loss, weights=weights, xp=xp).hvp(v)


class MLPAt:
    r"""An :class:`MLP` linearised at one parameter point (see :meth:`MLP.linearize`).

    Notes
    -----
    Cached at the point (lazily, once each): the forward pass :math:`(Z, U, H, \varphi',
    \varphi'')`, the loss curvature operator :math:`R \mapsto P \odot (R - \mathrm{rowsum}(P
    \odot R))`, the score gradient :math:`\partial_Z \ell`, its weighted, scaled form
    :math:`G_Z = c \odot \partial_Z \ell / n`, :math:`G_H = G_Z W_2^\top` and
    :math:`G_H \odot \varphi''`. A direction :math:`v` then costs the R-pass and the
    R-backward pass of the module Notes only.

    References
    ----------
    .. [1] B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation
       6(1), 1994.
    """

    def __init__(self, model, theta, A, Y, loss, weights, xp):
        self.model, self.theta, self.A, self.Y = model, theta, A, Y
        self.loss, self.weights, self.xp = loss, weights, xp

    @cached_property
    def _forward(self):
        return self.model.forward(self.theta, self.A, xp=self.xp)

    @cached_property
    def _W2(self):
        return self.model.unpack(self.theta, xp=self.xp)[2]

    @cached_property
    def _curvature(self):
        return self.loss.hessian_operator(self._forward[0], self.Y, xp=self.xp)

    @cached_property
    def _score_grad(self):
        return self.loss.score_grad(self._forward[0], self.Y, xp=self.xp)

    @cached_property
    def _backward(self):
        """``(G_Z, G_H, G_H ⊙ φ'')`` (the last ``None`` for ReLU)."""
        GZ = self._score_grad
        if self.weights is not None:
            GZ = self.weights[:, None] * GZ
        GZ = GZ * (1.0 / self.A.shape[0])
        GH = GZ @ self._W2.T
        d2 = self._forward[1][3]
        return GZ, GH, None if d2 is None else GH * d2

    def jvp(self, v):
        """``(R(Z), R(U), R(H))``: the forward R-pass in parameter direction ``v``."""
        return self.model.jvp(self.theta, self._forward[1], self.A, v, xp=self.xp)

    def per_sample_jvp(self, v):
        r""":math:`\langle \partial_Z \ell_i, R(Z)_i\rangle`, shape ``(n,)`` (``A`` read once)."""
        return self.loss.contract(self._score_grad, self.jvp(v)[0], xp=self.xp)

    def hvp(self, v):
        r"""Exact :math:`\nabla^2_\theta \big(\frac1n \sum_i c_i \ell_i\big)\, v`, flat (``A`` read twice)."""
        xp, A = self.xp, self.A
        _, _, V2, _ = self.model.unpack(v, xp=xp)
        _, H, d1, _ = self._forward[1]
        RZ, RU, RH = self.jvp(v)
        RGZ = self._curvature(RZ)
        if self.weights is not None:
            RGZ = self.weights[:, None] * RGZ
        RGZ = RGZ * (1.0 / A.shape[0])
        GZ, _, GHd2 = self._backward
        RgW2 = RH.T @ GZ + H.T @ RGZ
        Rgb2 = xp.sum(RGZ, axis=0)
        RGH = RGZ @ self._W2.T + GZ @ V2.T
        RGU = RGH * d1
        if GHd2 is not None:
            RGU = RGU + GHd2 * RU
        return self.model.pack(A.T @ RGU, xp.sum(RGU, axis=0), RgW2, Rgb2, xp=xp)
