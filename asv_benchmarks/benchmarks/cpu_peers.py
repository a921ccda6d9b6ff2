"""CPU peers: refbilevel on NumPy against hand-written NumPy, ``jax.jit`` and PyTorch steps.

One step of MinimaxOPT, F2SA (T = 5), F2SA-Adam (T = 5), AID-CG (20 inner GD steps, 10 CG
steps) and ITD (20 inner steps, full reverse) on binary logistic hyperparameter
optimisation (``LogRegHPO``, ``reduction="sum"``, ``parametrization="exp"``), full batch,
the ``n`` rows split into training and validation halves, written

* by refbilevel (the solver's ``step`` on NumPy arrays);
* by hand in plain NumPy, as a competent programmer would: logistic function from
  ``scipy.special.expit``, two matrix-vector products per gradient, and in AID and ITD the
  curvature weights :math:`\\sigma'(A y)` computed once per point and reused by every
  Hessian-vector product (two data passes per product instead of three);
* the same code traced by ``jax.jit`` (the data are arguments of the jitted function, never
  closed-over constants; Python loops unroll at trace time);
* the same code in PyTorch eager, where PyTorch is installed.

Each peer of a step with point pairs (MinimaxOPT, F2SA, F2SA-Adam) comes in two forms, the
two gradients of a pair as one stacked product (``A @ [y z]``) or as one matrix-vector
product per point; AID-CG and ITD have no pairs: their two forms would be the same code,
so one is timed. The NumPy and PyTorch peers run each form on the data as given
(row-major) and on a column-major copy (``-colmajor``), the layout refbilevel's full-batch
products read on NumPy (:func:`refbilevel._backend.matvec_layout`): a competent
hand-written step may lay its data out as well. A peer's time is that of its fastest form
(the lowest median over the rounds), and its ratios are taken against that form's own time
in each round. Every peer is first checked numerically equal to refbilevel's step
(:func:`check_peers`); one that is not is reported and left out.

Timing (:func:`compare`): one process, one thread everywhere (the BLAS through
``threadpoolctl``, PyTorch through ``torch.set_num_threads``, XLA through ``XLA_FLAGS``, set
before JAX is imported) and every thread of the process pinned to one processor (XLA's
runtime otherwise runs its dot products on a second core; :func:`limit_threads`),
contenders interleaved in rounds (each contender runs a batch of calls long enough to
time, in an order rotated every round) and every ratio taken within a round, then the
median over rounds, in process CPU time and in wall-clock time. On a machine shared with
other busy processes the absolute times move by tens of percent from minute to minute;
interleaving and per-round ratios are what keep the ratios meaningful, and CPU time
leaves out the turns the process waited for a core.

Bytes floor (:func:`data_passes`, :func:`compare`): the data passes of one refbilevel step
counted by the operation counter on ``array_api_strict`` arrays (every matrix product
with a data matrix operand; a stacked product reads its matrix once), times the data's
bytes, over the measured single-thread copy bandwidth (bytes read + written per second,
wall-clock and CPU time).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np

from refbilevel import _backend as B

from .common import PROFILE, XPBenchmark, get_xp
from .measure import counting_array_ops, median_interval

#: XLA on the CPU: one thread (read when JAX is first imported)
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "jax" not in sys.modules:        # asv imports this module before any benchmark's setup
    os.environ.setdefault("XLA_FLAGS", XLA_ONE_THREAD)

SOLVERS = ("minimaxopt", "f2sa", "f2sa_adam", "aid_cg", "itd")
#: name -> (n rows in all, d); the training and validation sets each get n / 2 rows
SIZES = {"small": (2_000, 50), "medium": (20_000, 500), "tall": (200_000, 100)}
DTYPES = ("float64", "float32")
PEERS = ("numpy", "jax", "torch")
#: the forms timed per peer (True: the pair products stacked, False: matrix-vector products)
PEER_FORMS = {"numpy": (True, False), "jax": (True, False), "torch": (True, False)}
#: the data layouts timed per peer: the arrays as given (C order) and a column-major copy
#: (XLA lays its arguments out itself: the JAX peer gets the arrays as given)
PEER_LAYOUTS = {"numpy": ("C", "F"), "jax": ("C",), "torch": ("C", "F")}
#: the solvers whose steps take gradients of point pairs (the only ones whose forms differ)
PAIRED = ("minimaxopt", "f2sa", "f2sa_adam")
#: relative difference of (x, y[, z]) after one step accepted as "the same step"
CHECK_RTOL = {"float64": 1e-9, "float32": 2e-3}

# the settings of refbilevel's solvers at their first step (iteration 0)
MMO_ALPHA, MMO_LR = 2.0, 0.1              # MinimaxOPT(): lam0 * tau ("pre"), lr
F2SA_T, F2SA_LR, F2SA_LAM = 5, 0.01, 1.0  # F2SA(n_inner=5): alpha = gamma = eta
ADAM_LR, ADAM_B1, ADAM_B2, ADAM_EPS = 1e-3, 0.9, 0.99, 1e-8   # F2SAAdam(n_inner=5)
AID_INNER, AID_CG = 20, 10                # AID(n_inner=20, n_linear=10, method="cg"), lr 1
ITD_INNER = 20                            # ITD(n_inner=20), lr 1, full reverse


def refbilevel_solver(name: str):
    """The refbilevel solver the peers reproduce (the asv suite's settings)."""
    from refbilevel.solvers import AID, F2SA, ITD, F2SAAdam, MinimaxOPT

    return {"minimaxopt": lambda: MinimaxOPT(),
            "f2sa": lambda: F2SA(n_inner=F2SA_T),
            "f2sa_adam": lambda: F2SAAdam(n_inner=F2SA_T),
            "aid_cg": lambda: AID(n_inner=AID_INNER, n_linear=AID_CG, method="cg"),
            "itd": lambda: ITD(n_inner=ITD_INNER)}[name]()


# ====================================================================== the peers
def _lib(peer: str):
    """The handful of functions a hand-written step needs, from one library."""
    if peer == "numpy":
        from scipy.special import expit

        return SimpleNamespace(exp=np.exp, sigmoid=expit, stack=np.stack, sqrt=np.sqrt,
                               abs=np.abs)
    if peer == "jax":
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)     # float64 arrays stay float64
        return SimpleNamespace(exp=jnp.exp, sigmoid=jax.nn.sigmoid, stack=jnp.stack,
                               sqrt=jnp.sqrt, abs=jnp.abs)
    if peer == "torch":
        import torch

        return SimpleNamespace(exp=torch.exp, sigmoid=torch.sigmoid, stack=torch.stack,
                               sqrt=torch.sqrt, abs=torch.abs)
    raise ValueError(f"unknown peer {peer!r}")


def plain_steps(peer, stacked: bool) -> dict:
    r"""Hand-written steps ``fn(x, y, A, b, Av, bv) -> (x, y[, z])`` for ``peer``.

    ``peer`` is a name of :data:`PEERS` or a namespace with ``exp``, ``sigmoid``,
    ``stack``, ``sqrt`` (the functions the steps use).

    Binary logistic, :math:`\lambda = e^x`: :math:`\nabla_y g = \frac1n A^\top(-b\,
    \sigma(-b\,Ay)) + \lambda y`, :math:`\nabla_x g = \frac12\lambda y^2`,
    :math:`\nabla^2_{yy} g\,v = \frac1n A^\top(\sigma'(Ay) \odot Av) + \lambda v`,
    :math:`\nabla^2_{xy} g\,v = \lambda\, y v`, :math:`\nabla_x f = 0`. ``stacked`` reads
    ``A`` once for a pair of points (``A @ [y z]``) instead of once per point.
    """
    L = _lib(peer) if isinstance(peer, str) else peer

    def grad_loss(A, b, y):
        return A.T @ (-b * L.sigmoid(-b * (A @ y))) / A.shape[0]

    def grad_pair(A, b, y, z):                  # loss gradients at two points
        if not stacked:
            return grad_loss(A, b, y), grad_loss(A, b, z)
        S = L.stack([y, z]) @ A.T
        G = (-b * L.sigmoid(-b * S)) @ A / A.shape[0]
        return G[0, ...], G[1, ...]

    def curvature(A, y):                        # sigma'(A y) / n: reused by every HVP
        p = L.sigmoid(A @ y)
        return p * (1.0 - p) / A.shape[0]

    def hvp(A, w, lam, v):
        return A.T @ (w * (A @ v)) + lam * v

    def adam(g, m, v, t, lr):
        m = ADAM_B1 * m + (1.0 - ADAM_B1) * g
        v = ADAM_B2 * v + (1.0 - ADAM_B2) * (g * g)
        mh, vh = m / (1.0 - ADAM_B1 ** t), v / (1.0 - ADAM_B2 ** t)
        return -lr * mh / (L.sqrt(vh) + ADAM_EPS), m, v

    def minimaxopt(x, y, A, b, Av, bv):
        z = y
        lam = L.exp(x)
        gy_y, gy_z = grad_pair(A, b, y, z)
        gx = MMO_ALPHA * (0.5 * lam * (y * y - z * z))
        gy = grad_loss(Av, bv, y) + MMO_ALPHA * (gy_y + lam * y)
        gz = MMO_ALPHA * (gy_z + lam * z)
        return x - MMO_LR * gx, y - MMO_LR * gy, z - MMO_LR * gz

    def f2sa_inner(x, y, z, A, b, Av, bv, lam, update):
        for t in range(F2SA_T):
            g_z, g_y = grad_pair(A, b, z, y)
            d_z = g_z + lam * z
            d_y = grad_loss(Av, bv, y) + F2SA_LAM * (g_y + lam * y)
            z, y = update(t, "z", z, d_z), update(t, "y", y, d_y)
        return y, z

    def f2sa(x, y, A, b, Av, bv):
        lam = L.exp(x)
        y, z = f2sa_inner(x, y, y, A, b, Av, bv, lam,
                          lambda t, name, u, d: u - F2SA_LR * d)
        d_x = F2SA_LAM * (0.5 * lam * (y * y - z * z))
        return x - F2SA_LR * d_x, y, z

    def f2sa_adam(x, y, A, b, Av, bv):
        lam = L.exp(x)
        moments = {"y": (0.0 * y, 0.0 * y), "z": (0.0 * y, 0.0 * y)}

        def update(t, name, u, d):
            step, m, v = adam(d, *moments[name], t + 1, ADAM_LR)
            moments[name] = (m, v)
            return u + step

        y, z = f2sa_inner(x, y, y, A, b, Av, bv, lam, update)
        d_x = F2SA_LAM * (0.5 * lam * (y * y - z * z))
        step, _, _ = adam(d_x, 0.0 * x, 0.0 * x, 1, ADAM_LR)
        return x + step, y, z

    def aid_cg(x, y, A, b, Av, bv):
        lam = L.exp(x)
        for _ in range(AID_INNER):
            y = y - (grad_loss(A, b, y) + lam * y)
        w = curvature(A, y)
        r = grad_loss(Av, bv, y)                 # CG on H v = grad_y f from v = 0
        v, p, rs = 0.0 * r, r, r @ r
        for _ in range(AID_CG):
            hp = hvp(A, w, lam, p)
            alpha = rs / (p @ hp)
            v, r = v + alpha * p, r - alpha * hp
            rs_new = r @ r
            p, rs = r + (rs_new / rs) * p, rs_new
        return x + lam * y * v, y                # x - (0 - cross(v))

    def itd(x, y, A, b, Av, bv):
        lam = L.exp(x)
        ys, ws = [], []
        for _ in range(ITD_INNER):
            s = A @ y
            p = L.sigmoid(s)
            ys.append(y)
            ws.append(p * (1.0 - p) / A.shape[0])       # sigma'(A y_t) / n, kept
            y = y - (A.T @ (-b * L.sigmoid(-b * s)) / A.shape[0] + lam * y)
        h, a = 0.0 * x, grad_loss(Av, bv, y)
        for j in range(ITD_INNER - 1, -1, -1):          # t = T-1 down to 0
            h = h - lam * ys[j] * a
            if j > 0:
                a = a - hvp(A, ws[j], lam, a)
        return x - h, y

    return {"minimaxopt": minimaxopt, "f2sa": f2sa, "f2sa_adam": f2sa_adam,
            "aid_cg": aid_cg, "itd": itd}


def jitted_steps(stacked: bool) -> dict:
    """:func:`plain_steps` for JAX, each wrapped in ``jax.jit``."""
    import jax

    return {k: jax.jit(f) for k, f in plain_steps("jax", stacked).items()}


# ====================================================================== data
def host_data(n: int, d: int, dtype: str, seed: int = 0):
    """``(A, b, Av, bv)`` host arrays: Gaussian features, labels ``sign(A w + noise)``, halves."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d), dtype=np.float32)
    score = A @ rng.standard_normal(d, dtype=np.float32) + rng.standard_normal(n, dtype=np.float32)
    b = np.where(score >= 0, 1.0, -1.0)
    h = n // 2
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (A[:h], b[:h], A[h:], b[h:]))


def start_point(d: int, dtype: str, seed: int = 3):
    """``(x, y)``: small random host values (a step that moves every coordinate)."""
    rng = np.random.default_rng(seed)
    return tuple((0.1 * rng.standard_normal(d)).astype(dtype) for _ in range(2))


def _to(peer, a, layout="C"):
    """``a`` for ``peer``; a matrix in ``layout`` ("C": row-major, "F": column-major)."""
    if a.ndim == 2:
        a = np.asfortranarray(a) if layout == "F" else np.ascontiguousarray(a)
    if peer == "numpy":
        return a
    if peer == "jax":
        import jax

        if a.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        return jax.device_put(a)
    import torch

    return torch.from_numpy(a)                 # a column-major array keeps its strides


def _host(a):
    try:
        return np.asarray(a)
    except TypeError:
        return a.numpy()


class Contenders:
    """The callables of one (size, dtype, solver): refbilevel and every installed peer.

    ``calls[name]`` is a zero-argument callable running one step, ``waits[name]`` ends a
    batch (JAX: block on the last result), ``family[name]`` the peer it belongs to.
    ``forms`` and ``layouts`` restrict the peers' forms (:data:`PEER_FORMS`) and data
    layouts (:data:`PEER_LAYOUTS`) to the ones given.
    """

    def __init__(self, solver: str, data, dtype: str, peers=PEERS, forms=None, layouts=None):
        from refbilevel.oracle import Oracle
        from refbilevel.problems import LogRegHPO

        self.solver, self.dtype = solver, dtype
        xp = get_xp("numpy")
        problem = LogRegHPO(*(xp.asarray(a) for a in data))
        x0, y0 = start_point(data[0].shape[1], dtype)
        rb = refbilevel_solver(solver)
        state = rb.init(problem, xp.asarray(x0), xp.asarray(y0), np.random.default_rng(0))
        self.problem, self.rb_solver, self.rb_state = problem, rb, state
        # the step as refbilevel.run makes it: through one counting oracle layer, built
        # once (a bare problem would be wrapped in a fresh uncounted one at every step)
        oracle = Oracle(problem)
        self.calls = {"refbilevel": lambda: rb.step(oracle, state)}
        self.waits = {"refbilevel": lambda: None}
        self.family = {"refbilevel": "refbilevel"}
        self.unavailable = {}
        self.fns = {}
        for peer in peers:
            wanted = PEER_FORMS[peer] if forms is None else forms
            if solver not in PAIRED:         # both forms are the same code: time it once
                wanted = (False,) if False in wanted else wanted[:1]
            for layout in PEER_LAYOUTS[peer] if layouts is None else layouts:
                try:
                    args = tuple(_to(peer, a, layout) for a in (x0, y0) + tuple(data))
                except ImportError as exc:
                    self.unavailable[peer] = f"not installed ({exc.name})"
                    break
                for stacked in wanted:
                    self._add_peer(peer, solver, stacked, layout, args)

    def _add_peer(self, peer, solver, stacked, layout, args):
        name = f"{peer}-{'stacked' if stacked else 'matvec'}" + ("-colmajor" if layout == "F"
                                                                  else "")
        fn = (jitted_steps(stacked) if peer == "jax" else plain_steps(peer, stacked))[solver]
        self.family[name] = peer
        self.fns[name] = (fn, args)
        if peer == "jax":
            import jax

            last = [None]

            def call(fn=fn, args=args, last=last):
                last[0] = fn(*args)            # asynchronous dispatch

            self.calls[name] = call
            self.waits[name] = lambda last=last: jax.block_until_ready(last[0])
        else:
            self.calls[name] = lambda fn=fn, args=args: fn(*args)
            self.waits[name] = lambda: None

    def outputs(self, name):
        """``(x, y[, z])`` of one step of contender ``name`` as host float64 arrays."""
        if name == "refbilevel":
            st = self.rb_solver.step(self.problem, self.rb_state)
            out = (st.x, st.y) + ((st.z,) if getattr(st, "z", None) is not None else ())
            return [np.asarray(B.to_host(a), dtype=np.float64) for a in out]
        fn, args = self.fns[name]
        return [np.asarray(_host(a), dtype=np.float64) for a in fn(*args)]


def check_peers(cont: Contenders) -> dict:
    """Largest relative difference of ``(x, y[, z])`` between each peer and refbilevel.

    ``||peer - refbilevel|| / ||refbilevel||`` per output, the largest over the outputs; a
    peer whose difference exceeds :data:`CHECK_RTOL` is removed from ``cont``.
    """
    ref = cont.outputs("refbilevel")
    out = {}
    for name in [k for k in cont.calls if k != "refbilevel"]:
        got = cont.outputs(name)
        err = max(float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref))
        out[name] = err
        if not err <= CHECK_RTOL[cont.dtype]:
            for d in (cont.calls, cont.waits, cont.family, cont.fns):
                d.pop(name)
            cont.unavailable[name] = f"differs from refbilevel by {err:.1e}"
    return out


# ====================================================================== threads
class _ThreadLimits:
    """What :func:`limit_threads` changed, restored by :meth:`restore_original_limits`."""

    def __init__(self, blas, affinity):
        self._blas, self._affinity = blas, affinity

    def restore_original_limits(self):
        self._blas.restore_original_limits()
        for tid, cpus in self._affinity.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:                  # the thread has ended since
                pass


def limit_threads(n: int = 1):
    """Fix every library's thread count to ``n``; return the limits to keep (and restore).

    The BLAS (and any OpenMP pool) through ``threadpoolctl``, PyTorch (when imported)
    through ``torch.set_num_threads``; XLA reads :data:`XLA_ONE_THREAD` from ``XLA_FLAGS`` when
    JAX is imported (this module sets it on import when JAX is not yet loaded). With
    ``n = 1`` every thread of the process is also pinned to one processor (Linux), because
    XLA's CPU runtime runs a dot product on a second core despite those flags (a jitted
    ``A @ v`` at 100,000 x 100 took 8.7 ms of CPU time in 4.5 ms of wall-clock time, and
    8.0 ms in 8.0 ms pinned): pinned, every contender has one core, and wall-clock and
    CPU time measure the same thing.
    """
    from threadpoolctl import threadpool_limits

    limiter = threadpool_limits(limits=n)
    torch = sys.modules.get("torch")        # only once imported: importing it is slow
    if torch is not None:
        torch.set_num_threads(n)
    affinity = {}
    if n == 1 and hasattr(os, "sched_setaffinity"):
        cpu = {min(os.sched_getaffinity(0))}
        for tid in (int(t) for t in os.listdir("/proc/self/task")):
            try:
                affinity[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpu)
            except OSError:                  # the thread ended while we listed them
                affinity.pop(tid, None)
    return _ThreadLimits(limiter, affinity)


def thread_report() -> dict:
    """What runs with how many threads: BLAS libraries (threadpoolctl), PyTorch, XLA flags."""
    from threadpoolctl import threadpool_info

    out = {"threadpools": [{k: v for k, v in i.items() if k != "filepath"}
                           for i in threadpool_info()],
           "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")}
    if hasattr(os, "sched_getaffinity"):
        out["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["torch_blas"] = "mkl" if torch.backends.mkl.is_available() else "other"
    return out


def cpu_model() -> str:
    """``lscpu``'s model name (or ``platform.processor()``)."""
    import platform
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


# ====================================================================== data passes
#: the operations that read a matrix operand once (names as :func:`counting_array_ops` counts)
_PRODUCTS = frozenset({"__matmul__", "__rmatmul__", "matmul", "linalg.matmul", "tensordot",
                       "vecdot"})


def _count_data_passes(step, data_shapes):
    """Matrix products with a data-matrix operand made by ``step()`` on array_api_strict
    (:func:`.measure.counting_array_ops` restricted to them)."""
    from array_api_strict._array_object import Array

    shapes = {tuple(s) for s in data_shapes} | {tuple(s)[::-1] for s in data_shapes}

    def reads_data(name, args):
        return name in _PRODUCTS and any(isinstance(a, Array) and a.ndim == 2
                                         and tuple(a.shape) in shapes for a in args)

    with counting_array_ops(select=reads_data) as counts:
        step()
    return sum(counts.values())


def data_passes(solver: str, n: int = 64, d: int = 8) -> dict:
    """Data passes of one step: ``{"refbilevel": k, "needed": k_min}`` (same for any size).

    Counted on ``array_api_strict`` arrays: every matrix product whose operand is a data
    matrix (training or validation, which have the same shape here) reads it once. A
    stacked product of several points counts once. ``refbilevel`` is the solver's step;
    ``needed`` the fewer of the two hand-written forms (:func:`plain_steps` run on
    array_api_strict), i.e. what the algorithm needs.
    """
    import array_api_strict as strict

    from refbilevel.problems import LogRegHPO

    data = [strict.asarray(a) for a in host_data(n, d, "float64")]
    problem = LogRegHPO(*data)
    x0, y0 = (strict.asarray(a) for a in start_point(d, "float64"))
    rb = refbilevel_solver(solver)
    state = rb.init(problem, x0, y0, np.random.default_rng(0))
    shapes = [data[0].shape, data[2].shape]
    out = {"refbilevel": _count_data_passes(lambda: rb.step(problem, state), shapes)}
    lib = SimpleNamespace(exp=strict.exp, sigmoid=lambda t: 1.0 / (1.0 + strict.exp(-t)),
                          stack=strict.stack, sqrt=strict.sqrt, abs=strict.abs)
    counts = [_count_data_passes(lambda fn=plain_steps(lib, stacked)[solver]: fn(x0, y0, *data),
                                 shapes) for stacked in (True, False)]
    out["needed"] = min(counts)
    return out


# ====================================================================== timing
def interleaved_times(cont: Contenders, *, rounds: int, min_time: float) -> tuple[dict, dict]:
    """Seconds per call of every contender, one value per round (interleaved).

    Each contender first runs once (warm-up: JIT compilation, page faults) and once more
    timed, which sets its batch length ``k`` (calls per batch, at least ``min_time``
    seconds). Every round then runs one batch of each contender, in an order rotated
    by one place per round, and records the batch time over ``k``: wall-clock time and
    the process's CPU time (``time.process_time``, all threads). With every library on
    one thread, CPU time is what the step costs when the process holds a core; on a
    machine where other processes take turns on the cores, wall-clock time also counts
    the turns it waited.

    Returns
    -------
    wall, cpu : dict
        Contender name -> list of seconds per call, one per round.
    """
    names = list(cont.calls)
    k = {}
    for name in names:
        call, wait = cont.calls[name], cont.waits[name]
        call()
        wait()
        t0 = time.perf_counter()
        call()
        wait()
        k[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            call, wait = cont.calls[name], cont.waits[name]
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(k[name]):
                call()
            wait()
            wall[name].append((time.perf_counter() - t0) / k[name])
            cpu[name].append((time.process_time() - c0) / k[name])
    return wall, cpu


def summarize(times: dict, family: dict, prefix: str = "") -> dict:
    """Per peer: the median time of its faster form and the median per-round ratio to it.

    The faster form is the one with the lower median over the rounds; the ratio in a round
    is refbilevel's time over that form's time in the same round. (Taking, in each round,
    the faster of two forms would hand the peer the minimum of two noisy samples against
    refbilevel's one: on a loaded machine that alone moves the ratio by several per cent,
    even for two forms that run the same code.) Each median ratio comes with a
    distribution-free 95 % confidence interval (:func:`.measure.median_interval`).
    """
    ref = times["refbilevel"]
    out = {f"{prefix}t_refbilevel": statistics.median(ref)}
    for peer in sorted(set(family.values()) - {"refbilevel"}):
        forms = [n for n in times if family[n] == peer]
        best = min(forms, key=lambda n: statistics.median(times[n]))
        out[f"{prefix}t_{peer}"] = statistics.median(times[best])
        ratios = [a / b for a, b in zip(ref, times[best])]
        out[f"{prefix}ratio_{peer}"] = statistics.median(ratios)
        lo, hi, coverage = median_interval(ratios)
        out[f"{prefix}ratio_{peer}_ci"] = (lo, hi)
        out[f"{prefix}ratio_ci_coverage"] = coverage
        out[f"{prefix}form_{peer}"] = best.split("-", 1)[1]
    return out


def copy_bandwidth(nbytes: int = 1 << 28, repeat: int = 7) -> tuple[float, float]:
    """Single-thread host copy bandwidth, bytes read + written per second (median).

    Returns ``(wall, cpu)``: per second of wall-clock time and of process CPU time.
    """
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        np.copyto(b, a)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 2 * nbytes / statistics.median(wall), 2 * nbytes / statistics.median(cpu)


def compare(sizes=tuple(SIZES), dtypes=DTYPES, solvers=SOLVERS, *, rounds=7,
            rounds_tall=5, min_time=0.2, peers=PEERS, copy_bytes=1 << 28, log=print) -> dict:
    """The whole CPU peer table: ``{"env": ..., "rows": [...]}`` (see the module docstring)."""
    for peer in ("torch", "jax"):
        if peer in peers:
            try:
                __import__(peer)           # before the thread limits are set and reported
            except ImportError:
                pass
    limiter = limit_threads(1)
    import datetime
    import platform

    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__, "threads": thread_report()}
    from importlib import metadata

    for mod in ("jax", "torch", "scipy", "threadpoolctl"):
        try:
            env[mod] = metadata.version(mod)      # without importing the package
        except metadata.PackageNotFoundError:
            env[mod] = None
    env["copy_bw_before"], env["copy_bw_cpu_before"] = copy_bandwidth(copy_bytes)
    passes = {s: data_passes(s) for s in solvers}
    rows = []
    for size in sizes:
        n, d = SIZES[size] if isinstance(size, str) else size
        for dt in dtypes:
            data = host_data(n, d, dt)
            nbytes = data[0].nbytes
            bw, bw_cpu = copy_bandwidth(copy_bytes)
            for solver in solvers:
                cont = Contenders(solver, data, dt, peers=peers)
                check = check_peers(cont)
                wall, cpu = interleaved_times(
                    cont, rounds=rounds_tall if n * d >= 10**7 else rounds, min_time=min_time)
                row = {"solver": solver, "n": n, "d": d, "dtype": dt, "check": check,
                       "unavailable": cont.unavailable, "copy_bw": bw, "copy_bw_cpu": bw_cpu,
                       "passes": passes[solver], "data_bytes": nbytes,
                       "rounds": len(wall["refbilevel"])}
                row.update(summarize(wall, cont.family))
                row.update(summarize(cpu, cont.family, prefix="cpu_"))
                floor = passes[solver]["needed"] * nbytes
                row["t_floor"], row["cpu_t_floor"] = floor / bw, floor / bw_cpu
                row["step_over_floor"] = row["t_refbilevel"] / row["t_floor"]
                row["cpu_step_over_floor"] = row["cpu_t_refbilevel"] / row["cpu_t_floor"]
                rows.append(row)
                log({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
            del data
    env["copy_bw_after"], env["copy_bw_cpu_after"] = copy_bandwidth(copy_bytes)
    limiter.restore_original_limits()
    return {"env": env, "rows": rows}


# ====================================================================== step against its oracles
def step_against_oracles(solvers=("minimaxopt", "f2sa", "f2sa_adam"), size="small",
                         dtype="float64", *, rounds=15, min_time=0.05) -> list:
    """refbilevel's step and the hand-written NumPy step, each over refbilevel's oracle calls.

    The oracle calls of one refbilevel step (:func:`.measure.record_step_oracles`) are
    replayed in the step's order on the bare problem (what ``step_overhead.py`` calls the
    replay); the refbilevel step (through a counting oracle, as :func:`refbilevel.run.run`
    makes it), the hand-written NumPy step in each of its forms and layouts
    (:func:`plain_steps`, checked against refbilevel's step by :func:`check_peers`) and
    the replay run interleaved in rounds, one thread on one processor. A hand-written
    step has no oracle layer, no validation and no bookkeeping: its ratio to the replay is
    what the step's own arithmetic on parameter-sized vectors (and a plain Python loop)
    costs over the oracle work, the reference point for refbilevel's ratio. Medians of the
    per-round ratios (CPU time) with 95 % intervals; the peer at its fastest form.
    """
    from .measure import record_step_oracles

    limiter = limit_threads(1)
    n, d = SIZES[size] if isinstance(size, str) else size
    data = host_data(n, d, dtype)
    out = []
    for solver in solvers:
        cont = Contenders(solver, data, dtype, peers=("numpy",))
        errors = check_peers(cont)
        calls = record_step_oracles(cont.problem, cont.rb_solver, cont.rb_state)
        replayed = [(getattr(cont.problem, name), args, kwargs) for name, args, kwargs in calls]

        def replay(replayed=replayed):
            for method, args, kwargs in replayed:
                method(*args, **kwargs)

        cont.calls["oracle calls"], cont.waits["oracle calls"] = replay, lambda: None
        cont.family["oracle calls"] = "oracle calls"
        _, cpu = interleaved_times(cont, rounds=rounds, min_time=min_time)
        peers = [k for k in cpu if cont.family[k] == "numpy"]
        best = min(peers, key=lambda k: statistics.median(cpu[k]))
        row = {"solver": solver, "n": n, "d": d, "dtype": dtype, "rounds": rounds,
               "oracle_calls": len(calls), "peer_form": best, "check": errors[best],
               "t_oracles_us": 1e6 * statistics.median(cpu["oracle calls"])}
        for key, name in (("refbilevel", "refbilevel"), ("peer", best)):
            ratios = [a / b for a, b in zip(cpu[name], cpu["oracle calls"])]
            lo, hi, _ = median_interval(ratios)
            row[f"t_{key}_us"] = 1e6 * statistics.median(cpu[name])
            row[f"{key}_over_oracles"] = statistics.median(ratios)
            row[f"{key}_over_oracles_ci"] = (lo, hi)
        out.append(row)
    limiter.restore_original_limits()
    return out


def render_step_against_oracles(rows) -> str:
    L = ["| solver | n × d | dtype | oracle calls | Σ oracle calls µs | refbilevel step µs "
         "| ÷ Σ | hand-written NumPy step µs (form) | ÷ Σ | check |", "|---" * 10 + "|"]
    ci = "[{:.2f}, {:.2f}]".format
    for r in rows:
        L.append(f"| {r['solver']} | {r['n']:,} × {r['d']} | {r['dtype']} | "
                 f"{r['oracle_calls']} | {r['t_oracles_us']:.1f} | {r['t_refbilevel_us']:.1f} | "
                 f"{r['refbilevel_over_oracles']:.2f} {ci(*r['refbilevel_over_oracles_ci'])} | "
                 f"{r['t_peer_us']:.1f} ({r['peer_form']}) | {r['peer_over_oracles']:.2f} "
                 f"{ci(*r['peer_over_oracles_ci'])} | {r['check']:.0e} |")
    return "\n".join(L) + "\n"


# ====================================================================== bytes floor breakdown
#: matrix products of one step on the training or validation matrix: (point pairs, single
#: forward products ``A @ x``, single transposed products ``A.T @ g``); a pair is one
#: forward and one transposed product of two stacked points (:func:`refbilevel._backend.matvecs`)
PRODUCTS = {"minimaxopt": (1, 1, 1),                       # the pair on g, one gradient of f
            "f2sa": (F2SA_T, F2SA_T, F2SA_T), "f2sa_adam": (F2SA_T, F2SA_T, F2SA_T),
            "aid_cg": (0, AID_INNER + 1 + 1 + AID_CG, AID_INNER + 1 + AID_CG),
            "itd": (0, 2 * ITD_INNER, 2 * ITD_INNER)}


def floor_breakdown(size="tall", dtypes=DTYPES, solvers=SOLVERS, *, rounds=5,
                    min_time=0.05, copy_bytes=1 << 28, log=print) -> dict:
    """Where one step's time goes, against its bytes floor (one thread, CPU time).

    For each dtype, in interleaved rounds: the single-thread copy bandwidth
    (:func:`copy_bandwidth`'s kernel), the products a step is made of on the training
    matrix in the layout refbilevel's step reads (:func:`refbilevel._backend.matvec_layout`:
    ``A @ x``, ``A.T @ g`` and refbilevel's own forms of a point pair), one elementwise
    operation on an ``n``-vector, and every solver's refbilevel step and hand-written NumPy
    step (its fastest form). The step's BLAS time is its products
    (:data:`PRODUCTS`, checked against the operation counter's pass count) times their
    measured times; the rest of the step is elementwise work and Python. Each product's
    read rate (data bytes / time) against the copy bandwidth is the BLAS's share of the
    distance to the floor. Each contender runs a batch of at least ``min_time`` CPU
    seconds per round.

    The oracles do not run those products one by one where the model blocks its passes
    (:func:`refbilevel._backend.row_blocks`: a gradient's two products of each row block
    made while the block is cached). The model's own passes are therefore timed too: a
    gradient (:meth:`~refbilevel.models.linear.LinearModel.grad`, one forward and one
    transposed product) and a gradient at a point pair
    (:meth:`~refbilevel.models.linear.LinearModel.grad_many`); a step's passes are its
    pairs, its forward-and-transposed product couples (gradients and Hessian-vector
    products, timed as gradients) and its lone forward products, and the rest of the step
    is what those passes leave (elementwise work on parameter vectors, Python).
    """
    from refbilevel.models.linear import LinearModel

    limiter = limit_threads(1)
    n, d = SIZES[size] if isinstance(size, str) else size
    out = {"n": n, "d": d, "threads": thread_report(), "dtypes": {}}
    for dt in dtypes:
        data = host_data(n, d, dt)
        A = data[0]
        rng = np.random.default_rng(1)
        x, g = rng.standard_normal(d).astype(dt), rng.standard_normal(A.shape[0]).astype(dt)
        Xs = rng.standard_normal((2, d)).astype(dt)
        Gs = rng.standard_normal((2, A.shape[0])).astype(dt)
        big = np.ones(copy_bytes // 8)
        dst = np.empty_like(big)
        xp = get_xp("numpy")
        A = B.matvec_layout(A, xp=xp)            # the layout refbilevel's step reads
        labels, model = data[1], LinearModel(d)
        kernels = {"copy": lambda: np.copyto(dst, big), "A@x": lambda: A @ x,
                   "A.T@g": lambda: A.T @ g,
                   "pair A@[x z]": lambda: B.matvecs(A, Xs, xp=xp),
                   "pair A.T@[g h]": lambda: B.matvecs(A, Gs, xp=xp, transpose=True),
                   "gradient pass": lambda: model.grad(x, A, labels, xp=xp),
                   "pair pass": lambda: model.grad_many(Xs, A, labels, xp=xp),
                   "n-vector op": lambda: g * g}
        steps, passes = {}, {}
        for solver in solvers:
            passes[solver] = data_passes(solver)
            pairs, fwd, bwd = PRODUCTS[solver]
            if 2 * pairs + fwd + bwd != passes[solver]["refbilevel"]:
                raise AssertionError(f"{solver}: PRODUCTS disagrees with the counter "
                                     f"({passes[solver]})")
            cont = Contenders(solver, data, dt, peers=("numpy",))
            for name, call in cont.calls.items():
                steps[(solver, name)] = call
        fns = {**{("kernel", k): f for k, f in kernels.items()}, **steps}
        reps = {key: max(1, int(min_time / max(_cpu_once(f), 1e-7))) for key, f in fns.items()}
        t = {key: [] for key in fns}
        for r in range(rounds):
            keys = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
            for key in keys:
                c0 = time.process_time()
                for _ in range(reps[key]):
                    fns[key]()
                t[key].append((time.process_time() - c0) / reps[key])
        med = {key: statistics.median(v) for key, v in t.items()}
        k = {name: med[("kernel", name)] for name in kernels}
        bw = 2 * big.nbytes / k["copy"]
        nb = A.nbytes
        row = {"data_bytes": nb, "copy_bw": bw, "kernel_ms": {n_: 1e3 * v for n_, v in k.items()},
               "blocks": len(B.row_blocks(A, xp=xp) or ()),
               # matrix products per kernel x data bytes / time: each product counted as a
               # read of A, whether it came from memory or (blocked passes) from the cache
               "read_bw": {n_: _KERNEL_PRODUCTS[n_] * nb / k[n_] for n_ in _KERNEL_PRODUCTS},
               "solvers": {}}
        for solver in solvers:
            pairs, fwd, bwd = PRODUCTS[solver]
            blas = (pairs * (k["pair A@[x z]"] + k["pair A.T@[g h]"]) + fwd * k["A@x"]
                    + bwd * k["A.T@g"])
            model_passes = (pairs * k["pair pass"] + min(fwd, bwd) * k["gradient pass"]
                            + (fwd - min(fwd, bwd)) * k["A@x"] + (bwd - min(fwd, bwd)) * k["A.T@g"])
            floor = passes[solver]["needed"] * nb / bw
            step = med[(solver, "refbilevel")]
            peer = min(v for (s_, name), v in med.items() if s_ == solver and name != "refbilevel")
            row["solvers"][solver] = {
                "passes": passes[solver], "step_ms": 1e3 * step, "peer_ms": 1e3 * peer,
                "blas_ms": 1e3 * blas, "passes_ms": 1e3 * model_passes,
                "floor_ms": 1e3 * floor, "step_over_floor": step / floor,
                "peer_over_floor": peer / floor, "blas_over_floor": blas / floor,
                "passes_over_floor": model_passes / floor,
                "rest_ms": 1e3 * (step - model_passes), "rest_share": (step - model_passes) / step}
        out["dtypes"][dt] = row
        log(dt, {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in row.items()})
        data = A = big = dst = None            # free this dtype's arrays before the next
    limiter.restore_original_limits()
    return out


#: matrix products with the data matrix made by each kernel of :func:`floor_breakdown`
_KERNEL_PRODUCTS = {"A@x": 1, "A.T@g": 1, "pair A@[x z]": 2, "pair A.T@[g h]": 2,
                    "gradient pass": 2, "pair pass": 4}


def render_floor_breakdown(R) -> str:
    L = ["| dtype | solver | step ms | NumPy peer ms | BLAS ms | model passes ms | floor ms "
         "| step ÷ floor | peer ÷ floor | BLAS ÷ floor | passes ÷ floor "
         "| rest (elementwise, Python) |", "|---" * 12 + "|"]
    for dt, row in R["dtypes"].items():
        for solver, r in row["solvers"].items():
            L.append(f"| {dt} | {solver} | {r['step_ms']:.1f} | {r['peer_ms']:.1f} | "
                     f"{r['blas_ms']:.1f} | {r['passes_ms']:.1f} | {r['floor_ms']:.1f} | "
                     f"{r['step_over_floor']:.2f} | {r['peer_over_floor']:.2f} | "
                     f"{r['blas_over_floor']:.2f} | {r['passes_over_floor']:.2f} | "
                     f"{r['rest_ms']:.1f} ms ({100 * r['rest_share']:.0f} %) |")
    L.append("\n| dtype | copy GB/s (read + write) | row blocks | " + " | ".join(
        f"{name} GB/s" for name in _KERNEL_PRODUCTS) + " | n-vector op µs |")
    L.append("|---" * (4 + len(_KERNEL_PRODUCTS)) + "|")
    for dt, row in R["dtypes"].items():
        L.append(f"| {dt} | {row['copy_bw'] / 1e9:.1f} | {row.get('blocks', 0) or 'whole'} | "
                 + " | ".join(f"{row['read_bw'][name] / 1e9:.1f}" for name in _KERNEL_PRODUCTS)
                 + f" | {1e3 * row['kernel_ms']['n-vector op']:.0f} |")
    return "\n".join(L) + "\n"


# ====================================================================== product forms
def product_forms(sizes=tuple(SIZES), dtypes=DTYPES, stacks=(2, 4), *, rounds=15,
                  layouts=("C", "F")) -> list:
    """CPU time of the two forms of :func:`refbilevel._backend.matvecs` on NumPy, one thread.

    For each training-matrix shape (``n / 2`` rows), layout (row-major "C", column-major
    "F") and stack height ``m``: ``Xs @ A.T`` against ``m`` products ``A @ x``, and
    ``Gs @ A`` against ``m`` products ``A.T @ g``, interleaved, median over ``rounds`` of
    the per-round ratio (rows form / one product).
    """
    limiter = limit_threads(1)
    out = []
    rng = np.random.default_rng(0)
    for size in sizes:
        n, d = SIZES[size] if isinstance(size, str) else size
        for dt, layout in ((dt, lay) for dt in dtypes for lay in layouts):
            A = rng.standard_normal((n // 2, d)).astype(dt)
            A = np.asfortranarray(A) if layout == "F" else A
            for m in stacks:
                Xs = rng.standard_normal((m, d)).astype(dt)
                Gs = rng.standard_normal((m, n // 2)).astype(dt)
                fns = {"fwd_stacked": lambda: Xs @ A.T,
                       "fwd_rows": lambda: np.stack([A @ x for x in Xs]),
                       "bwd_stacked": lambda: Gs @ A,
                       "bwd_rows": lambda: np.stack([A.T @ g for g in Gs])}
                k = max(1, int(0.02 / max(_cpu_once(fns["fwd_stacked"]), 1e-7)))
                t = {name: [] for name in fns}
                for _ in range(rounds):
                    for name, f in fns.items():
                        c0 = time.process_time()
                        for _ in range(k):
                            f()
                        t[name].append((time.process_time() - c0) / k)
                row = {"n": n // 2, "d": d, "dtype": dt, "layout": layout, "m": m}
                for way in ("fwd", "bwd"):
                    row[f"{way}_stacked_ms"] = 1e3 * statistics.median(t[f"{way}_stacked"])
                    row[f"{way}_rows_ms"] = 1e3 * statistics.median(t[f"{way}_rows"])
                    row[f"{way}_rows_over_stacked"] = statistics.median(
                        a / b for a, b in zip(t[f"{way}_rows"], t[f"{way}_stacked"]))
                out.append(row)
    limiter.restore_original_limits()
    return out


#: data-matrix sizes (MiB) and widths of :func:`blocked_passes`
BLOCKED_MIB = (2, 4, 8, 16, 40, 80)
BLOCKED_WIDTHS = (50, 100, 500)
#: block sizes compared with the whole products (bytes of the data matrix per block)
BLOCKED_BLOCKS = (256 << 10, 512 << 10, 1 << 20, 2 << 20)


def blocked_passes(mib=BLOCKED_MIB, widths=BLOCKED_WIDTHS, dtypes=DTYPES,
                   blocks=BLOCKED_BLOCKS, *, threads=(1, 2), rounds=9, min_time=0.05) -> list:
    """CPU time of a model's pass over column-major data, whole and in row blocks.

    For each data size (MiB), width and dtype, on the data in the layout refbilevel's
    full-batch oracles read (:func:`refbilevel._backend.matvec_layout`):
    :meth:`LinearModel.grad` (a gradient, one
    forward and one transposed product) and :meth:`LinearModel.grad_many` at two points,
    with the whole matrix and with each block size of ``blocks``
    (:func:`refbilevel._backend.row_blocks` forced on, at any thread count and column
    segment length), on ``t`` BLAS threads for each ``t`` of ``threads`` (one thread: the
    process pinned to one processor; more: the threads free). Interleaved, median over
    ``rounds`` of the per-round ratio blocked / whole; the whole products' times are
    reported too.
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    out = []
    saved = (B._ROW_BLOCKED_MIN_BYTES, B._ROW_BLOCK_BYTES, B._ROW_BLOCK_MIN_SEGMENT_BYTES,
             B._ROW_BLOCK_ONE_POINT_SEGMENT_BYTES, B._blas_one_thread)
    try:
        for t in threads:
            limiter = limit_threads(1) if t == 1 else threadpool_limits(limits=t)
            B._blas_one_thread = lambda: True          # blocks at any thread count here
            # and of any column-segment length
            B._ROW_BLOCK_MIN_SEGMENT_BYTES = B._ROW_BLOCK_ONE_POINT_SEGMENT_BYTES = 0
            try:
                rows_t = _blocked_pass_rows(t, mib, widths, dtypes, blocks, rounds, min_time,
                                            rng)
            finally:
                limiter.restore_original_limits()
            out.extend(rows_t)
    finally:
        (B._ROW_BLOCKED_MIN_BYTES, B._ROW_BLOCK_BYTES, B._ROW_BLOCK_MIN_SEGMENT_BYTES,
         B._ROW_BLOCK_ONE_POINT_SEGMENT_BYTES, B._blas_one_thread) = saved
    return out


def _blocked_pass_rows(t, mib, widths, dtypes, blocks, rounds, min_time, rng) -> list:
    """The rows of :func:`blocked_passes` at ``t`` BLAS threads (limits set by the caller)."""
    from refbilevel.models.linear import LinearModel

    xp = get_xp("numpy")
    out = []
    for d in widths:
        for dt in dtypes:
            for size in mib:
                n = int(size * 2**20 / (d * np.dtype(dt).itemsize))
                # the layout refbilevel's full-batch oracles read (column-major,
                # the columns at a padded stride from 4 MiB on)
                A = B.matvec_layout(rng.standard_normal((n, d)).astype(dt), xp=xp)
                b = np.where(rng.standard_normal(n) >= 0, 1.0, -1.0).astype(dt)
                W = (0.1 * rng.standard_normal((2, d))).astype(dt)
                model = LinearModel(d)
                settings = {"whole": (1 << 62, 1 << 20),
                            **{bb: (0, bb) for bb in blocks}}
                calls = {}
                for key, (lo, bb) in settings.items():
                    for kind, f in (("gradient", lambda: model.grad(W[0], A, b, xp=xp)),
                                    ("pair", lambda: model.grad_many(W, A, b, xp=xp))):
                        calls[(key, kind)] = (lo, bb, f)

                def run(lo, bb, f):
                    B._ROW_BLOCKED_MIN_BYTES, B._ROW_BLOCK_BYTES = lo, bb
                    return f()

                reps = {k: max(1, int(min_time / max(_cpu_once(lambda v=v: run(*v)),
                                                     1e-7)))
                        for k, v in calls.items()}
                times = {k: [] for k in calls}
                for r in range(rounds):
                    for k, v in calls.items():
                        B._ROW_BLOCKED_MIN_BYTES, B._ROW_BLOCK_BYTES = v[0], v[1]
                        c0 = time.process_time()
                        for _ in range(reps[k]):
                            v[2]()
                        times[k].append((time.process_time() - c0) / reps[k])
                row = {"threads": t, "d": d, "n": n, "dtype": dt, "mib": size}
                for kind in ("gradient", "pair"):
                    whole = times[("whole", kind)]
                    row[f"{kind}_whole_ms"] = 1e3 * statistics.median(whole)
                    row[f"{kind}_blocked_over_whole"] = {
                        bb: statistics.median(x / y for x, y in
                                              zip(times[(bb, kind)], whole))
                        for bb in blocks}
                out.append(row)
    return out


def render_blocked_passes(rows) -> str:
    blocks = list(rows[0]["gradient_blocked_over_whole"]) if rows else []

    def name(bb):                    # int, or str once read back from the JSON file
        bb = int(bb)
        return f"{bb >> 10} KiB" if bb < 1 << 20 else f"{bb >> 20} MiB"

    L = ["| BLAS threads | A (rows × d) | MiB | dtype | gradient ms, whole | "
         + " | ".join(f"÷ whole, {name(bb)} blocks" for bb in blocks)
         + " | pair ms, whole | " + " | ".join(f"÷ whole, {name(bb)}" for bb in blocks) + " |",
         "|---" * (6 + 2 * len(blocks)) + "|"]
    for r in rows:
        L.append(f"| {r['threads']} | {r['n']:,} × {r['d']} | {r['mib']} | {r['dtype']} | "
                 f"{r['gradient_whole_ms']:.3g} | "
                 + " | ".join(f"{v:.2f}" for v in r["gradient_blocked_over_whole"].values())
                 + f" | {r['pair_whole_ms']:.3g} | "
                 + " | ".join(f"{v:.2f}" for v in r["pair_blocked_over_whole"].values()) + " |")
    return "\n".join(L) + "\n"


def _cpu_once(f):
    f()
    c0 = time.process_time()
    f()
    return time.process_time() - c0


def render_product_forms(rows) -> str:
    L = ["| A (rows × d) | dtype | layout | m | Xs @ Aᵀ ms | m × A @ x ms | rows / stacked "
         "| Gs @ A ms | m × Aᵀ @ g ms | rows / stacked |", "|---" * 10 + "|"]
    for r in rows:
        L.append(f"| {r['n']:,} × {r['d']} | {r['dtype']} | {r.get('layout', 'C')} | {r['m']} | "
                 f"{r['fwd_stacked_ms']:.3g} | {r['fwd_rows_ms']:.3g} | "
                 f"{r['fwd_rows_over_stacked']:.2f} | {r['bwd_stacked_ms']:.3g} | "
                 f"{r['bwd_rows_ms']:.3g} | {r['bwd_rows_over_stacked']:.2f} |")
    return "\n".join(L) + "\n"


# ====================================================================== report
def render_markdown(R: dict, command: str | None = None) -> str:
    """The table of :func:`compare`'s result, with the machine, the BLAS and the command."""
    env = R["env"]
    th = env["threads"]
    blas = "; ".join(f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture', '')}"
                     f" kernels, {p.get('num_threads')} thread)" for p in th["threadpools"]
                     if p.get("user_api") == "blas")
    bws = [env["copy_bw_cpu_before"], env["copy_bw_cpu_after"]] + [r["copy_bw_cpu"]
                                                                   for r in R["rows"]]
    L = [f"Measured {env['date_utc']} on {env['cpu']} ({env['cpu_count']} cores, shared with "
         "other busy processes); NumPy " + env["numpy"] + f", BLAS: {blas}; jax {env.get('jax')} "
         f"(XLA_FLAGS={th.get('XLA_FLAGS')!r}); torch {env.get('torch')} "
         f"({th.get('torch_threads')} thread, {th.get('torch_blas')}). Single-thread copy "
         f"bandwidth (read + write, per CPU second) {min(bws) / 1e9:.1f}–{max(bws) / 1e9:.1f} "
         "GB/s during the run."]
    if command:
        L.append(f"\nCommand: `{command}`")
    L.append("\nRatios refbilevel / peer (below 1: refbilevel is faster), each the median over "
             "rounds of the ratio within a round; **bold**: above 1. CPU: process CPU time "
             "(every library on one thread); wall: wall-clock time, which also counts the "
             "turns the process waited for a core. Times: medians of CPU ms per step. A "
             "peer's time is that of its fastest form by median (stacked pair products or "
             "matrix-vector products, on the data as given or on a column-major copy, "
             "`colmajor`; the form shown; AID-CG and ITD have no pairs). `check`: the "
             "largest relative "
             "difference of (x, y, z) after one step between a peer and refbilevel. Floor: "
             "needed data passes × data bytes / copy bandwidth, in CPU time; passes counted "
             "by the operation counter (refbilevel's step / needed). In brackets after a "
             "CPU ratio: a distribution-free 95 % confidence interval of the median "
             "per-round ratio (order statistics: with 15 rounds the 4th and 12th smallest "
             "ratios, coverage 96.5 %; with 6 to 8 rounds the smallest and largest; with 5 "
             "rounds too, whose coverage is 94 %).\n")
    L.append("| solver | n × d | dtype | refbilevel | NumPy | jax.jit | torch "
             "| ÷ NumPy CPU | ÷ jax CPU | ÷ torch CPU | ÷ NumPy wall | ÷ jax wall | ÷ torch wall "
             "| check | passes | ÷ floor | rounds |")
    L.append("|---" * 17 + "|")

    def ms(r, k):
        v = r.get(k)
        return "–" if v is None else f"{v * 1e3:.3g}"

    def ratio(r, key):
        v = r.get(key)
        if v is None:
            return "–"
        cell = f"**{v:.2f}**" if v > 1.0 else f"{v:.2f}"
        ci = r.get(key + "_ci") if key.startswith("cpu_") else None
        return cell if ci is None else f"{cell} [{ci[0]:.2f}, {ci[1]:.2f}]"

    for r in R["rows"]:
        kept = [v for v in r["check"].values() if v <= CHECK_RTOL[r["dtype"]]]
        chk = max(kept) if kept else None
        L.append(f"| {r['solver']} | {r['n']:,} × {r['d']} | {r['dtype']} | "
                 f"{ms(r, 'cpu_t_refbilevel')} | {ms(r, 'cpu_t_numpy')} "
                 f"({r.get('cpu_form_numpy', '')}) | {ms(r, 'cpu_t_jax')} "
                 f"({r.get('cpu_form_jax', '')}) | {ms(r, 'cpu_t_torch')} | " +
                 " | ".join(ratio(r, f"{w}ratio_{p}") for w in ("cpu_", "")
                            for p in ("numpy", "jax", "torch")) +
                 f" | {'–' if chk is None else f'{chk:.0e}'} | "
                 f"{r['passes']['refbilevel']} / {r['passes']['needed']} | "
                 f"{r['cpu_step_over_floor']:.2f} | {r['rounds']} |")
    left_out = sorted({f"{k}: {v}" for r in R["rows"] for k, v in r["unavailable"].items()})
    if left_out:
        L.append("\nLeft out: " + "; ".join(left_out) + ".")
    return "\n".join(L) + "\n"


def main(argv=None):
    """``python -m benchmarks.cpu_peers --out DIR [--sizes small,medium,tall] ...``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description="refbilevel on NumPy against hand-written peers")
    ap.add_argument("--out", default="cpu_peers_out")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rounds-tall", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--product-forms", action="store_true",
                    help="only time the two forms of the paired products (matvecs)")
    ap.add_argument("--step-against-oracles", action="store_true",
                    help="only time refbilevel's step and the hand-written NumPy step against "
                         "refbilevel's oracle calls replayed (default: MinimaxOPT, F2SA, "
                         "F2SA-Adam at the small size)")
    ap.add_argument("--blocked-passes", action="store_true",
                    help="only time a gradient and a point pair's gradients whole and in row "
                         "blocks of 256 KiB to 2 MiB, on one and two BLAS threads (--sizes: "
                         "data sizes in MiB, default 2,4,8,16,40,80)")
    ap.add_argument("--widths", default=",".join(map(str, BLOCKED_WIDTHS)),
                    help="--blocked-passes: the data's numbers of columns")
    ap.add_argument("--block-kib", default=",".join(str(b >> 10) for b in BLOCKED_BLOCKS),
                    help="--blocked-passes: the block sizes, KiB")
    ap.add_argument("--blas-threads", default="1,2",
                    help="--blocked-passes: the BLAS thread counts")
    ap.add_argument("--floor-breakdown", action="store_true",
                    help="only break one size's steps down against their bytes floor "
                         "(the first of --sizes)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.floor_breakdown:
        R = floor_breakdown(args.sizes.split(",")[0], args.dtypes.split(","),
                            args.solvers.split(","), rounds=args.rounds_tall)
        with open(os.path.join(args.out, "floor_breakdown.json"), "w") as fh:
            json.dump(R, fh, indent=1, default=str)
        print(render_floor_breakdown(R))
        return 0
    if args.step_against_oracles:
        rows = [r for dt in args.dtypes.split(",") for r in step_against_oracles(
            args.solvers.split(",") if args.solvers != ",".join(SOLVERS)
            else ("minimaxopt", "f2sa", "f2sa_adam"),
            args.sizes.split(",")[0] if args.sizes != ",".join(SIZES) else "small", dt,
            rounds=args.rounds)]
        with open(os.path.join(args.out, "step_against_oracles.json"), "w") as fh:
            json.dump({"threads": thread_report(), "rows": rows}, fh, indent=1, default=str)
        print(render_step_against_oracles(rows))
        return 0
    if args.blocked_passes:
        kw = {} if args.sizes == ",".join(SIZES) else {
            "mib": tuple(float(v) for v in args.sizes.split(","))}
        rows = blocked_passes(dtypes=args.dtypes.split(","), rounds=args.rounds,
                              widths=tuple(int(v) for v in args.widths.split(",")),
                              blocks=tuple(int(v) << 10 for v in args.block_kib.split(",")),
                              threads=tuple(int(v) for v in args.blas_threads.split(",")), **kw)
        with open(os.path.join(args.out, "blocked_passes.json"), "w") as fh:
            json.dump({"threads": thread_report(), "rows": rows}, fh, indent=1, default=str)
        print(render_blocked_passes(rows))
        return 0
    if args.product_forms:
        rows = product_forms(args.sizes.split(","), args.dtypes.split(","))
        with open(os.path.join(args.out, "product_forms.json"), "w") as fh:
            json.dump({"threads": thread_report(), "rows": rows}, fh, indent=1, default=str)
        print(render_product_forms(rows))
        return 0
    R = compare(args.sizes.split(","), args.dtypes.split(","), args.solvers.split(","),
                rounds=args.rounds, rounds_tall=args.rounds_tall, min_time=args.min_time,
                log=lambda row: print(time.strftime("%H:%M:%S"), row, flush=True))
    with open(os.path.join(args.out, "cpu_peers.json"), "w") as fh:
        json.dump(R, fh, indent=1, default=str)
    text = render_markdown(R, command="python -m benchmarks.cpu_peers " + " ".join(
        sys.argv[1:] if argv is None else argv))
    with open(os.path.join(args.out, "cpu_peers.md"), "w") as fh:
        fh.write(text)
    print(text)
    return 0


# ====================================================================== asv
IMPLS = ("refbilevel", "numpy-stacked", "numpy-matvec", "numpy-stacked-colmajor",
         "numpy-matvec-colmajor", "jax-stacked", "jax-matvec", "torch-stacked", "torch-matvec",
         "torch-stacked-colmajor", "torch-matvec-colmajor")


class CPUPeerSteps(XPBenchmark):
    """One step per implementation, one thread (params: impl x size x dtype x solver).

    asv times each parameter combination in its own run, so these absolute times are not
    interleaved; :class:`CPUPeerRatios` gives the interleaved ratios.
    """

    param_names = ["impl", "size", "dtype", "solver"]
    if PROFILE == "fast":     # a smoke run: each kind of contender once, two solvers
        params = [["refbilevel", "numpy-matvec", "jax-stacked", "torch-stacked"], ["small"],
                  ["float64"], ["minimaxopt", "f2sa"]]
    else:
        params = [list(IMPLS), list(SIZES), list(DTYPES), list(SOLVERS)]

    def setup(self, impl, size, dtype, solver):
        if size != "small" and not os.environ.get("REFBILEVEL_BENCH_LARGE") and size == "tall":
            raise NotImplementedError("tall size: set REFBILEVEL_BENCH_LARGE=1")
        peer = impl.split("-")[0]
        cont = Contenders(solver, host_data(*SIZES[size], dtype), dtype,
                          peers=() if impl == "refbilevel" else (peer,),
                          forms=("-stacked" in impl,),
                          layouts=("F",) if impl.endswith("-colmajor") else ("C",))
        self._limiter = limit_threads(1)       # after the peer's library is imported
        if impl not in cont.calls:
            raise NotImplementedError(cont.unavailable.get(peer, f"{impl} unavailable"))
        self.call, self.wait = cont.calls[impl], cont.waits[impl]
        self.call()
        self.wait()

    def teardown(self, *params):
        self._limiter.restore_original_limits()

    def time_step(self, impl, size, dtype, solver):
        self.call()
        self.wait()


class CPUPeerRatios(XPBenchmark):
    """Interleaved refbilevel / peer ratios (median over rounds) at one size and dtype."""

    param_names = ["peer", "size", "dtype", "solver"]
    if PROFILE == "fast":     # a smoke run: one peer, one solver
        params = [["numpy"], ["small"], ["float64"], ["minimaxopt"]]
    else:
        params = [list(PEERS), ["small", "medium"], list(DTYPES), list(SOLVERS)]
    unit = "refbilevel time / peer time"
    timeout = 900

    def setup(self, peer, size, dtype, solver):
        self.cont = Contenders(solver, host_data(*SIZES[size], dtype), dtype, peers=(peer,))
        self._limiter = limit_threads(1)       # after the peer's library is imported
        if peer in self.cont.unavailable:
            raise NotImplementedError(self.cont.unavailable[peer])
        check_peers(self.cont)

    def teardown(self, *params):
        self._limiter.restore_original_limits()

    rounds = 3 if PROFILE == "fast" else 7
    min_time = 0.05

    def _ratio(self, peer, which):
        if len(self.cont.calls) < 2:
            return float("nan")          # the peer failed its check against refbilevel
        times = interleaved_times(self.cont, rounds=self.rounds, min_time=self.min_time)[which]
        return summarize(times, self.cont.family)[f"ratio_{peer}"]

    def track_ratio(self, peer, size, dtype, solver):
        """Wall-clock time ratio."""
        return self._ratio(peer, 0)

    def track_cpu_ratio(self, peer, size, dtype, solver):
        """Process CPU time ratio (robust to other processes taking turns on the cores)."""
        return self._ratio(peer, 1)


if __name__ == "__main__":
    raise SystemExit(main())
