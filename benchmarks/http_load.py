"""HTTP load for the serving benchmark: concurrent workers sending real request bodies for a fixed time,
rounds interleaved between servers so the machine's noise hits all alike, and the ratios of paired rounds.

`BodyCycle` hands out the bodies in a fixed order from a random start, shared by every measurement and by both
clients (this asyncio one, `measure_cycle`, and wrk in wrk_load.py), so a body comes back only after all the
others were sent; `interleave` runs either client's rounds (`round_runner`) and `summarize_rounds` takes their
median and spread, with the mean engine batch read from /v1/health around the rounds at concurrency 32.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.wrk_load import run_wrk


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


class BodyCycle:
    """The bodies in a fixed order, handed out one after another (wrapping around) from a random start."""

    def __init__(self, bodies: list[bytes], seed: int | None = None) -> None:
        self.bodies = bodies
        self.position = random.Random(seed).randrange(len(bodies))  # the next body to send

    def take(self) -> bytes:
        body = self.bodies[self.position]
        self.position = (self.position + 1) % len(self.bodies)
        return body


def measure_cycle(url: str, cycle: BodyCycle, concurrency: int, seconds: float) -> LoadResult:
    """`concurrency` workers sending the cycle's next bodies to one URL (warm-up included: see run_workers)."""

    def next_request() -> tuple[str, bytes, dict[str, str]]:
        return url, cycle.take(), {}

    return asyncio.run(run_workers([next_request] * concurrency, seconds, {}))


def rotated(names: list[str], round_index: int) -> list[str]:
    """Round r's order: the names rotated left by r, so no server always runs first or after the same one."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def interleave(
    names: list[str], run_one: Callable[[str, int], Any], rounds: int, levels: tuple[int, ...] = (1, 32)
) -> dict[str, dict[int, list[Any]]]:
    """For each concurrency level, `rounds` rounds that each run `run_one(name, level)` once per name, in the
    rotated order; -> {name: {level: [one record a round]}}."""
    records: dict[str, dict[int, list[Any]]] = {name: {level: [] for level in levels} for name in names}
    for level in levels:
        for round_index in range(rounds):
            for name in rotated(names, round_index):
                records[name][level].append(run_one(name, level))
    return records


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_rounds(single: list[dict[str, Any]], loaded: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's rounds at concurrency 1 (`single`) and 32 (`loaded`), records with p50_ms, p99_ms,
    throughput and errors (and "engine" from `round_runner`) -> median and [min, max] over rounds of p50 and p99
    at 1 and of throughput at 32; the median mean engine batch and largest batch at 32 where recorded."""
    row = {
        "c1_p50_ms": spread([r["p50_ms"] for r in single]),
        "c1_p99_ms": spread([r["p99_ms"] for r in single]),
        "c32_throughput": spread([r["throughput"] for r in loaded]),
        "errors": sum(r["errors"] for r in single + loaded),
        "rounds": {"c1": single, "c32": loaded},
        "load_average": os.getloadavg()[0],
    }
    batches = [r["engine"] for r in loaded if r.get("engine") and not math.isnan(r["engine"]["mean_batch"])]
    if batches:
        row["mean_engine_batch"] = statistics.median(b["mean_batch"] for b in batches)
        row["largest_batch"] = statistics.median(b["largest_batch"] for b in batches)
    return row


def row_line(row: dict[str, Any]) -> str:
    """A summarize_rounds row in one line (progress output)."""
    p50, c32 = row["c1_p50_ms"], row["c32_throughput"]
    line = (f"c=1 p50 {p50['median']:.2f} ms [{p50['min']:.2f}-{p50['max']:.2f}], c=32 {c32['median']:.0f} req/s "
            f"[{c32['min']:.0f}-{c32['max']:.0f}], errors {row['errors']}")
    if "mean_engine_batch" in row:
        line += f", mean engine batch {row['mean_engine_batch']:.1f} (largest {row['largest_batch']:.0f})"
    if "cache_during_rounds" in row:
        line += f", cache hits {row['cache_during_rounds']['hits']:.0f}"
    return line


# ----------------------------------------------------------------------- one round of either client


def health(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(url, timeout=10.0).json()


def engine_batch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """Mean engine batch between two /v1/health answers of one replica: rows computed / engine calls, where a
    lone inline call counts one row; largest_batch is the replica's running maximum (no per-round figure)."""
    calls_before, calls_after = before.get("engine_calls") or {}, after.get("engine_calls") or {}
    if before.get("replica") != after.get("replica") or "batched_rows" not in calls_after:
        return None  # another replica answered (serve.num_replicas > 1), or no counters: no figure
    calls = sum(calls_after[k] - calls_before[k] for k in ("inline", "batched"))
    rows = sum(calls_after[k] - calls_before[k] for k in ("inline", "batched_rows"))
    return {"calls": calls, "rows": rows, "mean_batch": rows / calls if calls else math.nan,
            "largest_batch": calls_after["largest_batch"]}


def round_runner(client: str, urls: dict[str, str], health_urls: dict[str, str], cycle: BodyCycle,
                 body_file: Path, seconds: float, probe_level: int = 32) -> Callable[[str, int], dict[str, Any]]:
    """run_one(name, concurrency) for `interleave`: one round of `client` ("wrk": wrk_load.run_wrk on
    `body_file`; "python": `measure_cycle`) against urls[name], from the cycle's position -> a record. Around
    the rounds at `probe_level` of a server in `health_urls`, its /v1/health gives the mean engine batch."""

    def run_one(name: str, concurrency: int) -> dict[str, Any]:
        probe = health_urls.get(name) if concurrency == probe_level else None
        before = health(probe) if probe else None
        if client == "wrk":
            result = run_wrk(urls[name], body_file, cycle.position, concurrency, seconds)
            cycle.position = result.next_body % len(cycle.bodies)
        else:
            result = measure_cycle(urls[name], cycle, concurrency, seconds)
        record = asdict(result) | {"throughput": result.throughput, "errors": result.errors}
        if before is not None:
            record["engine"] = engine_batch(before, health(probe))
        return record

    return run_one


def measure_interleaved(
    urls: dict[str, str], bodies: list[bytes], seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Concurrency 1 then 32 against every URL, in `rounds` short rounds that alternate between the URLs (the
    order rotates each round). Each figure is the median over rounds, and each ratio between two URLs is the
    median of per-round ratios, so a load swing on the shared machine hits both sides of a ratio alike."""
    per_round = seconds / rounds
    results = interleave(list(urls), lambda name, level: measure(urls[name], bodies, level, per_round), rounds)
    rows = {}
    for name, by_level in results.items():
        single, loaded = by_level[1], by_level[32]
        rows[name] = {
            "p50_ms": statistics.median(r.p50_ms for r in single),
            "p99_ms": statistics.median(r.p99_ms for r in single),
            "throughput_c32": statistics.median(r.throughput for r in loaded),
            "errors": sum(r.errors for r in single + loaded),
            "rounds": {
                "c1": [asdict(r) for r in single],
                "c32": [asdict(r) | {"throughput": r.throughput} for r in loaded],
            },
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
