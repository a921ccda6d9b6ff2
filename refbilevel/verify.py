"""Verification of foreign implementations: export an instance, compute references, compare.

Workflow for someone with their own (PyTorch, JAX, C++ ...) implementation:

1. :func:`export` writes one ``.npz`` with the whole problem instance (data arrays,
   initial points), the minibatch index schedule for ``steps`` solver steps **in the order
   the solver consumes it**, the reference iterates of every step, and a JSON description
   (key ``description``, also written beside the file as ``FILE.json``) of the formulas,
   the array layouts and the order of the batches.
2. The foreign implementation reads the file, runs the same steps on the same batches and
   saves its iterates as a candidate ``.npz`` with arrays ``x`` of shape ``(steps + 1,
   dim_x)``, ``y`` (and optionally ``z``...), row ``k`` being the iterate after ``k`` steps.
   Alternatively a candidate holds oracle values at given points: ``points_x`` ``(m,
   dim_x)``, ``points_y`` ``(m, dim_y)`` and any of ``f``, ``g``, ``grad_f_x``,
   ``grad_f_y``, ``grad_g_x``, ``grad_g_y`` (full data), ``value``, ``hypergradient``,
   ``inner_solution``, one row per point.
3. :func:`compare` reports per-iteration relative deviations, the first iteration beyond
   tolerance and the variable that departed first.

:func:`trajectory` computes reference iterates directly (host copies every step: this is
a verification tool, not a fast path).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ._backend import is_array, to_host
from .results import ResultsError, atomic_write_text, save_npz
from .sampling import STREAM_FORMAT, resolve_seed
from .sampling import definition as stream_definition

__all__ = ["CompareReport", "compare", "export", "load_candidate", "load_export",
           "reference_for", "trajectory"]

FORMAT = "refbilevel-export/2"
ORACLE_KEYS = ("f", "g", "grad_f_x", "grad_f_y", "grad_g_x", "grad_g_y", "value",
               "hypergradient", "inner_solution")

#: How each solver consumes its batch draws within one step (for the description).
_CONSUMPTION = {
    "f2sa": ("per outer step k, with T = n_inner: batch_outer[k] has T+1 rows and "
             "batch_inner[k] has 2T+2 rows. Inner step t = 0..T-1: grad_y g(x, z) on "
             "batch_inner[k, 2t]; grad_y f(x, y) on batch_outer[k, t]; grad_y g(x, y) on "
             "batch_inner[k, 2t+1]; z <- z - gamma_k grad_y g(x,z); y <- y - alpha_k "
             "(grad_y f + lambda_k grad_y g(x,y)). Then x <- x - eta_k (grad_x f(x, y) on "
             "batch_outer[k, T] + lambda_k (grad_x g(x, y) on batch_inner[k, 2T] - grad_x "
             "g(x, z) on batch_inner[k, 2T+1])), with the new y, z. step_sizes[k] = "
             "(alpha_k, gamma_k, eta_k); ref_multiplier[k] = lambda_k."),
    "f2sa_adam": "as f2sa, each direction passed through Adam (see the solver's docstring)",
    "minimaxopt": ("per step t: batch_outer[t, 0] feeds grad f(x, y); batch_inner[t, 0] feeds "
                   "both grad g(x, y) and grad g(x, z). step_sizes[t] = (alpha_t, s_t): "
                   "gx = f_x + alpha (g_x(x,y) - g_x(x,z)), gy = f_y + alpha g_y(x,y), "
                   "gz = alpha g_y(x,z); z -= s lr_z gz, y -= s lr_y gy, x -= s lr_x gx."),
}
_MEANINGS = {
    "A_train": "inner (training) features, one row per sample",
    "A_val": "outer (validation) features, one row per sample",
    "T_train": "training targets: labels +-1 (binary) or one-hot rows (multinomial)",
    "T_val": "validation targets: labels +-1 (binary) or one-hot rows (multinomial)",
    "x0": "initial outer variable", "y0": "initial inner variable",
    "batch_outer": "int64 row indices into the outer data, shape (steps, draws per step, B)",
    "batch_inner": "int64 row indices into the inner data, shape (steps, draws per step, B)",
    "ref_x": "reference x after k steps (row k; row 0 = x0)",
    "ref_y": "reference y after k steps (row k; row 0 = y0)",
    "ref_multiplier": "multiplier used by step k (NaN if none)",
    "step_sizes": "host step sizes of step k (solver-specific, see batches.order)",
    "blocks": "int64 block indices sampled at step k (minimax-bilevel), shape (steps, 1, S)",
}


# ------------------------------------------------------------------------------- helpers
def _build(problem, *, seed, dtype="float64", params=None, dataset=None, backend="numpy"):
    if isinstance(problem, str):
        from .registry import build_problem

        return build_problem(problem, seed=seed, backend=backend, dtype=dtype,
                             params=params or {}, dataset=dataset)
    return problem


def _solver(solver, hyperparameters=None, problem=None):
    """A solver instance; a name gets the registry's settings for ``problem`` (a registry
    name) under ``hyperparameters``, exactly as ``refbilevel run`` builds it."""
    if isinstance(solver, str):
        from .config import solver_for

        return solver_for(solver, problem if isinstance(problem, str) else None,
                          hyperparameters)
    return solver


def _top_arrays(state) -> dict:
    """Host copies of the top-level array fields of a state (x, y, z, v ...)."""
    return {f.name: np.array(to_host(getattr(state, f.name)), copy=True)
            for f in dataclasses.fields(state) if is_array(getattr(state, f.name))}


def _trace(problem, solver, n_steps, seed, x0=None, y0=None):
    """Reference iterates and the oracle's log of the draws (by level, one list per step)."""
    from .oracle import Oracle

    state = solver.init(problem, problem.init_x() if x0 is None else x0,
                        problem.init_y() if y0 is None else y0, seed)
    oracle = Oracle(problem, log=True)
    iters = {k: [v] for k, v in _top_arrays(state).items()}
    mult = []
    for _ in range(n_steps):
        mult.append(np.nan if state.multiplier is None else float(state.multiplier))
        state = solver.step(oracle, state)
        for k, v in _top_arrays(state).items():
            iters.setdefault(k, []).append(v)
    out = {k: np.stack(v) for k, v in iters.items() if len(v) == n_steps + 1}
    out["multiplier"] = np.asarray(mult, dtype=np.float64)
    log = {"outer": [[] for _ in range(n_steps)], "inner": [[] for _ in range(n_steps)],
           "blocks": [[] for _ in range(n_steps)]}
    for k, name, arrays in oracle.draws:     # full data / all blocks: no indices logged
        log[name][k] += [a for a in arrays if a is not None]
    return out, log


def trajectory(problem, solver, n_steps, seed=0, *, x0=None, y0=None, hyperparameters=None):
    """Reference iterates of ``n_steps`` steps: dict of host arrays, row ``k`` after ``k`` steps.

    Parameters
    ----------
    problem : str or problem
        A registry name (built on NumPy in float64 with ``seed``) or a problem object.
    solver : str or Solver
        A registry name (with ``hyperparameters``) or a solver instance.
    n_steps : int
        Number of solver steps (>= 0).
    seed : int
        Key of the solver's batch streams (as in :func:`refbilevel.run.run`).

    Returns
    -------
    dict
        ``x`` ``(n_steps+1, dim_x)``, ``y``, the other top-level state arrays (``z`` ...)
        and ``multiplier`` ``(n_steps,)`` (the multiplier each step used).
    """
    from ._validation import check_int

    n_steps = check_int(n_steps, "n_steps", minimum=0)
    solver = _solver(solver, hyperparameters, problem)
    problem = _build(problem, seed=seed)
    return _trace(problem, solver, n_steps, seed, x0, y0)[0]


def _data_arrays(problem) -> dict:
    return {k: np.array(to_host(v), copy=True) for k, v in vars(problem).items()
            if not k.startswith("_") and is_array(v)}


def _notes(obj) -> str:
    doc = inspect.getdoc(type(obj)) or ""
    m = re.search(r"Notes\n-----\n(.*?)(\n\S[^\n]*\n-{3,}\n|\Z)", doc, re.S)
    return (m.group(1) if m else doc).strip()


def _step_sizes(solver, n_steps):
    if hasattr(solver, "steps") and callable(solver.steps):
        return np.asarray([solver.steps(k) for k in range(n_steps)], dtype=np.float64)
    if hasattr(solver, "step_scale") and hasattr(solver, "alpha"):
        K = solver.steps_per_stage
        return np.asarray([(solver.alpha(t // K), solver.step_scale(t)) for t in range(n_steps)])
    return None


def export(problem, *, seed=0, steps=10, batch_size=None, path, solver="f2sa",
           hyperparameters=None, problem_params=None, dtype="float64", dataset=None,
           backend="numpy") -> str:
    """Write a problem instance, its batch schedule and the reference iterates to ``path``.

    Parameters
    ----------
    problem : str or problem
        Registry name (built on NumPy with ``seed``, ``dtype``, ``problem_params``,
        ``dataset``) or a bilevel problem object.
    seed : int
        Seed of the data (for names) and of the batch schedule.
    steps : int
        Number of solver steps whose batches and reference iterates are written.
    batch_size : int or None
        Minibatch size of both levels (sets ``batch_size_outer``/``batch_size_inner`` of
        the solver); ``None`` keeps the solver's own (full batch for most).
    path : str
        Output ``.npz``; a ``.json`` with the same stem gets the description.
    solver : str or Solver
        Whose batch consumption order (and reference iterates) is exported.
    backend : str
        Array library on which a problem given by name is built and the reference iterates
        are computed (``numpy`` by default); the file always holds host (NumPy) arrays.

    Returns
    -------
    str
        ``path``.
    """
    from ._validation import check_int

    steps = check_int(steps, "steps", minimum=1)
    check_int(batch_size, "batch_size", minimum=1, allow_none=True)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path; got {type(path).__name__}")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path must end with .npz; got {path!r}")
    name = problem if isinstance(problem, str) else getattr(problem, "name", type(problem).__name__)
    prob = _build(problem, seed=seed, dtype=dtype, params=problem_params, dataset=dataset,
                  backend=backend)
    hyper = dict(hyperparameters or {})
    solver_obj = _solver(solver, hyper, problem)
    if batch_size is not None:
        fields = {f.name for f in dataclasses.fields(solver_obj)}
        if "batch_size_outer" not in fields:
            raise ValueError(f"solver {solver_obj.name!r} takes no minibatches; omit batch_size")
        solver_obj = dataclasses.replace(solver_obj, batch_size_outer=batch_size,
                                         batch_size_inner=batch_size)
    ref, log = _trace(prob, solver_obj, steps, seed)
    arrays = _data_arrays(prob)
    arrays["x0"], arrays["y0"] = to_host(prob.init_x()), to_host(prob.init_y())
    per_step = {}
    for level in ("outer", "inner", "blocks"):
        counts = {len(draws) for draws in log[level]}
        if counts and counts != {0}:
            if len(counts) != 1:
                raise ValueError(f"solver {solver_obj.name!r} draws a varying number of "
                                 f"{level} batches per step; cannot export a fixed layout")
            key = "blocks" if level == "blocks" else f"batch_{level}"
            arrays[key] = np.stack([np.stack(d) for d in log[level]]).astype(np.int64)
        per_step[level] = counts.pop() if counts else 0
    for k, v in ref.items():
        arrays["ref_multiplier" if k == "multiplier" else f"ref_{k}"] = v
    sizes = _step_sizes(solver_obj, steps)
    if sizes is not None:
        arrays["step_sizes"] = sizes
    layout = {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype),
                  "meaning": _MEANINGS.get(k, "see formulas")} for k, v in arrays.items()}
    desc = {
        "format": FORMAT,
        "problem": {"name": name, "class": type(prob).__name__, "params": problem_params or {},
                    "dataset": dataset, "describe": prob.describe()},
        "solver": {"name": solver_obj.name, "class": type(solver_obj).__name__,
                   "hyperparameters": solver_obj.hyperparameters()},
        "seed": seed, "steps": steps, "batch_size": batch_size, "dtype": dtype,
        "backend": backend if isinstance(problem, str) else None,
        "formulas": _notes(prob), "solver_update": _notes(solver_obj),
        "arrays": layout,
        "batches": {"outer_per_step": per_step["outer"], "inner_per_step": per_step["inner"],
                    "blocks_per_step": per_step["blocks"],
                    "full_batch_levels": [lv for lv in ("outer", "inner") if per_step[lv] == 0],
                    "order": _CONSUMPTION.get(solver_obj.name,
                                              "draws of each level in the order the solver "
                                              "requests them (see the solver's step)")},
        "indexing": "0-based row indices; f reads batch_outer rows of the outer data, g reads "
                    "batch_inner rows of the inner data; a missing batch array means full data",
        "streams": {"format": STREAM_FORMAT, "seed": resolve_seed(seed),
                    "step_index": "k = 0 for the first step (row 1 of ref_x)",
                    "per_step": [st.describe() for st in solver_obj.streams(prob)],
                    "definition": stream_definition()},
        "settings": "the registry's suggested settings for the problem under the given "
                    "hyperparameters, as refbilevel run uses them",
    }
    text = json.dumps(desc, indent=2, default=repr)
    arrays["description"] = np.array(text)
    save_npz(path, arrays)
    atomic_write_text(path[:-4] + ".json", text + "\n")
    return path


# ------------------------------------------------------------------------------- loading
def _load_npz(path, what) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ResultsError(f"{what} file not found: {path!r}")
    if not zipfile.is_zipfile(path):
        raise ResultsError(f"{what} {path!r} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError ...
        raise ResultsError(f"{what} {path!r} is not a readable .npz file ({exc})") from None


def load_export(path) -> tuple[dict, dict]:
    """``(arrays, description)`` of a file written by :func:`export`."""
    arrays = _load_npz(path, "exported")
    if "description" not in arrays:
        raise ResultsError(f"{path!r} is not a refbilevel export (no 'description')")
    try:
        desc = json.loads(str(arrays.pop("description")))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path!r}: corrupt description ({exc})") from None
    if desc.get("format") != FORMAT:
        raise ResultsError(f"{path!r}: unknown export format {desc.get('format')!r}")
    return arrays, desc


def load_candidate(path) -> dict:
    """Read and check a candidate ``.npz`` (a trajectory or oracle values at points)."""
    cand = _load_npz(path, "candidate")
    if "points_x" in cand:
        if "points_y" not in cand or not any(k in cand for k in ORACLE_KEYS):
            raise ResultsError(f"candidate {path!r} has points_x but lacks points_y or any of "
                               f"{', '.join(ORACLE_KEYS)}")
        return cand
    if "x" not in cand:
        raise ResultsError(f"candidate {path!r} has neither a trajectory (array 'x', one row "
                           f"per step) nor oracle points ('points_x'); it has: "
                           f"{', '.join(cand) or 'nothing'}")
    for k, v in cand.items():
        if v.ndim < 1 or v.shape[0] != cand["x"].shape[0]:
            raise ResultsError(f"candidate {path!r}: array {k!r} has {v.shape[0] if v.ndim else 0}"
                               f" rows but 'x' has {cand['x'].shape[0]}")
        if v.dtype.kind not in "fiu":
            raise ResultsError(f"candidate {path!r}: array {k!r} has non-real dtype {v.dtype}")
    return cand


def _oracles_at(problem, cand) -> dict:
    from ._backend import from_host

    xp = problem.xp
    out = {k: [] for k in ORACLE_KEYS if k in cand}
    for px, py in zip(cand["points_x"], cand["points_y"]):
        x = from_host(px, xp, dtype=problem.dtype, device=problem.device)
        y = from_host(py, xp, dtype=problem.dtype, device=problem.device)
        calls = {"f": lambda: problem.f(x, y), "g": lambda: problem.g(x, y),
                 "grad_f_x": lambda: problem.grad_f(x, y)[0],
                 "grad_f_y": lambda: problem.grad_f(x, y)[1],
                 "grad_g_x": lambda: problem.grad_g(x, y)[0],
                 "grad_g_y": lambda: problem.grad_g(x, y)[1],
                 "value": lambda: problem.value(x), "hypergradient": lambda: problem.hypergradient(x),
                 "inner_solution": lambda: problem.inner_solution(x)}
        for k in out:
            out[k].append(np.asarray(to_host(calls[k]())))
    return {k: np.stack(v) for k, v in out.items()}


def reference_for(candidate: dict, *, reference=None, solver=None, problem=None, seed=None,
                  settings=()) -> dict:
    """The reference matching ``candidate``: from a results folder, an export, or a solver name."""
    n_steps = candidate["x"].shape[0] - 1 if "x" in candidate else 0
    if reference is not None and os.path.isdir(reference):
        from .config import build_from_config
        from .results import load_config

        config = load_config(reference)
        prob, solv, _ = build_from_config(dict(config, backend="numpy"))
        if "points_x" in candidate:
            return _oracles_at(prob, candidate)
        return trajectory(prob, solv, n_steps, config["seed"])
    if reference is not None:
        arrays, desc = load_export(reference)
        if "points_x" in candidate:
            p = desc["problem"]
            prob = _build(p["name"], seed=desc["seed"], dtype=desc["dtype"], params=p["params"],
                          dataset=p["dataset"])
            return _oracles_at(prob, candidate)
        return {k[4:]: v for k, v in arrays.items() if k.startswith("ref_")}
    from .registry import get_solver, parse_settings

    s_kw, p_kw = parse_settings(settings, get_solver(solver), problem or "logreg")
    prob = _build(problem or "logreg", seed=seed or 0, params=p_kw)
    if "points_x" in candidate:
        return _oracles_at(prob, candidate)
    return trajectory(prob, _solver(solver, s_kw, problem or "logreg"), n_steps, seed or 0)


# ------------------------------------------------------------------------------- compare
@dataclass
class CompareReport:
    """Outcome of :func:`compare`.

    Attributes
    ----------
    variables : list of str
        Compared arrays (``x``, ``y``, ...; or oracle names).
    deviation : numpy.ndarray, shape (n_rows, n_variables)
        ``||c_k - r_k|| / ||r_k||`` (``||c_k - r_k||`` where ``r_k = 0``).
    passed : bool
        Whether every row satisfies ``||c_k - r_k|| <= atol + rtol ||r_k||`` for every variable.
    first_failure : int or None
        First row (iteration, or point index) beyond tolerance.
    departed : str or None
        The variable that departed first (the largest excess over its tolerance at that row).
    """

    variables: list
    deviation: np.ndarray
    passed: bool
    first_failure: int | None
    departed: str | None
    rtol: float
    atol: float
    row_name: str = "iteration"
    notes: list = field(default_factory=list)

    def format(self, max_rows: int = 12) -> str:
        """The report as ``refbilevel compare`` prints it; ``str(report)`` is the same.

        At most ``max_rows`` rows are shown (the first and last halves, plus the first row
        beyond tolerance), then the notes and a PASS/FAIL line.
        """
        n = self.deviation.shape[0]
        head = f"{self.row_name:>10}  " + "  ".join(f"{v:>14}" for v in self.variables)
        lines = [f"relative deviation ||cand - ref|| / ||ref|| (rtol={self.rtol:g}, "
                 f"atol={self.atol:g})", head]
        rows = list(range(n))
        if n > max_rows:
            keep = set(rows[:max_rows // 2]) | set(rows[n - max_rows // 2:])
            if self.first_failure is not None:
                keep.add(self.first_failure)
            rows = sorted(keep)
        prev = -1
        for k in rows:
            if k != prev + 1:
                lines.append(f"{'...':>10}")
            mark = "  <- first beyond tolerance" if k == self.first_failure else ""
            lines.append(f"{k:>10}  " + "  ".join(f"{d:>14.3e}" for d in self.deviation[k]) + mark)
            prev = k
        lines += self.notes
        if self.passed:
            lines.append(f"PASS: all {n} {self.row_name}s within tolerance")
        else:
            lines.append(f"FAIL: first {self.row_name} beyond tolerance: {self.first_failure}; "
                         f"variable that departed first: {self.departed}")
        return "\n".join(lines)

    def __str__(self) -> str:
        """The table ``refbilevel compare`` prints (:meth:`format` with its defaults)."""
        return self.format()


def _as_dict(obj, what):
    if isinstance(obj, (str, os.PathLike)):
        return load_candidate(obj) if what == "candidate" else _load_npz(obj, what)
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be a dict of arrays or a path; got {type(obj).__name__}")
    return obj


def compare(reference, candidate, rtol: float = 1e-6, atol: float = 1e-12) -> CompareReport:
    """Compare a candidate trajectory (or oracle values) with the reference, row by row.

    Parameters
    ----------
    reference, candidate : dict of arrays or path
        Arrays with one row per iteration (or per point); variables present in both are
        compared (``multiplier`` and ``points_*`` are ignored).
    rtol, atol : float
        Row ``k`` of variable ``v`` passes when ``||c - r|| <= atol + rtol ||r||``
        (Euclidean norm over the row). NaN in the candidate fails.

    Returns
    -------
    CompareReport
    """
    from ._validation import check_real

    rtol = check_real(rtol, "rtol", nonnegative=True)
    atol = check_real(atol, "atol", nonnegative=True)
    ref, cand = _as_dict(reference, "reference"), _as_dict(candidate, "candidate")
    skip = ("multiplier", "points_x", "points_y")
    names = [k for k in cand if k in ref and k not in skip]
    if not names:
        raise ValueError(f"candidate and reference share no variable: candidate has "
                         f"{', '.join(cand)}; reference has {', '.join(ref)}")
    notes = [f"not in the reference, not compared: {k}" for k in cand if k not in ref and k not in skip]
    row_name = "point" if "points_x" in cand else "iteration"
    n = min(np.shape(cand[k])[0] for k in names)
    n_ref = min(np.shape(ref[k])[0] for k in names)
    if n_ref < n:
        notes.append(f"the reference has only {n_ref} rows; compared the first {n_ref}")
        n = n_ref
    dev = np.zeros((n, len(names)))
    excess = np.zeros((n, len(names)))
    for j, k in enumerate(names):
        r = np.asarray(ref[k], dtype=np.float64)[:n].reshape(n, -1)
        c = np.asarray(cand[k], dtype=np.float64)[:n]
        if c.reshape(n, -1).shape != r.shape:
            raise ValueError(f"candidate variable {k!r} has rows of shape {c.shape[1:]}; the "
                             f"reference has {np.shape(ref[k])[1:]}")
        c = c.reshape(n, -1)
        diff = np.linalg.norm(c - r, axis=1)
        diff = np.where(np.isfinite(diff), diff, np.inf)
        rn = np.linalg.norm(r, axis=1)
        dev[:, j] = np.where(rn > 0, diff / np.where(rn > 0, rn, 1.0), diff)
        excess[:, j] = diff / (atol + rtol * rn) if (atol > 0 or rtol > 0) else np.where(diff > 0, np.inf, 0)
    bad = excess > 1.0
    first = int(np.argmax(bad.any(axis=1))) if bad.any() else None
    departed = names[int(np.argmax(excess[first]))] if first is not None else None
    return CompareReport(names, dev, first is None, first, departed, rtol, atol, row_name, notes)
