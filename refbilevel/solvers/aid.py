r"""Approximate implicit differentiation (AID) with conjugate gradient or a Neumann series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._backend import zeros_like
from ..linalg import conjugate_gradient, fixed_point, neumann_series
from ..oracle import as_oracle
from ._common import (COUNT, FLAG, POSITIVE, POSITIVE_OR_NONE, choice, inner_gd, project_x,
                      resolve_seed, start_point, validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["AID", "AIDState"]


@dataclass(frozen=True)
class AIDState(SolverState):
    """State of :class:`AID`.

    Attributes
    ----------
    v : array
        The last solution of :math:`H v = \\nabla_y f` (``dim_y``), kept for warm starts.
    """

    v: Any = None


@dataclass(frozen=True)
class AID(Solver):
    r"""AID: warm-started inner gradient descent, then a linear solve for the hypergradient.

    Parameters
    ----------
    lr_outer : float
        Outer step β (default 1.0: MinimaxOPT Appendix D.1, synthetic logistic HPO
        [PAPER]).
    lr_inner : float
        Inner GD step α (default 1.0, same source [PAPER]).
    n_inner : int
        T, inner GD steps per outer step (default 100 [PAPER, same source]).
    n_linear : int
        K, the number of Hessian-vector products of the linear solver (default 10, this
        project's choice; MinimaxOPT's comparison does not fix it in a form used here).
    method : {"cg", "neumann"}
        ``"cg"``: K conjugate-gradient steps on :math:`H v = \nabla_y f`
        (hypertorch ``CG`` [CODE]); ``"neumann"``: the truncated Neumann series
        :math:`\eta\sum_{q=0}^{K}(I-\eta H)^q \nabla_y f` (K + 1 terms; equal to K + 1
        fixed-point steps from zero, hypertorch ``fixed_point``/``neumann`` [CODE]).
    eta : float or None
        Neumann / fixed-point step η; ``None`` uses ``lr_inner`` (hypertorch builds the
        fixed-point map from the inner GD map [CODE]). Needs :math:`\eta < 2/L_g`.
    warm_start_v : bool
        Start the linear solver from the previous ``v`` instead of 0 (default False, as in
        hypertorch). For ``"cg"`` this costs one extra HVP (the initial residual); for
        ``"neumann"`` it runs K fixed-point steps from the previous ``v``.

    Notes
    -----
    With :math:`H = \nabla^2_{yy} g`, :math:`J = \nabla^2_{xy} g` (:doc:`/algorithms/baselines`,
    Grazzi et al. 2020):

    .. math::

        &1:\ \textbf{for } k = 0, 1, \dots \\
        &2:\quad y \leftarrow y - \alpha \nabla_y g(x_k, y)\quad (T \text{ times, warm start}) \\
        &3:\quad (a, b) = (\nabla_x f(x_k, y), \nabla_y f(x_k, y)) \\
        &4:\quad v \approx H(x_k, y)^{-1} b\quad (K \text{ CG steps, or }
              v = \eta \textstyle\sum_{q=0}^{K} (I - \eta H)^q b) \\
        &5:\quad \hat h = a - J(x_k, y)\, v \\
        &6:\quad x_{k+1} = \mathrm{Proj}_X(x_k - \beta \hat h)

    With ``method="cg"``, ``n_linear = dim_y`` and ``y = y*(x)``, :math:`\hat h` is the
    exact hypergradient (in exact arithmetic).

    Oracle calls per step: ``grad_g`` T, ``grad_f`` 1, ``hvp`` K (K + 1 for warm-started
    CG), ``cross`` 1.

    References
    ----------
    .. [1] R. Grazzi, L. Franceschi, M. Pontil, S. Salzo, "On the iteration complexity of
       hypergradient computation", ICML 2020.
    .. [2] F. Pedregosa, "Hyperparameter optimization with approximate gradient", ICML 2016.
    .. [3] J. Lorraine, P. Vicol, D. Duvenaud, "Optimizing millions of hyperparameters by
       implicit differentiation", AISTATS 2020 (Neumann series).

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import AID
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, AID(lr_inner=0.1), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=5000, hvp=500, cross=50)
    """

    name: ClassVar[str] = "aid"

    lr_outer: float = 1.0
    lr_inner: float = 1.0
    n_inner: int = 100
    n_linear: int = 10
    method: str = "cg"
    eta: float | None = None
    warm_start_v: bool = False

    def __post_init__(self):
        validate_fields(self, lr_outer=POSITIVE, lr_inner=POSITIVE, n_inner=COUNT,
                        n_linear=COUNT, method=choice("cg", "neumann"), eta=POSITIVE_OR_NONE,
                        warm_start_v=FLAG)

    @property
    def neumann_step(self) -> float:
        """The η actually used (``eta``, or ``lr_inner`` when ``eta`` is None)."""
        return self.lr_inner if self.eta is None else self.eta

    def init(self, problem, x0=None, y0=None, seed=0) -> AIDState:
        x, y = start_point(problem, x0, y0)
        return AIDState(x=project_x(problem, x), y=y, v=problem.xp.zeros_like(y),
                        seed=resolve_seed(seed))

    def solve_linear(self, hvp, b, v_prev):
        """Line 4: approximate ``H^{-1} b`` with the HVP ``hvp`` (K or K + 1 calls)."""
        K = self.n_linear
        if self.method == "cg":
            return conjugate_gradient(hvp, b, n_iter=K, x0=v_prev if self.warm_start_v else None)
        if self.warm_start_v:
            return fixed_point(hvp, b, eta=self.neumann_step, n_iter=K, x0=v_prev)
        return neumann_series(hvp, b, eta=self.neumann_step, n_terms=K)

    def hypergradient_estimate(self, problem, x, y, v_prev=None):
        """Lines 3-5 at a given ``(x, y)``: returns ``(h, v)``.

        ``v_prev`` is the warm start of the linear solver (used only when
        ``warm_start_v``; zero when None). Costs one ``grad_f``, the HVPs of
        :meth:`solve_linear` and one ``cross``.
        """
        problem = as_oracle(problem)
        if v_prev is None:
            v_prev = zeros_like(y, xp=problem.xp)
        fx, fy = problem.grad_f(x, y)                                              # line 3
        lin = problem.linearize_g(x, y)         # H and J at (x, y), applied K + 1 times
        v = self.solve_linear(lin.hvp, fy, v_prev)                                 # line 4
        return fx - lin.cross(v), v                                                # line 5

    def step(self, oracle, state: AIDState) -> AIDState:
        problem = as_oracle(oracle)
        x = state.x
        y = inner_gd(problem, x, state.y, lr=self.lr_inner, n_steps=self.n_inner)  # line 2
        h, v = self.hypergradient_estimate(problem, x, y, state.v)                 # lines 3-5
        x_new = project_x(problem, x - self.lr_outer * h)                          # line 6
        return evolve(state, x=x_new, y=y, v=v, iteration=state.iteration + 1)
