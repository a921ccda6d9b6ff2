r"""Iterative differentiation (ITD): truncated reverse mode through inner gradient descent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._backend import scaled
from ..oracle import as_oracle
from ._common import (COUNT, COUNT1_OR_NONE, FLAG, POSITIVE, project_x, resolve_seed, start_point,
                      validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["ITD", "ITDState", "reverse_hypergradient"]


@dataclass(frozen=True)
class ITDState(SolverState):
    """State of :class:`ITD`.

    Attributes
    ----------
    y_init : array
        The fixed inner start used when ``warm_start=False`` (the ``y0`` of ``init``).
    """

    y_init: Any = None


def reverse_hypergradient(problem, x, y0, *, lr: float, n_steps: int, truncate: int):
    r"""Truncated reverse-mode gradient of :math:`x \mapsto f(x, y_T(x))` (``y0`` fixed).

    Runs the forward pass :math:`y_{t+1} = y_t - \eta\nabla_y g(x, y_t)`, keeping the
    linearisations of ``g`` at the last ``truncate`` iterates, then the backward pass of
    :doc:`/algorithms/baselines`. Returns ``(h, y_T)``.

    Each kept iterate's gradient and its later products share one forward pass
    (:meth:`~refbilevel.problems.base.BilevelProblem.grad_and_linearize_g`; for the
    logistic problem the scores :math:`A y_t`, so a backward HVP reads the data twice, not
    three times). Memory: the K linearisations, each the iterate (``dim_y``) and whatever
    forward state the problem keeps (the ``n`` training scores for the logistic problem);
    each is released once the backward pass has used it.

    Costs ``grad_g`` T, ``grad_f`` 1, ``cross`` K and ``hvp`` K − 1 (the adjoint after the
    last backward step is not needed), with K = ``truncate``, T = ``n_steps``.
    """
    problem = as_oracle(problem)
    K = truncate
    y = y0
    kept = []  # linearisations at the last K iterates y_{T-K}, ..., y_{T-1}
    for t in range(n_steps):
        if t >= n_steps - K:
            gy, lin = problem.grad_and_linearize_g(x, y)   # one forward pass for both
            kept.append(lin)
        else:
            gy = problem.grad_g_y(x, y)
        y = y - scaled(lr, gy)
    fx, fy = problem.grad_f(x, y)
    h, a = fx, fy
    for j in range(K):                        # t = T-1 down to T-K
        lin = kept.pop()                      # J_t and H_t at y_t; released after use
        h = h - scaled(lr, lin.cross(a))
        if j < K - 1:
            a = a - scaled(lr, lin.hvp(a))
    return h, y


@dataclass(frozen=True)
class ITD(Solver):
    r"""Truncated reverse-mode ITD (back-propagation through the last K inner GD steps).

    Parameters
    ----------
    lr_outer : float
        Outer step β (default 1.0: MinimaxOPT Appendix D.1, synthetic logistic HPO [PAPER]).
    lr_inner : float
        Inner GD step η (default 1.0 [PAPER, same source]).
    n_inner : int
        T, inner GD steps per outer step (default 100 [PAPER, same source]).
    truncate : int or None
        K, the number of inner steps back-propagated through; ``None`` means K = T
        (full reverse mode, the default: this project's choice, Shaban et al. study
        K < T). Must satisfy ``1 <= K <= T`` when T > 0.
    warm_start : bool
        ``True`` (default): each outer step starts the inner loop from the previous
        :math:`y_T`, as hypertorch's examples do [CODE]; the start is treated as a constant
        (no gradient flows into earlier outer steps). ``False``: every outer step restarts
        from the ``y0`` given to :meth:`init`, so the step differentiates exactly the
        unrolled map :math:`x \mapsto f(x, y_T(x))` from a fixed start (Franceschi et al.
        2017).

    Notes
    -----
    With :math:`H_t = \nabla^2_{yy} g(x, y_t)`, :math:`J_t = \nabla^2_{xy} g(x, y_t)`
    (:doc:`/algorithms/baselines`, hypertorch ``reverse`` [CODE]):

    .. math::

        &1:\ y_0 = y_T^{\text{prev}} \text{ (warm) or } y_0 = y^{\text{init}} \\
        &2:\ y_{t+1} = y_t - \eta \nabla_y g(x_k, y_t),\quad t = 0, \dots, T-1
              \text{ (store the last K)} \\
        &3:\ a = \nabla_y f(x_k, y_T),\quad h = \nabla_x f(x_k, y_T) \\
        &4:\ \textbf{for } t = T-1 \textbf{ down to } T-K:\quad
              h \leftarrow h - \eta J_t a,\quad a \leftarrow (I - \eta H_t)\, a \\
        &5:\ x_{k+1} = \mathrm{Proj}_X(x_k - \beta h)

    With K = T, ``h`` is the exact gradient of the unrolled objective
    :math:`x \mapsto f(x, y_T(x))` for the fixed start :math:`y_0`. Memory: the K stored
    iterates, :math:`O(K \cdot \mathrm{dim}_y)`, with the forward state the problem keeps
    per point so that the backward products reuse the forward pass of line 2 (for the
    logistic problem the training scores, :math:`O(K \cdot n)`; see
    :func:`reverse_hypergradient`). At a warm-started fixed point
    (:math:`y_0 = y_T = y^*`), ``h`` equals AID's Neumann estimate with K terms,
    :math:`\nabla_x f - J\,\eta\sum_{q=0}^{K-1}(I-\eta H)^q \nabla_y f`.

    Oracle calls per step: ``grad_g`` T, ``grad_f`` 1, ``cross`` K, ``hvp`` K − 1 (the
    adjoint update after the last backward step is skipped; 0 when K = 0).

    References
    ----------
    .. [1] L. Franceschi, M. Donini, P. Frasconi, M. Pontil, "Forward and reverse
       gradient-based hyperparameter optimization", ICML 2017.
    .. [2] A. Shaban, C.-A. Cheng, N. Hatch, B. Boots, "Truncated back-propagation for
       bilevel optimization", AISTATS 2019.
    .. [3] R. Grazzi, L. Franceschi, M. Pontil, S. Salzo, "On the iteration complexity of
       hypergradient computation", ICML 2020.

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import ITD
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, ITD(lr_inner=0.1), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=5000, hvp=4950, cross=5000)
    """

    name: ClassVar[str] = "itd"

    lr_outer: float = 1.0
    lr_inner: float = 1.0
    n_inner: int = 100
    truncate: int | None = None
    warm_start: bool = True

    def __post_init__(self):
        validate_fields(self, lr_outer=POSITIVE, lr_inner=POSITIVE, n_inner=COUNT,
                        truncate=COUNT1_OR_NONE, warm_start=FLAG)
        if self.truncate is not None and self.truncate > self.n_inner:
            raise ValueError(f"truncate must be <= n_inner={self.n_inner}; got {self.truncate}")

    @property
    def n_reverse(self) -> int:
        """K actually used (``truncate``, or T when ``truncate`` is None)."""
        return self.n_inner if self.truncate is None else self.truncate

    def init(self, problem, x0=None, y0=None, seed=0) -> ITDState:
        x, y = start_point(problem, x0, y0)
        return ITDState(x=project_x(problem, x), y=y, y_init=y, seed=resolve_seed(seed))

    def step(self, oracle, state: ITDState) -> ITDState:
        problem = as_oracle(oracle)
        y_start = state.y if self.warm_start else state.y_init                    # line 1
        h, y = reverse_hypergradient(problem, state.x, y_start, lr=self.lr_inner,  # lines 2-4
                                     n_steps=self.n_inner, truncate=self.n_reverse)
        x = project_x(problem, state.x - self.lr_outer * h)                        # line 5
        return evolve(state, x=x, y=y, iteration=state.iteration + 1)
