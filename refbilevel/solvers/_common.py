"""Helpers shared by the baseline solvers (start points, projection, minibatch schedules).

Everything here runs either at ``init`` (validation, may synchronise once) or inside a
step without any host-device synchronisation (projection on Python-float bounds).
"""

from __future__ import annotations

from .._validation import check_array

__all__ = ["draw_batches", "make_schedule", "project_x", "start_point"]


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
        bounds = (getattr(problem, "x_lower", None), getattr(problem, "x_upper", None))
    lo, hi = bounds
    xp = problem.xp
    if lo is not None:
        x = xp.maximum(x, lo)
    if hi is not None:
        x = xp.minimum(x, hi)
    return x


def make_schedule(problem, rng, batch_size_outer, batch_size_inner):
    """A :class:`refbilevel.sampling.BatchSchedule` for the problem's sample counts."""
    from ..sampling import BatchSchedule  # imported lazily: sampling is optional for GD solvers

    return BatchSchedule(problem.n_outer, problem.n_inner, batch_size_outer=batch_size_outer,
                         batch_size_inner=batch_size_inner, rng=rng)


def draw_batches(problem, schedule, k):
    """``k`` fresh minibatches on the problem's device, moved in one transfer.

    ``[None] * k`` (full data) when there is no schedule or it is full-batch.
    """
    if schedule is None or schedule.is_full:
        return [None] * k
    return schedule.draw(problem.xp, problem.device, k=k)
