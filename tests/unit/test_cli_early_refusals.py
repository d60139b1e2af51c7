"""What used to fail late and loud now fails first, through the real `hrm` entry point, with exit code 2, a
message naming the setting and no traceback: a busy serve.port (serve, demo) and too little held-out data for
export's agreement check (export, demo)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(REPO_ROOT / "jobs" / "configs" / "smoke.yaml")


def hrm(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hrm_platform.cli", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture
def busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_busy_port_before_starting_ray(trained_checkpoint, busy_port):
    result = hrm("serve", "--checkpoint", str(trained_checkpoint), f"serve.port={busy_port}", timeout_s=60)
    _assert_refused(result, f"serve.port={busy_port}: 127.0.0.1:{busy_port} is already in use", "pick a free one")


def test_demo_refuses_a_busy_port_before_training(busy_port, tmp_path):
    result = hrm("demo", "--config", SMOKE, "--out", str(tmp_path), f"serve.port={busy_port}", timeout_s=60)
    _assert_refused(result, f"serve.port={busy_port}")
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_demo_refuses_too_little_held_out_data_before_training(tmp_path):
    result = hrm("demo", "--config", SMOKE, "--out", str(tmp_path), "export.min_eval_windows=100000", timeout_s=60)
    _assert_refused(result, "held-out windows (test + val) in this data", "export.min_eval_windows=100000")
    assert not (tmp_path / "runs").exists()


def test_export_reports_too_little_held_out_data_without_a_traceback(trained_checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "checkpoint"
    shutil.copytree(trained_checkpoint, copy)
    result = hrm("export", "--checkpoint", str(copy), "--variants", "eager", "export.min_eval_windows=100000")
    _assert_refused(result, "hrm export: only", "lower it (e.g. export.min_eval_windows=")
    result = hrm("export", "--checkpoint", str(copy), "--variants", "eager", "model.d_model=8")
    _assert_refused(result, "export overrides change only export.*; refused: model.d_model=8")
