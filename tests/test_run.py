"""The shared driver refbilevel.run: history, divergence, callbacks, checkpoints, faults."""

import os
import sys

import numpy as np
import pytest

from refbilevel._backend import to_host
from refbilevel.problems.base import BilevelProblem
from refbilevel.problems.logreg import LogRegHPO
from refbilevel.problems.quadratic import MinimaxQuadratic, Quadratic
from refbilevel.run import run
from refbilevel.solvers import FOSL, F2SAAdam, MemCS, MinimaxOPT, MinimaxOPTStochastic

NO_EXACT = ("value", "inner_residual")


# --------------------------------------------------------------- fault injection
class CountingBilevel(BilevelProblem):
    """Delegates to a problem; ``grad_f`` turns NaN after ``nan_after_grad_f`` calls."""

    def __init__(self, inner, nan_after_grad_f=None):
        self.inner = inner
        self.xp, self._dtype, self._device = inner.xp, inner.dtype, inner.device
        self.dim_x, self.dim_y = inner.dim_x, inner.dim_y
        self.n_outer, self.n_inner = inner.n_outer, inner.n_inner
        self.counts = {"grad_f": 0, "grad_g": 0, "hvp": 0, "cross": 0}
        self.nan_after = nan_after_grad_f
        for attr in ("x_lower", "x_upper"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def _gf(self, out):
        self.counts["grad_f"] += 1
        if self.nan_after is not None and self.counts["grad_f"] > self.nan_after:
            return tuple(o * float("nan") for o in out) if isinstance(out, tuple) else out * float("nan")
        return out

    def describe(self):
        return self.inner.describe()

    def init_x(self):
        return self.inner.init_x()

    def init_y(self):
        return self.inner.init_y()

    def f(self, x, y, batch=None):
        return self.inner.f(x, y, batch)

    def g(self, x, y, batch=None):
        return self.inner.g(x, y, batch)

    def grad_f(self, x, y, batch=None):
        return self._gf(self.inner.grad_f(x, y, batch))

    def grad_f_x(self, x, y, batch=None):
        return self._gf(self.inner.grad_f_x(x, y, batch))

    def grad_f_y(self, x, y, batch=None):
        return self._gf(self.inner.grad_f_y(x, y, batch))

    def grad_g(self, x, y, batch=None):
        self.counts["grad_g"] += 1
        return self.inner.grad_g(x, y, batch)

    def grad_g_x(self, x, y, batch=None):
        self.counts["grad_g"] += 1
        return self.inner.grad_g_x(x, y, batch)

    def grad_g_y(self, x, y, batch=None):
        self.counts["grad_g"] += 1
        return self.inner.grad_g_y(x, y, batch)

    def grad_g_many(self, x, Ys, batch=None):
        self.counts["grad_g"] += Ys.shape[0]
        return self.inner.grad_g_many(x, Ys, batch)

    def grad_g_x_many(self, x, Ys, batch=None):
        self.counts["grad_g"] += Ys.shape[0]
        return self.inner.grad_g_x_many(x, Ys, batch)

    def grad_g_y_many(self, x, Ys, batch=None):
        self.counts["grad_g"] += Ys.shape[0]
        return self.inner.grad_g_y_many(x, Ys, batch)

    def hvp_g(self, x, y, v, batch=None):
        self.counts["hvp"] += 1
        return self.inner.hvp_g(x, y, v, batch)

    def cross_g(self, x, y, v, batch=None):
        self.counts["cross"] += 1
        return self.inner.cross_g(x, y, v, batch)


def _quadratic(xp, device, dtype="float64"):
    return Quadratic.random(3, 4, seed=0, cond=5.0, ridge=1.0, xp=xp, dtype=dtype, device=device)


# --------------------------------------------------------------------------- history
def test_record_points_and_columns(xp, device):
    P = _quadratic(xp, device)
    r = run(P, MinimaxOPT(lr=0.01), n_iter=25, record_every=10)
    np.testing.assert_array_equal(r.history["iteration"], [0, 10, 20, 25])
    assert list(r.history) == ["iteration", "time", "calls_grad_f", "calls_grad_g", "calls_hvp",
                               "calls_cross", "value", "inner_residual", "hypergradient_norm",
                               "multiplier"]
    assert r.status == "max_iter" and r.n_iter == 25 and r.success
    assert np.all(np.diff(r.history["time"]) >= 0)
    # recorded metrics equal independent evaluations at the final iterate
    x, y = to_host(r.x), to_host(r.y)
    H, B, c, A, a = (to_host(m) for m in (P.H, P.B, P.c, P.A, P.a))
    np.testing.assert_allclose(r.history["inner_residual"][-1], np.linalg.norm(H @ y - B @ x - c),
                               rtol=1e-12)
    np.testing.assert_allclose(r.history["hypergradient_norm"][-1],
                               np.linalg.norm(to_host(P.hypergradient(r.x))), rtol=1e-12)
    assert "iteration" in r.history_table() and len(r.history_table().splitlines()) == 5
    r0 = run(P, MinimaxOPT(), n_iter=0)
    np.testing.assert_array_equal(r0.history["iteration"], [0])


# ------------------------------------------------------------------------ divergence
def test_divergence_from_injected_nan_keeps_last_finite_state(xp, device):
    P = _quadratic(xp, device)
    # grad_f becomes NaN from the 26th call on: MinimaxOPT makes 1 grad_f per step -> step 26
    bad = CountingBilevel(P, nan_after_grad_f=25)
    r = run(bad, MinimaxOPT(lr=0.01), n_iter=100, record_every=10, metrics=NO_EXACT)
    assert r.status == "diverged" and "iteration 30" in r.message
    np.testing.assert_array_equal(r.history["iteration"], [0, 10, 20])
    assert r.n_iter == 20
    ref = run(P, MinimaxOPT(lr=0.01), n_iter=20, record_every=10, metrics=NO_EXACT)
    np.testing.assert_array_equal(to_host(r.x), to_host(ref.x))
    assert np.all(np.isfinite(to_host(r.y)))


def test_divergence_from_huge_step(xp, device):
    P = _quadratic(xp, device)
    with np.errstate(all="ignore"):
        r = run(P, MinimaxOPT(lr=50.0, lam0=10.0), n_iter=2000, record_every=50,
                metrics=("value",))
    assert r.status == "diverged"
    assert np.all(np.isfinite(to_host(r.x)))
    assert r.history["iteration"][-1] == r.n_iter < 2000


# ------------------------------------------------------------------------- callbacks
@pytest.mark.parametrize("how", ["return", "raise"])
def test_callback_stops(xp, device, how):
    P = _quadratic(xp, device)
    seen = []

    def cb(info):
        seen.append(info["iteration"])
        assert set(info) >= {"iteration", "state", "record", "time"}
        if info["iteration"] >= 20:
            if how == "raise":
                raise StopIteration
            return True
        return None

    r = run(P, MinimaxOPT(lr=0.01), n_iter=100, record_every=10, callback=cb, metrics=NO_EXACT)
    assert r.status == "stopped" and r.n_iter == 20 and seen == [10, 20]
    np.testing.assert_array_equal(r.history["iteration"], [0, 10, 20])


def test_tol_converged(xp, device):
    P = _quadratic(xp, device)
    r = run(P, MinimaxOPT(lr=0.05, lam0=1.0, tau=1.0), n_iter=5000, record_every=50, tol=0.5)
    assert r.status == "converged" and r.history["hypergradient_norm"][-1] <= 0.5
    assert r.n_iter < 5000


# ------------------------------------------------------------------------ checkpoints
def _assert_same_history(h1, h2):
    assert list(h1) == list(h2)
    for col in h1:
        if col != "time":
            np.testing.assert_array_equal(h1[col], h2[col], err_msg=col)


@pytest.mark.parametrize("make", [
    lambda: (LogRegHPO.synthetic(n_samples=60, n_features=4, seed=1),
             MinimaxOPTStochastic(lr=0.05, steps_per_stage=10, n_stages=3, batch_size_outer=7,
                                  batch_size_inner=9)),
    lambda: (LogRegHPO.synthetic(n_samples=60, n_features=4, seed=1),
             F2SAAdam(n_inner=2, batch_size_outer=8, batch_size_inner=8, sampling="iid")),
    lambda: (MinimaxQuadratic.random(5, 2, 2, 3, seed=0), MemCS(n_inner=3, n_sampled=2)),
    lambda: (MinimaxQuadratic.random(5, 2, 2, 3, seed=0), FOSL(n_sampled=3)),
], ids=["minimaxopt-stoch", "f2sa-adam-iid", "memcs", "fosl"])
def test_checkpoint_resume_is_bitwise(tmp_path, make):
    P, s = make()
    full = run(P, s, n_iter=40, seed=3, record_every=5)
    path = str(tmp_path / "ckpt.npz")
    first = run(P, s, n_iter=17, seed=3, record_every=5, checkpoint=path)   # "killed" at 17
    assert os.path.exists(path) and first.n_iter == 17
    assert [f for f in os.listdir(tmp_path) if f != "ckpt.npz"] == []     # no temp files
    resumed = run(P, s, n_iter=40, seed=3, record_every=5, checkpoint=path)
    _assert_same_history(full.history, resumed.history)
    np.testing.assert_array_equal(to_host(resumed.x), to_host(full.x))
    np.testing.assert_array_equal(to_host(resumed.y), to_host(full.y))
    assert resumed.calls == full.calls and resumed.state.multiplier == full.state.multiplier


def test_checkpoint_identity_mismatch(tmp_path):
    P = Quadratic.random(2, 2, seed=0)
    path = str(tmp_path / "c.npz")
    run(P, MinimaxOPT(lr=0.01), n_iter=5, checkpoint=path)
    with pytest.raises(ValueError, match="another run"):
        run(P, MinimaxOPT(lr=0.02), n_iter=10, checkpoint=path)
    with pytest.raises(ValueError, match="n_iter"):
        run(P, MinimaxOPT(lr=0.01), n_iter=3, checkpoint=path)


# ----------------------------------------------------------------------------- misc
def test_float32_run_stays_float32(xp, device):
    P = _quadratic(xp, device, dtype="float32")
    r = run(P, MinimaxOPT(lr=0.01, momentum=0.9), n_iter=20, record_every=10, metrics=NO_EXACT)
    for a in (r.x, r.y, r.state.z, r.state.opt_x.buf):
        assert a.dtype == xp.float32
    r = run(P, F2SAAdam(n_inner=2), n_iter=5, metrics=NO_EXACT)
    assert r.x.dtype == xp.float32 and r.state.opt_x.m.dtype == xp.float32


def test_progress_fallback(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)      # import fails -> plain text
    P = Quadratic.random(2, 2, seed=0)
    run(P, MinimaxOPT(lr=0.01), n_iter=20, record_every=10, progress=True, metrics=("value",))
    err = capsys.readouterr().err
    assert "it 20/20" in err and "it/s" in err and "ETA" in err and "f=" in err


def test_validation(xp, device, asxp):
    P = _quadratic(xp, device)
    M = MinimaxQuadratic.random(2, 2, 2, 2, seed=0, xp=xp, device=device)
    s = MinimaxOPT()
    with pytest.raises(ValueError, match="n_iter"):
        run(P, s, n_iter=-1)
    with pytest.raises(TypeError, match="n_iter"):
        run(P, s, n_iter=2.0)
    with pytest.raises(ValueError, match="record_every"):
        run(P, s, n_iter=2, record_every=0)
    with pytest.raises(TypeError, match="problem"):
        run(M, s, n_iter=2)
    with pytest.raises(TypeError, match="problem"):
        run(P, FOSL(), n_iter=2)
    with pytest.raises(TypeError, match="solver"):
        run(P, object(), n_iter=2)
    with pytest.raises(ValueError, match="x0"):
        run(P, s, n_iter=2, x0=asxp(np.zeros(5)))
    with pytest.raises(TypeError, match="y0"):
        run(P, s, n_iter=2, y0=asxp(np.zeros(4), dtype="float32"))
    with pytest.raises(ValueError, match="x0"):
        run(P, s, n_iter=2, x0=asxp(np.full(3, np.nan)))
    with pytest.raises(ValueError, match="metrics"):
        run(P, s, n_iter=2, metrics=("loss",))
    with pytest.raises(TypeError, match="x0"):
        run(P, s, n_iter=2, x0=np.zeros(3).tolist())


# ------------------------------------------------------- faults the driver survives
def test_diverged_result_holds_only_finite_arrays():
    """FOSL with a huge z step: z overflows first; the result keeps the last finite state."""
    P = MinimaxQuadratic.random(4, 2, 2, 3, seed=0)
    with np.errstate(all="ignore"):
        r = run(P, FOSL(lr_z=50.0), n_iter=200, record_every=5, metrics=("value",))
    assert r.status == "diverged"
    for name in ("x", "y", "z", "v"):
        assert np.all(np.isfinite(to_host(getattr(r.state, name)))), name


def test_diverged_adam_moments_are_checked():
    P = LogRegHPO.synthetic(n_samples=40, n_features=3, seed=0)
    with np.errstate(all="ignore"):
        r = run(P, F2SAAdam(n_inner=2, lam0=1e305, delta=0.0), n_iter=20, record_every=1,
                metrics=())
    assert r.status == "diverged"
    for a in (r.state.x, r.state.y, r.state.z, r.state.opt_x.m, r.state.opt_x.v):
        assert np.all(np.isfinite(to_host(a)))


def test_a_failing_metric_records_nan_and_a_note():
    P = _quadratic(np, None)

    class Failing(type(P)):
        pass

    bad = Failing.__new__(Failing)
    bad.__dict__.update(P.__dict__)
    calls = []

    def hypergradient(x, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise np.linalg.LinAlgError("Singular matrix")
        return P.hypergradient(x, **kw)

    bad.hypergradient = hypergradient
    r = run(bad, MinimaxOPT(lr=0.01), n_iter=30, record_every=10)
    h = r.history["hypergradient_norm"]
    assert r.status == "max_iter" and np.isnan(h[1]) and np.all(np.isfinite(h[[0, 2, 3]]))
    assert len(r.notes) == 1 and "LinAlgError" in r.notes[0] and "iteration 10" in r.notes[0]
    assert "LinAlgError" in r.message


def _write_good_checkpoint(tmp_path):
    P = Quadratic.random(2, 3, seed=0)
    path = tmp_path / "c.npz"
    run(P, MinimaxOPT(lr=0.01), n_iter=10, record_every=5, checkpoint=str(path))
    return P, path


def _rewrite(path, change):
    with np.load(path) as d:
        files = {k: d[k] for k in d.files}
    change(files)
    with open(path, "wb") as fh:
        np.savez(fh, **files)


def _meta(change):
    import json

    def edit(files):
        meta = json.loads(str(files["meta"]))
        change(meta)
        files["meta"] = np.array(json.dumps(meta))
    return edit


@pytest.mark.parametrize("corrupt,match", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not an .npz|cannot read"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(300)), "not an .npz|cannot read"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)), "not an .npz"),
    (lambda p: _rewrite(p, lambda f: f.pop("meta")), "'meta' is missing"),
    (lambda p: _rewrite(p, lambda f: f.update(meta=np.array("{not json"))), "not JSON"),
    (lambda p: _rewrite(p, lambda f: f.pop("array:state.x")), "array:state.x"),
    (lambda p: _rewrite(p, lambda f: f.update({"array:state.x": np.zeros(2, np.int64)})),
     "state.x has shape .* dtype int64"),
    (lambda p: _rewrite(p, lambda f: f.update({"history:value": f["history:value"][:-1]})),
     "different lengths"),
    (lambda p: _rewrite(p, lambda f: f.update({k: f[k][:-1] for k in f if k.startswith("history:")})),
     "history ends at iteration 5"),
    (lambda p: _rewrite(p, _meta(lambda m: m.pop("calls"))), "lacks 'calls'"),
    (lambda p: _rewrite(p, _meta(lambda m: m.update(format=99))), "unknown format"),
], ids=["empty", "truncated", "bad-zip", "random", "no-meta", "meta-not-json", "no-x",
        "int64-x", "history-column-short", "history-row-short", "no-calls", "format"])
def test_corrupted_checkpoint_is_one_value_error_naming_the_file(tmp_path, corrupt, match):
    P, path = _write_good_checkpoint(tmp_path)
    corrupt(path)
    with pytest.raises(ValueError, match=match) as info:
        run(P, MinimaxOPT(lr=0.01), n_iter=20, record_every=5, checkpoint=str(path))
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg


def test_checkpoint_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _, path = _write_good_checkpoint(tmp_path)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [f for f in os.listdir(tmp_path) if f.startswith(".ckpt-")] == []


def test_minimaxopt_past_its_horizon_says_so():
    P = Quadratic.random(2, 3, seed=0)
    r = run(P, MinimaxOPT(lr=0.01, steps_per_stage=5, n_stages=2), n_iter=12, metrics=())
    assert "past N*K = 10 steps" in r.message and "n_stages" in r.message
    r = run(P, MinimaxOPT(lr=0.01, steps_per_stage=5, n_stages=2), n_iter=10, metrics=())
    assert "past" not in r.message
