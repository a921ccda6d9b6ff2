"""Bilevel and minimax-bilevel problems with hand-derived oracles."""

from .base import Batch, BilevelProblem, MinimaxBilevelProblem, take_rows
from .cleaning import DataCleaning
from .layer_decay import LayerDecayMLP
from .logreg import LogRegHPO

__all__ = ["Batch", "BilevelProblem", "DataCleaning", "LayerDecayMLP", "LogRegHPO",
           "MinimaxBilevelProblem", "take_rows"]
