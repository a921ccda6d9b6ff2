"""Framework overhead of one solver step: step time / sum of its oracle calls' times.

Usage (from the repository root; one BLAS thread, as the asv track ``track_overhead``)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \\
        python asv_benchmarks/step_overhead.py [--rounds R] [--dtype float32] [solver ...]

Times a step through a counting :class:`refbilevel.oracle.Oracle` (what
:func:`refbilevel.run` does) on the asv suite's problem of each solver at 2,000 x 50
(NumPy, float64 by default), and each oracle call of that step alone (the calls come
from the oracle's log), interleaved in rounds (:func:`benchmarks.measure.step_overhead`).
A ratio of 1 means the step costs exactly its oracle calls; the rest is Python
bookkeeping and the step's own arithmetic on parameter-sized vectors. The second ratio
divides by the step's calls replayed in the step's order (what the calls cost when they
follow one another as in the step). Brackets: 95 % confidence intervals of the median
per-round ratio (:func:`benchmarks.measure.median_interval`).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchmarks.common import SOLVERS, solver_step_setup  # noqa: E402
from benchmarks.measure import step_overhead  # noqa: E402

from refbilevel._backend import backend_namespace  # noqa: E402


def overhead(solver_name: str, size=(2000, 50), dtype="float64", rounds=7) -> dict:
    """:func:`benchmarks.measure.step_overhead` of one solver's first step."""
    problem, solver, state = solver_step_setup(solver_name, "numpy", size, dtype)
    return step_overhead(problem, solver, state, backend_namespace("numpy"), rounds=rounds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("solvers", nargs="*", default=["minimaxopt", "f2sa"],
                    help=f"any of {', '.join(SOLVERS)}")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    for name in args.solvers:
        r = overhead(name, dtype=args.dtype, rounds=args.rounds)
        ci = "[{:.3f}, {:.3f}]".format
        print(f"{name:>12}: step {r['t_step'] * 1e6:9.1f} us, sum of oracles "
              f"{r['t_sum'] * 1e6:9.1f} us, ratio {r['ratio']:.3f} "
              f"(CPU time: {r['cpu_ratio']:.3f} {ci(*r['cpu_ratio_ci'])}); oracles replayed "
              f"in order {r['t_replay'] * 1e6:9.1f} us, ratio {r['ratio_replay']:.3f} "
              f"(CPU time: {r['cpu_ratio_replay']:.3f} {ci(*r['cpu_ratio_replay_ci'])})",
              flush=True)


if __name__ == "__main__":
    main()
