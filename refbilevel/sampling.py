"""Seeded host-side minibatch and block schedules.

All sampling happens on the host with :class:`numpy.random.Generator` (design rule 5): the
same seed gives the same indices on every backend. Indices are drawn as NumPy int64 arrays
and moved to the device **once per call** of :meth:`BatchSchedule.draw` (all the batches of
one solver step concatenated into one transfer, then sliced on the device with Python
ints), so a step never makes more than one host-to-device transfer.

Modes of :class:`MinibatchSampler`:

* ``"epoch"`` — a fresh random permutation of ``0..n-1`` per epoch, consumed in contiguous
  slices of ``batch_size``; a remainder shorter than a batch is dropped (every batch has
  the same size, so stacked oracles see fixed shapes). This is the structure of
  benchmark_bilevel's ``MinibatchSampler`` (permutation of the batch order per epoch).
* ``"iid"`` — ``batch_size`` indices drawn uniformly with replacement at every call.

``batch_size=None`` or ``batch_size >= n`` means full batch: :meth:`MinibatchSampler.next_indices`
returns ``None`` (oracles then read all the data) and consumes no randomness.

Checkpoints: every sampler has ``get_state() -> dict`` (JSON-able) and ``set_state(dict)``;
restoring a state reproduces the following draws exactly.
"""

from __future__ import annotations

import copy

import numpy as np

from ._backend import from_host
from ._validation import check_choice, check_int
from .problems.base import Batch

__all__ = ["BatchSchedule", "BlockSampler", "MinibatchSampler"]


def _check_rng(rng, name="rng") -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator; got {type(rng).__name__}")
    return rng


class MinibatchSampler:
    """Index stream over ``n`` samples (one data set).

    Parameters
    ----------
    n : int
        Number of samples (>= 1).
    batch_size : int or None
        Minibatch size; ``None`` or ``>= n`` means full batch.
    rng : numpy.random.Generator
        Host generator owned by this sampler from now on.
    mode : {"epoch", "iid"}
        Epoch permutations (without replacement within an epoch) or i.i.d. draws with
        replacement.
    """

    def __init__(self, n: int, batch_size: int | None, *, rng: np.random.Generator,
                 mode: str = "epoch"):
        self.n = check_int(n, "n", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1, allow_none=True)
        self.mode = check_choice(mode, "mode", ("epoch", "iid"))
        self._rng = _check_rng(rng)
        self._perm = None          # current epoch's permutation (epoch mode)
        self._perm_rng_state = None  # generator state before that permutation was drawn
        self._pos = 0              # next unread position in the permutation
        self.epoch = 0             # completed epochs (epoch mode)

    @property
    def is_full(self) -> bool:
        """Whether every call returns the full data (``None``)."""
        return self.batch_size is None or self.batch_size >= self.n

    def next_indices(self) -> np.ndarray | None:
        """The next minibatch's indices (host int64 array), or ``None`` for full batch."""
        if self.is_full:
            return None
        bs = self.batch_size
        if self.mode == "iid":
            return self._rng.integers(0, self.n, size=bs, dtype=np.int64)
        if self._perm is None or self._pos + bs > self.n:
            if self._perm is not None:
                self.epoch += 1
            self._new_epoch()
        out = self._perm[self._pos:self._pos + bs]
        self._pos += bs
        return out

    def _new_epoch(self) -> None:
        self._perm_rng_state = copy.deepcopy(self._rng.bit_generator.state)
        self._perm = self._rng.permutation(self.n).astype(np.int64)
        self._pos = 0

    def get_state(self) -> dict:
        """JSON-able state: generator state and position (the permutation is redrawn)."""
        return {
            "n": self.n, "batch_size": self.batch_size, "mode": self.mode,
            "rng": _jsonable(self._rng.bit_generator.state),
            "perm_rng": None if self._perm is None else _jsonable(self._perm_rng_state),
            "pos": self._pos, "epoch": self.epoch,
        }

    def set_state(self, state: dict) -> None:
        """Restore a state from :meth:`get_state` (sizes and mode must match)."""
        for key in ("n", "batch_size", "mode"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler "
                                 f"has {key}={getattr(self, key)!r}")
        if state["perm_rng"] is None:
            self._perm = self._perm_rng_state = None
        else:
            self._rng.bit_generator.state = state["perm_rng"]
            self._new_epoch()
        self._rng.bit_generator.state = state["rng"]
        self._pos = int(state["pos"])
        self.epoch = int(state["epoch"])


def _jsonable(obj):
    """Bit-generator states hold NumPy ints/arrays in some generators; make them plain."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


class BatchSchedule:
    """Independent minibatch streams for the outer (``f``) and inner (``g``) data.

    Parameters
    ----------
    n_outer, n_inner : int
        Sample counts of the outer and inner data (``problem.n_outer``, ``problem.n_inner``).
    batch_size_outer, batch_size_inner : int or None
        Minibatch sizes; ``None`` means full batch for that level.
    rng : numpy.random.Generator
        Parent generator; two independent child generators are spawned from it
        (``rng.spawn(2)``: outer first, inner second).
    mode : {"epoch", "iid"}
        See :class:`MinibatchSampler`.
    """

    def __init__(self, n_outer: int, n_inner: int, *, batch_size_outer=None,
                 batch_size_inner=None, rng: np.random.Generator, mode: str = "epoch"):
        rng = _check_rng(rng)
        r_outer, r_inner = rng.spawn(2)
        self.outer = MinibatchSampler(n_outer, batch_size_outer, rng=r_outer, mode=mode)
        self.inner = MinibatchSampler(n_inner, batch_size_inner, rng=r_inner, mode=mode)

    @property
    def is_full(self) -> bool:
        """Whether both levels are full batch (every batch is ``Batch(None, None)``)."""
        return self.outer.is_full and self.inner.is_full

    def draw_streams(self, xp, device, n_outer: int, n_inner: int):
        """``n_outer`` outer and ``n_inner`` inner index arrays in one host->device transfer.

        Returns
        -------
        (list, list)
            Device int64 index arrays (or ``None`` entries for a full-batch level).
        """
        outs = [self.outer.next_indices() for _ in range(n_outer)]
        ins = [self.inner.next_indices() for _ in range(n_inner)]
        host = [a for a in outs + ins if a is not None]
        if not host:
            return outs, ins
        flat = from_host(np.concatenate(host), xp, device=device)
        pieces, start = [], 0
        for a in host:
            pieces.append(flat[start:start + a.shape[0]])
            start += a.shape[0]
        it = iter(pieces)
        outs = [None if a is None else next(it) for a in outs]
        ins = [None if a is None else next(it) for a in ins]
        return outs, ins

    def draw(self, xp, device, k: int = 1) -> list[Batch]:
        """``k`` batches, each with its own outer and inner indices (one transfer in all)."""
        outs, ins = self.draw_streams(xp, device, k, k)
        return [Batch(outer=o, inner=i) for o, i in zip(outs, ins)]

    def get_state(self) -> dict:
        return {"outer": self.outer.get_state(), "inner": self.inner.get_state()}

    def set_state(self, state: dict) -> None:
        self.outer.set_state(state["outer"])
        self.inner.set_state(state["inner"])


class BlockSampler:
    """Block participation for minimax-bilevel solvers: ``S`` of ``n`` blocks per step.

    Parameters
    ----------
    n_blocks : int
        Number of blocks ``n``.
    n_sampled : int or None
        Blocks per step ``S`` (``1 <= S <= n``); ``None`` or ``S == n`` is full
        participation (all blocks, in order, no randomness consumed).
    rng : numpy.random.Generator
        Host generator owned by the sampler.

    Notes
    -----
    Partial participation draws ``S`` distinct blocks uniformly without replacement at
    every step (``rng.choice(n, S, replace=False)``), returned sorted.
    """

    def __init__(self, n_blocks: int, n_sampled: int | None, *, rng: np.random.Generator):
        self.n_blocks = check_int(n_blocks, "n_blocks", minimum=1)
        n_sampled = check_int(n_sampled, "n_sampled", minimum=1, allow_none=True)
        if n_sampled is None:
            n_sampled = self.n_blocks
        if n_sampled > self.n_blocks:
            raise ValueError(f"n_sampled must be <= n_blocks = {self.n_blocks}; got {n_sampled}")
        self.n_sampled = n_sampled
        self._rng = _check_rng(rng)
        self._full = None  # cached device arange for full participation

    @property
    def is_full(self) -> bool:
        return self.n_sampled == self.n_blocks

    def next_indices(self) -> np.ndarray:
        """Host int64 array of the next step's blocks."""
        if self.is_full:
            return np.arange(self.n_blocks, dtype=np.int64)
        return np.sort(self._rng.choice(self.n_blocks, size=self.n_sampled, replace=False)
                       ).astype(np.int64)

    def draw(self, xp, device):
        """The next step's block indices on the device (one transfer; none when full)."""
        if self.is_full:
            if self._full is None or self._full[0] is not xp or self._full[1] != device:
                self._full = (xp, device, from_host(self.next_indices(), xp, device=device))
            return self._full[2]
        return from_host(self.next_indices(), xp, device=device)

    def get_state(self) -> dict:
        return {"n_blocks": self.n_blocks, "n_sampled": self.n_sampled,
                "rng": _jsonable(self._rng.bit_generator.state)}

    def set_state(self, state: dict) -> None:
        for key in ("n_blocks", "n_sampled"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler "
                                 f"has {key}={getattr(self, key)!r}")
        self._rng.bit_generator.state = state["rng"]
