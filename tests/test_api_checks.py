"""Argument checks at the public boundary: each bad argument is refused before any work, by a
TypeError, ValueError or MemoryError whose message names the argument (or the size).

Oracle: the documented contract of each constructor and function (dtype float32/float64,
at least one feature, arrays not None, finite noise, sizes within the available memory).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from refbilevel import datasets
from refbilevel.problems import (DataCleaning, LayerDecayMLP, LogRegHPO, MinimaxQuadratic,
                                 MultiTaskAUC, Quadratic, RankedMetaLearning)
from refbilevel.registry import build_problem, build_solver
from refbilevel.run import run

rng = np.random.default_rng(0)
A = rng.standard_normal((12, 3))
b = np.where(rng.standard_normal(12) > 0, 1.0, -1.0)
lab = np.arange(12, dtype=np.int64) % 3
A3 = rng.standard_normal((2, 8, 3))
y3 = (np.arange(8)[None, :] % 3 == 0) * np.ones((2, 1))
b3 = rng.standard_normal((2, 8))


def _minimax_quadratic(dtype):
    p = MinimaxQuadratic.random(2, 2, 3, 2, seed=0)
    arrays = [np.asarray(getattr(p, k)).astype(dtype) for k in
              ("H", "B", "c", "A", "a", "E", "P", "Q", "q", "R", "r")]
    return MinimaxQuadratic(*arrays)


CONSTRUCTORS = {
    "LogRegHPO": lambda dt: LogRegHPO(A.astype(dt), b.astype(dt), A.astype(dt), b.astype(dt)),
    "DataCleaning": lambda dt: DataCleaning(A.astype(dt), lab, A.astype(dt), lab),
    "LayerDecayMLP": lambda dt: LayerDecayMLP(A.astype(dt), lab, A.astype(dt), lab),
    "MultiTaskAUC": lambda dt: MultiTaskAUC(A3.astype(dt), y3, A3.astype(dt), y3),
    "RankedMetaLearning": lambda dt: RankedMetaLearning(A3.astype(dt), b3.astype(dt),
                                                        A3.astype(dt), b3.astype(dt)),
    "Quadratic": lambda dt: Quadratic(*(np.asarray(getattr(Quadratic.random(2, 3), k))
                                        .astype(dt) for k in ("H", "B", "c", "A", "a", "R", "r"))),
    "MinimaxQuadratic": _minimax_quadratic,
}


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_float16_refused_float32_accepted(name):
    CONSTRUCTORS[name](np.float32)  # the oracle that the construction itself is valid
    with pytest.raises(TypeError, match="float32 or float64; got float16"):
        CONSTRUCTORS[name](np.float16)


@pytest.mark.parametrize("make", [
    lambda: LogRegHPO(A[:, :0], b, A[:, :0], b),
    lambda: DataCleaning(A[:, :0], lab, A[:, :0], lab),
    lambda: LayerDecayMLP(A[:, :0], lab, A[:, :0], lab),
    lambda: MultiTaskAUC(A3[:, :, :0], y3, A3[:, :, :0], y3),
    lambda: RankedMetaLearning(A3[:, :, :0], b3, A3[:, :, :0], b3),
], ids=["LogRegHPO", "DataCleaning", "LayerDecayMLP", "MultiTaskAUC", "RankedMetaLearning"])
def test_zero_features_refused(make):
    with pytest.raises(ValueError, match="A_train must have at least one feature"):
        make()


@pytest.mark.parametrize("make, name", [
    (lambda: MultiTaskAUC(A3, None, A3, y3), "y_train"),
    (lambda: MultiTaskAUC(None, y3, A3, y3), "A_train"),
    (lambda: MultiTaskAUC(A3, y3, A3, None), "y_val"),
    (lambda: RankedMetaLearning(A3, None, A3, b3), "b_train"),
    (lambda: LogRegHPO(None, b, A, b), "A_train"),
    (lambda: DataCleaning(A, lab, None, lab), "A_val"),
])
def test_none_arrays_name_the_argument(make, name):
    with pytest.raises(TypeError, match=f"{name} must be an array; got None"):
        make()


def test_xp_accepts_a_backend_name_and_refuses_other_objects():
    by_name = Quadratic.random(2, 3, seed=1, xp="numpy")
    default = Quadratic.random(2, 3, seed=1)
    np.testing.assert_array_equal(np.asarray(by_name.H), np.asarray(default.H))
    with pytest.raises(TypeError, match="xp must be an array namespace or a backend name"):
        Quadratic.random(2, 3, xp=3)
    with pytest.raises(ValueError, match="backend"):
        Quadratic.random(2, 3, xp="nope")


@pytest.mark.parametrize("make", [
    lambda: LogRegHPO.synthetic(noise=float("nan")),
    lambda: LogRegHPO.synthetic(task="multinomial", noise=float("inf")),
    lambda: LayerDecayMLP.synthetic(noise=float("nan")),
    lambda: datasets.logreg_hpo_data(noise=float("nan")),
])
def test_non_finite_noise_refused(make):
    with pytest.raises(ValueError, match="noise must be finite"):
        make()


@pytest.mark.parametrize("make, needle", [
    (lambda: Quadratic.random(2, 10**6), "Quadratic.random(dim_x=2, dim_y=1000000)"),
    (lambda: LogRegHPO.synthetic(task="multinomial", n_classes=10**9), "LogRegHPO.synthetic"),
    (lambda: datasets.logreg_hpo_data(n=10**9), "n=1000000000"),
    (lambda: datasets.classification_data(n=100, p=3, n_classes=10**9), "n_classes=1000000000"),
    (lambda: DataCleaning(A, lab, A, lab, n_classes=10**9), "one-hot targets of 1000000000"),
    (lambda: datasets.multitask_auc_data(n_tasks=10**6, n_train=10**3), "multi-task AUC data"),
    (lambda: MinimaxQuadratic.random(10**4, 2, 3, 10**4), "MinimaxQuadratic.random(n_blocks"),
])
def test_sizes_beyond_memory_refused_before_allocating(make, needle):
    with pytest.raises(MemoryError, match="GiB of memory") as info:
        make()
    assert needle in str(info.value)


def test_non_libsvm_file_names_the_path(tmp_path):
    pytest.importorskip("sklearn")
    path = tmp_path / "data.txt"
    path.write_text("hello world\nnot svmlight\n")
    with pytest.raises(ValueError, match="is not a LIBSVM-format file") as info:
        datasets.load_libsvm(path)
    assert str(path) in str(info.value)


@pytest.fixture(scope="module")
def small():
    return build_problem("logreg", params={"n": 40, "p": 4}), build_solver("f2sa", {})


def test_run_problem_none(small):
    _, solver = small
    with pytest.raises(TypeError, match="problem must be a BilevelProblem"):
        run(None, solver, n_iter=1)


def test_run_metrics_none(small):
    problem, solver = small
    with pytest.raises(TypeError, match="metrics must be a tuple"):
        run(problem, solver, n_iter=1, metrics=None)


def test_run_checkpoint_in_missing_folder_fails_before_the_work(small, tmp_path):
    problem, solver = small
    calls = []
    missing = tmp_path / "nope" / "c.npz"
    with pytest.raises(FileNotFoundError, match="checkpoint: folder .*nope.* does not exist"):
        run(problem, solver, n_iter=5, checkpoint=missing, callback=lambda info: calls.append(1))
    assert calls == [] and not os.path.exists(tmp_path / "nope")


def test_points_of_the_wrong_width_name_the_array():
    from refbilevel.verify import reference_for

    cand = {"points_x": np.zeros((2, 5)), "points_y": np.zeros((2, 4)), "f": np.zeros(2)}
    with pytest.raises(ValueError, match=r"points_x must have shape \(points, 4\) .* got \(2, 5\)"):
        reference_for(cand, solver="f2sa", problem="logreg", settings=["problem.n=20",
                                                                       "problem.p=4"])
