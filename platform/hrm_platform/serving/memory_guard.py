"""Memory guard: keeps every serving replica under its memory limit (serve.memory_limit_gb).

Three parts:
- `MemoryPolicy` (pure): bytes in use -> "ok" | "cleanup" | "shed". At or above `soft_fraction * limit`
  the replica cleans up; at or above the limit it sheds load (503 + Retry-After). Hysteresis: once shedding,
  a replica keeps shedding until it is back under the soft threshold, so it does not flap at the limit.
- `MemoryGuard`: the state behind a named Ray actor ("hrm-memory-guard" in namespace "serve", detached so
  that it outlives the replica or driver that created it). Replicas register and report their reading; the
  guard answers with the directive. `set_limit_gb()` changes the limit for everyone at once; `snapshot()`
  is what `/v1/health` and metrics show.
- Replica side: `MemoryReader` (process RSS via psutil; GPU memory via NVML only when the caller says the
  process computes on a GPU: a CPU replica on a GPU node holds no GPU memory, and guarding its 0 GPU bytes
  would guard nothing), `ReplicaMemoryMonitor` (read -> report -> apply; it picks the reading from the
  engine's device) and `cleanup()`.

Call pattern in a Serve replica (the app owns the loop and the 503):

    guard = connect_memory_guard(serve.memory_limit_gb, serve.memory_soft_fraction, serve.memory_stale_after_s)
    monitor = ReplicaMemoryMonitor(guard, replica_tag, serve.memory_cleanup_cooldown_s)
    ...
    # every serve.memory_check_interval_s, in a background asyncio task:
    directive = await monitor.check_async(engine, cache)  # runs cleanup(engine, cache) when told to
    # per request:
    if monitor.shedding:
        raise HTTPException(503, headers={"Retry-After": "1"})
    # /v1/health:
    await guard.snapshot.remote()

Outside Ray (bare engine, tests) use `MemoryPolicy` directly; `MemoryGuard` is a plain class as well.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import psutil

logger = logging.getLogger(__name__)

Directive = Literal["ok", "cleanup", "shed"]
GUARD_NAME = "hrm-memory-guard"
GUARD_NAMESPACE = "serve"
GIB = 1024**3


@dataclass(frozen=True)
class MemoryPolicy:
    """Thresholds on one replica's memory. Pure: the answer depends only on the arguments."""

    limit_bytes: int
    soft_fraction: float

    def __post_init__(self) -> None:
        if self.limit_bytes <= 0:
            raise ValueError(f"memory limit must be > 0 bytes, got {self.limit_bytes}")
        if not 0 < self.soft_fraction < 1:
            raise ValueError(f"memory soft_fraction must be in (0, 1), got {self.soft_fraction}")

    @classmethod
    def from_gb(cls, limit_gb: float, soft_fraction: float) -> MemoryPolicy:
        return cls(limit_bytes=int(limit_gb * GIB), soft_fraction=soft_fraction)

    @property
    def soft_bytes(self) -> int:
        return int(self.limit_bytes * self.soft_fraction)

    def directive(self, used_bytes: int, previous: Directive = "ok") -> Directive:
        if used_bytes >= self.limit_bytes:
            return "shed"
        if previous == "shed" and used_bytes >= self.soft_bytes:
            return "shed"  # hysteresis: stay shed until back under the soft threshold
        if used_bytes >= self.soft_bytes:
            return "cleanup"
        return "ok"


@dataclass(frozen=True)
class MemoryReading:
    """One replica's memory: process RSS, and GPU memory when the replica has a GPU."""

    rss_bytes: int
    gpu_bytes: int | None = None

    @property
    def guarded_bytes(self) -> int:
        """What the limit applies to: GPU memory on a GPU replica, process RSS otherwise."""
        return self.gpu_bytes if self.gpu_bytes is not None else self.rss_bytes


@dataclass
class _ReplicaRecord:
    reading: MemoryReading
    directive: Directive
    reported_at: float
    reports: int = 0
    sheds: int = 0  # transitions into "shed"


class MemoryGuard:
    """Per-replica memory state and directives. Wrapped as a named Ray actor by `connect_memory_guard`."""

    def __init__(self, limit_gb: float, soft_fraction: float, stale_after_s: float) -> None:
        self._policy = MemoryPolicy.from_gb(limit_gb, soft_fraction)
        self._replicas: dict[str, _ReplicaRecord] = {}
        self.stale_after_s = stale_after_s  # replicas silent this long (dead, scaled down) leave the snapshot

    def register(self, replica_id: str) -> Directive:
        if replica_id not in self._replicas:
            self._replicas[replica_id] = _ReplicaRecord(MemoryReading(0), "ok", time.time())
        return self._replicas[replica_id].directive

    def unregister(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def report(self, replica_id: str, rss_bytes: int, gpu_bytes: int | None = None) -> Directive:
        """Record a replica's reading and return what it must do now."""
        self.register(replica_id)
        record = self._replicas[replica_id]
        record.reading = MemoryReading(int(rss_bytes), None if gpu_bytes is None else int(gpu_bytes))
        record.reported_at = time.time()
        record.reports += 1
        self._update(record)
        return record.directive

    def directive(self, replica_id: str) -> Directive:
        record = self._replicas.get(replica_id)
        return "ok" if record is None else record.directive

    def set_limit_gb(self, limit_gb: float, soft_fraction: float | None = None) -> dict[str, Directive]:
        """New limit for every replica, applied at once to their latest readings; returns the directives."""
        self._policy = MemoryPolicy.from_gb(limit_gb, soft_fraction or self._policy.soft_fraction)
        for record in self._replicas.values():
            self._update(record)
        return {replica_id: record.directive for replica_id, record in self._replicas.items()}

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe state for /v1/health and metrics."""
        self._forget_stale()
        now = time.time()
        replicas = {
            replica_id: {
                **asdict(record.reading),
                "guarded_bytes": record.reading.guarded_bytes,
                "directive": record.directive,
                "reports": record.reports,
                "sheds": record.sheds,
                "age_s": round(now - record.reported_at, 3),
            }
            for replica_id, record in self._replicas.items()
        }
        return {
            "limit_bytes": self._policy.limit_bytes,
            "soft_bytes": self._policy.soft_bytes,
            "limit_gb": self._policy.limit_bytes / GIB,
            "soft_fraction": self._policy.soft_fraction,
            "replicas": replicas,
            "shedding": sorted(r for r, record in self._replicas.items() if record.directive == "shed"),
        }

    def _update(self, record: _ReplicaRecord) -> None:
        directive = self._policy.directive(record.reading.guarded_bytes, record.directive)
        if directive == "shed" and record.directive != "shed":
            record.sheds += 1
        record.directive = directive

    def _forget_stale(self) -> None:
        cutoff = time.time() - self.stale_after_s
        for replica_id in [r for r, record in self._replicas.items() if record.reported_at < cutoff]:
            del self._replicas[replica_id]


# Ray gives the head node this resource (Ray's docs: "Resources", the head node); a tiny share of it pins an
# actor there without taking anything from the head's real capacity.
HEAD_NODE_RESOURCE = "node:__internal_head__"

def connect_memory_guard(
    limit_gb: float,
    soft_fraction: float,
    stale_after_s: float,
    *,
    name: str = GUARD_NAME,
    namespace: str = GUARD_NAMESPACE,
):
    """The guard actor (created on first call, detached, 0 CPUs, on the head node); needs `ray.init` or a
    Serve replica.

    An existing guard keeps its current limit: change it with `handle.set_limit_gb.remote(...)`. On the head,
    it lives as long as the cluster: on a worker node (wherever the first replica started) losing that node
    lost every replica's readings and the limit set since (measured in tests/integration/test_multinode.py).
    """
    import ray

    actor_class = ray.remote(num_cpus=0, max_restarts=-1, resources={HEAD_NODE_RESOURCE: 0.001})(MemoryGuard)
    return actor_class.options(name=name, namespace=namespace, lifetime="detached", get_if_exists=True).remote(
        limit_gb=limit_gb, soft_fraction=soft_fraction, stale_after_s=stale_after_s
    )


def stop_memory_guard(name: str = GUARD_NAME, namespace: str = GUARD_NAMESPACE) -> bool:
    """Kill the detached guard (it outlives drivers otherwise); False when there was none."""
    import ray

    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.kill(handle)
    return True


class MemoryReader:
    """Reads this process's memory: RSS via psutil, or GPU memory when the process computes on a GPU."""

    def __init__(self, use_gpu: bool = False, pid: int | None = None) -> None:
        """`use_gpu`: this process computes on a GPU (a replica: its engine's device is CUDA), so the limit
        applies to its GPU memory. Passed in, never inferred from the node: NVML sees every GPU of a GPU
        node, also from a CPU replica, whose GPU bytes are 0 (its RSS is what grows)."""
        self._process = psutil.Process(pid or os.getpid())
        self.use_gpu = use_gpu
        self._nvml_handles = _nvml_device_handles() if use_gpu else ()

    @property
    def has_gpu(self) -> bool:
        """GPU readings come from NVML (else from torch's reserved bytes)."""
        return bool(self._nvml_handles)

    def read(self) -> MemoryReading:
        rss_bytes = self._process.memory_info().rss
        return MemoryReading(rss_bytes, self._gpu_bytes() if self.use_gpu else None)

    def _gpu_bytes(self) -> int:
        """GPU memory this process holds on every visible device."""
        total = 0
        if self._nvml_handles:
            import pynvml

            pid = self._process.pid
            for handle in self._nvml_handles:
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        total += proc.usedGpuMemory
        if total == 0:
            total = _torch_cuda_reserved()  # no NVML, or in a container NVML may list host pids, not ours
        return total


def computes_on_gpu(engine: Any) -> bool:
    """Whether a replica holding `engine` (None before its first model) computes on a GPU."""
    device = getattr(engine, "device", None)
    return device is not None and device.type == "cuda"


@functools.cache
def _nvml_device_handles() -> tuple[Any, ...]:
    """NVML handles of every GPU, or () without pynvml/driver/device. Cached: NVML starts, or the absence
    is logged, once per process."""
    try:
        import pynvml
    except ImportError as error:
        logger.info("no GPU memory readings (nvidia-ml-py not installed: %s); guarding process RSS", error)
        return ()
    try:
        pynvml.nvmlInit()
        return tuple(pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as error:  # no driver or no device: no GPU readings
        logger.info("no GPU memory readings (NVML unavailable: %s); guarding process RSS", error)
        return ()


def _torch_cuda_reserved() -> int:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count()))


def cleanup(engine: Any = None, cache: Any = None) -> dict[str, int]:
    """Memory cleanup: clear the cache, collect garbage, and on CUDA release the cached
    blocks of the engine's GPU (`engine.device`; the current device when no engine is given)."""
    dropped = cache.clear() if cache is not None else 0
    collected = gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = getattr(engine, "device", None)
        on_engine_gpu = device is not None and device.type == "cuda"
        with torch.cuda.device(device) if on_engine_gpu else contextlib.nullcontext():
            torch.cuda.empty_cache()
    return {"cache_entries_dropped": dropped, "objects_collected": collected}


class ReplicaMemoryMonitor:
    """Replica side of the guard: read memory, report it, apply the directive.

    "cleanup" runs `cleanup(engine, cache)`; "shed" does too (once per `cleanup_cooldown_s`), and sets
    `shedding` until the guard says otherwise. Cleanup is rate-limited because RSS rarely falls after
    `gc.collect()`: without the cooldown a replica sitting above the soft threshold would empty its cache on
    every check.
    """

    def __init__(
        self,
        guard: Any,
        replica_id: str,
        cleanup_cooldown_s: float,
        reader: MemoryReader | None = None,
    ) -> None:
        self.guard = guard
        self.replica_id = replica_id
        self.reader = reader  # None: chosen per check from the engine's device (see _read)
        self.cleanup_cooldown_s = cleanup_cooldown_s
        self.directive: Directive = "ok"
        self.last_reading: MemoryReading | None = None
        self.cleanups = 0
        self._last_cleanup = float("-inf")
        self._auto_reader: MemoryReader | None = None

    @property
    def shedding(self) -> bool:
        return self.directive == "shed"

    def check(self, engine: Any = None, cache: Any = None) -> Directive:
        """Blocking version (drivers, threads)."""
        import ray

        reading = self._read(engine)
        directive = ray.get(self.guard.report.remote(self.replica_id, reading.rss_bytes, reading.gpu_bytes))
        return self._apply(reading, directive, engine, cache)

    async def check_async(self, engine: Any = None, cache: Any = None, child_rss_bytes: int = 0) -> Directive:
        """For a Serve replica's event loop: awaits the actor instead of blocking the loop. `child_rss_bytes`: the
        replica's engine process (serving/engine_process.py), counted in its RSS."""
        reading = self._read(engine)
        reading = replace(reading, rss_bytes=reading.rss_bytes + child_rss_bytes)
        directive = await self.guard.report.remote(self.replica_id, reading.rss_bytes, reading.gpu_bytes)
        return self._apply(reading, directive, engine, cache)

    def _read(self, engine: Any) -> MemoryReading:
        """The injected reader's reading, else GPU memory when the engine runs on CUDA and RSS otherwise."""
        if self.reader is not None:
            return self.reader.read()
        on_gpu = computes_on_gpu(engine)
        if self._auto_reader is None or self._auto_reader.use_gpu != on_gpu:
            self._auto_reader = MemoryReader(use_gpu=on_gpu)
        return self._auto_reader.read()

    def _apply(self, reading: MemoryReading, directive: Directive, engine: Any, cache: Any) -> Directive:
        if directive != self.directive:
            logger.warning(
                "memory guard: replica %s %s -> %s (%.1f MiB in use)",
                self.replica_id,
                self.directive,
                directive,
                reading.guarded_bytes / 2**20,
            )
        self.last_reading, self.directive = reading, directive
        now = time.monotonic()
        if directive != "ok" and now - self._last_cleanup >= self.cleanup_cooldown_s:
            cleanup(engine, cache)
            self.cleanups += 1
            self._last_cleanup = now
        return directive
