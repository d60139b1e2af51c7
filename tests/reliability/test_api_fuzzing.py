"""Hostile input over real HTTP: no 5xx, every error is JSON naming the problem, and the server stays healthy.

Two sources of input:
- schemathesis (4.x) generates requests from the app's own OpenAPI schema, both valid ones (positive
  mode) and ones that break the schema (negative mode), for every operation. Examples are bounded so the
  whole run takes about a minute on 2 cores; anomalies are collected, not raised, so hypothesis does not
  spend the budget shrinking.
- hand-written bodies that a schema cannot describe: not JSON, NaN/Infinity tokens, deep nesting,
  overflowing numbers, numbers as strings, too many bars, a wrong content type.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from tests.reliability.harness import make_bars

pytestmark = pytest.mark.ray

EXAMPLES_PER_OPERATION = {"POST": 150, "PUT": 100, "GET": 10, "DELETE": 10}  # per generation mode; ~20 s in all
# on 2 shared cores for the predict routes, ~15 s more for the stream routes (PUT, POST bars, GET, DELETE)


@dataclass
class FuzzLog:
    statuses: Counter = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)

    def record(self, label: str, status: int, body: bytes, content_type: str) -> None:
        self.statuses[f"{label} {status}"] += 1
        if status >= 500:
            self.anomalies.append(f"{label}: {status} {body[:300]!r}")
        elif status >= 400 and not _is_json_error(body, content_type):
            self.anomalies.append(f"{label}: {status} error body is not a JSON error: {content_type} {body[:300]!r}")


def _is_json_error(body: bytes, content_type: str) -> bool:
    if "application/json" not in content_type:
        return False
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and "error" in payload and "detail" in payload


def _fuzz_operation(operation, mode, app_under_test, log: FuzzLog) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    label = f"{operation.method.upper()} {operation.path} {mode.value}"

    @settings(
        max_examples=EXAMPLES_PER_OPERATION[operation.method.upper()],
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run: a failure here reproduces
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case) -> None:
        headers = {**(case.headers or {}), **app_under_test.headers}
        response = case.call(base_url=app_under_test.url, headers=headers, timeout=30)
        content_type = response.headers.get("content-type", [""])[0]  # lower-case keys, list values
        log.record(label, response.status_code, response.content, content_type)

    try:
        send()
    except Unsatisfiable:
        # Negative mode has nothing to break on an operation with no parameters and no body (GET /v1/health).
        assert mode.value == "negative", f"{label}: schemathesis could not generate a single example"


def test_schema_driven_fuzzing_gets_no_5xx_and_only_json_errors(app_under_test) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(app_under_test.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {(operation.method.upper(), operation.path) for operation in operations}
    inference_routes = {("POST", "/v1/predict"), ("POST", "/v1/predict/batch")}
    assert inference_routes <= paths, f"schema lacks the inference routes: {paths}"

    log = FuzzLog()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, app_under_test, log)

    print("fuzzing statuses:", dict(sorted(log.statuses.items())))
    assert not log.anomalies, "\n".join(log.anomalies[:20])
    assert app_under_test.get("/v1/health").json()["status"] == "ok"


# ---------------------------------------------------------------------------------------------- hand-written


def _valid_rows(app_under_test) -> list[list[float]]:
    return make_bars(app_under_test.bars_needed, seed=11)


def _with_raw_token(rows: list[list[float]], raw: str, row: int = 1, column: int = 3) -> bytes:
    """The JSON of {"bars": rows} with bars[row][column] replaced by `raw`, written as it is (NaN, 1e999...)."""
    marked = [list(bar) for bar in rows]
    marked[row][column] = "__RAW__"
    return json.dumps({"bars": marked}).replace('"__RAW__"', raw).encode()


def _hostile_bodies(app_under_test) -> dict[str, tuple[bytes, str, int, str | None]]:
    """name -> (raw body, content type, expected status, field the error must name or None)."""
    rows = _valid_rows(app_under_test)
    text = json.dumps({"bars": rows}).encode()
    too_many = [[100.0, 101.0, 99.0, 100.0, 1000.0]] * (app_under_test.serve_config.max_bars + 1)
    return {
        "not_json": (b'{"bars": [[1, 2, 3', "application/json", 400, None),
        "empty_body": (b"", "application/json", 422, None),
        "top_level_array": (b"[]", "application/json", 422, None),
        "nan_token": (_with_raw_token(rows, "NaN"), "application/json", 422, "bars[1]"),
        "infinity_token": (_with_raw_token(rows, "-Infinity"), "application/json", 422, "bars[1]"),
        "overflowing_number": (_with_raw_token(rows, "1e999"), "application/json", 422, "bars[1]"),
        "huge_integer_position": (
            json.dumps({"bars": rows, "position": 10**400}).encode(), "application/json", 422, "position"),
        "number_as_string": (_with_raw_token(rows, '"100.5"'), "application/json", 422, "bars[1][3]"),
        "deeply_nested": (b'{"bars": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", 400, None),
        "too_many_bars": (json.dumps({"bars": too_many}).encode(), "application/json", 422, "bars"),
        "too_few_bars": (json.dumps({"bars": rows[:3]}).encode(), "application/json", 422, "bars"),
        "unknown_field": (json.dumps({"bars": rows, "leverage": 100}).encode(), "application/json", 422, "leverage"),
        "null_bars": (b'{"bars": null}', "application/json", 422, "bars"),
        "wrong_content_type": (text, "text/plain", 415, None),
        "invalid_utf8": (b'{"bars": "\xff\xfe"}', "application/json", 400, None),
    }


HOSTILE_NAMES = [
    "not_json", "empty_body", "top_level_array", "nan_token", "infinity_token", "overflowing_number",
    "huge_integer_position", "number_as_string", "deeply_nested", "too_many_bars", "too_few_bars",
    "unknown_field", "null_bars", "wrong_content_type", "invalid_utf8",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_body_gets_a_json_4xx_and_the_server_stays_healthy(name: str, app_under_test) -> None:
    body, content_type, expected_status, expected_field = _hostile_bodies(app_under_test)[name]

    response = app_under_test.post("/v1/predict", content=body, headers={"Content-Type": content_type})

    assert response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
    assert 400 <= response.status_code < 500, f"{name}: accepted with {response.status_code}: {response.text[:300]}"
    assert _is_json_error(response.content, response.headers.get("content-type", "")), response.text[:300]
    if expected_field is not None:
        assert response.json()["field"] is not None and response.json()["field"].startswith(expected_field), (
            f"{name}: error names {response.json()['field']!r}, expected {expected_field!r}: {response.text[:300]}"
        )
    assert response.status_code == expected_status, f"{name}: {response.status_code} {response.text[:300]}"
    assert app_under_test.get("/v1/health").json()["status"] == "ok"


def test_bad_item_in_a_batch_is_named_by_index(app_under_test) -> None:
    rows = _valid_rows(app_under_test)
    bad = [row[:] for row in rows]
    bad[5][1] = bad[5][2] * 0.5  # high < low
    response = app_under_test.post("/v1/predict/batch", json={"requests": [{"bars": rows}, {"bars": bad}]})
    assert response.status_code == 422, response.text
    assert response.json()["field"].startswith("requests[1].bars[5]"), response.text


def test_valid_request_after_the_hostile_ones_is_answered(app_under_test) -> None:
    response = app_under_test.post("/v1/predict", json={"bars": _valid_rows(app_under_test)})
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == app_under_test.model_version


def test_connection_dropped_mid_body_leaves_the_server_serving(app_under_test) -> None:
    """A client that announces a body and disconnects half-way must not wedge a worker."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(app_under_test.url)
    for _ in range(8):
        with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
            connection.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {app_under_test.token}\r\nContent-Length: 10000\r\n\r\n".encode()
                + b'{"bars": [[1, 2,'
            )
    response = httpx.post(app_under_test.url + "/v1/predict", json={"bars": _valid_rows(app_under_test)},
                          headers=app_under_test.headers, timeout=10)
    assert response.status_code == 200, response.text
