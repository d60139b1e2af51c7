"""InferenceEngine on a real (smoke-trained) checkpoint: parity with the model, budgets, deadlines, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hrm_platform.actions import ACTIONS
from hrm_platform.checkpoint import MANIFEST_FILE, load_model
from hrm_platform.data.dataset import build_datasets
from hrm_platform.model.act import predict
from hrm_platform.serving.cache import PredictionCache
from hrm_platform.serving.engine import EngineError, InferenceEngine, LatencyModel
from hrm_platform.serving.export import held_out_windows
from hrm_platform.serving.schemas import decision_response


@pytest.fixture(scope="module")
def eager_engine(trained_checkpoint: Path) -> InferenceEngine:
    return InferenceEngine.from_checkpoint(trained_checkpoint, variant="eager")


@pytest.fixture(scope="module")
def held_out(trained_checkpoint: Path):
    """Test-split windows and the raw bars that produce them (checkpoint's feature statistics)."""
    _, loaded = load_model(trained_checkpoint)
    bundle = build_datasets(loaded.config.data, feature_stats=loaded.feature_spec.stats)
    return bundle


def _bars_for(bundle, position: int) -> np.ndarray:
    """Raw bars (end_t + 1, 5) of the instrument of test sample `position`, ending at its window's last bar."""
    instrument, end_t = (int(v) for v in bundle.test.index[position])
    frame = bundle.bars[bundle.symbols[instrument]]
    return frame[["open", "high", "low", "close", "volume"]].to_numpy()[: end_t + 1]


def test_prediction_from_bars_equals_model_on_dataset_window(trained_checkpoint, eager_engine, held_out):
    model, _ = load_model(trained_checkpoint)
    positions = np.linspace(0, len(held_out.test) - 1, 12).astype(np.int64)
    windows, _, _ = held_out.test.batch(positions)  # (12, W, F) exactly what evaluation sees
    reference = predict(model, windows)
    predictions = eager_engine.predict_bars([_bars_for(held_out, int(p)) for p in positions])
    engine_probabilities = np.array([[p.probabilities[a] for a in ACTIONS] for p in predictions])
    np.testing.assert_allclose(engine_probabilities, reference.probabilities.numpy(), atol=1e-5)
    assert [p.segments for p in predictions] == reference.segments_used.tolist()
    assert [p.action for p in predictions] == [ACTIONS[i] for i in reference.probabilities.argmax(1).tolist()]
    np.testing.assert_allclose([p.quantity for p in predictions], reference.quantity.numpy(), atol=1e-5)


def test_budgets_cap_segments(eager_engine, held_out):
    bars = _bars_for(held_out, 0)
    one = eager_engine.predict_bars([bars, bars], budgets=[1, None])
    assert one[0].segments == 1
    assert 1 <= one[1].segments <= eager_engine.max_segments
    # Without halting every sample runs exactly to its own budget, all in one batch.
    windows, _, _ = held_out.test.batch(np.arange(3))
    budgets = torch.tensor([1, 2, eager_engine.max_segments])
    result = eager_engine.run(windows, budgets, use_halting=False)
    assert result.segments_used.tolist() == [1, 2, eager_engine.max_segments]
    # Budgets above the model's M are clamped, not refused.
    assert eager_engine.predict_bars([bars], budgets=[99])[0].segments <= eager_engine.max_segments


def test_bad_budgets_and_bars_are_refused_with_the_request_named(eager_engine, held_out):
    bars = _bars_for(held_out, 0)
    with pytest.raises(ValueError, match="request 1: max_segments"):
        eager_engine.predict_bars([bars, bars], budgets=[1, 0])
    with pytest.raises(ValueError, match="request 0: need at least"):
        eager_engine.predict_bars([bars[-10:]])
    with pytest.raises(ValueError, match="2 budgets for 1 requests"):
        eager_engine.predict_bars([bars], budgets=[1, 2])


def test_deadline_maps_to_fewer_segments_when_tighter(eager_engine):
    measured = eager_engine.latency
    assert measured is not None and measured.segment_ms > 0 and measured.fixed_ms >= 0
    assert eager_engine.segments_for_deadline(60_000) == eager_engine.max_segments
    assert eager_engine.segments_for_deadline(1e-3) == 1  # the best answer available: one segment
    original = eager_engine.latency
    try:
        eager_engine.latency = LatencyModel(segment_ms=2.0, fixed_ms=1.0)
        budgets = [eager_engine.segments_for_deadline(ms) for ms in (100.0, 7.0, 5.0, 3.0, 1.5)]
        assert budgets == [3, 3, 2, 1, 1]  # smoke model: max_segments = 3
    finally:
        eager_engine.latency = original
    with pytest.raises(ValueError, match="deadline_ms"):
        eager_engine.segments_for_deadline(0)


def test_position_sets_the_trade_not_the_decision(eager_engine, held_out):
    """The engine's decision is position-free; the HTTP answer's trade is target - position."""
    bars = _bars_for(held_out, 5)
    decision = eager_engine.predict_bars([bars])[0]
    direction = {"hold": 0.0, "buy": 1.0, "sell": -1.0}[decision.action]
    assert decision.target_position == pytest.approx(direction * decision.quantity)
    answers = [
        decision_response(decision, position=position, cached=False, model_version="v", latency_ms=1.0)
        for position in (0.0, 0.5, -0.25)
    ]
    assert {answer.action for answer in answers} == {decision.action}
    for answer, position in zip(answers, (0.0, 0.5, -0.25)):
        assert answer.target_position == decision.target_position
        assert answer.trade == pytest.approx(decision.target_position - position)


def test_cached_answer_equals_uncached(eager_engine, held_out):
    cache = PredictionCache(maxsize=16, ttl_s=60)
    bars, budget = _bars_for(held_out, 7), 2
    key = cache.make_key(eager_engine.model_version, bars, budget)
    assert cache.get(key) is None
    computed = eager_engine.predict_bars([bars], [budget])[0]
    cache.put(key, computed)
    cached = cache.get(cache.make_key(eager_engine.model_version, bars.copy(), budget))
    fresh = eager_engine.predict_bars([bars], [budget])[0]
    assert cached == fresh
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_int8_engine_agrees_with_fp32_on_held_out_windows(trained_checkpoint, eager_engine):
    """As export checks it: >= 256 held-out windows, alone (concurrency 1) and in batches of the serving
    batch size (int8 activation scales are per batch, so a full batch is the harder case)."""
    int8 = InferenceEngine.from_checkpoint(trained_checkpoint, variant="int8")
    _, loaded = load_model(trained_checkpoint)
    windows = held_out_windows(loaded, 256)  # (256, W, F) spread over the test split
    assert windows.shape[0] >= 256
    batch = loaded.config.serve.max_batch_size
    for chunk in (1, batch):
        reference = torch.cat(
            [eager_engine.run(windows[i : i + chunk]).probabilities for i in range(0, len(windows), chunk)]
        )
        quantized = torch.cat([int8.run(windows[i : i + chunk]).probabilities for i in range(0, len(windows), chunk)])
        disagree = reference.argmax(1) != quantized.argmax(1)
        assert 1 - disagree.float().mean().item() >= 0.99, f"batch {chunk}"
        assert (reference - quantized).abs().max().item() <= 0.05, f"batch {chunk}"
        # Any flip is a near-tie of fp32's top two probabilities, never a confident decision.
        top_two = reference[disagree].sort(dim=1).values[:, -2:]
        assert bool(((top_two[:, 1] - top_two[:, 0]) < 0.05).all()), f"batch {chunk}"
    assert int8.model_version == eager_engine.model_version


def test_unexported_checkpoint_serves_eager_and_refuses_artefact_variants(trained_checkpoint):
    engine = InferenceEngine.from_checkpoint(trained_checkpoint)
    assert engine.variant == "eager"
    assert engine.bars_needed == engine.feature_spec.window + engine.feature_spec.lookback
    with pytest.raises(EngineError, match="hrm export"):
        InferenceEngine.from_checkpoint(trained_checkpoint, variant="jit_int8")
    with pytest.raises(EngineError, match="unknown engine variant 'fastest'"):
        InferenceEngine.from_checkpoint(trained_checkpoint, variant="fastest")


def test_tampered_checkpoint_is_refused(trained_checkpoint, tmp_path):
    import shutil

    copy = Path(shutil.copytree(trained_checkpoint, tmp_path / "ckpt"))
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    weights = copy / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))
    with pytest.raises(EngineError, match="integrity"):
        InferenceEngine.from_checkpoint(copy)
    assert manifest["model_version"]  # the manifest itself was left as written
