"""The command line run in the test process: ``refbilevel.cli.main`` with captured output.

``python -m refbilevel ARGS`` is ``raise SystemExit(main(ARGS))``, so calling ``main``
in-process gives the same exit status and the same stdout/stderr text as the subprocess,
without starting an interpreter and importing NumPy and the package again for every
command (about a second of CPU each). Tests whose subject is the process itself (a
SIGKILL, a closed pipe, the umask, the import path of ``python -m``, a size that must be
refused before any memory is taken) keep the subprocess.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd, ignore_warnings=False) -> subprocess.CompletedProcess:
    """``refbilevel ARGS`` in folder ``cwd``, in this process.

    Returns what :func:`subprocess.run` with ``capture_output=True, text=True`` returns
    for ``python -m refbilevel ARGS``: ``returncode``, ``stdout`` and ``stderr``.
    ``ignore_warnings=True`` matches ``PYTHONWARNINGS=ignore`` in the subprocess's
    environment (otherwise the test session's warning filters apply).
    """
    from refbilevel.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(err))
            if ignore_warnings:
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
            try:
                code = main(argv)
            except SystemExit as exc:   # argparse's usage errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([sys.executable, "-m", "refbilevel", *argv], code,
                                       out.getvalue(), err.getvalue())
