"""The served model is the exported one: export a trained checkpoint, serve it with engine_variant auto,
and check through HTTP that the replica runs export's choice and answers as eager fp32 does.

The session app (tests/conftest.py serve_app) is hot-reloaded onto an exported copy of its checkpoint: a
replica loads a user_config checkpoint exactly as it loads one at start (`load_served_model`), and a reload
costs ~1 s where a second app would cost a replica start. The test puts the session checkpoint back.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from hrm_platform.data.market import generate_market
from hrm_platform.data.ohlcv import BAR_COLUMNS
from tests.integration.serving_helpers import assert_same_decision, health, predict

pytestmark = pytest.mark.ray

EXPORTED_VARIANTS = ["eager", "jit_int8"]  # eager is export's reference; jit_int8 exports in seconds on a CPU
REQUESTS = 100  # one differing action is within export's 99 % agreement
SWAP_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def exported(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint, report): an exported copy of the session checkpoint (export writes into it)."""
    from hrm_platform.serving.export import ExportSettings, export_engine

    checkpoint = Path(shutil.copytree(trained_checkpoint, tmp_path_factory.mktemp("exported") / "checkpoint"))
    quick = ExportSettings(repeats_batch1=10, repeats_batch32=2, eval_windows=256, measure_ready=False)
    report = export_engine(checkpoint, variants=EXPORTED_VARIANTS, settings=quick)
    return checkpoint.resolve(), report


@pytest.fixture(scope="module")
def real_bars(exported) -> list[np.ndarray]:
    """REQUESTS requests of bars_needed + 8 synthetic-market bars each, (N, 5) float64, 10 bars apart."""
    from hrm_platform.serving.engine import InferenceEngine

    bars_needed = InferenceEngine.from_checkpoint(exported[0], variant="eager").bars_needed
    length = bars_needed + 8
    frame = generate_market(1, length + 10 * REQUESTS, seed=11, horizon=4).bars["SYN00"]
    values = frame[list(BAR_COLUMNS)].to_numpy()
    return [values[start : start + length] for start in range(0, 10 * REQUESTS, 10)]


def _wait_for_checkpoint(client: httpx.Client, checkpoint: Path) -> dict:
    """GET /v1/model until the replica serves `checkpoint` (a reload swaps once the new engine is loaded)."""
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    summary: dict = {}
    while time.monotonic() < deadline:
        summary = client.get("/v1/model").json()
        if summary.get("checkpoint") == str(checkpoint):
            return summary
        time.sleep(0.2)
    raise AssertionError(f"the replica never served {checkpoint}: last /v1/model {summary}")


def test_replica_serves_the_exported_variant_and_agrees_with_eager(serve_app, exported, real_bars):
    from hrm_platform.serving.engine import InferenceEngine
    from hrm_platform.serving.lifecycle import reload_checkpoint

    checkpoint, report = exported
    assert serve_app.serve_config.engine_variant == "auto"
    assert report.chosen not in (None, "eager"), f"export chose {report.chosen}: {report.variants}"
    eager = InferenceEngine.from_checkpoint(checkpoint, variant="eager")
    chosen = InferenceEngine.from_checkpoint(checkpoint, variant=report.chosen)
    with httpx.Client(base_url=serve_app.url, headers=serve_app.headers, timeout=30.0) as client:
        try:
            reload_checkpoint(checkpoint)
            summary = _wait_for_checkpoint(client, checkpoint)
            served = health(client)
            answers = []
            for bars in real_bars:  # one at a time: each is computed alone (batch 1), as the bare engines below
                response = predict(client, bars)
                assert response.status_code == 200, response.text
                answers.append(response.json())
        finally:
            reload_checkpoint(serve_app.checkpoint)
            _wait_for_checkpoint(client, Path(serve_app.checkpoint).resolve())

    assert summary["variant"] == served["variant"] == report.chosen
    expected = [chosen.predict_bars([bars])[0] for bars in real_bars]
    for answer, prediction in zip(answers, expected):
        assert_same_decision(answer, prediction, tolerance=1e-4)  # the served engine is export's artefact
    _assert_agrees_with_eager(answers, [eager.predict_bars([bars])[0] for bars in real_bars], report.settings)


def _assert_agrees_with_eager(answers: list[dict], eager: list, settings) -> None:
    """Export's checks on the HTTP answers: action agreement >= export.min_agreement, and probabilities within
    export.max_probability_diff where both stopped after the same number of segments (export compares them
    at M segments; ACT halting may stop a nearly tied window one segment apart in either engine)."""
    agreement = np.mean([answer["action"] == prediction.action for answer, prediction in zip(answers, eager)])
    same_segments = [(a, p) for a, p in zip(answers, eager) if a["segments"] == p.segments]
    differences = [
        abs(answer["probabilities"][name] - probability)
        for answer, prediction in same_segments
        for name, probability in prediction.probabilities.items()
    ]
    print(f"served vs eager fp32 on {len(answers)} requests: agreement {agreement:.2%}, same segments "
          f"{len(same_segments)}, largest probability difference {max(differences):.4f}")
    assert agreement >= settings.min_agreement
    assert len(same_segments) >= settings.min_agreement * len(answers)
    assert max(differences) <= settings.max_probability_diff
