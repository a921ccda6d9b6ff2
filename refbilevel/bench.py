"""Backend-swap timing table: the same solver step on NumPy, CuPy, ...

For each size and backend, :func:`bench` builds the problem, initialises the solver, runs
``warmup`` steps (excluded: compilation, allocation pools, caches), then times ``repeats``
blocks of ``n_steps`` steps, each block bracketed by :func:`refbilevel._backend.synchronize`,
and reports the median time per step and the speedup over the first backend (NumPy).

For full-batch steps it also reports the achieved memory bandwidth: the bytes of problem
data one step must read, divided by the time per step, next to the copy bandwidth of the
same device (a large array copied into a preallocated one, by the copy engine on CuPy;
counted as read + write, ``2 * nbytes / time``, as STREAM's copy). The bytes per step are found, not assumed:
one step is traced to list its top-level oracle calls (a stacked call at several points is
one call), and each call is probed once with one data array at a time replaced by NaN; the
arrays whose poisoning reaches the output are the ones the call reads. A step that reads
each of its data arrays once per call is bandwidth-bound when the ratio approaches 1.

NumPy's timings depend on how many threads its BLAS runs, and so does the form of the
binary logistic problems' full-batch passes (over data of 4 MiB or more in cached row
blocks with one thread, :func:`refbilevel._backend.row_blocks`). ``blas_threads`` fixes
the count for the run (threadpoolctl); every row states the count it ran with.
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext

import numpy as np
from threadpoolctl import threadpool_limits

from ._backend import (backend_namespace, blas_threads as _blas_threads, copy_into,
                       device_name, is_array, materialize, synchronize, to_host)
from ._validation import check_int
from .oracle import Oracle

__all__ = ["bench", "copy_bandwidth", "format_table", "step_bytes"]

#: Backends without in-place copies (JAX) or with lazy ones (Dask): no bandwidth columns.
_IMMUTABLE = ("jax", "dask")


def copy_bandwidth(xp, *, nbytes: int | None = None, repeats: int = 5) -> float:
    """Measured copy bandwidth of the device of ``xp`` in bytes/s (read + write counted).

    A large buffer copied into a preallocated one with :func:`refbilevel._backend.copy_into`
    (the copy engine on CuPy), median of ``repeats`` synchronised copies.
    """
    if nbytes is None:
        nbytes = (1024 if device_name(xp) != "cpu" else 128) * 2**20
    a = xp.ones(nbytes // 8, dtype=xp.float64)
    b = xp.zeros_like(a)
    copy_into(b, a)  # warm-up
    synchronize(xp)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        copy_into(b, a)
        synchronize(xp)
        times.append(time.perf_counter() - t0)
    del b
    return 2.0 * a.shape[0] * 8 / statistics.median(times)


def _data_arrays(problem) -> dict:
    xp = problem.xp
    return {k: v for k, v in vars(problem).items()
            if is_array(v) and not k.startswith("_") and xp.isdtype(v.dtype, "real floating")}


def _has_nan(out, xp) -> bool:
    parts = out if isinstance(out, tuple) else (out,)
    return any(bool(to_host(xp.any(xp.isnan(p)))) for p in parts if is_array(p))


def step_bytes(problem, solver, state) -> int:
    """Bytes of problem data one full-batch ``solver.step`` must read (see module docstring).

    The step's oracle calls come from the log of :class:`refbilevel.oracle.Oracle`.
    """
    from .oracle import Oracle

    oracle = Oracle(problem, count=False, log=True, keep_args=True)
    solver.step(oracle, state)
    calls = [(name, args, kwargs) for _, name, _, args, kwargs in oracle.log]
    data = _data_arrays(problem)
    xp = problem.xp
    reads: dict[str, set] = {}
    total = 0
    for name, args, kwargs in calls:
        if name not in reads:
            reads[name] = set()
            for key, arr in data.items():
                poisoned = copy.copy(problem)
                setattr(poisoned, key, arr * xp.nan)
                if _has_nan(getattr(type(problem), name)(poisoned, *args, **kwargs), xp):
                    reads[name].add(key)
        total += sum(data[k].shape[0] * int(np.prod(data[k].shape[1:])) * _itemsize(data[k])
                     for k in reads[name])
    return total


def _itemsize(a) -> int:
    from ._backend import dtype_name

    return 8 if dtype_name(a.dtype) in ("float64", "int64") else 4


def _full_batch(solver, problem) -> bool:
    return all(s.full for s in solver.streams(problem))


def bench(problem: str = "logreg", solver: str = "minimaxopt", *, backends=("numpy",),
          sizes=None, dtype: str = "float64", n_steps: int = 20, repeats: int = 5,
          warmup: int = 3, hyperparameters=None, problem_params=None, seed: int = 0,
          blas_threads: int | None = None) -> list[dict]:
    """Time ``solver`` steps on ``problem`` for every backend and size.

    Parameters
    ----------
    problem, solver : str
        Registry names.
    backends : sequence of str
        Backends to compare; the first is the speedup baseline.
    sizes : sequence of int, optional
        Values of the problem's size parameter (``refbilevel list``); default: its default.
    n_steps, repeats, warmup : int
        Steps per timed block, timed blocks (median taken), untimed warm-up steps.
    blas_threads : int, optional
        Threads of NumPy's BLAS during the run (restored afterwards); default: as set.

    Returns
    -------
    list of dict
        One row per (size, backend): ``size``, ``backend``, ``device``, ``time_per_step``
        (s), ``speedup``, ``bytes_per_step``, ``bandwidth`` and ``copy_bandwidth``
        (bytes/s; ``None`` for minibatch steps), ``blas_threads`` (NumPy's BLAS during
        the run; ``None`` on other backends or when no BLAS is found).
    """
    from .registry import build_problem, build_solver, get_problem

    spec = get_problem(problem)
    n_steps = check_int(n_steps, "n_steps", minimum=1)
    repeats = check_int(repeats, "repeats", minimum=1)
    warmup = check_int(warmup, "warmup", minimum=0)
    if blas_threads is not None:
        blas_threads = check_int(blas_threads, "blas_threads", minimum=1)
    backends = list(backends)
    if not backends:
        raise ValueError("backends must name at least one backend")
    namespaces = {b: backend_namespace(b) for b in backends}  # fails early, names the backend
    if sizes is not None and spec.size_param is None:
        raise ValueError(f"problem {problem!r} has no size parameter; omit sizes")
    solv = build_solver(solver, hyperparameters or {})
    # NumPy's BLAS at the thread count asked for, restored afterwards (threadpoolctl)
    threads = (nullcontext() if blas_threads is None
               else threadpool_limits(limits=blas_threads, user_api="blas"))
    with threads:
        copy_bw = {}
        rows = []
        for size in (sizes or [None]):
            params = dict(problem_params or {})
            if size is not None:
                params[spec.size_param] = check_int(size, "sizes", minimum=1)
            base = None
            for b in backends:
                xp = namespaces[b]
                prob = build_problem(problem, seed=seed, backend=b, dtype=dtype, params=params)
                state = solv.init(prob, prob.init_x(), prob.init_y(), seed)
                oracle = Oracle(prob)
                for _ in range(warmup):
                    state = materialize(solv.step(oracle, state))
                synchronize(xp, state)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    for _ in range(n_steps):
                        state = materialize(solv.step(oracle, state))
                    synchronize(xp, state)
                    times.append((time.perf_counter() - t0) / n_steps)
                t = statistics.median(times)
                base = t if base is None else base
                row = {"size": size if size is not None else "default", "backend": b,
                       "device": device_name(xp), "time_per_step": t, "speedup": base / t,
                       "bytes_per_step": None, "bandwidth": None, "copy_bandwidth": None,
                       "blas_threads": _blas_threads() if b == "numpy" else None}
                if _full_batch(solv, prob) and b not in _IMMUTABLE:
                    if b not in copy_bw:
                        copy_bw[b] = copy_bandwidth(xp)
                    nbytes = step_bytes(prob, solv, state)
                    row.update(bytes_per_step=nbytes, bandwidth=nbytes / t,
                               copy_bandwidth=copy_bw[b])
                rows.append(row)
        return rows


def format_table(rows) -> str:
    """Plain-text table of :func:`bench` rows."""
    head = ["size", "backend", "device", "BLAS threads", "time/step", "speedup", "MB read/step",
            "GB/s", "copy GB/s", "% of copy"]
    table = [head]
    for r in rows:
        bw = r["bandwidth"]
        threads = r.get("blas_threads")
        table.append([str(r["size"]), r["backend"], r["device"],
                      "-" if threads is None else str(threads),
                      f"{r['time_per_step'] * 1e3:.3f} ms",
                      f"{r['speedup']:.2f}x",
                      "-" if bw is None else f"{r['bytes_per_step'] / 1e6:.3f}",
                      "-" if bw is None else f"{bw / 1e9:.2f}",
                      "-" if bw is None else f"{r['copy_bandwidth'] / 1e9:.2f}",
                      "-" if bw is None else f"{100 * bw / r['copy_bandwidth']:.0f}%"])
    widths = [max(len(row[j]) for row in table) for j in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("time/step: median of repeats, synchronised, warm-up excluded; GB/s: data bytes "
                 "one full-batch step must read / time; copy GB/s: (read + write) of a large "
                 "array copy on the same device; BLAS threads: NumPy's BLAS during the run "
                 "(--blas-threads sets it; with one, logistic full-batch passes over data of "
                 "4 MiB or more go in cached row blocks)")
    return "\n".join(lines)
