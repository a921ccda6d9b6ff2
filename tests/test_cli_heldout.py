"""``refbilevel run --metrics`` with held-out metrics (test accuracy, test AUC).

Oracles: the accuracy of the saved final iterate on a test split drawn independently
(:func:`refbilevel.datasets.cleaning_data` with the run's seed and sizes, scores
``A_test @ W`` and ``argmax`` in NumPy); the AUC at the start point from
:class:`refbilevel.heldout.TestAUC` on an independently drawn
:func:`refbilevel.datasets.multitask_auc_data` split, compared with a pairwise count.
"""

from __future__ import annotations

import numpy as np
import pytest

from refbilevel.cli import main
from refbilevel.results import load_run

CLEANING = ["--problem", "cleaning", "--solver", "soba", "--set", "problem.n_train=60",
            "--set", "problem.n_val=30", "--set", "problem.p=6", "--set", "problem.n_classes=3"]


def _run(tmp_path, *args):
    return main(["run", *args, "--out", str(tmp_path / "run"), "--no-progress"])


def test_test_accuracy_is_recorded_and_matches_the_final_iterate(tmp_path, capsys):
    from refbilevel.datasets import cleaning_data

    assert _run(tmp_path, *CLEANING, "--set", "problem.n_test=40", "--iters", "6",
                "--record-every", "3", "--metrics", "value,test_accuracy") == 0
    assert "test accuracy" in capsys.readouterr().out
    run = load_run(str(tmp_path / "run"))
    h = run.history
    assert list(h["iteration"]) == [0, 3, 6] and np.all(np.isfinite(h["value"]))
    s = cleaning_data(60, 30, 40, 6, 3, seed=0)
    W = np.asarray(run.final["y"]).reshape(6, 3)
    expected = np.mean(np.argmax(s.A_test @ W, axis=1) == s.y_test)
    assert h["test_accuracy"][-1] == pytest.approx(expected, abs=1e-15)
    assert run.config["metrics"] == ["value", "test_accuracy"]


def test_test_auc_on_multitask_auc_matches_a_pairwise_count(tmp_path):
    from refbilevel.datasets import multitask_auc_data
    from refbilevel.registry import build_problem

    args = ["--problem", "multitask_auc", "--solver", "fosl", "--set", "problem.n_train=20",
            "--set", "problem.n_val=20", "--set", "problem.n_test=30", "--iters", "4",
            "--record-every", "4", "--metrics", "test_auc"]
    assert _run(tmp_path, *args) == 0
    h = load_run(str(tmp_path / "run")).history
    # the AUC at the start point, from scores of the problem at x0 on independent data
    problem = build_problem("multitask_auc", params={"n_train": 20, "n_val": 20})
    s = multitask_auc_data(4, 20, 20, 10, seed=0, n_test=30)
    x0 = problem.init_x()
    z = np.asarray(problem.inner_solution(x0))
    feats = np.asarray(problem._features(problem.xp.asarray(s.A_test), x0))
    aucs = []
    for t in range(s.y_test.shape[0]):
        sc = feats[t] @ z[t]
        pos, neg = sc[s.y_test[t] > 0], sc[s.y_test[t] <= 0]
        diff = pos[:, None] - neg[None, :]
        aucs.append((np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size)
    assert h["test_auc"][0] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert 0.0 <= h["test_auc"][-1] <= 1.0


@pytest.mark.parametrize(("args", "words"), [
    (["--problem", "logreg", "--set", "problem.n=40", "--set", "problem.p=4",
      "--metrics", "test_accuracy"], ["--metrics", "test_accuracy", "'logreg'", "--data"]),
    ([*CLEANING, "--metrics", "test_accuracy"],
     ["--metrics", "'cleaning'", "problem.n_test"]),
    ([*CLEANING, "--set", "problem.n_test=10", "--metrics", "test_auc"],
     ["--metrics", "test_auc", "'cleaning'", "multitask_auc"]),
    ([*CLEANING, "--metrics", "value,test_acc"], ["--metrics", "'test_acc'", "test_accuracy"]),
])
def test_heldout_metric_errors_name_the_option_and_the_problem(tmp_path, capsys, args, words):
    assert _run(tmp_path, *args, "--iters", "1") == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "run").exists()          # refused before any file is written
