"""The data order: a permutation per epoch, a pure function of (seed, position); grouped by
length, each batch holds rows of similar length and the epoch still holds every row once."""

from __future__ import annotations

import random

import pytest

from training.data.sampler import EpochSampler

SIZE, BATCH = 1000, 16
_RNG = random.Random(7)
LENGTHS = [_RNG.randint(20, 120) for _ in range(SIZE)]


@pytest.mark.parametrize("group", [0, 4, 1000])
def test_each_epoch_is_a_permutation_and_positions_are_pure(group):
    s = EpochSampler(SIZE, 3, lengths=LENGTHS, batch=BATCH, group=group)
    first, second = s.indices(0, SIZE), s.indices(SIZE, SIZE)
    assert sorted(first) == sorted(second) == list(range(SIZE))
    assert first != second  # a fresh order every epoch
    fresh = EpochSampler(SIZE, 3, lengths=LENGTHS, batch=BATCH, group=group)
    assert fresh.indices(1500, 40) == second[500:540]  # a resumed run reads what an uninterrupted one does


def _spread(s: EpochSampler) -> float:
    """Mean (longest - shortest) over the epoch's batches."""
    idx = s.indices(0, SIZE)
    spans = [idx[i : i + BATCH] for i in range(0, SIZE - BATCH + 1, BATCH)]
    return sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in spans) / len(spans)


def test_grouping_puts_similar_lengths_in_a_batch_and_keeps_batches_shuffled():
    plain = EpochSampler(SIZE, 3)
    grouped = EpochSampler(SIZE, 3, lengths=LENGTHS, batch=BATCH, group=8)
    assert _spread(plain) > 60 and _spread(grouped) < 0.2 * _spread(plain)
    idx = grouped.indices(0, SIZE)
    firsts = [LENGTHS[idx[i]] for i in range(0, 8 * BATCH, BATCH)]  # the first mega-batch's batches
    assert firsts != sorted(firsts, reverse=True)  # their order is shuffled, not longest first
    assert EpochSampler(SIZE, 4, lengths=LENGTHS, batch=BATCH, group=8).indices(0, SIZE) != idx


def test_grouping_needs_lengths_and_a_batch():
    with pytest.raises(ValueError, match="one length per example"):
        EpochSampler(SIZE, 0, group=4, batch=BATCH)
    with pytest.raises(ValueError, match="batch >= 1"):
        EpochSampler(SIZE, 0, lengths=LENGTHS, group=4)
