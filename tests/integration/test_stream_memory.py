"""What streams cost a live replica (issue 17's acceptance): memory stays flat over 10,000 stream updates (the RSS
/v1/health reports from the memory guard's reading grows less than 10 % from after a warm-up to after 10,000
one-bar POSTs over a few streams, and the bytes the streams hold do not grow at all), and with small
serve.max_streams and serve.stream_idle_s the replica evicts the least recently used stream and expires idle ones.

Every stream request names its stream in X-Stream-Id, as a client behind the HAProxy ingress does."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import numpy as np
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from tests.integration.serving_helpers import health, side_app

pytestmark = pytest.mark.ray
STREAMS_PER_CLIENT = 2
CLIENTS = 8  # concurrent keep-alive connections, a thread each: 16 streams
WARM_UP = 400  # updates before the first reading: the allocator's pools, the cache and HTTP buffers settle
UPDATES = 10_000
MAX_RSS_GROWTH = 0.10
SMALL_MAX_STREAMS = 3
LIMITS_APP, LIMITS_ROUTE = "hrm-limits", "/limits"
SMALL_IDLE_S = 1.5  # long enough for the test's own requests between PUT and the sweep, even on a loaded machine
START = datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc).timestamp()


def stream_bars(bars_needed: int) -> list[np.ndarray]:
    """One (bars_needed + every update, 5) synthetic series per stream: every decision reads a new window."""
    steps = (WARM_UP + UPDATES) // (CLIENTS * STREAMS_PER_CLIENT) + 1
    market = generate_market(CLIENTS * STREAMS_PER_CLIENT, bars_needed + steps, seed=23, horizon=4)
    return [frame[list(BAR_COLUMNS)].to_numpy() for frame in market.bars.values()]


def push(serve_app, client_index: int, series: list[np.ndarray], bars_needed: int, steps: range) -> list[int]:
    """Steps `steps` of this client's streams (bar bars_needed - 1 + step of each, with its timestamp), one POST per
    bar over one keep-alive connection; the status of every request."""
    statuses = []
    with httpx.Client(base_url=serve_app.url, headers=serve_app.headers, timeout=30.0) as http:
        for step in steps:
            for offset in range(STREAMS_PER_CLIENT):
                index = client_index * STREAMS_PER_CLIENT + offset
                row = bars_needed - 1 + step
                body = {"bars": series[index][row : row + 1].tolist(), "timestamps": [START + 60.0 * row]}
                name = f"memory-{index}"
                statuses.append(http.post(f"/v1/streams/{name}/bars", json=body, headers=named(name)).status_code)
    return statuses


def named(stream_id: str) -> dict[str, str]:
    return {"X-Stream-Id": stream_id}


def run_updates(serve_app, series: list[np.ndarray], bars_needed: int, steps: range) -> list[int]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        parts = pool.map(lambda client: push(serve_app, client, series, bars_needed, steps), range(CLIENTS))
        return [status for part in parts for status in part]


def settled_health(client: httpx.Client, interval_s: float) -> dict:
    """/v1/health once the guard has read the replica's memory again after the last request."""
    time.sleep(3 * interval_s)
    return health(client)


def test_memory_stays_flat_over_ten_thousand_stream_updates(serve_app, client, engine):
    needed, interval = engine.bars_needed, serve_app.serve_config.memory_check_interval_s
    series = stream_bars(needed)
    for index, bars in enumerate(series):
        times = [START + 60.0 * row for row in range(needed)]
        body = {"bars": bars[:needed].tolist(), "timestamps": times, "max_segments": 1}  # 1 segment: quicker updates
        seeded = client.put(f"/v1/streams/memory-{index}", json=body, headers=named(f"memory-{index}"))
        assert seeded.status_code == 200, seeded.text
    per_round = CLIENTS * STREAMS_PER_CLIENT  # one bar for every stream
    warmed, last = WARM_UP // per_round, (WARM_UP + UPDATES) // per_round  # rounds
    warm_up = run_updates(serve_app, series, needed, range(1, 1 + warmed))
    before = settled_health(client, interval)

    updates = run_updates(serve_app, series, needed, range(1 + warmed, 1 + last))
    after = settled_health(client, interval)

    assert len(updates) == UPDATES and set(warm_up) | set(updates) == {200}
    assert after["replica"] == before["replica"]  # one replica's memory, read twice
    growth = after["memory"]["rss_bytes"] / before["memory"]["rss_bytes"] - 1.0
    assert growth < MAX_RSS_GROWTH, (before["memory"], after["memory"])
    # The streams hold their last bars_needed bars, whatever they took in: not a byte more.
    assert after["streams"]["bytes"] == before["streams"]["bytes"]
    for index in range(per_round):
        name = f"memory-{index}"
        state = client.get(f"/v1/streams/{name}", headers=named(name)).json()
        assert state["bars_seen"] == needed + last and state["bars_held"] == needed
        assert client.delete(f"/v1/streams/{name}", headers=named(name)).json()["deleted"]


@pytest.fixture
def small_stream_limits(serve_app):
    """A side app with serve.max_streams=SMALL_MAX_STREAMS and serve.stream_idle_s=SMALL_IDLE_S beside the session's
    (the limits are read when a replica starts); a client of it."""
    with side_app(
        serve_app, LIMITS_APP, LIMITS_ROUTE, max_streams=SMALL_MAX_STREAMS, stream_idle_s=SMALL_IDLE_S
    ) as url:
        with httpx.Client(base_url=url, headers=serve_app.headers, timeout=30.0) as client:
            wait_for_stream_limits(client, SMALL_MAX_STREAMS, SMALL_IDLE_S, serve_app.serve_config.start_timeout_s)
            yield client


def wait_for_stream_limits(client: httpx.Client, max_streams: int, idle_s: float, timeout_s: float) -> None:
    """Until /v1/health comes from a replica with these limits (the old one answers until it is replaced)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = client.get("/v1/health")
            streams = response.json().get("streams", {}) if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            streams = {}
        if streams.get("max_streams") == max_streams and streams.get("idle_s") == idle_s:
            return
        time.sleep(0.2)
    raise AssertionError(f"no replica with max_streams={max_streams}, stream_idle_s={idle_s} after {timeout_s} s")


def test_a_replica_bounds_and_expires_streams_as_configured(engine, small_stream_limits, serve_app):
    client, interval_s = small_stream_limits, serve_app.serve_config.memory_check_interval_s
    needed, names = engine.bars_needed, [f"limit-{index}" for index in range(SMALL_MAX_STREAMS + 1)]
    bars = stream_bars(needed)[0]
    for name in names:  # one more than the bound: the least recently used (the first) goes
        created = client.put(f"/v1/streams/{name}", json={"bars": bars[:needed].tolist()}, headers=named(name))
        assert created.status_code == 200, created.text
    streams = health(client)["streams"]
    assert streams["count"] == SMALL_MAX_STREAMS and streams["evicted"] == 1
    evicted = client.post(f"/v1/streams/{names[0]}/bars", json={"bars": bars[needed : needed + 1].tolist()},
                          headers=named(names[0]))
    assert evicted.status_code == 409 and evicted.json()["error"] == "stream_unknown"
    assert all(client.get(f"/v1/streams/{name}", headers=named(name)).status_code == 200 for name in names[1:])

    # Idle past stream_idle_s: the replica's periodic sweep drops them, with no request touching them.
    deadline = time.monotonic() + SMALL_IDLE_S + 10 * interval_s + 5.0
    while health(client)["streams"]["count"] > 0 and time.monotonic() < deadline:
        time.sleep(interval_s)
    streams = health(client)["streams"]
    assert streams["count"] == 0 and streams["expired"] == SMALL_MAX_STREAMS and streams["bytes"] == 0
    expired = client.post(f"/v1/streams/{names[1]}/bars", json={"bars": bars[needed : needed + 1].tolist()},
                          headers=named(names[1]))
    assert expired.status_code == 409 and expired.json()["bars_needed"] == needed
