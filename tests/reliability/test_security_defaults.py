"""Security defaults of the deployed app: loopback only, bearer token on every inference route, body limit.

(Checkpoints are never unpickled: test_pickle_refusal.py.)

Loopback: every TCP socket in LISTEN state that this test session's processes own is listed (the Ray
cluster, Serve's proxies, HAProxy and the replicas are all descendants of the pytest process), and none may
listen beyond loopback: the embedded cluster runs in Ray's loopback mode (hrm_platform/local_ray.py), HAProxy's
stats and Prometheus listeners are rebound by haproxy_bind.sh, and each replica binds its inter-deployment
gRPC server to loopback (serving/ingress.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.reliability.harness import ListeningSocket, listening_sockets, make_bars

pytestmark = pytest.mark.ray

def _is_http_facing(item: ListeningSocket, serve_port: int) -> bool:
    """Sockets that speak HTTP for the app: Serve's port, HAProxy, direct-ingress and fallback proxy ports."""
    from hrm_platform.ray_compat import direct_ingress_ports

    direct_ingress, fallback = direct_ingress_ports()
    return (
        item.port == serve_port
        or "haproxy" in item.process
        or item.port in direct_ingress
        or item.port in fallback
    )


def test_every_server_of_the_session_listens_on_loopback_only(app_under_test) -> None:
    serve_port = urlparse(app_under_test.url).port
    sockets = listening_sockets(os.getpid())
    for item in sockets:
        print(f"{'loopback ' if item.loopback else 'WILDCARD '} {item.ip:>18}:{item.port:<6} {item.process}")

    serve_sockets = [item for item in sockets if item.port == serve_port]
    assert serve_sockets, f"nothing of this session listens on the Serve port {serve_port}"
    http_facing = [item for item in sockets if _is_http_facing(item, serve_port)]
    assert any("haproxy" in item.process for item in http_facing), "the default ingress is HAProxy"
    exposed = [f"{item.ip}:{item.port} ({item.process})" for item in sockets if not item.loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_serve_config_binds_loopback_by_default() -> None:
    from hrm_platform.config import ServeConfig

    assert ServeConfig().host == "127.0.0.1"


# ---------------------------------------------------------------------------------------------- token


def _inference_calls(app_under_test) -> dict[str, tuple[str, str, dict | None]]:
    rows = make_bars(app_under_test.bars_needed, seed=3)
    return {
        "predict": ("POST", "/v1/predict", {"bars": rows}),
        "predict_batch": ("POST", "/v1/predict/batch", {"requests": [{"bars": rows}]}),
        "model": ("GET", "/v1/model", None),
    }


WRONG_AUTHORIZATIONS = {
    "none": None,
    "empty": "",
    "wrong_token": "Bearer not-the-token",
    "token_without_scheme": "{token}",
    "basic_scheme": "Basic {token}",
    "token_prefix": "Bearer {token_prefix}",
    "token_with_suffix": "Bearer {token}x",
}


@pytest.mark.parametrize("route", ["predict", "predict_batch", "model"])
@pytest.mark.parametrize("authorization", sorted(WRONG_AUTHORIZATIONS))
def test_inference_routes_refuse_a_missing_or_wrong_token(route: str, authorization: str, app_under_test) -> None:
    method, path, body = _inference_calls(app_under_test)[route]
    template = WRONG_AUTHORIZATIONS[authorization]
    headers = {}
    if template is not None:
        headers["Authorization"] = template.format(token=app_under_test.token, token_prefix=app_under_test.token[:-1])

    response = httpx.request(method, app_under_test.url + path, json=body, headers=headers, timeout=10)

    assert response.status_code == 401, f"{route} with {authorization}: {response.status_code} {response.text[:200]}"
    assert response.json()["error"] == "unauthorized"
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.parametrize("route", ["predict", "predict_batch", "model"])
def test_inference_routes_answer_with_the_token(route: str, app_under_test) -> None:
    method, path, body = _inference_calls(app_under_test)[route]
    response = httpx.request(method, app_under_test.url + path, json=body, headers=app_under_test.headers, timeout=10)
    assert response.status_code == 200, response.text[:300]


def test_token_is_checked_before_the_body_is_read(app_under_test) -> None:
    """An unauthenticated client cannot make the server parse (or buffer) a large body."""
    oversized = b"x" * (app_under_test.serve_config.max_body_bytes + 1)
    response = httpx.post(app_under_test.url + "/v1/predict", content=oversized, timeout=10,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 401, response.text[:200]


def test_token_variants_of_the_path_are_still_protected(app_under_test) -> None:
    """Trailing slashes, doubled slashes and percent-encoding must not route around the token check."""
    rows = make_bars(app_under_test.bars_needed, seed=4)
    for path in ("/v1/predict/", "//v1/predict", "/v1/%70redict", "/v1/predict/batch/"):
        response = httpx.post(app_under_test.url + path, json={"bars": rows}, timeout=10, follow_redirects=False)
        assert response.status_code != 200, f"{path} answered without a token: {response.text[:200]}"
        assert response.status_code < 500, f"{path}: {response.status_code} {response.text[:200]}"


# ---------------------------------------------------------------------------------------------- body size


def test_body_over_the_limit_with_content_length_gets_413(app_under_test) -> None:
    limit = app_under_test.serve_config.max_body_bytes
    filler = " " * (limit + 1)  # valid JSON whitespace: only the size is wrong
    response = app_under_test.post("/v1/predict", content=f'{{"bars": []{filler}}}'.encode(),
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text[:200]
    assert response.json()["error"] == "body_too_large"


def test_streamed_body_over_the_limit_without_content_length_gets_413(app_under_test) -> None:
    """Chunked transfer encoding announces no length: the limit must apply while reading."""
    limit = app_under_test.serve_config.max_body_bytes

    def chunks():
        yield b'{"bars": ['
        sent = 0
        row = b"[100.0, 101.0, 99.0, 100.5, 1000.0],"
        while sent <= limit:
            yield row * 1000
            sent += len(row) * 1000
        yield b"[100.0, 101.0, 99.0, 100.5, 1000.0]]}"

    response = httpx.post(app_under_test.url + "/v1/predict", content=chunks(), timeout=30,
                          headers={**app_under_test.headers, "Content-Type": "application/json"})
    assert response.status_code == 413, f"{response.status_code} {response.text[:200]}"
    assert response.json()["error"] == "body_too_large"
    assert app_under_test.get("/v1/health").json()["status"] == "ok"


def test_lying_content_length_is_refused(app_under_test) -> None:
    """A Content-Length that is not a number is refused before anything is read."""
    import socket

    address = urlparse(app_under_test.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {app_under_test.token}\r\n".encode()
            + b"Content-Length: -5\r\nConnection: close\r\n\r\n"
        )
        reply = connection.recv(4096).decode("latin-1")
    status = int(reply.split(" ", 2)[1])
    assert 400 <= status < 500, reply[:300]


# ---------------------------------------------------------------------------------------------- documented commands

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_IN = ("README.md", "jobs/*.py", "deployments/*.yaml", "deployments/*.py", "Makefile")
CLUSTER_LAUNCHER = "cluster.yaml"  # a real multi-node head on a private network: checked for the dashboard only


def _documented_ray_starts() -> list[tuple[str, str]]:
    """(file, command) for every `ray start --head` in the docs, continuation lines joined."""
    commands = []
    for pattern in (*DOCUMENTED_IN, CLUSTER_LAUNCHER):
        for path in sorted(REPO_ROOT.glob(pattern)):
            text = re.sub(r"\\\\?\n\s*#?\s*", " ", path.read_text())  # join `\`-continued lines (also in docstrings)
            for line in text.splitlines():
                if "ray start" in line and "--head" in line:
                    commands.append((str(path.relative_to(REPO_ROOT)), line.strip()))
    return commands


def test_documented_head_node_commands_keep_the_dashboard_and_node_on_loopback() -> None:
    """`--dashboard-host` must not open the dashboard beyond loopback, and a command that asks for a loopback
    node (`--node-ip-address=127.0.0.1`) must also set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: without it Ray
    2.60 silently replaces 127.0.0.1 by the machine's LAN address and its GCS, raylet and workers listen on
    every interface."""
    commands = _documented_ray_starts()
    assert commands, "no documented `ray start --head` command found"
    problems = []
    for source, command in commands:
        dashboard_host = re.search(r"--dashboard-host[= ](\S+)", command)
        if dashboard_host and dashboard_host.group(1) not in ("127.0.0.1", "localhost", "::1"):
            problems.append(f"{source}: dashboard on {dashboard_host.group(1)}: {command}")
        if source == CLUSTER_LAUNCHER:
            continue
        if "--node-ip-address=127.0.0.1" in command and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" not in command:
            problems.append(f"{source}: loopback node without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: {command}")
    assert not problems, "\n".join(problems)
