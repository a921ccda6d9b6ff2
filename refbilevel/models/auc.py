r"""The AUC-M (min-max margin) square loss on a score vector, with hand-derived derivatives.

Every function works on a score array ``h`` of shape ``(..., n)`` (leading axes are
independent problems, e.g. tasks) and labels ``y`` of the same shape with values in
``{0, 1}`` (1 = positive), given as a floating array (they are used as masks; no boolean
indexing). The scalars ``a``, ``b``, ``alpha`` and the prior ``p`` are Python floats or
arrays of shape ``(...)`` broadcasting against the leading axes.

Both forms share one weighted expression. With :math:`P_i = 1\{y_i = 1\}`,
:math:`N_i = 1\{y_i = 0\}` and weights :math:`(w_P, w_N, c)`:

.. math::

    F(h, a, b, \alpha) = \sum_i \big[w_P P_i (h_i - a)^2 + w_N N_i (h_i - b)^2\big]
        + 2\alpha\Big(c\,m + \sum_i (w_N N_i - w_P P_i) h_i\Big) - c\,\alpha^2,

* ``version="v1"`` (class prior p, means over all :math:`n_B` samples):
  :math:`w_P = (1-p)/n_B`, :math:`w_N = p/n_B`, :math:`c = p(1-p)`;
* ``version="v2"`` (class-conditional means): :math:`w_P = 1/n_P`, :math:`w_N = 1/n_N`,
  :math:`c = 1` (a class absent from the sample contributes zero: its count is floored at 1).

The problem is :math:`\min_{h, a, b} \max_{\alpha} F`; :math:`\alpha \ge 0` for AUC-M
(Yuan et al. 2021) and :math:`\alpha \in \mathbb R` for the AUC square loss (Ying et al.
2016). The margin ``m`` is always applied (the multi-label v1 loss of LibAUC omits it,
acting as if m = 1; that quirk is deliberately not reproduced).

References
----------
.. [1] Z. Yuan, Y. Yan, M. Sonka, T. Yang. Large-scale Robust Deep AUC Maximization: A New
   Surrogate Loss and Empirical Studies on Medical Image Classification. ICCV 2021.
.. [2] LibAUC, ``libauc/losses/auc.py`` (``AUCMLoss``), Optimization-AI/LibAUC.
"""

from __future__ import annotations

import numbers

from .._backend import array_namespace, device
from .._validation import check_bool, check_choice, check_real

__all__ = [
    "auc_m_alpha_star",
    "auc_m_grad",
    "auc_m_hess_alpha_alpha",
    "auc_m_hess_h_alpha",
    "auc_m_hess_hh",
    "auc_m_loss",
    "auc_m_weights",
]

VERSIONS = ("v1", "v2")


def _check_common(h, y, p, margin, version):
    xp = array_namespace(h, y, names=("h", "y"))
    if h.ndim < 1:
        raise ValueError(f"h must have at least 1 dimension; got shape {tuple(h.shape)}")
    if tuple(y.shape) != tuple(h.shape):
        raise ValueError(f"y must have the shape of h {tuple(h.shape)}; got {tuple(y.shape)}")
    if not xp.isdtype(h.dtype, "real floating"):
        raise TypeError(f"h must have a real floating dtype; got {h.dtype}")
    if y.dtype != h.dtype:
        raise TypeError(f"y must be a float mask with the dtype of h ({h.dtype}); got {y.dtype}")
    check_choice(version, "version", VERSIONS)
    check_real(margin, "margin")
    if version == "v1":
        if p is None:
            raise ValueError("p (the positive-class prior) is required for version='v1'")
        if isinstance(p, numbers.Real) and not isinstance(p, bool):
            check_real(p, "p", low=0.0, high=1.0)
            if not 0.0 < p < 1.0:
                raise ValueError(f"p must lie strictly between 0 and 1; got {p}")
        elif p is not None and not hasattr(p, "shape"):
            raise TypeError(f"p must be a real number or an array; got {type(p).__name__}")
    return xp


def auc_m_weights(y, *, p=None, version="v1", xp=None):
    r"""Weights ``(w_P, w_N, c)`` of the shared form (see the module docstring).

    ``w_P`` and ``w_N`` have shape ``y.shape[:-1] + (1,)``; ``c`` has shape ``y.shape[:-1]``
    (or is a Python float for v2). Labels are floats in {0, 1}.
    """
    if xp is None:
        xp = array_namespace(y)
    n = y.shape[-1]
    if version == "v1":
        if not hasattr(p, "shape"):
            p = float(p)
            return (1.0 - p) / n, p / n, p * (1.0 - p)
        w_p = ((1.0 - p) / n)[..., None]
        w_n = (p / n)[..., None]
        return w_p, w_n, p * (1.0 - p)
    n_pos = xp.sum(y, axis=-1, keepdims=True)
    n_neg = n - n_pos
    return 1.0 / xp.maximum(n_pos, 1.0), 1.0 / xp.maximum(n_neg, 1.0), 1.0


def _expand(v):
    return v[..., None] if hasattr(v, "shape") else v


def auc_m_loss(h, y, a, b, alpha, *, p=None, margin=1.0, version="v1"):
    r"""Value of the AUC-M square loss :math:`F(h, a, b, \alpha)`, shape ``h.shape[:-1]``.

    Parameters
    ----------
    h : array, shape (..., n)
        Scores.
    y : array, shape (..., n)
        Labels in {0, 1} as a float array of ``h``'s dtype.
    a, b, alpha : float or array of shape (...)
        Primal class centres and the dual variable.
    p : float or array of shape (...), optional
        Positive-class prior (required for v1; a constant, no gradient flows through it).
    margin : float
        Margin ``m`` (LibAUC default 1.0).
    version : {"v1", "v2"}

    Notes
    -----
    .. math::

        F = \sum_i \big[w_P P_i (h_i - a)^2 + w_N N_i (h_i - b)^2\big]
            + 2\alpha\big(c m + \sum_i (w_N N_i - w_P P_i) h_i\big) - c\alpha^2 .
    """
    xp = _check_common(h, y, p, margin, version)
    w_p, w_n, c = auc_m_weights(y, p=p, version=version, xp=xp)
    pos, neg = y, 1.0 - y
    sq = xp.sum(w_p * pos * (h - _expand(a)) ** 2 + w_n * neg * (h - _expand(b)) ** 2, axis=-1)
    lin = xp.sum((w_n * neg - w_p * pos) * h, axis=-1)
    return sq + 2.0 * alpha * (c * margin + lin) - c * alpha**2


def auc_m_grad(h, y, a, b, alpha, *, p=None, margin=1.0, version="v1"):
    r"""Gradients ``(dF/dh, dF/da, dF/db, dF/dalpha)`` of :func:`auc_m_loss`.

    Notes
    -----
    .. math::

        \partial_{h_i} F = 2 w_P P_i (h_i - a) + 2 w_N N_i (h_i - b)
            + 2\alpha (w_N N_i - w_P P_i), \\
        \partial_a F = -2 w_P \sum_i P_i (h_i - a), \quad
        \partial_b F = -2 w_N \sum_i N_i (h_i - b), \\
        \partial_\alpha F = 2\big(c m + \sum_i (w_N N_i - w_P P_i) h_i\big) - 2 c\alpha .

    (Derived term by term in ``docs/theory/auc.rst``; v1 and v2 differ only in the weights of
    the module docstring.)
    """
    xp = _check_common(h, y, p, margin, version)
    w_p, w_n, c = auc_m_weights(y, p=p, version=version, xp=xp)
    pos, neg = y, 1.0 - y
    ra = pos * (h - _expand(a))
    rb = neg * (h - _expand(b))
    sgn = w_n * neg - w_p * pos
    dh = 2.0 * (w_p * ra + w_n * rb) + 2.0 * _expand(alpha) * sgn
    da = -2.0 * xp.sum(w_p * ra, axis=-1)
    db = -2.0 * xp.sum(w_n * rb, axis=-1)
    dalpha = 2.0 * (c * margin + xp.sum(sgn * h, axis=-1)) - 2.0 * c * alpha
    return dh, da, db, dalpha


def auc_m_hess_hh(y, *, p=None, version="v1"):
    r"""Diagonal of :math:`\partial^2 F / \partial h^2`: :math:`2(w_P P_i + w_N N_i)`.

    Shape of ``y``; independent of h, a, b, α (F is quadratic in h).
    """
    xp = array_namespace(y, names=("y",))
    check_choice(version, "version", VERSIONS)
    w_p, w_n, _ = auc_m_weights(y, p=p, version=version, xp=xp)
    return 2.0 * (w_p * y + w_n * (1.0 - y))


def auc_m_hess_h_alpha(y, *, p=None, version="v1"):
    r""":math:`\partial^2 F / \partial h_i \partial\alpha = 2(w_N N_i - w_P P_i)`, shape of y."""
    xp = array_namespace(y, names=("y",))
    check_choice(version, "version", VERSIONS)
    w_p, w_n, _ = auc_m_weights(y, p=p, version=version, xp=xp)
    return 2.0 * (w_n * (1.0 - y) - w_p * y)


def auc_m_hess_alpha_alpha(y, *, p=None, version="v1"):
    r""":math:`\partial^2 F / \partial\alpha^2 = -2c` (``-2p(1-p)`` in v1, ``-2`` in v2)."""
    xp = array_namespace(y, names=("y",))
    check_choice(version, "version", VERSIONS)
    _, _, c = auc_m_weights(y, p=p, version=version, xp=xp)
    if hasattr(c, "shape"):
        return -2.0 * c
    return -2.0 * c + xp.zeros(y.shape[:-1], dtype=y.dtype, device=device(y))


def auc_m_alpha_star(h, y, *, p=None, margin=1.0, version="v1", nonnegative=True):
    r"""The maximiser :math:`\alpha^*(h) = \arg\max_\alpha F` (independent of ``a``, ``b``).

    Parameters
    ----------
    nonnegative : bool
        ``True`` for AUC-M (:math:`\alpha \ge 0`: the unconstrained maximiser clipped at 0,
        exact because F is a concave quadratic in α); ``False`` for the AUC square loss.

    Notes
    -----
    .. math::

        \alpha^*(h) = m + \frac1c \sum_i (w_N N_i - w_P P_i) h_i,
        \qquad \text{AUC-M: } \max(\alpha^*, 0).
    """
    xp = _check_common(h, y, p, margin, version)
    check_bool(nonnegative, "nonnegative")
    w_p, w_n, c = auc_m_weights(y, p=p, version=version, xp=xp)
    alpha = margin + xp.sum((w_n * (1.0 - y) - w_p * y) * h, axis=-1) / c
    return xp.maximum(alpha, 0.0) if nonnegative else alpha
