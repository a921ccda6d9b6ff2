"""``refbilevel check``: registered problems, a user's ``module:callable``, the certificate and
its exit status. Oracles: the closed-form hypergradient recomputed in NumPy from the same
instance, and the certificate computed in-process.

The commands run in the test process (tests/_cli.py), except the user's ``module:callable``,
whose module is found on the import path of ``python -m refbilevel`` started in its folder:
that case runs the real command in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
from _cli import run_cli

from refbilevel.problems.quadratic import Quadratic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd):
    """``refbilevel ARGS`` in ``cwd``, in this process."""
    return run_cli(*args, cwd=cwd)


def process(*args, cwd, timeout=300):
    """``python -m refbilevel ARGS`` in a subprocess started in ``cwd``."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "refbilevel", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _printed_vector(stdout):
    text = re.search(r"exact hypergradient at x = [^:]*: \[([^\]]*)\]", stdout).group(1)
    return np.array([float(t) for t in text.split()])


def test_registered_problem_with_settings(tmp_path):
    proc = cli("check", "--problem", "quadratic", "--set", "dim_x=2", "--set", "problem.dim_y=4",
               "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    q = Quadratic.random(2, 4, seed=3)
    H, B, c, A, a, R, r = (np.asarray(getattr(q, k)) for k in "HBcAaRr")
    x = np.zeros(2)
    y = np.linalg.solve(H, B @ x + c)
    expected = R @ x + r + B.T @ np.linalg.solve(H, A @ y + a)
    np.testing.assert_allclose(_printed_vector(proc.stdout), expected, rtol=1e-11)
    assert "certificate of the inner solution there: certified" in proc.stdout
    assert "certificate of inner_solution: certified" in proc.stdout


def test_user_callable(tmp_path):
    (tmp_path / "myproblems.py").write_text(
        "from refbilevel.problems import LogRegHPO\n"
        "def small(seed=0, n=40):\n"
        "    return LogRegHPO.synthetic(n_samples=n, n_features=3, seed=seed)\n")
    proc = process("check", "--problem", "myproblems:small", "--set", "seed=2", "--set", "n=30",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("myproblems:small on numpy")
    assert "certificate of the inner solution there: certified" in proc.stdout
    assert "hypergradient " in proc.stdout  # the finite-difference row of the table


def test_uncertified_relu_exits_1(tmp_path):
    """A ReLU layer-decay instance stalls on a kink at init_x: reported, exit status 1."""
    proc = cli("check", "--problem", "layer_decay", "--set", "activation='relu'",
               "--set", "n_train=60", "--set", "hidden=6", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "certificate of the inner solution there: not stationary" in proc.stdout
    assert "not certified" in proc.stderr


def test_bad_targets_are_one_line_errors(tmp_path):
    for target, needle in (("no_such_module_xyz:make", "No module named"),
                           ("os:no_such_attr", "has no attribute"),
                           ("os:getcwd", "not a problem"),
                           ("nope", "valid problems")):
        proc = cli("check", "--problem", target, cwd=tmp_path)
        assert proc.returncode == 2, (target, proc.stdout, proc.stderr)
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
