"""The serving app over real HTTP on local Ray: answers equal the bare engine's, the cache, batching,
budgets, health, bad input and auth. Reload and the memory guard: test_serve_reload.py; the CLI client,
the README's curl examples and the binds: test_serve_client.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from hrm_platform.config import DataConfig
from hrm_platform.data.features import LOOKBACK
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from hrm_platform.serving.schemas import MAX_BATCH_REQUESTS
from tests.integration.serving_helpers import assert_same_decision, health, post_together, predict

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_prediction_equals_bare_engine_then_repeat_is_cached(client, engine, market_bars):
    bars = market_bars[0]
    expected = engine.predict_bars([bars], [None])[0]

    first = predict(client, bars, position=0.25)
    assert first.status_code == 200, first.text
    first = first.json()
    assert first["cached"] is False
    assert first["model_version"] == engine.model_version
    assert_same_decision(first, expected, position=0.25)

    again = predict(client, bars, position=0.25).json()
    assert again["cached"] is True
    assert {k: again[k] for k in ("action", "quantity", "probabilities", "segments")} == {
        k: first[k] for k in ("action", "quantity", "probabilities", "segments")
    }

    columns = {name: bars[:, i].tolist() for i, name in enumerate(BAR_COLUMNS)}
    as_columns = client.post("/v1/predict", json={"bars": columns, "position": 0.25}).json()
    assert as_columns["cached"] is True  # the same bars in the other layout are the same request
    assert as_columns["action"] == first["action"]
    mixed_case = dict(zip(("Open", "HIGH", "low", "Close", "VOLUME"), columns.values()))
    as_mixed_case = client.post("/v1/predict", json={"bars": mixed_case, "position": 0.25})
    assert as_mixed_case.status_code == 200, as_mixed_case.text  # column keys match in any case, as in files
    assert as_mixed_case.json()["cached"] is True

    other_position = predict(client, bars, position=-0.5).json()
    assert other_position["cached"] is True  # the decision does not depend on the position: one entry serves all
    assert other_position["trade"] == pytest.approx(expected.target_position + 0.5, abs=1e-5)


def test_a_lone_miss_is_computed_inline_and_concurrent_misses_share_engine_calls(serve_app, client, engine,
                                                                                   market_bars):
    """The two compute paths of a replica: alone, a miss skips the batch queue; a burst is batched. Every answer
    equals the bare engine's either way."""
    import asyncio

    def engine_calls() -> dict[str, int]:
        return health(client)["engine_calls"]

    before = engine_calls()
    alone = predict(client, market_bars[2], position=0.125).json()
    after_alone = engine_calls()
    assert alone["cached"] is False
    assert after_alone["inline"] == before["inline"] + 1 and after_alone["batched"] == before["batched"]

    positions = [0.01 * (i + 1) for i in range(32)]
    # Distinct bars, never requested before: every request is a miss (the position is not part of the key).
    frame = generate_market(1, 2000, seed=6, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()
    bursts = [
        [frame[start : start + engine.bars_needed + 8] for start in range(offset, offset + 32 * 15, 15)]
        for offset in (0, 600, 1200)  # three disjoint bursts
    ]

    def burst(burst_bars: list[np.ndarray]) -> list[dict]:
        bodies = [json.dumps({"bars": bars.tolist(), "position": position}).encode()
                  for bars, position in zip(burst_bars, positions)]
        answers = asyncio.run(post_together(serve_app.url, "/v1/predict", bodies, serve_app.headers))
        assert [status for status, _ in answers] == [200] * len(bodies), answers[:2]
        return [answer for _, answer in answers]

    # The 32 requests are written in one pass (post_together), but on a loaded 2-core machine the client or the
    # ingress can still be descheduled between them. Up to three fresh bursts; batching must show in one of them.
    for burst_bars in bursts:
        start = engine_calls()
        answers = burst(burst_bars)
        after_burst = engine_calls()
        assert all(answer["cached"] is False for answer in answers)
        expected = engine.predict_bars(burst_bars, [None] * len(positions))
        for answer, prediction, position in zip(answers, expected, positions):
            assert_same_decision(answer, prediction, position=position)
        batched_rows = after_burst["batched_rows"] - start["batched_rows"]
        if batched_rows > 1:
            break
    engine_calls_used = after_burst["inline"] - start["inline"] + after_burst["batched"] - start["batched"]
    assert batched_rows > 1 and after_burst["largest_batch"] > 1, after_burst
    assert engine_calls_used < len(positions), after_burst  # concurrent misses shared engine calls


def test_segment_budget_and_deadline(client, engine, market_bars):
    bars = market_bars[1]
    one_segment = predict(client, bars, max_segments=1).json()
    assert one_segment["segments"] == 1
    assert_same_decision(one_segment, engine.predict_bars([bars], [1])[0])

    capped = predict(client, bars, max_segments=engine.max_segments + 5).json()
    assert 1 <= capped["segments"] <= engine.max_segments

    tight = predict(client, bars, deadline_ms=1e-3).json()  # affords one segment at most
    assert tight["segments"] == 1


def test_batch_route_matches_single_requests(client, engine, market_bars):
    bars = market_bars[2:6]
    body = {"requests": [{"bars": b.tolist(), "position": 0.1 * i} for i, b in enumerate(bars)]}
    response = client.post("/v1/predict/batch", json=body)
    assert response.status_code == 200, response.text
    answers = response.json()["responses"]
    expected = engine.predict_bars(bars, [None] * 4)
    assert len(answers) == 4
    for i, (answer, prediction) in enumerate(zip(answers, expected)):
        assert_same_decision(answer, prediction, position=0.1 * i)


def test_health_and_model_describe_the_served_checkpoint(client, engine, serve_app):
    state = health(client)
    assert state["status"] == "ok"
    assert state["model_version"] == engine.model_version
    assert state["memory"]["directive"] == "ok"
    assert state["memory"]["limit_bytes"] == int(serve_app.serve_config.memory_limit_gb * 1024**3)
    assert 0 < state["memory"]["rss_bytes"] < state["memory"]["limit_bytes"]
    model = client.get("/v1/model").json()
    assert model["bars_needed"] == engine.bars_needed
    assert model["checkpoint"] == str(serve_app.checkpoint.resolve())
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]




def _bad_bodies(bars: np.ndarray, max_bars: int) -> list[tuple[str, bytes, str, str]]:
    """(case, raw body, expected field, a word the detail must contain)."""
    rows = bars.tolist()

    def with_value(row: int, column: int, value: float | str) -> bytes:
        text = [list(map(json.dumps, r)) for r in rows]
        text[row][column] = str(value)
        return ('{"bars": [' + ", ".join("[" + ", ".join(r) + "]" for r in text) + "]}").encode()

    def body(**fields) -> bytes:
        return json.dumps(fields).encode()

    unequal = {name: bars[:, i].tolist() for i, name in enumerate(BAR_COLUMNS)}
    unequal["volume"] = unequal["volume"][:-1]
    negative = [r[:] for r in rows]
    negative[7][0] = -negative[7][0]
    crossed = [r[:] for r in rows]
    crossed[9][1], crossed[9][2] = crossed[9][2], crossed[9][1]  # high and low swapped
    jump = [r[:] for r in rows]
    jump[-1] = [jump[-2][3], 1e308, jump[-2][3], 1e308, 1000.0]  # ordered, finite, positive: only implausible
    return [
        ("rows of four values", body(bars=[r[:4] for r in rows]), "bars[0]", "at least 5"),
        ("columns of unequal length", body(bars=unequal), "bars", "equal lengths"),
        ("bars not a list", body(bars="lots"), "bars", "rows"),
        ("too few bars", body(bars=rows[:10]), "bars", "at least"),
        ("too many bars", body(bars=rows * (max_bars // len(rows) + 1)), "bars", "at most"),
        ("NaN", with_value(3, 3, "NaN"), "bars[3]", "non-finite"),
        ("Infinity", with_value(5, 1, "Infinity"), "bars[5]", "non-finite"),
        ("negative price", body(bars=negative), "bars[7]", "non-positive"),
        ("high < low", body(bars=crossed), "bars[9]", "high < low"),
        ("implausible price jump", body(bars=jump), f"bars[{len(rows) - 1}]", "above or below the median close"),
        ("unknown field", body(bars=rows, side="buy"), "side", "unknown field"),
        ("position out of range", body(bars=rows, position=3), "position", "less than or equal"),
        ("a string for a number", with_value(2, 4, '"1000"'), "bars[2][4]", "number"),
        (
            "bad item in a batch",
            body(requests=[{"bars": rows}, {"bars": negative}]),
            "requests[1].bars[7]",
            "non-positive",
        ),
    ]


BAD_CASES = [case[0] for case in _bad_bodies(np.ones((12, 5)), 10)]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gets_json_422_naming_the_field_and_caches_nothing(client, market_bars, serve_app, case):
    cases = {c[0]: c[1:] for c in _bad_bodies(market_bars[3], serve_app.serve_config.max_bars)}
    raw, field, word = cases[case]
    path = "/v1/predict/batch" if case.endswith("batch") else "/v1/predict"
    before = health(client)["cache"]

    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == {"error", "field", "detail"}
    assert (error["error"], error["field"]) == ("invalid_request", field)
    assert word in error["detail"]
    after = health(client)
    assert after["status"] == "ok"
    assert {k: after["cache"][k] for k in ("hits", "misses", "size")} == {
        k: before[k] for k in ("hits", "misses", "size")
    }


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_json_gets_415_naming_application_json(client, market_bars, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"bars": market_bars[5].tolist()}).encode()
    for path, payload in (("/v1/predict", body), ("/v1/predict/batch", b'{"requests": [' + body + b"]}")):
        response = client.post(path, content=payload, headers=headers)
        assert response.status_code == 415, response.text
        assert response.json()["error"] == "unsupported_media_type"
        assert "application/json" in response.json()["detail"]


def test_largest_documented_batch_of_real_bars_is_answered(client, serve_app, engine):
    """256 requests of the default model's bars_needed bars, 6 significant digits like real quotes: over
    serve.max_body_bytes, within serve.max_batch_body_bytes. Each answer equals the bare engine's."""
    bars_each = max(DataConfig().window + LOOKBACK, engine.bars_needed)
    frame = generate_market(1, bars_each + MAX_BATCH_REQUESTS, seed=8, horizon=4).bars["SYN00"]
    values = np.vectorize(lambda value: float(f"{value:.6g}"))(frame[list(BAR_COLUMNS)].to_numpy())
    windows = [values[start : start + bars_each] for start in range(MAX_BATCH_REQUESTS)]
    body = json.dumps({"requests": [{"bars": window.tolist()} for window in windows]}).encode()
    assert serve_app.serve_config.max_body_bytes < len(body) <= serve_app.serve_config.max_batch_body_bytes

    response = client.post("/v1/predict/batch", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 200, response.text[:300]
    answers = response.json()["responses"]
    expected = engine.predict_bars(windows, [None] * len(windows))
    assert len(answers) == MAX_BATCH_REQUESTS
    for answer, prediction in zip(answers, expected):
        assert_same_decision(answer, prediction)


def test_docs_render_offline_from_the_apps_own_assets(serve_app):
    """/docs and /redoc reference only URLs this server answers (no CDN), without a token."""
    with httpx.Client(base_url=serve_app.url, timeout=30.0) as anonymous:
        for page in ("/docs", "/redoc"):
            html = anonymous.get(page)
            assert html.status_code == 200, html.text
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
            assert len(urls) >= 2, html.text
            for url in urls:
                assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from off the host"
                asset = anonymous.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
        operations = [op for item in anonymous.get("/openapi.json").json()["paths"].values() for op in item.values()]
        assert all(op.get("summary") and op.get("description") for op in operations)


def test_body_limits_and_malformed_json_are_refused_before_parsing(client, serve_app):
    limit = serve_app.serve_config.max_body_bytes
    declared = client.post(
        "/v1/predict", content=b"[" + b"1," * limit + b"1]", headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413
    assert declared.json()["error"] == "body_too_large"

    def stream():  # chunked: no Content-Length, so only the streamed byte count can catch it
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = client.post("/v1/predict", content=stream(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert streamed.json()["error"] == "body_too_large"

    malformed = client.post("/v1/predict", content=b'{"bars": [[1, 2', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "invalid_json"
    assert health(client)["status"] == "ok"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic abc"])
def test_every_inference_route_needs_the_token(serve_app, market_bars, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    body = {"bars": market_bars[4].tolist()}
    with httpx.Client(base_url=serve_app.url, headers=headers, timeout=30.0) as anonymous:
        responses = [
            anonymous.post("/v1/predict", json=body),
            anonymous.post("/v1/predict/batch", json={"requests": [body]}),
            anonymous.get("/v1/model"),
        ]
        for response in responses:
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        assert anonymous.get("/v1/health").status_code == 200  # probes need no token
