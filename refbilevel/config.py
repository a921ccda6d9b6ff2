"""Run configurations: from a ``config.json`` dictionary to a problem, a solver and a length.

The one place where a registry problem and solver are built from names and settings, used
by ``refbilevel run`` (and ``--resume``), by :func:`refbilevel.verify.export` and by
``refbilevel compare --solver``: all three apply the registry's suggested settings for the
problem (:func:`refbilevel.registry.suggested_settings`) under the user's own values, so
an export and a run of the same problem and solver use the same hyperparameters.
"""

from __future__ import annotations

__all__ = ["build_from_config", "run_metrics", "solver_for"]


def _tuples(hyper: dict) -> dict:
    """JSON turns tuples into lists; dataclass fields typed ``tuple`` want tuples back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}


def solver_for(solver: str, problem: str | None, hyperparameters: dict | None = None):
    """Solver ``solver`` with the registry's settings for ``problem`` under ``hyperparameters``."""
    from .registry import build_solver

    return build_solver(solver, _tuples(dict(hyperparameters or {})), problem=problem)


def build_from_config(config: dict, *, return_split: bool = False):
    """``(problem, solver, n_iter)`` from a run configuration (``config.json``).

    ``return_split=True`` appends the host data split the problem was built on (None when
    its builder hands none back), for :func:`run_metrics`.
    """
    from .registry import build_problem, default_iters

    problem, split = build_problem(config["problem"], seed=config["seed"],
                                   backend=config["backend"], dtype=config["dtype"],
                                   params=config.get("problem_params") or {},
                                   dataset=config.get("dataset"), return_split=True)
    solver = solver_for(config["solver"], config["problem"], config.get("hyperparameters"))
    n_iter = config.get("iters") or default_iters(solver)
    return (problem, solver, n_iter, split) if return_split else (problem, solver, n_iter)


def run_metrics(config: dict, problem, split) -> tuple:
    """The ``metrics`` of :func:`refbilevel.run.run` for a run configuration.

    ``config["metrics"]`` (default: every name of :data:`refbilevel.run.METRICS`) holds
    names: those of ``METRICS`` pass through, held-out names
    (:data:`refbilevel.heldout.HELDOUT`) become metric objects on the test part of
    ``split``. An unknown name, or a held-out name the problem cannot serve, is a
    ``ValueError`` naming it.
    """
    from .heldout import HELDOUT, heldout_metric
    from .run import METRICS

    names = tuple(config.get("metrics") or METRICS)
    out = []
    for m in names:
        if m in METRICS:
            out.append(m)
        elif m in HELDOUT:
            try:
                out.append(heldout_metric(m, problem, split, problem_name=config["problem"]))
            except ValueError as exc:
                raise ValueError(f"{exc}{_test_part_hint(config['problem'], split)}") from None
        else:
            raise ValueError(f"unknown metric {m!r}; valid: {', '.join((*METRICS, *HELDOUT))}")
    return tuple(out)


def _test_part_hint(problem: str, split) -> str:
    """How to give registry problem ``problem`` a test part (empty when it has one)."""
    from .registry import get_problem, problem_defaults

    if split is not None and split.A_test is not None and len(split.A_test):
        return ""
    ways = []
    if "n_test" in problem_defaults(problem):
        ways.append("--set problem.n_test=N draws N test rows")
    if get_problem(problem).datasets:
        ways.append(f"--data {'|'.join(get_problem(problem).datasets)} has a test part")
    return f" ({'; '.join(ways)})" if ways else ""
