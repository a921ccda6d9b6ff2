r"""Affine model :math:`S = A W + \mathbf 1 b^\top`: the linear model with an intercept.

The flat parameter vector is ``W`` row-major followed by ``b``: length :math:`(d + 1) C`
(multiclass, ``b`` of length ``C``) or :math:`d + 1` (binary, a scalar ``b``). This is
the layout of :class:`~refbilevel.models.linear.LinearModel` on the features with a
column of ones appended (``b`` is the last row of the ``(d + 1, C)`` matrix), so

.. math::

    S = [A, \mathbf 1]\, \begin{bmatrix} W \\ b^\top \end{bmatrix}, \qquad
    \nabla L = \frac1n \begin{bmatrix} A^\top G \\ \mathbf 1^\top G \end{bmatrix}, \qquad
    G = c \odot \partial_S \ell,

without forming :math:`[A, \mathbf 1]`: the model overrides the five data primitives of
:class:`~refbilevel.models.linear.LinearModel` (``forward``, ``vjp``, ``jvp`` and their
stacked forms), through which every loss composition of the base class (gradients,
per-sample losses, :meth:`~refbilevel.models.linear.LinearModel.linearize` and its HVP and
per-sample JVP) passes. The Hessian of the loss in the scores is unchanged; only the
Jacobian of the scores gains the ones column.

References
----------
.. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, §4.1
   (the bias as the weight of a constant feature).
"""

from __future__ import annotations

from dataclasses import dataclass

from .._backend import matvecs
from .linear import LinearModel

__all__ = ["AffineModel"]


@dataclass(frozen=True)
class AffineModel(LinearModel):
    r"""A :class:`~refbilevel.models.linear.LinearModel` with a bias (intercept) per class.

    Parameters
    ----------
    n_features : int
        ``d``, the number of columns of the data (the bias excluded).
    n_classes : int or None
        ``C`` (multiclass) or ``None`` (binary).

    Notes
    -----
    Scores :math:`S = A W + \mathbf 1 b^\top`; for a score cotangent :math:`G` the
    parameter gradient is :math:`(A^\top G, \mathbf 1^\top G)` and a direction
    :math:`(V, c)` moves the scores by :math:`A V + \mathbf 1 c^\top`. The loss
    compositions of the base class (gradient, HVP, per-sample JVP, stacked forms) use
    these three maps only, so they hold unchanged.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, §4.1.

    Examples
    --------
    The scores equal those of the linear model on the features with a ones column:

    >>> import numpy as np
    >>> from refbilevel.models.affine import AffineModel
    >>> from refbilevel.models.linear import LinearModel
    >>> A, w = np.arange(6.0).reshape(3, 2), np.arange(9.0) / 10
    >>> ones = np.concatenate([A, np.ones((3, 1))], axis=1)
    >>> bool(np.allclose(AffineModel(2, 3).forward(w, A, xp=np),
    ...                  LinearModel(3, 3).forward(w, ones, xp=np)))
    True
    """

    @property
    def size(self) -> int:
        """Length of the flat parameter vector, ``(d + 1) C`` or ``d + 1``."""
        return (self.n_features + 1) * (1 if self.n_classes is None else self.n_classes)

    @property
    def shape(self) -> tuple:
        """Shape of the parameter view: ``(d + 1,)`` or ``(d + 1, C)`` (bias last)."""
        d1 = self.n_features + 1
        return (d1,) if self.n_classes is None else (d1, self.n_classes)

    def split(self, w, *, xp):
        """Views ``(W, b)`` of a flat vector (a stack ``(m, size)`` gives stacked views)."""
        k = super().size
        W, b = w[..., :k], w[..., k:]
        if self.n_classes is None:
            return W, b[..., 0]
        return xp.reshape(W, tuple(w.shape[:-1]) + (self.n_features, self.n_classes)), b

    def _join(self, gW, gb, *, xp):
        """Flat gradient (or ``(m, size)`` stack) from the blocks ``(W, b)``."""
        lead = tuple(gb.shape[:-1]) if self.n_classes is not None else tuple(gb.shape)
        if self.n_classes is None:
            gb = gb[..., None]
        return xp.concat([xp.reshape(gW, lead + (-1,)), gb], axis=-1)

    # ------------------------------------------------------------ forward / backward
    def forward(self, w, A, *, xp):
        """Scores ``A @ W + b``: shape ``(n,)`` or ``(n, C)``."""
        W, b = self.split(w, xp=xp)
        return A @ W + b

    def vjp(self, A, G, *, xp):
        """Flat ``(A.T @ G, sum of G over the rows)`` for a score cotangent ``G``."""
        return self._join(A.T @ G, xp.sum(G, axis=0), xp=xp)

    def jvp(self, A, v, *, xp):
        """Score direction ``A @ V + c`` for a parameter direction ``v = (V, c)``."""
        return self.forward(v, A, xp=xp)

    def forward_many(self, Ws, A, *, xp):
        """Scores of ``m`` points ``Ws`` (``(m, size)``) in one pass over ``A``.

        Returns shape ``(m, n)`` (binary) or ``(m, n, C)``.
        """
        k = super().size
        if self.n_classes is None:
            return matvecs(A, Ws[:, :k], xp=xp) + Ws[:, k:]
        return super().forward_many(Ws[:, :k], A, xp=xp) + Ws[:, None, k:]

    def vjp_many(self, A, Gs, *, xp):
        """Flat ``(A.T @ G_j, 1ᵀ G_j)`` for ``m`` stacked cotangents: ``(m, size)``."""
        return self._join(super().vjp_many(A, Gs, xp=xp), xp.sum(Gs, axis=1), xp=xp)
