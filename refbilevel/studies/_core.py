"""What every study shares: methods, repeats over seeds, tables, outputs.

A study is a function ``study(mode, seeds) -> StudyResult``. :func:`write` puts its runs,
its table and its figure in a folder:

* ``runs/<method>-seed<k>/`` — ``config.json`` and ``history.csv`` of each run (the format
  of ``refbilevel run``; ``refbilevel plot`` reads them);
* ``table.csv`` and ``table.md`` — one row per method: median and spread (min..max over
  the seeds) of each reported quantity;
* ``figure.pdf`` and ``figure.png`` — median curve and min..max band over the seeds;
* ``summary.json`` — the table, the study's checks, the mode, the seeds and the runtime.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..plotting import curve_x, plot_study
from ..results import atomic_write_text, write_config, write_history

__all__ = ["Method", "RunOutcome", "StudyResult", "calls_to_reach", "first_reach",
           "run_methods", "spread", "write"]

MODES = ("quick", "full")


@dataclass(frozen=True)
class Method:
    """One curve of a study: a label (as in the paper) and how to build the solver.

    ``solver(seed)`` returns the solver; ``n_iter`` the outer iterations (an int, or a
    callable of the solver); ``record_every`` the record spacing.
    """

    label: str
    key: str
    solver: Callable[[int], Any]
    n_iter: Any
    record_every: int = 10


@dataclass
class RunOutcome:
    """One run of a study: method key, seed, history and the run's configuration."""

    key: str
    label: str
    seed: int
    history: dict
    config: dict


@dataclass
class StudyResult:
    """What a study returns: its runs, table, figure panels and qualitative checks.

    ``table`` is a list of rows (dicts, first key the method label); ``checks`` maps a
    sentence (the paper's claim) to whether this run reproduced it.
    """

    name: str
    title: str
    mode: str
    seeds: list
    runs: list
    table: list
    panels: list
    checks: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    runtime: float = 0.0
    extra_tables: dict = field(default_factory=dict)
    #: Panels per row of the figure (None: all panels in one row).
    figure_columns: int | None = None
    #: Size in inches of one row of the figure (None: :func:`plot_study`'s default).
    figure_size: tuple | None = None


def run_methods(methods, problem_for_seed, seeds, *, metrics, label_prefix="",
                config_extra=None):
    """Run every method on the problem of every seed; return a list of :class:`RunOutcome`.

    ``problem_for_seed(seed)`` builds the problem of one repeat (the data seed); the run's
    batch seed is the same seed.
    """
    from ..run import run

    out = []
    for seed in seeds:
        problem = problem_for_seed(seed)
        for m in methods:
            solver = m.solver(seed)
            n_iter = m.n_iter(solver) if callable(m.n_iter) else m.n_iter
            res = run(problem, solver, n_iter=n_iter, seed=seed, record_every=m.record_every,
                      metrics=metrics)
            cfg = {"study_method": m.key, "label": label_prefix + m.label, "seed": seed,
                   "solver": solver.name, "hyperparameters": solver.hyperparameters(),
                   "iters": n_iter, "problem": problem.describe(), "status": res.status,
                   "message": res.message, "calls": res.calls.as_dict()}
            cfg.update(config_extra or {})
            out.append(RunOutcome(m.key, label_prefix + m.label, seed, res.history, cfg))
    return out


def by_method(runs):
    """``{label: [history, ...]}`` in the order methods first appear."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r.history)
    return groups


def runs_by_key(runs) -> dict:
    """``{key: [RunOutcome, ...]}`` in the order methods first appear (one entry per table row)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    return groups


def curves(runs, x, y):
    """``{label: [(xs, ys), ...]}`` of the runs for axis ``x`` and history column ``y``."""
    return {label: [(curve_x(h, x), np.asarray(h[y], dtype=float)) for h in hs]
            for label, hs in by_method(runs).items()}


def first_reach(xs, ys, target, *, below=True) -> float:
    """The first ``x`` at which ``ys`` is at or below (``below``) / above ``target``
    (``inf`` if never)."""
    ys = np.asarray(ys, dtype=float)
    hit = ys <= target if below else ys >= target
    idx = np.flatnonzero(hit)
    return float(np.asarray(xs)[idx[0]]) if idx.size else math.inf


def calls_to_reach(history, target, *, x="gradient_calls", column="value", below=True):
    """Gradient calls (or another axis) at the first record point reaching ``target``."""
    return first_reach(curve_x(history, x), history[column], target, below=below)


def spread(values):
    """``(median, min, max)`` of finite-or-inf values (NaN ignored)."""
    v = np.asarray([float(a) for a in values], dtype=float)
    v = v[~np.isnan(v)]
    if not v.size:
        return (math.nan, math.nan, math.nan)
    return (float(np.median(v)), float(v.min()), float(v.max()))


def spread_at(runs, column: str, index: int = -1):
    """:func:`spread` over ``runs`` of history ``column`` at record ``index`` (the last by
    default); ``column`` may also name an axis of :func:`refbilevel.plotting.curve_x`
    (``"gradient_calls"``: grad f + grad g; ``"oracle_calls"``: all four kinds)."""
    if column in ("gradient_calls", "oracle_calls"):
        return spread(curve_x(r.history, column)[index] for r in runs)
    return spread(r.history[column][index] for r in runs)


def study_seeds(cfg: dict, seeds) -> list:
    """The seeds of a study run: ``seeds`` as given, else ``0, ..., cfg["seeds"] - 1``."""
    return list(range(cfg["seeds"])) if seeds is None else list(seeds)


def _fmt(v) -> str:
    if isinstance(v, tuple) and len(v) == 3:
        med, lo, hi = v
        if lo == hi or all(math.isnan(float(t)) for t in v):    # one value, or none
            return _num(med)
        return f"{_num(med)} [{_num(lo)}, {_num(hi)}]"
    return _num(v) if isinstance(v, (int, float, np.floating, np.integer)) else str(v)


def _num(v) -> str:
    v = float(v)
    if math.isinf(v):
        return "not reached"
    if math.isnan(v):
        return "n/a"
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.4g}"


def table_markdown(rows) -> str:
    """A Markdown table of rows (median [min, max] cells)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _table_csv(rows) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = []
    for c in cols:
        if isinstance(rows[0][c], tuple):
            head += [f"{c} (median)", f"{c} (min)", f"{c} (max)"]
        else:
            head.append(c)
    lines = [",".join(f'"{h}"' for h in head)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells += [repr(float(a)) for a in v] if isinstance(v, tuple) else [f'"{v}"']
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def write(result: StudyResult, out) -> dict:
    """Write the runs, the table, the figure and ``summary.json`` of ``result`` into ``out``.

    Returns the summary (also written as JSON).
    """
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    for r in result.runs:
        d = os.path.join(out, "runs", f"{r.key}-seed{r.seed}")
        os.makedirs(d, exist_ok=True)
        write_history(d, r.history)
        write_config(d, r.config)
    atomic_write_text(os.path.join(out, "table.md"), table_markdown(result.table))
    atomic_write_text(os.path.join(out, "table.csv"), _table_csv(result.table))
    for name, rows in result.extra_tables.items():
        atomic_write_text(os.path.join(out, f"table_{name}.md"), table_markdown(rows))
        atomic_write_text(os.path.join(out, f"table_{name}.csv"), _table_csv(rows))
    size = {} if result.figure_size is None else {"size": tuple(result.figure_size)}
    figures = plot_study(result.panels, out=os.path.join(out, "figure"), title=result.title,
                         ncols=result.figure_columns, **size)
    summary = {
        "study": result.name, "title": result.title, "mode": result.mode,
        "seeds": list(result.seeds), "runtime_s": round(result.runtime, 2),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}, NumPy {np.__version__}",
        "checks": result.checks, "notes": result.notes,
        "table": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()}
                  for row in result.table],
        "extra_tables": {k: [{c: (list(v) if isinstance(v, tuple) else v)
                               for c, v in row.items()} for row in rows]
                         for k, rows in result.extra_tables.items()},
        "figures": [os.path.basename(f) for f in figures],
    }
    atomic_write_text(os.path.join(out, "summary.json"),
                      json.dumps(summary, indent=2, default=_json_default) + "\n")
    return summary


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return repr(obj)
