"""Studies: each ``--quick`` run reproduces its paper's qualitative claims.

The assertions are the studies' own checks (robust orderings and comparisons computed from
the runs, never a recorded number), plus the files a study writes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from refbilevel.cli import main
from refbilevel.studies import STUDIES, run_study
from refbilevel.plotting import summarize
from refbilevel.studies._core import spread


def test_hpo_logreg_quick_minimaxopt_beats_paper_settings(tmp_path):
    res = run_study("hpo_logreg", "quick", seeds=1, out=tmp_path)
    assert res.checks and all(res.checks.values()), res.checks
    for name in ("table.md", "table.csv", "figure.pdf", "figure.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(os.listdir(tmp_path / "runs")) == len(res.table)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "quick" and summary["seeds"] == [0]


def test_hpo_logreg_sweep_quick_table_and_slow_growth(tmp_path):
    from refbilevel.studies.hpo_logreg_sweep import GRIDS

    res = run_study("hpo_logreg_sweep", "quick", seeds=1, out=tmp_path)
    # slower stage growth (tau <= 1.2) ends lower than tau = 2 (the observation)
    assert res.checks and all(res.checks.values()), res.checks
    grid = GRIDS["quick"]
    n_points = len(grid["tau"]) * len(grid["steps_per_stage"]) * len(grid["lr"])
    assert len(res.table) == n_points
    # the table is ranked: its first row with a converging larger step is the optimum
    first = next(r for r in res.table if r["next larger step converges"] == "yes")
    assert f"tau={first['tau']:g}, K={first['K (steps per stage)']}, " \
           f"step={first['step']:g}" in res.notes[0]
    finals = [r["final validation loss"][0] for r in res.table]
    ranked = [v for v, r in zip(finals, res.table) if not r["diverged seeds"]]
    assert ranked == sorted(ranked)
    # a run that reaches a loss below the start reached it within the budget
    for r in res.table:
        calls = r["gradient calls to the paper baselines' loss"][0]
        assert calls == np.inf or 0 < calls <= 1500
    for name in ("table.md", "figure.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_outer_objective_metric_is_f_at_the_exact_inner_solution():
    from scipy.optimize import minimize

    from refbilevel._backend import to_host
    from refbilevel.registry import build_problem
    from refbilevel.solvers.base import SolverState
    from refbilevel.studies.hpo_logreg_sweep import OuterObjective

    problem = build_problem("logreg", seed=3, params={"n": 80, "p": 6})
    x = problem.xp.asarray(np.linspace(-1.0, 1.0, 6))
    state = SolverState(x=x, y=problem.init_y(), iteration=0, seed=0)

    def g(y):
        return float(to_host(problem.g(x, problem.xp.asarray(y))))

    def dg(y):
        return np.asarray(to_host(problem.grad_g_y(x, problem.xp.asarray(y))))

    # an independent inner solve: BFGS on g to a gradient norm of 1e-12
    y_star = minimize(g, np.zeros(6), jac=dg, method="BFGS", options={"gtol": 1e-12}).x
    expected = float(to_host(problem.f(x, problem.xp.asarray(y_star))))
    assert OuterObjective()(problem, state) == pytest.approx(expected, rel=1e-10)


def test_multitask_auc_quick_lambda_robustness_and_memory(tmp_path):
    res = run_study("multitask_auc", "quick", seeds=1, out=tmp_path)
    assert res.checks and all(res.checks.values()), res.checks


def test_meta_rank_quick_ranked_range_is_robust_and_memcs_sampling_holds(tmp_path):
    res = run_study("meta_rank", "quick", seeds=1, out=tmp_path)
    assert res.checks and all(res.checks.values()), res.checks
    # FOSL, MemCS at three S, and the average-loss reference; each with its run folder
    assert len(res.table) == 5 == len(os.listdir(tmp_path / "runs"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STUDIES))
def test_quick_checks_hold_over_the_default_seeds(name, tmp_path):
    res = run_study(name, "quick", out=tmp_path)
    assert all(res.checks.values()), res.checks


def test_summarize_median_and_band():
    curves = [(np.array([0, 10, 20]), np.array([3.0, 2.0, 1.0])),
              (np.array([0, 10, 30]), np.array([5.0, 4.0, 0.0]))]
    grid, med, lo, hi = summarize(curves, points=3)
    np.testing.assert_allclose(grid, [0, 10, 20])            # capped at the shorter run
    np.testing.assert_allclose(med, [4.0, 3.0, 1.5])          # run 2 at 20: 2.0
    np.testing.assert_allclose(lo, [3.0, 2.0, 1.0])
    np.testing.assert_allclose(hi, [5.0, 4.0, 2.0])
    grid, med, _, _ = summarize(curves, budget=30, points=4)
    assert np.isclose(med[-1], 0.0)                           # only the longer run there
    assert spread([1.0, np.inf, 3.0]) == (3.0, 1.0, np.inf)


def test_spread_at_reads_the_recorded_histories():
    # oracle: the same spreads written out from the histories by hand
    from types import SimpleNamespace

    from refbilevel.studies._core import spread_at, study_seeds

    def run(value, f, g, hvp, cross):
        return SimpleNamespace(history={
            "value": np.array(value), "calls_grad_f": np.array([0, f]),
            "calls_grad_g": np.array([0, g]), "calls_hvp": np.array([0, hvp]),
            "calls_cross": np.array([0, cross])})

    runs = [run([3.0, 1.0], 2, 4, 1, 1), run([5.0, 2.0], 3, 6, 0, 2)]
    assert spread_at(runs, "value") == (1.5, 1.0, 2.0)
    assert spread_at(runs, "value", 0) == (4.0, 3.0, 5.0)
    assert spread_at(runs, "gradient_calls") == (7.5, 6.0, 9.0)
    assert spread_at(runs, "oracle_calls") == (9.5, 8.0, 11.0)     # 2+4+1+1, 3+6+0+2
    assert study_seeds({"seeds": 3}, None) == [0, 1, 2]
    assert study_seeds({"seeds": 3}, (7, 9)) == [7, 9]


def test_table_cells_of_a_spread():
    # oracle: the cell format, written out (median [low, high]; one number when the seeds
    # agree; "n/a" once, not three times, when no seed has a value)
    from refbilevel.studies._core import _fmt

    assert _fmt((2.0, 1.5, 3.0)) == "2 [1.5, 3]"
    assert _fmt((2.0, 2.0, 2.0)) == "2"
    assert _fmt((np.nan, np.nan, np.nan)) == "n/a"
    assert _fmt((np.inf, 1.0, np.inf)) == "not reached [1, not reached]"


def test_cli_study_errors_and_list(capsys):
    assert main(["study", "list"]) == 0
    assert "hpo_logreg" in capsys.readouterr().out
    assert main(["study", "no_such_study"]) == 2
    assert "valid studies" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mode"):
        run_study("hpo_logreg", "medium")
    with pytest.raises(ValueError, match="seeds"):
        run_study("hpo_logreg", seeds=0)


def test_cleaning_f2sa_quick_cleaning_beats_uniform_weights(tmp_path):
    res = run_study("cleaning_f2sa", "quick", out=tmp_path)
    assert res.checks and all(res.checks.values()), res.checks
    # four methods at two corruption rates, each row with a uniform-weights reference
    assert len(res.table) == 8


def test_regsel_f2sa_quick_lowers_the_objective(tmp_path):
    res = run_study("regsel_f2sa", "quick", out=tmp_path)
    assert res.checks and all(res.checks.values()), res.checks


def test_libsvm_standin_round_trips(tmp_path):
    from refbilevel.datasets import load_libsvm
    from refbilevel.studies.regsel_f2sa import write_standin

    path = write_standin(tmp_path / "bc.libsvm")
    s = load_libsvm(path, val_fraction=0.2, test_fraction=0.2)
    n = s.A_train.shape[0] + s.A_val.shape[0] + s.A_test.shape[0]
    assert n == 569 and s.A_train.shape[1] == 30
    assert set(np.unique(s.y_train)) == {-1.0, 1.0}


def test_layer_decay_quick_tuned_decay_beats_the_initial_one(tmp_path):
    from refbilevel.studies.layer_decay import SETTINGS

    res = run_study("layer_decay", "quick", out=tmp_path)
    assert res.checks and all(res.checks.values()), res.checks
    assert (tmp_path / "table_references.md").stat().st_size > 0
    # the budgets from the per-step counts of the solvers' docstrings: MinimaxOPT 1 grad_f
    # + 2 grad_g per step, one-step/ITD/AID T grad_g + 1 grad_f per outer step
    cfg = SETTINGS["quick"]
    calls = {row["method"]: row["gradient calls"][0] for row in res.table}
    assert calls["MinimaxOPT"] == cfg["budget"]
    many = cfg["many_budget"] * cfg["budget"]
    assert calls[f"one-step (T={cfg['many']})"] == many - many % (cfg["many"] + 1)
    assert len(res.table) == 8 and len(res.extra_tables["references"]) == 2


def test_cleaning_mlp_quick_cleaning_learns_and_noise_hurts(tmp_path):
    res = run_study("cleaning_mlp", "quick", out=tmp_path)
    assert res.checks and all(res.checks.values()), res.checks
    # four methods at each corruption rate; the figure has a wall-time and a
    # gradient-call panel per rate; the dataset used is named in the title
    rates = {r.config["corruption"] for r in res.runs}
    assert len(res.table) == 4 * len(rates) and len(res.panels) == 2 * len(rates)
    dataset = res.runs[0].config["dataset"]
    assert dataset in res.title and dataset in ("Fashion-MNIST", "digits (stand-in)")
    # the common accuracy is reached by every method (finite time and calls)
    for row in res.table:
        assert np.isfinite(row["time to reach it [s]"][2]), row["method"]
        assert np.isfinite(row["gradient calls to reach it"][2]), row["method"]
