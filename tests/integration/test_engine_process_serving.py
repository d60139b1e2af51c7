"""serve.engine_process=true on a live app: the child loads in the background, /v1/health says when it is
ready, concurrent misses are batched and answered exactly as the bare engine answers them, and the replica's
memory reading includes the child."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from tests.integration.serving_helpers import assert_same_decision, health, post_together, side_app

pytestmark = pytest.mark.ray
APP, ROUTE = "hrm-engine-process", "/engine-process"
MIB = 2**20


def _wait_until_ready(http: httpx.Client, timeout_s: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = health(http)
        if state["engine_process"] == "ready":
            return state
        assert state["engine_process"] == "loading", state["engine_process"]
        time.sleep(0.5)
    raise AssertionError("the engine process never became ready")


def test_batches_run_in_the_engine_process_with_the_engines_answers(serve_app, client, engine):
    assert health(client)["engine_process"] is None  # off by default
    frame = generate_market(1, 2000, seed=8, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()
    with side_app(serve_app, APP, ROUTE, engine_process=True) as url:
        with httpx.Client(base_url=url, headers=serve_app.headers, timeout=30.0) as http:
            state = _wait_until_ready(http)
            assert state["memory"]["rss_bytes"] > health(client)["memory"]["rss_bytes"] + 100 * MIB  # the child's
            for offset in (0, 600, 1200):  # fresh bars each burst: every request is a miss
                bars = [frame[start : start + engine.bars_needed] for start in range(offset, offset + 32 * 15, 15)]
                positions = [0.01 * (index + 1) for index in range(len(bars))]
                bodies = [json.dumps({"bars": window.tolist(), "position": position}).encode()
                          for window, position in zip(bars, positions)]
                before = health(http)["engine_calls"]
                answers = asyncio.run(post_together(url, "/v1/predict", bodies, serve_app.headers))
                after = health(http)["engine_calls"]
                assert [status for status, _ in answers] == [200] * len(bodies), answers[:2]
                for (_, answer), prediction, position in zip(answers, engine.predict_bars(bars), positions):
                    assert_same_decision(answer, prediction, position=position)
                if after["batched_rows"] - before["batched_rows"] > 1:
                    break
            assert after["batched_rows"] - before["batched_rows"] > 1, after  # batches were formed (and sent)
            assert health(http)["engine_process"] == "ready"
