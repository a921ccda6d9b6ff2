r"""Linear model :math:`S = A W` with hand-derived gradient and R-operator.

Parameters are a flat vector ``w`` viewed as ``W`` of shape ``(d,)`` (binary,
``n_classes=None``) or ``(d, C)`` row-major (multiclass). No bias: append a column of
ones to ``A`` for one.

For a loss from :mod:`refbilevel.models.losses` and per-sample weights :math:`c_i`
(default 1), the objective is the weighted mean over the :math:`n` rows of ``A``:

.. math::

    L(W) = \frac1n \sum_{i=1}^n c_i\, \ell(A_i W; T_i), \qquad
    \nabla L = \frac1n A^\top \big(c \odot \partial_S \ell\big), \qquad
    \nabla^2 L\, V = \frac1n A^\top \big(c \odot \nabla^2_S \ell\,[A V]\big).

The stacked forms evaluate ``m`` parameter points with one pass over ``A``: the points
are laid side by side as the columns of one ``(d, m C)`` matrix, so ``A`` is read once
by ``A @ Wcols`` and once by ``A.T @ Gcols``.

A binary model's gradients and Hessian-vector products on a data matrix larger than the
caches are summed over row blocks, :math:`A^\top \phi(A W) = \sum_k A_k^\top \phi(A_k W)`,
both products of a block (and those of every stacked point) made while the block is
cached: one read of ``A`` from memory per oracle call (:func:`refbilevel._backend.row_blocks`
decides, per backend and thread count). A stack of points takes its forward products
one matrix-vector product per point (the first reads the block from memory at the
streaming rate of a matrix-vector product) and its transposed products as one matrix
product of the cached block, which OpenBLAS runs 1.3 to 1.9 times faster per point than
matrix-vector products there (one thread, cached blocks of 256 KiB to 1 MiB and 100
columns; a point pair's pass over 8 to 80 MB took 0.86 to 0.95 of its time with two
transposed matrix-vector products).

References
----------
.. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, §4.3.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._backend import matvec_layout, matvec_rows, matvecs, row_blocks
from .losses import BINARY_LOGISTIC, SOFTMAX_CE

__all__ = ["LinearModel", "LinearModelAt"]


@dataclass(frozen=True)
class LinearModel:
    """Shape information of a linear model; all methods take the namespace ``xp``.

    Parameters
    ----------
    n_features : int
        ``d``, the number of columns of the data.
    n_classes : int or None
        ``C`` for a multiclass model (``W`` is ``(d, C)``), ``None`` for a binary one
        (``W`` is ``(d,)``).
    """

    n_features: int
    n_classes: int | None = None

    @property
    def size(self) -> int:
        """Length of the flat parameter vector."""
        return self.n_features * (1 if self.n_classes is None else self.n_classes)

    @property
    def shape(self) -> tuple:
        """Shape of the parameter view ``W``."""
        return (self.n_features,) if self.n_classes is None else (self.n_features, self.n_classes)

    @property
    def default_loss(self):
        """Binary logistic for ``n_classes=None``, softmax cross-entropy otherwise."""
        return BINARY_LOGISTIC if self.n_classes is None else SOFTMAX_CE

    def product_layout(self, A, *, xp):
        """``A`` laid out for this model's products: those of a binary model are
        matrix-vector products (``A @ w``, ``A.T @ g``), read fastest in the backend's
        :func:`~refbilevel._backend.matvec_layout`; a multiclass model multiplies ``A`` by
        ``(d, C)`` matrices, where the layouts trade places (OpenBLAS runs the forward
        product faster on the row-major array, the backward one on the column-major one;
        docs/benchmarks.md, "Data layout"), so it gets ``A`` as given."""
        return matvec_layout(A, xp=xp) if self.n_classes is None else A

    def unflatten(self, w, *, xp):
        """``W`` view of a flat vector (``(d,)`` or ``(d, C)``)."""
        return w if self.n_classes is None else xp.reshape(w, self.shape)

    def _weights(self, c, S):
        """Per-sample weights broadcast against scores ``S`` (class axis last)."""
        return c if self.n_classes is None else c[..., None]

    # ------------------------------------------------------------ forward / backward
    def forward(self, w, A, *, xp):
        """Scores ``A @ W``: shape ``(n,)`` or ``(n, C)``."""
        return A @ self.unflatten(w, xp=xp)

    def vjp(self, A, G, *, xp):
        """Flat ``A.T @ G`` for a score cotangent ``G`` (the gradient through the model)."""
        if self.n_classes is None:
            return A.T @ G                       # already flat: (d,)
        return xp.reshape(A.T @ G, (-1,))

    def jvp(self, A, v, *, xp):
        """Score direction ``A @ V`` for a parameter direction ``v``."""
        return A @ self.unflatten(v, xp=xp)

    def forward_many(self, Ws, A, *, xp):
        """Scores of ``m`` points ``Ws`` (shape ``(m, size)``) in one pass over ``A``.

        Returns shape ``(m, n)`` (binary) or ``(m, n, C)``.
        """
        m, d = Ws.shape[0], self.n_features
        if self.n_classes is None:
            # Ws Aᵀ in the backend's form: one product on cuBLAS (it streams A at full
            # bandwidth in this orientation), matrix-vector products on OpenBLAS
            return matvecs(A, Ws, xp=xp)
        C = self.n_classes
        cols = xp.reshape(xp.permute_dims(xp.reshape(Ws, (m, d, C)), (1, 0, 2)), (d, m * C))
        S = xp.reshape(A @ cols, (A.shape[0], m, C))
        return xp.permute_dims(S, (1, 0, 2))

    def vjp_many(self, A, Gs, *, xp):
        """Flat ``A.T @ G_j`` for ``m`` stacked cotangents (one pass over ``A``): ``(m, size)``."""
        m, d = Gs.shape[0], self.n_features
        if self.n_classes is None:
            return matvecs(A, Gs, xp=xp, transpose=True)     # Gs A = (Aᵀ Gsᵀ)ᵀ
        C = self.n_classes
        cols = xp.reshape(xp.permute_dims(Gs, (1, 0, 2)), (A.shape[0], m * C))
        out = xp.reshape(A.T @ cols, (d, m, C))
        return xp.reshape(xp.permute_dims(out, (1, 0, 2)), (m, d * C))

    # ------------------------------------------------------------ loss compositions
    def _weighted_score_grad(self, S, T, loss, weights, xp):
        r""":math:`c \odot \partial_S \ell` at scores ``S`` (one or stacked points)."""
        G = loss.score_grad(S, T, xp=xp)
        return G if weights is None else self._weights(weights, S) * G

    def row_blocks(self, A, *, xp, points=1):
        """Row slices of a blocked pass over ``A`` at ``points`` points
        (:func:`refbilevel._backend.row_blocks`), or ``None`` for whole products; always
        ``None`` for a multiclass model."""
        return row_blocks(A, xp=xp, points=points) if self.n_classes is None else None

    def blocked_pass(self, A, V, middle, blocks, *, xp):
        r""":math:`\sum_k A_k^\top\, \mathrm{middle}(A_k V, k)` over the row blocks
        :math:`A_k` = ``A[blocks[k]]`` of a binary model, for a flat ``V`` or a stack
        ``(m, d)``: then a forward product per point and one transposed matrix product
        :math:`G_k A_k` for the stack, all while the block is cached.

        ``middle(S_k, k)`` maps the block's scores (shape ``(n_k,)`` or ``(m, n_k)``) to
        its score cotangents; with ``V=None`` no forward product is made and it gets
        ``None``. Returns the flat (or stacked) sum, not divided by ``n``.
        """
        total = None
        for k, rows in enumerate(blocks):
            Ak = A[rows, ...]
            if V is None:
                S = None
            elif V.ndim == 1:
                S = Ak @ V
            else:
                # one matrix-vector product per point, not matvecs' table: the first reads
                # the block from memory, where a matrix product first packs it into
                # OpenBLAS's buffer (0.87-0.92 of this time in one process, 1.5-1.7 times
                # it in others: docs/benchmarks.md, "Small steps and point pairs")
                S = matvec_rows(Ak, V, xp=xp)
            G = middle(S, k)
            part = Ak.T @ G if G.ndim == 1 else G @ Ak
            if total is None:
                total = part
            else:
                total += part          # every part is a new array: the sum is its own
        return total

    def _blocked_grads(self, Ws, A, T, loss, weights, blocks, xp, per_sample=False):
        """:meth:`grad` (or :meth:`grad_many`) over row blocks, with the per-sample losses
        when ``per_sample``."""
        losses = []

        def middle(S, k):
            rows = blocks[k]
            Tk = T[rows, ...]
            if per_sample:
                losses.append(loss.per_sample(S, Tk, xp=xp))
            return self._weighted_score_grad(S, Tk, loss,
                                             None if weights is None else weights[rows, ...], xp)

        grads = self.blocked_pass(A, Ws, middle, blocks, xp=xp) / A.shape[0]
        if per_sample:
            return xp.concat(losses, axis=-1), grads
        return grads

    def grad(self, w, A, T, *, loss=None, weights=None, xp):
        r""":math:`\nabla_w \frac1n \sum_i c_i \ell_i`, flat (no per-sample losses formed).

        ``weights`` (:math:`c`, shape ``(n,)``) defaults to ones. On a large data matrix
        (:meth:`row_blocks`) summed over row blocks, ``A`` read once.
        """
        loss = self.default_loss if loss is None else loss
        blocks = self.row_blocks(A, xp=xp)
        if blocks is not None:
            return self._blocked_grads(w, A, T, loss, weights, blocks, xp)
        S = self.forward(w, A, xp=xp)
        G = self._weighted_score_grad(S, T, loss, weights, xp)
        return self.vjp(A, G, xp=xp) / A.shape[0]

    def per_sample_and_grad(self, w, A, T, *, loss=None, weights=None, xp):
        r"""Per-sample losses :math:`\ell_i` and :math:`\nabla_w \frac1n \sum_i c_i \ell_i`.

        ``weights`` (:math:`c`, shape ``(n,)``) defaults to ones.
        """
        loss = self.default_loss if loss is None else loss
        blocks = self.row_blocks(A, xp=xp)
        if blocks is not None:
            return self._blocked_grads(w, A, T, loss, weights, blocks, xp, per_sample=True)
        S = self.forward(w, A, xp=xp)
        G = self._weighted_score_grad(S, T, loss, weights, xp)
        return loss.per_sample(S, T, xp=xp), self.vjp(A, G, xp=xp) / A.shape[0]

    def value(self, w, A, T, *, loss=None, weights=None, xp):
        r""":math:`\frac1n \sum_i c_i \ell_i(w)` as a 0-d array."""
        loss = self.default_loss if loss is None else loss
        ell = loss.per_sample(self.forward(w, A, xp=xp), T, xp=xp)
        return xp.mean(ell if weights is None else weights * ell)

    def linearize(self, w, A, T, *, loss=None, weights=None, xp):
        r"""The model's second-order products at the fixed point ``w``, for many directions.

        Returns a :class:`LinearModelAt` whose :meth:`~LinearModelAt.hvp` and
        :meth:`~LinearModelAt.per_sample_jvp` equal :meth:`hvp` and :meth:`per_sample_jvp`
        at ``w`` (bit for bit: the same operations in the same order). The scores
        :math:`S = A W` and the loss pieces derived from them (the curvature
        :math:`\nabla^2_S \ell`, the score gradient :math:`\partial_S \ell`) are computed
        once, at the first product that needs them; each product then reads ``A`` twice
        (:math:`A V` and :math:`A^\top(\cdot)`) or, for the per-sample JVP, once, instead of
        recomputing :math:`A W`.
        """
        loss = self.default_loss if loss is None else loss
        return LinearModelAt(self, w, A, T, loss, weights, xp)

    def hvp(self, w, A, T, v, *, loss=None, weights=None, xp):
        r""":math:`\frac1n A^\top (c \odot \nabla^2_S \ell [A V])`, flat.

        One product; for several at the same ``w`` use :meth:`linearize`.
        """
        return self.linearize(w, A, T, loss=loss, weights=weights, xp=xp).hvp(v)

    def per_sample_jvp(self, w, A, T, v, *, loss=None, xp):
        r""":math:`\langle \nabla_w \ell_i(w), v \rangle` for every row (shape ``(n,)``).

        One product; for several at the same ``w`` use :meth:`linearize`.
        """
        return self.linearize(w, A, T, loss=loss, xp=xp).per_sample_jvp(v)

    def grad_many(self, Ws, A, T, *, loss=None, weights=None, xp):
        """Stacked :meth:`grad` at ``m`` points in one pass over ``A``: ``(m, size)``."""
        loss = self.default_loss if loss is None else loss
        blocks = self.row_blocks(A, xp=xp, points=Ws.shape[0])
        if blocks is not None:
            return self._blocked_grads(Ws, A, T, loss, weights, blocks, xp)
        S = self.forward_many(Ws, A, xp=xp)
        G = self._weighted_score_grad(S, T, loss, weights, xp)
        return self.vjp_many(A, G, xp=xp) / A.shape[0]

    def per_sample_and_grad_many(self, Ws, A, T, *, loss=None, weights=None, xp):
        """Stacked :meth:`per_sample_and_grad` at ``m`` points: ``(m, n)`` and ``(m, size)``."""
        loss = self.default_loss if loss is None else loss
        blocks = self.row_blocks(A, xp=xp, points=Ws.shape[0])
        if blocks is not None:
            return self._blocked_grads(Ws, A, T, loss, weights, blocks, xp, per_sample=True)
        S = self.forward_many(Ws, A, xp=xp)
        G = self._weighted_score_grad(S, T, loss, weights, xp)
        return loss.per_sample(S, T, xp=xp), self.vjp_many(A, G, xp=xp) / A.shape[0]


class LinearModelAt:
    r"""A :class:`LinearModel` linearised at one parameter point (see :meth:`LinearModel.linearize`).

    Notes
    -----
    With :math:`S = A W` and per-sample weights :math:`c` (ones when ``weights`` is None):

    .. math::

        \mathrm{hvp}(v) = \frac1n A^\top\big(c \odot \nabla^2_S \ell\,[A V]\big), \qquad
        \mathrm{per\_sample\_jvp}(v)_i = \langle \partial_{S_i} \ell_i, (A V)_i \rangle .

    :math:`S`, the curvature operator and :math:`\partial_S \ell` are evaluated lazily, once
    each, at the first product that needs them, so a point used only for per-sample JVPs
    never forms the curvature (and the reverse).

    References
    ----------
    .. [1] B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation
       6(1), 1994 (Hessian-vector products at the cost of a gradient).
    """

    __slots__ = ("model", "w", "A", "T", "loss", "weights", "xp", "blocks", "_scores", "_curv",
                 "_sgrad")

    def __init__(self, model, w, A, T, loss, weights, xp):
        self.model, self.w, self.A, self.T = model, w, A, T
        self.loss, self.weights, self.xp = loss, weights, xp
        #: row blocks of the model's blocked passes over ``A`` (None: whole products)
        self.blocks = model.row_blocks(A, xp=xp)
        # formed at first use; plain slots rather than cached_property, whose first access
        # takes a lock (Python 3.11) and costs about a microsecond more: ITD linearises
        # every inner iterate, so a step pays it dozens of times
        self._scores = self._curv = self._sgrad = None

    @property
    def scores(self):
        """The scores ``A @ W`` at the point (the one forward pass; block by block when
        the products are, so that every path forms the same scores)."""
        if self._scores is None:
            if self.blocks is None:
                self._scores = self.model.forward(self.w, self.A, xp=self.xp)
            else:
                self._scores = self.xp.concat([self.A[rows, ...] @ self.w
                                               for rows in self.blocks])
        return self._scores

    @property
    def _curvature(self):
        """The curvature operator at the scores (one per row block when blocked)."""
        if self._curv is None:
            if self.blocks is None:
                self._curv = self.loss.hessian_operator(self.scores, self.T, xp=self.xp)
            else:
                S, T, xp = self.scores, self.T, self.xp
                self._curv = [self.loss.hessian_operator(S[rows], T[rows, ...], xp=xp)
                              for rows in self.blocks]
        return self._curv

    def _block_weights(self, k):
        return None if self.weights is None else self.weights[self.blocks[k], ...]

    @property
    def _score_grad(self):
        if self._sgrad is None:
            self._sgrad = self.loss.score_grad(self.scores, self.T, xp=self.xp)
        return self._sgrad

    def grad(self):
        r""":math:`\frac1n A^\top (c \odot \partial_S \ell)`, flat, from the point's scores.

        Equals :meth:`LinearModel.grad` at the point bit for bit (the same operations); once
        the scores are formed it reads ``A`` once (:math:`A^\top(\cdot)`). The score
        gradient is not kept (a point linearised for its gradient and HVPs holds the
        scores and, from the first HVP, the curvature).
        """
        model, blocks = self.model, self.blocks
        if blocks is not None:
            return self._blocked_grad()
        G = model._weighted_score_grad(self.scores, self.T, self.loss, self.weights, self.xp)
        return model.vjp(self.A, G, xp=self.xp) / self.A.shape[0]

    def _blocked_grad(self):
        """:meth:`grad` over the row blocks: with the scores formed in the same pass (kept
        for the products) unless they exist already."""
        model, blocks, T, xp = self.model, self.blocks, self.T, self.xp
        fresh = self._scores is None
        pieces = []

        def middle(S, k):
            if fresh:
                pieces.append(S)
            else:
                S = self._scores[blocks[k]]
            return model._weighted_score_grad(S, T[blocks[k], ...], self.loss,
                                              self._block_weights(k), xp)

        grad = model.blocked_pass(self.A, self.w if fresh else None, middle, blocks, xp=xp)
        if fresh:
            self._scores = xp.concat(pieces)
        return grad / self.A.shape[0]

    def hvp(self, v):
        r""":math:`\frac1n A^\top (c \odot \nabla^2_S \ell [A V])`, flat (``A`` read twice;
        once from memory when blocked)."""
        model, A, xp = self.model, self.A, self.xp
        if self.blocks is not None:
            curvature = self._curvature

            def middle(U, k):
                RG = curvature[k](U)
                c = self._block_weights(k)
                return RG if c is None else c * RG

            return model.blocked_pass(A, v, middle, self.blocks, xp=xp) / A.shape[0]
        RG = self._curvature(model.jvp(A, v, xp=xp))
        if self.weights is not None:
            RG = model._weights(self.weights, self.scores) * RG
        return model.vjp(A, RG, xp=xp) / A.shape[0]

    def per_sample_jvp(self, v):
        r""":math:`\langle \nabla_w \ell_i(w), v \rangle` for every row (``A`` read once)."""
        return self.loss.contract(self._score_grad, self.model.jvp(self.A, v, xp=self.xp),
                                  xp=self.xp)
