"""Recorded oracle values of the problems whose internals are restructured.

``reference_values()`` evaluates every oracle of a fixed set of seeded NumPy float64
instances at fixed points and returns ``{key: array}``. The stored file
``tests/data/oracle_reference.npz`` holds the values computed by the code before the
linearise-once products, the shared block Newton solve and the split of
:class:`~refbilevel.problems.MultiTaskAUC` into head and anchored lower levels;
``test_oracle_reference.py`` checks that the current code reproduces them.

Regenerate (only when an oracle's value is meant to change) with
``PYTHONPATH=$PWD python tests/_oracle_reference.py``.
"""

from __future__ import annotations

import pathlib

import numpy as np

from refbilevel._backend import to_host
from refbilevel.datasets import make_meta_learning, make_multitask_auc
from refbilevel.problems import Batch, DataCleaning, LayerDecayMLP, LogRegHPO

PATH = pathlib.Path(__file__).parent / "data" / "oracle_reference.npz"


def _bilevel_cases():
    yield "logreg_bin", LogRegHPO.synthetic(40, 6, seed=1)
    yield "logreg_bin_raw_mean", LogRegHPO.synthetic(40, 6, seed=2, parametrization="raw",
                                                     reduction="mean")
    yield "logreg_multi", LogRegHPO.synthetic(40, 5, task="multinomial", n_classes=3, seed=3)
    yield "cleaning_lin", DataCleaning.synthetic(30, 12, 4, n_classes=3, seed=4)
    yield "cleaning_mlp", DataCleaning.synthetic(30, 12, 4, n_classes=3, seed=5, model="mlp",
                                                 hidden=5)
    yield "cleaning_mlp_relu", DataCleaning.synthetic(30, 12, 4, n_classes=3, seed=6,
                                                      model="mlp", hidden=5, activation="relu")
    yield "layer_decay", LayerDecayMLP.synthetic(30, 12, 4, n_classes=3, seed=7, hidden=5)
    yield "layer_decay_raw", LayerDecayMLP.synthetic(30, 12, 4, n_classes=3, seed=8, hidden=5,
                                                     parametrization="raw")


def _minimax_cases():
    kw = {"n_tasks": 3, "n_train": 10, "n_val": 8, "n_features": 4, "pos_ratio": 0.3, "seed": 3}
    yield "auc_head", make_multitask_auc(**kw, rank=3)
    yield "auc_head_v2_linear", make_multitask_auc(**kw, rank=2, version="v2", score="linear",
                                                   nonnegative_alpha=False)
    yield "auc_anchored", make_multitask_auc(**kw, lower="anchored")
    yield "meta_squared", make_meta_learning(n_tasks=4, seed=2)
    yield "meta_logistic", make_meta_learning(n_tasks=4, seed=2, loss="logistic")


def _bilevel_values(P, rng, out, key):
    x = P.init_x() + 0.3 * rng.standard_normal(P.dim_x)
    y = P.init_y() + 0.3 * rng.standard_normal(P.dim_y)
    v = rng.standard_normal(P.dim_y)
    Ys = y + 0.1 * rng.standard_normal((3, P.dim_y))
    batch = Batch(outer=np.array([0, 3, 3, 1]), inner=np.array([2, 5, 5, 0, 7]))
    for tag, b in (("full", None), ("batch", batch)):
        k = f"{key}/{tag}/"
        out[k + "g"] = P.g(x, y, b)
        out[k + "f"] = P.f(x, y, b)
        out[k + "grad_g_x"], out[k + "grad_g_y"] = P.grad_g(x, y, b)
        out[k + "grad_g_y_only"] = P.grad_g_y(x, y, b)
        out[k + "grad_f_y"] = P.grad_f(x, y, b)[1]
        out[k + "hvp_g"] = P.hvp_g(x, y, v, b)
        out[k + "cross_g"] = P.cross_g(x, y, v, b)
        out[k + "grad_g_many_x"], out[k + "grad_g_many_y"] = P.grad_g_many(x, Ys, b)
        out[k + "grad_g_y_many"] = P.grad_g_y_many(x, Ys, b)


def _minimax_values(P, rng, out, key):
    x = P.init_x() + 0.2 * rng.standard_normal(P.dim_x)
    y = rng.random(P.dim_y) + 0.3
    blocks = np.array([2, 0, 2])
    z = rng.standard_normal((3, P.dim_z))
    v = rng.standard_normal((3, P.dim_z))
    Zs = z + 0.1 * rng.standard_normal((2, 3, P.dim_z))
    batch = Batch(outer=np.array([0, 3, 3, 1]), inner=np.array([2, 5, 5, 0, 7]))
    for tag, b in (("full", None), ("batch", batch)):
        k = f"{key}/{tag}/"
        out[k + "g"] = P.g(x, z, blocks, b)
        out[k + "f"] = P.f(x, y, z, blocks, b)
        out[k + "grad_f_x"], out[k + "grad_f_y"], out[k + "grad_f_z"] = P.grad_f(x, y, z, blocks, b)
        out[k + "grad_g_x"], out[k + "grad_g_z"] = P.grad_g(x, z, blocks, b)
        out[k + "hvp_g"] = P.hvp_g(x, z, v, blocks, b)
        out[k + "cross_g"] = P.cross_g(x, z, v, blocks, b)
        out[k + "grad_g_many_x"], out[k + "grad_g_many_z"] = P.grad_g_many(x, Zs, blocks, b)
        out[k + "grad_g_z_many"] = P.grad_g_z_many(x, Zs, blocks, b)
    k = f"{key}/exact/"
    out[k + "init_x"] = P.init_x()
    out[k + "inner_solution"] = P.inner_solution(x)
    out[k + "value"] = P.value(x)
    out[k + "saddle_gradient"] = P.saddle_gradient(x)
    if hasattr(P, "alpha_star"):
        out[k + "alpha_star"] = P.alpha_star(x, z, blocks)
        out[k + "split_x"] = np.concatenate([np.reshape(a, (-1,)) for a in P.split_x(x)])


def reference_values() -> dict:
    """Every recorded oracle value, keyed ``"case/full|batch|exact/oracle"``."""
    out = {}
    for i, (key, P) in enumerate(_bilevel_cases()):
        _bilevel_values(P, np.random.default_rng(100 + i), out, key)
    for i, (key, P) in enumerate(_minimax_cases()):
        _minimax_values(P, np.random.default_rng(200 + i), out, key)
    return {k: np.asarray(to_host(v), dtype=np.float64) for k, v in out.items()}


if __name__ == "__main__":
    PATH.parent.mkdir(exist_ok=True)
    values = reference_values()
    np.savez_compressed(PATH, **values)
    print(f"wrote {len(values)} arrays to {PATH}")
