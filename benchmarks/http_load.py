"""HTTP load for the serving benchmark: concurrent workers sending real request bodies for a fixed time,
rounds interleaved between servers so the machine's noise hits all alike, and the ratios of paired rounds."""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


NextRequest = Callable[[], tuple[str, bytes, dict[str, str]]]  # one worker's next request: url, body, headers


async def run_workers(next_requests: list[NextRequest], seconds: float, headers: dict[str, str]) -> LoadResult:
    """One worker per entry of `next_requests`, each POSTing what its function gives, back to back: a warm-up of
    min(2 s, seconds / 4) not recorded, then `seconds` recorded (a non-200 counts as an error)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=len(next_requests))
    headers = {"Content-Type": "application/json", **headers}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(next_request: NextRequest, deadline: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                url, body, extra_headers = next_request()
                started = time.perf_counter()
                async with session.post(url, data=body, headers=extra_headers) as response:
                    await response.read()
                    ok = response.status == 200
                if record and ok:
                    latencies.append((time.perf_counter() - started) * 1e3)
                elif record:
                    errors += 1

        warm_up = time.perf_counter() + min(2.0, seconds / 4)
        await asyncio.gather(*(worker(next_request, warm_up, False) for next_request in next_requests))
        started = time.perf_counter()
        await asyncio.gather(*(worker(next_request, started + seconds, True) for next_request in next_requests))
        elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"), float("nan"))  # none answered
    return LoadResult(len(next_requests), len(latencies), errors, elapsed, float(p50), float(p99))


async def _load(url: str, bodies: list[bytes], concurrency: int, seconds: float, headers: dict[str, str]) -> LoadResult:
    """`concurrency` workers sending the bodies in turn (shared between them) to one URL."""
    counter = itertools.count()

    def next_request() -> tuple[str, bytes, dict[str, str]]:
        return url, bodies[next(counter) % len(bodies)], {}

    return await run_workers([next_request] * concurrency, seconds, headers)


def measure(url: str, bodies: list[bytes], concurrency: int, seconds: float, headers=None) -> LoadResult:
    return asyncio.run(_load(url, bodies, concurrency, seconds, headers or {}))


def measure_interleaved(
    urls: dict[str, str], bodies: list[bytes], seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Concurrency 1 then 32 against every URL, in `rounds` short rounds that alternate between the URLs (the
    order rotates each round). Each figure is the median over rounds, and each ratio between two URLs is the
    median of per-round ratios, so a load swing on the shared machine hits both sides of a ratio alike."""
    per_round = seconds / rounds
    results: dict[str, dict[int, list[LoadResult]]] = {name: {1: [], 32: []} for name in urls}
    names = list(urls)
    for concurrency in (1, 32):
        for round_index in range(rounds):
            for name in names[round_index % len(names):] + names[: round_index % len(names)]:
                results[name][concurrency].append(measure(urls[name], bodies, concurrency, per_round))
    rows = {}
    for name, by_level in results.items():
        single, loaded = by_level[1], by_level[32]
        rows[name] = {
            "p50_ms": statistics.median(r.p50_ms for r in single),
            "p99_ms": statistics.median(r.p99_ms for r in single),
            "throughput_c32": statistics.median(r.throughput for r in loaded),
            "errors": sum(r.errors for r in single + loaded),
            "rounds": {"c1": [asdict(r) for r in single], "c32": [asdict(r) | {"throughput": r.throughput} for r in loaded]},
            "load_average": os.getloadavg()[0],
        }
        print(f"  {name}: c=1 p50 {rows[name]['p50_ms']:.2f} ms p99 {rows[name]['p99_ms']:.2f} ms; "
              f"c=32 {rows[name]['throughput_c32']:.0f} req/s (errors {rows[name]['errors']})", flush=True)
    return rows


def paired_ratio(results: dict[str, dict], numerator: str, denominator: str, level: str, field: str) -> float:
    """Median over rounds of numerator/denominator for one figure (rounds were measured back to back)."""
    pairs = zip(results[numerator]["rounds"][level], results[denominator]["rounds"][level])
    return statistics.median(a[field] / b[field] for a, b in pairs)


def wait_until_up(url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout_s} s")
