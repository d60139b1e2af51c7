"""What the memory guard limits on a GPU node: GPU memory only for a replica whose engine runs on CUDA.

No GPU here: the NVML side is faked as a node with one GPU on which this process holds the bytes given
(0 for a CPU replica: NVML lists no compute process for it), and torch's allocator holds none.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

import hrm_platform.serving.memory_guard as module
from hrm_platform.serving.memory_guard import MemoryGuard, MemoryReader, ReplicaMemoryMonitor

MIB = 2**20


@pytest.fixture
def gpu_node(monkeypatch):
    """A node with one GPU. Set `.gpu_bytes[0]` to what NVML reports for this process (0: not listed)."""
    import pynvml

    gpu_bytes = [0]

    def running_processes(handle):
        assert handle == "gpu0"
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=gpu_bytes[0])] if gpu_bytes[0] else []

    monkeypatch.setattr(module, "_nvml_device_handles", lambda: ("gpu0",))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", running_processes)
    monkeypatch.setattr(module, "_torch_cuda_reserved", lambda: 0)
    return SimpleNamespace(gpu_bytes=gpu_bytes)


class _LocalGuard:
    """The guard actor's `.report.remote(...)` answered in process (ray.get passes the value through)."""

    def __init__(self, guard: MemoryGuard) -> None:
        self.report = SimpleNamespace(remote=guard.report)


def _engine_on(device: str) -> SimpleNamespace:
    return SimpleNamespace(device=torch.device(device))


def test_reader_of_a_process_off_the_gpu_guards_rss_on_a_gpu_node(gpu_node):
    reading = MemoryReader().read()  # a process that never touched CUDA, as measured on an H200 node
    assert reading.gpu_bytes is None
    assert reading.guarded_bytes == reading.rss_bytes > 10 * MIB  # not 0: RSS is what the limit checks


def test_cpu_replica_on_a_gpu_node_sheds_when_its_rss_passes_the_limit(gpu_node, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda value: value)
    guard = MemoryGuard(limit_gb=1 / 1024, soft_fraction=0.5, stale_after_s=60.0)  # 1 MiB: any RSS is over
    monitor = ReplicaMemoryMonitor(_LocalGuard(guard), "cpu-replica", cleanup_cooldown_s=3600)
    assert monitor.check(engine=_engine_on("cpu")) == "shed" and monitor.shedding
    assert monitor.last_reading.gpu_bytes is None
    assert guard.snapshot()["replicas"]["cpu-replica"]["guarded_bytes"] == monitor.last_reading.rss_bytes


def test_gpu_replica_guards_its_gpu_memory(gpu_node, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda value: value)
    rss = MemoryReader().read().rss_bytes  # this pytest process's: grows with the tests run before
    limit_bytes = 2 * rss
    gpu_node.gpu_bytes[0] = 2 * limit_bytes
    guard = MemoryGuard(limit_gb=limit_bytes / 2**30, soft_fraction=0.9, stale_after_s=60.0)  # GPU bytes pass it
    monitor = ReplicaMemoryMonitor(_LocalGuard(guard), "gpu-replica", cleanup_cooldown_s=3600)
    assert monitor.check(engine=None) == "ok"  # no model yet: nothing on the GPU, RSS (half the limit) guarded
    assert monitor.last_reading.gpu_bytes is None
    assert monitor.check(engine=_engine_on("cuda:0")) == "shed"
    assert monitor.last_reading.gpu_bytes == 2 * limit_bytes == monitor.last_reading.guarded_bytes
