"""The lean request path (serve.lean_path): which bodies it takes, and that every answer, good or bad, is byte for
byte what the FastAPI route gives for the same request (the same fake service behind both)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from hrm_platform.config import ServeConfig
from hrm_platform.serving.http import create_api
from hrm_platform.serving.lean_path import BATCH_PATH, PREDICT_PATH, LeanBatchRequest, LeanPredictRequest, decode
from hrm_platform.serving.schemas import MAX_BATCH_REQUESTS, PredictRequest
from tests.unit.serving.test_http import FakeService, real_bars

BARS = real_bars(8)
TOKEN = "s3cret"


def body(**fields) -> bytes:
    return json.dumps({"bars": BARS, **fields}).encode()


TAKEN = {
    "rows": body(),
    "position and budgets": body(position=-0.25, max_segments=2, deadline_ms=3.5),
    "integers as prices": json.dumps({"bars": [[int(v) + 1 for v in row] for row in BARS]}).encode(),
    "null budgets": body(max_segments=None, deadline_ms=None),
}
LEFT_TO_THE_ROUTE = {  # the route parses these exactly as before: the lean path decides nothing about them
    "columns": json.dumps({"bars": {"Open": [r[0] for r in BARS], "high": [r[1] for r in BARS],
                                    "low": [r[2] for r in BARS], "close": [r[3] for r in BARS],
                                    "volume": [r[4] for r in BARS]}}).encode(),
    "a string price": body().replace(str(BARS[2][1]).encode(), f'"{BARS[2][1]}"'.encode(), 1),
    "a boolean volume": json.dumps({"bars": BARS[:7] + [[*BARS[7][:4], True]]}).encode(),
    "a NaN token": body().replace(str(BARS[3][0]).encode(), b"NaN", 1),
    "a number beyond float": body().replace(str(BARS[3][0]).encode(), b"1e400", 1),
    "a short row": json.dumps({"bars": BARS[:7] + [BARS[7][:4]]}).encode(),
    "an unknown field": body(size=3),
    "position out of range": body(position=1.5),
    "position as a string": body(position="0.5"),
    "max_segments 0": body(max_segments=0),
    "max_segments 2.0": body(max_segments=2.0),
    "deadline 0": body(deadline_ms=0),
    "not an object": b"[1, 2]",
    "not JSON": b"{bars: oops",
    "trailing bytes": body() + b" x",
}


@pytest.mark.parametrize("name", TAKEN)
def test_the_lean_path_takes_well_formed_rows(name: str):
    request = decode(PREDICT_PATH, TAKEN[name])
    assert isinstance(request, LeanPredictRequest)
    reference = PredictRequest.model_validate_json(TAKEN[name])  # what the route would have built
    assert (request.bars_array() == reference.bars_array()).all()
    assert (request.position, request.max_segments, request.deadline_ms) == (
        reference.position, reference.max_segments, reference.deadline_ms)


@pytest.mark.parametrize("name", LEFT_TO_THE_ROUTE)
def test_the_lean_path_leaves_everything_else_to_the_route(name: str):
    assert decode(PREDICT_PATH, LEFT_TO_THE_ROUTE[name]) is None


def test_batches_within_the_route_bounds_only():
    one = json.loads(body())
    assert isinstance(decode(BATCH_PATH, json.dumps({"requests": [one, one]}).encode()), LeanBatchRequest)
    assert decode(BATCH_PATH, b'{"requests": []}') is None
    assert decode(BATCH_PATH, json.dumps({"requests": [one] * (MAX_BATCH_REQUESTS + 1)}).encode()) is None


class RecordingService(FakeService):
    """FakeService that also records which request type reached it (which path parsed the body)."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []

    async def predict(self, request, started):
        self.kinds.append(type(request).__name__)
        return await super().predict(request, started)


def clients() -> tuple[TestClient, TestClient, RecordingService, RecordingService]:
    lean, route = RecordingService(), RecordingService()
    settings = {"max_body_bytes": 2048}
    return (TestClient(create_api(lean, ServeConfig(lean_path=True, **settings), auth_token=TOKEN)),
            TestClient(create_api(route, ServeConfig(lean_path=False, **settings), auth_token=TOKEN)), lean, route)


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
BAD_VALUES = {
    "too few bars": json.dumps({"bars": BARS[:3]}).encode(),
    "high below low": json.dumps({"bars": BARS[:5] + [[BARS[5][0], 1.0, 2.0, BARS[5][3], 10.0]] + BARS[6:]}).encode(),
    "negative volume": json.dumps({"bars": BARS[:7] + [[*BARS[7][:4], -1.0]]}).encode(),
    "a price jump": json.dumps({"bars": BARS[:7] + [[BARS[7][0], 1e6, BARS[7][2], BARS[7][3], 1.0]]}).encode(),
    "a bad item in a batch": json.dumps({"requests": [json.loads(body()), {"bars": BARS[:2]}]}).encode(),
}
CASES = [
    *((PREDICT_PATH, name, content, AUTH) for name, content in {**TAKEN, **LEFT_TO_THE_ROUTE}.items()),
    *((PREDICT_PATH, name, content, AUTH) for name, content in BAD_VALUES.items() if "batch" not in name),
    (
        BATCH_PATH,
        "a batch",
        json.dumps({"requests": [json.loads(body()), json.loads(body(position=0.5))]}).encode(),
        AUTH,
    ),
    (BATCH_PATH, "a bad item in a batch", BAD_VALUES["a bad item in a batch"], AUTH),
    (PREDICT_PATH, "no token", body(), {"Content-Type": "application/json"}),
    (PREDICT_PATH, "a form", body(), {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}),
    (PREDICT_PATH, "+json", body(), {**AUTH, "Content-Type": "application/vnd.hrm+json"}),
    (PREDICT_PATH, "too large", json.dumps({"bars": real_bars(60)}).encode(), AUTH),
]


@pytest.mark.parametrize("path, name, content, headers", CASES, ids=[f"{case[0]} {case[1]}" for case in CASES])
def test_every_answer_is_the_routes_byte_for_byte(path: str, name: str, content: bytes, headers: dict):
    lean_client, route_client, _, _ = clients()
    lean, route = lean_client.post(path, content=content, headers=headers), route_client.post(
        path, content=content, headers=headers)
    assert (lean.status_code, lean.content) == (route.status_code, route.content), name
    assert lean.headers.get("content-type") == route.headers.get("content-type")


def test_a_chunked_body_is_answered_by_the_route():
    lean_client, _, lean, _ = clients()
    answer = lean_client.post(PREDICT_PATH, content=iter([body()]), headers=AUTH)  # no Content-Length
    assert answer.status_code == 200 and lean.kinds == ["PredictRequest"]


def test_well_formed_requests_skip_the_route_and_others_reach_it():
    """What makes the path lean: a well-formed body never reaches pydantic's request model (and with
    serve.lean_path=false every body does)."""
    lean_client, route_client, lean, route = clients()
    for content in (TAKEN["rows"], LEFT_TO_THE_ROUTE["columns"]):
        assert lean_client.post(PREDICT_PATH, content=content, headers=AUTH).status_code == 200
        assert route_client.post(PREDICT_PATH, content=content, headers=AUTH).status_code == 200
    assert lean.kinds == ["LeanPredictRequest", "PredictRequest"]
    assert route.kinds == ["PredictRequest", "PredictRequest"]


def test_under_a_route_prefix_too():
    lean = RecordingService()
    api = create_api(lean, ServeConfig(), auth_token=None)
    client = TestClient(api, root_path="/prefix")
    assert client.post("/prefix" + PREDICT_PATH, content=body(), headers=AUTH).status_code == 200
    assert lean.kinds == ["LeanPredictRequest"]


class FailingService(RecordingService):
    async def predict(self, request, started):
        self.kinds.append(type(request).__name__)
        raise RuntimeError("engine exploded")


def test_an_unexpected_error_is_the_routes_500():
    """The lean path runs outside FastAPI's error middleware, so it renders an unexpected error itself."""
    lean, route = FailingService(), FailingService()
    answers = [
        TestClient(create_api(service, ServeConfig(lean_path=lean_path), auth_token=None),
                   raise_server_exceptions=False).post(PREDICT_PATH, content=body(), headers=AUTH)
        for service, lean_path in ((lean, True), (route, False))
    ]
    assert lean.kinds == ["LeanPredictRequest"] and route.kinds == ["PredictRequest"]
    assert answers[0].status_code == answers[1].status_code == 500
    assert answers[0].content == answers[1].content
    assert answers[0].json()["error"] == "internal_error"


def test_our_layers_run_before_fastapis_own():
    """Token, body limit and lean path wrap FastAPI's whole stack: a lean answer skips its middleware."""
    stack, layers = create_api(RecordingService(), ServeConfig(), auth_token=None).build_middleware_stack(), []
    while len(layers) < 4:
        layers.append(type(stack).__name__)
        stack = stack.app
    assert layers == ["BearerToken", "BodyLimit", "LeanPredict", "ServerErrorMiddleware"]
