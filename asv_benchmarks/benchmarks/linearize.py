"""Linearise once: ten Hessian-vector products at one point (the work of a CG solve).

``time_one_shot`` calls ``hvp_g`` ten times (each recomputes the forward pass: three
passes over the training data for the linear models); ``time_linearized`` linearises
``g`` once with ``linearize_g`` and applies its ``hvp`` ten times (two passes each).
Problems: LogRegHPO binary and multinomial (C = 5), DataCleaning with the MLP.
"""

from __future__ import annotations

from .common import XPBenchmark, _rand_like, make_problem, oracle_points

N_PRODUCTS = 10
KINDS = ["logreg_binary", "logreg_multinomial", "cleaning_mlp"]


class TenHVPs(XPBenchmark):
    param_names = XPBenchmark.param_names + ["kind"]
    params = XPBenchmark.params + [KINDS]

    def setup(self, backend, size, dtype, kind):
        self.setup_backend(backend, size, dtype)
        if size == "tall" and backend != "cupy":
            raise NotImplementedError("tall size: cupy only")
        self.problem = P = make_problem(kind, backend, size, dtype)
        pts = oracle_points(P)
        self.x, self.y = pts["x"], pts["y"]
        self.vs = [_rand_like(P.xp, self.y, self.y.shape, 10 + k) for k in range(N_PRODUCTS)]
        self.time_one_shot(backend, size, dtype, kind)      # warm-up
        self.time_linearized(backend, size, dtype, kind)

    def time_one_shot(self, backend, size, dtype, kind):
        for v in self.vs:
            self.problem.hvp_g(self.x, self.y, v)
        self.sync()

    def time_linearized(self, backend, size, dtype, kind):
        lin = self.problem.linearize_g(self.x, self.y)
        for v in self.vs:
            lin.hvp(v)
        self.sync()
