"""`serve deploy` of our Serve config on a running cluster: the sequence a user runs on a cluster's head node.

    eval "$(hrm serve-env)"
    (cd /elsewhere && ray start --head --node-ip-address=127.0.0.1 --port=<free> ...)
    serve deploy deployments/serve_config.yaml -a http://127.0.0.1:<dashboard>     # checkpoint set in it

The cluster's processes start in another directory than this repository, so nothing that only the checkout
holds (the top-level `deployments` folder) is importable there: the config's import path must come with the
installed package. The head node runs in its own process group and is stopped by signalling that group, not
with `ray stop`, which would stop every Ray cluster on the machine (other tests' and other people's).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from hrm_platform.checkpoint import load_manifest
from hrm_platform.serving.ingress import free_ports
from tests.integration.test_train_jobs import (
    RAY,
    REPO_ROOT,
    VENV_BIN,
    _group_pids,
    _start_head,
    _stop_group,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SERVE = str(VENV_BIN / "serve")
HRM = str(VENV_BIN / "hrm")


def _stop_cluster(process_group: int) -> None:
    """Stop our head node's process group, then what its processes started in sessions of their own: Serve's
    HAProxyManager calls setsid, and its HAProxy outlived the group otherwise (seen: an orphan haproxy)."""
    started: list[psutil.Process] = []
    for pid in _group_pids(process_group):
        with contextlib.suppress(psutil.Error):
            started += psutil.Process(pid).children(recursive=True)
    _stop_group(process_group)
    for process in started:
        with contextlib.suppress(psutil.Error):  # gone already; psutil refuses a pid reused since
            process.kill()


def _serve_env(http_port: int) -> dict[str, str]:
    """This environment plus `eval "$(hrm serve-env)"` (the ingress and loopback settings) and a token."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token")
    env["HRM_API_TOKEN"] = secrets.token_hex(8)  # serve_config.yaml's serve.auth_token_env: replicas require it
    exported = subprocess.run([HRM, "serve-env", f"serve.port={http_port}"], capture_output=True, text=True, check=True)
    for line in exported.stdout.splitlines():  # export NAME=VALUE, quoted for the shell
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def _serve_config(checkpoint: Path, http_port: int, folder: Path) -> Path:
    """deployments/serve_config.yaml with its checkpoint (both places) and port set, as a user edits it."""
    config = yaml.safe_load((REPO_ROOT / "deployments" / "serve_config.yaml").read_text())
    config["http_options"]["port"] = http_port
    (application,) = config["applications"]
    application["args"]["checkpoint"] = str(checkpoint)
    application["deployments"][0]["user_config"]["checkpoint"] = str(checkpoint)
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _wait_running(dashboard: str, env: dict[str, str], cwd: Path, timeout_s: float) -> str:
    """`serve status` until the app is RUNNING; fails at once on DEPLOY_FAILED, with Serve's message."""
    deadline, status = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        completed = subprocess.run([SERVE, "status", "-a", dashboard], env=env, cwd=cwd, capture_output=True, text=True)
        status = completed.stdout + completed.stderr
        application = (yaml.safe_load(completed.stdout or "{}") or {}).get("applications", {}).get("hrm", {})
        assert application.get("status") != "DEPLOY_FAILED", status
        if application.get("status") == "RUNNING":
            return status
        time.sleep(1.0)
    pytest.fail(f"the app was not RUNNING after {timeout_s:.0f} s:\n{status}")


def _predict(url: str, token: str, timeout_s: float) -> httpx.Response:
    """POST the README's example request; the ingress may take a moment after RUNNING to route to the replica."""
    body = json.loads((REPO_ROOT / "deployments" / "examples" / "predict_request.json").read_text())
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=10)
            if response.status_code == 200 or time.monotonic() > deadline:
                return response
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def test_serve_deploy_of_our_yaml_on_a_cluster_started_elsewhere(trained_checkpoint: Path, tmp_path: Path) -> None:
    gcs, dashboard_port, client, agent_http, agent_grpc, runtime_env, metrics, http_port = free_ports(8)
    elsewhere = Path(tempfile.mkdtemp(prefix="hrmdep-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    env = _serve_env(http_port)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    command = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", "--num-cpus=2", "--object-store-memory=200000000",
        f"--temp-dir={elsewhere / 'ray'}", "--disable-usage-stats",
    ]
    process_group, output, returncode = _start_head(command, env, cwd=elsewhere)
    try:
        assert returncode == 0, output[-3000:]
        config = _serve_config(trained_checkpoint, http_port, elsewhere)
        deployed = subprocess.run(
            [SERVE, "deploy", str(config), "-a", dashboard], env=env, cwd=elsewhere, capture_output=True, text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        _wait_running(dashboard, env, elsewhere, timeout_s=180)

        response = _predict(f"http://127.0.0.1:{http_port}", env["HRM_API_TOKEN"], timeout_s=30)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["action"] in answer["probabilities"] and 1 <= answer["segments"]
        assert answer["model_version"] == load_manifest(trained_checkpoint)["model_version"]
        print(f"serve deploy on a `ray start` cluster: RUNNING, /v1/predict -> {answer['action']} "
              f"(model {answer['model_version']}, {answer['latency_ms']:.1f} ms in the server)")
    finally:
        _stop_cluster(process_group)
        subprocess.run(["rm", "-rf", str(elsewhere)], check=False)
