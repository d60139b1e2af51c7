"""Serving latency and throughput, side by side in one run: the bare engine, the engine behind
plain uvicorn, a naive Ray Serve deployment, and ours (default HAProxy ingress, and Serve's Python proxy).

    python -m benchmarks.serve_latency                                   # trains + exports a smoke checkpoint
    python -m benchmarks.serve_latency --checkpoint runs/demo/best --seconds 15

Rows (every HTTP row is measured by the same asyncio client in this process, requests with distinct bars and
a random position so that nothing hits a cache unless the row says so):
- engine <variant>: `InferenceEngine.predict_bars` in this process, batch 1 and batch 32 (the floor);
- uvicorn: the chosen engine behind a tiny FastAPI app under uvicorn in a subprocess (HTTP, no Ray), up for
  the whole run and measured again beside each Serve configuration (the machine is shared: ratios are taken
  between rows measured minutes apart at most);
- naive serve: a Serve deployment with eager fp32, Serve's deployment defaults (max_ongoing_requests=5), no
  cache, no batching, beside ours on each cluster. The ">= 8x naive" target takes it with all of Serve's
  defaults (the Python proxy), chained through the uvicorn rounds of both runs; beside ours on HAProxy it
  shows what the deployment alone adds;
- ours: HRMDeployment (serving/app.py) at concurrency 1 (p50, p99) and 32 (throughput), its cache-hit path
  (one request repeated), and the replica's RSS; with the default config (HAProxy + throughput-optimised
  data plane) and, unless --skip-python-proxy, with serve.fast_ingress=false (Serve's Python proxy), each on
  its own local Ray cluster.
Targets (issue 7): ours >= 8x naive and >= 0.8x uvicorn in throughput at concurrency 32, ours p50 at
concurrency 1 <= 1.5x uvicorn's, replica RSS <= 600 MiB. Writes benchmarks/results/serve_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.http_load import measure, measure_interleaved, paired_ratio, wait_until_up
from benchmarks.serve_baselines import naive_deployment, run_uvicorn
from hrm_platform.config import ServeConfig, load_config
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "serve_latency.json"
MIB = 2**20


# ---------------------------------------------------------------------------------------------- inputs


def make_bodies(bars_needed: int, count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct /v1/predict bodies: windows of a synthetic market at random offsets, random positions."""
    frame = generate_market(1, max(4 * bars_needed, 3000), seed=seed, horizon=4).bars["SYN00"]
    values = frame[list(BAR_COLUMNS)].to_numpy()  # (T, 5)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(values) - bars_needed, count)
    positions = rng.uniform(-1, 1, count).round(6)
    return [
        json.dumps({"bars": values[start : start + bars_needed].round(6).tolist(), "position": float(position)}).encode()
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
            trained = train_local(load_config(REPO_ROOT / "jobs" / "configs" / "smoke.yaml"), checkpoint.parent / "train")
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

    bars = [np.asarray(json.loads(body)["bars"]) for body in bodies[:32]]  # 32 x (bars_needed, 5)
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


# -------------------------------------------------------------------------------------- our deployment


def bench_serve(
    checkpoint: Path, bodies: list[bytes], args: argparse.Namespace, serve_config: ServeConfig, uvicorn_url: str,
) -> dict[str, dict]:
    """One local Ray cluster: ours and the naive deployment measured interleaved with the uvicorn baseline."""
    import httpx
    import ray
    from ray import serve

    from hrm_platform.local_ray import init_local_ray
    from hrm_platform.serving.ingress import free_port
    from hrm_platform.serving.lifecycle import start_server

    key = "default" if serve_config.fast_ingress else "python"
    label = "HAProxy ingress" if serve_config.fast_ingress else "Python proxy"
    init_local_ray(num_cpus=4, log_to_driver=False)
    try:
        url = start_server(checkpoint, serve_config.model_copy(update={"port": free_port()}))
        serve.run(naive_deployment(checkpoint), name="naive", route_prefix="/naive")
        urls = {f"uvicorn_{key}": uvicorn_url, f"ours_{key}": f"{url}/v1/predict",
                f"naive_{key}": f"{url}/naive/v1/predict"}
        rows = measure_interleaved(urls, bodies, args.seconds, args.rounds)
        rows[f"uvicorn_{key}"]["path"] = f"uvicorn, no Ray (beside ours, {label})"
        rows[f"naive_{key}"]["path"] = f"naive serve ({label})"
        rows[f"naive_{key}"]["throughput_vs_uvicorn"] = paired_ratio(
            rows, f"naive_{key}", f"uvicorn_{key}", "c32", "throughput"
        )
        ours = rows[f"ours_{key}"]
        ours["path"] = f"ours ({label})"
        ours["p50_vs_uvicorn"] = paired_ratio(rows, f"ours_{key}", f"uvicorn_{key}", "c1", "p50_ms")
        ours["throughput_vs_uvicorn"] = paired_ratio(rows, f"ours_{key}", f"uvicorn_{key}", "c32", "throughput")
        ours["throughput_vs_naive_same_ingress"] = paired_ratio(
            rows, f"ours_{key}", f"naive_{key}", "c32", "throughput"
        )
        hit = measure(f"{url}/v1/predict", bodies[:1], 1, min(args.seconds / 2, 5.0))
        ours["cache_hit_p50_ms"], ours["cache_hit_p99_ms"] = hit.p50_ms, hit.p99_ms
        state = httpx.get(f"{url}/v1/health").json()
        ours["replica_rss_mib"] = state["memory"]["rss_bytes"] / MIB
        ours["variant"] = state["variant"]
        ours["cache"] = state["cache"]
        print(f"  ours ({label}): cache hit p50 {hit.p50_ms:.2f} ms; replica RSS {ours['replica_rss_mib']:.0f} MiB",
              flush=True)
        return rows
    finally:
        ray.shutdown()  # also stops HAProxy; serve.shutdown() waits 30 s for the controller with HAProxy


# --------------------------------------------------------------------------------------------- report


def table(engines: list[dict], paths: dict[str, dict]) -> str:
    lines = ["| path | c=1 p50 ms | c=1 p99 ms | c=32 req/s | notes |", "|---|---|---|---|---|"]
    for row in engines:
        if "error" in row:
            lines.append(f"| engine {row['variant']} | - | - | - | not loadable: ...{row['error'][-70:]} |")
        else:
            lines.append(f"| engine {row['variant']} (bare, batch 1) | {row['batch1_ms']:.2f} | - | - | batch 32: "
                         f"{row['batch32_ms']:.1f} ms = {row['batch32_windows_per_s']:.0f} windows/s |")
    for row in paths.values():
        notes = []
        if "p50_vs_uvicorn" in row:
            notes.append(f"p50 {row['p50_vs_uvicorn']:.2f}x, c=32 {row['throughput_vs_uvicorn']:.2f}x uvicorn")
        if "throughput_vs_naive_same_ingress" in row:
            notes.append(f"c=32 {row['throughput_vs_naive_same_ingress']:.1f}x naive on this ingress")
        if "cache_hit_p50_ms" in row:
            notes.append(f"cache hit p50 {row['cache_hit_p50_ms']:.2f} ms")
        if "replica_rss_mib" in row:
            notes.append(f"replica RSS {row['replica_rss_mib']:.0f} MiB, variant {row['variant']}")
        if row["errors"]:
            notes.append(f"{row['errors']} errors")
        notes.append(f"load avg {row['load_average']:.1f}")
        lines.append(f"| {row['path']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['throughput_c32']:.0f} | "
                     f"{'; '.join(notes)} |")
    return "\n".join(lines)


def targets(paths: dict[str, dict]) -> list[dict[str, Any]]:
    """Ours against the uvicorn baseline measured in the same rounds, and against the naive deployment on all of
    Serve's defaults (Python proxy): ours/uvicorn in ours' run over naive/uvicorn in the Python-proxy run."""
    checks = []
    naive = paths.get("naive_python")
    for key in ("default", "python"):
        if f"ours_{key}" not in paths:
            continue
        ours = paths[f"ours_{key}"]
        label = ours["path"]
        if naive is not None:
            versus_naive = ours["throughput_vs_uvicorn"] / naive["throughput_vs_uvicorn"]
            checks.append({"target": f"{label}: c=32 throughput >= 8x naive (Serve defaults)", "value": versus_naive,
                           "bound": 8.0, "higher": True})
        checks += [
            {"target": f"{label}: c=32 throughput >= 0.8x uvicorn", "value": ours["throughput_vs_uvicorn"], "bound": 0.8, "higher": True},
            {"target": f"{label}: c=1 p50 <= 1.5x uvicorn", "value": ours["p50_vs_uvicorn"], "bound": 1.5, "higher": False},
            {"target": f"{label}: replica RSS <= 600 MiB", "value": ours["replica_rss_mib"], "bound": 600.0, "higher": False},
        ]
    for check in checks:
        check["holds"] = check["value"] >= check["bound"] if check["higher"] else check["value"] <= check["bound"]
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a smoke checkpoint under runs/")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per path and load level")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds those seconds are split into")
    parser.add_argument("--engine-repeats", type=int, default=200)
    parser.add_argument("--skip-python-proxy", action="store_true",
                        help="measure the default config only (no Serve-defaults naive baseline, no 8x check)")
    parser.add_argument("overrides", nargs="*", metavar="serve.key=value", help="ServeConfig overrides for ours")
    parser.add_argument("--uvicorn-server", type=int, default=None, help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.uvicorn_server is not None:
        run_uvicorn(args.checkpoint, args.uvicorn_server)
        return 0

    import torch

    torch.set_num_threads(1)
    checkpoint = prepare_checkpoint(args.checkpoint).resolve()
    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.ingress import free_port

    bars_needed = InferenceEngine.from_checkpoint(checkpoint).bars_needed
    bodies = make_bodies(bars_needed, 4096)
    print(f"checkpoint {checkpoint}; {os.cpu_count()} cores; {args.seconds:.0f} s per load level", flush=True)

    print("bare engine:", flush=True)
    engines = bench_engines(checkpoint, bodies, args.engine_repeats)
    for row in engines:
        print(f"  {row}", flush=True)

    serve_config = load_config(None, args.overrides).serve
    paths: dict[str, dict] = {}
    port = free_port()
    uvicorn = subprocess.Popen([sys.executable, "-m", "benchmarks.serve_latency", "--checkpoint", str(checkpoint),
                                "--uvicorn-server", str(port)], cwd=REPO_ROOT)
    uvicorn_url = f"http://127.0.0.1:{port}/v1/predict"
    try:  # uvicorn stays up for the whole run and is measured in the same rounds as each Serve configuration
        wait_until_up(f"http://127.0.0.1:{port}/health")
        print("Ray Serve, HAProxy ingress (rounds interleaved with uvicorn and the naive deployment):", flush=True)
        paths.update(bench_serve(checkpoint, bodies, args, serve_config, uvicorn_url))
        if not args.skip_python_proxy:
            print("Ray Serve, Python proxy (rounds interleaved with uvicorn):", flush=True)
            python_proxy = serve_config.model_copy(update={"fast_ingress": False})
            paths.update(bench_serve(checkpoint, bodies, args, python_proxy, uvicorn_url))
    finally:
        uvicorn.terminate()
        uvicorn.wait(timeout=30)

    report = table(engines, paths)
    checks = targets(paths)
    print("\n" + report + "\n")
    for check in checks:
        print(f"{'HOLDS ' if check['holds'] else 'MISSED'}  {check['target']}: {check['value']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"checkpoint": str(checkpoint), "cores": os.cpu_count(), "seconds": args.seconds,
                                   "serve_config": serve_config.model_dump(mode="json"),
                                   "engines": engines, "paths": paths, "targets": checks, "table": report}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
