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

__all__ = ["STUDY_X_AXES", "X_AXES", "curve_x", "plot_runs", "plot_study", "summarize"]

#: ``x`` choices: history column(s) used for the horizontal axis.
X_AXES = {"iteration": "outer iteration", "time": "wall time [s]",
          "oracle_calls": "oracle calls (grad_f + grad_g + hvp + cross)"}
_Y_LABELS = {"hypergradient_norm": "exact hypergradient norm ||∇F(x)||",
             "value": "outer objective f(x, y)", "inner_residual": "inner residual ||∇_y g||",
             "multiplier": "multiplier"}


#: Horizontal axes of study figures: history column(s) -> default label.
STUDY_X_AXES = {"gradient_calls": "gradient calls (grad f + grad g; HVP and cross not counted)",
                "oracle_calls": "oracle calls (grad f + grad g + HVP + cross)",
                "time": "wall time [s]", "iteration": "iterations"}


def curve_x(history, x: str) -> np.ndarray:
    """The horizontal values of a history for axis ``x`` of :data:`STUDY_X_AXES`."""
    if x == "gradient_calls":
        return np.asarray(history["calls_grad_f"] + history["calls_grad_g"], dtype=float)
    if x == "oracle_calls":
        return np.asarray(sum(history[c] for c in ("calls_grad_f", "calls_grad_g",
                                                   "calls_hvp", "calls_cross")), dtype=float)
    if x in ("time", "iteration"):
        return np.asarray(history[x], dtype=float)
    raise ValueError(f"x must be one of {', '.join(STUDY_X_AXES)}; got {x!r}")


def summarize(curves, *, budget: float | None = None, points: int = 200, band=(0.0, 1.0)):
    """Median and a band over repeats of curves on a common grid capped at ``budget``.

    Parameters
    ----------
    curves : sequence of (xs, ys)
        One curve per repeat (``xs`` increasing).
    budget : float, optional
        Right end of the grid (default: the smallest last ``x`` over the repeats, so every
        repeat covers the grid).
    points : int
        Grid points (evenly spaced from the smallest first ``x``).
    band : (float, float)
        Quantiles of the band (default min and max over repeats).

    Returns
    -------
    grid, median, low, high : numpy.ndarray
        Each repeat is linearly interpolated on the grid (NaN past its last point); the
        statistics ignore NaN.
    """
    if not curves:
        raise ValueError("curves must hold at least one (xs, ys) pair")
    x_end = min(float(np.max(c[0])) for c in curves) if budget is None else float(budget)
    x_start = min(float(np.min(c[0])) for c in curves)
    grid = np.linspace(x_start, x_end, int(points))
    rows = []
    for xs, ys in curves:
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        r = np.interp(grid, xs, ys)
        r[grid > xs.max() * (1 + 1e-12)] = np.nan
        rows.append(r)
    M = np.vstack(rows)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(M, axis=0)
            lo = np.nanquantile(M, band[0], axis=0)
            hi = np.nanquantile(M, band[1], axis=0)
    return grid, med, lo, hi


def plot_study(panels, *, out, title: str, size=(6.8, 3.0), ncols=None) -> list[str]:
    """One figure of study panels: median curve and band per method, vector PDF and PNG.

    Parameters
    ----------
    panels : sequence of dict
        One subplot each, with ``groups`` (label -> list of ``(xs, ys)``, one per repeat),
        ``xlabel``, ``ylabel`` and optionally ``budget`` (common cap of the x axis),
        ``logy`` (default True), ``logx`` (default False), ``title``, ``hline`` (a
        horizontal reference, e.g. a target loss, and its label ``hline_label``). A panel
        with ``heatmap`` (a 2-D array, NaN drawn blank) is a heat map instead: rows
        labelled by ``yticks``, columns by ``xticks``, each cell annotated with its value,
        the colour bar titled ``cbar_label``, the cell ``mark`` (row, column) outlined.
    out : path
        Output path without extension, or with ``.png``/``.pdf``: both files are written.
    title : str
        Figure title (the study's, not registry names).
    size : (float, float)
        Figure size in inches (default fits a two-column paper's full width); with
        ``ncols``, the size of one row; with heat maps at least 3.4 inches per column.
    ncols : int, optional
        Panels per row (default: all in one row); more panels wrap into further rows.

    Returns
    -------
    list of str
        The PDF and PNG paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    stem = os.path.splitext(os.fspath(out))[0]
    ncols = len(panels) if ncols is None else max(1, min(int(ncols), len(panels)))
    nrows = -(-len(panels) // ncols)
    if any("heatmap" in panel for panel in panels):   # annotated cells need the room
        size = (max(size[0], 3.4 * ncols), size[1])
    fig = Figure(figsize=(size[0], size[1] * nrows), dpi=150)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        if "heatmap" in panel:
            _heatmap(fig, ax, panel)
            continue
        for label, curves in panel["groups"].items():
            grid, med, lo, hi = summarize(curves, budget=panel.get("budget"))
            line, = ax.plot(grid, med, label=label, linewidth=1.4)
            if len(curves) > 1:
                ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if panel.get("hline") is not None:
            ax.axhline(panel["hline"], color="0.4", linestyle=":", linewidth=1,
                       label=panel.get("hline_label"))
        if panel.get("logy", True):
            ax.set_yscale("log")
        if panel.get("logx", False):
            ax.set_xscale("log")
        ax.set_xlabel(panel["xlabel"], fontsize=8)
        ax.set_ylabel(panel["ylabel"], fontsize=8)
        if panel.get("title"):
            ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths = []
    for ext in ("pdf", "png"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext)
        path = f"{stem}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _heatmap(fig, ax, panel) -> None:
    """One heat-map panel of :func:`plot_study` (annotated cells, optional marked cell)."""
    M = np.asarray(panel["heatmap"], dtype=float)
    image = ax.imshow(np.ma.masked_invalid(M), cmap="viridis_r", aspect="auto",
                      origin="lower")
    for (i, j), v in np.ndenumerate(M):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.3g}", ha="center", va="center",
                fontsize=5, color="w" if np.isfinite(v) and v > np.nanmedian(M) else "k")
    if panel.get("mark") is not None:
        i, j = panel["mark"]
        ax.add_patch(_rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="r",
                                linewidth=1.5))
    ax.set_xticks(range(M.shape[1]), [str(t) for t in panel["xticks"]])
    ax.set_yticks(range(M.shape[0]), [str(t) for t in panel["yticks"]])
    ax.set_xlabel(panel["xlabel"], fontsize=8)
    ax.set_ylabel(panel["ylabel"], fontsize=8)
    if panel.get("title"):
        ax.set_title(panel["title"], fontsize=8)
    ax.tick_params(labelsize=6)
    bar = fig.colorbar(image, ax=ax)
    bar.ax.tick_params(labelsize=6)
    if panel.get("cbar_label"):
        bar.set_label(panel["cbar_label"], fontsize=7)


def _rectangle(*args, **kwargs):
    from matplotlib.patches import Rectangle

    return Rectangle(*args, **kwargs)


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
