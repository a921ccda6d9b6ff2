"""Framework overhead of one solver step: step time / sum of its oracle calls' times.

Usage (from the repository root; one BLAS thread, as the asv track ``track_overhead``)::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        python asv_benchmarks/step_overhead.py [solver ...]

Times a step through a counting :class:`refbilevel.oracle.Oracle` (what
:func:`refbilevel.run` does) on the logistic problem at 2,000 x 50 (NumPy, float64), and
each oracle call of that step alone (the calls come from the oracle's log). A ratio of 1
means the step costs exactly its oracle calls; the rest is Python bookkeeping.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchmarks.common import solver_step_setup  # noqa: E402
from benchmarks.measure import oracle_sum_time, record_step_oracles, throughput_time  # noqa: E402

from refbilevel._backend import backend_namespace  # noqa: E402
from refbilevel.oracle import Oracle  # noqa: E402


def overhead(solver_name: str, size=(2000, 50)) -> tuple[float, float, float]:
    problem, solver, state = solver_step_setup(solver_name, "numpy", size, "float64")
    xp = backend_namespace("numpy")
    oracle = Oracle(problem)
    t_step = throughput_time(lambda: solver.step(oracle, state), xp, repeat=7)
    calls = record_step_oracles(problem, solver, state)
    t_sum, _ = oracle_sum_time(problem, calls, xp, repeat=7)
    return t_step, t_sum, t_step / t_sum


if __name__ == "__main__":
    for name in sys.argv[1:] or ["minimaxopt", "f2sa"]:
        t_step, t_sum, ratio = overhead(name)
        print(f"{name:>12}: step {t_step * 1e6:9.1f} us, sum of oracles {t_sum * 1e6:9.1f} us, "
              f"ratio {ratio:.3f}")
