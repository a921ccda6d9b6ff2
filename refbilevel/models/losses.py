r"""Classification losses on score arrays, with hand-derived derivatives in the scores.

Two losses, each a small stateless object whose methods take the score array ``S``, the
target array ``T`` and the namespace ``xp`` (validated inputs; no checks here):

* :data:`BINARY_LOGISTIC` — labels :math:`b_i \in \{-1, +1\}`, scores :math:`s_i \in \mathbb{R}`,
  :math:`\ell_i = \log(1 + e^{-b_i s_i})`;
* :data:`SOFTMAX_CE` — one-hot targets :math:`Y \in \{0,1\}^{n\times C}`, scores
  :math:`Z \in \mathbb{R}^{n \times C}`, :math:`\ell_i = -\sum_c Y_{ic} \log \mathrm{softmax}(Z_i)_c`.

Each provides the per-sample losses (``per_sample``), their derivative in the scores
(``score_grad``: :math:`\partial \ell_i / \partial S_i`) and the Hessian-in-scores
product (``score_hvp``: :math:`\nabla^2_{S_i} \ell_i \, R_i`), the three pieces a model's
value, gradient (VJP) and R-operator are assembled from. For several products at one
point, ``hessian_operator(S, T)`` evaluates the curvature once (:math:`\sigma'(s)` or
:math:`\mathrm{softmax}(Z)`) and returns ``R -> score_hvp(S, T, R)``; ``contract(G, R)``
applies a score gradient ``G`` to a direction (``directional`` is
``contract(score_grad(S, T), R)``). Leading batch dimensions
(several parameter points stacked in front) broadcast.

Stability (float32 stays finite for scores up to :math:`10^4` in magnitude):
:func:`softplus` is the stable :math:`\operatorname{logaddexp}(0, t)`, :func:`sigmoid`
clamps its exponent where the result drops below the smallest normal number, and the
softmax pieces are written relative to each row's dominant class (no cancellation when
one class takes almost all the probability; see :class:`SoftmaxCrossEntropy`). Each takes few elementwise operations
(on a GPU every operation is one kernel launch, which dominates the cost of small
problems) of kinds that vectorise on a CPU.

References
----------
.. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, §4.3
   (logistic and softmax regression derivatives).
"""

from __future__ import annotations

import math

from .._backend import ScalarOperands, device

__all__ = [
    "BINARY_LOGISTIC",
    "SOFTMAX_CE",
    "BinaryLogistic",
    "SoftmaxCrossEntropy",
    "exp_limit",
    "log_softmax",
    "one_hot",
    "sigmoid",
    "sigmoid_prime",
    "softmax",
    "softmax_rop",
    "softplus",
]


def softplus(t, *, xp):
    r"""Stable :math:`\log(1 + e^{t}) = \operatorname{logaddexp}(0, t)`.

    One elementwise operation (``logaddexp`` evaluates
    :math:`\max(t, 0) + \log(1 + e^{-|t|})` without overflow); measured within 1 ulp of a
    60-digit reference over :math:`|t| \le 740` (float64) and :math:`|t| \le 100` (float32).
    """
    return xp.logaddexp(0.0, t)


def exp_limit(dtype, *, xp) -> float:
    r""":math:`c = \lfloor \log(\text{largest finite}) \rfloor` of ``dtype`` (709 in float64, 88 in float32).

    :math:`e^c` is finite and :math:`1 / (1 + e^c)` is below the smallest normal number, so
    clamping an exponent at :math:`c` avoids overflow while changing a logistic value only
    where it is smaller than that number. Looked up once per (namespace, dtype): the
    oracles call this on every evaluation.
    """
    key = (xp, dtype)
    c = _EXP_LIMITS.get(key)
    if c is None:
        c = _EXP_LIMITS[key] = float(math.floor(math.log(xp.finfo(dtype).max)))
    return c


#: exp_limit's values by (namespace, dtype): keyed with the namespace so that dtype
#: objects of two libraries (equal hashes, e.g. NumPy's and array-api-strict's float64)
#: are never compared with each other
_EXP_LIMITS: dict = {}


def _logistic_constants(t, *, xp) -> tuple:
    r"""``(1, −1, c)`` (:math:`c` = :func:`exp_limit` of ``t``'s dtype) as operands for ``t``.

    The logistic formulas below evaluate on every oracle call; their constants go through
    :class:`refbilevel._backend.ScalarOperands` (on NumPy 0-d arrays of ``t``'s dtype,
    the same values and results bit for bit as the Python floats, each operation cheaper),
    made once per (namespace, dtype).
    """
    key = (xp, t.dtype)
    ops = _LOGISTIC_CONSTANTS.get(key)
    if ops is None:
        ops = _LOGISTIC_CONSTANTS[key] = ScalarOperands(1.0, -1.0, exp_limit(t.dtype, xp=xp))
    return ops.like(t)


#: :func:`_logistic_constants` by (namespace, dtype), keyed as :data:`_EXP_LIMITS`
_LOGISTIC_CONSTANTS: dict = {}


def sigmoid(t, *, xp):
    r"""Stable logistic function :math:`\sigma(t) = 1 / (1 + e^{-t})`.

    Notes
    -----
    Evaluated as :math:`1 / (1 + e^{\min(-t,\, c)})` with :math:`c` from :func:`exp_limit`:
    five elementwise operations that vectorise well, nothing overflows (the exponent is
    clamped), and for :math:`t < -c` the result is off by less than the smallest normal
    number. Elsewhere measured within 2 ulps of a 60-digit reference (float64 and float32,
    NumPy), the rounding of one exponential, one addition and one division.
    """
    one, _, c = _logistic_constants(t, xp=xp)
    return one / (one + xp.exp(xp.minimum(-t, c)))


def sigmoid_prime(t, *, xp):
    r""":math:`\sigma'(t) = \sigma(t)\,\sigma(-t) = e / (1 + e)^2`, :math:`e = e^{-|t|}`.

    Stable (underflows to 0, never NaN); within 2 ulps of a 60-digit reference.
    """
    e = xp.exp(-xp.abs(t))
    q = _logistic_constants(e, xp=xp)[0] + e
    return e / (q * q)


def _dominant(A, *, xp):
    r"""Boolean mask of each row's largest entry (first one on ties) over the last axis."""
    top = xp.argmax(A, axis=-1, keepdims=True)
    classes = xp.arange(A.shape[-1], dtype=top.dtype, device=device(A))
    return classes == top


def _softmax_parts(Z, *, xp):
    r"""Dominant-class decomposition of a softmax row.

    With :math:`c` the row's arg-max, :math:`m = z_c`, :math:`e_k = e^{z_k - m}` (so
    :math:`e_c = 1` exactly) and :math:`T = \sum_{k \ne c} e_k` summed without the dominant
    term, :math:`\mathrm{softmax}(z) = e / (1 + T)` and
    :math:`\log\sum_k e^{z_k} = m + \operatorname{log1p}(T)`. Returns ``(D, m, e, T)``
    with ``D`` the dominant-class mask; ``T`` keeps its relative accuracy when it is far
    below the machine epsilon.
    """
    D = _dominant(Z, xp=xp)
    m = xp.max(Z, axis=-1, keepdims=True)
    e = xp.exp(Z - m)
    T = xp.sum(xp.where(D, xp.zeros_like(e), e), axis=-1, keepdims=True)
    return D, m, e, T


def log_softmax(Z, *, xp):
    r"""Row-wise :math:`\log \mathrm{softmax}(Z)` over the last axis.

    :math:`(z_k - m) - \operatorname{log1p}(T)` with the decomposition of the dominant
    class (see :class:`SoftmaxCrossEntropy`): the dominant entry :math:`-\operatorname{log1p}(T)`
    keeps its relative accuracy when :math:`T < \epsilon` (``log(sum(exp))`` rounds it to 0).
    """
    _, m, _, T = _softmax_parts(Z, xp=xp)
    return (Z - m) - xp.log1p(T)


def softmax(Z, *, xp):
    r"""Row-wise :math:`\mathrm{softmax}(Z)` over the last axis, :math:`e^{z - m} / (1 + T)`."""
    _, _, e, T = _softmax_parts(Z, xp=xp)
    return e / (1.0 + T)


def softmax_rop(P, R, *, xp):
    r"""Softmax Jacobian times a direction: :math:`R(P) = P \odot (R - \langle P, R\rangle)`.

    ``P`` is ``softmax(Z)``; the inner product is over the last axis. This is also the
    Hessian of the per-sample cross-entropy in the scores applied to ``R``,
    :math:`(\mathrm{diag}(p) - p p^\top) r`.

    Notes
    -----
    The centring is taken relative to the dominant class :math:`c = \arg\max_k p_k`: with
    :math:`r' = r - r_c \mathbf 1` (which the operator annihilates, as
    :math:`\sum_k p_k = 1`), :math:`R(P) = p \odot (r' - \langle p, r'\rangle)` and
    :math:`\langle p, r' \rangle = \sum_{k \ne c} p_k (r_k - r_c)` never reads
    :math:`p_c`. The plain form computes :math:`r_c - \langle p, r\rangle =
    \sum_{k\ne c} p_k (r_c - r_k)` as a difference of two nearly equal numbers when
    :math:`p_c \approx 1` and loses every digit once :math:`1 - p_c < \epsilon`.
    """
    return _centred_rop(P, _dominant(P, xp=xp), R, xp=xp)


def _centred_rop(P, D, R, *, xp):
    r""":math:`P \odot (R' - \langle P, R' \rangle)`, :math:`R' = R - r_c\mathbf 1`, ``D`` the dominant-class mask."""
    Rc = xp.sum(xp.where(D, R, xp.zeros_like(R)), axis=-1, keepdims=True)
    Rs = xp.where(D, xp.zeros_like(R), R - Rc)
    return P * (Rs - xp.sum(P * Rs, axis=-1, keepdims=True))


def one_hot(labels, n_classes: int, *, dtype, xp):
    """One-hot encoding of integer class indices (shape ``(n,)`` -> ``(n, n_classes)``).

    Built with a comparison against ``arange`` (no scatter), on the labels' device.
    """
    classes = xp.arange(n_classes, dtype=labels.dtype, device=device(labels))
    return xp.astype(labels[..., None] == classes, dtype)


class BinaryLogistic:
    r"""Binary logistic loss :math:`\ell(s; b) = \log(1 + e^{-b s})`, labels :math:`b = \pm 1`.

    Notes
    -----
    With the margin :math:`m = b s`:

    .. math::

        \ell = \operatorname{softplus}(-m), \qquad
        \frac{\partial \ell}{\partial s} = -b\,\sigma(-m), \qquad
        \frac{\partial^2 \ell}{\partial s^2} = \sigma(s)\,\sigma(-s)

    (the curvature does not depend on :math:`b` since :math:`b^2 = 1`).
    """

    name = "binary_logistic"

    @staticmethod
    def per_sample(S, b, *, xp):
        r"""Per-sample losses :math:`\operatorname{softplus}(-b_i s_i)`, same shape as ``S``."""
        return softplus(-(b * S), xp=xp)

    @staticmethod
    def score_grad(S, b, *, xp):
        r""":math:`\partial \ell_i / \partial s_i = -b_i \sigma(-m_i) = b_i / (-1 - e^{m_i})`,
        :math:`m_i = b_i s_i`.

        Five elementwise operations: the sign is folded into the denominator
        (:math:`-b/(1+e) = b/(-1-e)` exactly, negation being exact), and the exponent is
        clamped at :func:`exp_limit` as in :func:`sigmoid`. The clamp stays: without it
        :math:`e^{m}` overflows for :math:`m > c` (the value would still be right, ``±0``),
        and NumPy reports every such overflow as a ``RuntimeWarning``."""
        # the constants of S's dtype (the margins' for labels of the data's dtype), and the
        # margins b S left unnamed: a name would keep that n-vector alive through the
        # exponential and the division, one more temporary at the step's peak
        _, minus_one, c = _logistic_constants(S, xp=xp)
        return b / (minus_one - xp.exp(xp.minimum(b * S, c)))

    @staticmethod
    def score_hvp(S, b, R, *, xp):
        r""":math:`\sigma(s_i)\sigma(-s_i)\, r_i`."""
        return BinaryLogistic.hessian_operator(S, b, xp=xp)(R)

    @staticmethod
    def hessian_operator(S, b, *, xp):
        r"""``R -> σ(s)σ(-s) ⊙ R`` with the curvature :math:`\sigma'(s)` evaluated once.

        The form products at one point share (see ``LinearModel.linearize``).
        """
        curvature = sigmoid_prime(S, xp=xp)
        return lambda R: curvature * R

    @staticmethod
    def contract(G, R, *, xp):
        r""":math:`G_i\, r_i`: a score gradient ``G`` applied to a score direction ``R``."""
        return G * R

    @staticmethod
    def directional(S, b, R, *, xp):
        r"""Per-sample directional derivative :math:`(\partial \ell_i/\partial s_i)\, r_i`."""
        return BinaryLogistic.contract(BinaryLogistic.score_grad(S, b, xp=xp), R, xp=xp)


class SoftmaxCrossEntropy:
    r"""Softmax cross-entropy :math:`\ell(z; y) = -\sum_c y_c \log \mathrm{softmax}(z)_c`, one-hot ``y``.

    Notes
    -----
    With :math:`p = \mathrm{softmax}(z)`:

    .. math::

        \nabla_z \ell = p - y, \qquad
        \nabla^2_z \ell \; r = p \odot (r - \langle p, r \rangle).

    Every piece is evaluated without cancellation when one class dominates
    (:math:`p_c \approx 1`, e.g. confidently classified rows with logits of size
    :math:`10^3`), through the decomposition of the dominant class :math:`c = \arg\max_k z_k`:
    :math:`e_k = e^{z_k - z_c}`, :math:`T = \sum_{k\ne c} e_k` summed without
    :math:`e_c = 1`, :math:`p = e/(1 + T)`. Then

    .. math::

        \ell &= \sum_k y_k (z_c - z_k) + \operatorname{log1p}(T), \\
        (p - y)_c &= \frac{(1 - y_c) - y_c T}{1 + T}
            \quad (= -\textstyle\sum_{k\ne c} p_k \text{ when } y_c = 1), \\
        \langle p - y, r \rangle &= \langle p - y, r - r_c \mathbf 1 \rangle, \qquad
        \nabla^2_z \ell\, r = p \odot (r' - \langle p, r'\rangle),\; r' = r - r_c\mathbf 1,

    (the shifts by :math:`r_c` are exact identities because :math:`\sum_k p_k = \sum_k y_k = 1`).
    The plain forms :math:`\log\sum_k e^{z_k} - z_y`, :math:`p_c - 1` and
    :math:`r_c - \langle p, r\rangle` subtract nearly equal numbers and lose all digits once
    :math:`1 - p_c` is below the machine epsilon; these keep the relative accuracy of
    :math:`T`, :math:`e^{z_k - z_c}` and the products (measured against a 60-digit
    ``decimal`` reference for logits up to :math:`10^4` in float64).
    """

    name = "softmax_ce"

    @staticmethod
    def per_sample(Z, Y, *, xp):
        r"""Per-sample losses :math:`\sum_k y_k (z_c - z_k) + \operatorname{log1p}(T)` (last axis reduced)."""
        _, m, _, T = _softmax_parts(Z, xp=xp)
        return xp.sum(Y * (m - Z), axis=-1) + xp.sum(Y, axis=-1) * xp.log1p(T)[..., 0]

    @staticmethod
    def score_grad(Z, Y, *, xp):
        r""":math:`P - Y` row-wise, the dominant entry as :math:`((1 - y_c) - y_c T)/(1 + T)`."""
        D, _, e, T = _softmax_parts(Z, xp=xp)
        S = 1.0 + T
        return xp.where(D, ((1.0 - Y) - Y * T) / S, e / S - Y)

    @staticmethod
    def score_hvp(Z, Y, R, *, xp):
        r""":math:`P \odot (R' - \mathrm{rowsum}(P \odot R'))`, :math:`R' = R - R_c` (see :func:`softmax_rop`)."""
        return SoftmaxCrossEntropy.hessian_operator(Z, Y, xp=xp)(R)

    @staticmethod
    def hessian_operator(Z, Y, *, xp):
        r"""``R -> P ⊙ (R' - rowsum(P ⊙ R'))`` with :math:`P` and the dominant classes evaluated once.

        The form products at one point share (see ``LinearModel.linearize``); the centring
        is relative to each row's dominant class as in :func:`softmax_rop`.
        """
        D, _, e, T = _softmax_parts(Z, xp=xp)
        P = e / (1.0 + T)
        return lambda R: _centred_rop(P, D, R, xp=xp)

    @staticmethod
    def contract(G, R, *, xp):
        r""":math:`\langle G_i, R_i - r_{ij}\mathbf 1 \rangle` row-wise, :math:`j = \arg\max_k |G_{ik}|`.

        A score gradient applied to a direction. The shift is an identity because the rows of
        :math:`G = P - Y` sum to zero; taken at the largest entry (the dominant class of a
        confidently classified row, where :math:`G_c = -\sum_{k \ne c} G_k`) it removes the
        cancellation between :math:`G_c r_c` and the other terms.
        """
        J = _dominant(xp.abs(G), xp=xp)
        zeros = xp.zeros_like(R)
        Rj = xp.sum(xp.where(J, R, zeros), axis=-1, keepdims=True)
        return xp.sum(xp.where(J, zeros, G * (R - Rj)), axis=-1)

    @staticmethod
    def directional(Z, Y, R, *, xp):
        r"""Per-sample directional derivative :math:`\langle P_i - Y_i, R_i \rangle` (via :meth:`contract`)."""
        return SoftmaxCrossEntropy.contract(SoftmaxCrossEntropy.score_grad(Z, Y, xp=xp), R, xp=xp)


#: The binary logistic loss object.
BINARY_LOGISTIC = BinaryLogistic()
#: The softmax cross-entropy loss object.
SOFTMAX_CE = SoftmaxCrossEntropy()
