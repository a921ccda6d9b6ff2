"""Oracle timings: grad_f, grad_g, hvp_g, cross_g (and the stacked two-point grad_g).

Problems: LogRegHPO binary and multinomial (C = 5), DataCleaning with the two-layer MLP
(hidden 64, C = 5) and MultiTaskAUC (8 tasks, rank 10), at the sizes of
:data:`common.SIZES` (large and tall only on a GPU backend).
"""

from __future__ import annotations

from .common import XPBenchmark, make_problem, oracle_calls, oracle_points


class _Oracles(XPBenchmark):
    kind = None

    def setup(self, backend, size, dtype):
        self.setup_backend(backend, size, dtype)
        if self.kind != "logreg_binary" and size == "tall" and backend != "cupy":
            raise NotImplementedError("tall size: cupy only for this problem")
        self.problem = make_problem(self.kind, backend, size, dtype)
        self.calls = oracle_calls(self.problem, oracle_points(self.problem))
        for f in self.calls.values():   # warm-up: kernels compiled, pools grown
            f()
        self.sync()

    def _run(self, name):
        try:
            f = self.calls[name]
        except KeyError:
            raise NotImplementedError(f"{self.kind} has no {name}") from None
        f()
        self.sync()

    def time_grad_f(self, backend, size, dtype):
        self._run("grad_f")

    def time_grad_g(self, backend, size, dtype):
        self._run("grad_g")

    def time_hvp_g(self, backend, size, dtype):
        self._run("hvp_g")

    def time_cross_g(self, backend, size, dtype):
        self._run("cross_g")


class LogRegBinary(_Oracles):
    kind = "logreg_binary"

    def time_grad_g_many2(self, backend, size, dtype):
        """Stacked ``grad_g`` at two points (one pass over the data)."""
        self._run("grad_g_many2")


class LogRegMultinomial(_Oracles):
    kind = "logreg_multinomial"

    def time_grad_g_many2(self, backend, size, dtype):
        self._run("grad_g_many2")


class CleaningMLP(_Oracles):
    kind = "cleaning_mlp"

    def time_grad_g_many2(self, backend, size, dtype):
        self._run("grad_g_many2")


class MultiTaskAUCOracles(_Oracles):
    kind = "auc"
