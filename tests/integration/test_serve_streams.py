"""Streams over real HTTP on the session's app: every stream decision equals /v1/predict on the same window and
the bare engine's; an unknown stream is a 409 naming bars_needed; the Python client re-seeds a lost stream."""

from __future__ import annotations

import numpy as np
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from hrm_platform.serving.client import StreamClient
from tests.integration.serving_helpers import assert_same_decision, health, predict

pytestmark = pytest.mark.ray
STEPS = 120  # bars appended per stream
DECISION_FIELDS = ("action", "quantity", "confidence", "probabilities", "segments", "model_version", "target_position",
                   "trade")


@pytest.fixture(scope="module")
def series() -> dict[str, np.ndarray]:
    """Two instruments of a synthetic market: (bars_needed + STEPS + some, 5) float64 each."""
    market = generate_market(2, 400, seed=11, horizon=4)
    return {symbol: frame[list(BAR_COLUMNS)].to_numpy() for symbol, frame in market.bars.items()}


def decision(answer: dict) -> dict:
    return {name: answer[name] for name in DECISION_FIELDS}


def test_every_stream_decision_equals_predict_on_the_same_window(client, engine, series):
    needed = engine.bars_needed
    settings = {"SYN00": {"position": 0.5}, "SYN01": {"position": -0.25, "max_segments": 1}}
    for symbol, bars in series.items():
        created = client.put(f"/v1/streams/{symbol}", json={"bars": bars[: needed + 10].tolist(), **settings[symbol]})
        assert created.status_code == 200, created.text
    for step in range(STEPS):
        end = needed + 10 + step + 1  # the stream now holds bars[:end]
        for symbol, bars in series.items():
            answer = client.post(f"/v1/streams/{symbol}/bars", json={"bars": bars[end - 1 : end].tolist()})
            assert answer.status_code == 200, answer.text
            assert answer.json()["bars_seen"] == end
            stateless = predict(client, bars[end - needed : end], **settings[symbol])
            assert decision(answer.json()) == decision(stateless.json()), (symbol, step)
            if step % 4 == 0:  # and the bare engine's answer on that window, budget included
                expected = engine.predict_bars([bars[end - needed : end]], [settings[symbol].get("max_segments")])[0]
                assert_same_decision(answer.json(), expected, position=settings[symbol]["position"])
    streams = health(client)["streams"]
    assert streams["count"] >= 2 and streams["bytes"] > 2 * needed * 5 * 8


def test_bars_appended_together_equal_bars_appended_one_by_one(client, engine, series):
    bars, needed = series["SYN00"], engine.bars_needed
    client.put("/v1/streams/together", json={"bars": bars[:needed].tolist()})
    answer = client.post("/v1/streams/together/bars", json={"bars": bars[needed : needed + 7].tolist()}).json()
    assert answer["bars_seen"] == needed + 7
    assert decision(answer) == decision(predict(client, bars[7 : needed + 7]).json())


def test_an_unknown_stream_is_a_409_naming_bars_needed(client, engine, series):
    response = client.post("/v1/streams/never-created/bars", json={"bars": series["SYN00"][:1].tolist()})
    assert response.status_code == 409
    assert response.json()["error"] == "stream_unknown" and response.json()["bars_needed"] == engine.bars_needed


def test_the_client_reseeds_a_lost_stream(client, engine, series):
    bars, needed = series["SYN01"], engine.bars_needed
    stream = StreamClient(client, "reseeded", position=0.0)
    stream.open(bars[:needed])
    for end in range(needed + 1, needed + 30):
        if end in (needed + 10, needed + 20):
            assert client.delete("/v1/streams/reseeded").json()["deleted"]  # the server loses the stream
        answer = stream.push(bars[end - 1 : end])
        assert decision(answer) == decision(predict(client, bars[end - needed : end]).json()), end
    assert stream.reseeds == 2
    assert stream.close()


def test_hrm_replay_positions_equal_the_engine_on_every_window(serve_app, engine, tmp_path):
    """`hrm replay` on a two-symbol CSV: a position per bar equal to the bare engine's on the window ending there,
    and the backtest's PnL of those positions."""
    import os
    import subprocess
    import sys

    import pandas as pd

    from hrm_platform.evaluation.backtest import run_strategy

    market = generate_market(2, engine.bars_needed + 40, seed=13, horizon=4)
    csv, out = tmp_path / "bars.csv", tmp_path / "replay.csv"
    pd.concat([frame.assign(symbol=symbol) for symbol, frame in market.bars.items()]).to_csv(csv)
    command = [sys.executable, "-m", "hrm_platform.cli", "replay", "--url", serve_app.url, "--bars", str(csv),
               "--out", str(out), "--cost-bps", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HRM_API_TOKEN": serve_app.token})
    assert done.returncode == 0, done.stderr
    assert "SYN00: 41 decisions" in done.stdout and "SYN01: 41 decisions" in done.stdout
    table = pd.read_csv(out)
    for symbol, frame in market.bars.items():
        rows = table[table["symbol"] == symbol]
        values = frame[list(BAR_COLUMNS)].to_numpy()
        ends = range(engine.bars_needed, len(values) + 1)  # the window values[end - bars_needed : end]
        expected = engine.predict_bars([values[end - engine.bars_needed : end] for end in ends])
        np.testing.assert_allclose(rows["position"], [p.target_position for p in expected], atol=1e-5)
        backtest = run_strategy(rows["position"].to_numpy()[:-1], rows["asset_return"].to_numpy()[:-1], cost_bps=2.0)
        np.testing.assert_allclose(rows["net_return"].to_numpy()[:-1], backtest.returns, atol=1e-12)
