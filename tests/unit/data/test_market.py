"""Synthetic market: consistent bars, seeded determinism, and the properties its docstring promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hrm_platform.data.market import (
    HIGH_VOLATILITY,
    REGIME_NAMES,
    TRENDING,
    _oracle_coefficients,
    generate_market,
    linear_recurrence,
    transition_matrix,
)


@pytest.fixture(scope="module")
def market():
    return generate_market(n_instruments=3, n_bars=4000, seed=11, horizon=8)


@pytest.fixture(scope="module")
def long_market():
    return generate_market(n_instruments=2, n_bars=60_000, seed=5, horizon=8)


def test_bars_are_consistent(market) -> None:
    assert set(market.bars) == {"SYN00", "SYN01", "SYN02"}
    for frame in market.bars.values():
        assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
        values = frame.to_numpy()
        assert np.isfinite(values).all() and (values > 0).all()
        assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
        assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()


def test_index_is_utc_15_minute_bars(market) -> None:
    index = market.bars["SYN00"].index
    assert str(index.tz) == "UTC" and len(index) == 4000
    assert ((index[1:] - index[:-1]) == pd.Timedelta(minutes=15)).all()


def test_same_seed_same_market_other_seed_differs(market) -> None:
    again = generate_market(n_instruments=3, n_bars=4000, seed=11, horizon=8)
    other = generate_market(n_instruments=3, n_bars=4000, seed=12, horizon=8)
    for symbol in market.bars:
        pd.testing.assert_frame_equal(market.bars[symbol], again.bars[symbol])
        np.testing.assert_array_equal(market.regimes[symbol], again.regimes[symbol])
        np.testing.assert_array_equal(market.expected_log_return[symbol], again.expected_log_return[symbol])
        assert not np.allclose(market.bars[symbol]["close"], other.bars[symbol]["close"])


def test_instrument_does_not_depend_on_how_many_are_generated(market) -> None:
    fewer = generate_market(n_instruments=1, n_bars=4000, seed=11, horizon=8)
    pd.testing.assert_frame_equal(fewer.bars["SYN00"], market.bars["SYN00"])


def test_regimes_and_oracle_shapes(market) -> None:
    for symbol in market.bars:
        regimes, oracle = market.regimes[symbol], market.expected_log_return[symbol]
        assert regimes.dtype == np.int8 and regimes.shape == (4000,)
        assert set(np.unique(regimes)) <= set(range(len(REGIME_NAMES)))
        assert oracle.dtype == np.float64 and np.isnan(oracle[-8:]).all() and np.isfinite(oracle[:-8]).all()
    assert market.horizon == 8


def test_all_regimes_occur_in_long_episodes(long_market) -> None:
    regimes = long_market.regimes["SYN00"]
    assert set(np.unique(regimes)) == {0, 1, 2}
    switches = np.count_nonzero(np.diff(regimes))
    assert 60_000 / switches > 100  # mean episode length is 120-300 bars


def test_oracle_is_unbiased_and_predictive(long_market) -> None:
    for symbol, frame in long_market.bars.items():
        log_close = np.log(frame["close"].to_numpy())
        realised = log_close[8:] - log_close[:-8]
        oracle = long_market.expected_log_return[symbol][:-8]
        slope = np.polyfit(oracle, realised, 1)[0]
        assert slope == pytest.approx(1.0, abs=0.1)  # realised = oracle + zero-mean noise
        assert np.corrcoef(oracle, realised)[0, 1] > 0.25


def test_trending_drift_persists_over_the_horizon() -> None:
    coefficients = _oracle_coefficients(horizon=8)  # (regime, [drift, deviation])
    assert 7.5 < coefficients[TRENDING, 0] < 8.0  # the drift survives almost all of the 8 bars
    assert coefficients[1, 1] < -0.5  # mean-reverting: a price above its average is expected to fall
    assert abs(coefficients[HIGH_VOLATILITY, 1]) < 0.1


def test_volatility_clusters_and_volume_follows_absolute_returns(long_market) -> None:
    frame = long_market.bars["SYN00"]
    returns = np.diff(np.log(frame["close"].to_numpy()))
    size = np.abs(returns)
    assert np.corrcoef(size[1:], size[:-1])[0, 1] > 0.1  # |r| is autocorrelated
    assert abs(np.corrcoef(returns[1:], returns[:-1])[0, 1]) < 0.1  # r itself nearly is not
    assert np.corrcoef(size, np.log(frame["volume"].to_numpy()[1:]))[0, 1] > 0.3


def test_high_volatility_regime_is_more_volatile(long_market) -> None:
    returns = np.diff(np.log(long_market.bars["SYN01"]["close"].to_numpy()))
    regimes = long_market.regimes["SYN01"][1:]
    assert returns[regimes == HIGH_VOLATILITY].std() > 1.8 * returns[regimes == TRENDING].std()


def test_transition_matrix_is_stochastic() -> None:
    matrix = transition_matrix()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert (np.diag(matrix) > 0.99).all()


def test_linear_recurrence_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    decay, innovation = rng.uniform(0.7, 1.0, 1000), rng.standard_normal(1000)
    expected, state = np.empty(1000), 0.0
    for t in range(1000):
        state = decay[t] * state + innovation[t]
        expected[t] = state
    np.testing.assert_allclose(linear_recurrence(decay, innovation), expected, rtol=1e-10, atol=1e-10)


def test_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="n_instruments >= 1"):
        generate_market(n_instruments=0, n_bars=100, seed=0, horizon=4)
