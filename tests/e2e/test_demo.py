"""The demo flow end to end, as a user runs it: `hrm demo` on the smoke preset in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hrm_platform.checkpoint import load_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out_dir = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable, "-m", "hrm_platform.cli", "demo",
        "--config", str(REPO_ROOT / "jobs/configs/smoke.yaml"), "--out", str(out_dir),
        "serve.port=18431",
    ]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    return completed, out_dir


def test_demo_succeeds_and_prints_the_summary(demo_run) -> None:
    completed, _ = demo_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for line in ("HRM demo summary", "walk-forward          3 out-of-sample folds pooled", "Sharpe, pooled",
                 "bar frequency         6,783 bars per year (stated by the synthetic market)", "HTTP burst",
                 "curl -s http://127.0.0.1:18431"):
        assert line in completed.stdout


# What Ray's own processes print when their logs are forwarded: none of it belongs in the default output.
RAY_INTERNALS = ("(PlacementGroupCleaner", "TrainingReport(", "core_worker.cc", "(TrainController", "(RayTrainWorker",
                 "(raylet)", "(ServeController", "authentication_token_setup")


def test_demo_output_has_our_lines_and_no_ray_internals(demo_run) -> None:
    completed, _ = demo_run
    output = completed.stdout + completed.stderr
    leaked = [line for line in output.splitlines() if any(marker in line for marker in RAY_INTERNALS)]
    assert not leaked, "\n".join(leaked[:10])
    for stage in ("==> walk-forward", "fold 2: done", "==> export", "[  0.0 s] building", "==> serve"):
        assert stage in completed.stdout


def test_demo_summary_values(demo_run) -> None:
    _, out_dir = demo_run
    summary = json.loads((out_dir / "summary.json").read_text())
    burst = summary["burst"]
    assert burst["errors"] == 0 and burst["requests"] > 0
    assert burst["cache_hits"] >= 1  # the repeated requests came back from the replica's cache
    assert 1 <= burst["mean_segments"] <= burst["segments_limit"]
    assert burst["example"]["action"] in {"hold", "buy", "sell"}
    assert 0 < burst["p50_ms"] <= burst["p99_ms"]
    strategies = {"model", "model_1_segment", "model_all_segments", "lightgbm", "mlp", "transformer", "oracle",
                  "buy_and_hold", "momentum", "flat"}
    assert set(summary["sharpe"]) == set(summary["sharpe_ci"]) == strategies
    for name, (low, high) in summary["sharpe_ci"].items():
        assert low <= summary["sharpe"][name] <= high or name == "flat"
    assert set(summary["information_coefficient"]) == strategies - {"buy_and_hold", "momentum", "flat"}
    assert summary["folds"] == 3 and summary["confidence"] == 0.95
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["url"].startswith("http://127.0.0.1:")


def test_demo_artefacts(demo_run) -> None:
    _, out_dir = demo_run
    summary = json.loads((out_dir / "summary.json").read_text())
    checkpoint = Path(summary["checkpoint"])
    assert load_manifest(checkpoint)["format_version"] >= 1  # hashes verify
    assert (checkpoint / "serving" / "serving_manifest.json").is_file()
    assert checkpoint.parent.name == "smoke-fold2"  # the last fold's model, trained on the most history
    report = Path(summary["report_dir"])
    assert (report / "report.md").is_file() and (report / "metrics.json").is_file()
    assert len(json.loads((report / "metrics.json").read_text())["folds"]) == 3
    pngs = list(report.glob("*.png"))
    assert pngs and all(png.read_bytes()[:8] == PNG_MAGIC for png in pngs)
    assert (out_dir / "example_request.json").is_file()
