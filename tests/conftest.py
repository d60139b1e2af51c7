"""Shared fixtures. Unit tests need none of Ray; integration tests share one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hrm_platform.config import PlatformConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_PRESET = REPO_ROOT / "jobs" / "configs" / "smoke.yaml"


@pytest.fixture
def smoke_config() -> PlatformConfig:
    """A fresh copy per test: tests may change fields freely."""
    return load_config(SMOKE_PRESET)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint directory from a short in-process training run on the smoke preset."""
    from hrm_platform.training.local import train_local

    return train_local(load_config(SMOKE_PRESET), tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (never attaches to another cluster on the machine)."""
    import ray

    # Ray Train paces report() by this interval (2 s by default): keep tests quick.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    context = ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield context
    ray.shutdown()
