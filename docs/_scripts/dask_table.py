"""Measure the tables of docs/dask.md: NumPy vs Dask step times, graph sizes, worker memory.

Run from the repository root (takes a few minutes on two cores)::

    OPENBLAS_NUM_THREADS=1 python docs/_scripts/dask_table.py --n 100000 --p 50 --steps 10

It builds LogRegHPO (binary, ``n`` samples: half training, half validation rows, ``p``
features) from one seed, times full-batch MinimaxOPT steps on NumPy, then on a
``dask.distributed`` LocalCluster (worker processes on the loopback interface, one
thread each) for each worker count and rows-per-chunk value, with the problem's data
persisted on the workers. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np


def _step_times(problem, solver, steps, backend):
    from refbilevel._backend import host_rng, materialize, synchronize

    state = materialize(solver.init(problem, problem.init_x(), problem.init_y(), host_rng(0)))
    graph, times = [], []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        lazy = solver.step(problem, state)
        if backend == "dask":
            graph.append(sum(len(getattr(lazy, f).__dask_graph__()) for f in ("x", "y")))
        state = materialize(lazy)
        synchronize(problem.xp, state)
        if k:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
    return state, statistics.median(times), graph


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--p", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--chunks", default="6250,12500,25000")
    args = ap.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster

    from refbilevel._backend import persist_data, to_host
    from refbilevel.datasets import logreg_hpo_data
    from refbilevel.problems.logreg import LogRegHPO
    from refbilevel.solvers.minimaxopt import MinimaxOPT

    s = logreg_hpo_data(args.n, args.p, seed=0)
    host = (s.A_train, s.y_train, s.A_val, s.y_val)
    data_mb = sum(a.nbytes for a in host) / 2**20
    solver = MinimaxOPT(lr=0.5, steps_per_stage=100, n_stages=10)
    ref_state, t_np, _ = _step_times(LogRegHPO(*host, task="binary"), solver, args.steps, "numpy")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()}, {os.cpu_count()} cores, load average {load}, "
          f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, "
          f"LogRegHPO n={args.n} p={args.p} "
          f"({data_mb:.1f} MiB of float64 data), MinimaxOPT full batch, {args.steps} steps\n")
    print("| backend | workers | rows/chunk | chunks per array | step time (ms) | vs NumPy "
          "| tasks per step (steps 1..k) | data per worker (MiB) | worker RSS (MiB) "
          "| max rel. diff of x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| numpy | - | - | - | {t_np * 1e3:.1f} | 1.00 | - | {data_mb:.1f} | - | 0 |")
    for n_workers in (int(w) for w in args.workers.split(",")):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
        try:
            for rows in (int(c) for c in args.chunks.split(",")):
                wrap = [da.from_array(a, chunks=(rows,) + (-1,) * (a.ndim - 1)) for a in host]
                problem = persist_data(LogRegHPO(*wrap, task="binary"))
                n_chunks = problem.A_train.npartitions
                state, t, graph = _step_times(problem, solver, args.steps, "dask")
                info = client.scheduler_info()["workers"].values()
                managed = [w["metrics"]["managed_bytes"] / 2**20 for w in info]
                rss = [w["metrics"]["memory"] / 2**20 for w in info]
                x_ref = to_host(ref_state.x)
                diff = float(np.max(np.abs(to_host(state.x) - x_ref)) / np.max(np.abs(x_ref)))
                sizes = sorted(set(graph[1:]))
                print(f"| dask | {n_workers} | {rows} | {n_chunks} | {t * 1e3:.1f} | "
                      f"{t_np / t:.2f} | {','.join(map(str, sizes))} | "
                      f"{' / '.join(f'{m:.1f}' for m in managed)} | "
                      f"{' / '.join(f'{m:.0f}' for m in rss)} | {diff:.1e} |", flush=True)
                del problem, state
                client.run(lambda: __import__("gc").collect())
        finally:
            client.close()
            cluster.close()


if __name__ == "__main__":
    main()
