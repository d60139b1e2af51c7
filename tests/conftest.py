"""Shared fixtures. Unit tests need none of Ray; integration tests share one local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hrm_platform.config import PlatformConfig, load_config
from hrm_platform.local_ray import init_local_ray

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_PRESET = REPO_ROOT / "jobs" / "configs" / "smoke.yaml"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped on a machine without CUDA (CI's), and run wherever torch sees a GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
    init_local_ray(num_cpus=4, log_to_driver=False)
    yield ray.get_runtime_context()
    ray.shutdown()


# ---- serving (appended by the serving app owner; imports here to leave the file's head untouched)
from dataclasses import dataclass  # noqa: E402

from hrm_platform.config import ServeConfig  # noqa: E402

SERVE_TOKEN_ENV = "HRM_TEST_API_TOKEN"  # the serving tests' bearer token lives here, not in HRM_API_TOKEN


@dataclass(frozen=True)
class ServedApp:
    """The serving app running on the session's Ray cluster (see `serve_app`)."""

    url: str
    checkpoint: Path
    serve_config: ServeConfig
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def serve_app(ray_cluster, trained_checkpoint: Path):
    """The HTTP app on Ray Serve for the whole session: smoke checkpoint, a bearer token, a free port (never
    8000), the default (HAProxy) ingress, memory checks every 0.2 s. Tests that change it (limits, model) restore it."""
    import secrets

    from hrm_platform.serving.ingress import free_port
    from hrm_platform.serving.lifecycle import start_server

    token = secrets.token_hex(16)
    os.environ[SERVE_TOKEN_ENV] = token  # start_server hands it to the replicas
    overrides = [
        f"serve.port={free_port()}", "serve.memory_check_interval_s=0.2", f"serve.auth_token_env={SERVE_TOKEN_ENV}"
    ]
    serve_config = load_config(SMOKE_PRESET, overrides).serve
    url = start_server(trained_checkpoint, serve_config)
    yield ServedApp(url, trained_checkpoint, serve_config, token)
    # Serve, HAProxy and the memory guard go with the session's cluster (ray_cluster's ray.shutdown); a
    # serve.shutdown() here would wait ~30 s for Serve's controller with the HAProxy ingress.
    os.environ.pop(SERVE_TOKEN_ENV, None)


# ---- model.arch variants (issue 15): one small trained and exported checkpoint per arch, shared by the export
# and HTTP tests
ARCH_SETTINGS = {
    "hrm": ["model.arch=hrm"],
    "trm": ["model.arch=trm", "model.gradient=last_cycle", "model.halting=bce"],
    "transformer": ["model.arch=transformer"],
}


@pytest.fixture(scope="session")
def exported_arch_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> a smoke checkpoint of that arch, exported with eager, jit_int8 and compiled (quick timing)."""
    from hrm_platform.serving.export import ExportSettings, export_engine
    from hrm_platform.training.local import train_local

    root = tmp_path_factory.mktemp("archs")
    quick = ExportSettings(repeats_batch1=5, repeats_batch32=2, measure_ready=False)
    checkpoints = {}
    for arch, overrides in ARCH_SETTINGS.items():
        checkpoint = train_local(load_config(SMOKE_PRESET, overrides), root / arch)
        export_engine(checkpoint, variants=("eager", "jit_int8", "compiled"), settings=quick)
        checkpoints[arch] = checkpoint
    return checkpoints
