"""The ``Examples`` sections of the docstrings run, and every public problem class and
dataset generator has one.

Each example compares the library with an independent oracle it computes itself (central
differences of the hyper-objective, a closed form, a vanishing gradient at a returned
solution), so a wrong oracle makes the example, and this test, fail. Doctests are host
code on NumPy (the default backend); the backend matrix is exercised by the other tests.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import refbilevel
from refbilevel import datasets
from refbilevel.problems.base import BilevelProblem, MinimaxBilevelProblem

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Dataset functions that generate, load or prepare data, or build a problem from it.
GENERATORS = ("split_indices", "logreg_hpo_data", "classification_data", "corrupt_labels",
              "cleaning_data", "multitask_auc_data", "meta_learning_data", "make_logreg_hpo",
              "make_multinomial_hpo", "make_cleaning", "make_multitask_auc",
              "make_meta_learning", "standardize", "load_digits", "load_breast_cancer",
              "dataset_availability")


def _module_names():
    names = ["refbilevel"]
    for info in pkgutil.walk_packages(refbilevel.__path__, "refbilevel."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


def _modules_with_examples():
    out = []
    finder = doctest.DocTestFinder()
    for name in _module_names():
        try:
            module = importlib.import_module(name)
        except ImportError:       # an optional dependency (e.g. CuPy) is missing
            continue
        if any(t.examples for t in finder.find(module, name)):
            out.append(name)
    return out


_MODULES = _modules_with_examples()


def test_doctests_were_found():
    """The collector is not vacuous: the problem modules and datasets have examples."""
    assert {"refbilevel.problems.quadratic", "refbilevel.datasets"} <= set(_MODULES)


@pytest.mark.parametrize("name", _MODULES)
def test_module_doctests_pass(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    tests = [t for t in finder.find(module, name) if t.examples]
    failures = []
    for test in tests:
        result = runner.run(test, out=failures.append)
        assert result.attempted > 0
    assert runner.failures == 0, "".join(failures)


def _public_problem_classes():
    found = []
    pkg = importlib.import_module("refbilevel.problems")
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"refbilevel.problems.{info.name}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if (inspect.isclass(obj) and issubclass(obj, (BilevelProblem, MinimaxBilevelProblem))
                    and obj.__module__ == module.__name__):
                found.append(obj)
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


_PROBLEMS = _public_problem_classes()


def test_problem_classes_were_found():
    names = {c.__name__ for c in _PROBLEMS}
    assert {"Quadratic", "MinimaxQuadratic", "LogRegHPO", "DataCleaning", "LayerDecayMLP",
            "MultiTaskAUC", "RankedMetaLearning"} <= names


@pytest.mark.parametrize("obj", _PROBLEMS + [getattr(datasets, n) for n in GENERATORS],
                         ids=lambda o: f"{o.__module__}.{o.__qualname__}")
def test_public_object_has_a_runnable_example(obj):
    """numpydoc ``Examples`` with at least one ``>>>`` line (run by the test above)."""
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------" in doc, f"{obj.__qualname__} has no Examples section"
    assert doctest.DocTestParser().get_examples(doc), f"{obj.__qualname__}: no >>> lines"
