r"""Penalty baselines with a fixed multiplier: V-PBGD and F2BA.

Both minimise the penalty Lagrangian (:doc:`/theory/penalty`),

.. math::

    L_\lambda(x, y) = f(x, y) + \lambda\,\big(g(x, y) - g^*(x)\big),\qquad
    \nabla_x g^*(x) = \nabla_x g(x, y^*(x)),

with :math:`g^*` estimated by an auxiliary inner iterate. For a fixed λ their fixed point
(with an exact auxiliary iterate) is the stationary point :math:`x_\lambda` of
:math:`L^*_\lambda(x) = \min_y L_\lambda(x, y)`, with :math:`\|x_\lambda - x^*\| = O(1/\lambda)`
(:meth:`refbilevel.problems.quadratic.Quadratic.penalty_solution`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .._backend import stack
from ..oracle import as_oracle
from ._common import (COUNT, POSITIVE, choice, inner_gd, project_x, resolve_seed,
                      start_point, validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["F2BA", "PenaltyState", "VPBGD"]


@dataclass(frozen=True)
class PenaltyState(SolverState):
    r"""State of :class:`VPBGD` and :class:`F2BA`.

    Attributes
    ----------
    z : array
        The auxiliary inner iterate (:math:`\hat y` for V-PBGD, ``z`` for F2BA) that
        estimates :math:`y^*(x)`; ``multiplier`` holds the fixed λ (γ).
    """

    z: Any = None


@dataclass(frozen=True)
class VPBGD(Solver):
    r"""V-PBGD (Shen & Chen 2023): penalty gradient descent with a value-function estimate.

    Parameters
    ----------
    lam : float
        The penalty constant λ (γ in the paper) (default 10, this project's choice; the theory takes γ ~ ε^{-1/2}).
    lr_outer, lr_inner : float
        Steps of ``x`` and ``y`` (the paper uses one α for both; default 0.01 each, ours).
        With ``y_direction="penalty"`` the y-direction is about γ·L_g-smooth, so
        ``lr_inner`` must be below about 1/(γ L_g).
    lr_hat : float
        Step β of the GD that computes :math:`\hat y` (default 0.1, ours).
    n_inner : int
        :math:`T_k = T`, GD steps for :math:`\hat y` (default 10, ours).
    y_direction : {"penalty", "normalized"}
        ``"penalty"``: :math:`\nabla_y f + \gamma\nabla_y g(x_k, y_k)` (the penalty
        gradient, as in the paper's algorithm); ``"normalized"``:
        :math:`\nabla_y f/\gamma + \nabla_y g(x_k, y_k)` (the
        F2BA repository's PBGD variant [CODE]). Both have the same fixed point. The
        ``∇_y g`` term is evaluated at :math:`y_k` in both: the script evaluates it at
        :math:`\hat y`, a slip of that script (the penalty's y-gradient is taken at y_k); it is not reproduced.
    yhat_start : {"y", "previous"}
        Start of the :math:`\hat y` loop: :math:`y_k` (default; the paper and the F2BA code
        reset :math:`\hat y \leftarrow y_k` [CODE]) or the previous :math:`\hat y` (warm
        start; then :math:`\hat y \to y^*(x)` at a fixed point, which makes the fixed point
        exactly :math:`x_\gamma`).

    Notes
    -----
    :doc:`/algorithms/baselines` (projections are the identity unless the problem has a box on x):

    .. math::

        &1:\ \hat y \leftarrow y_k \text{ (or the previous } \hat y);\quad
             \hat y \leftarrow \hat y - \beta \nabla_y g(x_k, \hat y)\ \ (T \text{ times}) \\
        &2:\ d_x = \nabla_x f(x_k, y_k) + \gamma\big(\nabla_x g(x_k, y_k)
             - \nabla_x g(x_k, \hat y)\big) \\
        &3:\ d_y = \nabla_y f(x_k, y_k) + \gamma \nabla_y g(x_k, y_k)
             \quad (\text{or } \nabla_y f/\gamma + \nabla_y g) \\
        &4:\ x_{k+1} = \mathrm{Proj}_X(x_k - \alpha_x d_x),\quad y_{k+1} = y_k - \alpha_y d_y

    Fixed point: :math:`(x_\gamma, y_\gamma(x_\gamma))` when :math:`\hat y = y^*(x)`; with
    ``yhat_start="y"`` the gap :math:`\hat y - y^*` at the fixed point decays geometrically
    in T, and so does the distance of the fixed point to :math:`x_\gamma`.

    Oracle calls per step: ``grad_g`` T + 2 (one stacked call at :math:`(y_k, \hat y)`),
    ``grad_f`` 1.

    References
    ----------
    .. [1] H. Shen, T. Chen, "On penalty-based bilevel gradient descent method",
       ICML 2023.

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import VPBGD
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, VPBGD(lr_outer=0.1, yhat_start='previous'), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=600, hvp=0, cross=0)
    """

    name: ClassVar[str] = "vpbgd"

    lam: float = 10.0
    lr_outer: float = 0.01
    lr_inner: float = 0.01
    lr_hat: float = 0.1
    n_inner: int = 10
    y_direction: str = "penalty"
    yhat_start: str = "y"

    def __post_init__(self):
        validate_fields(self, lam=POSITIVE, lr_outer=POSITIVE, lr_inner=POSITIVE,
                        lr_hat=POSITIVE, n_inner=COUNT,
                        y_direction=choice("penalty", "normalized"),
                        yhat_start=choice("y", "previous"))

    def init(self, problem, x0=None, y0=None, seed=0) -> PenaltyState:
        x, y = start_point(problem, x0, y0)
        return PenaltyState(x=project_x(problem, x), y=y, z=y, multiplier=self.lam,
                            seed=resolve_seed(seed))

    def step(self, oracle, state: PenaltyState) -> PenaltyState:
        problem = as_oracle(oracle)
        xp, gamma = problem.xp, self.lam
        x, y = state.x, state.y
        start = y if self.yhat_start == "y" else state.z                          # line 1
        y_hat = inner_gd(problem, x, start, lr=self.lr_hat, n_steps=self.n_inner)
        fx, fy = problem.grad_f(x, y)
        gxs, gys = problem.grad_g_many(x, stack([y, y_hat], xp=xp))
        d_x = fx + gamma * (gxs[0, ...] - gxs[1, ...])                           # line 2
        if self.y_direction == "penalty":                                        # line 3
            d_y = fy + gamma * gys[0, ...]
        else:
            d_y = fy / gamma + gys[0, ...]
        return evolve(                                                           # line 4
            state, x=project_x(problem, x - self.lr_outer * d_x), y=y - self.lr_inner * d_y,
            z=y_hat, iteration=state.iteration + 1)


@dataclass(frozen=True)
class F2BA(Solver):
    r"""F2BA (Chen, Ma, Zhang 2023): fully first-order penalty method with a fixed λ.

    Parameters
    ----------
    lam : float
        The multiplier λ (default 10, the F2BA repository's HPO script [CODE]).
    lr_inner : float
        η, the step of ``y`` and ``z`` in the inner loop (default 0.1, ours).
    lr_outer : float
        :math:`\eta_x`, the step of ``x`` (default 0.1, ours; the x-direction carries the
        factor λ, as in the script).
    n_inner : int
        T, simultaneous ``y``/``z`` steps per outer step (default 10, ours).
    z_start : {"y", "previous"}
        ``"y"``: ``z ← y`` at the start of every outer step (the script [CODE]);
        ``"previous"``: ``z`` warm-starts from its last value, so that ``z → y*(x)`` at a
        fixed point (then the fixed point is exactly :math:`x_\lambda`).

    Notes
    -----
    :doc:`/algorithms/baselines`:

    .. math::

        &1:\ z \leftarrow y_k \text{ (or the previous } z) \\
        &2:\ \textbf{repeat } T:\ z \leftarrow z - \eta\nabla_y g(x_k, z),\quad
             y \leftarrow y - \eta\big(\nabla_y f(x_k, y)/\lambda + \nabla_y g(x_k, y)\big)
             \ \text{(simultaneous)} \\
        &3:\ x_{k+1} = \mathrm{Proj}_X\Big(x_k - \eta_x\big(\nabla_x f(x_k, y)
             + \lambda(\nabla_x g(x_k, y) - \nabla_x g(x_k, z))\big)\Big)

    Fixed point: :math:`(x_\lambda, y_\lambda(x_\lambda), y^*(x_\lambda))` with
    ``z_start="previous"`` (up to the inner-loop accuracy, which is exact at a fixed
    point); with ``z_start="y"`` the fixed point's distance to :math:`x_\lambda` decays
    geometrically in T.

    Oracle calls per step: ``grad_g`` 2T + 2 (a stacked call at ``(z, y)`` per inner step
    and one for the x-step), ``grad_f`` T + 1.

    References
    ----------
    .. [1] L. Chen, Y. Ma, J. Zhang, "Near-optimal nonconvex-strongly-convex bilevel
       optimization with fully first-order oracles", arXiv 2306.14853, 2023.
    .. [2] J. Kwon, D. Kwon, S. Wright, R. Nowak, "A fully first-order method for
       stochastic bilevel optimization", ICML 2023 (the penalty Lagrangian).

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import F2BA
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, F2BA(z_start='previous'), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=550, grad_g=1100, hvp=0, cross=0)
    """

    name: ClassVar[str] = "f2ba"

    lam: float = 10.0
    lr_inner: float = 0.1
    lr_outer: float = 0.1
    n_inner: int = 10
    z_start: str = "y"

    def __post_init__(self):
        validate_fields(self, lam=POSITIVE, lr_inner=POSITIVE, lr_outer=POSITIVE,
                        n_inner=COUNT, z_start=choice("y", "previous"))

    def init(self, problem, x0=None, y0=None, seed=0) -> PenaltyState:
        x, y = start_point(problem, x0, y0)
        return PenaltyState(x=project_x(problem, x), y=y, z=y, multiplier=self.lam,
                            seed=resolve_seed(seed))

    def step(self, oracle, state: PenaltyState) -> PenaltyState:
        problem = as_oracle(oracle)
        xp, lam, eta = problem.xp, self.lam, self.lr_inner
        x, y = state.x, state.y
        z = y if self.z_start == "y" else state.z                                 # line 1
        for _ in range(self.n_inner):                                             # line 2
            gys = problem.grad_g_y_many(x, stack([z, y], xp=xp))
            fy = problem.grad_f_y(x, y)
            z, y = z - eta * gys[0, ...], y - eta * (fy / lam + gys[1, ...])
        fx = problem.grad_f_x(x, y)                                               # line 3
        gxs = problem.grad_g_x_many(x, stack([y, z], xp=xp))
        x_new = project_x(problem, x - self.lr_outer * (fx + lam * (gxs[0, ...] - gxs[1, ...])))
        return evolve(state, x=x_new, y=y, z=z, iteration=state.iteration + 1)
