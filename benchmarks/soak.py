"""Soak: 10,000 requests at concurrency 32 against the deployed app, then a replica kill under load.

    python -m benchmarks.soak                                  # trains a smoke checkpoint first (~10 s)
    python -m benchmarks.soak --checkpoint runs/demo/best --requests 20000

One run, on its own loopback Ray cluster (`init_local_ray`), with the app as `hrm serve` deploys it
(serve.* defaults, one replica, a free port on 127.0.0.1, a bearer token):
1. warm-up (500 requests), then the replica's RSS;
2. the soak: `--requests` at `--concurrency` from one asyncio client, bodies cycling through 512 distinct
   windows (so the per-replica cache mostly misses); errors by status, p50/p99, the replica's RSS after;
3. a replica kill: the replica actor is killed through Ray while `--kill-requests` are in flight; counts
   by status, how long failed requests took to fail, when Serve had a new replica, when requests were
   answered again, and that every request after the recovery succeeded.

Acceptance (issue 9): zero 5xx in the soak, replica RSS growth under 10% from after warm-up to the end,
the kill's failures answered (not hung) and every request after the recovery answered 200. Prints a
table and writes benchmarks/results/soak.json. The reliability tests (tests/reliability/) run short forms.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from hrm_platform.config import ServeConfig, load_config
from tests.reliability.harness import (
    FAIL_FAST_S,
    BackgroundLoad,
    LoadReport,
    free_port,
    kill_replica,
    make_payloads,
    rss_bytes,
    run_load,
    serve_replicas,
    wait_for_replacement,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "soak.json"
SMOKE_PRESET = REPO_ROOT / "jobs" / "configs" / "smoke.yaml"
TOKEN_ENV = "HRM_SOAK_TOKEN"
MIB = 2**20
WARM_UP_REQUESTS = 500
MAX_RSS_GROWTH = 0.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to serve (default: train the smoke preset)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-requests", type=int, default=3_000, help="requests in flight around the kill")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="client timeout per request")
    parser.add_argument("--python-proxy", action="store_true", help="serve.fast_ingress=false (default: HAProxy)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def smoke_checkpoint(work_dir: Path) -> Path:
    from hrm_platform.training.local import train_local

    return train_local(load_config(SMOKE_PRESET), work_dir / "smoke")


def start_app(checkpoint: Path, fast_ingress: bool) -> tuple[str, dict[str, str]]:
    from hrm_platform.local_ray import init_local_ray
    from hrm_platform.serving.lifecycle import start_server

    token = secrets.token_urlsafe(24)
    os.environ[TOKEN_ENV] = token  # start_server hands it to the replicas
    init_local_ray(num_cpus=4, log_to_driver=False)
    config = ServeConfig(port=free_port(), auth_token_env=TOKEN_ENV, fast_ingress=fast_ingress)
    return start_server(checkpoint, config).rstrip("/"), {"Authorization": f"Bearer {token}"}


def bars_needed(checkpoint: Path) -> int:
    from hrm_platform.checkpoint import load_manifest
    from hrm_platform.data.features import FeatureSpec

    return FeatureSpec.from_dict(load_manifest(checkpoint)["feature_spec"]).bars_needed


def the_replica():
    from hrm_platform.serving.app import APP_NAME
    from hrm_platform.serving.replica import DEPLOYMENT_NAME

    replicas = serve_replicas(APP_NAME, DEPLOYMENT_NAME)
    if len(replicas) != 1:
        raise RuntimeError(f"expected one replica, found {replicas}")
    return replicas[0]


# ---------------------------------------------------------------------------------------------- phases


def soak(url: str, headers: dict[str, str], payloads: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    replica = the_replica()
    run_load(url, payloads, WARM_UP_REQUESTS, args.concurrency, args.timeout_s, headers)
    rss_before = rss_bytes(replica.pid)
    report = run_load(url, payloads, args.requests, args.concurrency, args.timeout_s, headers)
    rss_after = rss_bytes(replica.pid)
    server_errors = sum(record.server_error for record in report.records)
    return {
        **report.summary(),
        "concurrency": args.concurrency,
        "server_errors": server_errors,
        "replica_pid": replica.pid,
        "rss_before_mib": round(rss_before / MIB, 1),
        "rss_after_mib": round(rss_after / MIB, 1),
        "rss_growth": round(rss_after / rss_before - 1, 4),
        "replica_restarted": the_replica() != replica,
    }


def replica_kill(url: str, headers: dict[str, str], payloads: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    from hrm_platform.serving.app import APP_NAME
    from hrm_platform.serving.replica import DEPLOYMENT_NAME

    victim = the_replica()
    load = BackgroundLoad(url, payloads, args.kill_requests, concurrency=args.concurrency,
                          timeout_s=args.timeout_s, headers=headers).start()
    load.wait_for(300, timeout_s=120)
    killed_at = time.monotonic()
    kill_replica(victim)
    wait_for_replacement(APP_NAME, DEPLOYMENT_NAME, victim, timeout_s=300)
    replaced_after_s = time.monotonic() - killed_at
    report = load.join(timeout_s=600)
    after = run_load(url, payloads, 500, args.concurrency, args.timeout_s, headers)
    return {**kill_figures(report, killed_at, replaced_after_s), "after_recovery": after.summary()}


def kill_figures(report: LoadReport, killed_at: float, replaced_after_s: float) -> dict[str, Any]:
    """What the clients saw around the kill; times in seconds from the kill."""
    finished = [(record, record.started_s + record.latency_ms / 1e3 - killed_at) for record in report.records]
    after_kill = [(record, end) for record, end in finished if end >= 0]
    failures = [(record, end) for record, end in after_kill if not record.ok]
    sent_after_kill = [(record, end) for record, end in after_kill if record.started_s >= killed_at]
    answered_again = min((end for record, end in sent_after_kill if record.ok), default=None)
    last_failure = max((end for _, end in failures), default=None)
    return {
        "requests": len(report.records),
        "status_counts": report.status_counts(),
        "failed": len(failures),
        "max_failed_latency_s": round(max((r.latency_ms for r, _ in failures), default=0.0) / 1e3, 2),
        "slowest_after_kill_s": round(max((r.latency_ms for r, _ in after_kill), default=0.0) / 1e3, 2),
        "replica_replaced_after_s": round(replaced_after_s, 2),
        "answered_again_after_s": None if answered_again is None else round(answered_again, 2),
        "last_failure_after_s": None if last_failure is None else round(last_failure, 2),
        "failure_details": sorted({record.detail[:80] for record, _ in failures})[:5],
    }


# ---------------------------------------------------------------------------------------------- report


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    soak_figures, kill = result["soak"], result["replica_kill"]
    return {
        "zero 5xx in the soak": soak_figures["server_errors"] == 0,
        "replica RSS growth < 10%": soak_figures["rss_growth"] < MAX_RSS_GROWTH,
        "every kill-time request got an HTTP status": not any(
            status in ("timeout", "connection_error") for status in kill["status_counts"]),
        "every request after the recovery succeeded": kill["after_recovery"]["status_counts"] == {
            "200": kill["after_recovery"]["requests"]},
        f"failures during recovery answered within {FAIL_FAST_S:.0f} s": kill["max_failed_latency_s"] <= FAIL_FAST_S,
        f"no request during recovery waited > {FAIL_FAST_S:.0f} s": kill["slowest_after_kill_s"] <= FAIL_FAST_S,
    }


def print_table(result: dict[str, Any]) -> None:
    soak_figures, kill = result["soak"], result["replica_kill"]
    after = kill["after_recovery"]
    rows = [
        ("requests (soak)", f"{soak_figures['requests']:,} at concurrency {soak_figures['concurrency']}"),
        ("errors by status", _errors(soak_figures["status_counts"])),
        ("p50 / p99", f"{soak_figures['p50_ms']:.1f} / {soak_figures['p99_ms']:.1f} ms"),
        ("throughput", f"{soak_figures['throughput_rps']:.0f} req/s over {soak_figures['duration_s']:.0f} s"),
        ("replica RSS before / after", f"{soak_figures['rss_before_mib']:.1f} / "
                                       f"{soak_figures['rss_after_mib']:.1f} MiB ({soak_figures['rss_growth']:+.1%})"),
        ("replica kill: requests", f"{kill['requests']:,}, by status {kill['status_counts']}"),
        ("  failed requests took at most", f"{kill['max_failed_latency_s']:.2f} s"),
        ("  slowest request after the kill", f"{kill['slowest_after_kill_s']:.2f} s"),
        ("  new replica alive after", f"{kill['replica_replaced_after_s']:.1f} s"),
        ("  answered again after", f"{kill['answered_again_after_s']} s"),
        ("  after recovery", f"{after['requests']} requests, {after['status_counts']}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nsoak ({result['ingress']} ingress, checkpoint {result['checkpoint']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for check, passed in result["verdicts"].items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {check}")


def _errors(status_counts: dict[str, int]) -> str:
    errors = {status: count for status, count in status_counts.items() if status != "200"}
    return ", ".join(f"{status}: {count}" for status, count in errors.items()) or "none"


def main() -> int:
    import ray

    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="hrm-soak-") as work:
        checkpoint = args.checkpoint or smoke_checkpoint(Path(work))
        url, headers = start_app(checkpoint, fast_ingress=not args.python_proxy)
        try:
            payloads = make_payloads(bars_needed(checkpoint), n_distinct=512, seed=7)
            predict = url + "/v1/predict"
            result: dict[str, Any] = {
                "ingress": "Python proxy" if args.python_proxy else "HAProxy (default)",
                "checkpoint": str(checkpoint),
                "cpu_count": os.cpu_count(),
                "soak": soak(predict, headers, payloads, args),
                "replica_kill": replica_kill(predict, headers, payloads, args),
            }
        finally:
            ray.shutdown()  # Serve and HAProxy go with the cluster (serve.shutdown() alone waits ~30 s)
    result["verdicts"] = verdicts(result)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(result["verdicts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
