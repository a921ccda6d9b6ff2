"""Registry defaults + per-problem suggested settings make progress on every compatible pair.

For each registered problem and each solver of its kind, the solver built by
``build_solver(name, problem=...)`` (generic defaults overridden by
``ProblemSpec.suggested``) runs a short budget and must lower the exact measure of
stationarity by a stated factor without diverging. Oracles (independent of the solvers):

* bilevel problems: the problem's exact hypergradient ``∇F(x)`` (closed form on the
  quadratics, IFT + CG otherwise), recorded by ``refbilevel.run`` as ``hypergradient_norm``;
* ``toy_1d``: its box keeps ``∇F(x*) != 0``, so the distance ``|x - x*|`` to the closed-form
  ``x* = Proj_[lo, hi](b/a)``;
* minimax-bilevel problems: the exact saddle-gradient norm ``||∇Φ(x)||``.

The budgets are shorter than the default-length runs the settings were tuned for, and the
smaller sizes (problem parameters) keep the file fast; the factors are what these budgets
show with margin. NumPy only: the settings are about step sizes, which are backend-free,
and backend equivalence of the solvers is tested elsewhere.
"""

import dataclasses
import json

import numpy as np
import pytest

from refbilevel import registry
from refbilevel._backend import to_host
from refbilevel.registry import PROBLEMS, SOLVERS
from refbilevel.run import run

# problem -> (problem parameters for the test, iterations, required factor)
# "clear decrease" on the non-quadratic problems: factor 0.8 unless a pair says otherwise.
CASES = {
    "quadratic": ({}, 200, 0.5),
    "toy_1d": ({}, 200, 0.5),
    "logreg": ({"n": 200, "p": 20}, 200, 0.8),
    "multinomial": ({}, 100, 0.8),
    "cleaning": ({"n_train": 100, "n_val": 50, "p": 10}, 200, 0.8),
    "layer_decay": ({}, 200, 0.8),
    "minimax_quadratic": ({}, 200, 0.5),
    "multitask_auc": ({"n_train": 20, "n_val": 20}, 200, 0.8),
    "meta_learning": ({}, 150, 0.5),
}

# (problem, solver) -> changes to the problem's (parameters, iterations, factor)
OVERRIDES = {
    ("quadratic", "f2sa_adam"): {"n_iter": 600},
    # on logreg ‖∇F‖ first rises while x leaves the flat start region, then falls
    ("logreg", "minimaxopt"): {"n_iter": 600},
    ("logreg", "f2sa"): {"n_iter": 600},
    ("logreg", "f2sa_adam"): {"n_iter": 600},
    ("logreg", "vpbgd"): {"n_iter": 600},
    # slow starters on layer_decay (0.23 and 0.20 after the default 1000 iterations)
    ("layer_decay", "f2sa"): {"factor": 0.85},
    ("layer_decay", "f2ba"): {"factor": 0.85},
    # cheaper: AID/ITD converge within 50 iterations; ImplicitGD's exact inner solves
    # cost ~1 s a step at the default size
    ("layer_decay", "aid"): {"n_iter": 100},
    ("layer_decay", "itd"): {"n_iter": 100},
    ("layer_decay", "implicit"): {"params": {"n_train": 40, "n_val": 20}, "n_iter": 100},
}


def _case(problem_name, solver_name):
    params, n_iter, factor = CASES[problem_name]
    over = OVERRIDES.get((problem_name, solver_name), {})
    return (over.get("params", params), over.get("n_iter", n_iter),
            over.get("factor", factor))


# pairs over ~1 s here (the fast subset keeps at least one pair per solver)
SLOW = {("layer_decay", s) for s in SOLVERS} | {
    ("logreg", "aid"), ("logreg", "itd"), ("logreg", "implicit"),
    ("cleaning", "aid"), ("cleaning", "itd"), ("cleaning", "implicit"),
    ("multinomial", "aid"), ("multinomial", "itd"), ("multinomial", "implicit"),
    ("multitask_auc", "memcs"), ("quadratic", "f2sa_adam"), ("logreg", "f2sa_adam"),
    ("logreg", "f2sa"),
}


def _pairs():
    out = []
    for p, spec in PROBLEMS.items():
        if not spec.available() or p not in CASES:
            continue
        for s, cls in SOLVERS.items():
            if bool(getattr(cls, "minimax", False)) != spec.minimax:
                continue
            marks = [pytest.mark.slow] if (p, s) in SLOW else []
            out.append(pytest.param(p, s, id=f"{p}-{s}", marks=marks))
    return out


def _measure(problem, result, name):
    if name == "toy_1d":
        xs = float(to_host(problem.solution())[0])
        x0 = float(to_host(problem.init_x())[0])
        return abs(x0 - xs), abs(float(to_host(result.x)[0]) - xs)
    h = result.history["hypergradient_norm"]
    return float(h[0]), float(h[-1])


def test_every_registered_problem_has_a_case():
    assert set(CASES) >= {p for p, s in PROBLEMS.items() if s.available()}


@pytest.mark.parametrize(("problem_name", "solver_name"), _pairs())
def test_suggested_settings_make_progress(problem_name, solver_name):
    params, n_iter, factor = _case(problem_name, solver_name)
    problem = registry.build_problem(problem_name, params=params, seed=0)
    solver = registry.build_solver(solver_name, problem=problem_name)
    result = run(problem, solver, n_iter=n_iter, seed=0, record_every=n_iter,
                 metrics=("hypergradient_norm",))
    assert result.status != "diverged", result.message
    start, end = _measure(problem, result, problem_name)
    assert np.isfinite(start) and np.isfinite(end)
    assert end <= factor * start, (
        f"{problem_name}/{solver_name}: {end:.4g} > {factor} × {start:.4g} after {n_iter} "
        f"iterations with {registry.suggested_settings(problem_name, solver_name)}")


# ------------------------------------------------------------------ the mechanism
def test_build_solver_applies_suggested_and_user_values_win():
    sugg = registry.suggested_settings("quadratic", "aid")
    assert sugg == {"lr_inner": 0.1}
    assert registry.build_solver("aid").lr_inner == 1.0                   # generic default
    assert registry.build_solver("aid", problem="quadratic").lr_inner == 0.1
    solver = registry.build_solver("aid", {"lr_inner": 0.05, "n_inner": 7}, problem="quadratic")
    assert (solver.lr_inner, solver.n_inner) == (0.05, 7)
    # a solver without suggestions gets its defaults; the returned dict is a copy
    assert registry.suggested_settings("quadratic", "soba") == {}
    registry.suggested_settings("quadratic", "aid")["lr_inner"] = 99.0
    assert registry.suggested_settings("quadratic", "aid") == {"lr_inner": 0.1}
    with pytest.raises(ValueError, match="valid problems"):
        registry.suggested_settings("nope", "aid")
    with pytest.raises(ValueError, match="valid solvers"):
        registry.suggested_settings("quadratic", "nope")


def test_suggested_settings_are_valid_fields_of_compatible_solvers():
    for p, spec in PROBLEMS.items():
        for s, hp in spec.suggested.items():
            cls = registry.get_solver(s)
            assert bool(getattr(cls, "minimax", False)) == spec.minimax, (p, s)
            fields = {f.name for f in dataclasses.fields(cls)}
            assert set(hp) <= fields, (p, s, set(hp) - fields)
            cls(**hp)  # validated by the solver


def test_default_run_matches_the_logreg_suggestion():
    assert registry.suggested_settings(registry.DEFAULT_RUN["problem"],
                                       registry.DEFAULT_RUN["solver"]) \
        == registry.DEFAULT_RUN["hyperparameters"]


def test_describe_all_lists_suggested():
    info = registry.describe_all()["problems"]
    assert info["quadratic"]["suggested"]["aid"] == {"lr_inner": 0.1}
    assert info["minimax_quadratic"]["suggested"] == {}


def test_cli_run_applies_suggested_records_final_values_and_set_wins(tmp_path, capsys):
    from refbilevel.cli import main

    base = ["run", "--problem", "quadratic", "--solver", "aid", "--iters", "3",
            "--no-progress", "--metrics", "value"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    expected = {**registry.solver_defaults("aid"), "lr_inner": 0.1}
    assert {k: config["hyperparameters"][k] for k in expected} == expected
    assert main([*base, "--set", "lr_inner=0.05", "--out", str(tmp_path / "b")]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["hyperparameters"]["lr_inner"] == 0.05
    capsys.readouterr()
    assert main(["list"]) == 0
    assert "suggested for aid: lr_inner=0.1" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(registry.PROBLEMS))
def test_size_parameter_is_a_parameter_of_the_builder(name):
    """``bench --sizes`` sets ``size_param``: it must be one of the builder's parameters."""
    spec = registry.PROBLEMS[name]
    if spec.size_param is not None:
        assert spec.size_param in registry.problem_defaults(name)
