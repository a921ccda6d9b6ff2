"""Backend matrix for the test suite.

The ``backend`` fixture runs a test on NumPy, on array-api-strict (CPU device and its
second device ``device1``, which catches a forgotten ``device=``), and on CuPy where a GPU
is visible. Tests ask for ``xp`` (the namespace), ``device`` and ``asxp`` (host data ->
arrays of the backend). ``REFBILEVEL_BACKENDS=numpy,cupy`` restricts the matrix.

Markers:

* ``@pytest.mark.skip_xp_backends("cupy", reason="...")`` skips the named backends
  (names as in the test ids: numpy, array_api_strict, array_api_strict-device1, cupy);
* ``@pytest.mark.skip_xp_backends(cpu_only=True, reason="...")`` skips GPU backends.
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


def _backends():
    params = [pytest.param("numpy", id="numpy")]
    try:
        import array_api_strict

        array_api_strict.set_array_api_strict_flags(
            api_version="2025.12", boolean_indexing=False, data_dependent_shapes=False
        )
        params.append(pytest.param("array_api_strict", id="array_api_strict"))
        params.append(pytest.param("array_api_strict-device1", id="array_api_strict-device1"))
    except ImportError:
        pass
    if _backend._cuda_available():
        params.append(pytest.param("cupy", id="cupy"))
    only = os.environ.get("REFBILEVEL_BACKENDS")
    if only:
        keep = set(only.split(","))
        params = [p for p in params if p.values[0] in keep]
    return params


BACKEND_PARAMS = _backends()
GPU_BACKENDS = {"cupy"}


def _make_backend(name: str) -> Backend:
    if name == "array_api_strict-device1":
        import array_api_strict

        return Backend(name, array_api_strict, array_api_strict.Device("device1"))
    xp = _backend.backend_namespace(name)
    return Backend(name, xp, None)


def _apply_skip_markers(request, name: str) -> None:
    for marker in request.node.iter_markers("skip_xp_backends"):
        reason = marker.kwargs.get("reason") or "skipped for this backend"
        if any(name == arg or name.startswith(arg + "-") for arg in marker.args):
            pytest.skip(f"{name}: {reason}")
        if marker.kwargs.get("cpu_only") and name in GPU_BACKENDS:
            pytest.skip(f"{name}: {reason}")


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request) -> Backend:
    _apply_skip_markers(request, request.param)
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
