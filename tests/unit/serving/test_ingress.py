"""serving/ingress.py and haproxy_bind.sh without Ray running: the environment of each ingress mode, and
the wrapper's rewrite of HAProxy's wildcard binds (run as Serve runs it, with a stand-in for HAProxy)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hrm_platform.config import ServeConfig
from hrm_platform.serving import ingress
from hrm_platform.serving.ingress import HAPROXY_BIND_WRAPPER, haproxy_bind_env, ingress_env

# The three listeners of the config Ray 2.60 renders (haproxy_templates.py), abridged.
RAY_HAPROXY_CONFIG = """\
global
    stats socket /tmp/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
backend hrm
    server replica-1 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
"""


@pytest.fixture
def fake_haproxy(tmp_path: Path) -> Path:
    """Prints its arguments and the config it was given, as HAProxy would read it."""
    script = tmp_path / "haproxy"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "print(' '.join(sys.argv[1:]))\n"
        "print(open(sys.argv[sys.argv.index('-f') + 1]).read(), end='')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def run_wrapper(config: Path, fake_haproxy: Path, *extra: str, host: str | None = "127.0.0.1") -> str:
    env = {"PATH": os.environ["PATH"], "HRM_HAPROXY_BINARY": str(fake_haproxy)}
    if host is not None:
        env["HRM_HAPROXY_BIND_HOST"] = host
    done = subprocess.run([str(HAPROXY_BIND_WRAPPER), "-db", "-f", str(config), *extra], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wrapper_rebinds_wildcard_listeners_and_hands_over_the_same_arguments(tmp_path, fake_haproxy) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_HAPROXY_CONFIG)
    output = run_wrapper(config, fake_haproxy, "-sf", "1234")
    arguments, rendered = output.split("\n", 1)
    assert arguments == f"-db -f {config} -sf 1234"  # Serve's reload flags reach HAProxy unchanged
    binds = [line.split()[1] for line in rendered.splitlines() if line.strip().startswith("bind ")]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404"]
    assert config.read_text() == rendered  # rewritten in place: Serve's /proc check still finds this path
    assert rendered.replace("127.0.0.1:9101", ":9101").replace("127.0.0.1:8404", "*:8404") == RAY_HAPROXY_CONFIG
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("haproxy.cfg.")] == []


def test_wrapper_uses_the_configured_host_and_keeps_named_hosts(tmp_path, fake_haproxy) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_HAPROXY_CONFIG.replace("bind 127.0.0.1:8000", "bind 10.0.0.5:8000"))
    rendered = run_wrapper(config, fake_haproxy, host="10.0.0.5").split("\n", 1)[1]
    assert "bind 10.0.0.5:9101" in rendered and "bind 10.0.0.5:8404" in rendered
    assert "bind 10.0.0.5:8000" in rendered


def test_wrapper_defaults_to_loopback_and_refuses_to_run_without_haproxy(tmp_path, fake_haproxy) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_HAPROXY_CONFIG)
    assert "bind 127.0.0.1:8404" in run_wrapper(config, fake_haproxy, host=None)
    done = subprocess.run([str(HAPROXY_BIND_WRAPPER), "-db", "-f", str(config)], env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "HRM_HAPROXY_BINARY" in done.stderr


def test_wrapper_is_executable_as_shipped() -> None:
    assert os.access(HAPROXY_BIND_WRAPPER, os.X_OK)


def test_fast_ingress_env_runs_haproxy_through_the_wrapper(monkeypatch) -> None:
    monkeypatch.setattr(ingress, "real_haproxy_binary", lambda: "/opt/haproxy")
    env = ingress_env(ServeConfig())
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(HAPROXY_BIND_WRAPPER)
    assert env["HRM_HAPROXY_BINARY"] == "/opt/haproxy"
    assert env["HRM_HAPROXY_BIND_HOST"] == "127.0.0.1"
    # in-flight requests of a dead replica are replayed, never a replica's own 503 (memory guard shedding)
    assert set(env["RAY_SERVE_HAPROXY_RETRY_ON"].split()) == {"conn-failure", "empty-response", "junk-response"}
    assert int(env["RAY_SERVE_HAPROXY_RETRIES"]) > 3  # outlasts the 3 errors that mark a dead replica down
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
    assert ingress_env(ServeConfig(ingress_metrics=True))["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"
    ports = [int(env[f"RAY_SERVE_{name}_PORT"]) for name in ("HAPROXY_STATS", "HAPROXY_METRICS",
                                                               "FALLBACK_PROXY_HTTP", "FALLBACK_PROXY_GRPC")]
    assert not set(ports) & {8404, 9101} and len(set(ports)) == 4
    assert all(ingress.PORTS_ABOVE <= port < ingress._ephemeral_low() for port in ports)
    # a stream's requests hash to one replica by X-Stream-Id (others: round robin); off, Ray's leastconn
    assert env["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"] == "hdr(X-Stream-Id)"
    assert ingress_env(ServeConfig(stream_affinity=False))["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"] == "leastconn"


def test_python_proxy_env_turns_both_switches_off() -> None:
    env = ingress_env(ServeConfig(fast_ingress=False))
    assert env == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}


def test_real_haproxy_binary_is_the_one_ray_serve_finds() -> None:
    binary = ingress.real_haproxy_binary()
    assert os.access(binary, os.X_OK) and Path(binary) != HAPROXY_BIND_WRAPPER


@pytest.mark.parametrize("host", ["127.0.0.1/8", "a b", "x;rm -rf /", "h&x"])
def test_hosts_that_could_escape_the_rewrite_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="serve.host"):
        haproxy_bind_env(host)


def test_a_wrapper_without_exec_permission_is_named(monkeypatch, tmp_path) -> None:
    copy = tmp_path / "haproxy_bind.sh"
    copy.write_text(HAPROXY_BIND_WRAPPER.read_text())
    monkeypatch.setattr(ingress, "HAPROXY_BIND_WRAPPER", copy)
    with pytest.raises(RuntimeError, match="not executable.*fast_ingress=false"):
        haproxy_bind_env("127.0.0.1")


def test_serve_env_prints_the_environment_of_each_mode(capsys) -> None:
    from hrm_platform.cli import main

    assert main(["serve-env"]) == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert exports["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # Ray itself on loopback too
    assert exports["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert exports["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(HAPROXY_BIND_WRAPPER)
    assert exports["RAY_SERVE_HAPROXY_RETRY_ON"] == "'conn-failure empty-response junk-response'"  # shell-quoted

    assert main(["serve-env", "serve.fast_ingress=false"]) == 0
    assert "RAY_SERVE_ENABLE_HA_PROXY=0" in capsys.readouterr().out


def test_serve_env_refuses_a_bad_host(capsys) -> None:
    from hrm_platform.cli import main

    assert main(["serve-env", "serve.host=evil;host"]) == 2
    assert "serve.host='evil;host'" in capsys.readouterr().err


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range(tmp_path) -> None:
    """Ports the kernel gives outgoing connections (binding port 0) could be taken before the server binds them:
    free_ports draws below that range, and only when the range leaves no room falls back to port 0."""
    ports = ingress.free_ports(20)
    assert len(set(ports)) == 20
    assert all(ingress.PORTS_ABOVE <= port < ingress._ephemeral_low() for port in ports)
    assert all(ingress._bind_error("127.0.0.1", port) is None for port in ports)
    no_room = tmp_path / "ip_local_port_range"
    no_room.write_text(f"{ingress.PORTS_ABOVE + 10}\t60999\n")
    assert ingress._ephemeral_low(no_room) == ingress.PORTS_ABOVE + 10
    assert ingress._ephemeral_low(tmp_path / "absent") == 32768


@pytest.mark.parametrize("no_room", ["range too small", "nothing free there"])
def test_free_ports_fall_back_to_port_zero(monkeypatch, no_room: str) -> None:
    import socket

    if no_room == "range too small":
        monkeypatch.setattr(ingress, "_ephemeral_low", lambda: ingress.PORTS_ABOVE + 10)
    else:
        monkeypatch.setattr(ingress, "_bind_error", lambda host, port: "Address already in use")
    ports = ingress.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:  # each one the kernel's: free now
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
