"""Fixtures of the reliability tests: the session's one Serve deployment, seen as an app under test.

The deployment is the session-wide `serve_app` (tests/conftest.py: the smoke checkpoint on the session's
local Ray cluster, a free port on 127.0.0.1, a bearer token, the default ingress), so the suite starts
Serve once however many areas use it. `app_under_test` adds what these tests need to know about it (the
bars a request needs, the model version) and checks, when it is first used, that the app serves the
session checkpoint: a test elsewhere that reloaded another model must have put it back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hrm_platform.checkpoint import load_manifest
from tests.reliability.target import AppUnderTest, wait_until_serving

READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def app_under_test(serve_app) -> AppUnderTest:
    from hrm_platform.data.features import FeatureSpec
    from hrm_platform.serving.lifecycle import reload_checkpoint

    manifest = load_manifest(serve_app.checkpoint)
    app = AppUnderTest(
        url=serve_app.url.rstrip("/"),
        token=serve_app.token,
        checkpoint=Path(serve_app.checkpoint),
        serve_config=serve_app.serve_config,
        bars_needed=FeatureSpec.from_dict(manifest["feature_spec"]).bars_needed,
        model_version=manifest["model_version"],
    )
    if app.get("/v1/health").json().get("model_version") != app.model_version:
        reload_checkpoint(app.checkpoint)
    wait_until_serving(app, READY_TIMEOUT_S)
    return app
