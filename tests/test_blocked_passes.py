"""Blocked passes over a large data matrix (refbilevel._backend.row_blocks).

A binary linear model sums its gradients and Hessian-vector products over row blocks of a
data matrix that outgrows the caches, each block multiplied twice while cached. The sizes
that switch the blocks on are lowered here (the module constants), so that small
matrices take the blocked path. Every blocked result is compared with an independent
reference: the same formula evaluated in extended precision (``numpy.longdouble``, no
BLAS), and with the whole-matrix products, which sum in another order.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from refbilevel import _backend
from refbilevel.models.linear import LinearModel
from refbilevel.problems import LogRegHPO

NUMPY = _backend.backend_namespace("numpy")


@pytest.fixture
def one_thread():
    """NumPy's BLAS on one thread (blocks are used only then)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _force_blocks(monkeypatch, block_bytes):
    """Blocks of ``block_bytes`` from matrices of any size and width, for any stack."""
    monkeypatch.setattr(_backend, "_ROW_BLOCKED_MIN_BYTES", 0)
    monkeypatch.setattr(_backend, "_ROW_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(_backend, "_ROW_BLOCK_MIN_SEGMENT_BYTES", 0)
    monkeypatch.setattr(_backend, "_ROW_BLOCK_ONE_POINT_SEGMENT_BYTES", 0)


@pytest.fixture
def small_blocks(monkeypatch, one_thread):
    """Blocks of 2 KiB from matrices of any size: 10 rows of 25 float64 columns."""
    _force_blocks(monkeypatch, 2000)


def _data(rng, n, d, dtype="float64"):
    A = np.asfortranarray(rng.standard_normal((n, d))).astype(dtype, order="F")
    b = np.where(rng.standard_normal(n) >= 0, 1.0, -1.0).astype(dtype)
    return A, b


# ---------------------------------------------------------------- the blocks themselves
@pytest.mark.parametrize("n", [1, 9, 10, 11, 97])
def test_row_blocks_cover_the_rows_in_order(small_blocks, n):
    A = np.zeros((n, 25), order="F")
    blocks = _backend.row_blocks(A, xp=NUMPY)
    assert blocks[0].start == 0 and blocks[-1].stop == n
    for a, b in zip(blocks, blocks[1:]):
        assert a.stop == b.start
    # 2000 bytes of 25 float64 columns: 10 rows a block, the last one what is left
    assert [s.stop - s.start for s in blocks[:-1]] == [10] * (len(blocks) - 1)
    assert 1 <= blocks[-1].stop - blocks[-1].start <= 10


def test_row_blocks_whole_products_when_not_worth_it(monkeypatch, one_thread):
    # default sizes: a matrix below 4 MiB is multiplied whole
    A = np.zeros((1000, 50), order="F")
    assert A.nbytes < _backend._ROW_BLOCKED_MIN_BYTES
    assert _backend.row_blocks(A, xp=NUMPY) is None
    big = np.zeros((_backend._ROW_BLOCKED_MIN_BYTES // 8 // 50 + 1, 50), order="F")
    blocks = _backend.row_blocks(big, xp=NUMPY)
    assert blocks is not None and len(blocks) >= 4
    # a multi-threaded BLAS reads a large matrix faster whole (where the library runs two
    # threads at all: one capped at one thread is a one-thread BLAS)
    with threadpool_limits(limits=2, user_api="blas"):
        if _backend.blas_threads() == 2:
            assert _backend.row_blocks(big, xp=NUMPY) is None
    # no BLAS threadpoolctl can ask: not known to run one thread
    monkeypatch.setattr(_backend, "_blas_controllers", lambda: ())
    assert _backend.row_blocks(big, xp=NUMPY) is None


def test_row_blocks_by_the_length_of_their_column_segments(one_thread):
    # default sizes, column-major float64 data of just over 4 MiB: a 1 MiB block is d column
    # segments of 1 MiB / d bytes. 50 columns (20 KiB segments): blocked for one point and
    # for a pair; 500 columns (2 KiB): blocked for a pair, for one point only from
    # _ROW_BLOCKED_SHORT_MIN_BYTES on; 1,000 columns (1 KiB): never blocked
    def matrix(d, nbytes=_backend._ROW_BLOCKED_MIN_BYTES):
        return np.zeros((nbytes // (d * 8) + 1, d), order="F")

    def segment(blocks):
        return (blocks[0].stop - blocks[0].start) * 8

    narrow, wide, wider = matrix(50), matrix(500), matrix(1000)
    assert segment(_backend.row_blocks(narrow, xp=NUMPY)) >= (
        _backend._ROW_BLOCK_ONE_POINT_SEGMENT_BYTES)
    assert _backend.row_blocks(narrow, xp=NUMPY, points=2) is not None
    assert wide.nbytes < _backend._ROW_BLOCKED_SHORT_MIN_BYTES
    assert _backend.row_blocks(wide, xp=NUMPY) is None
    pair = _backend.row_blocks(wide, xp=NUMPY, points=2)
    assert (_backend._ROW_BLOCK_MIN_SEGMENT_BYTES <= segment(pair)
            < _backend._ROW_BLOCK_ONE_POINT_SEGMENT_BYTES)
    big = _backend.row_blocks(matrix(500, _backend._ROW_BLOCKED_SHORT_MIN_BYTES), xp=NUMPY)
    assert big[0] == pair[0]
    for A in (wider, matrix(1000, _backend._ROW_BLOCKED_SHORT_MIN_BYTES)):
        assert _backend.row_blocks(A, xp=NUMPY) is None
        assert _backend.row_blocks(A, xp=NUMPY, points=2) is None
    # the model asks with the height of its stack
    model = LinearModel(500)
    assert model.row_blocks(wide, xp=NUMPY) is None
    assert model.row_blocks(wide, xp=NUMPY, points=2) == pair


def test_float32_pairs_blocked_from_their_own_size(one_thread):
    # a float32 stack is blocked from _ROW_BLOCKED_MIN_BYTES_STACK (2 MiB) on; a float64
    # stack and a single point of the same bytes are not
    small = _backend._ROW_BLOCKED_MIN_BYTES_STACK[np.dtype("float32")]
    assert small < _backend._ROW_BLOCKED_MIN_BYTES
    A32 = np.zeros((small // (50 * 4) + 1, 50), dtype="float32", order="F")
    A64 = np.zeros((small // (50 * 8) + 1, 50), dtype="float64", order="F")
    assert A32.nbytes < _backend._ROW_BLOCKED_MIN_BYTES
    blocks = _backend.row_blocks(A32, xp=NUMPY, points=2)
    assert blocks is not None and blocks[-1].stop == A32.shape[0]
    assert _backend.row_blocks(A32, xp=NUMPY) is None
    assert _backend.row_blocks(A64, xp=NUMPY, points=2) is None
    below = np.zeros((small // (50 * 4) - 1, 50), dtype="float32", order="F")
    assert _backend.row_blocks(below, xp=NUMPY, points=2) is None


def test_model_blocks_a_wide_pair_not_a_wide_gradient(rng, one_thread):
    # on the 4 MiB, 500-column matrix above: the model's gradient is the whole products'
    # bit for bit, its gradients at a pair are summed over blocks (another rounding), and
    # both agree with the whole products to rounding
    n, d = _backend._ROW_BLOCKED_MIN_BYTES // (500 * 8) + 1, 500
    A, b = _data(rng, n, d)
    W = 0.1 * rng.standard_normal((2, d))
    model = LinearModel(d)
    whole_g = A.T @ (b / (-1.0 - np.exp(b * (A @ W[0])))) / n
    assert np.array_equal(model.grad(W[0], A, b, xp=NUMPY), whole_g)
    pair = model.grad_many(W, A, b, xp=NUMPY)
    assert model.row_blocks(A, xp=NUMPY, points=2) is not None
    assert not np.array_equal(pair[0], whole_g)
    assert np.max(np.abs(pair[0] - whole_g)) <= 1e-14 * np.max(np.abs(whole_g))


def test_row_blocks_numpy_only(small_blocks):
    strict = pytest.importorskip("array_api_strict")
    A = strict.zeros((30, 25))
    assert _backend.row_blocks(A, xp=strict) is None


def test_multiclass_model_never_blocks(small_blocks):
    A = np.zeros((30, 25), order="F")
    assert LinearModel(25, 3).row_blocks(A, xp=NUMPY) is None
    assert LinearModel(25).row_blocks(A, xp=NUMPY) is not None


# ---------------------------------------------------------------- against extended precision
def _reference(A, b, c, w, v):
    """Gradient, HVP and per-sample losses of the weighted mean logistic loss, longdouble."""
    L = np.longdouble
    A, b, c, w, v = (np.asarray(a, dtype=L) for a in (A, b, c, w, v))
    s = A @ w
    m = b * s
    e = np.exp(-np.abs(s))
    grad = A.T @ (c * (-b / (1 + np.exp(m)))) / A.shape[0]
    hvp = A.T @ (c * (e / (1 + e) ** 2) * (A @ v)) / A.shape[0]
    losses = np.log1p(np.exp(-m))
    return grad, hvp, losses


@pytest.mark.parametrize("weighted", [False, True])
def test_blocked_oracles_equal_extended_precision(rng, small_blocks, weighted):
    n, d = 97, 25                     # 10 blocks, the last one of 7 rows
    A, b = _data(rng, n, d)
    c = rng.uniform(0.1, 2.0, n) if weighted else None
    w, v = rng.standard_normal(d), rng.standard_normal(d)
    model = LinearModel(d)
    assert len(model.row_blocks(A, xp=NUMPY)) == 10
    ref_g, ref_h, ref_l = _reference(A, b, np.ones(n) if c is None else c, w, v)
    scale = lambda r: float(np.max(np.abs(r)))  # noqa: E731
    # sums of 97 terms of size ~1 in float64: relative error well below 1e-14
    tol = 1e-13
    g = model.grad(w, A, b, weights=c, xp=NUMPY)
    assert np.max(np.abs(g - ref_g)) <= tol * scale(ref_g)
    h = model.hvp(w, A, b, v, weights=c, xp=NUMPY)
    assert np.max(np.abs(h - ref_h)) <= tol * scale(ref_h)
    ell, g2 = model.per_sample_and_grad(w, A, b, weights=c, xp=NUMPY)
    assert np.max(np.abs(ell - ref_l) / ref_l) <= tol
    assert np.array_equal(g2, g)                 # the same operations, bit for bit
    Ws = np.stack([w, v, -w])
    ref_many = [_reference(A, b, np.ones(n) if c is None else c, p, v)[0] for p in Ws]
    G = model.grad_many(Ws, A, b, weights=c, xp=NUMPY)
    for j in range(3):
        assert np.max(np.abs(G[j] - ref_many[j])) <= tol * scale(ref_many[j])
        # a stacked point's forward product and elementwise steps are a single point's;
        # its transposed product is one row of a block's matrix product, which the BLAS
        # sums in its own order: the same gradient to rounding
        single = model.grad(Ws[j], A, b, weights=c, xp=NUMPY)
        assert np.max(np.abs(G[j] - single)) <= 1e-14 * scale(single)
    ells, G2 = model.per_sample_and_grad_many(Ws, A, b, weights=c, xp=NUMPY)
    assert np.array_equal(G2, G) and np.array_equal(ells[0], ell)


def test_blocked_sums_round_apart_from_whole_products(rng, monkeypatch, one_thread):
    # the blocked sums are another summation order: equal to rounding, not bit for bit
    # (else the blocks would not be in use), on a problem large enough to show it
    n, d = 4000, 40
    A, b = _data(rng, n, d)
    w = rng.standard_normal(d)
    model = LinearModel(d)
    whole = model.grad(w, A, b, xp=NUMPY)
    _force_blocks(monkeypatch, 64 * d * 8)
    blocked = model.grad(w, A, b, xp=NUMPY)
    assert not np.array_equal(blocked, whole)
    assert np.max(np.abs(blocked - whole)) <= 1e-14 * np.max(np.abs(whole))


# ---------------------------------------------------------------- one point, many products
def test_linearised_point_gives_the_same_bits_in_any_order(rng, small_blocks):
    # scores formed by the gradient's pass or by the first HVP's: the same blocks, the
    # same products, so the gradient and the HVPs do not depend on which came first
    n, d = 97, 25
    A, b = _data(rng, n, d)
    w, v, u = (rng.standard_normal(d) for _ in range(3))
    model = LinearModel(d)
    grad_first = model.linearize(w, A, b, xp=NUMPY)
    g1 = grad_first.grad()
    h1 = grad_first.hvp(v)
    hvp_first = model.linearize(w, A, b, xp=NUMPY)
    h2 = hvp_first.hvp(v)
    g2 = hvp_first.grad()
    assert np.array_equal(g1, g2) and np.array_equal(h1, h2)
    assert np.array_equal(g1, model.grad(w, A, b, xp=NUMPY))
    assert np.array_equal(grad_first.hvp(u), model.hvp(w, A, b, u, xp=NUMPY))
    # the per-sample JVP reads the scores' score gradient: the blocked scores
    jvp = hvp_first.per_sample_jvp(v)
    ref = b / (-1.0 - np.exp(b * (A @ w))) * (A @ v)
    assert np.max(np.abs(jvp - ref)) <= 1e-13 * np.max(np.abs(ref))


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-13), ("float32", 2e-5)])
def test_logreg_oracles_blocked_and_whole_agree(rng, monkeypatch, one_thread, dtype, rtol):
    # 397 rows: the blocked problem reads a column-major copy at a padded stride
    # (matvec_layout), the whole one the contiguous copy
    n, d = 397, 25
    A, b = _data(rng, n, d, dtype)
    A = np.ascontiguousarray(A)                # row-major, as data usually comes
    Av, bv = _data(rng, n // 2, d, dtype)
    x = (0.1 * rng.standard_normal(d)).astype(dtype)
    y, z, v = (rng.standard_normal(d).astype(dtype) for _ in range(3))

    def oracles():
        p = LogRegHPO(A, b, Av, bv)
        g, lin = p.grad_and_linearize_g(x, y)
        return {"grad_g": p.grad_g(x, y)[1], "grad_g_y": p.grad_g_y(x, y),
                "grad_g_many": p.grad_g_many(x, np.stack([y, z]))[1],
                "grad_g_y_many": p.grad_g_y_many(x, np.stack([y, z])),
                "hvp_g": p.hvp_g(x, y, v), "linearized": g, "linearized hvp": lin.hvp(v),
                "grad_f": p.grad_f(x, y)[1], "g": p.g(x, y)}

    whole = oracles()
    _force_blocks(monkeypatch, 30 * d * np.dtype(dtype).itemsize)
    blocked = oracles()
    laid = LogRegHPO(A, b, Av, bv)._train(None)[0]
    assert laid.strides[1] > n * laid.itemsize            # the padded copy was read
    for name, ref in whole.items():
        err = np.max(np.abs(blocked[name] - ref)) / np.max(np.abs(ref))
        assert err <= rtol, (name, err)
    assert np.array_equal(blocked["linearized"], blocked["grad_g_y"])
    assert np.array_equal(blocked["linearized hvp"], blocked["hvp_g"])
