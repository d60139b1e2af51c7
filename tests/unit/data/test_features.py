"""Features are causal with a fixed lookback; stats and spec survive JSON; serving windows need enough bars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hrm_platform.data.features import (
    CHUNK,
    CLIP,
    FEATURE_NAMES,
    LOOKBACK,
    FeatureSpec,
    FeatureStats,
    compute_features,
    rolling_mean,
    rolling_std,
    window_from_bars,
    windows_from_bars,
)
from hrm_platform.data.market import generate_market


@pytest.fixture(scope="module")
def bars() -> np.ndarray:
    frame = generate_market(n_instruments=1, n_bars=600, seed=2, horizon=4).bars["SYN00"]
    return frame[["open", "high", "low", "close", "volume"]].to_numpy()  # (600, 5)


def _spec(window: int = 16) -> FeatureSpec:
    stats = FeatureStats(mean=np.linspace(-1, 1, len(FEATURE_NAMES)), std=np.linspace(0.5, 2, len(FEATURE_NAMES)))
    return FeatureSpec(names=FEATURE_NAMES, lookback=LOOKBACK, window=window, stats=stats)


def test_shape_dtype_and_warm_up_rows(bars: np.ndarray) -> None:
    features = compute_features(bars)
    assert features.shape == (600, len(FEATURE_NAMES)) and features.dtype == np.float32
    assert np.isnan(features[:LOOKBACK]).all()
    assert np.isfinite(features[LOOKBACK:]).all()


def test_features_are_causal(bars: np.ndarray) -> None:
    """Changing bars after t leaves rows <= t untouched."""
    t = 300
    altered = bars.copy()
    altered[t + 1 :, :4] *= 1.7
    altered[t + 1 :, 4] *= 0.2
    np.testing.assert_array_equal(compute_features(altered)[: t + 1], compute_features(bars)[: t + 1])


def test_row_depends_on_lookback_bars_only(bars: np.ndarray) -> None:
    """Row t from bars t-LOOKBACK..t alone equals row t from the whole history."""
    t = 450
    alone = compute_features(bars[t - LOOKBACK : t + 1])[-1]
    np.testing.assert_allclose(alone, compute_features(bars)[t], rtol=1e-6, atol=1e-6)


def test_known_feature_values(bars: np.ndarray) -> None:
    features = compute_features(bars)
    column = {name: features[:, i] for i, name in enumerate(FEATURE_NAMES)}
    open_, high, low, close, _ = bars.T
    t = 200
    assert column["ret_1"][t] == pytest.approx(np.log(close[t] / close[t - 1]), rel=1e-5)
    assert column["ret_16"][t] == pytest.approx(np.log(close[t] / close[t - 16]), rel=1e-5)
    assert column["range"][t] == pytest.approx(np.log(high[t] / low[t]), rel=1e-5)
    assert column["close_pos"][t] == pytest.approx((close[t] - low[t]) / (high[t] - low[t]), rel=1e-5)
    finite = slice(LOOKBACK, None)
    assert (column["close_pos"][finite] >= 0).all() and (column["close_pos"][finite] <= 1).all()


def test_flat_bars_give_finite_features() -> None:
    flat = np.tile([10.0, 10.0, 10.0, 10.0, 0.0], (LOOKBACK + 5, 1))
    features = compute_features(flat)
    assert np.isfinite(features[LOOKBACK:]).all()
    assert features[-1, FEATURE_NAMES.index("close_pos")] == 0.5


def test_rolling_statistics_match_reference() -> None:
    values = np.random.default_rng(1).standard_normal(50)
    means, stds = rolling_mean(values, 8), rolling_std(values, 8)
    assert np.isnan(means[:7]).all()
    for t in range(7, 50):
        assert means[t] == pytest.approx(values[t - 7 : t + 1].mean())
        assert stds[t] == pytest.approx(values[t - 7 : t + 1].std())


def test_stats_fit_apply_and_clip() -> None:
    rows = [np.array([[0.0, 10.0], [2.0, 10.0]]), np.array([[4.0, 10.0]])]
    stats = FeatureStats.fit(rows)
    np.testing.assert_allclose(stats.mean, [2.0, 10.0])
    np.testing.assert_allclose(stats.std, [np.sqrt(8 / 3), 1.0])  # a constant feature keeps std 1
    applied = stats.apply(np.array([[2.0 + 100.0, 11.0], [np.nan, 10.0]]))
    assert applied.dtype == np.float32
    assert applied[0, 0] == CLIP and applied[0, 1] == 1.0 and np.isnan(applied[1, 0])


def test_stats_refuse_zero_rows() -> None:
    with pytest.raises(ValueError, match="zero rows"):
        FeatureStats.fit([np.zeros((0, 3))])


def test_spec_json_round_trip() -> None:
    spec = _spec(window=32)
    payload = json.loads(json.dumps(spec.to_dict()))
    restored = FeatureSpec.from_dict(payload)
    assert restored.names == FEATURE_NAMES and restored.window == 32 and restored.bars_needed == 32 + LOOKBACK
    np.testing.assert_array_equal(restored.stats.mean, spec.stats.mean)
    np.testing.assert_array_equal(restored.stats.std, spec.stats.std)


def test_spec_from_other_feature_code_is_refused() -> None:
    payload = _spec().to_dict()
    payload["names"] = payload["names"][:-1] + ["something_else"]
    with pytest.raises(ValueError, match="does not match this code's features"):
        FeatureSpec.from_dict(payload)


def test_spec_with_bad_stats_is_refused() -> None:
    payload = _spec().to_dict()
    payload["stats"]["std"][0] = 0.0
    with pytest.raises(ValueError, match="positive std"):
        FeatureSpec.from_dict(payload)


def test_window_from_bars_uses_the_last_bars(bars: np.ndarray) -> None:
    spec = _spec(window=16)
    window = window_from_bars(bars, spec)
    assert window.shape == (16, len(FEATURE_NAMES)) and window.dtype == np.float32
    expected = spec.stats.apply(compute_features(bars)[-16:])
    np.testing.assert_allclose(window, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", [16, 64])
def test_windows_of_a_batch_equal_each_window_computed_alone(bars: np.ndarray, window: int) -> None:
    """The serving engine's batched features are the per-request ones to the last bit, whatever the batch."""
    spec = _spec(window=window)
    ends = list(range(spec.bars_needed, len(bars), 7))  # 60-ish overlapping requests, flat and moving stretches
    batch = np.stack([bars[end - spec.bars_needed : end] for end in ends])  # (B, bars_needed, 5)
    alone = np.stack([window_from_bars(bars[:end], spec) for end in ends])
    together = windows_from_bars(batch, spec)
    assert together.shape == (len(ends), window, len(FEATURE_NAMES)) and together.dtype == np.float32
    assert np.array_equal(together, alone, equal_nan=True)
    assert np.array_equal(windows_from_bars(batch[3:4], spec), alone[3:4], equal_nan=True)  # batch of one
    flat = np.repeat(bars[:1], spec.bars_needed, axis=0)  # a market that never moves: zero spreads and returns
    assert np.array_equal(windows_from_bars(flat[None], spec)[0], window_from_bars(flat, spec), equal_nan=True)


def test_windows_from_bars_refuses_another_shape(bars: np.ndarray) -> None:
    spec = _spec(window=16)
    with pytest.raises(ValueError, match=r"shape \(B, 64, 5\)"):
        windows_from_bars(bars[None, : spec.bars_needed - 1], spec)


def test_window_from_bars_needs_enough_bars(bars: np.ndarray) -> None:
    spec = _spec(window=16)
    with pytest.raises(ValueError, match=f"need at least {16 + LOOKBACK} bars"):
        window_from_bars(bars[: spec.bars_needed - 1], spec)


def test_compute_features_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(T, 5\)"):
        compute_features(np.ones((10, 4)))


def test_blocked_computation_matches_rows_computed_alone() -> None:
    """Long histories are computed in blocks of CHUNK rows; rows on either side of a seam are unaffected."""
    frame = generate_market(n_instruments=1, n_bars=CHUNK + 200, seed=4, horizon=4).bars["SYN00"]
    long_bars = frame[["open", "high", "low", "close", "volume"]].to_numpy()
    features = compute_features(long_bars)
    for t in (LOOKBACK + CHUNK - 1, LOOKBACK + CHUNK, LOOKBACK + CHUNK + 1):
        alone = compute_features(long_bars[t - LOOKBACK : t + 1])[-1]
        np.testing.assert_allclose(features[t], alone, rtol=1e-6, atol=1e-6)


def test_apply_in_place_equals_apply_to_a_copy(bars: np.ndarray) -> None:
    features = compute_features(bars)
    stats = FeatureStats.fit([features[LOOKBACK:300]])
    expected = stats.apply(features)
    result = stats.apply(features, out=features)
    assert result is features
    np.testing.assert_array_equal(features, expected)
