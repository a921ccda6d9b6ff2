"""Oracle calls per step as the solvers' docstrings state them ("Oracle calls per step").

The measured counts of :class:`refbilevel.oracle.Oracle` are checked against these
formulas (tests/test_oracle.py); each formula is transcribed from the docstring named in
``PHRASES``, which the test also finds in that docstring, so docs, table and code agree.
"""

from __future__ import annotations

from refbilevel.oracle import OracleCalls


def _blocks(solver, problem):
    return problem.n_blocks if solver.n_sampled is None else solver.n_sampled


def documented_calls(solver, problem) -> OracleCalls:
    """The per-step calls the docstring of ``solver`` states, for ``problem``."""
    name = solver.name
    if name in ("minimaxopt", "minimaxopt_stochastic"):
        return OracleCalls(grad_f=1, grad_g=2)
    if name in ("f2sa", "f2sa_adam"):
        T = solver.n_inner
        return OracleCalls(grad_f=T + 1, grad_g=2 * T + 2)
    if name == "fosl":
        S, m = _blocks(solver, problem), 2 if solver.gauss_seidel else 1
        return OracleCalls(grad_f=m * S, grad_g=2 * m * S)
    if name == "memcs":
        S, K = _blocks(solver, problem), solver.n_inner
        return OracleCalls(grad_f=(K + 1) * S, grad_g=2 * (K + 1) * S)
    if name == "implicit":
        return OracleCalls()
    if name == "aid":
        extra = 1 if (solver.warm_start_v and solver.method == "cg") else 0
        return OracleCalls(grad_f=1, grad_g=solver.n_inner, hvp=solver.n_linear + extra,
                           cross=1)
    if name == "itd":
        K = solver.n_reverse
        return OracleCalls(grad_f=1, grad_g=solver.n_inner, hvp=max(K - 1, 0), cross=K)
    if name == "stocbio":
        return OracleCalls(grad_f=1, grad_g=solver.n_inner, hvp=solver.n_neumann, cross=1)
    if name in ("soba", "saba"):
        return OracleCalls(grad_f=1, grad_g=1, hvp=1, cross=1)
    if name == "bome":
        extra = 2 if solver.phi == "value_gap" else 0
        return OracleCalls(grad_f=1, grad_g=solver.n_inner + 2 + extra)
    if name == "vpbgd":
        return OracleCalls(grad_f=1, grad_g=solver.n_inner + 2)
    if name == "f2ba":
        T = solver.n_inner
        return OracleCalls(grad_f=T + 1, grad_g=2 * T + 2)
    raise KeyError(f"no documented call count for solver {name!r}: add it here")


#: A phrase of each solver's docstring that states the counts above.
PHRASES = {
    "minimaxopt": "1 ``grad_f`` (at (x, y)) and 2 ``grad_g``",
    "minimaxopt_stochastic": "Oracle calls per step as :class:`MinimaxOPT`",
    "f2sa": ":math:`T+1` ``grad_f`` and :math:`2T+2` ``grad_g``",
    "f2sa_adam": "Oracle calls as :class:`F2SA`",
    "fosl": "S\n    ``grad_f`` and 2S ``grad_g`` (Jacobi); twice that with ``gauss_seidel=True``",
    "memcs": ":math:`(K+1)S`\n    ``grad_f`` and :math:`2(K+1)S` ``grad_g``",
    "implicit": "none are counted",
    "aid": "``grad_g`` T, ``grad_f`` 1, ``hvp`` K (K + 1 for warm-started\n    CG), ``cross`` 1",
    "itd": "``grad_g`` T, ``grad_f`` 1, ``cross`` K, ``hvp`` K − 1",
    "stocbio": "``grad_g`` D, ``grad_f`` 1, ``hvp`` Q, ``cross`` 1",
    "soba": "``grad_g`` 1, ``grad_f`` 1, ``hvp`` 1, ``cross`` 1",
    "saba": "``grad_g`` 1, ``grad_f`` 1, ``hvp`` 1, ``cross`` 1",
    "bome": "``grad_g`` T + 2",
    "vpbgd": "``grad_g`` T + 2",
    "f2ba": "``grad_g`` 2T + 2",
}
