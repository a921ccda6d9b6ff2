r"""Counter-based minibatch and block streams: every index set is a pure function of counters.

A solver step never owns a random generator. The indices of batch ``j`` of stream ``s`` at
step ``k`` are a function of ``(seed, s, k, j)`` alone, so any step can be replayed on its
own, a checkpoint is arrays and integers, and an exported schedule can be regenerated
by a foreign implementation from the definition below. Indices are computed on the host
(NumPy) and moved to the device once per step (:meth:`refbilevel.oracle.Oracle.draw`).

Stream definition (format ``"counter-philox/1"``)
-------------------------------------------------
Raw words.
    ``words(seed, s, tag, index, m)`` are the first ``m`` 64-bit outputs of the
    Philox4x64-10 block cipher (Salmon et al. 2011) with the 128-bit key
    ``(k0, k1) = (seed, s)`` and the 256-bit counter ``(c0, c1, c2, c3)``: block
    ``b = 0, 1, ...`` encrypts the counter ``(b + 1, index, tag, 0)`` and contributes its
    four output words in order (word ``4b + i`` is output word ``i`` of block ``b``).
    This is what ``numpy.random.Philox(key=[seed, s], counter=[0, index, tag, 0])``
    returns from ``random_raw(m)`` (NumPy increments the counter before each block).
Streams.
    ``s = 0``: the outer data (rows of the data of ``f``); ``s = 1``: the inner data
    (rows of the data of ``g``); ``s = 2``: the blocks of a minimax-bilevel problem.
    ``seed`` is an integer in ``[0, 2**64)``.
Batch counter.
    A solver declares how many batches ``c_s`` of stream ``s`` one step consumes (a
    constant of its hyperparameters). Batch ``j`` (``0 <= j < c_s``) of step ``k`` (the
    state's ``iteration``, starting at 0) is global batch ``q = k * c_s + j`` of the stream.
``"iid"`` mode (``B`` indices out of ``n``, with replacement).
    ``idx[i] = words(seed, s, 0, q, B)[i] mod n``.
``"epoch"`` mode (``B`` indices out of ``n``, without replacement within an epoch).
    An epoch holds ``m = n // B`` batches (a remainder shorter than a batch is never
    used, so every batch has ``B`` rows). Global batch ``q`` belongs to epoch
    ``e = q // m`` at slot ``r = q mod m``. The permutation of epoch ``e`` is the stable
    ascending argsort of ``words(seed, s, 1, e, n)`` (ties, of probability about
    ``n**2 / 2**65``, keep the smaller index first); the batch is its entries
    ``r*B .. r*B + B - 1``.
Blocks (``S`` distinct blocks out of ``n``, one draw per step).
    At step ``k`` the blocks are the first ``S`` entries of the stable ascending argsort of
    ``words(seed, 2, 2, k, n)``, sorted ascending.
Full data.
    A batch size ``None`` or ``>= n`` means full data (no indices; the oracle reads every
    row) and ``S`` = ``None`` or ``n`` means every block in order; neither reads words.

References
----------
.. [1] J. K. Salmon, M. A. Moraes, R. O. Dror and D. E. Shaw (2011). Parallel random
       numbers: as easy as 1, 2, 3. SC '11. (Philox4x64-10)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ._validation import check_choice, check_int

__all__ = ["STREAM_FORMAT", "STREAM_IDS", "Stream", "batch_indices", "block_indices",
           "check_seed", "definition", "epoch_permutation", "resolve_seed", "stream_spec",
           "words"]

#: Version tag of the stream definition above (written into exports and checkpoints).
STREAM_FORMAT = "counter-philox/1"
#: Stream name -> the integer ``s`` of the definition.
STREAM_IDS = {"outer": 0, "inner": 1, "blocks": 2}
_TAG_IID, _TAG_EPOCH, _TAG_BLOCKS = 0, 1, 2
_U64 = 2 ** 64
# the per-thread generator of words() and the empty output buffer it is reset with
_PHILOX = threading.local()
_EMPTY_BUFFER = np.zeros(4, dtype=np.uint64)


def check_seed(seed, name: str = "seed") -> int:
    """A seed as a Python int in ``[0, 2**64)`` (``TypeError``/``ValueError`` naming it)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [0, 2**64); got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < _U64:
        raise ValueError(f"{name} must be in [0, 2**64); got {seed}")
    return seed


def definition() -> str:
    """The stream definition above as plain text (written into exports)."""
    import inspect
    import sys

    doc = inspect.cleandoc(sys.modules[__name__].__doc__)
    start = doc.index("Stream definition")
    return doc[start:doc.index("References\n")].strip()


def resolve_seed(seed) -> int:
    """The stream key of ``seed``: an int in ``[0, 2**64)`` as is; ``None`` draws one from
    fresh OS entropy; a :class:`numpy.random.Generator` gives one draw of it."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0])
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, _U64, dtype=np.uint64))
    return check_seed(seed)


def words(seed: int, stream: int, tag: int, index: int, m: int) -> np.ndarray:
    """The first ``m`` raw 64-bit words of ``(seed, stream, tag, index)`` (uint64 array).

    One ``numpy.random.Philox`` per thread is re-keyed for each call: setting its state
    (key, counter, empty output buffer) gives the words a new
    ``Philox(key=..., counter=...)`` would, at a third of the cost of constructing one
    (every minibatch of a step reads words).
    """
    bg = getattr(_PHILOX, "generator", None)
    if bg is None:
        bg = _PHILOX.generator = np.random.Philox(0)
    bg.state = {"bit_generator": "Philox",
                "state": {"counter": np.array([0, index, tag, 0], dtype=np.uint64),
                          "key": np.array([seed, stream], dtype=np.uint64)},
                "buffer": _EMPTY_BUFFER, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return bg.random_raw(m)


def epoch_permutation(seed: int, stream: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of ``0..n-1`` of epoch ``epoch`` (int64)."""
    return np.argsort(words(seed, stream, _TAG_EPOCH, epoch, n), kind="stable").astype(np.int64)


@dataclass(frozen=True)
class Stream:
    """What one step draws from one stream.

    Attributes
    ----------
    name : {"outer", "inner", "blocks"}
        The stream (its id in :data:`STREAM_IDS`).
    n : int
        Rows (or blocks) to draw from.
    size : int or None
        Batch size ``B`` (blocks: ``S``); ``None`` or ``>= n`` is full data.
    count : int
        Draws per step ``c_s`` (blocks: 1).
    mode : {"epoch", "iid"}
        Sampling mode of a data stream (ignored for blocks).
    """

    name: str
    n: int
    size: int | None
    count: int = 1
    mode: str = "epoch"

    @property
    def full(self) -> bool:
        """Whether every draw is the full data (no indices)."""
        return self.size is None or self.size >= self.n

    def describe(self) -> dict:
        """JSON-able description (for exports): name, id ``s``, ``n``, size, count, mode."""
        return {"stream": self.name, "s": STREAM_IDS[self.name], "n": self.n,
                "size": self.size, "count_per_step": self.count,
                "mode": "blocks" if self.name == "blocks" else self.mode, "full": self.full}

    def draw(self, seed: int, step: int, cache: dict | None = None) -> list:
        """The ``count`` host index arrays of ``step`` (``[None] * count`` when full)."""
        if self.full:
            return [None] * self.count
        if self.name == "blocks":
            return [block_indices(seed, step, self.n, self.size)]
        s = STREAM_IDS[self.name]
        return [batch_indices(seed, s, self.n, self.size, self.mode, step * self.count + j,
                              cache=cache) for j in range(self.count)]


def stream_spec(name: str, n: int, size, count: int = 1, mode: str = "epoch") -> Stream:
    """A validated :class:`Stream` (``ValueError`` naming the bad field)."""
    check_choice(name, "stream", tuple(STREAM_IDS))
    check_int(n, "n", minimum=1)
    check_int(size, "batch size", minimum=1, allow_none=True)
    check_int(count, "count", minimum=1)
    check_choice(mode, "sampling", ("epoch", "iid"))
    return Stream(name, n, size, count, mode)


def batch_indices(seed: int, stream: int, n: int, batch_size: int, mode: str, q: int,
                  cache: dict | None = None) -> np.ndarray:
    """Global batch ``q`` of data stream ``stream`` (host int64 array of ``batch_size``).

    ``cache`` (a dict, optional) keeps the last epoch permutation per stream; it changes
    nothing but the time (a pure function of its key).
    """
    if mode == "iid":
        return (words(seed, stream, _TAG_IID, q, batch_size) % np.uint64(n)).astype(np.int64)
    per_epoch = n // batch_size
    epoch, slot = divmod(q, per_epoch)
    key = (seed, stream, epoch, n)
    perm = None if cache is None else cache.get(("perm", stream))
    if perm is None or perm[0] != key:
        perm = (key, epoch_permutation(seed, stream, epoch, n))
        if cache is not None:
            cache[("perm", stream)] = perm
    return perm[1][slot * batch_size:(slot + 1) * batch_size]


def block_indices(seed: int, step: int, n_blocks: int, n_sampled: int) -> np.ndarray:
    """The ``n_sampled`` blocks of ``step`` (sorted host int64 array)."""
    order = np.argsort(words(seed, STREAM_IDS["blocks"], _TAG_BLOCKS, step, n_blocks),
                       kind="stable")
    return np.sort(order[:n_sampled]).astype(np.int64)
