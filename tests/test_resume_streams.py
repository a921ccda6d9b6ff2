"""``refbilevel run --resume`` after SIGKILL, for each way a step draws its batches.

A ``python -m refbilevel run --checkpoint-every`` subprocess configured for more
iterations than it will ever reach is killed (SIGKILL, no clean-up) once it has
checkpointed, so the kill always lands mid-run, and is resumed with
``--resume --iters N`` for ``N`` a few steps past its checkpoint (no trajectory depends
on the iteration target). The resumed results must equal, bit for bit, an uninterrupted
run of the resumed configuration. The resumed run is the command line's ``main`` in this
process (nothing of the killed process survives but its files). The oracle is the
uninterrupted run, made through the Python API from the ``config.json`` the resumed run
completed (:func:`refbilevel.config.build_from_config` and :func:`refbilevel.run.run`,
what the command line calls), compared on the final arrays, every history column but
the wall time, and the oracle counts.

One case per stream mode of :mod:`refbilevel.sampling`: i.i.d. minibatches (with
replacement), per-epoch permutations (the resumed run starts mid-epoch with an empty
permutation cache), and sampled blocks of a minimax-bilevel problem. Each
case is one short subprocess on a small problem.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: problem of the cases: small, so that a step takes well under a millisecond
LOGREG = ("--problem", "logreg", "--set", "problem.n=200", "--set", "problem.p=20")
CASES = {
    # i.i.d. draws with replacement; F2SA draws 3T + 3 batches per step
    "iid": (*LOGREG, "--solver", "f2sa", "--set", "n_inner=2", "--set", "sampling=iid",
            "--set", "batch_size_outer=16", "--set", "batch_size_inner=16"),
    # per-epoch permutations: 100 rows in batches of 16, a new epoch every 6 batches;
    # heavy-ball buffers and the cosine schedule are in the checkpointed state
    "epoch": (*LOGREG, "--solver", "minimaxopt_stochastic", "--set", "sampling=epoch",
              "--set", "batch_size_outer=16", "--set", "batch_size_inner=16"),
    # two of the blocks sampled per step, and minibatches within them
    "blocks": ("--problem", "multitask_auc", "--solver", "fosl", "--set", "n_sampled=2",
               "--set", "batch_size_outer=8", "--set", "batch_size_inner=8"),
}
#: steps the resumed run makes past the checkpoint it starts from
EXTRA = 12


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PYTHONWARNINGS="ignore")


def _killed_after_checkpoint(cwd, args) -> int:
    """Start ``refbilevel run ARGS`` (a run that does not end by itself), SIGKILL it once it
    has checkpointed, and return the iteration of its checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "refbilevel", "run", *args], cwd=cwd,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = cwd / "a" / "checkpoint.npz"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert ckpt.exists(), "the run never checkpointed"
    with np.load(ckpt) as data:
        return int(json.loads(str(data["meta"]))["state"]["__dataclass__"]["iteration"])


def _read_history(path):
    with open(path) as fh:
        header = fh.readline().strip().split(",")
        rows = np.loadtxt(fh, delimiter=",", ndmin=2)
    return {k: rows[:, j] for j, k in enumerate(header)}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("mode", sorted(CASES))
def test_resume_after_sigkill_is_bitwise(tmp_path, capsys, mode):
    from refbilevel.cli import main
    from refbilevel.config import build_from_config
    from refbilevel.results import final_arrays
    from refbilevel.run import run

    args = (*CASES[mode], "--iters", 10**9, "--metrics", "value", "--record-every", 3,
            "--checkpoint-every", 4, "--no-progress", "--out", "a")
    k = _killed_after_checkpoint(tmp_path, [str(a) for a in args])
    assert k > 0
    iters = k + EXTRA
    # the resumed run, in this process (what ``python -m refbilevel`` runs)
    status = main(["run", "--out", str(tmp_path / "a"), "--resume", "--iters", str(iters),
                   "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "resuming the run" in err and "restarting at iteration 0" not in err

    # oracle: the uninterrupted run of the configuration the resumed run completed
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["status"] == "max_iter"
    problem, solver, n_iter = build_from_config(dict(config))
    assert n_iter == iters
    whole = run(problem, solver, n_iter=n_iter, seed=config["seed"],
                record_every=config["record_every"], metrics=tuple(config["metrics"]))
    assert config["calls"] == whole.calls.as_dict()
    final = np.load(tmp_path / "a" / "final.npz")
    expected = final_arrays(whole.state)
    assert {"x", "y"} <= set(final.files) and sorted(final.files) == sorted(expected)
    for key in final.files:
        np.testing.assert_array_equal(final[key], expected[key], err_msg=key)
    history = _read_history(tmp_path / "a" / "history.csv")
    assert set(history) - {"time"} == set(whole.history) - {"time"}
    assert history["iteration"][-1] == iters
    for key in history:
        if key != "time":
            np.testing.assert_array_equal(history[key], np.asarray(whole.history[key],
                                                                    dtype=np.float64),
                                          err_msg=key)
