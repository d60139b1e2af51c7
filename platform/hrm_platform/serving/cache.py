"""Per-replica prediction cache: least-recently-used with a time-to-live.

    cache = PredictionCache(maxsize=serve.cache_size, ttl_s=serve.cache_ttl_s)
    key = cache.make_key(engine.model_version, bars, budget)
    prediction = cache.get(key)
    if prediction is None:
        prediction = engine.predict_bars([bars], [budget])[0]
        cache.put(key, prediction)
    cache.stats()  # {"hits", "misses", "evictions", "expirations", "size", "maxsize", "ttl_s"}

The key covers the model version, the raw bars (bytes and shape) and the segment budget, so an answer is
never served for another model after a reload or a tighter budget. The caller's position is not in it: a
decision does not depend on it (the trade from it is computed per response), so every position shares it. Entries
live at most `ttl_s` seconds (market data goes stale); when the cache is full the least recently used entry
is evicted. `maxsize=0` disables the cache: `get` always misses and `put` stores nothing.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import cachetools
import numpy as np


class _CountingTTLCache(cachetools.TTLCache):
    """TTLCache that counts what leaves it: `evictions` (LRU, cache full) and `expirations` (TTL)."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self.evictions = 0
        self.expirations = 0

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        expired = super().expire(time)
        self.expirations += len(expired or ())
        return expired

    def popitem(self) -> tuple[Any, Any]:
        # Cache.__setitem__ calls popitem() only to make room: each call is one LRU eviction.
        item = super().popitem()
        self.evictions += 1
        return item


class PredictionCache:
    """Thread-safe TTL-LRU cache of predictions for one replica, with hit/miss/eviction counters."""

    def __init__(self, maxsize: int, ttl_s: float, timer: Callable[[], float] = time.monotonic) -> None:
        if maxsize < 0:
            raise ValueError(f"cache maxsize must be >= 0, got {maxsize}")
        if ttl_s <= 0:
            raise ValueError(f"cache ttl_s must be > 0, got {ttl_s}")
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self._timer = timer
        self._lock = threading.Lock()
        self._entries = self._new_entries()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.maxsize > 0

    @staticmethod
    def make_key(model_version: str, bars: np.ndarray, budget: int | None) -> str:
        """Digest of everything the decision depends on: model, bars (values and shape), segment budget."""
        values = np.ascontiguousarray(bars, dtype=np.float64)  # (N, 5): one canonical byte layout
        digest = hashlib.blake2b(digest_size=16)
        digest.update(model_version.encode())
        digest.update(struct.pack("<q", -1 if budget is None else int(budget)))
        digest.update(struct.pack(f"<{values.ndim}q", *values.shape))
        digest.update(values.tobytes())
        return digest.hexdigest()

    def get(self, key: Hashable) -> Any | None:
        """The cached value, or None on a miss (absent or expired)."""
        if not self.enabled:
            self.misses += 1
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if value is None:
            raise ValueError("None cannot be cached: get() uses it to signal a miss")
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = value

    def clear(self) -> int:
        """Drop every entry (memory cleanup, model reload); returns how many were dropped. Counters stay.

        A fresh TTLCache rather than `.clear()`: cachetools releases before tkem/cachetools#386 clear through
        popitem(), which would count every entry as an eviction."""
        with self._lock:
            dropped = len(self._entries)
            evictions, expirations = self._entries.evictions, self._entries.expirations
            self._entries = self._new_entries()
            self._entries.evictions, self._entries.expirations = evictions, expirations
            return dropped

    def stats(self) -> dict[str, float]:
        with self._lock:
            size = len(self._entries)  # len() first: it expires stale entries, so they are counted below
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self._entries.evictions,
                "expirations": self._entries.expirations,
                "size": size,
                "maxsize": self.maxsize,
                "ttl_s": self.ttl_s,
            }

    def _new_entries(self) -> _CountingTTLCache:
        return _CountingTTLCache(maxsize=max(self.maxsize, 1), ttl=self.ttl_s, timer=self._timer)
