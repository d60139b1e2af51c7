"""`hrm train` shows our lines by default and Ray's own logs only with --verbose (issue 20, point 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
# What Ray's own processes print when their logs are forwarded to the driver.
RAY_INTERNALS = ("(PlacementGroupCleaner", "TrainingReport(", "core_worker.cc", "(TrainController", "(RayTrainWorker",
                 "(raylet)", "authentication_token_setup", "Started a local Ray instance")


def hrm_train(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "hrm_platform.cli", "train", "--config", "jobs/configs/smoke.yaml",
               "train.epochs=2", f"train.storage_path={tmp_path}", *flags]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    return completed


def test_default_output_is_our_lines_only(tmp_path: Path) -> None:
    completed = hrm_train(tmp_path)
    output = completed.stdout + completed.stderr
    leaked = [line for line in output.splitlines() if any(marker in line for marker in RAY_INTERNALS)]
    assert not leaked, "\n".join(leaked[:10])
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("training run 'smoke': 2 epochs, 2 Ray Train workers")
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]  # relayed from rank 0
    assert lines[-2].startswith("trained 2 epochs; best checkpoint: epoch")


def test_verbose_brings_rays_logs_back(tmp_path: Path) -> None:
    completed = hrm_train(tmp_path, "--verbose")
    output = completed.stdout + completed.stderr
    assert any(marker in output for marker in RAY_INTERNALS)
    assert sum(line.startswith("epoch ") for line in completed.stdout.splitlines()) == 2  # and ours, once each
