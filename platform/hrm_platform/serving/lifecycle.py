"""Starting, reloading and stopping the app on a Ray cluster (through Serve's declarative deploy).

    url = start_server(Path("runs/smoke/epoch_0002"), ServeConfig(port=8123))   # embedded local Ray; tests, demo
    hrm serve --checkpoint runs/smoke/epoch_0002                                  # serve_forever: blocks, prints URL
    reload_checkpoint(Path("runs/smoke/epoch_0003"))                              # user_config only: no restart
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ray import serve

from hrm_platform.checkpoint import load_manifest
from hrm_platform.config import ServeConfig
from hrm_platform.local_ray import init_local_ray
from hrm_platform.serving.app import APP_NAME, application_config, check_engine_variant
from hrm_platform.serving.ingress import ingress_env
from hrm_platform.serving.manifest import ManifestError, read_serving_manifest
from hrm_platform.serving.memory_guard import stop_memory_guard
from hrm_platform.serving.replica import DEPLOYMENT_NAME
from hrm_platform.storage import checkpoint_location, local_checkpoint

logger = logging.getLogger(__name__)


def start_server(checkpoint: Path, serve_config: ServeConfig) -> str:
    """Deploy the app on Serve (starting a local Ray cluster if none is connected); returns the base URL.

    The app is deployed declaratively, as `serve deploy` does, so `reload_checkpoint` can later change only
    its user_config and the running replicas reconfigure in place.
    """
    import ray

    checkpoint = checkpoint_location(checkpoint)
    check_engine_variant(serve_config)
    env = ingress_env(serve_config)
    if not ray.is_initialized():
        init_local_ray()
    serve.start(
        http_options={
            "host": serve_config.host,
            "port": serve_config.port,
            "request_timeout_s": serve_config.request_timeout_s,
        },
        controller_options={"runtime_env": {"env_vars": env}},
    )
    host, port = _serve_http_address()
    if (host, port) != (serve_config.host, serve_config.port):
        raise RuntimeError(
            f"Serve is already running on this Ray cluster at {host}:{port}, not {serve_config.host}:"
            f"{serve_config.port}; its HTTP options cannot change without serve.shutdown()"
        )
    token = os.environ.get(serve_config.auth_token_env)
    env_vars = {serve_config.auth_token_env: token} if token else None  # replicas may not share our env
    applications = _deployed_applications()  # a deploy replaces the whole set: keep the others
    applications[APP_NAME] = application_config(checkpoint, serve_config, env_vars)
    _deploy_applications(list(applications.values()))
    _wait_until_running(APP_NAME, serve_config.start_timeout_s)
    return f"http://{host}:{port}"


def reload_checkpoint(checkpoint: Path, app_name: str = APP_NAME, verify: bool = True) -> None:
    """Point the running app at another checkpoint: only user_config changes, so replicas reconfigure in
    place (no restart). Returns once Serve accepted the config; replicas swap when the new model is loaded.

    A damaged checkpoint is refused here (CheckpointError), because a replica restarting later would start
    from whatever user_config names. `verify=False` skips that, as `serve deploy` of an edited YAML does; the
    replicas then refuse it themselves and keep serving the old model."""
    if verify:
        local_checkpoint(checkpoint, verify=True)  # a URI: fetched into the cache and every hash checked
    applications = _deployed_applications()
    if app_name not in applications:
        raise RuntimeError(f"no application {app_name!r} deployed from a config (running: {sorted(applications)})")
    for deployment in applications[app_name].setdefault("deployments", []):
        if deployment["name"] == DEPLOYMENT_NAME:
            deployment["user_config"] = {"checkpoint": checkpoint_location(checkpoint)}
    _deploy_applications(list(applications.values()))


def serve_forever(checkpoint: Path, serve_config: ServeConfig) -> int:
    """`hrm serve`: start, print the URL, block until Ctrl-C or SIGTERM, shut down."""
    import ray

    started_ray = not ray.is_initialized()
    url = start_server(checkpoint, serve_config)
    model_version = load_manifest(checkpoint)["model_version"]
    print(start_message(
        checkpoint, url, model_version,
        engine=served_engine(checkpoint, serve_config.engine_variant, model_version),
        token_env=serve_config.auth_token_env,
        token_required=bool(os.environ.get(serve_config.auth_token_env)),  # as start_server hands it to replicas
    ), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if started_ray:
            ray.shutdown()  # everything goes with our cluster (serve.shutdown alone waits 30 s in fast ingress)
        else:
            serve.shutdown()
            stop_memory_guard()  # detached: it would outlive the app on a shared cluster
    return 0


def served_engine(checkpoint: Path, engine_variant: str, model_version: str) -> str:
    """The engine the replicas load, in words: serve.engine_variant when it names one, else export's choice."""
    if engine_variant != "auto":
        return f"{engine_variant} (serve.engine_variant)"
    try:
        serving = read_serving_manifest(checkpoint, model_version)
    except ManifestError as error:
        return f"eager fp32 (unoptimised: {error})"
    if serving is None:  # never exported, or exported for another model version or torch build (logged)
        return f"eager fp32 (unoptimised: no export found; run `hrm export --checkpoint {checkpoint}`)"
    if not serving.get("chosen"):
        return "eager fp32 (`hrm export` found no variant that passed its checks)"
    return f"{serving['chosen']} (chosen by `hrm export`)"


def start_message(
    checkpoint: Path, url: str, model_version: str, *, engine: str, token_env: str, token_required: bool
) -> str:
    """What `hrm serve` prints once the app runs: where, which model on which engine, and whether it needs a token."""
    if token_required:
        auth = f"token required ({token_env}): send -H \"Authorization: Bearer ${token_env}\""
    else:
        auth = f"no token: anyone who reaches the port may call it (set {token_env} before `hrm serve` to require one)"
    return "\n".join([
        f"serving {checkpoint} at {url}  (docs: {url}/docs; Ctrl-C stops)",
        f"  model   {model_version}",
        f"  engine  {engine}",
        f"  auth    {auth}",
        f"  curl -s {url}/v1/health",
    ])


# Ray Serve's public Python API (serve.run) always redeploys with a fresh code version, i.e. a rolling
# restart of the replicas. A user_config-only update that calls reconfigure() in place needs the declarative
# path that `serve deploy` takes; these helpers use the same controller client the Serve CLI uses.


def _serve_client():
    from hrm_platform.ray_compat import serve_client

    return serve_client()


def _serve_http_address() -> tuple[str, int]:
    http_options = _serve_client().http_config
    return http_options.host, http_options.port


def _deployed_applications() -> dict[str, dict[str, Any]]:
    """Applications deployed from a config, as their config dicts (imperatively run apps are not listed)."""
    details = _serve_client().get_serve_details()
    return {
        name: dict(app["deployed_app_config"])
        for name, app in details.get("applications", {}).items()
        if app.get("deployed_app_config")
    }


def _deploy_applications(applications: list[dict[str, Any]]) -> None:
    from ray.serve.schema import ServeDeploySchema

    _serve_client().deploy_apps(ServeDeploySchema.model_validate({"applications": applications}))


def _wait_until_running(app_name: str, timeout_s: float) -> None:
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app_name)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"application {app_name!r} failed to deploy: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"application {app_name!r} not running after {timeout_s:.0f} s")
