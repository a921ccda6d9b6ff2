r"""The problem protocol: bilevel and minimax-bilevel problems with hand-derived oracles.

A bilevel problem is

.. math::

    \min_x F(x) = f(x, y^*(x)), \qquad y^*(x) = \arg\min_y g(x, y).

A problem object holds its data (arrays of one backend, on one device) and exposes the
oracles listed in :class:`BilevelProblem`. Variables are flat 1-D arrays. Every oracle
takes an optional :class:`Batch`; ``f`` reads ``batch.outer`` and ``g`` reads
``batch.inner``.

Oracle-call accounting used throughout refbilevel (solvers count their calls in these
units): one ``grad_f``/``grad_f_x``/``grad_f_y`` evaluation is one ``"grad_f"`` call, one
``grad_g``-type evaluation is one ``"grad_g"`` call, a stacked evaluation at ``m`` points
counts ``m`` calls, and ``hvp_g``/``cross_g`` count as ``"hvp"``/``"cross"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._backend import array_namespace, device, eps, to_host_scalar
from ..linalg import cg_solve

__all__ = ["Batch", "BilevelProblem", "LinearizedG", "MinimaxBilevelProblem", "ORACLE_KINDS", "take_rows"]

#: The oracle kinds counted by solvers and recorded by :func:`refbilevel.run`.
ORACLE_KINDS = ("grad_f", "grad_g", "hvp", "cross")


@dataclass(frozen=True)
class Batch:
    """Minibatch index arrays (on the problem's device).

    Attributes
    ----------
    outer : array of int or None
        Rows of the outer (validation) data read by ``f``; ``None`` means all.
    inner : array of int or None
        Rows of the inner (training) data read by ``g``; ``None`` means all.
    """

    outer: Any = None
    inner: Any = None


def take_rows(a, idx, xp):
    """``a`` itself when ``idx`` is None, else the gathered rows ``a[idx]``."""
    return a if idx is None else xp.take(a, idx, axis=0)


def _outer(batch):
    return None if batch is None else batch.outer


def _inner(batch):
    return None if batch is None else batch.inner


@dataclass(frozen=True)
class LinearizedG:
    """Second-order oracles of ``g`` at one point (see :meth:`BilevelProblem.linearize_g`).

    Attributes
    ----------
    hvp : callable
        ``v -> ∇²_yy g(x, y) · v`` (y-space); counts as one ``hvp`` call per product.
    cross : callable
        ``v -> ∇²_xy g(x, y) · v`` (x-space); counts as one ``cross`` call per product.
    """

    hvp: Any
    cross: Any


class _ProblemData:
    """Namespace, dtype and device of a problem's data, and its default starting points."""

    xp: Any
    dim_x: int
    dim_y: int

    @property
    def dtype(self):
        """Floating dtype of the problem's data and variables."""
        return self._dtype

    @property
    def device(self):
        """Device of the problem's data."""
        return self._device

    def _set_backend(self, *arrays, names=None) -> None:
        """Record namespace, dtype and device from the data arrays (all must agree)."""
        self.xp = array_namespace(*arrays, names=names)
        first = next(a for a in arrays if a is not None)
        self._dtype = first.dtype
        self._device = device(first)

    def init_x(self):
        """Documented default starting point for x (zeros unless a problem says otherwise)."""
        return self.xp.zeros(self.dim_x, dtype=self.dtype, device=self.device)

    def init_y(self):
        """Documented default starting point for y (zeros unless a problem says otherwise)."""
        return self.xp.zeros(self.dim_y, dtype=self.dtype, device=self.device)


class BilevelProblem(_ProblemData):
    r"""Base class of bilevel problems :math:`\min_x f(x, y^*(x))`, :math:`y^* = \arg\min_y g`.

    Subclasses set ``dim_x``, ``dim_y``, ``n_outer``, ``n_inner`` and ``xp`` and implement
    the fused oracles :meth:`f`, :meth:`g`, :meth:`grad_f`, :meth:`grad_g`,
    :meth:`hvp_g` and :meth:`cross_g`. The narrow oracles (``grad_f_x`` ...) and the
    stacked ones (``grad_g_many`` ...) derive from them here; override them when a
    cheaper form exists (e.g. one pass over the data for several points).

    The exact oracles :meth:`inner_solution`, :meth:`hypergradient` and :meth:`value`
    are provided generically (damped Newton with CG on the hand-derived HVP; the implicit
    function theorem with CG) for problems whose inner problem is strongly convex;
    problems with closed forms override them.
    """

    #: Name used by the registry and the CLI.
    name: str = "bilevel"
    dim_x: int
    dim_y: int
    n_outer: int
    n_inner: int
    xp: Any
    #: Whether the inner problem is strongly convex (the exact oracles apply).
    strongly_convex_inner: bool = True


    # ----------------------------------------------------- fused oracles
    def f(self, x, y, batch: Batch | None = None):
        """Outer objective ``f(x, y)`` as a 0-d array."""
        raise NotImplementedError

    def g(self, x, y, batch: Batch | None = None):
        """Inner objective ``g(x, y)`` as a 0-d array."""
        raise NotImplementedError

    def grad_f(self, x, y, batch: Batch | None = None):
        """``(∇_x f, ∇_y f)``."""
        raise NotImplementedError

    def grad_g(self, x, y, batch: Batch | None = None):
        """``(∇_x g, ∇_y g)``."""
        raise NotImplementedError

    def hvp_g(self, x, y, v, batch: Batch | None = None):
        """``∇²_yy g(x, y) · v`` (y-space)."""
        raise NotImplementedError

    def cross_g(self, x, y, v, batch: Batch | None = None):
        """``∇²_xy g(x, y) · v`` (x-space): the x-gradient of ``<∇_y g(x, y), v>``."""
        raise NotImplementedError

    def linearize_g(self, x, y, batch: Batch | None = None) -> LinearizedG:
        r"""``g``'s second-order oracles at the fixed point ``(x, y)``, ready for many products.

        Returns an object with ``hvp(v)`` (:math:`\nabla^2_{yy} g\,v`) and ``cross(v)``
        (:math:`\nabla^2_{xy} g\,v`) at that point and batch. Solvers that apply several
        products at one point (CG, Neumann series, truncated reverse) linearise once.
        Problems whose products share a forward pass (the logistic and MLP models: the
        scores and :math:`\sigma'`) override this so that each product reads the data
        once more instead of recomputing the forward pass; this default simply calls
        :meth:`hvp_g` and :meth:`cross_g`.
        """
        return LinearizedG(hvp=lambda v: self.hvp_g(x, y, v, batch),
                           cross=lambda v: self.cross_g(x, y, v, batch))

    # ---------------------------------------------------- narrow oracles
    def grad_f_x(self, x, y, batch: Batch | None = None):
        """``∇_x f`` (one ``grad_f`` call)."""
        return self.grad_f(x, y, batch)[0]

    def grad_f_y(self, x, y, batch: Batch | None = None):
        """``∇_y f`` (one ``grad_f`` call)."""
        return self.grad_f(x, y, batch)[1]

    def grad_g_x(self, x, y, batch: Batch | None = None):
        """``∇_x g`` (one ``grad_g`` call)."""
        return self.grad_g(x, y, batch)[0]

    def grad_g_y(self, x, y, batch: Batch | None = None):
        """``∇_y g`` (one ``grad_g`` call)."""
        return self.grad_g(x, y, batch)[1]

    # --------------------------------------------------- stacked oracles
    def grad_g_many(self, x, Ys, batch: Batch | None = None):
        """``∇g`` at the points ``(x, Ys[j])``: stacks of shape ``(m, dim_x)``, ``(m, dim_y)``.

        Counts ``m`` ``grad_g`` calls. This default loops; data-bound problems override it
        to read the data once for all points.
        """
        gxs, gys = zip(*(self.grad_g(x, Ys[j, ...], batch) for j in range(Ys.shape[0])))
        return self.xp.stack(gxs), self.xp.stack(gys)

    def grad_g_y_many(self, x, Ys, batch: Batch | None = None):
        """``∇_y g`` at the points ``(x, Ys[j])``, shape ``(m, dim_y)``."""
        return self.xp.stack([self.grad_g_y(x, Ys[j, ...], batch) for j in range(Ys.shape[0])])

    def grad_g_x_many(self, x, Ys, batch: Batch | None = None):
        """``∇_x g`` at the points ``(x, Ys[j])``, shape ``(m, dim_x)``."""
        return self.xp.stack([self.grad_g_x(x, Ys[j, ...], batch) for j in range(Ys.shape[0])])

    # ------------------------------------------------------ exact oracles
    def inner_residual(self, x, y):
        """``||∇_y g(x, y)||`` on the full data, a 0-d array."""
        return self.xp.linalg.vector_norm(self.grad_g_y(x, y))

    def inner_solution(self, x, *, y0=None, tol: float | None = None, max_iter: int = 100):
        r"""``y*(x) = argmin_y g(x, y)`` by damped Newton with CG on the hand-derived HVP.

        Iterates :math:`y \leftarrow y + t\,d`, :math:`H d = -\nabla_y g` (CG to a relative
        tolerance :math:`\min(0.1, \|\nabla_y g\|^{1/2})`, tightened to 1e-14 near the
        solution), with Armijo backtracking on ``g`` whose acceptance test allows the
        rounding error of ``g`` itself (:math:`10\,\epsilon\,|g|`): once the decrease of
        ``g`` falls below rounding, full Newton steps are taken and converge quadratically
        instead of stalling. Stops when
        :math:`\|\nabla_y g\| \le \text{tol}\cdot(1 + \|\nabla_y g(x, y_0)\|)` or when a
        step no longer lowers the residual; ``tol`` defaults to 1e-12 in float64 and 1e-5 in
        float32. Synchronises: an exact oracle, never for a solver's hot path.
        """
        xp = self.xp
        if tol is None:
            tol = 1e-12 if self.dtype == xp.float64 else 1e-5
        slack = 10.0 * eps(self.dtype)
        y = self.init_y() if y0 is None else y0
        grad = self.grad_g_y(x, y)
        gnorm = to_host_scalar(xp.linalg.vector_norm(grad))
        target = tol * (1.0 + gnorm)
        value = to_host_scalar(self.g(x, y))
        for _ in range(max_iter):
            if gnorm <= target:
                break
            cg_rtol = max(min(0.1, math.sqrt(gnorm)), 1e-14)
            d, _, _ = cg_solve(lambda v: self.hvp_g(x, y, v), -grad, rtol=cg_rtol,
                               max_iter=10 * self.dim_y + 10)
            slope = to_host_scalar(xp.sum(d * grad))
            if not slope < 0:
                d, slope = -grad, -gnorm**2
            t = 1.0
            while True:
                y_new = y + t * d
                value_new = to_host_scalar(self.g(x, y_new))
                if value_new <= value + 1e-4 * t * slope + slack * abs(value) or t < 1e-10:
                    break
                t *= 0.5
            grad_new = self.grad_g_y(x, y_new)
            gnorm_new = to_host_scalar(xp.linalg.vector_norm(grad_new))
            if value_new > value and not gnorm_new < gnorm:
                break  # at the rounding floor: no step improves g or its gradient
            y, value, grad, gnorm = y_new, value_new, grad_new, gnorm_new
        return y

    def hypergradient(self, x, *, y_star=None):
        r"""Exact :math:`\nabla F(x)` by the implicit function theorem.

        .. math::

            \nabla F(x) = \nabla_x f(x, y^*) - \nabla^2_{xy} g(x, y^*)\,
            [\nabla^2_{yy} g(x, y^*)]^{-1} \nabla_y f(x, y^*),

        with :math:`y^* = y^*(x)` from :meth:`inner_solution` and the linear system solved by
        CG to relative residual 1e-13 (float64).
        """
        xp = self.xp
        if y_star is None:
            y_star = self.inner_solution(x)
        fx, fy = self.grad_f(x, y_star)
        rtol = 1e-13 if self.dtype == xp.float64 else 1e-6
        v, _, _ = cg_solve(lambda u: self.hvp_g(x, y_star, u), fy, rtol=rtol)
        return fx - self.cross_g(x, y_star, v)

    def value(self, x):
        """``F(x) = f(x, y*(x))`` on the full data, a 0-d array."""
        return self.f(x, self.inner_solution(x))

    def describe(self) -> dict:
        """Sizes and settings for ``config.json`` and ``refbilevel list``."""
        return {"name": self.name, "dim_x": self.dim_x, "dim_y": self.dim_y,
                "n_outer": self.n_outer, "n_inner": self.n_inner}


class MinimaxBilevelProblem(_ProblemData):
    r"""Base class of multi-block minimax-bilevel problems (FOSL and MemCS).

    .. math::

        \min_x \max_y \frac1n \sum_{i=1}^n f_i(x, y, z_i^*(x)), \qquad
        z_i^*(x) = \arg\min_z g_i(x, z).

    Block variables are stacked: ``z`` has shape ``(len(blocks), dim_z)`` and row ``j``
    belongs to block ``blocks[j]``. Oracles take an integer index array ``blocks`` and are
    vectorised over blocks.

    Scaling convention: ``f(x, y, z, blocks)`` and ``g(x, z, blocks)`` are the **means**
    over the given blocks; ``gx``, ``gy`` are gradients of those means; ``gz[j]`` is the
    **per-block** gradient :math:`\nabla_z f_{b_j}` (resp. :math:`\nabla_z g_{b_j}`), i.e.
    ``len(blocks)`` times the gradient of the mean with respect to ``z[j]``, which is what a
    per-block update needs.
    """

    name: str = "minimax_bilevel"
    n_blocks: int
    dim_x: int
    dim_y: int
    dim_z: int
    xp: Any

    def all_blocks(self):
        """Index array ``0..n_blocks-1`` on the problem's device."""
        return self.xp.arange(self.n_blocks, device=self.device)

    def init_z(self, n_rows: int | None = None):
        """Cold-start lower-level variables, shape ``(n_rows, dim_z)`` (default all blocks)."""
        n_rows = self.n_blocks if n_rows is None else n_rows
        return self.xp.zeros((n_rows, self.dim_z), dtype=self.dtype, device=self.device)

    def f(self, x, y, z, blocks, batch: Batch | None = None):
        """Mean over ``blocks`` of ``f_i(x, y, z_i)``, a 0-d array."""
        raise NotImplementedError

    def g(self, x, z, blocks, batch: Batch | None = None):
        """Mean over ``blocks`` of ``g_i(x, z_i)``, a 0-d array."""
        raise NotImplementedError

    def grad_f(self, x, y, z, blocks, batch: Batch | None = None):
        """``(gx, gy, gz)`` per the scaling convention of the class docstring."""
        raise NotImplementedError

    def grad_g(self, x, z, blocks, batch: Batch | None = None):
        """``(gx, gz)`` per the scaling convention of the class docstring."""
        raise NotImplementedError

    def grad_g_many(self, x, Zs, blocks, batch: Batch | None = None):
        """``grad_g`` at the points ``(x, Zs[j])``: stacks ``(m, dim_x)`` and ``(m, len(blocks), dim_z)``.

        Counts ``m·len(blocks)`` ``grad_g`` calls. This default loops over the ``m`` points;
        data-bound problems override it to read each block's data once for all points.
        """
        gxs, gzs = zip(*(self.grad_g(x, Zs[j, ...], blocks, batch) for j in range(Zs.shape[0])))
        return self.xp.stack(gxs), self.xp.stack(gzs)

    def grad_f_z(self, x, y, z, blocks, batch: Batch | None = None):
        """Per-block ``∇_z f_i`` only, ``(len(blocks), dim_z)`` (``len(blocks)`` ``grad_f`` calls)."""
        return self.grad_f(x, y, z, blocks, batch)[2]

    def hvp_g(self, x, z, v, blocks, batch: Batch | None = None):
        r"""Per-block Hessian-vector products in z: row ``j`` is :math:`\nabla^2_{zz} g_{b_j}(x, z_j)\, v_j`.

        ``z`` and ``v`` have shape ``(len(blocks), dim_z)``; so has the result (per-block,
        like ``gz``). Counts ``len(blocks)`` ``hvp`` calls. Used by the exact
        :meth:`saddle_gradient` and the oracle checks; the first-order solvers (FOSL, MemCS)
        do not call it.
        """
        raise NotImplementedError

    def cross_g(self, x, z, v, blocks, batch: Batch | None = None):
        r"""The x-gradient of :math:`\frac{1}{n_b}\sum_j \langle \nabla_z g_{b_j}(x, z_j), v_j\rangle`.

        With :math:`n_b` = ``len(blocks)``: the mean over blocks of
        :math:`\nabla^2_{xz} g_{b_j}(x, z_j)\, v_j`, shape ``(dim_x,)`` (x-space, like
        ``gx``). Counts ``len(blocks)`` ``cross`` calls. With :meth:`hvp_g` it gives the
        implicit-function term of :meth:`saddle_gradient`.
        """
        raise NotImplementedError

    def grad_g_z_many(self, x, Zs, blocks, batch: Batch | None = None):
        """Per-block ``∇_z g_i`` at the points ``Zs[j]``: ``(m, len(blocks), dim_z)``."""
        return self.grad_g_many(x, Zs, blocks, batch)[1]

    def inner_solution(self, x):
        """``z*(x)`` for all blocks, shape ``(n_blocks, dim_z)``."""
        raise NotImplementedError

    def value(self, x):
        r""":math:`\Phi(x) = \max_y \frac1n\sum_i f_i(x, y, z_i^*(x))` on the full data, a 0-d array."""
        raise NotImplementedError

    def saddle_gradient(self, x):
        r"""Gradient of :math:`\Phi(x) = \max_y F(x, y, z^*(x))` where a problem has it exactly.

        By Danskin's theorem in ``y`` and the implicit function theorem in ``z``:
        :math:`\nabla\Phi = \frac1n\sum_i [\nabla_x f_i - \nabla^2_{xz} g_i
        (\nabla^2_{zz} g_i)^{-1} \nabla_z f_i]` at :math:`(y^*(x), z^*(x))`.
        """
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "n_blocks": self.n_blocks, "dim_x": self.dim_x,
                "dim_y": self.dim_y, "dim_z": self.dim_z}
