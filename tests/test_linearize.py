"""Linearise-once products: ``linearize_g`` against ``hvp_g``/``cross_g``, finite differences
and the array-operation counter.

Oracles: the one-shot ``hvp_g``/``cross_g`` (the same operations in the same order, so the
products must agree bit for bit), five-point finite differences of ``grad_g`` (relative
1e-7, float64), and hand counts of the data passes (``A @ V`` and ``Aᵀ @ (·)`` per HVP).
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import pytest

from _problem_oracles import TOL, point_like, unit_like
from refbilevel._backend import to_host
from refbilevel.checks import check_gradient, check_jacobian_vector
from refbilevel.problems import Batch, DataCleaning, LayerDecayMLP, LogRegHPO

ASV_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "asv_benchmarks")

CASES = {
    "logreg_binary": lambda kw: LogRegHPO.synthetic(40, 6, seed=1, **kw),
    "logreg_multinomial_raw": lambda kw: LogRegHPO.synthetic(
        40, 5, task="multinomial", n_classes=3, seed=2, parametrization="raw",
        reduction="mean", **kw),
    "cleaning_linear": lambda kw: DataCleaning.synthetic(30, 12, 4, n_classes=3, seed=3, **kw),
    "cleaning_mlp_tanh": lambda kw: DataCleaning.synthetic(30, 12, 4, n_classes=3, seed=4,
                                                           model="mlp", hidden=5, **kw),
    "cleaning_mlp_relu": lambda kw: DataCleaning.synthetic(30, 12, 4, n_classes=3, seed=5,
                                                           model="mlp", hidden=5,
                                                           activation="relu", **kw),
    "layer_decay": lambda kw: LayerDecayMLP.synthetic(30, 12, 4, n_classes=3, seed=6, hidden=5,
                                                      **kw),
}


def _problem(name, backend):
    return CASES[name]({"xp": backend.xp, "device": backend.device})


def _point(P, rng):
    x = point_like(P.init_x(), rng, scale=0.3) + P.init_x()
    y = point_like(P.init_y(), rng, scale=0.3) + P.init_y()
    return x, y


def _bitwise(a, b):
    return np.array_equal(to_host(a), to_host(b))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batched", [False, True], ids=["full", "batch"])
def test_linearized_products_equal_one_shot_oracles(backend, rng, name, batched):
    P = _problem(name, backend)
    x, y = _point(P, rng)
    batch = (Batch(inner=backend.asarray(np.array([2, 5, 5, 0, 7]))) if batched else None)
    lin = P.linearize_g(x, y, batch)
    vs = [unit_like(y, rng) for _ in range(3)]
    for v in vs + vs[:1]:      # several directions, and the first again: nothing is consumed
        assert _bitwise(lin.hvp(v), P.hvp_g(x, y, v, batch)), name
        assert _bitwise(lin.cross(v), P.cross_g(x, y, v, batch)), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_with_linearization_equals_separate_oracles(backend, rng, name):
    """``grad_and_linearize_g``: the gradient equals ``grad_g_y`` and the products equal
    ``hvp_g``/``cross_g`` bit for bit (same operations, the forward pass shared); through
    the oracle layer it counts one ``grad_g`` and one ``hvp``/``cross`` per product."""
    from refbilevel.oracle import Oracle, OracleCalls

    P = _problem(name, backend)
    x, y = _point(P, rng)
    v = unit_like(y, rng)
    o = Oracle(P)
    grad, lin = o.grad_and_linearize_g(x, y)
    assert _bitwise(grad, P.grad_g_y(x, y)), name
    assert _bitwise(lin.hvp(v), P.hvp_g(x, y, v)), name
    assert _bitwise(lin.cross(v), P.cross_g(x, y, v)), name
    assert o.calls == OracleCalls(grad_g=1, hvp=1, cross=1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_linearized_products_vs_finite_differences(backend, rng, name):
    P = _problem(name, backend)
    if name == "cleaning_mlp_relu" and backend.name != "numpy":
        pytest.skip("one FD check of the kinked activation suffices")
    x, y = _point(P, rng)
    lin = P.linearize_g(x, y)
    u, w = unit_like(y, rng), unit_like(x, rng)
    errs = {
        "hvp": check_jacobian_vector(lambda t: P.grad_g_y(x, t), lin.hvp(u), y, u, h=1e-3),
        "cross (y-derivative of grad_g_x)": check_jacobian_vector(
            lambda t: P.grad_g_x(x, t), lin.cross(u), y, u, h=1e-3),
        "cross (x-gradient of <grad_g_y, v>)": check_gradient(
            lambda t: P.xp.sum(P.grad_g_y(t, y) * u), lambda t: P.linearize_g(t, y).cross(u),
            x, u=w, h=1e-3),
    }
    bad = {k: e for k, e in errs.items() if not e <= TOL}
    assert not bad, bad


# ------------------------------------------------------------------ data passes
@contextlib.contextmanager
def _data_reads(A):
    """Count matrix products that read ``A`` (or a view of it, such as ``A.T``).

    ``array_api_strict`` arrays wrap NumPy arrays; a product reads ``A`` when one operand's
    buffer overlaps ``A``'s.
    """
    from array_api_strict._array_object import Array

    base = np.asarray(A._array)
    reads = [0]
    originals = {name: Array.__dict__[name] for name in ("__matmul__", "__rmatmul__")}

    def wrap(fn):
        def counted(self, other):
            if any(isinstance(o, Array) and np.shares_memory(np.asarray(o._array), base)
                   for o in (self, other)):
                reads[0] += 1
            return fn(self, other)
        return counted

    for name, fn in originals.items():
        setattr(Array, name, wrap(fn))
    try:
        yield reads
    finally:
        for name, fn in originals.items():
            setattr(Array, name, fn)


@pytest.fixture(scope="module")
def measure():
    pytest.importorskip("array_api_strict")
    sys.path.insert(0, ASV_DIR)
    try:
        import benchmarks.measure
        yield benchmarks.measure
    finally:
        sys.path.remove(ASV_DIR)


@pytest.mark.parametrize("name", sorted(CASES))
def test_linearized_hvp_reads_the_data_twice(measure, name):
    """Hand count: a one-shot HVP forms ``A W`` then ``A V`` and ``Aᵀ(·)`` (3 reads); at a
    linearised point only ``A V`` and ``Aᵀ(·)`` remain (2). The data-free cross products of
    logreg and layer decay read nothing; the cleaning cross product drops from 2 reads
    (``A W``, ``A V``) to 1. Checked with the data-read counter, and for the linear models
    with the project's array-operation counter (there every product reads ``A``)."""
    import array_api_strict as xps

    P = CASES[name]({"xp": xps})
    rng = np.random.default_rng(0)
    x, y = _point(P, rng)
    v = unit_like(y, rng)
    lin = P.linearize_g(x, y)
    lin.hvp(v), lin.cross(v)          # the first products form the shared forward pass
    reads_cross = 1 if name.startswith("cleaning") else 0
    with _data_reads(P.A_train) as once, measure.counting_array_ops() as ops_once:
        P.hvp_g(x, y, v)
    with _data_reads(P.A_train) as lin_hvp, measure.counting_array_ops() as ops_lin:
        lin.hvp(v)
    with _data_reads(P.A_train) as once_cross:
        P.cross_g(x, y, v)
    with _data_reads(P.A_train) as lin_cross:
        lin.cross(v)
    assert (once[0], lin_hvp[0]) == (3, 2), name
    assert (once_cross[0], lin_cross[0]) == (2 * reads_cross, reads_cross), name
    if not name.startswith(("cleaning_mlp", "layer_decay")):
        assert (ops_once["__matmul__"], ops_lin["__matmul__"]) == (3, 2), name
    # and nothing else is added: the linearised HVP runs a subset of the one-shot operations
    assert sum(ops_lin.values()) < sum(ops_once.values()), (dict(ops_lin), dict(ops_once))
    assert all(ops_lin[k] <= ops_once[k] for k in ops_lin), (dict(ops_lin), dict(ops_once))


def test_gradient_and_hvp_at_one_point_read_the_data_four_times():
    """Hand count for the logistic problem: the gradient reads ``A`` twice (``A W``,
    ``Aᵀ(·)``) and a later HVP at the same point twice more (``A V``, ``Aᵀ(·)``): 4 reads
    with ``grad_and_linearize_g``, 5 with ``grad_g_y`` then ``linearize_g`` (the scores
    ``A W`` formed twice)."""
    import array_api_strict as xps

    P = CASES["logreg_binary"]({"xp": xps})
    rng = np.random.default_rng(0)
    x, y = _point(P, rng)
    v = unit_like(y, rng)
    with _data_reads(P.A_train) as shared:
        _, lin = P.grad_and_linearize_g(x, y)
        lin.hvp(v)
    with _data_reads(P.A_train) as separate:
        P.grad_g_y(x, y)
        P.linearize_g(x, y).hvp(v)
    assert (shared[0], separate[0]) == (4, 5)


def test_asv_linearize_benchmark_runs(measure):
    """Smoke run of the asv benchmark (small size, NumPy): both forms run; timing is the
    benchmark's business, not the test's."""
    from benchmarks.linearize import KINDS, TenHVPs

    bench = TenHVPs()
    for kind in KINDS:
        bench.setup("numpy", "small", "float64", kind)
        lin = bench.problem.linearize_g(bench.x, bench.y)
        v = bench.vs[0]
        assert _bitwise(lin.hvp(v), bench.problem.hvp_g(bench.x, bench.y, v))
