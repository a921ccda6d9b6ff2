"""Markdown tables and the scaling plot of a ``gpu_report.py`` result (``report.json``)."""

from __future__ import annotations


def _f(v, fmt="{:.3g}"):
    """A float to ``fmt``, an int (a count) in full, ``None`` as a dash."""
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return fmt.format(v) if isinstance(v, float) else str(v)


def render_markdown(R) -> str:
    L = []
    env = R.get("env", {})
    L.append(f"Run: {env.get('date_utc')} on {env.get('device', 'CPU')} "
             f"(cupy {env.get('cupy')}, torch {env.get('torch')}, jax {env.get('jax')}, "
             f"numpy {env.get('numpy')}, python {env.get('python')}, {env.get('cpu_count')} CPUs)\n")
    bw = R.get("copy_bw", {})
    L.append("| copy bandwidth (read + write) | GB/s |\n|---|---|")
    for k, v in bw.items():
        L.append(f"| {k} | {_f(v / 1e9 if isinstance(v, float) else v, '{:.0f}')} |")
    if R.get("bandwidth"):
        cbw = bw.get("cupy") if isinstance(bw.get("cupy"), float) else None
        L.append(f"\nFractions of the copy bandwidth ({_f((cbw or 0) / 1e9, '{:.0f}')} GB/s); "
                 "'A once' counts the training matrix once, 'as implemented' twice.\n")
        L.append("| n × d | dtype | grad_g ms | frac (A once) | frac (as implemented) "
                 "| grad_g_many(2) ms | frac many2 (A once) | A@y ms | Aᵀ@s ms | A@Yᵀ ms | Aᵀ@G ms |"
                 " Y@Aᵀ ms | A@Yᵀ(contig) ms | 2×A@y ms | Gᵀ@A ms | 2×Aᵀ@s ms | elementwise share |"
                 "\n|" + "---|" * 17)
        for r in R["bandwidth"]:
            ms = lambda k: _f(r[k] * 1e3) if isinstance(r.get(k), float) else "–"  # noqa: E731
            L.append(f"| {r['n']:,} × {r['d']:,} | {r['dtype']} | {ms('t_grad_g')} | "
                     f"{_f(r.get('frac_grad_g'), '{:.2f}')} | "
                     f"{_f(r.get('frac_grad_g_as_implemented'), '{:.2f}')} | "
                     f"{ms('t_grad_g_many2')} | {_f(r.get('frac_grad_g_many2'), '{:.2f}')} | " +
                     " | ".join(ms(k) for k in ("t_A_y", "t_At_s", "t_A_Y2", "t_At_G2", "t_Y2_At",
                                                "t_A_Y2contig", "t_two_A_y", "t_G2t_A",
                                                "t_two_At_s")) +
                     f" | {_f(r.get('elementwise_share'), '{:.2f}')} |")
    for key, title in (("steps", R.get("backend", "cupy")), ("numpy_large", "numpy")):
        if R.get(key):
            L.append(f"\n| solver ({title}) | n × d | dtype | step ms | Σ oracles ms | step / Σ "
                     "| floor ms (data once) | step / floor | step / 2-pass floor |"
                     "\n|---|---|---|---|---|---|---|---|---|")
            for r in R[key]:
                if "error" in r:
                    L.append(f"| {r['solver']} | {r['n']:,} × {r['d']:,} | {r['dtype']} | "
                             f"error: {r['error'][:80]} | | | | | |")
                    continue
                L.append(f"| {r['solver']} | {r['n']:,} × {r['d']:,} | {r['dtype']} | "
                         f"{_f(r['t_step'] * 1e3)} | {_f(r['t_oracle_sum'] * 1e3)} | "
                         f"{_f(r['overhead'], '{:.2f}')} | {_f(r.get('t_floor', 0) * 1e3)} | "
                         f"{_f(r.get('step_over_floor'), '{:.2f}')} | "
                         f"{_f(r.get('step_over_floor_2pass'), '{:.2f}')} |")
    if R.get("peers"):
        be = R.get("backend", "cupy")
        cols = [f"refbilevel-{be}", "torch-eager-plain", "torch-eager", "jax-jit-plain", "jax-jit",
                "jax-jit-highest", "refbilevel-torch", "refbilevel-numpy"]
        L.append("\n| step | n × d | dtype | " + " | ".join(f"{c} ms" for c in cols) +
                 " | ratio vs torch plain | vs torch stacked | vs jax | vs jax highest | "
                 "max rel. diff |\n|" + "---|" * (len(cols) + 8))
        for r in R["peers"]:
            chk = r.get("check_rel_err")
            chk = max(chk.values()) if isinstance(chk, dict) and chk else chk
            ms = lambda k: _f(r[k] * 1e3) if isinstance(r.get(k), float) else _f(r.get(k))  # noqa: E731
            L.append(f"| {r['step']} | {r['n']:,} × {r['d']:,} | {r['dtype']} | " +
                     " | ".join(ms(c) for c in cols) + " | " +
                     " | ".join(_f(r.get(f"ratio_vs_{k}"), "{:.2f}") for k in
                                ("torch-eager-plain", "torch-eager", "jax-jit", "jax-jit-highest"))
                     + f" | {_f(chk, '{:.1e}')} |")
    if R.get("small"):
        L.append("\n| solver | dtype | backend | µs / step | CUDA kernels / step | "
                 "array operations / step (array_api_strict) | oracle calls | "
                 "syncs |\n|---|---|---|---|---|---|---|---|")
        for r in R["small"]:
            ln = r.get("launches")
            L.append(f"| {r['solver']} | {r['dtype']} | {r['backend']} | {_f(r['us_per_step'], '{:.0f}')}"
                     f" | {_f(ln['kernels'] if isinstance(ln, dict) else ln)} | "
                     f"{_f(r.get('array_ops'))} | "
                     f"{_f(r.get('n_oracle_calls'))} | {_f(r.get('syncs'))} |")
    if R.get("small_peer_launches"):
        L.append("\nKernels per step of the peers (n = 2,000, d = 50, float64): " +
                 ", ".join(f"{k}: {v['kernels'] if isinstance(v, dict) else v}"
                           for k, v in R["small_peer_launches"].items()))
    for key in [k for k in R if k.startswith("memory_")]:
        L.append(f"\n| solver ({key[7:]}) | setting | state MB | block state MB (z, v) | "
                 "peak extra MB in one step |\n|---|---|---|---|---|")
        for r in R[key]:
            setting = (f"n_blocks={r['n_blocks']}, S={r['S']}, dim_z={r['dim_z']}"
                       if "n_blocks" in r else f"n={r['n']:,}, d={r['d']}, dim_y={r['dim_y']}")
            bs = r.get("block_state_bytes")
            L.append(f"| {r['solver']} | {setting} | {_f(r['state_bytes'] / 1e6)} | "
                     f"{_f(bs / 1e6 if bs is not None else None)} | "
                     f"{_f(r['peak_step_bytes'] / 1e6)} |")
    if R.get("sweep"):
        L.append("\n| solver | n | d | numpy ms | cupy ms | numpy / cupy |\n|---|---|---|---|---|---|")
        cells = {}
        for r in R["sweep"]:
            cells.setdefault((r["solver"], r["n"], r["d"]), {})[r["backend"]] = r["t_step"]
        for (s, n, d), c in sorted(cells.items()):
            ratio = c["numpy"] / c["cupy"] if "numpy" in c and "cupy" in c else None
            L.append(f"| {s} | {n:,} | {d} | {_f(c.get('numpy', 0) * 1e3 if 'numpy' in c else None)}"
                     f" | {_f(c['cupy'] * 1e3 if 'cupy' in c else None)} | {_f(ratio, '{:.1f}')} |")
    if R.get("experiments"):
        L.append("\n| solver | n × d | dtype | variant | step ms | kernels / step | rel. diff vs neutral |"
                 "\n|---|---|---|---|---|---|---|")
        for r in R["experiments"]:
            ln = r.get("launches")
            L.append(f"| {r['solver']} | {r['n']:,} × {r['d']:,} | {r['dtype']} | {r['variant']} | "
                     f"{_f(r['t_step'] * 1e3)} | {_f(ln['kernels'] if isinstance(ln, dict) else ln)}"
                     f" | {_f(r['rel_diff_vs_neutral'], '{:.1e}')} |")
    if R.get("auc_mq"):
        L.append("\n| MultiTaskAUC Mq | n × d | dtype | sum(A*q) ms | q @ A ms | max abs diff |"
                 "\n|---|---|---|---|---|---|")
        for r in R["auc_mq"]:
            L.append(f"| | {r['n']:,} × {r['d']:,} | {r['dtype']} | {_f(r['t_sum_of_product'] * 1e3)} | "
                     f"{_f(r['t_batched_matvec'] * 1e3)} | {_f(r['max_abs_diff'], '{:.1e}')} |")
    if R.get("asv_smoke"):
        L.append("\nasv classes on this backend (small, float64): " + ", ".join(
            f"{k}={_f(v)}" for k, v in R["asv_smoke"].items() if k.startswith("track_")))
    if R.get("errors"):
        L.append("\nErrors:\n")
        for k, v in R["errors"].items():
            L.append(f"* {k}: {v.splitlines()[-1] if v else v}")
    return "\n".join(L) + "\n"


def plot(R, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = R.get("sweep", [])
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("minimaxopt", "f2sa")):
        for backend, marker in (("numpy", "o"), ("cupy", "s")):
            for d, ls in ((50, "-"), (500, "--")):
                pts = sorted((r["n"] * r["d"], r["t_step"]) for r in rows if r["solver"] == name
                             and r["backend"] == backend and r["d"] == d)
                if pts:
                    ax.loglog(*zip(*pts), marker=marker, ls=ls, label=f"{backend}, d={d}")
            extra = [(r["n"] * r["d"], r["t_step"]) for r in rows if r["solver"] == name
                     and r["backend"] == backend and r["d"] not in (50, 500)]
            for x, t in extra:
                ax.loglog([x], [t], marker=marker, ls="none", color="k", mfc="none")
        ax.set_title(f"{name} step (float64)")
        ax.set_xlabel("n × d (training matrix entries)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds per step")
    axes[0].legend(fontsize=8)
    env = R.get("env", {})
    fig.suptitle(f"LogRegHPO binary (n_val = n/4), cupy on {env.get('device', '')} vs numpy on "
                 f"{env.get('cpu_count')} CPU cores; {env.get('date_utc', '')[:10]}; "
                 "open square: cupy, d = 2,000", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
