"""The HTTP layer without Ray: request models, bar checks, error JSON, token and body limit (a fake service)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hrm_platform.config import ServeConfig
from hrm_platform.serving.http import create_api
from hrm_platform.serving.schemas import (
    BatchResponse,
    InvalidRequest,
    PredictRequest,
    PredictResponse,
    check_bars,
    field_name,
)

BARS = [[100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 1000.0] for i in range(6)]  # (6, 5) valid rows


class FakeService:
    """Answers with the number of bars it was given; checks bars like the deployment (bars_needed=4)."""

    def __init__(self) -> None:
        self.calls = 0

    async def predict(self, request: PredictRequest, started: float) -> PredictResponse:
        bars = request.bars_array()
        check_bars(bars, bars_needed=4, max_bars=50)
        self.calls += 1
        return PredictResponse(action="hold", quantity=0.0, confidence=float(len(bars)), probabilities={},
                               segments=1, cached=False, model_version="fake", latency_ms=0.0,
                               target_position=0.0, trade=-request.position)

    async def predict_batch(self, batch, started: float) -> BatchResponse:
        return BatchResponse(responses=[await self.predict(r, started) for r in batch.requests])

    async def health(self):
        raise NotImplementedError

    def model_summary(self):
        raise NotImplementedError


@pytest.fixture
def service() -> FakeService:
    return FakeService()


def client_for(service: FakeService, token: str | None = None, max_body_bytes: int = 4096) -> TestClient:
    return TestClient(create_api(service, ServeConfig(max_body_bytes=max_body_bytes), auth_token=token))


def test_rows_and_columns_are_the_same_bars():
    rows = PredictRequest.model_validate({"bars": BARS}).bars_array()
    columns = {name: [row[i] for row in BARS] for i, name in enumerate(("open", "high", "low", "close", "volume"))}
    assert np.array_equal(PredictRequest.model_validate({"bars": columns}).bars_array(), rows)
    assert rows.shape == (6, 5)


def test_check_bars_bounds_and_values():
    bars = np.asarray(BARS)
    check_bars(bars, bars_needed=6, max_bars=6)  # exactly at both bounds: accepted
    with pytest.raises(InvalidRequest, match="needs at least 7") as too_few:
        check_bars(bars, bars_needed=7, max_bars=10)
    assert too_few.value.field == "bars"
    with pytest.raises(InvalidRequest, match="at most 5"):
        check_bars(bars, bars_needed=1, max_bars=5)
    bars[4, 3] = np.inf
    with pytest.raises(InvalidRequest, match="non-finite value in close") as bad_value:
        check_bars(bars, bars_needed=1, max_bars=10, field="requests[2].bars")
    assert bad_value.value.field == "requests[2].bars[4]"


@pytest.mark.parametrize(
    ("location", "name"),
    [(("body", "bars", "rows", 3, 4), "bars[3][4]"), (("body", "bars", "columns", "close"), "bars.close"),
     (("body", "requests", 1, "position"), "requests[1].position"), (("body", "rows"), "rows"), (("body",), None)],
)
def test_field_names_read_like_the_json(location, name):
    assert field_name(location) == name


def test_nan_token_in_json_is_a_422_naming_the_bar(service):
    bars = [row[:] for row in BARS]
    bars[3][2] = 12345.678  # a marker, replaced by the NaN token Python's json reads
    body = json.dumps({"bars": bars}).replace("12345.678", "NaN")
    response = client_for(service).post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"error": "invalid_request", "field": "bars[3]",
                               "detail": "bar 3 (0 = oldest): non-finite value in low"}
    assert service.calls == 0


def test_token_is_checked_before_the_body_is_read(service):
    client = client_for(service, token="s3cret")
    unauthenticated = client.post("/v1/predict", content=b"not even json")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"] == "unauthorized"
    ok = client.post("/v1/predict", json={"bars": BARS, "position": 0.5}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert ok.json()["trade"] == -0.5


def test_body_limit_by_header_and_by_stream(service):
    client = client_for(service, max_body_bytes=1024)
    big = json.dumps({"bars": BARS * 20}).encode()  # > 1 KiB
    assert client.post("/v1/predict", content=big).json()["error"] == "body_too_large"
    streamed = client.post("/v1/predict", content=iter([big[:600], big[600:]]))  # chunked, no Content-Length
    assert streamed.status_code == 413
    assert service.calls == 0


def test_deployment_options_follow_the_serve_config():
    from hrm_platform.serving.app import deployment_options

    fixed = deployment_options(ServeConfig(num_replicas=2, max_ongoing_requests=64, max_batch_size=32, replica_cpus=0.5))
    assert (fixed["num_replicas"], fixed["max_ongoing_requests"], fixed["ray_actor_options"]) == (2, 64, {"num_cpus": 0.5, "num_gpus": 0.0})
    assert "autoscaling_config" not in fixed

    auto = deployment_options(ServeConfig(num_replicas="auto", min_replicas=1, max_replicas=3, max_batch_size=16))
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 16}

    with pytest.raises(ValueError, match="max_ongoing_requests=8 is below serve.max_batch_size=32"):
        deployment_options(ServeConfig(max_ongoing_requests=8, max_batch_size=32))


@pytest.mark.parametrize("config_name", ["serve_config.yaml", "serve_config.gpu.yaml"])
def test_serve_config_yaml_is_a_valid_loopback_config_for_our_builder(config_name: str):
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from deployments.hrm_app import app_builder
    from hrm_platform.serving.app import AppArgs
    from hrm_platform.serving.replica import DEPLOYMENT_NAME, ReloadConfig

    path = Path(__file__).resolve().parents[3] / "deployments" / config_name
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert config.http_options.host == "127.0.0.1"
    (application,) = config.applications
    assert application.import_path == f"deployments.hrm_app:{app_builder.__name__}"
    args = AppArgs.model_validate(application.args)  # what Serve hands the builder
    (deployment,) = application.deployments
    assert deployment.name == DEPLOYMENT_NAME
    assert ReloadConfig.model_validate(deployment.user_config).checkpoint == args.checkpoint
