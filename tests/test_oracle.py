"""The oracle layer and the pure step: measured call counts, purity over the registry.

* Measured counts (``Oracle.calls``) equal the per-step formulas the solvers' docstrings
  state (transcribed in tests/_documented_calls.py, whose phrases are found in the
  docstrings), over every registered solver and the variants that change the count.
* ``solver.step`` is a function of its arguments: the same input state gives bitwise the
  same output, in full-batch, minibatch and block-sampling modes, for every registered
  solver; and a step replayed alone from a stored state equals the step of the run.
* The counting rule (stacked calls count per point, minimax-bilevel calls per block,
  ``linearize_g`` per application) on a problem whose calls are known by construction.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from _documented_calls import PHRASES, documented_calls
from refbilevel import registry
from refbilevel._backend import is_array, to_host
from refbilevel.oracle import Oracle, OracleCalls, as_oracle
from refbilevel.problems.minimax_quadratic import MinimaxQuadratic
from refbilevel.problems.quadratic import Quadratic
from refbilevel.solvers import (AID, BOME, F2BA, F2SA, FOSL, ITD, SABA, SOBA, VPBGD, F2SAAdam,
                                ImplicitGD,
                                MemCS, MinimaxOPT, MinimaxOPTStochastic, StocBiO)


def _bilevel(xp=None, device=None):
    from refbilevel.problems.logreg import LogRegHPO

    return LogRegHPO.synthetic(n_samples=40, n_features=3, seed=0, xp=xp, device=device)


def _minimax(xp=None, device=None):
    return MinimaxQuadratic.random(5, 2, 2, 3, seed=0, xp=xp, device=device)


#: Every registered solver, in variants that change its call count or its draws.
CASES = [
    MinimaxOPT(lr=0.01),
    MinimaxOPTStochastic(lr=0.01, batch_size_outer=8, batch_size_inner=6),
    F2SA(lr_y=0.01, n_inner=3),
    F2SA(lr_y=0.01, n_inner=2, batch_size_outer=5, batch_size_inner=7, sampling="iid"),
    F2SAAdam(n_inner=2, batch_size_outer=5, batch_size_inner=5),
    FOSL(), FOSL(n_sampled=2, gauss_seidel=True),
    FOSL(n_sampled=3, batch_size_outer=4, batch_size_inner=4),
    MemCS(n_inner=3), MemCS(n_inner=2, n_sampled=2),
    ImplicitGD(),
    AID(n_inner=3, n_linear=2, lr_inner=0.2, lr_outer=0.1),
    AID(n_inner=3, n_linear=2, lr_inner=0.2, lr_outer=0.1, warm_start_v=True),
    AID(n_inner=3, n_linear=2, lr_inner=0.2, lr_outer=0.1, method="neumann"),
    ITD(n_inner=4, lr_inner=0.2, lr_outer=0.1), ITD(n_inner=4, truncate=2, lr_inner=0.2),
    StocBiO(n_inner=3, n_neumann=2, lr_inner=0.2, batch_size_outer=4, batch_size_inner=4),
    SOBA(lr_inner=0.2, batch_size_outer=4, batch_size_inner=4),
    SOBA(lr_inner=0.2, batch_size_outer=None, batch_size_inner=None),
    SOBA(lr_inner=0.2, batch_size_outer=4, batch_size_inner=4, lr_schedule="sqrt"),
    SABA(lr_inner=0.2, batch_size_outer=4, batch_size_inner=4),
    SABA(lr_inner=0.2, batch_size_outer=None, batch_size_inner=1, sampling="iid"),
    BOME(n_inner=3, lr_inner=0.2), BOME(n_inner=3, lr_inner=0.2, phi="value_gap"),
    VPBGD(n_inner=3), F2BA(n_inner=3, lr_inner=0.2),
]
IDS = [f"{c.name}-{i}" for i, c in enumerate(CASES)]


def test_cases_cover_the_registry():
    assert {c.name for c in CASES} == set(registry.SOLVERS)


def _problem(solver, xp=None, device=None):
    return _minimax(xp, device) if solver.minimax else _bilevel(xp, device)


@pytest.mark.parametrize("solver", CASES, ids=IDS)
def test_measured_calls_equal_documented(solver, xp, device):
    P = _problem(solver, xp, device)
    oracle = Oracle(P)
    state = solver.init(P, None, None, 7)
    assert oracle.calls == OracleCalls(), "init must not call oracles"
    n = 3
    for _ in range(n):
        state = solver.step(oracle, state)
    assert oracle.calls == n * documented_calls(solver, P), solver
    assert state.iteration == n


@pytest.mark.parametrize("name", sorted(registry.SOLVERS))
def test_documented_phrase_is_in_the_docstring(name):
    doc = " ".join((inspect.getdoc(registry.SOLVERS[name]) or "").split())
    assert " ".join(PHRASES[name].split()) in doc, name


def test_run_reports_the_measured_calls():
    from refbilevel.run import run

    P = _bilevel()
    s = F2SA(lr_y=0.05, n_inner=4, batch_size_outer=5, batch_size_inner=5)
    r = run(P, s, n_iter=5, record_every=2, metrics=())
    assert r.calls == 5 * documented_calls(s, P) == OracleCalls(grad_f=25, grad_g=50)
    np.testing.assert_array_equal(r.history["calls_grad_f"], 5 * r.history["iteration"])


# ---------------------------------------------------------------------------- purity
def _arrays(state):
    out = {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if is_array(v):
            out[f.name] = np.array(to_host(v), copy=True)
        elif isinstance(v, tuple) and hasattr(v, "_fields"):
            for k in v._fields:
                if is_array(getattr(v, k)):
                    out[f"{f.name}.{k}"] = np.array(to_host(getattr(v, k)), copy=True)
        elif isinstance(v, tuple) and v and all(is_array(a) for a in v):
            for i, a in enumerate(v):
                out[f"{f.name}[{i}]"] = np.array(to_host(a), copy=True)
        else:
            out[f.name] = v
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert a[k].tobytes() == b[k].tobytes(), f"field {k} differs"
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("solver", CASES, ids=IDS)
def test_step_is_a_function_of_its_arguments(solver, xp, device):
    P = _problem(solver, xp, device)
    state = solver.init(P, None, None, 11)
    for _ in range(2):
        state = solver.step(Oracle(P), state)
    before = _arrays(state)
    a = solver.step(Oracle(P), state)
    b = solver.step(P, state)             # a bare problem gives the same step
    c = solver.step(Oracle(P), state)
    _same(before, _arrays(state))         # the input state is untouched
    _same(_arrays(a), _arrays(b))
    _same(_arrays(a), _arrays(c))
    if registry.SOLVERS[solver.name] is not ImplicitGD:
        other = solver.step(Oracle(P), dataclasses.replace(state, seed=12))
        if _random(solver, P):            # a different key draws other batches
            assert any(np.any(_arrays(other)[k] != v) for k, v in _arrays(a).items()
                       if isinstance(v, np.ndarray))


def _random(solver, P):
    return any(not s.full for s in solver.streams(P))


@pytest.mark.parametrize("solver", [c for c in CASES if _random(c, _problem(c))],
                         ids=lambda s: s.name)
def test_a_step_replayed_alone_equals_the_step_of_the_run(solver):
    from refbilevel.run import run

    P = _problem(solver)
    r6 = run(P, solver, n_iter=6, seed=3, record_every=1, metrics=())
    r5 = run(P, solver, n_iter=5, seed=3, record_every=1, metrics=())
    replay = solver.step(P, r5.state)
    _same(_arrays(replay), _arrays(r6.state))


# ---------------------------------------------------------------- the counting rule
def test_counting_rule_stacked_linearized_and_uncounted():
    P = Quadratic.random(2, 3, seed=0)
    o = Oracle(P)
    x, y = P.init_x(), P.init_y()
    o.grad_f(x, y)
    o.grad_g_many(x, P.xp.stack([y, y, y]))
    o.grad_g_y_many(x, P.xp.stack([y, y]))
    lin = o.linearize_g(x, y)
    lin.hvp(y), lin.hvp(y), lin.cross(y)
    o.g(x, y)
    o.hypergradient(x)                    # an exact oracle: not counted
    assert o.calls == OracleCalls(grad_f=1, grad_g=6, hvp=2, cross=1)
    np.testing.assert_array_equal(to_host(lin.hvp(y)), to_host(P.hvp_g(x, y, y)))
    assert as_oracle(o) is o and as_oracle(P).calls == OracleCalls()


def test_counting_rule_blocks():
    P = _minimax()
    o = Oracle(P)
    x, y, z = P.init_x(), P.init_y(), P.init_z()
    idx = P.all_blocks()[:2]
    o.grad_f(x, y, z[:2], idx)
    o.grad_g_many(x, P.xp.stack([z[:2], z[:2]]), idx)
    assert o.calls == OracleCalls(grad_f=2, grad_g=4)


def test_oracle_log_records_draws_and_calls():
    P = _bilevel()
    s = SOBA(batch_size_outer=4, batch_size_inner=6)
    o = Oracle(P, log=True)
    state = s.init(P, None, None, 5)
    for _ in range(2):
        state = s.step(o, state)
    assert [(k, name) for k, name, _ in o.draws] == [(0, "outer"), (0, "inner"),
                                                     (1, "outer"), (1, "inner")]
    assert [a[0].shape for _, _, a in o.draws] == [(4,), (6,), (4,), (6,)]
    assert {(k, m) for k, m, _ in o.log} >= {(0, "grad_f"), (1, "hvp_g"), (1, "cross_g")}


# -------------------------------------------------------------------------- naming
def test_solver_fields_follow_one_vocabulary():
    """Inner-loop lengths are ``n_inner``; step sizes start with ``lr``; minibatch sizes are
    ``batch_size_outer``/``batch_size_inner``; no solver re-invents these names."""
    forbidden = {"n_inner_steps", "n_steps", "inner_steps", "T", "K", "batch_size", "step_size",
                 "outer_ratio", "lmbda"}
    for name, cls in registry.SOLVERS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert not fields & forbidden, (name, fields & forbidden)
        for f in fields:
            if f.startswith("batch_size"):
                assert f in ("batch_size_outer", "batch_size_inner"), (name, f)
            if "step" in f and f != "steps_per_stage":
                raise AssertionError(f"{name}.{f}: step sizes are lr_*, loop lengths n_*")
        assert ("batch_size_outer" in fields) == ("batch_size_inner" in fields), name
        # one family for multipliers: lam (a fixed λ) or lam0 (the start of a schedule)
        assert not fields & {"alpha0", "gamma", "lmbda", "lambda0", "rho"}, name
        assert len(fields & {"lam", "lam0"}) <= 1, name
