"""Solvers: one module per algorithm, each a frozen dataclass with ``init`` and ``step``."""

from .base import OracleCalls, Solver, SolverState

__all__ = ["OracleCalls", "Solver", "SolverState"]
