"""`ray job submit` of every job (train, export, evaluate) against a loopback-only `ray start --head` cluster,
and recovery from a killed worker.

The head node is started in its own process group with a private --temp-dir and free ports, and torn down
by signalling that group: `ray stop` would stop every Ray cluster on the machine, other people's included.
The jobs are submitted with a broken `hrm_platform` first on PYTHONPATH, standing for the copy a node has
installed (older, or another branch's): a job that imports it, in its driver, a child process or a worker,
fails. Each job must run the package of the checkout it was submitted from (jobs/runtime.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from hrm_platform.checkpoint import load_checkpoint, load_manifest
from hrm_platform.serving.ingress import free_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@dataclass
class HeadNode:
    dashboard_url: str
    env: dict[str, str]  # for `ray job ...` and the cluster itself: token auth, API address
    process_group: int


def _group_pids(process_group: int) -> list[int]:
    pids = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == process_group:
                pids.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return pids


def _stop_group(process_group: int, grace_s: float = 3.0) -> None:
    """SIGTERM our cluster's process group, then SIGKILL what is left (gcs_server ignores SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process_group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_pids(process_group):
            time.sleep(0.2)


def _start_head(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, int]:
    """Run `ray start` as a session leader: every daemon it forks stays in its process group."""
    started = subprocess.Popen(
        command, env=env, cwd=cwd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = started.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        started.kill()
        output, _ = started.communicate()
    return started.pid, output, started.returncode


@pytest.fixture(scope="module")
def ray_head() -> Iterator[HeadNode]:
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics = free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="hrmray-", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    url = f"http://127.0.0.1:{dashboard}"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
        RAY_AUTH_MODE="token",  # `ray job submit` fails with "Missing authentication token" without it
        RAY_API_SERVER_ADDRESS=url,
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keeps --node-ip-address=127.0.0.1 (else Ray swaps in the LAN IP)
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",  # propagated by the job driver to Ray Train: quicker reports
    )
    command = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", "--num-cpus=2", "--object-store-memory=200000000",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    groups = []
    try:
        for _ in range(2):  # Ray gives the raylet 30 s to register; a saturated shared machine can miss that once
            process_group, output, returncode = _start_head(command, env)
            groups.append(process_group)
            if returncode == 0:
                break
            _stop_group(process_group)
        else:
            pytest.fail(f"ray start failed twice:\n{output[-3000:]}")
        yield HeadNode(url, env, process_group)
    finally:
        for group in groups:
            _stop_group(group)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _listening_addresses(process_group: int) -> set[str]:
    pids = set(_group_pids(process_group))
    return {
        conn.laddr.ip
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == "LISTEN" and conn.pid in pids
    }


def _submit_command(submission_id: str, *train_args: str) -> list[str]:
    return _job_command(submission_id, "jobs.train", "--config", "jobs/configs/smoke.yaml", *train_args)


def _job_command(submission_id: str, module: str, *job_args: str, runtime_env: dict | None = None) -> list[str]:
    extra = ["--runtime-env-json", json.dumps(runtime_env)] if runtime_env else []
    return [RAY, "job", "submit", "--submission-id", submission_id, "--working-dir", ".", *extra, "--",
            "python", "-m", module, *job_args]


@pytest.fixture(scope="module")
def node_copy_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A runtime env whose PYTHONPATH puts a broken hrm_platform (the "node's installed copy") first."""
    shadow = tmp_path_factory.mktemp("node-copy")
    (shadow / "hrm_platform").mkdir()
    (shadow / "hrm_platform" / "__init__.py").write_text(
        'raise ImportError("the hrm_platform installed on this node was imported, not the job\'s own")\n'
    )
    return {"env_vars": {"PYTHONPATH": str(shadow)}}


def _run_job(head: HeadNode, command: list[str], timeout_s: float = 300) -> str:
    """Submit and wait; the job's output, after asserting that it succeeded."""
    completed = subprocess.run(command, cwd=REPO_ROOT, env=head.env, capture_output=True, text=True, timeout=timeout_s)
    output = completed.stdout + completed.stderr
    submission_id = command[command.index("--submission-id") + 1]
    assert completed.returncode == 0 and f"Job '{submission_id}' succeeded" in output, output[-4000:]
    assert "installed on this node was imported" not in output
    return output


@pytest.fixture(scope="module")
def job_run(ray_head: HeadNode, node_copy_env: dict, tmp_path_factory: pytest.TempPathFactory):
    """The smoke preset trained by `ray job submit` once: (submission id, output, storage path)."""
    storage = tmp_path_factory.mktemp("job-runs")
    submission_id = f"hrm-smoke-{uuid.uuid4().hex[:8]}"
    command = _job_command(
        submission_id, "jobs.train", "--config", "jobs/configs/smoke.yaml", f"train.storage_path={storage}",
        "train.name=job-smoke", "--json", runtime_env=node_copy_env,
    )
    return submission_id, _run_job(ray_head, command), storage


def _ray_cli(head: HeadNode, *args: str) -> str:
    completed = subprocess.run([RAY, *args], env=head.env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout + completed.stderr


def _job_status(head: HeadNode, submission_id: str) -> str:
    """SUCCEEDED / FAILED / RUNNING ... as `ray job status` reports it."""
    output = _ray_cli(head, "job", "status", submission_id)
    found = re.search(r"Job '[^']+' (succeeded|failed|stopped)|Status for job '[^']+': (\w+)", output)
    assert found, output
    return (found.group(1) or found.group(2)).upper()


def test_head_node_listens_on_loopback_only(ray_head: HeadNode) -> None:
    addresses = _listening_addresses(ray_head.process_group)
    assert addresses and addresses <= LOOPBACK, addresses


def _job_checkpoint(output: str) -> Path:
    summary = json.loads(re.search(r"^\{$.*?^\}$", output, re.MULTILINE | re.DOTALL).group(0))
    return Path(summary["checkpoint_path"])


def test_ray_job_submit_trains_the_smoke_preset(ray_head: HeadNode, job_run) -> None:
    submission_id, output, storage = job_run
    assert _job_status(ray_head, submission_id) == "SUCCEEDED"

    summary = json.loads(re.search(r"^\{$.*?^\}$", output, re.MULTILINE | re.DOTALL).group(0))
    checkpoint = _job_checkpoint(output)
    assert checkpoint.parent == storage / "job-smoke" and summary["epochs_completed"] == 2
    loaded = load_checkpoint(checkpoint)  # hashes verified
    assert loaded.manifest["epoch"] == summary["metrics"]["epoch"]
    assert loaded.config.train.storage_path == str(storage)
    assert loaded.manifest["git_revision"] is None  # rank 0 ran the shipped copy, not this git checkout


def test_ray_job_submit_exports_a_checkpoint_read_by_uri(ray_head: HeadNode, node_copy_env: dict, job_run, tmp_path):
    # The checkpoint in a "bucket" read through pyarrow's filesystem layer (file:// standing in for s3://).
    bucket = Path(shutil.copytree(_job_checkpoint(job_run[1]), tmp_path / "bucket" / "epoch_0002"))
    command = _job_command(
        f"hrm-export-{uuid.uuid4().hex[:8]}", "jobs.export", "--checkpoint", bucket.as_uri(), "--variants", "eager",
        "export.repeats_batch1=5", "export.repeats_batch32=2", runtime_env=node_copy_env,
    )
    output = _run_job(ray_head, command)
    cache_copy = Path(re.search(r"^export of (\S+) \(model", output, re.MULTILINE).group(1))
    try:
        serving = json.loads((bucket / "serving" / "serving_manifest.json").read_text())  # published beside it
        # Chosen only if a fresh process, started by the job, loaded it: that child ran the job's copy too.
        assert serving["chosen"] == "eager", output[-3000:]
        assert serving["variants"]["eager"]["ready_s"] > 0
        load_checkpoint(bucket)
    finally:
        shutil.rmtree(cache_copy, ignore_errors=True)  # the job's node cache is this machine's ~/.cache


def test_ray_job_submit_evaluates_a_checkpoint(ray_head: HeadNode, node_copy_env: dict, job_run, tmp_path) -> None:
    checkpoint = _job_checkpoint(job_run[1])
    command = _job_command(
        f"hrm-eval-{uuid.uuid4().hex[:8]}", "jobs.evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path),
        "eval.baselines=[]", "eval.bootstrap_resamples=100", "eval.act_comparison=false", runtime_env=node_copy_env,
    )
    output = _run_job(ray_head, command)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model_version"] == load_checkpoint(checkpoint).model_version
    assert 0 < metrics["classification"]["accuracy"] < 1 and sum(metrics["classification"]["support"].values()) > 0
    assert "test accuracy" in output and (tmp_path / "report.md").is_file()


def _training_worker_pids(head: HeadNode) -> list[int]:
    """Ray's state API (`ray list actors`, the CLI of ray.util.state.list_actors): pids of live Train workers.

    The state table can lag behind (actors of a finished run may still read ALIVE), so a pid counts only
    while its process exists and carries Ray's `ray::RayTrainWorker` process title.
    """
    output = _ray_cli(
        head, "list", "actors", "--address", head.dashboard_url, "--detail", "--format", "json",
        "--filter", "class_name=RayTrainWorker", "--filter", "state=ALIVE",
    )
    if "[" not in output:  # nothing listed yet
        return []
    pids = []
    for actor in json.loads(output[output.index("[") :]):
        try:
            title = " ".join(psutil.Process(int(actor["pid"])).cmdline())
        except psutil.Error:
            continue
        if "RayTrainWorker" in title:
            pids.append(int(actor["pid"]))
    return pids


def _registered_epoch(run_dir: Path) -> int:
    """The latest epoch whose checkpoint Ray Train has registered in its run snapshot (0 if none)."""
    try:
        snapshot = (run_dir / "checkpoint_manager_snapshot.json").read_text()
    except FileNotFoundError:
        return 0
    return max((int(epoch) for epoch in re.findall(r"epoch_(\d{4})", snapshot)), default=0)


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_killed_training_worker_recovers_from_its_last_checkpoint(ray_head: HeadNode, tmp_path: Path) -> None:
    epochs, run_dir = 6, tmp_path / "fault"
    log_path = tmp_path / "job.log"
    submission_id = f"hrm-fault-{uuid.uuid4().hex[:8]}"
    # --verbose: the recovery is read off Ray's own log lines (FailurePolicy, the dead worker's pid), which the
    # job forwards only then.
    command = _submit_command(
        submission_id, f"train.storage_path={tmp_path}", "train.name=fault", f"train.epochs={epochs}", "--verbose"
    )
    with log_path.open("w") as log:
        job = subprocess.Popen(
            command, cwd=REPO_ROOT, env=ray_head.env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            # Find a worker while epoch 1 trains (the state API takes seconds); kill it as soon as Ray has
            # registered checkpoint 1 (its run snapshot lists it; the files alone land a moment earlier).
            victim = _wait_for(lambda: _training_worker_pids(ray_head), 240, "a live training worker")[-1]
            finished_before_kill = _wait_for(lambda: _registered_epoch(run_dir), 240, "the first registered checkpoint")
            os.kill(victim, signal.SIGKILL)
            job.wait(timeout=300)
        finally:
            if job.poll() is None:
                job.kill()
    output = log_path.read_text()
    recovery_lines = [
        line for line in output.splitlines()
        if re.search(
            r"FailurePolicy|Source:|Error count|worker died|ActorDiedError|pid: |"
            r"Started training worker group|world_rank=|epoch \d+/",
            line,
        )
    ]
    print(f"killed RayTrainWorker pid {victim} after epoch {finished_before_kill}; recovery log lines:")
    print("\n".join(recovery_lines))

    assert job.returncode == 0 and _job_status(ray_head, submission_id) == "SUCCEEDED", output[-4000:]
    assert finished_before_kill < epochs, "the run finished before the kill; the test proved nothing"
    assert any("FailurePolicy" in line and "RETRY" in line for line in recovery_lines), output[-4000:]
    assert any(f"pid: {victim}" in line for line in recovery_lines), output[-4000:]  # Ray saw our kill
    history = load_manifest(run_dir / f"epoch_{epochs:04d}")["metrics"]["history"]
    assert [entry["epoch"] for entry in history] == list(range(1, epochs + 1))
    resumed = {entry["resumed_after_epoch"] for entry in history}
    assert resumed - {0}, "no epoch was trained by a restarted worker group"
    restart_epoch = max(resumed)
    # The new worker group continued after the last checkpoint that existed when the worker died.
    assert restart_epoch in (finished_before_kill, finished_before_kill + 1)
    assert all(entry["resumed_after_epoch"] == 0 for entry in history[:restart_epoch])
    assert all(ranks[0] == ranks[1] for ranks in (entry["param_fingerprints"] for entry in history))
