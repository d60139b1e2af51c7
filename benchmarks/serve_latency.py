"""Serving latency and throughput, side by side in one run: the bare engine, the engine behind plain uvicorn, a
naive Ray Serve deployment, and ours, each measured by two load generators in interleaved rounds.

    python -m benchmarks.serve_latency                                   # trains + exports a smoke checkpoint
    python -m benchmarks.serve_latency --checkpoint runs/demo/best --seconds 8 --rounds 3 --client both

Clients: wrk (an independent C load generator: wrk_load.py + wrk_post.lua, one thread, no warm-up) and the
asyncio client of http_load.py (a short warm-up per round); --client picks, default both when wrk is on PATH
(else the asyncio client alone, said once). Both send the same --bodies distinct bodies (windows of a synthetic
market's bars, max(bars_needed, 112) bars each, 112 = the default model's bars_needed; random positions) in
order from a random start through one shared cursor, so a body comes back only after all the others; ours'
cache hits during the measured rounds are read from /v1/health and reported (they should be ~0).

Rows (HTTP rows: one per server per client):
- engine <variant>: `InferenceEngine.predict_bars` in this process, batch 1 and batch 32 (the floor);
- uvicorn: the chosen engine behind a tiny FastAPI + pydantic app under uvicorn in a subprocess (no Ray; see
  serve_baselines.py), up for the whole run and measured in the same rounds as each Serve configuration;
- naive serve: a Serve deployment with eager fp32, Serve's deployment defaults (max_ongoing_requests=5), no
  cache, no batching, beside ours on each cluster;
- ours: HRMDeployment (serving/app.py) with the given config (default: HAProxy ingress, the lean request path),
  beside ours with serve.lean_path=false (the FastAPI + pydantic route) and ours with serve.engine_process
  flipped (default false: batches in the replica's process; true: in its engine process). At c=32 the mean
  engine batch comes from /v1/health's engine_calls around each round (delta of inline + batched_rows over
  delta of inline + batched; largest: the running maximum). Also ours' cache-hit path (asyncio client) and the
  replica's RSS, its engine process's included. Unless --skip-python-proxy, a second cluster measures uvicorn, naive and
  ours with serve.fast_ingress=false (Serve's Python proxy): the naive baseline on all of Serve's defaults.

Rounds: for each client and each concurrency (1, then 32), --rounds rounds of --seconds each per server, the
server order rotated each round (http_load.interleave). Each figure is the median over rounds with its
[min-max]; each ratio to uvicorn is the median of per-round ratios (the machine may be shared: both sides of a
ratio were measured within one round).
Targets per client, for ours with the given config on the HAProxy cluster (issue 21): c=32 throughput >= 2x
uvicorn; c=1 p50 <= 1.2x uvicorn; mean engine batch at c=32 >= 16. Kept from issue 7: c=32 throughput >= 8x the
naive deployment on Serve's defaults (ours/uvicorn over naive/uvicorn on the Python-proxy cluster; needs that
run) and replica RSS <= 600 MiB. Writes benchmarks/results/serve_latency.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.http_load import (
    BodyCycle,
    health,
    interleave,
    measure,
    paired_ratio,
    round_runner,
    row_line,
    summarize_rounds,
    wait_until_up,
)
from benchmarks.serve_baselines import naive_deployment, run_uvicorn
from benchmarks.wrk_load import choose_clients, write_bodies
from hrm_platform.config import ServeConfig, load_config
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "serve_latency.json"
MIB = 2**20
DEFAULT_MODEL_BARS = 112  # the default model's bars_needed: every body carries at least this many bars
LEVELS = (1, 32)
TARGET_BATCH = 16.0


# ---------------------------------------------------------------------------------------------- inputs


def make_bodies(bars: int, count: int, seed: int = 0) -> list[bytes]:
    """`count` /v1/predict bodies of `bars` bars: windows of one synthetic market at distinct random offsets (no
    two hold the same bars, so no two share a cache key), random positions; compact JSON, one line each."""
    frame = generate_market(1, max(count + bars, 4 * bars, 3000), seed=seed, horizon=4).bars["SYN00"]
    values = frame[list(BAR_COLUMNS)].to_numpy()  # (T, 5)
    rng = np.random.default_rng(seed)
    starts = rng.choice(len(values) - bars + 1, size=count, replace=False)
    positions = rng.uniform(-1, 1, count).round(6)
    return [
        json.dumps({"bars": values[start : start + bars].round(6).tolist(), "position": float(position)},
                   separators=(",", ":")).encode()
        for start, position in zip(starts, positions)
    ]


def prepare_checkpoint(checkpoint: Path | None) -> Path:
    """The given checkpoint, or a smoke-preset one trained once under runs/bench-serve; exported either way."""
    from hrm_platform.checkpoint import MANIFEST_FILE
    from hrm_platform.serving.export import export_engine
    from hrm_platform.serving.manifest import SERVING_MANIFEST, serving_dir

    if checkpoint is None:
        from hrm_platform.training.local import train_local

        checkpoint = REPO_ROOT / "runs" / "bench-serve" / "checkpoint"
        if not (checkpoint / MANIFEST_FILE).is_file():
            print("training a smoke checkpoint for the benchmark ...", flush=True)
            trained = train_local(
                load_config(REPO_ROOT / "jobs" / "configs" / "smoke.yaml"), checkpoint.parent / "train"
            )
            subprocess.run(["cp", "-r", str(trained), str(checkpoint)], check=True)
    if not (serving_dir(checkpoint) / SERVING_MANIFEST).is_file():
        print(f"exporting {checkpoint} (measures and checks every engine variant once) ...", flush=True)
        print(export_engine(checkpoint).summary(), flush=True)
    return checkpoint


# ------------------------------------------------------------------------------------------ bare engine


def bench_engines(checkpoint: Path, bodies: list[bytes], repeats: int) -> list[dict[str, Any]]:
    """Median batch-1 and batch-32 predict_bars time of every CPU variant that loads here, timed round-robin
    (one call of each variant in turn) so that a load swing on the shared machine hits every variant alike."""
    from hrm_platform.serving.engine import EngineError, InferenceEngine
    from hrm_platform.serving.variants import variants_for_device

    bars = [np.asarray(json.loads(body)["bars"]) for body in bodies[:32]]  # 32 x (bars, 5)
    engines, rows = {}, []
    for variant in variants_for_device("cpu"):
        try:
            engines[variant] = InferenceEngine.from_checkpoint(checkpoint, variant=variant, torch_threads=1)
        except EngineError as error:
            rows.append({"variant": variant, "error": str(error)})
    timings = {(variant, size): [] for variant in engines for size in (1, 32)}
    for repeat in range(repeats):
        for size in (1, 32) if repeat % 10 == 0 else (1,):  # batch 32 costs ~20x: time it every 10th round
            for variant, engine in engines.items():
                started = time.perf_counter()
                engine.predict_bars(bars[:size])
                timings[variant, size].append((time.perf_counter() - started) * 1e3)
    for variant in engines:
        batch1, batch32 = statistics.median(timings[variant, 1][1:]), statistics.median(timings[variant, 32])
        rows.append({"variant": variant, "batch1_ms": batch1, "batch32_ms": batch32,
                     "batch32_windows_per_s": 32_000 / batch32})
    order = variants_for_device("cpu")
    return sorted(rows, key=lambda row: order.index(row["variant"]))


# ------------------------------------------------------------------------------------- HTTP measurement


def measure_cluster(urls: dict[str, str], health_urls: dict[str, str], clients: list[str], cycle: BodyCycle,
                    body_file: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every client's interleaved rounds against `urls` -> rows keyed name_client, with ratios to uvicorn and
    each ours server's cache hits/misses during that client's rounds."""
    rows: dict[str, dict[str, Any]] = {}
    for client in clients:
        cache_before = {name: health(url)["cache"] for name, url in health_urls.items()}
        run_one = round_runner(client, urls, health_urls, cycle, body_file, args.seconds, max(LEVELS))
        records = interleave(list(urls), run_one, args.rounds, LEVELS)
        client_rows = {f"{name}_{client}": summarize_rounds(by_level[1], by_level[32]) | {"client": client}
                       for name, by_level in records.items()}
        uvicorn = next(key for key in client_rows if key.startswith("uvicorn"))
        for key, row in client_rows.items():
            if key != uvicorn:
                row["p50_vs_uvicorn"] = paired_ratio(client_rows, key, uvicorn, "c1", "p50_ms")
                row["throughput_vs_uvicorn"] = paired_ratio(client_rows, key, uvicorn, "c32", "throughput")
        for name, url in health_urls.items():
            after = health(url)["cache"]
            client_rows[f"{name}_{client}"]["cache_during_rounds"] = {
                field: after[field] - cache_before[name][field] for field in ("hits", "misses")}
        for key, row in client_rows.items():
            print(f"  {key}: {row_line(row)}", flush=True)
        rows.update(client_rows)
    return rows


# -------------------------------------------------------------------------------------- our deployment


def bench_serve(checkpoint: Path, cycle: BodyCycle, body_file: Path, args: argparse.Namespace,
                serve_config: ServeConfig, uvicorn_url: str, clients: list[str]) -> dict[str, dict]:
    """One local Ray cluster: ours (and, on the HAProxy cluster, ours with a default undone) and the naive
    deployment, measured interleaved with the uvicorn baseline by every client."""
    import ray
    from ray import serve

    from hrm_platform.local_ray import init_local_ray
    from hrm_platform.serving.app import AppArgs, build_app
    from hrm_platform.serving.ingress import free_port
    from hrm_platform.serving.lifecycle import start_server

    ingress = "default" if serve_config.fast_ingress else "python"
    label = "HAProxy ingress" if serve_config.fast_ingress else "Python proxy"
    init_local_ray(num_cpus=4, log_to_driver=False)
    try:
        url = start_server(checkpoint, serve_config.model_copy(update={"port": free_port()}))
        urls = {f"uvicorn_{ingress}": uvicorn_url, f"ours_{ingress}": f"{url}/v1/predict"}
        paths = {f"uvicorn_{ingress}": f"uvicorn, no Ray (beside {label})", f"ours_{ingress}": f"ours ({label})"}
        for name, (setting, side_config) in side_configs(serve_config).items():
            prefix = "/" + name.replace("_", "-")
            serve.run(build_app(AppArgs(checkpoint=str(checkpoint), serve=side_config)), name=f"hrm_{name}",
                      route_prefix=prefix)
            urls[f"ours_{name}"] = f"{url}{prefix}/v1/predict"
            paths[f"ours_{name}"] = f"ours, {setting} ({label})"
        serve.run(naive_deployment(checkpoint), name="naive", route_prefix="/naive")
        urls[f"naive_{ingress}"] = f"{url}/naive/v1/predict"
        paths[f"naive_{ingress}"] = f"naive serve ({label})"
        health_urls = {name: target.replace("/v1/predict", "/v1/health")
                       for name, target in urls.items() if name.startswith("ours")}
        rows = measure_cluster(urls, health_urls, clients, cycle, body_file, args)
        for key, row in rows.items():
            row["path"] = paths[key.rsplit("_", 1)[0]]
        for name, health_url in health_urls.items():
            add_replica_state(rows, name, health_url, clients)
        hit = measure(urls[f"ours_{ingress}"], cycle.bodies[:1], 1, min(args.seconds / 2, 5.0))
        rows[f"ours_{ingress}_{clients[0]}"]["cache_hit_p50_ms"] = hit.p50_ms
        print(f"  ours ({label}): cache hit p50 {hit.p50_ms:.2f} ms (asyncio client)", flush=True)
        return rows
    finally:
        ray.shutdown()  # also stops HAProxy; serve.shutdown() waits 30 s for the controller with HAProxy


def side_configs(serve_config: ServeConfig) -> dict[str, tuple[str, ServeConfig]]:
    """Ours with one setting flipped, beside ours on the HAProxy cluster: name -> (setting, config). The lean
    path only when on (its row is the route before it); the engine process either way."""
    if not serve_config.fast_ingress:
        return {}
    flipped = {"engine_process": not serve_config.engine_process}
    if serve_config.lean_path:
        flipped["lean_path"] = False
    names = {"lean_path": "fastapi_path", "engine_process": "engine_process"}
    return {names[field]: (f"serve.{field}={str(value).lower()}", serve_config.model_copy(update={field: value}))
            for field, value in flipped.items()}


def add_replica_state(rows: dict[str, dict], name: str, health_url: str, clients: list[str]) -> None:
    state = health(health_url)
    for client in clients:
        rows[f"{name}_{client}"].update(replica_rss_mib=state["memory"]["rss_bytes"] / MIB, variant=state["variant"])
    print(f"  {name}: replica RSS {state['memory']['rss_bytes'] / MIB:.0f} MiB, variant {state['variant']}, "
          f"cache {state['cache']}", flush=True)


# --------------------------------------------------------------------------------------------- report


def spread_cell(figure: dict[str, float], digits: int) -> str:
    return f"{figure['median']:.{digits}f} [{figure['min']:.{digits}f}-{figure['max']:.{digits}f}]"


def table(engines: list[dict], paths: dict[str, dict]) -> str:
    header = ("| path | client | c=1 p50 ms [min-max] | c=1 p99 ms | c=32 req/s [min-max] | vs uvicorn: p50, c=32 "
              "| mean engine batch c=32 (largest) | notes |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in engines:
        if "error" in row:
            lines.append(f"| engine {row['variant']} | - | - | - | - | - | - | not loadable: ...{row['error'][-70:]} |")
        else:
            lines.append(f"| engine {row['variant']} (bare, batch 1) | - | {row['batch1_ms']:.2f} | - | - | - | - | "
                         f"batch 32: {row['batch32_ms']:.1f} ms = {row['batch32_windows_per_s']:.0f} windows/s |")
    for row in paths.values():
        ratios = (f"{row['p50_vs_uvicorn']:.2f}x, {row['throughput_vs_uvicorn']:.2f}x"
                  if "p50_vs_uvicorn" in row else "-")
        batch = f"{row['mean_engine_batch']:.1f} ({row['largest_batch']:.0f})" if "mean_engine_batch" in row else "-"
        notes = []
        if "cache_during_rounds" in row:
            notes.append(f"cache hits in rounds {row['cache_during_rounds']['hits']:.0f}")
        if "cache_hit_p50_ms" in row:
            notes.append(f"cache hit p50 {row['cache_hit_p50_ms']:.2f} ms")
        if "replica_rss_mib" in row:
            notes.append(f"replica RSS {row['replica_rss_mib']:.0f} MiB, variant {row['variant']}")
        if row["errors"]:
            notes.append(f"{row['errors']} errors")
        notes.append(f"load avg {row['load_average']:.1f}")
        lines.append(f"| {row['path']} | {row['client']} | {spread_cell(row['c1_p50_ms'], 2)} | "
                     f"{row['c1_p99_ms']['median']:.2f} | {spread_cell(row['c32_throughput'], 0)} | {ratios} | "
                     f"{batch} | {'; '.join(notes)} |")
    return "\n".join(lines)


def check(target: str, value: float, bound: float, higher: bool) -> dict[str, Any]:
    holds = value >= bound if higher else value <= bound  # False for nan (no figure)
    return {"target": target, "value": value, "bound": bound, "higher": higher, "holds": holds}


def targets(paths: dict[str, dict], clients: list[str]) -> list[dict[str, Any]]:
    """Per client: issue 21's targets for ours (HAProxy cluster, the given config) against uvicorn measured in
    the same rounds; issue 7's against the naive deployment on all of Serve's defaults (ours/uvicorn in ours'
    run over naive/uvicorn in the Python-proxy run) and on the replica's RSS."""
    checks = []
    for client in clients:
        naive = paths.get(f"naive_python_{client}")
        for ingress in ("default", "python"):
            ours = paths.get(f"ours_{ingress}_{client}")
            if ours is None:
                continue
            label = f"{ours['path']}, {client}"
            if ingress == "default":
                checks += [
                    check(f"{label}: c=32 throughput >= 2x uvicorn", ours["throughput_vs_uvicorn"], 2.0, True),
                    check(f"{label}: c=1 p50 <= 1.2x uvicorn", ours["p50_vs_uvicorn"], 1.2, False),
                    check(f"{label}: mean engine batch at c=32 >= 16", ours.get("mean_engine_batch", math.nan),
                          TARGET_BATCH, True),
                ]
            if naive is not None:
                checks.append(check(f"{label}: c=32 throughput >= 8x naive (Serve defaults)",
                                    ours["throughput_vs_uvicorn"] / naive["throughput_vs_uvicorn"], 8.0, True))
            checks.append(check(f"{label}: replica RSS <= 600 MiB", ours["replica_rss_mib"], 600.0, False))
    return checks


# ----------------------------------------------------------------------------------------------- main


def planned(args: argparse.Namespace, clients: list[str]) -> str:
    """Measured seconds per cluster and client, said up front (warm-ups and start-ups come on top)."""
    clusters = [3 + args.side_rows] + ([] if args.skip_python_proxy else [3])
    rounds = len(LEVELS) * args.rounds * sum(clusters)
    parts = [f"{client} {rounds * (max(1, round(args.seconds)) if client == 'wrk' else args.seconds):.0f} s"
             for client in clients]
    warm_up = rounds * min(2.0, args.seconds / 4) if "python" in clients else 0.0
    return (f"measured time: {', '.join(parts)} ({args.rounds} rounds x {args.seconds:g} s x {len(LEVELS)} levels "
            f"x {sum(clusters)} servers; asyncio warm-ups add {warm_up:.0f} s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a smoke checkpoint under runs/")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round, server and level "
                        "(wrk takes whole seconds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per client and level (>= 3)")
    parser.add_argument("--client", choices=("wrk", "python", "both"), default=None,
                        help="load generator(s); default both when wrk is on PATH, else python")
    parser.add_argument("--bodies", type=int, default=20_000, help="distinct request bodies, sent in turn")
    parser.add_argument("--engine-repeats", type=int, default=200)
    parser.add_argument("--skip-python-proxy", action="store_true",
                        help="measure the default config only (no Serve-defaults naive baseline, no 8x check)")
    parser.add_argument("overrides", nargs="*", metavar="serve.key=value", help="ServeConfig overrides for ours")
    parser.add_argument("--uvicorn-server", type=int, default=None, help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.uvicorn_server is None and args.rounds < 3:
        parser.error("--rounds must be >= 3 (medians and spreads over rounds)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.uvicorn_server is not None:
        run_uvicorn(args.checkpoint, args.uvicorn_server)
        return 0
    clients = choose_clients(args.client)

    import torch

    torch.set_num_threads(1)
    checkpoint = prepare_checkpoint(args.checkpoint).resolve()
    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.ingress import free_port

    serve_config = load_config(None, args.overrides).serve
    args.side_rows = len(side_configs(serve_config))
    body_bars = max(InferenceEngine.from_checkpoint(checkpoint).bars_needed, DEFAULT_MODEL_BARS)
    bodies = make_bodies(body_bars, args.bodies)
    cycle = BodyCycle(bodies)
    print(f"checkpoint {checkpoint}; {os.cpu_count()} cores; clients {', '.join(clients)}; {len(bodies)} bodies "
          f"of {body_bars} bars from body {cycle.position}", flush=True)
    print(planned(args, clients), flush=True)

    print("bare engine:", flush=True)
    engines = bench_engines(checkpoint, bodies, args.engine_repeats)
    for row in engines:
        print(f"  {row}", flush=True)

    paths: dict[str, dict] = {}
    port = free_port()
    uvicorn = subprocess.Popen([sys.executable, "-m", "benchmarks.serve_latency", "--checkpoint", str(checkpoint),
                                "--uvicorn-server", str(port)], cwd=REPO_ROOT)
    uvicorn_url = f"http://127.0.0.1:{port}/v1/predict"
    try:  # uvicorn stays up for the whole run and is measured in the same rounds as each Serve configuration
        with tempfile.TemporaryDirectory(prefix="serve-latency-") as scratch:
            body_file = write_bodies(bodies, Path(scratch))
            wait_until_up(f"http://127.0.0.1:{port}/health")
            print("Ray Serve, HAProxy ingress (rounds interleaved with uvicorn and the naive deployment):", flush=True)
            paths.update(bench_serve(checkpoint, cycle, body_file, args, serve_config, uvicorn_url, clients))
            if not args.skip_python_proxy:
                print("Ray Serve, Python proxy (rounds interleaved with uvicorn and the naive deployment):", flush=True)
                python_proxy = serve_config.model_copy(update={"fast_ingress": False})
                paths.update(bench_serve(checkpoint, cycle, body_file, args, python_proxy, uvicorn_url, clients))
    finally:
        uvicorn.terminate()
        uvicorn.wait(timeout=30)

    report = table(engines, paths)
    checks = targets(paths, clients)
    print("\n" + report + "\n")
    for item in checks:
        print(f"{'HOLDS ' if item['holds'] else 'MISSED'}  {item['target']}: {item['value']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "checkpoint": str(checkpoint), "cores": os.cpu_count(), "seconds": args.seconds, "rounds": args.rounds,
        "clients": clients, "bodies": len(bodies), "body_bars": body_bars,
        "serve_config": serve_config.model_dump(mode="json"), "engines": engines, "paths": paths,
        "targets": checks, "table": report}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
