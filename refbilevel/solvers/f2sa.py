r"""F2SA (Kwon, Kwon, Wright and Nowak, 2023) and F2SA with Adam.

Fully first-order stochastic approximation of the penalty problem
:math:`\min_x L^*_\lambda(x)`, :math:`L_\lambda = f + \lambda(g - g^*)`, with an increasing
multiplier (:doc:`/theory/penalty`, :doc:`/algorithms/f2sa`): ``y`` tracks :math:`\arg\min_y f + \lambda g`, ``z``
tracks :math:`y^*(x)`, and ``x`` follows
:math:`\nabla_x f(x, y) + \lambda(\nabla_x g(x, y) - \nabla_x g(x, z))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .._backend import device, stack
from .._validation import check_real
from ..optim import adam, inverse_power, sgd
from ..oracle import as_oracle
from ..problems.base import Batch
from ._common import (COUNT1, COUNT1_OR_NONE, FLAG, FRACTION, NONNEGATIVE, POSITIVE,
                      POSITIVE_OR_NONE, SAMPLING, choice, data_streams, project_x, resolve_seed,
                      start_point, validate_fields)
from .base import Solver, SolverState, evolve

__all__ = ["F2SA", "F2SAAdam", "F2SAState"]

_SCHEDULES = ("paper", "benchopt", "constant")
_DEFAULT_EXPONENTS = {"paper": (5 / 7, 4 / 7, 5 / 7, 0.0),
                      "benchopt": (5 / 7, 4 / 7, 4 / 7, 1 / 7),
                      "constant": (0.0, 0.0, 0.0, 0.0)}


@dataclass(frozen=True)
class F2SAState(SolverState):
    """State of :class:`F2SA` / :class:`F2SAAdam`.

    Attributes
    ----------
    z : array
        Tracks :math:`y^*(x)` (warm-started across outer steps).
    multiplier : float
        :math:`\\lambda_k`, the multiplier the next outer step uses.
    opt_x : NamedTuple
        Persistent optimiser state of x (an SGD step count for :class:`F2SA`, Adam's
        moments for :class:`F2SAAdam`).
    """

    z: Any = None
    opt_x: Any = None


@dataclass(frozen=True)
class F2SA(Solver):
    r"""F2SA: fully first-order stochastic approximation for bilevel problems.

    Parameters
    ----------
    n_inner : int
        T, inner steps on y and z per outer step. Default 10 [CODE: benchopt].
    lr_y : float
        Scale of :math:`\alpha_k` (y step). Default 0.01 [CODE: benchopt ``step``].
    lr_z : float or None
        Scale of :math:`\gamma_k` (z step); ``None`` uses ``lr_y`` [CODE: benchopt uses one
        ``step`` for both].
    xi : float
        Ratio ξ of the x step to the y step. Default 1.0 [PAPER, slides' selected values;
        CODE: benchopt ``1/outer_ratio``].
    lam0 : float
        :math:`\lambda_0`. Default 1.0 [CODE: benchopt].
    delta : float
        Scale of the increments :math:`\delta_k` (schedules "benchopt" and "constant").
        Default 0.1 [CODE: benchopt ``delta_lmbda``; PAPER slides].
    schedule : {"benchopt", "paper", "constant"}
        Step-size and multiplier schedules, see Notes. Default "benchopt" [CODE].
    exponents : tuple of 4 floats or None
        ``(e_α, e_γ, e_x, e_δ)`` overriding the schedule's exponents (``"paper"`` uses
        only ``e_α`` and ``e_γ``: its x step is ξα_k and λ_k follows γ_k/α_k).
    batch_size_outer, batch_size_inner : int or None
        Minibatch sizes (``None``: full batch). benchopt uses 64 [CODE].
    sampling : {"epoch", "iid"}
        Minibatch mode.

    Notes
    -----
    Outer step k (:doc:`/algorithms/f2sa`), with warm starts :math:`y_{k,0} = y_k`,
    :math:`z_{k,0} = z_k`:

    .. math::

        z_{k,t+1} &= z_{k,t} - \gamma_k \nabla_y g(x_k, z_{k,t}; \phi_t),\\
        y_{k,t+1} &= y_{k,t} - \alpha_k\,[\nabla_y f(x_k, y_{k,t}; \zeta_t)
                     + \lambda_k \nabla_y g(x_k, y_{k,t}; \phi'_t)],\qquad t = 0..T-1,\\
        x_{k+1} &= x_k - \eta_k\,[\nabla_x f(x_k, y_{k+1}; \zeta') + \lambda_k(
                   \nabla_x g(x_k, y_{k+1}; \phi'') - \nabla_x g(x_k, z_{k+1}; \phi'''))],\\
        \lambda_{k+1} &= \lambda_k + \delta_k .

    The x update is followed by :math:`\mathrm{Proj}_X`, the clip to the problem's box
    ``[x_lower, x_upper]`` when it has one (e.g. :func:`~refbilevel.toy_1d`; the identity
    otherwise), as in MinimaxOPT's Algorithm 1.

    Every stochastic oracle reads its own minibatch (benchopt draws a fresh one per
    oracle): per outer step T+1 outer and 2T+2 inner batches, moved to the device in one
    transfer. With full batch the two g-oracles at the same ``x`` are evaluated as one
    stacked call. Schedules (:math:`c/(k+1)^e`):

    * ``"benchopt"`` [CODE: benchmark_bilevel ``solvers/f2sa.py``]:
      :math:`\alpha_k = \text{lr}_y/(k+1)^{5/7}`, :math:`\gamma_k = \text{lr}_z/(k+1)^{4/7}`,
      :math:`\eta_k = \xi\,\text{lr}_y/(k+1)^{4/7}`, :math:`\delta_k = \delta/(k+1)^{1/7}`.
    * ``"paper"`` [RECONSTRUCTED: the ratio rule :math:`\lambda_k \propto \gamma_k/\alpha_k`
      of the step-size conditions of arXiv:2301.10945, Thm 3.1, with this project's
      constants; select ``exponents`` to change them]: same
      :math:`\alpha_k, \gamma_k`, :math:`\eta_k = \xi\alpha_k`, and
      :math:`\lambda_k = \lambda_0 (\gamma_k/\alpha_k)/(\gamma_0/\alpha_0) = \lambda_0 (k+1)^{e_\alpha - e_\gamma}`,
      i.e. :math:`\delta_k = \lambda_{k+1} - \lambda_k` (``delta`` unused).
    * ``"constant"`` [PAPER, slides' selected values]: constant :math:`\alpha, \gamma`,
      :math:`\eta = \xi\,\text{lr}_y`, :math:`\delta_k = \delta`.

    Stability needs :math:`\alpha_k\lambda_k \lesssim 1/L_g` (the y step on g is
    :math:`\alpha_k\lambda_k`).

    Oracle calls per outer step: :math:`T+1` ``grad_f`` and :math:`2T+2` ``grad_g``
    (:math:`3T + 3` first-order calls).

    References
    ----------
    .. [1] Kwon, J., Kwon, D., Wright, S. and Nowak, R. (2023). A fully first-order method
           for stochastic bilevel optimization. ICML. arXiv:2301.10945.
    .. [2] Dagréou, M. et al. benchmark_bilevel (benchopt), ``solvers/f2sa.py``.

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import F2SA
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> solver = F2SA(schedule='constant', lam0=1.0, delta=0.01, lr_y=0.01, lr_z=0.1, xi=20.0)
    >>> result = run(problem, solver, n_iter=50, metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=550, grad_g=1100, hvp=0, cross=0)
    """

    name = "f2sa"

    n_inner: int = 10
    lr_y: float = 0.01
    lr_z: float | None = None
    xi: float = 1.0
    lam0: float = 1.0
    delta: float = 0.1
    schedule: str = "benchopt"
    exponents: tuple | None = None
    batch_size_outer: int | None = None
    batch_size_inner: int | None = None
    sampling: str = "epoch"

    def __post_init__(self):
        validate_fields(self, n_inner=COUNT1, lr_y=POSITIVE, lr_z=POSITIVE_OR_NONE, xi=POSITIVE,
                        lam0=POSITIVE, delta=NONNEGATIVE, schedule=choice(*_SCHEDULES),
                        batch_size_outer=COUNT1_OR_NONE, batch_size_inner=COUNT1_OR_NONE,
                        sampling=SAMPLING)
        if self.exponents is not None:
            if not isinstance(self.exponents, tuple) or len(self.exponents) != 4:
                raise TypeError("exponents must be a tuple (e_alpha, e_gamma, e_x, e_delta); "
                                f"got {self.exponents!r}")
            for i, e in enumerate(self.exponents):
                check_real(e, f"exponents[{i}]", nonnegative=True)

    # ---------------------------------------------------------------- schedules
    def _exponents(self):
        return self.exponents if self.exponents is not None else _DEFAULT_EXPONENTS[self.schedule]

    @cached_property
    def _schedules(self):
        r""":math:`\alpha_k, \gamma_k, \eta_k, \delta_k` as :func:`refbilevel.optim.inverse_power`
        schedules :math:`c/(k+1)^e` (built once per solver)."""
        e_a, e_g, e_x, e_d = self._exponents()
        lr_z = self.lr_y if self.lr_z is None else self.lr_z
        return (inverse_power(self.lr_y, e_a), inverse_power(lr_z, e_g),
                inverse_power(self.xi * self.lr_y, e_x), inverse_power(self.delta, e_d))

    def steps(self, k: int) -> tuple[float, float, float]:
        r"""Host step sizes :math:`(\alpha_k, \gamma_k, \eta_k)` of outer step ``k``."""
        alpha_k, gamma_k, eta_k, _ = self._schedules
        alpha = alpha_k(k)
        eta = self.xi * alpha if self.schedule == "paper" else eta_k(k)
        return alpha, gamma_k(k), eta

    def next_multiplier(self, lam: float, k: int) -> float:
        r""":math:`\lambda_{k+1} = \lambda_k + \delta_k` (host float)."""
        if self.schedule == "paper":
            e_a, e_g, _, _ = self._exponents()
            ratio = lambda j: (j + 1) ** (e_a - e_g)  # noqa: E731  γ_j/α_j up to a constant
            return lam + self.lam0 * (ratio(k + 1) - ratio(k))
        return lam + self._schedules[3](k)

    # ---------------------------------------------------------------- protocol
    def streams(self, problem) -> tuple:
        """T+1 outer and 2T+2 inner batches per step, one per stochastic oracle."""
        T = self.n_inner
        return data_streams(problem, self, T + 1, 2 * T + 2)

    def init(self, problem, x0, y0, seed=0) -> F2SAState:
        """Start at ``(x0, y0, z0 = y0)``, :math:`\\lambda = \\lambda_0`."""
        x0, y0 = start_point(problem, x0, y0)
        return F2SAState(x=x0, y=y0, z=problem.xp.asarray(y0, copy=True), iteration=0,
                         multiplier=self.lam0, seed=resolve_seed(seed),
                         opt_x=self.optimizer.init(x0))

    def _draw(self, problem, state):
        """Per-oracle batches: (outer list of T+1, inner list of 2T+2), or None (stacked)."""
        draws = problem.draw(state, self.streams(problem))
        if not draws:                                  # full batch: no stream at all
            return None
        T = self.n_inner
        outs = draws.get("outer", [None] * (T + 1))
        ins = draws.get("inner", [None] * (2 * T + 2))
        if all(o is None for o in outs) and all(i is None for i in ins):
            return None
        return outs, ins

    def _directions_inner(self, problem, x, zy, lam, draws, t):
        """Raw inner directions of inner step ``t`` stacked as the iterate ``zy = [z; y]``:
        rows ``h_gz`` and ``h_fy + λ h_gy``."""
        xp = problem.xp
        z, y = zy[0, ...], zy[1, ...]
        if draws is None:
            gys = problem.grad_g_y_many(x, zy)                 # one stacked call (2 calls)
            h_gz, h_gy = gys[0, ...], gys[1, ...]
            h_fy = problem.grad_f_y(x, y)
        else:
            outs, ins = draws
            h_gz = problem.grad_g_y(x, z, Batch(inner=ins[2 * t]))        # φ
            h_fy = problem.grad_f_y(x, y, Batch(outer=outs[t]))           # ζ
            h_gy = problem.grad_g_y(x, y, Batch(inner=ins[2 * t + 1]))    # φ'
        return stack([h_gz, h_fy + lam * h_gy], xp=xp)

    def _direction_outer(self, problem, x, zy, lam, draws):
        """Raw x direction ``h_fx + λ (h_gxy − h_gxz)`` at the inner iterate ``zy = [z; y]``."""
        T = self.n_inner
        z, y = zy[0, ...], zy[1, ...]
        if draws is None:
            gxs = problem.grad_g_x_many(x, zy)
            h_gxz, h_gxy = gxs[0, ...], gxs[1, ...]
            h_fx = problem.grad_f_x(x, y)
        else:
            outs, ins = draws
            h_fx = problem.grad_f_x(x, y, Batch(outer=outs[T]))           # ζ'
            h_gxy = problem.grad_g_x(x, y, Batch(inner=ins[2 * T]))       # φ''
            h_gxz = problem.grad_g_x(x, z, Batch(inner=ins[2 * T + 1]))   # φ'''
        return h_fx + lam * (h_gxy - h_gxz)

    @cached_property
    def optimizer(self):
        """The optimiser each raw direction goes through: :func:`refbilevel.optim.sgd`
        (plain steps, F2SA) or Adam (:class:`F2SAAdam`); built once per solver."""
        return sgd()

    def step(self, oracle, state: F2SAState) -> F2SAState:
        problem = as_oracle(oracle)
        xp = problem.xp
        x, k, lam = state.x, state.iteration, state.multiplier
        alpha, gamma, eta = self.steps(k)
        opt = self.optimizer
        draws = self._draw(problem, state)
        # z and y advance as the rows of one iterate [z; y] with step sizes [γ; α]: the
        # optimisers act elementwise, so each row's update is that of its own optimiser,
        # bit for bit, in one update instead of two
        zy = stack([state.z, state.y], xp=xp)          # warm start: z_{k,0} = z_k, y_{k,0} = y_k
        lrs = xp.asarray([[gamma], [alpha]], dtype=zy.dtype, device=device(zy))
        opt_zy = opt.init(zy)                          # inner states restart every step
        for t in range(self.n_inner):
            d_zy = self._directions_inner(problem, x, zy, lam, draws, t)
            step_zy, opt_zy = opt.update(d_zy, opt_zy, lrs)
            zy = zy + step_zy                          # z −= γ_k h_gz;  y −= α_k (h_fy + λ_k h_gy)
        d_x = self._direction_outer(problem, x, zy, lam, draws)
        step_x, opt_x = opt.update(d_x, state.opt_x, eta)    # x state persists across steps
        x = project_x(problem, x + step_x)             # x_{k+1} = x_k − η_k (h_fx + λ_k(h_gxy − h_gxz))
        return evolve(state, x=x, y=zy[1, ...], z=zy[0, ...], iteration=k + 1, opt_x=opt_x,
                       multiplier=self.next_multiplier(lam, k))   # λ_{k+1} = λ_k + δ_k


@dataclass(frozen=True)
class F2SAAdam(F2SA):
    r"""F2SA with Adam on each direction (:doc:`/algorithms/f2sa`).

    Parameters
    ----------
    lr_y, lr_z : float
        Adam step sizes α (y) and γ (z). Default 1e-3 [PAPER: FashionMNIST selection].
    xi : float
        x step = ξα. Default 1.0 [PAPER].
    beta1, beta2 : float
        Adam decay rates. Defaults 0.9, 0.99 [PAPER: MNIST/FashionMNIST selection].
    eps : float
        Adam ε. Default 1e-8 [ours].
    bias_correction : bool
        Use :math:`\hat m, \hat v`. Default True: the slide computes the corrected
        moments but writes the raw ones in its update line; this project uses the corrected
        ones (``bias_correction=False`` gives the raw ones).
    adam_state : {"raw", "corrected"}
        What the Adam state keeps between updates: the raw moments (default, Kingma and
        Ba's Adam) or the bias-corrected ones, the literal reading of the slides' AdamGrad,
        which overwrites the moments with their corrected values
        (:func:`refbilevel.optim.adam` ``keep_corrected``; needs ``bias_correction``).
    schedule : {"constant", "paper", "benchopt"}
        Default "constant" [PAPER: the slides select constant {γ, α} and δ = 0.1].
    Other parameters as in :class:`F2SA`.

    Notes
    -----
    The loop of :class:`F2SA` with each raw direction passed through
    :func:`refbilevel.optim.adam`. The y and z Adam states are **reset to zero at every
    outer step** (counter t+1 = 1, 2, ... inside the inner loop); the x state persists
    across outer steps (counter k+1). The slide passes t from 0, which would divide by
    :math:`1-\beta^0 = 0`; the counters start at 1 here. Oracle calls as :class:`F2SA`.

    References
    ----------
    .. [1] Kwon, J., Kwon, D., Wright, S. and Nowak, R. (2023). A fully first-order method
           for stochastic bilevel optimization. ICML. (F2SA)
    .. [2] Yang, D., Jiang, L., Tatli, M. and Xiao, Q. (2023). Enhancing bilevel
           optimization with single-level learning techniques. Course project slides,
           CS 6962, Rensselaer Polytechnic Institute, December 2023. (F2SA with Adam; the
           "[PAPER]" tags of the parameters above refer to these slides)

    Examples
    --------
    >>> from refbilevel import Quadratic
    >>> from refbilevel.run import run
    >>> from refbilevel.solvers import F2SAAdam
    >>> problem = Quadratic.random(3, 4, seed=0)
    >>> result = run(problem, F2SAAdam(lam0=10.0, delta=0.0, lr_y=0.01, lr_z=0.01), n_iter=50,
    ...              metrics=("hypergradient_norm",))
    >>> h = result.history["hypergradient_norm"]
    >>> bool(h[-1] < h[0])                # the exact hypergradient norm decreased
    True
    >>> result.calls                      # measured by the oracle layer
    OracleCalls(grad_f=550, grad_g=1100, hvp=0, cross=0)
    """

    name = "f2sa_adam"

    lr_y: float = 1e-3
    schedule: str = "constant"
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    bias_correction: bool = True
    adam_state: str = "raw"

    def __post_init__(self):
        super().__post_init__()
        validate_fields(self, beta1=FRACTION, beta2=FRACTION, eps=POSITIVE,
                        bias_correction=FLAG, adam_state=choice("raw", "corrected"))
        if self.adam_state == "corrected" and not self.bias_correction:
            raise ValueError("adam_state='corrected' needs bias_correction=True")

    @cached_property
    def optimizer(self):
        """Adam (:func:`refbilevel.optim.adam`) with this solver's β₁, β₂, ε."""
        return adam(self.beta1, self.beta2, self.eps, bias_correction=self.bias_correction,
                    keep_corrected=self.adam_state == "corrected")
