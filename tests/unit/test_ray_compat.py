"""Ray's private names live in hrm_platform/ray_compat.py only; each shim resolves on the tested Ray, and an
untested Ray fails there with a message that says what to re-check."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import ray

from hrm_platform import ray_compat

PACKAGE = Path(ray_compat.__file__).parent


def test_the_installed_ray_is_the_tested_one():
    ray_compat.check_ray_version()
    assert ray.__version__.startswith(ray_compat.TESTED_RAY + ".")


@pytest.mark.parametrize("shim", sorted(ray_compat.PRIVATE_NAMES))
def test_every_private_name_resolves(shim):
    module, attribute = ray_compat.private(shim)
    assert hasattr(module, attribute)


def test_an_untested_ray_fails_naming_the_shims(monkeypatch):
    with pytest.raises(ray_compat.UntestedRayError, match=r"written against Ray 2\.60\.x, this is Ray 2\.99\.0"):
        ray_compat.check_ray_version("2.99.0")
    monkeypatch.setattr(ray, "__version__", "3.0.1")
    with pytest.raises(ray_compat.UntestedRayError, match="haproxy_binary"):
        ray_compat.resolve_haproxy_binary()


def test_a_vanished_private_name_is_reported(monkeypatch):
    monkeypatch.setitem(ray_compat.PRIVATE_NAMES, "serve_client", ("ray.serve.context", "_no_such_name"))
    with pytest.raises(ray_compat.UntestedRayError, match=r"ray\.serve\.context\._no_such_name \(serve_client\)"):
        ray_compat.serve_client()


def test_loopback_mode_sets_rays_switch(monkeypatch):
    constants = importlib.import_module("ray._private.ray_constants")
    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", True)
    ray_compat.set_loopback_cluster_mode()
    assert constants.ENABLE_RAY_CLUSTER is False


def test_haproxy_binary_is_a_file():
    assert Path(ray_compat.resolve_haproxy_binary()).is_file()


def test_replica_grpc_bind_is_wrapped_and_read_back(monkeypatch):
    replica = importlib.import_module("ray.serve._private.replica")
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda server, address: address)
    ray_compat.wrap_replica_grpc_bind(lambda original: lambda server, address: original(server, "127.0.0.1:5"))
    assert ray_compat.replica_grpc_bind()(None, "[::]:5") == "127.0.0.1:5"


def test_direct_ingress_ports_are_a_range_and_two_ports():
    ports, fallback = ray_compat.direct_ingress_ports()
    assert len(ports) > 0 and len(fallback) == 2


def test_no_other_module_names_a_ray_private():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "ray_compat.py"
        and ("._private" in path.read_text() or "_get_global_client" in path.read_text())
    ]
    assert offenders == []
