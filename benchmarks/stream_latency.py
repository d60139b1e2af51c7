"""Streams against stateless requests, side by side in one run on one checkpoint and one app, and what the
stream-affinity balance costs /v1/predict.

    python -m benchmarks.stream_latency                                  # smoke checkpoint (trained once), 2 replicas
    python -m benchmarks.stream_latency --checkpoint runs/demo/best --seconds 20 --replicas 2

The app runs as `hrm serve` deploys it (serve.* defaults, HAProxy ingress, `--replicas` replicas) on its own local
Ray cluster. Paths, each measured by one asyncio client in this process at concurrency 1 (p50, p99) and 32 (p50,
p99, requests/s), in interleaved rounds (the order alternates) so that the shared machine's load swings hit both:
- stream: POST /v1/streams/{id}/bars with one new bar and X-Stream-Id, one stream per client (each walks its own
  synthetic instrument, back and forth past its ends), seeded beforehand with a PUT of bars_needed bars;
- stateless: POST /v1/predict with the full window (bars_needed bars of a random offset, a random position: the
  bodies of benchmarks/serve_latency.py, which miss the cache).
Request bytes per decision: the JSON body, and the body plus the request line and headers this client sends.
Targets (issue 17): body bytes per decision >= 50x smaller for streams; stream p50 at c=1 below stateless; stream
requests/s at c=32 >= stateless. Ratios are medians of per-round ratios (http_load.paired_ratio).

Then, unless --skip-ingress, the balance's cost: /v1/predict through two HAProxys started here from copies of
the config Serve rendered, in front of the same replicas, that differ only in their `balance` line: ours,
`hdr(X-Stream-Id)` (round robin for requests without the header), and Ray's default, `leastconn`; measured
interleaved (http_load.measure_interleaved). Writes benchmarks/results/stream_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.http_load import (
    LoadResult,
    NextRequest,
    measure,
    measure_interleaved,
    paired_ratio,
    run_workers,
    wait_until_up,
)
from benchmarks.serve_latency import make_bodies, prepare_checkpoint
from hrm_platform.config import ServeConfig, load_config
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from hrm_platform.serving.ingress import STREAM_ID_HEADER

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "stream_latency.json"
LEVELS = (1, 32)  # concurrency levels; a stream per client
STREAM_BARS = 2000  # bars of each stream's instrument past its history (walked back and forth)
BYTES_TARGET = 50.0
PATHS = ("stream", "stateless")


# ---------------------------------------------------------------------------------------------- streams


@dataclass
class BenchStream:
    """One stream's id, its history (bars_needed, 5) and the bodies of its next bars, walked back and forth so
    that it never runs out and never jumps: every window is new (no cache hit) and every bar passes the checks."""

    stream_id: str
    history: list[list[float]]
    bodies: list[bytes]  # POST bodies, one bar each
    sent: int = 0

    def next_body(self) -> bytes:
        body = self.bodies[self.sent % len(self.bodies)]
        self.sent += 1
        return body


def make_streams(bars_needed: int, count: int, prefix: str, seed: int) -> list[BenchStream]:
    market = generate_market(count, bars_needed + STREAM_BARS, seed=seed, horizon=4)
    streams = []
    for index, frame in enumerate(market.bars.values()):
        values = frame[list(BAR_COLUMNS)].to_numpy().round(6)  # (bars_needed + STREAM_BARS, 5)
        walk = np.concatenate([values[bars_needed:], values[-2:bars_needed - 1:-1]])  # there and back: (2T - 1, 5)
        bodies = [json.dumps({"bars": [row.tolist()]}).encode() for row in walk]
        streams.append(BenchStream(f"{prefix}-{index:03d}", values[:bars_needed].tolist(), bodies))
    return streams


def seed_streams(url: str, streams: list[BenchStream]) -> None:
    """PUT each stream's history (not measured)."""
    import httpx

    with httpx.Client(timeout=30.0) as client:
        for stream in streams:
            response = client.put(f"{url}/v1/streams/{stream.stream_id}", json={"bars": stream.history},
                                  headers={STREAM_ID_HEADER: stream.stream_id})
            response.raise_for_status()


async def _stream_load(url: str, streams: list[BenchStream], seconds: float) -> LoadResult:
    """One client per stream, each POSTing its stream's next bar (http_load.run_workers: the same warm-up and
    recording as http_load.measure); 409s (a stream re-seeded elsewhere) count as errors."""

    def next_bar_of(stream: BenchStream) -> NextRequest:
        path, routing = f"{url}/v1/streams/{stream.stream_id}/bars", {STREAM_ID_HEADER: stream.stream_id}
        return lambda: (path, stream.next_body(), routing)

    return await run_workers([next_bar_of(stream) for stream in streams], seconds, {})


def measure_streams(url: str, streams: list[BenchStream], seconds: float) -> LoadResult:
    return asyncio.run(_stream_load(url, streams, seconds))


# ------------------------------------------------------------------------------------------------ bytes


async def _request_bytes(url: str, body: bytes, headers: dict[str, str]) -> dict[str, int]:
    """The body and the whole request (request line, headers as this aiohttp client sends them, body) of one POST."""
    import aiohttp

    sent: dict[str, Any] = {}

    async def on_headers_sent(_session, _context, params) -> None:
        sent.update(method=params.method, url=params.url, headers=params.headers)

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(on_headers_sent)
    async with aiohttp.ClientSession(trace_configs=[tracing], headers={"Content-Type": "application/json"}) as session:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
    request_line = f"{sent['method']} {sent['url'].path_qs} HTTP/1.1\r\n"
    header_lines = "".join(f"{name}: {value}\r\n" for name, value in sent["headers"].items()) + "\r\n"
    return {"body": len(body), "request": len(request_line.encode()) + len(header_lines.encode()) + len(body)}


def request_bytes(url: str, body: bytes, headers: dict[str, str]) -> dict[str, int]:
    return asyncio.run(_request_bytes(url, body, headers))


# ------------------------------------------------------------------------------------- stream vs stateless


def measure_paths(
    url: str, bodies: list[bytes], streams: dict[int, list[BenchStream]], seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Each level's rounds alternate stream and stateless (the order flips every round); medians over rounds."""
    per_round = seconds / rounds
    results: dict[str, dict[int, list[LoadResult]]] = {path: {level: [] for level in LEVELS} for path in PATHS}
    for level in LEVELS:
        for round_index in range(rounds):
            for path in PATHS if round_index % 2 == 0 else PATHS[::-1]:
                if path == "stream":
                    result = measure_streams(url, streams[level], per_round)
                else:
                    result = measure(f"{url}/v1/predict", bodies, level, per_round)
                results[path][level].append(result)
    return {path: summarize(by_level) for path, by_level in results.items()}


def summarize(by_level: dict[int, list[LoadResult]]) -> dict[str, Any]:
    single, loaded = by_level[1], by_level[32]
    return {
        "c1_p50_ms": statistics.median(r.p50_ms for r in single),
        "c1_p99_ms": statistics.median(r.p99_ms for r in single),
        "c32_p50_ms": statistics.median(r.p50_ms for r in loaded),
        "c32_p99_ms": statistics.median(r.p99_ms for r in loaded),
        "c32_throughput": statistics.median(r.throughput for r in loaded),
        "errors": sum(r.errors for r in single + loaded),
        "rounds": {"c1": [asdict(r) for r in single],
                   "c32": [asdict(r) | {"throughput": r.throughput} for r in loaded]},
    }


def stream_targets(paths: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    bytes_ratio = paths["stateless"]["bytes"]["body"] / paths["stream"]["bytes"]["body"]
    checks = [
        {"target": f"body bytes per decision >= {BYTES_TARGET:g}x smaller", "value": bytes_ratio,
         "bound": BYTES_TARGET, "higher": True},
        {"target": "stream p50 at c=1 below stateless (paired ratio)", "higher": False, "bound": 1.0,
         "value": paired_ratio(paths, "stream", "stateless", "c1", "p50_ms")},
        {"target": "stream requests/s at c=32 >= stateless (paired ratio)", "higher": True, "bound": 1.0,
         "value": paired_ratio(paths, "stream", "stateless", "c32", "throughput")},
    ]
    for check in checks:
        value, bound = check["value"], check["bound"]
        check["holds"] = value >= bound if check["higher"] else value < bound
    return checks


# ------------------------------------------------------------------------------------------ the balance


def serve_haproxy_config() -> Path:
    """The HAProxy config Serve rendered for this node (Ray scopes its files by node id)."""
    import ray
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC

    folder, name = os.path.split(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC)
    return Path(folder) / ray.get_runtime_context().get_node_id() / name


def haproxy_copy(config: str, balance: str, ports: list[int]) -> str:
    """Serve's HAProxy config with `balance <balance>`, its listeners moved to `ports` (in order), and neither
    Serve's admin socket nor its server-state file: an independent HAProxy before the same servers."""
    from hrm_platform.serving.ingress import balance_algorithm

    served = f"balance {balance_algorithm(True)}"
    if served not in config:
        raise RuntimeError(f"Serve's HAProxy config has no `{served}` line: is the stream ingress on?")
    lines = [line for line in config.replace(served, f"balance {balance}").splitlines()
             if not re.match(r"\s*(stats socket|server-state-(file|base)|load-server-state-from-file)\b", line)]
    free = iter(ports)
    rebound = [re.sub(r"^(\s*bind\s+)(\S*):\d+", lambda m: f"{m[1]}127.0.0.1:{next(free)}", line) for line in lines]
    return "\n".join(rebound) + "\n"


def start_haproxy_copy(folder: Path, balance: str) -> tuple[subprocess.Popen, str]:
    """A second HAProxy with `balance` before Serve's replicas; returns it and its base URL."""
    from hrm_platform.serving.ingress import free_port, real_haproxy_binary

    rendered = serve_haproxy_config().read_text()
    ports = [free_port() for _ in re.findall(r"^\s*bind\s", rendered, flags=re.M)]
    config = folder / f"{balance.split('(')[0]}.cfg"
    config.write_text(haproxy_copy(rendered, balance, ports))
    frontend = re.search(r"frontend http_frontend\n\s*bind 127\.0\.0\.1:(\d+)", config.read_text())
    process = subprocess.Popen([real_haproxy_binary(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{frontend[1]}"


def measure_balance(bodies: list[bytes], seconds: float, rounds: int) -> dict[str, Any]:
    """/v1/predict through two copies of Serve's HAProxy that differ only in `balance`: ours (hdr) and Ray's
    default (leastconn), started alike and measured interleaved; the ratios hdr/leastconn of paired rounds."""
    from hrm_platform.serving.ingress import balance_algorithm

    balances = {"hdr": balance_algorithm(True), "leastconn": balance_algorithm(False)}
    with tempfile.TemporaryDirectory(prefix="hrm-balance-") as folder:
        started = {name: start_haproxy_copy(Path(folder), balance) for name, balance in balances.items()}
        try:
            for _, url in started.values():
                wait_until_up(f"{url}/v1/health", timeout_s=30)
            rows = measure_interleaved({name: f"{url}/v1/predict" for name, (_, url) in started.items()}, bodies,
                                       seconds, rounds)
        finally:
            for process, _ in started.values():
                process.terminate()
                process.wait(timeout=30)
    for row in rows.values():
        row["c32_p50_ms"] = statistics.median(r["p50_ms"] for r in row["rounds"]["c32"])
        row["c32_p99_ms"] = statistics.median(r["p99_ms"] for r in row["rounds"]["c32"])
    ratios = {"c1_p50": paired_ratio(rows, "hdr", "leastconn", "c1", "p50_ms"),
              "c32_p50": paired_ratio(rows, "hdr", "leastconn", "c32", "p50_ms"),
              "c32_p99": paired_ratio(rows, "hdr", "leastconn", "c32", "p99_ms"),
              "c32_throughput": paired_ratio(rows, "hdr", "leastconn", "c32", "throughput")}
    return {"paths": rows, "hdr_vs_leastconn": ratios}


# ------------------------------------------------------------------------------------------------ report


def table(paths: dict[str, dict[str, Any]]) -> str:
    lines = ["| path | body bytes/decision | request bytes/decision | c=1 p50 ms | c=1 p99 ms | c=32 p50 ms | "
             "c=32 p99 ms | c=32 req/s | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for row in paths.values():
        lines.append(f"| {row['label']} | {row['bytes']['body']:,} | {row['bytes']['request']:,} | "
                     f"{row['c1_p50_ms']:.2f} | {row['c1_p99_ms']:.2f} | {row['c32_p50_ms']:.1f} | "
                     f"{row['c32_p99_ms']:.1f} | {row['c32_throughput']:.0f} | {row['errors']} |")
    return "\n".join(lines)


def balance_table(balance: dict[str, Any]) -> str:
    lines = ["| /v1/predict through | c=1 p50 ms | c=1 p99 ms | c=32 p50 ms | c=32 p99 ms | c=32 req/s |",
             "|---|---|---|---|---|---|"]
    labels = {"hdr": "HAProxy, `balance hdr(X-Stream-Id)` (no header: round robin)",
              "leastconn": "HAProxy, `balance leastconn` (Ray's default)"}
    for name, label in labels.items():
        row = balance["paths"][name]
        lines.append(f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['c32_p50_ms']:.1f} | "
                     f"{row['c32_p99_ms']:.1f} | {row['throughput_c32']:.0f} |")
    ratio = balance["hdr_vs_leastconn"]
    lines.append(f"| hdr / leastconn (median of paired rounds) | {ratio['c1_p50']:.3f} | - | {ratio['c32_p50']:.3f} | "
                 f"{ratio['c32_p99']:.3f} | {ratio['c32_throughput']:.3f} |")
    return "\n".join(lines)


def streams_per_replica(url: str, replicas: int) -> dict[str, float]:
    """replica id -> streams it holds (/v1/health without the header goes round robin)."""
    import httpx

    counts: dict[str, float] = {}
    for _ in range(10 * replicas):
        health = httpx.get(f"{url}/v1/health", timeout=10).json()
        counts[health["replica"]] = health["streams"]["count"]
    return counts


def wait_until_routed(url: str, replicas: int, timeout_s: float = 120.0) -> None:
    """Block until HAProxy routes to every replica. Serve calls the app running before its HAProxy has every
    replica: a stream seeded meanwhile would hash elsewhere once the last one joins (409 stream_unknown)."""
    deadline = time.monotonic() + timeout_s
    while len(streams_per_replica(url, replicas)) < replicas:
        if time.monotonic() > deadline:
            raise TimeoutError(f"HAProxy at {url} did not route to {replicas} replicas within {timeout_s:.0f} s")
        time.sleep(0.5)


# -------------------------------------------------------------------------------------------------- main


def run(checkpoint: Path, serve_config: ServeConfig, args: argparse.Namespace) -> dict[str, Any]:
    """One local Ray cluster with the app: stream vs stateless, then the balance; the results."""
    import ray

    from hrm_platform.local_ray import init_local_ray
    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.lifecycle import start_server

    bars_needed = InferenceEngine.from_checkpoint(checkpoint).bars_needed
    bodies = make_bodies(bars_needed, 4096)
    streams = {level: make_streams(bars_needed, level, f"bench-c{level}", seed=100 + level) for level in LEVELS}
    init_local_ray(num_cpus=max(4, args.replicas + 2), log_to_driver=False)
    try:
        url = start_server(checkpoint, serve_config)
        wait_until_routed(url, args.replicas)
        for level_streams in streams.values():
            seed_streams(url, level_streams)
        print(f"stream vs stateless, {args.replicas} replicas, {args.rounds} interleaved rounds:", flush=True)
        paths = measure_paths(url, bodies, streams, args.seconds, args.rounds)
        paths["stream"]["label"] = "stream: POST /v1/streams/{id}/bars, one bar"
        paths["stateless"]["label"] = f"stateless: POST /v1/predict, {bars_needed} bars"
        probe = streams[1][0]
        paths["stream"]["bytes"] = request_bytes(f"{url}/v1/streams/{probe.stream_id}/bars", probe.next_body(),
                                                 {STREAM_ID_HEADER: probe.stream_id})
        paths["stateless"]["bytes"] = request_bytes(f"{url}/v1/predict", bodies[0], {})
        paths["stream"]["streams_per_replica"] = streams_per_replica(url, args.replicas)
        balance = None
        if not args.skip_ingress:
            print("/v1/predict: the stream balance (hdr) vs leastconn, interleaved:", flush=True)
            balance = measure_balance(bodies, args.seconds, args.rounds)
        return {"bars_needed": bars_needed, "paths": paths, "balance": balance}
    finally:
        ray.shutdown()  # HAProxy goes with the cluster; serve.shutdown() waits 30 s for the controller with HAProxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a smoke checkpoint under runs/")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per path and level")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds those seconds are split into")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--skip-ingress", action="store_true", help="skip the hdr vs leastconn measurement")
    parser.add_argument("overrides", nargs="*", metavar="serve.key=value", help="ServeConfig overrides")
    args = parser.parse_args(argv)

    import torch

    from hrm_platform.serving.ingress import free_port

    torch.set_num_threads(1)
    checkpoint = prepare_checkpoint(args.checkpoint).resolve()
    overrides = [f"serve.port={free_port()}", f"serve.num_replicas={args.replicas}", *args.overrides]
    serve_config = load_config(None, overrides).serve
    os.environ.pop(serve_config.auth_token_env, None)  # no token: the load clients send none
    print(f"checkpoint {checkpoint}; {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}); "
          f"{args.seconds:g} s per path and level", flush=True)
    measured = run(checkpoint, serve_config, args)

    paths, balance = measured["paths"], measured["balance"]
    checks = stream_targets(paths)
    report = table(paths)
    print("\n" + report + "\n")
    for check in checks:
        print(f"{'HOLDS ' if check['holds'] else 'MISSED'}  {check['target']}: {check['value']:.3f}")
    print(f"streams per replica at the end: {paths['stream']['streams_per_replica']}")
    if balance is not None:
        print("\n" + balance_table(balance))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "checkpoint": str(checkpoint), "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
        "seconds": args.seconds, "rounds": args.rounds, "replicas": args.replicas,
        "serve_config": serve_config.model_dump(mode="json"), **measured, "targets": checks, "table": report,
        "balance_table": balance_table(balance) if balance is not None else None,
    }, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
