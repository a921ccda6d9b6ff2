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

``value``, ``inner_residual`` and ``hypergradient_norm`` appear when named in ``metrics``;
a held-out metric object in ``metrics`` (:mod:`refbilevel.heldout`: ``TestAccuracy``,
``TestAUC``, or any object with a ``name`` and a call ``metric(problem, state) -> float``)
adds the column of its name, after them.
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

from ._backend import from_host, is_array, materialize, synchronize, to_host, to_host_scalar
from ._validation import check_array, check_bool, check_int, check_real
from .oracle import Oracle, OracleCalls
from .problems.base import MinimaxBilevelProblem
from .sampling import STREAM_FORMAT, resolve_seed
from .solvers.base import Solver

__all__ = ["METRICS", "Result", "run"]

#: Metric names understood by :func:`run`.
METRICS = ("value", "inner_residual", "hypergradient_norm")
_CALL_COLUMNS = ("calls_grad_f", "calls_grad_g", "calls_hvp", "calls_cross")
_CHECKPOINT_FORMAT = 2


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
        Oracle calls measured by the oracle layer up to the returned state.
    notes : list of str
        Metrics that failed (recorded as NaN), one line each.
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
    notes: list = field(default_factory=list)

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
    """Evaluates the requested metrics at record points (synchronises).

    A metric that raises (e.g. ``LinAlgError`` from an exact oracle far from its domain)
    records NaN and adds one note to :attr:`notes`; the run goes on.
    """

    def __init__(self, problem, solver, metrics):
        self.problem, self.solver, self.metrics = problem, solver, metrics
        self.minimax = isinstance(problem, MinimaxBilevelProblem)
        self.exact_available = True
        self.notes: list[str] = []

    def __call__(self, state) -> dict:
        out = {}
        for metric in self.metrics:
            name = _metric_name(metric)
            try:
                if isinstance(metric, str):
                    out[name] = getattr(self, "_" + name)(state)
                else:
                    out[name] = float(metric(self.problem, state))
            except Exception as exc:  # noqa: BLE001  a metric never ends the run
                out[name] = math.nan
                note = f"metric {name!r} failed at iteration {state.iteration}: " \
                       f"{type(exc).__name__}: {exc}"
                self.notes.append(note)
        return out

    def _value(self, state) -> float:
        p, x, y = self.problem, state.x, state.y
        if not self.minimax:
            return to_host_scalar(p.f(x, y))
        try:
            return to_host_scalar(p.f(x, y, p.inner_solution(x), p.all_blocks()))
        except NotImplementedError:
            return math.nan

    def _inner_residual(self, state) -> float:
        return self.solver.inner_residual(self.problem, state)

    def _hypergradient_norm(self, state) -> float:
        if not self.exact_available:
            return math.nan
        p = self.problem
        try:
            g = p.saddle_gradient(state.x) if self.minimax else p.hypergradient(state.x)
        except NotImplementedError:
            self.exact_available = False
            return math.nan
        return _norm(p.xp, g)


def _metric_name(metric) -> str:
    """History column of a metric: the name itself, or a held-out metric's ``name``."""
    return metric if isinstance(metric, str) else metric.name


def _check_metrics(metrics):
    if isinstance(metrics, str):
        raise ValueError(f"metrics must be a tuple of names from {METRICS} or held-out "
                         f"metric objects; got {metrics!r}")
    names = []
    for m in metrics:
        if isinstance(m, str):
            if m not in METRICS:
                raise ValueError(f"metrics must be a tuple of names from {METRICS} or "
                                 f"held-out metric objects; got {metrics!r}")
        elif not (callable(m) and isinstance(getattr(m, "name", None), str)):
            raise TypeError(f"a metric object needs a str 'name' and a call "
                            f"metric(problem, state); got {type(m).__name__}")
        names.append(_metric_name(m))
    reserved = {"iteration", "time", "multiplier", *_CALL_COLUMNS}
    if len(set(names)) != len(names) or reserved & set(names):
        raise ValueError(f"metric names must be distinct and not {sorted(reserved)}; "
                         f"got {names}")


def _state_arrays(obj, path="state", out=None) -> dict:
    """Every array of a state by field path (dataclass fields, named tuples, lists)."""
    out = {} if out is None else out
    if is_array(obj):
        out[path] = obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _state_arrays(getattr(obj, f.name), f"{path}.{f.name}", out)
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for k in obj._fields:
            _state_arrays(getattr(obj, k), f"{path}.{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _state_arrays(v, f"{path}[{i}]", out)
    return out


def _finite(xp, state) -> bool:
    """Whether every floating array of the state is finite (one synchronisation)."""
    ok = None
    for a in _state_arrays(state).values():
        if not xp.isdtype(a.dtype, "real floating"):
            continue
        part = xp.all(xp.isfinite(a))
        ok = part if ok is None else ok & part
    return True if ok is None else bool(to_host_scalar(xp.astype(ok, xp.float64)))


# ------------------------------------------------------------------------- history
class _History:
    """The record rows of a run: host lists per column, NumPy arrays on demand."""

    def __init__(self, columns):
        self.columns = tuple(columns)
        self.rows = {c: [] for c in self.columns}

    def __len__(self):
        return len(self.rows["iteration"])

    def append(self, row: dict) -> None:
        for c in self.columns:
            self.rows[c].append(row[c])

    def last_iteration(self):
        return self.rows["iteration"][-1] if len(self) else None

    def arrays(self) -> dict:
        return {c: np.asarray(v, dtype=np.int64 if c == "iteration" or c.startswith("calls_")
                              else np.float64) for c, v in self.rows.items()}


# --------------------------------------------------------------------- checkpoints
def _encode(obj, path: str, arrays: dict):
    """JSON tree of a state; arrays go to ``arrays[path]`` (host copies)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
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


class _CheckpointError(ValueError):
    pass


def _decode(template, tree, arrays, problem, path="state"):
    """Rebuild a state from ``tree`` into the structure of ``template`` (a fresh init),
    checking every array's shape and dtype against the template's."""
    if isinstance(tree, dict) and len(tree) == 1:
        (tag, val), = tree.items()
        if tag == "__array__":
            if val not in arrays:
                raise _CheckpointError(f"entry 'array:{val}' is missing")
            host = arrays[val]
            if is_array(template):
                want = to_host(template)
                if host.shape != want.shape or host.dtype != want.dtype:
                    raise _CheckpointError(
                        f"{path} has shape {host.shape} and dtype {host.dtype}; this run "
                        f"needs shape {want.shape} and dtype {want.dtype}")
            return from_host(host, problem.xp, device=problem.device)
        if tag == "__dataclass__":
            if not (dataclasses.is_dataclass(template) and isinstance(val, dict)):
                raise _CheckpointError(f"{path} is not a {type(template).__name__}")
            names = {f.name for f in dataclasses.fields(template)}
            if set(val) != names:
                raise _CheckpointError(f"{path} has fields {sorted(val)}; this run's "
                                       f"{type(template).__name__} has {sorted(names)}")
            return dataclasses.replace(template, **{
                k: _decode(getattr(template, k), v, arrays, problem, f"{path}.{k}")
                for k, v in val.items()})
        if tag == "__namedtuple__":
            if not hasattr(template, "_fields") or set(val) != set(template._fields):
                raise _CheckpointError(f"{path} does not match this run's optimiser state")
            return template._replace(**{
                k: _decode(getattr(template, k), v, arrays, problem, f"{path}.{k}")
                for k, v in val.items()})
        if tag == "__list__":
            if not isinstance(template, (list, tuple)) or len(template) != len(val):
                raise _CheckpointError(f"{path} does not match this run's state")
            items = [_decode(t, v, arrays, problem, f"{path}[{i}]")
                     for i, (t, v) in enumerate(zip(template, val))]
            return type(template)(items)
    if is_array(template):
        # a 0-d result of NumPy arithmetic is a NumPy scalar (a float), stored as a number
        if isinstance(tree, (int, float)) and not isinstance(tree, bool) \
                and tuple(template.shape) == ():
            want = to_host(template)
            return from_host(np.asarray(tree, dtype=want.dtype), problem.xp,
                             device=problem.device)
        raise _CheckpointError(f"{path} should be an array; got {tree!r}")
    if type(tree) is not type(template) and not (template is None or tree is None):
        if not (isinstance(template, float) and isinstance(tree, int)):
            raise _CheckpointError(f"{path} has type {type(tree).__name__}; this run's is "
                                   f"{type(template).__name__}")
    return tree


def _identity(problem, solver, seed) -> dict:
    ident = {"solver": type(solver).__name__, "hyperparameters": solver.hyperparameters(),
             "problem": problem.describe(), "seed": seed, "streams": STREAM_FORMAT}
    return json.loads(json.dumps(ident, default=repr))


class _Checkpoint:
    """One ``.npz`` file holding a state, the history so far, the wall time and the calls."""

    def __init__(self, path, ident, record_every):
        self.path = os.fspath(path)
        self.ident, self.record_every = ident, record_every

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def write(self, state, history: _History, elapsed: float, calls: OracleCalls) -> None:
        arrays: dict = {}
        tree = _encode(state, "state", arrays)
        meta = {"format": _CHECKPOINT_FORMAT, "identity": self.ident, "state": tree,
                "time": elapsed, "record_every": self.record_every,
                "history_columns": list(history.columns), "calls": calls.as_dict()}
        payload = {f"array:{k}": v for k, v in arrays.items()}
        payload.update({f"history:{k}": v for k, v in history.arrays().items()})
        payload["meta"] = np.array(json.dumps(meta))
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=directory)
        try:
            os.fchmod(fd, 0o666 & ~_umask())     # mkstemp makes 0600; honour the umask
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **payload)
            os.replace(tmp, self.path)           # atomic on POSIX and Windows
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def read(self, template, problem):
        """``(state, history rows, elapsed, calls)``; one ``ValueError`` line on any fault."""
        try:
            return self._read(template, problem)
        except _CheckpointError as exc:
            raise ValueError(f"checkpoint {self.path!r} is unusable: {exc}") from None

    def _read(self, template, problem):
        import zipfile

        if os.path.getsize(self.path) == 0:
            raise _CheckpointError("the file is empty")
        if not zipfile.is_zipfile(self.path):
            raise _CheckpointError("not an .npz archive (truncated or overwritten?)")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                files = {k: data[k] for k in data.files}
        except Exception as exc:  # noqa: BLE001  BadZipFile, EOFError, ValueError, CRC ...
            raise _CheckpointError(f"cannot read the archive ({type(exc).__name__}: {exc})") \
                from None
        if "meta" not in files:
            raise _CheckpointError("entry 'meta' is missing")
        try:
            meta = json.loads(str(files["meta"]))
        except (json.JSONDecodeError, ValueError) as exc:
            raise _CheckpointError(f"entry 'meta' is not JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != _CHECKPOINT_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else None
            raise _CheckpointError(f"unknown format {got!r} (this version writes "
                                   f"{_CHECKPOINT_FORMAT})")
        for key in ("identity", "state", "time", "history_columns", "calls"):
            if key not in meta:
                raise _CheckpointError(f"'meta' lacks {key!r}")
        if meta["identity"] != self.ident:
            raise ValueError(f"checkpoint {self.path!r} was written by another run (solver, "
                             f"hyperparameters, problem or seed differ): "
                             f"{meta['identity']} vs {self.ident}")
        arrays = {k[len("array:"):]: v for k, v in files.items() if k.startswith("array:")}
        history = {}
        for c in meta["history_columns"]:
            if f"history:{c}" not in files:
                raise _CheckpointError(f"entry 'history:{c}' is missing")
            history[c] = files[f"history:{c}"]
        state = _decode(template, meta["state"], arrays, problem)
        lengths = {len(v) for v in history.values()}
        if len(lengths) != 1:
            raise _CheckpointError(f"history columns have different lengths {sorted(lengths)}")
        its = history.get("iteration")
        if its is None or not len(its) or int(its[-1]) != state.iteration:
            last = None if its is None or not len(its) else int(its[-1])
            raise _CheckpointError(f"history ends at iteration {last} but the state is at "
                                   f"iteration {state.iteration}")
        try:
            calls = OracleCalls(**{k: int(v) for k, v in meta["calls"].items()})
        except (TypeError, ValueError) as exc:
            raise _CheckpointError(f"'calls' is malformed ({exc})") from None
        return state, history, float(meta["time"]), calls


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    if not isinstance(metrics, (tuple, list, str)):
        raise TypeError(f"metrics must be a tuple of names from {METRICS} or held-out "
                        f"metric objects; got {type(metrics).__name__}")
    _check_metrics(metrics)
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
        Key of the counter-based minibatch and block streams (:mod:`refbilevel.sampling`),
        an int in ``[0, 2**64)``; ``None`` draws one from OS entropy, a generator gives
        one draw (the key used is ``result.state.seed``).
    x0, y0 : array, optional
        Start point (default ``problem.init_x()``, ``problem.init_y()``); must match the
        problem's namespace, device, dtype and sizes.
    record_every : int
        Record at iteration 0, every ``record_every`` iterations and at the end.
    metrics : tuple of str or held-out metric objects
        Among ``"value"``, ``"inner_residual"``, ``"hypergradient_norm"`` (see module
        docstring), and objects of :mod:`refbilevel.heldout` (``TestAccuracy``,
        ``TestAUC``), each recorded under its ``name``. The exact hypergradient can be
        expensive: drop it for large problems.
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
    seed = resolve_seed(seed)
    state = solver.init(problem, x0, y0, seed)
    oracle = Oracle(problem)
    measure = _Metrics(problem, solver, tuple(metrics))
    history = _History(("iteration", "time", *_CALL_COLUMNS,
                        *[m for m in METRICS if m in metrics],
                        *[m.name for m in metrics if not isinstance(m, str)], "multiplier"))
    ckpt = None if checkpoint is None else _Checkpoint(checkpoint, _identity(problem, solver,
                                                                               seed), record_every)
    elapsed = 0.0

    def record(st, t):
        row = {"iteration": st.iteration, "time": t}
        row.update(zip(_CALL_COLUMNS, (oracle.calls.grad_f, oracle.calls.grad_g,
                                       oracle.calls.hvp, oracle.calls.cross)))
        row.update(measure(st))
        row["multiplier"] = math.nan if st.multiplier is None else float(st.multiplier)
        history.append(row)
        return row

    resumed = ckpt is not None and ckpt.exists()
    if resumed:
        state, saved, elapsed, calls = ckpt.read(state, problem)
        oracle.reset_calls(calls)
        if state.iteration > n_iter:
            raise ValueError(f"checkpoint {checkpoint!r} is at iteration {state.iteration} > "
                             f"n_iter = {n_iter}")
        if list(saved) != list(history.columns):
            raise ValueError(f"checkpoint {checkpoint!r} has history columns {list(saved)}; "
                             f"this run records {list(history.columns)}")
        # keep the regular record points; an end-of-run row of the interrupted run is
        # dropped unless this run ends there too (then the history matches a fresh run)
        for i, it in enumerate(saved["iteration"]):
            if it % record_every == 0 or it == state.iteration == n_iter:
                history.append({c: saved[c][i].item() for c in history.columns})
        if state.iteration == n_iter and history.last_iteration() != n_iter:
            record(state, elapsed)
    else:
        record(state, 0.0)
        if not _finite(xp, state):
            raise ValueError("the start point is not finite")

    status, message = "max_iter", f"reached n_iter = {n_iter}"
    last_good = (state, oracle.calls.copy())
    last_ckpt = state.iteration
    bar = _Progress(progress, n_iter, state.iteration)
    synchronize(xp, state)
    t0 = time.perf_counter()
    try:
        while state.iteration < n_iter:
            state = materialize(solver.step(oracle, state))
            k = state.iteration
            if k % record_every and k != n_iter:
                continue
            synchronize(xp, state)
            elapsed += time.perf_counter() - t0
            if not _finite(xp, state):
                state, calls = last_good
                oracle.reset_calls(calls)
                status = "diverged"
                message = (f"non-finite state at iteration {k}; returning the last finite "
                           f"record point (iteration {state.iteration})")
                break
            row = record(state, elapsed)
            last_good = (state, oracle.calls.copy())
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
            if ckpt is not None and (done or checkpoint_every is None
                                     or k - last_ckpt >= checkpoint_every):
                ckpt.write(state, history, elapsed, oracle.calls)
                last_ckpt = k
            bar.update(k, row)
            if status != "max_iter":
                break
            synchronize(xp, state)
            t0 = time.perf_counter()
        if ckpt is not None and status != "diverged" and last_ckpt != state.iteration:
            ckpt.write(state, history, elapsed, oracle.calls)
        elif ckpt is not None and not resumed and n_iter == 0:
            ckpt.write(state, history, elapsed, oracle.calls)
    finally:
        bar.close()
    hist = history.arrays()
    end = solver.horizon()
    if end is not None and n_iter > end:
        message += f"; {solver.horizon_note()}"
    if measure.notes:
        message += "; " + "; ".join(dict.fromkeys(measure.notes))
    return Result(x=state.x, y=state.y, state=state, status=status, message=message,
                  history=hist, n_iter=state.iteration,
                  wall_time=float(hist["time"][-1]) if len(hist["time"]) else 0.0,
                  calls=oracle.calls.copy(), notes=list(dict.fromkeys(measure.notes)))
