"""Shared machinery of the refbilevel asv suite: backends, sizes, problems, timing.

Every benchmark class derives from :class:`XPBenchmark`, parametrised by backend
(numpy, cupy where a GPU exists, torch through array-api-compat where installed,
array_api_strict optionally) x size x dtype. Rules followed (as in asv's own guidance on
GPU timing):

* all inputs are built and synchronised in ``setup``, and every timed callable runs once
  there (warm-up: kernel compilation, cuBLAS handles, memory-pool growth);
* the timed function synchronises the device before returning
  (:func:`refbilevel._backend.synchronize`), so asv's host clock sees device time;
* invalid combinations (a backend that is not installed, data larger than memory
  allows, a size reserved for GPUs) raise :class:`NotImplementedError` in ``setup``, which
  asv reports as skipped.

Profiles: ``REFBILEVEL_ASV_PROFILE=fast`` (or ``"profile": "fast"`` in ``config.json``)
runs three samples of one call each (one round) on the small size in float64 only: a smoke
test for CI whose numbers still carry a spread.
``regular`` (default) uses asv's timing defaults on all sizes.

Benchmark data are Gaussian features with labels from a noisy linear model, drawn by a
seeded generator: NumPy's on the host, CuPy's on the GPU for the GPU-only sizes (moving
gigabytes from the host would dominate setup; values do not change the timings).
"""

from __future__ import annotations

import functools
import json
import os
import timeit

import numpy as np

from refbilevel import _backend as B

__all__ = ["BACKENDS", "DTYPES", "PROFILE", "SIZES", "XPBenchmark", "bench_data", "get_xp",
           "make_problem", "oracle_calls", "solver_step_setup", "sync"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _read_profile() -> str:
    env = os.environ.get("REFBILEVEL_ASV_PROFILE")
    if env:
        return env
    try:
        with open(os.path.join(_HERE, "config.json")) as fh:
            return json.load(fh).get("profile", "regular")
    except OSError:
        return "regular"


PROFILE = _read_profile()

#: name -> (n_train rows, n_features); validation rows are n_train // 4.
SIZES = {
    "small": (2_000, 50),
    "medium": (20_000, 500),
    "large": (200_000, 2_000),     # 1.6 GB (float32) / 3.2 GB (float64) of training data
    "tall": (1_000_000, 100),      # 0.4 GB / 0.8 GB
}
#: sizes that run only on a GPU backend unless REFBILEVEL_BENCH_LARGE=1
GPU_SIZES = ("large", "tall")
BACKENDS = ["numpy", "cupy", "torch", "array_api_strict"]
DTYPES = ["float64", "float32"]

if PROFILE == "fast":
    SIZE_NAMES = ["small"]
    DTYPE_NAMES = ["float64"]
else:
    SIZE_NAMES = list(SIZES)
    DTYPE_NAMES = list(DTYPES)


# ------------------------------------------------------------------ backends
@functools.lru_cache(maxsize=None)
def get_xp(backend: str):
    """The namespace of ``backend``; :class:`NotImplementedError` when unavailable."""
    try:
        return B.backend_namespace(backend)
    except ValueError as exc:
        raise NotImplementedError(str(exc)) from exc


def backend_device(backend: str):
    """Device new arrays go to: the current GPU for cupy, cuda for torch when present."""
    if backend == "torch":
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return None


def on_gpu(backend: str) -> bool:
    if backend == "cupy":
        return True
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def sync(xp) -> None:
    """Wait for queued device work (no-op on CPU)."""
    B.synchronize(xp)


def check_size(backend: str, size: str, dtype: str) -> None:
    """Raise NotImplementedError for combinations this machine should not run."""
    n, d = SIZES[size]
    if backend == "array_api_strict" and size != "small":
        raise NotImplementedError("array_api_strict is a conformance backend: small size only")
    nbytes = n * d * (4 if dtype == "float32" else 8) * 1.25
    if size in GPU_SIZES and not on_gpu(backend) and not os.environ.get("REFBILEVEL_BENCH_LARGE"):
        raise NotImplementedError(f"size {size!r} runs on a GPU backend only "
                                  "(set REFBILEVEL_BENCH_LARGE=1 to run it on the CPU)")
    if on_gpu(backend) and backend == "cupy":
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
        if 3 * nbytes > free:
            raise NotImplementedError(f"size {size!r} needs ~{3 * nbytes / 2**30:.1f} GiB of GPU memory")
    else:
        avail = _host_available()
        if avail is not None and 3 * nbytes > avail:
            raise NotImplementedError(f"size {size!r} needs ~{3 * nbytes / 2**30:.1f} GiB of memory")


def _host_available():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ------------------------------------------------------------------ data and problems
def bench_data(n: int, d: int, *, backend: str, dtype: str, seed: int = 0, n_classes=None):
    """``(A_train, b_train, A_val, b_val)`` on ``backend``: Gaussian features, noisy linear labels.

    ``n_classes=None`` gives labels +-1 in the data's dtype (binary logistic); an integer
    gives int64 class indices. Validation has ``n // 4`` rows.
    """
    xp = get_xp(backend)
    n_val = max(n // 4, 2)
    if backend == "cupy" and n * d >= 10**7:
        import cupy

        rng = cupy.random.default_rng(seed)
        A = rng.standard_normal((n + n_val, d), dtype=cupy.float32)
        A = A.astype(dtype, copy=False)
        k = 1 if n_classes is None else n_classes
        score = A[:, :min(d, 64)] @ rng.standard_normal((min(d, 64), k), dtype=cupy.float32).astype(dtype)
        score = score + rng.standard_normal(score.shape, dtype=cupy.float32).astype(dtype)
        if n_classes is None:
            lab = cupy.where(score[:, 0] >= 0, 1.0, -1.0).astype(dtype)
        else:
            lab = cupy.argmax(score, axis=1).astype(cupy.int64)
        return A[:n], lab[:n], A[n:], lab[n:]
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n + n_val, d), dtype=np.float32)
    k = 1 if n_classes is None else n_classes
    score = A @ rng.standard_normal((d, k), dtype=np.float32) + rng.standard_normal((n + n_val, k),
                                                                                    dtype=np.float32)
    if n_classes is None:
        lab = np.where(score[:, 0] >= 0, 1.0, -1.0)
    else:
        lab = score.argmax(axis=1).astype(np.int64)
    dev = backend_device(backend)

    def move(a):
        if a.dtype.kind == "f":
            return B.from_host(a, xp, dtype=dtype, device=dev)
        return B.from_host(a, xp, device=dev)

    return move(A[:n]), move(lab[:n]), move(A[n:]), move(lab[n:])


#: problem kinds of the suite
PROBLEMS = ("logreg_binary", "logreg_multinomial", "cleaning_mlp", "auc")
N_CLASSES = 5
AUC_TASKS = 8
AUC_RANK = 10
MLP_HIDDEN = 64


@functools.lru_cache(maxsize=4)
def make_problem(kind: str, backend: str, size: str, dtype: str):
    """A problem of ``kind`` at ``size`` on ``backend`` (cached per process)."""
    from refbilevel.problems import DataCleaning, LogRegHPO, MultiTaskAUC

    n, d = SIZES[size] if isinstance(size, str) else size
    xp = get_xp(backend)
    if kind == "logreg_binary":
        return LogRegHPO(*bench_data(n, d, backend=backend, dtype=dtype))
    if kind == "logreg_multinomial":
        return LogRegHPO(*bench_data(n, d, backend=backend, dtype=dtype, n_classes=N_CLASSES),
                         task="multinomial", n_classes=N_CLASSES)
    if kind == "cleaning_mlp":
        return DataCleaning(*bench_data(n, d, backend=backend, dtype=dtype, n_classes=N_CLASSES),
                            n_classes=N_CLASSES, model="mlp", hidden=MLP_HIDDEN)
    if kind == "auc":
        T = AUC_TASKS
        A_tr, b_tr, A_va, b_va = bench_data(n, d, backend=backend, dtype=dtype)
        n_tr, n_va = n // T, A_va.shape[0] // T
        lab = lambda b, m: xp.astype(xp.reshape(b[:T * m], (T, m)) > 0, A_tr.dtype)  # noqa: E731
        return MultiTaskAUC(xp.reshape(A_tr[:T * n_tr, ...], (T, n_tr, d)), lab(b_tr, n_tr),
                            xp.reshape(A_va[:T * n_va, ...], (T, n_va, d)), lab(b_va, n_va),
                            rank=min(AUC_RANK, d))
    raise ValueError(f"unknown problem kind {kind!r}")


def _rand_like(xp, ref, shape, seed, scale=0.1):
    a = np.random.default_rng(seed).standard_normal(shape) * scale
    return B.from_host(a, xp, dtype=ref.dtype, device=B.device(ref))


def oracle_points(problem, seed: int = 1):
    """Non-trivial evaluation points (small random perturbations of the default start)."""
    xp = problem.xp
    x0 = problem.init_x()
    x = x0 + _rand_like(xp, x0, x0.shape, seed)
    y0 = problem.init_y()
    y = y0 + _rand_like(xp, y0, y0.shape, seed + 1)
    if hasattr(problem, "dim_z"):
        z = _rand_like(xp, x0, (problem.n_blocks, problem.dim_z), seed + 2)
        v = _rand_like(xp, x0, (problem.n_blocks, problem.dim_z), seed + 3)
        return {"x": x, "y": y, "z": z, "v": v, "blocks": problem.all_blocks()}
    v = _rand_like(xp, y0, y0.shape, seed + 2)
    return {"x": x, "y": y, "v": v, "Ys": xp.stack([y, v])}


def oracle_calls(problem, pts) -> dict:
    """Zero-argument callables of the four oracles (and the stacked one where it exists)."""
    p = pts
    if hasattr(problem, "dim_z"):      # minimax-bilevel (MultiTaskAUC): block oracles
        blk = p["blocks"]
        return {
            "grad_f": lambda: problem.grad_f(p["x"], p["y"], p["z"], blk),
            "grad_g": lambda: problem.grad_g(p["x"], p["z"], blk),
            "hvp_g": lambda: problem.hvp_g(p["x"], p["z"], p["v"], blk),
            "cross_g": lambda: problem.cross_g(p["x"], p["z"], p["v"], blk),
        }
    return {
        "grad_f": lambda: problem.grad_f(p["x"], p["y"]),
        "grad_g": lambda: problem.grad_g(p["x"], p["y"]),
        "hvp_g": lambda: problem.hvp_g(p["x"], p["y"], p["v"]),
        "cross_g": lambda: problem.cross_g(p["x"], p["y"], p["v"]),
        "grad_g_many2": lambda: problem.grad_g_many(p["x"], p["Ys"]),
    }


# ------------------------------------------------------------------ solvers
#: solver name -> (problem kind, factory); benchmark settings documented in README.md
def solver_factories():
    from refbilevel.solvers import AID, F2SA, FOSL, ITD, F2SAAdam, MemCS, MinimaxOPT

    return {
        "minimaxopt": ("logreg_binary", lambda: MinimaxOPT()),
        "f2sa": ("logreg_binary", lambda: F2SA(n_inner=5)),
        "f2sa_adam": ("logreg_binary", lambda: F2SAAdam(n_inner=5)),
        "aid_cg": ("logreg_binary", lambda: AID(n_inner=20, n_linear=10, method="cg")),
        "itd": ("logreg_binary", lambda: ITD(n_inner=20)),
        "fosl": ("auc", lambda: FOSL()),
        "memcs": ("auc", lambda: MemCS(n_inner=5)),
    }


SOLVERS = ["minimaxopt", "f2sa", "f2sa_adam", "aid_cg", "itd", "fosl", "memcs"]


def solver_step_setup(solver_name: str, backend: str, size, dtype: str, *, problem=None):
    """``(problem, solver, state0)``: a solver initialised at the problem's default start."""
    kind, factory = solver_factories()[solver_name]
    if problem is None:
        problem = make_problem(kind, backend, size, dtype)
    solver = factory()
    # explicit start points: F2SAAdam.init cannot take None (it builds Adam on x0)
    state = solver.init(problem, problem.init_x(), problem.init_y(), np.random.default_rng(0))
    return problem, solver, state


# ------------------------------------------------------------------ base class
class XPBenchmark:
    """Base: params backend x size x dtype; subclasses extend ``params``/``param_names``."""

    timer = timeit.default_timer
    processes = 1
    timeout = 600
    param_names = ["backend", "size", "dtype"]
    params = [BACKENDS, SIZE_NAMES, DTYPE_NAMES]
    if PROFILE == "fast":
        rounds = 1         # one pass over the suite (asv's default is 2) ...
        repeat = 3         # ... with three samples of one call each: a median and a spread
        number = 1
        warmup_time = 0.0

    def setup_backend(self, backend, size, dtype):
        self.xp = get_xp(backend)
        check_size(backend, size, dtype)
        self.backend = backend

    def sync(self):
        sync(self.xp)
