r"""Study ``hpo_logreg_sweep``: MinimaxOPT's stage factor τ, stage length K and step settled.

On the problem and budget of study ``hpo_logreg`` (MinimaxOPT §4.1, synthetic
logistic-regression HPO; docs/studies/hpo_logreg), MinimaxOPT (Algorithm 1) runs on the grid
τ × K × step over several seeds; the rest of its settings are the registry's for ``logreg``
(α₀ = 1, constant schedule, N = ⌈iterations / K⌉ stages). Each grid point reports, over the
seeds, the final validation loss ``f(x, y)`` at the iterate, the outer objective
:math:`F(x) = f(x, y^*(x))` at the final ``x`` (the exact inner solution: the validation loss
the outer variable has earned, whatever the iterate ``y``) and the gradient calls to reach
the baselines' final validation loss (the paper-setting baselines and the best baseline of
study ``hpo_logreg``, run here on the same seeds). The optimum is the grid point with the
lowest median final validation loss among those that converge on every seed and whose
next larger step on the grid does too (a margin below the divergence boundary, which moves
with the data); ties go to the larger K.

Checks: slower stage growth (τ ≤ 1.2) ends lower than τ = 2 (the issue that started the
sweep); on the full grid also that the optimum is interior in every direction or on the
edge of the domain (τ = 1, no growth; K equal to the budget's iterations, a single stage:
larger K runs the same iterations) and that the registry's MinimaxOPT settings for
``logreg`` are that optimum. The figure shows three slices of the median final validation loss
through the optimum and the optimum's curve beside AID-CG's.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from . import hpo_logreg
from .hpo_logreg import OuterObjective
from ._core import (Method, StudyResult, calls_to_reach, curves, run_methods, runs_by_key,
                    spread, study_seeds)

NAME = "hpo_logreg_sweep"
TITLE = "MinimaxOPT's τ, K and step on the logistic-regression HPO of MinimaxOPT §4.1"

#: The grid per mode (sizes, budget and seeds: study ``hpo_logreg``'s).
GRIDS = {"quick": dict(tau=(1.1, 2.0), steps_per_stage=(50, 250), lr=(0.5, 1.0),
                       seeds=2),
         "full": dict(tau=(1.0, 1.05, 1.1, 1.2, 1.5, 2.0),
                      steps_per_stage=(100, 200, 400, 1000, 2000),
                      lr=(0.5, 0.7, 1.0, 1.2, 1.4, 1.6), seeds=3)}
_AXES = (("tau", "τ (stage factor)"), ("steps_per_stage", "K (steps per stage)"),
         ("lr", "step"))
__all__ = ["GRIDS", "OuterObjective", "grid_methods", "study"]


def _key(tau, K, lr) -> str:
    return f"minimaxopt_tau{tau:g}_K{K}_lr{lr:g}"


def grid_methods(cfg, grid):
    """One :class:`Method` per grid point (τ, K, step), each for the study's budget."""
    out = []
    for tau, K, lr in itertools.product(grid["tau"], grid["steps_per_stage"], grid["lr"]):
        solver, n_iter = hpo_logreg._minimaxopt(cfg["budget"], tau=tau, steps_per_stage=K,
                                                lr=lr)
        out.append(Method(f"MinimaxOPT (τ={tau:g}, K={K}, step {lr:g})", _key(tau, K, lr),
                          lambda seed, s=solver: s, n_iter, record_every=cfg["record"]))
    return out


def _final(run) -> float:
    """The run's last validation loss; NaN when it diverged."""
    if run.config["status"] == "diverged":
        return math.nan
    return float(run.history["value"][-1])


def study(mode: str = "quick", seeds=None) -> StudyResult:
    cfg, grid = hpo_logreg.SETTINGS[mode], GRIDS[mode]
    seeds = study_seeds(grid, seeds)
    t0 = time.perf_counter()
    problem_for_seed = hpo_logreg._problem(cfg)
    baselines = [m for m in hpo_logreg.methods(cfg) if m.key != "minimaxopt"]
    base_runs = run_methods(baselines, problem_for_seed, seeds, metrics=("value",))
    paper = {s: max(r.history["value"][-1] for r in base_runs
                    if r.seed == s and r.key.endswith("_paper")) for s in seeds}
    best_base = {s: min(r.history["value"][-1] for r in base_runs if r.seed == s)
                 for s in seeds}
    grid_ms = grid_methods(cfg, grid)
    # steps past the stability limit diverge: overflow is expected there, and the run's
    # status (and the table's "diverged seeds") records it
    with np.errstate(over="ignore", invalid="ignore"):
        grid_runs = run_methods(grid_ms, problem_for_seed, seeds,
                                metrics=("value", OuterObjective()))
    by_key = runs_by_key(grid_runs)
    rows, score = [], {}
    for (tau, K, lr), m in zip(itertools.product(grid["tau"], grid["steps_per_stage"],
                                                 grid["lr"]), grid_ms):
        rs = by_key[m.key]
        finals = [_final(r) for r in rs]
        diverged = sum(math.isnan(v) for v in finals)
        score[(tau, K, lr)] = np.inf if diverged else float(np.median(finals))
        rows.append({
            "tau": tau, "K (steps per stage)": K, "step": lr,
            "final validation loss": spread(finals),
            "F(x) at the end": spread(np.nan if math.isnan(v) else
                                      r.history["outer_objective"][-1]
                                      for v, r in zip(finals, rs)),
            "gradient calls to the paper baselines' loss":
                spread(calls_to_reach(r.history, paper[r.seed]) for r in rs),
            "gradient calls to the best baseline's loss":
                spread(calls_to_reach(r.history, best_base[r.seed]) for r in rs),
            "diverged seeds": diverged})
    # a default must not sit on the divergence boundary (it moves with the data: L_g grows
    # with the weight decays), so a point is eligible when the next larger step of the grid
    # converges on every seed too; ties (τ = 1 makes K irrelevant) go to the larger K
    steps = list(grid["lr"])
    eligible = {k: v for k, v in score.items()
                if k[2] != steps[-1] and np.isfinite(score[(k[0], k[1],
                                                            steps[steps.index(k[2]) + 1])])}
    best = min(eligible or score, key=lambda k: (score[k], -k[1]))
    n_iter = grid_ms[0].n_iter
    edge = {"tau": 1.0, "steps_per_stage": n_iter}     # the edges of the domain
    interior = {}
    for (name, _), value in zip(_AXES, best):
        values = grid[name]
        i = values.index(value)
        interior[name] = 0 < i < len(values) - 1 or (
            name == "tau" and value == edge["tau"]) or (
            name == "steps_per_stage" and value >= edge["steps_per_stage"])
    from ..registry import suggested_settings

    reg = suggested_settings("logreg", "minimaxopt")
    slow = [v for (tau, _, _), v in score.items() if tau <= 1.2]
    fast = [v for (tau, _, _), v in score.items() if tau == 2.0]
    checks = {"slower stage growth (τ ≤ 1.2) ends lower than τ = 2: the best median final "
              "validation loss over K and step": bool(min(slow) < min(fast))}
    if mode == "full":      # the quick grid is too small to bracket an optimum
        checks["the sweep's optimum (lowest median final validation loss) is interior to "
               "the grid in τ, K and step, or on the edge of the domain (τ = 1: no growth; "
               "K = the budget's iterations: one stage)"] = all(interior.values())
        checks["the registry's MinimaxOPT settings for logreg are the sweep's optimum"] = \
            (reg.get("tau"), reg.get("steps_per_stage"), reg.get("lr")) == best
    for r in rows:
        r["next larger step converges"] = "yes" if (r["tau"], r["K (steps per stage)"],
                                                    r["step"]) in eligible else "no"
    b = dict(zip(("tau", "K", "step"), best))
    best_row = rows[list(score).index(best)]
    notes = [f"optimum: tau={b['tau']:g}, K={b['K']}, step={b['step']:g}; final validation "
             f"loss {best_row['final validation loss'][0]:.6g} (median over seeds "
             f"{seeds}); interior per axis: {interior}",
             "paper baselines' loss per seed: " + ", ".join(f"{s}: {v:.6g}"
                                                            for s, v in paper.items()),
             "best baseline's loss per seed: " + ", ".join(f"{s}: {v:.6g}"
                                                           for s, v in best_base.items())]
    panels = _heatmaps(grid, score, best)
    shown = {_key(*best): "optimum", _key(*(reg.get("tau"), reg.get("steps_per_stage"),
                                            reg.get("lr"))): "registry"}
    groups = {}
    for label, cs in curves([r for r in grid_runs if r.key in shown], "gradient_calls",
                            "value").items():
        groups[label] = cs
    for label, cs in curves([r for r in base_runs if r.key in ("aid_cg_paper", "aid_cg_tuned")],
                            "gradient_calls", "value").items():
        groups[label] = cs
    panels.append({"groups": groups, "xlabel": "gradient calls (grad f + grad g)",
                   "ylabel": "validation loss", "budget": cfg["budget"],
                   "title": "the optimum and AID-CG"})
    table = sorted(rows, key=lambda r: (score[(r["tau"], r["K (steps per stage)"],
                                               r["step"])], -r["K (steps per stage)"]))
    return StudyResult(NAME, TITLE, mode, seeds, base_runs + grid_runs, table, panels, checks,
                       notes, runtime=time.perf_counter() - t0)


def _heatmaps(grid, score, best):
    """Three slices of the median final validation loss through the optimum."""
    med = {k: (np.nan if np.isinf(v) else v) for k, v in score.items()}
    tau, K, lr = best
    panels = []
    for (a, alab), (b, blab), fixed in (((_AXES[0]), (_AXES[1]), ("step", lr)),
                                        ((_AXES[0]), (_AXES[2]), ("K", K)),
                                        ((_AXES[1]), (_AXES[2]), ("τ", tau))):
        rows_v, cols_v = grid[a], grid[b]
        M = np.empty((len(rows_v), len(cols_v)))
        for i, u in enumerate(rows_v):
            for j, v in enumerate(cols_v):
                point = {"tau": tau, "steps_per_stage": K, "lr": lr, a: u, b: v}
                M[i, j] = med[(point["tau"], point["steps_per_stage"], point["lr"])]
        panels.append({"heatmap": M, "yticks": [f"{v:g}" for v in rows_v],
                       "xticks": [f"{v:g}" for v in cols_v], "ylabel": alab, "xlabel": blab,
                       "mark": (rows_v.index(best[[x for x, _ in _AXES].index(a)]),
                                cols_v.index(best[[x for x, _ in _AXES].index(b)])),
                       "title": f"{fixed[0]} = {fixed[1]:g}",
                       "cbar_label": "median final validation loss"})
    return panels
