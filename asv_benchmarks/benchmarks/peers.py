"""Peers on the same data: one F2SA outer step (T = 5) and one MinimaxOPT step on
LogRegHPO binary (``reduction="sum"``, ``parametrization="exp"``), written

* in plain PyTorch (eager), on the GPU when there is one;
* with ``jax.jit`` — the data are **arguments** of the jitted function, never closed over
  (closing over would bake gigabytes into the compiled program as constants);
* and refbilevel itself, on numpy / cupy / torch tensors (through array-api-compat).

Every implementation computes the same update as refbilevel's default
``MinimaxOPT()`` (stage 0: α = α₀τ = 2, step 0.1, plain GDA) and ``F2SA(n_inner=5)``
at outer step 0 (α = γ = η = 0.01, λ = 1), with the two gradient evaluations at the same
parameter point read in one pass over the data (``A @ [y z]``). ``check_peers`` compares
each peer's output with refbilevel's.

Math (binary logistic, :math:`\\lambda = e^x`): with :math:`\\sigma` the logistic function,
:math:`\\nabla_y g = \\frac1n A^\\top(-b\\,\\sigma(-b\\,A y)) + \\lambda y`,
:math:`\\nabla_x g = \\frac12 \\lambda y^2`, :math:`\\nabla_y f` likewise on the validation
rows without the decay, :math:`\\nabla_x f = 0`.
"""

from __future__ import annotations

import os

import numpy as np

from refbilevel import _backend as B

from .common import SIZE_NAMES, XPBenchmark, get_xp, make_problem

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

MMO_ALPHA = 2.0     # MinimaxOPT(): lam0 * tau at stage 0 ("pre")
MMO_LR = 0.1
F2SA_T = 5
F2SA_STEPS = (0.01, 0.01, 0.01)   # F2SA(): (alpha, gamma, eta) at k = 0
F2SA_LAM = 1.0


# ------------------------------------------------------------------ torch eager
def torch_steps(stacked: bool = True):
    """PyTorch eager steps; ``stacked=False`` is the plain form (one pass per point)."""
    import torch

    def grads_g(x, Ys, A, b):
        lam = torch.exp(x)
        if stacked:
            S = A @ Ys.T                                 # (n, m): one pass
            G = -b[:, None] * torch.sigmoid(-b[:, None] * S)
            gy = (A.T @ G).T / A.shape[0] + lam * Ys     # second pass
        else:                                            # plain: two passes per point
            gy = torch.stack([A.T @ (-b * torch.sigmoid(-b * (A @ Ys[j]))) / A.shape[0]
                              for j in range(Ys.shape[0])]) + lam * Ys
        gx = 0.5 * lam * Ys * Ys
        return gx, gy

    def grad_f_y(y, Av, bv):
        s = Av @ y
        return Av.T @ (-bv * torch.sigmoid(-bv * s)) / Av.shape[0]

    def minimaxopt(x, y, z, A, b, Av, bv):
        gxs, gys = grads_g(x, torch.stack([y, z]), A, b)
        fy = grad_f_y(y, Av, bv)
        gx = MMO_ALPHA * (gxs[0] - gxs[1])
        gy = fy + MMO_ALPHA * gys[0]
        gz = MMO_ALPHA * gys[1]
        return x - MMO_LR * gx, y - MMO_LR * gy, z - MMO_LR * gz

    def f2sa(x, y, z, A, b, Av, bv):
        alpha, gamma, eta = F2SA_STEPS
        for _ in range(F2SA_T):
            _, gys = grads_g(x, torch.stack([z, y]), A, b)
            fy = grad_f_y(y, Av, bv)
            z, y = z - gamma * gys[0], y - alpha * (fy + F2SA_LAM * gys[1])
        gx = 0.5 * torch.exp(x) * (y * y - z * z)
        return x - eta * F2SA_LAM * gx, y, z

    return {"minimaxopt": minimaxopt, "f2sa": f2sa}


# ------------------------------------------------------------------ jax.jit
def jax_steps(stacked: bool = True, precision=None):
    """jitted JAX steps; ``precision="highest"`` forbids TF32 in float32 matrix products."""
    import functools

    import jax
    import jax.numpy as jnp

    mm = functools.partial(jnp.matmul, precision=precision)

    def grads_g(x, Ys, A, b):
        lam = jnp.exp(x)
        if stacked:
            S = mm(A, Ys.T)
            G = -b[:, None] * jax.nn.sigmoid(-b[:, None] * S)
            gy = mm(A.T, G).T / A.shape[0] + lam * Ys
        else:
            gy = jnp.stack([mm(A.T, -b * jax.nn.sigmoid(-b * mm(A, Ys[j]))) / A.shape[0]
                            for j in range(Ys.shape[0])]) + lam * Ys
        gx = 0.5 * lam * Ys * Ys
        return gx, gy

    def grad_f_y(y, Av, bv):
        s = mm(Av, y)
        return mm(Av.T, -bv * jax.nn.sigmoid(-bv * s)) / Av.shape[0]

    @jax.jit
    def minimaxopt(x, y, z, A, b, Av, bv):
        gxs, gys = grads_g(x, jnp.stack([y, z]), A, b)
        fy = grad_f_y(y, Av, bv)
        gx = MMO_ALPHA * (gxs[0] - gxs[1])
        gy = fy + MMO_ALPHA * gys[0]
        gz = MMO_ALPHA * gys[1]
        return x - MMO_LR * gx, y - MMO_LR * gy, z - MMO_LR * gz

    @jax.jit
    def f2sa(x, y, z, A, b, Av, bv):
        alpha, gamma, eta = F2SA_STEPS
        for _ in range(F2SA_T):     # unrolled at trace time (T is a Python constant)
            _, gys = grads_g(x, jnp.stack([z, y]), A, b)
            fy = grad_f_y(y, Av, bv)
            z, y = z - gamma * gys[0], y - alpha * (fy + F2SA_LAM * gys[1])
        gx = 0.5 * jnp.exp(x) * (y * y - z * z)
        return x - eta * F2SA_LAM * gx, y, z

    return {"minimaxopt": minimaxopt, "f2sa": f2sa}


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


# ------------------------------------------------------------------ shared setup
def refbilevel_step(step: str):
    """``(solver, make_state)`` of the refbilevel step the peers reproduce."""
    from refbilevel.solvers import F2SA, MinimaxOPT

    solver = MinimaxOPT() if step == "minimaxopt" else F2SA(n_inner=F2SA_T)
    return solver


def start_point(problem, seed: int = 3):
    """``(x, y)`` host float64 arrays: small random values (a non-trivial step)."""
    rng = np.random.default_rng(seed)
    return 0.1 * rng.standard_normal(problem.dim_x), 0.1 * rng.standard_normal(problem.dim_y)


def to_torch(a, like_device=None):
    """Any backend array -> torch tensor (zero copy through DLPack on the same device)."""
    import torch

    if isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(like_device) if like_device is not None else t
    if isinstance(a, torch.Tensor):
        return a
    return torch.from_dlpack(a)


def to_jax(a):
    import jax
    import jax.numpy as jnp

    if isinstance(a, np.ndarray):
        return jax.device_put(jnp.asarray(a))
    try:
        return jax.dlpack.from_dlpack(a)
    except Exception:
        return jax.device_put(jnp.asarray(B.to_host(a)))


def peer_inputs(problem, impl: str):
    """``(fn, args)`` for ``impl`` in {"torch", "jax"}: data and the start (x, y, z = y)."""
    x, y = start_point(problem)
    dt = B.dtype_name(problem.dtype)
    data = (problem.A_train, problem.T_train, problem.A_val, problem.T_val)
    if impl == "torch":
        import torch

        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        tdt = getattr(torch, dt)
        data_t = tuple(to_torch(a).to(dev) for a in data)
        pts = tuple(torch.as_tensor(v, dtype=tdt, device=dev) for v in (x, y, y))
        return pts + data_t
    if impl == "jax":
        if dt == "float64":
            _enable_x64()
        import jax.numpy as jnp

        data_j = tuple(to_jax(a) for a in data)
        pts = tuple(jnp.asarray(v, dtype=getattr(jnp, dt)) for v in (x, y, y))
        return pts + data_j
    raise ValueError(impl)


def refbilevel_inputs(problem, step: str):
    """``(solver, state)`` of refbilevel at the peers' start point."""
    x, y = start_point(problem)
    xp = problem.xp
    xd = B.from_host(x, xp, dtype=problem.dtype, device=problem.device)
    yd = B.from_host(y, xp, dtype=problem.dtype, device=problem.device)
    solver = refbilevel_step(step)
    return solver, solver.init(problem, xd, yd, np.random.default_rng(0))


#: peer variants: "torch" (stacked), "torch-plain" (one pass per point), "jax" (stacked,
#: default precision: TF32 allowed for float32 on recent GPUs), "jax-plain", "jax-highest"
def peer_steps(impl: str):
    if impl == "torch":
        return torch_steps()
    if impl == "torch-plain":
        return torch_steps(stacked=False)
    if impl == "jax":
        return jax_steps()
    if impl == "jax-plain":
        return jax_steps(stacked=False)
    if impl == "jax-highest":
        return jax_steps(precision="highest")
    raise ValueError(f"unknown peer {impl!r}")


def check_peers(problem, step: str, impls=("torch", "jax")) -> dict:
    """Relative difference ||peer - refbilevel|| / ||refbilevel|| of (x, y, z) after one step."""
    solver, state = refbilevel_inputs(problem, step)
    new = solver.step(problem, state)
    ref = np.concatenate([B.to_host(a).ravel() for a in (new.x, new.y, new.z)])
    out = {}
    for impl in impls:
        base = impl.split("-")[0]
        try:
            fn = peer_steps(impl)[step]
        except ImportError:
            continue
        res = fn(*peer_inputs(problem, base))
        got = np.concatenate([np.asarray(B.to_host(r) if base == "torch" else r).ravel()
                              for r in res])
        out[impl] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return out


# ------------------------------------------------------------------ asv
IMPLS = ["refbilevel-numpy", "refbilevel-cupy", "refbilevel-torch", "torch-eager", "jax-jit"]


class PeerSteps(XPBenchmark):
    """Time of one step per implementation (params: impl x size x dtype x step)."""

    param_names = ["impl", "size", "dtype", "step"]
    params = [IMPLS, [s for s in SIZE_NAMES], ["float64", "float32"] if len(SIZE_NAMES) > 1
              else ["float64"], ["f2sa", "minimaxopt"]]

    def setup(self, impl, size, dtype, step):
        if impl.startswith("refbilevel-"):
            backend = impl.split("-", 1)[1]
        else:
            backend = "cupy"
            try:
                get_xp("cupy")
            except NotImplementedError:
                backend = "numpy"
        self.setup_backend(backend, size, dtype)
        problem = make_problem("logreg_binary", backend, size, dtype)
        if impl.startswith("refbilevel-"):
            solver, state = refbilevel_inputs(problem, step)
            self.call = lambda: solver.step(problem, state)
            self.wait = lambda: B.synchronize(problem.xp)
        elif impl == "torch-eager":
            try:
                import torch
            except ImportError:
                raise NotImplementedError("torch is not installed") from None
            if backend == "cupy" and not torch.cuda.is_available():
                raise NotImplementedError("torch without CUDA on a GPU machine")
            fn, args = torch_steps()[step], peer_inputs(problem, "torch")
            self.call = lambda: fn(*args)
            self.wait = (torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None))
        else:
            try:
                import jax
            except ImportError:
                raise NotImplementedError("jax is not installed") from None
            fn, args = jax_steps()[step], peer_inputs(problem, "jax")
            self.call = lambda: jax.block_until_ready(fn(*args))
            self.wait = lambda: None
        self.call()      # warm-up (jit compilation, cuBLAS handles)
        self.wait()

    def time_step(self, impl, size, dtype, step):
        self.call()
        self.wait()
