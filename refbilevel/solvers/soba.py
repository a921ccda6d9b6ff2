r"""SOBA: single-loop stochastic bilevel algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..oracle import as_oracle
from ._common import (COUNT1_OR_NONE, POSITIVE, choice, data_streams, paired_batches,
                      project_x, resolve_seed, start_point, validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["SOBA", "SOBAState", "LR_SCHEDULES", "decayed"]

#: Step-size schedules of SOBA and SABA.
LR_SCHEDULES = ("constant", "sqrt")


def decayed(lr: float, decay: str, k: int) -> float:
    """The step of iteration ``k`` (a host float): ``lr`` or ``lr / sqrt(k + 1)``."""
    return lr if decay == "constant" else lr / (k + 1) ** 0.5


@dataclass(frozen=True)
class SOBAState(SolverState):
    r"""State of :class:`SOBA`.

    Attributes
    ----------
    v : array
        Tracks :math:`-[\nabla^2_{yy} g]^{-1} \nabla_y f` (``dim_y``), zero at start.
    """

    v: Any = None


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
    lr_schedule : {"constant", "sqrt"}
        ``"constant"`` (default): ρ and γ at every step. ``"sqrt"``: the steps of step
        :math:`k` are :math:`\rho/\sqrt{k+1}` and :math:`\gamma/\sqrt{k+1}` on both
        levels, benchopt's decreasing schedule [CODE].

    Notes
    -----
    Constant step sizes by default, this project's choice: benchopt's SOBA uses decreasing
    steps :math:`c/(t+1)^a` (``lr_schedule="sqrt"`` is its :math:`a = 1/2` on both levels).
    With constant steps and full batches the fixed point is exactly
    :math:`(x^*, y^*(x^*), -H^{-1}\nabla_y f)` for a stationary :math:`x^*`. One inner batch :math:`\mathcal B` and one
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

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import SOBA
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, SOBA(), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=50, hvp=50, cross=50)
    """

    name: ClassVar[str] = "soba"

    lr_inner: float = 0.1
    lr_outer: float = 0.1
    batch_size_outer: int | None = 64
    batch_size_inner: int | None = 64
    lr_schedule: str = "constant"

    def __post_init__(self):
        validate_fields(self, lr_inner=POSITIVE, lr_outer=POSITIVE,
                        batch_size_outer=COUNT1_OR_NONE, batch_size_inner=COUNT1_OR_NONE,
                        lr_schedule=choice(*LR_SCHEDULES))

    def streams(self, problem) -> tuple:
        """One outer and one inner batch per step."""
        return data_streams(problem, self, 1, 1)

    def init(self, problem, x0=None, y0=None, seed=0) -> SOBAState:
        x, y = start_point(problem, x0, y0)
        return SOBAState(x=project_x(problem, x), y=y, v=problem.xp.zeros_like(y),
                         seed=resolve_seed(seed))

    def step(self, oracle, state: SOBAState) -> SOBAState:
        problem = as_oracle(oracle)
        (batch,) = paired_batches(problem.draw(state, self.streams(problem)), 1)
        x, y, v = state.x, state.y, state.v
        fx, fy = problem.grad_f(x, y, batch)                     # outer batch
        # line 1 (inner batch); the gradient, H and J share one forward pass
        d_y, lin = problem.grad_and_linearize_g(x, y, batch)
        d_v = lin.hvp(v) + fy
        d_x = lin.cross(v) + fx                                  # line 2
        rho = decayed(self.lr_inner, self.lr_schedule, state.iteration)
        gamma = decayed(self.lr_outer, self.lr_schedule, state.iteration)
        return evolve(                                           # line 3
            state, y=y - rho * d_y, v=v - rho * d_v,
            x=project_x(problem, x - gamma * d_x), iteration=state.iteration + 1)
