"""Record the full-batch reference trajectories of every registered (problem, solver) pair.

Usage (from the repository root)::

    python tests/data/make_reference_trajectories.py

writes ``tests/data/reference_trajectories.npz``: for each pair ``P/S`` the iterates
``P/S/x`` and ``P/S/y`` (one row per step, row 0 the start) and every array of the final
solver state, ``P/S/state/<field path>``, all float64 on NumPy. The settings are the
registry's suggested settings with every minibatch size and block count set to "all"
(full batch, full participation), so the trajectories are deterministic. They pin the
arithmetic of the solver steps: a refactoring that keeps the formulas keeps them to a few
ulps (tests/test_reference_trajectories.py).

The file was made from commit 3c3792e (before the oracle layer and the counter-based
streams); ``meta`` records the pairs, sizes and settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

STEPS = 20
#: Small sizes keep the file small; the arithmetic is the same at any size.
SIZES = {"logreg": {"n": 200, "p": 20}, "multinomial": {"n": 120, "p": 8},
         "cleaning": {"n_train": 60, "n_val": 30, "p": 6},
         "layer_decay": {"n_train": 40, "n_val": 20}, "quadratic": {},
         "toy_1d": {}, "multitask_auc": {"n_train": 20, "n_val": 20, "n_features": 5},
         "meta_learning": {}, "minimax_quadratic": {}}
#: Solver settings beyond the registry's suggestions (stage changes within 20 steps).
EXTRA = {"minimaxopt": {"steps_per_stage": 7, "n_stages": 2},
         "minimaxopt_stochastic": {"steps_per_stage": 7, "n_stages": 2}}
FULL = {"batch_size_outer": None, "batch_size_inner": None, "n_sampled": None}


def settings(problem_name, solver_name):
    from refbilevel import registry

    cls = registry.get_solver(solver_name)
    names = {f.name for f in dataclasses.fields(cls)}
    kw = registry.suggested_settings(problem_name, solver_name)
    kw.update(EXTRA.get(solver_name, {}))
    kw.update({k: v for k, v in FULL.items() if k in names})
    return kw


def pairs():
    from refbilevel import registry

    for p_name, spec in registry.PROBLEMS.items():
        for s_name, cls in registry.SOLVERS.items():
            if bool(getattr(cls, "minimax", False)) == spec.minimax:
                yield p_name, s_name


def state_arrays(obj, path, out):
    """Every array reachable from a solver state, by dotted field path."""
    from refbilevel._backend import is_array, to_host

    if is_array(obj):
        out[path] = np.array(to_host(obj), dtype=np.float64, copy=True)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            state_arrays(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name, out)
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for k in obj._fields:
            state_arrays(getattr(obj, k), f"{path}.{k}", out)
    return out


def main(out_path):
    from refbilevel import registry
    from refbilevel._backend import host_rng, to_host

    data, meta = {}, {"steps": STEPS, "sizes": SIZES, "settings": {}}
    for p_name, s_name in pairs():
        problem = registry.build_problem(p_name, seed=0, params=SIZES[p_name])
        kw = settings(p_name, s_name)
        solver = registry.build_solver(s_name, kw)
        state = solver.init(problem, None, None, host_rng(0))
        xs, ys = [to_host(state.x)], [to_host(state.y)]
        for _ in range(STEPS):
            state = solver.step(problem, state)
            xs.append(to_host(state.x))
            ys.append(to_host(state.y))
        key = f"{p_name}/{s_name}"
        data[f"{key}/x"] = np.stack(xs)
        data[f"{key}/y"] = np.stack(ys)
        for k, v in state_arrays(state, "", {}).items():
            if k not in ("x", "y"):
                data[f"{key}/state/{k}"] = v
        meta["settings"][key] = kw
        print(key, "final |x|", float(np.linalg.norm(xs[-1])), file=sys.stderr)
    data["meta"] = np.array(json.dumps(meta, default=repr))
    np.savez_compressed(out_path, **data)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(os.path.join(here, "reference_trajectories.npz"))
