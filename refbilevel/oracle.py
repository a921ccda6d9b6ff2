r"""The oracle layer: what a solver step sees of a problem.

A step is ``state = solver.step(oracle, state)``. The :class:`Oracle` wraps a problem and

* serves the problem's oracles (``grad_f``, ``grad_g_many``, ``hvp_g``, ``linearize_g``...)
  unchanged, counting each call by kind (:data:`KINDS`);
* serves the minibatch and block indices of the state's step by stream name
  (:meth:`Oracle.draw`), computed from ``(state.seed, state.iteration)`` by the
  counter-based streams of :mod:`refbilevel.sampling` and moved to the device in one
  transfer;
* optionally logs every draw (for :func:`refbilevel.verify.export`) and every call.

Every other attribute (``xp``, ``device``, ``dim_x``, ``init_z``, exact oracles such as
``inner_solution``) is the problem's own and is not counted.

Counting rule: a call counts one of its kind; a stacked call (``*_many``, the points
stacked on axis 0) counts one per stacked point; a minimax-bilevel call on ``S`` blocks
counts ``S`` per point. A function value (``f``, ``g``) counts as one call of the
gradient of that function (one pass over the data). An HVP or cross product obtained from
:meth:`Oracle.linearize_g` counts as one ``hvp`` or ``cross`` each time it is applied;
:meth:`Oracle.grad_and_linearize_g` counts one ``grad_g`` and its products the same way.

``solver.step`` also accepts a bare problem (:func:`as_oracle` wraps it in an uncounted,
unlogged oracle): this is the form to use when reading or teaching a solver; the driver
(:func:`refbilevel.run.run`) always passes an :class:`Oracle`.
"""

from __future__ import annotations

import numpy as np

from ._backend import from_host
from .problems.base import LinearizedG, MinimaxBilevelProblem

__all__ = ["KINDS", "METHODS", "OracleCalls", "Oracle", "as_oracle"]

#: Oracle kinds counted by :class:`Oracle`.
KINDS = ("grad_f", "grad_g", "hvp", "cross")

# method name -> (kind, stacked). Minimax-bilevel methods also scale by the block count.
_METHODS = {
    "f": ("grad_f", False), "grad_f": ("grad_f", False), "grad_f_x": ("grad_f", False),
    "grad_f_y": ("grad_f", False), "grad_f_z": ("grad_f", False),
    "g": ("grad_g", False), "grad_g": ("grad_g", False), "grad_g_x": ("grad_g", False),
    "grad_g_y": ("grad_g", False), "grad_g_many": ("grad_g", True),
    "grad_g_x_many": ("grad_g", True), "grad_g_y_many": ("grad_g", True),
    "grad_g_z_many": ("grad_g", True),
    "hvp_g": ("hvp", False), "cross_g": ("cross", False),
}
#: The counted oracle methods (the one list of them; benchmarks and tools read it).
METHODS = tuple(_METHODS)
# position of the blocks argument of minimax-bilevel methods: f(x, y, z, blocks),
# g(x, z, blocks)
_BLOCKS_ARG = {"f": 3, "grad_f": 3, "grad_f_z": 3, "g": 2, "grad_g": 2, "grad_g_many": 2,
               "grad_g_z_many": 2}


class OracleCalls:
    """Oracle calls by kind (``grad_f``, ``grad_g``, ``hvp``, ``cross``); a small value type."""

    __slots__ = KINDS

    def __init__(self, grad_f: int = 0, grad_g: int = 0, hvp: int = 0, cross: int = 0):
        self.grad_f, self.grad_g, self.hvp, self.cross = grad_f, grad_g, hvp, cross

    def as_dict(self) -> dict[str, int]:
        return {"grad_f": self.grad_f, "grad_g": self.grad_g, "hvp": self.hvp,
                "cross": self.cross}

    def copy(self) -> OracleCalls:
        return OracleCalls(self.grad_f, self.grad_g, self.hvp, self.cross)

    def __add__(self, other: OracleCalls) -> OracleCalls:
        return OracleCalls(self.grad_f + other.grad_f, self.grad_g + other.grad_g,
                           self.hvp + other.hvp, self.cross + other.cross)

    def __sub__(self, other: OracleCalls) -> OracleCalls:
        return OracleCalls(self.grad_f - other.grad_f, self.grad_g - other.grad_g,
                           self.hvp - other.hvp, self.cross - other.cross)

    def __mul__(self, n: int) -> OracleCalls:
        return OracleCalls(n * self.grad_f, n * self.grad_g, n * self.hvp, n * self.cross)

    __rmul__ = __mul__

    def __eq__(self, other) -> bool:
        return isinstance(other, OracleCalls) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().values()))

    @property
    def gradients(self) -> int:
        """First-order calls: ``grad_f + grad_g``."""
        return self.grad_f + self.grad_g

    @property
    def total(self) -> int:
        """All calls, each HVP and cross product counted as one."""
        return self.grad_f + self.grad_g + self.hvp + self.cross

    def __repr__(self) -> str:
        return (f"OracleCalls(grad_f={self.grad_f}, grad_g={self.grad_g}, hvp={self.hvp}, "
                f"cross={self.cross})")


class Oracle:
    """A problem seen through the oracle layer: counted calls, counter-based batches, a log.

    Parameters
    ----------
    problem : BilevelProblem or MinimaxBilevelProblem
        The problem whose oracles are served.
    count : bool
        Count the calls (default True; an uncounted oracle is what :func:`as_oracle`
        builds around a bare problem).
    log : bool
        Keep :attr:`draws` (the host indices served, by step and stream) and :attr:`log`
        (``(step, method, multiplicity)`` per oracle call).
    keep_args : bool
        With ``log``, also keep each call's arguments: entries become
        ``(step, method, multiplicity, args, kwargs)`` such that
        ``getattr(problem, method)(*args, **kwargs)`` repeats the call (an HVP or cross
        product from :meth:`linearize_g` is logged as the equivalent ``hvp_g``/``cross_g``
        call). For benchmarks that time or inspect the calls of one step.

    Attributes
    ----------
    problem
        The wrapped problem.
    calls : OracleCalls
        Calls served so far (mutable counter; :meth:`reset_calls` sets it).
    draws : list of (int, str, list)
        With ``log``: ``(step, stream, host index arrays or None)`` per draw.
    log : list of (int, str, int)
        With ``log``: ``(step, method, multiplicity)`` per oracle call.
    """

    def __init__(self, problem, *, count: bool = True, log: bool = False,
                 keep_args: bool = False):
        self.problem = problem
        self.keep_args = bool(keep_args)
        self.calls = OracleCalls()
        self.minimax = isinstance(problem, MinimaxBilevelProblem)
        self.counting = bool(count)
        self.logging = bool(log)
        self.draws: list = []
        self.log: list = []
        self._step = 0
        self._cache: dict = {}
        # the namespace and device are read several times a step: plain attributes, not
        # a __getattr__ round trip (which first fails the normal look-up)
        for name in ("xp", "device"):
            if hasattr(problem, name):
                setattr(self, name, getattr(problem, name))
        if self.counting or self.logging:
            for name in _METHODS:
                if hasattr(problem, name):
                    setattr(self, name, self._counted(name, getattr(problem, name)))

    def __getattr__(self, name):
        # only reached for attributes not set on the oracle: the problem's own, uncounted
        if name == "problem":
            raise AttributeError(name)
        value = getattr(self.problem, name)
        if getattr(value, "__self__", None) is self.problem:
            # a bound method of the problem (uncounted: the oracle's methods are set in
            # __init__) stays the same object: keep it, so the next call finds it directly
            self.__dict__[name] = value
        return value

    def reset_calls(self, calls: OracleCalls | None = None) -> None:
        """Set the counter (to zero, or to ``calls`` when resuming)."""
        self.calls = OracleCalls() if calls is None else calls.copy()

    # ---------------------------------------------------------------- counting
    def _add(self, name, kind, m, args=(), kwargs=None):
        if self.counting:
            setattr(self.calls, kind, getattr(self.calls, kind) + m)
        if self.logging:
            if self.keep_args:
                self.log.append((self._step, name, m, args, kwargs or {}))
            else:
                self.log.append((self._step, name, m))

    def _counted(self, name, method):
        kind, stacked = _METHODS[name]
        blocks_at = _BLOCKS_ARG.get(name) if self.minimax else None
        if not self.logging and blocks_at is None:
            # the driver's case (count, no log): one attribute increment per call
            if stacked:
                def call(*args, **kwargs):
                    calls = self.calls
                    setattr(calls, kind, getattr(calls, kind) + args[1].shape[0])
                    return method(*args, **kwargs)
            else:
                def call(*args, **kwargs):
                    calls = self.calls
                    setattr(calls, kind, getattr(calls, kind) + 1)
                    return method(*args, **kwargs)
            call.__name__ = name
            call.__doc__ = method.__doc__
            return call

        def call(*args, **kwargs):
            m = args[1].shape[0] if stacked else 1
            if blocks_at is not None:
                blocks = args[blocks_at] if len(args) > blocks_at else kwargs["blocks"]
                m *= blocks.shape[0]
            self._add(name, kind, m, args, kwargs)
            return method(*args, **kwargs)

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call

    def linearize_g(self, x, y, batch=None) -> LinearizedG:
        """The problem's ``linearize_g`` with each application of ``hvp``/``cross`` counted."""
        return self._counted_products(self.problem.linearize_g(x, y, batch), x, y, batch)

    def grad_and_linearize_g(self, x, y, batch=None):
        """The problem's ``grad_and_linearize_g``: one ``grad_g``, then products as in
        :meth:`linearize_g`."""
        grad, lin = self.problem.grad_and_linearize_g(x, y, batch)
        self._add("grad_g_y", "grad_g", 1, (x, y, batch))
        return grad, self._counted_products(lin, x, y, batch)

    def _counted_products(self, lin, x, y, batch) -> LinearizedG:
        """``lin`` with each application of its ``hvp``/``cross`` counted (and logged)."""
        if not (self.counting or self.logging):
            return lin
        if not self.logging:                     # the driver's case: count only
            lin_hvp, lin_cross = lin.hvp, lin.cross

            def hvp(v):
                self.calls.hvp += 1
                return lin_hvp(v)

            def cross(v):
                self.calls.cross += 1
                return lin_cross(v)

            return LinearizedG(hvp=hvp, cross=cross)

        def hvp(v):
            self._add("hvp_g", "hvp", 1, (x, y, v, batch))
            return lin.hvp(v)

        def cross(v):
            self._add("cross_g", "cross", 1, (x, y, v, batch))
            return lin.cross(v)

        return LinearizedG(hvp=hvp, cross=cross)

    # ---------------------------------------------------------------- batches
    def draw(self, state, streams) -> dict:
        """The index arrays of the state's step for each stream, in one host->device transfer.

        Parameters
        ----------
        state : SolverState
            Gives ``seed`` and ``iteration`` (the step ``k``).
        streams : sequence of refbilevel.sampling.Stream
            What the step draws (the solver's ``streams(problem)``).

        Returns
        -------
        dict of str to list
            Stream name -> ``count`` device int64 arrays (``None`` entries for full data).
        """
        k = state.iteration
        self._step = k
        if not streams:
            return {}
        host = {s.name: s.draw(state.seed, k, self._cache) for s in streams}
        if self.logging:
            for name, arrays in host.items():
                self.draws.append((k, name, [None if a is None else np.array(a, copy=True)
                                             for a in arrays]))
        flat = [a for arrays in host.values() for a in arrays if a is not None]
        if not flat:
            return host
        p = self.problem
        dev = from_host(np.concatenate(flat), p.xp, device=p.device)
        out, start = {}, 0
        for name, arrays in host.items():
            pieces = []
            for a in arrays:
                if a is None:
                    pieces.append(None)
                else:
                    pieces.append(dev[start:start + a.shape[0]])
                    start += a.shape[0]
            out[name] = pieces
        return out

    def begin_step(self, state) -> None:
        """Mark the step being served (for the call log of steps that draw nothing)."""
        self._step = state.iteration


def as_oracle(problem_or_oracle) -> Oracle:
    """``problem_or_oracle`` if it is an :class:`Oracle`, else an uncounted one around it."""
    if isinstance(problem_or_oracle, Oracle):
        return problem_or_oracle
    return Oracle(problem_or_oracle, count=False)
