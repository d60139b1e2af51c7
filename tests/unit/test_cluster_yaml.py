"""cluster.yaml is checked against the autoscaler's own JSON schema, shipped inside the ray package, and with the
job preset and the Serve configs for one storage story."""

from __future__ import annotations

import copy
import importlib
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from hrm_platform.config import load_config
from hrm_platform.ray_compat import validate_cluster_config as validate_config
from hrm_platform.storage import is_uri

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"


@pytest.fixture
def cluster() -> dict:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    # `ray up` fills this default before validating; the schema check itself needs it present.
    config.setdefault("cluster_synced_files", [])
    return config


def test_cluster_yaml_matches_ray_autoscaler_schema(cluster: dict) -> None:
    validate_config(cluster)


def test_schema_check_really_rejects_a_bad_field(cluster: dict) -> None:
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["worker.gpu"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_head_cpu_and_gpu_workers(cluster: dict) -> None:
    node_types = cluster["available_node_types"]
    head = node_types[cluster["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert any(node["resources"].get("GPU", 0) >= 1 for node in node_types.values())


def test_nothing_exposed_beyond_the_cluster_network(cluster: dict) -> None:
    assert cluster["provider"]["use_internal_ips"] is True
    ranges = [
        ip_range["CidrIp"]
        for permission in cluster["provider"]["security_group"]["IpPermissions"]
        for ip_range in permission["IpRanges"]
    ]
    assert ranges and "0.0.0.0/0" not in ranges
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_setup_installs_the_project(cluster: dict) -> None:
    assert any("make setup" in command for command in cluster["setup_commands"])


# ---- one storage story: runs to a bucket URI, export and serving read the checkpoint by that URI


def _header(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


def test_runs_go_to_a_bucket_and_serving_reads_the_checkpoint_by_its_uri(cluster: dict) -> None:
    gpu_preset = REPO_ROOT / "jobs" / "configs" / "gpu.yaml"
    storage = re.search(r"train\.storage_path=(\S+)", _header(gpu_preset)).group(1)
    assert is_uri(storage) and storage.startswith("s3://")
    assert f"train.storage_path={storage}" in _header(CLUSTER_YAML)  # the launcher's commands say the same
    run = f"{storage}/{load_config(gpu_preset).train.name}/epoch_"  # where jobs.train puts its checkpoints

    serve_config = yaml.safe_load((REPO_ROOT / "deployments" / "serve_config.gpu.yaml").read_text())
    (application,) = serve_config["applications"]
    served = application["args"]["checkpoint"]
    assert served.startswith(run) and application["deployments"][0]["user_config"]["checkpoint"] == served
    assert re.search(rf"jobs\.export --checkpoint {re.escape(run)}\d{{4}}", _header(CLUSTER_YAML))


def test_no_file_assumes_a_shared_mount_the_cluster_does_not_set_up(cluster: dict) -> None:
    assert "file_mounts" not in cluster or all("shared" not in target for target in cluster["file_mounts"])
    for path in [CLUSTER_YAML, REPO_ROOT / "jobs" / "configs" / "gpu.yaml", *REPO_ROOT.glob("deployments/*.yaml")]:
        assert "/shared" not in path.read_text(), path


def test_gpu_workers_may_reach_the_bucket(cluster: dict) -> None:
    # Ray's default instance profile (with S3 access) goes to the head alone; the workers read and write the
    # bucket (checkpoints, export, replicas) through their own.
    for node_type in cluster["available_node_types"].values():
        if node_type["resources"].get("GPU", 0):
            assert "IamInstanceProfile" in node_type["node_config"]


@pytest.mark.parametrize("config_name", ["serve_config.yaml", "serve_config.gpu.yaml"])
def test_serve_configs_name_a_builder_the_installed_package_holds(config_name: str) -> None:
    # A cluster's processes import it wherever they started; `deployments.*` exists only in a checkout.
    config = yaml.safe_load((REPO_ROOT / "deployments" / config_name).read_text())
    (application,) = config["applications"]
    module, _, attribute = application["import_path"].partition(":")
    assert module.split(".")[0] == "hrm_platform"
    assert callable(getattr(importlib.import_module(module), attribute))
