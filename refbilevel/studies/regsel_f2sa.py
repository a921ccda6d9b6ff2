r"""Study ``regsel_f2sa``: F2SA vs F2SA-Adam on regularisation selection (F2SA slides).

The slides' task: binary logistic regression on ijcnn1 (LIBSVM format, 22 features) with
one weight decay per feature, :math:`g(x, y) = \ell_{train}(y) + \frac12\sum_j e^{x_j}
y_j^2` and :math:`f` the validation loss; the outer objective and the test accuracy
against iterations for F2SA, F2SA-Adam, stocBiO and SABA.

Stand-in for ijcnn1, which cannot be downloaded here: scikit-learn's bundled breast
cancer data (569 samples, 30 features, binary, about 37% positives), written to a
LIBSVM-format file by this study and read back with
:func:`refbilevel.datasets.load_libsvm` — the path a user's own ijcnn1 file takes
(``refbilevel run --problem logreg --data libsvm:ijcnn1``). It is a binary task with a
feature count close to ijcnn1's; it is two orders of magnitude smaller and less
imbalanced, so the budget is in iterations, not epochs.

Checked: every method ends with a validation loss :math:`f(x, y)` at its iterate below
:math:`F(x_0) = f(x_0, y^*(x_0))`, the validation loss of the exact ridge fit with λ = 1 on
every feature (the starting hyperparameters), and with a test accuracy above the start's.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from ._core import Method, StudyResult, curves, run_methods, runs_by_key, spread_at, study_seeds

NAME = "regsel_f2sa"
TITLE = "Regularisation selection, LIBSVM stand-in for ijcnn1 (F2SA slides)"

SETTINGS = {"quick": dict(iters=150, record=50, seeds=1, batch=32),
            "full": dict(iters=1500, record=50, seeds=3, batch=32)}


def write_standin(path) -> str:
    """Write scikit-learn's breast cancer data (labels ±1) as a LIBSVM-format file."""
    import sklearn.datasets as skd

    d = skd.load_breast_cancer()
    skd.dump_svmlight_file(d.data, np.where(d.target > 0, 1.0, -1.0), os.fspath(path),
                           zero_based=False)
    return os.fspath(path)


def _methods(cfg):
    from ..registry import build_solver

    b = {"batch_size_outer": cfg["batch"], "batch_size_inner": cfg["batch"]}
    return [
        Method("F2SA", "f2sa", lambda s: build_solver("f2sa", b, problem="logreg"),
               cfg["iters"], cfg["record"]),
        Method("F2SA-Adam", "f2sa_adam",
               lambda s: build_solver("f2sa_adam", b, problem="logreg"), cfg["iters"],
               cfg["record"]),
        Method("stocBiO", "stocbio", lambda s: build_solver("stocbio", b, problem="logreg"),
               cfg["iters"], cfg["record"]),
        # SOBA's logreg steps diverge here (standardised features: larger L_g); inner step
        # 0.1 from a three-point check on seed 0
        Method("SABA", "saba", lambda s: build_solver("saba", dict(b, lr_inner=0.1,
                                                                    lr_outer=3.0)),
               cfg["iters"], cfg["record"]),
    ]


def study(mode: str = "quick", seeds=None) -> StudyResult:
    from .._backend import to_host_scalar
    from ..datasets import load_libsvm, make_logreg_hpo
    from ..heldout import TestAccuracy

    cfg = SETTINGS[mode]
    seeds = study_seeds(cfg, seeds)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_standin(os.path.join(tmp, "breast_cancer.libsvm"))
        splits = {s: load_libsvm(path, seed=s, standardize_features=True) for s in seeds}
    runs, F0 = [], {}
    for s in seeds:
        P = make_logreg_hpo(data=splits[s])
        acc = TestAccuracy(splits[s].A_test, splits[s].y_test)
        F0[s] = to_host_scalar(P.value(P.init_x()))
        runs += run_methods(_methods(cfg), lambda seed, P=P: P, [s],
                            metrics=("value", acc))
    table = []
    for rs in runs_by_key(runs).values():
        table.append({"method": rs[0].label,
                      "final outer objective f(x, y)": spread_at(rs, "value"),
                      "test accuracy at start": spread_at(rs, "test_accuracy", 0),
                      "final test accuracy": spread_at(rs, "test_accuracy"),
                      "wall time [s]": spread_at(rs, "time")})
    lower = all(r.history["value"][-1] < F0[r.seed] for r in runs)
    better = all(r.history["test_accuracy"][-1] > r.history["test_accuracy"][0] for r in runs)
    checks = {"every method ends with a validation loss below F(x0) (λ = 1 on every "
              "feature, exact inner solution)": lower,
              "every method's final test accuracy is above the start's": better}
    notes = ["F(x0) per seed: " + ", ".join(f"{s}: {F0[s]:.4g}" for s in seeds),
             f"{cfg['iters']} iterations, minibatches of {cfg['batch']}"]
    panels = [{"groups": curves(runs, "iteration", "value"), "xlabel": "iterations",
               "ylabel": "outer objective f(x, y) (validation loss)",
               "hline": float(np.median(list(F0.values()))), "hline_label": "F(x0)"},
              {"groups": curves(runs, "iteration", "test_accuracy"), "xlabel": "iterations",
               "ylabel": "test accuracy", "logy": False}]
    return StudyResult(NAME, TITLE, mode, seeds, runs, table, panels, checks, notes,
                       runtime=time.perf_counter() - t0)
