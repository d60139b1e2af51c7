"""The stream routes without Ray: the real StreamService over a fake model whose decide records its windows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hrm_platform.config import ServeConfig
from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from hrm_platform.serving.errors import overloaded
from hrm_platform.serving.http import create_api
from hrm_platform.serving.schemas import PredictResponse
from hrm_platform.serving.stream_schemas import example_times
from hrm_platform.serving.stream_service import StreamService
from hrm_platform.serving.streams import StreamStore

BARS_NEEDED = 6
BARS = generate_market(1, 200, seed=4, horizon=4).bars["SYN00"][list(BAR_COLUMNS)].to_numpy()[:60].round(4)


class FakeReplica:
    """The replica's side of StreamService: a model with bars_needed=6 and a decide that records each window."""

    def __init__(self, serve: ServeConfig) -> None:
        self.model = SimpleNamespace(engine=SimpleNamespace(bars_needed=BARS_NEEDED), version="fake")
        self.windows: list[np.ndarray] = []
        self.streams = StreamService(StreamStore(serve.max_streams, serve.stream_idle_s), serve,
                                     lambda: self.model, self.decide)

    async def decide(self, model, window, position, settings, started, route) -> PredictResponse:
        self.windows.append(window.copy())
        return PredictResponse(action="hold", quantity=0.0, confidence=float(window[-1, 3]), probabilities={},
                               segments=settings.max_segments or 1, cached=False, model_version=model.version,
                               latency_ms=0.0, target_position=0.0, trade=-position)


@pytest.fixture
def replica() -> FakeReplica:
    return FakeReplica(ServeConfig(max_streams=3))


def client_for(replica: FakeReplica, token: str | None = None) -> TestClient:
    return TestClient(create_api(replica, ServeConfig(max_streams=3), auth_token=token))


def test_every_decision_reads_the_last_bars_needed_bars(replica):
    client = client_for(replica)
    created = client.put("/v1/streams/SYN-1m", json={"bars": BARS[:10].tolist(), "position": 0.5, "max_segments": 2})
    assert created.status_code == 200, created.text
    assert created.json()["bars_seen"] == 10 and created.json()["trade"] == -0.5
    for row in range(10, 30):
        answer = client.post("/v1/streams/SYN-1m/bars", json={"bars": BARS[row : row + 1].tolist()}).json()
        assert answer["bars_seen"] == row + 1 and answer["segments"] == 2 and answer["trade"] == -0.5
    two = client.post("/v1/streams/SYN-1m/bars", json={"bars": BARS[30:32].tolist(), "position": -1.0}).json()
    assert two["bars_seen"] == 32 and two["trade"] == 1.0 and two["stream_id"] == "SYN-1m"
    expected = [BARS[10 - BARS_NEEDED : 10]] + [BARS[row + 1 - BARS_NEEDED : row + 1] for row in range(10, 30)]
    expected.append(BARS[32 - BARS_NEEDED : 32])
    assert len(replica.windows) == len(expected)
    assert all(np.array_equal(window, want) for window, want in zip(replica.windows, expected))
    state = client.get("/v1/streams/SYN-1m").json()
    assert state["bars_held"] == BARS_NEEDED and state["position"] == -1.0 and state["last_timestamp"] is None


def test_unknown_streams_get_409_naming_bars_needed(replica):
    client = client_for(replica)
    for method, path, body in [("POST", "/v1/streams/nope/bars", {"bars": BARS[:1].tolist()}),
                               ("GET", "/v1/streams/nope", None)]:
        response = client.request(method, path, json=body)
        assert response.status_code == 409 and response.json()["error"] == "stream_unknown", response.text
    posted = client.post("/v1/streams/nope/bars", json={"bars": BARS[:1].tolist()}).json()
    assert posted["bars_needed"] == BARS_NEEDED and f"at least {BARS_NEEDED} bars" in posted["detail"]
    client.put("/v1/streams/gone", json={"bars": BARS[:6].tolist()})
    assert client.delete("/v1/streams/gone").json() == {"stream_id": "gone", "deleted": True}
    assert client.delete("/v1/streams/gone").json()["deleted"] is False
    assert client.post("/v1/streams/gone/bars", json={"bars": BARS[:1].tolist()}).status_code == 409


def test_timestamps_make_retries_idempotent_and_refuse_older_bars(replica):
    client = client_for(replica)
    times = example_times(20)
    client.put("/v1/streams/t", json={"bars": BARS[:10].tolist(), "timestamps": times[:10]})
    first = client.post("/v1/streams/t/bars", json={"bars": BARS[10:12].tolist(), "timestamps": times[10:12]}).json()
    retried = client.post("/v1/streams/t/bars", json={"bars": BARS[10:12].tolist(), "timestamps": times[10:12]}).json()
    assert first["bars_seen"] == retried["bars_seen"] == 12 and first["confidence"] == retried["confidence"]
    older = client.post("/v1/streams/t/bars", json={"bars": BARS[2:3].tolist(), "timestamps": times[2:3]})
    assert older.status_code == 409 and older.json()["error"] == "bar_out_of_order"
    changed = BARS[11:12].copy()
    changed[0, 4] += 1.0  # the volume of a held bar
    conflict = client.post("/v1/streams/t/bars", json={"bars": changed.tolist(), "timestamps": times[11:12]})
    assert conflict.status_code == 409 and conflict.json()["error"] == "bar_conflict"
    assert client.get("/v1/streams/t").json()["last_timestamp"].startswith(times[11][:19])
    backwards = client.post("/v1/streams/t/bars", json={"bars": BARS[12:14].tolist(), "timestamps": times[13:11:-1]})
    assert backwards.status_code == 422 and backwards.json()["field"] == "timestamps[1]"
    too_few = client.post("/v1/streams/t/bars", json={"bars": BARS[12:14].tolist(), "timestamps": times[12:13]})
    assert too_few.status_code == 422 and too_few.json()["field"] == "timestamps"


def test_bad_bars_get_the_422_of_predict_and_leave_the_stream_as_it_was(replica):
    client = client_for(replica)
    short = client.put("/v1/streams/s", json={"bars": BARS[:5].tolist()})
    assert short.status_code == 422 and f"needs at least {BARS_NEEDED}" in short.json()["detail"]
    client.put("/v1/streams/s", json={"bars": BARS[:10].tolist()})
    bad = BARS[10:13].copy()
    bad[1, 1] = bad[1, 2] - 1.0  # high < low in the request's bar 1
    refused = client.post("/v1/streams/s/bars", json={"bars": bad.tolist()})
    assert refused.status_code == 422
    assert refused.json() == {"error": "invalid_request", "field": "bars[1]",
                              "detail": "bar 1 (0 = oldest): high < low"}
    jump = BARS[10:11].copy()
    jump[0, :4] *= 1000.0
    assert client.post("/v1/streams/s/bars", json={"bars": jump.tolist()}).json()["field"] == "bars[0]"
    empty = client.post("/v1/streams/s/bars", json={"bars": []})
    assert empty.status_code == 422 and empty.json()["field"] == "bars"
    assert client.get("/v1/streams/s").json()["bars_seen"] == 10  # nothing was taken in


@pytest.mark.parametrize("stream_id", ["x" * 129, "-leading-dash", "has space", "semi;colon", "%C3%A9t%C3%A9"])
def test_stream_ids_are_validated(replica, stream_id):
    response = client_for(replica).put(f"/v1/streams/{stream_id}", json={"bars": BARS[:10].tolist()})
    assert response.status_code == 422 and response.json()["field"] == "stream_id", response.text


def test_stream_routes_need_the_token(replica):
    client = client_for(replica, token="secret")
    assert client.put("/v1/streams/a", json={"bars": BARS[:10].tolist()}).status_code == 401
    assert client.get("/v1/streams/a").status_code == 401 and client.delete("/v1/streams/a").status_code == 401
    authorized = client.put("/v1/streams/a", json={"bars": BARS[:10].tolist()},
                            headers={"Authorization": "Bearer secret"})
    assert authorized.status_code == 200


def test_the_bound_applies_through_the_api(replica):
    client = client_for(replica)
    for name in ("a", "b", "c", "d"):  # max_streams=3: a, the least recently used, goes
        client.put(f"/v1/streams/{name}", json={"bars": BARS[:10].tolist()})
    assert client.get("/v1/streams/a").status_code == 409 and client.get("/v1/streams/d").status_code == 200


def test_stream_request_examples_are_answered(replica):
    """The OpenAPI examples are real requests: each PUT, and each POST after the PUT it follows."""
    client = client_for(replica)
    spec = client.get("/openapi.json").json()
    def examples(path: str, method: str) -> dict:
        return spec["paths"][path][method]["requestBody"]["content"]["application/json"]["examples"]

    puts, posts = examples("/v1/streams/{stream_id}", "put"), examples("/v1/streams/{stream_id}/bars", "post")
    for seed, append in (("history", "one"), ("timestamps", "timestamped")):
        created = client.put("/v1/streams/AAPL-1m", json=puts[seed]["value"])
        assert created.status_code == 200, (seed, created.text[:300])
        appended = client.post("/v1/streams/AAPL-1m/bars", json=posts[append]["value"])
        assert appended.status_code == 200 and appended.json()["bars_seen"] == created.json()["bars_seen"] + len(
            posts[append]["value"]["bars"]), (append, appended.text[:300])


def test_the_client_reseeds_a_lost_stream_and_gets_the_same_decisions(replica):
    """StreamClient over the app (TestClient is an httpx.Client): a stream dropped server-side is re-seeded from
    the client's own bars, and every answer still reads the last bars_needed bars."""
    from hrm_platform.serving.client import ClientError, StreamClient

    stream = StreamClient(client_for(replica), "SYN-1m", position=0.25)
    stream.open(BARS[:8], timestamps=example_times(8))
    times = example_times(40)
    for row in range(8, 40):
        if row in (15, 30):
            replica.streams.store.evict_oldest(1)  # as a restarted replica or an eviction would
        answer = stream.push(BARS[row : row + 1], timestamps=times[row : row + 1])
        assert answer["confidence"] == BARS[row, 3] and answer["trade"] == -0.25
        assert np.array_equal(replica.windows[-1], BARS[row + 1 - BARS_NEEDED : row + 1])
    assert stream.reseeds == 2 and stream.close() and not stream.close()
    bad = BARS[40:41].copy()
    bad[0, 1] = -1.0
    with pytest.raises(ClientError, match="422"):
        stream.push(bad)  # after close: the re-seed itself is refused, naming the bad bar


def test_a_timestamp_before_year_one_in_utc_is_described_as_unknown(replica):
    client = client_for(replica)
    times = [f"0001-01-01T00:{i:02d}:00+23:59" for i in range(10)]
    assert client.put("/v1/streams/old", json={"bars": BARS[:10].tolist(), "timestamps": times}).status_code == 200
    state = client.get("/v1/streams/old")
    assert state.status_code == 200 and state.json()["last_timestamp"] is None


def test_a_stream_header_naming_another_stream_is_refused_and_changes_nothing(replica):
    """The ingress routes by X-Stream-Id: a request whose header names another stream may sit on that stream's
    replica, so it is refused (400 naming the header and both ids) before it reads or changes any stream."""
    client = client_for(replica)
    same = {"X-Stream-Id": "SYN-1m"}
    assert client.put("/v1/streams/SYN-1m", json={"bars": BARS[:10].tolist()}, headers=same).status_code == 200
    other = {"X-Stream-Id": "SYN-5m"}
    refused = [client.put("/v1/streams/SYN-1m", json={"bars": BARS[20:30].tolist()}, headers=other),
               client.post("/v1/streams/SYN-1m/bars", json={"bars": BARS[10:11].tolist()}, headers=other),
               client.get("/v1/streams/SYN-1m", headers=other), client.delete("/v1/streams/SYN-1m", headers=other),
               client.get("/v1/streams/SYN-1m", headers={"X-Stream-Id": ""})]
    for response in refused:
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error"] == "stream_id_mismatch" and body["field"] == "X-Stream-Id"
        assert "'SYN-1m'" in body["detail"] and "X-Stream-Id: SYN-1m" in body["detail"]
    assert len(replica.windows) == 1  # only the first PUT decided
    state = client.get("/v1/streams/SYN-1m", headers=same).json()
    assert state["bars_seen"] == 10 and np.array_equal(replica.streams.store.peek("SYN-1m").bars, BARS[4:10])
    # the header is optional: without it the request is answered (routed round robin by the ingress)
    assert client.post("/v1/streams/SYN-1m/bars", json={"bars": BARS[10:11].tolist()}).json()["bars_seen"] == 11
    assert client.post("/v1/streams/SYN-1m/bars", json={"bars": BARS[11:12].tolist()}, headers=same).status_code == 200


def test_the_stream_headers_are_documented_on_the_stream_routes(replica):
    spec = client_for(replica).get("/openapi.json").json()
    routes = [("/v1/streams/{stream_id}", method) for method in ("put", "get", "delete")]
    for path, method in [*routes, ("/v1/streams/{stream_id}/bars", "post")]:
        operation = spec["paths"][path][method]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"X-Stream-Id"} | ({"X-Stream-Generation"} if method != "delete" else set()), path
        assert "stream_id_mismatch" in operation["responses"]["400"]["description"], (path, method)


def test_the_client_names_its_stream_in_every_request_header(replica):
    """StreamClient's requests (open, push, the re-seed after a 409, close) all carry X-Stream-Id = its stream."""
    from hrm_platform.serving.client import StreamClient

    client = client_for(replica)
    sent: list[tuple[str, str, str | None, str | None]] = []
    client.event_hooks = {"request": [lambda request: sent.append(
        (request.method, request.url.path, request.headers.get("X-Stream-Id"),
         request.headers.get("X-Stream-Generation")))]}
    stream = StreamClient(client, "SYN-1m")
    stream.open(BARS[:8])
    stream.push(BARS[8:9])
    replica.streams.store.delete("SYN-1m")
    stream.push(BARS[9:10])  # 409, then the re-seed
    assert stream.reseeds == 1 and stream.close()
    assert [method for method, _, _, _ in sent] == ["PUT", "POST", "POST", "PUT", "DELETE"]
    assert {header for _, _, header, _ in sent} == {"SYN-1m"}
    generations = [generation for _, _, _, generation in sent]  # a new one from each PUT on
    assert generations[0] == generations[1] == generations[2] != generations[3] == generations[4]


class Router:
    """Two replicas behind one base URL, as StreamClient sees an ingress: `to` says which one answers."""

    def __init__(self, replicas: dict[str, FakeReplica]) -> None:
        self.clients = {name: client_for(replica) for name, replica in replicas.items()}
        self.base_url = "http://ingress"
        self.to = next(iter(replicas))
        self.cut_next_post = False  # the next POST is taken in, then its answer is lost (a replica killed mid-answer)
        self.next_post_status: int | None = None  # the next POST is taken in, then the ingress answers this instead

    def request(self, method: str, path: str, **kwargs):
        import httpx

        response = self.clients[self.to].request(method, path, **kwargs)
        if method == "POST" and self.cut_next_post:
            self.cut_next_post = False
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if method == "POST" and self.next_post_status is not None:
            status, self.next_post_status = self.next_post_status, None
            return httpx.Response(status, text="<html><body><h1>500 Internal Server Error</h1></body></html>")
        return response


def test_a_stale_copy_left_on_a_replica_is_refused_and_the_client_reseeds_it():
    """A stream moves to replica b (409, re-seeded there) and back to a, which still holds its copy from before
    the move, bars behind: a must answer 409 rather than append the new bar to that gap, and the client
    re-seeds a, so every decision reads the stream's true last bars_needed bars."""
    from hrm_platform.serving.client import StreamClient

    replicas = {"a": FakeReplica(ServeConfig()), "b": FakeReplica(ServeConfig())}
    router = Router(replicas)
    stream = StreamClient(router, "SYN-1m")
    stream.open(BARS[:8])
    for row, replica in [(8, "a"), (9, "a"), (10, "b"), (11, "b"), (12, "a"), (13, "a")]:
        router.to = replica
        stream.push(BARS[row : row + 1])
        assert np.array_equal(replicas[replica].windows[-1], BARS[row + 1 - BARS_NEEDED : row + 1]), (row, replica)
    assert stream.reseeds == 2  # on b at bar 10, on a again at bar 12
    stale = replicas["b"].streams.store.peek("SYN-1m")
    assert stale is not None and np.array_equal(stale.bars[-1], BARS[11])  # b's copy, left behind at bar 11
    refused = router.clients["b"].get("/v1/streams/SYN-1m", headers=stream._headers())
    assert refused.status_code == 409 and "stale copy" in refused.json()["detail"], refused.text
    assert router.clients["b"].get("/v1/streams/SYN-1m").status_code == 200  # without a generation: not checked


def test_a_push_whose_answer_is_lost_is_reseeded_not_sent_twice():
    """The replica took the bar in, then the answer was lost: the client re-seeds (PUT its bars and the new one)
    rather than POSTing the bar again, which would append it twice (no timestamps here to spot the repeat)."""
    from hrm_platform.serving.client import StreamClient

    replica = FakeReplica(ServeConfig())
    router = Router({"a": replica})
    stream = StreamClient(router, "SYN-1m")
    stream.open(BARS[:8])
    router.cut_next_post = True
    answer = stream.push(BARS[8:9])
    assert stream.reseeds == 1 and answer["bars_seen"] == 8  # the re-seed's PUT: the client's last 8 bars
    stream.push(BARS[9:10])
    assert np.array_equal(replica.windows[-1], BARS[10 - BARS_NEEDED : 10])
    assert np.array_equal(replica.streams.store.peek("SYN-1m").bars, BARS[10 - BARS_NEEDED : 10])


def test_a_push_answered_by_an_ingress_error_is_reseeded_and_overloaded_is_not():
    """An HTTP 5xx from the ingress (HAProxy's page for a replica gone mid-request) leaves it unknown whether the
    bar went in: the client re-seeds, as for a lost answer, and the stream's next decision reads the right bars.
    The replica's own 503 `overloaded` took nothing in: it reaches the caller, and the stream is left as it was."""
    from hrm_platform.serving.client import ClientError, StreamClient

    replica = FakeReplica(ServeConfig())
    router = Router({"a": replica})
    stream = StreamClient(router, "SYN-1m")
    stream.open(BARS[:8])
    router.next_post_status = 500
    assert stream.push(BARS[8:9])["bars_seen"] == 8 and stream.reseeds == 1
    stream.push(BARS[9:10])
    assert np.array_equal(replica.windows[-1], BARS[10 - BARS_NEEDED : 10])

    def shedding():
        raise overloaded("over the memory limit")

    replica.streams._current_model = shedding
    with pytest.raises(ClientError) as refused:
        stream.push(BARS[10:11])
    assert refused.value.status == 503 and stream.reseeds == 1
