"""Typed app builder for Serve's CLI, run from the repository root. The deployment and the builder our Serve
configs name (`hrm_platform.serving.app:build_app`) live in the installed package, so every Ray node imports
them without this repository on its path; this module only re-exports the builder with its typed argument.

    serve run deployments.hrm_app:app_builder checkpoint=$PWD/runs/smoke/best    # from the repository root
    serve run deployments/serve_config.yaml                                       # see that file's header

No `from __future__ import annotations` here: Serve reads the builder's annotation to validate `args` into
AppArgs, and a string annotation would hand the builder a plain dict.
"""

from ray.serve import Application

from hrm_platform.serving.app import AppArgs, build_app


def app_builder(args: AppArgs) -> Application:
    return build_app(args)
