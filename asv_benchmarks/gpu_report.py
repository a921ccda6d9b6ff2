"""Standalone GPU report: every figure of the backend-swap targets in one run.

Usage (GPU machine; asv is not needed)::

    python asv_benchmarks/gpu_report.py --out OUTDIR [--budget-s 480]
    python asv_benchmarks/gpu_report.py --render OUTDIR/report.json   # markdown + plot again

Sections (each is timed, and skipped once the time budget is spent; results are written
to ``report.json`` after every section, so a cut-off run still returns its numbers):

``env``        versions, device, date;
``copy``       measured copy bandwidth (bytes read + written per second) on cupy, torch
               and numpy;
``bandwidth``  LogRegHPO full-batch gradient at 200,000 x 2,000 and 1,000,000 x 100
               (float32/float64) on cupy: time, achieved bandwidth counting the training
               matrix once (the bytes that must be read) and as implemented (twice: A @ y
               then A.T @ G), and a profile by parts (each matrix product alone);
``steps``      each solver's step at the large sizes on cupy: step time, the sum of the
               standalone times of its oracle calls, and the bytes floor;
``peers``      PyTorch eager, jax.jit, refbilevel on cupy and on torch tensors: one F2SA
               outer step (T = 5) and one MinimaxOPT step at every size and dtype, checked
               against refbilevel's result;
``small``      n = 2,000, d = 50: µs per step on cupy and numpy, and CUDA kernels per step
               (counted with the PyTorch profiler, which records every kernel of the process);
``memory``     peak extra memory of one step and state memory: MemCS vs FOSL over the
               number of blocks, ITD over K, first-order solvers;
``sweep``      MinimaxOPT and F2SA step time vs (n, d) on numpy and cupy (the plot);
``numpy``      step vs sum of oracles on numpy at the tall size;
``experiments`` what the proposed changes would buy (``report_experiments.py``);
``asvsmoke``   every asv benchmark class once on this backend at the small size;
``cpu_peers``  CPU mode (``--backend numpy``): refbilevel on NumPy against hand-written
               NumPy, ``jax.jit`` and PyTorch steps of MinimaxOPT, F2SA, F2SA-Adam, AID-CG
               and ITD, one thread, interleaved (``benchmarks/cpu_peers.py``).

CPU mode: ``python asv_benchmarks/gpu_report.py --backend numpy --sections env,cpu_peers``.
The BLAS runs one thread for the whole report in CPU mode (threadpoolctl; PyTorch and
XLA likewise), and ``env`` records the thread pools.

Tables and plot: ``report_render.py``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from benchmarks import common, measure, peers  # noqa: E402
from refbilevel import _backend as B  # noqa: E402
from report_render import plot, render_markdown  # noqa: E402

LARGE = [(200_000, 2_000), (1_000_000, 100)]
DTYPES = ["float32", "float64"]
STEP_SOLVERS = ["minimaxopt", "f2sa", "f2sa_adam", "aid_cg", "itd", "fosl", "memcs"]
PEER_SIZES = [(2_000, 50), (20_000, 500), (200_000, 2_000), (1_000_000, 100)]
SWEEP_GRID = [(n, d) for d in (50, 500) for n in (2_000, 20_000, 200_000)] + [(1_000_000, 50),
                                                                            (200_000, 2_000)]
NUMPY_LARGE = (1_000_000, 100)
MEMORY_BLOCKS = (8, 64, 512)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def itemsize(dtype):
    return 4 if dtype == "float32" else 8


def free_gpu():
    gc.collect()
    common.make_problem.cache_clear()
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:
        pass


def problem_at(kind, backend, n, d, dtype):
    return common.make_problem(kind, backend, (n, d), dtype)


def data_bytes(problem):
    """(train bytes, val bytes) of a LogRegHPO / MultiTaskAUC problem."""
    isz = 4 if B.dtype_name(problem.dtype) == "float32" else 8

    def nb(a):
        n = 1
        for s in a.shape:
            n *= int(s)
        return n * isz

    return nb(problem.A_train), nb(problem.A_val)


#: data each oracle must read at least once: "train", "val" or None (reads no data)
ORACLE_DATA = {"f": "val", "grad_f": "val", "grad_f_y": "val", "grad_f_x": "val",
               "g": "train", "grad_g": "train", "grad_g_y": "train", "grad_g_many": "train",
               "grad_g_y_many": "train", "hvp_g": "train", "cross_g": "train",
               "grad_g_x": "train", "grad_g_x_many": "train"}
#: LogRegHPO oracles that read no data (the x-gradients are closed forms in y)
LOGREG_NO_DATA = {"grad_f_x", "grad_g_x", "grad_g_x_many", "cross_g"}


def floor_bytes(problem, calls):
    """Bytes a step must read: each oracle call's data once (stacked points: once)."""
    tr, va = data_bytes(problem)
    total = 0
    logreg = not hasattr(problem, "dim_z")
    for name, _, _ in calls:
        if logreg and name in LOGREG_NO_DATA:
            continue
        kind = ORACLE_DATA.get(name)
        total += tr if kind == "train" else va if kind == "val" else 0
    return total


# ====================================================================== sections
def sec_env(R, args):
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "numpy": np.__version__,
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    import refbilevel

    info["refbilevel"] = getattr(refbilevel, "__version__", "?")
    for mod in ("cupy", "torch", "jax", "array_api_compat"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:
            info[mod] = f"unavailable ({type(exc).__name__})"
    if args.backend == "cupy":
        xp = common.get_xp("cupy")
        info["device"] = B.device_name(xp)
        try:
            q = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem"
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", f"--query-gpu={q}", "--format=csv"], capture_output=True,
                text=True, timeout=20).stdout.strip()
        except Exception as exc:
            info["nvidia_smi"] = repr(exc)
    if args.backend == "numpy":
        from benchmarks.cpu_peers import cpu_model, thread_report

        info["device"] = cpu_model()
        info["threads"] = thread_report()
    R["env"] = info


def sec_copy(R, args):
    out = {}
    out["numpy"] = measure.copy_bandwidth(common.get_xp("numpy"), nbytes=1 << 30)
    if args.backend == "cupy":
        out["cupy"] = measure.copy_bandwidth(common.get_xp("cupy"), nbytes=1 << 30)
        out["cupy_4GiB"] = measure.copy_bandwidth(common.get_xp("cupy"), nbytes=1 << 32)
        out["cupy_asarray_copy"] = measure.copy_bandwidth(common.get_xp("cupy"), nbytes=1 << 30,
                                                          method="asarray")
        try:
            import torch

            xt = common.get_xp("torch")
            out["torch"] = measure.copy_bandwidth(xt, nbytes=1 << 30, device=torch.device("cuda"))
        except Exception as exc:
            out["torch"] = f"failed: {exc!r}"
    R["copy_bw"] = out
    free_gpu()


def _bw(R, backend):
    bw = R.get("copy_bw", {}).get(backend)
    return bw if isinstance(bw, float) else None


def sec_bandwidth(R, args):
    xp = common.get_xp(args.backend)
    bw = _bw(R, args.backend)
    rows = []
    for (n, d) in LARGE:
        for dt in DTYPES:
            p = problem_at("logreg_binary", args.backend, n, d, dt)
            pts = common.oracle_points(p)
            x, y, Ys = pts["x"], pts["y"], pts["Ys"]
            A = p.A_train
            nbytes = n * d * itemsize(dt)
            T = lambda f: measure.throughput_time(f, xp, min_time=args.min_time)  # noqa: E731
            r = {"n": n, "d": d, "dtype": dt, "train_bytes": nbytes}
            r["t_grad_g"] = T(lambda: p.grad_g(x, y))
            r["t_grad_g_y"] = T(lambda: p.grad_g_y(x, y))
            r["t_grad_g_many2"] = T(lambda: p.grad_g_many(x, Ys))
            s = A @ y
            G2 = A @ Ys.T
            r["t_A_y"] = T(lambda: A @ y)                 # profile by parts
            r["t_At_s"] = T(lambda: A.T @ s)
            r["t_A_Y2"] = T(lambda: A @ Ys.T)
            r["t_At_G2"] = T(lambda: A.T @ G2)
            # alternatives for the two-point products (f32 skinny GEMM choice of cuBLAS)
            Yc = xp.asarray(Ys.T, copy=True)                   # C-contiguous (d, 2)
            G2c = xp.asarray(G2.T, copy=True)                  # C-contiguous (2, n)
            r["t_Y2_At"] = T(lambda: Ys @ A.T)
            r["t_A_Y2contig"] = T(lambda: A @ Yc)
            r["t_two_A_y"] = T(lambda: (A @ Ys[0, ...], A @ Ys[1, ...]))
            r["t_G2t_A"] = T(lambda: G2c @ A)
            r["t_two_At_s"] = T(lambda: (A.T @ G2c[0, ...], A.T @ G2c[1, ...]))
            if bw:
                for k in ("t_grad_g", "t_grad_g_y", "t_grad_g_many2", "t_A_y", "t_At_s",
                          "t_A_Y2", "t_At_G2", "t_Y2_At", "t_A_Y2contig", "t_G2t_A"):
                    r["frac_" + k[2:]] = nbytes / r[k] / bw
                r["frac_grad_g_as_implemented"] = 2 * nbytes / r["t_grad_g"] / bw
                r["elementwise_share"] = 1 - (r["t_A_y"] + r["t_At_s"]) / r["t_grad_g"]
            rows.append(r)
            log("bandwidth", n, d, dt, {k: round(v, 6) if isinstance(v, float) else v
                                         for k, v in r.items() if k.startswith(("t_", "frac_grad_g"))})
            R["bandwidth"] = rows
            del p, pts, x, y, Ys, A, s, G2, Yc, G2c
            free_gpu()


def _step_row(problem, name, backend, dt, bw, min_time, repeat=3, solver_state=None):
    xp = common.get_xp(backend)
    if solver_state is None:
        _, solver, state = common.solver_step_setup(name, backend, None, dt, problem=problem)
    else:
        solver, state = solver_state
    t_step = measure.throughput_time(lambda: solver.step(problem, state), xp, min_time=min_time,
                                     repeat=repeat)
    calls = measure.record_step_oracles(problem, solver, state)
    t_sum, per = measure.oracle_sum_time(problem, calls, xp, min_time=min_time, repeat=repeat)
    row = {"solver": name, "dtype": dt, "t_step": t_step, "t_oracle_sum": t_sum,
           "overhead": t_step / t_sum, "oracle_times": per, "n_calls": len(calls)}
    fb = floor_bytes(problem, calls)
    row["floor_bytes"] = fb
    if bw:
        row["t_floor"] = fb / bw
        row["step_over_floor"] = t_step / (fb / bw)
        row["step_over_floor_2pass"] = t_step / (2 * fb / bw)
    return row


def sec_steps(R, args):
    bw = _bw(R, args.backend)
    rows = []
    for (n, d) in LARGE:
        for dt in DTYPES:
            for kind in ("logreg_binary", "auc"):
                p = problem_at(kind, args.backend, n, d, dt)
                for name in STEP_SOLVERS:
                    if common.solver_factories()[name][0] != kind:
                        continue
                    try:
                        r = _step_row(p, name, args.backend, dt, bw, args.min_time)
                    except Exception as exc:
                        r = {"solver": name, "dtype": dt, "error": repr(exc)}
                    r.update(n=n, d=d, backend=args.backend)
                    rows.append(r)
                    log("step", n, d, dt, name, {k: r.get(k) for k in
                                                 ("t_step", "t_oracle_sum", "overhead",
                                                  "step_over_floor", "error")})
                    R["steps"] = rows
                del p
                free_gpu()


def sec_peers(R, args):
    rows = []
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    try:
        import jax  # noqa: F401
        jax.config.update("jax_enable_x64", True)
        have_jax = True
    except ImportError:
        have_jax = False
    xp = common.get_xp(args.backend)
    for (n, d) in PEER_SIZES:
        for dt in DTYPES:
            p = problem_at("logreg_binary", args.backend, n, d, dt)
            pt = None
            for step in ("f2sa", "minimaxopt"):
                r = {"n": n, "d": d, "dtype": dt, "step": step}
                solver, state = peers.refbilevel_inputs(p, step)
                r[f"refbilevel-{args.backend}"] = measure.throughput_time(
                    lambda: solver.step(p, state), xp, min_time=args.min_time)
                impls = (("torch", "torch-plain") if have_torch else ()) + \
                    (("jax", "jax-plain", "jax-highest") if have_jax else ())
                try:
                    r["check_rel_err"] = peers.check_peers(p, step, impls=impls)
                except Exception as exc:
                    r["check_rel_err"] = repr(exc)
                if have_torch:
                    import torch

                    txp = common.get_xp("torch")
                    targs = peers.peer_inputs(p, "torch")
                    for impl, label in (("torch", "torch-eager"), ("torch-plain", "torch-eager-plain")):
                        fn = peers.peer_steps(impl)[step]
                        r[label] = measure.throughput_time(lambda: fn(*targs), txp,
                                                           min_time=args.min_time)
                    try:
                        if pt is None:
                            A_tr, b_tr, A_va, b_va = (peers.to_torch(a) for a in
                                                      (p.A_train, p.T_train, p.A_val, p.T_val))
                            from refbilevel.problems import LogRegHPO

                            pt = LogRegHPO(A_tr, b_tr, A_va, b_va)
                        s_t, st_t = peers.refbilevel_inputs(pt, step)
                        r["refbilevel-torch"] = measure.throughput_time(
                            lambda: s_t.step(pt, st_t), txp, min_time=args.min_time)
                    except Exception as exc:
                        r["refbilevel-torch"] = repr(exc)
                    del targs
                if have_jax:
                    import jax

                    jargs = peers.peer_inputs(p, "jax")
                    for impl, label in (("jax", "jax-jit"), ("jax-plain", "jax-jit-plain"),
                                        ("jax-highest", "jax-jit-highest")):
                        if impl == "jax-highest" and dt == "float64":
                            continue
                        fn = peers.peer_steps(impl)[step]
                        t0 = time.perf_counter()
                        jax.block_until_ready(fn(*jargs))
                        r[f"{label}_compile_s"] = time.perf_counter() - t0
                        holder = [None]

                        def call_jax(fn=fn, jargs=jargs, holder=holder):
                            holder[0] = fn(*jargs)       # async dispatch, like the others

                        r[label] = measure.throughput_time(
                            call_jax, xp, min_time=args.min_time,
                            wait=lambda holder=holder: jax.block_until_ready(holder[0]))
                        del holder
                    del jargs
                if (n, d) in PEER_SIZES[:2] and args.backend != "numpy":
                    pn = problem_at("logreg_binary", "numpy", n, d, dt)
                    sn, stn = peers.refbilevel_inputs(pn, step)
                    r["refbilevel-numpy"] = measure.throughput_time(
                        lambda: sn.step(pn, stn), common.get_xp("numpy"), min_time=args.min_time)
                mine = r[f"refbilevel-{args.backend}"]
                for k in ("torch-eager", "torch-eager-plain", "jax-jit", "jax-jit-plain",
                          "jax-jit-highest", "refbilevel-torch", "refbilevel-numpy"):
                    if isinstance(r.get(k), float):
                        r[f"ratio_vs_{k}"] = mine / r[k]
                rows.append(r)
                log("peers", n, d, dt, step, {k: (round(v, 7) if isinstance(v, float) else v)
                                              for k, v in r.items()})
                R["peers"] = rows
            del p, pt
            free_gpu()


def count_kernels(f, xp):
    """CUDA kernels launched by ``f()``, recorded by the PyTorch profiler (CUPTI), or None."""
    try:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
    except Exception:
        return None
    if not torch.cuda.is_available():
        return None
    f()
    B.synchronize(xp)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        f()
        B.synchronize(xp)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    kernels = [k for k in names if not k.lower().startswith(("memcpy", "memset"))]
    return {"kernels": len(kernels), "memcpy": len(names) - len(kernels)}


def array_ops_per_step(kind, name, n, d, dt):
    """Array operations of one step on array_api_strict (the launch proxy), or None."""
    try:
        p = problem_at(kind, "array_api_strict", n, d, dt)
    except NotImplementedError:
        return None
    _, solver, state = common.solver_step_setup(name, "array_api_strict", None, dt, problem=p)
    return sum(measure.count_step_ops(p, solver, state).values())


def sec_small(R, args):
    n, d = 2_000, 50
    rows = []
    for dt in ("float64", "float32"):
        for backend in (args.backend, "numpy") if args.backend != "numpy" else ("numpy",):
            xp = common.get_xp(backend)
            for name in STEP_SOLVERS:
                kind = common.solver_factories()[name][0]
                p = problem_at(kind, backend, n, d, dt)
                _, solver, state = common.solver_step_setup(name, backend, None, dt, problem=p)
                t = measure.throughput_time(lambda: solver.step(p, state), xp,
                                            min_time=args.min_time)
                r = {"solver": name, "backend": backend, "dtype": dt, "us_per_step": t * 1e6,
                     "array_ops": array_ops_per_step(kind, name, n, d, dt)}
                if backend == "cupy":
                    r["launches"] = count_kernels(lambda: solver.step(p, state), xp)
                    calls = measure.record_step_oracles(p, solver, state)
                    r["n_oracle_calls"] = len(calls)
                    if name in ("minimaxopt", "f2sa"):
                        per = {}
                        for nm, a, kw in calls:
                            if nm not in per:
                                meth = getattr(p, nm)
                                per[nm] = count_kernels(lambda: meth(*a, **kw), xp)
                        r["launches_per_oracle"] = per
                    try:
                        r["syncs"] = measure.count_step_syncs(p, solver, state, xp)
                    except Exception as exc:
                        r["syncs"] = repr(exc)
                rows.append(r)
                log("small", r)
                R["small"] = rows
    # peers' kernel counts at the small size (cupy only)
    if args.backend == "cupy":
        out = {}
        p = problem_at("logreg_binary", "cupy", n, d, "float64")
        try:
            import jax

            jax.config.update("jax_enable_x64", True)
            for step in ("f2sa", "minimaxopt"):
                fn, targs = peers.torch_steps()[step], peers.peer_inputs(p, "torch")
                out[f"torch-eager/{step}"] = count_kernels(lambda: fn(*targs), common.get_xp("cupy"))
                fj, jargs = peers.jax_steps()[step], peers.peer_inputs(p, "jax")
                out[f"jax-jit/{step}"] = count_kernels(lambda: jax.block_until_ready(fj(*jargs)),
                                                       common.get_xp("cupy"))
        except Exception as exc:
            out["error"] = repr(exc)
        R["small_peer_launches"] = out
        log("small peers", out)
    free_gpu()


def sec_memory(R, args):
    from refbilevel import datasets
    from refbilevel.solvers import FOSL, ITD, F2SA, F2SAAdam, MemCS, MinimaxOPT

    backend = args.backend
    xp = common.get_xp(backend)
    dt = "float64"
    rows = []
    S, K = 4, 5
    for T in MEMORY_BLOCKS:
        p = datasets.make_multitask_auc(n_tasks=T, n_train=50, n_val=50, n_features=100,
                                        xp=xp, rank=100)
        for solver in (FOSL(n_sampled=S), MemCS(n_sampled=S, n_inner=K)):
            st = solver.init(p, p.init_x(), p.init_y(), np.random.default_rng(0))
            st = solver.step(p, st)
            peak = measure.peak_step_memory(p, solver, st, xp)
            blocks = tuple(getattr(st, f, None) for f in ("z", "v", "last_z", "last_v"))
            rows.append({"solver": solver.name, "n_blocks": T, "S": S, "dim_z": p.dim_z,
                         "state_bytes": measure.state_nbytes(st),
                         "block_state_bytes": measure.state_nbytes(blocks),
                         "peak_step_bytes": peak})
            log("memory", rows[-1])
        del p
        free_gpu()
    p = problem_at("logreg_binary", backend, 20_000, 500, dt)
    for solver in [ITD(n_inner=k) for k in (5, 20, 80)] + [MinimaxOPT(), F2SA(n_inner=5),
                                                           F2SAAdam(n_inner=5)]:
        st = solver.init(p, p.init_x(), p.init_y(), np.random.default_rng(0))
        peak = measure.peak_step_memory(p, solver, st, xp)
        label = solver.name + (f" K={solver.n_reverse}" if solver.name == "itd" else "")
        rows.append({"solver": label, "n": 20_000, "d": 500, "dim_y": p.dim_y,
                     "state_bytes": measure.state_nbytes(solver.step(p, st)),
                     "peak_step_bytes": peak})
        log("memory", rows[-1])
    R[f"memory_{backend}"] = rows
    free_gpu()


def sec_sweep(R, args):
    rows = []
    grid = SWEEP_GRID
    backends = (args.backend, "numpy") if args.backend != "numpy" else ("numpy",)
    for (n, d) in grid:
        for backend in backends:
            if backend == "numpy" and n * d > 2e8:
                continue
            xp = common.get_xp(backend)
            p = problem_at("logreg_binary", backend, n, d, "float64")
            for name in ("minimaxopt", "f2sa"):
                _, solver, state = common.solver_step_setup(name, backend, None, "float64",
                                                            problem=p)
                t = measure.throughput_time(lambda: solver.step(p, state), xp,
                                            min_time=args.min_time,
                                            repeat=3 if backend != "numpy" or n * d < 1e7 else 1)
                rows.append({"n": n, "d": d, "backend": backend, "solver": name, "t_step": t})
                log("sweep", rows[-1])
            del p
            free_gpu()
            R["sweep"] = rows


def sec_numpy(R, args):
    bw = _bw(R, "numpy")
    rows = []
    n, d = NUMPY_LARGE
    p = problem_at("logreg_binary", "numpy", n, d, "float32")
    for name in ("minimaxopt", "f2sa", "f2sa_adam", "aid_cg", "itd"):
        r = _step_row(p, name, "numpy", "float32", bw, args.min_time)
        r.update(n=n, d=d, backend="numpy")
        rows.append(r)
        log("numpy", {k: r.get(k) for k in ("solver", "t_step", "t_oracle_sum", "overhead")})
        R["numpy_large"] = rows
    del p
    free_gpu()

def sec_asvsmoke(R, args):
    """Every asv benchmark class: setup + one timed call on this backend at the small size."""
    from benchmarks import oracles, solvers, track

    out = {}
    a = (args.backend, "small", "float64")
    for cls in (oracles.LogRegBinary, oracles.LogRegMultinomial, oracles.CleaningMLP,
                oracles.MultiTaskAUCOracles):
        b = cls()
        b.setup(*a)
        for m in [m for m in dir(b) if m.startswith("time_")]:
            t0 = time.perf_counter()
            getattr(b, m)(*a)
            out[f"{cls.__name__}.{m}"] = time.perf_counter() - t0
    for name in common.SOLVERS:
        b = solvers.SolverStep()
        b.setup(*a, name)
        t0 = time.perf_counter()
        b.time_step(*a, name)
        out[f"SolverStep.{name}"] = time.perf_counter() - t0
        t = track.SolverTracks()
        t.setup(*a, name)
        out[f"track_overhead.{name}"] = t.track_overhead(*a, name)
        m = track.MemoryTracks()
        m.setup(*a, name)
        out[f"track_peak_memory_MB.{name}"] = m.track_peak_memory(*a, name)
        if args.backend == "cupy":
            sy = track.SyncTracks()
            sy.setup(*a, name)
            out[f"track_syncs.{name}"] = sy.track_syncs(*a, name)
    bwt = track.BandwidthFraction()
    bwt.setup(*a)
    out["track_grad_g_fraction_small"] = bwt.track_grad_g(*a)
    R["asv_smoke"] = out
    log("asv smoke", out)


def sec_cpu_peers(R, args):
    from benchmarks import cpu_peers

    sizes = ["small"] if args.quick else list(cpu_peers.SIZES)
    R["cpu_peers"] = cpu_peers.compare(sizes, rounds=3 if args.quick else 7,
                                       rounds_tall=5, min_time=min(args.min_time, 0.1),
                                       log=lambda row: log("cpu_peers", row))


def markdown(R) -> str:
    """The report's tables, the CPU peer table (when measured) last."""
    text = render_markdown(R)
    if R.get("cpu_peers"):
        from benchmarks.cpu_peers import render_markdown as render_cpu_peers

        text += "\n" + render_cpu_peers(R["cpu_peers"])
    return text


def sec_experiments(R, args):
    from report_experiments import sec_experiments as run

    run(R, args, problem_at=problem_at, count_kernels=count_kernels, free_gpu=free_gpu, log=log)


SECTIONS = {"env": sec_env, "copy": sec_copy, "bandwidth": sec_bandwidth, "steps": sec_steps,
            "peers": sec_peers, "small": sec_small, "memory": sec_memory, "sweep": sec_sweep,
            "numpy": sec_numpy, "experiments": sec_experiments, "asvsmoke": sec_asvsmoke,
            "cpu_peers": sec_cpu_peers}


# ====================================================================== main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_report_out")
    ap.add_argument("--backend", default=None, help="cupy (default when a GPU exists) or numpy")
    ap.add_argument("--sections", default=None,
                    help="comma-separated; default: all but cpu_peers (all on numpy)")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: test the script on a CPU")
    ap.add_argument("--render", default=None, help="re-render report.md/plot from a report.json")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as fh:
            R = json.load(fh)
        out = os.path.dirname(os.path.abspath(args.render))
        with open(os.path.join(out, "report.md"), "w") as fh:
            fh.write(markdown(R))
        plot(R, os.path.join(out, "scaling.png"))
        return 0
    if args.backend is None:
        args.backend = "cupy" if "cupy" in B.available_backends() else "numpy"
    if args.sections is None:
        args.sections = ",".join(k for k in SECTIONS
                                 if k != "cpu_peers" or args.backend == "numpy")
    limiter = None
    if args.backend == "numpy":          # CPU mode: one thread everywhere, stated in env
        from benchmarks.cpu_peers import XLA_ONE_THREAD, limit_threads

        os.environ.setdefault("XLA_FLAGS", XLA_ONE_THREAD)
        limiter = limit_threads(1)
    if args.quick:
        global LARGE, PEER_SIZES, SWEEP_GRID, NUMPY_LARGE, MEMORY_BLOCKS
        LARGE = [(4_000, 60), (8_000, 20)]
        PEER_SIZES = [(2_000, 50), (4_000, 60)]
        SWEEP_GRID = [(2_000, 50), (20_000, 50)]
        NUMPY_LARGE = (8_000, 20)
        MEMORY_BLOCKS = (8, 32)
    os.makedirs(args.out, exist_ok=True)
    R = {"errors": {}, "timing_s": {}, "backend": args.backend}
    start = time.perf_counter()
    for name in args.sections.split(","):
        if time.perf_counter() - start > args.budget_s:
            R["errors"][name] = "skipped: time budget spent"
            continue
        t0 = time.perf_counter()
        log("section", name)
        try:
            SECTIONS[name](R, args)
        except Exception:
            R["errors"][name] = traceback.format_exc()
            log("ERROR in", name, R["errors"][name])
        R["timing_s"][name] = time.perf_counter() - t0
        free_gpu()
        with open(os.path.join(args.out, "report.json"), "w") as fh:
            json.dump(R, fh, indent=1, default=str)
    with open(os.path.join(args.out, "report.md"), "w") as fh:
        fh.write(markdown(R))
    try:
        plot(R, os.path.join(args.out, "scaling.png"))
    except Exception:
        R["errors"]["plot"] = traceback.format_exc()
    print(markdown(R))
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
