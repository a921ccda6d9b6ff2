"""Bilevel and minimax-bilevel problems with hand-derived oracles."""

from .auc import MultiTaskAUC, MultiTaskAUCAnchored, MultiTaskAUCHead
from .base import Batch, BilevelProblem, MinimaxBilevelProblem, take_rows
from .cleaning import DataCleaning
from .layer_decay import LayerDecayMLP
from .logreg import LogRegHPO
from .meta import RankedMetaLearning
from .minimax_quadratic import MinimaxQuadratic
from .quadratic import Quadratic, Toy1D, toy_1d

__all__ = [
    "Batch",
    "BilevelProblem",
    "DataCleaning",
    "LayerDecayMLP",
    "LogRegHPO",
    "MinimaxBilevelProblem",
    "MinimaxQuadratic",
    "MultiTaskAUC",
    "MultiTaskAUCAnchored",
    "MultiTaskAUCHead",
    "Quadratic",
    "RankedMetaLearning",
    "Toy1D",
    "take_rows",
    "toy_1d",
]
