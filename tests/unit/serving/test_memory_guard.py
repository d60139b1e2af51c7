"""Memory guard policy (thresholds, hysteresis), the guard's per-replica state, readers and cleanup."""

from __future__ import annotations

import logging

import pytest

from hrm_platform.serving.cache import PredictionCache
from hrm_platform.serving.memory_guard import (
    GIB,
    MemoryGuard,
    MemoryPolicy,
    MemoryReader,
    MemoryReading,
    ReplicaMemoryMonitor,
    cleanup,
)

MIB = 2**20


def test_policy_thresholds():
    policy = MemoryPolicy(limit_bytes=1000, soft_fraction=0.8)
    assert policy.soft_bytes == 800
    assert policy.directive(0) == "ok"
    assert policy.directive(799) == "ok"
    assert policy.directive(800) == "cleanup"
    assert policy.directive(999) == "cleanup"
    assert policy.directive(1000) == "shed"
    assert policy.directive(5000) == "shed"


def test_policy_hysteresis_keeps_shedding_until_under_soft_threshold():
    policy = MemoryPolicy(limit_bytes=1000, soft_fraction=0.8)
    assert policy.directive(1200, previous="ok") == "shed"
    assert policy.directive(950, previous="shed") == "shed"  # under the limit, still over soft: keep shedding
    assert policy.directive(950, previous="cleanup") == "cleanup"  # the same bytes without a shed episode
    assert policy.directive(799, previous="shed") == "ok"


def test_policy_defaults_to_four_gib_from_gb_and_rejects_bad_values():
    assert MemoryPolicy.from_gb(4.0, 0.85).limit_bytes == 4 * GIB
    with pytest.raises(ValueError, match="limit"):
        MemoryPolicy(limit_bytes=0, soft_fraction=0.85)
    with pytest.raises(ValueError, match="soft_fraction"):
        MemoryPolicy(limit_bytes=10, soft_fraction=1.0)


def test_guard_tracks_replicas_and_set_limit_changes_directives():
    guard = MemoryGuard(limit_gb=1.0, soft_fraction=0.5, stale_after_s=60.0)
    assert guard.register("a") == "ok"
    assert guard.report("a", 100 * MIB) == "ok"
    assert guard.report("b", 700 * MIB) == "cleanup"
    assert guard.set_limit_gb(0.5) == {"a": "ok", "b": "shed"}
    assert guard.set_limit_gb(0.5, soft_fraction=0.9) == {"a": "ok", "b": "shed"}  # 700 MiB > 0.45 GiB
    assert guard.set_limit_gb(2.0) == {"a": "ok", "b": "ok"}
    snapshot = guard.snapshot()
    assert snapshot["limit_bytes"] == 2 * GIB
    assert snapshot["replicas"]["b"]["rss_bytes"] == 700 * MIB
    assert snapshot["replicas"]["b"]["sheds"] == 1
    assert snapshot["shedding"] == []
    guard.unregister("a")
    assert set(guard.snapshot()["replicas"]) == {"b"}


def test_guard_uses_gpu_bytes_when_reported():
    guard = MemoryGuard(limit_gb=1.0, soft_fraction=0.5, stale_after_s=60.0)
    assert guard.report("gpu", rss_bytes=5 * GIB, gpu_bytes=100 * MIB) == "ok"
    assert guard.report("gpu", rss_bytes=100 * MIB, gpu_bytes=2 * GIB) == "shed"


def test_guard_forgets_silent_replicas(monkeypatch):
    guard = MemoryGuard(limit_gb=1.0, soft_fraction=0.85, stale_after_s=5)
    guard.report("old", 1)
    import hrm_platform.serving.memory_guard as module

    real_time = module.time.time
    monkeypatch.setattr(module.time, "time", lambda: real_time() + 10)
    assert guard.snapshot()["replicas"] == {}


def test_reader_reads_real_rss_without_gpu():
    reading = MemoryReader(use_gpu=False).read()
    assert reading.gpu_bytes is None
    assert 10 * MIB < reading.rss_bytes < 64 * GIB
    assert reading.guarded_bytes == reading.rss_bytes


def test_gpu_reader_without_nvml_reads_torch_reserved_bytes_and_logs_once(monkeypatch, caplog):
    import hrm_platform.serving.memory_guard as module

    module._nvml_device_handles.cache_clear()

    import pynvml

    def broken_init():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", broken_init)
    with caplog.at_level(logging.INFO, logger=module.__name__):
        readers = [MemoryReader(use_gpu=True), MemoryReader(use_gpu=True)]
    module._nvml_device_handles.cache_clear()
    assert not any(reader.has_gpu for reader in readers)
    monkeypatch.setattr(module, "_torch_cuda_reserved", lambda: 123 * MIB)
    assert readers[0].read().gpu_bytes == 123 * MIB  # the process's CUDA allocator stands in for NVML
    assert sum("NVML unavailable" in record.message for record in caplog.records) == 1  # logged once


def test_cleanup_clears_the_cache():
    cache = PredictionCache(maxsize=8, ttl_s=60)
    for i in range(5):
        cache.put(f"k{i}", i)
    result = cleanup(engine=None, cache=cache)
    assert result["cache_entries_dropped"] == 5
    assert cache.stats()["size"] == 0


class _FixedReader:
    def __init__(self, rss_bytes: int) -> None:
        self.rss_bytes = rss_bytes

    def read(self) -> MemoryReading:
        return MemoryReading(self.rss_bytes)


class _LocalHandle:
    """Stands in for the actor handle: `.report.remote(...)` returns the value (ray.get passes it through)."""

    def __init__(self, guard: MemoryGuard) -> None:
        self.report = type("M", (), {"remote": staticmethod(guard.report)})()


def test_monitor_cleans_up_on_cleanup_and_shed_with_cooldown(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda value: value)
    guard = MemoryGuard(limit_gb=1.0, soft_fraction=0.5, stale_after_s=60.0)
    reader = _FixedReader(600 * MIB)
    cache = PredictionCache(maxsize=8, ttl_s=60)
    monitor = ReplicaMemoryMonitor(_LocalHandle(guard), "r1", cleanup_cooldown_s=3600, reader=reader)
    cache.put("a", 1)
    assert monitor.check(cache=cache) == "cleanup"
    assert (monitor.cleanups, cache.stats()["size"], monitor.shedding) == (1, 0, False)
    cache.put("b", 2)
    assert monitor.check(cache=cache) == "cleanup"
    assert (monitor.cleanups, cache.stats()["size"]) == (1, 1)  # cooldown: the cache is kept
    reader.rss_bytes = 2 * GIB
    assert monitor.check(cache=cache) == "shed" and monitor.shedding
    reader.rss_bytes = 100 * MIB
    assert monitor.check(cache=cache) == "ok" and not monitor.shedding
