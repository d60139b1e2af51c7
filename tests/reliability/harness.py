"""Reliability harness: HTTP load with per-request records, Serve replica lookup, RSS and listening sockets.

Shared by the reliability tests (short forms) and `benchmarks/soak.py` (the 10,000-request acceptance run):

    report = run_load(url, make_payloads(bars_needed, 256), n_requests=2000, concurrency=32)
    print(report.status_counts(), report.percentile_ms(50), report.percentile_ms(99))

The load generator is asyncio + aiohttp in one thread (on 2 shared cores a thread per client would spend
the CPU on the GIL, not on requests). Every request is recorded: when it started, how long it took, the
status (or why there was none) and whether an error body was JSON.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

# While a replica is replaced, a request must be answered or refused within this. A replica restart takes
# 3.5-15 s on 2 shared cores (never less than ~3.5 s measured), so a request that waits for the replacement
# instead of failing fast exceeds it, while a server-side request timeout of ~2 s keeps inside it.
FAIL_FAST_S = 3.0
NO_RESPONSE_TIMEOUT = "timeout"
NO_RESPONSE_CONNECTION = "connection_error"
# The status line arrived, then the connection broke mid-body: what a client sees from a replica SIGKILLed
# while writing its answer. No proxy can replay a response it has started to forward.
CUT_AFTER_STATUS = "cut_after_status"
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


# ---------------------------------------------------------------------------------------------- payloads


def free_port() -> int:
    """A TCP port that nothing listens on right now (never Serve's default 8000)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_bars(n_bars: int, seed: int) -> list[list[float]]:
    """A valid OHLCV random walk, (n_bars, 5) as nested lists: positive prices, low <= open/close <= high."""
    rng = np.random.default_rng(seed)
    log_close = np.log(100.0) + np.cumsum(rng.normal(0.0, 0.002, n_bars))  # (n_bars,)
    close = np.exp(log_close)
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.normal(0.0, 0.001, (n_bars, 2)))  # (n_bars, 2) upper and lower wick fractions
    high = np.maximum(open_, close) * (1.0 + wick[:, 0])
    low = np.minimum(open_, close) * (1.0 - wick[:, 1])
    volume = rng.uniform(1_000.0, 5_000.0, n_bars)
    bars = np.stack([open_, high, low, close, volume], axis=1)  # (n_bars, 5)
    return bars.round(6).tolist()


def make_payloads(bars_needed: int, n_distinct: int, seed: int = 0) -> list[dict[str, Any]]:
    """Distinct /v1/predict bodies (bars, position, budget) so that most requests miss the cache."""
    payloads = []
    for index in range(n_distinct):
        payloads.append(
            {
                "bars": make_bars(bars_needed + index % 7, seed * 100_003 + index),
                "position": round((index % 5) / 4 - 0.5, 2),
                "max_segments": None if index % 3 else 1 + index % 2,
            }
        )
    return payloads


# ---------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class RequestRecord:
    started_s: float  # time.monotonic() when the request was sent
    latency_ms: float
    status: int | str  # HTTP status, or NO_RESPONSE_TIMEOUT / NO_RESPONSE_CONNECTION
    json_body: bool  # the body parsed as JSON
    detail: str = ""  # first 200 characters of an error body or exception

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def server_error(self) -> bool:
        return isinstance(self.status, int) and self.status >= 500


@dataclass
class LoadReport:
    records: list[RequestRecord] = field(default_factory=list)
    started_s: float = 0.0
    ended_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.ended_s - self.started_s

    @property
    def throughput_rps(self) -> float:
        return len(self.records) / self.duration_s if self.duration_s > 0 else 0.0

    def status_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(str(record.status) for record in self.records).items()))

    def failures(self) -> list[RequestRecord]:
        return [record for record in self.records if not record.ok]

    def percentile_ms(self, q: float, only_ok: bool = True) -> float:
        latencies = [record.latency_ms for record in self.records if record.ok or not only_ok]
        return float(np.percentile(latencies, q)) if latencies else float("nan")

    def summary(self) -> dict[str, Any]:
        failures = self.failures()
        return {
            "requests": len(self.records),
            "status_counts": self.status_counts(),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
            "throughput_rps": round(self.throughput_rps, 1),
            "duration_s": round(self.duration_s, 2),
            "max_failed_latency_ms": round(max((r.latency_ms for r in failures), default=0.0), 1),
        }


async def _send(session, url: str, payload: dict[str, Any], timeout_s: float) -> RequestRecord:
    import aiohttp

    started = time.monotonic()
    try:
        async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            status: int | str = response.status
            try:
                body = await response.read()
            except aiohttp.ClientPayloadError as error:
                detail = f"status {status}, then {type(error).__name__}: {error}"[:200]
                return RequestRecord(started, (time.monotonic() - started) * 1e3, CUT_AFTER_STATUS, False, detail)
    except asyncio.TimeoutError:
        return RequestRecord(started, (time.monotonic() - started) * 1e3, NO_RESPONSE_TIMEOUT, False)
    except aiohttp.ClientError as error:
        detail = f"{type(error).__name__}: {error}"[:200]
        return RequestRecord(started, (time.monotonic() - started) * 1e3, NO_RESPONSE_CONNECTION, False, detail)
    latency_ms = (time.monotonic() - started) * 1e3
    try:
        json.loads(body)
        is_json = True
    except ValueError:
        is_json = False
    detail = "" if status == 200 else body[:200].decode("utf-8", "replace")
    return RequestRecord(started, latency_ms, status, is_json, detail)


async def _drive(
    url: str,
    payloads: Sequence[dict[str, Any]],
    n_requests: int,
    concurrency: int,
    timeout_s: float,
    headers: dict[str, str],
    on_record: Callable[[RequestRecord], None] | None,
) -> LoadReport:
    import aiohttp

    report = LoadReport(started_s=time.monotonic())
    next_index = 0

    async def client(session) -> None:
        nonlocal next_index
        while next_index < n_requests:
            index = next_index
            next_index += 1
            record = await _send(session, url, payloads[index % len(payloads)], timeout_s)
            report.records.append(record)
            if on_record is not None:
                on_record(record)

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    report.ended_s = time.monotonic()
    return report


def run_load(
    url: str,
    payloads: Sequence[dict[str, Any]],
    n_requests: int,
    concurrency: int = 32,
    timeout_s: float = 10.0,
    headers: dict[str, str] | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
) -> LoadReport:
    """POST `n_requests` bodies (cycling through `payloads`) to `url` from `concurrency` clients."""
    return asyncio.run(_drive(url, payloads, n_requests, concurrency, timeout_s, headers or {}, on_record))


class BackgroundLoad:
    """`run_load` in a thread, so the caller can inject a fault while requests are in flight."""

    def __init__(self, url: str, payloads: Sequence[dict[str, Any]], n_requests: int, **options: Any) -> None:
        self.completed = 0
        self._report: LoadReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(url, payloads, n_requests), kwargs=options, daemon=True
        )

    def _count(self, record: RequestRecord) -> None:
        self.completed += 1

    def _run(self, url: str, payloads: Sequence[dict[str, Any]], n_requests: int, **options: Any) -> None:
        try:
            self._report = run_load(url, payloads, n_requests, on_record=self._count, **options)
        except BaseException as error:  # re-raised in join()
            self._error = error

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def wait_for(self, completed: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.completed < completed and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.completed} of {completed} requests completed in {timeout_s} s")
            time.sleep(0.02)

    def join(self, timeout_s: float) -> LoadReport:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"load did not finish in {timeout_s} s ({self.completed} requests completed)")
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report


# ---------------------------------------------------------------------------------------------- Serve replicas


@dataclass(frozen=True)
class ReplicaInfo:
    app: str
    deployment: str
    actor_name: str  # SERVE_REPLICA::<app>#<deployment>#<id>, in namespace "serve"
    pid: int


def serve_replicas(app: str | None = None, deployment: str | None = None) -> list[ReplicaInfo]:
    """Alive Serve replica actors, from the GCS actor table.

    `ray.util.state.list_actors` needs the dashboard's API server, which the shared test cluster does not
    start (include_dashboard=False); the GCS table has the same class names and pids without it. A replica
    actor's class name is "ServeReplica:<app>:<deployment>".
    """
    from hrm_platform.ray_compat import gcs_actor_table

    replicas = []
    for info in gcs_actor_table().values():  # ActorClassName, Name, Pid, State
        class_name = info.get("ActorClassName") or ""
        if info.get("State") != "ALIVE" or not class_name.startswith("ServeReplica:"):
            continue
        _, replica_app, replica_deployment = class_name.split(":", 2)
        if (app is None or replica_app == app) and (deployment is None or replica_deployment == deployment):
            replicas.append(ReplicaInfo(replica_app, replica_deployment, info["Name"], int(info["Pid"])))
    return sorted(replicas, key=lambda replica: replica.actor_name)


def kill_replica(replica: ReplicaInfo) -> None:
    """Kill a replica's actor through Ray (no_restart: the Serve controller must notice and replace it)."""
    import ray

    ray.kill(ray.get_actor(replica.actor_name, namespace="serve"), no_restart=True)


def wait_for_replacement(
    app: str, deployment: str, killed: ReplicaInfo, timeout_s: float, expected: int = 1
) -> list[ReplicaInfo]:
    """Block until `expected` alive replicas exist, none of them the killed one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replicas = [r for r in serve_replicas(app, deployment) if r.actor_name != killed.actor_name]
        if len(replicas) >= expected:
            return replicas
        time.sleep(0.2)
    raise TimeoutError(f"Serve did not replace {killed.actor_name} within {timeout_s} s")


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


# ---------------------------------------------------------------------------------------------- sockets


@dataclass(frozen=True)
class ListeningSocket:
    ip: str
    port: int
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        return self.ip in LOOPBACK_ADDRESSES or self.ip.startswith("127.")


def process_tree(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def _process_title(process: psutil.Process) -> str:
    try:
        command = process.cmdline()
        return " ".join(command[:2])[:120] if command else process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"


def listening_sockets(root_pid: int) -> list[ListeningSocket]:
    """Every TCP socket in LISTEN state owned by `root_pid` or any of its descendants."""
    processes = {process.pid: process for process in process_tree(root_pid)}
    sockets = []
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in processes:
            title = _process_title(processes[connection.pid])
            sockets.append(ListeningSocket(connection.laddr.ip, connection.laddr.port, connection.pid, title))
    return sorted(sockets, key=lambda item: (item.process, item.port))
