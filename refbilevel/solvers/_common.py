"""Helpers shared by the solvers: start points, projection, the inner GD loop, streams.

Everything here runs either at ``init`` (validation, may synchronise once) or inside a
step without any host-device synchronisation (projection on Python-float bounds).
"""

from __future__ import annotations

from functools import partial

from .._backend import scaled
from .._validation import (check_array, check_bool, check_bounds, check_choice, check_int,
                           check_real)
from ..problems.base import Batch
from ..sampling import resolve_seed, stream_spec

__all__ = ["batches_of", "choice", "data_streams", "inner_gd", "memo_streams", "paired_batches",
           "project_x", "resolve_seed", "start_point", "validate_fields"]


def start_point(problem, x0, y0):
    """Validated copies of the starting point; ``None`` means the problem's default.

    Raises ``TypeError``/``ValueError`` naming ``x0`` or ``y0`` when the arrays have the
    wrong namespace, device, dtype, shape, or are not finite.
    """
    ref = problem.init_x()
    if x0 is None:
        x0 = ref
    if y0 is None:
        y0 = problem.init_y()
    check_array(x0, "x0", shape=(problem.dim_x,), like=ref)
    check_array(y0, "y0", shape=(problem.dim_y,), like=ref)
    xp = problem.xp
    return xp.asarray(x0, copy=True), xp.asarray(y0, copy=True)


def project_x(problem, x, bounds=None):
    """``Proj_X(x)``: clip to the box ``bounds = (lower, upper)``, by default the problem's
    ``[x_lower, x_upper]`` when it has one (either side may be None).

    The bounds are Python floats (or None), so this never synchronises.
    """
    if bounds is None:
        bare = getattr(problem, "problem", problem)       # the problem behind an oracle
        bounds = (getattr(bare, "x_lower", None), getattr(bare, "x_upper", None))
    lo, hi = bounds
    xp = problem.xp
    if lo is not None:
        x = xp.maximum(x, lo)
    if hi is not None:
        x = xp.minimum(x, hi)
    return x


def inner_gd(oracle, x, y, *, lr: float, n_steps: int, batches=None):
    """``n_steps`` of (minibatch) gradient descent ``y <- y - lr * grad_y g(x, y)``.

    Costs ``n_steps`` ``grad_g`` calls; ``batches[t]`` (if given) is the batch of step t.
    """
    for t in range(n_steps):
        batch = None if batches is None else batches[t]
        y = y - scaled(lr, oracle.grad_g_y(x, y, batch))
    return y


def data_streams(problem, solver, n_outer: int, n_inner: int) -> tuple:
    """The outer and inner :class:`~refbilevel.sampling.Stream` s of a minibatch solver.

    ``n_outer``/``n_inner`` batches per step of sizes ``solver.batch_size_outer`` /
    ``solver.batch_size_inner`` in ``solver.sampling`` mode (``"epoch"`` when the solver
    has no such field). Empty when both sizes are ``None`` (full batch).
    """
    b_out, b_in = solver.batch_size_outer, solver.batch_size_inner
    if b_out is None and b_in is None:
        return ()
    bare = getattr(problem, "problem", problem)           # the problem behind an oracle
    rows = (getattr(bare, "n_outer", 1), getattr(bare, "n_inner", 1))

    def build():
        mode = getattr(solver, "sampling", "epoch")
        out = []
        if n_outer:
            out.append(stream_spec("outer", rows[0], b_out, n_outer, mode))
        if n_inner:
            out.append(stream_spec("inner", rows[1], b_in, n_inner, mode))
        return tuple(out)

    return memo_streams(solver, ("data", *rows, n_outer, n_inner), build)


def memo_streams(solver, key, build):
    """``build()``, made once per solver and ``key`` and then reused.

    A step asks for its streams every time; validating and building them costs about
    10 µs, as much as several small oracle calls. The streams are immutable and depend on
    the (frozen) solver's fields and on ``key`` only (which holds every problem size
    ``build`` reads), so the solver keeps them, as it keeps its ``cached_property``
    values, in its instance dictionary.
    """
    memo = solver.__dict__.setdefault("_streams_memo", {})
    streams = memo.get(key)
    if streams is None:
        streams = memo[key] = build()
    return streams


def batches_of(draws, n_outer: int, n_inner: int):
    """``(outer list, inner list)`` from :meth:`Oracle.draw` output (``None`` = full data)."""
    return (draws.get("outer", [None] * n_outer), draws.get("inner", [None] * n_inner))


def paired_batches(draws, k: int):
    """``k`` :class:`~refbilevel.problems.base.Batch` es pairing the j-th outer and inner
    draws (``[None] * k`` when both levels read the full data)."""
    if not draws:
        return [None] * k
    outs, ins = draws.get("outer"), draws.get("inner")
    if outs is None and ins is None:
        return [None] * k
    outs = outs if outs is not None else [None] * k
    ins = ins if ins is not None else [None] * k
    if all(o is None for o in outs) and all(i is None for i in ins):
        return [None] * k
    return [Batch(outer=o, inner=i) for o, i in zip(outs, ins)]


# ------------------------------------------------------------------ field validation
def _below_one(value, name):
    value = check_real(value, name, nonnegative=True)
    if not value < 1:
        raise ValueError(f"{name} must be < 1; got {value}")
    return value


#: Field rules for :func:`validate_fields`: ``rule(value, name) -> normalised value``.
POSITIVE = partial(check_real, positive=True)
NONNEGATIVE = partial(check_real, nonnegative=True)
POSITIVE_OR_NONE = partial(check_real, positive=True, allow_none=True)
COUNT = partial(check_int, minimum=0)
COUNT1 = partial(check_int, minimum=1)
COUNT1_OR_NONE = partial(check_int, minimum=1, allow_none=True)
FRACTION = _below_one
FLAG = check_bool
BOUNDS = check_bounds
SAMPLING = partial(check_choice, choices=("epoch", "iid"))


def choice(*options):
    """A rule accepting one of ``options``."""
    return partial(check_choice, choices=options)


def validate_fields(solver, **rules) -> None:
    """Check each named field of a frozen solver dataclass and store its normalised value.

    The one validate-and-normalise helper of the solvers (called from ``__post_init__``):
    ``rules[name](value, name)`` raises a ``TypeError``/``ValueError`` naming the field,
    or returns the value to keep (reals as Python floats, integers as Python ints).
    """
    for name, rule in rules.items():
        object.__setattr__(solver, name, rule(getattr(solver, name), name))
