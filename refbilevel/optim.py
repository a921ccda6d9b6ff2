r"""Optimisers as pure ``(init, update)`` pairs, and schedules returning Python floats.

Optimisers
----------
Each factory (:func:`sgd`, :func:`momentum`, :func:`adam`) returns an :class:`Optimizer`,
a named pair of pure functions in the style of optax::

    opt = momentum(0.9)
    state = opt.init(x)                      # NamedTuple of arrays + a Python int count
    delta, state = opt.update(grad, state, lr)
    x = x + delta                            # the update is ADDED to the parameters

Convention: ``update(grad, state, lr)`` returns the *increment* ``delta`` (already scaled by
``-lr``) and the new state; the caller writes ``x = x + delta``. ``lr`` is a Python float
(a schedule value computed on the host), so no update ever synchronises a GPU, or an array
of ``grad``'s dtype that broadcasts against it: a stack of parameter rows with one step
size per row (``lr`` of shape ``(m, 1)`` for ``grad`` of shape ``(m, n)``). Every update
acts elementwise, so each row of a stacked update is, bit for bit, the update of that row
alone with its own step size (F2SA moves its two inner sequences this way). States are
never mutated. The step counter ``count`` is a host-side Python int: the number of updates
made so far; Adam's bias correction uses ``t = count + 1`` for the update in progress
(counter from 1).

Schedules
---------
A schedule is any callable ``k -> float`` of a non-negative step (or stage) index, evaluated
on the host: :func:`constant`, :func:`inverse_power`, :func:`cosine`, :func:`stagewise`
(MinimaxOPT's :math:`\tau^{-i}` rescaling) and the multiplier schedule
:func:`stage_multiplier` (:math:`\alpha \leftarrow \tau\alpha` per stage). Additive
multipliers (:math:`\lambda_{k+1} = \lambda_k + \delta_k`, F2SA and FOSL/MemCS) keep the
running value in the solver state and add an :func:`inverse_power` increment.

References
----------
.. [1] Kingma, D. P. and Ba, J. (2015). Adam: a method for stochastic optimization. ICLR.
.. [2] Polyak, B. T. (1964). Some methods of speeding up the convergence of iteration
       methods. USSR Comp. Math. Math. Phys. 4(5). (heavy ball; torch's ``SGD(momentum=)``
       form ``buf <- mu*buf + g; p <- p - lr*buf``)
.. [3] Loshchilov, I. and Hutter, F. (2017). SGDR: stochastic gradient descent with warm
       restarts. ICLR. (cosine schedule)
.. [4] Wang, J., Pan, R., Pi, R. and Zhang, T. (2023). Effective bilevel optimization via
       minimax reformulation. arXiv:2305.13153. (stagewise rescaling)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from ._backend import ScalarOperands, array_namespace, zeros_like
from ._validation import check_bool, check_choice, check_int, check_real

__all__ = [
    "AdamState",
    "MomentumState",
    "Optimizer",
    "SGDState",
    "Schedule",
    "adam",
    "constant",
    "cosine",
    "inverse_power",
    "momentum",
    "sgd",
    "stage_multiplier",
    "stagewise",
]

#: A schedule maps a step (or stage) index ``k >= 0`` to a Python float.
Schedule = Callable[[int], float]


class Optimizer(NamedTuple):
    """A pair of pure functions ``init(params) -> state`` and ``update(grad, state, lr)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, float], tuple[Any, Any]]


# ---------------------------------------------------------------------------- SGD
class SGDState(NamedTuple):
    """State of :func:`sgd`: only the number of updates made."""

    count: int


def sgd() -> Optimizer:
    r"""Plain gradient descent, :math:`\Delta = -\eta\, g`.

    Returns
    -------
    Optimizer
        ``init(params) -> SGDState``; ``update(grad, state, lr) -> (-lr * grad, state')``.
    """

    def init(params):
        return SGDState(count=0)

    def update(grad, state, lr):
        return -lr * grad, SGDState(state.count + 1)

    return Optimizer(init, update)


# ----------------------------------------------------------------------- momentum
class MomentumState(NamedTuple):
    """State of :func:`momentum`: the velocity buffer and the number of updates."""

    buf: Any
    count: int


def momentum(mu: float = 0.9) -> Optimizer:
    r"""Heavy-ball momentum in PyTorch's ``SGD(momentum=mu)`` convention.

    Parameters
    ----------
    mu : float
        Momentum coefficient in ``[0, 1)``.

    Returns
    -------
    Optimizer

    Notes
    -----
    .. math::

        b_{t} = \mu\, b_{t-1} + g_t, \qquad \Delta_t = -\eta_t\, b_t,

    with :math:`b_{-1} = 0` (so :math:`b_0 = g_0`, as torch initialises the buffer with the
    first gradient). The learning rate multiplies the buffer, not the gradient, so a
    change of :math:`\eta_t` (cosine, stagewise) takes effect immediately.
    """
    mu = check_real(mu, "mu", low=0.0)
    if not mu < 1.0:
        raise ValueError(f"mu must be < 1; got {mu}")

    def init(params):
        return MomentumState(buf=_zeros_like(params), count=0)

    def update(grad, state, lr):
        buf = mu * state.buf + grad
        return -lr * buf, MomentumState(buf, state.count + 1)

    return Optimizer(init, update)


# --------------------------------------------------------------------------- Adam
class AdamState(NamedTuple):
    """State of :func:`adam`: first and second moments and the number of updates."""

    m: Any
    v: Any
    count: int


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
         bias_correction: bool = True, keep_corrected: bool = False) -> Optimizer:
    r"""Adam (Kingma and Ba, 2015) as a pure pair.

    Parameters
    ----------
    b1, b2 : float
        Exponential decay rates of the moments, in ``[0, 1)``.
    eps : float
        Added to :math:`\sqrt{\hat v}` (outside the square root, as in the paper).
    bias_correction : bool
        Divide the moments by :math:`1-\beta^t` (default). ``False`` uses the raw moments.
    keep_corrected : bool
        Keep the bias-corrected moments :math:`\hat m_t, \hat v_t` as the state the next
        update starts from (a literal reading of the F2SA-Adam slides' AdamGrad, which
        overwrites :math:`m, v` with their corrected values), instead of the raw
        :math:`m_t, v_t` (default, Kingma and Ba). Needs ``bias_correction``.

    Returns
    -------
    Optimizer

    Notes
    -----
    For the update in progress :math:`t = \text{count} + 1` (counter from 1):

    .. math::

        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        \hat m_t = \frac{m_t}{1-\beta_1^t},\quad \hat v_t = \frac{v_t}{1-\beta_2^t},\quad
        \Delta_t = -\eta_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.

    With ``keep_corrected`` the recursions read :math:`m_t = \beta_1 \hat m_{t-1} +
    (1-\beta_1) g_t` (and likewise for :math:`v`): the correction compounds, so the step
    differs from Adam's from the second update on (at :math:`t = 1` both give
    :math:`\hat m_1 = g_1`).
    """
    b1 = check_real(b1, "b1", low=0.0)
    b2 = check_real(b2, "b2", low=0.0)
    if not b1 < 1.0:
        raise ValueError(f"b1 must be < 1; got {b1}")
    if not b2 < 1.0:
        raise ValueError(f"b2 must be < 1; got {b2}")
    eps = check_real(eps, "eps", positive=True)
    bias_correction = check_bool(bias_correction, "bias_correction")
    keep_corrected = check_bool(keep_corrected, "keep_corrected")
    if keep_corrected and not bias_correction:
        raise ValueError("keep_corrected=True needs bias_correction=True")

    def init(params):
        return AdamState(m=_zeros_like(params), v=_zeros_like(params), count=0)

    constants = ScalarOperands(b1, 1.0 - b1, b2, 1.0 - b2, eps)

    def update(grad, state, lr):
        t = state.count + 1
        # the constants as operands of grad's dtype: the same values, bit for bit
        # (refbilevel._backend.ScalarOperands), a cheaper operation on NumPy
        k_b1, k_1mb1, k_b2, k_1mb2, k_eps = constants.like(grad)
        m = k_b1 * state.m + k_1mb1 * grad
        v = k_b2 * state.v + k_1mb2 * (grad * grad)
        if bias_correction:
            c1 = 1.0 - b1**t
            c2 = 1.0 - b2**t
            m_hat, v_hat = m / c1, v / c2
        else:
            m_hat, v_hat = m, v
        xp = _namespace(grad)
        delta = -lr * m_hat / (xp.sqrt(v_hat) + k_eps)
        if keep_corrected:
            m, v = m_hat, v_hat
        return delta, AdamState(m, v, t)

    return Optimizer(init, update)


def _namespace(a):
    return array_namespace(a)


def _zeros_like(a):
    return zeros_like(a, xp=_namespace(a))


# ---------------------------------------------------------------------- schedules
def constant(value: float) -> Schedule:
    """``k -> value``."""
    value = check_real(value, "value")
    return lambda k: value


def inverse_power(c: float, power: float, *, offset: int = 1) -> Schedule:
    r"""``k -> c / (k + offset)**power`` (default :math:`c/(k+1)^a`).

    ``power = 0`` gives the constant ``c``.
    """
    c = check_real(c, "c")
    power = check_real(power, "power", nonnegative=True)
    offset = check_int(offset, "offset", minimum=1)
    if power == 0.0:
        return lambda k: c
    return lambda k: c / (k + offset) ** power


def cosine(base: float, total_steps: int, *, floor: float = 0.0) -> Schedule:
    r"""Cosine decay from ``base`` to ``floor`` over ``total_steps`` steps.

    .. math::

        \eta_k = \eta_{\min} + (\eta_0 - \eta_{\min})\,\tfrac12\bigl(1 + \cos(\pi k / N)\bigr),

    with :math:`k` clamped to :math:`N` (after the horizon the value stays at the floor).
    """
    base = check_real(base, "base")
    total_steps = check_int(total_steps, "total_steps", minimum=1)
    floor = check_real(floor, "floor")

    def schedule(k):
        k = min(k, total_steps)
        return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * k / total_steps))

    return schedule


def stagewise(tau: float, steps_per_stage: int) -> Schedule:
    r"""MinimaxOPT's step-size factor :math:`\tau^{-i}` with stage :math:`i = \lfloor k/K \rfloor`."""
    tau = check_real(tau, "tau", positive=True)
    steps_per_stage = check_int(steps_per_stage, "steps_per_stage", minimum=1)
    return lambda k: tau ** (-(k // steps_per_stage))


def stage_multiplier(alpha0: float, tau: float, *, update: str = "pre") -> Schedule:
    r"""MinimaxOPT's multiplier of stage :math:`i`: :math:`\alpha \leftarrow \tau\alpha` per stage.

    ``update="pre"`` multiplies before each stage (the authors' code), so stage ``i`` uses
    :math:`\alpha_0\tau^{i+1}`; ``"post"`` multiplies after each stage (the paper's wording),
    so stage ``i`` uses :math:`\alpha_0\tau^{i}`. Computed by repeated multiplication, as
    the algorithm does.
    """
    alpha0 = check_real(alpha0, "alpha0", positive=True)
    tau = check_real(tau, "tau", positive=True)
    update = check_choice(update, "update", ("pre", "post"))
    extra = 1 if update == "pre" else 0

    def schedule(i):
        alpha = alpha0
        for _ in range(i + extra):
            alpha = tau * alpha
        return alpha

    return schedule
