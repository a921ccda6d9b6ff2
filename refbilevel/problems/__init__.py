"""Bilevel and minimax-bilevel problems with hand-derived oracles."""

from .base import Batch, BilevelProblem, MinimaxBilevelProblem, take_rows

__all__ = ["Batch", "BilevelProblem", "MinimaxBilevelProblem", "take_rows"]
