r"""FOSL: fully single-loop first-order method for minimax-bilevel problems.

Yang, Si, Lyu and Ji (NeurIPS 2024) solve

.. math::

    \min_x \max_y \frac1n \sum_{i=1}^n f_i(x, y, z_i^*(x)), \qquad
    z_i^*(x) = \arg\min_z g_i(x, z),

through the per-block penalty (:doc:`/algorithms/fosl_memcs`)
:math:`L_\lambda = \frac1n\sum_i [f_i(x, y, z_i) + \lambda(g_i(x, z_i) - g_i(x, v_i))]`,
updating x, y and every sampled block's ``z_i`` and ``v_i`` at once. The paper states the
penalty and the single-loop structure with partial block participation; the exact
update order and step sizes below are this project's reading of it, marked
[RECONSTRUCTED] in :doc:`/algorithms/fosl_memcs`, which also says how to select the
alternatives (``gauss_seidel``, ``delta``, ``y_bounds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .._backend import device, stack, to_host_scalar
from ..optim import inverse_power
from ..oracle import as_oracle
from ..sampling import stream_spec
from ._common import (BOUNDS, COUNT1_OR_NONE, FLAG, NONNEGATIVE, POSITIVE, data_streams,
                      memo_streams, paired_batches, resolve_seed, start_point,
                      validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["FOSL", "FOSLState", "block_directions", "block_z_directions", "scatter_rows"]


def scatter_rows(xp, z, idx, rows):
    """``z`` with rows ``idx`` replaced by ``rows`` (out of place, standard-only).

    Uses a one-hot match (``n × S``) and a gather instead of fancy ``__setitem__``, which
    the array API does not have; ``idx`` must hold distinct indices.
    """
    n = z.shape[0]
    dev = device(z)
    match = xp.arange(n, device=dev)[:, None] == idx[None, :]           # (n, S)
    hit = xp.any(match, axis=1)
    pos = xp.argmax(xp.astype(match, xp.int32), axis=1)                  # column of the match
    return xp.where(hit[:, None], xp.take(rows, pos, axis=0), z)


@dataclass(frozen=True)
class FOSLState(SolverState):
    """State of :class:`FOSL`.

    Attributes
    ----------
    z, v : array, shape (n_blocks, dim_z)
        Lower-level variables of **all** blocks: ``z_i`` tracks
        :math:`\\arg\\min_z f_i + \\lambda g_i`, ``v_i`` tracks :math:`z_i^*(x)`.
    """

    z: Any = None
    v: Any = None


def _check_common(solver):
    validate_fields(solver, lr_x=POSITIVE, lr_y=POSITIVE, lr_z=POSITIVE, lr_v=POSITIVE,
                    lam0=POSITIVE, delta=NONNEGATIVE, delta_power=NONNEGATIVE,
                    n_sampled=COUNT1_OR_NONE, batch_size_outer=COUNT1_OR_NONE,
                    batch_size_inner=COUNT1_OR_NONE, y_bounds=BOUNDS)


def _streams(solver, problem, n_batches):
    """The block stream (S of n blocks, one draw) and ``n_batches`` outer and inner batches."""
    n_blocks = getattr(problem, "problem", problem).n_blocks

    def build():
        if solver.n_sampled is not None and solver.n_sampled > n_blocks:
            raise ValueError(f"n_sampled must be <= the problem's n_blocks = {n_blocks}; "
                             f"got {solver.n_sampled}")
        blocks = stream_spec("blocks", n_blocks, solver.n_sampled)
        return (blocks, *data_streams(problem, solver, n_batches, n_batches))

    return memo_streams(solver, ("blocks", n_blocks, n_batches), build)


def _draw_blocks(problem, solver, state, n_batches):
    """``(idx, full, batches)``: the step's blocks (device int64), whether all blocks take
    part, and its ``n_batches`` batches, all from one transfer."""
    draws = problem.draw(state, _streams(solver, problem, n_batches))
    (idx,) = draws["blocks"]
    full = idx is None
    if full:
        idx = problem.all_blocks()
    return idx, full, paired_batches(draws, n_batches)


def _n_sampled(solver, problem):
    return problem.n_blocks if solver.n_sampled is None else solver.n_sampled


def block_directions(problem, x, y, z, v, idx, lam, batch):
    """Oracles of one penalty evaluation on blocks ``idx`` (1 grad_f + 2 grad_g calls per block;
    the two g-points share one stacked ``grad_g_many`` call).

    Returns ``(d_z, d_v, d_x, g_y)``: per-block z and v directions (descent), the x
    direction and the y gradient (ascent), at the given point.
    """
    fx, fy, fz = problem.grad_f(x, y, z, idx, batch)
    zv = stack([z, v], xp=problem.xp)
    gxs, gzs = problem.grad_g_many(x, zv, idx, batch)          # one data pass
    d_z = fz + lam * gzs[0, ...]              # ∇_z f_i + λ ∇_z g_i(x, z_i)
    d_v = gzs[1, ...]                         # ∇_z g_i(x, v_i)
    d_x = fx + lam * (gxs[0, ...] - gxs[1, ...])  # (1/S) Σ [∇_x f_i + λ(∇_x g_i(z_i) − ∇_x g_i(v_i))]
    return d_z, d_v, d_x, fy


def block_z_directions(problem, x, y, z, v, idx, lam, batch):
    """Only the per-block z and v directions of :func:`block_directions` (same call count).

    Uses the z-only oracles, which skip the x- and y-gradients (for data-bound problems
    a pass over the data each) that an inner step would discard.
    """
    fz = problem.grad_f_z(x, y, z, idx, batch)
    gzs = problem.grad_g_z_many(x, stack([z, v], xp=problem.xp), idx, batch)
    return fz + lam * gzs[0, ...], gzs[1, ...]


def _project_y(problem, solver, y):
    if solver.y_bounds is None:
        return y
    return problem.xp.clip(y, min=solver.y_bounds[0], max=solver.y_bounds[1])


@dataclass(frozen=True)
class FOSL(Solver):
    r"""FOSL: fully single-loop penalty method with full or partial block participation.

    Parameters
    ----------
    lr_x, lr_y, lr_z, lr_v : float
        Step sizes :math:`\eta_x` (descent), :math:`\eta_y` (ascent), :math:`\eta_z`,
        :math:`\eta_v`. Defaults 0.05, 0.1, 0.01, 0.1 (this project's choice,
        following the theory's orders :math:`\eta_x \ll \eta_y`,
        :math:`\eta_z \approx 1/(L_f + \lambda L_g)`, :math:`\eta_v \approx 1/L_g`: with
        λ = 10 the z step on g is λη_z = 0.1, the v step 0.1).
    lam0 : float
        Penalty multiplier :math:`\lambda_0` (constant unless ``delta > 0``). Default 10.0 (this
        project's choice; the paper's experiments use a constant λ).
    delta, delta_power : float
        Optional increasing multiplier :math:`\lambda_{t+1} = \lambda_t + \delta/(t+1)^p`.
        Default 0: a constant λ (this project's option for an increasing one).
    n_sampled : int or None
        S, blocks per step; ``None`` is full participation [PAPER: partial participation].
    gauss_seidel : bool
        Take the x/y step at the updated ``z``, ``v`` (Gauss-Seidel) instead of the iterate
        ``t`` (Jacobi, default; both readings fit the paper's description, the choice is
        this project's). Costs a second oracle evaluation per block.
    y_bounds : tuple of float or None
        Box for ``Proj_Y`` (default none: the problems here have unconstrained y).
    batch_size_outer, batch_size_inner : int or None
        Minibatches for f (ξ) and for both g's (ζ); ``None`` is full data.

    Notes
    -----
    Step t (:doc:`/algorithms/fosl_memcs`), with sampled blocks :math:`I_t`, :math:`|I_t| = S`:

    .. math::

        v_i &\leftarrow v_i - \eta_v \nabla_z g_i(x_t, v_i),\qquad
        z_i \leftarrow z_i - \eta_z\,[\nabla_z f_i(x_t, y_t, z_i) + \lambda\nabla_z g_i(x_t, z_i)],
        \quad i \in I_t,\\
        y_{t+1} &= \mathrm{Proj}_Y\Bigl(y_t + \frac{\eta_y}{S}\sum_{i\in I_t}\nabla_y f_i(x_t, y_t, z_i^t)\Bigr),\\
        x_{t+1} &= x_t - \frac{\eta_x}{S}\sum_{i \in I_t}\bigl[\nabla_x f_i(x_t, y_t, z_i^t)
                  + \lambda(\nabla_x g_i(x_t, z_i^t) - \nabla_x g_i(x_t, v_i^t))\bigr].

    The state stores ``z`` and ``v`` for all ``n`` blocks (O(n·dim_z) memory, the cost
    :class:`~refbilevel.solvers.memcs.MemCS` removes). Blocks outside :math:`I_t` keep their
    values. Oracle calls per step, counted per block (a call on S blocks counts S): S
    ``grad_f`` and 2S ``grad_g`` (Jacobi); twice that with ``gauss_seidel=True``.

    References
    ----------
    .. [1] Yang, Y., Si, X., Lyu, S. and Ji, K. (2024). First-order minimax bilevel
           optimization. NeurIPS. (OpenReview GZoAUVSkaw)
    .. [2] Kwon, J., Kwon, D., Wright, S. and Nowak, R. (2023). A fully first-order method
           for stochastic bilevel optimization. ICML. (the penalty)

    Examples
    --------
    >>> from refbilevel import MinimaxQuadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import FOSL
    >>> problem = MinimaxQuadratic.random(4, 2, 2, 3, seed=0)
    >>> result = run(problem, FOSL(), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact saddle-gradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=200, grad_g=400, hvp=0, cross=0)
    """

    name = "fosl"
    minimax = True

    lr_x: float = 0.05
    lr_y: float = 0.1
    lr_z: float = 0.01
    lr_v: float = 0.1
    lam0: float = 10.0
    delta: float = 0.0
    delta_power: float = 0.0
    n_sampled: int | None = None
    gauss_seidel: bool = False
    y_bounds: tuple | None = None
    batch_size_outer: int | None = None
    batch_size_inner: int | None = None

    def __post_init__(self):
        _check_common(self)
        validate_fields(self, gauss_seidel=FLAG)

    def next_multiplier(self, lam: float, t: int) -> float:
        """:math:`\\lambda_{t+1} = \\lambda_t + \\delta/(t+1)^p` (host float)."""
        if self.delta == 0.0:
            return lam
        return lam + self._increment(t)

    @cached_property
    def _increment(self):
        r""":math:`\delta/(t+1)^p` (:func:`refbilevel.optim.inverse_power`, built once)."""
        return inverse_power(self.delta, self.delta_power)

    def streams(self, problem) -> tuple:
        """The blocks (S of n) and one outer and one inner batch per step."""
        return _streams(self, problem, 1)

    def inner_residual(self, problem, state) -> float:
        r""":math:`\|\nabla_z g(x, z)\|` over all blocks (the state holds every ``z_i``)."""
        xp = problem.xp
        gz = problem.grad_g(state.x, state.z, problem.all_blocks())[1]
        return to_host_scalar(xp.sqrt(xp.sum(gz * gz)))

    def init(self, problem, x0, y0, seed=0) -> FOSLState:
        """``z = v = problem.init_z()`` for all blocks."""
        x0, y0 = start_point(problem, x0, y0)
        self.streams(problem)                                     # validates n_sampled
        z0 = problem.init_z()
        return FOSLState(x=x0, y=y0, z=z0, v=problem.xp.asarray(z0, copy=True), iteration=0,
                         multiplier=self.lam0, seed=resolve_seed(seed))

    def step(self, oracle, state: FOSLState) -> FOSLState:
        problem = as_oracle(oracle)
        xp = problem.xp
        x, y, lam, t = state.x, state.y, state.multiplier, state.iteration
        idx, full, (batch,) = _draw_blocks(problem, self, state, 1)   # I_t; ξ (f), ζ (both g)
        z_I = state.z if full else xp.take(state.z, idx, axis=0)
        v_I = state.v if full else xp.take(state.v, idx, axis=0)
        d_z, d_v, d_x, g_y = block_directions(problem, x, y, z_I, v_I, idx, lam, batch)
        v_new = v_I - self.lr_v * d_v                            # v_i ← v_i − η_v ∇_z g_i(x_t, v_i)
        z_new = z_I - self.lr_z * d_z                            # z_i ← z_i − η_z (∇_z f_i + λ∇_z g_i)
        if self.gauss_seidel:                                    # x/y step at z^{t+1}, v^{t+1}
            _, _, d_x, g_y = block_directions(problem, x, y, z_new, v_new, idx, lam, batch)
        y_next = _project_y(problem, self, y + self.lr_y * g_y)  # ascent on y
        x_next = x - self.lr_x * d_x                             # descent on x
        if full:
            z_all, v_all = z_new, v_new
        else:
            z_all = scatter_rows(xp, state.z, idx, z_new)
            v_all = scatter_rows(xp, state.v, idx, v_new)
        return evolve(state, x=x_next, y=y_next, z=z_all, v=v_all, iteration=t + 1,
                       multiplier=self.next_multiplier(lam, t))

