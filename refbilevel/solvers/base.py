"""The solver protocol shared by every algorithm.

A solver is a frozen dataclass of hyperparameters with two pure methods::

    state = solver.init(problem, x0, y0, rng)   # rng: numpy Generator (host) for sampling
    state = solver.step(problem, state)         # one outer iteration, no host sync

States are frozen dataclasses deriving from :class:`SolverState`: device arrays plus
Python scalars (iteration, multiplier, oracle-call counters). ``step`` returns a new state
(``dataclasses.replace``) and never mutates its argument. Between record points nothing
in a step may synchronise a GPU: no ``float()``/``bool()`` on device arrays, no
data-dependent Python branches, no host transfers other than the minibatch indices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["OracleCalls", "Solver", "SolverState"]


@dataclass(frozen=True)
class OracleCalls:
    """Oracle calls made so far, by kind (see :mod:`refbilevel.problems.base`)."""

    grad_f: int = 0
    grad_g: int = 0
    hvp: int = 0
    cross: int = 0

    def add(self, *, grad_f: int = 0, grad_g: int = 0, hvp: int = 0, cross: int = 0) -> OracleCalls:
        """A new counter with the given calls added."""
        return OracleCalls(self.grad_f + grad_f, self.grad_g + grad_g,
                           self.hvp + hvp, self.cross + cross)

    def __add__(self, other: OracleCalls) -> OracleCalls:
        return self.add(**other.as_dict())

    def __sub__(self, other: OracleCalls) -> OracleCalls:
        return OracleCalls(self.grad_f - other.grad_f, self.grad_g - other.grad_g,
                           self.hvp - other.hvp, self.cross - other.cross)

    @property
    def gradients(self) -> int:
        """First-order calls: ``grad_f + grad_g``."""
        return self.grad_f + self.grad_g

    @property
    def total(self) -> int:
        """All calls, each HVP and cross-derivative counted as one."""
        return self.grad_f + self.grad_g + self.hvp + self.cross

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SolverState:
    """Fields every solver state has.

    Attributes
    ----------
    x, y : array
        Current outer and inner iterates (for minimax-bilevel problems, ``y`` is the
        max variable).
    iteration : int
        Outer iterations done.
    calls : OracleCalls
        Oracle calls made so far.
    multiplier : float or None
        Penalty multiplier (λ or α) for penalty methods, else None.
    """

    x: Any
    y: Any
    iteration: int = 0
    calls: OracleCalls = field(default_factory=OracleCalls)
    multiplier: float | None = None


@dataclass(frozen=True)
class Solver:
    """Base class of solvers: a frozen dataclass of hyperparameters."""

    #: Registry and CLI name.
    name: ClassVar[str] = "solver"
    #: Whether the solver takes a MinimaxBilevelProblem (else a BilevelProblem).
    minimax: ClassVar[bool] = False

    def init(self, problem, x0, y0, rng) -> SolverState:
        raise NotImplementedError

    def step(self, problem, state: SolverState) -> SolverState:
        raise NotImplementedError

    def calls_per_step(self, problem) -> OracleCalls:
        """Oracle calls one ``step`` makes, as documented in the solver's docstring."""
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """The dataclass fields and their values (for ``config.json`` and ``--set``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
