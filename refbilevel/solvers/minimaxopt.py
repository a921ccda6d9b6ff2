r"""MinimaxOPT: multi-stage gradient descent-ascent on the minimax reformulation.

Wang, Pan, Pi and Zhang (2023) replace the bilevel problem by

.. math::

    \min_{x \in X,\, y} \max_z\; L_\alpha(x, y, z) = f(x, y) + \alpha\,[g(x, y) - g(x, z)]

and run simultaneous gradient descent (x, y) / ascent (z) in stages, multiplying
:math:`\alpha` by :math:`\tau` per stage and the step sizes by :math:`\tau^{-1}`
(:doc:`/algorithms/minimaxopt`). :class:`MinimaxOPT` is Algorithm 1 (deterministic, full batch);
:class:`MinimaxOPTStochastic` is the same class with the defaults of Algorithm 2
(Appendix D.2: minibatches, heavy-ball momentum, cosine schedule).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

from .._backend import stack
from .._validation import check_real
from ..optim import cosine, momentum, sgd, stage_multiplier, stagewise
from ..oracle import as_oracle
from ._common import (BOUNDS, COUNT1, COUNT1_OR_NONE, FRACTION, NONNEGATIVE, POSITIVE,
                      POSITIVE_OR_NONE, SAMPLING, choice, data_streams, paired_batches, project_x,
                      resolve_seed, start_point, validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["MinimaxOPT", "MinimaxOPTState", "MinimaxOPTStochastic"]


@dataclass(frozen=True)
class MinimaxOPTState(SolverState):
    """State of :class:`MinimaxOPT`.

    Attributes
    ----------
    z : array
        Auxiliary copy of ``y`` (ascent variable, tracks :math:`y^*(x)`).
    opt_x, opt_y, opt_z : NamedTuple
        Optimiser states (:func:`refbilevel.optim.sgd` or :func:`~refbilevel.optim.momentum`).
    multiplier : float
        The α the next step uses.
    """

    z: Any = None
    opt_x: Any = None
    opt_y: Any = None
    opt_z: Any = None


@dataclass(frozen=True)
class MinimaxOPT(Solver):
    r"""MinimaxOPT, Algorithm 1 (multi-stage GDA) and, by options, Algorithm 2.

    Parameters
    ----------
    lr : float
        Base step size η shared by x, y, z. Default 0.1 (this project's choice; the
        registry's suggested settings give tuned values per problem). The paper finally uses one rate for all three
        variables [PAPER, App. D.1].
    lr_x, lr_y, lr_z : float or None
        Separate base step sizes (``None``: use ``lr``) [CODE: ScaleBiO's
        ``minmax_init_lr_{w,u,lambda}``].
    lam0 : float
        Initial multiplier, the paper's α₀ (named ``lam0`` as in every solver). Default 1.0
        [ours; the ScaleBiO CLI default is 0.03, CODE].
    tau : float
        Stage factor τ > 1: α ← τα per stage, steps × τ⁻¹ per stage. Default 2.0 [CODE:
        ScaleBiO CLI].
    steps_per_stage : int
        K, steps per stage. Default 100 (this project's choice).
    n_stages : int
        N, number of stages; sets the cosine horizon N·K. ``run(n_iter=N*K)`` runs the
        algorithm exactly; further steps continue with further stages. Default 10 [ours].
    alpha_update : {"pre", "post"}
        Multiply α before each stage (the authors' code; stage ``i`` uses α₀τ^{i+1}) or
        after it (the paper's wording; α₀τ^i). Default "pre" [CODE; RECONSTRUCTED].
    momentum : float
        Heavy-ball coefficient μ (torch convention ``buf ← μ buf + g``); 0 gives plain GDA.
        Default 0.0 here, 0.9 in :class:`MinimaxOPTStochastic` (this project's value; the
        paper uses momentum without stating it).
    lr_schedule : {"constant", "cosine"}
        Base schedule multiplied by τ⁻ⁱ; cosine over all N·K steps from ``lr`` to
        ``lr_min`` [CODE: ScaleBiO ``get_cosine_decay_scheduler``].
    lr_min : float
        Floor of the cosine schedule (default 0 [CODE]).
    weight_decay_y : float
        torch-style weight decay on y only (``g_y += wd·y``); default 0 (off) [CODE:
        ScaleBiO uses 5e-4, probably not part of MinimaxOPT].
    batch_size_outer, batch_size_inner : int or None
        Minibatch sizes for f and for g; ``None`` is full batch (Algorithm 1).
        :class:`MinimaxOPTStochastic` defaults to 256 for both [PAPER, CIFAR-10].
    sampling : {"epoch", "iid"}
        Minibatch mode (:mod:`refbilevel.sampling`: per-epoch permutations or i.i.d. draws).
    x_bounds : tuple of float or None
        Box ``(lower, upper)`` for ``Proj_X``. ``None`` uses the problem's ``x_lower`` /
        ``x_upper`` attributes if it has them (e.g. :func:`~refbilevel.toy_1d`), else no
        projection.

    Notes
    -----
    One ``step`` is one GDA step (Algorithm 1, inner loop body). With stage
    :math:`i = \lfloor t/K \rfloor`, :math:`s_t = \tau^{-i}\,\eta(t)` (η constant or cosine):

    .. math::

        g_x &= \nabla_x f(x,y) + \alpha_i\,[\nabla_x g(x,y) - \nabla_x g(x,z)],\\
        g_y &= \nabla_y f(x,y) + \alpha_i \nabla_y g(x,y),\qquad
        g_z = \alpha_i \nabla_y g(x,z),\\
        z &\leftarrow z - s_t\eta_z\,g_z,\quad y \leftarrow y - s_t\eta_y\,g_y,\quad
        x \leftarrow \mathrm{Proj}_X(x - s_t\eta_x\,g_x),

    all gradients at the same point (Jacobi). Since :math:`\alpha_i \tau^{-i}` is constant the
    step on ``g`` stays fixed while the weight of ``f`` decays. With momentum each raw
    direction goes through :func:`refbilevel.optim.momentum` before scaling by the step.
    Stochastic: one outer minibatch feeds f; **one** inner minibatch feeds both
    :math:`g(x, y)` and :math:`g(x, z)` [CODE: ``reuse_last_samples=True``].

    Oracle calls per step: 1 ``grad_f`` (at (x, y)) and 2 ``grad_g`` (at (x, y) and (x, z),
    one stacked ``grad_g_many`` call on the same data).

    References
    ----------
    .. [1] Wang, J., Pan, R., Pi, R. and Zhang, T. (2023). Effective bilevel optimization via
           minimax reformulation. arXiv:2305.13153. Algorithm 1, Appendix D.2.

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import MinimaxOPT
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, MinimaxOPT(lr=0.05), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=100, hvp=0, cross=0)
    """

    name = "minimaxopt"

    lr: float = 0.1
    lr_x: float | None = None
    lr_y: float | None = None
    lr_z: float | None = None
    lam0: float = 1.0
    tau: float = 2.0
    steps_per_stage: int = 100
    n_stages: int = 10
    alpha_update: str = "pre"
    momentum: float = 0.0
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    weight_decay_y: float = 0.0
    batch_size_outer: int | None = None
    batch_size_inner: int | None = None
    sampling: str = "epoch"
    x_bounds: tuple | None = None

    def __post_init__(self):
        validate_fields(self, lr=POSITIVE, lr_x=POSITIVE_OR_NONE, lr_y=POSITIVE_OR_NONE,
                        lr_z=POSITIVE_OR_NONE, lam0=POSITIVE,
                        tau=partial(check_real, low=1.0), steps_per_stage=COUNT1,
                        n_stages=COUNT1, alpha_update=choice("pre", "post"),
                        momentum=FRACTION, lr_schedule=choice("constant", "cosine"),
                        lr_min=NONNEGATIVE, weight_decay_y=NONNEGATIVE,
                        batch_size_outer=COUNT1_OR_NONE, batch_size_inner=COUNT1_OR_NONE,
                        sampling=SAMPLING, x_bounds=BOUNDS)

    # ---------------------------------------------------------------- schedules
    @cached_property
    def _optimizer(self):
        """SGD or heavy ball (built once per solver, not per step)."""
        return sgd() if self.momentum == 0.0 else momentum(self.momentum)

    @cached_property
    def _alpha_schedule(self):
        return stage_multiplier(self.lam0, self.tau, update=self.alpha_update)

    @cached_property
    def _cosine(self):
        return cosine(1.0, self.n_stages * self.steps_per_stage, floor=self.lr_min / self.lr)

    def alpha(self, stage: int) -> float:
        """Multiplier of stage ``stage`` (:func:`refbilevel.optim.stage_multiplier`)."""
        return self._alpha_schedule(stage)

    @cached_property
    def _stage_factor(self):
        return stagewise(self.tau, self.steps_per_stage)

    def step_scale(self, t: int) -> float:
        r"""Host factor :math:`\tau^{-i}\eta(t)/\eta` of global step ``t`` (η(t) constant or cosine;
        :math:`\tau^{-i}` from :func:`refbilevel.optim.stagewise`)."""
        base = 1.0
        if self.lr_schedule == "cosine":
            base = self._cosine(t)
        return self._stage_factor(t) * base

    def horizon(self) -> int:
        """N·K: the steps of Algorithm 1/2 (``n_stages * steps_per_stage``)."""
        return self.n_stages * self.steps_per_stage

    def horizon_note(self) -> str:
        return (f"past N*K = {self.horizon()} steps MinimaxOPT runs further stages, multiplying "
                f"alpha by tau = {self.tau} per stage, so alpha and the iterates grow without "
                f"bound; raise n_stages to run longer")

    # ---------------------------------------------------------------- protocol
    def streams(self, problem) -> tuple:
        """One outer and one inner batch per step (none when full batch)."""
        return data_streams(problem, self, 1, 1)

    def init(self, problem, x0, y0, seed=0) -> MinimaxOPTState:
        """Start at ``(x0, y0, z0 = y0)`` [CODE: both copies load the same model]."""
        x0, y0 = start_point(problem, x0, y0)
        opt = self._optimizer
        z0 = problem.xp.asarray(y0, copy=True)
        return MinimaxOPTState(x=x0, y=y0, z=z0, iteration=0, seed=resolve_seed(seed),
                               multiplier=self.alpha(0), opt_x=opt.init(x0), opt_y=opt.init(y0),
                               opt_z=opt.init(z0))

    def step(self, oracle, state: MinimaxOPTState) -> MinimaxOPTState:
        problem = as_oracle(oracle)
        xp = problem.xp
        x, y, z, t = state.x, state.y, state.z, state.iteration
        K = self.steps_per_stage
        alpha = state.multiplier                # α of stage ⌊t/K⌋ (Alg. 1: α ← τα per stage)
        s = self.step_scale(t)                  # s = τ^{-i} (× cosine, Alg. 2)
        eta_x = s * (self.lr if self.lr_x is None else self.lr_x)
        eta_y = s * (self.lr if self.lr_y is None else self.lr_y)
        eta_z = s * (self.lr if self.lr_z is None else self.lr_z)
        (batch,) = paired_batches(problem.draw(state, self.streams(problem)), 1)
        # gradients at the same (x, y, z); one inner batch for g(x, y) and g(x, z)
        fx, fy = problem.grad_f(x, y, batch)
        gxs, gys = problem.grad_g_many(x, stack([y, z], xp=xp), batch)
        gx = fx + alpha * (gxs[0, ...] - gxs[1, ...])     # ∇_x L_α
        gy = fy + alpha * gys[0, ...]                     # ∇_y L_α
        gz = alpha * gys[1, ...]                          # −∇_z L_α (ascent on z)
        if self.weight_decay_y:
            gy = gy + self.weight_decay_y * y
        opt = self._optimizer
        dz, opt_z = opt.update(gz, state.opt_z, eta_z)
        dy, opt_y = opt.update(gy, state.opt_y, eta_y)
        dx, opt_x = opt.update(gx, state.opt_x, eta_x)
        z_new = z + dz                                    # z ← z − s η_z g_z
        y_new = y + dy                                    # y ← y − s η_y g_y
        x_new = x + dx                                    # x ← Proj_X(x − s η_x g_x)
        x_new = project_x(problem, x_new, self.x_bounds)
        return evolve(state, x=x_new, y=y_new, z=z_new, iteration=t + 1,
                       multiplier=alpha if (t + 1) % K else self.alpha((t + 1) // K),
                       opt_x=opt_x, opt_y=opt_y,
                       opt_z=opt_z)


@dataclass(frozen=True)
class MinimaxOPTStochastic(MinimaxOPT):
    r"""MinimaxOPT Algorithm 2 (Appendix D.2): :class:`MinimaxOPT` with stochastic defaults.

    Minibatches of 256 for f and g [PAPER, CIFAR-10], heavy-ball momentum 0.9 (this
    project's value: the paper does not state one), cosine schedule over all N·K steps to ``lr_min = 0`` [CODE].
    Weight decay on y stays off (the reference code's 5e-4 is available as
    ``weight_decay_y``). All other parameters as in :class:`MinimaxOPT`.

    Notes
    -----
    Per step: one outer minibatch for f and **one** inner minibatch for both
    :math:`g(x, y)` and :math:`g(x, z)`; each raw direction goes through heavy-ball momentum
    :math:`b \leftarrow \mu b + d` and the step is
    :math:`\eta_t = \tau^{-i}(\eta_{\min} + (\eta_0 - \eta_{\min})\tfrac12(1 + \cos(\pi t/(NK))))`,
    :math:`t = iK + k`. Oracle calls per step as :class:`MinimaxOPT`.

    References
    ----------
    .. [1] Wang, J., Pan, R., Pi, R. and Zhang, T. (2023). Effective bilevel optimization via
           minimax reformulation. arXiv:2305.13153. Appendix D.2.

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import MinimaxOPTStochastic
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, MinimaxOPTStochastic(lr=0.01), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=50, grad_g=100, hvp=0, cross=0)
    """

    name = "minimaxopt_stochastic"

    momentum: float = 0.9
    lr_schedule: str = "cosine"
    batch_size_outer: int | None = 256
    batch_size_inner: int | None = 256

