"""Run configurations: from a ``config.json`` dictionary to a problem, a solver and a length.

The one place where a registry problem and solver are built from names and settings, used
by ``refbilevel run`` (and ``--resume``), by :func:`refbilevel.verify.export` and by
``refbilevel compare --solver``: all three apply the registry's suggested settings for the
problem (:func:`refbilevel.registry.suggested_settings`) under the user's own values, so
an export and a run of the same problem and solver use the same hyperparameters.
"""

from __future__ import annotations

__all__ = ["build_from_config", "solver_for"]


def _tuples(hyper: dict) -> dict:
    """JSON turns tuples into lists; dataclass fields typed ``tuple`` want tuples back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}


def solver_for(solver: str, problem: str | None, hyperparameters: dict | None = None):
    """Solver ``solver`` with the registry's settings for ``problem`` under ``hyperparameters``."""
    from .registry import build_solver

    return build_solver(solver, _tuples(dict(hyperparameters or {})), problem=problem)


def build_from_config(config: dict):
    """``(problem, solver, n_iter)`` from a run configuration (``config.json``)."""
    from .registry import build_problem, default_iters

    problem = build_problem(config["problem"], seed=config["seed"], backend=config["backend"],
                            dtype=config["dtype"], params=config.get("problem_params") or {},
                            dataset=config.get("dataset"))
    solver = solver_for(config["solver"], config["problem"], config.get("hyperparameters"))
    n_iter = config.get("iters") or default_iters(solver)
    return problem, solver, n_iter
