r"""stocBiO: stochastic bilevel optimisation with a minibatch Neumann series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..linalg import neumann_series
from ..oracle import as_oracle
from ._common import (COUNT, COUNT1_OR_NONE, POSITIVE, POSITIVE_OR_NONE, data_streams, inner_gd,
                      paired_batches, project_x, resolve_seed, start_point, validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["StocBiO", "StocBiOState"]


@dataclass(frozen=True)
class StocBiOState(SolverState):
    """State of :class:`StocBiO` (no fields beyond :class:`SolverState`)."""


@dataclass(frozen=True)
class StocBiO(Solver):
    r"""stocBiO (Ji, Yang, Liang 2021): minibatch inner SGD, minibatch Neumann hypergradient.

    Parameters
    ----------
    lr_outer : float
        Outer step β (default 0.1, benchopt ``step_size`` with ``outer_ratio = 1`` [CODE]).
    lr_inner : float
        Inner SGD step α (default 0.1, benchopt [CODE]).
    n_inner : int
        D, inner SGD steps per outer step, warm-started (default 10, benchopt [CODE]).
    n_neumann : int
        Q, the number of HVPs of the Neumann series, which has Q + 1 terms (default 10,
        benchopt [CODE]).
    eta : float or None
        Neumann step η; ``None`` uses ``lr_inner`` (benchopt's ``shia`` is called with the
        inner step size [CODE]). The official hyper-cleaning code uses η = 0.5, Q = 3.
    batch_size_outer, batch_size_inner : int or None
        Minibatch sizes for ``f`` and ``g``; ``None`` means full batches (then the method is
        deterministic and equals :class:`~refbilevel.solvers.aid.AID` with
        ``method="neumann"``, ``n_inner = D``, ``n_linear = Q`` and the same η).
        Default 64 each (benchopt [CODE]).

    Notes
    -----
    Each outer step draws D + Q + 1 fresh batches :math:`(\mathcal D_j, \mathcal B_j)` in one
    transfer (:doc:`/algorithms/baselines`):

    .. math::

        &1:\ y \leftarrow y - \alpha \nabla_y g(x_k, y; \mathcal B_t),\quad t = 0..D-1
              \text{ (warm start)} \\
        &2:\ (a, b) = \nabla f(x_k, y; \mathcal D_F),\quad \mathcal D_F = \mathcal D_D \\
        &3:\ v = \eta \sum_{q=0}^{Q} \prod_{j=1}^{q} (I - \eta \nabla^2_{yy} g(x_k, y;
              \mathcal B_{D+j}))\, b \quad (Q + 1 \text{ terms, fresh batch per factor}) \\
        &4:\ \hat h = a - \nabla^2_{xy} g(x_k, y; \mathcal D_G)\, v,\quad
              \mathcal D_G = \mathcal B_D \\
        &5:\ x_{k+1} = \mathrm{Proj}_X(x_k - \beta \hat h)

    The series follows benchopt's ``shia`` (:math:`\eta\sum_{q=0}^{Q}`). The official code
    omits the :math:`q = 0` term and the factor η on the sum [CODE quirk, not reproduced].

    Oracle calls per step: ``grad_g`` D, ``grad_f`` 1, ``hvp`` Q, ``cross`` 1.

    References
    ----------
    .. [1] K. Ji, J. Yang, Y. Liang, "Bilevel optimization: convergence analysis and
       enhanced design", ICML 2021.
    .. [2] M. Dagréou, T. Moreau, S. Vaiter, P. Ablin, "A framework for bilevel
       optimization that enables stochastic and global variance reduction algorithms"
       (benchopt bilevel benchmark), NeurIPS 2022.

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import StocBiO
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, StocBiO(n_neumann=50), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=500, hvp=2500, cross=50)
    """

    name: ClassVar[str] = "stocbio"

    lr_outer: float = 0.1
    lr_inner: float = 0.1
    n_inner: int = 10
    n_neumann: int = 10
    eta: float | None = None
    batch_size_outer: int | None = 64
    batch_size_inner: int | None = 64

    def __post_init__(self):
        validate_fields(self, lr_outer=POSITIVE, lr_inner=POSITIVE, n_inner=COUNT,
                        n_neumann=COUNT, eta=POSITIVE_OR_NONE, batch_size_outer=COUNT1_OR_NONE,
                        batch_size_inner=COUNT1_OR_NONE)

    @property
    def neumann_step(self) -> float:
        """The η actually used (``eta``, or ``lr_inner`` when ``eta`` is None)."""
        return self.lr_inner if self.eta is None else self.eta

    def streams(self, problem) -> tuple:
        """D + Q + 1 outer and inner batches per step (batch ``j`` pairs the j-th of each)."""
        n = self.n_inner + self.n_neumann + 1
        return data_streams(problem, self, n, n)

    def init(self, problem, x0=None, y0=None, seed=0) -> StocBiOState:
        x, y = start_point(problem, x0, y0)
        return StocBiOState(x=project_x(problem, x), y=y, seed=resolve_seed(seed))

    def step(self, oracle, state: StocBiOState) -> StocBiOState:
        problem = as_oracle(oracle)
        D, Q = self.n_inner, self.n_neumann
        batches = paired_batches(problem.draw(state, self.streams(problem)), D + Q + 1)
        x = state.x
        y = inner_gd(problem, x, state.y, lr=self.lr_inner, n_steps=D,           # line 1
                     batches=batches[:D])
        fx, fy = problem.grad_f(x, y, batches[D])                   # line 2
        ops = [problem.linearize_g(x, y, b).hvp for b in batches[D + 1:]]  # line 3
        v = neumann_series(ops, fy, eta=self.neumann_step, n_terms=Q)
        h = fx - problem.cross_g(x, y, v, batches[D])                # line 4
        x_new = project_x(problem, x - self.lr_outer * h)                        # line 5
        return evolve(state, x=x_new, y=y, iteration=state.iteration + 1)
