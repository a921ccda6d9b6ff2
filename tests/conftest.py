"""Backend matrix for the test suite.

The ``backend`` fixture runs a test on NumPy, on array-api-strict (CPU device and its
second device ``device1``, which catches a forgotten ``device=``), on JAX (64-bit mode) and
PyTorch (CPU) where they are installed, and on CuPy where a GPU is visible. A library that
is not installed shows up as skipped, with the reason. Tests ask for ``xp`` (the
namespace), ``device`` and ``asxp`` (host data -> arrays of the backend).

By default array-api-strict runs on ``device1`` only; its CPU-device cases are marked
``slow`` (``-m slow`` runs them, and so does naming ``array_api_strict`` in
``REFBILEVEL_BACKENDS`` or setting it to ``all``). The two runs execute the same strict
namespace on the same data; ``device1`` differs only in that every array creation and
every mix of arrays is checked against a device that is not the default one, so a case
that passes there passes on the CPU device, and the CPU-device run proves nothing more
while taking about a sixth of the default suite's time.

``REFBILEVEL_BACKENDS=numpy,jax`` restricts the matrix to the named backends. Tests marked
``@pytest.mark.eager_libraries`` are the representative subset that runs on JAX and
PyTorch by default (the data-driven problems' oracles, linear algebra, the backend
layer, every solver's trajectory against NumPy's; on JAX the problems' oracle identities
beyond the finite-difference certificates are ``slow``, ``_problem_oracles.JAX_SLOW``);
``REFBILEVEL_BACKENDS=all``
(or naming ``jax``/``torch`` explicitly) runs every test on them. Dask is not in this
matrix: a lazy library needs a persisted state and a cluster, which
``tests/test_dask.py`` sets up.

Markers:

* ``@pytest.mark.skip_xp_backends("cupy", reason="...")`` skips the named backends
  (names as in the test ids: numpy, array_api_strict, array_api_strict-device1, cupy);
* ``@pytest.mark.skip_xp_backends(cpu_only=True, reason="...")`` skips GPU backends;
* ``@pytest.mark.slow_xp_backends("array_api_strict", reason="...")`` marks the named
  backends' cases ``slow`` (they run with ``-m slow``): for long runs whose agreement with
  the NumPy trajectory is tested on that backend by a short run elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from refbilevel import _backend


@dataclass(frozen=True)
class Backend:
    name: str
    xp: Any
    device: Any

    def asarray(self, a, dtype="float64"):
        """Host data -> array of this backend (floats get ``dtype``; ints keep int64)."""
        a = np.asarray(a)
        if a.dtype.kind == "f":
            return _backend.from_host(a, self.xp, dtype=dtype, device=self.device)
        return _backend.from_host(a, self.xp, device=self.device)


#: Libraries run eagerly op by op from Python, whose per-operation dispatch makes the long
#: tests slow: by default they run the tests marked ``eager_libraries`` only.
EAGER_LIBRARIES = ("jax", "torch")


def _selected() -> set[str] | None:
    only = os.environ.get("REFBILEVEL_BACKENDS", "").strip()
    if not only or only == "all":
        return None
    return {name.strip() for name in only.split(",") if name.strip()}


def _strict_cpu_by_default() -> bool:
    """Whether array-api-strict's CPU device is in the default run (see the module doc)."""
    only = os.environ.get("REFBILEVEL_BACKENDS", "").strip()
    keep = _selected()
    return only == "all" or (keep is not None and "array_api_strict" in keep)


def _backends():
    params = [pytest.param("numpy", id="numpy")]
    try:
        import array_api_strict

        array_api_strict.set_array_api_strict_flags(
            api_version="2025.12", boolean_indexing=False, data_dependent_shapes=False
        )
        params.append(pytest.param("array_api_strict", id="array_api_strict",
                                   marks=() if _strict_cpu_by_default() else pytest.mark.slow))
        params.append(pytest.param("array_api_strict-device1", id="array_api_strict-device1"))
    except ImportError:
        pass
    params += [pytest.param(name, id=name) for name in EAGER_LIBRARIES]
    if _backend._cuda_available():
        params.append(pytest.param("cupy", id="cupy"))
    keep = _selected()
    if keep is not None:
        params = [p for p in params if p.values[0] in keep]
    return params


BACKEND_PARAMS = _backends()
GPU_BACKENDS = {"cupy"}


def _run_all_on_eager_libraries() -> bool:
    """Whether every test runs on JAX/PyTorch (``REFBILEVEL_BACKENDS=all`` or named)."""
    only = os.environ.get("REFBILEVEL_BACKENDS", "").strip()
    keep = _selected()
    return only == "all" or (keep is not None and bool(keep & set(EAGER_LIBRARIES)))


def _make_backend(name: str) -> Backend:
    if name == "array_api_strict-device1":
        import array_api_strict

        return Backend(name, array_api_strict, array_api_strict.Device("device1"))
    try:
        xp = _backend.backend_namespace(name)  # "jax" turns on 64-bit mode
    except ValueError as exc:  # library not installed
        pytest.skip(f"{name}: {exc}")
    return Backend(name, xp, None)


def _named(name: str, backends) -> bool:
    return any(name == arg or name.startswith(arg + "-") for arg in backends)


def _apply_skip_markers(request, name: str) -> None:
    for marker in request.node.iter_markers("skip_xp_backends"):
        reason = marker.kwargs.get("reason") or "skipped for this backend"
        if _named(name, marker.args):
            pytest.skip(f"{name}: {reason}")
        if marker.kwargs.get("cpu_only") and name in GPU_BACKENDS:
            pytest.skip(f"{name}: {reason}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """``slow_xp_backends``: mark the named backends' cases slow before ``-m`` selects."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec is not None else None
        if name is None:
            continue
        if any(_named(name, m.args) for m in item.iter_markers("slow_xp_backends")):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request) -> Backend:
    _apply_skip_markers(request, request.param)
    if (request.param in EAGER_LIBRARIES and not _run_all_on_eager_libraries()
            and request.node.get_closest_marker("eager_libraries") is None):
        pytest.skip(f"{request.param}: outside the representative subset "
                    "(REFBILEVEL_BACKENDS=all runs every test)")
    return _make_backend(request.param)


@pytest.fixture
def xp(backend):
    return backend.xp


@pytest.fixture
def device(backend):
    return backend.device


@pytest.fixture
def asxp(backend):
    return backend.asarray


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)
