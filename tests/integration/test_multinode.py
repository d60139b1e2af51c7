"""Several Ray nodes on one machine (`ray.cluster_utils.Cluster`, loopback only): DDP across nodes, a node
lost mid-training, elastic training growing onto a new node, and Serve replicas on two nodes with one node
removed under load while Ray's Prometheus endpoints are scraped for our metrics.

The nodes have 1 CPU each and the head none, so each Train worker and each Serve replica (1 CPU) gets a node
of its own. The drivers run as subprocesses (multinode_helpers.py); the tests run in file order on one
module-wide cluster and each first sets the number of worker nodes it needs.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hrm_platform.checkpoint import load_checkpoint, load_manifest
from hrm_platform.config import ConfigError, load_config
from tests.integration.multinode_helpers import (
    DriverSession,
    LocalCluster,
    finish_driver,
    run_driver,
    start_cluster,
    start_driver,
    stop_cluster,
    wait_until,
)
from tests.reliability.harness import (
    CUT_AFTER_STATUS,
    FAIL_FAST_S,
    BackgroundLoad,
    LoadReport,
    free_port,
    make_payloads,
    run_load,
)

pytestmark = pytest.mark.ray

EPOCHS = 3
TRAIN_OVERRIDES = [f"train.epochs={EPOCHS}", "train.max_train_batches=8", "train.keep_checkpoints=4",
                   "train.num_workers=2", "train.tensorboard=false"]
# What a resumed epoch must reproduce exactly (time and resume bookkeeping differ, by design).
EXACT_KEYS = ("epoch", "step", "train_loss", "train_loss_per_segment", "train_accuracy", "val_accuracy",
              "param_fingerprints")
TRAIN_TIMEOUT_S = 240.0
ELASTIC_EPOCHS = 12  # the node joins after epoch 1; Train resizes within seconds, before the run can end
# Longer epochs for the elastic run: Ray Data's autoscaling coordinator (what elastic Train asks for room) may have
# been started by an earlier run, or restarted with a lost node, without the test's short tick; at its default
# 20 s tick the run must still be going when it sees the joined node (in a full suite, 8 short epochs ended first).
ELASTIC_BATCHES = 40


@pytest.fixture(scope="module")
def cluster():
    local = start_cluster()
    yield local
    stop_cluster(local)


def _use_nodes(cluster: LocalCluster, count: int) -> list[Any]:
    """Exactly `count` worker nodes of 1 CPU (the newest removed first)."""
    while len(cluster.nodes) > count:
        cluster.remove_node(cluster.nodes[-1])
    while len(cluster.nodes) < count:
        cluster.add_node()
    return list(cluster.nodes)


def _train(cluster: LocalCluster, storage: Path, name: str) -> dict[str, Any]:
    overrides = [*TRAIN_OVERRIDES, f"train.storage_path={storage}", f"train.name={name}"]
    return run_driver("train", {"address": cluster.address, "overrides": overrides}, TRAIN_TIMEOUT_S)


def _exact(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: entry[key] for key in EXACT_KEYS} for entry in history]


def _verify_checkpoints(run_dir: Path) -> list[str]:
    names = sorted(path.name for path in run_dir.glob("epoch_*"))
    for name in names:
        load_manifest(run_dir / name)  # raises on any hash mismatch
    return names


@pytest.fixture(scope="module")
def undisturbed_run(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """2 workers on 2 nodes, EPOCHS epochs: the node-loss run's reference, the Serve test's model."""
    nodes = _use_nodes(cluster, 2)
    storage = tmp_path_factory.mktemp("multinode-train")
    started = time.monotonic()
    summary = _train(cluster, storage, "ddp")
    print(f"undisturbed 2-node run: {time.monotonic() - started:.1f} s")
    return {"summary": summary, "run_dir": storage / "ddp", "node_ids": {node.node_id for node in nodes}}


def test_ddp_across_two_nodes_keeps_the_ranks_bit_identical_every_epoch(undisturbed_run) -> None:
    summary, history = undisturbed_run["summary"], undisturbed_run["summary"]["history"]
    assert [entry["epoch"] for entry in history] == list(range(1, EPOCHS + 1))
    for entry in history:
        ranks_nodes = entry["node_ids"]
        assert entry["world_size"] == 2 and len(set(ranks_nodes)) == 2, ranks_nodes  # one rank per node
        assert set(ranks_nodes) == undisturbed_run["node_ids"]
        first, second = entry["param_fingerprints"]
        assert first == second, f"epoch {entry['epoch']}: the ranks' weights differ"
    assert len({entry["param_fingerprints"][0] for entry in history}) == EPOCHS  # and the weights moved
    assert all(math.isfinite(entry["train_loss"]) for entry in history)
    kept = _verify_checkpoints(undisturbed_run["run_dir"])
    assert kept == [f"epoch_{epoch:04d}" for epoch in range(1, EPOCHS + 1)]
    print(f"ranks on nodes {[node[:8] for node in history[0]['node_ids']]}, fingerprints per epoch "
          f"{[entry['param_fingerprints'][0] for entry in history]}; final train loss "
          f"{summary['final_metrics']['train_loss']:.4f}")


def _registered(run_dir: Path, epoch: int) -> bool:
    """Ray Train has recorded the epoch's checkpoint (a restart resumes from it), not only stored it."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    return snapshot.is_file() and f'"epoch_{epoch:04d}"' in snapshot.read_text()


def _train_worker_nodes(cluster: LocalCluster) -> set[str]:
    """The nodes of the alive Ray Train workers."""
    return {actor["Address"]["NodeID"] for actor in cluster.actors()
            if actor["State"] == "ALIVE" and "RayTrainWorker" in actor["ActorClassName"]}


def test_a_lost_node_resumes_from_the_last_checkpoint_and_matches_the_undisturbed_run(
    cluster: LocalCluster, undisturbed_run, tmp_path: Path
) -> None:
    nodes = _use_nodes(cluster, 3)  # 2 workers; after the loss the two nodes left still hold them
    run_dir = tmp_path / "node-loss"
    driver = start_driver("train", {"address": cluster.address, "overrides": [
        *TRAIN_OVERRIDES, f"train.storage_path={tmp_path}", "train.name=node-loss"]})
    worker_nodes = wait_until(lambda: _train_worker_nodes(cluster), TRAIN_TIMEOUT_S, "the workers' nodes")
    victim = next(node for node in nodes if node.node_id in worker_nodes)
    wait_until(lambda: _registered(run_dir, epoch=1), TRAIN_TIMEOUT_S, "the first checkpoint", poll_s=0.05)
    removed_at = time.time()
    cluster.remove_node(victim)  # during epoch 2
    done_before = _verify_checkpoints(run_dir)
    summary = finish_driver("train", driver, TRAIN_TIMEOUT_S)

    history = summary["history"]
    resumed_after = history[-1]["resumed_after_epoch"]
    resumed_epoch_start = min(entry["first_step_unix"] for entry in history if entry["resumed_after_epoch"])
    print(f"removed node {victim.node_id[:8]} after checkpoints {done_before}; the run resumed after epoch "
          f"{resumed_after}, its first step {resumed_epoch_start - removed_at:.1f} s after the removal")
    assert [entry["epoch"] for entry in history] == list(range(1, EPOCHS + 1))
    assert 1 <= resumed_after < EPOCHS, "the node loss did not restart the run"
    for entry in history[resumed_after:]:
        assert entry["resumed_after_epoch"] == resumed_after and victim.node_id not in entry["node_ids"]
        assert len(set(entry["node_ids"])) == 2 and entry["world_size"] == 2
    # Resume is bit-exact: every epoch, before and after the loss, equals the undisturbed run's.
    assert _exact(history) == _exact(undisturbed_run["summary"]["history"])
    assert _verify_checkpoints(run_dir) == [f"epoch_{epoch:04d}" for epoch in range(1, EPOCHS + 1)]
    latest = load_checkpoint(Path(summary["latest_checkpoint_path"]), with_training_state=True)
    assert latest.training_state["epoch"] == EPOCHS


def test_num_workers_takes_a_count_or_an_elastic_min_max_range() -> None:
    from hrm_platform.training.trainer import build_trainer

    smoke = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "smoke.yaml"
    elastic = load_config(smoke, ["train.num_workers=[1, 2]"])
    assert elastic.train.worker_range == (1, 2)
    assert build_trainer(elastic).scaling_config.num_workers == (1, 2)  # Ray Train V2's elastic form
    assert build_trainer(load_config(smoke, ["train.num_workers=3"])).scaling_config.num_workers == 3
    for bad in ("[2, 1]", "[0, 2]", "0"):
        with pytest.raises(ConfigError, match=r"train\.num_workers=.* must be a count >= 1, or \[min, max\]"):
            load_config(smoke, [f"train.num_workers={bad}"])


def test_elastic_run_starts_on_one_node_and_grows_when_a_second_joins(cluster: LocalCluster, tmp_path: Path) -> None:
    _use_nodes(cluster, 1)
    run_dir = tmp_path / "elastic"
    driver = start_driver("train", {
        "address": cluster.address, "elastic_resize_interval_s": 1.0,
        "overrides": [*TRAIN_OVERRIDES, f"train.epochs={ELASTIC_EPOCHS}", "train.num_workers=[1, 2]",
                      f"train.max_train_batches={ELASTIC_BATCHES}",
                      f"train.storage_path={tmp_path}", "train.name=elastic"],
    })
    wait_until(lambda: _registered(run_dir, epoch=1), TRAIN_TIMEOUT_S, "the first checkpoint", poll_s=0.05)
    joined_at = time.time()
    joined = cluster.add_node()
    summary = finish_driver("train", driver, TRAIN_TIMEOUT_S)

    history = summary["history"]
    sizes = [entry["world_size"] for entry in history]
    grown = [entry for entry in history if entry["world_size"] == 2]
    print(f"world size per epoch {sizes}; resumed after epochs {[entry['resumed_after_epoch'] for entry in history]}; "
          f"2 workers from {grown[0]['first_step_unix'] - joined_at:.1f} s after the node joined" if grown else sizes)
    assert [entry["epoch"] for entry in history] == list(range(1, ELASTIC_EPOCHS + 1))
    assert sizes[0] == 1 and sizes[-1] == 2 and sizes == sorted(sizes), sizes
    assert all(joined.node_id in entry["node_ids"] and len(set(entry["node_ids"])) == 2 for entry in grown)
    assert all(entry["resumed_after_epoch"] >= 1 for entry in grown)  # the new group continued the checkpoint
    assert all(len(set(entry["param_fingerprints"])) == 1 for entry in history)
    assert f"epoch_{ELASTIC_EPOCHS:04d}" in _verify_checkpoints(run_dir)


# ---------------------------------------------------------------------------------------------- Serve

SERVE_TOKEN_ENV = "HRM_MULTINODE_TEST_TOKEN"
# A node's metrics agent exports every second here, but on 2 cores loaded by a full suite one node's counters
# once took longer than 30 s to appear.
METRICS_TIMEOUT_S = 90.0
STALE_AFTER_S = 3.0  # serve.memory_stale_after_s: how soon the guard forgets a lost replica
LOAD_REQUESTS, CONCURRENCY = 1_000, 16
RECOVERY_WINDOW_S = 10.0  # failures may start only this soon after the node's removal
HRM_METRICS = ("ray_hrm_request_latency_ms_bucket", "ray_hrm_cache_hits_total", "ray_hrm_cache_misses_total",
               "ray_hrm_segments_used_bucket", "ray_hrm_shed_requests_total", "ray_hrm_replica_memory_bytes")
SHED_LIMIT_GB = 0.01  # far below a replica's RSS: every replica sheds
SHED_METRIC = "ray_hrm_shed_requests_total"


def _replicas_by_node(cluster: LocalCluster) -> dict[str, str]:
    """Node id -> the unique id of the alive HRM replica on it (SERVE_REPLICA::hrm#HRMDeployment#<id>)."""
    return {actor["Address"]["NodeID"]: actor["Name"].rsplit("#", 1)[-1] for actor in cluster.actors()
            if actor["State"] == "ALIVE" and actor["ActorClassName"] == "ServeReplica:hrm:HRMDeployment"}


def _shed_briefly(driver: DriverSession, cluster: LocalCluster, replicas: dict[str, str], url: str,
                  payloads: list[dict], headers: dict[str, str]) -> dict[str, int]:
    """Every replica over its memory limit until each has refused requests (its shed counter is exported: a
    counter appears once it counts), then the limit back; the statuses the clients got meanwhile."""
    directives = driver.call("set_memory_limit", limit_gb=SHED_LIMIT_GB)
    assert set(directives.values()) == {"shed"}, directives
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + 30
    while any(name.endswith(SHED_METRIC) for name in _missing_metrics(cluster, replicas)):
        assert time.monotonic() < deadline, f"a replica never shed: {dict(statuses)}"
        statuses.update(run_load(url, payloads, 32, CONCURRENCY, 30.0, headers).status_counts())
        time.sleep(0.5)  # each replica learns its directive at its next memory check (0.2 s)
    driver.call("set_memory_limit", limit_gb=4.0)
    wait_until(lambda: run_load(url, payloads, 32, CONCURRENCY, 30.0, headers).status_counts() == {"200": 32}, 30,
               "the replicas serving again")
    return dict(statuses)


def _guard_snapshot(driver: DriverSession, without: str | None = None) -> dict[str, Any] | None:
    """The memory guard's snapshot (None while it still lists `without`)."""
    snapshot = driver.call("snapshot")
    return None if without in snapshot["replicas"] else snapshot


def _actor_nodes(cluster: LocalCluster, class_name: str) -> set[str]:
    return {actor["Address"]["NodeID"] for actor in cluster.actors()
            if actor["State"] == "ALIVE" and actor["ActorClassName"] == class_name}


def _hrm_metrics(port: int) -> dict[str, set[str]]:
    """The ray_hrm_* metric names a node's Prometheus endpoint exports -> the replica tags they carry."""
    found: dict[str, set[str]] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line.startswith("ray_hrm_"):
            replica = re.search(r'replica="([^"]+)"', line)
            found.setdefault(line.split("{", 1)[0], set()).add(replica.group(1) if replica else "")
    return found


def _missing_metrics(cluster: LocalCluster, replicas: dict[str, str]) -> list[str]:
    """'node/metric' for each of HRM_METRICS a node's endpoint does not (yet) export for its replica."""
    ports = cluster.metrics_ports()
    missing = []
    for node, replica in replicas.items():
        scraped = _hrm_metrics(ports[node])
        missing += [f"{node[:8]}/{name}" for name in HRM_METRICS if replica not in scraped.get(name, ())]
    return missing


def _wait_for_metrics(cluster: LocalCluster, replicas: dict[str, str], timeout_s: float,
                      keep_busy: Callable[[], object]) -> float:
    """Seconds until every node's endpoint exports every hrm_* metric of its replica, calling `keep_busy` between
    scrapes: a counter appears only once it counts, and HAProxy's leastconn may have sent one replica too few
    requests to repeat a body (no cache hit yet)."""
    started, missing = time.monotonic(), []
    while time.monotonic() - started < timeout_s:
        missing = _missing_metrics(cluster, replicas)
        if not missing:
            return time.monotonic() - started
        keep_busy()
        time.sleep(0.5)
    raise AssertionError(f"not exported within {timeout_s} s: {missing}")


@pytest.fixture
def driver(cluster: LocalCluster):
    session = DriverSession(cluster.address)
    yield session
    session.close()


def _start_app(driver: DriverSession, checkpoint: str) -> tuple[str, dict[str, str]]:
    """The app with 2 replicas (1 CPU each: one per worker node) behind the default ingress; (url, headers)."""
    token = "multinode-test-token"
    started = driver.call(
        "serve", TRAIN_TIMEOUT_S, checkpoint=checkpoint, env={SERVE_TOKEN_ENV: token},
        overrides=[f"serve.port={free_port()}", "serve.num_replicas=2", f"serve.auth_token_env={SERVE_TOKEN_ENV}",
                   "serve.memory_check_interval_s=0.2", f"serve.memory_stale_after_s={STALE_AFTER_S}"],
    )
    return started["url"], {"Authorization": f"Bearer {token}"}


def _assert_failures_only_at_the_loss(report: LoadReport, removed_at: float) -> None:
    """Every request got a status (but a response the lost replica was writing as it died, cut after its status
    line); failures started within the recovery window after the removal and each failed fast."""
    failures = report.failures()
    cut = [r for r in failures if r.status == CUT_AFTER_STATUS]
    in_flight = [r for r in cut if r.started_s <= removed_at + 1.0 and r.started_s + r.latency_ms / 1e3 >= removed_at]
    assert in_flight == cut, cut
    assert all(isinstance(r.status, int) for r in failures if r not in cut), failures[:3]
    assert all(r.latency_ms / 1e3 < FAIL_FAST_S for r in failures), failures[:3]
    assert all(-1.0 <= r.started_s - removed_at < RECOVERY_WINDOW_S for r in failures), failures[:3]


def test_serve_on_two_nodes_survives_losing_one_under_load_and_exports_metrics(
    cluster: LocalCluster, undisturbed_run, driver: DriverSession
) -> None:
    nodes = _use_nodes(cluster, 2)
    url, headers = _start_app(driver, undisturbed_run["summary"]["checkpoint_path"])
    replicas = _replicas_by_node(cluster)
    assert set(replicas) == {node.node_id for node in nodes}, replicas  # one replica on each worker node
    bars_needed = httpx.get(url + "/v1/model", headers=headers, timeout=30).json()["bars_needed"]
    payloads = make_payloads(bars_needed, n_distinct=256, seed=3)
    predict = url + "/v1/predict"

    warm_up = run_load(predict, payloads[:16], 300, CONCURRENCY, 30.0, headers)  # each body ~19 times: cache hits
    assert warm_up.status_counts() == {"200": 300}, warm_up.failures()[:3]
    shed = _shed_briefly(driver, cluster, replicas, predict, payloads, headers)
    assert "503" in shed, shed
    snapshot = _guard_snapshot(driver)
    assert set(snapshot["replicas"]) == set(replicas.values()), snapshot  # both nodes' replicas
    def repeat_warm_up_bodies() -> None:
        run_load(predict, payloads[:16], 64, CONCURRENCY, 30.0, headers)

    scraped_after_s = _wait_for_metrics(cluster, replicas, METRICS_TIMEOUT_S, keep_busy=repeat_warm_up_bodies)
    for node, port in cluster.metrics_ports().items():
        if node in replicas:
            print(f"node {node[:8]} port {port} (replica {replicas[node]}): {sorted(_hrm_metrics(port))}, complete "
                  f"{scraped_after_s:.1f} s after the shed requests")

    # The guard lives on the head (connect_memory_guard), so losing a replica's node never loses it.
    assert _actor_nodes(cluster, "MemoryGuard") == {cluster.cluster.head_node.node_id}
    victim = nodes[-1]
    lost, survivor = replicas[victim.node_id], next(r for node, r in replicas.items() if node != victim.node_id)
    load = BackgroundLoad(predict, payloads, LOAD_REQUESTS, concurrency=CONCURRENCY, timeout_s=30.0,
                          headers=headers).start()
    load.wait_for(200, timeout_s=60)
    removed_at = time.monotonic()
    cluster.remove_node(victim)
    report = load.join(timeout_s=120)
    wait_until(lambda: lost not in _replicas_by_node(cluster).values(), 30, "Ray marking the lost replica dead")
    dead_after_s = time.monotonic() - removed_at
    after = run_load(predict, payloads, 300, CONCURRENCY, 30.0, headers)

    failures = report.failures()
    print(f"shed: {shed}; under node loss: {report.summary()}; lost replica {lost} dead after "
          f"{dead_after_s:.1f} s; failures (start after removal s, ms, status) "
          f"{[(round(r.started_s - removed_at, 2), round(r.latency_ms), r.status) for r in failures][:10]}; "
          f"after: {after.summary()}")
    assert len(report.records) == LOAD_REQUESTS
    _assert_failures_only_at_the_loss(report, removed_at)
    assert after.status_counts() == {"200": 300}, after.failures()[:3]
    # The guard forgets the lost replica once it is silent for serve.memory_stale_after_s; the survivor stays.
    forgotten = wait_until(lambda: _guard_snapshot(driver, without=lost), 30, "the guard forgetting the lost replica")
    assert set(forgotten["replicas"]) == {survivor}, forgotten
    assert forgotten["replicas"][survivor]["age_s"] < STALE_AFTER_S
    print(f"guard snapshot before: {sorted(snapshot['replicas'])}, after: {sorted(forgotten['replicas'])}")
