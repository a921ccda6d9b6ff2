"""Malformed input to the public constructors and ``run``: only TypeError/ValueError, naming the argument.

Hypothesis draws the kind of damage (wrong shape, integer or complex dtype, NaN/Inf at a
random place, arrays of two libraries, wrong Python types, non-positive step sizes and
iteration counts) and where it goes; the oracle is the documented contract: the call
raises ``TypeError`` or ``ValueError`` (anything else propagates and fails the test) and
the message names the argument that was damaged. NumPy plus array-api-strict (for the
mixed-library cases); data are tiny so every example runs in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refbilevel.problems.cleaning import DataCleaning
from refbilevel.problems.logreg import LogRegHPO
from refbilevel.registry import SOLVERS
from refbilevel.run import run

array_api_strict = pytest.importorskip("array_api_strict")

#: Examples per property (raise with REFBILEVEL_HYPOTHESIS_EXAMPLES for a longer hunt).
EXAMPLES = int(os.environ.get("REFBILEVEL_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
DAMAGE = ("shape", "int", "complex", "nan", "inf", "mixed", "list", "none", "str")


def _logreg_data(rng, n=6, d=3):
    A_tr, A_va = rng.standard_normal((n, d)), rng.standard_normal((n + 1, d))
    b_tr = np.where(rng.standard_normal(n) > 0, 1.0, -1.0)
    b_va = np.where(rng.standard_normal(n + 1) > 0, 1.0, -1.0)
    return {"A_train": A_tr, "b_train": b_tr, "A_val": A_va, "b_val": b_va}


def _damage(a, kind, pos):
    """A damaged copy of host array ``a`` (``pos`` in [0, 1) picks the entry for NaN/Inf)."""
    if kind == "shape":
        return a[..., :-1] if a.ndim == 2 else a[:-1]
    if kind == "int":
        return np.round(a).astype(np.int64)
    if kind == "complex":
        return a.astype(np.complex128)
    if kind in ("nan", "inf"):
        out = a.astype(np.float64, copy=True)
        out.flat[int(pos * out.size)] = math.nan if kind == "nan" else -math.inf
        return out
    if kind == "mixed":
        return array_api_strict.asarray(a)
    if kind == "list":
        return a.tolist()
    if kind == "none":
        return None
    return "not an array"


@SETTINGS
@given(target=st.sampled_from(("A_train", "b_train", "A_val", "b_val")))
def test_logreg_two_devices(target):
    """array-api-strict data with one argument on the second device: TypeError naming it."""
    data = _logreg_data(np.random.default_rng(0))
    dev1 = array_api_strict.Device("device1")
    data = {k: array_api_strict.asarray(v) for k, v in data.items()}
    data[target] = array_api_strict.asarray(data[target], device=dev1)
    with pytest.raises(TypeError) as info:
        LogRegHPO(**data)
    assert target in str(info.value) and "device" in str(info.value)


@SETTINGS
@given(target=st.sampled_from(("A_train", "b_train", "A_val", "b_val")),
       kind=st.sampled_from(DAMAGE), pos=st.floats(0.0, 0.999), seed=st.integers(0, 2**16))
def test_logreg_constructor(target, kind, pos, seed):
    data = _logreg_data(np.random.default_rng(seed))
    data[target] = _damage(data[target], kind, pos)
    names = {target}
    if kind == "shape" and target == "A_train":
        names.add("A_val")  # A_val's width is checked against A_train's
    if kind == "shape" and target == "b_train" or kind == "shape" and target == "b_val":
        names.add(target.replace("b_", "A_"))
    if kind == "mixed":
        names.add("A_train")  # "X is a numpy array but A_train is a ... array"
    with pytest.raises((TypeError, ValueError)) as info:
        LogRegHPO(**data)
    assert any(n in str(info.value) for n in names), (kind, target, str(info.value))


@SETTINGS
@given(target=st.sampled_from(("A_train", "labels_train", "A_val", "labels_val")),
       kind=st.sampled_from(DAMAGE + ("out_of_range",)), pos=st.floats(0.0, 0.999),
       seed=st.integers(0, 2**16))
def test_cleaning_constructor(target, kind, pos, seed):
    rng = np.random.default_rng(seed)
    data = {"A_train": rng.standard_normal((8, 3)), "labels_train": np.arange(8) % 3,
            "A_val": rng.standard_normal((5, 3)), "labels_val": np.arange(5) % 3}
    if kind == "out_of_range":
        bad = data[target].copy()
        if target.startswith("labels"):
            bad[int(pos * bad.size)] = -1
        else:
            bad = bad.astype(np.complex128)
        data[target] = bad
    elif target.startswith("labels") and kind == "int":
        return  # integer labels are the valid input
    elif target.startswith("labels") and kind in ("nan", "inf", "complex"):
        data[target] = _damage(data[target].astype(np.float64), kind, pos)  # float labels
    else:
        data[target] = _damage(data[target], kind, pos)
    names = {target, "A_train"} if kind in ("mixed", "shape") else {target}
    if kind == "shape":
        names |= {"A_val", "labels_train", "labels_val"}
    with pytest.raises((TypeError, ValueError)) as info:
        DataCleaning(**data, n_classes=3)
    assert any(n in str(info.value) for n in names), (kind, target, str(info.value))


def _field_kind(f):
    return f.type.split("|")[0].strip() if isinstance(f.type, str) else f.type.__name__


_FIELDS = [(name, f.name, _field_kind(f)) for name, cls in SOLVERS.items()
           for f in dataclasses.fields(cls) if _field_kind(f) in ("float", "int", "bool")]


@SETTINGS
@given(case=st.sampled_from(_FIELDS), value=st.one_of(
    st.floats(max_value=-1e-12, allow_nan=False), st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(max_value=-1), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
def test_solver_hyperparameters(case, value):
    solver, key, kind = case
    cls = SOLVERS[solver]
    if kind == "bool" and isinstance(value, bool):
        return
    if kind == "int" and isinstance(value, int) and value >= 0:
        return
    with pytest.raises((TypeError, ValueError)) as info:
        cls(**{key: value})
    assert key in str(info.value), (solver, key, value, str(info.value))


@pytest.mark.parametrize("solver, key", [(s, f.name) for s, c in SOLVERS.items()
                                         for f in dataclasses.fields(c)
                                         if f.name.startswith("lr") and f.name != "lr_min"
                                         and _field_kind(f) == "float"])
def test_zero_step_size_rejected(solver, key):
    with pytest.raises(ValueError, match=key):
        SOLVERS[solver](**{key: 0.0})


@pytest.fixture(scope="module")
def small_problem():
    return LogRegHPO.synthetic(12, 3, seed=0)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(arg=st.sampled_from(("x0", "y0", "n_iter", "record_every", "checkpoint_every",
                            "seed")),
       kind=st.sampled_from(DAMAGE + ("negative", "zero", "float")), pos=st.floats(0.0, 0.999))
def test_run_arguments(small_problem, arg, kind, pos):
    solver = SOLVERS["minimaxopt"]()
    kwargs = {"n_iter": 2}
    if arg in ("x0", "y0"):
        if kind in ("negative", "zero", "float"):
            kind = "int"
        kwargs[arg] = _damage(np.full(3, 0.5), kind, pos)
        if kind == "none":
            return  # None means the default start point
    else:
        if kind == "none" and arg in ("checkpoint_every", "seed"):
            return  # documented: None allowed
        kwargs[arg] = {"negative": -3, "zero": 0, "float": 2.5, "shape": [1], "int": "2",
                       "complex": 1j, "nan": math.nan, "inf": math.inf, "mixed": [2],
                       "list": [2], "none": None, "str": "2"}[kind]
        if arg in ("n_iter", "seed") and kind == "zero":
            return  # zero iterations is a valid (empty) run; seed 0 is a valid seed
    with pytest.raises((TypeError, ValueError)) as info:
        run(small_problem, solver, **kwargs)
    assert arg in str(info.value), (arg, kind, str(info.value))


def test_run_rejects_wrong_problem_kind(small_problem):
    with pytest.raises(TypeError, match="problem"):
        run(small_problem, SOLVERS["fosl"](), n_iter=1)
    with pytest.raises(TypeError, match="solver"):
        run(small_problem, "minimaxopt", n_iter=1)
