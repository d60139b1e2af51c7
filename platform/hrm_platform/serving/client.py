"""HTTP client for a running server: bars from a CSV/Parquet file in, one decision per symbol out; and streams.

    hrm predict --url http://127.0.0.1:8000 --bars bars.csv [--position 0.5] [--max-segments 2]
    print(predict_from_file("http://127.0.0.1:8000", Path("bars.csv"), position=0.5, max_segments=None))

The file is read and validated with `data.ohlcv.load_ohlcv` (the same checks the server applies); the
client asks /v1/model how many bars the model needs and sends each symbol's most recent bars in one
/v1/predict/batch request.

A `StreamClient` drives one /v1/streams stream and never shows its caller a 409 stream_unknown:

    with httpx.Client(base_url=url, headers=headers) as http:
        stream = StreamClient(http, "AAPL-1m", position=0.0)
        stream.open(history)                 # (>= bars_needed, 5) bars, oldest first
        answer = stream.push(new_bar[None])  # (1, 5) -> the decision for it; re-seeds the server when needed
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from hrm_platform.data.ohlcv import BAR_COLUMNS, load_ohlcv
from hrm_platform.serving.ingress import STREAM_ID_HEADER
from hrm_platform.serving.stream_service import STREAM_GENERATION_HEADER


class ClientError(RuntimeError):
    """The server refused the request or could not be reached; the message says which and why, and `status`
    holds the HTTP status of a refusal (None when the server was not reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def predict_from_file(
    url: str,
    bars_path: Path,
    position: float = 0.0,
    max_segments: int | None = None,
    token: str | None = None,
    timeout_s: float = 30.0,
) -> str:
    """One line per symbol in the file: the decision, its confidence and the trade from `position`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        model = _call(client, "GET", "/v1/model")
        instruments = load_ohlcv(Path(bars_path), min_rows=model["bars_needed"])
        requests = [
            {"bars": frame[list(BAR_COLUMNS)].to_numpy()[-model["bars_needed"]:].tolist(),
             "position": position, "max_segments": max_segments}
            for frame in instruments.values()
        ]
        answers = _call(client, "POST", "/v1/predict/batch", json={"requests": requests})["responses"]
    header = f"model {model['model_version']} ({model['variant']}) at {url}, position {position:+.2f}"
    lines = [_describe(symbol, frame.index[-1], answer)
             for (symbol, frame), answer in zip(instruments.items(), answers)]
    return "\n".join([header, *lines])


def get_json(client: httpx.Client, path: str) -> dict[str, Any]:
    """GET `path` -> its JSON; ClientError when unreachable or refused."""
    return _call(client, "GET", path)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        raise ClientError(f"cannot reach {client.base_url}{path}: {error}") from None
    if response.status_code != 200:
        raise ClientError(f"{method} {path} -> {response.status_code}: {_error_text(response)}", response.status_code)
    return response.json()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    field = f"{body.get('field')}: " if body.get("field") else ""
    return f"{body.get('error', 'error')}: {field}{body.get('detail', body)}"


def _describe(symbol: str, last_bar: Any, answer: dict[str, Any]) -> str:
    probabilities = " ".join(f"{name} {p:.2f}" for name, p in answer["probabilities"].items())
    return (
        f"{symbol} @ {last_bar}: {answer['action'].upper():4s} quantity {answer['quantity']:.3f} "
        f"confidence {answer['confidence']:.2f} -> target {answer['target_position']:+.3f}, "
        f"trade {answer['trade']:+.3f} ({probabilities}; {answer['segments']} segments"
        f"{', cached' if answer['cached'] else ''}, {answer['latency_ms']:.1f} ms)"
    )


def unauthorized_hint(token_env: str, token_sent: bool) -> str:
    """What to do about a 401: send a token, or check the one sent."""
    if token_sent:
        return (f"the server refused the bearer token in {token_env}: it must equal the token the server was "
                "started with")
    return f"the server requires a bearer token: set {token_env} (or --token-env NAME)"


class StreamClient:
    """One stream (/v1/streams/{stream_id}) over an open httpx.Client, with its own copy of the stream's bars.

    The server's state can vanish (replica restart, eviction, expiry, a request routed to another replica): it then
    answers 409 `stream_unknown` naming `bars_needed`, and `push` re-seeds the stream with a PUT of its own last
    bars plus the new ones, whose answer is the decision for the newest bar, as the POST's would have been. It does
    the same when the POST gets no answer at all (a replica killed while answering cuts the connection; HAProxy
    cannot replay a response it has begun): a re-seed is right whether or not the lost POST was applied, where
    sending the POST again could apply its bars twice. `reseeds` counts them. Timestamps (ISO strings or Unix
    seconds) are sent back on a re-seed when every kept bar has one.

    Every request carries X-Stream-Id, by which the HAProxy ingress sends a stream's requests to one replica
    (serving/ingress.py): re-seeds then happen only when that replica changes. Each seeding (PUT) gets a new random
    X-Stream-Generation, sent with every later request, so that a replica still holding a copy from an earlier
    seeding (the stream moved away and back) answers 409 and is re-seeded, instead of appending to bars it missed."""

    def __init__(self, http: httpx.Client, stream_id: str, *, position: float = 0.0, max_segments: int | None = None,
                 deadline_ms: float | None = None) -> None:
        self.http = http
        self.path = f"/v1/streams/{stream_id}"
        self.stream_id = stream_id  # sent as X-Stream-Id: HAProxy hashes it; the replica checks it names the path's id
        self.generation: str | None = None  # this client's token for its latest PUT (X-Stream-Generation)
        self.position = position
        self.budget = {"max_segments": max_segments, "deadline_ms": deadline_ms}
        self.reseeds = 0
        self._bars = np.empty((0, 5))  # (<= keep, 5): the bars a re-seed sends, oldest first
        self._times: list[Any] = []  # one per kept bar; None for a bar sent without a timestamp
        self._keep = 0  # bars to keep: the history's length, or more when a 409 names a larger bars_needed

    def open(self, bars: np.ndarray, timestamps: Sequence[Any] | None = None) -> dict[str, Any]:
        """Create (or reset) the stream from `bars` (N >= bars_needed, 5); the decision for the last bar."""
        self._keep = max(self._keep, len(bars))
        return self._seed(np.asarray(bars, dtype=np.float64), _times_list(timestamps, len(bars)))

    def push(self, bars: np.ndarray, timestamps: Sequence[Any] | None = None,
             position: float | None = None) -> dict[str, Any]:
        """Send (k, 5) new bars; the decision for the newest. Re-seeds instead, once, on stream_unknown, or when the
        POST got no answer or a server error other than `overloaded` (the ingress's 5xx for a replica that went away
        mid-request, or the replica's own 500): the bars may or may not have been taken in."""
        bars = np.asarray(bars, dtype=np.float64).reshape(-1, 5)
        if position is not None:
            self.position = position
        body = {"bars": bars.tolist(), "timestamps": None if timestamps is None else list(timestamps),
                "position": position}
        times = _times_list(timestamps, len(bars))
        try:
            response = self._request("POST", self.path + "/bars", json=_without_nulls(body))
        except ClientError:  # no answer (the replica died mid-request?): whether or not it took the bars, a PUT is safe
            response = None
        kept_and_new, their_times = np.concatenate([self._bars, bars]), self._times + times
        error = _error_body(response) if response is not None and response.status_code >= 400 else {}
        if response is None or (response.status_code >= 500 and error.get("error") != "overloaded"):
            return self._seed(kept_and_new, their_times, reseed=True)
        if response.status_code == 409 and error.get("error") == "stream_unknown":
            self._keep = max(self._keep, int(error.get("bars_needed") or 0))
            return self._seed(kept_and_new, their_times, reseed=True)
        answer = _answer(response, "POST", self.path + "/bars")
        self._remember(kept_and_new, their_times)
        return answer

    def close(self) -> bool:
        """Delete the stream on the server; False when the replica that answered held none."""
        return _answer(self._request("DELETE", self.path), "DELETE", self.path)["deleted"]

    def _seed(self, bars: np.ndarray, times: list[Any], reseed: bool = False) -> dict[str, Any]:
        bars, times = bars[-self._keep:], times[-self._keep:]
        if reseed and len(bars) < self._keep:
            raise ClientError(f"cannot re-seed {self.path}: the server needs {self._keep} bars, this client kept "
                              f"{len(bars)}")
        body = {"bars": bars.tolist(), "position": self.position, **self.budget,
                "timestamps": times if all(moment is not None for moment in times) else None}
        self.generation = uuid.uuid4().hex  # a copy seeded by an earlier PUT no longer answers for this stream
        answer = _answer(self._request("PUT", self.path, json=_without_nulls(body)), "PUT", self.path)
        self.reseeds += reseed
        self._remember(bars, times)
        return answer

    def _remember(self, bars: np.ndarray, times: list[Any]) -> None:
        self._bars, self._times = bars[-self._keep:], times[-self._keep:]

    def _headers(self) -> dict[str, str]:
        routing = {STREAM_ID_HEADER: self.stream_id}
        return routing if self.generation is None else routing | {STREAM_GENERATION_HEADER: self.generation}

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, headers=self._headers(), **kwargs)
        except httpx.HTTPError as error:
            raise ClientError(f"cannot reach {self.http.base_url}{path}: {error}") from None


def _answer(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise ClientError(f"{method} {path} -> {response.status_code}: {_error_text(response)}", response.status_code)
    return response.json()


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _times_list(timestamps: Sequence[Any] | None, count: int) -> list[Any]:
    return [None] * count if timestamps is None else list(timestamps)


def _without_nulls(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}
