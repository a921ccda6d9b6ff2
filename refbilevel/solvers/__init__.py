"""Solvers: one module per algorithm, each a frozen dataclass with ``init`` and ``step``."""

from .aid import AID
from .base import OracleCalls, Solver, SolverState
from .bome import BOME
from .f2sa import F2SA, F2SAAdam
from .fosl import FOSL
from .implicit import ImplicitGD
from .itd import ITD
from .memcs import MemCS
from .minimaxopt import MinimaxOPT, MinimaxOPTStochastic
from .penalty import F2BA, VPBGD
from .saba import SABA
from .soba import SOBA
from .stocbio import StocBiO

__all__ = ["OracleCalls", "Solver", "SolverState"]
__all__ += ["AID", "BOME", "F2BA", "ITD", "ImplicitGD", "SABA", "SOBA", "StocBiO", "VPBGD"]
__all__ += ["F2SA", "F2SAAdam", "FOSL", "MemCS", "MinimaxOPT", "MinimaxOPTStochastic"]
