"""refbilevel: reference first-order bilevel and minimax-bilevel optimisation.

Hand-derived oracles certified against closed forms and finite differences, and
solvers written against the array API standard so that the same code runs on NumPy
(CPU) and CuPy (CUDA).
"""

__version__ = "0.1.0"

from . import checks, linalg
from .problems import Batch, BilevelProblem, MinimaxBilevelProblem
from .problems.quadratic import MinimaxQuadratic, Quadratic, toy_1d

__all__ = [
    "Batch",
    "BilevelProblem",
    "MinimaxBilevelProblem",
    "MinimaxQuadratic",
    "Quadratic",
    "__version__",
    "checks",
    "linalg",
    "toy_1d",
]
