"""The ``experiments`` section of ``gpu_report.py``: what proposed changes would buy.

Measured by patching refbilevel in-process (and restoring it): one-kernel CuPy versions of
the binary logistic loss pieces, skipping the unused per-sample losses, and MultiTaskAUC's
data-sized temporary against a batched matrix-vector product.
"""

from __future__ import annotations

import numpy as np

from benchmarks import common, measure
from refbilevel import _backend as B


def _fused_losses():
    """One-kernel CuPy versions of the binary logistic pieces (ElementwiseKernel) — experiment only."""
    import cupy

    sg = cupy.ElementwiseKernel(
        "T S, T b", "T out",
        "T t = -(b * S); T e = exp(-fabs(t)); "
        "out = -b * (t >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e));",
        "refbilevel_logistic_score_grad")
    ps = cupy.ElementwiseKernel(
        "T S, T b", "T out",
        "T t = -(b * S); out = (t > (T)0 ? t : (T)0) + log1p(exp(-fabs(t)));",
        "refbilevel_logistic_per_sample")
    hv = cupy.ElementwiseKernel(
        "T S, T R", "T out",
        "T e = exp(-fabs(S)); out = e / (((T)1 + e) * ((T)1 + e)) * R;",
        "refbilevel_logistic_score_hvp")
    return sg, ps, hv


def _numpy_losses():
    """NumPy stand-ins of :func:`_fused_losses` (to test the experiment on a CPU)."""
    def sg(S, b):
        t = -(b * S)
        e = np.exp(-np.abs(t))
        return -b * np.where(t >= 0, 1 / (1 + e), e / (1 + e))

    def ps(S, b):
        t = -(b * S)
        return np.maximum(t, 0) + np.log1p(np.exp(-np.abs(t)))

    def hv(S, R):
        e = np.exp(-np.abs(S))
        return e / ((1 + e) * (1 + e)) * R

    return sg, ps, hv


def sec_experiments(R, args, *, problem_at, count_kernels, free_gpu, log):
    """What the proposed changes would buy, measured by patching in-process (then restored).

    * ``fused``: BinaryLogistic.score_grad / per_sample / score_hvp as one CuPy
      ElementwiseKernel each (instead of 7-9 elementwise kernels);
    * ``fused+noloss``: additionally skip the per-sample losses that LinearModel's gradient
      computes and LogRegHPO's gradient oracles discard;
    * ``auc_mq``: MultiTaskAUC's ``sum(A * q[..., None], axis=1)`` (a temporary the size of
      the data) against the batched product ``q[:, None, :] @ A``.
    """
    if args.backend != "cupy" and not args.quick:
        raise NotImplementedError("the fused-kernel experiment needs cupy")
    from refbilevel.models import losses

    xp = common.get_xp(args.backend)
    cls = losses.BinaryLogistic
    orig = {k: cls.__dict__[k] for k in ("score_grad", "per_sample", "score_hvp")}
    f_sg, f_ps, f_hv = _fused_losses() if args.backend == "cupy" else _numpy_losses()
    variants = {
        "neutral": {},
        "fused": {"score_grad": staticmethod(lambda S, b, *, xp: f_sg(S, b)),
                  "per_sample": staticmethod(lambda S, b, *, xp: f_ps(S, b)),
                  "score_hvp": staticmethod(lambda S, b, R, *, xp: f_hv(S, R))},
        "fused+noloss": {"score_grad": staticmethod(lambda S, b, *, xp: f_sg(S, b)),
                         "per_sample": staticmethod(lambda S, b, *, xp: S),
                         "score_hvp": staticmethod(lambda S, b, R, *, xp: f_hv(S, R))},
    }
    rows = []
    sizes = [(2_000, 50), (1_000_000, 100), (200_000, 2_000)] if not args.quick else [(2_000, 50)]
    for (n, d) in sizes:
        for dt in ("float32", "float64"):
            p = problem_at("logreg_binary", args.backend, n, d, dt)
            for name in ("minimaxopt", "f2sa", "aid_cg"):
                _, solver, state = common.solver_step_setup(name, args.backend, None, dt, problem=p)
                ref = None
                for vname, patch in variants.items():
                    try:
                        for k, v in patch.items():
                            setattr(cls, k, v)
                        out = solver.step(p, state)
                        got = np.concatenate([B.to_host(out.x), B.to_host(out.y)])
                        if ref is None:
                            ref = got
                        t = measure.throughput_time(lambda: solver.step(p, state), xp,
                                                    min_time=args.min_time)
                        r = {"n": n, "d": d, "dtype": dt, "solver": name, "variant": vname,
                             "t_step": t, "rel_diff_vs_neutral":
                             float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300))}
                        if n * d <= 10**6:
                            r["launches"] = count_kernels(lambda: solver.step(p, state), xp)
                    finally:
                        for k, v in orig.items():
                            setattr(cls, k, v)
                    rows.append(r)
                    log("experiment", r)
                    R["experiments"] = rows
            del p
            free_gpu()
    # MultiTaskAUC: the data-sized temporary in grad_g / cross_g
    out = []
    for (n, d) in ([(200_000, 2_000), (1_000_000, 100)] if not args.quick else [(8_000, 20)]):
        for dt in ("float32", "float64"):
            T_ = common.AUC_TASKS
            A = xp.reshape(common.bench_data(n, d, backend=args.backend, dtype=dt)[0], (T_, n // T_, d))
            q = A[:, :, 0] * 0.001
            t_tmp = measure.throughput_time(lambda: xp.sum(A * q[..., None], axis=1), xp,
                                            min_time=args.min_time)
            t_mv = measure.throughput_time(lambda: (q[:, None, :] @ A)[:, 0, :], xp,
                                           min_time=args.min_time)
            diff = float(B.to_host_scalar(xp.max(xp.abs(xp.sum(A * q[..., None], axis=1)
                                                        - (q[:, None, :] @ A)[:, 0, :]))))
            out.append({"n": n, "d": d, "dtype": dt, "t_sum_of_product": t_tmp,
                        "t_batched_matvec": t_mv, "max_abs_diff": diff})
            log("auc_mq", out[-1])
            del A, q
            free_gpu()
    R["auc_mq"] = out
