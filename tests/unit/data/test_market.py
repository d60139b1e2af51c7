"""Synthetic market: consistent bars, seeded determinism, and the properties its docstring promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hrm_platform.config import DataConfig
from hrm_platform.data.market import (
    BARS_PER_DAY,
    BARS_PER_YEAR,
    HIGH_VOLATILITY,
    MEAN_REVERSION,
    MEAN_REVERTING,
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


def oracle_ic(market) -> float:
    """Pearson correlation of the oracle's expected h-bar log return with the realised one, pooled."""
    expected, realised = [], []
    for symbol, frame in market.bars.items():
        log_close = np.log(frame["close"].to_numpy())
        expected.append(market.expected_log_return[symbol][: -market.horizon])
        realised.append(log_close[market.horizon :] - log_close[: -market.horizon])
    return float(np.corrcoef(np.concatenate(expected), np.concatenate(realised))[0, 1])


def test_bars_are_consistent(market) -> None:
    assert set(market.bars) == {"SYN00", "SYN01", "SYN02"}
    for frame in market.bars.values():
        assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
        values = frame.to_numpy()
        assert np.isfinite(values).all() and (values > 0).all()
        assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
        assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()


def test_index_is_a_weekday_session_of_15_minute_bars(market) -> None:
    index = market.bars["SYN00"].index
    assert str(index.tz) == "UTC" and len(index) == 4000 and index.is_monotonic_increasing
    assert (index.day_of_week < 5).all()  # no weekend bars
    minutes = index.hour * 60 + index.minute
    assert minutes.min() == 9 * 60 + 30 and minutes.max() == 15 * 60 + 45
    per_day = pd.Series(1, index=index).groupby(index.date).size()
    assert (per_day.iloc[:-1] == BARS_PER_DAY).all()  # only the last day may be cut short
    steps = index[1:] - index[:-1]
    same_day = index[1:].date == index[:-1].date
    assert (steps[same_day] == pd.Timedelta(minutes=15)).all()
    assert set(steps[~same_day]) == {pd.Timedelta(hours=17, minutes=45), pd.Timedelta(days=2, hours=17, minutes=45)}


def test_timestamps_hold_the_stated_bars_per_year() -> None:
    market = generate_market(n_instruments=1, n_bars=6000, seed=0, horizon=8)
    index = market.bars["SYN00"].index
    span_years = (index[-1] - index[0]).total_seconds() / 86400 / 365.25
    assert market.bars_per_year == BARS_PER_YEAR == pytest.approx(26 * 260.89, rel=1e-4)
    assert (len(index) - 1) / span_years == pytest.approx(BARS_PER_YEAR, rel=0.02)


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


# the slope's sampling error grows as the signal shrinks (seeds 0..7 at strength 1 span 0.72 .. 1.10)
@pytest.mark.parametrize(("signal_strength", "tolerance"), [(1.0, 0.3), (4.0, 0.1)])
def test_oracle_is_unbiased_at_any_strength(signal_strength, tolerance) -> None:
    market = generate_market(n_instruments=2, n_bars=60_000, seed=5, horizon=8, signal_strength=signal_strength)
    log_close = [np.log(frame["close"].to_numpy()) for frame in market.bars.values()]
    realised = np.concatenate([x[8:] - x[:-8] for x in log_close])
    oracle = np.concatenate([market.expected_log_return[symbol][:-8] for symbol in market.bars])
    slope = np.polyfit(oracle, realised, 1)[0]
    # realised = oracle + zero-mean noise; an oracle that ignored the strength in kappa would give ~2.5 at 4
    assert slope == pytest.approx(1.0, abs=tolerance)


def test_oracle_ic_grows_with_signal_strength() -> None:
    ics = [
        np.mean([oracle_ic(generate_market(4, 6000, seed, 8, signal_strength=strength)) for seed in range(3)])
        for strength in (0.5, 1.0, 2.0, 4.0)
    ]
    assert np.all(np.diff(ics) > 0.02), ics
    assert ics[-1] > 0.25  # the easy end is clearly learnable


def test_default_market_is_realistically_predictable() -> None:
    ics = [oracle_ic(generate_market(4, 6000, seed, 8)) for seed in range(10)]
    assert 0.08 <= np.mean(ics) <= 0.20, ics  # real signals: a few hundredths to ~0.1


def test_default_signal_strength_comes_from_config(market) -> None:
    assert market.signal_strength == DataConfig().signal_strength


def test_trending_drift_persists_and_deviations_revert() -> None:
    coefficients = _oracle_coefficients(horizon=8)  # (regime, [drift, deviation])
    assert 7.5 < coefficients[TRENDING, 0] < 8.0  # the drift survives almost all of the 8 bars
    # a price above its average is expected to fall, the more so the harder kappa pulls
    assert coefficients[HIGH_VOLATILITY, 1] < coefficients[MEAN_REVERTING, 1] < 0
    stronger = _oracle_coefficients(horizon=8, kappa=4 * MEAN_REVERSION)
    assert stronger[MEAN_REVERTING, 1] < 3 * coefficients[MEAN_REVERTING, 1]
    assert abs(coefficients[TRENDING, 1]) < 0.01


def test_volatility_clusters_and_volume_follows_absolute_returns(long_market) -> None:
    frame = long_market.bars["SYN00"]
    returns = np.diff(np.log(frame["close"].to_numpy()))
    size = np.abs(returns)
    assert np.corrcoef(size[1:], size[:-1])[0, 1] > 0.1  # |r| is autocorrelated
    assert abs(np.corrcoef(returns[1:], returns[:-1])[0, 1]) < 0.05  # r itself nearly is not
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


@pytest.mark.parametrize("signal_strength", [0.0, 1.5 / MEAN_REVERSION.max()])
def test_rejects_signal_strength_that_breaks_the_process(signal_strength) -> None:
    with pytest.raises(ValueError, match="signal_strength"):
        generate_market(n_instruments=1, n_bars=100, seed=0, horizon=4, signal_strength=signal_strength)
