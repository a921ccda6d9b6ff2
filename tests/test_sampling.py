"""Host-side minibatch and block schedules (refbilevel.sampling)."""

import json

import numpy as np
import pytest

from refbilevel import sampling
from refbilevel._backend import backend_namespace, to_host
from refbilevel.sampling import BatchSchedule, BlockSampler, MinibatchSampler


def test_epoch_mode_covers_each_index_once_per_epoch():
    s = MinibatchSampler(12, 4, rng=np.random.default_rng(0))
    for _ in range(3):
        epoch = np.concatenate([s.next_indices() for _ in range(3)])
        np.testing.assert_array_equal(np.sort(epoch), np.arange(12))
    assert s.next_indices().dtype == np.int64


def test_epoch_mode_drops_the_remainder():
    s = MinibatchSampler(10, 4, rng=np.random.default_rng(1))
    first = [s.next_indices() for _ in range(2)]
    perm = np.random.default_rng(1).permutation(10)          # independent replica
    np.testing.assert_array_equal(np.concatenate(first), perm[:8])
    nxt = s.next_indices()                                    # new epoch, not perm[8:]
    assert nxt.shape == (4,) and s.epoch == 1
    replica = np.random.default_rng(1)
    replica.permutation(10)
    np.testing.assert_array_equal(nxt, replica.permutation(10)[:4])


def test_iid_mode_matches_generator():
    s = MinibatchSampler(7, 5, rng=np.random.default_rng(3), mode="iid")
    ref = np.random.default_rng(3)
    for _ in range(4):
        np.testing.assert_array_equal(s.next_indices(), ref.integers(0, 7, size=5))


@pytest.mark.parametrize("bs", [None, 10, 50])
def test_full_batch_returns_none(bs):
    s = MinibatchSampler(10, bs, rng=np.random.default_rng(0))
    assert s.is_full and s.next_indices() is None


@pytest.mark.parametrize("mode", ["epoch", "iid"])
def test_state_roundtrip_reproduces_following_draws(mode):
    s = MinibatchSampler(9, 4, rng=np.random.default_rng(5), mode=mode)
    for _ in range(3):
        s.next_indices()
    state = json.loads(json.dumps(s.get_state()))           # JSON-able
    expected = [s.next_indices() for _ in range(6)]
    t = MinibatchSampler(9, 4, rng=np.random.default_rng(99), mode=mode)
    t.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(t.next_indices(), e)
    with pytest.raises(ValueError, match="batch_size"):
        MinibatchSampler(9, 3, rng=np.random.default_rng(0), mode=mode).set_state(state)


def test_batch_schedule_same_indices_on_every_backend(xp, device):
    sched = BatchSchedule(20, 30, batch_size_outer=4, batch_size_inner=6,
                          rng=np.random.default_rng(7))
    # independent replica of the streams: spawn(2) -> outer, inner
    r_out, r_in = np.random.default_rng(7).spawn(2)
    ref_out = MinibatchSampler(20, 4, rng=r_out)
    ref_in = MinibatchSampler(30, 6, rng=r_in)
    batches = sched.draw(xp, device, 3)
    assert len(batches) == 3
    for b in batches:
        np.testing.assert_array_equal(to_host(b.outer), ref_out.next_indices())
        np.testing.assert_array_equal(to_host(b.inner), ref_in.next_indices())
    # outer and inner streams are independent (different sequences)
    assert not np.array_equal(to_host(batches[0].outer)[:4], to_host(batches[0].inner)[:4])


def test_batch_schedule_one_transfer_per_draw(monkeypatch, xp, device):
    calls = []
    real = sampling.from_host

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "from_host", counting)
    sched = BatchSchedule(20, 30, batch_size_outer=4, batch_size_inner=6,
                          rng=np.random.default_rng(0))
    sched.draw(xp, device, 5)
    assert len(calls) == 1
    outs, ins = sched.draw_streams(xp, device, 2, 7)
    assert len(calls) == 2 and len(outs) == 2 and len(ins) == 7


def test_batch_schedule_full_and_mixed(xp, device):
    full = BatchSchedule(5, 5, rng=np.random.default_rng(0))
    assert full.is_full
    (b,) = full.draw(xp, device)
    assert b.outer is None and b.inner is None
    mixed = BatchSchedule(5, 8, batch_size_inner=3, rng=np.random.default_rng(0))
    assert not mixed.is_full
    (b,) = mixed.draw(xp, device)
    assert b.outer is None and tuple(b.inner.shape) == (3,)


def test_batch_schedule_state_roundtrip():
    a = BatchSchedule(11, 13, batch_size_outer=3, batch_size_inner=5,
                      rng=np.random.default_rng(2))
    xp = backend_namespace("numpy")
    a.draw_streams(xp, None, 2, 3)
    state = json.loads(json.dumps(a.get_state()))
    expected = a.draw(xp, None, 4)
    b = BatchSchedule(11, 13, batch_size_outer=3, batch_size_inner=5,
                      rng=np.random.default_rng(123))
    b.set_state(state)
    for e, got in zip(expected, b.draw(xp, None, 4)):
        np.testing.assert_array_equal(got.outer, e.outer)
        np.testing.assert_array_equal(got.inner, e.inner)


def test_block_sampler(xp, device):
    s = BlockSampler(6, 3, rng=np.random.default_rng(4))
    ref = np.random.default_rng(4)
    for _ in range(5):
        idx = to_host(s.draw(xp, device))
        np.testing.assert_array_equal(idx, np.sort(ref.choice(6, size=3, replace=False)))
        assert len(set(idx.tolist())) == 3
    full = BlockSampler(4, None, rng=np.random.default_rng(0))
    assert full.is_full
    np.testing.assert_array_equal(to_host(full.draw(xp, device)), np.arange(4))
    state = json.loads(json.dumps(s.get_state()))
    nxt = s.next_indices()
    t = BlockSampler(6, 3, rng=np.random.default_rng(0))
    t.set_state(state)
    np.testing.assert_array_equal(t.next_indices(), nxt)


@pytest.mark.parametrize("call, exc", [
    (lambda: MinibatchSampler(0, 1, rng=np.random.default_rng(0)), ValueError),
    (lambda: MinibatchSampler(5, 0, rng=np.random.default_rng(0)), ValueError),
    (lambda: MinibatchSampler(5, 2.0, rng=np.random.default_rng(0)), TypeError),
    (lambda: MinibatchSampler(5, 2, rng=0), TypeError),
    (lambda: MinibatchSampler(5, 2, rng=np.random.default_rng(0), mode="cyclic"), ValueError),
    (lambda: BlockSampler(3, 4, rng=np.random.default_rng(0)), ValueError),
    (lambda: BlockSampler(3, 0, rng=np.random.default_rng(0)), ValueError),
])
def test_validation(call, exc):
    with pytest.raises(exc):
        call()
