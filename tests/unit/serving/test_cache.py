"""PredictionCache: LRU with TTL, counters, and a key that covers model, bars, position and budget."""

from __future__ import annotations

import numpy as np
import pytest

from hrm_platform.serving.cache import PredictionCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bars(seed: int = 0, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(size=n))
    return np.stack([close, close + 1, close - 1, close, np.full(n, 1e4)], axis=1)  # (N, 5)


def test_hit_returns_the_stored_value_and_counts():
    cache = PredictionCache(maxsize=4, ttl_s=10)
    key = cache.make_key("abc123", _bars(), None)
    assert cache.get(key) is None
    cache.put(key, {"action": "buy", "quantity": 0.4})
    assert cache.get(key) == {"action": "buy", "quantity": 0.4}
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["size"]) == (1, 1, 1)


def test_ttl_expiry_is_counted_and_misses():
    clock = FakeClock()
    cache = PredictionCache(maxsize=4, ttl_s=2.0, timer=clock)
    cache.put("a", 1)
    cache.put("b", 2)
    clock.now += 1.0
    assert cache.get("a") == 1
    clock.now += 1.5  # 2.5 s after insertion: both expired
    assert cache.get("a") is None
    stats = cache.stats()
    assert stats["expirations"] == 2
    assert stats["evictions"] == 0
    assert stats["size"] == 0


def test_lru_eviction_drops_least_recently_used_and_counts():
    cache = PredictionCache(maxsize=2, ttl_s=60)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)  # evicts "b"
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3
    stats = cache.stats()
    assert stats["evictions"] == 1
    assert stats["expirations"] == 0
    assert stats["size"] == 2


def test_key_changes_with_model_version_budget_and_bars():
    bars = _bars()
    base = PredictionCache.make_key("v1", bars, 3)
    assert PredictionCache.make_key("v1", bars.copy(), 3) == base
    others = {
        "model_version": PredictionCache.make_key("v2", bars, 3),
        "budget": PredictionCache.make_key("v1", bars, 2),
        "no budget": PredictionCache.make_key("v1", bars, None),
        "bars": PredictionCache.make_key("v1", _bars(seed=1), 3),
        "fewer bars": PredictionCache.make_key("v1", bars[1:], 3),
    }
    for name, key in others.items():
        assert key != base, name
    assert len(set(others.values())) == len(others)


def test_key_is_layout_independent():
    bars = _bars()
    fortran = np.asfortranarray(bars)
    as_list = bars.tolist()
    key = PredictionCache.make_key("v1", bars, None)
    assert PredictionCache.make_key("v1", fortran, None) == key
    assert PredictionCache.make_key("v1", np.asarray(as_list), None) == key


def test_clear_drops_entries_but_keeps_counters():
    cache = PredictionCache(maxsize=1, ttl_s=60)
    cache.put("a", 1)
    cache.put("b", 2)  # one eviction
    assert cache.get("b") == 2
    assert cache.clear() == 1
    assert cache.get("b") is None
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["size"]) == (1, 1, 1, 0)


def test_size_zero_disables_the_cache():
    cache = PredictionCache(maxsize=0, ttl_s=1)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert cache.stats()["misses"] == 1 and cache.stats()["size"] == 0


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="maxsize"):
        PredictionCache(maxsize=-1, ttl_s=1)
    with pytest.raises(ValueError, match="ttl_s"):
        PredictionCache(maxsize=1, ttl_s=0)
    with pytest.raises(ValueError, match="None"):
        PredictionCache(maxsize=1, ttl_s=1).put("a", None)
