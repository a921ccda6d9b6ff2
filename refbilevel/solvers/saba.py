r"""SABA: SOBA's directions with SAGA-style variance reduction over fixed minibatches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._backend import device
from ..oracle import as_oracle
from ..problems.base import Batch
from ..sampling import stream_spec
from ._common import (COUNT1_OR_NONE, POSITIVE, SAMPLING, choice, project_x, resolve_seed,
                      start_point, validate_fields)
from .base import Solver, SolverState, evolve
from .soba import LR_SCHEDULES, decayed

__all__ = ["SABA", "SABAState"]


@dataclass(frozen=True)
class SABAState(SolverState):
    r"""State of :class:`SABA`.

    Attributes
    ----------
    v : array
        Tracks :math:`-[\nabla^2_{yy} g]^{-1} \nabla_y f` (``dim_y``), zero at start.
    memory : tuple of array
        The SAGA tables, one row per fixed minibatch: ``(G_y, G_hvp, G_cross)`` of shapes
        ``(m_in, dim_y)``, ``(m_in, dim_y)``, ``(m_in, dim_x)`` (inner batches) and
        ``(F_y, F_x)`` of shapes ``(m_out, dim_y)``, ``(m_out, dim_x)`` (outer batches).
    means : tuple of array
        The row means of the five tables, in the same order (kept, not recomputed).
    """

    v: Any = None
    memory: tuple = ()
    means: tuple = ()


def _n_batches(n: int, size) -> int:
    """Fixed minibatches of ``size`` rows out of ``n`` (1 for full data)."""
    return 1 if size is None or size >= n else n // size


@dataclass(frozen=True)
class SABA(Solver):
    r"""SABA (Dagréou, Ablin, Vaiter, Moreau 2022): SOBA with SAGA variance reduction.

    Parameters
    ----------
    lr_inner : float
        ρ, the step of ``y`` and ``v`` (default 0.1: benchopt ``step_size`` [CODE]).
    lr_outer : float
        γ, the step of ``x`` (default 0.1: benchopt ``step_size / outer_ratio``,
        ``outer_ratio = 1`` [CODE]).
    batch_size_outer, batch_size_inner : int or None
        Rows per fixed minibatch; ``None`` means one batch of all rows (default 64 each,
        benchopt [CODE]).
    lr_schedule : {"constant", "sqrt"}
        Step schedule as in :class:`~refbilevel.solvers.SOBA` (default constant; the
        variance reduction is what lets SABA converge with constant steps).
    sampling : {"epoch", "iid"}
        How the batch index is drawn: each fixed batch once per epoch in a seeded order
        (default, benchopt's shuffled batch order [CODE]) or independently.

    Notes
    -----
    The rows of ``g`` (``n_inner``) are cut into :math:`m_{in} = \lfloor n_{inner}/B\rfloor`
    fixed contiguous batches :math:`\mathcal B_1, \dots, \mathcal B_{m_{in}}` (rows
    :math:`jB .. jB + B - 1`; a remainder shorter than a batch is never read, as in the
    project's epoch streams), and the rows of ``f`` likewise into :math:`m_{out}` batches
    :math:`\mathcal D_l`. The memory holds, per batch, the last value of each of the five
    stochastic terms of SOBA's directions, zero at start (benchopt's ``init_memory="zero"``
    [CODE]). At step :math:`k` a batch index :math:`j` (inner) and :math:`l` (outer) is
    drawn; for each term :math:`\phi` with new value :math:`\phi_j` at the current iterate,
    table :math:`M` and row mean :math:`\bar M`, the SAGA direction is

    .. math::

        \hat\phi = \phi_j - M_j + \bar M, \qquad
        \bar M \leftarrow \bar M + (\phi_j - M_j)/m, \qquad M_j \leftarrow \phi_j .

    With :math:`\phi` running over :math:`\nabla_y g`, :math:`\nabla^2_{yy} g\,v`,
    :math:`\nabla^2_{xy} g\,v` (batch :math:`\mathcal B_j`) and :math:`\nabla_y f`,
    :math:`\nabla_x f` (batch :math:`\mathcal D_l`), the update is SOBA's:

    .. math::

        y_{k+1} = y_k - \rho\, \widehat{\nabla_y g},\quad
        v_{k+1} = v_k - \rho\, (\widehat{\nabla^2_{yy} g\, v} + \widehat{\nabla_y f}),\quad
        x_{k+1} = \mathrm{Proj}_X\big(x_k - \gamma\, (\widehat{\nabla^2_{xy} g\, v}
        + \widehat{\nabla_x f})\big).

    With one batch per level (full data) each direction equals the fresh term, so SABA is
    SOBA exactly; with :math:`B \mid n` and a full memory, :math:`\bar M` is the full-data
    value of the term at the points it was last evaluated, so the directions' variance
    vanishes as the iterates converge and constant steps reach the solution.

    Oracle calls per step: ``grad_g`` 1, ``grad_f`` 1, ``hvp`` 1, ``cross`` 1 (as SOBA;
    the memory is read and written without oracle calls).

    References
    ----------
    .. [1] M. Dagréou, P. Ablin, S. Vaiter, T. Moreau, "A framework for bilevel
       optimization that enables stochastic and global variance reduction algorithms",
       NeurIPS 2022 (Algorithm SABA).
    .. [2] benchopt benchmark_bilevel, ``solvers/saba.py`` (memory per fixed minibatch,
       zero initial memory, shuffled batch order).

    Examples
    --------
    >>> from refbilevel.problems.logreg import LogRegHPO
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import SABA
    >>> problem = LogRegHPO.synthetic(n_samples=80, n_features=8, seed=0)
    >>> solver = SABA(lr_inner=0.5, lr_outer=2.0, batch_size_outer=10, batch_size_inner=10)
    >>> result = run(problem, solver, n_iter=500, metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0] / 10)           # the exact hypergradient norm fell tenfold
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=500, grad_g=500, hvp=500, cross=500)
    """

    name: ClassVar[str] = "saba"

    lr_inner: float = 0.1
    lr_outer: float = 0.1
    batch_size_outer: int | None = 64
    batch_size_inner: int | None = 64
    lr_schedule: str = "constant"
    sampling: str = "epoch"

    def __post_init__(self):
        validate_fields(self, lr_inner=POSITIVE, lr_outer=POSITIVE,
                        batch_size_outer=COUNT1_OR_NONE, batch_size_inner=COUNT1_OR_NONE,
                        lr_schedule=choice(*LR_SCHEDULES), sampling=SAMPLING)

    def _counts(self, problem):
        n_out, n_in = getattr(problem, "n_outer", 1), getattr(problem, "n_inner", 1)
        return (_n_batches(n_out, self.batch_size_outer), _n_batches(n_in, self.batch_size_inner))

    def streams(self, problem) -> tuple:
        """One batch index per level per step: a draw of size 1 out of the batch count."""
        m_out, m_in = self._counts(problem)
        out = []
        if m_out > 1:
            out.append(stream_spec("outer", m_out, 1, 1, self.sampling))
        if m_in > 1:
            out.append(stream_spec("inner", m_in, 1, 1, self.sampling))
        return tuple(out)

    def init(self, problem, x0=None, y0=None, seed=0) -> SABAState:
        x, y = start_point(problem, x0, y0)
        xp = problem.xp
        m_out, m_in = self._counts(problem)
        dx, dy = problem.dim_x, problem.dim_y

        def zeros(*shape):
            return xp.zeros(shape, dtype=y.dtype, device=problem.device)

        memory = (zeros(m_in, dy), zeros(m_in, dy), zeros(m_in, dx), zeros(m_out, dy),
                  zeros(m_out, dx))
        means = (zeros(dy), zeros(dy), zeros(dx), zeros(dy), zeros(dx))
        return SABAState(x=project_x(problem, x), y=y, v=xp.zeros_like(y), memory=memory,
                         means=means, seed=resolve_seed(seed))

    @staticmethod
    def _rows(xp, j, size, device):
        """Device rows ``j*size .. j*size + size - 1`` of fixed batch ``j`` (None: full)."""
        if j is None:
            return None
        return j[0] * size + xp.arange(size, dtype=j.dtype, device=device)

    @staticmethod
    def _saga(xp, table, mean, j, new):
        """``(direction, table, mean)`` after SAGA's update of row ``j`` with ``new``."""
        m = table.shape[0]
        if j is None:                                     # one batch: row 0
            old = table[0, ...]
            onehot = xp.ones((1,), dtype=table.dtype, device=device(table))
        else:
            old = xp.take(table, j, axis=0)[0, ...]
            cols = xp.arange(m, dtype=j.dtype, device=device(table))
            onehot = xp.astype(cols == j[0], table.dtype)
        diff = new - old
        return diff + mean, table + onehot[:, None] * diff[None, :], mean + diff / m

    def step(self, oracle, state: SABAState) -> SABAState:
        problem = as_oracle(oracle)
        xp, dev = problem.xp, problem.device
        draws = problem.draw(state, self.streams(problem))
        j_out = draws.get("outer", [None])[0]
        j_in = draws.get("inner", [None])[0]
        rows_out = self._rows(xp, j_out, self.batch_size_outer, dev)
        rows_in = self._rows(xp, j_in, self.batch_size_inner, dev)
        batch = None if rows_out is None and rows_in is None else Batch(outer=rows_out,
                                                                       inner=rows_in)
        x, y, v = state.x, state.y, state.v
        fx, fy = problem.grad_f(x, y, batch)                     # outer batch D_l
        gy, lin = problem.grad_and_linearize_g(x, y, batch)      # inner batch B_j, one pass
        hv, cv = lin.hvp(v), lin.cross(v)
        news = (gy, hv, cv, fy, fx)
        idx = (j_in, j_in, j_in, j_out, j_out)
        dirs, tables, means = [], [], []
        for table, mean, j, new in zip(state.memory, state.means, idx, news):
            d, t, m = self._saga(xp, table, mean, j, new)
            dirs.append(d)
            tables.append(t)
            means.append(m)
        d_gy, d_hv, d_cv, d_fy, d_fx = dirs
        rho = decayed(self.lr_inner, self.lr_schedule, state.iteration)
        gamma = decayed(self.lr_outer, self.lr_schedule, state.iteration)
        return evolve(
            state, y=y - rho * d_gy, v=v - rho * (d_hv + d_fy),
            x=project_x(problem, x - gamma * (d_cv + d_fx)), memory=tuple(tables),
            means=tuple(means), iteration=state.iteration + 1)

