"""The stream store without Ray or HTTP: expiry, the LRU bound, memory accounting, ordering and idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from hrm_platform.serving.streams import Stream, StreamConflict, StreamSettings, StreamStore, plan_append

CAPACITY = 8  # bars_needed of a pretend model


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def market(count: int = 40) -> np.ndarray:
    """(count, 5) real synthetic bars."""
    return generate_market(1, 200, seed=2, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()[:count]


def seeded(bars: np.ndarray, times: np.ndarray | None = None) -> Stream:
    return Stream.seed(bars, times, capacity=CAPACITY, settings=StreamSettings())


def test_a_stream_keeps_the_last_capacity_bars_of_everything_it_took_in():
    bars = market(30)
    stream = seeded(bars[:10])
    assert np.array_equal(stream.bars, bars[2:10]) and stream.bars_seen == 10
    for row in range(10, 30):
        stream.append(bars[row : row + 1], None)
        assert np.array_equal(stream.bars, bars[row + 1 - CAPACITY : row + 1])  # what /v1/predict would get
    assert stream.bars_seen == 30 and stream.bars.flags.c_contiguous and stream.bars.dtype == np.float64


def test_idle_streams_expire_on_access_and_in_a_sweep():
    clock = Clock()
    store = StreamStore(max_streams=10, idle_s=5.0, timer=clock)
    for name in "abc":
        store.put(name, seeded(market(10)))
        clock.now += 2.0
    assert store.get("c") is not None  # used at t=1004, ages 2.0
    clock.now += 3.5  # t=1009.5: a (t=1000) and b (t=1002) idle past 5 s; c (t=1006) is not
    assert store.peek("a") is None and store.get("a") is None  # dropped on access
    assert store.expire() == 1  # b in the sweep
    assert len(store) == 1 and store.get("c") is not None
    assert store.stats()["expired"] == 2


def test_the_store_is_bounded_least_recently_used_out():
    store = StreamStore(max_streams=3, idle_s=60.0, timer=Clock())
    for name in "abc":
        store.put(name, seeded(market(10)))
    store.get("a")  # a is now the most recently used: b goes first
    store.put("d", seeded(market(10)))
    assert store.get("b") is None and all(store.get(name) is not None for name in "acd")
    store.put("a", seeded(market(12)))  # resetting an existing stream evicts nothing
    assert len(store) == 3 and store.get("a").bars_seen == 12
    assert store.evict_oldest(2) == 2 and len(store) == 1 and store.stats()["evicted"] == 3


def test_stream_memory_is_counted_and_freed():
    store = StreamStore(max_streams=100, idle_s=60.0, timer=Clock())
    for index in range(50):
        store.put(f"s{index}", seeded(market(10)))
    per_stream = CAPACITY * 5 * 8 + CAPACITY * 8  # (8, 5) bars and (8,) timestamps, float64
    assert store.nbytes() == 50 * (per_stream + 600) and store.stats()["bytes"] == store.nbytes()
    assert store.delete("s0") and not store.delete("s0")
    store.evict_oldest(49)
    assert store.nbytes() == 0


def test_repeated_bars_are_skipped_and_older_ones_refused():
    bars, times = market(20), np.arange(20, dtype=np.float64) * 60.0
    stream = seeded(bars[:10], times[:10])
    new, new_times = plan_append(stream, bars[10:12], times[10:12])
    stream.append(new, new_times)
    # A retry of the same two bars, and a retry that carries one more: only the new bar goes in.
    assert len(plan_append(stream, bars[10:12], times[10:12])[0]) == 0
    new, new_times = plan_append(stream, bars[10:13], times[10:13])
    assert np.array_equal(new, bars[12:13]) and np.array_equal(new_times, times[12:13])
    with pytest.raises(StreamConflict) as older:  # before the stream's window: not a repeat it can check
        plan_append(stream, bars[0:1], times[0:1])
    assert older.value.error == "bar_out_of_order"
    changed = bars[11:12].copy()
    changed[0, 3] += 0.01
    with pytest.raises(StreamConflict) as conflict:
        plan_append(stream, changed, times[11:12])
    assert conflict.value.error == "bar_conflict"
    assert np.array_equal(plan_append(stream, bars[12:13], None)[0], bars[12:13])  # no timestamps: always new


def test_bars_without_timestamps_never_block_later_timestamped_ones():
    bars = market(12)
    stream = seeded(bars[:10])
    assert np.isnan(stream.last_time)
    new, new_times = plan_append(stream, bars[10:11], np.array([5.0]))
    stream.append(new, new_times)
    assert stream.last_time == 5.0 and np.isnan(stream.times[0])


def test_store_limits_are_checked():
    with pytest.raises(ValueError, match="max_streams"):
        StreamStore(max_streams=0, idle_s=1.0)
    with pytest.raises(ValueError, match="idle_s"):
        StreamStore(max_streams=1, idle_s=0.0)


def test_ten_thousand_updates_hold_no_more_memory_than_one():
    bars = market(40)
    store = StreamStore(max_streams=10, idle_s=60.0, timer=Clock())
    store.put("s", seeded(bars[:10], np.arange(10.0)))
    before = store.nbytes()
    stream = store.get("s")
    for step in range(10_000):
        new, new_times = plan_append(stream, bars[step % 40 : step % 40 + 1], np.array([10.0 + step]))
        stream.append(new, new_times)
    assert store.nbytes() == before and stream.bars.shape == (CAPACITY, 5) and stream.bars_seen == 10_010
