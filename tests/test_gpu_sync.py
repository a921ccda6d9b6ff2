"""Synchronisation-free solver steps (CuPy) and a smoke run of the asv benchmark suite.

* On CuPy, every solver's ``step`` runs under ``cupyx.allow_synchronize(False)``, which
  turns any implicit device-to-host synchronisation (``float()``, ``bool()``, ``.get()``,
  printing, data-dependent shapes) into a ``DeviceSynchronized`` error. A canary checks
  that the guard does catch a synchronising step, so the test can fail.
* On NumPy, the asv benchmark modules import and their ``setup``/``time_``/``track_``
  methods run at the small size (the same code asv runs), with sanity bounds on the
  tracked numbers and a second-implementation check of the peer steps; the array-operation
  counter (the launch proxy) is checked on hand-counted expressions.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

from refbilevel import _backend as B
from refbilevel import solvers as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASV_DIR = os.path.join(ROOT, "asv_benchmarks")

HAS_GPU = "cupy" in B.available_backends()
needs_gpu = pytest.mark.skipif(
    not HAS_GPU, reason="needs CuPy and a CUDA GPU: cupyx.allow_synchronize guards device syncs")

#: solver -> constructor kwargs that keep one step cheap (defaults otherwise)
SOLVER_KW = {
    "AID": {"n_inner": 5, "n_linear": 3},
    "ITD": {"n_inner": 5},
    "F2SA": {"n_inner": 3},
    "F2SAAdam": {"n_inner": 3},
    "MemCS": {"n_inner": 3},
}
#: steps that synchronise by design (exact oracles with host-side stopping tests)
SYNC_BY_DESIGN = {"ImplicitGD": "solves the inner problem exactly (Newton-CG with tolerance tests)"}


def _solver_classes():
    out = []
    for name in S.__all__:
        cls = getattr(S, name)
        if isinstance(cls, type) and issubclass(cls, S.Solver) and cls is not S.Solver:
            out.append(name)
    return sorted(out)


def _problem_for(solver, xp):
    from refbilevel import datasets
    from refbilevel.problems import LogRegHPO

    if solver.minimax:
        return datasets.make_multitask_auc(n_tasks=4, n_train=40, n_val=40, n_features=6, xp=xp)
    return LogRegHPO.synthetic(n_samples=1200, n_features=12, xp=xp)


@needs_gpu
@pytest.mark.parametrize("name", _solver_classes())
def test_step_has_no_host_sync(name):
    import cupyx

    if name in SYNC_BY_DESIGN:
        pytest.skip(f"{name} synchronises by design: {SYNC_BY_DESIGN[name]}")
    xp = B.backend_namespace("cupy")
    solver = getattr(S, name)(**SOLVER_KW.get(name, {}))
    problem = _problem_for(solver, xp)
    state = solver.init(problem, problem.init_x(), problem.init_y(), np.random.default_rng(0))
    state = solver.step(problem, state)          # first step outside: kernels compile
    B.synchronize(xp)
    with cupyx.allow_synchronize(False):
        for _ in range(2):
            state = solver.step(problem, state)
    B.synchronize(xp)
    assert math.isfinite(B.to_host_scalar(xp.sum(state.x)))


@needs_gpu
def test_sync_guard_catches_a_synchronising_step():
    """Canary: a step that reads a device scalar on the host must raise under the guard."""
    import cupyx

    xp = B.backend_namespace("cupy")
    solver = S.MinimaxOPT()
    problem = _problem_for(solver, xp)
    state = solver.init(problem, problem.init_x(), problem.init_y(), np.random.default_rng(0))

    class Syncing(S.MinimaxOPT):
        def step(self, problem, state):
            new = super().step(problem, state)
            if float(xp.sum(new.x)) > 1e300:     # a data-dependent branch: a sync
                return state
            return new

    bad = Syncing()
    with pytest.raises(cupyx.DeviceSynchronized):
        with cupyx.allow_synchronize(False):
            bad.step(problem, state)


# ------------------------------------------------------------------ asv smoke run (CPU)
@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, ASV_DIR)
    try:
        import benchmarks.common
        import benchmarks.oracles
        import benchmarks.peers
        import benchmarks.solvers
        import benchmarks.measure
        import benchmarks.track
        old = benchmarks.measure.MIN_TIME, benchmarks.measure.COPY_BYTES_CPU
        benchmarks.measure.MIN_TIME = 0.002          # short timing batches: a smoke run
        benchmarks.measure.COPY_BYTES_CPU = 1 << 24
        yield benchmarks
        benchmarks.measure.MIN_TIME, benchmarks.measure.COPY_BYTES_CPU = old
    finally:
        sys.path.remove(ASV_DIR)


ARGS = ("numpy", "small", "float64")


def _methods(obj, prefix):
    return [m for m in dir(obj) if m.startswith(prefix)]


def test_asv_oracle_benchmarks_run(bench):
    classes = [bench.oracles.LogRegBinary, bench.oracles.LogRegMultinomial,
               bench.oracles.CleaningMLP, bench.oracles.MultiTaskAUCOracles]
    ran = 0
    for cls in classes:
        b = cls()
        b.setup(*ARGS)
        for m in _methods(b, "time_"):
            getattr(b, m)(*ARGS)
            ran += 1
    assert ran == 4 * 4 + 3          # four oracles each, stacked grad_g on three problems


def test_asv_solver_and_track_benchmarks_run(bench):
    for name in bench.common.SOLVERS:
        b = bench.solvers.SolverStep()
        b.setup(*ARGS, name)
        b.time_step(*ARGS, name)
        t = bench.track.SolverTracks()
        t.setup(*ARGS, name)
        # a ratio of two timings: a broken recorder gives 0, inf or NaN; its size is a
        # speed measurement (asv reports it) and is not asserted here
        ratio = t.track_overhead(*ARGS, name)
        assert 0.0 < ratio < math.inf, (name, ratio)
        replayed = t.track_overhead_replayed(*ARGS, name)
        assert 0.0 < replayed < math.inf, (name, replayed)
        assert t.track_state_memory(*ARGS, name) > 0.0
        m = bench.track.MemoryTracks()
        m.setup(*ARGS, name)
        peak = m.track_peak_memory(*ARGS, name)
        assert 0.0 < peak < 200.0, (name, peak)      # MB, small problem
        with pytest.raises(NotImplementedError):      # syncs are counted on cupy only: skip
            bench.track.SyncTracks().setup(*ARGS, name)


def test_peak_step_memory_leaves_out_what_the_problem_builds_once(bench):
    # oracle: the bytes of the data. A fresh binary LogRegHPO on NumPy makes column-major
    # copies of its two data matrices on its first full-batch call (LinearModel.
    # product_layout); a step's peak must not count them: below one matrix's bytes here,
    # where a first step measured alone exceeds both
    import gc
    import tracemalloc

    from refbilevel.problems import LogRegHPO

    def fresh():                         # not make_problem: its problems are cached
        data = bench.common.bench_data(4000, 200, backend="numpy", dtype="float64")
        return bench.common.solver_step_setup("minimaxopt", "numpy", None, "float64",
                                              problem=LogRegHPO(*data))

    p, solver, state = fresh()
    data_bytes = p.A_train.nbytes + p.A_val.nbytes
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        solver.step(p, state)
        first = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert first > data_bytes
    p, solver, state = fresh()
    xp = bench.common.get_xp("numpy")
    assert bench.measure.peak_step_memory(p, solver, state, xp) < p.A_train.nbytes


def test_array_op_counter_counts_what_computes(bench):
    """Hand-counted expressions: computing operations count once each, views do not, and
    the namespace is restored afterwards."""
    xp = pytest.importorskip("array_api_strict")
    exp = xp.exp
    a, b = xp.asarray([1.0, 2.0, 3.0]), xp.asarray([0.5, 0.5, 0.5])
    with bench.measure.counting_array_ops() as counts:
        (a + b) * xp.exp(a)                              # 3: add, exp, mul
        a[0:2], xp.reshape(a, (3, 1)).T, a[None, :]      # views: 0
        a[xp.asarray([0, 2])]                            # a gather: 1
        xp.linalg.vector_norm(a)                         # 1 (its internals not again)
        2.0 * a - 1.0                                    # 2: rmul, sub
    assert dict(counts) == {"__add__": 1, "exp": 1, "__mul__": 1, "__getitem__": 1,
                            "linalg.vector_norm": 1, "__rmul__": 1, "__sub__": 1}
    assert xp.exp is exp
    a + b                                                # outside the block: not counted
    assert sum(counts.values()) == 7


def test_asv_array_op_tracks(bench):
    pytest.importorskip("array_api_strict")
    args = ("array_api_strict", "small", "float64")
    t = bench.track.ArrayOpTracks()
    t.setup(*args, "minimaxopt")
    # MinimaxOPT on the binary LogRegHPO: two oracle calls with two data products each,
    # and the three variable updates: dozens of operations, not 0 and not thousands
    assert 20 <= t.track_array_ops(*args, "minimaxopt") <= 100
    with pytest.raises(NotImplementedError):
        t.setup(*ARGS, "minimaxopt")                     # counted on array_api_strict only
    with pytest.raises(NotImplementedError):
        bench.track.SolverTracks().setup(*args, "minimaxopt")


def test_asv_invalid_combinations_skip(bench):
    b = bench.solvers.SolverStep()
    with pytest.raises(NotImplementedError):
        b.setup("numpy", "large", "float64", "minimaxopt")     # GPU-only size
    if not HAS_GPU:
        with pytest.raises(NotImplementedError):
            b.setup("cupy", "small", "float64", "minimaxopt")


def test_asv_bandwidth_track_is_a_fraction(bench):
    b = bench.track.BandwidthFraction()
    b.setup(*ARGS)
    frac = b.track_grad_g(*ARGS)
    # bytes once / copy bandwidth, a ratio of two timings: finite and positive unless the
    # track is broken; its size is a speed measurement (asv reports it), not asserted here
    assert 0.0 < frac < math.inf


def test_peer_steps_match_refbilevel(bench):
    """Independent implementations (PyTorch eager) of the two steps agree with refbilevel."""
    pytest.importorskip("torch")
    problem = bench.common.make_problem("logreg_binary", "numpy", "small", "float64")
    for step in ("minimaxopt", "f2sa"):
        err = bench.peers.check_peers(problem, step, impls=("torch",))
        assert err["torch"] < 1e-12, (step, err)


def test_peer_benchmark_refbilevel_numpy(bench):
    b = bench.peers.PeerSteps()
    for step in ("f2sa", "minimaxopt"):
        b.setup("refbilevel-numpy", "small", "float64", step)
        b.time_step("refbilevel-numpy", "small", "float64", step)


def test_recorded_oracles_match_the_documented_counts(bench):
    """The recorded oracle calls of a MinimaxOPT step are its documented 1 + 1 (stacked)."""
    from benchmarks.measure import record_step_oracles
    from refbilevel.oracle import Oracle

    problem, solver, state = bench.common.solver_step_setup("minimaxopt", *ARGS)
    calls = [c[0] for c in record_step_oracles(problem, solver, state)]
    assert sorted(calls) == ["grad_f", "grad_g_many"]
    oracle = Oracle(problem)
    solver.step(oracle, state)
    assert oracle.calls.as_dict() == {"grad_f": 1, "grad_g": 2, "hvp": 0, "cross": 0}
