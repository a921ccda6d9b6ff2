"""The shared driver: :func:`run`, :class:`Result`, history, checkpoints.

``run`` calls ``solver.step`` ``n_iter`` times. Nothing between two record points touches
the host: metrics, divergence checks, the callback, the progress display and checkpoints
happen only at record points (iteration 0, every ``record_every`` iterations, and the
last iteration), where the device is synchronised once for the wall clock.

History columns (host NumPy arrays, one row per record point):

==========================  ====================================================================
``iteration``               outer iterations done
``time``                    cumulative solver wall time in seconds, synchronised at record
                            points (metric evaluation, callbacks, progress and checkpoint
                            writing are excluded)
``calls_grad_f`` ...        oracle calls so far: ``calls_grad_f``, ``calls_grad_g``,
                            ``calls_hvp``, ``calls_cross``
``value``                   bilevel: the outer objective ``f(x, y)`` at the iterate on the full
                            data; minimax-bilevel: ``f(x, y, z*(x))`` over all blocks
``inner_residual``          bilevel: ``||∇_y g(x, y)||``; minimax-bilevel: ``||∇_z g(x, z)||`` over
                            the blocks the state holds (NaN when it holds none)
``hypergradient_norm``      ``||∇F(x)||`` from ``problem.hypergradient`` (minimax-bilevel:
                            ``||∇Φ(x)||`` from ``problem.saddle_gradient``); NaN when the problem
                            has no exact oracle
``multiplier``              the penalty multiplier in the state (NaN if none)
==========================  ====================================================================

``value``, ``inner_residual`` and ``hypergradient_norm`` appear when named in ``metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._backend import (from_host, host_rng, is_array, materialize, synchronize, to_host,
                       to_host_scalar)
from ._validation import check_array, check_bool, check_int, check_real
from .problems.base import MinimaxBilevelProblem
from .solvers.base import OracleCalls, Solver

__all__ = ["METRICS", "Result", "run"]

#: Metric names understood by :func:`run`.
METRICS = ("value", "inner_residual", "hypergradient_norm")
_CALL_COLUMNS = ("calls_grad_f", "calls_grad_g", "calls_hvp", "calls_cross")
_CHECKPOINT_FORMAT = 1


@dataclass
class Result:
    """Outcome of :func:`run` (in the spirit of ``scipy.optimize.OptimizeResult``).

    Attributes
    ----------
    x, y : array
        Final iterates (the last finite record point's when ``status == "diverged"``).
    state : SolverState
        The solver state they come from (can be passed on to ``solver.step``).
    status : {"converged", "max_iter", "diverged", "stopped"}
        Why the run ended: ``tol`` reached, ``n_iter`` done, a non-finite iterate found at
        a record point, or the callback asked to stop.
    message : str
        A sentence saying the same.
    history : dict of str to numpy.ndarray
        Host arrays, one entry per record point (see the module docstring).
    n_iter : int
        Outer iterations of the returned state.
    wall_time : float
        Solver wall time in seconds (the last ``time`` entry).
    calls : OracleCalls
        Oracle calls of the returned state.
    """

    x: Any
    y: Any
    state: Any
    status: str
    message: str
    history: dict = field(default_factory=dict)
    n_iter: int = 0
    wall_time: float = 0.0
    calls: OracleCalls = field(default_factory=OracleCalls)

    @property
    def success(self) -> bool:
        """Whether the run ended normally (``"converged"`` or ``"max_iter"``)."""
        return self.status in ("converged", "max_iter")

    def history_table(self, *, max_rows: int | None = None) -> str:
        """The history as a plain-text table (``max_rows`` keeps the first and last rows)."""
        cols = list(self.history)
        n = len(self.history["iteration"]) if cols else 0
        rows = list(range(n))
        if max_rows is not None and n > max_rows:
            half = max(max_rows // 2, 1)
            rows = rows[:half] + [-1] + rows[n - half:]

        def cell(col, i):
            v = self.history[col][i]
            if col == "iteration" or col.startswith("calls_"):
                return str(int(v))
            return f"{v:.6g}"

        table = [cols] + [["..."] * len(cols) if i < 0 else [cell(c, i) for c in cols]
                          for i in rows]
        widths = [max(len(r[j]) for r in table) for j in range(len(cols))]
        return "\n".join("  ".join(s.rjust(w) for s, w in zip(r, widths)) for r in table)

    def __repr__(self) -> str:
        return (f"Result(status={self.status!r}, n_iter={self.n_iter}, "
                f"wall_time={self.wall_time:.3g}, calls={self.calls}, message={self.message!r})")


# ------------------------------------------------------------------------ metrics
def _norm(xp, a) -> float:
    return to_host_scalar(xp.sqrt(xp.sum(a * a)))


class _Metrics:
    """Evaluates the requested metrics at record points (synchronises)."""

    def __init__(self, problem, metrics):
        self.problem = problem
        self.metrics = metrics
        self.minimax = isinstance(problem, MinimaxBilevelProblem)
        self.exact_available = True

    def __call__(self, state) -> dict:
        p, xp, out = self.problem, self.problem.xp, {}
        x, y = state.x, state.y
        if "value" in self.metrics:
            out["value"] = self._value(x, y)
        if "inner_residual" in self.metrics:
            out["inner_residual"] = self._residual(state)
        if "hypergradient_norm" in self.metrics:
            out["hypergradient_norm"] = math.nan
            if self.exact_available:
                try:
                    g = p.saddle_gradient(x) if self.minimax else p.hypergradient(x)
                    out["hypergradient_norm"] = _norm(xp, g)
                except NotImplementedError:
                    self.exact_available = False
        return out

    def _value(self, x, y) -> float:
        p = self.problem
        if not self.minimax:
            return to_host_scalar(p.f(x, y))
        try:
            return to_host_scalar(p.f(x, y, p.inner_solution(x), p.all_blocks()))
        except NotImplementedError:
            return math.nan

    def _residual(self, state) -> float:
        p, xp = self.problem, self.problem.xp
        if not self.minimax:
            return to_host_scalar(p.inner_residual(state.x, state.y))
        z = getattr(state, "z", None)
        if z is not None and z.shape[0] == p.n_blocks:
            return _norm(xp, p.grad_g(state.x, z, p.all_blocks())[1])
        last_z, last_b = getattr(state, "last_z", None), getattr(state, "last_blocks", None)
        if last_z is not None and last_b is not None:
            return _norm(xp, p.grad_g(state.x, last_z, last_b)[1])
        return math.nan


def _finite(xp, state) -> bool:
    ok = xp.all(xp.isfinite(state.x)) & xp.all(xp.isfinite(state.y))
    return bool(to_host_scalar(xp.astype(ok, xp.float64)))


# ------------------------------------------------------------- state (de)serialising
def _encode(obj, path: str, arrays: dict):
    """JSON tree of a state; arrays go to ``arrays[path]`` (host copies)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "get_state") and hasattr(obj, "set_state"):
        return {"__sampler__": obj.get_state()}
    if is_array(obj):
        arrays[path] = np.array(to_host(obj), copy=True)
        return {"__array__": path}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__dataclass__": {f.name: _encode(getattr(obj, f.name), f"{path}.{f.name}", arrays)
                                  for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {"__namedtuple__": {k: _encode(getattr(obj, k), f"{path}.{k}", arrays)
                                   for k in obj._fields}}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_encode(v, f"{path}[{i}]", arrays) for i, v in enumerate(obj)]}
    raise TypeError(f"cannot checkpoint state field {path} of type {type(obj).__name__}")


def _decode(template, tree, arrays, problem):
    """Rebuild a state from ``tree`` into the structure of ``template`` (a fresh init)."""
    if isinstance(tree, dict) and len(tree) == 1:
        (tag, val), = tree.items()
        if tag == "__sampler__":
            template.set_state(val)
            return template
        if tag == "__array__":
            return from_host(arrays[val], problem.xp, device=problem.device)
        if tag == "__dataclass__":
            return dataclasses.replace(template, **{
                k: _decode(getattr(template, k), v, arrays, problem) for k, v in val.items()})
        if tag == "__namedtuple__":
            return template._replace(**{
                k: _decode(getattr(template, k), v, arrays, problem) for k, v in val.items()})
        if tag == "__list__":
            items = [_decode(t, v, arrays, problem) for t, v in zip(template, val)]
            return type(template)(items)
    return tree


def _samplers(obj, out=None):
    """The host-side sampler objects reachable from a state (for snapshots)."""
    out = [] if out is None else out
    if hasattr(obj, "get_state") and hasattr(obj, "set_state"):
        out.append(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _samplers(getattr(obj, f.name), out)
    return out


def _identity(problem, solver, seed) -> dict:
    ident = {"solver": type(solver).__name__, "hyperparameters": solver.hyperparameters(),
             "problem": problem.describe(),
             "seed": seed if isinstance(seed, int) else None}
    return json.loads(json.dumps(ident, default=repr))


def _write_checkpoint(path, ident, state, history, elapsed, record_every):
    arrays: dict = {}
    tree = _encode(state, "state", arrays)
    meta = {"format": _CHECKPOINT_FORMAT, "identity": ident, "state": tree, "time": elapsed,
            "record_every": record_every, "history_columns": list(history)}
    payload = {f"array:{k}": v for k, v in arrays.items()}
    payload.update({f"history:{k}": np.asarray(v) for k, v in history.items()})
    payload["meta"] = np.array(json.dumps(meta))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
        os.replace(tmp, path)            # atomic on POSIX and Windows
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_checkpoint(path, ident, template, problem):
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {k[len("array:"):]: data[k] for k in data.files if k.startswith("array:")}
        history = {c: data[f"history:{c}"] for c in meta["history_columns"]}
    if meta.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path!r} has an unknown format {meta.get('format')!r}")
    if meta["identity"] != ident:
        raise ValueError(f"checkpoint {path!r} was written by another run (solver, "
                         f"hyperparameters, problem or seed differ): {meta['identity']} vs {ident}")
    state = _decode(template, meta["state"], arrays, problem)
    return state, history, float(meta["time"])


# ----------------------------------------------------------------------- progress
class _Progress:
    """tqdm when installed (extra ``plot``), else a plain line on stderr per record point.

    Shows the iteration count, iterations per second, the ETA and the outer ``value``
    (when recorded). Updated at record points only, so it never synchronises a GPU.
    """

    def __init__(self, enabled, n_iter, start):
        self.enabled, self.n_iter, self.last = enabled, n_iter, start
        self.bar = None
        self.t0 = time.perf_counter()
        self.start = start
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=n_iter, initial=start, unit="it")
            except ImportError:
                self.bar = None

    def update(self, k, row):
        if not self.enabled:
            return
        value = row.get("value")
        if self.bar is not None:
            self.bar.update(k - self.last)
            if value is not None:
                self.bar.set_postfix(f=f"{value:.4g}")
        else:
            elapsed = time.perf_counter() - self.t0
            rate = (k - self.start) / elapsed if elapsed > 0 else float("inf")
            eta = (self.n_iter - k) / rate if rate > 0 and math.isfinite(rate) else 0.0
            text = f"it {k}/{self.n_iter}  {rate:.1f} it/s  ETA {eta:.1f}s"
            if value is not None:
                text += f"  f={value:.4g}"
            print(text, file=sys.stderr, flush=True)
        self.last = k

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------- run
def _validate(problem, solver, n_iter, record_every, metrics, callback, progress,
              checkpoint, checkpoint_every, tol):
    from .problems.base import BilevelProblem

    if not isinstance(problem, (BilevelProblem, MinimaxBilevelProblem)):
        raise TypeError(f"problem must be a BilevelProblem or a MinimaxBilevelProblem; got "
                        f"{type(problem).__name__}")
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a refbilevel Solver; got {type(solver).__name__}")
    if solver.minimax != isinstance(problem, MinimaxBilevelProblem):
        want = "a MinimaxBilevelProblem" if solver.minimax else "a BilevelProblem"
        raise TypeError(f"problem must be {want} for solver {type(solver).__name__}; "
                        f"got {type(problem).__name__}")
    check_int(n_iter, "n_iter", minimum=0)
    check_int(record_every, "record_every", minimum=1)
    check_int(checkpoint_every, "checkpoint_every", minimum=1, allow_none=True)
    if not isinstance(metrics, (tuple, list)):
        raise TypeError(f"metrics must be a tuple of names from {METRICS}; got "
                        f"{type(metrics).__name__}")
    if not all(m in METRICS for m in metrics):
        raise ValueError(f"metrics must be a tuple of names from {METRICS}; got {metrics!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None; got {type(callback).__name__}")
    check_bool(progress, "progress")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or None; got {type(checkpoint).__name__}")
    if checkpoint is not None:
        folder = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"checkpoint: folder {folder!r} does not exist")
        if os.path.isdir(checkpoint):
            raise IsADirectoryError(f"checkpoint: {os.fspath(checkpoint)!r} is a folder; "
                                    "expected a .npz file name")
    tol = check_real(tol, "tol", nonnegative=True, allow_none=True)
    if tol is not None and "hypergradient_norm" not in metrics:
        raise ValueError("tol needs 'hypergradient_norm' in metrics")


def run(problem, solver, *, n_iter: int, seed=0, x0=None, y0=None, record_every: int = 10,
        metrics=METRICS, callback=None, progress: bool = False, checkpoint=None,
        checkpoint_every: int | None = None, tol: float | None = None) -> Result:
    """Run ``solver`` on ``problem`` for ``n_iter`` outer iterations.

    Parameters
    ----------
    problem : BilevelProblem or MinimaxBilevelProblem
        Must match ``solver.minimax``.
    solver : Solver
        A solver instance (its hyperparameters).
    n_iter : int
        Outer iterations (``>= 0``).
    seed : int, numpy.random.Generator or None
        Seed of the host generator passed to ``solver.init`` (minibatch and block
        schedules).
    x0, y0 : array, optional
        Start point (default ``problem.init_x()``, ``problem.init_y()``); must match the
        problem's namespace, device, dtype and sizes.
    record_every : int
        Record at iteration 0, every ``record_every`` iterations and at the end.
    metrics : tuple of str
        Among ``"value"``, ``"inner_residual"``, ``"hypergradient_norm"`` (see module
        docstring). The exact hypergradient can be expensive: drop it for large problems.
    callback : callable, optional
        ``callback(info)`` at each record point after iteration 0; ``info`` is a dict with
        ``iteration``, ``state``, ``record`` (this row as a dict) and ``time``. Returning
        True or raising :class:`StopIteration` stops the run with status ``"stopped"``
        (scipy's convention).
    progress : bool
        Show progress (tqdm if installed, else one stderr line per record point).
    checkpoint : path, optional
        ``.npz`` file. If it exists at start, the run resumes from it (same solver,
        hyperparameters, problem and seed required); it is (re)written atomically at record
        points and at the end. A resumed run reproduces the uninterrupted one exactly on
        NumPy, history included (apart from the ``time`` column).
    checkpoint_every : int, optional
        Minimum iterations between checkpoint writes (default: every record point).
    tol : float, optional
        Stop with status ``"converged"`` when the recorded ``hypergradient_norm`` is
        ``<= tol``.

    Returns
    -------
    Result
    """
    _validate(problem, solver, n_iter, record_every, metrics, callback, progress,
              checkpoint, checkpoint_every, tol)
    xp = problem.xp
    ref_x, ref_y = problem.init_x(), problem.init_y()
    x0 = ref_x if x0 is None else check_array(x0, "x0", shape=(problem.dim_x,), like=ref_x)
    y0 = ref_y if y0 is None else check_array(y0, "y0", shape=(problem.dim_y,), like=ref_y)
    state = solver.init(problem, x0, y0, host_rng(seed))
    measure = _Metrics(problem, tuple(metrics))
    columns = ("iteration", "time", *_CALL_COLUMNS, *[m for m in METRICS if m in metrics],
               "multiplier")
    history: dict[str, list] = {c: [] for c in columns}
    ident = _identity(problem, solver, seed)
    elapsed = 0.0

    def record(st, k, t):
        row = {"iteration": k, "time": t}
        for col, kind in zip(_CALL_COLUMNS, ("grad_f", "grad_g", "hvp", "cross")):
            row[col] = getattr(st.calls, kind)
        row.update(measure(st))
        row["multiplier"] = math.nan if st.multiplier is None else float(st.multiplier)
        for c in columns:
            history[c].append(row[c])
        return row

    def hist_arrays():
        return {c: np.asarray(v, dtype=np.int64 if c == "iteration" or c.startswith("calls_")
                              else np.float64) for c, v in history.items()}

    resumed = checkpoint is not None and os.path.exists(checkpoint)
    if resumed:
        state, saved, elapsed = _read_checkpoint(checkpoint, ident, state, problem)
        if state.iteration > n_iter:
            raise ValueError(f"checkpoint {checkpoint!r} is at iteration {state.iteration} > "
                             f"n_iter = {n_iter}")
        if list(saved) != list(columns):
            raise ValueError(f"checkpoint {checkpoint!r} has history columns {list(saved)}; "
                             f"this run records {list(columns)}")
        # keep the regular record points; an end-of-run row of the interrupted run is
        # dropped unless this run ends there too (then the history matches a fresh run)
        for i, it in enumerate(saved["iteration"]):
            if it % record_every == 0 or it == state.iteration == n_iter:
                for c in columns:
                    history[c].append(saved[c][i].item())
        if state.iteration == n_iter and history["iteration"][-1] != n_iter:
            record(state, state.iteration, elapsed)
    else:
        record(state, 0, 0.0)
        if not _finite(xp, state):
            raise ValueError("the start point is not finite")

    status, message = "max_iter", f"reached n_iter = {n_iter}"
    last_good = (state, [s.get_state() for s in _samplers(state)])
    last_ckpt = state.iteration
    bar = _Progress(progress, n_iter, state.iteration)
    k = state.iteration
    synchronize(xp)
    t0 = time.perf_counter()
    try:
        while k < n_iter:
            state = materialize(solver.step(problem, state))
            k += 1
            if k % record_every and k != n_iter:
                continue
            synchronize(xp)
            elapsed += time.perf_counter() - t0
            if not _finite(xp, state):
                good, snaps = last_good
                for sampler, snap in zip(_samplers(good), snaps):
                    sampler.set_state(snap)
                state = good
                status = "diverged"
                message = (f"non-finite iterate at iteration {k}; returning the last finite "
                           f"record point (iteration {good.iteration})")
                break
            row = record(state, k, elapsed)
            last_good = (state, [s.get_state() for s in _samplers(state)])
            stop = False
            if callback is not None:
                try:
                    stop = callback({"iteration": k, "state": state, "record": dict(row),
                                     "time": elapsed}) is True
                except StopIteration:
                    stop = True
            if tol is not None and row["hypergradient_norm"] <= tol:
                status, message = "converged", f"hypergradient norm <= tol = {tol} at iteration {k}"
            elif stop:
                status, message = "stopped", f"stopped by the callback at iteration {k}"
            done = status != "max_iter" or k == n_iter
            if checkpoint is not None and (done or checkpoint_every is None
                                           or k - last_ckpt >= checkpoint_every):
                _write_checkpoint(checkpoint, ident, state, hist_arrays(), elapsed, record_every)
                last_ckpt = k
            bar.update(k, row)
            if status != "max_iter":
                break
            synchronize(xp)
            t0 = time.perf_counter()
        if checkpoint is not None and status != "diverged" and last_ckpt != state.iteration:
            _write_checkpoint(checkpoint, ident, state, hist_arrays(), elapsed, record_every)
        elif checkpoint is not None and not resumed and n_iter == 0:
            _write_checkpoint(checkpoint, ident, state, hist_arrays(), elapsed, record_every)
    finally:
        bar.close()
    hist = hist_arrays()
    return Result(x=state.x, y=state.y, state=state, status=status, message=message,
                  history=hist, n_iter=state.iteration,
                  wall_time=float(hist["time"][-1]) if len(hist["time"]) else 0.0,
                  calls=state.calls)
