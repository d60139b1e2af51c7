"""The serving app over real HTTP on local Ray: answers equal the bare engine's, the cache, bad input, auth,
hot reload under load, the memory guard, the CLI client and the README's curl examples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(serve_app):
    with httpx.Client(base_url=serve_app.url, headers=serve_app.headers, timeout=30.0) as http:
        yield http


@pytest.fixture(scope="module")
def engine(serve_app):
    from hrm_platform.serving.engine import InferenceEngine

    return InferenceEngine.from_checkpoint(serve_app.checkpoint)


@pytest.fixture(scope="module")
def market_bars(engine) -> list[np.ndarray]:
    """Real synthetic-market bars: 40 distinct requests of bars_needed + 8 bars each, (N, 5) float64."""
    frame = generate_market(1, 600, seed=5, horizon=4).bars["SYN00"]
    values = frame[list(BAR_COLUMNS)].to_numpy()
    length = engine.bars_needed + 8
    return [values[start : start + length] for start in range(0, 40 * 10, 10)]


def predict(client: httpx.Client, bars: np.ndarray, **fields) -> httpx.Response:
    return client.post("/v1/predict", json={"bars": bars.tolist(), **fields})


def health(client: httpx.Client) -> dict:
    response = client.get("/v1/health")
    assert response.status_code == 200
    return response.json()


def assert_same_decision(answer: dict, prediction, position: float = 0.0, tolerance: float = 1e-5) -> None:
    assert answer["action"] == prediction.action
    assert answer["segments"] == prediction.segments
    assert answer["quantity"] == pytest.approx(prediction.quantity, abs=tolerance)
    assert answer["confidence"] == pytest.approx(prediction.confidence, abs=tolerance)
    for name, probability in prediction.probabilities.items():
        assert answer["probabilities"][name] == pytest.approx(probability, abs=tolerance)
    assert answer["target_position"] == pytest.approx(prediction.target_position, abs=tolerance)
    assert answer["trade"] == pytest.approx(prediction.target_position - position, abs=tolerance)


# ------------------------------------------------------------------------------------------- answers


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
    frame = generate_market(1, 600, seed=6, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()
    burst_bars = [frame[start : start + engine.bars_needed] for start in range(0, 32 * 15, 15)]

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=serve_app.url, headers=serve_app.headers, timeout=60.0) as http:
            responses = await asyncio.gather(*(
                http.post("/v1/predict", json={"bars": bars.tolist(), "position": position})
                for bars, position in zip(burst_bars, positions)
            ))
        return [response.json() for response in responses]

    answers = asyncio.run(burst())
    after_burst = engine_calls()
    assert all(answer["cached"] is False for answer in answers)
    batched_rows = after_burst["batched_rows"] - after_alone["batched_rows"]
    engine_calls_used = after_burst["inline"] - after_alone["inline"] + after_burst["batched"] - after_alone["batched"]
    assert batched_rows > 1 and after_burst["largest_batch"] > 1, after_burst
    assert engine_calls_used < len(positions), after_burst  # concurrent misses shared engine calls
    expected = engine.predict_bars(burst_bars, [None] * len(positions))
    for answer, prediction, position in zip(answers, expected, positions):
        assert_same_decision(answer, prediction, position=position)


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


# ----------------------------------------------------------------------------------------- bad input


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
        ("unknown field", body(bars=rows, side="buy"), "side", "unknown field"),
        ("position out of range", body(bars=rows, position=3), "position", "less than or equal"),
        ("a string for a number", with_value(2, 4, '"1000"'), "bars[2][4]", "number"),
        ("bad item in a batch", body(requests=[{"bars": rows}, {"bars": negative}]), "requests[1].bars[7]", "non-positive"),
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
    assert {k: after["cache"][k] for k in ("hits", "misses", "size")} == {k: before[k] for k in ("hits", "misses", "size")}


def test_body_limits_and_malformed_json_are_refused_before_parsing(client, serve_app):
    limit = serve_app.serve_config.max_body_bytes
    declared = client.post("/v1/predict", content=b"[" + b"1," * limit + b"1]", headers={"Content-Type": "application/json"})
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


# -------------------------------------------------------------------------------------------- reload


@pytest.fixture(scope="module")
def second_checkpoint(smoke_config_module, tmp_path_factory) -> Path:
    from hrm_platform.training.local import train_local

    smoke_config_module.train.seed = 1
    return train_local(smoke_config_module, tmp_path_factory.mktemp("second"))


@pytest.fixture(scope="module")
def smoke_config_module():
    from hrm_platform.config import load_config

    return load_config(REPO_ROOT / "jobs" / "configs" / "smoke.yaml")


class LoadRecorder:
    """Threads sending requests until stopped; each record: (sent, received, status, version, cached, payload)."""

    def __init__(self, url: str, headers: dict[str, str], payloads: list[list], threads: int = 6) -> None:
        self.records: list[tuple[float, float, int, str | None, bool | None, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url, headers, payloads, seed)) for seed in range(threads)]

    def _run(self, url: str, headers: dict[str, str], payloads: list[list], seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as http:
            while not self._stop.is_set():
                index = int(rng.integers(len(payloads)))
                sent = time.monotonic()
                try:
                    response = http.post("/v1/predict", json={"bars": payloads[index]})
                    status, body = response.status_code, response.json()
                except httpx.HTTPError:
                    status, body = -1, {}
                with self._lock:
                    self.records.append((sent, time.monotonic(), status, body.get("model_version"), body.get("cached"), index))

    def __enter__(self) -> LoadRecorder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _wait_for_version(client: httpx.Client, version: str, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/v1/model").json()["model_version"] == version:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"model {version} not served after {timeout_s} s")


def test_reload_under_load_fails_nothing_and_serves_nothing_stale(client, serve_app, engine, market_bars, second_checkpoint):
    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.lifecycle import reload_checkpoint

    new_engine = InferenceEngine.from_checkpoint(second_checkpoint)
    old_version, new_version = engine.model_version, new_engine.model_version
    assert old_version != new_version
    payloads = [bars.tolist() for bars in market_bars[:6]]  # few distinct bars: most answers come from the cache
    try:
        with LoadRecorder(serve_app.url, serve_app.headers, payloads) as load:
            time.sleep(1.0)
            reload_checkpoint(second_checkpoint)
            swapped_at = _wait_for_version(client, new_version)
            time.sleep(1.5)
        records = load.records
        assert len(records) > 50
        assert [r for r in records if r[2] != 200] == []  # no failed request during the swap
        assert {r[3] for r in records} == {old_version, new_version}
        first_new = min(r[1] for r in records if r[3] == new_version)
        stale = [r for r in records if r[0] > max(first_new, swapped_at) and r[3] != new_version]
        assert stale == []
        # After the swap every payload's answer is the new model's own, never the old model's cached one.
        for index, bars in enumerate(market_bars[:6]):
            answer = predict(client, bars).json()
            assert answer["model_version"] == new_version
            assert_same_decision(answer, new_engine.predict_bars([bars], [None])[0])
        assert health(client)["reload_error"] is None
    finally:
        reload_checkpoint(serve_app.checkpoint)
        _wait_for_version(client, old_version)


def test_reload_to_a_broken_checkpoint_keeps_the_old_model(client, serve_app, engine, market_bars, tmp_path):
    from hrm_platform.checkpoint import CheckpointError
    from hrm_platform.serving.lifecycle import reload_checkpoint

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in serve_app.checkpoint.iterdir():
        if item.is_file():
            (broken / item.name).write_bytes(item.read_bytes())
    weights = bytearray((broken / "model.pt").read_bytes())
    weights[-100] ^= 0xFF  # one flipped byte: the sha256 in the manifest no longer matches
    (broken / "model.pt").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="model.pt"):
        reload_checkpoint(broken)  # refused before the deployment's config changes
    try:
        reload_checkpoint(broken, verify=False)  # as `serve deploy` would: the replica must refuse it itself
        deadline = time.monotonic() + 30
        while health(client)["reload_error"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        state = health(client)
        assert "model.pt" in state["reload_error"]
        assert state["model_version"] == engine.model_version
        assert predict(client, market_bars[5]).json()["model_version"] == engine.model_version
    finally:
        reload_checkpoint(serve_app.checkpoint)  # a rollback to what is served: nothing to load, error cleared
    deadline = time.monotonic() + 30
    while health(client)["reload_error"] is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(client)["reload_error"] is None


# ---------------------------------------------------------------------------------------- memory guard


def _wait_for_memory(client: httpx.Client, condition, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = health(client)
        if condition(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"memory state never matched; last: {state['status']} {state['memory']}")


def test_memory_guard_cleans_up_then_sheds_then_recovers(client, serve_app, market_bars):
    import ray

    from hrm_platform.serving.memory_guard import GIB, GUARD_NAME, GUARD_NAMESPACE

    guard = ray.get_actor(GUARD_NAME, namespace=GUARD_NAMESPACE)
    soft_fraction = serve_app.serve_config.memory_soft_fraction
    assert predict(client, market_bars[6]).status_code == 200
    state = health(client)
    assert state["cache"]["size"] >= 1
    rss = state["memory"]["rss_bytes"]
    try:
        # Soft threshold below current use, hard limit above it: clean up (cache emptied), keep serving.
        ray.get(guard.set_limit_gb.remote(rss * 1.1 / GIB, soft_fraction))
        state = _wait_for_memory(client, lambda s: s["memory"]["cleanups"] >= 1)
        assert state["cache"]["size"] == 0
        assert predict(client, market_bars[7]).status_code == 200

        # Hard limit below current use: shed with 503 + Retry-After.
        ray.get(guard.set_limit_gb.remote(rss * 0.5 / GIB, soft_fraction))
        state = _wait_for_memory(client, lambda s: s["status"] == "shedding")
        shed = predict(client, market_bars[7])
        assert shed.status_code == 503
        assert shed.json()["error"] == "overloaded"
        assert int(shed.headers["Retry-After"]) >= 1
        batch = client.post("/v1/predict/batch", json={"requests": [{"bars": market_bars[7].tolist()}]})
        assert batch.status_code == 503

        # Limit raised again: served.
        ray.get(guard.set_limit_gb.remote(serve_app.serve_config.memory_limit_gb, soft_fraction))
        _wait_for_memory(client, lambda s: s["status"] == "ok")
        assert predict(client, market_bars[7]).status_code == 200
    finally:
        ray.get(guard.set_limit_gb.remote(serve_app.serve_config.memory_limit_gb, soft_fraction))


# ----------------------------------------------------------------------------------- client, docs, binds


def test_hrm_predict_cli_prints_one_decision_per_symbol(serve_app, tmp_path):
    market = generate_market(2, 300, seed=9, horizon=4)
    frames = [frame.assign(symbol=symbol) for symbol, frame in market.bars.items()]
    csv = tmp_path / "bars.csv"
    pd.concat(frames).to_csv(csv)
    env = {**os.environ, "HRM_API_TOKEN": serve_app.token}
    command = [sys.executable, "-m", "hrm_platform.cli", "predict", "--url", serve_app.url, "--bars", str(csv), "--position", "0.5"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "position +0.50" in lines[0]
    assert [line.split(" @ ")[0] for line in lines[1:]] == ["SYN00", "SYN01"]
    assert all(re.search(r": (HOLD|BUY |SELL) quantity", line) for line in lines[1:])

    refused = subprocess.run(command, capture_output=True, text=True, env={**env, "HRM_API_TOKEN": "wrong"}, timeout=120)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "unauthorized" in refused.stderr


def readme_curl_commands() -> list[tuple[str, str]]:
    """(command, trailing comment) for each curl command of the README's HTTP API section."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## HTTP API", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("curl "):
                command, _, comment = line.partition("  # ")
                commands.append((command.strip(), comment))
    return commands


def test_readme_curl_examples_work_against_the_live_server(serve_app):
    commands = readme_curl_commands()
    assert len(commands) >= 5
    env = {**os.environ, "HRM_URL": serve_app.url, "HRM_API_TOKEN": serve_app.token}
    for command, comment in commands:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        body = json.loads(done.stdout)
        expected_error = re.search(r"-> (\d{3})", comment)
        if expected_error:  # the README shows what an error looks like
            assert set(body) == {"error", "field", "detail"}, command
        else:
            assert "error" not in body, f"{command}: {body}"


def test_only_loopback_listens_on_the_serve_port(serve_app):
    port = serve_app.url.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.splitlines()
    addresses = [line.split()[3] for line in listening if line.split()[3].rsplit(":", 1)[1] == port]
    assert addresses == [f"127.0.0.1:{port}"]
