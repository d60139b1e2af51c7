"""The HTTP layer without Ray: request models, bar checks, error JSON, token and body limit (a fake service)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from hrm_platform.config import DataConfig, ServeConfig
from hrm_platform.data.features import LOOKBACK
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from hrm_platform.serving.http import BYTES_PER_BAR, batch_description, create_api
from hrm_platform.serving.schemas import (
    MAX_BATCH_REQUESTS,
    BatchResponse,
    InvalidRequest,
    PredictRequest,
    PredictResponse,
    check_bars,
    field_name,
)

BARS = [[100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 1000.0] for i in range(6)]  # (6, 5) valid rows
DEFAULT_BARS_NEEDED = DataConfig().window + LOOKBACK  # 112: what the default model needs per request
RATIO = ServeConfig().max_price_ratio


class FakeService:
    """Answers with the number of bars it was given; checks bars like the deployment (bars_needed=4)."""

    def __init__(self) -> None:
        self.calls = 0

    async def predict(self, request: PredictRequest, started: float) -> PredictResponse:
        bars = request.bars_array()
        check_bars(bars, bars_needed=4, max_bars=ServeConfig().max_bars, max_price_ratio=RATIO)
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


def real_bars(count: int) -> list[list[float]]:
    """`count` bars of a synthetic market, each value to 6 significant digits as real quotes are written."""
    values = generate_market(1, max(count, 200), seed=3, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()
    return [[float(f"{value:.6g}") for value in row] for row in values[:count]]


def test_rows_and_columns_are_the_same_bars():
    rows = PredictRequest.model_validate({"bars": BARS}).bars_array()
    columns = {name: [row[i] for row in BARS] for i, name in enumerate(("open", "high", "low", "close", "volume"))}
    assert np.array_equal(PredictRequest.model_validate({"bars": columns}).bars_array(), rows)
    assert rows.shape == (6, 5)


def test_check_bars_bounds_and_values():
    bars = np.asarray(BARS)
    check_bars(bars, bars_needed=6, max_bars=6, max_price_ratio=RATIO)  # exactly at both bounds: accepted
    with pytest.raises(InvalidRequest, match="needs at least 7") as too_few:
        check_bars(bars, bars_needed=7, max_bars=10, max_price_ratio=RATIO)
    assert too_few.value.field == "bars"
    with pytest.raises(InvalidRequest, match="at most 5"):
        check_bars(bars, bars_needed=1, max_bars=5, max_price_ratio=RATIO)
    bars[4, 3] = np.inf
    with pytest.raises(InvalidRequest, match="non-finite value in close") as bad_value:
        check_bars(bars, bars_needed=1, max_bars=10, max_price_ratio=RATIO, field="requests[2].bars")
    assert bad_value.value.field == "requests[2].bars[4]"


# ------------------------------------------------------------------------- issue 20.9: the HTTP API's edges


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_json_gets_415_naming_application_json(service, content_type):
    """Was 422 'Input should be a valid dictionary' with field null (curl -d without -H sends a form type)."""
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"bars": BARS}).encode()
    client = client_for(service)
    for path, payload in (("/v1/predict", body), ("/v1/predict/batch", b'{"requests": [' + body + b"]}")):
        response = client.post(path, content=payload, headers=headers)
        assert response.status_code == 415, response.text
        error = response.json()
        assert (error["error"], error["field"]) == ("unsupported_media_type", "Content-Type")
        assert "application/json" in error["detail"]
    assert service.calls == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.hrm+json"])
def test_json_and_plus_json_bodies_are_accepted(service, content_type):
    body = json.dumps({"bars": BARS}).encode()
    response = client_for(service).post("/v1/predict", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def test_an_implausible_price_jump_is_a_422_naming_the_bar(service):
    """Was 200 with a normal decision: a last bar of 1e308 after prices near 100."""
    bars = real_bars(DEFAULT_BARS_NEEDED)
    bars[-1] = [bars[-2][3], 1e308, bars[-2][3] * 0.99, 1e308, 1000.0]  # valid OHLC ordering, finite, positive
    response = client_for(service, max_body_bytes=100_000).post("/v1/predict", json={"bars": bars})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == f"bars[{DEFAULT_BARS_NEEDED - 1}]"
    assert f"more than {RATIO:g}x above or below the median close" in error["detail"]
    assert service.calls == 0


@pytest.mark.parametrize(("factor", "refused"), [(RATIO * 1.01, True), (1 / (RATIO * 1.01), True),
                                                 (RATIO * 0.99, False), (1 / (RATIO * 0.99), False)])
def test_price_jump_rule_is_a_ratio_to_the_median_close(factor, refused):
    bars = np.asarray(BARS * 5)  # (30, 5), closes 100.5 .. 105.5: median close 103.0
    median_close = float(np.median(bars[:, 3]))
    bars[17, :4] = np.asarray([1.0, 1.0, 1.0, 1.0]) * median_close * factor  # open = high = low = close
    if not refused:
        check_bars(bars, bars_needed=1, max_bars=50, max_price_ratio=RATIO)
        return
    with pytest.raises(InvalidRequest, match="implausible jump") as jump:
        check_bars(bars, bars_needed=1, max_bars=50, max_price_ratio=RATIO)
    assert jump.value.field == "bars[17]"


def batch_body(bars_each: int) -> bytes:
    """MAX_BATCH_REQUESTS distinct requests of `bars_each` real bars (windows one bar apart), as JSON."""
    rows = real_bars(bars_each + MAX_BATCH_REQUESTS)
    requests = [{"bars": rows[i : i + bars_each], "position": 0.0} for i in range(MAX_BATCH_REQUESTS)]
    return json.dumps({"requests": requests}).encode()


def test_the_documented_bars_per_batch_request_fit_the_batch_body_limit():
    serve = ServeConfig()
    bars_each = serve.max_batch_body_bytes // (MAX_BATCH_REQUESTS * BYTES_PER_BAR)
    assert bars_each >= 2 * DEFAULT_BARS_NEEDED
    assert f"{MAX_BATCH_REQUESTS} requests of about {bars_each} bars each" in batch_description(serve)
    assert len(batch_body(bars_each)) <= serve.max_batch_body_bytes


def test_largest_documented_batch_of_real_bars_fits_the_body_limits(service):
    """Was 413: 256 requests of the default model's 112 bars are ~1.3 MB, over the 1 MB body limit."""
    serve = ServeConfig()  # the shipped limits
    body = batch_body(DEFAULT_BARS_NEEDED)
    assert serve.max_body_bytes < len(body) <= serve.max_batch_body_bytes

    client = TestClient(create_api(service, serve, auth_token=None))
    response = client.post("/v1/predict/batch", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["responses"]) == MAX_BATCH_REQUESTS

    single = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert single.status_code == 413  # /v1/predict keeps its own, smaller limit
    assert "serve.max_body_bytes" in single.json()["detail"]
    over = client.post("/v1/predict/batch", content=b" " * (serve.max_batch_body_bytes + 1),
                       headers={"Content-Type": "application/json"})
    assert over.status_code == 413 and "serve.max_batch_body_bytes" in over.json()["detail"]


def test_the_batch_body_limit_may_not_be_below_the_single_request_limit():
    with pytest.raises(ValidationError, match="serve.max_batch_body_bytes=10000 is below serve.max_body_bytes"):
        ServeConfig(max_body_bytes=20_000, max_batch_body_bytes=10_000)


def test_column_keys_match_in_any_case(service):
    """Was 422 'unknown field bars.Open': files read headers in any case, HTTP did not."""
    lower = {name: [row[i] for row in BARS] for i, name in enumerate(BAR_COLUMNS)}
    mixed = {"Open": lower["open"], "HIGH": lower["high"], "low": lower["low"], "Close": lower["close"],
             "VOLUME": lower["volume"]}
    assert np.array_equal(PredictRequest.model_validate({"bars": mixed}).bars_array(), np.asarray(BARS))

    client = client_for(service)
    answer = client.post("/v1/predict", json={"bars": mixed})
    assert answer.status_code == 200, answer.text
    assert answer.json()["confidence"] == len(BARS)  # the fake answers with the number of bars it got

    twice = client.post("/v1/predict", json={"bars": {**mixed, "open": lower["open"]}})
    assert twice.status_code == 422
    assert twice.json()["field"] == "bars" and "'open' is given twice" in twice.json()["detail"]
    unknown = client.post("/v1/predict", json={"bars": {**mixed, "Adj Close": lower["close"]}})
    assert unknown.json()["field"] == "bars.Adj Close"  # named as the client wrote it
    bad_value = client.post("/v1/predict", json={"bars": {**mixed, "Close": ["1"] * len(BARS)}})
    assert bad_value.json()["field"] == "bars.close[0]"


def test_docs_load_every_asset_from_the_app_itself(service):
    """Was Swagger UI from cdn.jsdelivr.net: /docs rendered nothing offline."""
    client = client_for(service, token="s3cret")  # the docs need no token
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        urls += re.findall(r"""(?:url|spec-url)[:=]\s*["']([^"']+)["']""", html.text)  # the OpenAPI document
        assert len(urls) >= 3, html.text
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from off the host"
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 0, url


def test_every_operation_has_a_summary_a_description_and_an_example(service):
    spec = client_for(service).get("/openapi.json").json()
    operations = [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len(operations) == 8  # predict, batch, health, model; the stream's PUT, POST bars, GET, DELETE
    for method, path, operation in operations:
        assert operation.get("summary") and len(operation.get("description", "")) > 80, (method, path)
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        if method in ("post", "put"):
            assert body.get("examples"), (method, path)
            assert "415" in operation["responses"]
        else:
            reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            assert spec["components"]["schemas"][reference.rsplit("/", 1)[-1]].get("examples"), (method, path)
    description = spec["paths"]["/v1/predict"]["post"]["description"]
    assert "median close" in description and "serve.max_price_ratio" in description


def test_request_examples_are_answered(service):
    """The OpenAPI request examples are real requests ("Try it out" on /docs gets a 200)."""
    spec = client_for(service).get("/openapi.json").json()
    client = client_for(service, max_body_bytes=ServeConfig().max_body_bytes)
    for path in ("/v1/predict", "/v1/predict/batch"):
        examples = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        for name, example in examples.items():
            response = client.post(path, json=example["value"])
            assert response.status_code == 200, (path, name, response.text[:300])


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

    fixed = deployment_options(
        ServeConfig(num_replicas=2, max_ongoing_requests=64, max_batch_size=32, replica_cpus=0.5)
    )
    assert (fixed["num_replicas"], fixed["max_ongoing_requests"], fixed["ray_actor_options"]) == (
        2, 64, {"num_cpus": 0.5, "num_gpus": 0.0}
    )
    assert "autoscaling_config" not in fixed

    auto = deployment_options(ServeConfig(num_replicas="auto", min_replicas=1, max_replicas=3, max_batch_size=16))
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 16}

    with pytest.raises(ValueError, match="max_ongoing_requests=8 is below serve.max_batch_size=32"):
        deployment_options(ServeConfig(max_ongoing_requests=8, max_batch_size=32))


@pytest.mark.parametrize("settings, expected", [
    ({}, {"enable_access_log": False, "log_level": "WARNING"}),  # no access-log record built per request
    ({"access_log": True}, {"enable_access_log": True, "log_level": "INFO"}),  # its lines are INFO records
    ({"access_log": True, "log_level": "DEBUG"}, {"enable_access_log": True, "log_level": "DEBUG"}),
    ({"log_level": "INFO"}, {"enable_access_log": False, "log_level": "INFO"}),
])
def test_serves_logging_follows_the_serve_config(settings: dict, expected: dict):
    from hrm_platform.serving.app import deployment_options

    assert deployment_options(ServeConfig(**settings))["logging_config"] == expected


@pytest.mark.parametrize("config_name", ["serve_config.yaml", "serve_config.gpu.yaml"])
def test_serve_config_yaml_is_a_valid_loopback_config_for_our_builder(config_name: str):
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from hrm_platform.serving.app import BUILDER_IMPORT_PATH, AppArgs
    from hrm_platform.serving.replica import DEPLOYMENT_NAME, ReloadConfig

    path = Path(__file__).resolve().parents[3] / "deployments" / config_name
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert config.http_options.host == "127.0.0.1"
    (application,) = config.applications
    assert application.import_path == BUILDER_IMPORT_PATH  # in the installed package: deploys on any cluster
    args = AppArgs.model_validate(application.args)  # what Serve hands the builder
    (deployment,) = application.deployments
    assert deployment.name == DEPLOYMENT_NAME
    assert ReloadConfig.model_validate(deployment.user_config).checkpoint == args.checkpoint
