r"""BOME: value-function gap with a dynamic barrier multiplier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._backend import stack
from ..oracle import as_oracle
from ._common import (COUNT, NONNEGATIVE, POSITIVE, choice, inner_gd, project_x, resolve_seed,
                      start_point, validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["BOME", "BOMEState"]


@dataclass(frozen=True)
class BOMEState(SolverState):
    """State of :class:`BOME`.

    Attributes
    ----------
    lam : array
        The last multiplier :math:`\\lambda_k` (0-d device array; ``multiplier`` stays None
        because it is a Python float field and reading λ would synchronise).
    """

    lam: Any = None


@dataclass(frozen=True)
class BOME(Solver):
    r"""BOME (Liu, Ye, Wright, Stone, Liu 2022): first-order value-function method.

    Parameters
    ----------
    lr_inner : float
        Step of ``y`` and of the inner GD that computes :math:`\hat y` (default 0.1,
        benchopt ``step_size`` [CODE]).
    lr_outer : float
        Step ξ of ``x`` (default 0.1: benchopt ``step_size / outer_ratio``,
        ``outer_ratio = 1`` [CODE]).
    n_inner : int
        T, GD steps on :math:`g(x_k, \cdot)` from :math:`y_k` (default 10, benchopt [CODE]).
    phi : {"grad_norm", "value_gap"}
        The control barrier: :math:`\phi_k = \eta\|\nabla q\|^2` (benchopt default [CODE]) or
        :math:`\phi_k = \eta\, q(x_k, y_k)` (the BOME paper's value-gap choice; the F2BA
        repository's BOME-style script uses it with η = 1 [CODE]).
    eta : float
        η of the barrier (default 0.5, benchopt [CODE]).
    eps : float
        Added to :math:`\|\nabla q\|^2` in the denominator of λ (default 1e-8, this
        project's guard against a zero gradient of q; benchopt divides without it). Must be >= 0.

    Notes
    -----
    With :math:`q(x, y) = g(x, y) - g(x, \hat y)` (:doc:`/algorithms/baselines`):

    .. math::

        &1:\ \hat y = T \text{ GD steps on } g(x_k, \cdot) \text{ from } y_k,
              \text{ step } \alpha \\
        &2:\ \nabla q = \big(\nabla_x g(x_k, y_k) - \nabla_x g(x_k, \hat y),\
              \nabla_y g(x_k, y_k)\big) \\
        &3:\ \phi_k = \eta \|\nabla q\|^2 \ \text{ or } \
              \phi_k = \eta\,(g(x_k, y_k) - g(x_k, \hat y)) \\
        &4:\ \lambda_k = \max\big(\phi_k - \langle \nabla f(x_k, y_k), \nabla q\rangle, 0\big)
              / (\|\nabla q\|^2 + \epsilon) \\
        &5:\ x_{k+1} = \mathrm{Proj}_X\big(x_k - \xi(\nabla_x f + \lambda_k \nabla_x q)\big),
             \quad y_{k+1} = y_k - \alpha(\nabla_y f + \lambda_k \nabla_y q)

    The max in line 4 is ``xp.maximum`` on device arrays (no synchronisation).

    Fixed points: where the iterates settle with :math:`\nabla q \ne 0`, line 5 is a
    stationary point of :math:`f + \lambda q`; λ is not a fixed penalty, so there is no
    closed-form limit. On a quadratic problem the iterates approach :math:`x^*` up to a
    bias that shrinks with T and η (measured in the tests, not a closed form).

    Oracle calls per step: ``grad_g`` T + 2 (T for :math:`\hat y`, a stacked call at
    :math:`(y_k, \hat y)`), plus 2 for ``phi="value_gap"`` (the values
    :math:`g(x_k, y_k)`, :math:`g(x_k, \hat y)`; a function value is counted as one call of
    its gradient kind, i.e. one pass over the data); ``grad_f`` 1.

    References
    ----------
    .. [1] B. Liu, M. Ye, S. Wright, P. Stone, Q. Liu, "BOME! Bilevel optimization made
       easy: a simple first-order approach", NeurIPS 2022.

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import BOME
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, BOME(lr_inner=0.05, n_inner=100), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=5100, hvp=0, cross=0)
    """

    name: ClassVar[str] = "bome"

    lr_inner: float = 0.1
    lr_outer: float = 0.1
    n_inner: int = 10
    phi: str = "grad_norm"
    eta: float = 0.5
    eps: float = 1e-8

    def __post_init__(self):
        validate_fields(self, lr_inner=POSITIVE, lr_outer=POSITIVE, n_inner=COUNT,
                        phi=choice("grad_norm", "value_gap"), eta=POSITIVE, eps=NONNEGATIVE)

    def init(self, problem, x0=None, y0=None, seed=0) -> BOMEState:
        x, y = start_point(problem, x0, y0)
        lam = problem.xp.zeros((), dtype=y.dtype, device=problem.device)
        return BOMEState(x=project_x(problem, x), y=y, lam=lam, seed=resolve_seed(seed))

    def step(self, oracle, state: BOMEState) -> BOMEState:
        problem = as_oracle(oracle)
        xp = problem.xp
        x, y = state.x, state.y
        y_hat = inner_gd(problem, x, y, lr=self.lr_inner, n_steps=self.n_inner)  # line 1
        fx, fy = problem.grad_f(x, y)
        gxs, gys = problem.grad_g_many(x, stack([y, y_hat], xp=xp))              # line 2
        qx, qy = gxs[0, ...] - gxs[1, ...], gys[0, ...]
        sq_norm = xp.sum(qx * qx) + xp.sum(qy * qy)
        if self.phi == "grad_norm":                                              # line 3
            phi = self.eta * sq_norm
        else:
            phi = self.eta * (problem.g(x, y) - problem.g(x, y_hat))
        dot = xp.sum(fx * qx) + xp.sum(fy * qy)
        lam = xp.maximum(phi - dot, 0.0) / (sq_norm + self.eps)                  # line 4
        x_new = project_x(problem, x - self.lr_outer * (fx + lam * qx))          # line 5
        y_new = y - self.lr_inner * (fy + lam * qy)
        return evolve(state, x=x_new, y=y_new, lam=lam,
                                   iteration=state.iteration + 1)
