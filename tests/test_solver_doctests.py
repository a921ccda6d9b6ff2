"""The ``Examples`` sections of the solver classes run as doctests.

Each example runs a solver on a small closed-form problem and states two checkable facts:
the exact hypergradient (or saddle-gradient) norm decreased, and the oracle calls the oracle
layer measured (which equal n_iter times the per-step count of the docstring).
"""

from __future__ import annotations

import doctest
import importlib

import pytest

from refbilevel import registry

MODULES = sorted({cls.__module__ for cls in registry.SOLVERS.values()})


@pytest.mark.parametrize("module", MODULES)
def test_solver_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


@pytest.mark.parametrize("name", sorted(registry.SOLVERS))
def test_every_solver_class_has_an_example(name):
    doc = registry.SOLVERS[name].__doc__ or ""
    assert "Examples\n    --------\n    >>>" in doc, name
