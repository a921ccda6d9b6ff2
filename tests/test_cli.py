"""End-to-end tests of the ``refbilevel`` command line, each in a temporary directory.

The commands run in the test process through ``refbilevel.cli.main`` (tests/_cli.py: the
exit status and the stdout/stderr text of ``python -m refbilevel``, without an interpreter
start per command); the run killed with SIGKILL is a real ``python -m refbilevel`` process
(tests/test_faults.py drives the other faults of the process itself). Oracles: the same run
in-process through the Python API (identical arrays), an independent NumPy
re-implementation of F2SA on an exported instance, data sizes computed by hand, and the
PNG file signature. CLI-level tests are NumPy only: the backend matrix is covered by the
solver and problem tests; here the subject is the command line itself.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _cli import run_cli

from refbilevel.registry import DEFAULT_RUN, PROBLEMS, SOLVERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd):
    """``refbilevel ARGS`` in ``cwd``, in this process."""
    return run_cli(*args, cwd=cwd)


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """``refbilevel run`` with no arguments, once for the module."""
    cwd = tmp_path_factory.mktemp("default")
    proc = cli("run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    out = cwd / "runs" / "logreg-minimaxopt-numpy-seed0"
    return cwd, out, proc


# --------------------------------------------------------------------------------- run
def test_run_default_matches_python_api(default_run):
    from refbilevel import run as run_module
    from refbilevel.registry import build_problem, build_solver

    cwd, out, proc = default_run
    assert sorted(os.listdir(out)) == ["config.json", "final.npz", "history.csv"]
    config = json.loads((out / "config.json").read_text())
    for key in ("problem", "solver", "hyperparameters", "seed", "backend", "dtype",
                "refbilevel", "numpy", "cupy", "device", "status"):
        assert key in config
    assert (config["problem"], config["solver"], config["backend"]) == ("logreg", "minimaxopt", "numpy")
    assert config["status"] == "max_iter"
    # oracle: the same job through the Python API gives the same final arrays
    res = run_module.run(build_problem("logreg"),
                         build_solver("minimaxopt", DEFAULT_RUN["hyperparameters"]),
                         n_iter=DEFAULT_RUN["iters"], record_every=DEFAULT_RUN["record_every"],
                         metrics=("value", "inner_residual"))
    final = np.load(out / "final.npz")
    np.testing.assert_array_equal(final["x"], res.x)
    np.testing.assert_array_equal(final["y"], res.y)
    np.testing.assert_array_equal(final["z"], res.state.z)
    hist = read_csv(out / "history.csv")
    np.testing.assert_array_equal(hist["iteration"], res.history["iteration"])
    np.testing.assert_array_equal(hist["value"], res.history["value"])
    np.testing.assert_array_equal(hist["inner_residual"], res.history["inner_residual"])
    assert hist["hypergradient_norm"][-1] < 0.5 * hist["hypergradient_norm"][0]
    # summary table and a progress display
    for label in ("final outer value", "exact hypergradient norm", "oracle calls",
                  "wall time", "status"):
        assert label in proc.stdout
    assert "it/s" in proc.stderr or "it]" in proc.stderr


def test_run_with_options(tmp_path):
    proc = cli("run", "--problem", "quadratic", "--solver", "f2sa", "--iters", 30,
               "--set", "n_inner=3", "--set", "lr_y=0.05", "--set", "problem.dim_y=6",
               "--seed", 3, "--dtype", "float32", "--record-every", 10, "--no-progress",
               "--out", "res", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "res" / "config.json").read_text())
    assert config["hyperparameters"]["n_inner"] == 3
    assert config["hyperparameters"]["lr_y"] == 0.05
    assert config["problem_params"]["dim_y"] == 6
    assert (config["seed"], config["dtype"], config["iters"]) == (3, "float32", 30)
    final = np.load(tmp_path / "res" / "final.npz")
    assert final["x"].dtype == np.float32 and final["y"].shape == (6,)
    hist = read_csv(tmp_path / "res" / "history.csv")
    np.testing.assert_array_equal(hist["iteration"], [0, 10, 20, 30])
    np.testing.assert_array_equal(hist["calls_grad_f"], [0, 40, 80, 120])  # (T+1) per step


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_resume_after_sigkill_gives_identical_result(tmp_path):
    args = ["run", "--problem", "logreg", "--solver", "f2sa", "--iters", 4000,
            "--set", "problem.n=200", "--set", "problem.p=20", "--set", "n_inner=2",
            "--set", "batch_size_outer=16", "--set", "batch_size_inner=16",
            "--metrics", "value", "--record-every", 5, "--checkpoint-every", 5,
            "--no-progress"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "refbilevel", *map(str, args), "--out", "a"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "a" / "checkpoint.npz"
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.02)  # the first checkpoint exists: kill mid-way (4000 steps take seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.exists() and not (tmp_path / "a" / "final.npz").exists(), "not killed mid-way"
    resumed = cli("run", "--out", "a", "--resume", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    whole = cli(*args, "--out", "b", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    fa, fb = np.load(tmp_path / "a" / "final.npz"), np.load(tmp_path / "b" / "final.npz")
    assert sorted(fa.files) == sorted(fb.files)
    for k in fa.files:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    ha, hb = read_csv(tmp_path / "a" / "history.csv"), read_csv(tmp_path / "b" / "history.csv")
    for k in ha:
        if k != "time":
            np.testing.assert_array_equal(ha[k], hb[k], err_msg=k)


# ----------------------------------------------------------------- export and compare
def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _logistic_grad(w, A, b):
    """Gradient of mean_i log(1 + exp(-b_i a_i.w)) (independent of refbilevel.models)."""
    return A.T @ (-b * _sigmoid(-b * (A @ w))) / A.shape[0]


def f2sa_numpy(path):
    """F2SA (benchopt or constant schedule) on an exported binary logistic HPO instance."""
    d = np.load(path)
    desc = json.loads(str(d["description"]))
    h = desc["solver"]["hyperparameters"]
    assert desc["problem"]["describe"]["parametrization"] == "exp"
    assert desc["problem"]["describe"]["reduction"] == "sum"
    T, lr_y, xi, lam, delta = h["n_inner"], h["lr_y"], h["xi"], h["lam0"], h["delta"]
    lr_z = lr_y if h["lr_z"] is None else h["lr_z"]
    At, bt, Av, bv = d["A_train"], d["T_train"], d["A_val"], d["T_val"]
    x, y = d["x0"].copy(), d["y0"].copy()
    z = y.copy()
    xs, ys, zs = [x], [y], [z]
    schedule = h["schedule"]          # the run's settings: the registry's for logreg
    assert schedule in ("benchopt", "constant") and h["exponents"] is None
    for k in range(desc["steps"]):
        if schedule == "benchopt":
            alpha, gamma = lr_y / (k + 1) ** (5 / 7), lr_z / (k + 1) ** (4 / 7)
            eta = xi * lr_y / (k + 1) ** (4 / 7)
        else:
            alpha, gamma, eta = lr_y, lr_z, xi * lr_y
        bo, bi = d["batch_outer"][k], d["batch_inner"][k]

        def gy_g(x, w, rows):
            return _logistic_grad(w, At[rows], bt[rows]) + np.exp(x) * w

        for t in range(T):
            dz = gy_g(x, z, bi[2 * t])
            dy = _logistic_grad(y, Av[bo[t]], bv[bo[t]]) + lam * gy_g(x, y, bi[2 * t + 1])
            z, y = z - gamma * dz, y - alpha * dy
        dx = lam * (0.5 * np.exp(x) * y * y - 0.5 * np.exp(x) * z * z)  # grad_x f = 0
        x = x - eta * dx
        lam = lam + (delta / (k + 1) ** (1 / 7) if schedule == "benchopt" else delta)
        xs.append(x), ys.append(y), zs.append(z)
    return {"x": np.stack(xs), "y": np.stack(ys), "z": np.stack(zs)}


def test_export_independent_f2sa_compare(tmp_path):
    proc = cli("export", "--problem", "logreg", "--solver", "f2sa", "--set", "problem.n=60",
               "--set", "problem.p=6", "--set", "n_inner=3", "--set", "lr_y=0.05",
               "--steps", 8, "--batch-size", 8, "--seed", 2, "--out", "inst.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    d = np.load(tmp_path / "inst.npz")
    assert d["batch_outer"].shape == (8, 4, 8) and d["batch_inner"].shape == (8, 8, 8)
    assert json.loads((tmp_path / "inst.json").read_text())["steps"] == 8
    cand = f2sa_numpy(tmp_path / "inst.npz")
    assert np.linalg.norm(cand["x"][-1] - cand["x"][0]) > 1e-6  # x actually moved
    np.savez(tmp_path / "cand.npz", **cand)
    ok = cli("compare", "--reference", "inst.npz", "--candidate", "cand.npz", "--rtol", 1e-9,
             cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout
    # a perturbed candidate fails at the perturbed iteration and names the variable
    bad = {k: v.copy() for k, v in cand.items()}
    bad["z"][5:] *= 1 + 1e-4
    bad["x"][6:] += 1e-3
    np.savez(tmp_path / "bad.npz", **bad)
    fail = cli("compare", "--reference", "inst.npz", "--candidate", "bad.npz", cwd=tmp_path)
    assert fail.returncode == 1
    assert "first iteration beyond tolerance: 5" in fail.stdout
    assert "departed first: z" in fail.stdout


def test_compare_api_and_reference_dir(default_run, tmp_path):
    from refbilevel.verify import compare, trajectory

    cwd, out, _ = default_run
    ref = trajectory("logreg", "minimaxopt", 4, hyperparameters=DEFAULT_RUN["hyperparameters"])
    cand = {"x": ref["x"].copy(), "y": ref["y"].copy()}
    cand["y"][3] += 1.0
    rep = compare(ref, cand)
    assert (rep.passed, rep.first_failure, rep.departed) == (False, 3, "y")
    assert rep.deviation.shape == (5, 2) and rep.deviation[3, 1] > 0 and rep.deviation[2].max() == 0
    np.savez(tmp_path / "c.npz", x=ref["x"], y=ref["y"], z=ref["z"])
    proc = cli("compare", "--reference", out, "--candidate", tmp_path / "c.npz", cwd=cwd)
    assert proc.returncode == 1 and "wrong number of rows" in proc.stdout  # 5 of 2001 rows
    proc = cli("compare", "--reference", out, "--candidate", tmp_path / "c.npz", "--prefix",
               cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: prefix of 5 of 2001 rows" in proc.stdout


def test_compare_oracle_values(tmp_path):
    from refbilevel.registry import build_problem

    p = build_problem("quadratic", params={"dim_x": 3, "dim_y": 4})
    rng = np.random.default_rng(0)
    px, py = rng.standard_normal((3, 3)), rng.standard_normal((3, 4))
    hg = np.stack([p.hypergradient(x) for x in px])
    gy = np.stack([p.grad_g(x, y)[1] for x, y in zip(px, py)])
    gy[2] += 1e-3
    np.savez(tmp_path / "o.npz", points_x=px, points_y=py, hypergradient=hg, grad_g_y=gy)
    proc = cli("compare", "--solver", "implicit", "--problem", "quadratic",
               "--set", "problem.dim_x=3", "--set", "problem.dim_y=4", "--candidate", "o.npz",
               cwd=tmp_path)
    assert proc.returncode == 1
    assert "first point beyond tolerance: 2" in proc.stdout and "grad_g_y" in proc.stdout


# ------------------------------------------------------------------- plot, bench, list
def test_plot_writes_png(default_run, tmp_path):
    cwd, out, _ = default_run
    other = tmp_path / "f2sa"
    assert cli("run", "--solver", "f2sa", "--iters", 20, "--no-progress", "--out", other,
               "--metrics", "value,hypergradient_norm", "--set", "n_inner=2",
               cwd=tmp_path).returncode == 0
    png = tmp_path / "p.png"
    proc = cli("plot", out, other, "--x", "oracle_calls", "--out", png, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    from refbilevel.plotting import plot_runs

    for x in ("iteration", "time"):  # the Python API, headless
        path = plot_runs([out], x=x, y="value", out=tmp_path / f"{x}.png")
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bench_prints_table(tmp_path):
    proc = cli("bench", "--steps", 2, "--repeats", 2, "--blas-threads", 1, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "time/step" in lines[0] and "copy GB/s" in lines[0] and "BLAS threads" in lines[0]
    row = lines[2].split()
    assert row[1] == "numpy" and row[6] == "1.00x"
    assert row[3] == "1"                       # the thread count asked for, as the BLAS reports
    # oracle: MinimaxOPT reads A_val, b_val (f) and A_train, b_train (stacked g) once:
    # 2 * (500 * 100 + 500) float64 = 0.808 MB
    assert row[7] == "0.808"


def test_bench_fixes_and_states_the_blas_threads():
    # the count during the run is the one asked for (threadpoolctl reads it back from the
    # library), and the process's own setting is back afterwards
    from threadpoolctl import threadpool_info

    from refbilevel._backend import blas_threads
    from refbilevel.bench import bench

    from threadpoolctl import threadpool_limits

    def reported():
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    before = blas_threads()
    assert before == reported()
    for n in (1, 2):
        with threadpool_limits(limits=n, user_api="blas"):
            expected = reported()              # n, unless the library caps it lower
        (row,) = bench(backends=("numpy",), n_steps=1, repeats=1, warmup=0, blas_threads=n)
        assert row["blas_threads"] == expected and (n == 2 or expected == 1)
        assert blas_threads() == before
    with pytest.raises(ValueError, match="blas_threads"):
        bench(backends=("numpy",), blas_threads=0)


def test_list_names_everything(tmp_path):
    proc = cli("list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in list(SOLVERS) + [n for n, s in PROBLEMS.items() if s.available()]:
        assert name in proc.stdout
    assert "backends available here: numpy" in proc.stdout
    assert "lr=0.1" in proc.stdout and "breast_cancer" in proc.stdout


def test_check_still_works(tmp_path):
    proc = cli("check", cwd=tmp_path)
    assert proc.returncode == 0 and "exact hypergradient" in proc.stdout


# ---------------------------------------------------------------------- error paths
ERRORS = [
    (["run", "--solver", "nope"], "valid solvers: minimaxopt"),
    (["run", "--problem", "nope"], "valid problems: logreg"),
    (["run", "--backend", "nope"], "backend must be one of"),
    (["run", "--set", "nope=1"], "valid keys: lr,"),
    (["run", "--set", "lr=-1"], "lr must be > 0"),
    (["run", "--set", "lr=abc"], "lr must be of type float"),
    (["run", "--set", "problem.nope=1"], "valid keys: problem.n"),
    (["run", "--iters", "-5"], "--iters"),
    (["run", "--iters", "x"], "--iters"),
    (["run", "--solver", "fosl"], "needs a minimax-bilevel problem"),
    (["run", "--data", "digits"], "accepts the datasets breast_cancer"),
    (["run", "--resume", "--out", "missing"], "results folder not found"),
    (["export", "--out", "e.npz", "--solver", "implicit", "--batch-size", "4"], "takes no minibatches"),
    (["compare", "--candidate", "missing.npz", "--solver", "f2sa"], "candidate file not found"),
    (["compare", "--candidate", "junk.npz", "--solver", "f2sa"], "not a readable .npz"),
    (["compare", "--candidate", "junk.npz"], "exactly one of"),
    (["plot", "missing", "--out", "p.png"], "results folder not found"),
    (["plot", "corrupt", "--out", "p.png"], "corrupt config"),
    (["bench", "--backends", "numpy,nope"], "backend must be one of"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, needle", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_user_errors_one_line_exit_2(tmp_path, argv, needle):
    (tmp_path / "junk.npz").write_text("not a zip file")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{ not json")
    proc = cli(*argv, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_cupy_without_gpu_is_a_user_error(tmp_path):
    from refbilevel._backend import _cuda_available

    if _cuda_available():
        pytest.skip("a GPU is visible: cupy is a valid backend here")
    proc = cli("run", "--backend", "cupy", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "GPU" in proc.stderr


# ------------------------------------------------------- usage errors versus bugs
def test_main_maps_refused_input_to_exit_2_and_keeps_bugs_traceback(tmp_path, monkeypatch, capsys):
    """A refused value is one line and exit 2; an exception raised inside a solver step is a
    bug of the program and keeps its traceback."""
    from refbilevel import cli as cli_mod
    from refbilevel.solvers.minimaxopt import MinimaxOPT

    out = str(tmp_path / "r")
    code = cli_mod.main(["run", "--problem", "quadratic", "--solver", "minimaxopt",
                         "--set", "lr=-1", "--iters", "2", "--out", out, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "lr must be > 0" in err and len(err.strip().splitlines()) == 1

    def broken_step(self, oracle, state):
        raise TypeError("unsupported operand type(s) inside a step")

    monkeypatch.setattr(MinimaxOPT, "step", broken_step)
    with pytest.raises(TypeError, match="inside a step"):
        cli_mod.main(["run", "--problem", "quadratic", "--solver", "minimaxopt", "--iters", "2",
                      "--out", str(tmp_path / "s"), "--no-progress"])


@pytest.mark.parametrize("backend", ["jax", "torch", "dask"])
def test_run_on_other_backends_matches_numpy(tmp_path, backend):
    # oracle: the NumPy run of the same configuration (same data, seed and schedule)
    pytest.importorskip({"dask": "dask.array"}.get(backend, backend),
                        reason=f"{backend} is not installed")
    finals = {}
    for b in ("numpy", backend):
        proc = cli("run", "--problem", "quadratic", "--solver", "f2sa", "--iters", 5,
                   "--backend", b, "--no-progress", "--out", b, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        finals[b] = np.load(tmp_path / b / "final.npz")
        assert json.loads((tmp_path / b / "config.json").read_text())["backend"] == b
    for key in ("x", "y"):
        np.testing.assert_allclose(finals[backend][key], finals["numpy"][key],
                                   rtol=1e-12, atol=1e-15)


def test_export_on_jax_matches_numpy(tmp_path):
    pytest.importorskip("jax", reason="JAX is not installed")
    out = {}
    for b in ("numpy", "jax"):
        proc = cli("export", "--problem", "logreg", "--solver", "f2sa", "--set", "problem.n=60",
                   "--set", "problem.p=6", "--steps", 3, "--batch-size", 8, "--backend", b,
                   "--out", f"{b}.npz", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        out[b] = np.load(tmp_path / f"{b}.npz")
    np.testing.assert_array_equal(out["jax"]["batch_inner"], out["numpy"]["batch_inner"])
    np.testing.assert_allclose(out["jax"]["ref_x"], out["numpy"]["ref_x"], rtol=1e-12,
                               atol=1e-15)


def test_bench_backend_swap_table(tmp_path):
    pytest.importorskip("jax", reason="JAX is not installed")
    proc = cli("bench", "--backends", "numpy,jax", "--steps", 2, "--repeats", 1,
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[2:4]]
    assert [r[1] for r in rows] == ["numpy", "jax"]
    assert rows[0][6] == "1.00x" and rows[1][6].endswith("x")
    assert rows[1][3] == "-"  # NumPy's BLAS threads: stated on the NumPy row only
    assert rows[1][7] == "-"  # no bandwidth columns for an immutable-array library
