"""The memory-guard actor on a local Ray cluster: named, shared by replicas, limit changes apply to all."""

from __future__ import annotations

import uuid

import pytest

from hrm_platform.serving.cache import PredictionCache
from hrm_platform.serving.memory_guard import (
    GIB,
    MemoryReader,
    ReplicaMemoryMonitor,
    connect_memory_guard,
    stop_memory_guard,
)

pytestmark = pytest.mark.ray
MIB = 2**20


@pytest.fixture
def guard_name(ray_cluster):
    name = f"hrm-memory-guard-test-{uuid.uuid4().hex[:8]}"
    yield name
    stop_memory_guard(name, namespace="hrm-test")


def test_actor_reports_directives_and_set_limit_changes_them(guard_name):
    import ray

    guard = connect_memory_guard(1.0, 0.5, 60.0, name=guard_name, namespace="hrm-test")
    assert ray.get(guard.register.remote("replica-a")) == "ok"
    assert ray.get(guard.report.remote("replica-a", 100 * MIB)) == "ok"
    assert ray.get(guard.report.remote("replica-b", 600 * MIB)) == "cleanup"

    same_guard = connect_memory_guard(8.0, 0.85, 60.0, name=guard_name, namespace="hrm-test")  # gets the existing one
    assert ray.get(same_guard.directive.remote("replica-b")) == "cleanup"
    assert ray.get(same_guard.snapshot.remote())["limit_bytes"] == 1 * GIB  # creation args ignored

    assert ray.get(guard.set_limit_gb.remote(0.15)) == {"replica-a": "cleanup", "replica-b": "shed"}
    snapshot = ray.get(guard.snapshot.remote())
    assert snapshot["shedding"] == ["replica-b"]
    assert snapshot["replicas"]["replica-b"]["rss_bytes"] == 600 * MIB
    assert ray.get(guard.set_limit_gb.remote(4.0)) == {"replica-a": "ok", "replica-b": "ok"}


def test_monitor_with_real_readings_cleans_up_sheds_and_recovers(guard_name):
    import ray

    guard = connect_memory_guard(4.0, 0.85, 60.0, name=guard_name, namespace="hrm-test")
    monitor = ReplicaMemoryMonitor(guard, "driver", cleanup_cooldown_s=10.0, reader=MemoryReader(use_gpu=False))
    cache = PredictionCache(maxsize=16, ttl_s=60)
    cache.put("k", 1)
    assert monitor.check(cache=cache) == "ok" and cache.stats()["size"] == 1

    rss = monitor.last_reading.rss_bytes
    ray.get(guard.set_limit_gb.remote(rss / 2 / GIB))  # limit below current use
    assert monitor.check(cache=cache) == "shed"
    assert monitor.shedding and monitor.cleanups == 1 and cache.stats()["size"] == 0

    ray.get(guard.set_limit_gb.remote(rss * 4 / GIB))
    assert monitor.check(cache=cache) == "ok" and not monitor.shedding
