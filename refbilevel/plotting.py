"""Convergence curves of results folders (matplotlib, headless).

:func:`plot_runs` reads the ``history.csv`` of one or several folders written by
``refbilevel run`` and draws one curve per run on a logarithmic y axis, labelled by solver
and backend. It selects matplotlib's non-interactive ``Agg`` backend, so it works without a
display (CI, SSH).
"""

from __future__ import annotations

import io
import os

import numpy as np

from .results import ResultsError, atomic_write_bytes, load_run

__all__ = ["X_AXES", "plot_runs"]

#: ``x`` choices: history column(s) used for the horizontal axis.
X_AXES = {"iteration": "outer iteration", "time": "wall time [s]",
          "oracle_calls": "oracle calls (grad_f + grad_g + hvp + cross)"}
_Y_LABELS = {"hypergradient_norm": "exact hypergradient norm ||∇F(x)||",
             "value": "outer objective f(x, y)", "inner_residual": "inner residual ||∇_y g||",
             "multiplier": "multiplier"}


def _x_values(history, x):
    if x == "iteration":
        return history["iteration"]
    if x == "time":
        return history["time"]
    cols = [c for c in history if c.startswith("calls_")]
    return np.sum([history[c] for c in cols], axis=0) if cols else history["iteration"]


def _default_y(histories) -> str:
    for col in ("hypergradient_norm", "value"):
        if all(col in h and np.isfinite(h[col]).any() for h in histories):
            return col
    return "value"


def plot_runs(dirs, *, x: str = "iteration", y: str | None = None, out, title: str | None = None,
              logy: bool = True) -> str:
    """Plot the histories of results folders ``dirs`` into the PNG ``out``.

    Parameters
    ----------
    dirs : sequence of path
        Results folders (``config.json`` + ``history.csv``).
    x : {"iteration", "time", "oracle_calls"}
        Horizontal axis (``oracle_calls`` sums the ``calls_*`` columns).
    y : str, optional
        History column; default ``hypergradient_norm`` when every run has it, else ``value``.
    out : path
        Output image (written atomically; format from the extension, PNG recommended).
    logy : bool
        Logarithmic y axis (non-positive values are masked).

    Returns
    -------
    str
        ``out``.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    if not dirs:
        raise ValueError("dirs must name at least one results folder")
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}; got {x!r}")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a file path; got {type(out).__name__}")
    runs = [load_run(d, need_final=False) for d in dirs]
    y = _default_y([r.history for r in runs]) if y is None else y
    for r in runs:
        if y not in r.history:
            raise ResultsError(f"{r.path}: history has no column {y!r}; columns: "
                               f"{', '.join(r.history)}")
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    for r in runs:
        xs, ys = _x_values(r.history, x), np.asarray(r.history[y], dtype=float)
        if logy:
            ys = np.where(ys > 0, ys, np.nan)
        ax.plot(xs, ys, marker=".", markersize=3, label=r.label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(_Y_LABELS.get(y, y))
    problems = sorted({str(r.config.get("problem")) for r in runs})
    ax.set_title(title or f"{', '.join(problems)}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    ext = os.path.splitext(os.fspath(out))[1].lstrip(".").lower() or "png"
    fig.savefig(buf, format=ext)
    atomic_write_bytes(out, buf.getvalue())
    return os.fspath(out)
