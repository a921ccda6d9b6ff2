"""The one module that knows array libraries by name.

Everything numerical in refbilevel is written against the array API standard and
receives its namespace from :func:`array_namespace`. This module holds what cannot be
neutral: looking a backend up by name, moving arrays between host and device,
synchronising a GPU stream for timing, and drawing random numbers on the host so that
the same seed gives the same data on every backend.

Rules kept here:

* :func:`to_host` and :func:`synchronize` are for results, plots, the CLI, tests and
  benchmarks only; solver code never calls them.
* all randomness comes from one seeded :class:`numpy.random.Generator` on the host
  (:func:`host_rng`); arrays are drawn there and moved once (:func:`from_host`).
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "BACKEND_NAMES",
    "ScalarOperands",
    "array_namespace",
    "asarray",
    "available_backends",
    "backend_name",
    "backend_namespace",
    "blas_threads",
    "check_same_device",
    "copy_into",
    "device",
    "device_name",
    "from_host",
    "host_namespace",
    "host_rng",
    "is_array",
    "is_cupy",
    "is_dask",
    "is_numpy",
    "linalg_solve",
    "materialize",
    "matvec_layout",
    "matvec_rows",
    "matvecs",
    "persist_data",
    "positive_or_inf",
    "row_blocks",
    "stack",
    "synchronize",
    "to_device",
    "to_host",
    "to_host_scalar",
    "zeros_like",
]

#: Backend names understood by :func:`backend_namespace`.
BACKEND_NAMES = ("numpy", "array_api_strict", "cupy", "torch", "jax", "dask")


def is_array(obj: Any) -> bool:
    """Return whether ``obj`` is an array (or NumPy scalar) of a library array-api-compat knows."""
    return array_api_compat.is_array_api_obj(obj)


def array_namespace(*arrays: Any, names: tuple[str, ...] | None = None):
    """Return the array-API namespace shared by ``arrays``.

    ``None`` entries and Python scalars are ignored. Arrays from two libraries or on two
    devices raise :class:`TypeError` naming the offending arguments.

    Parameters
    ----------
    *arrays
        The arrays of one call.
    names : tuple of str, optional
        Argument names, used in error messages; defaults to ``arg0, arg1, ...``.

    Returns
    -------
    namespace
        The array-api-compat wrapped namespace (e.g. ``array_api_compat.numpy``).
    """
    for a in arrays:                  # NumPy arrays only: the common case, decided here
        if type(a) is not np.ndarray:
            break
    else:
        if arrays:
            return _numpy_namespace()
    if names is None:
        names = tuple(f"arg{i}" for i in range(len(arrays)))
    found: list[tuple[str, Any, Any]] = []
    for name, a in zip(names, arrays):
        if a is None or (isinstance(a, (bool, int, float, complex)) and not hasattr(a, "dtype")):
            continue  # Python scalars (NumPy scalars, e.g. 0-d reductions, count as arrays)
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(
                f"{name} must be an array (numpy, cupy, array_api_strict, torch, jax, dask); "
                f"got {type(a).__name__}"
            )
        found.append((name, a, array_api_compat.array_namespace(a)))
    if not found:
        raise TypeError("array_namespace needs at least one array argument")
    first_name, first, xp = found[0]
    for name, a, other in found[1:]:
        if other is not xp:
            raise TypeError(
                f"{name} is a {_library(other)} array but {first_name} is a "
                f"{_library(xp)} array; convert them to one library first"
            )
    check_same_device(*(a for _, a, _ in found), names=tuple(n for n, _, _ in found))
    return xp


@functools.lru_cache(maxsize=1)
def _numpy_namespace():
    """array-api-compat's NumPy namespace (what :func:`array_namespace` gives NumPy arrays)."""
    import array_api_compat.numpy

    return array_api_compat.numpy


def check_same_device(*arrays: Any, names: tuple[str, ...] | None = None) -> None:
    """Raise :class:`TypeError` unless every array lives on the same device."""
    if names is None:
        names = tuple(f"arg{i}" for i in range(len(arrays)))
    devs = [(n, device(a)) for n, a in zip(names, arrays) if a is not None]
    for name, dev in devs[1:]:
        if dev != devs[0][1]:
            raise TypeError(
                f"{name} is on device {dev!r} but {devs[0][0]} is on device "
                f"{devs[0][1]!r}; move them to one device first"
            )


def _library(xp) -> str:
    name = getattr(xp, "__name__", repr(xp))
    return name.replace("array_api_compat.", "")


def backend_name(xp) -> str:
    """Short name of a namespace: one of :data:`BACKEND_NAMES` (``"jax"`` for ``jax.numpy``)."""
    name = _library(xp)
    return name.split(".")[0]


def is_cupy(xp) -> bool:
    """Whether ``xp`` is CuPy's namespace."""
    return array_api_compat.is_cupy_namespace(xp)


def is_numpy(xp) -> bool:
    """Whether ``xp`` is NumPy's namespace."""
    return array_api_compat.is_numpy_namespace(xp)


def is_dask(xp) -> bool:
    """Whether ``xp`` is Dask's (array-api-compat wrapped) namespace."""
    return array_api_compat.is_dask_namespace(xp)


def device(x: Any):
    """The device of array ``x`` (array-api-compat's portable ``device``)."""
    return array_api_compat.device(x)


def device_name(xp) -> str:
    """Human-readable device of a backend: the GPU's name for CuPy, else ``"cpu"``."""
    if is_cupy(xp):
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    if backend_name(xp) == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    return "cpu"


def backend_namespace(name: str):
    """Look up an array-API namespace by backend name.

    Parameters
    ----------
    name : {"numpy", "array_api_strict", "cupy", "torch", "jax", "dask"}
        ``"cupy"`` works only when CuPy is installed and a CUDA device is visible; the
        others only when their library is installed.

    Returns
    -------
    namespace
        ``jax.numpy`` for ``"jax"``; the array-api-compat wrapped namespace for NumPy,
        CuPy, PyTorch and Dask; ``array_api_strict`` itself.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or an unavailable backend.

    Notes
    -----
    Looking up ``"jax"`` turns on JAX's 64-bit mode (``jax_enable_x64``), a process-wide
    setting: without it JAX has no float64 and would silently compute in float32.
    Programs that import JAX themselves can set it first
    (``jax.config.update("jax_enable_x64", True)`` or ``JAX_ENABLE_X64=1``).
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0))
    if name == "array_api_strict":
        try:
            import array_api_strict
        except ImportError as exc:
            raise ValueError(
                "backend 'array_api_strict' needs the array-api-strict package "
                "(pip install array-api-strict)"
            ) from exc
        return array_api_strict
    if name == "cupy":
        if not _cuda_available():
            raise ValueError(
                "backend 'cupy' needs CuPy (extra cuda12 or cuda13) and a visible CUDA GPU; "
                "none was found"
            )
        import array_api_compat.cupy as xp_cupy

        return xp_cupy
    if name == "jax":
        try:
            import jax
        except ImportError as exc:
            raise ValueError("backend 'jax' needs JAX installed (extra jax)") from exc
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp
    if name == "dask":
        try:
            import array_api_compat.dask.array as xp_dask
        except ImportError as exc:
            raise ValueError("backend 'dask' needs Dask installed (extra dask)") from exc
        return xp_dask
    try:
        import array_api_compat.torch as xp_torch
    except ImportError as exc:
        raise ValueError("backend 'torch' needs PyTorch installed (extra torch)") from exc
    return xp_torch


def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False


def available_backends() -> list[str]:
    """Backend names usable on this machine (numpy always).

    Checks without importing heavy libraries where possible (torch, JAX and Dask are only
    looked up).
    """
    import importlib.util

    names = ["numpy"]
    if importlib.util.find_spec("array_api_strict") is not None:
        names.append("array_api_strict")
    if _cuda_available():
        names.append("cupy")
    for name, module in (("torch", "torch"), ("jax", "jax"), ("dask", "dask.array")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent package is missing
            found = False
        if found:
            names.append(name)
    return names


def to_host(x: Any) -> np.ndarray:
    """Copy an array of any backend to a NumPy array on the host.

    For results, plots, files, the CLI and tests only: on a GPU this synchronises, and a
    Dask array is computed (its chunks gathered on the client), so pass small results.
    array-api-strict arrays on a non-default device are moved to the CPU device first.
    """
    if isinstance(x, np.ndarray):
        return x
    xp = array_api_compat.array_namespace(x)
    if is_cupy(xp):
        return x.get()
    name = backend_name(xp)
    if name == "array_api_strict":
        import array_api_strict

        x = array_api_strict.asarray(x, device=array_api_strict.Device("CPU_DEVICE"))
        return np.asarray(x)
    if name == "torch":
        return x.detach().cpu().numpy()
    if is_dask(xp):
        return np.asarray(x.compute(optimize_graph=False))
    return np.asarray(x)


def to_host_scalar(x: Any) -> float:
    """A 0-d array (any backend) as a Python float. Synchronises; never in a hot loop."""
    return float(to_host(x))


def from_host(a: Any, xp, *, dtype=None, device=None):
    """Move host data (NumPy array or nested lists) to namespace ``xp`` on ``device``.

    ``dtype`` may be a dtype of ``xp`` or a name such as ``"float64"``.

    Dask arrays are chunked along the first axis only (``chunks=("auto", -1, ...)``, about
    Dask's default chunk size in bytes per chunk): rows are the unit that is spread over
    workers, and an oracle's reduction over rows becomes one tree reduction across
    chunks. Build a problem from :func:`dask.array.from_array` (or any Dask array) to
    choose other row chunks.

    Raises
    ------
    ValueError
        For float64 on JAX without 64-bit mode (see :func:`backend_namespace`), which JAX
        would otherwise turn into float32.
    """
    if isinstance(dtype, str):
        dtype = getattr(xp, dtype)
    a = np.asarray(a)
    if dtype is None and a.dtype.kind == "f":
        dtype = getattr(xp, a.dtype.name)
    name = backend_name(xp)
    if name == "jax":
        import jax

        if not jax.config.jax_enable_x64 and dtype is not None and dtype_name(dtype) == "float64":
            raise ValueError(
                "JAX is in 32-bit mode and would turn float64 data into float32; "
                "enable 64-bit mode first (jax.config.update('jax_enable_x64', True), "
                "JAX_ENABLE_X64=1, or backend_namespace('jax')) or ask for float32")
    if is_dask(xp):
        import dask.array as da

        chunks = ("auto",) + (-1,) * (a.ndim - 1) if a.ndim else ()
        return da.from_array(a.astype(dtype_name(dtype), copy=False) if dtype is not None
                             else a, chunks=chunks)
    if name == "array_api_strict" and device is not None:
        out = xp.asarray(a, device=None)
        out = xp.asarray(out, device=device, copy=True)
        return out if dtype is None else xp.astype(out, dtype)
    return xp.asarray(a, dtype=dtype, device=device)


def asarray(a: Any, *, like: Any, dtype=None, copy: bool | None = None):
    """Convert ``a`` to the namespace, device and (unless ``dtype`` is given) dtype of ``like``.

    Host data (NumPy, lists, Python scalars) is transferred once; an array of another
    library raises :class:`TypeError` rather than being converted silently.
    """
    xp = array_namespace(like)
    if dtype is None:
        dtype = like.dtype
    if array_api_compat.is_array_api_obj(a) and not isinstance(a, np.ndarray):
        array_namespace(a, like, names=("a", "like"))
        out = xp.asarray(a, dtype=dtype, copy=copy)
        return out
    if isinstance(a, np.ndarray) and not is_numpy(xp):
        return from_host(a, xp, dtype=dtype, device=device(like))
    return xp.asarray(a, dtype=dtype, device=device(like), copy=copy)


def to_device(a: Any, xp, device=None, dtype=None):
    """Move ``a`` (host data or an array of ``xp``) to ``device`` of namespace ``xp``."""
    if array_api_compat.is_array_api_obj(a) and not isinstance(a, np.ndarray):
        other = array_api_compat.array_namespace(a)
        if other is xp:
            out = xp.asarray(a, device=device, copy=None) if device is not None else a
            return out if dtype is None else xp.astype(out, dtype)
        a = to_host(a)
    return from_host(a, xp, dtype=dtype, device=device)


def synchronize(xp, tree: Any = None) -> None:
    """Wait for queued work: a stream sync on CuPy (and torch CUDA), a no-op on NumPy.

    JAX and Dask (with a ``dask.distributed`` client) run asynchronously per array rather
    than per stream: pass the arrays to wait for as ``tree`` (any nesting of dataclasses,
    tuples, lists and dicts, e.g. a solver state), which is waited on with
    :func:`jax.block_until_ready` or :func:`distributed.wait`.

    For timing, benchmarks, record points and the CLI; never inside a solver step.
    """
    if is_cupy(xp):
        import cupy

        cupy.cuda.get_current_stream().synchronize()
        return
    name = backend_name(xp)
    if name == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif name == "jax" and tree is not None:
        import jax

        jax.block_until_ready(_arrays_in(tree))
    elif is_dask(xp) and tree is not None:
        futures = [f for a in _arrays_in(tree) if _is_dask_array(a)
                   for f in _futures_of(a)]
        if futures:
            from distributed import wait

            wait(futures)


def _futures_of(a):
    try:
        from distributed import futures_of
    except ImportError:
        return []
    return futures_of(a)


def _is_dask_array(a) -> bool:
    return type(a).__module__.startswith("dask.") and hasattr(a, "__dask_graph__")


def _map_tree(fn, tree):
    """``tree`` with every array leaf replaced by ``fn(leaf)`` (other leaves kept)."""
    import dataclasses

    if is_array(tree):
        return fn(tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: _map_tree(fn, getattr(tree, f.name))
                   for f in dataclasses.fields(tree) if f.init}
        return dataclasses.replace(tree, **changes)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_map_tree(fn, v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tree(fn, v) for v in tree)
    if isinstance(tree, dict):
        return {k: _map_tree(fn, v) for k, v in tree.items()}
    return tree


def _arrays_in(tree) -> list:
    out: list = []
    _map_tree(lambda a: out.append(a) or a, tree)
    return out


def materialize(tree: Any) -> Any:
    """Make a solver state concrete at a step boundary, without copying it to the host.

    Eager libraries (NumPy, CuPy, PyTorch, JAX, array_api_strict) already hold concrete
    arrays: the state is returned unchanged (the same object). Dask is lazy: a state left
    as it is would carry the task graph of every step so far, so each step's graph would
    grow and each record point would recompute the whole run. Here every Dask array of
    the state is persisted, all in one :func:`dask.persist` call (shared parts of the step
    run once): with a ``dask.distributed`` client the chunks are computed and kept on the
    workers where they are (the call returns at once; the next step's graph starts from
    them), without one, in local memory. Nothing is gathered on the client.

    The driver calls this once per step; solvers never call it.

    Parameters
    ----------
    tree : object
        A solver state: arrays nested in dataclasses, named tuples, tuples, lists and
        dicts; other leaves (samplers, counts) are kept as they are.

    Returns
    -------
    object
        ``tree`` itself when it holds no Dask array, else a copy of it whose Dask arrays
        are persisted (graphs of one task per chunk).
    """
    lazy = [a for a in _arrays_in(tree) if _is_dask_array(a)]
    if not lazy:
        return tree
    import dask

    done = iter(dask.persist(*lazy, optimize_graph=False))
    return _map_tree(lambda a: next(done) if _is_dask_array(a) else a, tree)


def persist_data(problem: Any) -> Any:
    """Persist, in place, every Dask array a problem object holds; return the problem.

    A problem built from Dask arrays holds its data and what its constructor derived from
    it (one-hot targets, casts) as task graphs. Persisted once, before the first step,
    they live on the workers (or in local memory without a ``dask.distributed`` client),
    and each step's graph starts from them instead of re-reading the source or shipping
    host chunks again. A no-op for eager libraries.
    """
    names = [k for k, v in vars(problem).items() if _is_dask_array(v)]
    if names:
        import dask

        for name, value in zip(names, dask.persist(*(getattr(problem, k) for k in names),
                                                   optimize_graph=False)):
            setattr(problem, name, value)
    return problem


def linalg_solve(A, B):
    """``xp.linalg.solve(A, B)`` for every backend, stacks of matrices included.

    Dask's ``linalg.solve`` takes one 2-D matrix only. On Dask, the solve is one task that
    gathers ``A`` and ``B`` on a worker and calls :func:`numpy.linalg.solve` there: the
    result stays lazy (no computation on the client) and comes as a single chunk. For the
    small systems of the exact oracles (stacks of ``dim_z x dim_z`` or one
    ``dim_x + dim_y`` system), never for data-sized matrices.

    Parameters
    ----------
    A : array, shape (..., n, n)
    B : array, shape (n,) or (..., n, k)
        As in the array API standard: a 1-D ``B`` is one right-hand side.
    """
    xp = array_namespace(A, B, names=("A", "B"))
    if not is_dask(xp):
        return xp.linalg.solve(A, B)
    import dask
    import dask.array as da

    if B.ndim == 1:
        shape = tuple(B.shape)
    else:
        shape = np.broadcast_shapes(tuple(A.shape[:-2]), tuple(B.shape[:-2])) + tuple(B.shape[-2:])
    dtype = np.result_type(A.dtype, B.dtype)
    return da.from_delayed(dask.delayed(np.linalg.solve)(A, B), shape=shape, dtype=dtype)


#: Row-major ``A`` (NumPy's default, and the rows a minibatch gathers): backends that run a
#: stack of at most this many rows as one matrix-vector product per row in
#: :func:`matvecs`, per orientation (``A @ x`` and ``A.T @ x``); every other backend, and
#: every larger stack, uses one matrix product. Chosen by measurement, one BLAS thread
#: (docs/benchmarks.md, "Paired products"): OpenBLAS runs ``Xs @ A.T`` with two rows 1.05
#: to 1.8 times slower than two ``A @ x``, while ``Xs @ A`` with two rows is the faster
#: form at all but one size; with four rows one matrix product wins both ways. CuPy
#: (cuBLAS) and PyTorch stream ``A`` once for the whole stack.
_ROWWISE_MAX = {"numpy": {False: 2, True: 0}}

#: Exceptions by dtype, ``(backend, dtype, orientation) -> (rows, fewest columns of A)``:
#: OpenBLAS's float32 ``Gs @ A`` with two rows is slower than two ``A.T @ g`` at 500
#: columns (1.1 to 1.25 times), while at 50 and 100 columns it is 1.5 to 2.7 times faster
#: (docs/benchmarks.md, "Paired products"); float64 keeps one product at every width
#: measured.
_ROWWISE_WIDE = {("numpy", "float32", True): (2, 256)}

#: Column-major ``A`` on NumPy (the full-batch layout, :func:`matvec_layout`), by dtype:
#: ``(rows, fewest bytes of A)``, the stacks of at most ``rows`` vectors that run row-wise
#: once ``A`` holds at least that many bytes, in both orientations. Measured with one
#: OpenBLAS thread (docs/benchmarks.md, "Data layout"): in float32 one matrix product
#: with two rows is 1.4 to 3 times faster than two matrix-vector products while ``A`` fits
#: in 2 MiB, and from 3.8 MB on up to 3 times slower (forward 1.0 to 3.2, backward 1.7 to
#: 2.5); in float64 the stacked forward product wins at every size measured (1.02 to 2.7
#: times) and the stacked backward one at up to 3.8 MB and from 30 MB on, losing 8 to 22 %
#: in between (not encoded: a band that follows this machine's caches).
_COLMAJOR_ROWWISE = {np.dtype("float32"): (2, 2 << 20)}


@functools.lru_cache(maxsize=None)
def _rowwise_max(xp, dtype=None) -> dict:
    """Row-major ``A``: ``{orientation: (largest stack run row-wise, fewest columns of A)}``."""
    name = backend_name(xp)
    out = {t: (_ROWWISE_MAX.get(name, {}).get(t, 0), 0) for t in (False, True)}
    for t in (False, True):
        out[t] = _ROWWISE_WIDE.get((name, dtype_name(dtype), t), out[t])
    return out


def _rowwise(A, m: int, transpose: bool, xp) -> bool:
    """Whether :func:`matvecs` runs its ``m`` products of ``A`` one row at a time."""
    if xp is _numpy_namespace():
        # a column-major array that is not also row-major; the flag first, then (a padded
        # copy) the strides: the check runs on every stacked product of a step
        flags = A.flags
        if not flags.c_contiguous and (flags.f_contiguous or _column_major(A)):
            # keyed by the dtype itself: ``dtype.name`` is a Python-level property (4 µs)
            rows, min_bytes = _COLMAJOR_ROWWISE.get(A.dtype, (0, 0))
            return m <= rows and A.nbytes >= min_bytes
    rows, min_cols = _rowwise_max(xp, A.dtype)[transpose]
    return m <= rows and A.shape[-1] >= min_cols


def matvec_layout(A, *, xp):
    r"""``A`` in the memory layout the backend's matrix-vector products read fastest.

    Parameters
    ----------
    A : array, shape (n, d)
        A data matrix multiplied by vectors, ``A @ v`` and ``A.T @ g`` (never by a matrix of
        many columns: a multiclass model's products have their own best layout).
    xp : namespace
        The namespace of ``A``.

    Returns
    -------
    array
        The same values: on NumPy a column-major (Fortran-ordered) copy, or ``A`` itself if
        it is column-major already; ``A`` itself on every other backend.

    Notes
    -----
    With one OpenBLAS thread both products read a column-major matrix 1.1 to 1.8 times
    faster than the row-major one, at every size measured (docs/benchmarks.md, "Data
    layout"): on the row-major array ``A @ v`` is one short inner product per row and
    ``A.T @ g`` one short update per row, on the column-major one each is a sweep over long
    columns. The two layouts round differently (the BLAS sums in another order), by a few
    units in the last place per entry.

    Rows gathered from a column-major array are slow (a row is ``d`` strided reads): 6 to 8
    times the row-major gather for 256 rows of 100 columns. A problem therefore keeps its
    data as given for minibatches and uses this form for its full-batch products only.
    Not measured on other backends, which get ``A`` unchanged.

    A matrix of at least :data:`_ROW_BLOCKED_MIN_BYTES` (from where every kind of blocked
    pass may use it, :func:`row_blocks`; a float32 pair's blocks start at 2 MiB, on the
    unpadded copy) gets its columns at a padded stride (:func:`_padded_rows`): each column
    starts on a 64-byte cache line, and the stride is not a multiple of 4 KiB. The blocked
    passes multiply row blocks of the matrix while they are cached, and a block whose
    column segments start off a line, or map onto the same cache sets, is read back from
    the cache 1.5 to 2 times slower (one thread, 1 MiB blocks of 100 columns: 17 to 20 GB/s
    against 30 to 39 GB/s for a padded stride). The result is a view of the first ``n`` rows of the padded array; its
    values and the products' values are those of ``A``.
    """
    if xp is not _numpy_namespace():
        return A
    if A.ndim == 2 and _column_major(A):
        return A
    if A.ndim != 2 or A.nbytes < _ROW_BLOCKED_MIN_BYTES:
        return np.asfortranarray(A)
    n, d = A.shape
    padded = np.empty((_padded_rows(n, A.itemsize), d), dtype=A.dtype, order="F")
    padded[n:, ...] = 0                  # never read by a product; defined all the same
    padded[:n, ...] = A
    return padded[:n, ...]


def _column_major(A) -> bool:
    """Whether ``A`` (2-D NumPy) has unit row stride and non-overlapping columns: the
    column-major form of :func:`matvec_layout`, padded or not."""
    n, d = A.shape
    return A.strides[0] == A.itemsize and (d <= 1 or A.strides[1] >= max(n, 1) * A.itemsize)


def _padded_rows(n: int, itemsize: int) -> int:
    """Rows of the padded column-major array of :func:`matvec_layout` for ``n`` rows: the
    column stride rounded up to a multiple of 64 bytes, plus 64 bytes when that is a
    multiple of 4 KiB."""
    stride = -(-n * itemsize // 64) * 64
    if stride % 4096 == 0:
        stride += 64
    return stride // itemsize


def matvecs(A, Xs, *, xp, transpose: bool = False):
    r"""Matrix-vector products of one matrix with a stack of vectors, in the backend's fastest form.

    Parameters
    ----------
    A : array, shape (n, d)
        The matrix (typically data, read once per product).
    Xs : array, shape (m, d), or (m, n) with ``transpose=True``
        The vectors, one per row.
    xp : namespace
        The namespace of ``A`` and ``Xs``.
    transpose : bool
        Multiply by :math:`A^\top` instead of :math:`A`.

    Returns
    -------
    array, shape (m, n), or (m, d) with ``transpose=True``
        Row :math:`j` is :math:`A x_j` (or :math:`A^\top x_j`).

    Notes
    -----
    The result is :math:`X_s A^\top` (or :math:`X_s A`) whichever way it is computed: as
    one matrix product (``A`` streamed once for the whole stack) or, for short stacks on
    backends where a skinny matrix product is slower than matrix-vector products, as
    :math:`m` products stacked. On NumPy with OpenBLAS that is the forward pair on a
    row-major ``A`` (and ``Gs @ A`` once ``A`` is wide, in float32) and, on a column-major
    ``A`` (:func:`matvec_layout`), the float32 pairs once ``A`` outgrows 2 MiB. The choice
    is a per-backend table (by layout, dtype and size where measurements differ), never a
    property of the caller; the two forms agree to rounding (each entry is one inner
    product of length ``d`` or ``n``, summed in a BLAS-chosen order).
    """
    if _rowwise(A, Xs.shape[0], transpose, xp):
        return matvec_rows(A.T if transpose else A, Xs, xp=xp)
    return Xs @ A if transpose else Xs @ A.T


def matvec_rows(A, Xs, *, xp):
    r"""The stack of the matrix-vector products :math:`A x_j`, one product per row of ``Xs``.

    Shape ``(m, n)`` for ``A`` of shape ``(n, d)`` and ``Xs`` of shape ``(m, d)``. On NumPy
    each product is written into its row of the result (the same BLAS call as ``A @ x``,
    without stacking the products afterwards: about 3 µs less a pair); elsewhere the
    products are stacked.
    """
    m = Xs.shape[0]
    if xp is _numpy_namespace():
        dtype = A.dtype if A.dtype == Xs.dtype else np.result_type(A.dtype, Xs.dtype)
        out = np.empty((m, A.shape[0]), dtype=dtype)
        for j in range(m):
            np.matmul(A, Xs[j, ...], out=out[j, ...])
        return out
    return stack([A @ Xs[j, ...] for j in range(m)], xp=xp)


#: Bytes of data matrix per block of a blocked pass (:func:`row_blocks`): half the 2 MiB
#: level-2 cache of the machine measured, so that a block read for one product is still
#: cached for the next (docs/benchmarks.md, "Blocked passes").
_ROW_BLOCK_BYTES = 1 << 20

#: Data matrices smaller than this are passed whole: they stay in the caches between
#: products anyway, and at 2 MiB a float64 pair was 1.2 to 1.3 times slower blocked
#: (Python per block, a stacked product given up; 1.6 to 1.7 before the pairs' transposed
#: products became one matrix product per block). From this size on
#: :func:`matvec_layout` also pads the columns of its column-major copy.
_ROW_BLOCKED_MIN_BYTES = 4 << 20

#: Stacks of points (pairs) by dtype: blocked from these sizes on instead. A float32 pair
#: is blocked from 2 MiB: there the whole pair (one matrix-vector product per point from
#: 2 MiB on, :data:`_COLMAJOR_ROWWISE`) took 2.3 to 2.9 times the blocked pair's time at
#: 50, 100 and 500 columns in two runs (docs/benchmarks.md, "Blocked passes by width").
_ROW_BLOCKED_MIN_BYTES_STACK = {np.dtype("float32"): 2 << 20}

#: A block of the column-major data (:func:`matvec_layout`) is ``d`` column segments of
#: ``rows * itemsize`` bytes each, a short stream for the hardware prefetchers when ``d``
#: is large. Blocks whose segments are shorter than this are never used: at 1,000 and
#: 2,000 columns (segments of 1 KiB and 512 bytes) a blocked gradient took 1.07 to 2.24
#: times the whole products' time and a blocked pair 1.09 to 2.62 times, at 4 to 40 MiB,
#: where at 200 and 500 columns (5 and 2 KiB) pairs took 0.59 to 0.87 (one thread;
#: docs/benchmarks.md, "Blocked passes by width").
_ROW_BLOCK_MIN_SEGMENT_BYTES = 2 << 10

#: A pass at one point (a gradient, a Hessian-vector product) is blocked only if its
#: blocks' column segments hold at least this many bytes, or if ``A`` holds at least
#: :data:`_ROW_BLOCKED_SHORT_MIN_BYTES`: with one product per cached block it saves less
#: than a pair, and below about 24 MiB the whole matrix is read back from the level-3
#: cache rather than from memory. The AID-CG and ITD steps, blocked ÷ whole (one thread):
#: 0.89 to 1.05 at 50 and 100 columns (segments of 10 to 20 KiB, 4 to 17 MB), about 0.97
#: at 200 (5 KiB, 13 MB), 0.97 to 1.18 at 400 and 500 (2 to 2.6 KiB, 6.7 to 20 MB), 0.87
#: to 1.03 at 500 columns and 33.5 to 40 MB.
_ROW_BLOCK_ONE_POINT_SEGMENT_BYTES = 4 << 10
_ROW_BLOCKED_SHORT_MIN_BYTES = 24 << 20


def row_blocks(A, *, xp, points: int = 1) -> tuple | None:
    r"""Row slices for one pass of several products over ``A`` while each block is cached.

    Parameters
    ----------
    A : array, shape (n, d)
        A data matrix that an oracle multiplies twice in a row, ``A @ w`` then
        :math:`A^\top(\cdot)` of an elementwise function of the result (a gradient, a
        Hessian-vector product).
    xp : namespace
        The namespace of ``A``.
    points : int
        The points the pass multiplies ``A`` by: 1 for a gradient or a Hessian-vector
        product, the stack's height for gradients at stacked points.

    Returns
    -------
    tuple of slice or None
        Consecutive row ranges of about :data:`_ROW_BLOCK_BYTES` each, covering ``A``; or
        ``None``: multiply the whole matrix.

    Notes
    -----
    A matrix larger than the caches is read from memory by every product, so a gradient
    :math:`A^\top \phi(A w)` costs two reads of ``A``. Taken block by block,
    :math:`\sum_k A_k^\top \phi(A_k w)`, the second product (and any product at another
    point in the same loop) finds :math:`A_k` in the cache: one read from memory for all
    of them. With one OpenBLAS thread, over 30 matrices of 4 to 80 MiB, a gradient took a
    median 0.90 to 0.94 of the whole products' time over two runs (0.73 to 1.27) and a
    gradient at a point pair 0.69 (0.52 to 0.81; its transposed products as one matrix
    product per block); the solver steps at 20,000 x 500 and 200,000 x 100 took 0.66 to
    1.01 of their time with whole products (docs/benchmarks.md, "Blocked passes" and
    "Small steps and point pairs").

    Blocks are used on NumPy only, for matrices of at least
    :data:`_ROW_BLOCKED_MIN_BYTES` (for a stack of points, by dtype,
    :data:`_ROW_BLOCKED_MIN_BYTES_STACK`) whose blocks' column segments hold at least
    :data:`_ROW_BLOCK_MIN_SEGMENT_BYTES` (for a pass at one point
    :data:`_ROW_BLOCK_ONE_POINT_SEGMENT_BYTES`, or the matrix at least
    :data:`_ROW_BLOCKED_SHORT_MIN_BYTES`), and only while NumPy's BLAS runs one thread: a
    multi-threaded BLAS splits each block's products between its threads, whose caches do
    not hold the same rows (with two threads the blocked gradient was more than 5 % slower
    than the whole products at 24 of the 30 sizes measured, up to 2.4 times), and a Python loop
    cannot share its blocks between threads. The blocked sums round differently from the
    whole products (the BLAS sums each block apart, by a few units in the last place), so a
    result can depend on the thread count in its last bits.
    """
    if xp is not _numpy_namespace():
        return None
    if A.nbytes < _ROW_BLOCKED_MIN_BYTES and (
            points == 1 or A.nbytes < _ROW_BLOCKED_MIN_BYTES_STACK.get(A.dtype, 1 << 62)):
        return None
    n, d = A.shape
    rows = max(1, _ROW_BLOCK_BYTES // (d * A.itemsize))
    segment = rows * A.itemsize            # bytes of one column within a block
    if segment < _ROW_BLOCK_MIN_SEGMENT_BYTES:
        return None
    if (points == 1 and segment < _ROW_BLOCK_ONE_POINT_SEGMENT_BYTES
            and A.nbytes < _ROW_BLOCKED_SHORT_MIN_BYTES):
        return None
    if not _blas_one_thread():
        return None
    return _block_slices(n, rows)


@functools.lru_cache(maxsize=64)
def _block_slices(n: int, rows: int) -> tuple:
    return tuple(slice(i, min(i + rows, n)) for i in range(0, n, rows))


@functools.lru_cache(maxsize=1)
def _blas_controllers() -> tuple:
    """threadpoolctl's controllers of the BLAS libraries loaded (NumPy's among them)."""
    from threadpoolctl import ThreadpoolController

    return tuple(lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas")


def blas_threads() -> int | None:
    """The threads NumPy's BLAS runs now: the largest count among the BLAS libraries
    threadpoolctl finds loaded (NumPy's among them), ``None`` when it finds none. About a
    microsecond a library: each controller asks its library."""
    counts = [lc.num_threads for lc in _blas_controllers()]
    return max(counts) if counts else None


def _blas_one_thread() -> bool:
    """Whether NumPy's BLAS runs one thread now (``False`` when no BLAS is found: unknown
    is not one)."""
    return blas_threads() == 1


def stack(arrays, *, xp):
    """``xp.stack(arrays)``: the arrays along a new leading axis, in the backend's cheapest form.

    Parameters
    ----------
    arrays : sequence of array
        Arrays of one shape and dtype, in namespace ``xp``.
    xp : namespace
        Their namespace.

    Notes
    -----
    Every form only copies, so the result is the same array bit for bit. NumPy copies the
    list into a new array with ``numpy.array`` (about 0.7 µs for two short vectors against
    3 µs for ``numpy.stack``, whose Python-level checks a stacked oracle call of a step
    pays every time); every other backend concatenates the arrays viewed with a leading
    axis of one, one array operation (a kernel on a GPU).
    """
    if xp is _numpy_namespace():
        return np.array(arrays)
    return xp.concat([a[None, ...] for a in arrays])


def zeros_like(a, *, xp):
    """``xp.zeros_like(a)``: zeros of ``a``'s shape, dtype and device.

    On NumPy ``numpy.zeros(a.shape, a.dtype)`` (0.5 µs against 4 µs for array-api-compat's
    ``zeros_like``, which goes through ``numpy.zeros_like``: an empty array, then a copy of
    zero into it); the same zeros either way. Solvers and oracles call it every step (an
    optimiser's fresh state, the zero x-part of a gradient).
    """
    if xp is _numpy_namespace():
        return np.zeros(a.shape, dtype=a.dtype)
    return xp.zeros_like(a)


def positive_or_inf(a, *, xp):
    """``a`` where ``a > 0``, else :math:`+\\infty`, for a 0-d array or NumPy scalar ``a``.

    The guard of a division that must give 0 once its denominator is not positive (CG's
    step sizes). On a device, ``xp.where``: no data-dependent branch, so nothing
    synchronises. NumPy's 0-d reductions are host scalars already, and ``where`` on them
    costs about 3 µs (two per CG iteration), so a Python comparison chooses there; the
    value returned is ``a`` itself or infinity either way, so the division gives the same
    bits.
    """
    if isinstance(a, np.generic):
        return a if a > 0 else np.inf
    return xp.where(a > 0, a, xp.inf)


def scaled(c, a):
    """``c * a`` for a host step size ``c``: ``a`` itself when ``c`` is the Python number 1.

    Multiplying by one is exact in IEEE arithmetic, so either way the result has the same
    bits (and dtype: a Python number does not promote); on a backend that flushes
    subnormal results to zero (XLA on the CPU) the skipped product would have flushed a
    subnormal entry, which ``a`` keeps at its exact value. Skipping it saves one array
    operation (a kernel on a GPU, about a microsecond on NumPy at small sizes) per use in
    the inner loops whose step is 1 by default (ITD's updates, inner gradient descent, the
    Neumann and fixed-point series): 59 of ITD's 617 operations per step at 20 inner steps.
    """
    if type(c) in (float, int) and c == 1:
        return a
    return c * a


class ScalarOperands:
    """Python floats an update uses many times, as operands of the arrays they meet.

    Parameters
    ----------
    *values : float
        The constants (decay rates, epsilons).

    Notes
    -----
    ``ops.like(a)`` gives the constants for arithmetic with ``a``: on NumPy, read-only
    0-d arrays of ``a``'s dtype (made once per dtype); on every other backend the floats.
    NumPy (2.x) spends about 0.4 µs more on an operation between an array and a Python
    float than between two arrays: the float is a "weak" scalar (NEP 50) whose dtype is
    resolved on every call. It then computes in the array's dtype with the float rounded
    to that dtype, which is the value of the 0-d array, so the results are the same bit
    for bit. The 0-d arrays must only meet arrays of their own dtype (a 0-d array is not
    weak: against another dtype it promotes).
    """

    __slots__ = ("values", "_by_dtype")

    def __init__(self, *values: float):
        self.values = tuple(float(v) for v in values)
        self._by_dtype: dict = {}

    def like(self, a) -> tuple:
        """The constants as operands for arithmetic with array ``a``."""
        if type(a) is not np.ndarray:
            return self.values
        ops = self._by_dtype.get(a.dtype)
        if ops is None:
            ops = []
            for v in self.values:
                k = np.asarray(v, dtype=a.dtype)
                k.flags.writeable = False
                ops.append(k)
            ops = self._by_dtype[a.dtype] = tuple(ops)
        return ops


def host_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """The seeded host generator every random draw in refbilevel comes from.

    Parameters
    ----------
    seed : int, numpy.random.Generator or None
        An integer seed (>= 0), an existing generator (returned as is), or ``None`` for
        fresh entropy.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, a numpy Generator or None; got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0; got {seed}")
    return np.random.default_rng(seed)


def copy_into(dst, src) -> None:
    """Copy ``src`` into the preallocated ``dst`` (same shape, dtype and device).

    On CuPy a device-to-device ``cudaMemcpyAsync``: the copy engine, the path that shows a
    device's copy bandwidth (CuPy's ``asarray(copy=True)`` runs an elementwise kernel that
    reaches about 60 % of it on an H100; docs/benchmarks.md). Elsewhere ``dst[...] = src``.
    For bandwidth measurements; asynchronous on a GPU.
    """
    xp = array_namespace(dst, src, names=("dst", "src"))
    if backend_name(xp) in ("jax", "dask"):
        raise TypeError(f"copy_into needs mutable arrays; {backend_name(xp)} arrays are "
                        "immutable")
    if is_cupy(xp):
        dst.data.copy_from_device_async(src.data, src.nbytes)
    else:
        dst[...] = src


def host_namespace():
    """NumPy's array-API namespace: for host-side construction of problem data.

    Generators build their data here (in float64, from :func:`host_rng`) and move it once
    with :func:`from_host`, so every backend receives bit-identical data.
    """
    return backend_namespace("numpy")


def default_namespace(xp=None):
    """``xp`` itself, NumPy's wrapped namespace when ``xp`` is None, or the namespace of a
    backend name (``"numpy"``, ``"array_api_strict"`` ...)."""
    if xp is None:
        return backend_namespace("numpy")
    if isinstance(xp, str):
        return backend_namespace(xp)
    if not hasattr(xp, "asarray"):
        raise TypeError(f"xp must be an array namespace or a backend name; got "
                        f"{type(xp).__name__}")
    return xp


def resolve_dtype(xp, dtype) -> Any:
    """A floating dtype of ``xp`` from a dtype object or a name ("float32"/"float64")."""
    if dtype is None:
        return xp.float64
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
        return getattr(xp, dtype)
    if dtype == xp.float32 or dtype == xp.float64:
        return dtype
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None)
    if name in ("float32", "float64"):
        return getattr(xp, name)
    raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")


def dtype_name(dtype) -> str:
    """``"float32"`` or ``"float64"`` for a dtype of any backend."""
    text = str(dtype)
    for name in ("float64", "float32", "float16", "int64", "int32"):
        if name in text:
            return name
    return text


def eps(dtype) -> float:
    """Machine epsilon of a floating dtype of any backend, as a Python float."""
    return 2.0**-52 if dtype_name(dtype) == "float64" else 2.0**-23

