"""Every model.arch serves over HTTP: the session app hot-reloads to each arch's exported checkpoint, its replica
loads the export's choice, and the answers equal that engine's."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import ARCH_SETTINGS
from tests.integration.serving_helpers import assert_same_decision, health, predict

pytestmark = pytest.mark.ray


def _export_choice(checkpoint) -> str:
    from hrm_platform.serving.manifest import SERVING_MANIFEST, serving_dir

    return json.loads((serving_dir(checkpoint) / SERVING_MANIFEST).read_text())["chosen"]


def _wait_for_checkpoint(client: httpx.Client, checkpoint, timeout_s: float = 90.0) -> None:
    """By path: the hrm arch's smoke checkpoint has the session model's weights, so its version too."""
    deadline = time.monotonic() + timeout_s
    while client.get("/v1/model").json()["checkpoint"] != str(checkpoint):
        assert time.monotonic() < deadline, f"{checkpoint} not served after {timeout_s} s"
        time.sleep(0.1)


def test_every_arch_serves_its_export_over_http(client, serve_app, engine, market_bars, exported_arch_checkpoints):
    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.lifecycle import reload_checkpoint

    try:
        for arch in sorted(ARCH_SETTINGS):
            exported = InferenceEngine.from_checkpoint(exported_arch_checkpoints[arch])
            reload_checkpoint(exported_arch_checkpoints[arch])
            _wait_for_checkpoint(client, exported_arch_checkpoints[arch])
            state = health(client)
            assert (
                state["variant"] == exported.variant == _export_choice(exported_arch_checkpoints[arch])
            ), (arch, state)
            assert state["reload_error"] is None
            for bars in market_bars[:4]:
                answer = predict(client, bars, max_segments=exported.max_segments).json()
                assert answer["model_version"] == exported.model_version
                assert_same_decision(answer, exported.predict_bars([bars], [exported.max_segments])[0])
    finally:
        reload_checkpoint(serve_app.checkpoint)
        _wait_for_checkpoint(client, serve_app.checkpoint)
