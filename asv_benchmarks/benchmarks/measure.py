"""Measurement helpers shared by ``track.py`` and ``gpu_report.py``.

* :func:`throughput_time` — steady-state seconds per call: ``k`` calls queued back to back,
  one synchronisation at the end (what a run loop between record points sees), median of
  ``repeat`` such batches;
* :func:`copy_bandwidth` — the device's measured copy bandwidth (bytes read + written / s);
* :func:`record_step_oracles` — the oracle calls a solver step makes (the log of
  :class:`refbilevel.oracle.Oracle`), so that each can be replayed and timed alone (the
  "sum of the step's oracles");
* :func:`step_overhead` — step time over the sum of its oracle calls' times, the two
  interleaved in rounds (median of the per-round ratios);
* :func:`median_interval` — a distribution-free confidence interval for the median of
  per-round ratios (order statistics);
* :func:`peak_step_memory` — peak extra memory of one step (CuPy pool / tracemalloc);
* :func:`count_step_syncs` — implicit host-device synchronisations inside one step
  (CuPy only, through ``cupyx.allow_synchronize(False)``);
* :func:`counting_array_ops` / :func:`count_step_ops` — array operations of one step on
  ``array_api_strict`` arrays: a device-independent proxy for GPU kernel launches.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import math
import statistics
import time
import tracemalloc

from refbilevel import _backend as B

#: target seconds of one timed batch (the test suite lowers it)
MIN_TIME = 0.05
#: bytes of the copy used for the CPU copy bandwidth
COPY_BYTES_CPU = 1 << 28



def median_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    r"""Distribution-free confidence interval for the median of ``values``.

    With the values sorted, :math:`x_{(1)} \le \dots \le x_{(n)}`, the interval
    :math:`[x_{(j)}, x_{(n-j+1)}]` contains the population median with probability
    :math:`1 - 2\,P(B \le j - 1)`, :math:`B \sim \mathrm{Binomial}(n, 1/2)`, whatever the
    distribution (each value falls below the median with probability one half). The
    largest :math:`j` whose coverage reaches ``confidence`` is taken; when even the range
    (:math:`j = 1`) falls short (fewer than 6 values at 95 %), the range is returned with
    its actual coverage.

    Returns
    -------
    (lower, upper, coverage)
        E.g. 15 values at 95 %: the 4th and 12th smallest, coverage 96.5 %; 7 values: the
        range, 98.4 %.
    """
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    below = 0                                   # P(B <= j - 1) for the current j
    best = (1, 1.0 - 2.0 * 0.5 ** n)            # j = 1: the range
    for j in range(1, (n + 1) // 2 + 1):
        below += math.comb(n, j - 1) * 0.5 ** n
        coverage = 1.0 - 2.0 * below
        if coverage < confidence:
            break
        best = (j, coverage)
    j, coverage = best
    return xs[j - 1], xs[n - j], coverage


def throughput_time(f, xp, *, min_time: float | None = None, repeat: int = 3,
                    max_calls: int = 2000, wait=None) -> float:
    """Median seconds per call of ``f()`` run back to back (warm-up call included first).

    ``wait()`` ends a batch (default: :func:`refbilevel._backend.synchronize` of ``xp``);
    JAX passes one that blocks on the last result.
    """
    if min_time is None:
        min_time = MIN_TIME
    if wait is None:
        def wait():
            B.synchronize(xp)
    f()
    wait()
    t0 = time.perf_counter()
    f()
    wait()
    t1 = max(time.perf_counter() - t0, 1e-7)
    k = int(min(max_calls, max(1, min_time / t1)))
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(k):
            f()
        wait()
        samples.append((time.perf_counter() - t0) / k)
    return statistics.median(samples)


def copy_bandwidth(xp, *, nbytes: int = 1 << 30, device=None, method: str = "memcpy") -> float:
    """Bytes (read + written) per second of a large same-device copy.

    ``method="memcpy"``: on CuPy a device-to-device ``cudaMemcpyAsync`` into a preallocated
    buffer (the device's copy engine path; ``asarray(copy=True)`` goes through CuPy's
    elementwise copy kernel, measured at 1.7 TB/s against 3.0 TB/s on an H100), elsewhere
    ``asarray(a, copy=True)``; ``method="asarray"`` forces the latter.
    """
    n = nbytes // 4
    a = xp.ones(n, dtype=xp.float32, device=device)
    if method == "memcpy" and B.is_cupy(xp):
        import cupy

        b = cupy.empty_like(a)

        def f():
            B.copy_into(b, a)
    else:
        def f():
            return xp.asarray(a, copy=True)
    t = throughput_time(f, xp, min_time=4 * MIN_TIME, repeat=5)
    del a
    gc.collect()
    return 2 * nbytes / t


def record_step_oracles(problem, solver, state):
    """The oracle calls one ``solver.step`` makes, as ``[(name, args, kwargs), ...]``
    (from the log of :class:`refbilevel.oracle.Oracle`)."""
    from refbilevel.oracle import Oracle

    oracle = Oracle(problem, count=False, log=True, keep_args=True)
    solver.step(oracle, state)
    return [(name, args, kwargs) for _, name, _, args, kwargs in oracle.log]


def oracle_sum_time(problem, calls, xp, **kw) -> tuple[float, dict]:
    """Sum over the recorded calls of each call's standalone time; also per-name totals."""
    per_name: dict = {}
    cache: dict = {}
    total = 0.0
    for name, args, kwargs in calls:
        # an oracle's cost depends on its shapes, not its values: time each kind once
        key = (name, tuple(tuple(getattr(a, "shape", ())) if a is not None else None
                           for a in args), tuple(sorted(kwargs)))
        if key not in cache:
            meth = getattr(problem, name)
            cache[key] = throughput_time(lambda: meth(*args, **kwargs), xp, **kw)
        total += cache[key]
        per_name[name] = per_name.get(name, 0.0) + cache[key]
    return total, per_name


def step_overhead(problem, solver, state, xp, *, rounds: int = 7,
                  min_time: float | None = None) -> dict:
    """Step time over the sum of its oracle calls' standalone times, interleaved.

    The step runs through a counting :class:`refbilevel.oracle.Oracle` (what
    :func:`refbilevel.run.run` passes); its oracle calls come from the oracle's log
    (:func:`record_step_oracles`), each distinct call (name and argument shapes) timed
    once per round and weighted by how often the step makes it. Every round times one
    batch of steps and one batch of each call, back to back, so the load of other
    processes moves both alike; the ratio is taken within each round, then the median
    over ``rounds``. Wall-clock and process CPU time (``time.process_time``) both.

    A second denominator replays the step's calls in the step's order (same arguments,
    on the bare problem): what the oracle work costs when the calls follow one another
    as in the step, so that one call's data has left the caches when the next reads
    another matrix. ``step / replay`` is the step's own cost (Python, its arithmetic on
    parameter-sized vectors, the oracle layer); ``replay / sum`` is what the calls lose
    to each other.

    Returns
    -------
    dict
        ``t_step``, ``t_sum``, ``t_replay`` (median seconds), ``ratio`` (step / sum) and
        ``ratio_replay`` (step / replay), medians of the per-round ratios, with
        ``ratio_ci`` and ``ratio_replay_ci`` (:func:`median_interval`, 95 %), and the same
        seven with a ``cpu_`` prefix.
    """
    from refbilevel.oracle import Oracle

    if min_time is None:
        min_time = MIN_TIME
    oracle = Oracle(problem)
    calls = record_step_oracles(problem, solver, state)
    distinct: dict = {}
    for name, args, kwargs in calls:
        key = (name, tuple(tuple(getattr(a, "shape", ())) if a is not None else None
                           for a in args), tuple(sorted(kwargs)))
        if key in distinct:
            distinct[key][1] += 1
        else:
            meth = getattr(problem, name)
            distinct[key] = [lambda meth=meth, args=args, kwargs=kwargs: meth(*args, **kwargs),
                             1]
    replayed = [(getattr(problem, name), args, kwargs) for name, args, kwargs in calls]

    def replay():
        for meth, args, kwargs in replayed:
            meth(*args, **kwargs)

    # the step, the replay (weight 0: not part of the sum), then the distinct calls
    contenders = ([(lambda: solver.step(oracle, state), 1), (replay, 0)]
                  + [tuple(v) for v in distinct.values()])

    def batch_length(f):
        f()
        B.synchronize(xp)
        t0 = time.perf_counter()
        f()
        B.synchronize(xp)
        return max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))

    ks = [batch_length(f) for f, _ in contenders]
    per_round = {"wall": [], "cpu": []}
    for _ in range(rounds):
        wall, cpu = [], []
        for (f, _), k in zip(contenders, ks):
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(k):
                f()
            B.synchronize(xp)
            wall.append((time.perf_counter() - t0) / k)
            cpu.append((time.process_time() - c0) / k)
        for clock, ts in (("wall", wall), ("cpu", cpu)):
            t_sum = sum(t * m for t, (_, m) in zip(ts[2:], contenders[2:]))
            per_round[clock].append((ts[0], t_sum, ts[1]))
    out = {}
    for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
        rows = per_round[clock]
        out[prefix + "t_step"] = statistics.median(a for a, _, _ in rows)
        out[prefix + "t_sum"] = statistics.median(b for _, b, _ in rows)
        out[prefix + "t_replay"] = statistics.median(c for _, _, c in rows)
        for key, ratios in (("ratio", [a / b for a, b, _ in rows]),
                            ("ratio_replay", [a / c for a, _, c in rows])):
            out[prefix + key] = statistics.median(ratios)
            out[prefix + key + "_ci"] = median_interval(ratios)[:2]
    return out


def state_nbytes(state) -> int:
    """Bytes held in the device arrays of a solver state (recursively through tuples)."""
    seen = set()

    def walk(obj):
        if obj is None or id(obj) in seen:
            return 0
        seen.add(id(obj))
        if B.is_array(obj) and hasattr(obj, "shape") and not isinstance(obj, (int, float)):
            try:
                n = 1
                for s in obj.shape:
                    n *= int(s)
                return n * int(getattr(obj.dtype, "itemsize", 8))
            except Exception:
                return 0
        if isinstance(obj, (tuple, list)):
            return sum(walk(o) for o in obj)
        if hasattr(obj, "__dataclass_fields__"):
            return sum(walk(getattr(obj, f)) for f in obj.__dataclass_fields__)
        return 0

    return walk(state)


def peak_step_memory(problem, solver, state, xp) -> int:
    """Peak bytes allocated by one step beyond what was live before it.

    One unmeasured step runs first (steps are pure: the state is unchanged), so that what
    a problem builds once on first use and keeps (on NumPy, the column-major copy of the
    logistic problem's data, :meth:`refbilevel.models.linear.LinearModel.product_layout`)
    counts as the problem's memory, not as every step's.
    """
    solver.step(problem, state)
    B.synchronize(xp)
    if B.is_cupy(xp):
        import cupy

        pool = cupy.get_default_memory_pool()
        B.synchronize(xp)
        base = pool.used_bytes()
        peak = [base]

        def malloc(size):
            mem = pool.malloc(size)
            peak[0] = max(peak[0], pool.used_bytes())
            return mem

        cupy.cuda.set_allocator(malloc)
        try:
            out = solver.step(problem, state)
            B.synchronize(xp)
        finally:
            cupy.cuda.set_allocator(pool.malloc)
        del out
        return peak[0] - base
    if B.is_numpy(xp):
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            solver.step(problem, state)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak - base
    raise NotImplementedError("peak memory is measured on numpy (tracemalloc) and cupy (pool)")


def count_step_syncs(problem, solver, state, xp) -> int:
    """0 when one step runs under ``cupyx.allow_synchronize(False)``, else 1 (at least one)."""
    if not B.is_cupy(xp):
        raise NotImplementedError("synchronisations are counted on cupy only")
    import cupyx

    B.synchronize(xp)
    try:
        with cupyx.allow_synchronize(False):
            solver.step(problem, state)
    except cupyx.DeviceSynchronized:
        return 1
    finally:
        B.synchronize(xp)
    return 0


# ------------------------------------------------------------------ array operations
#: array_api_strict functions that make no new data (views, metadata, host transfers):
#: on a GPU none of them launches a kernel, so they are not counted
NOT_COUNTED = frozenset({
    "asarray", "broadcast_arrays", "broadcast_to", "can_cast", "expand_dims", "finfo",
    "iinfo", "isdtype", "matrix_transpose", "permute_dims", "reshape", "result_type",
    "squeeze", "unstack"})
#: operator methods of the array object that compute (``__getitem__`` only with an array
#: index, a gather; basic slicing is a view)
COUNTED_OPERATORS = tuple(
    f"__{p}{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow",
                              "matmul", "and", "or", "xor", "lshift", "rshift")
    for p in ("", "r", "i")) + tuple(
    f"__{op}__" for op in ("neg", "pos", "abs", "invert", "lt", "le", "gt", "ge", "eq",
                           "ne", "getitem", "setitem"))


@contextlib.contextmanager
def counting_array_ops(select=None):
    """Count the array operations run on ``array_api_strict`` arrays inside the block.

    Yields a :class:`collections.Counter` (operation name -> calls). Every namespace
    function and operator that computes an array counts once; calls made inside another
    counted call (the library's own helpers) do not count again; views, metadata and
    ``asarray`` (:data:`NOT_COUNTED`) and basic-slicing ``__getitem__`` are not counted.
    On CuPy almost every counted operation is one kernel launch (a reduction or a matrix
    product may be two), so the count is a lower-bound proxy for launches that any CPU
    can measure. The namespace is restored on exit.

    ``select(name, args)``, if given, restricts the count to the calls it accepts (e.g.
    matrix products with a data matrix operand: the data passes of a step); a call it
    rejects is not counted and does not hide the calls made inside it.
    """
    import array_api_strict as strict
    from array_api_strict._array_object import Array

    counts: collections.Counter = collections.Counter()
    depth = [0]

    def counted(name, fn, gate=None):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if (depth[0] or (gate is not None and not gate(*args))
                    or (select is not None and not select(name, args))):
                return fn(*args, **kwargs)
            counts[name] += 1
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    def array_index(_self, key, *_rest):
        keys = key if isinstance(key, tuple) else (key,)
        return any(isinstance(k, Array) for k in keys)

    patched = []
    for module, prefix in ((strict, ""), (strict.linalg, "linalg.")):
        for name in dir(module):
            obj = getattr(module, name)
            if (name.startswith("_") or name in NOT_COUNTED or not callable(obj)
                    or isinstance(obj, type) or "flags" in name):
                continue
            patched.append((module, name, obj))
            setattr(module, name, counted(prefix + name, obj))
    for name in COUNTED_OPERATORS:
        obj = Array.__dict__.get(name)
        if obj is None:
            continue
        gate = array_index if name == "__getitem__" else None
        patched.append((Array, name, obj))
        setattr(Array, name, counted(name, obj, gate))
    try:
        yield counts
    finally:
        for owner, name, obj in reversed(patched):
            setattr(owner, name, obj)


def count_step_ops(problem, solver, state) -> collections.Counter:
    """Array operations of one ``solver.step`` on an ``array_api_strict`` problem.

    One warm-up step runs first (so one-time work at the first step is not counted); the
    counted step starts from the state that step returns.
    """
    if B.backend_name(problem.xp) != "array_api_strict":
        raise NotImplementedError("array operations are counted on array_api_strict problems")
    state = solver.step(problem, state)
    with counting_array_ops() as counts:
        solver.step(problem, state)
    return counts
