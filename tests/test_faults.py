"""Fault injection: every file or resource fault ends in one clear line, and no result is lost.

Each case drives the command line and asserts three things: the exit status, a single
stderr line that names the path (or argument) and the cause, and that the results written
before the fault are byte-identical afterwards (the oracle: SHA-256 of every file, taken
before the fault). The commands run in the test process (``refbilevel.cli.main``, whose
return value is the exit status of ``python -m refbilevel``; warnings ignored as with
``PYTHONWARNINGS=ignore``), except where the subject is the process itself: a run killed
with SIGKILL, a closed output pipe, the umask, and sizes that must be refused before any
memory is taken, which run ``python -m refbilevel`` in a subprocess. Disk-full cases
mount a small tmpfs and therefore need root; elsewhere they are skipped with the reason.
A read-only folder is a read-only remount of such a tmpfs under root, and a mode-0555
folder otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--problem", "logreg", "--solver", "f2sa", "--set", "problem.n=40", "--set",
         "problem.p=4", "--set", "n_inner=2", "--metrics", "value", "--no-progress"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file semantics")


def cli(*args, cwd):
    """``refbilevel ARGS`` in ``cwd``, in this process (see tests/_cli.py)."""
    return run_cli(*args, cwd=cwd, ignore_warnings=True)


def process(*args, cwd, timeout=120, umask=None, **kw):
    """``python -m refbilevel ARGS`` in a subprocess, for faults of the process itself."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "refbilevel", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env,
                          umask=-1 if umask is None else umask, **kw)


def snapshot(folder) -> dict:
    """SHA-256 of every file under ``folder`` (relative path -> digest)."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def one_line(proc, *needles):
    """The single stderr line of a failed command, checked for every needle."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def completed_run(cwd, out="D", *extra):
    proc = cli("run", *SMALL, "--iters", 6, "--out", out, *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return os.path.join(cwd, out)


# ------------------------------------------------------------------ small file systems
def _is_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(path, size="1m"):
    """A tmpfs of ``size`` mounted at ``path`` (root only; skipped otherwise)."""
    if not _is_root() or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (disk-full and read-only faults)")
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path, leave=2048):
    """Fill the file system of ``path`` up to ``leave`` free bytes."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(os.path.join(path, "filler"), "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))


@pytest.mark.parametrize("command", ["run", "export", "plot"])
def test_disk_full_one_line_and_nothing_lost(tmp_path, command):
    with tmpfs(tmp_path / "fs", "512k") as fs:
        d = completed_run(fs)
        other = os.path.join(fs, "e.npz")
        assert cli("export", "--problem", "logreg", "--set", "problem.n=40", "--set",
                   "problem.p=4", "--steps", 2, "--out", other, cwd=fs).returncode == 0
        before = snapshot(fs)
        fill(fs)
        before["filler"] = snapshot(fs)["filler"]
        if command == "run":
            proc = cli("run", *SMALL, "--iters", 6, "--seed", 1, "--out", d, "--overwrite",
                       cwd=fs)
            target = d
        elif command == "export":
            proc = cli("export", "--problem", "logreg", "--set", "problem.n=400", "--steps", 20,
                       "--seed", 3, "--out", other, cwd=fs)
            target = other
        else:
            proc = cli("plot", d, "--out", os.path.join(fs, "p.png"), cwd=fs)
            target = os.path.join(fs, "p.png")
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        one_line(proc, target, "No space left on device")
        after = snapshot(fs)
        assert {k: v for k, v in after.items() if k in before} == before
        assert not [k for k in after if k not in before and not k.startswith(".partial")]


def _killed_run(cwd, out, *extra):
    """A run killed after its first checkpoint: ``out`` holds config.json and checkpoint.npz."""
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "refbilevel", "run", *SMALL, "--iters",
                             "10000000", "--record-every", "50", "--out", str(out), *extra],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = os.path.join(cwd, out, "checkpoint.npz")
    deadline = time.time() + 60
    while not os.path.exists(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(ckpt), "the run never checkpointed"
    return ckpt


def test_disk_full_on_resume(tmp_path):
    with tmpfs(tmp_path / "fs", "1m") as fs:
        _killed_run(fs, "D")
        before = snapshot(fs)
        fill(fs, leave=0)
        before["filler"] = snapshot(fs)["filler"]
        proc = cli("run", "--resume", "--out", "D", "--no-progress", cwd=fs)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]  # after the "resuming ..." line
        assert "D/checkpoint.npz" in last and "No space left on device" in last, proc.stderr
        assert snapshot(fs) == before
        assert json.load(open(os.path.join(fs, "D", "config.json")))["status"] == "running"


def test_read_only_folder(tmp_path):
    if _is_root():
        ctx = tmpfs(tmp_path / "fs", "1m")
    else:
        ctx = contextlib.nullcontext(str(tmp_path / "fs"))
        os.makedirs(tmp_path / "fs")
    with ctx as fs:
        d = completed_run(fs)
        before = snapshot(fs)
        if _is_root():
            subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
            cause = "Read-only file system"
        else:
            os.chmod(d, 0o555)
            os.chmod(fs, 0o555)
            cause = "Permission denied"
        try:
            for argv, target in (
                    (["run", *SMALL, "--iters", 6, "--out", d, "--overwrite"], d),
                    (["export", "--problem", "logreg", "--set", "problem.n=40", "--steps", 2,
                      "--out", os.path.join(fs, "e.npz")], os.path.join(fs, "e.npz")),
                    (["plot", d, "--out", os.path.join(fs, "p.png")], os.path.join(fs, "p.png"))):
                proc = cli(*argv, cwd=tmp_path)
                assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
                one_line(proc, target, cause)
            assert snapshot(fs) == before
        finally:
            if not _is_root():
                os.chmod(fs, 0o755)
                os.chmod(d, 0o755)


# ------------------------------------------------------------------ wrong kinds of path
def test_out_is_a_file(tmp_path):
    (tmp_path / "F").write_bytes(b"mine")
    proc = cli("run", *SMALL, "--iters", 2, "--out", "F", cwd=tmp_path)
    assert proc.returncode == 1
    one_line(proc, "F", "not a folder")
    assert (tmp_path / "F").read_bytes() == b"mine"


@pytest.mark.parametrize("command", ["export", "plot"])
def test_file_out_is_a_folder(tmp_path, command):
    d = completed_run(tmp_path)
    (tmp_path / "X.npz").mkdir()
    (tmp_path / "X.png").mkdir()
    before = snapshot(tmp_path)
    if command == "export":
        proc = cli("export", "--set", "problem.n=40", "--steps", 2, "--out", "X.npz", cwd=tmp_path)
        target = "X.npz"
    else:
        proc = cli("plot", d, "--out", "X.png", cwd=tmp_path)
        target = "X.png"
    assert proc.returncode == 1
    one_line(proc, target, "is a folder")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ results never lost
def test_occupied_folder_refused_and_foreign_files_kept(tmp_path):
    d = completed_run(tmp_path)
    with open(os.path.join(d, "notes.txt"), "w") as fh:
        fh.write("my notes")
    before = snapshot(d)
    proc = cli("run", *SMALL, "--iters", 6, "--seed", 1, "--out", "D", cwd=tmp_path)
    assert proc.returncode == 2
    one_line(proc, "D", "--overwrite")
    assert snapshot(d) == before
    # --overwrite replaces the run's own files once complete, and only those
    proc = cli("run", *SMALL, "--iters", 6, "--seed", 1, "--out", "D", "--overwrite",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(d)) == ["config.json", "final.npz", "history.csv", "notes.txt"]
    assert json.load(open(os.path.join(d, "config.json")))["seed"] == 1
    assert open(os.path.join(d, "notes.txt")).read() == "my notes"


def test_interrupted_overwrite_keeps_earlier_results(tmp_path):
    d = completed_run(tmp_path)
    before = snapshot(d)
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "refbilevel", "run", *SMALL, "--seed", "1",
                             "--iters", "10000000", "--record-every", "50", "--out", "D",
                             "--overwrite"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = os.path.join(d, ".partial", "checkpoint.npz")
    deadline = time.time() + 60
    while not os.path.exists(partial) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(partial), "the replacing run never checkpointed"
    assert {k: v for k, v in snapshot(d).items() if not k.startswith(".partial")} == before


def test_diverged_overwrite_keeps_earlier_results(tmp_path):
    args = ["--problem", "quadratic", "--solver", "minimaxopt", "--iters", 30, "--no-progress"]
    proc = cli("run", *args, "--out", "D", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = snapshot(tmp_path / "D")
    proc = cli("run", *args, "--set", "lr=1e200", "--out", "D", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 1
    assert "earlier results in D are kept" in proc.stderr
    assert {k: v for k, v in snapshot(tmp_path / "D").items()
            if not k.startswith(".partial")} == before


def test_concurrent_runs_into_one_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore")
    first = subprocess.Popen([sys.executable, "-m", "refbilevel", "run", *SMALL, "--seed", "0",
                              "--iters", "10000000", "--record-every", "50", "--out", "D"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        ckpt = tmp_path / "D" / "checkpoint.npz"
        deadline = time.time() + 60
        while not ckpt.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None and ckpt.exists(), "the first run did not start"
        config = (tmp_path / "D" / "config.json").read_bytes()
        for argv in ([*SMALL, "--seed", 1, "--iters", 6], [*SMALL, "--seed", 1, "--overwrite"],
                     ["--resume", "--no-progress"]):
            second = cli("run", *argv, "--out", "D", cwd=tmp_path)
            assert second.returncode == 1, (argv, second.stdout, second.stderr)
            one_line(second, "D", "another run is writing into this folder")
            assert (tmp_path / "D" / "config.json").read_bytes() == config
        assert json.loads(config)["seed"] == 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_resume_finds_default_folder_and_reports_complete(tmp_path):
    proc = cli("run", *SMALL, "--iters", 6, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "logreg-f2sa-numpy-seed0"
    before = snapshot(out)
    proc = cli("run", "--problem", "logreg", "--solver", "f2sa", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "already complete" in proc.stdout and str(os.path.join("runs", out.name)) in proc.stdout
    assert snapshot(out) == before  # status not rewritten, nothing rerun


def test_written_files_honour_the_umask(tmp_path):
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        proc = process("run", *SMALL, "--iters", 2, "--out", f"D{mask:o}", cwd=tmp_path,
                       umask=mask)
        assert proc.returncode == 0, proc.stderr
        for name in ("config.json", "history.csv", "final.npz"):
            assert os.stat(tmp_path / f"D{mask:o}" / name).st_mode & 0o777 == mode, (mask, name)


def test_broken_pipe_keeps_results_and_fails(tmp_path):
    r, w = os.pipe()
    os.close(r)  # nobody reads: the first write fails with EPIPE
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "refbilevel", "run", *SMALL, "--iters", "6",
                           "--out", "D"], cwd=tmp_path, env=env, stdout=w, stderr=w,
                          timeout=120)
    os.close(w)
    assert proc.returncode == 1
    assert json.load(open(tmp_path / "D" / "config.json"))["status"] != "running"
    assert np.load(tmp_path / "D" / "final.npz")["x"].shape == (4,)
    # only stdout gone: the run completes and says so on stderr, in one line
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run([sys.executable, "-m", "refbilevel", "run", *SMALL, "--iters", "6",
                           "--out", "E"], cwd=tmp_path, env=env, stdout=w,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert proc.returncode == 1
    one_line(proc, "output pipe was closed")
    assert json.load(open(tmp_path / "E" / "config.json"))["status"] == "max_iter"


# ------------------------------------------------------------------ sizes that cannot fit
@pytest.mark.parametrize("argv, needle", [
    (["check", "--dim-y", "1000000"], "Quadratic.random(dim_x=3, dim_y=1000000)"),
    (["run", "--set", "problem.n=1000000000", "--out", "D"], "n=1000000000"),
    (["bench", "--problem", "logreg", "--sizes", "1000000000"], "n=1000000000"),
    (["run", "--problem", "multinomial", "--set", "problem.n_classes=1000000000",
      "--out", "D"], "n_classes=1000000000"),
])
def test_sizes_that_cannot_fit(tmp_path, argv, needle):
    proc = process(*argv, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    one_line(proc, needle, "GiB of memory")
    assert not (tmp_path / "D").exists() or not os.listdir(tmp_path / "D")


# ------------------------------------------------------------------ candidates
@pytest.fixture
def exported(tmp_path):
    proc = cli("export", "--problem", "logreg", "--solver", "f2sa", "--set", "problem.n=40",
               "--set", "problem.p=4", "--batch-size", 8, "--steps", 6, "--out", "inst.npz",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "inst.npz") as d:
        ref = {k: d[k] for k in d.files}
    return tmp_path, ref, snapshot(tmp_path)


@pytest.mark.parametrize("case, needle", [
    ("exact", "PASS: all 7 iterations"),
    ("truncated", "'x' has shape (3, 4), the reference (7, 4)"),
    ("one_short", "S + 1 rows: row 0 is the start point"),
    ("one_long", "'x' has shape (8, 4), the reference (7, 4)"),
    ("nan", "'y' holds NaN or infinite values (first at row 4)"),
    ("inf_extra", "'w' holds NaN or infinite values"),
    ("wrong_width", "'x' has shape (7, 3); the reference has (7, 4)"),
])
def test_candidates(exported, case, needle):
    cwd, ref, before = exported
    x, y = ref["ref_x"].copy(), ref["ref_y"].copy()
    cand = {"exact": dict(x=x, y=y), "truncated": dict(x=x[:3], y=y[:3]),
            "one_short": dict(x=x[:-1], y=y[:-1]),
            "one_long": dict(x=np.vstack([x, x[-1:]]), y=np.vstack([y, y[-1:]])),
            "nan": dict(x=x, y=np.where(np.arange(7)[:, None] == 4, np.nan, y)),
            "inf_extra": dict(x=x, y=y, w=np.full((7, 2), np.inf)),
            "wrong_width": dict(x=x[:, :3], y=y)}[case]
    np.savez(cwd / "cand.npz", **cand)
    proc = cli("compare", "--reference", "inst.npz", "--candidate", "cand.npz", cwd=cwd)
    assert proc.returncode == (0 if case == "exact" else 1), (proc.stdout, proc.stderr)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("PASS" if case == "exact" else "FAIL") and needle in last, last
    after = snapshot(cwd)
    assert {k: after[k] for k in before} == before


def test_prefix_is_explicit_and_reported(exported):
    cwd, ref, _ = exported
    np.savez(cwd / "cand.npz", x=ref["ref_x"][:3], y=ref["ref_y"][:3])
    proc = cli("compare", "--reference", "inst.npz", "--candidate", "cand.npz", "--prefix",
               cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: prefix of 3 of 7 rows" in proc.stdout


def test_zero_d_and_bad_points_name_the_array(exported):
    cwd, ref, _ = exported
    np.savez(cwd / "c0.npz", x=np.float64(1.0), y=ref["ref_y"])
    proc = cli("compare", "--reference", "inst.npz", "--candidate", "c0.npz", cwd=cwd)
    assert proc.returncode == 2
    one_line(proc, "c0.npz", "'x' is 0-d")
    np.savez(cwd / "pw.npz", points_x=np.zeros((2, 3)), points_y=np.zeros((2, 4)), f=np.zeros(2))
    proc = cli("compare", "--reference", "inst.npz", "--candidate", "pw.npz", cwd=cwd)
    assert proc.returncode == 2
    one_line(proc, "points_x", "(points, 4)", "(2, 3)")
    np.savez(cwd / "pn.npz", points_x=np.full((2, 4), np.nan), points_y=np.zeros((2, 4)),
             f=np.zeros(2))
    proc = cli("compare", "--reference", "inst.npz", "--candidate", "pn.npz", cwd=cwd)
    assert proc.returncode == 1
    assert "FAIL: candidate 'points_x' holds NaN" in proc.stdout


def test_compare_names_differing_settings(exported):
    cwd, ref, _ = exported
    # a candidate that carries the description of another export (different lr_y)
    proc = cli("export", "--problem", "logreg", "--solver", "f2sa", "--set", "problem.n=40",
               "--set", "problem.p=4", "--set", "lr_y=0.5", "--batch-size", 8, "--steps", 6,
               "--out", "other.npz", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    with np.load(cwd / "other.npz") as d:
        np.savez(cwd / "cand.npz", x=d["ref_x"], y=d["ref_y"], description=d["description"])
    proc = cli("compare", "--reference", "inst.npz", "--candidate", "cand.npz", cwd=cwd)
    assert proc.returncode == 1
    assert "different settings" in proc.stdout
    lr_ref = json.loads(str(ref["description"]))["solver"]["hyperparameters"]["lr_y"]
    assert f"hyperparameters.lr_y: reference {lr_ref!r}, candidate 0.5" in proc.stdout


def test_run_folder_touches_only_its_own_files(tmp_path):
    from refbilevel.results import CONFIG, FINAL, HISTORY, PARTIAL, ResultsError, RunFolder

    out = tmp_path / "D"
    out.mkdir()
    for name, data in ((CONFIG, b"{}"), (HISTORY, b"old"), (FINAL, b"old"), ("mine.txt", b"m")):
        (out / name).write_bytes(data)
    (out / PARTIAL).mkdir()
    (out / PARTIAL / "keep.txt").write_bytes(b"k")  # a user's file in an abandoned replacement
    (out / PARTIAL / HISTORY).write_bytes(b"abandoned")
    with pytest.raises(ResultsError, match="--overwrite"):
        with RunFolder(out):
            pass
    with RunFolder(out, overwrite=True) as folder:
        assert folder.workdir == os.path.join(out, PARTIAL)
        assert sorted(os.listdir(folder.workdir)) == ["keep.txt"]  # only ours was removed
        for name in (CONFIG, HISTORY, FINAL):
            with open(folder.path(name), "wb") as fh:
                fh.write(b"new")
        assert (out / HISTORY).read_bytes() == b"old"  # nothing replaced before the commit
        folder.commit()
    assert {n: (out / n).read_bytes() for n in (CONFIG, HISTORY, FINAL, "mine.txt")} == \
        {CONFIG: b"new", HISTORY: b"new", FINAL: b"new", "mine.txt": b"m"}
    assert (out / PARTIAL / "keep.txt").read_bytes() == b"k"
