"""A multi-node Ray cluster on one machine for the tests, and the drivers that use it.

`ray.cluster_utils.Cluster` starts a head and one raylet per added node, each a Ray node with its own
resources and its own metrics export port, every listener on 127.0.0.1. The pytest process owns the nodes
(adds and removes them) but never connects to that cluster: it may already be the driver of the session's
single-node cluster (tests/conftest.py), and a process is the driver of one cluster at a time. Whatever
needs a driver runs as a short subprocess of this module, which prints one `RESULT <json>` line:

    python -m tests.integration.multinode_helpers train    '{"address": ..., "overrides": [...]}'
    python -m tests.integration.multinode_helpers serve    '{"address": ..., "checkpoint": ..., "overrides": [...]}'
    python -m tests.integration.multinode_helpers snapshot '{"address": ...}'
    python -m tests.integration.multinode_helpers set_memory_limit '{"address": ..., "limit_gb": 0.01}'
    python -m tests.integration.multinode_helpers session  '{"address": ...}'   # commands on stdin (DriverSession)

A training driver's workers run `instrument_training_workers` as their setup hook: each epoch's metrics then
carry `node_ids`, the Ray node of every rank, gathered like `param_fingerprints`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_PREFIX = "RESULT "
COORDINATOR_TICK_ENV = "HRM_TEST_AUTOSCALING_COORDINATOR_TICK_S"
# Every Train run (fixed-size too) registers with Ray Data's autoscaling coordinator, a detached actor made by
# the first run on the cluster, which re-reads the cluster's nodes every 20 s; an elastic run sees a joining
# node only then. Our training drivers' processes set its tick to this.
COORDINATOR_TICK_S = 1.0
METRICS_REPORT_INTERVAL_MS = 1000  # Ray's default is 10 s: the metrics test would wait that long per scrape
# The GCS declares a node dead after `threshold` missed health checks, by default 5 checks 3 s apart (15 s and
# more); 1 s checks keep a lost node's recovery inside a test's time and still give a node of a loaded
# machine 5 s to answer.
NODE_HEALTH_CHECKS = {
    "health_check_period_ms": 1000, "health_check_timeout_ms": 3000, "health_check_failure_threshold": 5,
}
HEAD_NODE_ARGS = {
    "num_cpus": 0,
    "include_dashboard": False,
    "_system_config": {"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS, **NODE_HEALTH_CHECKS},
}


# ---------------------------------------------------------------------------------------------- the cluster


@dataclass
class LocalCluster:
    """A head with no CPUs (nothing of ours runs there, as on a real cluster) and worker nodes added at will."""

    cluster: Any  # ray.cluster_utils.Cluster
    nodes: list[Any] = field(default_factory=list)  # the worker nodes alive, oldest first
    previous_address: str | None = None  # Ray's "current cluster" address before this one started
    proxies: list[psutil.Process] = field(default_factory=list)  # Serve's HAProxy processes seen on its nodes

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, cpus: int = 1) -> Any:
        with _this_process_kv_kept():
            node = self.cluster.add_node(num_cpus=cpus)
        self.nodes.append(node)
        return node

    def remove_node(self, node: Any) -> None:
        self.proxies += _serve_proxies(self.address)  # a killed node's HAProxy is orphaned: stop_cluster ends it
        self.nodes.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def metrics_ports(self) -> dict[str, int]:
        """Node id -> its Prometheus metrics export port (what ray.nodes() calls MetricsExportPort)."""
        return {node.node_id: node.metrics_export_port for node in [self.cluster.head_node, *self.nodes]}

    def actors(self) -> list[dict[str, Any]]:
        """The GCS actor table (ActorClassName, Name, State, Address.NodeID ...), read without a driver."""
        return list(self.cluster.global_state.actor_table(None).values())


def start_cluster() -> LocalCluster:
    from ray.cluster_utils import Cluster

    from hrm_platform.local_ray import LOOPBACK_ENV
    from hrm_platform.ray_compat import set_loopback_cluster_mode

    os.environ.update(LOOPBACK_ENV)  # every node's listeners on 127.0.0.1
    set_loopback_cluster_mode()
    address_file = _ray_address_file()
    previous_address = address_file.read_text() if address_file.is_file() else None
    with _this_process_kv_kept():
        local = LocalCluster(Cluster(initialize_head=True, connect=False, head_node_args=HEAD_NODE_ARGS))
    local.previous_address = previous_address
    return local


def stop_cluster(local: LocalCluster) -> None:
    """Kill every node. Not `Cluster.shutdown()`: it also resets this process's Ray KV client, which belongs to
    the session's cluster when this process is its driver; and Ray's "current cluster" file (`ray status`,
    address="auto") points at the session's cluster again, as before `start_cluster`."""
    proxies = local.proxies + _serve_proxies(local.address)
    for node in list(local.nodes):
        local.remove_node(node)
    local.cluster.remove_node(local.cluster.head_node, allow_graceful=False)
    for proxy in proxies:  # Serve's HAProxy outlives a node killed without grace: it would run on, orphaned
        with suppress(psutil.NoSuchProcess):  # psutil checks the pid was not reused before it kills
            proxy.kill()
    address_file = _ray_address_file()
    if local.previous_address is None:
        address_file.unlink(missing_ok=True)
    else:
        address_file.write_text(local.previous_address)


def _serve_proxies(address: str) -> list[psutil.Process]:
    """The HAProxy processes Serve started on this cluster's nodes: descendants of the raylets whose command line
    names this cluster's GCS address."""
    proxies = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if process.info["name"] == "raylet" and any(address in part for part in process.info["cmdline"] or []):
                proxies += [child for child in process.children(recursive=True) if "haproxy" in child.name()]
    return proxies


@contextmanager
def _this_process_kv_kept() -> Iterator[None]:
    """Starting a node points this process's Ray KV client at that node's cluster; put back the client of the
    cluster this process drives (the session's), or none. Left pointing at ours, the next remote function
    this process defines is exported there, and once the nodes are gone Ray ends the process."""
    from ray.experimental import internal_kv

    client = internal_kv.internal_kv_get_gcs_client()
    try:
        yield
    finally:
        if client is None:
            internal_kv._internal_kv_reset()
        else:
            internal_kv._initialize_internal_kv(client)


def _ray_address_file() -> Path:
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


# ---------------------------------------------------------------------------------------------- drivers


def driver_command(command: str, args: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.integration.multinode_helpers", command, json.dumps(args)]


def driver_env() -> dict[str, str]:
    from hrm_platform.local_ray import LOOPBACK_ENV

    return {**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(REPO_ROOT), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def run_driver(command: str, args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run a driver subprocess to the end; its RESULT line as a dict (its output in the error otherwise)."""
    done = subprocess.run(driver_command(command, args), cwd=REPO_ROOT, env=driver_env(), capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    return parse_result(command, done.returncode, done.stdout, done.stderr)


def start_driver(command: str, args: dict[str, Any]) -> subprocess.Popen:
    """A driver subprocess left running (read it with `finish_driver`)."""
    return subprocess.Popen(driver_command(command, args), cwd=REPO_ROOT, env=driver_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_driver(command: str, process: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=timeout_s)
    return parse_result(command, process.returncode, stdout, stderr)


class DriverSession:
    """One driver subprocess kept connected for many short commands (each new driver costs seconds of
    imports and connecting on a loaded machine): `session.call("snapshot")`."""

    def __init__(self, address: str) -> None:
        self._process = subprocess.Popen(
            driver_command("session", {"address": address}), cwd=REPO_ROOT, env=driver_env(), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put("")  # the driver exited

    def call(self, command: str, timeout_s: float = 120.0, **args: Any) -> dict[str, Any]:
        self._process.stdin.write(json.dumps({"command": command, **args}) + "\n")
        self._process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout_s
        while (line := self._lines.get(timeout=max(0.1, deadline - time.monotonic()))) != "":
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
            output.append(line)
        raise RuntimeError(f"driver session exited during {command!r}:\n{''.join(output)[-6000:]}")

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)


def parse_result(command: str, returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if returncode != 0 or not lines:
        raise RuntimeError(f"driver {command!r} exited {returncode}:\n{stdout[-3000:]}\n{stderr[-6000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _train(args: dict[str, Any]) -> dict[str, Any]:
    """Train on the cluster through the real `run_training`, the workers tagging their node ids."""
    from hrm_platform.config import load_config
    from hrm_platform.training import trainer as trainer_module

    real_build_trainer = trainer_module.build_trainer

    def build_trainer_recording_nodes(*build_args: Any, **build_kwargs: Any) -> Any:
        built = real_build_trainer(*build_args, **build_kwargs)
        if "elastic_resize_interval_s" in args:  # Ray's default 60 s is longer than a smoke run
            built.scaling_config.elastic_resize_monitor_interval_s = args["elastic_resize_interval_s"]
        return built

    trainer_module.build_trainer = build_trainer_recording_nodes
    config = load_config(REPO_ROOT / "jobs" / "configs" / "smoke.yaml", args["overrides"])
    return trainer_module.run_training(config, quiet=True).to_dict(with_history=True)


FIT_MODULE = "hrm_platform.training.fit"
COORDINATOR_MODULE = "ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator"


def instrument_training_workers() -> None:
    """Setup hook of the training driver's worker processes, applied when (and only where) the module it
    changes is imported, so that the job's other processes (Train's controller ...) import nothing more:

    - hrm_platform.training.fit: every epoch's metrics get `node_ids`, the Ray node id of each rank,
      gathered like `param_fingerprints`;
    - Ray Data's autoscaling coordinator, which elastic Train asks what the cluster has room for: it re-reads
      the nodes every COORDINATOR_TICK_ENV seconds instead of every 20 s (a private class attribute, read by
      its tick thread; no setting exposes it in Ray 2.60)."""
    patches = {FIT_MODULE: _record_node_ids}
    if os.environ.get(COORDINATOR_TICK_ENV):
        patches[COORDINATOR_MODULE] = _shorten_coordinator_tick
    sys.meta_path.insert(0, _PatchOnImport(patches))


def _record_node_ids(fit: ModuleType) -> None:
    import ray

    real_train_epoch = fit.train_epoch

    def train_epoch_with_node_ids(run, data, config, collective, *rest, **options):
        metrics = real_train_epoch(run, data, config, collective, *rest, **options)
        metrics["node_ids"] = collective.gather_objects(ray.get_runtime_context().get_node_id())
        return metrics

    fit.train_epoch = train_epoch_with_node_ids


def _shorten_coordinator_tick(coordinator: ModuleType) -> None:
    coordinator._AutoscalingCoordinatorActor.TICK_INTERVAL_S = float(os.environ[COORDINATOR_TICK_ENV])


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs `patches[name](module)` right after submodule `name` is first executed."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self._patches = dict(patches)

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self._patches or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        patch, load = self._patches.pop(name), spec.loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            load(module)
            patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def _serve(args: dict[str, Any]) -> dict[str, Any]:
    from hrm_platform.config import load_config
    from hrm_platform.serving.lifecycle import start_server

    os.environ.update(args.get("env", {}))  # the bearer token start_server hands to the replicas
    serve_config = load_config(REPO_ROOT / "jobs" / "configs" / "smoke.yaml", args["overrides"]).serve
    return {"url": start_server(Path(args["checkpoint"]), serve_config)}


def _snapshot(args: dict[str, Any]) -> dict[str, Any]:
    """The memory guard's snapshot, as /v1/health's guard sees it."""
    import ray

    from hrm_platform.serving.memory_guard import GUARD_NAME, GUARD_NAMESPACE

    return ray.get(ray.get_actor(GUARD_NAME, namespace=GUARD_NAMESPACE).snapshot.remote(), timeout=30)


def _set_memory_limit(args: dict[str, Any]) -> dict[str, Any]:
    """A new memory limit for every replica at once (what an operator's `set_limit_gb` does); the directives."""
    import ray

    from hrm_platform.serving.memory_guard import GUARD_NAME, GUARD_NAMESPACE

    guard = ray.get_actor(GUARD_NAME, namespace=GUARD_NAMESPACE)
    return ray.get(guard.set_limit_gb.remote(args["limit_gb"]), timeout=30)


COMMANDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train": _train, "serve": _serve, "snapshot": _snapshot, "set_memory_limit": _set_memory_limit,
}


def main(argv: list[str]) -> None:
    import logging

    import ray

    from hrm_platform.ray_compat import set_loopback_cluster_mode

    command, args = argv[0], json.loads(argv[1])
    set_loopback_cluster_mode()
    runtime_env = None
    if command == "train":  # the job's workers (Train's among them) import this module and run the hook
        env_vars = {"PYTHONPATH": str(REPO_ROOT), COORDINATOR_TICK_ENV: str(COORDINATOR_TICK_S)}
        hook = f"{__spec__.name}.instrument_training_workers"
        runtime_env = {"env_vars": env_vars, "worker_process_setup_hook": hook}
    ray.init(address=args["address"], runtime_env=runtime_env, log_to_driver=False, logging_level=logging.ERROR)
    if command != "session":
        print(RESULT_PREFIX + json.dumps(COMMANDS[command](args)), flush=True)
        return
    for line in sys.stdin:  # DriverSession: a command per line, a RESULT line per answer
        request = json.loads(line)
        print(RESULT_PREFIX + json.dumps(COMMANDS[request.pop("command")](request)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
