"""Dask as a backend: row-chunked data on a ``dask.distributed`` cluster.

Oracle: the same problem built from the same host data with NumPy arrays, run with the
same solver, seed and number of steps. Dask splits each reduction over rows into one
partial sum per chunk plus a tree reduction, so the two runs differ by summation order
only: the iterates must agree to 1e-12 relative in float64 (measured: <= 1e-14).

The cluster lives in this process (``processes=False``: two worker threads, in-process
transport, no socket opened) and is closed at the end of the module. Every data array has
two chunks of rows: enough for the cross-chunk reductions and gathers, while the per-task
cost of the scheduler keeps the module to a few minutes on two cores.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="Dask is not installed (extra dask)")
distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

from refbilevel import _backend  # noqa: E402
from refbilevel.datasets import (  # noqa: E402
    cleaning_data, logreg_hpo_data, multitask_auc_data)
from refbilevel.problems.auc import MultiTaskAUC  # noqa: E402
from refbilevel.problems.cleaning import DataCleaning  # noqa: E402
from refbilevel.problems.logreg import LogRegHPO  # noqa: E402
from refbilevel.run import run  # noqa: E402
from refbilevel.solvers import bome, f2sa, fosl, memcs, minimaxopt, penalty  # noqa: E402

RTOL = 1e-12
ROWS_PER_CHUNK = 40
N_STEPS = 2


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _chunked(a, axis=0):
    """Dask array of host array ``a`` with ``ROWS_PER_CHUNK`` rows per chunk along ``axis``."""
    chunks = tuple(ROWS_PER_CHUNK if k == axis else -1 for k in range(a.ndim))
    return da.from_array(a, chunks=chunks)


def _logreg(wrap):
    s = logreg_hpo_data(160, 8, seed=3)          # 80 training rows: two chunks
    return LogRegHPO(wrap(s.A_train), wrap(s.y_train), wrap(s.A_val), wrap(s.y_val),
                     task="binary")


def _cleaning(wrap):
    s = cleaning_data(80, 80, 0, 6, 3, corruption=0.5, seed=4)
    return DataCleaning(wrap(s.A_train), wrap(s.y_train), wrap(s.A_val), wrap(s.y_val),
                        n_classes=3, model="linear")


def _auc(wrap):
    s = multitask_auc_data(3, 80, 80, 5, pos_ratio=0.3, seed=5)
    return MultiTaskAUC(*(wrap(a, axis=1) for a in (s.A_train, s.y_train, s.A_val, s.y_val)))


def _identity(a, axis=0):
    return a


PROBLEMS = {"logreg": _logreg, "cleaning": _cleaning, "multitask_auc": _auc}

#: Every first-order solver, with few inner steps (the agreement is per step).
BILEVEL_SOLVERS = {
    "minimaxopt": lambda: minimaxopt.MinimaxOPT(lr=0.1, steps_per_stage=2, n_stages=2),
    "minimaxopt_minibatch": lambda: minimaxopt.MinimaxOPTStochastic(
        lr=0.05, steps_per_stage=2, n_stages=2, batch_size_outer=30, batch_size_inner=30),
    "f2sa": lambda: f2sa.F2SA(n_inner=2, lr_y=0.01, lam0=10.0),
    "f2sa_minibatch_iid": lambda: f2sa.F2SA(n_inner=2, lr_y=0.01, lam0=10.0,
                                            batch_size_outer=30, batch_size_inner=30,
                                            sampling="iid"),
    "f2sa_adam": lambda: f2sa.F2SAAdam(n_inner=2),
    "bome": lambda: bome.BOME(n_inner=2),
    "vpbgd": lambda: penalty.VPBGD(n_inner=2),
    "f2ba": lambda: penalty.F2BA(n_inner=2),
}
MINIMAX_SOLVERS = {
    "fosl": lambda: fosl.FOSL(),
    "fosl_partial_minibatch": lambda: fosl.FOSL(n_sampled=2, batch_size_inner=30),
    "memcs": lambda: memcs.MemCS(n_inner=2),
}


def _relative_error(actual, desired) -> float:
    actual, desired = _backend.to_host(actual), np.asarray(desired)
    return float(np.max(np.abs(actual - desired)) / max(np.max(np.abs(desired)), 1e-300))


def _compare_runs(problem_name, make_solver):
    p_np = PROBLEMS[problem_name](_identity)
    p_da = PROBLEMS[problem_name](_chunked)
    assert _backend.is_dask(p_da.xp)
    ref = run(p_np, make_solver(), n_iter=N_STEPS, seed=7, metrics=())
    out = run(p_da, make_solver(), n_iter=N_STEPS, seed=7, metrics=())
    assert out.calls == ref.calls
    names = [f.name for f in dataclasses.fields(ref.state)
             if _backend.is_array(getattr(ref.state, f.name))]
    assert {"x", "y"} <= set(names)
    for name in names:
        err = _relative_error(getattr(out.state, name), getattr(ref.state, name))
        assert err <= RTOL, f"{name}: relative error {err:.2e} > {RTOL:g}"
    moved = [not np.array_equal(_backend.to_host(getattr(out, v)), _backend.to_host(start))
             for v, start in (("x", p_np.init_x()), ("y", p_np.init_y()))]
    assert any(moved), "the run did not move: the comparison would be vacuous"


#: The data-cleaning runs in the default suite. Every solver runs on logreg, which checks
#: that its step is lazy-friendly; on the cleaning problem the subject is the problem's
#: oracles, and every solver above calls only ``grad_f`` and ``grad_g``/``grad_g_many``
#: (measured with ``Oracle.calls``), so three runs cover them in the three ways a step
#: reads the data: full batch with stacked points (minimaxopt), gathered minibatches with
#: stacked points (minimaxopt_minibatch) and i.i.d. minibatches one point at a time
#: (f2sa_minibatch_iid). The other solvers on cleaning (about a third of this module's time)
#: run with ``-m slow``.
CLEANING_DEFAULT = ("minimaxopt", "minimaxopt_minibatch", "f2sa_minibatch_iid")


def _bilevel_cases():
    cases = []
    for problem in ("logreg", "cleaning"):
        for solver in BILEVEL_SOLVERS:
            slow = problem == "cleaning" and solver not in CLEANING_DEFAULT
            cases.append(pytest.param(problem, solver, id=f"{problem}-{solver}",
                                      marks=pytest.mark.slow if slow else ()))
    return cases


@pytest.mark.parametrize("problem, solver", _bilevel_cases())
def test_bilevel_solvers_match_numpy(client, problem, solver):
    _compare_runs(problem, BILEVEL_SOLVERS[solver])


@pytest.mark.parametrize("solver", list(MINIMAX_SOLVERS))
def test_minimax_solvers_match_numpy(client, solver):
    _compare_runs("multitask_auc", MINIMAX_SOLVERS[solver])


def _graph_size(tree) -> int:
    return sum(len(a.__dask_graph__()) for a in _backend._arrays_in(tree)
               if _backend._is_dask_array(a))


@pytest.mark.parametrize("problem, make_solver", [
    ("logreg", BILEVEL_SOLVERS["f2sa"]),
    ("logreg", BILEVEL_SOLVERS["minimaxopt_minibatch"]),
    ("multitask_auc", MINIMAX_SOLVERS["fosl"]),
], ids=["logreg-f2sa", "logreg-minimaxopt_minibatch", "multitask_auc-fosl"])
def test_graph_size_constant_across_steps(client, problem, make_solver):
    # oracle: a step from a persisted state builds the same graph whatever the step number,
    # and materialize leaves one task per chunk (the graph does not carry the past); the
    # first step may change the chunking of the start point (zeros in one chunk)
    p = PROBLEMS[problem](_chunked)
    solver = make_solver()
    state = _backend.materialize(solver.init(p, p.init_x(), p.init_y(), _backend.host_rng(0)))
    step_sizes, persisted = [], []
    for _ in range(5):
        lazy = solver.step(p, state)
        step_sizes.append(_graph_size(lazy))
        state = _backend.materialize(lazy)
        persisted.append(_graph_size(state))
        assert persisted[-1] == sum(a.npartitions for a in _backend._arrays_in(state)
                                    if _backend._is_dask_array(a))
    assert len(set(step_sizes[1:])) == 1, step_sizes
    assert len(set(persisted)) == 1, persisted
    assert step_sizes[-1] > persisted[-1]  # a step does build work (the check can fail)


def test_materialize_persists_without_gathering(client):
    # oracle: the persisted array's chunks are futures held by the cluster, the values are
    # those of the NumPy expression, and eager states come back as the same object
    a = np.arange(12.0).reshape(6, 2)
    lazy = _chunked(a) * 2.0 + 1.0
    state = {"x": lazy, "n": 3, "pair": (lazy[:, 0], None)}
    out = _backend.materialize(state)
    assert out["n"] == 3 and out["pair"][1] is None
    futures = distributed.futures_of(out["x"])
    assert len(futures) == out["x"].npartitions
    assert len(out["x"].__dask_graph__()) == out["x"].npartitions
    np.testing.assert_array_equal(_backend.to_host(out["x"]), 2.0 * a + 1.0)
    np.testing.assert_array_equal(_backend.to_host(out["pair"][0]), 2.0 * a[:, 0] + 1.0)
    eager = {"x": a}
    assert _backend.materialize(eager) is eager


def test_minibatch_gather_keeps_the_chunks(client):
    # oracle: NumPy fancy indexing; the gather reads rows chunk by chunk (one task per
    # input chunk plus the combination) without rechunking the data array
    a = np.arange(200.0).reshape(100, 2)
    A = _chunked(a)
    idx = np.array([97, 3, 41, 3, 80, 0], dtype=np.int64)
    xp = _backend.backend_namespace("dask")
    got = xp.take(A, _backend.from_host(idx, xp), axis=0)
    np.testing.assert_array_equal(_backend.to_host(got), a[idx])
    assert A.chunks == ((ROWS_PER_CHUNK,) * 2 + (20,), (2,))
    assert "rechunk" not in " ".join(str(k) for k in got.__dask_graph__().keys())


@pytest.mark.parametrize("stacked", [True, False])
def test_linalg_solve_on_dask(client, stacked, rng):
    # oracle: numpy.linalg.solve on the host arrays
    shape = (4, 3, 3) if stacked else (3, 3)
    A = rng.standard_normal(shape) + 4.0 * np.eye(3)
    B = rng.standard_normal(shape[:-1] + (2,)) if stacked else rng.standard_normal(3)
    xp = _backend.backend_namespace("dask")
    got = _backend.linalg_solve(_backend.from_host(A, xp), _backend.from_host(B, xp))
    assert tuple(got.shape) == B.shape
    np.testing.assert_allclose(_backend.to_host(got), np.linalg.solve(A, B),
                               rtol=1e-13, atol=1e-14)


@pytest.mark.slow   # ~75 s on 2 cores: every CG iteration of the exact solve is a round trip
def test_exact_oracle_on_dask(client):
    # oracle: the NumPy problem's exact hypergradient (client-side solves on dim_y systems)
    p_np, p_da = _logreg(_identity), _logreg(_chunked)
    x = np.linspace(-0.5, 0.5, p_np.dim_x)
    xp = p_da.xp
    got = p_da.hypergradient(_backend.from_host(x, xp))
    assert _relative_error(got, p_np.hypergradient(x)) <= 1e-10
