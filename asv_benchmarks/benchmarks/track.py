"""``track_`` benchmarks: numbers other than time.

* ``BandwidthFraction`` — achieved bandwidth of the full-batch LogRegHPO gradients,
  counting the training matrix read **once** (the bytes that must be read) over the time
  of ``grad_g`` (and of the two-point stacked ``grad_g_many``), as a fraction of this
  device's measured copy bandwidth (bytes read + written of a 1 GiB copy);
* ``MemoryTracks.track_peak_memory`` — peak extra memory of one step (MB; CuPy memory
  pool on cupy, tracemalloc on numpy);
* ``SolverTracks.track_state_memory`` — bytes held by the solver state (MB);
* ``SolverTracks.track_overhead`` — framework overhead: step time / sum of the standalone
  times of the oracle calls the step makes, interleaved in rounds, median of the
  per-round ratios (1.0 = no overhead); ``track_overhead_replayed`` divides by the same
  calls replayed in the step's order instead (what the step adds to its calls);
* ``SyncTracks.track_syncs`` — implicit host-device synchronisations in one step (cupy
  only; 0 expected);
* ``ArrayOpTracks.track_array_ops`` — array operations of one step, counted on
  array_api_strict (small size): a proxy for GPU kernel launches that any machine measures.

Tracks that do not apply to a backend skip in ``setup`` (asv shows n/a).
"""

from __future__ import annotations

import functools

from .common import (SOLVERS, XPBenchmark, backend_device, make_problem, on_gpu, oracle_calls,
                     oracle_points, solver_step_setup)
from .measure import (copy_bandwidth, count_step_ops, count_step_syncs, peak_step_memory,
                      state_nbytes, step_overhead, throughput_time)


@functools.lru_cache(maxsize=None)
def _copy_bw(backend):
    from .common import get_xp

    xp = get_xp(backend)
    from . import measure

    return copy_bandwidth(xp, nbytes=measure.COPY_BYTES_CPU if not on_gpu(backend) else 1 << 30,
                          device=backend_device(backend))


class BandwidthFraction(XPBenchmark):
    unit = "fraction of copy bandwidth"

    def setup(self, backend, size, dtype):
        self.setup_backend(backend, size, dtype)
        if backend == "array_api_strict":
            raise NotImplementedError("bandwidth is tracked on numpy, cupy and torch")
        self.problem = make_problem("logreg_binary", backend, size, dtype)
        self.calls = oracle_calls(self.problem, oracle_points(self.problem))
        A = self.problem.A_train
        self.nbytes = A.shape[0] * A.shape[1] * (4 if dtype == "float32" else 8)
        self.bw = _copy_bw(backend)

    def track_grad_g(self, backend, size, dtype):
        t = throughput_time(self.calls["grad_g"], self.xp)
        return self.nbytes / t / self.bw

    def track_grad_g_many2(self, backend, size, dtype):
        t = throughput_time(self.calls["grad_g_many2"], self.xp)
        return self.nbytes / t / self.bw


class _SolverSetup(XPBenchmark):
    """Setup shared by the per-solver tracks (no benchmarks of its own)."""

    param_names = XPBenchmark.param_names + ["solver"]
    params = XPBenchmark.params + [SOLVERS]
    #: backends a subclass's tracks apply to
    backends = ("numpy", "cupy", "torch")

    def setup(self, backend, size, dtype, solver):
        self.setup_backend(backend, size, dtype)
        if backend not in self.backends:
            raise NotImplementedError(f"{type(self).__name__} is measured on "
                                      f"{', '.join(self.backends)} only")
        if solver in ("fosl", "memcs") and size == "tall" and backend != "cupy":
            raise NotImplementedError("tall size: cupy only for the AUC problem")
        self.problem, self.solver, self.state = solver_step_setup(solver, backend, size, dtype)
        self.solver.step(self.problem, self.state)
        self.sync()


#: step_overhead results by (backend, size, dtype, solver), measured once per process
_OVERHEAD: dict = {}


class SolverTracks(_SolverSetup):
    """Framework overhead (step / Σ oracles) and state memory, every backend but strict."""

    def _overhead(self, params):
        # counting oracle, as refbilevel.run steps; step and calls interleaved in rounds.
        # Within one process, one measurement serves both tracks of a parameter set.
        if params not in _OVERHEAD:
            _OVERHEAD[params] = step_overhead(self.problem, self.solver, self.state, self.xp)
        return _OVERHEAD[params]

    def track_overhead(self, backend, size, dtype, solver):
        return self._overhead((backend, size, dtype, solver))["ratio"]
    track_overhead.unit = "step / sum of oracles"

    def track_overhead_replayed(self, backend, size, dtype, solver):
        return self._overhead((backend, size, dtype, solver))["ratio_replay"]
    track_overhead_replayed.unit = "step / its oracle calls replayed in order"

    def track_state_memory(self, backend, size, dtype, solver):
        return state_nbytes(self.solver.step(self.problem, self.state)) / 1e6
    track_state_memory.unit = "MB"


class MemoryTracks(_SolverSetup):
    """Peak extra memory of one step: CuPy memory pool (cupy) or tracemalloc (numpy)."""

    backends = ("numpy", "cupy")

    def track_peak_memory(self, backend, size, dtype, solver):
        return peak_step_memory(self.problem, self.solver, self.state, self.xp) / 1e6
    track_peak_memory.unit = "MB"


class SyncTracks(_SolverSetup):
    """Implicit host-device synchronisations in one step (cupyx.allow_synchronize; 0 expected)."""

    backends = ("cupy",)

    def track_syncs(self, backend, size, dtype, solver):
        return count_step_syncs(self.problem, self.solver, self.state, self.xp)
    track_syncs.unit = "synchronisations"


class ArrayOpTracks(_SolverSetup):
    """Array operations of one step (array_api_strict): a proxy for GPU kernel launches."""

    backends = ("array_api_strict",)

    def track_array_ops(self, backend, size, dtype, solver):
        return sum(count_step_ops(self.problem, self.solver, self.state).values())
    track_array_ops.unit = "array operations"
