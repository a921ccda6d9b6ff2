"""Results folders: ``config.json``, ``history.csv``, ``final.npz`` (and ``checkpoint.npz``).

A folder written by ``refbilevel run`` (or :func:`save_run`) holds

``config.json``
    Everything needed to reproduce the run: problem name and parameters, dataset, solver
    name and hyperparameters, seed, iterations, record interval, backend, dtype, the
    versions of refbilevel, NumPy, CuPy (when installed), Python, and the device name;
    after the run also its status, message, wall time and oracle calls.
``history.csv``
    One row per record point, a header line with the column names of
    :func:`refbilevel.run` (``iteration``, ``time``, ``calls_*``, ``value``, ...); floats
    written with ``repr`` so they read back exactly (pandas, spreadsheets, ``csv``).
``final.npz``
    ``x``, ``y`` and the other array fields of the final solver state (``z``, ``v``, ...;
    optimiser states flattened as ``opt_x.m`` ...), host NumPy arrays.
``checkpoint.npz``
    Written by :func:`refbilevel.run` while running (``--resume`` continues from it).

Every write goes to a temporary file in the same folder followed by :func:`os.replace`, so a
reader never sees a half-written file; files get the permissions ``open`` would give them
(``0666`` less the umask). A failed write raises an :class:`OSError` naming the file the
caller asked for. :func:`load_run` checks the folder and raises :class:`ResultsError` (a
:class:`ValueError`) with a message naming the file and the problem.

:class:`RunFolder` gives a run exclusive use of its folder and replaces earlier results only
once the new ones are complete; it never removes a file it did not write.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import os
import platform
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from ._backend import backend_name, device_name, is_array, to_host

__all__ = ["CHECKPOINT", "CONFIG", "FINAL", "HISTORY", "FolderBusyError", "PARTIAL",
           "RUN_FILES", "ResultsError", "RunFolder", "RunRecord",
           "atomic_write_bytes", "atomic_write_text", "environment", "final_arrays",
           "load_config", "load_run", "read_history", "save_npz", "save_run", "write_config",
           "write_history"]

CONFIG, HISTORY, FINAL, CHECKPOINT = "config.json", "history.csv", "final.npz", "checkpoint.npz"


class ResultsError(ValueError):
    """A results folder or file is missing, incomplete or corrupt."""


# ------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder; expected a file name", path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    except OSError as exc:  # name the file the user asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; honour the umask as open() does
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, path) from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_npz(path, arrays: dict) -> None:
    """``numpy.savez`` of host copies of ``arrays``, written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(to_host(v)) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------ environment
def environment(xp) -> dict:
    """Versions and device of this run (for ``config.json``)."""
    from . import __version__

    env = {"refbilevel": __version__, "numpy": np.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "backend": backend_name(xp), "device": device_name(xp)}
    try:
        import cupy

        env["cupy"] = cupy.__version__
    except Exception:  # not installed, or broken without a driver
        env["cupy"] = None
    return env


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else repr(v)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return repr(obj)


def write_config(directory, config: dict) -> None:
    """Write ``config.json`` (atomically, sorted keys, 2-space indent)."""
    atomic_write_text(os.path.join(directory, CONFIG),
                      json.dumps(_jsonable(config), indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------ history
def _cell(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def write_history(directory, history: dict) -> None:
    """Write ``history.csv``: header of column names, one row per record point."""
    cols = list(history)
    n = len(history[cols[0]]) if cols else 0
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for i in range(n):
        w.writerow([_cell(np.asarray(history[c])[i]) for c in cols])
    atomic_write_text(os.path.join(directory, HISTORY), buf.getvalue())


def read_history(path) -> dict:
    """Read a ``history.csv`` into a dict of host arrays (int64 for ``iteration``/``calls_*``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ResultsError(f"{path}: file not found (not a refbilevel results folder?)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ResultsError(f"{path}: cannot read history ({exc})") from None
    if not rows or "iteration" not in rows[0]:
        raise ResultsError(f"{path}: corrupt history (no header with an 'iteration' column)")
    cols = rows[0]
    out = {c: [] for c in cols}
    for k, row in enumerate(rows[1:], start=2):
        if len(row) != len(cols):
            raise ResultsError(f"{path}: corrupt history (line {k} has {len(row)} fields, "
                               f"expected {len(cols)})")
        for c, v in zip(cols, row):
            try:
                out[c].append(float(v))
            except ValueError:
                raise ResultsError(f"{path}: corrupt history (line {k}, column {c}: {v!r})") from None
    return {c: np.asarray(v, dtype=np.int64 if c == "iteration" or c.startswith("calls_")
                          else np.float64) for c, v in out.items()}


# ------------------------------------------------------------------------ final state
def final_arrays(state) -> dict:
    """Host copies of the array fields of a solver state (NamedTuples flattened with dots)."""
    out = {}

    def visit(obj, prefix):
        if is_array(obj):
            out[prefix] = np.array(to_host(obj), copy=True)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
        elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
            for k in obj._fields:
                visit(getattr(obj, k), f"{prefix}.{k}")

    visit(state, "")
    return out


def save_run(directory, config: dict, result) -> None:
    """Write ``history.csv``, ``final.npz`` and the completed ``config.json`` of a :class:`~refbilevel.run.Result`."""
    write_history(directory, result.history)
    save_npz(os.path.join(directory, FINAL), final_arrays(result.state))
    config = dict(config)
    config.update(status=result.status, message=result.message, n_iter_done=result.n_iter,
                  wall_time=result.wall_time, calls=result.calls.as_dict())
    write_config(directory, config)


# ------------------------------------------------------------------------ reader
@dataclass
class RunRecord:
    """A results folder read back by :func:`load_run`."""

    path: str
    config: dict
    history: dict
    final: dict

    @property
    def label(self) -> str:
        """``"solver (backend)"``, for plot legends."""
        c = self.config
        return f"{c.get('solver', '?')} ({c.get('backend', '?')})"


def _read_npz(path) -> dict:
    if not zipfile.is_zipfile(path):
        raise ResultsError(f"{path}: corrupt .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ResultsError(f"{path}: corrupt or unreadable .npz file ({exc})") from None


def load_config(directory) -> dict:
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ResultsError(f"results folder not found: {directory!r}")
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise ResultsError(f"{directory!r} is not a refbilevel results folder (no {CONFIG})")
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: corrupt config ({exc})") from None
    if not isinstance(config, dict):
        raise ResultsError(f"{path}: corrupt config (not a JSON object)")
    for key in ("problem", "solver", "seed", "backend", "dtype"):
        if key not in config:
            raise ResultsError(f"{path}: corrupt config (missing {key!r})")
    return config


def load_run(directory, *, need_final: bool = True) -> RunRecord:
    """Read and check a results folder.

    Raises
    ------
    ResultsError
        When the folder, ``config.json``, ``history.csv`` or ``final.npz`` is missing or
        corrupt (``final.npz`` only when ``need_final``); the message names the file.
    """
    directory = os.fspath(directory)
    config = load_config(directory)
    history = read_history(os.path.join(directory, HISTORY))
    final = {}
    fpath = os.path.join(directory, FINAL)
    if os.path.isfile(fpath):
        final = _read_npz(fpath)
        for key in ("x", "y"):
            if key not in final:
                raise ResultsError(f"{fpath}: corrupt final state (no array {key!r})")
    elif need_final:
        raise ResultsError(f"{directory!r} has no {FINAL} (the run did not finish; "
                           "continue it with --resume)")
    return RunRecord(directory, config, history, final)


# ------------------------------------------------------------------------ one run per folder
#: The files a run writes; nothing else in a results folder is ever touched.
RUN_FILES = (CONFIG, HISTORY, FINAL, CHECKPOINT)
#: Subfolder where a run that replaces earlier results writes until it completes.
PARTIAL = ".partial"


class FolderBusyError(OSError):
    """Another process is running into the same results folder (``errno.EBUSY``)."""


class RunFolder:
    """Exclusive use of a results folder by one run, with results replaced only when complete.

    ``with RunFolder(out, resume=..., overwrite=...) as folder:`` creates ``out`` if needed,
    takes an exclusive lock on it (another run into the same folder is refused with
    :class:`FolderBusyError` while this one lives; the lock dies with the process) and picks
    :attr:`workdir`, the folder the run writes into:

    * a new run into a folder without results writes into ``out`` itself; files already
      there that the project did not write are left alone;
    * a new run into a folder holding earlier results is refused unless ``overwrite``; then
      it writes into ``out/.partial`` and :meth:`commit` moves its files over the old ones
      once the run has completed (until then, and if it never completes, the earlier
      results stay as they were);
    * ``resume`` continues in ``out/.partial`` when an interrupted replacement left one,
      else in ``out``.

    Only the files in :data:`RUN_FILES` are ever replaced or removed.
    """

    def __init__(self, out, *, resume: bool = False, overwrite: bool = False):
        self.out = os.fspath(out)
        self.resume, self.overwrite = resume, overwrite
        self.workdir = self.out
        self._fd = None
        self._created = False

    # -- lock
    def _lock(self):
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: identity checks only
            return
        self._fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise FolderBusyError(errno.EBUSY, "another run is writing into this folder "
                                  "right now; choose another --out or wait for it to end",
                                  self.out) from None

    def __enter__(self):
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", self.out)
        if self.resume and not os.path.isdir(self.out):
            raise ResultsError(f"results folder not found: {self.out!r}")
        self._created = not os.path.exists(self.out)
        os.makedirs(self.out, exist_ok=True)
        self._lock()
        try:
            self._choose()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _choose(self):
        partial = os.path.join(self.out, PARTIAL)
        if self.resume:
            if os.path.isfile(os.path.join(partial, CONFIG)):
                self.workdir = partial
            return
        ours = [f for f in RUN_FILES if os.path.exists(os.path.join(self.out, f))]
        if not ours:
            return
        if not self.overwrite:
            raise ResultsError(f"{self.out}: holds the results of an earlier run "
                               f"({', '.join(ours)}); --resume continues it, --overwrite "
                               "replaces them once the new run has completed, or choose "
                               "another --out")
        if os.path.isdir(partial):  # an abandoned replacement: only our own files
            self._remove_ours(partial)
        os.makedirs(partial, exist_ok=True)
        self.workdir = partial

    @staticmethod
    def _remove_ours(directory):
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name in RUN_FILES or (name.startswith((".tmp-", ".ckpt-")) and os.path.isfile(path)):
                os.remove(path)
        try:
            os.rmdir(directory)
        except OSError:
            pass  # something else lives there: leave it

    def path(self, name: str) -> str:
        """Where the run writes ``name`` (one of :data:`RUN_FILES`)."""
        return os.path.join(self.workdir, name)

    def commit(self) -> None:
        """Move a completed replacement's files over the earlier results (config last)."""
        if self.workdir == self.out:
            return
        order = [f for f in (HISTORY, FINAL, CHECKPOINT, CONFIG)]
        for name in order:
            src, dst = os.path.join(self.workdir, name), os.path.join(self.out, name)
            if os.path.exists(src):
                os.replace(src, dst)
            elif name in (FINAL, CHECKPOINT) and os.path.exists(dst):
                os.remove(dst)  # the earlier run's: would not match the new config
        self._remove_ours(self.workdir)
        self.workdir = self.out

    def __exit__(self, exc_type, *exc):
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
        if exc_type is not None and self._created:
            try:
                os.rmdir(self.out)  # made for this run, which wrote nothing: leave no trace
            except OSError:
                pass
        return False
