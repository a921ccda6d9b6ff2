"""Full-batch trajectories of every registered (problem, solver) pair against a recording.

``tests/data/reference_trajectories.npz`` was recorded by
``tests/data/make_reference_trajectories.py`` from the code before the oracle layer and the
counter-based batch streams (float64, NumPy, full batch and full participation, 20 steps).
Those changes reorganise how a step gets its data and counts its calls, not what it
computes, so every iterate and every array of the final state must agree to a few ulps:
``|new - ref| <= 1e-15 * max|ref|`` per array (NaN where the recording has NaN: one pair
diverges at that size and step, and must keep doing so at the same entries).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from refbilevel import registry
from refbilevel._backend import to_host

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
sys.path.insert(0, DATA)
import make_reference_trajectories as maker  # noqa: E402

sys.path.remove(DATA)

RTOL = 1e-15
#: Pairs whose oracles or linear algebra changed arithmetic after the recording (not the
#: solver layer): commit 65a11df computes the matrix-vector products in a per-backend form
#: and CG's inner products in one operation, which reorders floating-point sums. Measured
#: deviations at the merge (relative to max|ref|): cleaning/implicit 8.8e-13, cleaning/aid
#: 3.1e-13, layer_decay/implicit 5.4e-14, multinomial/aid 8.9e-15, the others below 4e-15;
#: the solver refactoring alone reproduced every recorded array bit for bit. These pairs
#: are held to 1e-11 (CG's error amplification over 20 outer steps of a badly conditioned
#: inner problem), every other pair to RTOL.
REORDERED = {"logreg/f2sa_adam", "logreg/bome", "logreg/f2ba", "multinomial/implicit",
             "multinomial/aid", "cleaning/implicit", "cleaning/aid", "layer_decay/implicit",
             "layer_decay/aid"}
RTOL_REORDERED = 1e-11
#: Pairs whose oracles were rewritten for accuracy after the recording: the softmax
#: cross-entropy written relative to each row's dominant class (multinomial, cleaning and
#: layer-decay problems; values move by rounding only, <= 4.4e-15 relative per oracle) and
#: exact inner solves polished to the rounding floor (ImplicitGD). Adam's normalisation
#: m/sqrt(v) turns rounding-level changes of near-zero gradient entries into larger ones,
#: so the F2SA-Adam pairs are held to 1e-9, the others to 1e-11. Measured deviations at the
#: merge (relative to max|ref|): cleaning/f2sa_adam 1.1e-10, layer_decay/f2sa_adam 6.9e-12,
#: multinomial/f2sa_adam 2.9e-12, logreg/implicit 3.4e-14, multinomial/vpbgd 4.0e-14, the
#: others below 1e-14.
REWRITTEN = {"logreg/implicit": 1e-11, "multinomial/f2sa_adam": 1e-9,
             "multinomial/bome": 1e-11, "multinomial/vpbgd": 1e-11, "multinomial/f2ba": 1e-11,
             "cleaning/f2sa_adam": 1e-9, "cleaning/bome": 1e-11, "cleaning/f2ba": 1e-11,
             "layer_decay/minimaxopt_stochastic": 1e-11, "layer_decay/f2sa_adam": 1e-9,
             "layer_decay/itd": 1e-11}
#: Pairs of the binary logistic problem moved by its full-batch data layout: on NumPy the
#: oracles read a column-major copy of the features (``_backend.matvec_layout``), whose
#: BLAS products sum in another order. Measured deviations at that change (relative to
#: max|ref|): logreg/minimaxopt_stochastic 2.2e-15, logreg/vpbgd 1.3e-15, every other
#: logreg pair within its tolerance above (f2sa_adam 3.7e-14, implicit 3.9e-13, the rest
#: below 8e-16). Held to 1e-14.
RELAID = {"logreg/minimaxopt_stochastic": 1e-14, "logreg/vpbgd": 1e-14}
#: ImplicitGD on the MLP problem: y is the exact inner solution of a nonconvex problem,
#: found by a tolerance-driven Newton solve. After the reordering above it landed on
#: another inner solution (|dy| = 33 against |y| = 17, x still within 5e-14); with the
#: polished solve the hypergradient is taken at yet another stationary point and x departs
#: too (1.5e-2 after 20 steps). Nothing of this pair is comparable with the recording.
NOT_COMPARABLE = {"layer_decay/implicit"}


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(DATA, "reference_trajectories.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _close(name, new, ref, rtol=RTOL):
    new = np.asarray(new, dtype=np.float64)
    assert new.shape == ref.shape, f"{name}: shape {new.shape} vs recorded {ref.shape}"
    np.testing.assert_array_equal(np.isnan(new), np.isnan(ref), err_msg=name)
    ok = ~np.isnan(ref)
    if not ok.any():
        return
    scale = np.max(np.abs(ref[ok]))
    err = np.max(np.abs(new[ok] - ref[ok]))
    assert err <= rtol * scale, f"{name}: max deviation {err:.3e} > {rtol:g} * {scale:.3e}"


#: Hyperparameters renamed since the recording (old name -> new name).
RENAMED = {"alpha0": "lam0"}


def _trajectory(p_name, s_name, steps, settings):
    """The trajectory at the recorded ``settings``: the registry's suggestions and the
    solvers' defaults may change later (they are tuned by studies) without moving the
    recording's point of comparison."""
    problem = registry.build_problem(p_name, seed=0, params=maker.SIZES[p_name])
    solver = registry.build_solver(s_name, {RENAMED.get(k, k): v for k, v in settings.items()})
    from refbilevel.oracle import Oracle

    state = solver.init(problem, None, None, 0)
    oracle = Oracle(problem)
    xs, ys = [to_host(state.x)], [to_host(state.y)]
    for _ in range(steps):
        state = solver.step(oracle, state)
        xs.append(to_host(state.x))
        ys.append(to_host(state.y))
    return np.stack(xs), np.stack(ys), maker.state_arrays(state, "", {})


#: Solvers added after the recording; full-batch SABA is SOBA (tests/test_solvers_saba.py).
AFTER_RECORDING = ("saba",)


@pytest.mark.parametrize("p_name,s_name", [p for p in maker.pairs()
                                            if p[1] not in AFTER_RECORDING])
def test_full_batch_trajectory_matches_recording(reference, p_name, s_name):
    meta = json.loads(str(reference["meta"]))
    key = f"{p_name}/{s_name}"
    assert key in meta["settings"], f"{key} was not recorded: rerun the recording script"
    with np.errstate(all="ignore"):     # multinomial/vpbgd overflows at this size (recorded)
        xs, ys, arrays = _trajectory(p_name, s_name, meta["steps"], meta["settings"][key])
    if key in NOT_COMPARABLE:
        pytest.skip(f"{key}: the exact solve of a nonconvex inner problem picks another "
                    "stationary point than the recording (see NOT_COMPARABLE)")
    rtol = max(RTOL_REORDERED if key in REORDERED else RTOL, REWRITTEN.get(key, RTOL),
               RELAID.get(key, RTOL))
    _close(f"{key}/x", xs, reference[f"{key}/x"], rtol)
    _close(f"{key}/y", ys, reference[f"{key}/y"], rtol)
    recorded = {k[len(key) + 7:] for k in reference if k.startswith(f"{key}/state/")}
    assert recorded <= set(arrays), f"{key}: state arrays {recorded - set(arrays)} are gone"
    for name in recorded:
        _close(f"{key}/state/{name}", arrays[name], reference[f"{key}/state/{name}"], rtol)
