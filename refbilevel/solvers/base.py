"""The solver protocol shared by every algorithm.

A solver is a frozen dataclass of hyperparameters with two pure methods::

    state = solver.init(problem, x0, y0, seed)   # seed: int in [0, 2**64) of the batch streams
    state = solver.step(oracle, state)           # one outer iteration, no host sync

``step`` is a function of its arguments only: the state holds device arrays, host scalars
and integers (the iteration is the position in the counter-based batch streams of
:mod:`refbilevel.sampling`), never a generator, so the same input state gives bitwise the
same output. ``oracle`` is a :class:`refbilevel.oracle.Oracle` (the driver builds one around
the problem: it counts the calls and serves the step's batches) or a bare problem (wrapped
in an uncounted oracle). ``step`` returns a new state (``dataclasses.replace``) and never
mutates its argument. Between record points nothing in a step may synchronise a GPU: no
``float()``/``bool()`` on device arrays, no data-dependent Python branches, no host
transfers other than the step's minibatch indices (one transfer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .._backend import to_host_scalar
from ..oracle import OracleCalls

__all__ = ["OracleCalls", "Solver", "SolverState", "evolve"]


def evolve(state, **changes):
    """``dataclasses.replace`` for solver states, without its per-call field machinery.

    States are frozen dataclasses without ``__post_init__``, so a copy of the instance
    dictionary with the changed fields is the same object ``dataclasses.replace`` builds
    (a step calls this once; ``replace`` costs about as much as a small oracle call).
    """
    fields = type(state).__dataclass_fields__
    if not changes.keys() <= fields.keys():
        raise TypeError(f"{type(state).__name__} has no field(s) "
                        f"{sorted(changes.keys() - fields.keys())}")
    new = object.__new__(type(state))
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


@dataclass(frozen=True)
class SolverState:
    """Fields every solver state has.

    Attributes
    ----------
    x, y : array
        Current outer and inner iterates (for minimax-bilevel problems, ``y`` is the
        max variable).
    iteration : int
        Outer iterations done; also the step index ``k`` of the batch streams.
    multiplier : float or None
        Penalty multiplier (λ or α) for penalty methods, else None.
    seed : int
        Key of the counter-based batch and block streams (:mod:`refbilevel.sampling`).
    """

    x: Any
    y: Any
    iteration: int = 0
    multiplier: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class Solver:
    """Base class of solvers: a frozen dataclass of hyperparameters."""

    #: Registry and CLI name.
    name: ClassVar[str] = "solver"
    #: Whether the solver takes a MinimaxBilevelProblem (else a BilevelProblem).
    minimax: ClassVar[bool] = False

    def init(self, problem, x0, y0, seed=0) -> SolverState:
        raise NotImplementedError

    def step(self, oracle, state: SolverState) -> SolverState:
        raise NotImplementedError

    def streams(self, problem) -> tuple:
        """The :class:`refbilevel.sampling.Stream` draws of one step (none by default)."""
        return ()

    def horizon(self) -> int | None:
        """Steps the algorithm is defined for (``None``: any number).

        Past it a solver keeps stepping by a documented continuation (e.g. MinimaxOPT's
        further stages); :func:`refbilevel.run.run` says so in the result's message.
        """
        return None

    def horizon_note(self) -> str:
        """What continuing past :meth:`horizon` does (one sentence)."""
        return ""

    def inner_residual(self, problem, state) -> float:
        r"""The lower-level residual the driver records: :math:`\|\nabla_y g(x, y)\|`."""
        return to_host_scalar(problem.inner_residual(state.x, state.y))

    def hyperparameters(self) -> dict:
        """The dataclass fields and their values (for ``config.json`` and ``--set``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
