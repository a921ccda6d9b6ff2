r"""MemCS: memory-efficient double loop with cold-start lower-level variables.

Yang, Si, Lyu and Ji (NeurIPS 2024): "a memory-efficient double-loop algorithm with
cold-start initialization". For each sampled block the lower-level variables start from
a fixed point, run K inner steps, are used for the x/y step and are discarded, so memory
is O(S·dim_z) instead of FOSL's O(n·dim_z). The paper states this structure; the update
rules below are this project's reading of it (:doc:`/algorithms/fosl_memcs` says which
choices are ours and how to select others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._backend import to_host_scalar
from ..oracle import as_oracle
from ._common import COUNT1, resolve_seed, start_point, validate_fields
from .base import Solver, SolverState, evolve
from .fosl import (FOSL, block_directions, block_z_directions, _check_common, _draw_blocks,
                   _n_sampled, _project_y, _streams)

__all__ = ["MemCS", "MemCSState"]


@dataclass(frozen=True)
class MemCSState(SolverState):
    """State of :class:`MemCS`: no block variable of an unsampled block is ever stored.

    Attributes
    ----------
    last_blocks : array of int, shape (S,)
        Blocks sampled by the last step (None before the first step).
    last_z, last_v : array, shape (S, dim_z)
        That step's inner variables after K inner steps, kept **for inspection only** (the
        next step cold-starts and does not read them). None before the first step.
    """

    last_blocks: Any = None
    last_z: Any = None
    last_v: Any = None


@dataclass(frozen=True)
class MemCS(Solver):
    r"""MemCS: cold-start double loop for minimax-bilevel problems.

    Parameters
    ----------
    n_inner : int
        K, inner steps per sampled block and outer step. Default 20 (this project's choice;
        the analysis takes :math:`K` logarithmic in :math:`\lambda/\epsilon`).
    lr_x, lr_y, lr_z, lr_v, lam0, delta, delta_power, n_sampled, y_bounds,
    batch_size_outer, batch_size_inner
        As in :class:`~refbilevel.solvers.fosl.FOSL` (same defaults).

    Notes
    -----
    Step t (:doc:`/algorithms/fosl_memcs`): sample :math:`I_t` (:math:`|I_t| = S`); for
    :math:`i \in I_t` cold-start :math:`z_i^0 = v_i^0 = z_{\text{init}}`
    (``problem.init_z(S)``, zeros by default: this project's cold-start point, set
    by the problem's ``init_z``),
    then for :math:`k = 0..K-1`

    .. math::

        v_i^{k+1} = v_i^k - \eta_v\nabla_z g_i(x_t, v_i^k),\qquad
        z_i^{k+1} = z_i^k - \eta_z[\nabla_z f_i(x_t, y_t, z_i^k) + \lambda\nabla_z g_i(x_t, z_i^k)],

    and the x/y step of FOSL at :math:`(z_i^K, v_i^K)`; the block variables are then
    discarded. Each inner step and the final evaluation draw a fresh minibatch when
    minibatches are used. Oracle calls per step, counted per block: :math:`(K+1)S`
    ``grad_f`` and :math:`2(K+1)S` ``grad_g``.

    References
    ----------
    .. [1] Yang, Y., Si, X., Lyu, S. and Ji, K. (2024). First-order minimax bilevel
           optimization. NeurIPS. (OpenReview GZoAUVSkaw)

    Examples
    --------
    >>> from refbilevel import MinimaxQuadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import MemCS
    >>> problem = MinimaxQuadratic.random(4, 2, 2, 3, seed=0)
    >>> result = run(problem, MemCS(), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact saddle-gradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=4200, grad_g=8400, hvp=0, cross=0)
    """

    name = "memcs"
    minimax = True

    n_inner: int = 20
    lr_x: float = 0.05
    lr_y: float = 0.1
    lr_z: float = 0.01
    lr_v: float = 0.1
    lam0: float = 10.0
    delta: float = 0.0
    delta_power: float = 0.0
    n_sampled: int | None = None
    y_bounds: tuple | None = None
    batch_size_outer: int | None = None
    batch_size_inner: int | None = None

    def __post_init__(self):
        validate_fields(self, n_inner=COUNT1)
        _check_common(self)

    next_multiplier = FOSL.next_multiplier
    _increment = FOSL._increment

    def streams(self, problem) -> tuple:
        """The blocks (S of n) and K+1 outer and inner batches per step."""
        return _streams(self, problem, self.n_inner + 1)

    def inner_residual(self, problem, state) -> float:
        r""":math:`\|\nabla_z g(x, z)\|` on the last step's blocks at their final ``z``
        (NaN before the first step: the state holds no block variable)."""
        if state.last_z is None:
            return math.nan
        xp = problem.xp
        gz = problem.grad_g(state.x, state.last_z, state.last_blocks)[1]
        return to_host_scalar(xp.sqrt(xp.sum(gz * gz)))

    def init(self, problem, x0, y0, seed=0) -> MemCSState:
        x0, y0 = start_point(problem, x0, y0)
        self.streams(problem)                                     # validates n_sampled
        return MemCSState(x=x0, y=y0, iteration=0, multiplier=self.lam0, seed=resolve_seed(seed))

    def step(self, oracle, state: MemCSState) -> MemCSState:
        problem = as_oracle(oracle)
        xp = problem.xp
        x, y, lam, t = state.x, state.y, state.multiplier, state.iteration
        K = self.n_inner
        S = _n_sampled(self, problem)
        idx, _, batches = _draw_blocks(problem, self, state, K + 1)   # sample I_t
        z = problem.init_z(S)                                       # cold start z_i^0
        v = xp.asarray(z, copy=True)                                # cold start v_i^0
        for k in range(K):
            d_z, d_v = block_z_directions(problem, x, y, z, v, idx, lam, batches[k])
            v = v - self.lr_v * d_v                                 # v^{k+1} = v^k − η_v ∇_z g_i
            z = z - self.lr_z * d_z                                 # z^{k+1} = z^k − η_z(∇_z f_i + λ∇_z g_i)
        _, _, d_x, g_y = block_directions(problem, x, y, z, v, idx, lam, batches[K])
        y_next = _project_y(problem, self, y + self.lr_y * g_y)     # ascent on y at z^K
        x_next = x - self.lr_x * d_x                                # descent on x at (z^K, v^K)
        return evolve(state, x=x_next, y=y_next, iteration=t + 1,
                       multiplier=self.next_multiplier(lam, t),
                       last_blocks=idx, last_z=z, last_v=v)          # kept for inspection only
