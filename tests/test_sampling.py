"""Counter-based batch streams against an independent generator written from the definition.

The definition in the :mod:`refbilevel.sampling` docstring (and in an export's
description) must be enough to regenerate every index set. ``_philox4x64_10`` below is
written from the Random123 specification (Salmon et al. 2011: two 64x64->128 multiplies
per round with M0 = 0xD2E7470EE14C6C93, M1 = 0xCA5A826395121157, Weyl key increments
0x9E3779B97F4A7C15 and 0xBB67AE8584CAA73B, ten rounds) in plain Python integers, and the
index rules (mod n; stable argsort of the words; epoch = global batch // batches per epoch)
from the docstring, without calling NumPy's Philox.
"""

from __future__ import annotations

import numpy as np
import pytest

from refbilevel.sampling import (STREAM_IDS, batch_indices, block_indices, epoch_permutation,
                                 resolve_seed, stream_spec, words)

M64 = 2 ** 64 - 1


def _mulhilo(a, b):
    p = a * b
    return p >> 64, p & M64


def _philox4x64_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B97F4A7C15) & M64, (k1 + 0xBB67AE8584CAA73B) & M64
        hi0, lo0 = _mulhilo(0xD2E7470EE14C6C93, c0)
        hi1, lo1 = _mulhilo(0xCA5A826395121157, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def spec_words(seed, s, tag, index, m):
    out = []
    b = 0
    while len(out) < m:
        out += _philox4x64_10((b + 1, index, tag, 0), (seed, s))
        b += 1
    return out[:m]


def spec_argsort(w):
    return sorted(range(len(w)), key=lambda i: (w[i], i))


def spec_batch(seed, s, n, B, mode, k, count, j):
    q = k * count + j
    if mode == "iid":
        return [w % n for w in spec_words(seed, s, 0, q, B)]
    e, r = divmod(q, n // B)
    perm = spec_argsort(spec_words(seed, s, 1, e, n))
    return perm[r * B:(r + 1) * B]


def spec_blocks(seed, k, n, S):
    return sorted(spec_argsort(spec_words(seed, 2, 2, k, n))[:S])


@pytest.mark.parametrize("seed", [0, 1, 2 ** 64 - 1, 123456789])
def test_words_equal_the_spec(seed):
    for s, tag, index in [(0, 0, 0), (1, 1, 5), (2, 2, 2 ** 40)]:
        assert words(seed, s, tag, index, 11).tolist() == spec_words(seed, s, tag, index, 11)


@pytest.mark.parametrize("mode", ["epoch", "iid"])
@pytest.mark.parametrize("n,B,count", [(10, 3, 1), (12, 4, 3), (7, 7, 2), (50, 8, 5)])
def test_batches_equal_the_spec(mode, n, B, count):
    seed = 42
    for name in ("outer", "inner"):
        stream = stream_spec(name, n, B, count, mode)
        cache = {}
        for k in range(7):
            got = stream.draw(seed, k, cache)
            assert len(got) == count
            for j, idx in enumerate(got):
                if stream.full:
                    assert idx is None
                    continue
                assert idx.dtype == np.int64
                want = spec_batch(seed, STREAM_IDS[name], n, B, mode, k, count, j)
                assert idx.tolist() == want, (name, k, j)


def test_epoch_mode_is_a_permutation_per_epoch_and_changes_between_epochs():
    n, B = 12, 4
    got = [batch_indices(3, 0, n, B, "epoch", q) for q in range(6)]
    first, second = np.concatenate(got[:3]), np.concatenate(got[3:])
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, epoch_permutation(3, 0, 0, n))
    # the remainder of n // B is never used: every batch has B rows
    assert all(b.shape == (3,) for b in (batch_indices(3, 1, 10, 3, "epoch", q)
                                         for q in range(9)))


def test_blocks_equal_the_spec_and_are_distinct_sorted():
    for k in range(6):
        b = block_indices(9, k, 8, 3)
        assert b.tolist() == spec_blocks(9, k, 8, 3)
        assert len(set(b.tolist())) == 3 and b.tolist() == sorted(b.tolist())
    assert stream_spec("blocks", 5, None).draw(9, 0) == [None]
    assert stream_spec("blocks", 5, 5).draw(9, 0) == [None]


def test_a_batch_depends_on_its_counters_only():
    a = batch_indices(1, 0, 40, 5, "epoch", 17)
    b = batch_indices(1, 0, 40, 5, "epoch", 17, cache={})
    c = batch_indices(1, 1, 40, 5, "epoch", 17)        # another stream
    d = batch_indices(2, 0, 40, 5, "epoch", 17)        # another seed
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_seed_resolution():
    assert resolve_seed(5) == 5 and resolve_seed(np.int64(7)) == 7
    g1, g2 = np.random.default_rng(0), np.random.default_rng(0)
    assert resolve_seed(g1) == resolve_seed(g2)
    assert 0 <= resolve_seed(None) < 2 ** 64


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (2 ** 64, ValueError), (1.5, TypeError),
                                     (True, TypeError), ("1", TypeError)])
def test_bad_seed(bad, exc):
    with pytest.raises(exc, match="seed"):
        resolve_seed(bad)


@pytest.mark.parametrize("args,exc", [
    (("outer", 0, 1), ValueError), (("outer", 5, 0), ValueError),
    (("outer", 5, 2.0), TypeError), (("sideways", 5, 2), ValueError),
    (("outer", 5, 2, 1, "cyclic"), ValueError), (("outer", 5, 2, 0), ValueError),
])
def test_bad_stream(args, exc):
    with pytest.raises(exc):
        stream_spec(*args)


@pytest.mark.parametrize("solver,sampling", [("f2sa", "epoch"), ("f2sa", "iid"),
                                              ("stocbio", "epoch")])
def test_export_indices_regenerate_from_the_description(tmp_path, solver, sampling):
    """A foreign implementation reading only instance.json regenerates every index set."""
    import json

    from refbilevel.verify import export

    path = export("logreg", solver=solver, steps=4, batch_size=16, seed=77,
                  path=str(tmp_path / "inst.npz"), problem_params={"n": 120, "p": 5},
                  hyperparameters={"sampling": sampling} if solver == "f2sa" else None)
    desc = json.loads((tmp_path / "inst.json").read_text())
    arrays = np.load(path)
    streams = desc["streams"]
    assert streams["format"] == "counter-philox/1" and "Philox4x64-10" in streams["definition"]
    for st in streams["per_step"]:
        got = arrays[f"batch_{st['stream']}"]          # (steps, count, B)
        assert got.shape == (4, st["count_per_step"], st["size"])
        for k in range(4):
            for j in range(st["count_per_step"]):
                want = spec_batch(streams["seed"], st["s"], st["n"], st["size"], st["mode"],
                                  k, st["count_per_step"], j)
                assert got[k, j].tolist() == want, (st["stream"], k, j)


def test_export_blocks_regenerate_from_the_description(tmp_path):
    import json

    from refbilevel.verify import export

    path = export("minimax_quadratic", solver="fosl", steps=3, seed=5,
                  path=str(tmp_path / "inst.npz"), hyperparameters={"n_sampled": 2})
    desc = json.loads((tmp_path / "inst.json").read_text())
    (st,) = desc["streams"]["per_step"]
    blocks = np.load(path)["blocks"]
    assert blocks.shape == (3, 1, 2)
    for k in range(3):
        assert blocks[k, 0].tolist() == spec_blocks(desc["streams"]["seed"], k, st["n"], 2)
