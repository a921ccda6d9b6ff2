"""One ``step`` of each seed solver (MinimaxOPT, F2SA, F2SA-Adam, FOSL, MemCS) and of
AID-CG and ITD, from the same initial state every time (steps are pure, so each call
does identical work). Settings: F2SA T = 5, AID 20 inner GD steps + 10 CG steps, ITD 20
inner steps (full reverse), MemCS K = 5; LogRegHPO binary for the bilevel solvers,
MultiTaskAUC (8 tasks) for FOSL and MemCS; full batch.
"""

from __future__ import annotations

from .common import SOLVERS, XPBenchmark, solver_step_setup


class SolverStep(XPBenchmark):
    param_names = XPBenchmark.param_names + ["solver"]
    params = XPBenchmark.params + [SOLVERS]

    def setup(self, backend, size, dtype, solver):
        self.setup_backend(backend, size, dtype)
        if solver in ("fosl", "memcs") and size == "tall" and backend != "cupy":
            raise NotImplementedError("tall size: cupy only for the AUC problem")
        self.problem, self.solver, self.state = solver_step_setup(solver, backend, size, dtype)
        self.solver.step(self.problem, self.state)   # warm-up
        self.sync()

    def time_step(self, backend, size, dtype, solver):
        self.solver.step(self.problem, self.state)
        self.sync()
