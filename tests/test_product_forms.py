"""The per-backend forms of the CPU hot path: stacked matrix-vector products, CG inner
products, the cached exponent limit and the NumPy-only namespace lookup.

Every result is compared with an independent reference: products and inner products with
``math.fsum`` over the exact float64 terms (correctly rounded sums), the exponent limit
with the closed form ``floor(log(largest finite))`` from the format's parameters, CG with
a dense solve.
"""

from __future__ import annotations

import math
import warnings

import array_api_compat
import numpy as np
import pytest

from refbilevel import _backend
from refbilevel._backend import array_namespace, matvecs, to_host
from refbilevel.linalg import _vdot, conjugate_gradient
from refbilevel.models.losses import exp_limit


def _fsum_products(A, Xs, transpose):
    """Row j: exact-sum ``A @ x_j`` (or ``A.T @ x_j``), each entry an fsum of float64 terms."""
    M = A.T if transpose else A
    return np.array([[math.fsum(M[i, k] * x[k] for k in range(M.shape[1]))
                      for i in range(M.shape[0])] for x in Xs])


@pytest.mark.parametrize("m", [1, 2, 3])
def test_matvec_rows_are_the_single_products(xp, asxp, rng, m):
    # row j is A @ x_j itself (the same matrix-vector product, on NumPy written into its
    # row): bit for bit, and within rounding of the exact sums
    n, d = 23, 7
    A, Xs = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    got = _backend.matvec_rows(asxp(A), asxp(Xs), xp=xp)
    assert tuple(got.shape) == (m, n)
    for j in range(m):
        single = to_host(asxp(A) @ asxp(Xs)[j, ...])
        assert to_host(got[j, ...]).tobytes() == single.tobytes()
    ref = _fsum_products(A, Xs, False)
    assert np.max(np.abs(to_host(got) - ref)) <= 8 * d * 2.0**-52 * np.max(np.abs(ref))


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("transpose", [False, True])
def test_matvecs_equal_exact_sums(xp, asxp, rng, m, transpose):
    # m = 1, 2 run as matrix-vector products on NumPy (A @ x), m = 3, 5 as one matrix
    # product; both forms must give the rows of Xs Aᵀ (or Xs A) to rounding
    n, d = 23, 7
    A = rng.standard_normal((n, d))
    Xs = rng.standard_normal((m, d if not transpose else n))
    got = to_host(matvecs(asxp(A), asxp(Xs), xp=xp, transpose=transpose))
    ref = _fsum_products(A, Xs, transpose)
    assert got.shape == ref.shape
    # each entry is an inner product of length <= 23: error <= 23 eps sum|terms|
    bound = 23 * 2.0**-52 * _fsum_products(np.abs(A), np.abs(Xs), transpose)
    assert np.all(np.abs(got - ref) <= bound)


@pytest.mark.parametrize("dtype, d, rtol", [("float64", 6, 1e-13), ("float32", 300, 1e-5)])
def test_matvecs_forms_agree_on_numpy(rng, monkeypatch, dtype, d, rtol):
    # the table decides the form; forcing each form on NumPy gives the same rows (float32
    # with 300 columns: the width at which its transposed pair runs row-wise)
    xp = _backend.backend_namespace("numpy")
    A = rng.standard_normal((40, d)).astype(dtype)
    Xs = rng.standard_normal((2, d)).astype(dtype)
    Gs = rng.standard_normal((2, 40)).astype(dtype)
    out = {}
    for limit in (0, 2):
        monkeypatch.setitem(_backend._ROWWISE_MAX, "numpy", {False: limit, True: limit})
        monkeypatch.setattr(_backend, "_ROWWISE_WIDE", {})
        _backend._rowwise_max.cache_clear()
        out[limit] = (matvecs(A, Xs, xp=xp), matvecs(A, Gs, xp=xp, transpose=True))
    monkeypatch.undo()
    _backend._rowwise_max.cache_clear()
    out["table"] = (matvecs(A, Xs, xp=xp), matvecs(A, Gs, xp=xp, transpose=True))
    scale = (np.abs(Xs) @ np.abs(A).T, np.abs(Gs) @ np.abs(A))   # sum of |terms| per entry
    for form in (2, "table"):
        for a, b, s in zip(out[0], out[form], scale):
            assert np.all(np.abs(a - b) <= rtol * s), (dtype, form)


@pytest.mark.parametrize("dtype, n, d, rtol", [("float64", 40, 6, 1e-13),
                                                ("float32", 1100, 500, 1e-5)])
def test_matvecs_forms_agree_on_a_column_major_matrix(rng, monkeypatch, dtype, n, d, rtol):
    # column-major A (the full-batch layout on NumPy): forcing each form gives the rows
    # of Xs Aᵀ and Gs A to rounding, and so does the table's choice (float32 with
    # 1,100 x 500 entries: 2.2 MB, past the size from which its pairs run row-wise)
    xp = _backend.backend_namespace("numpy")
    A = np.asfortranarray(rng.standard_normal((n, d)).astype(dtype))
    Xs = rng.standard_normal((2, d)).astype(dtype)
    Gs = rng.standard_normal((2, n)).astype(dtype)
    out = {}
    for form, table in (("stacked", {}), ("rows", {np.dtype(dtype): (2, 0)})):
        monkeypatch.setattr(_backend, "_COLMAJOR_ROWWISE", table)
        out[form] = (matvecs(A, Xs, xp=xp), matvecs(A, Gs, xp=xp, transpose=True))
    monkeypatch.undo()
    out["table"] = (matvecs(A, Xs, xp=xp), matvecs(A, Gs, xp=xp, transpose=True))
    scale = (np.abs(Xs) @ np.abs(A).T, np.abs(Gs) @ np.abs(A))
    for form in ("rows", "table"):
        for a, b, s in zip(out["stacked"], out[form], scale):
            assert np.all(np.abs(a - b) <= rtol * s), (dtype, form)


def test_matvec_layout(xp, asxp, rng):
    # NumPy: a column-major array of the same values (the array itself when it is one
    # already); every other backend: the array itself
    A = asxp(rng.standard_normal((7, 3)))
    laid = _backend.matvec_layout(A, xp=xp)
    np.testing.assert_array_equal(to_host(laid), to_host(A))
    if xp is _backend.backend_namespace("numpy"):
        assert laid.flags.f_contiguous and not laid.flags.c_contiguous
        assert _backend.matvec_layout(laid, xp=xp) is laid
    else:
        assert laid is A


@pytest.mark.parametrize("n, dtype", [(7, "float64"), (8, "float64"), (512, "float64"),
                                      (1024, "float32"), (13, "float32")])
def test_matvec_layout_pads_the_columns_of_large_matrices(rng, monkeypatch, n, dtype):
    # a matrix large enough for blocked passes (here every matrix: the threshold lowered)
    # gets columns that start on a 64-byte line at a stride that is no multiple of 4 KiB;
    # the view holds A's values, is laid out once, and its products equal those of the
    # unpadded column-major copy to rounding (the same sums, another alignment)
    monkeypatch.setattr(_backend, "_ROW_BLOCKED_MIN_BYTES", 0)
    xp = _backend.backend_namespace("numpy")
    A = rng.standard_normal((n, 6)).astype(dtype)
    laid = _backend.matvec_layout(A, xp=xp)
    assert laid.shape == A.shape and laid.strides[0] == A.itemsize
    stride = laid.strides[1]
    assert stride >= n * A.itemsize and stride % 64 == 0 and stride % 4096 != 0
    assert stride < n * A.itemsize + 64 + 64          # the least padding that does it
    np.testing.assert_array_equal(laid, A)
    assert _backend.matvec_layout(laid, xp=xp) is laid
    x, g = rng.standard_normal(6).astype(dtype), rng.standard_normal(n).astype(dtype)
    plain = np.asfortranarray(A)
    tol = 8 * np.finfo(dtype).eps
    assert np.all(np.abs(laid @ x - plain @ x) <= tol * (np.abs(A) @ np.abs(x)))
    assert np.all(np.abs(laid.T @ g - plain.T @ g) <= tol * (np.abs(A).T @ np.abs(g)))
    # below the threshold: the contiguous copy, as before
    monkeypatch.setattr(_backend, "_ROW_BLOCKED_MIN_BYTES", 1 << 62)
    small = _backend.matvec_layout(A, xp=xp)
    assert small.flags.f_contiguous and small.strides[1] == n * A.itemsize


def test_vdot_is_the_euclidean_inner_product(xp, asxp, rng):
    for shape in [(9,), (3, 4), (2, 3, 2)]:
        u, v = rng.standard_normal(shape), rng.standard_normal(shape)
        got = float(to_host(_vdot(xp, asxp(u), asxp(v))))
        ref = math.fsum((u * v).ravel())
        assert abs(got - ref) <= u.size * 2.0**-52 * math.fsum(np.abs(u * v).ravel())


def test_cg_on_a_matrix_right_hand_side(xp, asxp, rng):
    # b of shape (3, 4): CG's inner products run over all 12 entries; 12 steps solve the
    # 12 x 12 SPD system exactly (in exact arithmetic), compared with a dense solve
    Q = rng.standard_normal((12, 12))
    H = Q @ Q.T + 12 * np.eye(12)
    b = rng.standard_normal((3, 4))
    Hx = asxp(H)
    v = conjugate_gradient(lambda u: xp.reshape(Hx @ xp.reshape(u, (-1,)), (3, 4)), asxp(b),
                           n_iter=12)
    ref = np.linalg.solve(H, b.ravel()).reshape(3, 4)
    assert np.max(np.abs(to_host(v) - ref)) <= 1e-10 * np.max(np.abs(ref))


def test_exp_limit_matches_the_format(xp):
    # largest finite: (2 - 2^(1-p)) 2^emax; p = 53, emax = 1023 (float64); 24, 127 (float32)
    for dtype, p, emax in ((xp.float64, 53, 1023), (xp.float32, 24, 127)):
        log_max = math.log(2.0 - 2.0 ** (1 - p)) + emax * math.log(2.0)
        assert exp_limit(dtype, xp=xp) == math.floor(log_max)
        assert exp_limit(dtype, xp=xp) == math.floor(log_max)     # cached value


def test_exp_limit_keeps_libraries_apart():
    # NumPy's and array-api-strict's float64 hash alike; a cache keyed by the dtype alone
    # would compare them (array-api-strict warns on such comparisons)
    strict = pytest.importorskip("array_api_strict")
    np_xp = _backend.backend_namespace("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            assert exp_limit(np_xp.float64, xp=np_xp) == 709.0
            assert exp_limit(strict.float64, xp=strict) == 709.0
            assert exp_limit(strict.float32, xp=strict) == 88.0


def test_array_namespace_numpy_fast_path_gives_the_compat_namespace():
    a, b = np.ones(3), np.zeros((2, 2))
    assert array_namespace(a, b) is array_api_compat.array_namespace(a, b)
    assert array_namespace(a) is array_api_compat.array_namespace(a)
    # a subclass, a NumPy scalar and None still go through the full checks
    assert array_namespace(a, np.float64(1.0), None) is array_api_compat.array_namespace(a)
    with pytest.raises(TypeError, match="arg1 must be an array"):
        array_namespace(a, [1.0, 2.0])
