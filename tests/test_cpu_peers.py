"""The CPU peer benchmark (asv_benchmarks/benchmarks/cpu_peers.py) at tiny sizes.

The hand-written steps are an independent implementation of five refbilevel solver steps
(MinimaxOPT, F2SA, F2SA-Adam, AID-CG, ITD on binary logistic HPO), written from the
closed-form gradients: they must agree with refbilevel's steps, which checks both. The
data-pass counter is checked against hand counts. Times are never asserted.
"""

from __future__ import annotations

import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASV_DIR = os.path.join(ROOT, "asv_benchmarks")


@pytest.fixture(scope="module")
def cp():
    sys.path.insert(0, ASV_DIR)
    try:
        import benchmarks.cpu_peers

        yield benchmarks.cpu_peers
    finally:
        sys.path.remove(ASV_DIR)


@pytest.mark.parametrize("solver", ["minimaxopt", "f2sa", "f2sa_adam", "aid_cg", "itd"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hand_written_numpy_steps_equal_refbilevel(cp, solver, dtype):
    data = cp.host_data(400, 12, dtype, seed=5)
    cont = cp.Contenders(solver, data, dtype, peers=("numpy",))
    err = cp.check_peers(cont)
    # float64: rounding of different summation orders over <= 40 data passes; float32
    # likewise at its precision (F2SA-Adam's sign-like first steps amplify it most)
    tol = 1e-11 if dtype == "float64" else 1e-3
    # the two forms differ only for steps with point pairs; otherwise one is timed; each
    # on the data as given and on a column-major copy
    forms = {"numpy-stacked", "numpy-matvec"} if solver in cp.PAIRED else {"numpy-matvec"}
    forms |= {f"{f}-colmajor" for f in forms}
    assert set(err) == forms
    assert all(e <= tol for e in err.values()), err
    assert set(cont.calls) == {"refbilevel"} | forms


def test_a_wrong_peer_is_left_out(cp, monkeypatch):
    # the check can fail: a peer with a wrong step size is removed and reported
    monkeypatch.setattr(cp, "MMO_LR", 0.2)
    cont = cp.Contenders("minimaxopt", cp.host_data(200, 6, "float64"), "float64",
                         peers=("numpy",))
    err = cp.check_peers(cont)
    assert min(err.values()) > 1e-3
    assert list(cont.calls) == ["refbilevel"]
    assert set(cont.unavailable) == {"numpy-stacked", "numpy-matvec", "numpy-stacked-colmajor",
                                     "numpy-matvec-colmajor"}


def test_data_passes_match_hand_counts(cp):
    # needed passes: a gradient reads its data twice (A y, then Aᵀ r), a stacked pair too;
    # an HVP with the curvature weights kept reads A twice; the weights once per point
    T, n_inner, n_cg = cp.F2SA_T, cp.AID_INNER, cp.AID_CG
    needed = {"minimaxopt": 2 + 2,                     # stacked pair on train, grad f on val
              "f2sa": T * (2 + 2), "f2sa_adam": T * (2 + 2),
              "aid_cg": 2 * n_inner + 1 + 2 + 2 * n_cg,
              "itd": 2 * cp.ITD_INNER + 2 + 2 * (cp.ITD_INNER - 1)}
    for solver, k in needed.items():
        got = cp.data_passes(solver)
        assert got["needed"] == k, (solver, got)
        assert got["refbilevel"] == k, (solver, got)     # refbilevel reads no more
        pairs, fwd, bwd = cp.PRODUCTS[solver]                # the floor breakdown's count
        assert 2 * pairs + fwd + bwd == k, (solver, cp.PRODUCTS[solver])


def test_floor_breakdown_runs(cp):
    # smoke run at a tiny size: every number is a positive finite time or rate (times are
    # never asserted); the function itself checks PRODUCTS against the counter
    R = cp.floor_breakdown((200, 6), ("float64",), ("minimaxopt", "itd"), rounds=1,
                           min_time=0.001, copy_bytes=1 << 20, log=lambda *a: None)
    row = R["dtypes"]["float64"]
    assert set(row["solvers"]) == {"minimaxopt", "itd"}
    for r in row["solvers"].values():
        for key in ("step_ms", "peer_ms", "blas_ms", "passes_ms", "floor_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, key
    assert all(math.isfinite(v) and v > 0 for v in row["read_bw"].values())
    assert "| float64 | itd |" in cp.render_floor_breakdown(R)


def test_compare_and_table(cp):
    R = cp.compare(sizes=[(200, 6)], dtypes=("float64",), solvers=("minimaxopt",), rounds=2,
                   rounds_tall=1, min_time=0.001, peers=("numpy",), copy_bytes=1 << 20,
                   log=lambda row: None)
    (row,) = R["rows"]
    assert row["rounds"] == 2 and row["passes"] == {"refbilevel": 4, "needed": 4}
    for key in ("t_refbilevel", "t_numpy", "ratio_numpy", "t_floor", "copy_bw"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["t_floor"] == pytest.approx(4 * 100 * 6 * 8 / row["copy_bw"])
    blas = [p for p in R["env"]["threads"]["threadpools"] if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)     # fixed during the run
    text = cp.render_markdown(R, command="python -m benchmarks.cpu_peers")
    assert "| minimaxopt | 200 × 6 | float64 |" in text
    assert "python -m benchmarks.cpu_peers" in text and "BLAS:" in text


def test_asv_classes_run(cp, monkeypatch):
    monkeypatch.setattr(cp.CPUPeerRatios, "rounds", 2)
    monkeypatch.setattr(cp.CPUPeerRatios, "min_time", 0.001)
    b = cp.CPUPeerSteps()
    for impl in ("refbilevel", "numpy-matvec", "numpy-stacked-colmajor"):
        b.setup(impl, "small", "float64", "minimaxopt")
        b.time_step(impl, "small", "float64", "minimaxopt")
        b.teardown()
    r = cp.CPUPeerRatios()
    r.setup("numpy", "small", "float64", "minimaxopt")
    try:
        ratios = [r.track_ratio("numpy", "small", "float64", "minimaxopt"),
                  r.track_cpu_ratio("numpy", "small", "float64", "minimaxopt")]
    finally:
        r.teardown()
    assert all(math.isfinite(v) and v > 0 for v in ratios)


@pytest.mark.parametrize("n", [1, 5, 7, 9, 15, 16, 40])
def test_median_interval_is_the_binomial_order_statistic_interval(cp, n):
    # oracle: the closed form, coverage 1 - 2 P(Binomial(n, 1/2) <= j - 1), j the largest
    # rank reaching 95 % (the range when none does), evaluated here by brute-force sums
    from benchmarks.measure import median_interval

    values = [((7 * k) % n) + 0.5 * k / n for k in range(n)]     # distinct, shuffled
    lo, hi, coverage = median_interval(values)

    def cover(j):
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(j)) / 2.0 ** n

    ranks = [j for j in range(1, (n + 1) // 2 + 1) if cover(j) >= 0.95]
    j = max(ranks) if ranks else 1
    xs = sorted(values)
    assert (lo, hi) == (xs[j - 1], xs[n - j])
    assert coverage == pytest.approx(cover(j), rel=1e-12)
    assert lo <= sorted(values)[(n - 1) // 2] <= hi
    if n == 15:                              # the value the docs quote
        assert (j, round(coverage, 4)) == (4, 0.9648)
    if n == 5:
        assert j == 1 and coverage == pytest.approx(0.9375)


def test_summarize_reports_the_interval_of_the_per_round_ratios(cp):
    # oracle: the ratios built by hand, their median and their order-statistic interval
    from benchmarks.measure import median_interval

    ref = [1.0, 1.1, 0.9, 1.2, 1.05, 0.95, 1.0]
    peer = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]
    slow = [2.0] * 7
    times = {"refbilevel": ref, "numpy-matvec-colmajor": peer, "numpy-stacked": slow}
    family = {"refbilevel": "refbilevel", "numpy-matvec-colmajor": "numpy",
              "numpy-stacked": "numpy"}
    out = cp.summarize(times, family, prefix="cpu_")
    ratios = [a / b for a, b in zip(ref, peer)]
    assert out["cpu_form_numpy"] == "matvec-colmajor"
    assert out["cpu_ratio_numpy"] == sorted(ratios)[3]
    assert out["cpu_ratio_numpy_ci"] == median_interval(ratios)[:2] == (0.5, 1.2)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity (not Linux)")
def test_one_thread_pins_every_thread_to_one_processor(cp):
    # oracle: the kernel's own record of each thread's allowed processors, before, during
    # (one processor, the same for all threads, a started thread included) and after
    import threading

    def allowed():
        return {int(t): frozenset(os.sched_getaffinity(int(t)))
                for t in os.listdir("/proc/self/task")}

    before = allowed()
    limits = cp.limit_threads(1)
    try:
        seen = {}
        worker = threading.Thread(target=lambda: seen.update(cpus=os.sched_getaffinity(0)))
        worker.start()
        worker.join()
        during = allowed()
        assert len(set(during.values())) == 1 and len(next(iter(during.values()))) == 1
        assert seen["cpus"] == set(next(iter(during.values())))
        assert cp.thread_report()["cpu_affinity"] == sorted(next(iter(during.values())))
    finally:
        limits.restore_original_limits()
    after = allowed()
    assert all(after[t] == before[t] for t in after if t in before)


def test_blocked_passes_runs(cp):
    # smoke run at tiny sizes: positive finite times and ratios, the module's settings
    # restored afterwards (times are never asserted)
    from refbilevel import _backend as B

    def settings():
        return (B._ROW_BLOCKED_MIN_BYTES, B._ROW_BLOCK_BYTES, B._ROW_BLOCK_MIN_SEGMENT_BYTES,
                B._ROW_BLOCK_ONE_POINT_SEGMENT_BYTES, B._blas_one_thread)

    saved = settings()
    rows = cp.blocked_passes(mib=(0.05,), widths=(10,), dtypes=("float64",),
                             blocks=(1 << 10,), threads=(1,), rounds=1, min_time=0.001)
    assert settings() == saved
    (row,) = rows
    for kind in ("gradient", "pair"):
        assert math.isfinite(row[f"{kind}_whole_ms"]) and row[f"{kind}_whole_ms"] > 0
        (ratio,) = row[f"{kind}_blocked_over_whole"].values()
        assert math.isfinite(ratio) and ratio > 0
    assert "| 1 |" in cp.render_blocked_passes(rows)


def test_step_against_oracles_runs(cp):
    # smoke run at a tiny size: the hand-written step passed the check against
    # refbilevel's step, and every time and ratio is positive and finite (never asserted)
    rows = cp.step_against_oracles(("minimaxopt",), (200, 6), "float64", rounds=2,
                                   min_time=0.001)
    (row,) = rows
    assert row["oracle_calls"] == 2                  # grad_f and one stacked grad_g_many
    assert row["check"] <= cp.CHECK_RTOL["float64"]
    for key in ("t_oracles_us", "t_refbilevel_us", "t_peer_us", "refbilevel_over_oracles",
                "peer_over_oracles"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert "| minimaxopt | 200 × 6 |" in cp.render_step_against_oracles(rows)
