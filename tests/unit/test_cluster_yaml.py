"""cluster.yaml is checked against the autoscaler's own JSON schema, shipped inside the ray package."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from hrm_platform.ray_compat import validate_cluster_config as validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


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
