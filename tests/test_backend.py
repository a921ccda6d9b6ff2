"""The backend layer: namespaces, devices, transfers, RNG, and the in = out rule."""

import numpy as np
import pytest

from refbilevel import _backend
from refbilevel._backend import array_namespace, from_host, host_rng, to_host
from refbilevel.problems.quadratic import Quadratic

#: Runs on JAX and PyTorch by default (tests/conftest.py).
pytestmark = pytest.mark.eager_libraries


def test_array_namespace_matches_input(xp, device):
    a = xp.ones(3, dtype=xp.float64, device=device)
    ns = array_namespace(a)
    assert _backend.backend_name(ns) == _backend.backend_name(xp)


def test_mixing_libraries_raises_type_error_naming_arguments():
    import array_api_strict as strict

    a = np.ones(3)
    b = strict.ones(3)
    with pytest.raises(TypeError, match="second.*first|first.*second"):
        array_namespace(a, b, names=("first", "second"))


def test_mixing_devices_raises_type_error():
    import array_api_strict as strict

    a = strict.ones(3)
    b = strict.ones(3, device=strict.Device("device1"))
    with pytest.raises(TypeError, match="device"):
        array_namespace(a, b, names=("a", "b"))


def test_problem_rejects_mixed_namespaces():
    import array_api_strict as strict

    q = Quadratic.random(2, 3, seed=0)
    with pytest.raises(TypeError, match="c"):
        Quadratic(q.H, q.B, strict.asarray(to_host(q.c)), q.A, q.a, q.R, q.r)


def test_non_array_argument_raises():
    with pytest.raises(TypeError, match="x must be an array"):
        array_namespace([1.0, 2.0], names=("x",))


def test_from_host_and_to_host_round_trip(xp, device):
    a = np.arange(6.0).reshape(2, 3)
    arr = from_host(a, xp, dtype="float32", device=device)
    assert arr.dtype == xp.float32
    assert _backend.device(arr) == (device if device is not None else _backend.device(arr))
    np.testing.assert_array_equal(to_host(arr), a.astype(np.float32))


def test_host_rng_is_deterministic_and_validated():
    assert np.array_equal(host_rng(5).standard_normal(4), host_rng(5).standard_normal(4))
    g = np.random.default_rng(1)
    assert host_rng(g) is g
    with pytest.raises(ValueError, match="seed"):
        host_rng(-1)
    with pytest.raises(TypeError, match="seed"):
        host_rng(1.5)


def test_backend_namespace_names():
    assert "numpy" in _backend.available_backends()
    with pytest.raises(ValueError, match="numpy"):
        _backend.backend_namespace("tensorflow")


@pytest.mark.skipif(_backend._cuda_available(), reason="checks the no-GPU message")
def test_cupy_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="GPU"):
        _backend.backend_namespace("cupy")


def test_asarray_like_keeps_namespace_device_dtype(xp, device):
    like = xp.zeros(2, dtype=xp.float32, device=device)
    out = _backend.asarray(np.array([1.0, 2.0]), like=like)
    assert out.dtype == xp.float32
    assert _backend.device(out) == _backend.device(like)


@pytest.mark.skip_xp_backends("jax", reason="JAX arrays are immutable: no in-place copy")
def test_copy_into_copies_values(xp, device):
    src = from_host(np.arange(5.0), xp, device=device)
    dst = xp.zeros_like(src)
    _backend.copy_into(dst, src)
    _backend.synchronize(xp)
    np.testing.assert_array_equal(to_host(dst), np.arange(5.0))


def test_copy_into_refuses_immutable_jax_arrays():
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed")
    _backend.backend_namespace("jax")
    with pytest.raises(TypeError, match="immutable"):
        _backend.copy_into(jnp.zeros(3), jnp.ones(3))


def test_materialize_returns_eager_states_unchanged(xp, device):
    # oracle: identity (the same object) for every eager library
    from refbilevel.solvers.base import OracleCalls

    state = {"x": from_host(np.arange(3.0), xp, device=device), "calls": OracleCalls(),
             "pair": (None, 1.0)}
    assert _backend.materialize(state) is state


def test_every_backend_name_resolves_or_says_why():
    # oracle: each name either gives a namespace whose arrays report that name back, or a
    # ValueError naming the backend (missing library or GPU)
    for name in _backend.BACKEND_NAMES:
        try:
            xp = _backend.backend_namespace(name)
        except ValueError as exc:
            assert name in str(exc)
            assert name not in _backend.available_backends() or name == "cupy"
            continue
        a = from_host(np.arange(4.0), xp, dtype="float64")
        assert _backend.backend_name(array_namespace(a)) == name
        assert str(a.dtype).endswith("float64")
        np.testing.assert_array_equal(to_host(a), np.arange(4.0))


def test_jax_float64_without_x64_is_refused():
    # JAX's 64-bit switch is process-wide and the suite has turned it on: check the 32-bit
    # behaviour in a fresh interpreter
    pytest.importorskip("jax", reason="JAX is not installed")
    import subprocess
    import sys

    code = (
        "import numpy as np, jax.numpy as jnp\n"
        "from refbilevel._backend import from_host, backend_namespace\n"
        "assert str(from_host(np.ones(2), jnp, dtype='float32').dtype) == 'float32'\n"
        "try:\n"
        "    from_host(np.ones(2), jnp, dtype='float64')\n"
        "except ValueError as exc:\n"
        "    assert 'jax_enable_x64' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('float64 was accepted in 32-bit mode')\n"
        "xp = backend_namespace('jax')\n"
        "assert str(from_host(np.ones(2), xp, dtype='float64').dtype) == 'float64'\n"
    )
    import os

    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stack_equals_a_stack_of_copies(xp, device, dtype):
    # oracle: the arrays themselves, copied row by row on the host (the stack is a copy)
    rows = [np.random.default_rng(k).standard_normal(7).astype(dtype) for k in range(3)]
    arrays = [from_host(r, xp, device=device) for r in rows]
    out = _backend.stack(arrays, xp=xp)
    assert array_namespace(out) is xp
    assert out.dtype == getattr(xp, dtype)
    assert _backend.device(out) == _backend.device(arrays[0])
    host = to_host(out)
    assert host.shape == (3, 7)
    for k, r in enumerate(rows):
        assert host[k].tobytes() == r.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scalar_operands_compute_what_python_floats_compute(xp, device, dtype):
    # oracle: the same operations with the Python floats, bit for bit (NumPy rounds a weak
    # float to the array's dtype; the operands hold that rounded value)
    values = (0.9, 1.0 - 0.99, 1e-8, 1.0 / 3.0)
    ops = _backend.ScalarOperands(*values)
    a = from_host(np.random.default_rng(1).standard_normal(11).astype(dtype), xp, device=device)
    got = ops.like(a)
    for v, k in zip(values, got):
        for with_float, with_operand in ((v * a, k * a), (a + v, a + k), (a / v, a / k)):
            assert with_operand.dtype == a.dtype
            assert to_host(with_operand).tobytes() == to_host(with_float).tobytes()
    if xp is array_namespace(np.zeros(1)):
        assert ops.like(a) is got                       # made once per dtype
        assert all(k.shape == () and not k.flags.writeable for k in got)
        with pytest.raises(ValueError, match="read-only"):
            got[0][...] = 1.0
    else:
        assert got == values


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scaled_is_the_product_bit_for_bit(xp, device, dtype):
    # oracle: the product c * a itself, compared byte for byte, over special values
    # (signed zeros, a subnormal, the largest finite number, infinities): a multiplication
    # by one that is skipped must give what the multiplication gives. XLA on the CPU
    # flushes subnormal results to zero, so there 1 * a differs from a (and from exact
    # arithmetic) in the subnormal entry alone; skipping keeps the exact value.
    info = np.finfo(dtype)
    host = np.array([0.0, -0.0, info.smallest_subnormal, -info.tiny, info.max, -np.inf, np.inf,
                     1.0 / 3.0, -2.5e-7], dtype=dtype)
    a = from_host(host, xp, device=device)
    flushes = float(to_host(1.0 * a)[2]) == 0.0
    normal = np.ones(host.shape, dtype=bool)
    normal[2] = not flushes
    for c in (1.0, 1, 0.5, -1.0):
        got, want = to_host(_backend.scaled(c, a)), to_host(c * a)
        assert got.dtype == want.dtype == host.dtype
        assert got[normal].tobytes() == want[normal].tobytes()
    assert _backend.scaled(1.0, a) is a and _backend.scaled(1, a) is a    # nothing computed
    column = from_host(np.array([[1.0], [0.25]], dtype=dtype), xp, device=device)
    rows = _backend.stack([a, a], xp=xp)
    got = to_host(_backend.scaled(column, rows))      # an array of step sizes multiplies
    assert got[0][normal].tobytes() == host[normal].tobytes()
    assert got[1].tobytes() == to_host(0.25 * a).tobytes()


def test_positive_or_inf_guards_a_division(xp, device):
    # oracle: the definition, value by value; dividing by the guard gives 0 exactly where
    # the denominator is not positive (the property CG's zero guards need)
    v = from_host(np.array([2.5, 0.0, -1.0, np.nan]), xp, device=device)
    num = xp.vecdot(v[:1], v[:1])                      # a 0-d reduction: 6.25
    for k, expected in enumerate([2.5, np.inf, np.inf, np.inf]):
        d = xp.vecdot(v[k:k + 1], xp.ones_like(v[k:k + 1]))     # the reduction of one value
        guard = _backend.positive_or_inf(d, xp=xp)
        assert float(to_host(xp.asarray(guard))) == expected
        assert float(to_host(xp.asarray(num / guard))) == (6.25 / 2.5 if k == 0 else 0.0)


def test_zeros_like_is_the_namespace_zeros_like(xp, device):
    # oracle: the namespace's own zeros_like (shape, dtype, device and the +0.0 entries)
    for shape, dtype in (((3,), xp.float64), ((2, 4), xp.float32), ((), xp.float64)):
        a = xp.ones(shape, dtype=dtype, device=device)
        got, ref = _backend.zeros_like(a, xp=xp), xp.zeros_like(a)
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert _backend.device(got) == _backend.device(ref)
        h = to_host(got)
        np.testing.assert_array_equal(h, to_host(ref))
        assert not np.signbit(h).any()
