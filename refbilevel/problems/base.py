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
import warnings
from dataclasses import dataclass
from typing import Any

from .._backend import (array_namespace, device, eps, from_host, host_namespace, host_rng,
                        materialize, stack, to_host_scalar)
from .._validation import check_choice
from ..linalg import cg_solve

__all__ = ["Batch", "BilevelProblem", "Certificate", "CertificateError", "CertificateWarning",
           "LinearizedG", "MinimaxBilevelProblem", "ORACLE_KINDS", "take_rows"]

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


#: Statuses of a :class:`Certificate`.
CERTIFIED, NOT_STATIONARY, NEGATIVE_CURVATURE = "certified", "not stationary", "negative curvature"

_ON_FAILURE = ("warn", "raise", "ignore")


class CertificateWarning(UserWarning):
    """An exact oracle was evaluated at an inner point that failed its certificate."""


class CertificateError(ArithmeticError):
    """An exact oracle refused to return a value whose inner point failed its certificate.

    Attributes
    ----------
    certificate : Certificate
        The failed certificate.
    """

    def __init__(self, message: str, certificate: Certificate):
        super().__init__(message)
        self.certificate = certificate


@dataclass(frozen=True)
class Certificate:
    r"""Evidence that an inner point ``y`` is the minimiser an exact oracle assumes.

    An exact oracle (``inner_solution``, ``hypergradient``, ``value``, ``saddle_gradient``)
    is exact only at a point where :math:`\nabla_y g = 0` and :math:`\nabla^2_{yy} g \succeq 0`.
    The certificate states how close the returned point is to that.

    Attributes
    ----------
    residual : float
        Stationarity residual :math:`\|\nabla_y g(x, y)\|` on the full data (for block
        problems the largest per-block residual).
    scale : float
        :math:`1 + \|\nabla_y g(x, y_0)\|` at the documented starting point ``y0``: the
        residual is judged relative to it.
    rtol : float
        Stationarity passes when ``residual <= rtol * scale``.
    min_curvature, max_curvature : float or None
        Smallest and largest Ritz values of :math:`\nabla^2_{yy} g(x, y)` after a few Lanczos
        steps on the HVP (``None`` when not estimated). The smallest Ritz value is an upper
        bound on the smallest eigenvalue, so a negative value proves negative curvature.
    status : str
        ``"certified"``, ``"not stationary"`` or ``"negative curvature"``.
    """

    residual: float
    scale: float
    rtol: float
    min_curvature: float | None = None
    max_curvature: float | None = None
    status: str = CERTIFIED

    @property
    def ok(self) -> bool:
        """Whether the certificate passed."""
        return self.status == CERTIFIED

    @property
    def relative_residual(self) -> float:
        """``residual / scale``."""
        return self.residual / self.scale

    def summary(self) -> str:
        """One line: status, relative residual and the curvature range when estimated."""
        text = f"{self.status}: ||grad_y g|| = {self.residual:.2e} ({self.relative_residual:.1e} relative)"
        if self.min_curvature is not None:
            text += f", Hessian Ritz values in [{self.min_curvature:.3e}, {self.max_curvature:.3e}]"
        return text


def certificate_rtol(dtype) -> float:
    r"""Default stationarity tolerance of a certificate: :math:`\sqrt{\epsilon}` of ``dtype``.

    1.5e-8 in float64, 3.5e-4 in float32: far above what a converged solve reaches (the
    rounding floor), far below what a stalled one leaves (a ReLU kink typically keeps
    0.1 % to 80 % of the starting gradient).
    """
    return math.sqrt(eps(dtype))


def make_certificate(residual: float, scale: float, rtol: float, curvature=None, *,
                     dtype) -> Certificate:
    """A :class:`Certificate` with its status decided from the residual and the Ritz values.

    Negative curvature is reported when the smallest Ritz value is below
    :math:`-\\sqrt{\\epsilon}` times the largest magnitude (zero-curvature directions, e.g. an
    undecayed bias, pass).
    """
    lo, hi = (None, None) if curvature is None else curvature
    if not residual <= rtol * scale:
        status = NOT_STATIONARY
    elif lo is not None and lo < -math.sqrt(eps(dtype)) * max(abs(lo), abs(hi)):
        status = NEGATIVE_CURVATURE
    else:
        status = CERTIFIED
    return Certificate(residual=residual, scale=scale, rtol=rtol, min_curvature=lo,
                       max_curvature=hi, status=status)


def enforce(certificate: Certificate, on_failure: str, oracle: str) -> None:
    """Warn (``"warn"``), raise :class:`CertificateError` (``"raise"``) or pass (``"ignore"``)."""
    if certificate.ok or on_failure == "ignore":
        return
    message = (f"{oracle}: the inner point is not a certified minimiser ({certificate.summary()}); "
               "the exact oracles assume a stationary point with positive semidefinite Hessian")
    if on_failure == "raise":
        raise CertificateError(message, certificate)
    warnings.warn(message, CertificateWarning, stacklevel=3)


def lanczos_extremes(matvec, like, *, n_steps: int = 30, seed: int = 0) -> tuple[float, float]:
    r"""Smallest and largest Ritz values of a symmetric operator after ``n_steps`` Lanczos steps.

    Starts from a seeded random unit vector of ``like``'s shape and fully reorthogonalises
    (the steps are few), so no spurious copies of converged Ritz values appear. By the
    Cauchy interlacing theorem the smallest Ritz value is at least the smallest eigenvalue
    and the largest at most the largest; the extremes converge first (Golub & Van Loan,
    *Matrix Computations*, 4th ed., §10.1). Synchronises every step: for exact oracles only.
    """
    xp = array_namespace(like)
    hxp = host_namespace()
    size = math.prod(like.shape)
    n_steps = max(1, min(n_steps, size))
    shape = tuple(like.shape)
    q = from_host(host_rng(seed).standard_normal(size), xp, dtype=like.dtype, device=device(like))
    q = q / xp.linalg.vector_norm(q)
    basis, alphas, betas = [q], [], []
    for k in range(n_steps):
        w = xp.reshape(matvec(xp.reshape(basis[-1], shape)), (size,))
        alphas.append(to_host_scalar(xp.sum(w * basis[-1])))
        Q = xp.stack(basis)
        for _ in range(2):  # classical Gram-Schmidt against all previous vectors, twice
            w = w - (Q @ w) @ Q
        beta = to_host_scalar(xp.linalg.vector_norm(w))
        if k == n_steps - 1 or not beta > 1e3 * eps(like.dtype) * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        basis.append(w / beta)
    m = len(alphas)
    off = betas[:m - 1]
    T = [[alphas[i] if i == j else off[min(i, j)] if abs(i - j) == 1 else 0.0
          for j in range(m)] for i in range(m)]
    ritz = hxp.linalg.eigvalsh(hxp.asarray(T, dtype=hxp.float64))
    return float(ritz[0]), float(ritz[-1])


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

    def grad_and_linearize_g(self, x, y, batch: Batch | None = None):
        r"""``(∇_y g(x, y), linearize_g(x, y, batch))``: a gradient and the products at one point.

        For loops that step from a point with :math:`\nabla_y g` and apply second-order
        products at the same point later (ITD's forward and reverse passes). Problems whose
        gradient and products share a forward pass (the logistic model: the scores
        :math:`A W`) override this so that the point's forward pass is computed once; this
        default calls :meth:`grad_g_y` and :meth:`linearize_g`. The gradient and the
        products equal those of the two calls bit for bit.
        """
        return self.grad_g_y(x, y, batch), self.linearize_g(x, y, batch)

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
        return stack(gxs, xp=self.xp), stack(gys, xp=self.xp)

    def grad_g_y_many(self, x, Ys, batch: Batch | None = None):
        """``∇_y g`` at the points ``(x, Ys[j])``, shape ``(m, dim_y)``."""
        return stack([self.grad_g_y(x, Ys[j, ...], batch) for j in range(Ys.shape[0])], xp=self.xp)

    def grad_g_x_many(self, x, Ys, batch: Batch | None = None):
        """``∇_x g`` at the points ``(x, Ys[j])``, shape ``(m, dim_x)``."""
        return stack([self.grad_g_x(x, Ys[j, ...], batch) for j in range(Ys.shape[0])], xp=self.xp)

    # ------------------------------------------------------ exact oracles
    def inner_residual(self, x, y):
        """``||∇_y g(x, y)||`` on the full data, a 0-d array."""
        return self.xp.linalg.vector_norm(self.grad_g_y(x, y))

    def certify_inner(self, x, y, *, rtol: float | None = None, curvature: bool = True,
                      n_lanczos: int = 30) -> Certificate:
        r"""The :class:`Certificate` of ``y`` as the inner minimiser at ``x``.

        Stationarity: :math:`\|\nabla_y g(x, y)\| \le \text{rtol}\,(1 + \|\nabla_y g(x, y_0)\|)`
        with :math:`y_0` = :meth:`init_y` and ``rtol`` from :func:`certificate_rtol`
        (:math:`\sqrt{\epsilon}`) by default. With ``curvature=True`` the extreme Ritz values
        of :math:`\nabla^2_{yy} g(x, y)` after ``n_lanczos`` Lanczos steps on the HVP are
        added and a clearly negative smallest one fails the certificate. Synchronises.
        """
        rtol = certificate_rtol(self.dtype) if rtol is None else rtol
        residual = to_host_scalar(self.inner_residual(x, y))
        scale = 1.0 + to_host_scalar(self.inner_residual(x, self.init_y()))
        extremes = None
        if curvature:
            extremes = lanczos_extremes(lambda v: self.hvp_g(x, y, v), y, n_steps=n_lanczos)
        return make_certificate(residual, scale, rtol, extremes, dtype=self.dtype)

    def _newton_direction(self, x, y, grad, cg_rtol, max_iter=None):
        max_iter = 10 * self.dim_y + 10 if max_iter is None else max_iter
        d, _, _ = cg_solve(lambda v: self.hvp_g(x, y, v), -grad, rtol=cg_rtol, max_iter=max_iter)
        return d

    def inner_solution(self, x, *, y0=None, tol: float | None = None, max_iter: int = 100,
                       return_certificate: bool = False, on_failure: str = "warn"):
        r"""``y*(x) = argmin_y g(x, y)`` by damped Newton with CG on the hand-derived HVP.

        Iterates :math:`y \leftarrow y + t\,d`, :math:`H d = -\nabla_y g` (CG to a relative
        tolerance :math:`\max(\min(0.1, \|\nabla_y g\|^{1/2}), 10^{-14})`), with Armijo
        backtracking on ``g`` whose acceptance test allows the
        rounding error of ``g`` itself (:math:`10\,\epsilon\,|g|`): once the decrease of
        ``g`` falls below rounding, full Newton steps are taken and converge quadratically
        instead of stalling. Once
        :math:`\|\nabla_y g\| \le \text{tol}\cdot(1 + \|\nabla_y g(x, y_0)\|)` (``tol``
        defaults to 1e-12 in float64 and 1e-5 in float32), undamped Newton steps polish the
        point to the floating-point floor (CG to 1e-10, at most ``dim_y`` steps): they continue
        while a full step lowers :math:`\|\nabla_y g\|` and the last step that did not is
        discarded. Three consecutive steps shorter than 1e-6 (Newton zig-zagging across a
        kink of a ReLU model) stop the iteration; the certificate then reports it.

        Parameters
        ----------
        x : array
            Outer variable.
        y0 : array, optional
            Starting point (default :meth:`init_y`).
        tol : float, optional
            Relative stationarity tolerance after which polishing starts.
        max_iter : int
            Newton steps, polishing included.
        return_certificate : bool
            Also return the :class:`Certificate` of the result (with a Lanczos estimate of
            the extreme Hessian eigenvalues).
        on_failure : {"warn", "raise", "ignore"}
            What to do when the stationarity certificate fails (e.g. Newton stalled on a
            ReLU kink): emit a :class:`CertificateWarning`, raise :class:`CertificateError`,
            or nothing. The curvature part is judged only with ``return_certificate=True``.

        Returns
        -------
        y : array
            The inner solution; ``(y, certificate)`` with ``return_certificate=True``.

        Notes
        -----
        Synchronises: an exact oracle, never for a solver's hot path.
        """
        xp = self.xp
        on_failure = check_choice(on_failure, "on_failure", _ON_FAILURE)
        if tol is None:
            tol = 1e-12 if self.dtype == xp.float64 else 1e-5
        slack = 10.0 * eps(self.dtype)
        y = self.init_y() if y0 is None else y0
        grad = self.grad_g_y(x, y)
        gnorm = to_host_scalar(xp.linalg.vector_norm(grad))
        start_norm = gnorm if y0 is None else None
        target = tol * (1.0 + gnorm)
        value = to_host_scalar(self.g(x, y))
        stalled = 0
        for _ in range(max_iter):
            if gnorm == 0.0 or stalled == 3:
                break
            y, grad = materialize((y, grad))  # lazy libraries: one iteration's graph at a time
            if gnorm <= target:  # polishing: full Newton steps while ||∇g|| decreases
                # at most dim_y CG steps: the gradient's rounding-level component along a
                # zero-curvature direction (an undecayed bias) would otherwise keep CG going
                y_new = y + self._newton_direction(x, y, grad, 1e-10, max_iter=self.dim_y)
                grad_new = self.grad_g_y(x, y_new)
                gnorm_new = to_host_scalar(xp.linalg.vector_norm(grad_new))
                if not gnorm_new < gnorm:
                    break
                y, grad, gnorm = y_new, grad_new, gnorm_new
                continue
            d = self._newton_direction(x, y, grad, max(min(0.1, math.sqrt(gnorm)), 1e-14))
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
            stalled = stalled + 1 if t < 1e-6 else 0  # e.g. zig-zagging across a ReLU kink
            y, value, grad, gnorm = y_new, value_new, grad_new, gnorm_new
        if return_certificate:
            certificate = self.certify_inner(x, y)
        else:
            if start_norm is None:
                start_norm = to_host_scalar(self.inner_residual(x, self.init_y()))
            certificate = make_certificate(gnorm, 1.0 + start_norm, certificate_rtol(self.dtype),
                                           dtype=self.dtype)
        enforce(certificate, on_failure, f"{type(self).__name__}.inner_solution")
        return (y, certificate) if return_certificate else y

    def _solve_hessian(self, x, y, b):
        r""":math:`[\nabla^2_{yy} g]^{-1} b` by CG plus iterative refinement to the rounding floor.

        CG to relative residual 1e-13 (float64; 1e-6 in float32), then correction solves
        :math:`H\,\delta = b - H v` (CG to relative residual 1e-8 of the correction's right-hand
        side, at most ``b.size`` steps) while the true residual decreases, at most three.
        """
        xp = self.xp
        hvp = self.linearize_g(x, y).hvp
        rtol = 1e-13 if self.dtype == xp.float64 else 1e-6
        v, _, _ = cg_solve(hvp, b, rtol=rtol)
        r = b - hvp(v)
        rnorm = to_host_scalar(xp.linalg.vector_norm(xp.reshape(r, (-1,))))
        for _ in range(3):
            if rnorm == 0.0:
                break
            delta, _, _ = cg_solve(hvp, r, rtol=max(rtol, 1e-8), max_iter=math.prod(b.shape))
            v_new = v + delta
            r_new = b - hvp(v_new)
            rnorm_new = to_host_scalar(xp.linalg.vector_norm(xp.reshape(r_new, (-1,))))
            if not rnorm_new < rnorm:
                break
            v, r, rnorm = v_new, r_new, rnorm_new
        return v

    def hypergradient(self, x, *, y_star=None, return_certificate: bool = False,
                      on_failure: str = "warn"):
        r"""Exact :math:`\nabla F(x)` by the implicit function theorem.

        .. math::

            \nabla F(x) = \nabla_x f(x, y^*) - \nabla^2_{xy} g(x, y^*)\,
            [\nabla^2_{yy} g(x, y^*)]^{-1} \nabla_y f(x, y^*),

        with :math:`y^* = y^*(x)` from :meth:`inner_solution` (or the given ``y_star``) and
        the linear system solved by CG with iterative refinement. ``return_certificate`` and
        ``on_failure`` are as in :meth:`inner_solution`; the certificate is that of
        :math:`y^*` (also when ``y_star`` is given).
        """
        on_failure = check_choice(on_failure, "on_failure", _ON_FAILURE)
        if y_star is None:
            out = self.inner_solution(x, return_certificate=return_certificate,
                                      on_failure=on_failure)
            y_star, certificate = out if return_certificate else (out, None)
        else:
            certificate = self.certify_inner(x, y_star, curvature=return_certificate)
            enforce(certificate, on_failure, f"{type(self).__name__}.hypergradient")
        fx, fy = self.grad_f(x, y_star)
        hg = fx - self.linearize_g(x, y_star).cross(self._solve_hessian(x, y_star, fy))
        return (hg, certificate) if return_certificate else hg

    def value(self, x, *, return_certificate: bool = False, on_failure: str = "warn"):
        """``F(x) = f(x, y*(x))`` on the full data, a 0-d array.

        ``return_certificate`` and ``on_failure`` are as in :meth:`inner_solution`.
        """
        out = self.inner_solution(x, return_certificate=return_certificate, on_failure=on_failure)
        if return_certificate:
            return self.f(x, out[0]), out[1]
        return self.f(x, out)

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
        return stack(gxs, xp=self.xp), stack(gzs, xp=self.xp)

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

    def certify_inner(self, x, z=None, *, rtol: float | None = None) -> Certificate:
        r"""The stationarity :class:`Certificate` of the block solutions ``z`` (default :meth:`inner_solution`).

        The residual is the largest per-block :math:`\|\nabla_{z} g_i(x, z_i)\|`, judged
        against :math:`1 + \max_i \|\nabla_z g_i(x, z_{0,i})\|` at :meth:`init_z`, with
        ``rtol`` = :math:`\sqrt{\epsilon}` by default. Problems with a cheap curvature
        bound override this to add it. Synchronises.
        """
        xp = self.xp
        z = self.inner_solution(x) if z is None else z
        blocks = self.all_blocks()
        rtol = certificate_rtol(self.dtype) if rtol is None else rtol

        def largest(zz):
            gz = self.grad_g(x, zz, blocks)[1]
            return to_host_scalar(xp.max(xp.linalg.vector_norm(gz, axis=-1)))

        return make_certificate(largest(z), 1.0 + largest(self.init_z()), rtol, dtype=self.dtype)

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
