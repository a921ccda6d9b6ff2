r"""SOBA: single-loop stochastic bilevel algorithm."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .._validation import check_int, check_real
from ._common import draw_batches, make_schedule, project_x, start_point
from .base import OracleCalls, Solver, SolverState

__all__ = ["SOBA", "SOBAState"]


@dataclass(frozen=True)
class SOBAState(SolverState):
    r"""State of :class:`SOBA`.

    Attributes
    ----------
    v : array
        Tracks :math:`-[\nabla^2_{yy} g]^{-1} \nabla_y f` (``dim_y``), zero at start.
    schedule : refbilevel.sampling.BatchSchedule
        The host-side minibatch schedule.
    """

    v: Any = None
    schedule: Any = None


@dataclass(frozen=True)
class SOBA(Solver):
    r"""SOBA (Dagréou, Ablin, Vaiter, Moreau 2022): simultaneous SGD steps on y, v and x.

    Parameters
    ----------
    lr_inner : float
        ρ, the step of ``y`` and ``v`` (default 0.1: benchopt ``step_size`` [CODE]).
    lr_outer : float
        γ, the step of ``x`` (default 0.1: benchopt ``step_size / outer_ratio`` with
        ``outer_ratio = 1`` [CODE]).
    batch_size_outer, batch_size_inner : int or None
        Minibatch sizes; ``None`` means full batches (default 64 each, benchopt [CODE]).

    Notes
    -----
    Constant step sizes (benchopt also offers decreasing ones, :math:`c/(t+1)^a`; with
    constant steps and full batches the fixed point is exactly :math:`(x^*, y^*(x^*),
    -H^{-1}\nabla_y f)` for a stationary :math:`x^*`). One inner batch :math:`\mathcal B` and one
    outer batch :math:`\mathcal D` per step, as in benchopt:

    .. math::

        &1:\ D_y = \nabla_y g(x_k, y_k; \mathcal B),\quad
             D_v = \nabla^2_{yy} g(x_k, y_k; \mathcal B)\, v_k + \nabla_y f(x_k, y_k; \mathcal D) \\
        &2:\ D_x = \nabla^2_{xy} g(x_k, y_k; \mathcal B)\, v_k + \nabla_x f(x_k, y_k; \mathcal D) \\
        &3:\ y_{k+1} = y_k - \rho D_y,\quad v_{k+1} = v_k - \rho D_v,\quad
             x_{k+1} = \mathrm{Proj}_X(x_k - \gamma D_x)

    All three directions are evaluated at :math:`(x_k, y_k, v_k)`. Since ``v`` approximates
    :math:`-H^{-1}\nabla_y f`, :math:`D_x` approximates the hypergradient
    :math:`\nabla_x f - J H^{-1} \nabla_y f`.

    Oracle calls per step: ``grad_g`` 1, ``grad_f`` 1, ``hvp`` 1, ``cross`` 1.

    References
    ----------
    .. [1] M. Dagréou, P. Ablin, S. Vaiter, T. Moreau, "A framework for bilevel
       optimization that enables stochastic and global variance reduction algorithms",
       NeurIPS 2022.
    """

    name: ClassVar[str] = "soba"

    lr_inner: float = 0.1
    lr_outer: float = 0.1
    batch_size_outer: int | None = 64
    batch_size_inner: int | None = 64

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "lr_inner", check_real(self.lr_inner, "lr_inner", positive=True))
        set_(self, "lr_outer", check_real(self.lr_outer, "lr_outer", positive=True))
        set_(self, "batch_size_outer",
             check_int(self.batch_size_outer, "batch_size_outer", minimum=1, allow_none=True))
        set_(self, "batch_size_inner",
             check_int(self.batch_size_inner, "batch_size_inner", minimum=1, allow_none=True))

    def init(self, problem, x0=None, y0=None, rng=None) -> SOBAState:
        x, y = start_point(problem, x0, y0)
        schedule = make_schedule(problem, rng, self.batch_size_outer, self.batch_size_inner)
        return SOBAState(x=project_x(problem, x), y=y, v=problem.xp.zeros_like(y),
                         schedule=schedule)

    def step(self, problem, state: SOBAState) -> SOBAState:
        (batch,) = draw_batches(problem, state.schedule, 1)
        x, y, v = state.x, state.y, state.v
        fx, fy = problem.grad_f(x, y, batch)                     # outer batch
        d_y = problem.grad_g_y(x, y, batch)                      # line 1 (inner batch)
        d_v = problem.hvp_g(x, y, v, batch) + fy
        d_x = problem.cross_g(x, y, v, batch) + fx               # line 2
        return dataclasses.replace(                              # line 3
            state, y=y - self.lr_inner * d_y, v=v - self.lr_inner * d_v,
            x=project_x(problem, x - self.lr_outer * d_x), iteration=state.iteration + 1,
            calls=state.calls + self.calls_per_step(problem))

    def calls_per_step(self, problem) -> OracleCalls:
        return OracleCalls(grad_f=1, grad_g=1, hvp=1, cross=1)
