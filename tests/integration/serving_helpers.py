"""Shared by the serving integration tests: requests to the session's app and the engine-equality check."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest


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


@contextmanager
def side_app(serve_app, name: str, route_prefix: str, **settings) -> Iterator[str]:
    """Another app of the session's checkpoint beside the session's own, on its Serve (the same ingress and token),
    with `settings` replacing ServeConfig fields; yields its base URL, and removes it afterwards. Deploying one
    costs seconds, where redeploying the session app (to change a setting, then back) costs a minute."""
    from hrm_platform.config import ServeConfig
    from hrm_platform.serving.app import application_config
    from hrm_platform.serving.lifecycle import _deploy_applications, _deployed_applications, _wait_until_running

    serve_config = ServeConfig.model_validate({**serve_app.serve_config.model_dump(), **settings})
    env_vars = {serve_config.auth_token_env: serve_app.token}
    applications = _deployed_applications()
    applications[name] = application_config(str(serve_app.checkpoint), serve_config, env_vars) | {
        "name": name, "route_prefix": route_prefix}
    _deploy_applications(list(applications.values()))
    _wait_until_running(name, serve_config.start_timeout_s)
    try:
        yield serve_app.url + route_prefix
    finally:
        applications = _deployed_applications()
        applications.pop(name, None)
        _deploy_applications(list(applications.values()))  # the session's app stays as it is


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length (as every JSON answer of the app has)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    lengths = [line.split(":", 1)[1] for line in head[1:] if line.lower().startswith("content-length:")]
    return int(head[0].split()[1]), await reader.readexactly(int(lengths[0]))


async def post_together(url: str, path: str, bodies: list[bytes], headers: dict[str, str]) -> list[tuple[int, dict]]:
    """POSTs each body on its own connection, all written in one pass of the loop: (status, JSON) per body.

    The connections open first and every request is written before any answer is read, so the requests reach
    the server within microseconds of each other. An HTTP client library (httpx, aiohttp) spends a millisecond
    or so of Python on each request, and a replica that answers faster than that sees every request alone."""
    address = urlsplit(url)
    connections = await asyncio.gather(*(asyncio.open_connection(address.hostname, address.port) for _ in bodies))
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    for (_, writer), body in zip(connections, bodies):
        head = (f"POST {address.path}{path} HTTP/1.1\r\nHost: {address.netloc}\r\n{fields}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
    try:
        answers = await asyncio.gather(*(_read_response(reader) for reader, _ in connections))
    finally:
        for _, writer in connections:
            writer.close()
    return [(status, json.loads(body)) for status, body in answers]
