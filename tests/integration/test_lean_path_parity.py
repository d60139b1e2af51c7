"""The lean request path changes no answer: 1,000 requests replayed through the session's app (serve.lean_path, the
default) and through a side app with serve.lean_path=false (the FastAPI + pydantic route) get the same decisions
and probabilities, to the last digit, and bad requests get the same errors."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from tests.integration.serving_helpers import health, side_app

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REQUESTS = 1000
ROUTE_APP, ROUTE_PREFIX = "hrm_route_path", "/route-path"
ANSWER_FIELDS = ("action", "quantity", "confidence", "probabilities", "segments", "target_position", "trade")


def request_bodies(bars_needed: int, count: int, seed: int = 11) -> list[bytes]:
    """`count` bodies of distinct windows (so the cache answers none of them) with random positions and, for one in
    four, a segment budget."""
    values = generate_market(1, count + bars_needed, seed=seed, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()
    rng = np.random.default_rng(seed)
    bodies = []
    for index in range(count):
        fields = {"bars": values[index : index + bars_needed].round(6).tolist(),
                  "position": round(float(rng.uniform(-1, 1)), 6)}
        if index % 4 == 0:
            fields["max_segments"] = int(rng.integers(1, 4))
        bodies.append(json.dumps(fields).encode())
    return bodies


@pytest.fixture(scope="module")
def route_path_client(serve_app):
    with side_app(serve_app, ROUTE_APP, ROUTE_PREFIX, lean_path=False) as url:
        with httpx.Client(base_url=url, headers=serve_app.headers, timeout=30.0) as client:
            yield client


def replay(client: httpx.Client, bodies: list[bytes]) -> list[dict]:
    answers = []
    for content in bodies:
        response = client.post("/v1/predict", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def test_a_thousand_requests_get_the_same_answers_on_both_paths(client, route_path_client, engine):
    bodies = request_bodies(engine.bars_needed, REQUESTS)
    lean_before = health(client)["engine_calls"]
    lean, route = replay(client, bodies), replay(route_path_client, bodies)
    mismatches = [index for index, (a, b) in enumerate(zip(lean, route))
                  if {k: a[k] for k in ANSWER_FIELDS} != {k: b[k] for k in ANSWER_FIELDS}]
    assert mismatches == [], f"{len(mismatches)} of {REQUESTS} differ, first {mismatches[:5]}"
    assert not any(answer["cached"] for answer in lean + route)  # every answer was computed
    assert len({answer["action"] for answer in lean}) > 1  # the replay is not one answer repeated
    lean_after = health(client)["engine_calls"]
    assert lean_after["inline"] - lean_before["inline"] >= REQUESTS  # alone in the replica: run at once


BAD = {
    "a NaN token": b'{"bars": [[1, 2, 0.5, 1.5, NaN]]}',
    "a string price": b'{"bars": [[1, "2", 0.5, 1.5, 10]]}',
    "too few bars": b'{"bars": [[1, 2, 0.5, 1.5, 10]]}',
    "position out of range": b'{"bars": [[1, 2, 0.5, 1.5, 10]], "position": 3}',
    "not JSON": b'{"bars": ',
}


@pytest.mark.parametrize("name", BAD)
def test_bad_requests_get_the_same_errors_on_both_paths(client, route_path_client, name: str):
    headers = {"Content-Type": "application/json"}
    lean = client.post("/v1/predict", content=BAD[name], headers=headers)
    route = route_path_client.post("/v1/predict", content=BAD[name], headers=headers)
    assert lean.status_code in (400, 422)
    assert (lean.status_code, lean.json()) == (route.status_code, route.json())
