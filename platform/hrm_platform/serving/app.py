"""The typed Serve app builder: `build_app(AppArgs)` -> the replica deployment bound to its config.

    serve run hrm_platform.serving.app:build_app checkpoint=runs/smoke/epoch_0002
    eval "$(hrm serve-env)"; serve run deployments/serve_config.yaml        # Serve's own CLI, same builder

`application_config` writes the same app as one entry of a Serve config (`serve deploy`), which is how
`serving/lifecycle.py` deploys it, so a hot reload changes only its user_config.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hrm_platform.config import ConfigError, ServeConfig
from hrm_platform.serving.replica import DEPLOYMENT_NAME, HRMDeployment
from hrm_platform.serving.variants import VariantError, variant_info
from hrm_platform.storage import checkpoint_location

APP_NAME = "hrm"
BUILDER_IMPORT_PATH = "hrm_platform.serving.app:build_app"


class AppArgs(BaseModel):
    """Arguments of the app builder (`serve run ... checkpoint=PATH` or `args:` in a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(
        description="checkpoint directory or URI (s3://, gs://, file://...) to serve first; hot reloads go through "
        "user_config"
    )
    serve: ServeConfig = Field(default_factory=ServeConfig)


def deployment_options(serve_config: ServeConfig) -> dict[str, Any]:
    """Replicas, concurrency, health checks and logging of HRMDeployment from the serve config."""
    if serve_config.max_ongoing_requests < serve_config.max_batch_size:
        raise ValueError(
            f"serve.max_ongoing_requests={serve_config.max_ongoing_requests} is below serve.max_batch_size="
            f"{serve_config.max_batch_size}: a replica could never fill a batch"
        )
    options: dict[str, Any] = {
        "max_ongoing_requests": serve_config.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": serve_config.replica_cpus, "num_gpus": serve_config.replica_gpus},
        "health_check_period_s": serve_config.health_check_period_s,
        "health_check_timeout_s": serve_config.health_check_timeout_s,
        "logging_config": logging_config(serve_config),
    }
    if serve_config.num_replicas == "auto":
        options["autoscaling_config"] = {
            "min_replicas": serve_config.min_replicas,
            "max_replicas": serve_config.max_replicas,
            "target_ongoing_requests": serve_config.max_batch_size,  # one full batch in flight per replica
        }
    else:
        options["num_replicas"] = serve_config.num_replicas
    return options


def logging_config(serve_config: ServeConfig) -> dict[str, Any]:
    """Serve's LoggingConfig for the replicas: the access log, and Serve's logger at serve.log_level (INFO at
    least with the access log, whose lines are INFO records)."""
    level = serve_config.log_level
    if serve_config.access_log and logging.getLevelName(level) > logging.INFO:
        level = "INFO"
    return {"enable_access_log": serve_config.access_log, "log_level": level}


def check_engine_variant(serve_config: ServeConfig) -> None:
    """serve.engine_variant names a registered variant (or auto): refused before any replica starts."""
    if serve_config.engine_variant == "auto":
        return
    try:
        variant_info(serve_config.engine_variant)
    except VariantError as error:
        raise ConfigError(f"serve.engine_variant={serve_config.engine_variant!r}: {error}") from None


def build_app(args: AppArgs | dict[str, Any]):
    """Typed app builder: `serve run hrm_platform.serving.app:build_app checkpoint=PATH`."""
    args = AppArgs.model_validate(args) if not isinstance(args, AppArgs) else args
    check_engine_variant(args.serve)
    checkpoint = checkpoint_location(args.checkpoint)  # replicas do not share the builder's working directory
    return HRMDeployment.options(
        **deployment_options(args.serve), user_config={"checkpoint": str(checkpoint)}
    ).bind(args.serve.model_dump(mode="json"), str(checkpoint))  # checkpoint: a starting replica's fallback


def application_config(checkpoint: str, serve_config: ServeConfig, env_vars: dict[str, str] | None = None) -> dict:
    """One entry of a Serve config's `applications:`, as `serve deploy` takes it (see serve_config.yaml)."""
    config: dict[str, Any] = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": BUILDER_IMPORT_PATH,
        "args": {"checkpoint": str(checkpoint), "serve": serve_config.model_dump(mode="json")},
        "deployments": [{"name": DEPLOYMENT_NAME, "user_config": {"checkpoint": str(checkpoint)}}],
    }
    if env_vars:
        config["runtime_env"] = {"env_vars": env_vars}
    return config
